//! The aws backend against a real KMS-protocol server (moto) and an Inspector REST-JSON
//! stub on loopback: the exact requests the SDK sends, each error shape mapped to its gRPC
//! code and details, the account from STS, and start-up without a Region or credentials.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{process::Command, time::Duration};

use common::{
    inspector_stub::{AWS_ERROR_TEXT, InspectorStub, StubError},
    moto::{AWS_TEST_ENV, Moto},
    *,
};
use inspector_keyd::proto;
use tonic::Code;
use tonic_types::StatusExt;

fn aws_config(stub: &InspectorStub, moto: &Moto, account: Option<&str>) -> String {
    let account = account
        .map(|a| format!("account_id = \"{a}\"\n"))
        .unwrap_or_default();
    format!(
        "backend = \"aws\"\nregion = \"us-east-1\"\n{account}[aws]\ninspector2_endpoint = \"{}\"\nkms_endpoint = \"{}\"\nsts_endpoint = \"{}\"\nmax_attempts = 2\noperation_timeout = \"20s\"\n",
        stub.url(),
        moto.url(),
        moto.url()
    )
}

/// As [`aws_config`], with the background reads of the key settings (readiness, drift) an
/// hour apart, so they cannot take an error queued for the call under test.
fn quiet_aws_config(stub: &InspectorStub, moto: &Moto) -> String {
    format!(
        "{}[ops]\nready_check_interval = \"1h\"\ndrift_interval = \"1h\"\n",
        aws_config(stub, moto, Some("123456789012"))
    )
}

/// Waits for the start-up drift check, which reads both targets, CODE_REPOSITORY last.
async fn startup_reads_done(stub: &InspectorStub) {
    let done = eventually(Duration::from_secs(10), || async {
        stub.requests().iter().any(|r| {
            r.query
                .as_deref()
                .is_some_and(|q| q.contains("CODE_REPOSITORY"))
        })
    })
    .await;
    assert!(
        done,
        "no start-up read of CODE_REPOSITORY within 10 s: {:?}",
        stub.requests()
    );
}

/// The whole-call errors of every Inspector operation: the error shapes the stub answers
/// with, the gRPC code and ErrorInfo reason each must become. The retryable ones are queued
/// twice: the SDK tries `max_attempts` = 2 times, then gives up.
fn whole_call_errors() -> Vec<(Vec<StubError>, Code, &'static str)> {
    vec![
        (
            vec![StubError::Validation],
            Code::InvalidArgument,
            "INVALID_REQUEST",
        ),
        (
            vec![StubError::AccessDenied],
            Code::PermissionDenied,
            "BACKEND_ACCESS_DENIED",
        ),
        (
            vec![StubError::Throttling { retry_after: 7 }; 2],
            Code::ResourceExhausted,
            "BACKEND_THROTTLED",
        ),
        (
            vec![StubError::InternalServer { retry_after: 3 }; 2],
            Code::Unavailable,
            "BACKEND_UNAVAILABLE",
        ),
    ]
}

