//! Crash safety: Update/Reset cycles against the local backend while the server is killed
//! with SIGKILL at random points, restarted on the same state directory each time. After
//! every restart the store opens, every acknowledged write is there, and a write that was in
//! flight is either wholly applied or not at all.
//!
//! The suite runs a short version; `KEYD_CRASH_KILLS=500 cargo test --release --test crash
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

/// The key configuration of the Lambda target: `None` is the AWS owned key.
type State = Option<String>;

#[derive(Default)]
struct Progress {
    acknowledged: State,
    /// The state a write in flight would leave.
    in_flight: Option<State>,
    writes: u64,
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

async fn current_state(sidecar: &Sidecar) -> State {
    match sidecar
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
    }
}

/// Writes until the server dies: each write's target state is recorded before it is sent
/// and acknowledged when it returns.
async fn write_until_killed(
    sidecar_channel: tonic::transport::Channel,
    keys: Vec<String>,
    progress: Arc<Mutex<Progress>>,
    seed: u64,
) {
    let mut admin =
        proto::encryption_key_service_client::EncryptionKeyServiceClient::new(sidecar_channel);
    let mut random = Random(seed | 1);
    // Bounded: a kill always comes well before this many writes.
    for _ in 0..100_000 {
        let next: State = match random.below(keys.len() as u64 + 1) {
            0 => None,
            i => Some(keys[(i - 1) as usize].clone()),
        };
        progress.lock().unwrap().in_flight = Some(next.clone());
        let result = match &next {
            Some(key) => admin
                .update_encryption_key(update_request(key))
                .await
                .map(|_| ()),
            None => admin
                .reset_encryption_key(proto::ResetEncryptionKeyRequest {
                    scan_type: CODE,
                    resource_type: LAMBDA,
                })
                .await
                .map(|_| ()),
        };
        let mut progress = progress.lock().unwrap();
        match result {
            Ok(()) => {
                progress.acknowledged = next;
                progress.in_flight = None;
                progress.writes += 1;
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
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(sidecar.create_key(proto::CreateKeyRequest::default()).await);
    }
    // A stored snippet, re-encrypted by every Update and Reset: after each kill it must read
    // back whole (a half-applied switch would leave it under a data key that is gone).
    let finding = LocalCodeScanningServiceClient::new(sidecar.unix_channel().await)
        .record_code_finding(proto::RecordCodeFindingRequest {
            resource_type: LAMBDA,
            finding: Some(snippet()),
        })
        .await
        .unwrap()
        .into_inner()
        .finding_arn;
    let mut acknowledged: State = None;
    let (mut writes, mut in_flight_kills, mut in_flight_applied) = (0, 0, 0);
    for kill in 0..kills {
        let progress = Arc::new(Mutex::new(Progress {
            acknowledged: acknowledged.clone(),
            ..Progress::default()
        }));
        let writer = tokio::spawn(write_until_killed(
            sidecar.unix_channel().await,
            keys.clone(),
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
        let state = current_state(&sidecar).await;
        let progress = std::mem::take(&mut *progress.lock().unwrap());
        writes += progress.writes;
        match &progress.in_flight {
            None => assert_eq!(state, progress.acknowledged, "kill {kill}, seed {seed}"),
            Some(pending) => {
                in_flight_kills += 1;
                assert!(
                    state == progress.acknowledged || state == *pending,
                    "kill {kill}, seed {seed}: {state:?} is neither the acknowledged {:?} nor the in-flight {pending:?}",
                    progress.acknowledged
                );
                if state == *pending && *pending != progress.acknowledged {
                    in_flight_applied += 1;
                }
            }
        }
        acknowledged = state;
        // The keys, written before any kill, are all there.
        let mut kms = sidecar.kms().await;
        for key in &keys {
            kms.describe_key(proto::DescribeKeyRequest {
                key_id: key.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("kill {kill}, seed {seed}: key {key} lost: {e:?}"));
        }
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
        "{kills} kills, {writes} acknowledged writes, {in_flight_kills} kills with a write in flight ({in_flight_applied} of them applied), 0 acknowledged writes lost"
    );
    assert!(writes > 0, "no write was acknowledged between kills");
}
