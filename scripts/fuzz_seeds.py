#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into DIR/<target>/: the conformance corpus's
policies (policy), the config files under deploy/ (config), hand-encoded requests
(requests) and AWS-protocol requests (aws_request). The input layouts are those of fuzz/entry_points.rs."""

import glob
import json
import os
import sys

PROFILES = ["codeguru-grants", "amazon-q-lambda", "amazon-q-code-repository"]


def text(value):
    return value if isinstance(value, str) else json.dumps(value)


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string_field(number, value):
    data = value.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def enum_field(number, value):
    return varint(number << 3) + varint(value)


def main(root):
    seeds = 0
    for path in sorted(glob.glob("tests/conformance/*.json")):
        for i, case in enumerate(json.load(open(path))):
            profile = case.get("profile", PROFILES[i % 3])
            selector = bytes([PROFILES.index(profile) if profile in PROFILES else 0])
            parts = [text(case["key_policy"]).encode()]
            identity = case.get("identity_policies") or []
            metadata = case.get("key_metadata")
            if identity or metadata:
                parts.append(text(identity[0]).encode() if identity else b"")
            if metadata:
                parts.append(text(metadata).encode())
            name = f"{os.path.basename(path)[:-5]}-{i}"
            write(os.path.join(root, "policy"), name, selector + b"\0".join(parts))
            seeds += 1
    for path in sorted(glob.glob("deploy/**/*.toml", recursive=True)):
        write(os.path.join(root, "config"), path.replace("/", "_"), open(path, "rb").read())
        seeds += 1
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    requests = {
        "update": string_field(1, arn) + enum_field(2, 1) + enum_field(3, 1),
        "update-alias": string_field(1, "alias/x") + enum_field(2, 1) + enum_field(3, 2),
        "get": enum_field(1, 1) + enum_field(2, 1),
        "verify": string_field(1, "amazon-q-lambda") + enum_field(2, 1) + enum_field(3, 1)
        + string_field(4, arn),
    }
    for name, data in requests.items():
        write(os.path.join(root, "requests"), name, data)
        seeds += 1
    # The AWS-protocol door: method selector, path and query, headers, body (NUL-separated).
    finding = "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef"
    target = '"scanType":"CODE","resourceType":"AWS_LAMBDA_FUNCTION"'
    door = {
        "get": (0, "/encryptionkey/get?scanType=CODE&resourceType=AWS_LAMBDA_FUNCTION", "", ""),
        "update": (1, "/encryptionkey/update", "content-type: application/json", '{"kmsKeyId":"%s",%s}' % (arn, target)),
        "reset": (1, "/encryptionkey/reset", "content-type: application/json", "{%s}" % target),
        "snippets": (2, "/codesnippet/batchget", "content-type: application/json", '{"findingArns":["%s"]}' % finding),
        "signed": (1, "/encryptionkey/reset", "authorization: AWS4-HMAC-SHA256 Credential=KEYDFUZZKEY0000000/20260528/us-east-1/inspector2/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "0" * 64 + "\nx-amz-date: 20260528T204640Z\nhost: 127.0.0.1:50052", "{%s}" % target),
        "not-served": (2, "/findings/list", "", "{}"),
    }
    for name, (selector, path, headers, body) in door.items():
        data = bytes([selector]) + path.encode() + b"\0" + headers.encode() + b"\0" + body.encode()
        write(os.path.join(root, "aws_request"), name, data)
        seeds += 1
    print(f"{seeds} seeds in {root}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")
