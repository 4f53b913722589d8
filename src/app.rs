//! The composition root: [`App::build`] turns validated [`Settings`] into every layer, binds
//! every listener and reports where; [`App::run`] serves until a stop signal and supervises
//! every task (each listener, the metrics listener, reloads, the drift watch, readiness):
//! one that fails, ends early or panics stops the whole process with an error naming it.
//! Tests build an `App` in process and inject faults through [`Hooks`].

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use tokio::{
    sync::watch,
    task::{Id, JoinError, JoinSet},
};
use tonic::{service::Routes, transport::Server};
use tonic_health::{ServingStatus, pb::health_server::HealthServer, server::HealthReporter};

use crate::{
    audit::AuditLog,
    authz::{Authorizer, AuthzLayer, Rules, RulesSource},
    aws_api::{AwsCredentials, Door, DoorLimits, GrpcService},
    backend::{Backend, aws::AwsBackend, local::LocalBackend, metered::MeteredBackend},
    cache::{CacheState, KeyCache},
    config::{BackendKind, CacheConfig, Placement, Settings},
    connection::{self, ListenerKind},
    drain::DrainingHealth,
    metrics::Metrics,
    ops::{OpsLayer, OpsLimits},
    probes::Readiness,
    proto::{
        self, encryption_key_service_server::EncryptionKeyServiceServer,
        local_code_scanning_service_server::LocalCodeScanningServiceServer,
        local_kms_service_server::LocalKmsServiceServer,
    },
    server::{ServeError, bind_tcp, bind_unix, hardened, reload_loop, remove_socket},
    service::{
        EncryptionKeys, KeyVerifier, LocalCodeScanningApi, LocalKmsApi, WatchLimits,
        drift::KeyWatch, quota::CallerQuota,
    },
    tls::ReloadableTls,
    verify::VerificationSettings,
};

/// A backend wrapper a test passes in.
pub type BackendWrapper = Box<dyn FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend> + Send>;

/// What a test injects into an [`App`] it builds in process.
#[derive(Default)]
pub struct Hooks {
    /// Wraps the backend (local or aws) before any layer uses it: faults, latency, counts.
    pub wrap_backend: Option<BackendWrapper>,
}

/// Where an [`App`] listens, once bound; also what `serve --ready-file` writes (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Addresses {
    pub unix_socket: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub health: Option<SocketAddr>,
    /// The AWS-protocol door.
    pub aws_api: Option<SocketAddr>,
}

impl Addresses {
    /// Writes the addresses as JSON to `path`, whole or not at all (a temporary file renamed
    /// into place), so a script that waits for the file never reads half of it.
    pub fn write_ready_file(&self, path: &Path) -> Result<(), ServeError> {
        let error = |source| ServeError::ReadyFile {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other);
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text.map_err(error)? + "\n").map_err(error)?;
        std::fs::rename(&temporary, path).map_err(error)
    }
}

type Task = Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>>;

