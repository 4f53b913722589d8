//! Backend faults, injected through the local backend's test/dev `local.fault_file`, against
//! the real server: a backend that is down (stale reads within `cache.max_stale`, writes
//! UNAVAILABLE, recovery after), one that hangs (deadlines hold, nothing leaks), and one that
//! throttles (RESOURCE_EXHAUSTED with RetryInfo).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use common::*;
use inspector_keyd::proto;
use tonic::Code;
use tonic_types::StatusExt;

/// A sidecar whose backend reads its faults from a file the test writes.
struct Faulty {
    sidecar: Sidecar,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Faulty {
    fn start(extra_config: &str) -> Faulty {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("faults.toml");
        let sidecar =
            Sidecar::start_with(&format!("{extra_config}\n[local]\nfault_file = {file:?}\n"));
        Faulty {
            sidecar,
            file,
            _dir: dir,
        }
    }

    fn set(&self, faults: &str) {
        write_whole(&self.file, faults, 0o644);
    }

    fn clear(&self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

type Reader =
    proto::encryption_key_service_client::EncryptionKeyServiceClient<tonic::transport::Channel>;

/// The Lambda target's key and the `x-keyd-cache` header it came with.
async fn read_key(reader: &mut Reader) -> Result<(String, String), tonic::Status> {
    let response = reader.get_encryption_key(get_request(LAMBDA)).await?;
    let cache = response
        .metadata()
        .get("x-keyd-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Ok((response.into_inner().kms_key_id, cache))
}

#[tokio::test]
async fn a_backend_that_is_down_serves_stale_reads_refuses_writes_and_recovers() {
    let faulty = Faulty::start(
        "[cache]\nkey_ttl = \"200ms\"\nmax_stale = \"1500ms\"\n[ops]\nready_check_interval = \"200ms\"\n",
    );
    let sidecar = &faulty.sidecar;
    let first = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let second = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut admin = sidecar.admin_keys().await;
    admin
        .update_encryption_key(update_request(&first))
        .await
        .unwrap();

    // Writes fail: UNAVAILABLE, and nothing changes. Their outcome is unknown to the
    // sidecar, so the next read asks the backend (a miss) instead of trusting the cache.
    faulty.set("[writes]\nerror = \"unavailable\"\n");
    let status = admin
        .update_encryption_key(update_request(&second))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "BACKEND_UNAVAILABLE");
    // The injected outage gives no retry hint: the sidecar's own, 1 s.
    assert_eq!(
        status.get_details_retry_info().map(|r| r.retry_delay),
        Some(Some(Duration::from_secs(1)))
    );
    let status = admin
        .reset_encryption_key(proto::ResetEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let mut reader = sidecar.read_only_keys().await;
    assert_eq!(
        read_key(&mut reader).await.unwrap(),
        (first.clone(), "miss".into())
    );

    // Reads fail too: past the TTL the last key is served stale, and says so.
    faulty.set("[reads]\nerror = \"unavailable\"\n[writes]\nerror = \"unavailable\"\n");
    let stale = eventually(Duration::from_secs(5), || {
        let mut reader = reader.clone();
        async move {
            match read_key(&mut reader).await {
                Ok((_, cache)) => cache == "stale",
                Err(status) => panic!("a stale answer was due: {status:?}"),
            }
        }
    })
    .await;
    assert!(stale, "no stale answer");
    // Its warning is written in the read's span: a read that leaves the cache has one.
    // The log reaches the test through a pipe: wait (bounded) for the line to arrive.
    let stale_line = || {
        sidecar
            .log()
            .lines()
            .find(|line| line.contains("serving a stale key"))
            .map(str::to_owned)
    };
    let logged = eventually(Duration::from_secs(5), || {
        let found = stale_line().is_some();
        async move { found }
    })
    .await;
    assert!(logged, "no stale warning in the log");
    let warning = stale_line().unwrap_or_default();
    assert!(
        warning.contains("rpc{request_id=")
            && warning.contains("method=/inspectorkeyd.v1.EncryptionKeyService/GetEncryptionKey"),
        "{warning}"
    );
    assert_eq!(
        read_key(&mut reader).await.unwrap(),
        (first.clone(), "stale".into())
    );
    // An Update cannot even verify its key now; the stale answer stays.
    let status = admin
        .update_encryption_key(update_request(&second))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        read_key(&mut reader).await.unwrap(),
        (first.clone(), "stale".into())
    );
    // What the alerts of deploy/monitoring see: stale answers, and the window left.
    let metrics = sidecar.scrape_metrics();
    assert!(sample(&metrics, "inspector_keyd_cache_stale", "_total", &[]).unwrap() >= 1.0);
    let left = sample(
        &metrics,
        "inspector_keyd_cache_stale_seconds_left",
        "",
        &[("resource_type", "AWS_LAMBDA_FUNCTION")],
    )
    .unwrap();
    assert!(left > 0.0 && left <= 1.5, "{left}");

    // Past max_stale the read fails as the backend does, clearly.
    let refused = eventually(Duration::from_secs(5), || {
        let mut reader = reader.clone();
        async move { read_key(&mut reader).await.is_err() }
    })
    .await;
    assert!(refused, "stale answers past max_stale");
    let status = read_key(&mut reader).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "BACKEND_UNAVAILABLE");
    // Not ready while the backend is down; alive all along.
    let unready = eventually(Duration::from_secs(15), || async {
        sidecar.http_get("/readyz").0 == 503
    })
    .await;
    assert!(unready, "/readyz stayed ready");
    assert_eq!(sidecar.http_get("/livez").0, 200);
    let metrics = sidecar.scrape_metrics();
    assert_eq!(sample(&metrics, "inspector_keyd_ready", "", &[]), Some(0.0));
    assert_eq!(
        sample(
            &metrics,
            "inspector_keyd_cache_stale_seconds_left",
            "",
            &[("resource_type", "AWS_LAMBDA_FUNCTION")],
        ),
        Some(0.0)
    );

    // Back: fresh reads of the unchanged key, and writes work again.
    faulty.clear();
    assert_eq!(
        read_key(&mut reader).await.unwrap(),
        (first.clone(), "miss".into())
    );
    admin
        .update_encryption_key(update_request(&second))
        .await
        .unwrap();
    assert_eq!(read_key(&mut reader).await.unwrap().0, second);
}

#[tokio::test]
async fn a_hanging_backend_meets_deadlines_and_leaks_no_slot() {
    let faulty = Faulty::start("[ops]\nrpc_timeout = \"300ms\"\nmax_concurrent_rpcs = 4\n");
    let sidecar = &faulty.sidecar;
    let key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    faulty.set("[reads]\nhang = true\n[writes]\nhang = true\n");

    // Three rounds, each filling every slot with a hung read: if a timed-out call kept its
    // slot (or its task kept the cache's per-target lock), later rounds would be shed or hang.
    for round in 0..3 {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let mut reader = sidecar.read_only_keys().await;
            calls.spawn(async move {
                let started = Instant::now();
                let result = reader.get_encryption_key(get_request(LAMBDA)).await;
                (result.unwrap_err(), started.elapsed())
            });
        }
        while let Some(joined) = calls.join_next().await {
            let (status, took) = joined.unwrap();
            assert_eq!(
                status.code(),
                Code::DeadlineExceeded,
                "round {round}: {status:?}"
            );
            assert!(
                took < Duration::from_secs(3),
                "round {round}: took {took:?}"
            );
        }
    }
    // A hung write times out and is not applied.
    let mut admin = sidecar.admin_keys().await;
    let status = admin
        .update_encryption_key(update_request(&key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    faulty.clear();
    let status = sidecar.read_lambda_key().await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "the AWS owned key: {status:?}"
    );
    admin
        .update_encryption_key(update_request(&key))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_throttling_backend_answers_resource_exhausted_with_retry_info() {
    let faulty = Faulty::start("");
    let sidecar = &faulty.sidecar;
    let key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    faulty.set("[reads]\nerror = \"throttled\"\n[writes]\nerror = \"throttled\"\n");
    let status = sidecar.read_lambda_key().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "BACKEND_THROTTLED");
    // The backend's own hint (the fault injector's throttle says 1.5 s), not the 1 s the
    // sidecar falls back to when a backend gives none.
    let backend_hint = Some(Some(Duration::from_millis(1500)));
    assert_eq!(
        status.get_details_retry_info().map(|r| r.retry_delay),
        backend_hint
    );

    faulty.set("[writes]\nerror = \"throttled\"\n");
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "BACKEND_THROTTLED");
    assert_eq!(
        status.get_details_retry_info().map(|r| r.retry_delay),
        backend_hint
    );

    // Metrics count the throttled backend calls by class.
    let metrics = sidecar.scrape_metrics();
    for operation in ["get_encryption_key", "update_encryption_key"] {
        let throttled = sample(
            &metrics,
            "inspector_keyd_backend_calls",
            "_total",
            &[("operation", operation), ("class", "throttled")],
        );
        assert_eq!(throttled, Some(1.0), "{operation}: {metrics}");
    }
}

/// Every backend call so far, of every operation and outcome, from the backend-call metric.
fn backend_calls(sidecar: &Sidecar) -> f64 {
    sum_of_samples(
        &sidecar.scrape_metrics(),
        "inspector_keyd_backend_calls",
        "_total",
        &[],
    )
}

/// Fleet cost with the default config: once a key is set, 35 s of steady reads (10 a
/// second) cost at most 2 backend calls — readiness makes none of its own while the cache's
/// answer — and yet, with the backend failing, readiness turns NOT_SERVING within one key
/// TTL (60 s) of the key being set, from the answer to the cache's refresh ahead of expiry.
#[tokio::test]
async fn steady_reads_cost_almost_no_backend_calls_and_readiness_still_sees_a_failing_backend() {
    let faulty = Faulty::start("");
    let sidecar = &faulty.sidecar;
    let key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&key))
        .await
        .unwrap();
    let set_at = Instant::now();
    let before = backend_calls(sidecar);
    let mut reader = sidecar.read_only_keys().await;
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..350 {
        ticks.tick().await;
        assert_eq!(
            read_key(&mut reader).await.unwrap(),
            (key.clone(), "hit".into())
        );
    }
    let after = backend_calls(sidecar);
    assert!(
        after - before <= 2.0,
        "{} backend calls in 35 s",
        after - before
    );
    assert_eq!(sidecar.http_get("/readyz").0, 200);

    // The backend goes down; reads go on (hits until the entry expires, then stale).
    faulty.set("[reads]\nerror = \"unavailable\"\n");
    let mut unready_after = None;
    for _ in 0..400 {
        ticks.tick().await;
        let (arn, _) = read_key(&mut reader).await.unwrap();
        assert_eq!(arn, key);
        if sidecar.http_get("/readyz").0 == 503 {
            unready_after = Some(set_at.elapsed());
            break;
        }
    }
    let unready_after = unready_after.expect("readiness never saw the backend fail");
    // One key TTL, and a little for a loaded machine's scheduling.
    assert!(
        unready_after < Duration::from_secs(62),
        "NOT_SERVING only {unready_after:?} after the key was set"
    );
}

