//! A desired state for the organization's keys planned, applied and reconciled by the aws
//! backend against real protocol servers on loopback: moto for KMS, IAM and STS (where the
//! aliases are resolved and the keys verified) and, for Inspector, a second sidecar's
//! AWS-protocol door (local backend emulating the scopes, each key made in both KMSes with the
//! same ARN). `fleet plan` and `fleet apply` bring each scope to its alias's key, a missing
//! alias or a key disabled in KMS failing its scope alone, in the own account and in a member account through its role
//! (moto seeded so the door knows the role session's pair); writes the door throttles are
//! retried until the apply converges, and the JSON says how often; and two sidecars enforcing
//! the same file at once reach the desired state and then write nothing more. The measured run:
//! 20 accounts × 3 Regions (`KEYD_MOTO_FLEET_ACCOUNTS` sets the accounts) planned and applied
//! with a third of the first 30 writes throttled, through a door that takes fewer connections
//! than there are scopes; it prints its times (`-- --nocapture`; figures in BENCHMARKS.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{fleet::*, moto::Moto, organization::*, *};

/// The managing sidecar's scopes: its own account in its Region and in eu-west-1.
const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
const SCOPES: &str = "[[accounts]]\nid = \"123456789012\"\nregions = [\"eu-west-1\"]\n";
const ALIAS: &str = "alias/inspector-code";

/// Lambda's key is the alias `alias/inspector-code` wherever it is managed.
const DESIRED: &str = r#"[[key]]
accounts = ["*"]
regions = ["*"]
resource_type = "AWS_LAMBDA_FUNCTION"
kms_key = "alias/inspector-code"
"#;

/// moto, and the Inspector sidecar emulating the own account in both Regions with a key of
/// each Region made in both KMSes (no alias yet).
struct Organization {
    moto: Moto,
    inspector: Sidecar,
    /// The key of each Region, in `REGIONS` order.
    keys: Vec<String>,
    dir: tempfile::TempDir,
}

impl Organization {
    /// `inspector_extra` adds tables to the Inspector sidecar's configuration.
    async fn start(inspector_extra: &str) -> Organization {
        let moto = Moto::start();
        let dir = tempfile::tempdir().unwrap();
        let credentials = door_credentials(dir.path(), "");
        let inspector = inspector_sidecar(&credentials, SCOPES, inspector_extra);
        let mut keys = Vec::new();
        for region in REGIONS {
            let policy = policy_for(&inspector, OWN, region).await;
            keys.push(
                key_in_both(&inspector, &moto, &own_credentials(), OWN, region, &policy).await,
            );
        }
        Organization {
            moto,
            inspector,
            keys,
            dir,
        }
    }

    /// Names the Region's key `alias/inspector-code` in moto (the Inspector sidecar keeps
    /// key ARNs alone).
    async fn alias(&self, region: &str) {
        let index = REGIONS.iter().position(|r| *r == region).unwrap();
        let id = self.keys[index].rsplit('/').next().unwrap();
        self.moto
            .create_alias_as(&own_credentials(), region, ALIAS, id)
            .await;
    }

    /// A [`managing`] sidecar of both scopes; `extra` adds tables.
    fn managing(&self, extra: &str) -> Sidecar {
        managing(&self.inspector, &self.moto, &format!("{SCOPES}{extra}"))
    }

    /// The key the Inspector sidecar holds for Lambda in the Region, if any.
    async fn held(&self, region: &str) -> Option<String> {
        self.inspector
            .read_only_keys()
            .await
            .get_encryption_key(get(OWN, region))
            .await
            .ok()
            .map(|answer| answer.into_inner().kms_key_id)
    }