/// For each case, queues its errors and makes `call`, which must fail: with the case's code
/// and reason, RetryInfo from Retry-After for the retryable ones only, no AWS text, after
/// exactly one request per queued error, each the `(method, path, body)` expected.
async fn assert_whole_call_errors<F, Fut>(
    stub: &InspectorStub,
    cases: Vec<(Vec<StubError>, Code, &str)>,
    (method, path, body): (&str, &str, &serde_json::Value),
    mut call: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = tonic::Status>,
{
    for (errors, code, expected_reason) in cases {
        stub.clear_requests();
        let attempts = errors.len();
        stub.fail_next(errors);
        let status = call().await;
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(reason(&status), expected_reason);
        assert!(
            !status.message().contains(AWS_ERROR_TEXT),
            "AWS text reached the caller: {}",
            status.message()
        );
        // Only the call's own requests: the sidecar also reads key settings in the
        // background.
        let requests: Vec<_> = stub
            .requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect();
        assert_eq!(
            requests.len(),
            attempts,
            "attempts for {expected_reason}: {:?}",
            stub.requests()
        );
        for request in &requests {
            assert_eq!(request.method, method);
            assert_eq!(request.body.as_ref(), Some(body));
        }
        let retry_delay = status
            .get_error_details()
            .retry_info()
            .map(|r| r.retry_delay);
        let expected_delay = match code {
            Code::ResourceExhausted => Some(Some(Duration::from_secs(7))),
            Code::Unavailable => Some(Some(Duration::from_secs(3))),
            _ => None,
        };
        assert_eq!(retry_delay, expected_delay, "{status:?}");
    }
}

#[tokio::test]
async fn the_sdk_sends_exactly_the_inspector_requests() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    // No account configured: it comes from STS GetCallerIdentity (moto's account).
    let sidecar = Sidecar::start_with_env(&aws_config(&stub, &moto, None), AWS_TEST_ENV);
    assert!(
        sidecar.log().contains("account=123456789012"),
        "{}",
        sidecar.log()
    );
    let policy = sidecar.rendered_policy("amazon-q-lambda").await;
    assert!(
        policy.contains("arn:aws:iam::123456789012:role/inspector-keyd"),
        "render uses the resolved account"
    );
    let arn = moto.create_key(Some(&policy)).await;
    stub.clear_requests();

    let mut reader = sidecar.read_only_keys().await;
    let mut admin = sidecar.admin_keys().await;
    let status = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status),
        "AWS_OWNED_KEY",
        "ResourceNotFoundException means the AWS owned key"
    );
    admin
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap();
    admin
        .reset_encryption_key(proto::ResetEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: REPOSITORY,
        })
        .await
        .unwrap();

    let requests = stub.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let get = &requests[0];
    assert_eq!(
        (get.method.as_str(), get.path.as_str()),
        ("GET", "/encryptionkey/get")
    );
    let mut query: Vec<&str> = get.query.as_deref().unwrap().split('&').collect();
    query.sort_unstable();
    assert_eq!(query, ["resourceType=AWS_LAMBDA_FUNCTION", "scanType=CODE"]);
    let update = &requests[1];
    assert_eq!(
        (update.method.as_str(), update.path.as_str()),
        ("PUT", "/encryptionkey/update")
    );
    assert_eq!(
        update.body.as_ref().unwrap(),
        &serde_json::json!({"kmsKeyId": arn, "scanType": "CODE", "resourceType": "AWS_LAMBDA_FUNCTION"})
    );
    let reset = &requests[2];
    assert_eq!(
        (reset.method.as_str(), reset.path.as_str()),
        ("PUT", "/encryptionkey/reset")
    );
    assert_eq!(
        reset.body.as_ref().unwrap(),
        &serde_json::json!({"scanType": "CODE", "resourceType": "CODE_REPOSITORY"})
    );
    for request in &requests {
        request.assert_signed_for_inspector();
    }
}

#[tokio::test]
async fn each_inspector_error_maps_to_its_grpc_code() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let sidecar = Sidecar::start_with_env(&quiet_aws_config(&stub, &moto), AWS_TEST_ENV);
    let policy = sidecar.rendered_policy("amazon-q-lambda").await;
    let arn = moto.create_key(Some(&policy)).await;
    let mut admin = sidecar.admin_keys().await;
    startup_reads_done(&stub).await;

    let mut cases = whole_call_errors();
    cases.insert(
        2,
        (
            vec![StubError::ResourceNotFound],
            Code::NotFound,
            "NOT_FOUND",
        ),
    );
    let update_body = serde_json::json!({"kmsKeyId": arn, "scanType": "CODE", "resourceType": "AWS_LAMBDA_FUNCTION"});
    assert_whole_call_errors(
        &stub,
        cases,
        ("PUT", "/encryptionkey/update", &update_body),
        || {
            let (mut admin, arn) = (admin.clone(), arn.clone());
            async move {
                admin
                    .update_encryption_key(update_request(&arn))
                    .await
                    .unwrap_err()
            }
        },
    )
    .await;
    // The AWS text is in the sidecar's log, for operators.
    assert!(sidecar.log().contains(AWS_ERROR_TEXT));
    // Nothing was stored by the failed updates; one that succeeds afterwards is.
    assert_eq!(stub.key("CODE", "AWS_LAMBDA_FUNCTION"), None);
    admin
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap();
    assert_eq!(
        stub.key("CODE", "AWS_LAMBDA_FUNCTION").as_deref(),
        Some(arn.as_str())
    );

    // A failing read with no cached answer: UNAVAILABLE with RetryInfo.
    stub.fail_next(vec![StubError::InternalServer { retry_after: 2 }; 2]);
    let status = sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(REPOSITORY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.get_error_details().retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(2))
    );
}

