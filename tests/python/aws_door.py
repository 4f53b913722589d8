"""boto3 against the sidecar's AWS-protocol door: every request built from AWS's own service
model (botocore's), every answer parsed by it.

Usage: aws_door.py ENDPOINT CREDENTIALS_FILE CASES_JSON
       aws_door.py ENDPOINT CREDENTIALS_FILE --backend-down

CASES_JSON names what the Rust test prepared: {"good_key", "disabled_key", "finding":
{"arn", "expected"}}. The credentials file holds the profiles `admin` (admin) and `reader`
(read-only); the sidecar allows one uncached call a minute per caller, so a second
BatchGetCodeSnippet is throttled. Exits non-zero with a message on the first unexpected
answer; prints "aws door flow: ok" when every case held.
"""

import datetime
import json
import sys
import types
from unittest import mock

import boto3
import botocore
import botocore.auth
import botocore.config
import botocore.exceptions

CODE_LAMBDA = {"scanType": "CODE", "resourceType": "AWS_LAMBDA_FUNCTION"}


def client(endpoint, credentials_file, profile, **config):
    session = boto3.Session(profile_name=profile, region_name="us-east-1")
    # No retries: each answer is the sidecar's first.
    settings = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, **config)
    return session.client("inspector2", endpoint_url=endpoint, config=settings)


def expect_error(what, call, modeled, status, code=None):
    """`call` must raise the modeled exception class `modeled` (or ClientError with `code`)."""
    try:
        call()
    except botocore.exceptions.ClientError as error:
        name = type(error).__name__
        wanted = modeled or "ClientError"
        got_code = error.response["Error"]["Code"]
        got_status = error.response["ResponseMetadata"]["HTTPStatusCode"]
        if name != wanted or (code and got_code != code) or got_status != status:
            sys.exit(f"{what}: got {name} {got_code} {got_status}, wanted {wanted} {code} {status}: {error.response}")
        if not error.response["ResponseMetadata"].get("RequestId"):
            sys.exit(f"{what}: no x-amzn-RequestId: {error.response}")
        return error.response
    sys.exit(f"{what}: no error")


def backend_down(endpoint, credentials_file):
    """The backend is failing (and nothing is cached): InternalServerException, 500."""
    reader = client(endpoint, credentials_file, "reader")
    error = expect_error("backend down", lambda: reader.get_encryption_key(**CODE_LAMBDA),
                         "InternalServerException", 500)
    if error["ResponseMetadata"]["HTTPHeaders"].get("retry-after") is None:
        sys.exit(f"backend down: no Retry-After: {error}")
    print("aws door backend down: ok")


