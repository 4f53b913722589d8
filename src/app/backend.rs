//! The backend part: the local backend with its local-only APIs, or the aws backend; the
//! verification settings with their policy files read; the one seam where a test wraps the
//! backend ([`Hooks`]); and the metering every layer calls through.

use std::{path::Path, sync::Arc};

use crate::{
    backend::{
        Backend,
        aws::{AwsBackend, AwsSetupError, OrganizationAccounts},
        local::{LocalBackend, LocalKms},
        metered::{BackendAnswers, MeteredBackend},
    },
    config::{BackendKind, Placement, Settings},
    metrics::Metrics,
    scopes::ManagedScopes,
    server::ServeError,
    service::{LocalCodeScanningApi, LocalKmsApi},
    verify::VerificationSettings,
};

/// A backend wrapper a test passes in.
pub type BackendWrapper = Box<dyn FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend> + Send>;

/// What a test injects into an [`App`](super::App) it builds in process.
#[derive(Default)]
pub struct Hooks {
    /// Wraps the backend (local or aws) before any layer uses it: faults, latency, counts.
    /// The test-hooks build's `local.fault_file` and `local.write_latency` are a wrapper
    /// too, inside this one.
    pub wrap_backend: Option<BackendWrapper>,
}

impl Hooks {
    /// Puts `wrap` inside the test's own wrapper: the backend goes through `wrap` first.
    #[cfg(feature = "test-hooks")]
    fn inside(
        self,
        wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend> + Send + 'static,
    ) -> Hooks {
        let outer = self.wrap_backend;
        Hooks {
            wrap_backend: Some(Box::new(move |backend| {
                let backend = wrap(backend);
                match outer {
                    Some(outer) => outer(backend),
                    None => backend,
                }
            })),
        }
    }

    /// `backend` as the hooks wrap it.
    fn wrap(self, backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
        match self.wrap_backend {
            Some(wrap) => wrap(backend),
            None => backend,
        }
    }
}

/// The APIs only the local backend serves: its KMS and its scanning service.
pub(super) struct LocalApis {
    pub kms: LocalKmsApi,
    pub scanning: LocalCodeScanningApi,
}

/// The backend, built.
pub(super) struct BackendPart {
    /// Metered, and wrapped as the hooks ask: what every layer calls.
    pub backend: Arc<dyn Backend>,
    /// The answers of every call, which readiness follows.
    pub answers: Arc<BackendAnswers>,
    /// The managed scopes, each with what verification checks there.
    pub scopes: Arc<ManagedScopes>,
    pub placement: Placement,
    /// Only on the local backend.
    pub local_apis: Option<LocalApis>,
    /// Only on the local backend, whose deleted keys are purged.
    pub local_kms: Option<LocalKms>,
    /// With `[organization]` (aws backend only): the lister of its accounts.
    pub organization: Option<OrganizationAccounts>,
}

/// A backend as it is opened, before the hooks and the metering.
struct Opened {
    backend: Arc<dyn Backend>,
    scopes: Arc<ManagedScopes>,
    placement: Placement,
    local: Option<(LocalApis, LocalKms)>,
    organization: Option<OrganizationAccounts>,
}

impl BackendPart {
    /// Opens the backend `settings` choose (`metrics` counts the aws backend's IAM reads).
    pub(super) async fn build(
        settings: &Settings,
        metrics: &Metrics,
        hooks: Hooks,
    ) -> Result<BackendPart, ServeError> {
        let config = &settings.config;
        // The test hooks' fault file is one more wrapper, inside the test's own; it is a
        // setting of the local backend and faults that one only.
        #[cfg(feature = "test-hooks")]
        let hooks = match config.backend {
            BackendKind::Local => hooks.inside(crate::backend::faulty::FaultyBackend::wrapper(
                &config.local,
            )),
            BackendKind::Aws => hooks,
        };
        let opened = match config.backend {
            BackendKind::Local => open_local(settings)?,
            BackendKind::Aws => connect_aws(settings, metrics).await?,
        };
        let metered = MeteredBackend::new(hooks.wrap(opened.backend), metrics.clone());
        let (local_apis, local_kms) = opened.local.unzip();
        Ok(BackendPart {
            answers: metered.answers(),
            backend: Arc::new(metered),
            scopes: opened.scopes,
            placement: opened.placement,
            local_apis,
            local_kms,
            organization: opened.organization,
        })
    }
}

fn open_local(settings: &Settings) -> Result<Opened, ServeError> {
    let config = &settings.config;
    let placement = config.local_placement();
    let scopes = Arc::new(ManagedScopes::new(
        config,
        &verification_settings(settings, &placement)?,
    ));
    let local = LocalBackend::open(&config.state_dir, &config.kek_file(), scopes.clone())?;
    let apis = LocalApis {
        kms: LocalKmsApi::new(local.kms().clone()),
        scanning: LocalCodeScanningApi::new(local.scanning()),
    };
    let kms = local.kms().clone();
    Ok(Opened {
        backend: Arc::new(local),
        scopes,
        placement,
        local: Some((apis, kms)),
        organization: None,
    })
}

async fn connect_aws(settings: &Settings, metrics: &Metrics) -> Result<Opened, ServeError> {
    let config = &settings.config;
    let (aws, placement) = AwsBackend::connect(
        &config.aws,
        config.region.as_deref(),
        config.account_id.as_deref(),
        config.ops.drift_interval,
        metrics.clone(),
    )
    .await?;
    check_roles(config, &placement)?;
    let scopes = Arc::new(ManagedScopes::new(
        config,
        &verification_settings(settings, &placement)?,
    ));
    // The organization's accounts are managed from the start: a listing that fails stops
    // it, naming what the identity lacks.
    let organization = match scopes.organization() {
        Some(_) => {
            let lister = aws.organization_accounts();
            let accounts = lister
                .list()
                .await
                .map_err(AwsSetupError::OrganizationAccounts)?;
            scopes.publish(scopes.prepare(&accounts));
            tracing::info!(
                accounts = accounts.len(),
                scopes = scopes.len(),
                "managing the organization's accounts"
            );
            Some(lister)
        }
        None => None,
    };
    Ok(Opened {
        backend: Arc::new(aws.manage(scopes.clone())),
        scopes,
        placement,
        local: None,
        organization,
    })
}

/// Every `[[accounts]]` entry but the sidecar's own account names the role the aws backend
/// assumes there. Checked once the own account is known: it may come from STS.
fn check_roles(config: &crate::config::Config, placement: &Placement) -> Result<(), ServeError> {
    let missing = config
        .accounts
        .iter()
        .enumerate()
        .find(|(_, account)| account.id != placement.account_id && account.role_arn.is_none());
    match missing {
        Some((i, account)) => Err(ServeError::Config(crate::config::ConfigError::Value {
            key: "accounts",
            message: format!(
                "entry {} (id `{}`): `role_arn` is required on the aws backend for an account other than the sidecar's own ({}); it names the IAM role the sidecar assumes there",
                i + 1,
                account.id,
                placement.account_id
            ),
        })),
        None => Ok(()),
    }
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
    )
    .with_trust(
        verification.trusted_accounts.clone(),
        verification.organization_id.clone(),
        verification.deny_external_access,
    ))
}
