#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The code-snippet workflow of the local backend end to end through the public API:
//! findings recorded by the local scanning service, stored encrypted under a data key of the
//! key in use (through a grant), read back with BatchGetCodeSnippet, across Update, key
//! state changes, Reset and disabling code scanning; the state directory scanned for
//! plaintext after every step; key policies that deny.

mod common;

use common::{LAMBDA, Sidecar, reason, update_request};
use inspector_keyd::proto::{
    self, local_code_scanning_service_client::LocalCodeScanningServiceClient,
};
use tonic::{Code, transport::Channel};

const ACCOUNT: &str = "111122223333";
const PRINCIPAL: &str = "arn:aws:iam::111122223333:role/inspector-keyd";

async fn scanning(sidecar: &Sidecar) -> LocalCodeScanningServiceClient<Channel> {
    LocalCodeScanningServiceClient::new(sidecar.unix_channel().await)
}

/// A finding whose every line and fix carries `marker`, so a scan of the disk can look for it.
fn finding(marker: &str) -> proto::CodeSnippetResult {
    proto::CodeSnippetResult {
        finding_arn: String::new(),
        start_line: 10,
        end_line: 11,
        code_snippet: vec![
            proto::CodeLine {
                content: format!("password = \"{marker}-line-10\""),
                line_number: 10,
            },
            proto::CodeLine {
                content: format!("connect(password) # {marker}-line-11"),
                line_number: 11,
            },
        ],
        suggested_fixes: vec![proto::SuggestedFix {
            description: format!("Read the secret from a secret store ({marker})"),
            code: format!("password = secrets.get(\"{marker}-fix\")"),
        }],
    }
}

async fn record(sidecar: &Sidecar, marker: &str) -> Result<String, tonic::Status> {
    scanning(sidecar)
        .await
        .record_code_finding(proto::RecordCodeFindingRequest {
            resource_type: LAMBDA,
            finding: Some(finding(marker)),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().finding_arn)
}

async fn batch_get(sidecar: &Sidecar, arns: &[String]) -> proto::BatchGetCodeSnippetResponse {
    sidecar
        .code_reader_keys()
        .await
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: arns.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every finding comes back whole, as recorded.
async fn assert_readable(sidecar: &Sidecar, recorded: &[(String, String)]) {
    let arns: Vec<String> = recorded.iter().map(|(arn, _)| arn.clone()).collect();
    let answer = batch_get(sidecar, &arns).await;
    assert!(answer.errors.is_empty(), "{:?}", answer.errors);
    assert_eq!(answer.code_snippet_results.len(), recorded.len());
    for (arn, marker) in recorded {
        let result = answer
            .code_snippet_results
            .iter()
            .find(|r| &r.finding_arn == arn)
            .unwrap_or_else(|| panic!("no result for {arn}"));
        let mut expected = finding(marker);
        expected.finding_arn = arn.clone();
        assert_eq!(result, &expected);
    }
}

/// Every finding is answered with `code` and no result.
async fn assert_errors(sidecar: &Sidecar, arns: &[String], code: proto::CodeSnippetErrorCode) {
    let answer = batch_get(sidecar, arns).await;
    assert!(answer.code_snippet_results.is_empty(), "{answer:?}");
    assert_eq!(answer.errors.len(), arns.len(), "{answer:?}");
    for error in &answer.errors {
        assert_eq!(error.error_code(), code, "{error:?}");
        assert!(!error.error_message.is_empty());
    }
}

/// No file under the sidecar's directory holds any of `needles`, raw or hex-encoded.
fn assert_no_plaintext(sidecar: &Sidecar, needles: &[String]) {
    let mut files = vec![sidecar.dir().to_path_buf()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += 1;
        for needle in needles {
            let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
            for form in [needle.as_bytes(), hex.as_bytes()] {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form),
                    "{} holds the plaintext `{needle}`",
                    path.display()
                );
            }
        }
    }
    assert!(scanned > 0, "nothing scanned");
}

