//! Transport: the listeners (Unix socket, loopback TCP, TLS), the services on them (health,
//! reflection, the API) behind authorization, readiness, reloads, and shutdown.

use std::{future::Future, io, net::SocketAddr, path::Path, sync::Arc};

use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinSet,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, pb::health_server::HealthServer};

use crate::{
    admin::Readiness,
    audit::AuditLog,
    authz::{Authorizer, AuthzLayer, Rules, RulesError, RulesSource},
    backend::{
        Backend, BackendError,
        aws::{AwsBackend, AwsSetupError},
        local::{LocalBackend, ScanningSettings},
        metered::MeteredBackend,
    },
    cache::KeyCache,
    config::{BackendKind, Config, ConfigError, Placement},
    drain::DrainingHealth,
    metrics::{Metrics, ReloadedFile},
    ops::{OpsLayer, OpsLimits},
    proto::{
        self, encryption_key_service_server::EncryptionKeyServiceServer,
        local_code_scanning_service_server::LocalCodeScanningServiceServer,
        local_kms_service_server::LocalKmsServiceServer,
    },
    service::{
        EncryptionKeys, KeyVerifier, LocalCodeScanningApi, LocalKmsApi, VerificationSettings,
        drift::KeyWatch,
    },
    tls::{ReloadableTls, TlsError},
};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load the authorization rules: {0}")]
    Rules(#[from] RulesError),
    #[error("cannot open the audit file: {0}")]
    Audit(io::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot read identity policy file `{path}`: {source}")]
    IdentityPolicy {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("cannot connect to AWS: {0}")]
    Aws(#[from] AwsSetupError),
    #[error("cannot open the backend: {0}")]
    Backend(#[from] BackendError),
    #[error("cannot listen on {listener}: {source}")]
    Listen { listener: String, source: io::Error },
    #[error("cannot build reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server on {listener} failed: {source}")]
    Serve {
        listener: String,
        source: tonic::transport::Error,
    },
}

/// The verification settings, with the identity policy files read.
fn verification_settings(
    config: &Config,
    placement: &Placement,
) -> Result<VerificationSettings, ServeError> {
    let mut identity_policies = Vec::new();
    for path in &config.verification.identity_policy_files {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::IdentityPolicy {
            path: path.clone(),
            source,
        })?;
        identity_policies.push(text);
    }
    Ok(VerificationSettings {
        region: placement.region.clone(),
        account_id: placement.account_id.clone(),
        principal_arn: config.principal_arn(placement),
        identity_policies,
        lambda_profile: config.lambda_profile()?,
        code_repository_profile: config.code_repository_profile()?,
    })
}

/// The local scanning service uses keys for what Update verifies them for.
fn scanning_settings(settings: &VerificationSettings) -> ScanningSettings {
    ScanningSettings {
        region: settings.region.clone(),
        account_id: settings.account_id.clone(),
        principal_arn: settings.principal_arn.clone(),
        identity_policies: ScanningSettings::parse_identity_policies(&settings.identity_policies),
        lambda_profile: settings.lambda_profile,
        code_repository_profile: settings.code_repository_profile,
    }
}

/// The authorization rules: the rules file when configured, else the defaults (the server's
/// own uid and the holder of the generated admin token are admin).
fn authorizer(config: &Config) -> Result<Authorizer, ServeError> {
    let loopback_anonymous = config.loopback_anonymous_role()?;
    let source = match &config.authz.rules_file {
        Some(path) => RulesSource::File {
            path: path.clone(),
            loopback_anonymous,
        },
        None => {
            let token = crate::authz::rules::admin_token(&config.state_dir)?;
            RulesSource::Fixed(Rules::defaults(
                rustix::process::getuid().as_raw(),
                crate::authz::rules::token_hash(&token),
                loopback_anonymous,
            ))
        }
    };
    Ok(Authorizer::new(source)?)
}

/// Reads the rules file and the TLS files again when they change (checked every
/// `interval`) and on SIGHUP. A broken new file is refused with an error log; what is in
/// force stays.
async fn reload_loop(
    authorizer: Arc<Authorizer>,
    tls: Option<Arc<ReloadableTls>>,
    interval: std::time::Duration,
    metrics: Metrics,
) {
    if authorizer.rules_file().is_some() {
        metrics.watch_reloads(ReloadedFile::Rules);
    }
    if tls.is_some() {
        metrics.watch_reloads(ReloadedFile::Tls);
    }
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut rules_stamp = authorizer
        .rules_file()
        .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    loop {
        let forced = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if let Some(path) = authorizer.rules_file() {
            let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if forced || stamp != rules_stamp {
                rules_stamp = stamp;
                let reloaded = authorizer.reload();
                metrics.count_reload(ReloadedFile::Rules, reloaded.is_err());
                match reloaded {
                    Ok(true) => {
                        tracing::info!(path = %path.display(), "authorization rules reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "new authorization rules refused; the rules in force stay")
                    }
                }
            }
        }
        if let Some(tls) = &tls {
            let reloaded = tls.reload(forced);
            match &reloaded {
                Ok(true) => tracing::info!("TLS certificate, key and client CAs reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "new TLS files refused; the ones in force stay")
                }
            }
            // Unchanged files (Ok(false)) say nothing new.
            if !matches!(reloaded, Ok(false)) {
                metrics.count_reload(ReloadedFile::Tls, reloaded.is_err());
            }
        }
    }
}

/// HTTP/2 limits for every listener: streams per connection (tonic leaves it unlimited),
/// and keepalive pings so that connections to peers that vanished are closed.
fn hardened(server: Server, config: &Config) -> Server {
    server
        .max_concurrent_streams(config.ops.max_streams_per_connection)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
}

/// How often an idle connection is pinged, and how long the peer has to answer.
const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Binds a TCP listener (`kind` names it in errors) and says where it listens.
async fn bind_tcp(kind: &str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listen_error = |source| ServeError::Listen {
        listener: format!("{kind} {addr}"),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    Ok((listener, local))
}

/// A listener's server, its failure naming the listener.
async fn serving(
    listener: String,
    serve: impl Future<Output = Result<(), tonic::transport::Error>>,
) -> Result<(), ServeError> {
    serve
        .await
        .map_err(|source| ServeError::Serve { listener, source })
}

/// Binds the Unix socket, replacing a stale socket file but never a live server's.
async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let listen_error = |source| ServeError::Listen {
        listener: format!("unix socket `{}`", path.display()),
        source,
    };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(listen_error(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another server is listening on it",
            )));
        }
        std::fs::remove_file(path).map_err(listen_error)?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(listen_error)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_error)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen_error)?;
    Ok(listener)
}

