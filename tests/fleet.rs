//! The organization's keys as a whole, on the local backend's emulated organization: the
//! inventory (`ListEncryptionKeys`, and `inspector-keyd fleet status` as its client over the
//! socket), each caller seeing the scopes its rules allow and the findings its role allows;
//! and a desired state planned and applied (`PlanFleet`, `ApplyFleet`, `fleet plan`,
//! `fleet apply`): aliases resolved per scope, a missing alias and a disabled key each an
//! error of its scope alone, exit codes, idempotence, a caller limited to one account, and
//! a file with a typo refused with its line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{emulated::*, fleet::*, *};
use inspector_keyd::proto::{self, encryption_key_service_client::EncryptionKeyServiceClient};
use tonic::Code;

/// A new key of `account_id` in `region`; its ARN.
async fn key_in(sidecar: &Sidecar, account_id: &str, region: &str) -> String {
    sidecar
        .create_key(proto::CreateKeyRequest {
            account_id: account_id.into(),
            region: region.into(),
            ..Default::default()
        })
        .await
}

/// A new key of `account_id` in `region`, put in use there for Lambda; its ARN.
async fn put_in_use(sidecar: &Sidecar, account_id: &str, region: &str) -> String {
    let key = key_in(sidecar, account_id, region).await;
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

/// The organization, with the holder of `token` given `role` in OTHER's scopes alone (the
/// sidecar's own user stays admin everywhere); the directory holds the rules.
fn with_a_caller_limited_to_other(token: &str, role: &str) -> (Sidecar, tempfile::TempDir) {
    with_rules(&format!(
        "[[rule]]\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\naccounts = [\"{OTHER}\"]\n",
        sha256_hex(token)
    ))
}

#[tokio::test]
async fn a_caller_limited_to_one_account_sees_that_account_alone() {
    let token = "other-reader-3b8e1f0c7a92";
    let (sidecar, _dir) = with_a_caller_limited_to_other(token, "code-reader");
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
    assert!(
        lines[0].ends_with("READ AT"),
        "no desired-state column without a reconcile: {table}"
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

#[test]
fn a_mistake_on_a_fleet_command_line_exits_1_never_2_which_says_changes_are_pending() {
    for args in [
        &["fleet", "plan"][..],
        &["fleet", "plan", "desired.toml", "--format", "yaml"],
        &["fleet", "apply", "desired.toml", "--yse"],
        &["fleet", "statuz"],
    ] {
        let output = Command::new(BIN).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    let help = Command::new(BIN)
        .args(["fleet", "plan", "--help"])
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: inspector-keyd fleet plan"),
        "{help:?}"
    );
}

/// Lambda's key is the alias `alias/inspector-code` wherever it is managed.
const DESIRED: &str = r#"# The key Lambda scanning uses, organization-wide.
[[key]]
accounts = ["*"]
regions = ["*"]
resource_type = "AWS_LAMBDA_FUNCTION"
kms_key = "alias/inspector-code"
"#;

/// A new key of `account_id` in `region` named `alias/inspector-code` there.
async fn aliased_key(sidecar: &Sidecar, account_id: &str, region: &str) -> String {
    let key = key_in(sidecar, account_id, region).await;
    sidecar
        .kms()
        .await
        .create_alias(proto::CreateAliasRequest {
            alias_name: "alias/inspector-code".into(),
            target_key_id: key.clone(),
        })
        .await
        .unwrap();
    key
}

async fn lambda_key(sidecar: &Sidecar, account_id: &str, region: &str) -> Option<String> {
    sidecar
        .read_only_keys()
        .await
        .get_encryption_key(proto::GetEncryptionKeyRequest {
            account_id: account_id.into(),
            region: region.into(),
            ..get_request(LAMBDA)
        })
        .await
        .ok()
        .map(|answer| answer.into_inner().kms_key_id)
}

#[tokio::test]
async fn plan_and_apply_bring_every_scope_to_the_desired_state_scope_by_scope() {
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let sidecar = Sidecar::start_with(&format!(
        "{ORGANIZATION}\n[authz]\naudit_file = {audit_file:?}\n"
    ));
    let file = dir.path().join("desired.toml");
    std::fs::write(&file, DESIRED).unwrap();
    // The alias in three scopes; in one its key is disabled. The fourth has no such alias.
    let own_us = aliased_key(&sidecar, OWN, "us-east-1").await;
    let other_us = aliased_key(&sidecar, OTHER, "us-east-1").await;
    let disabled = aliased_key(&sidecar, OWN, "eu-west-1").await;
    let mut kms = sidecar.kms().await;
    kms.disable_key(proto::DisableKeyRequest {
        key_id: disabled.clone(),
    })
    .await
    .unwrap();

    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 1, "errors: exit 1 {plan}");
    let planned = actions(&plan);
    assert_eq!(planned.len(), 4, "Lambda in each scope: {plan}");
    let find =
        |changes: &[(String, String, String, Option<String>)], account: &str, region: &str| {
            changes
                .iter()
                .find(|(a, r, _, _)| a == account && r == region)
                .cloned()
                .unwrap()
        };
    assert_eq!(find(&planned, OWN, "us-east-1").2, "update");
    assert_eq!(find(&planned, OTHER, "us-east-1").2, "update");
    let missing = find(&planned, OTHER, "eu-west-1").3.unwrap();
    assert!(
        missing.contains("alias `alias/inspector-code` does not exist in 222233334444/eu-west-1"),
        "{missing}"
    );
    let failing = find(&planned, OWN, "eu-west-1").3.unwrap();
    assert!(
        failing.contains("fails verification") && failing.contains("KEY_NOT_ENABLED"),
        "{failing}"
    );
    let update = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["to"] == own_us.as_str())
        .unwrap();
    assert_eq!(
        update["from"],
        serde_json::Value::Null,
        "from the AWS owned key"
    );
    assert_eq!(update["report"]["passed"], true);
    assert_eq!(update["line"], 2);
    assert_eq!(
        plan["summary"],
        serde_json::json!({"unchanged": 0, "updates": 2, "resets": 0, "errors": 2, "applied": null, "retries": null})
    );
    assert_eq!(
        lambda_key(&sidecar, OWN, "us-east-1").await,
        None,
        "a plan changes nothing"
    );

    // Apply writes what it can and names what it could not.
    let output = fleet(&sidecar, &["apply", file.to_str().unwrap(), "--yes"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 target(s) are not in the desired state")
            && stderr.contains("222233334444/eu-west-1/AWS_LAMBDA_FUNCTION: the alias")
            && stderr.contains("111122223333/eu-west-1/AWS_LAMBDA_FUNCTION: "),
        "{stderr}"
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains(
            "Applied: 2 written (2 updated, 0 reset), 0 unchanged, 2 error(s), 0 throttled write(s) tried again."
        ),
        "{table}"
    );
    assert_eq!(
        lambda_key(&sidecar, OWN, "us-east-1").await,
        Some(own_us.clone())
    );
    assert_eq!(
        lambda_key(&sidecar, OTHER, "us-east-1").await,
        Some(other_us.clone())
    );
    assert_eq!(
        lambda_key(&sidecar, OWN, "eu-west-1").await,
        None,
        "never a failing key"
    );
    assert_eq!(lambda_key(&sidecar, OTHER, "eu-west-1").await, None);

    // Each write is a line of its own in the audit log.
    let audited = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit_file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &serde_json::Value| {
                r["rpc"] == "/inspectorkeyd.v1.EncryptionKeyService/ApplyFleet"
                    && !r["key_arn"].is_null()
            })
            .collect()
    };
    let writes = audited();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes.iter().any(|w| w["key_arn"] == own_us.as_str()
        && w["account_id"] == OWN
        && w["region"] == "us-east-1"
        && w["resource_type"] == "AWS_LAMBDA_FUNCTION"
        && w["code"] == "OK"));

    // Fixed: the alias made, the key enabled. Then everything is in the desired state.
    let other_eu = aliased_key(&sidecar, OTHER, "eu-west-1").await;
    kms.enable_key(proto::EnableKeyRequest {
        key_id: disabled.clone(),
    })
    .await
    .unwrap();
    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 2, "changes pending: {plan}");
    assert_eq!(plan["summary"]["updates"], 2);
    assert_eq!(plan["summary"]["unchanged"], 2);
    let (code, applied) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 0, "{applied}");
    assert_eq!(applied["summary"]["applied"], 2);
    assert_eq!(
        lambda_key(&sidecar, OTHER, "eu-west-1").await,
        Some(other_eu)
    );
    assert_eq!(lambda_key(&sidecar, OWN, "eu-west-1").await, Some(disabled));
    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 0, "nothing to change: {plan}");
    assert_eq!(plan["summary"]["unchanged"], 4);
    // A second apply writes nothing.
    let (code, again) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["summary"]["applied"], 0);
    assert_eq!(audited().len(), 4);

    // A later entry overrides: back to the AWS owned key in one scope.
    std::fs::write(
        &file,
        format!("{DESIRED}\n[[key]]\naccounts = [\"{OTHER}\"]\nregions = [\"us-east-1\"]\nresource_type = \"AWS_LAMBDA_FUNCTION\"\nkms_key = \"aws-owned\"\n"),
    )
    .unwrap();
    let (code, applied) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 0, "{applied}");
    let reset = find(&actions(&applied), OTHER, "us-east-1");
    assert_eq!(reset.2, "reset");
    assert_eq!(applied["summary"]["resets"], 1);
    assert_eq!(lambda_key(&sidecar, OTHER, "us-east-1").await, None);
    assert_eq!(lambda_key(&sidecar, OWN, "us-east-1").await, Some(own_us));
}

