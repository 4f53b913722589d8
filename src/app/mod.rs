//! The composition root: [`App::build`] wires parts that build themselves — the backend
//! (`backend`), what is served and who may call it (`routes`), the listeners (`listeners`)
//! and the tasks beside them (`tasks`) — and reports where it listens; [`App::run`] serves
//! until a stop signal and supervises every task (each listener, the metrics listener,
//! reloads, the drift watch, readiness): one that fails, ends early or panics stops the
//! whole process with an error naming it. Tests build an `App` in process and wrap its
//! backend through [`Hooks`], the one seam a test backend goes in by.

mod backend;
mod listeners;
mod routes;
mod tasks;

pub use backend::{BackendWrapper, Hooks};
pub use listeners::Addresses;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    backend::Backend,
    cache::CacheState,
    config::{BackendKind, Placement, Settings},
    metrics::Metrics,
    probes::Readiness,
    reload::Reloader,
    server::{ServeError, remove_socket},
};

/// A built sidecar: every listener bound, nothing served yet.
pub struct App {
    addresses: Addresses,
    /// The listeners' accept loops; each ends once the stop signal is sent and its calls
    /// have drained.
    listeners: Vec<tasks::Named>,
    /// Loops that run until the end (reloads, drift watch, readiness); aborted at shutdown.
    background: Vec<tasks::Named>,
    health: HealthReporter,
    readiness: Arc<Readiness>,
    backend: Arc<dyn Backend>,
    stop: watch::Sender<bool>,
    shutdown_timeout: Duration,
    ready_file: Option<PathBuf>,
    /// What the start-up line says besides the addresses.
    backend_kind: BackendKind,
    placement: Placement,
}

impl App {
    /// Builds every part from `settings` and binds every listener; `hooks` is for tests.
    pub async fn build(settings: Settings, hooks: Hooks) -> Result<App, ServeError> {
        let config = &settings.config;
        // A desired state that cannot be used is refused at start, where it is seen; later
        // changes that cannot keep the last one in force.
        if let Some(file) = &config.fleet.desired_state_file {
            crate::service::read_desired_state(file).map_err(|message| {
                crate::config::ConfigError::Value {
                    key: "fleet.desired_state_file",
                    message,
                }
            })?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let cache_state = Arc::new(CacheState::new(config.cache.clone()));
        let shared = routes::Shared {
            health: routes::starting_health().await,
            metrics: Metrics::new(cache_state.clone()),
            stop: stop_rx,
        };
        let backend = backend::BackendPart::build(&settings, &shared.metrics, hooks).await?;
        let keys = routes::KeyService::build(config, &backend, cache_state.clone(), &shared);
        let mut reloader = Reloader::new(config.authz.reload_interval, shared.metrics.clone());
        let access = routes::Access::load(&settings, &backend.scopes, &mut reloader)?;
        let reconciler =
            keys.service
                .reconciler(&config.fleet, access.audit.clone(), shared.metrics.clone());
        let served = routes::Served::build(
            config,
            &shared,
            keys.service,
            backend.local_apis,
            &access,
            &backend.scopes,
        )?;
        let readiness = Arc::new(Readiness::new(
            shared.health.clone(),
            shared.metrics.clone(),
            backend.answers,
            backend.scopes.own(),
        ));
        let (addresses, listeners) =
            listeners::bind(&settings, &shared, served, access.tls.as_ref(), &readiness).await?;
        let background = tasks::background(
            config,
            reloader,
            keys.watch,
            &readiness,
            backend.backend.clone(),
            tasks::OptionalLoops {
                local_kms: backend.local_kms,
                organization: backend.organization.zip(config.organization.as_ref()).map(
                    |(lister, organization)| tasks::OrganizationRefresh {
                        lister,
                        scopes: backend.scopes.clone(),
                        cache: cache_state,
                        interval: organization.refresh_interval,
                    },
                ),
                reconciler,
            },
        );
        Ok(App {
            addresses,
            listeners,
            background,
            health: shared.health,
            readiness,
            backend: backend.backend,
            stop,
            shutdown_timeout: settings.shutdown_timeout(),
            ready_file: None,
            backend_kind: config.backend,
            placement: backend.placement,
        })
    }

    /// Where it listens.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// Writes [`Addresses`] to `path` once everything serves (`serve --ready-file`).
    pub fn with_ready_file(mut self, path: Option<PathBuf>) -> App {
        self.ready_file = path;
        self
    }

    /// Serves until `shutdown` resolves, then drains for at most the shutdown timeout.
    /// `Err` when a task failed, ended early or panicked (named in the error), or when the
    /// listeners stopped with an error while draining.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let mut tasks = tasks::Supervisor::default();
        tasks.spawn_listeners(self.listeners);
        self.readiness
            .check_backend_once(self.backend.as_ref())
            .await;
        tasks.spawn_background(self.background);
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        self.readiness.set_serving(true).await;
        let addresses = &self.addresses;
        let shown = |addr: &Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_default();
        let unix = addresses
            .unix_socket
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        tracing::info!(unix = %unix, tcp = %shown(&addresses.tcp), tls = %shown(&addresses.tls), metrics = %shown(&addresses.metrics), health = %shown(&addresses.health), aws_api = %shown(&addresses.aws_api), backend = ?self.backend_kind, region = %self.placement.region, account = %self.placement.account_id, "serving");
        let written = match &self.ready_file {
            Some(path) => addresses.write_ready_file(path),
            None => Ok(()),
        };
        let failure = match written {
            Ok(()) => tasks.until(shutdown).await,
            Err(e) => Some(e),
        };
        if let Some(error) = &failure {
            tracing::error!(%error, "stopping");
        }
        // The readiness check stops first so that it cannot publish SERVING after this.
        tasks.abort_background();
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.readiness.set_serving(false).await;
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        let drained = tasks.drain(self.shutdown_timeout).await;
        if let Some(path) = &addresses.unix_socket {
            remove_socket(path);
        }
        if let Some(path) = &self.ready_file {
            let _ = std::fs::remove_file(path);
        }
        match (failure, drained) {
            (Some(e), _) | (None, Ok(Some(e))) => Err(e),
            (None, Err(_)) => {
                tracing::warn!(
                    timeout = ?self.shutdown_timeout,
                    "in-flight calls did not finish before the shutdown timeout; stopping anyway"
                );
                tasks.abort_listeners();
                Ok(())
            }
            (None, Ok(None)) => Ok(()),
        }
    }
}
