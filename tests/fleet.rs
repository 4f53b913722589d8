//! The organization's keys as a whole, on the local backend's emulated organization: the
//! inventory (`ListEncryptionKeys`, and `inspector-keyd fleet status` as its client over the
//! socket), each caller seeing the scopes its rules allow and the findings its role allows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;
use inspector_keyd::proto::{self, encryption_key_service_client::EncryptionKeyServiceClient};
use tonic::Code;

const OWN: &str = "111122223333";
const OTHER: &str = "222233334444";

/// The sidecar's own account in us-east-1 (its Region) and eu-west-1, and another account
/// in both.
const ORGANIZATION: &str = r#"
[[accounts]]
id = "222233334444"
regions = ["us-east-1", "eu-west-1"]

[[accounts]]
id = "111122223333"
regions = ["eu-west-1"]
"#;

/// A new key of `account_id` in `region`, put in use there for Lambda; its ARN.
async fn put_in_use(sidecar: &Sidecar, account_id: &str, region: &str) -> String {
    let key = sidecar
        .create_key(proto::CreateKeyRequest {
            account_id: account_id.into(),
            region: region.into(),
            ..Default::default()
        })
        .await;
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(proto::UpdateEncryptionKeyRequest {
            account_id: account_id.into(),
            region: region.into(),
            ..update_request(&key)
        })
        .await
        .unwrap();
    key
}

/// Every entry of the inventory `client` gets, and the messages' (done, total) counts.
async fn inventory(
    client: &mut EncryptionKeyServiceClient<tonic::transport::Channel>,
    request: tonic::Request<proto::ListEncryptionKeysRequest>,
) -> Result<(Vec<proto::KeyInventoryEntry>, Vec<(u32, u32)>), tonic::Status> {
    let mut stream = client.list_encryption_keys(request).await?.into_inner();
    let (mut entries, mut progress) = (Vec::new(), Vec::new());
    while let Some(message) = stream.message().await? {
        progress.push((message.scopes_done, message.scopes_total));
        entries.extend(message.entries);
    }
    Ok((entries, progress))
}

fn place(entry: &proto::KeyInventoryEntry) -> (String, String, i32) {
    (
        entry.account_id.clone(),
        entry.region.clone(),
        entry.resource_type,
    )
}

