//! Operations through the real binary: metrics parsed by a real Prometheus parser, probes,
//! load shedding, graceful shutdown with calls in flight, the drift watch, request ids and
//! JSON logs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use inspector_keyd::proto::{self, KeyEventType};
use tonic::{Code, Request};
use tonic_types::StatusExt;

#[tokio::test]
async fn metrics_count_what_happened() {
    let sidecar = Sidecar::start();
    let mut reader = sidecar.read_only_keys().await;
    reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap();
    assert_eq!(
        reader
            .update_encryption_key(update_request(&arn))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap();

    let metrics = sidecar.scrape_metrics();
    let get = |family: &str, suffix: &str, labels: &[(&str, &str)]| {
        sample(&metrics, family, suffix, labels)
            .unwrap_or_else(|| panic!("no {family}{suffix} {labels:?} in {metrics}"))
    };
    let rpc = "inspector_keyd_rpc_requests";
    assert_eq!(
        get(
            rpc,
            "_total",
            &[("method", "GetEncryptionKey"), ("code", "NOT_FOUND")]
        ),
        2.0
    );
    assert_eq!(
        get(
            rpc,
            "_total",
            &[("method", "GetEncryptionKey"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        get(
            rpc,
            "_total",
            &[("method", "UpdateEncryptionKey"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        get(
            rpc,
            "_total",
            &[
                ("method", "UpdateEncryptionKey"),
                ("code", "PERMISSION_DENIED")
            ]
        ),
        1.0
    );
    assert_eq!(
        get(
            "inspector_keyd_rpc_duration_seconds",
            "_count",
            &[("method", "GetEncryptionKey"), ("code", "NOT_FOUND")]
        ),
        2.0
    );
    // The first read missed and loaded, the second hit; the update wrote through, so the
    // third read hit too.
    assert_eq!(get("inspector_keyd_cache_hits", "_total", &[]), 2.0);
    assert_eq!(get("inspector_keyd_cache_misses", "_total", &[]), 1.0);
    assert_eq!(get("inspector_keyd_cache_loads", "_total", &[]), 1.0);
    assert_eq!(get("inspector_keyd_cache_stale", "_total", &[]), 0.0);
    let authz = "inspector_keyd_authz_decisions";
    assert_eq!(
        get(
            authz,
            "_total",
            &[
                ("rpc", "UpdateEncryptionKey"),
                ("role", "read-only"),
                ("decision", "deny")
            ]
        ),
        1.0
    );
    assert_eq!(
        get(
            authz,
            "_total",
            &[
                ("rpc", "UpdateEncryptionKey"),
                ("role", "admin"),
                ("decision", "allow")
            ]
        ),
        1.0
    );
    assert_eq!(
        get(
            authz,
            "_total",
            &[
                ("rpc", "GetEncryptionKey"),
                ("role", "read-only"),
                ("decision", "allow")
            ]
        ),
        3.0
    );
    let backend = "inspector_keyd_backend_calls";
    assert_eq!(
        get(
            backend,
            "_total",
            &[("operation", "update_encryption_key"), ("class", "ok")]
        ),
        1.0
    );
    assert!(
        get(
            backend,
            "_total",
            &[("operation", "describe_key"), ("class", "ok")]
        ) >= 1.0
    );
    assert!(
        get(
            "inspector_keyd_verifications",
            "_total",
            &[("profile", "codeguru-grants"), ("result", "passed")]
        ) >= 1.0
    );
    // No key ARN or caller ever becomes a label.
    let text = sidecar.http_get("/metrics").1;
    assert!(
        !text.contains(&arn) && !text.contains("127.0.0.1"),
        "{text}"
    );

    assert_eq!(sidecar.http_get("/livez").0, 200);
    let ready = eventually(Duration::from_secs(10), || async {
        sidecar.http_get("/readyz").0 == 200
    })
    .await;
    assert!(ready);
}

#[tokio::test]
async fn overload_is_shed_at_once_while_admitted_calls_complete() {
    let sidecar = Sidecar::start_with(
        "[ops]\nmax_concurrent_rpcs = 2\n[local]\nwrite_latency = \"1500ms\"\n",
    );
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let mut admin = sidecar.admin_keys().await;
        let request = update_request(&arn);
        calls.spawn(async move {
            let result = admin.update_encryption_key(request).await;
            (result.map(drop), started.elapsed())
        });
    }
    let mut admitted = Vec::new();
    let mut shed = Vec::new();
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            (Ok(()), elapsed) => admitted.push(elapsed),
            (Err(status), elapsed) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "OVERLOADED");
                assert!(status.get_error_details().retry_info().is_some());
                shed.push(elapsed);
            }
        }
    }
    assert_eq!(
        (admitted.len(), shed.len()),
        (2, 4),
        "admitted {admitted:?}, shed {shed:?}"
    );
    // Shed calls were answered before any admitted call could finish its slow write.
    let last_shed = shed.iter().max().unwrap();
    let first_admitted = admitted.iter().min().unwrap();
    assert!(
        last_shed < first_admitted,
        "shed {shed:?} admitted {admitted:?}"
    );
    assert!(*first_admitted >= Duration::from_millis(1500));
    // Counted for the shedding alert (deploy/monitoring).
    assert_eq!(
        sample(
            &sidecar.scrape_metrics(),
            "inspector_keyd_rpc_shed",
            "_total",
            &[]
        ),
        Some(4.0)
    );
    // Health is never shed.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(sidecar.tcp_channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn deadlines_hold_with_the_shorter_of_ours_and_the_callers() {
    let sidecar =
        Sidecar::start_with("[ops]\nrpc_timeout = \"300ms\"\n[local]\nwrite_latency = \"2s\"\n");
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let status = sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason(&status), "DEADLINE_EXCEEDED");
}

/// Key verifications that passed so far (`inspector_keyd_verifications_total`, every
/// profile), read from the metrics listener.
fn passed_verifications(sidecar: &Sidecar) -> f64 {
    let (code, body) = sidecar.http_get("/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| {
            l.starts_with("inspector_keyd_verifications_total{") && l.contains(r#"result="passed""#)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn sigterm_lets_calls_in_flight_finish_and_exits_zero() {
    let mut sidecar = Sidecar::start_with("[local]\nwrite_latency = \"1s\"\n");
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let repository_arn = sidecar.create_repository_key().await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(sidecar.tcp_channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    let verified_before = passed_verifications(&sidecar);
    let mut in_flight = tokio::task::JoinSet::new();
    for (arn, resource_type) in [(arn.clone(), LAMBDA), (repository_arn, REPOSITORY)] {
        let mut admin = sidecar.admin_keys().await;
        in_flight.spawn(async move {
            admin
                .update_encryption_key(proto::UpdateEncryptionKeyRequest {
                    resource_type,
                    ..update_request(&arn)
                })
                .await
        });
    }
    // Both calls are in flight once the server has verified their keys: each then spends
    // the 1 s write latency in the backend (one after the other; writes are serialized).
    let in_the_server = eventually(Duration::from_secs(10), || async {
        passed_verifications(&sidecar) == verified_before + 2.0
    })
    .await;
    assert!(in_the_server, "{}", sidecar.log());
    let signalled = Instant::now();
    sidecar.signal("TERM");

    // Health says NOT_SERVING, and the watch then ends instead of holding the drain.
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(
        next.status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    assert!(
        watch.message().await.unwrap().is_none(),
        "the watch stream ends at shutdown"
    );

    // New connections are refused.
    let refused = eventually(Duration::from_secs(5), || async {
        std::os::unix::net::UnixStream::connect(&sidecar.socket).is_err()
            && std::net::TcpStream::connect(sidecar.tcp).is_err()
    })
    .await;
    assert!(refused, "still accepting connections");

    // The calls in flight complete.
    while let Some(result) = in_flight.join_next().await {
        let response = result.unwrap().unwrap().into_inner();
        assert!(response.applied);
    }
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}\n{}", sidecar.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exited within the 5 s shutdown timeout"
    );
    assert!(
        !sidecar
            .log()
            .contains("did not finish before the shutdown timeout"),
        "{}",
        sidecar.log()
    );
    // The writes were acknowledged, so they are in the store.
    let sidecar = sidecar.restart();
    let key = sidecar
        .read_only_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.kms_key_id, arn);
}

async fn next_event(
    stream: &mut tonic::Streaming<proto::WatchEncryptionKeyResponse>,
) -> proto::WatchEncryptionKeyResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an event within 20 s")
        .unwrap()
        .expect("the stream is open")
}

fn gauge(sidecar: &Sidecar) -> f64 {
    let metrics = sidecar.scrape_metrics();
    sample(
        &metrics,
        "inspector_keyd_key_verification_passed",
        "",
        &[
            ("scan_type", "CODE"),
            ("resource_type", "AWS_LAMBDA_FUNCTION"),
        ],
    )
    .unwrap_or_else(|| panic!("no verification gauge for the Lambda target in {metrics}"))
}

/// The next event of the admin's watch and of the read-only watcher's, which must be the
/// same event with the report's findings left out (a stored key's verification is
/// code-reader data); the admin's.
async fn next_events(
    admin: &mut tonic::Streaming<proto::WatchEncryptionKeyResponse>,
    read_only: &mut tonic::Streaming<proto::WatchEncryptionKeyResponse>,
) -> proto::WatchEncryptionKeyResponse {
    let whole = next_event(admin).await;
    let verdict = next_event(read_only).await;
    assert_verdict_only(&verdict, &whole);
    whole
}

/// `verdict` is `whole` as a read-only watcher gets it: the same event, key and verdict, and
/// no finding (no Sid, message or list of requests) and no access summary (who may decrypt).
fn assert_verdict_only(
    verdict: &proto::WatchEncryptionKeyResponse,
    whole: &proto::WatchEncryptionKeyResponse,
) {
    let expected = proto::WatchEncryptionKeyResponse {
        report: whole.report.clone().map(|r| proto::VerificationReport {
            findings: Vec::new(),
            access: None,
            ..r
        }),
        time: verdict.time,
        ..whole.clone()
    };
    assert_eq!(verdict, &expected, "the read-only watcher's event");
}

#[tokio::test]
async fn drift_is_detected_and_resolved_on_the_watch_stream() {
    let sidecar = Sidecar::start_with("[ops]\ndrift_interval = \"200ms\"\n");
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let watch = proto::WatchEncryptionKeyRequest {
        scan_type: CODE,
        resource_type: LAMBDA,
        ..Default::default()
    };
    // The same events to an admin and to an anonymous loopback (read-only) watcher.
    let mut events = sidecar
        .admin_keys()
        .await
        .watch_encryption_key(watch.clone())
        .await
        .unwrap()
        .into_inner();
    let mut reader = sidecar.read_only_keys().await;
    let mut read_only = reader
        .watch_encryption_key(watch.clone())
        .await
        .unwrap()
        .into_inner();
    let current = next_events(&mut events, &mut read_only).await;
    assert_eq!(
        (current.r#type(), current.kms_key_id.as_str()),
        (KeyEventType::Current, "")
    );

    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap();
    let updated = next_events(&mut events, &mut read_only).await;
    assert_eq!(
        (updated.r#type(), updated.kms_key_id.as_str()),
        (KeyEventType::Updated, arn.as_str())
    );
    let report = updated.report.unwrap();
    assert!(report.passed);
    // The local key's default policy grants the account root everything: the admin sees
    // that finding, with its Sid and the requests it allows.
    assert!(!report.findings.is_empty(), "{report:?}");

    let mut kms = sidecar.kms().await;
    kms.disable_key(proto::DisableKeyRequest {
        key_id: arn.clone(),
    })
    .await
    .unwrap();
    let drift = next_events(&mut events, &mut read_only).await;
    assert_eq!(drift.r#type(), KeyEventType::DriftDetected);
    let report = drift.report.unwrap();
    assert!(!report.passed);
    assert!(
        report.findings.iter().any(|f| f.code == "KEY_NOT_ENABLED"),
        "{report:?}"
    );
    assert_eq!(gauge(&sidecar), 0.0);
    assert!(sidecar.log().contains("key drift"), "a warning is logged");

    // A watch opened now starts with the failing key's CURRENT event: its findings for the
    // admin only, too.
    let mut late_admin = sidecar
        .admin_keys()
        .await
        .watch_encryption_key(watch.clone())
        .await
        .unwrap()
        .into_inner();
    let mut late_reader = reader
        .watch_encryption_key(watch)
        .await
        .unwrap()
        .into_inner();
    let current = next_events(&mut late_admin, &mut late_reader).await;
    assert_eq!(
        (current.r#type(), current.kms_key_id.as_str()),
        (KeyEventType::Current, arn.as_str())
    );
    let report = current.report.unwrap();
    assert!(
        !report.passed && report.findings.iter().any(|f| f.code == "KEY_NOT_ENABLED"),
        "{report:?}"
    );

    kms.enable_key(proto::EnableKeyRequest {
        key_id: arn.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        next_events(&mut events, &mut read_only).await.r#type(),
        KeyEventType::DriftResolved
    );
    assert_eq!(gauge(&sidecar), 1.0);

    // A policy edited to deny a required request is drift too.
    let deny = r#"{"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "NoGrants", "Effect": "Deny", "Principal": "*", "Action": "kms:CreateGrant", "Resource": "*"}]}"#;
    kms.put_key_policy(proto::PutKeyPolicyRequest {
        key_id: arn.clone(),
        policy: deny.into(),
    })
    .await
    .unwrap();
    let drift = next_events(&mut events, &mut read_only).await;
    assert_eq!(drift.r#type(), KeyEventType::DriftDetected);
    let denied = drift
        .report
        .unwrap()
        .findings
        .into_iter()
        .find(|f| f.code == "REQUIRED_ACCESS_EXPLICITLY_DENIED")
        .expect("the admin sees the denying statement");
    assert_eq!(denied.sid.as_deref(), Some("NoGrants"));
    assert!(!denied.requests.is_empty(), "{denied:?}");

    sidecar
        .admin_keys()
        .await
        .reset_encryption_key(proto::ResetEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await
        .unwrap();
    let reset = next_events(&mut events, &mut read_only).await;
    assert_eq!(
        (reset.r#type(), reset.kms_key_id.as_str()),
        (KeyEventType::Reset, "")
    );
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let sidecar = Sidecar::start_with("[ops]\nlog_format = \"json\"\n");
    let mut request = Request::new(update_request(
        "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000",
    ));
    request
        .metadata_mut()
        .insert("x-request-id", "req-json-7".parse().unwrap());
    let status = sidecar
        .read_only_keys()
        .await
        .update_encryption_key(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "req-json-7");
    // Without one, the sidecar makes one up for a call it records (every call but a read
    // the cache answers), a new one per call, and returns it.
    let mut reader = sidecar.read_only_keys().await;
    let id = |status: &tonic::Status| {
        status
            .metadata()
            .get("x-request-id")
            .map(|id| id.to_str().unwrap().to_owned())
    };
    let refused = |mut request: Request<_>| {
        request
            .metadata_mut()
            .insert("authorization", "Bearer not-a-known-token".parse().unwrap());
        request
    };
    let first = id(&reader
        .get_encryption_key(refused(Request::new(get_request(LAMBDA))))
        .await
        .unwrap_err())
    .unwrap();
    let second = id(&reader
        .get_encryption_key(refused(Request::new(get_request(LAMBDA))))
        .await
        .unwrap_err())
    .unwrap();
    assert!(!first.is_empty() && first != second, "{first} {second}");
    // The first read of a target goes to the backend (its span logs under the id it
    // returns); the next is answered from the cache, records nothing and has no id to give,
    // unless the caller sent one, which it echoes.
    let loaded = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(
        loaded.metadata().get("x-keyd-cache").unwrap(),
        "miss",
        "{loaded:?}"
    );
    assert!(id(&loaded).is_some(), "{loaded:?}");
    let hit = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(hit.metadata().get("x-keyd-cache").unwrap(), "hit");
    assert_eq!(id(&hit), None, "{hit:?}");
    let mut request = Request::new(get_request(LAMBDA));
    request
        .metadata_mut()
        .insert("x-request-id", "req-json-9".parse().unwrap());
    let echoed = reader.get_encryption_key(request).await.unwrap_err();
    assert_eq!(id(&echoed).as_deref(), Some("req-json-9"));
    // A refused read (the hot path, which opens its span only when it logs) too.
    let mut request = Request::new(get_request(LAMBDA));
    request
        .metadata_mut()
        .insert("x-request-id", "req-json-8".parse().unwrap());
    request
        .metadata_mut()
        .insert("authorization", "Bearer not-a-known-token".parse().unwrap());
    let status = reader.get_encryption_key(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // A call of a path the server does not serve needs admin: refused, and its line names
    // the path the caller asked for.
    let mut unserved = tonic::client::Grpc::new(sidecar.tcp_channel().await);
    unserved.ready().await.unwrap();
    let mut request = Request::new(get_request(LAMBDA));
    request
        .metadata_mut()
        .insert("x-request-id", "req-json-6".parse().unwrap());
    let status = unserved
        .unary::<_, proto::GetEncryptionKeyResponse, _>(
            request,
            http::uri::PathAndQuery::from_static(UNSERVED_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let found = eventually(Duration::from_secs(5), || async {
        let log = sidecar.log();
        // The id a refused read was answered with is the one its log line carries.
        log.contains("req-json-7")
            && log.contains("req-json-8")
            && log.contains("req-json-6")
            && log.contains(&first)
    })
    .await;
    assert!(found);
    let lines: Vec<serde_json::Value> = sidecar
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let refused = lines
        .iter()
        .find(|l| l["fields"]["message"] == "call refused")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(refused["span"]["request_id"], "req-json-7");
    assert_eq!(
        refused["span"]["method"],
        "/inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey"
    );
    assert_eq!(refused["level"], "INFO");
    let refused_read = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "call refused" && l["span"]["request_id"] == "req-json-8"
        })
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(
        refused_read["span"]["method"],
        "/inspectorkeyd.v1.EncryptionKeyService/GetEncryptionKey"
    );
    let refused_unserved = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "call refused" && l["span"]["request_id"] == "req-json-6"
        })
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(refused_unserved["span"]["method"], UNSERVED_PATH);
}

/// A path under the served package that no service has.
const UNSERVED_PATH: &str = "/inspectorkeyd.v1.EncryptionKeyService/NoSuchCall";

#[tokio::test]
async fn oversized_messages_are_refused_and_change_nothing() {
    let sidecar =
        Sidecar::start_with("[ops]\nmax_request_bytes = 4096\nmax_response_bytes = 4096\n");
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let mut kms = sidecar.kms().await;
    let big = format!(
        r#"{{"Version": "2012-10-17", "Id": "{}", "Statement": []}}"#,
        "x".repeat(8000)
    );
    let status = kms
        .put_key_policy(proto::PutKeyPolicyRequest {
            key_id: arn.clone(),
            policy: big,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains("decoded message length too large"),
        "{}",
        status.message()
    );
    let policy = kms
        .get_key_policy(proto::GetKeyPolicyRequest {
            key_id: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    assert!(!policy.contains("xxxx"));

    // A response over the limit is refused too: a small policy whose report is large.
    let broken = vec![r#"{"Effect": "Permit"}"#; 20].join(",");
    let request = proto::VerifyKeyPolicyRequest {
        profile: "amazon-q-lambda".into(),
        key: Some(proto::verify_key_policy_request::Key::InlineKey(
            proto::InlineKey {
                key_policy: format!(r#"{{"Version": "2012-10-17", "Statement": [{broken}]}}"#),
                key_metadata_json: String::new(),
            },
        )),
        ..Default::default()
    };
    let status = sidecar
        .read_only_keys()
        .await
        .verify_key_policy(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains("encoded message length too large"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn the_health_port_serves_health_and_nothing_else() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let sidecar = Sidecar::start_with("[ops]\nhealth_listen = \"127.0.0.1:0\"\n");
    let channel = sidecar.health_channel().await;
    // Liveness and readiness, as Kubernetes' grpc probes ask them.
    for service in ["", proto::ENCRYPTION_KEY_SERVICE] {
        assert_eq!(
            health_status(channel.clone(), service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    // The API and reflection are not on this port.
    let status =
        proto::encryption_key_service_client::EncryptionKeyServiceClient::new(channel.clone())
            .get_encryption_key(get_request(LAMBDA))
            .await
            .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let mut reflection =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            channel,
        );
    let status = reflection
        .server_reflection_info(tokio_stream::iter([
            tonic_reflection::pb::v1alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn an_unreachable_backend_makes_the_sidecar_unready_but_alive() {
    use tonic_health::pb::health_check_response::ServingStatus;
    // A loopback port nothing listens on: every AWS call is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let sidecar = Sidecar::start_with_env(
        &format!(
            "backend = \"aws\"\nregion = \"us-east-1\"\naccount_id = \"111122223333\"\n[ops]\nhealth_listen = \"127.0.0.1:0\"\n[aws]\ninspector2_endpoint = \"{endpoint}\"\nkms_endpoint = \"{endpoint}\"\nsts_endpoint = \"{endpoint}\"\niam_endpoint = \"{endpoint}\"\nmax_attempts = 1\n"
        ),
        common::moto::AWS_TEST_ENV,
    );
    let channel = sidecar.health_channel().await;
    // Alive: a liveness probe must not restart the pod because AWS is unreachable.
    assert_eq!(
        health_status(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    // Not ready, on the health port and on /readyz alike.
    assert_eq!(
        health_status(channel, proto::ENCRYPTION_KEY_SERVICE)
            .await
            .unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(sidecar.http_get("/readyz").0, 503);
}

/// `serve` with a port already taken: exits non-zero at once, naming the listener and the
/// address, for each listener that can be taken.
#[tokio::test]
async fn a_taken_port_stops_the_start_naming_the_listener_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for (setting, listener) in [
        ("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "metrics"),
        ("INSPECTOR_KEYD_OPS__HEALTH_LISTEN", "health"),
        ("INSPECTOR_KEYD_LISTEN__TCP", "tcp"),
        ("INSPECTOR_KEYD_AWS_API__LISTEN", "aws_api"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(BIN);
        command.arg("serve").current_dir(dir.path());
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("INSPECTOR_KEYD_")) {
            command.env_remove(name);
        }
        let output = command
            .env("INSPECTOR_KEYD_LISTEN__TCP", "127.0.0.1:0")
            .env("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "127.0.0.1:0")
            .env("INSPECTOR_KEYD_AWS_API__LISTEN", "127.0.0.1:0")
            .env(setting, addr.to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{listener}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {listener} {addr}"))
                && stderr.contains("in use"),
            "{listener}: {stderr}"
        );
        assert!(!stderr.contains(" serving "), "{stderr}");
    }
}

/// `serve --ready-file`: every bound address as JSON once serving, gone after shutdown.
#[tokio::test]
async fn the_ready_file_lists_every_bound_address_until_shutdown() {
    let mut sidecar = Sidecar::start_with("[ops]\nhealth_listen = \"127.0.0.1:0\"\n");
    let ready_file = sidecar.dir().join("ready.json");
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready_file).unwrap()).unwrap();
    assert_eq!(ready["tcp"], sidecar.tcp.to_string());
    assert_eq!(ready["metrics"], sidecar.metrics.unwrap().to_string());
    assert_eq!(ready["health"], sidecar.health.unwrap().to_string());
    assert_eq!(ready["unix_socket"], sidecar.socket.to_str().unwrap());
    assert_eq!(ready["tls"], serde_json::Value::Null);
    assert_eq!(ready["aws_api"], sidecar.aws_api.unwrap().to_string());
    assert!(
        sidecar
            .log()
            .contains(&format!(" aws_api={} ", sidecar.aws_api.unwrap())),
        "the serving line names the door: {}",
        sidecar.log()
    );
    // What it names answers.
    assert_eq!(sidecar.http_get("/livez").0, 200);
    sidecar.signal("TERM");
    assert!(sidecar.wait_exit(Duration::from_secs(10)).await.success());
    assert!(!ready_file.exists());
}

async fn open_watch(
    sidecar: &Sidecar,
) -> Result<tonic::Streaming<proto::WatchEncryptionKeyResponse>, tonic::Status> {
    let mut stream = sidecar
        .read_only_keys()
        .await
        .watch_encryption_key(proto::WatchEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        next_event(&mut stream).await.r#type(),
        KeyEventType::Current
    );
    Ok(stream)
}

#[tokio::test]
async fn watch_streams_are_bounded_in_number_and_in_duration() {
    let sidecar =
        Sidecar::start_with("[ops]\nmax_watch_streams = 2\nmax_watch_duration = \"4s\"\n");
    let opened = Instant::now();
    let first = open_watch(&sidecar).await.unwrap();
    let mut second = open_watch(&sidecar).await.unwrap();
    let refused = open_watch(&sidecar).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "TOO_MANY_WATCHES");
    assert!(refused.get_details_retry_info().is_some());
    // A stream that goes away gives its place back.
    drop(first);
    let mut third = None;
    for _ in 0..50 {
        if let Ok(stream) = open_watch(&sidecar).await {
            third = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = third.expect("a place was given back");

    // At its maximum duration a stream ends UNAVAILABLE, saying to watch again.
    let ended = tokio::time::timeout(Duration::from_secs(10), second.message())
        .await
        .expect("the stream ended")
        .unwrap_err();
    let lasted = opened.elapsed();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_eq!(reason(&ended), "WATCH_EXPIRED");
    assert!(lasted >= Duration::from_secs(4), "{lasted:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), third.message())
        .await
        .expect("the stream ended")
        .unwrap_err();
    assert_eq!(reason(&ended), "WATCH_EXPIRED");
    // Both places are free again.
    let _again = open_watch(&sidecar).await.unwrap();
    let _and_again = open_watch(&sidecar).await.unwrap();
}

#[tokio::test]
async fn connections_past_their_maximum_age_are_ended_and_clients_reconnect() {
    let sidecar = Sidecar::start_with("[connections]\nmax_age = \"1s\"\nmax_age_grace = \"1s\"\n");
    let mut reader = sidecar.read_only_keys().await;
    let started = Instant::now();
    let mut stream = reader
        .watch_encryption_key(proto::WatchEncryptionKeyRequest {
            scan_type: CODE,
            resource_type: LAMBDA,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_event(&mut stream).await.r#type(),
        KeyEventType::Current
    );
    // GOAWAY at 1 s; the stream in flight is cut when the 1 s of grace is over.
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the connection was ended");
    assert!(
        !matches!(ended, Ok(Some(_))),
        "the stream went on: {ended:?}"
    );
    let lasted = started.elapsed();
    assert!(lasted >= Duration::from_secs(1), "{lasted:?}");
    // The same client connects again.
    let status = reader
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
