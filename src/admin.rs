//! The operations HTTP listener: `/metrics` (Prometheus), `/livez` (the process is up; never
//! depends on the backend) and `/readyz` (serving, and the last backend check answered).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};

use crate::{backend::Backend, domain::Target, metrics::Metrics};
use tonic_health::{ServingStatus, server::HealthReporter};

/// Readiness: serving, and the backend answered its last check. Published as `/readyz` and
/// as the gRPC health status of the API service (what Kubernetes' readiness probe asks).
pub struct Readiness {
    serving: AtomicBool,
    backend_ok: AtomicBool,
    health: HealthReporter,
    metrics: Metrics,
}

impl Readiness {
    pub fn new(health: HealthReporter, metrics: Metrics) -> Readiness {
        metrics.set_ready(false);
        Readiness {
            serving: AtomicBool::new(false),
            backend_ok: AtomicBool::new(false),
            health,
            metrics,
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

    /// Checks the backend once (bounded by a timeout) and keeps the result. Throttling and
    /// refusals of the request still mean the backend is reachable.
    pub async fn check_backend_once(&self, backend: &dyn Backend) {
        let Some(probe) = Target::all().next() else {
            return;
        };
        let ok =
            match tokio::time::timeout(Duration::from_secs(5), backend.get_encryption_key(probe))
                .await
            {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => !matches!(e.class(), "transient" | "internal"),
                Err(_) => false,
            };
        if self.backend_ok.swap(ok, Ordering::SeqCst) != ok {
            tracing::info!(ready = ok, "backend readiness changed");
        }
        self.publish().await;
    }

    /// Checks the backend every `interval`.
    pub async fn check_backend(self: Arc<Self>, backend: Arc<dyn Backend>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
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