/// With nothing read, readiness asks the backend itself once a key TTL has passed without
/// another call's answer, so an idle sidecar still turns NOT_SERVING within one key TTL —
/// and not before the backend fails, however long `ops.ready_check_interval` is.
#[tokio::test]
async fn with_nothing_read_readiness_still_turns_unready_within_one_key_ttl() {
    let faulty = Faulty::start(
        "[cache]\nkey_ttl = \"2s\"\n[ops]\nready_check_interval = \"1h\"\nhealth_listen = \"127.0.0.1:0\"\n",
    );
    let sidecar = &faulty.sidecar;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sidecar.http_get("/readyz").0, 200);
    let calls = backend_calls(sidecar);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Idle: only readiness's own calls, at least 92 % of a key TTL (1.84 s) apart — 2 in
    // 3 s; the bound leaves one for the time the scrapes take. That it asks at all is what
    // the outage below shows.
    let idle_calls = backend_calls(sidecar) - calls;
    assert!(idle_calls <= 3.0, "{idle_calls} calls in 3 s");

    faulty.set("[reads]\nerror = \"unavailable\"\n");
    let failed_at = Instant::now();
    let unready = eventually(Duration::from_secs(6), || async {
        sidecar.http_get("/readyz").0 == 503
    })
    .await;
    assert!(
        unready,
        "still ready {:?} after the backend failed",
        failed_at.elapsed()
    );
    let channel = sidecar.health_channel().await;
    assert_eq!(
        health_status(channel, proto::ENCRYPTION_KEY_SERVICE)
            .await
            .unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    // Recovery is seen at the next check while unready: the retry interval (1 h) is long,
    // so it is a read's answer that brings it back.
    faulty.clear();
    sidecar.read_lambda_key().await.unwrap_err();
    let ready = eventually(Duration::from_secs(5), || async {
        sidecar.http_get("/readyz").0 == 200
    })
    .await;
    assert!(ready, "a read's answer did not bring readiness back");
}