    /// The UpdateEncryptionKey calls that reached the Inspector sidecar through its door,
    /// from its audit log: the status code of each.
    fn door_updates(&self) -> Vec<String> {
        let caller = format!("\"caller\":\"aws:{OWN_KEY_ID}\"");
        self.inspector
            .log()
            .lines()
            .filter(|line| line.contains(&caller) && line.contains("/UpdateEncryptionKey"))
            .map(|line| {
                let record: serde_json::Value =
                    serde_json::from_str(&line[line.find("{\"time\"").unwrap()..])
                        .unwrap_or_else(|e| panic!("{e}: {line}"));
                record["code"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    /// As [`Organization::door_updates`], once there are `n` (the audit line of a call is
    /// written as it ends, maybe just after its answer): waits a bounded time.
    async fn door_updates_once(&self, n: usize) -> Vec<String> {
        for _ in 0..100 {
            let updates = self.door_updates();
            if updates.len() >= n {
                return updates;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.door_updates()
    }

    fn desired_file(&self) -> std::path::PathBuf {
        let file = self.dir.path().join("desired.toml");
        write_whole(&file, DESIRED, 0o600);
        file
    }
}

/// A managing sidecar (aws backend) of the own account and `tables` (`[[accounts]]` and
/// more), Inspector at `inspector`'s door, the SDK making each call once (the fleet's own
/// retries are what is tested).
fn managing(inspector: &Sidecar, moto: &Moto, tables: &str) -> Sidecar {
    let config = config(
        &inspector.aws_url(),
        &moto.url(),
        moto,
        &format!("account_id = \"{OWN}\"\n"),
        tables,
    )
    .replace("max_attempts = 2", "max_attempts = 1");
    Sidecar::start_with_env(&config, &own_env())
}

/// The change of `region` in a plan's or apply's JSON.
fn change<'a>(json: &'a serde_json::Value, region: &str) -> &'a serde_json::Value {
    json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["region"] == region)
        .unwrap_or_else(|| panic!("no change in {region}: {json}"))
}

#[tokio::test]
async fn plan_and_apply_resolve_each_scopes_alias_in_its_kms_and_write_through_the_door() {
    let organization = Organization::start("").await;
    let file = organization.desired_file();
    // The alias in us-east-1 alone.
    organization.alias("us-east-1").await;
    let sidecar = organization.managing("");

    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 1, "an error: exit 1 {plan}\n{}", sidecar.log());
    let us = change(&plan, "us-east-1");
    assert_eq!(us["action"], "update", "{plan}");
    assert_eq!(us["to"], organization.keys[0].as_str());
    assert_eq!(us["report"]["passed"], true, "{plan}");
    let missing = change(&plan, "eu-west-1")["error"].as_str().unwrap();
    assert!(
        missing.contains(&format!(
            "alias `{ALIAS}` does not exist in {OWN}/eu-west-1"
        )),
        "{missing}"
    );
    assert_eq!(plan["summary"]["updates"], 1, "{plan}");
    assert_eq!(plan["summary"]["errors"], 1, "{plan}");
    assert_eq!(
        organization.held("us-east-1").await,
        None,
        "a plan writes nothing"
    );

    // Apply writes the scope it can; the other stays as it is.
    let (code, applied) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 1, "{applied}");
    assert_eq!(applied["summary"]["applied"], 1, "{applied}");
    assert_eq!(
        organization.held("us-east-1").await.as_ref(),
        Some(&organization.keys[0])
    );
    assert_eq!(organization.held("eu-west-1").await, None);

    // The alias made: the other scope is pending, then applied.
    organization.alias("eu-west-1").await;
    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 2, "changes pending: {plan}");
    assert_eq!(plan["summary"]["updates"], 1, "{plan}");
    assert_eq!(plan["summary"]["unchanged"], 1, "{plan}");
    let output = fleet(&sidecar, &["apply", file.to_str().unwrap(), "--yes"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    for (region, key) in REGIONS.iter().zip(&organization.keys) {
        assert_eq!(
            organization.held(region).await.as_ref(),
            Some(key),
            "{region}"
        );
    }
    let writes = organization.door_updates_once(2).await;
    assert_eq!(writes, ["OK", "OK"], "one write per scope");

    // In the desired state: an apply writes nothing, a plan has nothing to change.
    let (code, again) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["summary"]["applied"], 0, "{again}");
    assert_eq!(organization.door_updates().len(), 2);
    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["summary"]["unchanged"], 2, "{plan}");
}

