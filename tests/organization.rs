//! Every account and Region of an organization from one sidecar, on the local backend's
//! emulated organization: the real binary with `[[accounts]]`, a key setting per scope,
//! verification from each scope's account and Region, and scopes it does not manage
//! refused as INVALID_ARGUMENT (never NOT_FOUND, which says "the AWS owned key").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{emulated::*, *};
use inspector_keyd::proto;
use tonic::Code;
use tonic_types::StatusExt;

const SCOPES: [(&str, &str); 4] = [
    (OWN, "us-east-1"),
    (OWN, "eu-west-1"),
    (OTHER, "us-east-1"),
    (OTHER, "eu-west-1"),
];

fn update(key: &str, (account_id, region): (&str, &str)) -> proto::UpdateEncryptionKeyRequest {
    proto::UpdateEncryptionKeyRequest {
        account_id: account_id.into(),
        region: region.into(),
        ..update_request(key)
    }
}

fn get((account_id, region): (&str, &str)) -> proto::GetEncryptionKeyRequest {
    proto::GetEncryptionKeyRequest {
        account_id: account_id.into(),
        region: region.into(),
        ..get_request(LAMBDA)
    }
}

/// A key of `account_id` in `region` with the default key policy (its account's IAM
/// principals may use it through their identity policies).
async fn key_of(sidecar: &Sidecar, (account_id, region): (&str, &str)) -> String {
    sidecar
        .create_key(proto::CreateKeyRequest {
            account_id: account_id.into(),
            region: region.into(),
            ..Default::default()
        })
        .await
}

/// A new key of `scope`, put in use there; its ARN.
async fn put_in_use(sidecar: &Sidecar, scope: (&str, &str)) -> String {
    let key = key_of(sidecar, scope).await;
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update(&key, scope))
        .await
        .unwrap();
    key
}

