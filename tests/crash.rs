//! Crash safety: every kind of write (Update, Reset, the local KMS's CreateKey,
//! PutKeyPolicy, Enable/DisableKey, Schedule/CancelKeyDeletion, ReplicateKey, the scanning
//! service's RecordCodeFinding and DisableCodeScanning), at random, against the local
//! backend while the server is killed with SIGKILL at random points, restarted on the same
//! state directory each time. After every restart the store opens, every acknowledged write
//! is there, and a write that was in flight is either wholly applied or not at all.
//!
//! The suite runs a short version; `KEYD_CRASH_KILLS=10000 cargo test --release --test crash
//! -- --nocapture` is the long one (RELIABILITY.md has its figures).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use inspector_keyd::proto::{
    self, local_code_scanning_service_client::LocalCodeScanningServiceClient,
};
use tonic::Code;

/// What the writes change, as a restarted server shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    /// The Lambda target's key: `None` is the AWS owned key (Update, Reset).
    lambda: Option<String>,
    /// Keys created during the run (CreateKey).
    created: usize,
    /// The number in the Sid of the policy key's policy (PutKeyPolicy).
    policy: u64,
    /// The toggled key is enabled (EnableKey, DisableKey).
    enabled: bool,
    /// The deletion key is pending deletion (ScheduleKeyDeletion, CancelKeyDeletion).
    pending_deletion: bool,
    /// The multi-Region key has its replica (ReplicateKey).
    replicated: bool,
    /// Findings of code repositories with a stored snippet (RecordCodeFinding,
    /// DisableCodeScanning).
    repository_findings: std::collections::BTreeSet<usize>,
}

/// One write of the workload.
#[derive(Debug, Clone)]
enum Write {
    Update(String),
    Reset,
    CreateKey,
    PutKeyPolicy(u64),
    EnableKey,
    DisableKey,
    ScheduleKeyDeletion,
    CancelKeyDeletion,
    ReplicateKey,
    RecordCodeFinding(usize),
    DisableCodeScanning,
}

impl Model {
    /// The model once `write` is applied.
    fn after(&self, write: &Write) -> Model {
        let mut next = self.clone();
        match write {
            Write::Update(key) => next.lambda = Some(key.clone()),
            Write::Reset => next.lambda = None,
            Write::CreateKey => next.created += 1,
            Write::PutKeyPolicy(n) => next.policy = *n,
            Write::EnableKey => next.enabled = true,
            Write::DisableKey => next.enabled = false,
            Write::ScheduleKeyDeletion => next.pending_deletion = true,
            Write::CancelKeyDeletion => next.pending_deletion = false,
            Write::ReplicateKey => next.replicated = true,
            Write::RecordCodeFinding(i) => {
                next.repository_findings.insert(*i);
            }
            Write::DisableCodeScanning => next.repository_findings.clear(),
        }
        next
    }
}

#[derive(Default)]
struct Progress {
    acknowledged: Model,
    /// The write in flight when the server died.
    in_flight: Option<Write>,
    writes: u64,
    /// Writes of each kind acknowledged.
    by_kind: std::collections::BTreeMap<&'static str, u64>,
}

/// A small deterministic generator (xorshift), seeded per run and printed, so a failing run
/// can be replayed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The keys the workload writes to, made before the first kill.
struct Fixture {
    /// Keys the Lambda target is switched between.
    lambda_keys: Vec<String>,
    /// Keys that exist before any write (with the fixture's own).
    base_keys: usize,
    policy_key: String,
    toggled_key: String,
    deletion_key: String,
    multi_region_key: String,
}

const REPLICA_REGION: &str = "eu-west-1";
const REPOSITORY_FINDINGS: usize = 8;

fn repository_finding(i: usize) -> String {
    format!("arn:aws:inspector2:us-east-1:111122223333:finding/{i:032x}")
}

fn policy_numbered(n: u64) -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [{{"Sid": "Revision{n}", "Effect": "Allow", "Principal": {{"AWS": "arn:aws:iam::111122223333:root"}}, "Action": "kms:*", "Resource": "*"}}]}}"#
    )
}