#[tokio::test]
async fn a_key_disabled_in_kms_is_an_error_of_its_scope_alone_and_is_never_written() {
    let organization = Organization::start("").await;
    for region in REGIONS {
        organization.alias(region).await;
    }
    // us-east-1's key is disabled in moto's KMS (the managing sidecar's gate reads it there).
    organization
        .moto
        .kms_as(&own_credentials(), "us-east-1")
        .disable_key()
        .key_id(organization.keys[0].rsplit('/').next().unwrap())
        .send()
        .await
        .unwrap();
    let file = organization.desired_file();
    let sidecar = organization.managing("");

    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 1, "an error: exit 1 {plan}");
    let failing = change(&plan, "us-east-1")["error"].as_str().unwrap();
    assert!(
        failing.contains("fails verification") && failing.contains("KEY_NOT_ENABLED"),
        "{failing}"
    );
    assert_eq!(change(&plan, "eu-west-1")["action"], "update", "{plan}");

    let (code, applied) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 1, "{applied}");
    assert_eq!(applied["summary"]["applied"], 1, "{applied}");
    assert_eq!(organization.held("us-east-1").await, None, "never written");
    assert_eq!(
        organization.held("eu-west-1").await.as_ref(),
        Some(&organization.keys[1])
    );
    assert_eq!(organization.door_updates_once(1).await, ["OK"]);
}

