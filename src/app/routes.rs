//! What the sidecar serves and who may call it: the key service (cache, verifier, drift
//! watch); the door's credentials, the rules, the audit log and the TLS files, each
//! registered with the reloader when it comes from a file; and the gRPC routes behind the
//! one stack of layers (ops, authz) that every gRPC listener and the AWS-protocol door share.

use std::sync::Arc;

use tokio::sync::watch;

use tonic::{
    service::Routes,
    transport::{Server, server::Router},
};
use tonic_health::{ServingStatus, pb::health_server::HealthServer, server::HealthReporter};
use tower::{ServiceBuilder, layer::util::Identity, layer::util::Stack};

use super::backend::{BackendPart, LocalApis};
use crate::{
    audit::AuditLog,
    authz::{Authorizer, AuthzLayer, Rules, RulesSource},
    aws_api::{AwsCredentials, Door, DoorLimits, GrpcService},
    cache::{CacheState, KeyCache},
    config::{Config, Settings},
    drain::DrainingHealth,
    metrics::Metrics,
    ops::{OpsLayer, OpsLimits},
    proto::{
        self, encryption_key_service_server::EncryptionKeyServiceServer,
        local_code_scanning_service_server::LocalCodeScanningServiceServer,
        local_kms_service_server::LocalKmsServiceServer,
    },
    reload::Reloader,
    server::{ServeError, hardened},
    service::{EncryptionKeys, KeyVerifier, WatchLimits, drift::KeyWatch, quota::CallerQuota},
    tls::ReloadableTls,
};

/// What every part reports to or stops with.
pub(super) struct Shared {
    pub metrics: Metrics,
    pub health: HealthReporter,
    /// Turns true at shutdown: listeners stop accepting, streams end.
    pub stop: watch::Receiver<bool>,
}

/// The layers in front of every route, outermost first: ops, then authz.
pub(super) type Layers = ServiceBuilder<Stack<AuthzLayer, Stack<OpsLayer, Identity>>>;

/// The gRPC API with its layers, as the Unix, TCP and TLS listeners serve it.
pub(super) type ApiRouter = Router<Stack<Layers, Identity>>;

/// gRPC health, NOT_SERVING (the server's and the API's) until the App serves.
pub(super) async fn starting_health() -> HealthReporter {
    let health = HealthReporter::new();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(proto::ENCRYPTION_KEY_SERVICE, ServingStatus::NotServing)
        .await;
    health
}

/// The encryption-key service and the drift watch it reports through.
pub(super) struct KeyService {
    pub service: EncryptionKeys,
    pub watch: Arc<KeyWatch>,
}

impl KeyService {
    pub(super) fn build(
        config: &Config,
        backend: &BackendPart,
        cache_state: Arc<CacheState>,
        shared: &Shared,
    ) -> KeyService {
        cache_state.manage(backend.scopes.targets());
        let cache = KeyCache::with_state(backend.backend.clone(), cache_state);
        let verifier = KeyVerifier::new(backend.backend.clone(), backend.scopes.clone());
        let watch = Arc::new(KeyWatch::new(
            cache.clone(),
            verifier.clone(),
            shared.metrics.clone(),
        ));
        let service = EncryptionKeys::new(
            cache,
            verifier,
            watch.clone(),
            shared.metrics.clone(),
            shared.stop.clone(),
            WatchLimits::new(config.ops.max_watch_streams, config.ops.max_watch_duration),
            Arc::new(CallerQuota::new(
                config.ops.uncached_calls_per_minute,
                config.ops.uncached_burst,
            )),
        );
        KeyService { service, watch }
    }
}

/// Who may call, and what is written of it.
pub(super) struct Access {
    /// The AWS-protocol door's access keys, when the door is on.
    pub credentials: Option<Arc<AwsCredentials>>,
    pub authorizer: Arc<Authorizer>,
    pub audit: AuditLog,
    /// The TLS listener's files, when it is on (the door's TLS uses them too).
    pub tls: Option<Arc<ReloadableTls>>,
}