#[tokio::test]
async fn a_desired_state_with_a_typo_is_refused_with_its_line_and_changes_nothing() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    aliased_key(&sidecar, OWN, "us-east-1").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("desired.toml");
    let typo = DESIRED.replace("kms_key =", "kms_keys =");
    std::fs::write(&file, &typo).unwrap();
    for command in [&["plan"][..], &["apply", "--yes"]] {
        let output = fleet(&sidecar, &[command, &[file.to_str().unwrap()]].concat());
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("kms_keys") && stderr.contains("line 6"),
            "{stderr}"
        );
    }
    // The sidecar refuses it too, naming the field and the line.
    let status = sidecar
        .admin_keys()
        .await
        .plan_fleet(proto::PlanFleetRequest {
            desired_state: typo,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("desired_state") && status.message().contains("line 6"),
        "{status:?}"
    );
    assert_eq!(lambda_key(&sidecar, OWN, "us-east-1").await, None);

    // Apply asks first; with no terminal to ask on, it needs --yes.
    std::fs::write(&file, DESIRED).unwrap();
    let output = Command::new(BIN)
        .args(["fleet", "apply", file.to_str().unwrap(), "--socket"])
        .arg(&sidecar.socket)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("pass --yes"));
    assert_eq!(lambda_key(&sidecar, OWN, "us-east-1").await, None);
}