/// A finding ARN in moto's account; `id` is 32 lowercase hex digits.
fn finding_arn(id: &str) -> String {
    format!("arn:aws:inspector2:us-east-1:123456789012:finding/{id}")
}

#[tokio::test]
async fn code_snippet_errors_map_to_codes_without_aws_text() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let sidecar = Sidecar::start_with_env(&quiet_aws_config(&stub, &moto), AWS_TEST_ENV);
    let mut reader = sidecar.code_reader_keys().await;
    let batch_get = |finding_arns: Vec<String>| proto::BatchGetCodeSnippetRequest { finding_arns };

    // Per-finding errors: Inspector's code, the sidecar's own text.
    let known = finding_arn("00000000000000000000000000000001");
    stub.put_snippet(
        &known,
        serde_json::json!({"findingArn": known, "startLine": 7, "endLine": 7,
            "codeSnippet": [{"content": "eval(input())", "lineNumber": 7}],
            "suggestedFixes": [{"description": "Do not eval input.", "code": "int(input())"}]}),
    );
    let per_finding = [
        (
            "00000000000000000000000000000002",
            "ACCESS_DENIED",
            proto::CodeSnippetErrorCode::AccessDenied,
        ),
        (
            "00000000000000000000000000000003",
            "INVALID_INPUT",
            proto::CodeSnippetErrorCode::InvalidInput,
        ),
        (
            "00000000000000000000000000000004",
            "INTERNAL_ERROR",
            proto::CodeSnippetErrorCode::InternalError,
        ),
        // A code newer than the sidecar: an internal error.
        (
            "00000000000000000000000000000005",
            "SOME_FUTURE_CODE",
            proto::CodeSnippetErrorCode::InternalError,
        ),
    ];
    let mut arns = vec![known.clone()];
    for (id, aws_code, _) in &per_finding {
        stub.put_snippet_error(&finding_arn(id), aws_code);
        arns.push(finding_arn(id));
    }
    let answer = reader
        .batch_get_code_snippet(batch_get(arns))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.code_snippet_results,
        [proto::CodeSnippetResult {
            finding_arn: known.clone(),
            start_line: 7,
            end_line: 7,
            code_snippet: vec![proto::CodeLine {
                content: "eval(input())".into(),
                line_number: 7
            }],
            suggested_fixes: vec![proto::SuggestedFix {
                description: "Do not eval input.".into(),
                code: "int(input())".into()
            }],
        }]
    );
    assert_eq!(
        answer
            .errors
            .iter()
            .map(|e| (e.finding_arn.clone(), e.error_code()))
            .collect::<Vec<_>>(),
        per_finding
            .iter()
            .map(|(id, _, code)| (finding_arn(id), *code))
            .collect::<Vec<_>>()
    );
    for error in &answer.errors {
        assert!(!error.error_message.is_empty(), "{error:?}");
        assert!(
            !error.error_message.contains(AWS_ERROR_TEXT),
            "AWS text reached the caller: {error:?}"
        );
    }
    let denied = &answer.errors[0];
    assert_ne!(
        denied.error_message, answer.errors[1].error_message,
        "each code has its own text"
    );
    // The AWS text is in the sidecar's log, for operators.
    assert!(
        eventually(Duration::from_secs(5), || async {
            sidecar.log().contains(AWS_ERROR_TEXT)
        })
        .await,
        "{}",
        sidecar.log()
    );

    // Whole-call errors: snippets are never cached, so each call asks Inspector.
    startup_reads_done(&stub).await;
    let snippet_body = serde_json::json!({"findingArns": [known]});
    assert_whole_call_errors(
        &stub,
        whole_call_errors(),
        ("POST", "/codesnippet/batchget", &snippet_body),
        || {
            let (mut reader, known) = (reader.clone(), known.clone());
            async move {
                reader
                    .batch_get_code_snippet(batch_get(vec![known]))
                    .await
                    .unwrap_err()
            }
        },
    )
    .await;

    // Nothing was left queued: the next call answers the snippet again.
    let answer = reader
        .batch_get_code_snippet(batch_get(vec![known.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer
            .code_snippet_results
            .iter()
            .map(|r| r.finding_arn.as_str())
            .collect::<Vec<_>>(),
        [known.as_str()]
    );
    assert!(answer.errors.is_empty(), "{:?}", answer.errors);
}

#[tokio::test]
async fn moto_multi_region_ids_are_refused_as_inspector_would() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let sidecar = Sidecar::start_with_env(
        &aws_config(&stub, &moto, Some("123456789012")),
        AWS_TEST_ENV,
    );
    // moto makes multi-Region key ids with dashes, which Inspector's KmsKeyArn pattern refuses.
    let output = moto
        .kms()
        .create_key()
        .multi_region(true)
        .send()
        .await
        .unwrap();
    let arn = output.key_metadata().unwrap().arn().unwrap().to_owned();
    assert!(
        arn.contains(":key/mrk-") && arn.matches('-').count() > 5,
        "{arn}"
    );
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        stub.requests()
            .iter()
            .all(|r| r.path != "/encryptionkey/update")
    );
    // VerifyKeyPolicy by inline metadata reports the same thing as a finding.
    let metadata = serde_json::json!({"KeyMetadata": {"KeyId": arn.rsplit('/').next().unwrap(), "Arn": arn,
        "KeyState": "Enabled", "KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT", "KeyManager": "CUSTOMER", "MultiRegion": true}});
    let request = proto::VerifyKeyPolicyRequest {
        profile: "amazon-q-lambda".into(),
        key: Some(proto::verify_key_policy_request::Key::InlineKey(
            proto::InlineKey {
                key_policy: sidecar.rendered_policy("amazon-q-lambda").await,
                key_metadata_json: metadata.to_string(),
            },
        )),
        ..Default::default()
    };
    let report = verify_report(&mut sidecar.read_only_keys().await, request).await;
    assert_eq!(
        report
            .findings
            .iter()
            .map(|f| f.code.as_str())
            .collect::<Vec<_>>(),
        ["KEY_ARN_INVALID"]
    );
}

