//! The AWS-protocol door against the real binary: the AWS SDK for Rust (aws-sdk-inspector2)
//! round trips every operation and gets each modeled error; raw HTTP checks what an SDK
//! never sends (no signature, a stale or foreign one, an oversized body, an operation not
//! served); roles come from rules naming access keys; refusals and mutations are audited
//! under the access key id; the credentials file is private and reloaded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, SystemTime},
};

use aws_sdk_inspector2::{
    operation::{
        get_encryption_key::GetEncryptionKeyError, update_encryption_key::UpdateEncryptionKeyError,
    },
    types::{ResourceType, ScanType, ValidationExceptionReason},
};
use common::*;
use inspector_keyd::{aws_api::sigv4::sign_for_tests, proto};

/// Key pairs of the credentials file the role tests write.
pub const ADMIN: (&str, &str) = ("KEYDTESTADMIN00000", "admin-secret-0123456789abcdef");
pub const READER: (&str, &str) = ("KEYDTESTREADER0000", "reader-secret-0123456789abcdef");

fn owned(key: (&str, &str)) -> (String, String) {
    (key.0.to_owned(), key.1.to_owned())
}

/// A sidecar whose door takes [`ADMIN`] (admin) and [`READER`] (read-only), from a
/// credentials file and a rules file of the test's own; `extra` goes into its config, with
/// `@FILES@` standing for the directory of those files.
pub fn sidecar_with_roles(extra: &str) -> (tempfile::TempDir, Sidecar) {
    let files = tempfile::tempdir().unwrap();
    let credentials = files.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[admin]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n[reader]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            ADMIN.0, ADMIN.1, READER.0, READER.1
        ),
    )
    .unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rules = files.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[[rule]]\nrole = \"admin\"\nunix_uid = {}\n[[rule]]\nrole = \"admin\"\naws_access_key_id = \"{}\"\n[[rule]]\nrole = \"read-only\"\naws_access_key_id = \"{}\"\n",
            rustix::process::getuid().as_raw(),
            ADMIN.0,
            READER.0
        ),
    )
    .unwrap();
    let audit = files.path().join("audit.jsonl");
    let extra = extra.replace("@FILES@", files.path().to_str().unwrap());
    let sidecar = Sidecar::start_with(&format!(
        "{extra}[authz]\nrules_file = {rules:?}\naudit_file = {audit:?}\n[aws_api]\ncredentials_file = {credentials:?}\n"
    ));
    (files, sidecar)
}

