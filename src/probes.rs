//! The metrics and probes HTTP listener: `/metrics` (Prometheus), `/livez` (the process is up; never
//! depends on the backend) and `/readyz` (serving, and the backend answered its last call).

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use tokio::time::Instant;

use crate::{
    backend::{
        Backend,
        metered::{BackendAnswer, BackendAnswers},
    },
    domain::{Scope, ScopedTarget, Target},
    jitter,
    metrics::Metrics,
};
use tonic_health::{ServingStatus, server::HealthReporter};

/// How long readiness's own call to the backend may take before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Readiness: serving, and the backend answered its last call. Published as `/readyz` and
/// as the gRPC health status of the API service (what Kubernetes' readiness probe asks).
pub struct Readiness {
    serving: AtomicBool,
    backend_ok: AtomicBool,
    answers: Arc<BackendAnswers>,
    health: HealthReporter,
    metrics: Metrics,
    /// The scope its own probes ask about: the sidecar's own.
    own: Scope,
}

impl Readiness {
    /// Readiness that follows `answers`, the answers of every call to the backend, and
    /// probes the backend in the `own` scope.
    pub fn new(
        health: HealthReporter,
        metrics: Metrics,
        answers: Arc<BackendAnswers>,
        own: Scope,
    ) -> Readiness {
        metrics.set_ready(false);
        Readiness {
            serving: AtomicBool::new(false),
            backend_ok: AtomicBool::new(false),
            answers,
            health,
            metrics,
            own,
        }
    }

    pub async fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
        self.publish().await;
    }

    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::SeqCst) && self.backend_ok.load(Ordering::SeqCst)
    }

    async fn publish(&self) {
        let ready = self.is_ready();
        self.metrics.set_ready(ready);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health
            .set_service_status(crate::proto::ENCRYPTION_KEY_SERVICE, status)
            .await;
    }

    async fn follow(&self, last: Option<BackendAnswer>) {
        let ok = last.is_some_and(|a| a.reachable);
        if self.backend_ok.swap(ok, Ordering::SeqCst) != ok {
            tracing::info!(ready = ok, "backend readiness changed");
        }
        self.publish().await;
    }

    /// Asks the backend once, through `backend` (which records the answer like any call's),
    /// and follows the answer.
    pub async fn check_backend_once(&self, backend: &dyn Backend) {
        let Some(probe) = Target::all().next() else {
            return;
        };
        let probe = ScopedTarget::new(self.own, probe);
        if tokio::time::timeout(PROBE_TIMEOUT, backend.get_encryption_key(probe))
            .await
            .is_err()
        {
            self.answers.record(false);
        }
        self.follow(self.answers.last()).await;
    }

    /// Follows the answers to the calls the cache and the drift check make, and asks the
    /// backend itself only when nothing answered for a draw from `quiet` (so it is never
    /// further behind than `quiet.end`), or every `retry` (± 15 %) while the backend is
    /// unreachable and nothing else is asking.
    pub async fn follow_backend(
        self: Arc<Self>,
        backend: Arc<dyn Backend>,
        quiet: Range<Duration>,
        retry: Duration,
    ) {
        let mut changes = self.answers.subscribe();
        loop {
            let last = *changes.borrow_and_update();
            self.follow(last).await;
            let wait = match last {
                Some(answer) if answer.reachable => (answer.at + jitter::within(quiet.clone()))
                    .saturating_duration_since(Instant::now()),
                _ => jitter::around(retry),
            };
            tokio::select! {
                changed = changes.changed() => match changed {
                    Ok(()) => continue,
                    // The sender lives as long as `self`: cannot happen.
                    Err(_) => return,
                },
                () = tokio::time::sleep(wait) => {}
            }
            // Answers that keep reachability as it was wake no one: look again before asking.
            if self.answers.last() != last {
                continue;
            }
            self.check_backend_once(backend.as_ref()).await;
        }
    }
}

/// Serves the operations endpoints on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}