/// Runs the sidecar until `shutdown` resolves, then drains for at most the configured
/// shutdown timeout.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listeners = config.listeners()?;
    let health = tonic_health::server::HealthReporter::new();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(proto::ENCRYPTION_KEY_SERVICE, ServingStatus::NotServing)
        .await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let stop_rx = stop_rx.clone();
        move || crate::drain::stopped(stop_rx.clone())
    };

    let (store_backend, local_apis, settings) = match config.backend {
        BackendKind::Local => {
            let settings = verification_settings(&config, &config.local_placement())?;
            let local = LocalBackend::open(&config.state_dir, scanning_settings(&settings))?;
            let apis = (
                LocalKmsApi::new(local.kms().clone()),
                LocalCodeScanningApi::new(local.scanning()),
            );
            let backend = Arc::new(local) as Arc<dyn Backend>;
            #[cfg(feature = "test-hooks")]
            let backend = crate::backend::faulty::FaultyBackend::wrap(
                backend,
                config.local.fault_file.clone(),
                config.local.write_latency,
            );
            (backend, Some(apis), settings)
        }
        BackendKind::Aws => {
            let (aws, placement) = AwsBackend::connect(
                &config.aws,
                config.region.as_deref(),
                config.account_id.as_deref(),
            )
            .await?;
            let settings = verification_settings(&config, &placement)?;
            (Arc::new(aws) as Arc<dyn Backend>, None, settings)
        }
    };
    let stats = Arc::new(crate::cache::CacheStats::default());
    let metrics = Metrics::new(stats.clone());
    let backend: Arc<dyn Backend> = Arc::new(MeteredBackend::new(store_backend, metrics.clone()));
    let cache = KeyCache::with_stats(backend.clone(), config.cache.clone(), stats);
    let (region, account_id) = (settings.region.clone(), settings.account_id.clone());
    let verifier = KeyVerifier::new(backend.clone(), settings);
    let key_watch = Arc::new(KeyWatch::new(
        backend.clone(),
        verifier.clone(),
        metrics.clone(),
    ));
    let keys = EncryptionKeys::new(
        cache,
        verifier,
        key_watch.clone(),
        metrics.clone(),
        stop_rx.clone(),
    );

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let authorizer = Arc::new(authorizer(&config)?);
    let audit = AuditLog::open(config.authz.audit_file.as_deref()).map_err(ServeError::Audit)?;
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
    let authz = AuthzLayer::new(authorizer.clone(), audit, metrics.clone());
    let (max_request, max_response) = (config.ops.max_request_bytes, config.ops.max_response_bytes);
    let health_service = HealthServer::new(DrainingHealth::new(
        tonic_health::server::HealthService::from_health_reporter(health.clone()),
        stop_rx.clone(),
    ));
    let router = hardened(Server::builder(), &config)
        .layer(tower::ServiceBuilder::new().layer(ops).layer(authz))
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            EncryptionKeyServiceServer::new(keys)
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(max_response),
        )
        .add_optional_service(local_apis.as_ref().map(|(kms, _)| {
            LocalKmsServiceServer::new(kms.clone())
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(max_response)
        }))
        .add_optional_service(local_apis.map(|(_, scanning)| {
            LocalCodeScanningServiceServer::new(scanning)
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(max_response)
        }));

    let mut servers = JoinSet::new();
    let mut unix_addr = String::new();
    let mut tcp_addr = String::new();
    if let Some(path) = &listeners.unix_socket {
        let listener = bind_unix(path, listeners.unix_socket_mode).await?;
        unix_addr = path.display().to_string();
        servers.spawn(serving(
            format!("unix socket `{unix_addr}`"),
            router
                .clone()
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped()),
        ));
    }
    if let Some(addr) = listeners.tcp {
        let (listener, local) = bind_tcp("tcp", addr).await?;
        tcp_addr = local.to_string();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        servers.spawn(serving(
            format!("tcp {local}"),
            router
                .clone()
                .serve_with_incoming_shutdown(incoming, stopped()),
        ));
    }
    let mut tls_addr = String::new();
    if let (Some((addr, _)), Some(tls)) = (&listeners.tls, &tls) {
        let (listener, local) = bind_tcp("tls", *addr).await?;
        tls_addr = local.to_string();
        let incoming = crate::tls::incoming(listener, tls.clone());
        servers.spawn(serving(
            format!("tls {local}"),
            router.serve_with_incoming_shutdown(incoming, stopped()),
        ));
    }
    let readiness = Arc::new(Readiness::new(health.clone(), metrics.clone()));
    let mut metrics_addr = String::new();
    if let Some(addr) = config.metrics_listener()? {
        let (listener, local) = bind_tcp("metrics", addr).await?;
        metrics_addr = local.to_string();
        let (metrics, readiness, stop) = (metrics.clone(), readiness.clone(), stopped());
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, metrics, readiness, stop).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
    let mut health_addr = String::new();
    if let Some(addr) = config.health_listener()? {
        let (listener, local) = bind_tcp("health", addr).await?;
        health_addr = local.to_string();
        // Health only: no reflection, no API, so it may listen beyond loopback for probes.
        let health_only = hardened(Server::builder(), &config).add_service(health_service);
        servers.spawn(serving(
            format!("health {local}"),
            health_only.serve_with_incoming_shutdown(TcpIncoming::from(listener), stopped()),
        ));
    }
    readiness.check_backend_once(backend.as_ref()).await;
    let background = [
        tokio::spawn(reload_loop(
            authorizer,
            tls,
            config.authz.reload_interval,
            metrics.clone(),
        )),
        tokio::spawn(key_watch.run(config.ops.drift_interval)),
        tokio::spawn(
            readiness
                .clone()
                .check_backend(backend, config.ops.ready_check_interval),
        ),
    ];

    health.set_service_status("", ServingStatus::Serving).await;
    readiness.set_serving(true).await;
    tracing::info!(unix = %unix_addr, tcp = %tcp_addr, tls = %tls_addr, metrics = %metrics_addr, health = %health_addr, backend = ?config.backend, region = %region, account = %account_id, "serving");

    let failed = tokio::select! {
        () = shutdown => None,
        Some(result) = servers.join_next() => Some(result),
    };
    // The readiness check stops first so that it cannot publish SERVING after this.
    for task in &background {
        task.abort();
    }
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    readiness.set_serving(false).await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_timeout(), async {
        let mut first_error = None;
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(e)) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error
    })
    .await;
    if let Some(path) = &listeners.unix_socket {
        let _ = std::fs::remove_file(path);
    }
    match (failed, drained) {
        (Some(Ok(Err(e))), _) => Err(e),
        (_, Ok(Some(e))) => Err(e),
        (_, Err(_)) => {
            tracing::warn!(
                timeout = ?config.shutdown_timeout(),
                "in-flight calls did not finish before the shutdown timeout; stopping anyway"
            );
            servers.abort_all();
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
