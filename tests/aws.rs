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
    aws_config_reading_iam_at(stub, moto, account, &moto.url())
}

/// As [`aws_config`], with IAM at `iam_endpoint`.
fn aws_config_reading_iam_at(
    stub: &InspectorStub,
    moto: &Moto,
    account: Option<&str>,
    iam_endpoint: &str,
) -> String {
    let account = account
        .map(|a| format!("account_id = \"{a}\"\n"))
        .unwrap_or_default();
    format!(
        "backend = \"aws\"\nregion = \"us-east-1\"\n{account}[aws]\ninspector2_endpoint = \"{}\"\nkms_endpoint = \"{}\"\nsts_endpoint = \"{}\"\niam_endpoint = \"{iam_endpoint}\"\nmax_attempts = 2\noperation_timeout = \"20s\"\n",
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
    // The drift check's start-up reads, in the background, are not the calls counted here.
    startup_reads_done(&stub).await;
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
            ..Default::default()
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
    // The principal is in IAM, but inline verification (read-only) uses only what the caller
    // sent: IAM is not read on its behalf, and the report says the principal's policies were
    // not checked.
    moto.iam()
        .create_role()
        .role_name("inspector-keyd")
        .assume_role_policy_document(TRUST)
        .send()
        .await
        .unwrap();
    let reads = principal_policy_reads(&sidecar);
    let report = verify_report(&mut sidecar.read_only_keys().await, request).await;
    assert_eq!(
        report
            .findings
            .iter()
            .map(|f| f.code.as_str())
            .collect::<Vec<_>>(),
        ["KEY_ARN_INVALID", "IDENTITY_POLICY_NOT_CHECKED"],
        "{report:#?}"
    );
    assert_eq!(principal_policy_reads(&sidecar), reads, "IAM was read");
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
    let log = sidecar.log_once_it_has("AWS call failed").await;
    assert!(log.contains("AWS call failed"), "{log}");
    assert!(!log.contains(&secret), "the answer reached the log:\n{log}");
}

const ACCOUNT: &str = "123456789012";
const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

/// [`quiet_aws_config`] for a sidecar that verifies Lambda keys against the seed's profile
/// (whose statements belong in the principal's identity policies) for `principal`, reads
/// IAM at `iam_endpoint`, and checks drift every `drift_interval`.
fn iam_config(
    stub: &InspectorStub,
    moto: &Moto,
    principal: &str,
    iam_endpoint: &str,
    drift_interval: &str,
) -> String {
    format!(
        "{}[verification]\nprincipal_arn = \"{principal}\"\nlambda_profile = \"codeguru-grants\"\n[ops]\nready_check_interval = \"1h\"\ndrift_interval = \"{drift_interval}\"\n",
        aws_config_reading_iam_at(stub, moto, Some(ACCOUNT), iam_endpoint)
    )
}

/// The seed's two identity-policy statements as `policy render` prints them for the
/// sidecar's principal: the CreateGrant one and the one that uses the key.
async fn seed_statements(sidecar: &Sidecar) -> (serde_json::Value, serde_json::Value) {
    let rendered: serde_json::Value =
        serde_json::from_str(&sidecar.rendered_policy("codeguru-grants").await).unwrap();
    let statements = rendered["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 2, "{rendered}");
    (statements[0].clone(), statements[1].clone())
}

fn document(statements: &[&serde_json::Value]) -> String {
    serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// `statement` without the action `action`.
fn without(statement: &serde_json::Value, action: &str) -> serde_json::Value {
    let mut statement = statement.clone();
    statement["Action"]
        .as_array_mut()
        .unwrap()
        .retain(|a| a != action);
    statement
}

/// A customer managed policy in moto; its ARN.
async fn managed_policy(iam: &aws_sdk_iam::Client, name: &str, document: String) -> String {
    iam.create_policy()
        .policy_name(name)
        .policy_document(document)
        .send()
        .await
        .unwrap()
        .policy()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

/// A stored key's report, through VerifyKeyPolicy.
async fn stored_key_report(sidecar: &Sidecar, key: &str) -> proto::VerificationReport {
    let request = proto::VerifyKeyPolicyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        key: Some(proto::verify_key_policy_request::Key::KmsKeyId(
            key.to_owned(),
        )),
        ..Default::default()
    };
    verify_report(&mut sidecar.code_reader_keys().await, request).await
}

fn codes(report: &proto::VerificationReport) -> Vec<&str> {
    let mut codes: Vec<&str> = report.findings.iter().map(|f| f.code.as_str()).collect();
    codes.sort_unstable();
    codes
}

/// The role of the IAM tests: the seed's CreateGrant statement inline; the statement that
/// uses the key in a managed policy whose default version is the second of three (the first
/// lacks kms:Encrypt, the third kms:Decrypt, so reading either shows); and, when
/// `boundary_denies` names an action, a permissions boundary allowing every action but it.
async fn seed_role(
    iam: &aws_sdk_iam::Client,
    name: &str,
    (grant, use_key): &(serde_json::Value, serde_json::Value),
    boundary_denies: Option<&str>,
) {
    iam.create_role()
        .role_name(name)
        .path("/team/")
        .assume_role_policy_document(TRUST)
        .send()
        .await
        .unwrap();
    iam.put_role_policy()
        .role_name(name)
        .policy_name("request-grants")
        .policy_document(document(&[grant]))
        .send()
        .await
        .unwrap();
    let policy = managed_policy(
        iam,
        &format!("{name}-use-key"),
        document(&[&without(use_key, "kms:Encrypt")]),
    )
    .await;
    for (statement, default) in [
        (use_key.clone(), true),
        (without(use_key, "kms:Decrypt"), false),
    ] {
        iam.create_policy_version()
            .policy_arn(&policy)
            .policy_document(document(&[&statement]))
            .set_as_default(default)
            .send()
            .await
            .unwrap();
    }
    iam.attach_role_policy()
        .role_name(name)
        .policy_arn(&policy)
        .send()
        .await
        .unwrap();
    if let Some(action) = boundary_denies {
        let boundary = managed_policy(
            iam,
            &format!("{name}-boundary"),
            serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Sid": "EverythingBut", "Effect": "Allow", "NotAction": action, "Resource": "*"}
            ]})
            .to_string(),
        )
        .await;
        iam.put_role_permissions_boundary()
            .role_name(name)
            .permissions_boundary(boundary)
            .send()
            .await
            .unwrap();
    }
}