#[tokio::test]
async fn a_key_changed_behind_the_sidecars_back_is_planned_again_once_its_read_is_past_the_ttl() {
    let organization = Organization::start("").await;
    for region in REGIONS {
        organization.alias(region).await;
    }
    let file = organization.desired_file();
    let sidecar = organization.managing("[cache]\nkey_ttl = \"1s\"\naws_owned_ttl = \"1s\"\n");
    let (code, applied) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 0, "{applied}");

    let mut watch = sidecar
        .read_only_keys()
        .await
        .watch_encryption_key(inspector_keyd::proto::WatchEncryptionKeyRequest {
            scan_type: inspector_keyd::proto::ScanType::Code as i32,
            resource_type: LAMBDA,
            account_id: OWN.into(),
            region: "us-east-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let current = watch.message().await.unwrap().unwrap();
    assert_eq!(current.kms_key_id, organization.keys[0]);

    // Inspector's key for us-east-1 reset elsewhere (here, at the Inspector sidecar itself):
    // the managing sidecar's cache still holds the key it wrote.
    organization
        .inspector
        .admin_keys()
        .await
        .reset_encryption_key(inspector_keyd::proto::ResetEncryptionKeyRequest {
            account_id: OWN.into(),
            region: "us-east-1".into(),
            scan_type: inspector_keyd::proto::ScanType::Code as i32,
            resource_type: LAMBDA,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 2, "the reset is seen: {plan}");
    let us = change(&plan, "us-east-1");
    assert_eq!(us["action"], "update", "{plan}");
    assert_eq!(us["from"], serde_json::Value::Null, "{plan}");
    assert_eq!(change(&plan, "eu-west-1")["action"], "none", "{plan}");
    // The plan was first to see the reset (the drift check runs hourly): its Watch says so.
    let reset = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reset.r#type(), inspector_keyd::proto::KeyEventType::Reset);
}

#[tokio::test]
async fn an_apply_whose_writes_are_throttled_converges_and_says_what_it_retried() {
    // Every second write the Inspector sidecar gets is throttled.
    let faults = tempfile::tempdir().unwrap();
    let fault_file = faults.path().join("faults.toml");
    write_whole(
        &fault_file,
        "[writes]\nerror = \"throttled\"\nevery = 2\n",
        0o600,
    );
    let organization =
        Organization::start(&format!("[local]\nfault_file = {fault_file:?}\n")).await;
    for region in REGIONS {
        organization.alias(region).await;
    }
    let file = organization.desired_file();
    let sidecar = organization.managing("");

    let (code, applied) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 0, "converged: {applied}\n{}", sidecar.log());
    assert_eq!(applied["summary"]["applied"], 2, "{applied}");
    for region in REGIONS {
        let change = change(&applied, region);
        assert_eq!(change["applied"], true, "{applied}");
        assert!(change.get("error").is_none(), "{applied}");
    }
    // Of the first two writes the second was throttled (ThrottlingException through the
    // door), and its retry, the third, went through.
    let retried: Vec<u64> = REGIONS
        .iter()
        .map(|region| change(&applied, region)["retries"].as_u64().unwrap())
        .collect();
    assert_eq!(retried.iter().sum::<u64>(), 1, "{applied}");
    assert_eq!(applied["summary"]["retries"], 1, "{applied}");
    let mut writes = organization.door_updates_once(3).await;
    writes.sort();
    assert_eq!(
        writes,
        ["OK", "OK", "RESOURCE_EXHAUSTED"],
        "{}",
        organization.inspector.log()
    );
    for (region, key) in REGIONS.iter().zip(&organization.keys) {
        assert_eq!(
            organization.held(region).await.as_ref(),
            Some(key),
            "{region}"
        );
    }
    assert!(
        sidecar
            .log()
            .contains("fleet: the backend throttled a write; trying again"),
        "{}",
        sidecar.log()
    );
}

#[tokio::test]
async fn two_sidecars_enforcing_the_same_desired_state_converge_without_flapping() {
    let organization = Organization::start("").await;
    for region in REGIONS {
        organization.alias(region).await;
    }
    let file = organization.desired_file();
    let reconcile =
        format!("[fleet]\ndesired_state_file = {file:?}\ninterval = \"1s\"\nmode = \"enforce\"\n");
    let first = organization.managing(&reconcile);
    let second = organization.managing(&reconcile);

    let targets = REGIONS.len() as u64;
    for sidecar in [&first, &second] {
        until_fleet(sidecar, [targets, 0, 0]).await;
    }
    for (region, key) in REGIONS.iter().zip(&organization.keys) {
        assert_eq!(
            organization.held(region).await.as_ref(),
            Some(key),
            "{region}"
        );
    }
    // Each scope was written at least once, by one or both, and never back and forth.
    let settled = organization.door_updates_once(2).await;
    assert!(
        (2..=4).contains(&settled.len()),
        "{settled:?}\n{}",
        organization.inspector.log()
    );
    // Three more rounds of each: no write reaches Inspector.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        organization.door_updates(),
        settled,
        "{}",
        organization.inspector.log()
    );
    for sidecar in [&first, &second] {
        assert_eq!(fleet_targets(sidecar), [targets, 0, 0]);
    }
}

const MEMBER: &str = "222233334444";
const MEMBER_ROLE: &str = "arn:aws:iam::222233334444:role/keyd-member";
/// What seeds moto's random generator, twice, in the test below.
const SEED: u64 = 7_202_613;