/// A built sidecar: every listener bound, nothing served yet.
pub struct App {
    addresses: Addresses,
    /// The listeners' accept loops; each ends once the stop signal is sent and its calls
    /// have drained.
    listeners: Vec<(String, Task)>,
    /// Loops that run until the end (reloads, drift watch, readiness); aborted at shutdown.
    background: Vec<(String, Task)>,
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

/// A policy file the sidecar trusts, as text.
fn read_policy_file(path: &Path) -> Result<String, std::io::Error> {
    let bytes = crate::files::read_trusted(path)?;
    String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
}

/// The verification settings, with the identity policy and permissions boundary files read.
fn verification_settings(
    settings: &Settings,
    placement: &Placement,
) -> Result<VerificationSettings, ServeError> {
    let verification = &settings.config.verification;
    let mut identity_policies = Vec::new();
    for path in &verification.identity_policy_files {
        let text = read_policy_file(path).map_err(|source| ServeError::IdentityPolicy {
            path: path.clone(),
            source,
        })?;
        identity_policies.push(text);
    }
    let permissions_boundary = match &verification.permissions_boundary_file {
        Some(path) => {
            Some(
                read_policy_file(path).map_err(|source| ServeError::PermissionsBoundary {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    Ok(VerificationSettings::new(
        placement.region.clone(),
        placement.account_id.clone(),
        settings.config.principal_arn(placement),
        identity_policies,
        permissions_boundary,
        settings.lambda_profile,
        settings.code_repository_profile,
    ))
}

/// The AWS-protocol door's credentials, when the door is on: the configured file, or the
/// default one (written with a random admin key pair at first start).
fn aws_credentials(settings: &Settings) -> Result<Option<Arc<AwsCredentials>>, ServeError> {
    if settings.listeners.aws_api.is_none() {
        return Ok(None);
    }
    let path = settings.config.aws_credentials_file();
    if settings.config.aws_api.credentials_file.is_none() {
        crate::aws_api::credentials::ensure_file(&path)?;
    }
    Ok(Some(Arc::new(AwsCredentials::load(&path)?)))
}

/// The authorization rules: the rules file when configured, else the defaults (the server's
/// own uid, the holder of the generated admin token and the access key of the credentials
/// file's `inspector-keyd-admin` profile are admin).
fn authorizer(
    settings: &Settings,
    aws_credentials: Option<&AwsCredentials>,
) -> Result<Authorizer, ServeError> {
    let loopback_anonymous = settings.loopback_anonymous_role;
    let source = match &settings.config.authz.rules_file {
        Some(path) => RulesSource::File {
            path: path.clone(),
            loopback_anonymous,
        },
        None => {
            let token = crate::authz::rules::admin_token(&settings.config.state_dir)?;
            let rules = Rules::defaults(
                rustix::process::getuid().as_raw(),
                crate::authz::rules::token_hash(&token),
                loopback_anonymous,
            );
            let admin_key = aws_credentials
                .and_then(|c| c.access_key_id_of(crate::aws_api::credentials::ADMIN_PROFILE));
            RulesSource::Fixed(match admin_key {
                Some(id) => rules.with_admin_access_key(&id),
                None => rules,
            })
        }
    };
    Ok(Authorizer::new(source)?)
}

/// Server reflection over every service served, in both protocol versions grpcurl speaks.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// A listener's accept loop, its failure naming the listener.
fn listener_task(
    name: &str,
    serve: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
) -> (String, Task) {
    let listener = name.to_owned();
    let task = async move {
        serve
            .await
            .map_err(|source| ServeError::Serve { listener, source })
    };
    (name.to_owned(), Box::pin(task))
}

/// How long readiness waits for another call's answer before asking the backend itself:
/// past the point where the cache refreshes a key that is being read, so steady reads keep
/// it informed, and within one key TTL, so it is never further behind than that.
fn readiness_quiet(cache: &CacheConfig) -> std::ops::Range<Duration> {
    cache.key_ttl.mul_f64(crate::cache::REFRESH_AHEAD.1 + 0.02)..cache.key_ttl
}

/// How often the local KMS forgets keys whose deletion date has passed (and at start).
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

fn background_task(name: &str, run: impl Future<Output = ()> + Send + 'static) -> (String, Task) {
    (
        name.to_owned(),
        Box::pin(async move {
            run.await;
            Ok(())
        }),
    )
}

impl App {
    /// Builds every layer from `settings` and binds every listener; `hooks` is for tests.
    pub async fn build(settings: Settings, hooks: Hooks) -> Result<App, ServeError> {
        let config = &settings.config;
        let listeners = &settings.listeners;
        let health = HealthReporter::new();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(proto::ENCRYPTION_KEY_SERVICE, ServingStatus::NotServing)
            .await;
        let (stop, stop_rx) = watch::channel(false);
        let stopped = {
            let stop_rx = stop_rx.clone();
            move || crate::drain::stopped(stop_rx.clone())
        };

        let cache_state = Arc::new(CacheState::new(config.cache.clone()));
        let metrics = Metrics::new(cache_state.clone());
        let (store_backend, local_apis, verification, placement, local_kms) = match config.backend {
            BackendKind::Local => {
                let placement = config.local_placement();
                let verification = verification_settings(&settings, &placement)?;
                let local = LocalBackend::open(
                    &config.state_dir,
                    &config.kek_file(),
                    verification.clone(),
                )?;
                let apis = (
                    LocalKmsApi::new(local.kms().clone()),
                    LocalCodeScanningApi::new(local.scanning()),
                );
                let local_kms = local.kms().clone();
                let backend = Arc::new(local) as Arc<dyn Backend>;
                #[cfg(feature = "test-hooks")]
                let backend = crate::backend::faulty::FaultyBackend::wrap(
                    backend,
                    config.local.fault_file.clone(),
                    config.local.write_latency,
                );
                (
                    backend,
                    Some(apis),
                    verification,
                    placement,
                    Some(local_kms),
                )
            }
            BackendKind::Aws => {
                let (aws, placement) = AwsBackend::connect(
                    &config.aws,
                    config.region.as_deref(),
                    config.account_id.as_deref(),
                    config.ops.drift_interval,
                    metrics.clone(),
                )
                .await?;
                let verification = verification_settings(&settings, &placement)?;
                (
                    Arc::new(aws) as Arc<dyn Backend>,
                    None,
                    verification,
                    placement,
                    None,
                )
            }
        };
        let store_backend = match hooks.wrap_backend {
            Some(wrap) => wrap(store_backend),
            None => store_backend,
        };
        let metered = MeteredBackend::new(store_backend, metrics.clone());
        let backend_answers = metered.answers();
        let backend: Arc<dyn Backend> = Arc::new(metered);
        let cache = KeyCache::with_state(backend.clone(), cache_state);
        let verifier = KeyVerifier::new(backend.clone(), verification);
        let key_watch = Arc::new(KeyWatch::new(
            cache.clone(),
            verifier.clone(),
            metrics.clone(),
        ));
        let keys = EncryptionKeys::new(
            cache,
            verifier,
            key_watch.clone(),
            metrics.clone(),
            stop_rx.clone(),
            WatchLimits::new(config.ops.max_watch_streams, config.ops.max_watch_duration),
            Arc::new(CallerQuota::new(
                config.ops.uncached_calls_per_minute,
                config.ops.uncached_burst,
            )),
        );

        let aws_credentials = aws_credentials(&settings)?;
        let authorizer = Arc::new(authorizer(&settings, aws_credentials.as_deref())?);
        let audit = AuditLog::open(config.authz.audit_file.as_deref()).map_err(|source| {
            ServeError::Audit {
                path: config.authz.audit_file.clone().unwrap_or_default(),
                source,
            }
        })?;
        let tls = match &listeners.tls {
            Some((_, files)) => Some(Arc::new(ReloadableTls::load(files.clone())?)),
            None => None,
        };
        let ops = OpsLayer::new(
            metrics.clone(),
            OpsLimits {
                max_concurrent_rpcs: config.ops.max_concurrent_rpcs,
                rpc_timeout: config.ops.rpc_timeout,
            },
        );
        let authz = AuthzLayer::new(authorizer.clone(), audit.clone(), metrics.clone());
        let (max_request, max_response) =
            (config.ops.max_request_bytes, config.ops.max_response_bytes);
        let health_service = HealthServer::new(DrainingHealth::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
            stop_rx.clone(),
        ));
        let mut routes = Routes::builder();
        routes
            .add_service(health_service.clone())
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(
                EncryptionKeyServiceServer::new(keys)
                    .max_decoding_message_size(max_request)
                    .max_encoding_message_size(max_response),
            );
        if let Some((kms, scanning)) = local_apis {
            routes
                .add_service(
                    LocalKmsServiceServer::new(kms)
                        .max_decoding_message_size(max_request)
                        .max_encoding_message_size(max_response),
                )
                .add_service(
                    LocalCodeScanningServiceServer::new(scanning)
                        .max_decoding_message_size(max_request)
                        .max_encoding_message_size(max_response),
                );
        }
        let routes = routes.routes();
        // One stack of layers for every listener: the AWS-protocol door calls the same one.
        let layers = tower::ServiceBuilder::new().layer(ops).layer(authz);
        let router = hardened(Server::builder(), config)
            .layer(layers.clone())
            .add_routes(routes.clone());
        let grpc_service = GrpcService::new(tower::Layer::layer(&layers, routes.prepare()));

        let admission =
            |kind| connection::Admission::new(kind, &config.connections, metrics.clone());
        let mut addresses = Addresses::default();
        let mut tasks = Vec::new();
        if let Some(path) = &listeners.unix_socket {
            let listener = bind_unix(path, listeners.unix_socket_mode).await?;
            addresses.unix_socket = Some(path.clone());
            tasks.push(listener_task(
                &format!("unix socket `{}`", path.display()),
                router.clone().serve_with_incoming_shutdown(
                    connection::incoming(listener, admission(ListenerKind::Unix)),
                    stopped(),
                ),
            ));
        }
        if let Some(addr) = listeners.tcp {
            let (listener, local) = bind_tcp("tcp", addr).await?;
            addresses.tcp = Some(local);
            let incoming = connection::incoming(listener, admission(ListenerKind::Tcp));
            tasks.push(listener_task(
                &format!("tcp {local}"),
                router
                    .clone()
                    .serve_with_incoming_shutdown(incoming, stopped()),
            ));
        }
        if let (Some((addr, _)), Some(tls)) = (&listeners.tls, &tls) {
            let (listener, local) = bind_tcp("tls", *addr).await?;
            addresses.tls = Some(local);
            let incoming =
                crate::tls::incoming(listener, tls.clone(), admission(ListenerKind::Tls));
            tasks.push(listener_task(
                &format!("tls {local}"),
                router.serve_with_incoming_shutdown(incoming, stopped()),
            ));
        }
        if let (Some(door), Some(credentials)) = (listeners.aws_api, &aws_credentials) {
            let (listener, local) = bind_tcp("aws_api", door.addr).await?;
            addresses.aws_api = Some(local);
            let limits = DoorLimits {
                max_request_bytes: max_request,
                read_timeout: config.ops.rpc_timeout,
                header_timeout: config.connections.preface_timeout,
                max_age: config.connections.max_age,
                max_age_grace: config.connections.max_age_grace,
            };
            let door_service = Arc::new(Door::new(
                grpc_service,
                credentials.clone(),
                placement.region.clone(),
                limits,
                audit,
                metrics.clone(),
            ));
            let admission = admission(ListenerKind::AwsApi);
            let task = match (&tls, door.tls) {
                (Some(tls), true) => Box::pin(crate::aws_api::serve(
                    crate::tls::incoming_http1(listener, tls.clone(), admission),
                    door_service,
                    limits,
                    stopped.clone(),
                )) as Pin<Box<dyn Future<Output = ()> + Send>>,
                _ => Box::pin(crate::aws_api::serve(
                    connection::incoming(listener, admission),
                    door_service,
                    limits,
                    stopped.clone(),
                )),
            };
            tasks.push(background_task(&format!("aws_api {local}"), task));
        }
        let readiness = Arc::new(Readiness::new(
            health.clone(),
            metrics.clone(),
            backend_answers,
        ));
        if let Some(addr) = settings.metrics_listen {
            let (listener, local) = bind_tcp("metrics", addr).await?;
            addresses.metrics = Some(local);
            let serve =
                crate::probes::serve(listener, metrics.clone(), readiness.clone(), stopped());
            let name = format!("metrics {local}");
            let listener_name = name.clone();
            tasks.push((
                name,
                Box::pin(async move {
                    serve.await.map_err(|source| ServeError::Listen {
                        listener: listener_name,
                        source,
                    })
                }),
            ));
        }
        if let Some(addr) = settings.health_listen {
            let (listener, local) = bind_tcp("health", addr).await?;
            addresses.health = Some(local);
            // Health only: no reflection, no API, so it may listen beyond loopback for probes.
            let health_only = hardened(Server::builder(), config).add_service(health_service);
            tasks.push(listener_task(
                &format!("health {local}"),
                health_only.serve_with_incoming_shutdown(
                    connection::incoming(listener, admission(ListenerKind::Health)),
                    stopped(),
                ),
            ));
        }
        let mut background = vec![
            background_task(
                "the rules and TLS reload",
                reload_loop(
                    authorizer,
                    tls,
                    aws_credentials,
                    config.authz.reload_interval,
                    metrics.clone(),
                ),
            ),
            background_task("the drift watch", key_watch.run(config.ops.drift_interval)),
            background_task(
                "the readiness check",
                readiness.clone().follow_backend(
                    backend.clone(),
                    readiness_quiet(&config.cache),
                    config.ops.ready_check_interval,
                ),
            ),
        ];
        if let Some(kms) = local_kms {
            background.push(background_task(
                "the purge of deleted keys",
                kms.purge_deleted_keys_every(PURGE_INTERVAL),
            ));
        }
        Ok(App {
            addresses,
            listeners: tasks,
            background,
            health,
            readiness,
            backend,
            stop,
            shutdown_timeout: settings.shutdown_timeout(),
            ready_file: None,
            backend_kind: config.backend,
            placement,
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
        let App {
            addresses,
            listeners: listener_tasks,
            background: background_tasks,
            health,
            readiness,
            backend,
            stop,
            shutdown_timeout,
            ready_file,
            backend_kind,
            placement,
        } = self;
        let mut names: HashMap<Id, String> = HashMap::new();
        let mut listeners = JoinSet::new();
        for (name, task) in listener_tasks {
            names.insert(listeners.spawn(task).id(), name);
        }
        readiness.check_backend_once(backend.as_ref()).await;
        let mut background = JoinSet::new();
        for (name, task) in background_tasks {
            names.insert(background.spawn(task).id(), name);
        }
        health.set_service_status("", ServingStatus::Serving).await;
        readiness.set_serving(true).await;
        let shown = |addr: &Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_default();
        let unix = addresses
            .unix_socket
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        tracing::info!(unix = %unix, tcp = %shown(&addresses.tcp), tls = %shown(&addresses.tls), metrics = %shown(&addresses.metrics), health = %shown(&addresses.health), aws_api = %shown(&addresses.aws_api), backend = ?backend_kind, region = %placement.region, account = %placement.account_id, "serving");
        let mut failure = None;
        if let Some(path) = &ready_file
            && let Err(e) = addresses.write_ready_file(path)
        {
            failure = Some(e);
        }

        if failure.is_none() {
            failure = tokio::select! {
                () = shutdown => None,
                Some(ended) = listeners.join_next_with_id() => Some(ended_early(ended, &names)),
                Some(ended) = background.join_next_with_id() => Some(ended_early(ended, &names)),
            };
        }
        if let Some(error) = &failure {
            tracing::error!(%error, "stopping");
        }
        // The readiness check stops first so that it cannot publish SERVING after this.
        background.abort_all();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        readiness.set_serving(false).await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
        let drained = tokio::time::timeout(shutdown_timeout, async {
            let mut first_error = None;
            while let Some(result) = listeners.join_next_with_id().await {
                if let Err(e) = ended(result, &names) {
                    first_error.get_or_insert(e);
                }
            }
            first_error
        })
        .await;
        if let Some(path) = &addresses.unix_socket {
            remove_socket(path);
        }
        if let Some(path) = &ready_file {
            let _ = std::fs::remove_file(path);
        }
        match (failure, drained) {
            (Some(e), _) => Err(e),
            (None, Ok(Some(e))) => Err(e),
            (None, Err(_)) => {
                tracing::warn!(
                    timeout = ?shutdown_timeout,
                    "in-flight calls did not finish before the shutdown timeout; stopping anyway"
                );
                listeners.abort_all();
                Ok(())
            }
            (None, Ok(None)) => Ok(()),
        }
    }
}

fn task_name(id: Id, names: &HashMap<Id, String>) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| "a task".to_owned())
}

/// How a task ended while draining: its error or panic, if any.
fn ended(
    result: Result<(Id, Result<(), ServeError>), JoinError>,
    names: &HashMap<Id, String>,
) -> Result<(), ServeError> {
    match result {
        Ok((_, outcome)) => outcome,
        Err(error) => Err(join_failure(error, names)),
    }
}

/// A task that ended before the stop signal: always a failure, even without an error.
fn ended_early(
    result: Result<(Id, Result<(), ServeError>), JoinError>,
    names: &HashMap<Id, String>,
) -> ServeError {
    match result {
        Ok((_, Err(error))) => error,
        Ok((id, Ok(()))) => ServeError::TaskEnded {
            task: task_name(id, names),
        },
        Err(error) => join_failure(error, names),
    }
}

fn join_failure(error: JoinError, names: &HashMap<Id, String>) -> ServeError {
    let task = task_name(error.id(), names);
    if error.is_panic() {
        let payload = error.into_panic();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        ServeError::TaskPanicked { task, message }
    } else {
        ServeError::TaskEnded { task }
    }
}
