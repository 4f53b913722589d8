//! One behaviour suite, written once and run against each backend: the local backend, and
//! the aws backend with KMS through a real moto server and Inspector served by a second
//! sidecar (local backend) through its AWS-protocol door — the wire protocol that boto3 and
//! the AWS CLI check in tests/aws_api.rs — so no hand-written stand-in answers here. (The
//! Inspector stub, tests/common/inspector_stub.rs, stays for tests/aws.rs: the exact
//! requests the SDK sends, and error shapes the door never produces.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    moto::{AWS_TEST_ENV, Moto},
    *,
};
use inspector_keyd::proto::{
    self, local_code_scanning_service_client::LocalCodeScanningServiceClient,
    verify_key_policy_request::Key,
};
use tonic::Code;
use tonic_types::StatusExt;

/// A sidecar on one backend, and a way to make keys in that backend's KMS.
struct Backend {
    sidecar: Sidecar,
    kms: Kms,
}

enum Kms {
    Local,
    /// KMS in moto, Inspector in `inspector`'s local backend through its door; each key is
    /// made in both, with the same ARN.
    Door {
        moto: Moto,
        inspector: Box<Sidecar>,
    },
}

/// Both backends verify Lambda keys against the Amazon Q profile here, so the same keys
/// and policies mean the same thing.
const PROFILE: &str = "[verification]\nlambda_profile = \"amazon-q-lambda\"\n";

impl Backend {
    async fn local() -> Backend {
        Backend {
            sidecar: Sidecar::start_with(PROFILE),
            kms: Kms::Local,
        }
    }

    async fn aws() -> Backend {
        let moto = Moto::start();
        // Inspector: a local-backend sidecar in moto's account, verifying as this one does.
        let inspector = Sidecar::start_with(&format!("account_id = \"123456789012\"\n{PROFILE}"));
        let config = format!(
            "backend = \"aws\"\nregion = \"us-east-1\"\naccount_id = \"123456789012\"\n{PROFILE}[aws]\ninspector2_endpoint = \"{}\"\nkms_endpoint = \"{}\"\nsts_endpoint = \"{}\"\niam_endpoint = \"{}\"\nmax_attempts = 2\n",
            inspector.aws_url(),
            moto.url(),
            moto.url(),
            moto.url()
        );
        // It signs with the key pair the Inspector sidecar wrote (admin there); moto takes any.
        let (id, secret) = inspector.aws_key("inspector-keyd-admin");
        let mut env: Vec<(&str, &str)> = AWS_TEST_ENV
            .iter()
            .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"))
            .copied()
            .collect();
        env.push(("AWS_ACCESS_KEY_ID", &id));
        env.push(("AWS_SECRET_ACCESS_KEY", &secret));
        Backend {
            sidecar: Sidecar::start_with_env(&config, &env),
            kms: Kms::Door {
                moto,
                inspector: Box::new(inspector),
            },
        }
    }