/// The IAM calls of one read of a role with one inline and one managed policy.
const ROLE_ROUND: [&str; 6] = [
    "GetRole",
    "ListRolePolicies",
    "GetRolePolicy",
    "ListAttachedRolePolicies",
    "GetPolicy",
    "GetPolicyVersion",
];

#[tokio::test]
async fn identity_policies_and_the_permissions_boundary_are_read_from_iam() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let iam = moto.iam();
    // moto's default key policy delegates to the account, so the identity policies decide.
    let key = moto.create_key(None).await;

    // A role whose boundary leaves out kms:RetireGrant: exactly the two RetireGrant
    // requests fail, in one finding naming the boundary; the inline policy and the default
    // version of the managed one were read (any other source would fail other requests).
    let principal = format!("arn:aws:iam::{ACCOUNT}:role/team/bounded");
    let sidecar = Sidecar::start_with_env(
        &iam_config(&stub, &moto, &principal, &moto.url(), "1h"),
        AWS_TEST_ENV,
    );
    let statements = seed_statements(&sidecar).await;
    seed_role(&iam, "bounded", &statements, Some("kms:RetireGrant")).await;
    let report = stored_key_report(&sidecar, &key).await;
    assert!(!report.passed);
    assert_eq!(codes(&report), ["REQUIRED_ACCESS_MISSING"], "{report:#?}");
    for finding in &report.findings {
        assert_eq!(finding.requests.len(), 2, "{finding:?}");
        assert!(
            finding
                .requests
                .iter()
                .all(|r| r.starts_with("kms:RetireGrant via ")),
            "{finding:?}"
        );
        assert!(
            finding.message.contains("permissions boundary"),
            "{finding:?}"
        );
        assert!(
            finding.message.contains(&format!(
                "managed policy `arn:aws:iam::{ACCOUNT}:policy/bounded-boundary` (version v1)"
            )),
            "the finding names the boundary IAM holds: {finding:?}"
        );
        assert!(
            finding.fix().contains("permissions boundary"),
            "{finding:?}"
        );
    }
    // The Update gate refuses the key for the same reason.
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("kms:RetireGrant"), "{status:?}");
    assert_eq!(stub.key("CODE", "AWS_LAMBDA_FUNCTION"), None);
    drop(sidecar);

    // The same policies without a boundary pass, with nothing left unchecked.
    let principal = format!("arn:aws:iam::{ACCOUNT}:role/team/unbounded");
    let sidecar = Sidecar::start_with_env(
        &iam_config(&stub, &moto, &principal, &moto.url(), "1h"),
        AWS_TEST_ENV,
    );
    seed_role(&iam, "unbounded", &seed_statements(&sidecar).await, None).await;
    let report = stored_key_report(&sidecar, &key).await;
    assert!(report.passed, "{report:#?}");
    assert_eq!(codes(&report), Vec::<&str>::new(), "{report:#?}");
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&key))
        .await
        .unwrap();
    assert_eq!(
        stub.key("CODE", "AWS_LAMBDA_FUNCTION").as_deref(),
        Some(key.as_str())
    );
}

