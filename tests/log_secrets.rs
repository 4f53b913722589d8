//! Logs at the most verbose level, through the real binary on both backends: whatever
//! `RUST_LOG` or `log_level` asks for, no code snippet, session token, signature, bearer
//! token, AWS-protocol door secret or `Authorization` header reaches the log (the AWS SDK's and the HTTP stack's own
//! logging is capped).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{
    inspector_stub::InspectorStub,
    moto::{AWS_TEST_ENV, Moto},
    *,
};
use inspector_keyd::proto::{
    self, local_code_scanning_service_client::LocalCodeScanningServiceClient,
};

/// The ways to ask for trace logs: the environment, the configuration, and directives
/// more specific than a cap by target could be (a module of a capped crate, and a span
/// directive that enables every event inside the RPC spans).
fn trace_settings() -> [(&'static str, Vec<(&'static str, &'static str)>); 3] {
    [
        ("", vec![("RUST_LOG", "trace")]),
        ("log_level = \"trace\"\n", vec![]),
        (
            "",
            vec![(
                "RUST_LOG",
                "debug,[rpc]=trace,aws_smithy_runtime::client=trace,aws_sigv4::http_request=trace,h2::codec=trace,hyper::proto=trace",
            )],
        ),
    ]
}

/// The log is at debug level or more (the sidecar's start-up line saying so is there) and
/// holds none of `secrets`, nor any header or signature of a signed or authenticated request.
fn assert_clean(log: &str, secrets: &[&str]) {
    assert!(
        log.lines()
            .any(|l| l.contains(" DEBUG ") && l.contains("log filter in force")),
        "not a debug log:\n{log}"
    );
    for secret in secrets {
        assert!(!log.contains(secret), "`{secret}` reached the log:\n{log}");
    }
    let lower = log.to_ascii_lowercase();
    for needle in [
        "x-amz-security-token",
        "authorization",
        "signature=",
        "aws4-hmac-sha256",
        "bearer ",
    ] {
        assert!(
            !lower.contains(needle),
            "`{needle}` reached the log:\n{log}"
        );
    }
}

fn marker(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn trace_logs_of_the_local_backend_hold_no_snippet_or_token() {
    for (config, env) in trace_settings() {
        let sidecar = Sidecar::start_with_env(config, &env);
        let secret = marker("SNIPPET");
        // Recorded over the Unix socket, read back over TCP with the admin token.
        let finding_arn = LocalCodeScanningServiceClient::new(sidecar.unix_channel().await)
            .record_code_finding(proto::RecordCodeFindingRequest {
                resource_type: LAMBDA,
                finding: Some(proto::CodeSnippetResult {
                    start_line: 1,
                    end_line: 1,
                    code_snippet: vec![proto::CodeLine {
                        content: format!("password = \"{secret}-line\""),
                        line_number: 1,
                    }],
                    suggested_fixes: vec![proto::SuggestedFix {
                        description: "Use a secret store".into(),
                        code: format!("password = vault.get(\"{secret}-fix\")"),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .finding_arn;
        let token = sidecar.admin_token();
        let mut request = tonic::Request::new(proto::BatchGetCodeSnippetRequest {
            finding_arns: vec![finding_arn.clone()],
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let answer = sidecar
            .read_only_keys()
            .await
            .batch_get_code_snippet(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.code_snippet_results.len(), 1, "{answer:?}");
        assert!(
            answer.code_snippet_results[0].code_snippet[0]
                .content
                .contains(&secret)
        );
        // Through the AWS-protocol door, signed with the generated key pair; and a request
        // whose signature is refused.
        let key = sidecar.aws_key("inspector-keyd-admin");
        let door = sidecar
            .inspector(&key)
            .batch_get_code_snippet()
            .finding_arns(&finding_arn)
            .send()
            .await
            .unwrap();
        assert!(
            door.code_snippet_results()[0].code_snippet()[0]
                .content()
                .contains(&secret)
        );
        let wrong = (key.0.clone(), "wrong-secret-0123456789".to_owned());
        sidecar
            .inspector(&wrong)
            .get_encryption_key()
            .scan_type(aws_sdk_inspector2::types::ScanType::Code)
            .resource_type(aws_sdk_inspector2::types::ResourceType::AwsLambdaFunction)
            .send()
            .await
            .unwrap_err();
        let log = sidecar
            .log_once_it_has("its signature was not accepted")
            .await;
        assert!(log.contains("its signature was not accepted"), "{log}");
        assert_clean(&log, &[&secret, &token, &key.1]);
    }
}

#[tokio::test]
async fn trace_logs_of_the_aws_backend_hold_no_snippet_token_or_signature() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    for (extra, mut env) in trace_settings() {
        let session_token = marker("SESSIONTOKEN");
        env.extend(AWS_TEST_ENV.iter().copied());
        env.push(("AWS_SESSION_TOKEN", &session_token));
        // No account configured: STS GetCallerIdentity is called, signed with the token.
        let config = format!(
            "{extra}backend = \"aws\"\nregion = \"us-east-1\"\n[aws]\ninspector2_endpoint = \"{}\"\nkms_endpoint = \"{}\"\nsts_endpoint = \"{}\"\niam_endpoint = \"{}\"\nmax_attempts = 1\n",
            stub.url(),
            moto.url(),
            moto.url(),
            moto.url()
        );
        let sidecar = Sidecar::start_with_env(&config, &env);
        let secret = marker("SNIPPET");
        let finding = format!(
            "arn:aws:inspector2:us-east-1:123456789012:finding/{}",
            uuid::Uuid::new_v4().simple()
        );
        stub.put_snippet(
            &finding,
            serde_json::json!({"findingArn": finding, "startLine": 3, "endLine": 3,
                "codeSnippet": [{"content": format!("token = \"{secret}-line\""), "lineNumber": 3}],
                "suggestedFixes": [{"description": "Read it from a secret store.", "code": format!("token = env(\"{secret}-fix\")")}]}),
        );
        // Over the Unix socket, whose caller (this test's uid) may read snippets.
        let answer = sidecar
            .admin_keys()
            .await
            .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
                finding_arns: vec![finding.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.code_snippet_results.len(), 1, "{answer:?}");
        // A key verified through KMS (DescribeKey, GetKeyPolicy, signed with the token) and
        // put in use through Inspector.
        let policy = sidecar.rendered_policy("amazon-q-lambda").await;
        let key = moto.create_key(Some(&policy)).await;
        sidecar
            .admin_keys()
            .await
            .update_encryption_key(update_request(&key))
            .await
            .unwrap();
        let requests = stub.requests();
        assert!(
            requests.iter().any(|r| r.path == "/codesnippet/batchget"),
            "{requests:?}"
        );
        for request in &requests {
            request.assert_signed_for_inspector();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_clean(&sidecar.log(), &[&secret, &session_token]);
    }
}