def main(endpoint, credentials_file, cases_path):
    if cases_path == "--backend-down":
        return backend_down(endpoint, credentials_file)
    cases = json.load(open(cases_path))
    admin = client(endpoint, credentials_file, "admin")
    reader = client(endpoint, credentials_file, "reader")

    # Nothing set: the AWS owned key is in use.
    error = expect_error("get with nothing set", lambda: reader.get_encryption_key(**CODE_LAMBDA),
                         "ResourceNotFoundException", 404)
    if "AWS owned key" not in error["Error"]["Message"]:
        sys.exit(f"get with nothing set: {error}")

    # Update, then Get.
    answer = admin.update_encryption_key(kmsKeyId=cases["good_key"], **CODE_LAMBDA)
    answer.pop("ResponseMetadata")
    if answer != {}:
        sys.exit(f"update: {answer}")
    got = reader.get_encryption_key(**CODE_LAMBDA)["kmsKeyId"]
    if got != cases["good_key"]:
        sys.exit(f"get after update: {got}")

    # An alias and a disabled key: ValidationException, nothing changed.
    error = expect_error("alias", lambda: admin.update_encryption_key(kmsKeyId="alias/inspector", **CODE_LAMBDA),
                         "ValidationException", 400)
    if error.get("reason") != "FIELD_VALIDATION_FAILED" or error.get("fields", [{}])[0].get("name") != "kmsKeyId":
        sys.exit(f"alias: {error}")
    error = expect_error("disabled key",
                         lambda: admin.update_encryption_key(kmsKeyId=cases["disabled_key"], **CODE_LAMBDA),
                         "ValidationException", 400)
    if "KEY_NOT_ENABLED" not in json.dumps(error.get("fields")) or "Disabled" not in error["Error"]["Message"]:
        sys.exit(f"disabled key: {error}")
    got = reader.get_encryption_key(**CODE_LAMBDA)["kmsKeyId"]
    if got != cases["good_key"]:
        sys.exit(f"get after refused updates: {got}")

    # A read-only key may not update.
    expect_error("reader update",
                 lambda: reader.update_encryption_key(kmsKeyId=cases["good_key"], **CODE_LAMBDA),
                 "AccessDeniedException", 403)

    # The code snippet of a recorded finding, and one that has none.
    missing = cases["finding"]["arn"][:-1] + ("0" if cases["finding"]["arn"][-1] != "0" else "1")
    answer = admin.batch_get_code_snippet(findingArns=[cases["finding"]["arn"], missing])
    if answer["codeSnippetResults"] != [cases["finding"]["expected"]]:
        sys.exit(f"snippets: {answer['codeSnippetResults']} != {cases['finding']['expected']}")
    if [(e["findingArn"], e["errorCode"]) for e in answer["errors"]] != [(missing, "CODE_SNIPPET_NOT_FOUND")]:
        sys.exit(f"snippet errors: {answer['errors']}")

    # The second uncached call within the minute: throttled, with Retry-After.
    error = expect_error("throttling", lambda: admin.batch_get_code_snippet(findingArns=[missing]),
                         "ThrottlingException", 429)
    retry_after = error["ResponseMetadata"]["HTTPHeaders"].get("retry-after")
    if not retry_after or not 1 <= int(retry_after) <= 60:
        sys.exit(f"throttling: Retry-After {retry_after!r}: {error}")

    # Reset, then Get.
    admin.reset_encryption_key(**CODE_LAMBDA)
    expect_error("get after reset", lambda: reader.get_encryption_key(**CODE_LAMBDA), "ResourceNotFoundException", 404)

    # A wrong secret, a skewed clock and an unsigned request: 403.
    session = boto3.Session(aws_access_key_id=admin._request_signer._credentials.access_key,
                            aws_secret_access_key="not-the-secret-0123456789", region_name="us-east-1")
    wrong = session.client("inspector2", endpoint_url=endpoint,
                           config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}))
    expect_error("wrong secret", lambda: wrong.get_encryption_key(**CODE_LAMBDA), None, 403,
                 "InvalidSignatureException")

    class Skewed(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return datetime.datetime.utcnow() - datetime.timedelta(minutes=20)

        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.now(tz) - datetime.timedelta(minutes=20)

    # The signer's clock alone runs 20 minutes late.
    with mock.patch.object(botocore.auth, "datetime", types.SimpleNamespace(datetime=Skewed)):
        error = expect_error("skewed clock", lambda: admin.get_encryption_key(**CODE_LAMBDA), None, 403,
                             "InvalidSignatureException")
    if "Signature expired" not in error["Error"]["Message"]:
        sys.exit(f"skewed clock: {error}")

    unsigned = client(endpoint, credentials_file, "admin", signature_version=botocore.UNSIGNED)
    expect_error("unsigned", lambda: unsigned.get_encryption_key(**CODE_LAMBDA), None, 403,
                 "MissingAuthenticationTokenException")

    # An operation the sidecar does not serve is named.
    error = expect_error("not served", lambda: admin.list_findings(), None, 404, "UnknownOperationException")
    if not error["Error"]["Message"].startswith("ListFindings is an Amazon Inspector operation"):
        sys.exit(f"not served: {error}")

    print("aws door flow: ok")


if __name__ == "__main__":
    main(*sys.argv[1:])