#[tokio::test]
async fn a_member_accounts_scopes_are_planned_and_applied_through_its_role() {
    // As in tests/aws_organization.rs: the pair moto hands the managing sidecar's
    // AssumeRole is foreseen by seeding moto, so the door can know it in advance.
    let moto = Moto::start();
    moto.seed(SEED);
    let foreseen = moto
        .assume_role_as(
            &own_credentials(),
            MEMBER_ROLE,
            &format!("inspector-keyd-{OWN}"),
            None,
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = door_credentials(dir.path(), &admin_profile(MEMBER, &foreseen));
    let scopes = format!(
        "[[accounts]]\nid = \"{MEMBER}\"\nregions = [\"us-east-1\", \"eu-west-1\"]\nrole_arn = \"{MEMBER_ROLE}\"\n"
    );
    let inspector = inspector_sidecar(&credentials, &scopes, "");
    // A key of the member account in each Region, named by the alias there (made with a
    // role of the member account).
    let member = moto.assume_role(MEMBER_ROLE).await;
    let mut keys = Vec::new();
    for region in REGIONS {
        let policy = policy_for(&inspector, MEMBER, region).await;
        let key = key_in_both(&inspector, &moto, &member, MEMBER, region, &policy).await;
        let id = key.rsplit('/').next().unwrap();
        moto.create_alias_as(&member, region, ALIAS, id).await;
        keys.push(key);
    }
    let file = dir.path().join("desired.toml");
    write_whole(
        &file,
        &DESIRED.replace("accounts = [\"*\"]", &format!("accounts = [\"{MEMBER}\"]")),
        0o600,
    );

    // The managing sidecar's first call to moto is its AssumeRole, made by its start-time
    // check of every target.
    moto.seed(SEED);
    let sidecar = managing(&inspector, &moto, &scopes);

    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 2, "{plan}\n{}\n{}", sidecar.log(), inspector.log());
    for (region, key) in REGIONS.iter().zip(&keys) {
        let change = change(&plan, region);
        assert_eq!(change["account_id"], MEMBER, "{plan}");
        assert_eq!(change["action"], "update", "{plan}");
        assert_eq!(change["to"], key.as_str(), "{plan}");
    }
    let (code, applied) = fleet_json(&sidecar, "apply", &file);
    assert_eq!(code, 0, "{applied}\n{}", inspector.log());
    assert_eq!(applied["summary"]["applied"], 2, "{applied}");
    let mut reader = inspector.read_only_keys().await;
    for (region, key) in REGIONS.iter().zip(&keys) {
        let held = reader
            .get_encryption_key(get(MEMBER, region))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&held.kms_key_id, key, "{region}");
    }
    // Written with the role's pair: the door's audit names it as the caller.
    let caller = format!("\"caller\":\"aws:{}\"", foreseen.access_key_id());
    let log = inspector.log_once_it_has(&caller).await;
    assert_eq!(
        log.lines()
            .filter(|line| line.contains(&caller) && line.contains("/UpdateEncryptionKey"))
            .count(),
        2,
        "{log}"
    );
    let (code, plan) = fleet_json(&sidecar, "plan", &file);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["summary"]["unchanged"], 2, "{plan}");
}

/// The organization of the measured run: the own account and this many accounts in all
/// (`KEYD_MOTO_FLEET_ACCOUNTS`, 20 unless set), each managed in these Regions.
const ORGANIZATION_ACCOUNTS: usize = 20;
const ORGANIZATION_REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-northeast-1"];
/// The door throttles every third of the first this-many writes it gets.
const THROTTLED_AMONG_FIRST: usize = 30;
const ORGANIZATION_SEED: u64 = 7_202_614;
/// The connections the door takes from one address: fewer than the managing sidecar's
/// scopes, so it must share its connections across accounts and Regions.
const DOOR_CONNECTIONS: usize = 24;

/// The `n`th member account (from 1).
fn member_account(n: usize) -> String {
    format!("2{n:011}")
}