#[tokio::test]
async fn a_users_policies_include_its_groups() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let iam = moto.iam();
    let key = moto.create_key(None).await;
    let principal = format!("arn:aws:iam::{ACCOUNT}:user/ops/alice");
    let sidecar = Sidecar::start_with_env(
        &iam_config(&stub, &moto, &principal, &moto.url(), "1h"),
        AWS_TEST_ENV,
    );
    let (grant, use_key) = seed_statements(&sidecar).await;
    iam.create_user()
        .user_name("alice")
        .path("/ops/")
        .send()
        .await
        .unwrap();
    iam.create_group()
        .group_name("scanners")
        .send()
        .await
        .unwrap();
    iam.add_user_to_group()
        .group_name("scanners")
        .user_name("alice")
        .send()
        .await
        .unwrap();
    // The user's own inline policy requests grants; a policy attached to its group (and,
    // once more, to the user) uses the key.
    iam.put_user_policy()
        .user_name("alice")
        .policy_name("request-grants")
        .policy_document(document(&[&grant]))
        .send()
        .await
        .unwrap();
    let policy = managed_policy(&iam, "use-key", document(&[&use_key])).await;
    iam.attach_group_policy()
        .group_name("scanners")
        .policy_arn(&policy)
        .send()
        .await
        .unwrap();
    iam.attach_user_policy()
        .user_name("alice")
        .policy_arn(&policy)
        .send()
        .await
        .unwrap();
    let report = stored_key_report(&sidecar, &key).await;
    assert!(report.passed, "{report:#?}");
    assert_eq!(codes(&report), Vec::<&str>::new(), "{report:#?}");

    // A group's inline Deny reaches the user.
    iam.put_group_policy()
        .group_name("scanners")
        .policy_name("no-decrypt")
        .policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Sid": "NoDecrypt", "Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}
            ]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let sidecar = Sidecar::start_with_env(
        &iam_config(&stub, &moto, &principal, &moto.url(), "1h"),
        AWS_TEST_ENV,
    );
    let report = stored_key_report(&sidecar, &key).await;
    let denied: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code == "REQUIRED_ACCESS_EXPLICITLY_DENIED")
        .collect();
    // One finding for the denying statement, listing Decrypt via inspector2 and codeguru.
    assert_eq!(denied.len(), 1, "{report:#?}");
    for finding in denied {
        assert_eq!(finding.sid(), "NoDecrypt");
        assert_eq!(finding.requests.len(), 2, "{finding:?}");
        assert!(
            finding
                .requests
                .iter()
                .all(|r| r.starts_with("kms:Decrypt via ")),
            "{finding:?}"
        );
        assert!(
            finding
                .message
                .contains("IAM's inline policy `no-decrypt` of group `scanners`"),
            "{finding:?}"
        );
    }
}