impl Access {
    /// Loads each, and registers those built from files with `reloader` (the rules, the TLS
    /// files, the door's credentials: the order they are read again in).
    pub(super) fn load(settings: &Settings, reloader: &mut Reloader) -> Result<Access, ServeError> {
        let config = &settings.config;
        let credentials = aws_credentials(settings)?;
        let authorizer = Arc::new(authorizer(settings, credentials.as_deref())?);
        let audit = AuditLog::open(config.authz.audit_file.as_deref()).map_err(|source| {
            ServeError::Audit {
                path: config.authz.audit_file.clone().unwrap_or_default(),
                source,
            }
        })?;
        let tls = match &settings.listeners.tls {
            Some((_, files)) => Some(Arc::new(ReloadableTls::load(files.clone())?)),
            None => None,
        };
        if authorizer.rules_file().is_some() {
            reloader.watch(authorizer.clone());
        }
        if let Some(tls) = &tls {
            reloader.watch(tls.clone());
        }
        if let Some(credentials) = &credentials {
            reloader.watch(credentials.clone());
        }
        Ok(Access {
            credentials,
            authorizer,
            audit,
            tls,
        })
    }
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

/// What the listeners serve.
pub(super) struct Served {
    /// The API behind the layers.
    pub api: ApiRouter,
    /// gRPC health alone, for the health-only listener.
    pub health: HealthServer<DrainingHealth>,
    /// The AWS-protocol door, when on, and its connections' limits.
    pub door: Option<(Arc<Door>, DoorLimits)>,
}

impl Served {
    /// `keys` and, on the local backend, `local_apis` behind the layers; the door in the
    /// Region the backend is placed in.
    pub(super) fn build(
        config: &Config,
        shared: &Shared,
        keys: EncryptionKeys,
        local_apis: Option<LocalApis>,
        access: &Access,
        region: &str,
    ) -> Result<Served, ServeError> {
        let ops = OpsLayer::new(
            shared.metrics.clone(),
            OpsLimits {
                max_concurrent_rpcs: config.ops.max_concurrent_rpcs,
                rpc_timeout: config.ops.rpc_timeout,
            },
        );
        let authz = AuthzLayer::new(
            access.authorizer.clone(),
            access.audit.clone(),
            shared.metrics.clone(),
        );
        let health = HealthServer::new(DrainingHealth::new(
            tonic_health::server::HealthService::from_health_reporter(shared.health.clone()),
            shared.stop.clone(),
        ));
        let routes = services(config, keys, local_apis, health.clone())?;
        // One stack of layers for every listener: the AWS-protocol door calls the same one.
        let layers = ServiceBuilder::new().layer(ops).layer(authz);
        let api = hardened(Server::builder(), config)
            .layer(layers.clone())
            .add_routes(routes.clone());
        let door = access.credentials.as_ref().map(|credentials| {
            let calls = GrpcService::new(tower::Layer::layer(&layers, routes.prepare()));
            let door = Door::new(
                calls,
                credentials.clone(),
                region.to_owned(),
                door_limits(config),
                access.audit.clone(),
                shared.metrics.clone(),
            );
            (Arc::new(door), door_limits(config))
        });
        Ok(Served { api, health, door })
    }
}

/// Every gRPC service served: health, reflection, the API, and the local backend's own.
fn services(
    config: &Config,
    keys: EncryptionKeys,
    local_apis: Option<LocalApis>,
    health: HealthServer<DrainingHealth>,
) -> Result<Routes, ServeError> {
    let (max_request, max_response) = (config.ops.max_request_bytes, config.ops.max_response_bytes);
    let mut routes = Routes::builder();
    routes
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            EncryptionKeyServiceServer::new(keys)
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(max_response),
        );
    if let Some(LocalApis { kms, scanning }) = local_apis {
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
    Ok(routes.routes())
}

/// Server reflection over every service served, in both protocol versions grpcurl speaks.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Limits of the AWS-protocol door's connections and requests.
fn door_limits(config: &Config) -> DoorLimits {
    DoorLimits {
        max_request_bytes: config.ops.max_request_bytes,
        read_timeout: config.ops.rpc_timeout,
        header_timeout: config.connections.preface_timeout,
        max_age: config.connections.max_age,
        max_age_grace: config.connections.max_age_grace,
    }
}