fn precondition_types(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .precondition_failure()
        .map(|f| f.violations.iter().map(|v| v.r#type.clone()).collect())
        .unwrap_or_default()
}

fn scope_refusal(status: &tonic::Status) -> (Code, String, Vec<String>) {
    let fields = status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    (status.code(), reason(status), fields)
}

#[tokio::test]
async fn each_account_and_region_has_its_own_key_in_use() {
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_file = audit_dir.path().join("audit.jsonl");
    let sidecar = Sidecar::start_with(&format!(
        "{ORGANIZATION}\n[authz]\naudit_file = {audit_file:?}\n"
    ));
    let mut admin = sidecar.admin_keys().await;
    let mut keys = Vec::new();
    for scope in SCOPES {
        let key = key_of(&sidecar, scope).await;
        admin
            .update_encryption_key(update(&key, scope))
            .await
            .unwrap();
        keys.push(key);
    }
    let mut reader = sidecar.read_only_keys().await;
    for (scope, key) in SCOPES.into_iter().zip(&keys) {
        let read = reader.get_encryption_key(get(scope)).await.unwrap();
        assert_eq!(&read.into_inner().kms_key_id, key, "{scope:?}");
    }
    // A client that names no scope reads the sidecar's own, as before scopes.
    let read = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap();
    assert_eq!(read.into_inner().kms_key_id, keys[0]);

    // Resetting one scope leaves the others alone.
    admin
        .reset_encryption_key(proto::ResetEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: LAMBDA,
            account_id: OTHER.into(),
            region: "eu-west-1".into(),
        })
        .await
        .unwrap();
    let status = reader.get_encryption_key(get(SCOPES[3])).await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::NotFound, "AWS_OWNED_KEY".to_owned())
    );
    let info = status.get_error_details();
    let metadata = &info.error_info().unwrap().metadata;
    assert_eq!(metadata["account_id"], OTHER);
    assert_eq!(metadata["region"], "eu-west-1");
    let read = reader.get_encryption_key(get(SCOPES[2])).await.unwrap();
    assert_eq!(read.into_inner().kms_key_id, keys[2]);

    // The audit lines name the scope of each write.
    let audited: Vec<serde_json::Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|r: &serde_json::Value| {
            r["rpc"]
                .as_str()
                .is_some_and(|rpc| rpc.ends_with("EncryptionKey"))
                && r["code"] == "OK"
        })
        .collect();
    let scopes: Vec<(&str, &str, &str)> = audited
        .iter()
        .map(|r| {
            (
                r["rpc"].as_str().unwrap().rsplit('/').next().unwrap(),
                r["account_id"].as_str().unwrap(),
                r["region"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        scopes.contains(&("UpdateEncryptionKey", OTHER, "eu-west-1"))
            && scopes.contains(&("UpdateEncryptionKey", OWN, "eu-west-1"))
            && scopes.contains(&("ResetEncryptionKey", OTHER, "eu-west-1")),
        "{scopes:?}"
    );

    // Durable per scope: a restarted sidecar reads what each scope had.
    let sidecar = sidecar.restart();
    let mut reader = sidecar.read_only_keys().await;
    for (i, scope) in SCOPES.into_iter().enumerate().take(3) {
        let read = reader.get_encryption_key(get(scope)).await.unwrap();
        assert_eq!(read.into_inner().kms_key_id, keys[i], "{scope:?}");
    }
}

#[tokio::test]
async fn a_key_is_verified_from_the_scope_it_is_put_in_use_for() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let mut admin = sidecar.admin_keys().await;

    // Inspector uses keys of the scope's Region only.
    let eu_key = key_of(&sidecar, (OTHER, "eu-west-1")).await;
    let status = admin
        .update_encryption_key(update(&eu_key, (OTHER, "us-east-1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        precondition_types(&status).contains(&"KEY_REGION_MISMATCH".to_owned()),
        "{status:?}"
    );

    // The sidecar's own account's key, whose policy lets only that account use it, is
    // refused for the other account: its principal cannot use the key.
    let own_key = key_of(&sidecar, (OWN, "us-east-1")).await;
    let status = admin
        .update_encryption_key(update(&own_key, (OTHER, "us-east-1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "KEY_VERIFICATION_FAILED");

    // Unless its policy lets the other account's principals use it.
    let shared_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "BothAccounts",
            "Effect": "Allow",
            "Principal": {"AWS": [
                format!("arn:aws:iam::{OWN}:root"),
                format!("arn:aws:iam::{OTHER}:root"),
            ]},
            "Action": "kms:*",
            "Resource": "*",
        }],
    });
    let shared_key = sidecar
        .create_key(proto::CreateKeyRequest {
            policy: shared_policy.to_string(),
            ..Default::default()
        })
        .await;
    let accepted = admin
        .update_encryption_key(update(&shared_key, (OTHER, "us-east-1")))
        .await
        .unwrap()
        .into_inner();
    // Accepted, with the other account's access named as external from this scope.
    let access = accepted.report.unwrap().access.unwrap();
    assert!(access.entries.iter().any(|e| e.external), "{access:?}");

    // The own key is fine for its own account, and a key whose policy is the other
    // account's own is fine there.
    admin
        .update_encryption_key(update(&own_key, (OWN, "us-east-1")))
        .await
        .unwrap();
    put_in_use(&sidecar, (OTHER, "us-east-1")).await;

    // VerifyKeyPolicy answers from the scope it names.
    let verify = |key: &str, scope: (&str, &str)| proto::VerifyKeyPolicyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        key: Some(proto::verify_key_policy_request::Key::KmsKeyId(key.into())),
        account_id: scope.0.into(),
        region: scope.1.into(),
        ..Default::default()
    };
    let mut code_reader = sidecar.code_reader_keys().await;
    let own_report = code_reader
        .verify_key_policy(verify(&own_key, (OWN, "us-east-1")))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(own_report.passed, "{own_report:?}");
    let other_report = code_reader
        .verify_key_policy(verify(&own_key, (OTHER, "us-east-1")))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(!other_report.passed, "{other_report:?}");
}

#[tokio::test]
async fn scopes_it_does_not_manage_are_invalid_arguments_naming_the_field() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let mut reader = sidecar.read_only_keys().await;
    let refusal = |scope| {
        let mut reader = reader.clone();
        async move {
            let status = reader.get_encryption_key(get(scope)).await.unwrap_err();
            scope_refusal(&status)
        }
    };
    let not_managed = |field: &str| {
        (
            Code::InvalidArgument,
            "SCOPE_NOT_MANAGED".to_owned(),
            vec![field.to_owned()],
        )
    };
    // An account it does not manage, a Region of a managed account it does not manage,
    // and a Region of its own account named alone.
    assert_eq!(
        refusal(("333344445555", "us-east-1")).await,
        not_managed("account_id")
    );
    assert_eq!(refusal((OTHER, "ap-south-1")).await, not_managed("region"));
    assert_eq!(refusal(("", "ap-south-1")).await, not_managed("region"));
    // Malformed values are plain invalid requests.
    assert_eq!(
        refusal(("12345", "us-east-1")).await,
        (
            Code::InvalidArgument,
            "INVALID_REQUEST".to_owned(),
            vec!["account_id".to_owned()]
        )
    );
    assert_eq!(
        refusal((OTHER, "moon-1")).await,
        (
            Code::InvalidArgument,
            "INVALID_REQUEST".to_owned(),
            vec!["region".to_owned()]
        )
    );
    // Writes are refused the same way, and change nothing.
    let key = key_of(&sidecar, (OWN, "us-east-1")).await;
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update(&key, ("333344445555", "us-east-1")))
        .await
        .unwrap_err();
    assert_eq!(scope_refusal(&status), not_managed("account_id"));
    let status = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "AWS_OWNED_KEY");

    // A sidecar with no accounts configured manages its own scope alone.
    let single = Sidecar::start();
    let status = single
        .read_only_keys()
        .await
        .get_encryption_key(get((OTHER, "us-east-1")))
        .await
        .unwrap_err();
    assert_eq!(scope_refusal(&status), not_managed("account_id"));
}