    fn account(&self) -> &'static str {
        match self.kms {
            Kms::Local => "111122223333",
            Kms::Door { .. } => "123456789012",
        }
    }

    async fn create_key(&self, policy: Option<&str>) -> String {
        match &self.kms {
            Kms::Local => {
                let request = proto::CreateKeyRequest {
                    policy: policy.unwrap_or_default().into(),
                    ..Default::default()
                };
                self.sidecar.create_key(request).await
            }
            Kms::Door { moto, inspector } => {
                let request = proto::CreateKeyRequest {
                    policy: policy.unwrap_or_default().into(),
                    ..Default::default()
                };
                let arn = inspector.create_key(request).await;
                let id = arn.rsplit('/').next().unwrap();
                let in_moto = moto.create_key_with_id(policy, Some(id)).await;
                assert_eq!(in_moto, arn, "one key in both");
                arn
            }
        }
    }

    async fn disable_key(&self, arn: &str) {
        match &self.kms {
            Kms::Local => {
                let request = proto::DisableKeyRequest { key_id: arn.into() };
                self.sidecar.kms().await.disable_key(request).await.unwrap();
            }
            Kms::Door { moto, inspector } => {
                let request = proto::DisableKeyRequest { key_id: arn.into() };
                inspector.kms().await.disable_key(request).await.unwrap();
                // moto's DisableKey takes the key id, not the ARN.
                let key_id = arn.rsplit('/').next().unwrap();
                moto.kms()
                    .disable_key()
                    .key_id(key_id)
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// A key whose policy passes the Lambda profile.
    async fn good_key(&self) -> String {
        let policy = self.sidecar.rendered_policy("amazon-q-lambda").await;
        self.create_key(Some(&policy)).await
    }

    /// A finding ARN in this backend's account and Region; `id` is 32 lowercase hex digits.
    fn finding_arn(&self, id: &str) -> String {
        format!(
            "arn:aws:inspector2:us-east-1:{}:finding/{id}",
            self.account()
        )
    }

    /// Makes `snippet` the one BatchGetCodeSnippet answers for its finding: recorded for a
    /// Lambda function by the local scanning service of the sidecar that serves Inspector.
    async fn put_snippet(&self, snippet: &proto::CodeSnippetResult) {
        let scanner = match &self.kms {
            Kms::Local => &self.sidecar,
            Kms::Door { inspector, .. } => inspector.as_ref(),
        };
        let recorded = LocalCodeScanningServiceClient::new(scanner.unix_channel().await)
            .record_code_finding(proto::RecordCodeFindingRequest {
                resource_type: LAMBDA,
                finding: Some(snippet.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(recorded.finding_arn, snippet.finding_arn);
    }

    /// What the backend itself holds for CODE + AWS_LAMBDA_FUNCTION, when it can be read
    /// around the sidecar: the Inspector sidecar's key, read over its own gRPC API.
    async fn stored_lambda_key(&self) -> Option<Option<String>> {
        match &self.kms {
            Kms::Local => None,
            Kms::Door { inspector, .. } => Some(match inspector.read_lambda_key().await {
                Ok(arn) => Some(arn),
                Err(status) if reason(&status) == "AWS_OWNED_KEY" => None,
                Err(status) => panic!("{status:?}"),
            }),
        }
    }
}

fn violation_types(status: &tonic::Status) -> Vec<String> {
    let details = status.get_error_details();
    details
        .precondition_failure()
        .map(|p| p.violations.iter().map(|v| v.r#type.clone()).collect())
        .unwrap_or_default()
}

async fn get_update_get_reset(backend: Backend) {
    let mut reader = backend.sidecar.read_only_keys().await;
    let mut admin = backend.sidecar.admin_keys().await;
    let status = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "AWS_OWNED_KEY")
    );

    let arn = backend.good_key().await;
    assert!(
        arn.contains(&format!(":{}:key/", backend.account())),
        "{arn}"
    );
    let updated = admin
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.applied);
    let report = updated.report.unwrap();
    assert!(
        report.passed && report.profile == "amazon-q-lambda",
        "{report:?}"
    );
    assert_eq!(
        reader
            .get_encryption_key(get_request(LAMBDA))
            .await
            .unwrap()
            .into_inner()
            .kms_key_id,
        arn
    );
    if let Some(stored) = backend.stored_lambda_key().await {
        assert_eq!(
            stored.as_deref(),
            Some(arn.as_str()),
            "the backend holds the key"
        );
    }

    let reset = proto::ResetEncryptionKeyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        ..Default::default()
    };
    admin.reset_encryption_key(reset.clone()).await.unwrap();
    let status = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "AWS_OWNED_KEY");
    if let Some(stored) = backend.stored_lambda_key().await {
        assert_eq!(stored, None);
    }
    // Reset is idempotent.
    admin.reset_encryption_key(reset).await.unwrap();
}

async fn unusable_keys_change_nothing(backend: Backend) {
    let mut admin = backend.sidecar.admin_keys().await;
    let good = backend.good_key().await;
    admin
        .update_encryption_key(update_request(&good))
        .await
        .unwrap();

    let disabled = backend.good_key().await;
    backend.disable_key(&disabled).await;
    let default_policy = backend.create_key(None).await;
    let unknown = format!(
        "arn:aws:kms:us-east-1:{}:key/00000000-0000-4000-8000-000000000000",
        backend.account()
    );
    for (arn, expected) in [
        (disabled.as_str(), "KEY_NOT_ENABLED"),
        (default_policy.as_str(), "REQUIRED_ACCESS_MISSING"),
        (unknown.as_str(), "KEY_NOT_FOUND"),
    ] {
        let status = admin
            .update_encryption_key(update_request(arn))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{arn}: {status:?}");
        assert!(
            violation_types(&status).iter().any(|t| t == expected),
            "{arn}: {:?}",
            violation_types(&status)
        );
    }
    let status = admin
        .update_encryption_key(update_request("alias/inspector"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let current = backend
        .sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap();
    assert_eq!(current.into_inner().kms_key_id, good);
    if let Some(stored) = backend.stored_lambda_key().await {
        assert_eq!(stored.as_deref(), Some(good.as_str()));
    }
}

async fn verify_by_arn_reads_the_key_as_it_is(backend: Backend) {
    let mut reader = backend.sidecar.code_reader_keys().await;
    let good = backend.good_key().await;
    let verify = |arn: &str| proto::VerifyKeyPolicyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        key: Some(Key::KmsKeyId(arn.into())),
        ..Default::default()
    };
    let report = verify_report(&mut reader, verify(&good)).await;
    assert!(report.passed, "{report:?}");

    let rendered = backend.sidecar.rendered_policy("amazon-q-lambda").await;
    let mut policy: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    policy["Statement"].as_array_mut().unwrap().push(serde_json::json!({
        "Sid": "NoQ", "Effect": "Deny", "Principal": {"Service": "q.amazonaws.com"}, "Action": "kms:Decrypt", "Resource": "*"
    }));
    let denied = backend.create_key(Some(&policy.to_string())).await;
    let report = verify_report(&mut reader, verify(&denied)).await;
    assert!(!report.passed);
    let denial = report
        .findings
        .iter()
        .find(|f| f.code == "REQUIRED_ACCESS_EXPLICITLY_DENIED")
        .unwrap();
    assert_eq!(denial.sid.as_deref(), Some("NoQ"));
}

async fn code_snippets_answer_per_finding(backend: Backend) {
    let known = backend.finding_arn("0123456789abcdef0123456789abcdef");
    let unknown = backend.finding_arn("fedcba9876543210fedcba9876543210");
    let stored = proto::CodeSnippetResult {
        finding_arn: known.clone(),
        start_line: 41,
        end_line: 43,
        code_snippet: vec![
            proto::CodeLine {
                content: "def handler(event, context):".into(),
                line_number: 41,
            },
            proto::CodeLine {
                content: "    query = \"SELECT * FROM t WHERE id = \" + event[\"id\"]".into(),
                line_number: 42,
            },
            proto::CodeLine {
                content: "    return db.execute(query)".into(),
                line_number: 43,
            },
        ],
        suggested_fixes: vec![
            proto::SuggestedFix {
                description: "Use a parameterized query.".into(),
                code: "db.execute(\"SELECT * FROM t WHERE id = %s\", (event[\"id\"],))".into(),
            },
            proto::SuggestedFix {
                description: "Validate the id first.".into(),
                code: "int(event[\"id\"])".into(),
            },
        ],
    };
    backend.put_snippet(&stored).await;

    let mut reader = backend.sidecar.code_reader_keys().await;
    let answer = reader
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: vec![known.clone(), unknown.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.code_snippet_results, [stored]);
    assert_eq!(answer.errors.len(), 1, "{:?}", answer.errors);
    let error = &answer.errors[0];
    assert_eq!(error.finding_arn, unknown);
    assert_eq!(
        error.error_code(),
        proto::CodeSnippetErrorCode::CodeSnippetNotFound
    );
    assert!(!error.error_message.is_empty());

    // Refused before the backend is asked: no ARN, eleven, and ARNs off the pattern.
    let eleven: Vec<String> = (0..11)
        .map(|i| backend.finding_arn(&format!("{i:032x}")))
        .collect();
    let invalid: Vec<Vec<String>> = vec![
        vec![],
        eleven,
        vec![
            known.clone(),
            "finding/0123456789abcdef0123456789abcdef".into(),
        ],
        vec![backend.finding_arn("0123456789ABCDEF0123456789ABCDEF")],
        vec![known.replace(":inspector2:", ":inspector:")],
    ];
    for finding_arns in invalid {
        let status = reader
            .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
                finding_arns: finding_arns.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::InvalidArgument, "INVALID_REQUEST"),
            "{finding_arns:?}: {status:?}"
        );
        let fields: Vec<String> = status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["finding_arns"], "{finding_arns:?}");
    }
}

/// Runs a suite case against the local backend and against the aws backend.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Backend::local().await).await;
                }
            )*
        }
        mod aws {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Backend::aws().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    get_update_get_reset,
    unusable_keys_change_nothing,
    verify_by_arn_reads_the_key_as_it_is,
    code_snippets_answer_per_finding
);