fn audit_lines(files: &tempfile::TempDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(files.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One HTTP/1.1 request on a new connection: (status, headers, body).
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> (u16, http::HeaderMap, serde_json::Value) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    if !headers.contains_key("content-length") {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut map = http::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        map.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    (status, map, serde_json::from_str(body).unwrap_or_default())
}

/// Headers of a request signed with `key` at `time`.
fn signed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    key: (&str, &str),
    region: &str,
    time: SystemTime,
) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("host", addr.to_string().parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    sign_for_tests(method, path, &mut headers, body, key, region, time).unwrap();
    headers
}

fn error_type(headers: &http::HeaderMap) -> &str {
    headers["x-amzn-errortype"].to_str().unwrap()
}

#[tokio::test]
async fn the_rust_sdk_round_trips_with_the_generated_admin_key() {
    let sidecar = Sidecar::start();
    let mode = std::fs::metadata(sidecar.aws_credentials_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the generated credentials are private");
    let key = sidecar.aws_key("inspector-keyd-admin");
    assert!(key.0.starts_with("KEYD"), "{key:?}");
    let inspector = sidecar.inspector(&key);
    let get = || {
        inspector
            .get_encryption_key()
            .scan_type(ScanType::Code)
            .resource_type(ResourceType::AwsLambdaFunction)
            .send()
    };

    let error = get().await.unwrap_err().into_service_error();
    assert!(
        matches!(error, GetEncryptionKeyError::ResourceNotFoundException(_)),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("the AWS owned key is in use"),
        "{error}"
    );

    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    inspector
        .update_encryption_key()
        .kms_key_id(&arn)
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap();
    assert_eq!(get().await.unwrap().kms_key_id(), arn);
    // The same answer over gRPC: one service behind both doors.
    assert_eq!(sidecar.read_lambda_key().await.unwrap(), arn);

    // An alias: ValidationException with the field, and nothing changed.
    let error = inspector
        .update_encryption_key()
        .kms_key_id("alias/inspector")
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let UpdateEncryptionKeyError::ValidationException(validation) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(
        validation.reason(),
        &ValidationExceptionReason::FieldValidationFailed
    );
    assert_eq!(validation.fields()[0].name(), "kmsKeyId");
    assert!(validation.fields()[0].message().contains("is an alias"));
    assert_eq!(get().await.unwrap().kms_key_id(), arn);

    // An unsupported pair names the supported ones.
    let error = inspector
        .reset_encryption_key()
        .scan_type(ScanType::Package)
        .resource_type(ResourceType::AwsEc2Instance)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_validation_exception(), "{error:?}");
    assert!(
        error.to_string().contains("CODE + AWS_LAMBDA_FUNCTION"),
        "{error}"
    );

    inspector
        .reset_encryption_key()
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap();
    assert!(
        get()
            .await
            .unwrap_err()
            .into_service_error()
            .is_resource_not_found_exception()
    );

    let finding =
        "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef";
    let answer = inspector
        .batch_get_code_snippet()
        .finding_arns(finding)
        .send()
        .await
        .unwrap();
    assert!(answer.code_snippet_results().is_empty());
    let error = &answer.errors()[0];
    assert_eq!(error.finding_arn(), finding);
    assert_eq!(error.error_code().as_str(), "CODE_SNIPPET_NOT_FOUND");
}

#[tokio::test]
async fn roles_come_from_rules_naming_access_keys_and_calls_are_audited_by_key() {
    let (files, sidecar) = sidecar_with_roles("");
    let reader = sidecar.inspector(&owned(READER));
    let admin = sidecar.inspector(&owned(ADMIN));
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let update = |client: &aws_sdk_inspector2::Client| {
        client
            .update_encryption_key()
            .kms_key_id(&arn)
            .scan_type(ScanType::Code)
            .resource_type(ResourceType::AwsLambdaFunction)
            .send()
    };
    let error = update(&reader).await.unwrap_err().into_service_error();
    assert!(error.is_access_denied_exception(), "{error:?}");
    assert!(
        error
            .to_string()
            .contains(&format!("caller `aws:{}` does not have it", READER.0)),
        "{error}"
    );
    assert_eq!(
        sidecar.read_lambda_key().await.unwrap_err().code(),
        tonic::Code::NotFound,
        "nothing changed"
    );
    update(&admin).await.unwrap();
    let read = reader
        .get_encryption_key()
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap();
    assert_eq!(read.kms_key_id(), arn);
    // Code snippets need code-reader, which the reader key does not have.
    let error = reader
        .batch_get_code_snippet()
        .finding_arns(
            "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef",
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_access_denied_exception(), "{error:?}");
    // Also when every finding is another account's, which no key of this account reads:
    // the role is decided first, and the call audited.
    let error = reader
        .batch_get_code_snippet()
        .finding_arns(
            "arn:aws:inspector2:us-east-1:222233334444:finding/0123456789abcdef0123456789abcdef",
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_access_denied_exception(), "{error:?}");
    assert_eq!(
        audit_lines(&files)
            .iter()
            .filter(
                |l| l["rpc"] == "/inspectorkeyd.v1.EncryptionKeyService/BatchGetCodeSnippet"
                    && l["code"] == "PERMISSION_DENIED"
            )
            .count(),
        2
    );

    // The audit lines name the access key as the identity presented.
    let lines = audit_lines(&files);
    let update_lines: Vec<_> = lines
        .iter()
        .filter(|l| l["rpc"] == "/inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey")
        .collect();
    assert_eq!(update_lines.len(), 2, "{lines:?}");
    assert_eq!(update_lines[0]["caller"], format!("aws:{}", READER.0));
    assert_eq!(update_lines[0]["decision"], "denied");
    assert_eq!(update_lines[0]["code"], "PERMISSION_DENIED");
    assert_eq!(update_lines[1]["caller"], format!("aws:{}", ADMIN.0));
    assert_eq!(update_lines[1]["decision"], "allowed");
    assert_eq!(update_lines[1]["key_arn"], arn.as_str());
    assert_eq!(update_lines[1]["role"], "admin");
    // The request id of the answer is the audit line's.
    let output = admin
        .reset_encryption_key()
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap();
    let request_id = aws_sdk_inspector2::operation::RequestId::request_id(&output)
        .unwrap()
        .to_owned();
    assert!(
        audit_lines(&files)
            .iter()
            .any(|l| l["request_id"] == request_id.as_str() && l["code"] == "OK"),
        "{request_id}"
    );
}

#[tokio::test]
async fn requests_without_a_good_signature_are_refused_with_aws_codes_and_audited() {
    let (files, sidecar) = sidecar_with_roles("");
    let addr = sidecar.aws_api.unwrap();
    let body = br#"{"scanType":"CODE","resourceType":"AWS_LAMBDA_FUNCTION"}"#;
    let reset = "/encryptionkey/reset";
    let now = SystemTime::now();
    let cases: Vec<(&str, http::HeaderMap, &str, &str)> = vec![
        (
            "unsigned",
            {
                let mut h = http::HeaderMap::new();
                h.insert("host", addr.to_string().parse().unwrap());
                h
            },
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ),
        (
            "unknown key",
            signed(
                addr,
                "PUT",
                reset,
                body,
                ("KEYDNOBODY00000000", ADMIN.1),
                "us-east-1",
                now,
            ),
            "UnrecognizedClientException",
            "not known to this sidecar",
        ),
        (
            "wrong secret",
            signed(
                addr,
                "PUT",
                reset,
                body,
                (ADMIN.0, "wrong-secret-0123456789"),
                "us-east-1",
                now,
            ),
            "InvalidSignatureException",
            "does not match the signature you provided",
        ),
        (
            "skewed clock",
            signed(
                addr,
                "PUT",
                reset,
                body,
                ADMIN,
                "us-east-1",
                now - Duration::from_secs(16 * 60),
            ),
            "InvalidSignatureException",
            "Signature expired",
        ),
        (
            "not a Region",
            signed(addr, "PUT", reset, body, ADMIN, "moon", now),
            "InvalidSignatureException",
            "`moon` is not an AWS Region name",
        ),
    ];
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap();
    for (case, headers, code, message) in &cases {
        let (status, answer_headers, answer) = raw(addr, "PUT", reset, headers, body);
        assert_eq!(status, 403, "{case}: {answer}");
        assert_eq!(error_type(&answer_headers), *code, "{case}");
        assert!(answer_headers.contains_key("x-amzn-requestid"), "{case}");
        let text = answer["message"].as_str().unwrap();
        assert!(text.contains(message), "{case}: {text}");
        assert!(!text.contains(ADMIN.1), "{case}: the secret in {text}");
    }
    // Nothing was reset.
    assert_eq!(sidecar.read_lambda_key().await.unwrap(), arn);
    // A body that differs from the one signed.
    let headers = signed(addr, "PUT", reset, body, ADMIN, "us-east-1", now);
    let (status, answer_headers, _) = raw(
        addr,
        "PUT",
        reset,
        &headers,
        br#"{"scanType":"CODE","resourceType":"CODE_REPOSITORY"}"#,
    );
    assert_eq!(
        (status, error_type(&answer_headers)),
        (403, "InvalidSignatureException")
    );
    // The same request, signed right, goes through.
    let (status, _, answer) = raw(addr, "PUT", reset, &headers, body);
    assert_eq!((status, answer), (200, serde_json::json!({})));
    assert_eq!(
        sidecar.read_lambda_key().await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // Each refusal is audited as the operation asked for, under the key it claimed.
    let refused: Vec<_> = audit_lines(&files)
        .into_iter()
        .filter(|l| l["code"] == "UNAUTHENTICATED")
        .collect();
    assert_eq!(refused.len(), cases.len() + 1, "{refused:?}");
    assert!(refused.iter().all(|l| l["decision"] == "denied"
        && l["rpc"] == "/inspectorkeyd.v1.EncryptionKeyService/ResetEncryptionKey"));
    assert_eq!(refused[0]["caller"], "unknown");
    assert_eq!(refused[1]["caller"], "aws:KEYDNOBODY00000000");
    assert_eq!(refused[2]["caller"], format!("aws:{}", ADMIN.0));
    let metrics = sidecar.scrape_metrics();
    assert_eq!(
        sample(
            &metrics,
            "inspector_keyd_authz_decisions",
            "_total",
            &[
                ("rpc", "ResetEncryptionKey"),
                ("role", "none"),
                ("decision", "deny")
            ]
        ),
        Some((cases.len() + 1) as f64),
        "{metrics}"
    );
}

#[tokio::test]
async fn what_is_not_served_or_too_large_is_named() {
    let (_files, sidecar) = sidecar_with_roles("[ops]\nmax_request_bytes = 4096\n");
    let addr = sidecar.aws_api.unwrap();
    let now = SystemTime::now();
    let list = "/findings/list";
    let headers = signed(addr, "POST", list, b"{}", ADMIN, "us-east-1", now);
    let (status, answer_headers, answer) = raw(addr, "POST", list, &headers, b"{}");
    assert_eq!(
        (status, error_type(&answer_headers)),
        (404, "UnknownOperationException")
    );
    assert!(
        answer["message"].as_str().unwrap().starts_with(
            "ListFindings is an Amazon Inspector operation this sidecar does not serve"
        ),
        "{answer}"
    );

    let big = vec![b' '; 8192];
    let update = "/encryptionkey/update";
    let headers = signed(addr, "PUT", update, &big, ADMIN, "us-east-1", now);
    let (status, answer_headers, answer) = raw(addr, "PUT", update, &headers, &big);
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        error_type(&answer_headers),
        "RequestEntityTooLargeException"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("4096 bytes"),
        "{answer}"
    );

    // A body that is not JSON: ValidationException CANNOT_PARSE, before the service.
    let headers = signed(addr, "PUT", update, b"{", ADMIN, "us-east-1", now);
    let (status, answer_headers, answer) = raw(addr, "PUT", update, &headers, b"{");
    assert_eq!(
        (status, error_type(&answer_headers)),
        (400, "ValidationException")
    );
    assert_eq!(answer["reason"], "CANNOT_PARSE");
}

#[tokio::test]
async fn shed_and_over_quota_calls_are_throttling_with_retry_after() {
    let (_files, sidecar) =
        sidecar_with_roles("[ops]\nuncached_calls_per_minute = 1\nuncached_burst = 1\n");
    let admin = sidecar.inspector(&owned(ADMIN));
    let finding =
        "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef";
    admin
        .batch_get_code_snippet()
        .finding_arns(finding)
        .send()
        .await
        .unwrap();
    let error = admin
        .batch_get_code_snippet()
        .finding_arns(finding)
        .send()
        .await
        .unwrap_err();
    let raw_response = error.raw_response().unwrap();
    assert_eq!(raw_response.status().as_u16(), 429);
    let retry_after: u64 = raw_response
        .headers()
        .get("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let error = error.into_service_error();
    let aws_sdk_inspector2::operation::batch_get_code_snippet::BatchGetCodeSnippetError::ThrottlingException(throttling) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(
        throttling.retry_after_seconds(),
        Some(i32::try_from(retry_after).unwrap())
    );
}

#[tokio::test]
async fn the_credentials_file_is_private_and_reloaded() {
    let (files, sidecar) = sidecar_with_roles("");
    let path = files.path().join("credentials");
    let reader = sidecar.inspector(&owned(READER));
    let get = || {
        reader
            .get_encryption_key()
            .scan_type(ScanType::Code)
            .resource_type(ResourceType::AwsLambdaFunction)
            .send()
    };
    assert!(
        get()
            .await
            .unwrap_err()
            .into_service_error()
            .is_resource_not_found_exception()
    );
    // Readable by others: refused, the keys in force stay.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sidecar
                .log()
                .contains("new AWS-protocol door credentials refused")
        })
        .await,
        "{}",
        sidecar.log()
    );
    assert!(sidecar.log().contains("may be read by others"));
    assert!(
        get()
            .await
            .unwrap_err()
            .into_service_error()
            .is_resource_not_found_exception()
    );
    // A new secret for the reader, in a private file: the old one stops working.
    write_private(
        &path,
        &format!(
            "[admin]\naws_access_key_id = {}\naws_secret_access_key = {}\n[reader]\naws_access_key_id = {}\naws_secret_access_key = rotated-secret-0123456789\n",
            ADMIN.0, ADMIN.1, READER.0
        ),
    );
    let rotated = eventually(Duration::from_secs(10), || async {
        get().await.err().is_some_and(|e| {
            e.raw_response()
                .and_then(|r| r.headers().get("x-amzn-errortype"))
                == Some("InvalidSignatureException")
        })
    })
    .await;
    assert!(rotated, "{}", sidecar.log());
    let rotated_reader =
        sidecar.inspector(&(READER.0.to_owned(), "rotated-secret-0123456789".to_owned()));
    assert!(
        rotated_reader
            .get_encryption_key()
            .scan_type(ScanType::Code)
            .resource_type(ResourceType::AwsLambdaFunction)
            .send()
            .await
            .unwrap_err()
            .into_service_error()
            .is_resource_not_found_exception()
    );
}