#[tokio::test]
async fn an_organization_of_twenty_accounts_in_three_regions_converges_through_throttling() {
    let accounts: usize = std::env::var("KEYD_MOTO_FLEET_ACCOUNTS")
        .ok()
        .map(|n| {
            n.parse()
                .expect("KEYD_MOTO_FLEET_ACCOUNTS: a number of accounts")
        })
        .unwrap_or(ORGANIZATION_ACCOUNTS)
        // At least the 30 writes whose every third is throttled (7 accounts, 21 scopes, and
        // the retries).
        .max(7);
    let members: Vec<String> = (1..accounts).map(member_account).collect();
    let role = |account: &str| format!("arn:aws:iam::{account}:role/keyd-member");
    let session = format!("inspector-keyd-{OWN}");

    // The managing sidecar's start-time drift check reads every target one at a time, in
    // the configuration's order, so its AssumeRoles come in the members' order: after the
    // same seeding, moto hands it the pairs foreseen here, which the door is told of.
    let moto = Moto::start();
    moto.seed(ORGANIZATION_SEED);
    let mut foreseen = Vec::new();
    for member in &members {
        foreseen.push(
            moto.assume_role_as(&own_credentials(), &role(member), &session, None)
                .await,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let profiles: String = members
        .iter()
        .zip(&foreseen)
        .map(|(member, pair)| admin_profile(member, pair))
        .collect();
    let credentials = door_credentials(dir.path(), &profiles);
    let regions = |list: &[&str]| format!("{list:?}");
    let mut scopes = format!(
        "[[accounts]]\nid = \"{OWN}\"\nregions = {}\n",
        regions(&ORGANIZATION_REGIONS[1..])
    );
    for member in &members {
        scopes.push_str(&format!(
            "[[accounts]]\nid = \"{member}\"\nregions = {}\nrole_arn = \"{}\"\n",
            regions(&ORGANIZATION_REGIONS),
            role(member)
        ));
    }
    let fault_file = dir.path().join("faults.toml");
    write_whole(
        &fault_file,
        &format!("[writes]\nerror = \"throttled\"\nevery = 3\nfirst = {THROTTLED_AMONG_FIRST}\n"),
        0o600,
    );
    let inspector = inspector_sidecar(
        &credentials,
        &scopes,
        &format!(
            "[local]\nfault_file = {fault_file:?}\n[connections]\nmax_per_peer_ip = {DOOR_CONNECTIONS}\n"
        ),
    );

    // In every account and Region a key, named by the alias there.
    let started = std::time::Instant::now();
    let mut keys = Vec::new();
    let callers = std::iter::once((OWN.to_owned(), own_credentials()))
        .chain(members.iter().cloned().zip(foreseen.iter().cloned()));
    for (account, caller) in callers {
        for region in ORGANIZATION_REGIONS {
            let policy = policy_for(&inspector, &account, region).await;
            let key = key_in_both(&inspector, &moto, &caller, &account, region, &policy).await;
            let id = key.rsplit('/').next().unwrap();
            moto.create_alias_as(&caller, region, ALIAS, id).await;
            keys.push((account.clone(), region, key));
        }
    }
    let scope_count = keys.len();
    eprintln!(
        "{accounts} accounts × {} Regions: {scope_count} keys and aliases made in {:.1} s",
        ORGANIZATION_REGIONS.len(),
        started.elapsed().as_secs_f64()
    );
    let file = dir.path().join("desired.toml");
    write_whole(&file, DESIRED, 0o600);

    moto.seed(ORGANIZATION_SEED);
    let sidecar = managing(&inspector, &moto, &scopes);
    let assume_roles = || {
        moto.sts_requests()
            .iter()
            .filter(|body| body.contains("Action=AssumeRole"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(60), || async {
            assume_roles() == 2 * members.len()
        })
        .await,
        "the start-time check assumed {} roles\n{}",
        assume_roles() - members.len(),
        sidecar.log()
    );

    // Each member's calls reached the door with the pair foreseen for it: had moto's
    // seeded generator handed out others, the door would refuse them here.
    let reads = || backend_calls_of(&sidecar, "get_encryption_key");
    assert!(
        eventually(Duration::from_secs(60), || async {
            reads() >= 2 * scope_count as u64
        })
        .await,
        "the start-time check read {} targets\n{}",
        reads(),
        sidecar.log()
    );
    assert!(
        !sidecar
            .log()
            .contains("drift check: cannot read the key in use"),
        "moto's seeded pairs diverged from those foreseen for the door:\n{}",
        sidecar.log()
    );
    let timed = |command: &str| {
        let started = std::time::Instant::now();
        let (code, json) = fleet_json(&sidecar, command, &file);
        (code, json, started.elapsed().as_secs_f64())
    };
    let calls_before = backend_calls(&sidecar);
    let (code, plan, plan_secs) = timed("plan");
    let plan_calls = backend_calls(&sidecar) - calls_before;
    assert_eq!(code, 2, "{plan}\n{}", sidecar.log());
    assert_eq!(plan["summary"]["updates"], scope_count, "{plan}");
    let (code, applied, apply_secs) = timed("apply");
    assert_eq!(code, 0, "converged: {applied}\n{}", sidecar.log());
    assert_eq!(applied["summary"]["applied"], scope_count, "{applied}");
    // Every throttled write was tried again, and the JSON counts each retry.
    let throttled = THROTTLED_AMONG_FIRST / 3;
    assert_eq!(applied["summary"]["retries"], throttled, "{applied}");
    let retried: u64 = applied["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["retries"].as_u64().unwrap_or_default())
        .sum();
    assert_eq!(retried, throttled as u64, "{applied}");

    // The door holds each scope's key; of its writes, the throttled ones are answered
    // RESOURCE_EXHAUSTED and all others OK.
    let mut reader = inspector.read_only_keys().await;
    for (account, region, key) in &keys {
        let held = reader
            .get_encryption_key(get(account, region))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&held.kms_key_id, key, "{account}/{region}");
    }
    let writes_at_door = || {
        inspector
            .log()
            .lines()
            .filter(|line| {
                line.contains("/UpdateEncryptionKey") && line.contains("\"caller\":\"aws:")
            })
            .map(|line| line.contains("RESOURCE_EXHAUSTED"))
            .collect::<Vec<bool>>()
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            writes_at_door().len() == scope_count + throttled
        })
        .await,
        "{:?}",
        writes_at_door()
    );
    assert_eq!(
        writes_at_door().iter().filter(|t| **t).count(),
        throttled,
        "{}",
        inspector.log()
    );

    // The inventory of all of them, streamed 50 scopes a message.
    let output = fleet(&sidecar, &["status", "--format", "json"]);
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["summary"]["scopes"], scope_count, "{status}");
    assert_eq!(status["summary"]["customer_managed"], scope_count);
    assert_eq!(status["summary"]["errors"], 0);
    let listed = status["keys"].as_array().unwrap();
    for (account, region, key) in &keys {
        let entry = listed
            .iter()
            .find(|e| {
                e["account_id"] == account.as_str()
                    && e["region"] == *region
                    && e["resource_type"] == "AWS_LAMBDA_FUNCTION"
            })
            .unwrap_or_else(|| panic!("{account}/{region} not listed"));
        assert_eq!(entry["kms_key_id"], key.as_str());
    }

    let (code, again, again_secs) = timed("apply");
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["summary"]["applied"], 0, "{again}");
    assert_eq!(writes_at_door().len(), scope_count + throttled);
    // Every account's and Region's calls shared connections: the door refused none.
    let (_, door_metrics) = inspector.http_get("/metrics");
    let refused: Vec<&str> = door_metrics
        .lines()
        .filter(|line| line.starts_with("inspector_keyd_connections_refused_total{"))
        .filter(|line| !line.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    eprintln!(
        "plan {plan_secs:.2} s ({:.2} backend calls per scope); apply {apply_secs:.2} s ({scope_count} writes, {throttled} throttled and retried); second apply {again_secs:.2} s, 0 writes",
        plan_calls as f64 / scope_count as f64
    );
}

/// The backend calls the sidecar has made, all operations together.
fn backend_calls(sidecar: &Sidecar) -> u64 {
    backend_calls_of(sidecar, "")
}

/// The backend calls the sidecar has made of `operation` (all of them with "").
fn backend_calls_of(sidecar: &Sidecar, operation: &str) -> u64 {
    let (code, body) = sidecar.http_get("/metrics");
    assert_eq!(code, 200);
    let label = format!("operation=\"{operation}\"");
    body.lines()
        .filter(|line| line.starts_with("inspector_keyd_backend_calls_total{"))
        .filter(|line| operation.is_empty() || line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