/// The reads of the principal's policies the backend-call metric counts, of any outcome.
fn principal_policy_reads(sidecar: &Sidecar) -> f64 {
    sum_of_samples(
        &sidecar.scrape_metrics(),
        "inspector_keyd_backend_calls",
        "_total",
        &[("operation", "principal_policies")],
    )
}

#[tokio::test]
async fn iam_is_read_once_per_drift_interval() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let iam = moto.iam();
    let key = moto.create_key(None).await;
    let principal = format!("arn:aws:iam::{ACCOUNT}:role/team/cached");
    let sidecar = Sidecar::start_with_env(
        // Long enough for three verifications through moto on a loaded machine.
        &iam_config(&stub, &moto, &principal, &moto.url(), "8s"),
        AWS_TEST_ENV,
    );
    seed_role(&iam, "cached", &seed_statements(&sidecar).await, None).await;
    let setup = moto.iam_requests().len();
    let reads = || moto.iam_requests()[setup..].to_vec();

    // Three verifications (two VerifyKeyPolicy calls and the Update gate) well within the
    // interval make one round of IAM calls.
    assert!(stored_key_report(&sidecar, &key).await.passed);
    assert_eq!(reads(), ROLE_ROUND);
    assert!(stored_key_report(&sidecar, &key).await.passed);
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&key))
        .await
        .unwrap();
    assert_eq!(
        reads(),
        ROLE_ROUND,
        "the second and third verification read IAM"
    );
    // The backend-call metric counts that one read, not the answers kept.
    assert_eq!(principal_policy_reads(&sidecar), 1.0);

    // Once the interval has passed, the next verification (here the drift check, which
    // now has a key in use to check) reads IAM again.
    let again = eventually(Duration::from_secs(20), || async {
        reads().len() >= 2 * ROLE_ROUND.len()
    })
    .await;
    assert!(
        again,
        "IAM was not read again after the interval: {:?}",
        reads()
    );
    assert_eq!(reads()[ROLE_ROUND.len()..2 * ROLE_ROUND.len()], ROLE_ROUND);
}