fn write_private(path: &Path, text: &str) {
    write_whole(path, text, 0o600);
}

#[test]
fn a_door_off_loopback_without_tls_or_a_world_readable_credentials_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[a]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            ADMIN.0, ADMIN.1
        ),
    )
    .unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (env, expected) in [
        (
            vec![("INSPECTOR_KEYD_AWS_API__LISTEN", "0.0.0.0:0")],
            "`aws_api.listen` `0.0.0.0:0` is not a loopback address",
        ),
        (
            vec![
                ("INSPECTOR_KEYD_AWS_API__LISTEN", "127.0.0.1:0"),
                (
                    "INSPECTOR_KEYD_AWS_API__CREDENTIALS_FILE",
                    credentials.to_str().unwrap(),
                ),
            ],
            "may be read by others (mode 0644)",
        ),
    ] {
        let mut command = std::process::Command::new(BIN);
        command.arg("serve").current_dir(dir.path());
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("INSPECTOR_KEYD_")) {
            command.env_remove(name);
        }
        let output = command
            .env("INSPECTOR_KEYD_LISTEN__TCP", "127.0.0.1:0")
            .env("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "")
            .envs(env)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains(ADMIN.1), "{stderr}");
    }
}

/// Runs `tests/python/aws_door.py` with `args` against the sidecar's door, with the test's
/// credentials file and no other AWS configuration: its stdout.
fn run_aws_door_script(sidecar: &Sidecar, files: &tempfile::TempDir, args: &[&str]) -> String {
    let python = tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = aws_process(&python, &files.path().join("credentials"), files.path())
        .arg(root.join("tests/python/aws_door.py"))
        .arg(sidecar.aws_url())
        .arg(files.path().join("credentials"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        sidecar.log()
    );
    stdout
}

/// `program` as an AWS CLI or SDK process: the credentials file, no other AWS
/// configuration or instance metadata (nothing leaves loopback), a home of its own.
fn aws_process(program: &Path, credentials: &Path, home: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
    ] {
        command.env_remove(name);
    }
    command
        .env("AWS_SHARED_CREDENTIALS_FILE", credentials)
        .env("AWS_CONFIG_FILE", "/nonexistent/inspector-keyd-test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("HOME", home);
    command
}

/// boto3 builds every request from AWS's service model and parses every answer into its
/// modeled exception classes: Get with nothing set, Update then Get, an alias and a disabled
/// key (nothing changed), the snippet of a recorded finding, a read-only key's Update,
/// throttling, Reset, a wrong secret, a skewed clock, an unsigned request, an operation not
/// served, and a backend that is down.
#[tokio::test]
async fn boto3_drives_every_operation_and_parses_every_error() {
    let (files, sidecar) = sidecar_with_roles(
        "[ops]\nuncached_calls_per_minute = 1\nuncached_burst = 1\n[cache]\nkey_ttl = \"10ms\"\naws_owned_ttl = \"10ms\"\nmax_stale = \"0s\"\n[local]\nfault_file = \"@FILES@/faults.toml\"\n",
    );
    let good_key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let disabled_key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    sidecar
        .kms()
        .await
        .disable_key(proto::DisableKeyRequest {
            key_id: disabled_key.clone(),
        })
        .await
        .unwrap();
    let finding =
        "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef";
    inspector_keyd::proto::local_code_scanning_service_client::LocalCodeScanningServiceClient::new(
        sidecar.unix_channel().await,
    )
    .record_code_finding(proto::RecordCodeFindingRequest {
        resource_type: LAMBDA,
        finding: Some(proto::CodeSnippetResult {
            finding_arn: finding.into(),
            start_line: 12,
            end_line: 13,
            code_snippet: vec![
                proto::CodeLine {
                    content: "def handler(event, context):".into(),
                    line_number: 12,
                },
                proto::CodeLine {
                    content: "    return eval(event[\"q\"])".into(),
                    line_number: 13,
                },
            ],
            suggested_fixes: vec![proto::SuggestedFix {
                description: "Do not eval input.".into(),
                code: "return int(event[\"q\"])".into(),
            }],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let cases = serde_json::json!({
        "good_key": good_key,
        "disabled_key": disabled_key,
        "finding": {"arn": finding, "expected": {
            "findingArn": finding, "startLine": 12, "endLine": 13,
            "codeSnippet": [
                {"content": "def handler(event, context):", "lineNumber": 12},
                {"content": "    return eval(event[\"q\"])", "lineNumber": 13},
            ],
            "suggestedFixes": [{"description": "Do not eval input.", "code": "return int(event[\"q\"])"}],
        }},
    });
    let cases_file = files.path().join("cases.json");
    std::fs::write(&cases_file, cases.to_string()).unwrap();
    let stdout = run_aws_door_script(&sidecar, &files, &[cases_file.to_str().unwrap()]);
    assert!(stdout.contains("aws door flow: ok"), "{stdout}");
    // What boto3 did is what the gRPC API sees: reset, and the disabled key never set.
    assert_eq!(
        sidecar.read_lambda_key().await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // The backend down, nothing cached: InternalServerException.
    std::fs::write(
        files.path().join("faults.toml"),
        "[reads]\nerror = \"unavailable\"\n",
    )
    .unwrap();
    let stdout = run_aws_door_script(&sidecar, &files, &["--backend-down"]);
    assert!(stdout.contains("aws door backend down: ok"), "{stdout}");
}

/// The AWS CLI (v1, botocore) against a sidecar started with no configuration, with the
/// key pair it wrote at first start.
#[tokio::test]
async fn the_aws_cli_works_with_the_generated_credentials() {
    let sidecar = Sidecar::start();
    let home = tempfile::tempdir().unwrap();
    let aws = tool("KEYD_TEST_AWS_CLI", ".tools/venv/bin/aws");
    let run = |args: &[&str]| {
        let output = aws_process(&aws, &sidecar.aws_credentials_file(), home.path())
            .arg("--endpoint-url")
            .arg(sidecar.aws_url())
            .args(["inspector2"])
            .args(args)
            .env("AWS_PROFILE", "inspector-keyd-admin")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let target = [
        "--scan-type",
        "CODE",
        "--resource-type",
        "AWS_LAMBDA_FUNCTION",
    ];
    let get: Vec<&str> = ["get-encryption-key"]
        .iter()
        .chain(&target)
        .copied()
        .collect();
    let (code, _, stderr) = run(&get);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(
        stderr.contains("An error occurred (ResourceNotFoundException) when calling the GetEncryptionKey operation: no customer managed key is set"),
        "{stderr}"
    );
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let update: Vec<&str> = ["update-encryption-key", "--kms-key-id", &arn]
        .iter()
        .chain(&target)
        .copied()
        .collect();
    let (code, _, stderr) = run(&update);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = run(&get);
    assert_eq!(code, Some(0), "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed, serde_json::json!({"kmsKeyId": arn}));
    let alias: Vec<&str> = ["update-encryption-key", "--kms-key-id", "alias/x"]
        .iter()
        .chain(&target)
        .copied()
        .collect();
    let (code, _, stderr) = run(&alias);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("(ValidationException)"), "{stderr}");
    let reset: Vec<&str> = ["reset-encryption-key"]
        .iter()
        .chain(&target)
        .copied()
        .collect();
    let (code, _, stderr) = run(&reset);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(run(&get).0, Some(255));
    let (code, stdout, stderr) = run(&[
        "batch-get-code-snippet",
        "--finding-arns",
        "arn:aws:inspector2:us-east-1:111122223333:finding/0123456789abcdef0123456789abcdef",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["errors"][0]["errorCode"], "CODE_SNIPPET_NOT_FOUND");
}

/// The door's table of Inspector operations is the service model's (botocore's, as boto3
/// installs it), and the four it serves have the model's methods and paths.
#[test]
fn the_operation_table_is_the_service_model() {
    use inspector_keyd::aws_api::protocol::{INSPECTOR2_OPERATIONS, Operation};
    let python = tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import botocore.session, json; m = botocore.session.get_session().get_service_model('inspector2'); print(json.dumps(sorted([m.operation_model(n).http['method'], m.operation_model(n).http['requestUri'], n] for n in m.operation_names)))",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let model: Vec<(String, String, String)> = serde_json::from_slice(&output.stdout).unwrap();
    let mut table: Vec<(String, String, String)> = INSPECTOR2_OPERATIONS
        .iter()
        .map(|(m, p, n)| ((*m).to_owned(), (*p).to_owned(), (*n).to_owned()))
        .collect();
    table.sort();
    let mut model_sorted = model.clone();
    model_sorted.sort();
    assert_eq!(table, model_sorted);
    for operation in Operation::ALL {
        let (method, path) = operation.http();
        assert!(
            model.contains(&(
                method.to_owned(),
                path.to_owned(),
                operation.name().to_owned()
            )),
            "{operation:?}"
        );
    }
}

/// With the `[tls]` listener configured, the door speaks TLS with its certificate (HTTP/1.1,
/// no client certificate asked: callers are known by their signatures), and plaintext is
/// not answered.
#[tokio::test]
async fn with_the_tls_listener_the_door_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki::Ca::new("door-ca");
    let ca_file = ca.write(dir.path(), "ca");
    let server = ca.server(dir.path(), "server");
    let sidecar = Sidecar::start_with(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_files = [{ca_file:?}]\n",
        server.cert, server.key
    ));
    let port = sidecar.aws_api.unwrap().port();
    let python = tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
    let script = "import boto3, sys\nc = boto3.client('inspector2', endpoint_url=sys.argv[1], verify=sys.argv[2])\ntry:\n    c.get_encryption_key(scanType='CODE', resourceType='AWS_LAMBDA_FUNCTION')\nexcept c.exceptions.ResourceNotFoundException as e:\n    print('not found over tls:', e.response['Error']['Message'])\n";
    let output = aws_process(&python, &sidecar.aws_credentials_file(), dir.path())
        .env("AWS_PROFILE", "inspector-keyd-admin")
        .args(["-c", script])
        .arg(format!("https://localhost:{port}"))
        .arg(&ca_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("not found over tls: no customer managed key is set"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Plaintext HTTP gets no answer: the connection is closed during the handshake.
    let mut stream = std::net::TcpStream::connect(sidecar.aws_api.unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /encryptionkey/get HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// The head of a request is judged before its body is read: unsigned, or badly signed over
/// the payload hash it sends (`x-amz-content-sha256`), it is refused while the body has not
/// even been sent; signed right over that hash, the body must have it.
#[tokio::test]
async fn a_request_is_refused_from_its_head_before_its_body_is_read() {
    use std::io::{BufRead, BufReader};
    let (_files, sidecar) = sidecar_with_roles("");
    let addr = sidecar.aws_api.unwrap();
    let reset = "/encryptionkey/reset";
    let body = br#"{"scanType":"CODE","resourceType":"AWS_LAMBDA_FUNCTION"}"#;
    let sha256 = |bytes: &[u8]| -> String {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let with_hash = |key: (&str, &str)| {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", addr.to_string().parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("x-amz-content-sha256", sha256(body).parse().unwrap());
        sign_for_tests(
            "PUT",
            reset,
            &mut headers,
            body,
            key,
            "us-east-1",
            SystemTime::now(),
        )
        .unwrap();
        headers
    };
    // Only the head is sent (the body it declares never comes): the answer comes anyway.
    let head_only = |headers: &http::HeaderMap| -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut request = format!("PUT {reset} HTTP/1.1\r\ncontent-length: 1000\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .expect("an answer before the body is sent");
        let mut error_type = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("x-amzn-errortype:") {
                error_type = value.trim().to_owned();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let code = status.split(' ').nth(1).unwrap().parse().unwrap();
        (code, error_type)
    };
    let mut unsigned = http::HeaderMap::new();
    unsigned.insert("host", addr.to_string().parse().unwrap());
    assert_eq!(
        head_only(&unsigned),
        (403, "missingauthenticationtokenexception".to_owned())
    );
    assert_eq!(
        head_only(&with_hash((ADMIN.0, "wrong-secret-0123456789"))),
        (403, "invalidsignatureexception".to_owned())
    );
    // Signed right over the hash: the body must be the one hashed.
    let headers = with_hash(ADMIN);
    let (status, answer_headers, answer) = raw(addr, "PUT", reset, &headers, br#"{"other":1}"#);
    assert_eq!(
        (status, error_type(&answer_headers)),
        (403, "InvalidSignatureException"),
        "{answer}"
    );
    let (status, _, answer) = raw(addr, "PUT", reset, &headers, body);
    assert_eq!((status, answer), (200, serde_json::json!({})));
}

/// The account the organization tests manage besides the sidecar's own (111122223333 in
/// us-east-1), and its profile in the generated credentials file.
const OTHER_ACCOUNT: &str = "222233334444";
const OTHER_PROFILE: &str = "inspector-keyd-admin-222233334444";
const ORGANIZATION: &str =
    "[[accounts]]\nid = \"222233334444\"\nregions = [\"us-east-1\", \"eu-west-1\"]\n";

/// An AWS SDK for Rust Inspector client of the door with the key of `profile` read by the
/// SDK itself from the sidecar's credentials file (only that file: nothing of the machine's
/// AWS configuration), signing for `region`, without retries.
// aws-config's names of the profile-file types; the new ones are aws-runtime's, which is no
// dependency of this crate.
#[allow(deprecated)]
async fn inspector_as(
    sidecar: &Sidecar,
    profile: &str,
    region: &str,
) -> aws_sdk_inspector2::Client {
    use aws_config::profile::{
        ProfileFileCredentialsProvider,
        profile_file::{ProfileFileKind, ProfileFiles},
    };
    use aws_sdk_inspector2::config::{BehaviorVersion, Region, retry::RetryConfig};
    let files = ProfileFiles::builder()
        .with_file(ProfileFileKind::Credentials, sidecar.aws_credentials_file())
        .build();
    let credentials = ProfileFileCredentialsProvider::builder()
        .profile_files(files)
        .profile_name(profile)
        .build();
    // The profile is read (and its aws_account_id taken) as the SDK reads it.
    let identity =
        aws_credential_types::provider::ProvideCredentials::provide_credentials(&credentials)
            .await
            .unwrap();
    assert_eq!(identity.access_key_id(), sidecar.aws_key(profile).0);
    let config = aws_sdk_inspector2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(credentials)
        .endpoint_url(sidecar.aws_url())
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_inspector2::Client::from_conf(config)
}

async fn get_lambda_key(
    client: &aws_sdk_inspector2::Client,
) -> Result<String, GetEncryptionKeyError> {
    client
        .get_encryption_key()
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .map(|answer| answer.kms_key_id().to_owned())
        .map_err(|e| e.into_service_error())
}

/// The gRPC API's answer for the Lambda key in `account_id` / `region`.
async fn grpc_lambda_key(
    sidecar: &Sidecar,
    account_id: &str,
    region: &str,
) -> Result<String, tonic::Status> {
    sidecar
        .admin_keys()
        .await
        .get_encryption_key(proto::GetEncryptionKeyRequest {
            account_id: account_id.to_owned(),
            region: region.to_owned(),
            ..get_request(LAMBDA)
        })
        .await
        .map(|answer| answer.into_inner().kms_key_id)
}

/// A snippet recorded by the local scanning service in `account_id` / `region`: its finding.
async fn record_finding(sidecar: &Sidecar, account_id: &str, region: &str) -> String {
    proto::local_code_scanning_service_client::LocalCodeScanningServiceClient::new(
        sidecar.unix_channel().await,
    )
    .record_code_finding(proto::RecordCodeFindingRequest {
        resource_type: LAMBDA,
        finding: Some(proto::CodeSnippetResult {
            start_line: 3,
            end_line: 3,
            code_snippet: vec![proto::CodeLine {
                content: format!("account = \"{account_id}\""),
                line_number: 3,
            }],
            ..Default::default()
        }),
        account_id: account_id.to_owned(),
        region: region.to_owned(),
    })
    .await
    .unwrap()
    .into_inner()
    .finding_arn
}

/// One credentials file, one admin profile per managed account: the sidecar's own as
/// before (no `aws_account_id`: it acts in the sidecar's own account), and one with
/// `aws_account_id` for each other account; each key acts in its account only, in the Region
/// it signs for, with the AWS SDK for Rust reading the profiles.
#[tokio::test]
async fn each_account_has_its_admin_profile_and_a_key_acts_in_its_account_and_signed_region() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let file = sidecar.aws_credentials_file();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the generated credentials are private");
    let text = std::fs::read_to_string(&file).unwrap();
    let section = |profile: &str| -> String {
        let start = text
            .find(&format!("[{profile}]\n"))
            .unwrap_or_else(|| panic!("no {profile} in {text}"));
        let rest = &text[start + profile.len() + 3..];
        rest[..rest.find('[').unwrap_or(rest.len())].to_owned()
    };
    assert!(
        !section("inspector-keyd-admin").contains("aws_account_id"),
        "{text}"
    );
    assert!(
        section(OTHER_PROFILE).contains("aws_account_id = 222233334444"),
        "{text}"
    );
    assert_eq!(text.matches("aws_access_key_id").count(), 2, "{text}");
    let (own_key, other_key) = (
        sidecar.aws_key("inspector-keyd-admin"),
        sidecar.aws_key(OTHER_PROFILE),
    );
    assert_ne!(own_key.0, other_key.0);
    assert_ne!(own_key.1, other_key.1);

    let other_in_eu = inspector_as(&sidecar, OTHER_PROFILE, "eu-west-1").await;
    let other_in_us = inspector_as(&sidecar, OTHER_PROFILE, "us-east-1").await;
    let own_in_us = inspector_as(&sidecar, "inspector-keyd-admin", "us-east-1").await;
    let own_in_eu = inspector_as(&sidecar, "inspector-keyd-admin", "eu-west-1").await;

    // A key of 222233334444 in eu-west-1 (the local KMS, admin over the Unix socket), put in
    // use there through the door and read back.
    let other_key_arn = sidecar
        .create_key(proto::CreateKeyRequest {
            account_id: OTHER_ACCOUNT.into(),
            region: "eu-west-1".into(),
            ..Default::default()
        })
        .await;
    assert!(
        other_key_arn.starts_with("arn:aws:kms:eu-west-1:222233334444:key/"),
        "{other_key_arn}"
    );
    other_in_eu
        .update_encryption_key()
        .kms_key_id(&other_key_arn)
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap();
    assert_eq!(get_lambda_key(&other_in_eu).await.unwrap(), other_key_arn);
    // Where the door put it: that scope, as the gRPC API sees it, and nowhere else.
    assert_eq!(
        grpc_lambda_key(&sidecar, OTHER_ACCOUNT, "eu-west-1")
            .await
            .unwrap(),
        other_key_arn
    );
    for (account, region) in [(OTHER_ACCOUNT, "us-east-1"), ("", "")] {
        let status = grpc_lambda_key(&sidecar, account, region)
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::NotFound,
            "{account}/{region}: {status:?}"
        );
    }

    // The same profile in us-east-1: the AWS owned key of that scope.
    let error = get_lambda_key(&other_in_us).await.unwrap_err();
    assert!(
        matches!(error, GetEncryptionKeyError::ResourceNotFoundException(_)),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("in 222233334444/us-east-1; the AWS owned key is in use"),
        "{error}"
    );
    // The sidecar's own profile: its own account, whatever Region it signs for. In
    // us-east-1 as before; eu-west-1 of its account is not managed, so it never sees the
    // other account's key there.
    let error = get_lambda_key(&own_in_us).await.unwrap_err();
    assert!(error.is_resource_not_found_exception(), "{error:?}");
    assert!(
        error.to_string().contains("111122223333/us-east-1"),
        "{error}"
    );
    let error = get_lambda_key(&own_in_eu).await.unwrap_err();
    let GetEncryptionKeyError::ValidationException(validation) = &error else {
        panic!("{error:?}");
    };
    assert!(
        validation
            .message()
            .starts_with("the sidecar does not manage account 111122223333 in eu-west-1"),
        "{error}"
    );
    assert!(!error.to_string().contains(&other_key_arn), "{error}");
    // A Region not managed: ValidationException (HTTP 400) naming the account and Region,
    // never ResourceNotFoundException (the AWS owned key).
    let other_in_mumbai = inspector_as(&sidecar, OTHER_PROFILE, "ap-south-1").await;
    let error = other_in_mumbai
        .get_encryption_key()
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.raw_response().unwrap().status().as_u16(), 400);
    let error = error.into_service_error();
    let GetEncryptionKeyError::ValidationException(validation) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(validation.reason(), &ValidationExceptionReason::Other);
    assert!(validation.fields().is_empty(), "{validation:?}");
    assert!(
        validation
            .message()
            .starts_with("the sidecar does not manage account 222233334444 in ap-south-1"),
        "{validation:?}"
    );
    // Nor can the other account's key change anything there.
    let error = other_in_mumbai
        .reset_encryption_key()
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_validation_exception(), "{error:?}");

    // The own profile keeps working as before: its key in use in its own scope.
    let own_key_arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    own_in_us
        .update_encryption_key()
        .kms_key_id(&own_key_arn)
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap();
    assert_eq!(get_lambda_key(&own_in_us).await.unwrap(), own_key_arn);
    assert_eq!(sidecar.read_lambda_key().await.unwrap(), own_key_arn);
    assert_eq!(get_lambda_key(&other_in_eu).await.unwrap(), other_key_arn);
    // The other account's key cannot reset the sidecar's own scope: it acts in its account.
    other_in_us
        .reset_encryption_key()
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap();
    assert_eq!(sidecar.read_lambda_key().await.unwrap(), own_key_arn);

    // Code snippets: a key reads its account's findings; another account's are
    // ACCESS_DENIED, each, and never read.
    let other_finding = record_finding(&sidecar, OTHER_ACCOUNT, "eu-west-1").await;
    let own_finding = record_finding(&sidecar, "111122223333", "us-east-1").await;
    let answer = other_in_eu
        .batch_get_code_snippet()
        .finding_arns(&other_finding)
        .finding_arns(&own_finding)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.code_snippet_results().len(), 1, "{answer:?}");
    let snippet = &answer.code_snippet_results()[0];
    assert_eq!(snippet.finding_arn(), Some(other_finding.as_str()));
    assert_eq!(
        snippet.code_snippet()[0].content(),
        "account = \"222233334444\""
    );
    assert_eq!(answer.errors().len(), 1, "{answer:?}");
    assert_eq!(answer.errors()[0].finding_arn(), own_finding);
    assert_eq!(answer.errors()[0].error_code().as_str(), "ACCESS_DENIED");
    assert!(
        answer.errors()[0]
            .error_message()
            .contains("the access key acts in account 222233334444 only"),
        "{answer:?}"
    );
    // Only other accounts' findings: each denied, none read.
    let answer = own_in_us
        .batch_get_code_snippet()
        .finding_arns(&other_finding)
        .send()
        .await
        .unwrap();
    assert!(answer.code_snippet_results().is_empty(), "{answer:?}");
    assert_eq!(answer.errors().len(), 1, "{answer:?}");
    assert_eq!(answer.errors()[0].error_code().as_str(), "ACCESS_DENIED");
    let answer = own_in_us
        .batch_get_code_snippet()
        .finding_arns(&own_finding)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.code_snippet_results()[0].code_snippet()[0].content(),
        "account = \"111122223333\""
    );
}

/// The AWS CLI and boto3 with the generated profile of another account and `--region`: the
/// scope they act in is that account's in that Region.
#[tokio::test]
async fn the_aws_cli_and_boto3_act_in_the_profiles_account_and_the_region_they_sign_for() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let home = tempfile::tempdir().unwrap();
    let aws = tool("KEYD_TEST_AWS_CLI", ".tools/venv/bin/aws");
    let run = |profile: &str, region: &str, args: &[&str]| {
        let output = aws_process(&aws, &sidecar.aws_credentials_file(), home.path())
            .args(["--endpoint-url", &sidecar.aws_url()])
            .args(["--profile", profile, "--region", region, "inspector2"])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let get = [
        "get-encryption-key",
        "--scan-type",
        "CODE",
        "--resource-type",
        "AWS_LAMBDA_FUNCTION",
    ];
    let arn = sidecar
        .create_key(proto::CreateKeyRequest {
            account_id: OTHER_ACCOUNT.into(),
            region: "eu-west-1".into(),
            ..Default::default()
        })
        .await;
    let (code, _, stderr) = run(
        OTHER_PROFILE,
        "eu-west-1",
        &[
            "update-encryption-key",
            "--kms-key-id",
            &arn,
            "--scan-type",
            "CODE",
            "--resource-type",
            "AWS_LAMBDA_FUNCTION",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = run(OTHER_PROFILE, "eu-west-1", &get);
    assert_eq!(code, Some(0), "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed, serde_json::json!({"kmsKeyId": arn}));
    assert_eq!(
        grpc_lambda_key(&sidecar, OTHER_ACCOUNT, "eu-west-1")
            .await
            .unwrap(),
        arn
    );

    let (code, _, stderr) = run(OTHER_PROFILE, "us-east-1", &get);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(
        stderr.contains("An error occurred (ResourceNotFoundException) when calling the GetEncryptionKey operation: no customer managed key is set for CODE + AWS_LAMBDA_FUNCTION in 222233334444/us-east-1; the AWS owned key is in use"),
        "{stderr}"
    );
    let (code, _, stderr) = run("inspector-keyd-admin", "eu-west-1", &get);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(
        stderr.contains("(ValidationException)")
            && stderr.contains("account 111122223333 in eu-west-1"),
        "{stderr}"
    );
    assert!(!stderr.contains(&arn), "{stderr}");
    let (code, _, stderr) = run(OTHER_PROFILE, "ap-south-1", &get);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(
        stderr.contains("An error occurred (ValidationException) when calling the GetEncryptionKey operation: the sidecar does not manage account 222233334444 in ap-south-1"),
        "{stderr}"
    );
    // The own profile as before.
    let (code, _, stderr) = run("inspector-keyd-admin", "us-east-1", &get);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(
        stderr.contains("(ResourceNotFoundException)") && stderr.contains("111122223333/us-east-1"),
        "{stderr}"
    );

    // boto3, with the same profiles: each session acts in its profile's account and Region.
    let python = tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
    let script = "import boto3, sys\n\
        for profile, region in [(sys.argv[2], 'eu-west-1'), (sys.argv[2], 'us-east-1')]:\n\
        \x20   c = boto3.Session(profile_name=profile, region_name=region).client('inspector2', endpoint_url=sys.argv[1])\n\
        \x20   try:\n\
        \x20       print(region, c.get_encryption_key(scanType='CODE', resourceType='AWS_LAMBDA_FUNCTION')['kmsKeyId'])\n\
        \x20   except c.exceptions.ResourceNotFoundException:\n\
        \x20       print(region, 'aws owned')\n";
    let output = aws_process(&python, &sidecar.aws_credentials_file(), home.path())
        .args(["-c", script, &sidecar.aws_url(), OTHER_PROFILE])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("eu-west-1 {arn}\nus-east-1 aws owned\n")
    );
}

/// A profile's `aws_account_id` must be an account id; the file is refused naming the
/// profile, never a secret.
#[test]
fn a_malformed_aws_account_id_is_refused_naming_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    write_private(
        &credentials,
        &format!(
            "[team-b]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_account_id = 2222333344\n",
            ADMIN.0, ADMIN.1
        ),
    );
    let mut command = std::process::Command::new(BIN);
    command.arg("serve").current_dir(dir.path());
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("INSPECTOR_KEYD_")) {
        command.env_remove(name);
    }
    let output = command
        .env("INSPECTOR_KEYD_LISTEN__TCP", "127.0.0.1:0")
        .env("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "")
        .env("INSPECTOR_KEYD_AWS_API__LISTEN", "127.0.0.1:0")
        .env(
            "INSPECTOR_KEYD_AWS_API__CREDENTIALS_FILE",
            credentials.to_str().unwrap(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("profile `team-b`: aws_account_id must be a 12-digit AWS account id"),
        "{stderr}"
    );
    assert!(!stderr.contains(ADMIN.1), "{stderr}");
}