fn serve_without(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyd.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "")
        .env("INSPECTOR_KEYD_AWS_API__LISTEN", "");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn startup_without_region_or_credentials_says_what_is_missing() {
    let listen = "[listen]\ntcp = \"127.0.0.1:0\"\n";
    let no_imds = [
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/inspector-keyd-test"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/inspector-keyd-test",
        ),
    ];
    let (code, stderr) = serve_without(&format!("backend = \"aws\"\n{listen}"), &no_imds);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no AWS Region"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (code, stderr) = serve_without(
        &format!("backend = \"aws\"\nregion = \"us-east-1\"\n{listen}"),
        &no_imds,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no usable AWS credentials"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An answer the SDK cannot read (here a BatchGetCodeSnippet body cut short) is described in
/// the log by what the SDK makes of it (an unknown error), never by its content.
#[tokio::test]
async fn an_unreadable_answer_is_not_written_to_the_log() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let sidecar = Sidecar::start_with_env(&quiet_aws_config(&stub, &moto), AWS_TEST_ENV);
    startup_reads_done(&stub).await;
    let secret = format!("SNIPPET{}", uuid::Uuid::new_v4().simple());
    let finding = format!(
        "arn:aws:inspector2:us-east-1:123456789012:finding/{}",
        uuid::Uuid::new_v4().simple()
    );
    stub.fail_next([StubError::Unreadable(format!(
        "{{\"codeSnippetResults\": [{{\"findingArn\": \"{finding}\", \"codeSnippet\": [{{\"content\": \"{secret}"
    ))]);
    let status = sidecar
        .code_reader_keys()
        .await
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: vec![finding],
        })
        .await
        .unwrap_err();
    assert!(!format!("{status:?}").contains(&secret), "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = sidecar.log();
    assert!(log.contains("AWS call failed"), "{log}");
    assert!(!log.contains(&secret), "the answer reached the log:\n{log}");
}