#[tokio::test]
async fn iam_that_cannot_be_read_leaves_identity_policies_unchecked_and_says_why() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let key = moto.create_key(None).await;
    let unchecked = |report: &proto::VerificationReport| {
        let found: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.code == "IDENTITY_POLICY_NOT_CHECKED")
            .map(|f| (f.severity(), f.message.clone(), f.fix().to_owned()))
            .collect();
        assert_eq!(found.len(), 1, "{report:#?}");
        assert_eq!(found[0].0, proto::Severity::Warning);
        assert!(found[0].2.contains("sidecar-policy.json"), "{found:?}");
        found[0].1.clone()
    };

    // IAM unreachable: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let principal = format!("arn:aws:iam::{ACCOUNT}:role/team/somebody");
    let sidecar = Sidecar::start_with_env(
        &iam_config(&stub, &moto, &principal, &down, "1h"),
        AWS_TEST_ENV,
    );
    let report = stored_key_report(&sidecar, &key).await;
    assert!(report.passed, "a warning, as without IAM: {report:#?}");
    let message = unchecked(&report);
    assert!(message.contains("IAM could not be reached"), "{message}");
    // A key policy that names the role itself needs no identity policy, yet the role's
    // denies and boundary went unchecked: still said.
    let direct = moto
        .create_key(Some(&sidecar.rendered_policy("amazon-q-lambda").await))
        .await;
    let request = proto::VerifyKeyPolicyRequest {
        profile: "amazon-q-lambda".into(),
        key: Some(proto::verify_key_policy_request::Key::KmsKeyId(direct)),
        ..Default::default()
    };
    let report = verify_report(&mut sidecar.code_reader_keys().await, request).await;
    assert!(report.passed, "{report:#?}");
    let message = unchecked(&report);
    assert!(
        message.contains("could not be read from IAM (IAM could not be reached)"),
        "{message}"
    );
    drop(sidecar);

    // The principal is not in IAM.
    let sidecar = Sidecar::start_with_env(
        &iam_config(&stub, &moto, &principal, &moto.url(), "1h"),
        AWS_TEST_ENV,
    );
    let message = unchecked(&stored_key_report(&sidecar, &key).await);
    assert!(
        message.contains("role `somebody` does not exist in IAM"),
        "{message}"
    );
    drop(sidecar);

    // The sidecar may read the role but not its inline policies.
    let iam_refusing = iam_refusing_inline_policies(&principal).await;
    let sidecar = Sidecar::start_with_env(
        &iam_config(&stub, &moto, &principal, &iam_refusing, "1h"),
        AWS_TEST_ENV,
    );
    let report = stored_key_report(&sidecar, &key).await;
    let message = unchecked(&report);
    assert!(
        message.contains("IAM refused the sidecar's iam:GetRolePolicy (AccessDenied)"),
        "{message}"
    );
    // IAM's own words stay in the sidecar's log.
    assert!(
        !format!("{report:?}").contains("is not authorized"),
        "{report:#?}"
    );
    let log = sidecar.log_once_it_has("is not authorized").await;
    assert!(log.contains("is not authorized"), "{log}");
}

/// IAM on loopback that lets the caller read the role `role_arn` and list its inline
/// policies, and refuses everything else as IAM does (HTTP 403, the query protocol's
/// `AccessDenied` error). moto refuses in another XML shape, one AWS's SDKs do not read as
/// IAM's. Its URL.
async fn iam_refusing_inline_policies(role_arn: &str) -> String {
    let role_arn = role_arn.to_owned();
    let handle = move |body: String| {
        let role_arn = role_arn.clone();
        async move {
            let action = body
                .split('&')
                .find_map(|pair| pair.strip_prefix("Action="))
                .unwrap_or_default()
                .to_owned();
            let name = role_arn.rsplit('/').next().unwrap_or_default();
            let ok = |result: String| {
                (
                    axum::http::StatusCode::OK,
                    [("content-type", "text/xml")],
                    format!(
                        "<{action}Response xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><{action}Result>{result}</{action}Result><ResponseMetadata><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ResponseMetadata></{action}Response>"
                    ),
                )
            };
            match action.as_str() {
                "GetRole" => ok(format!(
                    "<Role><Path>/team/</Path><RoleName>{name}</RoleName><RoleId>AROADBQP57FF2AEXAMPLE</RoleId><Arn>{role_arn}</Arn><CreateDate>2024-01-01T00:00:00Z</CreateDate><AssumeRolePolicyDocument>%7B%7D</AssumeRolePolicyDocument></Role>"
                )),
                "ListRolePolicies" => ok(
                    "<PolicyNames><member>request-grants</member></PolicyNames><IsTruncated>false</IsTruncated>".into(),
                ),
                _ => (
                    axum::http::StatusCode::FORBIDDEN,
                    [("content-type", "text/xml")],
                    format!(
                        "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: arn:aws:sts::{ACCOUNT}:assumed-role/inspector-keyd/pod is not authorized to perform: iam:{action} on resource: {role_arn}</Message></Error><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ErrorResponse>"
                    ),
                ),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(axum::routing::post(handle));
        let _ = axum::serve(listener, app).await;
    });
    url
}