#[tokio::test]
async fn a_watch_follows_the_scope_it_names() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let mut watcher = sidecar.code_reader_keys().await;
    let mut stream = watcher
        .watch_encryption_key(proto::WatchEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: LAMBDA,
            account_id: OTHER.into(),
            region: "eu-west-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let current = next_event(&mut stream).await;
    assert_eq!(current.r#type(), proto::KeyEventType::Current);
    assert_eq!(
        (current.account_id.as_str(), current.region.as_str()),
        (OTHER, "eu-west-1")
    );

    // A change in another scope is not this watch's; the change in its own is.
    put_in_use(&sidecar, (OWN, "us-east-1")).await;
    let key = put_in_use(&sidecar, (OTHER, "eu-west-1")).await;
    let updated = next_event(&mut stream).await;
    assert_eq!(updated.r#type(), proto::KeyEventType::Updated);
    assert_eq!(updated.kms_key_id, key);
    assert_eq!(updated.account_id, OTHER);
}

async fn next_event(
    stream: &mut tonic::Streaming<proto::WatchEncryptionKeyResponse>,
) -> proto::WatchEncryptionKeyResponse {
    tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
        .await
        .expect("an event within 20 s")
        .unwrap()
        .expect("the stream is open")
}

#[test]
fn bad_account_entries_are_refused_at_start_naming_the_key() {
    for (config, wanted) in [
        (
            "[[accounts]]\nid = \"12\"\nregions = [\"us-east-1\"]\n",
            "12-digit",
        ),
        (
            "[[accounts]]\nid = \"222233334444\"\nregions = []\n",
            "`regions` is empty",
        ),
        (
            "[[accounts]]\nid = \"222233334444\"\nregions = [\"us-east-1\", \"moon\"]\n",
            "`moon`",
        ),
        (
            "[[accounts]]\nid = \"222233334444\"\nregions = [\"us-east-1\"]\n[[accounts]]\nid = \"222233334444\"\nregions = [\"eu-west-1\"]\n",
            "listed twice",
        ),
        (
            "[[accounts]]\nid = \"222233334444\"\nregions = [\"us-east-1\"]\nrole_arn = \"arn:aws:iam::111122223333:role/x\"\n",
            "not a role of the account",
        ),
        (
            "[[accounts]]\nid = \"222233334444\"\nregions = [\"us-east-1\"]\nprincipal_arn = \"arn:aws:iam::111122223333:role/x\"\n",
            "`principal_arn`",
        ),
        (
            "[[accounts]]\nid = \"222233334444\"\nregion = [\"us-east-1\"]\n",
            "unknown field `region`",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.toml");
        std::fs::write(&path, config).unwrap();
        let output = std::process::Command::new(BIN)
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{config} was accepted");
        assert!(stderr.contains("accounts"), "{config}: {stderr}");
        assert!(stderr.contains(wanted), "{config}: {stderr}");
    }
}

#[tokio::test]
async fn a_rule_limited_to_some_scopes_gives_its_role_there_alone() {
    let (other_admin, eu_reader) = ("other-admin-5e1d7c2b9a40", "eu-reader-0c9f3e8d21b7");
    let (sidecar, _dir) = with_rules(&format!(
        "[[rule]]\nrole = \"admin\"\ntoken_sha256 = \"{}\"\naccounts = [\"{OTHER}\"]\n\
         [[rule]]\nrole = \"read-only\"\ntoken_sha256 = \"{}\"\nregions = [\"eu-west-1\"]\n",
        sha256_hex(other_admin),
        sha256_hex(eu_reader),
    ));
    let mut tcp = proto::encryption_key_service_client::EncryptionKeyServiceClient::new(
        sidecar.tcp_channel().await,
    );
    let denied = |status: &tonic::Status| (status.code(), reason(status));
    let permission_denied = (Code::PermissionDenied, "ROLE_REQUIRED".to_owned());

    // Its accounts' scopes: it may put a key in use there.
    let key = key_of(&sidecar, (OTHER, "us-east-1")).await;
    tcp.update_encryption_key(with_token(update(&key, (OTHER, "us-east-1")), other_admin))
        .await
        .unwrap();
    let read = tcp
        .get_encryption_key(with_token(get((OTHER, "us-east-1")), other_admin))
        .await
        .unwrap();
    assert_eq!(read.into_inner().kms_key_id, key);

    // Elsewhere it has no role: not in the sidecar's own scope (named or not), and not in an
    // account the sidecar does not manage, which it is not told about.
    let own_key = key_of(&sidecar, (OWN, "us-east-1")).await;
    for scope in [(OWN, "us-east-1"), ("", ""), ("333344445555", "us-east-1")] {
        let status = tcp
            .update_encryption_key(with_token(update(&own_key, scope), other_admin))
            .await
            .unwrap_err();
        assert_eq!(denied(&status), permission_denied, "{scope:?}");
        let status = tcp
            .get_encryption_key(with_token(get(scope), other_admin))
            .await
            .unwrap_err();
        assert_eq!(denied(&status), permission_denied, "{scope:?}");
    }
    // In its account, a Region the sidecar does not manage is just that.
    let status = tcp
        .get_encryption_key(with_token(get((OTHER, "ap-south-1")), other_admin))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "SCOPE_NOT_MANAGED");
    // Nothing changed where it was refused.
    let status = sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "AWS_OWNED_KEY");
    // Code snippets of findings in the sidecar's own account are not its to read either.
    let status = tcp
        .batch_get_code_snippet(with_token(
            proto::BatchGetCodeSnippetRequest {
                finding_arns: vec![format!(
                    "arn:aws:inspector2:us-east-1:{OWN}:finding/0123456789abcdef0123456789abcdef"
                )],
            },
            other_admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied(&status), permission_denied);

    // A Region-limited reader reads that Region of every managed account, and no other.
    let status = tcp
        .get_encryption_key(with_token(get((OTHER, "eu-west-1")), eu_reader))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status),
        "AWS_OWNED_KEY",
        "allowed, and nothing is set"
    );
    let status = tcp
        .get_encryption_key(with_token(get((OTHER, "us-east-1")), eu_reader))
        .await
        .unwrap_err();
    assert_eq!(denied(&status), permission_denied);
}