#[tokio::test]
async fn the_inventory_lists_every_scope_and_target_with_its_key_and_verification() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let own_eu = put_in_use(&sidecar, OWN, "eu-west-1").await;
    let other_us = put_in_use(&sidecar, OTHER, "us-east-1").await;

    let mut admin = sidecar.admin_keys().await;
    let (entries, progress) = inventory(
        &mut admin,
        tonic::Request::new(proto::ListEncryptionKeysRequest::default()),
    )
    .await
    .unwrap();
    // Scope by scope, the sidecar's own first; both targets of each.
    let places: Vec<_> = entries.iter().map(place).collect();
    let mut expected = Vec::new();
    for (account, region) in [
        (OWN, "us-east-1"),
        (OTHER, "us-east-1"),
        (OTHER, "eu-west-1"),
        (OWN, "eu-west-1"),
    ] {
        for resource in [LAMBDA, REPOSITORY] {
            expected.push((account.to_owned(), region.to_owned(), resource));
        }
    }
    assert_eq!(places, expected);
    assert_eq!(progress.last(), Some(&(4, 4)));
    for entry in &entries {
        assert!(entry.error.is_empty(), "{entry:?}");
        assert!(entry.read_at.is_some(), "{entry:?}");
        let wanted = match (
            entry.account_id.as_str(),
            entry.region.as_str(),
            entry.resource_type,
        ) {
            (OWN, "eu-west-1", LAMBDA) => Some(&own_eu),
            (OTHER, "us-east-1", LAMBDA) => Some(&other_us),
            _ => None,
        };
        match wanted {
            Some(key) => {
                assert_eq!(&entry.kms_key_id, key);
                let report = entry.report.as_ref().unwrap();
                assert!(report.passed, "{report:?}");
                assert!(report.access.is_some(), "an admin sees who may decrypt");
                assert!(entry.verified_at.is_some());
            }
            None => {
                assert_eq!(entry.kms_key_id, "", "the AWS owned key: {entry:?}");
                assert!(entry.report.is_none() && entry.verified_at.is_none());
            }
        }
    }

    // A read-only caller gets the verdicts, not who may decrypt or the findings.
    let mut reader = EncryptionKeyServiceClient::new(sidecar.tcp_channel().await);
    let (read_only, _) = inventory(
        &mut reader,
        tonic::Request::new(proto::ListEncryptionKeysRequest::default()),
    )
    .await
    .unwrap();
    assert_eq!(read_only.iter().map(place).collect::<Vec<_>>(), places);
    let verified: Vec<_> = read_only.iter().filter_map(|e| e.report.as_ref()).collect();
    assert_eq!(verified.len(), 2);
    assert!(
        verified
            .iter()
            .all(|r| r.passed && r.access.is_none() && r.findings.is_empty())
    );

    // Filters, and a filter that is not an account id.
    let (filtered, _) = inventory(
        &mut admin,
        tonic::Request::new(proto::ListEncryptionKeysRequest {
            account_ids: vec![OTHER.into()],
            regions: vec!["eu-west-1".into()],
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        filtered.iter().map(place).collect::<Vec<_>>(),
        [
            (OTHER.to_owned(), "eu-west-1".to_owned(), LAMBDA),
            (OTHER.to_owned(), "eu-west-1".to_owned(), REPOSITORY)
        ]
    );
    let status = inventory(
        &mut admin,
        tonic::Request::new(proto::ListEncryptionKeysRequest {
            account_ids: vec!["2222".into()],
            ..Default::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("account_ids"), "{status:?}");
}

#[tokio::test]
async fn a_caller_limited_to_one_account_sees_that_account_alone() {
    let dir = tempfile::tempdir().unwrap();
    let token = "other-reader-3b8e1f0c7a92";
    let rules = dir.path().join("rules.toml");
    write_whole(
        &rules,
        &format!(
            "[[rule]]\nrole = \"admin\"\nunix_uid = {uid}\n\
             [[rule]]\nrole = \"code-reader\"\ntoken_sha256 = \"{}\"\naccounts = [\"{OTHER}\"]\n",
            sha256_hex(token),
            uid = rustix::process::getuid().as_raw(),
        ),
        0o644,
    );
    let sidecar = Sidecar::start_with(&format!(
        "{ORGANIZATION}\n[authz]\nrules_file = {:?}\n",
        rules.to_str().unwrap()
    ));
    put_in_use(&sidecar, OTHER, "eu-west-1").await;
    put_in_use(&sidecar, OWN, "us-east-1").await;
    let mut tcp = EncryptionKeyServiceClient::new(sidecar.tcp_channel().await);
    let (entries, progress) = inventory(
        &mut tcp,
        with_token(proto::ListEncryptionKeysRequest::default(), token),
    )
    .await
    .unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e.account_id == OTHER), "{entries:?}");
    assert_eq!(
        progress.last(),
        Some(&(2, 2)),
        "its two scopes, no others counted"
    );
    // A code reader there sees who may decrypt with its account's key.
    let verified = entries.iter().find_map(|e| e.report.as_ref()).unwrap();
    assert!(verified.access.is_some());
    // Asking for the own account by name finds nothing it may read.
    let (entries, _) = inventory(
        &mut tcp,
        with_token(
            proto::ListEncryptionKeysRequest {
                account_ids: vec![OWN.into()],
                ..Default::default()
            },
            token,
        ),
    )
    .await
    .unwrap();
    assert!(entries.is_empty(), "{entries:?}");
}

fn fleet(sidecar: &Sidecar, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("fleet")
        .args(args)
        .arg("--socket")
        .arg(&sidecar.socket)
        .output()
        .unwrap()
}

#[tokio::test]
async fn fleet_status_prints_the_inventory_as_a_table_or_json() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let key = put_in_use(&sidecar, OTHER, "eu-west-1").await;

    let output = fleet(&sidecar, &["status", "--format", "json"]);
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let keys = json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 8);
    let in_use: Vec<_> = keys.iter().filter(|k| !k["kms_key_id"].is_null()).collect();
    assert_eq!(in_use.len(), 1);
    assert_eq!(in_use[0]["kms_key_id"], key.as_str());
    assert_eq!(in_use[0]["account_id"], OTHER);
    assert_eq!(in_use[0]["region"], "eu-west-1");
    assert_eq!(in_use[0]["resource_type"], "AWS_LAMBDA_FUNCTION");
    assert_eq!(in_use[0]["verification"]["passed"], true);
    assert_eq!(
        json["summary"],
        serde_json::json!({"scopes": 4, "targets": 8, "customer_managed": 1, "aws_owned": 7, "failing_verification": 0, "errors": 0})
    );

    let output = fleet(&sidecar, &["status", "--region", "eu-west-1"]);
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(
        lines[0].starts_with("ACCOUNT       REGION     RESOURCE TYPE"),
        "{table}"
    );
    let row = lines.iter().find(|l| l.contains(&key)).unwrap();
    assert!(
        row.starts_with(&format!("{OTHER}  eu-west-1  AWS_LAMBDA_FUNCTION")),
        "{row}"
    );
    assert!(row.contains(" passed "), "{row}");
    assert_eq!(table.matches("aws-owned").count(), 3, "{table}");
    assert!(output.stderr.is_empty(), "no progress bar off a terminal");

    // No sidecar there: exit 1, saying where it looked.
    let output = Command::new(BIN)
        .args(["fleet", "status", "--socket", "/nonexistent/keyd.sock"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the sidecar at `/nonexistent/keyd.sock`"),
        "{stderr}"
    );
}