async fn describe(sidecar: &Sidecar) -> proto::DescribeCodeScanningResponse {
    scanning(sidecar)
        .await
        .describe_code_scanning(proto::DescribeCodeScanningRequest {
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn grants(sidecar: &Sidecar, key: &str) -> Vec<proto::GrantListEntry> {
    sidecar
        .kms()
        .await
        .list_grants(proto::ListGrantsRequest {
            key_id: key.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .grants
}

fn key_id(arn: &str) -> String {
    arn.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn snippets_follow_the_key_through_update_key_states_reset_and_disable() {
    let sidecar = Sidecar::start();
    let markers: Vec<String> = (0..3)
        .map(|i| format!("SECRET{i}{}", uuid::Uuid::new_v4().simple()))
        .collect();
    let needles: Vec<String> = markers
        .iter()
        .flat_map(|m| [format!("{m}-line-10"), format!("{m}-fix"), m.clone()])
        .collect();

    // Recorded under the AWS owned key (none set yet).
    let mut recorded = Vec::new();
    for marker in &markers {
        recorded.push((record(&sidecar, marker).await.unwrap(), marker.clone()));
    }
    let arns: Vec<String> = recorded.iter().map(|(arn, _)| arn.clone()).collect();
    assert_readable(&sidecar, &recorded).await;
    let owned = describe(&sidecar).await;
    assert_eq!((owned.kms_key_id.as_str(), owned.snippet_count), ("", 3));
    assert!(!owned.data_key_id.is_empty());
    assert_no_plaintext(&sidecar, &needles);

    // Update to key A: a grant for the scanning service with the six operations, a new
    // data key under A, the snippets re-encrypted.
    let key_a = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let key_b = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut admin = sidecar.admin_keys().await;
    admin
        .update_encryption_key(update_request(&key_a))
        .await
        .unwrap();
    let grants_a = grants(&sidecar, &key_a).await;
    assert_eq!(grants_a.len(), 1, "{grants_a:?}");
    let mut operations = grants_a[0].operations.clone();
    operations.sort();
    assert_eq!(
        operations,
        [
            "Decrypt",
            "DescribeKey",
            "Encrypt",
            "GenerateDataKey",
            "GenerateDataKeyWithoutPlaintext",
            "RetireGrant"
        ]
    );
    assert_eq!(
        grants_a[0].grantee_principal,
        "codeguru-security.amazonaws.com"
    );
    let under_a = describe(&sidecar).await;
    assert_eq!(under_a.kms_key_id, key_a);
    assert_eq!(under_a.grant_id, grants_a[0].grant_id);
    assert_ne!(under_a.data_key_id, owned.data_key_id);
    assert_readable(&sidecar, &recorded).await;
    assert_no_plaintext(&sidecar, &needles);

    // Update to key B: A's grant retired, reads still work, also after a restart.
    admin
        .update_encryption_key(update_request(&key_b))
        .await
        .unwrap();
    assert!(grants(&sidecar, &key_a).await.is_empty());
    assert_eq!(grants(&sidecar, &key_b).await.len(), 1);
    assert_eq!(describe(&sidecar).await.kms_key_id, key_b);
    assert_readable(&sidecar, &recorded).await;
    let sidecar = sidecar.restart();
    assert_readable(&sidecar, &recorded).await;
    assert_no_plaintext(&sidecar, &needles);

    // B disabled: every read is ACCESS_DENIED, and a scan cannot store a snippet.
    let mut kms = sidecar.kms().await;
    kms.disable_key(proto::DisableKeyRequest {
        key_id: key_id(&key_b),
    })
    .await
    .unwrap();
    assert_errors(&sidecar, &arns, proto::CodeSnippetErrorCode::AccessDenied).await;
    let refused = record(&sidecar, "NEVERSTORED").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(describe(&sidecar).await.snippet_count, 3);
    // Pending deletion: the same.
    kms.enable_key(proto::EnableKeyRequest {
        key_id: key_id(&key_b),
    })
    .await
    .unwrap();
    assert_readable(&sidecar, &recorded).await;
    kms.schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
        key_id: key_id(&key_b),
        pending_window_in_days: 7,
    })
    .await
    .unwrap();
    assert_errors(&sidecar, &arns, proto::CodeSnippetErrorCode::AccessDenied).await;
    kms.cancel_key_deletion(proto::CancelKeyDeletionRequest {
        key_id: key_id(&key_b),
    })
    .await
    .unwrap();
    kms.enable_key(proto::EnableKeyRequest {
        key_id: key_id(&key_b),
    })
    .await
    .unwrap();
    assert_readable(&sidecar, &recorded).await;

    // Reset: B's grant retired, its data key gone, the snippets under the AWS owned key.
    admin
        .reset_encryption_key(proto::ResetEncryptionKeyRequest {
            scan_type: common::CODE,
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(grants(&sidecar, &key_b).await.is_empty());
    let reset = describe(&sidecar).await;
    assert_eq!(
        (reset.kms_key_id.as_str(), reset.grant_id.as_str()),
        ("", "")
    );
    assert_ne!(reset.data_key_id, under_a.data_key_id);
    // Disabling B now changes nothing for the snippets.
    kms.disable_key(proto::DisableKeyRequest {
        key_id: key_id(&key_b),
    })
    .await
    .unwrap();
    assert_readable(&sidecar, &recorded).await;
    assert_no_plaintext(&sidecar, &needles);

    // Disable code scanning: the snippets and the data key are gone.
    let disabled = scanning(&sidecar)
        .await
        .disable_code_scanning(proto::DisableCodeScanningRequest {
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disabled.deleted_snippets, 3);
    assert_errors(
        &sidecar,
        &arns,
        proto::CodeSnippetErrorCode::CodeSnippetNotFound,
    )
    .await;
    assert_eq!(
        describe(&sidecar).await,
        proto::DescribeCodeScanningResponse::default()
    );
    assert_no_plaintext(&sidecar, &needles);
}

/// A key policy that names the sidecar's principal directly (no account delegation) with
/// the seed's two statements, less the ones `drop_sids` names, plus `extra`.
async fn direct_key_policy(
    sidecar: &Sidecar,
    drop_sids: &[&str],
    extra: &[serde_json::Value],
) -> String {
    let rendered: serde_json::Value =
        serde_json::from_str(&sidecar.rendered_policy("codeguru-grants").await).unwrap();
    let mut statements: Vec<serde_json::Value> = rendered["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !drop_sids.contains(&s["Sid"].as_str().unwrap_or_default()))
        .cloned()
        .map(|mut s| {
            s["Principal"] = serde_json::json!({"AWS": PRINCIPAL});
            s
        })
        .collect();
    // The key's administrators, so the policy does not lock the account out.
    statements.push(serde_json::json!({
        "Sid": "KeyAdministration",
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:role/key-admin")},
        "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:Put*", "kms:Enable*", "kms:Disable*", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"],
        "Resource": "*"
    }));
    statements.extend(extra.iter().cloned());
    serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

#[tokio::test]
async fn the_key_policy_decides_what_the_scanning_service_may_do() {
    let sidecar = Sidecar::start();
    let mut admin = sidecar.admin_keys().await;

    // Without the CreateGrant statement, Update fails verification: nothing changes, no grant.
    let policy = direct_key_policy(
        &sidecar,
        &["AllowCodeGuruSecurityToRequestAGrantForTheKey"],
        &[],
    )
    .await;
    let no_grant = sidecar
        .create_key(proto::CreateKeyRequest {
            policy,
            ..Default::default()
        })
        .await;
    let status = admin
        .update_encryption_key(update_request(&no_grant))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "KEY_VERIFICATION_FAILED");
    assert!(grants(&sidecar, &no_grant).await.is_empty());
    assert_eq!(describe(&sidecar).await.kms_key_id, "");

    // With both statements: in use, snippets recorded and read.
    let policy = direct_key_policy(&sidecar, &[], &[]).await;
    let key = sidecar
        .create_key(proto::CreateKeyRequest {
            policy: policy.clone(),
            ..Default::default()
        })
        .await;
    admin
        .update_encryption_key(update_request(&key))
        .await
        .unwrap();
    let marker = format!("POLICY{}", uuid::Uuid::new_v4().simple());
    let arn = record(&sidecar, &marker).await.unwrap();
    assert_readable(&sidecar, &[(arn.clone(), marker.clone())]).await;

    // The grant the scanning service uses is part of the key's access summary: its grantee
    // may read the code and retire the grant, whatever the key policy says.
    let grant = grants(&sidecar, &key).await.remove(0);
    let report = admin
        .verify_key_policy(proto::VerifyKeyPolicyRequest {
            profile: "codeguru-grants".into(),
            key: Some(proto::verify_key_policy_request::Key::KmsKeyId(key.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    let from_grant: Vec<&proto::AccessEntry> = report
        .access
        .as_ref()
        .unwrap()
        .entries
        .iter()
        .filter(|e| e.grant_id.as_deref() == Some(grant.grant_id.as_str()))
        .collect();
    assert_eq!(from_grant.len(), 2, "{report:?}");
    let reads = from_grant.iter().find(|e| e.reads_code).unwrap();
    assert!(
        reads.actions.iter().any(|a| a == "kms:Decrypt"),
        "{reads:?}"
    );
    assert_eq!(
        reads.witness.as_ref().unwrap().caller,
        grant.grantee_principal
    );
    assert!(!reads.external && !reads.public, "{reads:?}");
    let breaks = from_grant.iter().find(|e| e.breaks_scanning).unwrap();
    assert_eq!(breaks.actions, ["kms:RetireGrant"]);

    // A deny added later: reads are ACCESS_DENIED, a scan cannot store, naming the statement.
    let deny = serde_json::json!({
        "Sid": "NoCodeScanningDecrypt",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:ViaService": "codeguru-security.us-east-1.amazonaws.com"}}
    });
    let mut kms = sidecar.kms().await;
    kms.put_key_policy(proto::PutKeyPolicyRequest {
        key_id: key_id(&key),
        policy: direct_key_policy(&sidecar, &[], &[deny]).await,
    })
    .await
    .unwrap();
    assert_errors(
        &sidecar,
        std::slice::from_ref(&arn),
        proto::CodeSnippetErrorCode::AccessDenied,
    )
    .await;
    let refused = record(&sidecar, "NEVERSTORED").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason(&refused), "KEY_ACCESS_DENIED");
    assert!(
        refused.message().contains("NoCodeScanningDecrypt"),
        "{refused:?}"
    );
    // Taking the deny out makes them readable again.
    kms.put_key_policy(proto::PutKeyPolicyRequest {
        key_id: key_id(&key),
        policy,
    })
    .await
    .unwrap();
    assert_readable(&sidecar, &[(arn, marker)]).await;
}

#[tokio::test]
async fn requests_are_validated_and_roles_enforced() {
    let sidecar = Sidecar::start();
    let mut reader = sidecar.code_reader_keys().await;
    let arn = |hex: &str| format!("arn:aws:inspector2:us-east-1:{ACCOUNT}:finding/{hex}");
    let good = arn(&"a".repeat(32));
    // Source code takes code-reader: a read-only caller is refused before anything is read.
    let status = sidecar
        .read_only_keys()
        .await
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: vec![good.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "ROLE_REQUIRED");
    for (arns, fragment) in [
        (vec![], "0 finding ARNs"),
        (vec![good.clone(); 11], "11 finding ARNs"),
        (vec![arn(&"A".repeat(32))], "finding_arns[0]"),
        (
            vec![
                good.clone(),
                "arn:aws:kms:us-east-1:111122223333:key/x".into(),
            ],
            "finding_arns[1]",
        ),
    ] {
        let status = reader
            .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest { finding_arns: arns })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(fragment) || format!("{status:?}").contains(fragment),
            "{status:?}"
        );
    }
    // An unknown finding is answered per finding.
    let answer = batch_get(&sidecar, std::slice::from_ref(&good)).await;
    let codes: Vec<_> = answer
        .errors
        .iter()
        .map(|e| (e.finding_arn.clone(), e.error_code()))
        .collect();
    assert_eq!(
        codes,
        [(
            good.clone(),
            proto::CodeSnippetErrorCode::CodeSnippetNotFound
        )]
    );
    // One of an account the sidecar does not manage makes the request invalid: the caller
    // named a scope it cannot be answered for.
    let other_account =
        "arn:aws:inspector2:us-east-1:999999999999:finding/".to_owned() + &"b".repeat(32);
    let status = sidecar
        .code_reader_keys()
        .await
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: vec![good, other_account],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (tonic::Code::InvalidArgument, "SCOPE_NOT_MANAGED")
    );

    // Bad findings are refused and store nothing.
    let mut client = scanning(&sidecar).await;
    let mut too_long = finding("X");
    too_long.code_snippet[0].content = "x".repeat(241);
    let mut too_many_fixes = finding("X");
    too_many_fixes.suggested_fixes = vec![too_many_fixes.suggested_fixes[0].clone(); 6];
    for (resource_type, bad) in [
        (LAMBDA, too_long),
        (LAMBDA, too_many_fixes),
        (proto::ResourceType::AwsEc2Instance as i32, finding("X")),
    ] {
        let status = client
            .record_code_finding(proto::RecordCodeFindingRequest {
                resource_type,
                finding: Some(bad),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert_eq!(describe(&sidecar).await.snippet_count, 0);

    // The scanning service's RPCs need the admin role.
    let mut read_only = LocalCodeScanningServiceClient::new(sidecar.tcp_channel().await);
    let status = read_only
        .disable_code_scanning(proto::DisableCodeScanningRequest {
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}