#[tokio::test]
async fn a_caller_limited_to_one_account_plans_and_applies_that_account_alone() {
    let token = "other-admin-7d2c9e41b0a8";
    let (sidecar, _dir) = with_a_caller_limited_to_other(token, "admin");
    for (account, region) in [
        (OWN, "us-east-1"),
        (OTHER, "us-east-1"),
        (OTHER, "eu-west-1"),
    ] {
        aliased_key(&sidecar, account, region).await;
    }
    let mut tcp = EncryptionKeyServiceClient::new(sidecar.tcp_channel().await);
    let changes = all_changes(
        tcp.apply_fleet(with_token(
            proto::ApplyFleetRequest {
                desired_state: DESIRED.into(),
                confirmed: None,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner(),
        |m| m.changes,
    )
    .await;
    let places: Vec<_> = changes
        .iter()
        .map(|c| (c.account_id.as_str(), c.region.as_str(), c.applied))
        .collect();
    assert_eq!(
        places,
        [(OTHER, "us-east-1", true), (OTHER, "eu-west-1", true)],
        "{changes:?}"
    );
    assert_eq!(lambda_key(&sidecar, OWN, "us-east-1").await, None);
    assert!(lambda_key(&sidecar, OTHER, "eu-west-1").await.is_some());

    // Naming an account beyond its rules is an error of that entry, not a silent nothing.
    let named = DESIRED.replace("accounts = [\"*\"]", &format!("accounts = [\"{OWN}\"]"));
    let changes = all_changes(
        tcp.plan_fleet(with_token(
            proto::PlanFleetRequest {
                desired_state: named,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner(),
        |m| m.changes,
    )
    .await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        changes[0]
            .error
            .contains("account 111122223333 is not managed by this sidecar (or not by your rules)"),
        "{changes:?}"
    );
}

/// Every change of a PlanFleet or ApplyFleet stream.
async fn all_changes<M>(
    mut stream: tonic::Streaming<M>,
    changes_of: impl Fn(M) -> Vec<proto::FleetChange>,
) -> Vec<proto::FleetChange> {
    let mut changes = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        changes.extend(changes_of(message));
    }
    changes
}

#[tokio::test]
async fn an_apply_of_a_confirmed_plan_writes_only_the_changes_still_as_confirmed() {
    let sidecar = Sidecar::start_with(ORGANIZATION);
    let moved = aliased_key(&sidecar, OWN, "us-east-1").await;
    let kept = aliased_key(&sidecar, OTHER, "us-east-1").await;
    let mut keys = sidecar.admin_keys().await;
    let plan = all_changes(
        keys.plan_fleet(proto::PlanFleetRequest {
            desired_state: DESIRED.into(),
        })
        .await
        .unwrap()
        .into_inner(),
        |m| m.changes,
    )
    .await;
    assert_eq!(
        plan.iter().filter(|c| c.error.is_empty()).count(),
        2,
        "{plan:?}"
    );

    // Meanwhile OWN/us-east-1's alias moves to another key, and OTHER/eu-west-1 gets one.
    let mut kms = sidecar.kms().await;
    kms.delete_alias(proto::DeleteAliasRequest {
        alias_name: "alias/inspector-code".into(),
        account_id: OWN.into(),
        region: "us-east-1".into(),
    })
    .await
    .unwrap();
    let elsewhere = aliased_key(&sidecar, OWN, "us-east-1").await;
    assert_ne!(elsewhere, moved);
    aliased_key(&sidecar, OTHER, "eu-west-1").await;

    let applied = all_changes(
        keys.apply_fleet(proto::ApplyFleetRequest {
            desired_state: DESIRED.into(),
            confirmed: Some(proto::ConfirmedPlan { changes: plan }),
        })
        .await
        .unwrap()
        .into_inner(),
        |m| m.changes,
    )
    .await;
    let at = |account: &str, region: &str| {
        applied
            .iter()
            .find(|c| c.account_id == account && c.region == region)
            .unwrap()
            .clone()
    };
    let written = at(OTHER, "us-east-1");
    assert!(written.applied && written.error.is_empty(), "{written:?}");
    assert_eq!(lambda_key(&sidecar, OTHER, "us-east-1").await, Some(kept));
    for (account, region) in [(OWN, "us-east-1"), (OTHER, "eu-west-1")] {
        let refused = at(account, region);
        assert!(!refused.applied, "{refused:?}");
        assert!(
            refused
                .error
                .contains("changed since the plan was confirmed: not written; plan again"),
            "{refused:?}"
        );
        assert_eq!(
            lambda_key(&sidecar, account, region).await,
            None,
            "{account}/{region}"
        );
    }
}

/// A sidecar reconciling `desired` in `mode` every second; the file's path.
fn reconciling(desired: &str, mode: &str, dir: &std::path::Path) -> Sidecar {
    let file = dir.join("desired.toml");
    write_whole(&file, desired, 0o600);
    let audit_file = dir.join("audit.jsonl");
    Sidecar::start_with(&format!(
        "{ORGANIZATION}\n[authz]\naudit_file = {audit_file:?}\n[fleet]\ndesired_state_file = {file:?}\ninterval = \"1s\"\nmode = \"{mode}\"\n"
    ))
}

#[tokio::test]
async fn reconcile_reports_drift_from_the_desired_state_and_enforce_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    // Before any key exists, the alias is missing everywhere: an error in each scope.
    let sidecar = reconciling(DESIRED, "report", dir.path());
    until_fleet(&sidecar, [0, 0, 4]).await;
    let mut watch = watch_lambda(&sidecar, OTHER, "eu-west-1").await;
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.r#type(), proto::KeyEventType::Current);
    let keys = aliased_everywhere(&sidecar).await;
    // Out of the desired state everywhere, and said so; nothing written in report mode.
    until_fleet(&sidecar, [0, 4, 0]).await;
    let drift = next_event(&mut watch).await;
    assert_eq!(drift.r#type(), proto::KeyEventType::DesiredStateDrift);
    assert_eq!(drift.kms_key_id, "", "the AWS owned key is in use");
    assert_eq!(lambda_key(&sidecar, OTHER, "eu-west-1").await, None);
    assert!(sidecar.log().contains("fleet: out of the desired state"));
    // The inventory says where each target stands; code repositories are not named.
    let output = fleet(&sidecar, &["status", "--format", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in status["keys"].as_array().unwrap() {
        let wanted = if key["resource_type"] == "AWS_LAMBDA_FUNCTION" {
            serde_json::json!("out")
        } else {
            serde_json::Value::Null
        };
        assert_eq!(key["desired_state"], wanted, "{key}");
    }
    let output = fleet(&sidecar, &["status"]);
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.lines().next().unwrap().ends_with("  DESIRED STATE"),
        "{table}"
    );
    for line in table.lines().skip(1) {
        let standing = line.rsplit("  ").next().unwrap();
        let wanted = if line.contains("AWS_LAMBDA_FUNCTION") {
            "out"
        } else {
            "-"
        };
        assert_eq!(standing, wanted, "{table}");
    }

    // Put in use by hand in one scope: back in the desired state there.
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(proto::UpdateEncryptionKeyRequest {
            account_id: OTHER.into(),
            region: "eu-west-1".into(),
            ..update_request(&keys[2])
        })
        .await
        .unwrap();
    until_fleet(&sidecar, [1, 3, 0]).await;
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let event = next_event(&mut watch).await;
        kinds.push(event.r#type());
    }
    assert_eq!(
        kinds,
        [
            proto::KeyEventType::Updated,
            proto::KeyEventType::DesiredStateRestored
        ]
    );
    drop(sidecar);

    // Enforcing, a sidecar on the same desired state brings every scope to it, each write
    // audited as the reconcile's; each drift is still reported before it is written away.
    let dir = tempfile::tempdir().unwrap();
    let sidecar = reconciling(DESIRED, "enforce", dir.path());
    let mut watch = watch_lambda(&sidecar, OTHER, "eu-west-1").await;
    assert_eq!(
        watch.message().await.unwrap().unwrap().r#type(),
        proto::KeyEventType::Current
    );
    let keys = aliased_everywhere(&sidecar).await;
    until_fleet(&sidecar, [4, 0, 0]).await;
    let mut events = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut watch).await;
        events.push((event.r#type(), event.kms_key_id));
    }
    assert_eq!(
        events,
        [
            (proto::KeyEventType::DesiredStateDrift, String::new()),
            (proto::KeyEventType::Updated, keys[2].clone()),
            (proto::KeyEventType::DesiredStateRestored, keys[2].clone()),
        ]
    );
    for (account, region) in [(OWN, "us-east-1"), (OTHER, "eu-west-1")] {
        assert!(lambda_key(&sidecar, account, region).await.is_some());
    }
    let audited = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let writes: Vec<serde_json::Value> = audited
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["caller"] == "inspector-keyd:reconcile")
        .collect();
    assert_eq!(writes.len(), 4, "{audited}");
    assert!(
        writes
            .iter()
            .all(|w| w["code"] == "OK" && w["rpc"] == "reconcile")
    );

    // A change to the file that does not parse keeps the last good one in force: a scope
    // reset by hand is brought back to the key it names.
    write_whole(
        &dir.path().join("desired.toml"),
        &DESIRED.replace("kms_key =", "kms_keys ="),
        0o600,
    );
    sidecar
        .log_once_it_has(
            "fleet: the desired state cannot be read; the last one read stays in force",
        )
        .await;
    sidecar
        .admin_keys()
        .await
        .reset_encryption_key(proto::ResetEncryptionKeyRequest {
            account_id: OTHER.into(),
            region: "eu-west-1".into(),
            scan_type: proto::ScanType::Code as i32,
            resource_type: LAMBDA,
        })
        .await
        .unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            lambda_key(&sidecar, OTHER, "eu-west-1").await.as_ref() == Some(&keys[2])
        })
        .await,
        "{}",
        sidecar.log()
    );
    assert!(
        sidecar.log().contains("unknown field `kms_keys`"),
        "{}",
        sidecar.log()
    );
}

/// A key named `alias/inspector-code` in each scope: (OWN, us-east-1), (OTHER, us-east-1),
/// (OTHER, eu-west-1), (OWN, eu-west-1), in that order.
async fn aliased_everywhere(sidecar: &Sidecar) -> Vec<String> {
    let mut keys = Vec::new();
    for (account, region) in [
        (OWN, "us-east-1"),
        (OTHER, "us-east-1"),
        (OTHER, "eu-west-1"),
        (OWN, "eu-west-1"),
    ] {
        keys.push(aliased_key(sidecar, account, region).await);
    }
    keys
}

/// The Watch's next event, within 10 s.
async fn next_event(
    watch: &mut tonic::Streaming<proto::WatchEncryptionKeyResponse>,
) -> proto::WatchEncryptionKeyResponse {
    tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// A Watch of Lambda's key in `account_id`/`region`.
async fn watch_lambda(
    sidecar: &Sidecar,
    account_id: &str,
    region: &str,
) -> tonic::Streaming<proto::WatchEncryptionKeyResponse> {
    sidecar
        .read_only_keys()
        .await
        .watch_encryption_key(proto::WatchEncryptionKeyRequest {
            scan_type: proto::ScanType::Code as i32,
            resource_type: LAMBDA,
            account_id: account_id.into(),
            region: region.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[test]
fn a_desired_state_that_does_not_parse_stops_the_start_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("desired.toml");
    write_whole(
        &file,
        &DESIRED.replace("\"*\"]\nregions", "\"2222\"]\nregions"),
        0o600,
    );
    let config = dir.path().join("keyd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[listen]\ntcp = \"127.0.0.1:0\"\nunix_socket = \"\"\n[ops]\nmetrics_listen = \"\"\n[aws_api]\nlisten = \"\"\n[fleet]\ndesired_state_file = {file:?}\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("fleet.desired_state_file") && stderr.contains("line 3"),
        "{stderr}"
    );
}