#[test]
fn rules_limited_to_malformed_scopes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (rule, wanted) in [
        ("accounts = [\"12\"]", "not a 12-digit account id"),
        ("regions = [\"moon\"]", "not an AWS Region name"),
    ] {
        let rules = dir.path().join("rules.toml");
        write_whole(
            &rules,
            &format!("[[rule]]\nrole = \"admin\"\nunix_uid = 1\n{rule}\n"),
            0o644,
        );
        let config = dir.path().join("keyd.toml");
        std::fs::write(
            &config,
            format!("[authz]\nrules_file = {:?}\n", rules.to_str().unwrap()),
        )
        .unwrap();
        let output = std::process::Command::new(BIN)
            .args(["config", "check"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{rule} was accepted");
        assert!(stderr.contains(wanted), "{rule}: {stderr}");
    }
}

fn finding(finding_arn: &str, content: &str) -> proto::CodeSnippetResult {
    proto::CodeSnippetResult {
        finding_arn: finding_arn.into(),
        start_line: 1,
        end_line: 1,
        code_snippet: vec![proto::CodeLine {
            content: content.into(),
            line_number: 1,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn each_scope_has_its_own_scanning_service_and_snippets() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let mut scanning =
        proto::local_code_scanning_service_client::LocalCodeScanningServiceClient::new(
            sidecar.unix_channel().await,
        );
    let record =
        |scope: (&str, &str), finding_arn: &str, content: &str| proto::RecordCodeFindingRequest {
            resource_type: LAMBDA,
            finding: Some(finding(finding_arn, content)),
            account_id: scope.0.into(),
            region: scope.1.into(),
        };
    // A key in use in the other account's eu-west-1, and a finding recorded there.
    let scope = (OTHER, "eu-west-1");
    let key = put_in_use(&sidecar, scope).await;
    let other_finding = scanning
        .record_code_finding(record(scope, "", "print('eu')"))
        .await
        .unwrap()
        .into_inner()
        .finding_arn;
    assert!(
        other_finding.starts_with(&format!("arn:aws:inspector2:eu-west-1:{OTHER}:finding/")),
        "{other_finding}"
    );
    let own_finding = scanning
        .record_code_finding(record(("", ""), "", "print('own')"))
        .await
        .unwrap()
        .into_inner()
        .finding_arn;
    let described = scanning
        .describe_code_scanning(proto::DescribeCodeScanningRequest {
            resource_type: LAMBDA,
            account_id: OTHER.into(),
            region: "eu-west-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (described.kms_key_id.as_str(), described.snippet_count),
        (key.as_str(), 1)
    );

    // One call reads findings of both scopes, each under its scope's key.
    let answer = sidecar
        .code_reader_keys()
        .await
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: vec![other_finding.clone(), own_finding.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.errors.is_empty(), "{:?}", answer.errors);
    let mut read: Vec<(String, String)> = answer
        .code_snippet_results
        .into_iter()
        .map(|r| (r.finding_arn, r.code_snippet[0].content.clone()))
        .collect();
    read.sort();
    let mut wanted = vec![
        (other_finding, "print('eu')".to_owned()),
        (own_finding, "print('own')".to_owned()),
    ];
    wanted.sort();
    assert_eq!(read, wanted);

    // A finding of an account it does not manage is the request's error, on its field.
    let status = sidecar
        .code_reader_keys()
        .await
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: vec![
                "arn:aws:inspector2:eu-west-1:333344445555:finding/0123456789abcdef0123456789abcdef"
                    .into(),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(
        scope_refusal(&status),
        (
            Code::InvalidArgument,
            "SCOPE_NOT_MANAGED".to_owned(),
            vec!["finding_arns".to_owned()]
        )
    );
    // A finding recorded in one scope must be of that scope.
    let status = scanning
        .record_code_finding(record(
            (OTHER, "us-east-1"),
            &format!(
                "arn:aws:inspector2:eu-west-1:{OTHER}:finding/0123456789abcdef0123456789abcdef"
            ),
            "x",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        scope_refusal(&status),
        (
            Code::InvalidArgument,
            "INVALID_REQUEST".to_owned(),
            vec!["finding.finding_arn".to_owned()]
        )
    );
}

/// The `inspector_keyd_scope_key_failing` series of a scrape, as text.
fn failing_scopes(sidecar: &Sidecar) -> Vec<String> {
    let (code, body) = sidecar.http_get("/metrics");
    assert_eq!(code, 200);
    body.lines()
        .filter(|line| line.starts_with("inspector_keyd_scope_key_failing{"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_key_failing_in_another_scope_is_a_drift_event_and_a_series_of_that_scope_alone() {
    let sidecar = Sidecar::start_with(&format!(
        "{ORGANIZATION}\n[ops]\ndrift_interval = \"300ms\"\n"
    ));
    put_in_use(&sidecar, (OWN, "us-east-1")).await;
    let scope = (OTHER, "eu-west-1");
    let key = put_in_use(&sidecar, scope).await;
    let mut stream = sidecar
        .code_reader_keys()
        .await
        .watch_encryption_key(proto::WatchEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: LAMBDA,
            account_id: OTHER.into(),
            region: "eu-west-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_event(&mut stream).await.r#type(),
        proto::KeyEventType::Current
    );
    assert!(failing_scopes(&sidecar).is_empty());

    // Disabled behind the sidecar's back: the drift check finds it in that scope.
    sidecar
        .kms()
        .await
        .disable_key(proto::DisableKeyRequest {
            key_id: key.clone(),
        })
        .await
        .unwrap();
    let drift = next_event(&mut stream).await;
    assert_eq!(drift.r#type(), proto::KeyEventType::DriftDetected);
    assert_eq!((drift.account_id.as_str(), drift.region.as_str()), scope);
    let wanted = format!(
        "inspector_keyd_scope_key_failing{{account_id=\"{OTHER}\",region=\"eu-west-1\",scan_type=\"CODE\",resource_type=\"AWS_LAMBDA_FUNCTION\"}} 1"
    );
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            failing_scopes(&sidecar) == [wanted.clone()]
        })
        .await,
        "{:?}",
        failing_scopes(&sidecar)
    );
    // The own scope's gauges say nothing of it.
    let (_, body) = sidecar.http_get("/metrics");
    assert!(body.contains(
        "inspector_keyd_key_verification_passed{scan_type=\"CODE\",resource_type=\"AWS_LAMBDA_FUNCTION\"} 1"
    ));

    // Enabled again: resolved, and the series is gone.
    sidecar
        .kms()
        .await
        .enable_key(proto::EnableKeyRequest { key_id: key })
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut stream).await.r#type(),
        proto::KeyEventType::DriftResolved
    );
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            failing_scopes(&sidecar).is_empty()
        })
        .await
    );
}