fn replica_of(arn: &str) -> String {
    arn.replace(":us-east-1:", &format!(":{REPLICA_REGION}:"))
}

/// What the restarted server holds.
async fn observe(sidecar: &Sidecar, fixture: &Fixture) -> Model {
    let lambda = match sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
    {
        Ok(response) => Some(response.into_inner().kms_key_id),
        Err(status) if status.code() == Code::NotFound => {
            assert_eq!(reason(&status), "AWS_OWNED_KEY", "{status:?}");
            None
        }
        Err(status) => panic!("the restarted server cannot read its state: {status:?}"),
    };
    let mut kms = sidecar.kms().await;
    let listed = kms
        .list_keys(proto::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let describe = kms.clone();
    let state = |key: &str| {
        let key = key.to_owned();
        let mut kms = describe.clone();
        async move {
            kms.describe_key(proto::DescribeKeyRequest { key_id: key })
                .await
                .map(|r| r.into_inner().key_metadata.unwrap().key_state)
        }
    };
    let policy = kms
        .get_key_policy(proto::GetKeyPolicyRequest {
            key_id: fixture.policy_key.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    let policy = policy
        .split("\"Revision")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map_or(0, |n| n.parse().unwrap());
    let read = sidecar
        .code_reader_keys()
        .await
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: (0..REPOSITORY_FINDINGS).map(repository_finding).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    Model {
        lambda,
        created: listed
            .iter()
            .filter(|k| !k.key_arn.contains(REPLICA_REGION))
            .count()
            - fixture.base_keys,
        policy,
        enabled: state(&fixture.toggled_key).await.unwrap() == "Enabled",
        pending_deletion: state(&fixture.deletion_key).await.unwrap() == "PendingDeletion",
        replicated: state(&replica_of(&fixture.multi_region_key)).await.is_ok(),
        repository_findings: read
            .code_snippet_results
            .iter()
            .map(|r| {
                (0..REPOSITORY_FINDINGS)
                    .find(|i| repository_finding(*i) == r.finding_arn)
                    .unwrap()
            })
            .collect(),
    }
}

/// Sends `write`; `Err` when the server died under it (its outcome is unknown), `Ok(false)`
/// when the server refused it (for example a deletion already scheduled): nothing changed.
async fn send(
    channel: &tonic::transport::Channel,
    fixture: &Fixture,
    write: &Write,
) -> Result<bool, tonic::Status> {
    let mut keys =
        proto::encryption_key_service_client::EncryptionKeyServiceClient::new(channel.clone());
    let mut kms = proto::local_kms_service_client::LocalKmsServiceClient::new(channel.clone());
    let mut scanning = LocalCodeScanningServiceClient::new(channel.clone());
    let key_id = |key: &String| key.clone();
    let result = match write {
        Write::Update(key) => keys
            .update_encryption_key(update_request(key))
            .await
            .map(drop),
        Write::Reset => keys
            .reset_encryption_key(proto::ResetEncryptionKeyRequest {
                scan_type: CODE,
                resource_type: LAMBDA,
                ..Default::default()
            })
            .await
            .map(drop),
        Write::CreateKey => kms
            .create_key(proto::CreateKeyRequest::default())
            .await
            .map(drop),
        Write::PutKeyPolicy(n) => kms
            .put_key_policy(proto::PutKeyPolicyRequest {
                key_id: key_id(&fixture.policy_key),
                policy: policy_numbered(*n),
            })
            .await
            .map(drop),
        Write::EnableKey => kms
            .enable_key(proto::EnableKeyRequest {
                key_id: key_id(&fixture.toggled_key),
            })
            .await
            .map(drop),
        Write::DisableKey => kms
            .disable_key(proto::DisableKeyRequest {
                key_id: key_id(&fixture.toggled_key),
            })
            .await
            .map(drop),
        Write::ScheduleKeyDeletion => kms
            .schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
                key_id: key_id(&fixture.deletion_key),
                pending_window_in_days: 7,
            })
            .await
            .map(drop),
        Write::CancelKeyDeletion => kms
            .cancel_key_deletion(proto::CancelKeyDeletionRequest {
                key_id: key_id(&fixture.deletion_key),
            })
            .await
            .map(drop),
        Write::ReplicateKey => kms
            .replicate_key(proto::ReplicateKeyRequest {
                key_id: key_id(&fixture.multi_region_key),
                replica_region: REPLICA_REGION.into(),
                policy: String::new(),
            })
            .await
            .map(drop),
        Write::RecordCodeFinding(i) => {
            let mut finding = snippet();
            finding.finding_arn = repository_finding(*i);
            scanning
                .record_code_finding(proto::RecordCodeFindingRequest {
                    resource_type: proto::ResourceType::CodeRepository as i32,
                    finding: Some(finding),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
        Write::DisableCodeScanning => scanning
            .disable_code_scanning(proto::DisableCodeScanningRequest {
                resource_type: proto::ResourceType::CodeRepository as i32,
                ..Default::default()
            })
            .await
            .map(drop),
    };
    match result {
        Ok(()) => Ok(true),
        Err(status)
            if matches!(
                status.code(),
                Code::FailedPrecondition | Code::AlreadyExists | Code::InvalidArgument
            ) =>
        {
            Ok(false)
        }
        Err(status) => Err(status),
    }
}

fn kind(write: &Write) -> &'static str {
    match write {
        Write::Update(_) => "UpdateEncryptionKey",
        Write::Reset => "ResetEncryptionKey",
        Write::CreateKey => "CreateKey",
        Write::PutKeyPolicy(_) => "PutKeyPolicy",
        Write::EnableKey => "EnableKey",
        Write::DisableKey => "DisableKey",
        Write::ScheduleKeyDeletion => "ScheduleKeyDeletion",
        Write::CancelKeyDeletion => "CancelKeyDeletion",
        Write::ReplicateKey => "ReplicateKey",
        Write::RecordCodeFinding(_) => "RecordCodeFinding",
        Write::DisableCodeScanning => "DisableCodeScanning",
    }
}

/// Writes until the server dies: each write is recorded as in flight before it is sent,
/// and applied to the acknowledged model when it returns.
async fn write_until_killed(
    channel: tonic::transport::Channel,
    fixture: Arc<Fixture>,
    progress: Arc<Mutex<Progress>>,
    seed: u64,
) {
    let mut random = Random(seed | 1);
    let mut policy_revision = progress.lock().unwrap().acknowledged.policy;
    // Bounded: a kill always comes well before this many writes.
    for _ in 0..100_000 {
        let write = match random.below(12) {
            0..=2 => {
                let keys = &fixture.lambda_keys;
                match random.below(keys.len() as u64 + 1) {
                    0 => Write::Reset,
                    i => Write::Update(keys[(i - 1) as usize].clone()),
                }
            }
            3 => Write::CreateKey,
            4 => {
                policy_revision += 1;
                Write::PutKeyPolicy(policy_revision)
            }
            5 => Write::EnableKey,
            6 => Write::DisableKey,
            7 => Write::ScheduleKeyDeletion,
            8 => Write::CancelKeyDeletion,
            9 => Write::ReplicateKey,
            10 => Write::RecordCodeFinding(random.below(REPOSITORY_FINDINGS as u64) as usize),
            _ => Write::DisableCodeScanning,
        };
        progress.lock().unwrap().in_flight = Some(write.clone());
        let result = send(&channel, &fixture, &write).await;
        let mut progress = progress.lock().unwrap();
        match result {
            Ok(applied) => {
                if applied {
                    progress.acknowledged = progress.acknowledged.after(&write);
                    progress.writes += 1;
                    *progress.by_kind.entry(kind(&write)).or_default() += 1;
                }
                progress.in_flight = None;
            }
            // The server died under the call: its outcome is unknown.
            Err(_) => return,
        }
    }
}

fn snippet() -> proto::CodeSnippetResult {
    proto::CodeSnippetResult {
        start_line: 3,
        end_line: 3,
        code_snippet: vec![proto::CodeLine {
            content: "eval(request.args[\"q\"])".into(),
            line_number: 3,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_at_random_points() {
    let kills: u64 = std::env::var("KEYD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut random = Random(seed | 1);

    let mut sidecar = Sidecar::start();
    let mut lambda_keys = Vec::new();
    for _ in 0..3 {
        lambda_keys.push(sidecar.create_key(proto::CreateKeyRequest::default()).await);
    }
    let fixture = Arc::new(Fixture {
        lambda_keys,
        base_keys: 7,
        policy_key: sidecar.create_key(proto::CreateKeyRequest::default()).await,
        toggled_key: sidecar.create_key(proto::CreateKeyRequest::default()).await,
        deletion_key: sidecar.create_key(proto::CreateKeyRequest::default()).await,
        multi_region_key: sidecar
            .create_key(proto::CreateKeyRequest {
                multi_region: true,
                ..Default::default()
            })
            .await,
    });
    // A stored snippet, re-encrypted by every Update and Reset: after each kill it must read
    // back whole (a half-applied switch would leave it under a data key that is gone).
    let finding = LocalCodeScanningServiceClient::new(sidecar.unix_channel().await)
        .record_code_finding(proto::RecordCodeFindingRequest {
            resource_type: LAMBDA,
            finding: Some(snippet()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .finding_arn;
    let mut acknowledged = observe(&sidecar, &fixture).await;
    assert_eq!(
        acknowledged,
        Model {
            enabled: true,
            ..Model::default()
        }
    );
    let (mut writes, mut in_flight_kills, mut in_flight_applied) = (0, 0, 0);
    let mut by_kind = std::collections::BTreeMap::new();
    for kill in 0..kills {
        let progress = Arc::new(Mutex::new(Progress {
            acknowledged: acknowledged.clone(),
            ..Progress::default()
        }));
        let writer = tokio::spawn(write_until_killed(
            sidecar.unix_channel().await,
            fixture.clone(),
            progress.clone(),
            random.below(u64::MAX),
        ));
        // Somewhere within the next few writes (each is an fsync'd commit).
        tokio::time::sleep(Duration::from_micros(random.below(40_000))).await;
        sidecar.kill_9();
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer noticed the kill")
            .unwrap();

        sidecar = sidecar.restart();
        let state = observe(&sidecar, &fixture).await;
        let progress = std::mem::take(&mut *progress.lock().unwrap());
        writes += progress.writes;
        for (kind, count) in progress.by_kind {
            *by_kind.entry(kind).or_insert(0u64) += count;
        }
        match &progress.in_flight {
            None => assert_eq!(state, progress.acknowledged, "kill {kill}, seed {seed}"),
            Some(pending) => {
                in_flight_kills += 1;
                let applied = progress.acknowledged.after(pending);
                assert!(
                    state == progress.acknowledged || state == applied,
                    "kill {kill}, seed {seed}: {state:?} is neither the acknowledged {:?} nor that with {pending:?}",
                    progress.acknowledged
                );
                if state == applied && applied != progress.acknowledged {
                    in_flight_applied += 1;
                }
            }
        }
        acknowledged = state;
        let read = sidecar
            .code_reader_keys()
            .await
            .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
                finding_arns: vec![finding.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        let mut expected = snippet();
        expected.finding_arn = finding.clone();
        assert_eq!(
            read.code_snippet_results,
            [expected],
            "kill {kill}, seed {seed}: {:?}",
            read.errors
        );
    }
    println!(
        "{kills} kills, {writes} acknowledged writes ({by_kind:?}), {in_flight_kills} kills with a write in flight ({in_flight_applied} of them applied), 0 acknowledged writes lost"
    );
    assert!(writes > 0, "no write was acknowledged between kills");
}
