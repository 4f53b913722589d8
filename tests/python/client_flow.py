"""A second-language client: Python grpcio stubs generated from proto/ at test time.

Usage: client_flow.py PROTO_DIR UNIX_SOCKET TCP_ADDRESS

Drives Get -> CreateKey -> Update -> Get -> refused Update -> Reset -> Get against a
running inspector-keyd and decodes the rich error details (grpcio-status). Exits non-zero
with a message on the first unexpected answer.
"""

import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from grpc_tools import protoc


def generate_stubs(proto_dir, out_dir):
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = []
    for root, _, names in os.walk(proto_dir):
        files += [os.path.join(root, n) for n in names if n.endswith(".proto")]
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + sorted(files)
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)


def details(error):
    """The google.rpc details of a failed call, by type name."""
    status = rpc_status.from_call(error)
    if status is None:
        sys.exit(f"no rich status on {error.code()}: {error.details()}")
    found = {}
    for any_detail in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.PreconditionFailure):
            if any_detail.Is(cls.DESCRIPTOR):
                message = cls()
                any_detail.Unpack(message)
                found[cls.DESCRIPTOR.name] = message
    return found


def expect(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


def main():
    proto_dir, socket_path, tcp_address = sys.argv[1:4]
    out_dir = tempfile.mkdtemp(prefix="keyd-stubs-")
    generate_stubs(proto_dir, out_dir)
    from inspectorkeyd.v1 import encryption_key_pb2 as ek
    from inspectorkeyd.v1 import encryption_key_pb2_grpc as ek_grpc
    from inspectorkeyd.v1 import local_kms_pb2 as kms
    from inspectorkeyd.v1 import local_kms_pb2_grpc as kms_grpc
    from inspectorkeyd.v1 import types_pb2 as types

    # Over a Unix socket grpcio would send the socket path as :authority, which HTTP/2
    # servers refuse; name a host instead, as grpcurl users do with -authority.
    admin_channel = grpc.insecure_channel(f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")])
    reader_channel = grpc.insecure_channel(tcp_address)
    admin = ek_grpc.EncryptionKeyServiceStub(admin_channel)
    reader = ek_grpc.EncryptionKeyServiceStub(reader_channel)
    local_kms = kms_grpc.LocalKmsServiceStub(admin_channel)
    target = dict(scan_type=types.SCAN_TYPE_CODE, resource_type=types.RESOURCE_TYPE_AWS_LAMBDA_FUNCTION)

    def expect_aws_owned_key():
        try:
            reader.GetEncryptionKey(ek.GetEncryptionKeyRequest(**target), timeout=10)
        except grpc.RpcError as error:
            expect(error.code() == grpc.StatusCode.NOT_FOUND, f"Get: {error.code()}")
            info = details(error)["ErrorInfo"]
            expect(info.reason == "AWS_OWNED_KEY", f"reason {info.reason}")
            expect(info.domain == "inspector-keyd", f"domain {info.domain}")
            expect(info.metadata["resource_type"] == "AWS_LAMBDA_FUNCTION", f"metadata {info.metadata}")
        else:
            sys.exit("FAILED: Get answered a key while the AWS owned key is in use")

    expect_aws_owned_key()

    key = local_kms.CreateKey(kms.CreateKeyRequest(description="python client"), timeout=10).key_metadata
    expect(key.key_spec == "SYMMETRIC_DEFAULT" and key.key_state == "Enabled", f"created {key}")

    response = admin.UpdateEncryptionKey(ek.UpdateEncryptionKeyRequest(kms_key_id=key.arn, **target), timeout=10)
    expect(response.applied and response.report.passed, f"update {response}")
    got = reader.GetEncryptionKey(ek.GetEncryptionKeyRequest(**target), timeout=10)
    expect(got.kms_key_id == key.arn, f"get {got.kms_key_id} != {key.arn}")

    try:
        admin.UpdateEncryptionKey(ek.UpdateEncryptionKeyRequest(kms_key_id="alias/inspector", **target), timeout=10)
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"alias: {error.code()}")
        violations = details(error)["BadRequest"].field_violations
        expect([v.field for v in violations] == ["kms_key_id"], f"violations {violations}")
        expect("only key ARNs are accepted" in violations[0].description, violations[0].description)
    else:
        sys.exit("FAILED: an alias was accepted")

    local_kms.DisableKey(kms.DisableKeyRequest(key_id=key.arn), timeout=10)
    try:
        admin.UpdateEncryptionKey(ek.UpdateEncryptionKeyRequest(kms_key_id=key.arn, **target), timeout=10)
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.FAILED_PRECONDITION, f"disabled: {error.code()}")
        violations = details(error)["PreconditionFailure"].violations
        expect([v.type for v in violations] == ["KEY_NOT_ENABLED"], f"violations {violations}")
    else:
        sys.exit("FAILED: a disabled key was accepted")

    try:
        reader.ResetEncryptionKey(ek.ResetEncryptionKeyRequest(**target), timeout=10)
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.PERMISSION_DENIED, f"read-only reset: {error.code()}")
        expect(details(error)["ErrorInfo"].reason == "ROLE_REQUIRED", "reason")
    else:
        sys.exit("FAILED: a read-only caller reset the key")

    admin.ResetEncryptionKey(ek.ResetEncryptionKeyRequest(**target), timeout=10)
    expect_aws_owned_key()
    print("python client flow: ok")


if __name__ == "__main__":
    main()
