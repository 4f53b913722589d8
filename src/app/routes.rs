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
    scopes::ManagedScopes,
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
    /// files, the door's credentials: the order they are read again in). `scopes`: the
    /// accounts the door's generated keys are for.
    pub(super) fn load(
        settings: &Settings,
        scopes: &ManagedScopes,
        reloader: &mut Reloader,
    ) -> Result<Access, ServeError> {
        let config = &settings.config;
        let accounts = other_accounts(scopes);
        let credentials = aws_credentials(settings, &accounts)?;
        let authorizer = Arc::new(authorizer(settings, credentials.as_deref(), &accounts)?);
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

/// The managed accounts other than the sidecar's own, each once, in the configuration's
/// order.
fn other_accounts(scopes: &ManagedScopes) -> Vec<&'static str> {
    let own = scopes.own().account_id();
    let mut accounts: Vec<&'static str> = Vec::new();
    for settings in scopes.all() {
        let account = settings.scope.account_id();
        if account != own && !accounts.contains(&account) {
            accounts.push(account);
        }
    }
    accounts
}

/// The AWS-protocol door's credentials, when the door is on: the configured file, or the
/// default one (written at first start with a random admin key pair for the sidecar's own
/// account and one for each of `accounts`, the other managed accounts).
fn aws_credentials(
    settings: &Settings,
    accounts: &[&str],
) -> Result<Option<Arc<AwsCredentials>>, ServeError> {
    if settings.listeners.aws_api.is_none() {
        return Ok(None);
    }
    let path = settings.config.aws_credentials_file();
    if settings.config.aws_api.credentials_file.is_none() {
        crate::aws_api::credentials::ensure_file(&path, accounts)?;
    }
    Ok(Some(Arc::new(AwsCredentials::load(&path)?)))
}

/// The authorization rules: the rules file when configured, else the defaults (the server's
/// own uid, the holder of the generated admin token and the access keys of the credentials
/// file's `inspector-keyd-admin` profile and `inspector-keyd-admin-<id>` profiles, one for
/// each of `accounts`, are admin; each key acts in its own account only, which the door
/// enforces).
fn authorizer(
    settings: &Settings,
    aws_credentials: Option<&AwsCredentials>,
    accounts: &[&str],
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
            use crate::aws_api::credentials::{ADMIN_PROFILE, admin_profile_of};
            let profiles = std::iter::once(ADMIN_PROFILE.to_owned())
                .chain(accounts.iter().map(|account| admin_profile_of(account)));
            let admin_keys: Vec<String> = match aws_credentials {
                Some(credentials) => profiles
                    .filter_map(|profile| credentials.access_key_id_of(&profile))
                    .collect(),
                None => Vec::new(),
            };
            RulesSource::Fixed(
                admin_keys
                    .iter()
                    .fold(rules, |rules, id| rules.with_admin_access_key(id)),
            )
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
    /// `keys` and, on the local backend, `local_apis` behind the layers; the door serving
    /// every one of `scopes` (a key with no account of its own acts in the sidecar's).
    pub(super) fn build(
        config: &Config,
        shared: &Shared,
        keys: EncryptionKeys,
        local_apis: Option<LocalApis>,
        access: &Access,
        scopes: &ManagedScopes,
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
                scopes.own().account_id().to_owned(),
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
