//! The aws backend: Amazon Inspector's encryption-key operations and the KMS and IAM reads
//! verification needs, through the official AWS SDK (default credential chain, bounded
//! timeouts, the SDK's standard retry), in every managed scope: the sidecar's own account
//! with its own identity, each other account through the role it assumes there (STS
//! AssumeRole). Errors are classified once; AWS's own text is logged, never returned to
//! callers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use aws_config::{
    BehaviorVersion, Region, SdkConfig, retry::RetryConfig, sts::AssumeRoleProvider,
    timeout::TimeoutConfig,
};
use aws_credential_types::provider::{
    ProvideCredentials, SharedCredentialsProvider, error::CredentialsError,
    future::ProvideCredentials as ProvideCredentialsFuture,
};
use aws_sdk_inspector2::types::{ResourceType as AwsResourceType, ScanType as AwsScanType};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_runtime_api::client::{orchestrator::HttpResponse, result::SdkError};
use aws_smithy_types::{
    body::SdkBody,
    date_time::Format,
    error::{ErrorMetadata, metadata::ProvideErrorMetadata},
};

mod errors;
mod iam;
mod organizations;

pub use organizations::OrganizationAccounts;

use errors::{classify, describe_sdk_error};
use iam::IamPolicies;

use super::{Backend, BackendError, PrincipalPolicies};
use crate::{
    config::{AwsConfig, Placement},
    domain::{
        CodeLine, CodeSnippet, CodeSnippets, FindingArn, KeyArn, Scope, ScopedTarget, SnippetError,
        SnippetErrorCode, SuggestedFix, Target, is_account_id, is_region_name,
    },
    metrics::Metrics,
    scopes::{ManagedScopes, ScopeSettings},
    verify::{KeyMetadata, MultiRegionConfiguration, MultiRegionKey},
};

/// Why the aws backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum AwsSetupError {
    #[error(
        "no AWS Region: set `region` in the configuration (or INSPECTOR_KEYD_REGION), or AWS_REGION / a profile's region"
    )]
    NoRegion,
    #[error("the AWS Region `{0}` is not a Region name")]
    BadRegion(String),
    #[error(
        "no usable AWS credentials ({0}); the default chain reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, web identity (IRSA), EKS Pod Identity or instance metadata"
    )]
    NoCredentials(String),
    #[error(
        "cannot list the organization's accounts with AWS Organizations ListAccounts ({0}); `[organization]` needs the sidecar's identity to be the organization's management account or a delegated administrator, allowed organizations:ListAccounts"
    )]
    OrganizationAccounts(BackendError),
    #[error(
        "cannot determine the AWS account with STS GetCallerIdentity ({0}); set `account_id` in the configuration"
    )]
    NoAccount(String),
}

/// A lock that a panic elsewhere does not make unusable: the maps it guards hold whole
/// entries only.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How the sidecar acts in one account: its own identity, or a role it assumes there.
#[derive(Debug)]
struct AccountAccess {
    account_id: String,
    /// `None`: the sidecar's own account, its own credentials.
    role: Option<AssumedRole>,
}

#[derive(Debug)]
struct AssumedRole {
    role_arn: String,
    /// What every client of the account signs with; its clones share one partition of the
    /// SDK's identity cache, so the account's clients share one AssumeRole per credential
    /// lifetime (the cache refreshes shortly before expiry).
    credentials: SharedCredentialsProvider,
    /// Why the last AssumeRole failed, `None` once one succeeds: a call that failed for want
    /// of credentials reports this instead of the SDK's "dispatch failure".
    refusal: Arc<Mutex<Option<BackendError>>>,
}

impl AccountAccess {
    /// What a failed call of this account's clients means: the role's refusal when the
    /// credentials could not be had, else the SDK error classified, naming the account and
    /// role when it is another account's.
    fn failed<E: ProvideErrorMetadata + std::fmt::Debug>(
        &self,
        operation: &'static str,
        error: SdkError<E, HttpResponse>,
    ) -> BackendError {
        let Some(role) = &self.role else {
            return classify(operation, error);
        };
        // Credentials that could not be resolved surface as an "other" dispatch failure.
        if let SdkError::DispatchFailure(failure) = &error
            && failure.is_other()
            && let Some(refusal) = lock(&role.refusal).clone()
        {
            return refusal;
        }
        self.explain(classify(operation, error))
    }

    /// A classified error of this account's calls: the role's refusal when the credentials
    /// could not be had (the SDK reports that as AWS not reached), else the error naming
    /// another account's role.
    fn explain(&self, error: BackendError) -> BackendError {
        let Some(role) = &self.role else {
            return error;
        };
        if matches!(error, BackendError::Unavailable { .. })
            && let Some(refusal) = lock(&role.refusal).clone()
        {
            return refusal;
        }
        naming(
            error,
            &format!("in account {} as role `{}`", self.account_id, role.role_arn),
        )
    }
}

/// `error` with `context` added to its message, for the variants that carry one.
fn naming(error: BackendError, context: &str) -> BackendError {
    match error {
        BackendError::AccessDenied { message } => BackendError::AccessDenied {
            message: format!("{message} {context}"),
        },
        BackendError::Unavailable {
            message,
            retry_after,
        } => BackendError::Unavailable {
            message: format!("{message} {context}"),
            retry_after,
        },
        BackendError::InvalidRequest { field, message } => BackendError::InvalidRequest {
            field,
            message: format!("{message} {context}"),
        },
        BackendError::InvalidState { message } => BackendError::InvalidState {
            message: format!("{message} {context}"),
        },
        BackendError::Internal { message } => BackendError::Internal {
            message: format!("{message} {context}"),
        },
        other => other,
    }
}

/// The SDK's assume-role provider, keeping why it last failed (see [`AssumedRole::refusal`]).
#[derive(Debug)]
struct RecordingAssumeRole {
    provider: AssumeRoleProvider,
    account_id: String,
    role_arn: String,
    refusal: Arc<Mutex<Option<BackendError>>>,
}

impl RecordingAssumeRole {
    /// STS's refusal classified as any AWS error is, naming the account and role (never the
    /// external id or credentials).
    fn refusal_of(&self, error: &CredentialsError) -> BackendError {
        let context = format!(
            "assuming role `{}` for account {}",
            self.role_arn, self.account_id
        );
        let sts = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>());
        let classified = match (error, sts) {
            (CredentialsError::ProviderTimedOut(_), _) | (_, Some(SdkError::TimeoutError(_))) => {
                BackendError::Unavailable {
                    message: "AssumeRole timed out".into(),
                    retry_after: None,
                }
            }
            (_, Some(SdkError::ServiceError(context))) => {
                // The provider keeps STS's error; classify takes one it owns, so it gets the
                // parts it reads: the code, the status and the retry hint.
                let mut raw = HttpResponse::new(context.raw().status(), SdkBody::empty());
                if let Some(after) = context.raw().headers().get("retry-after") {
                    raw.headers_mut().insert("retry-after", after.to_owned());
                }
                let mut meta = ErrorMetadata::builder();
                if let Some(code) = context.err().code() {
                    meta = meta.code(code);
                }
                if let Some(message) = context.err().message() {
                    meta = meta.message(message);
                }
                classify("AssumeRole", SdkError::service_error(meta.build(), raw))
            }
            (_, Some(other)) => {
                tracing::warn!(account = %self.account_id, role = %self.role_arn, detail = %describe_sdk_error(other), "AssumeRole failed");
                BackendError::Unavailable {
                    message: "AssumeRole: STS could not be reached".into(),
                    retry_after: None,
                }
            }
            (_, None) => {
                tracing::warn!(account = %self.account_id, role = %self.role_arn, detail = %error, "AssumeRole failed");
                BackendError::Unavailable {
                    message: "AssumeRole failed".into(),
                    retry_after: None,
                }
            }
        };
        naming(classified, &context)
    }
}

impl ProvideCredentials for RecordingAssumeRole {
    fn provide_credentials<'a>(&'a self) -> ProvideCredentialsFuture<'a>
    where
        Self: 'a,
    {
        ProvideCredentialsFuture::new(async move {
            let answer = self.provider.provide_credentials().await;
            let refusal = answer.as_ref().err().map(|e| self.refusal_of(e));
            *lock(&self.refusal) = refusal;
            answer
        })
    }
}

/// The Inspector and KMS clients of one (account, Region), and the account they act in.
struct ScopeClients {
    access: Arc<AccountAccess>,
    inspector: aws_sdk_inspector2::Client,
    kms: aws_sdk_kms::Client,
}

pub struct AwsBackend {
    /// The sidecar's own account and Region.
    own: Scope,
    /// The SDK configuration of the sidecar's own identity: its credentials, Region,
    /// timeouts, retries and identity cache, which every client starts from.
    shared: SdkConfig,
    /// The endpoint overrides.
    settings: AwsConfig,
    policy_ttl: Duration,
    metrics: Metrics,
    /// The managed scopes (`None` until [`AwsBackend::manage`]: the own scope alone).
    scopes: Option<Arc<ManagedScopes>>,
    /// The STS configuration AssumeRole uses, and the session name it gives.
    sts: SdkConfig,
    session_name: String,
    /// Each account's access, made when the account is first acted in (the own
    /// account's from the start).
    accounts: Mutex<HashMap<String, Arc<AccountAccess>>>,
    /// Clients by (account, Region), made when first needed.
    clients: Mutex<HashMap<(String, String), Arc<ScopeClients>>>,
    /// IAM is global: one reader (and its kept answer) per account.
    iam: Mutex<HashMap<String, Arc<IamPolicies>>>,
}

impl AwsBackend {
    /// Loads the SDK configuration, checks the credentials, and finds the Region and
    /// account (configured, else from the chain and STS). Principals' policies read from
    /// IAM are kept for `policy_ttl` (the drift interval). It serves its own scope until
    /// [`AwsBackend::manage`] gives it the others.
    pub async fn connect(
        settings: &AwsConfig,
        region: Option<&str>,
        account_id: Option<&str>,
        policy_ttl: Duration,
        metrics: Metrics,
    ) -> Result<(AwsBackend, Placement), AwsSetupError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_timeout(settings.operation_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            .http_client(shared_https_client());
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_owned()));
        }
        let shared = loader.load().await;
        let region = shared
            .region()
            .map(|r| r.to_string())
            .ok_or(AwsSetupError::NoRegion)?;
        if !is_region_name(&region) {
            return Err(AwsSetupError::BadRegion(region));
        }
        let provider = shared
            .credentials_provider()
            .ok_or_else(|| AwsSetupError::NoCredentials("no credentials provider".into()))?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| AwsSetupError::NoCredentials(e.to_string()))?;

        let account_id = match account_id {
            Some(account) => account.to_owned(),
            None => {
                let identity = aws_sdk_sts::Client::from_conf(sts_config(&shared, settings))
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| AwsSetupError::NoAccount(describe_sdk_error(&e)))?;
                identity
                    .account()
                    .filter(|a| is_account_id(a))
                    .map(str::to_owned)
                    .ok_or_else(|| AwsSetupError::NoAccount("no account in the answer".into()))?
            }
        };

        let own = Scope::of(&account_id, &region);
        let mut sts = shared.to_builder();
        // The AssumeRole calls go where GetCallerIdentity does.
        sts.set_endpoint_url(settings.sts_endpoint.clone());
        let sts = sts.build();
        // Says which sidecar assumed the role, in the account's CloudTrail.
        let session_name = format!("inspector-keyd-{account_id}");
        let accounts = HashMap::from([(
            account_id.clone(),
            Arc::new(AccountAccess {
                account_id: account_id.clone(),
                role: None,
            }),
        )]);
        Ok((
            AwsBackend {
                own,
                shared,
                settings: settings.clone(),
                policy_ttl,
                metrics,
                scopes: None,
                sts,
                session_name,
                accounts: Mutex::new(accounts),
                clients: Mutex::new(HashMap::new()),
                iam: Mutex::new(HashMap::new()),
            },
            Placement { region, account_id },
        ))
    }

    /// Serves every scope of `scopes`, as managed now and later: each account other than
    /// the sidecar's own through its `role_arn` (which the caller has checked is set).
    /// Nothing is called here: a role that cannot be assumed fails its own scope's calls,
    /// not the start.
    pub fn manage(mut self, scopes: Arc<ManagedScopes>) -> AwsBackend {
        self.scopes = Some(scopes);
        self
    }

    /// The access of an account other than the sidecar's own, through the role its
    /// settings name.
    async fn assume_role_in(&self, settings: &ScopeSettings) -> Arc<AccountAccess> {
        let account_id = settings.scope.account_id();
        let Some(role_arn) = settings.role_arn.clone() else {
            tracing::warn!(
                account = account_id,
                "no role to assume; the account's calls use the sidecar's own identity"
            );
            return Arc::new(AccountAccess {
                account_id: account_id.to_owned(),
                role: None,
            });
        };
        let mut builder = AssumeRoleProvider::builder(role_arn.clone())
            .configure(&self.sts)
            .session_name(self.session_name.clone());
        if let Some(external_id) = &settings.external_id {
            builder = builder.external_id(external_id.clone());
        }
        let refusal = Arc::new(Mutex::new(None));
        let credentials = SharedCredentialsProvider::new(RecordingAssumeRole {
            provider: builder.build().await,
            account_id: account_id.to_owned(),
            role_arn: role_arn.clone(),
            refusal: refusal.clone(),
        });
        Arc::new(AccountAccess {
            account_id: account_id.to_owned(),
            role: Some(AssumedRole {
                role_arn,
                credentials,
                refusal,
            }),
        })
    }

    /// The lister of the organization's accounts, with the sidecar's own identity.
    pub fn organization_accounts(&self) -> OrganizationAccounts {
        let mut config = aws_sdk_organizations::config::Builder::from(&self.shared);
        if let Some(url) = &self.settings.organizations_endpoint {
            config = config.endpoint_url(url);
        }
        OrganizationAccounts::new(
            aws_sdk_organizations::Client::from_conf(config.build()),
            self.metrics.clone(),
        )
    }

    /// The SDK configuration of `access`'s account in `region`: the shared one (timeouts,
    /// retries, identity cache) with that account's credentials.
    fn sdk_config(&self, access: &AccountAccess, region: &str) -> SdkConfig {
        let mut builder = self
            .shared
            .to_builder()
            .region(Region::new(region.to_owned()));
        if let Some(role) = &access.role {
            builder.set_credentials_provider(Some(role.credentials.clone()));
        }
        builder.build()
    }

    /// Makes the clients of `access`'s account in `region`, with the endpoint overrides.
    fn make_clients(&self, access: &Arc<AccountAccess>, region: &str) -> ScopeClients {
        let shared = self.sdk_config(access, region);
        let mut inspector = aws_sdk_inspector2::config::Builder::from(&shared);
        if let Some(url) = &self.settings.inspector2_endpoint {
            inspector = inspector.endpoint_url(url);
        }
        let mut kms = aws_sdk_kms::config::Builder::from(&shared);
        if let Some(url) = &self.settings.kms_endpoint {
            kms = kms.endpoint_url(url);
        }
        ScopeClients {
            access: access.clone(),
            inspector: aws_sdk_inspector2::Client::from_conf(inspector.build()),
            kms: aws_sdk_kms::Client::from_conf(kms.build()),
        }
    }

    /// The access of `account_id` when it is managed, else the sidecar's own.
    async fn access(&self, account_id: &str) -> Arc<AccountAccess> {
        // Managed now: an account the organization no longer lists is not acted in.
        let managed = self
            .scopes
            .as_ref()
            .and_then(|scopes| scopes.in_account(account_id));
        let Some(settings) = managed else {
            return self.own_access();
        };
        if let Some(access) = lock(&self.accounts).get(account_id) {
            return access.clone();
        }
        let made = self.assume_role_in(&settings).await;
        lock(&self.accounts)
            .entry(account_id.to_owned())
            .or_insert(made)
            .clone()
    }

    /// The sidecar's own access.
    fn own_access(&self) -> Arc<AccountAccess> {
        match lock(&self.accounts).get(self.own.account_id()) {
            Some(access) => access.clone(),
            // `connect` puts the own account in; kept total without a panic.
            None => Arc::new(AccountAccess {
                account_id: self.own.account_id().to_owned(),
                role: None,
            }),
        }
    }

    /// Whether the clients of `account_id` in `region` are kept: the scope is managed, or
    /// nothing but the own scope is known yet. Another Region's are made for the call, so
    /// the map stays bounded whatever key ARNs callers send.
    fn keeps_clients(&self, account_id: &str, region: &str) -> bool {
        match &self.scopes {
            Some(scopes) => scopes.find(account_id, region).is_some(),
            None => account_id == self.own.account_id() && region == self.own.region(),
        }
    }

    /// The clients of `account_id` (the sidecar's own when not managed) in `region`: kept
    /// for managed scopes, made for the call otherwise.
    async fn clients(&self, account_id: &str, region: &str) -> Arc<ScopeClients> {
        let access = self.access(account_id).await;
        if !self.keeps_clients(&access.account_id, region) {
            return Arc::new(self.make_clients(&access, region));
        }
        let key = (access.account_id.clone(), region.to_owned());
        if let Some(clients) = lock(&self.clients).get(&key) {
            return clients.clone();
        }
        let made = Arc::new(self.make_clients(&access, region));
        lock(&self.clients).entry(key).or_insert(made).clone()
    }

    /// The clients of `target`'s scope.
    async fn scope_clients(&self, target: ScopedTarget) -> Arc<ScopeClients> {
        self.clients(target.scope.account_id(), target.scope.region())
            .await
    }

    /// The clients for a key: its account's when managed, else the sidecar's own, in the
    /// key's Region (the sidecar's own when the ARN has none).
    async fn key_clients(&self, key: &KeyArn) -> Arc<ScopeClients> {
        let region = if key.region().is_empty() {
            self.own.region()
        } else {
            key.region()
        };
        self.clients(key.account_id(), region).await
    }

    /// The IAM reader of `account_id` when it is managed, else the sidecar's own.
    async fn iam(&self, account_id: &str) -> Arc<IamPolicies> {
        let access = self.access(account_id).await;
        if let Some(iam) = lock(&self.iam).get(&access.account_id) {
            return iam.clone();
        }
        let shared = self.sdk_config(&access, self.own.region());
        let mut iam = aws_sdk_iam::config::Builder::from(&shared);
        if let Some(url) = &self.settings.iam_endpoint {
            iam = iam.endpoint_url(url);
        }
        let made = Arc::new(IamPolicies::new(
            aws_sdk_iam::Client::from_conf(iam.build()),
            self.policy_ttl,
            self.metrics.clone(),
            access.clone(),
        ));
        lock(&self.iam)
            .entry(access.account_id.clone())
            .or_insert(made)
            .clone()
    }
}

/// The HTTPS client every SDK client of the sidecar shares, as the SDK's default one is made
/// (rustls with aws-lc-rs, a proxy from the environment) but made once: each client built from
/// the SDK's defaults gets a connection pool of its own, so an organization of hundreds of
/// accounts and Regions would hold a pool per account and Region, where one pool per
/// endpoint serves them all.
fn shared_https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig, tls};
    Builder::new().build_with_connector_fn(|settings, runtime_components| {
        let mut connector = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = runtime_components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// The STS client configuration: the shared one, at the configured endpoint.
fn sts_config(shared: &SdkConfig, settings: &AwsConfig) -> aws_sdk_sts::Config {
    let mut sts = aws_sdk_sts::config::Builder::from(shared);
    if let Some(url) = &settings.sts_endpoint {
        sts = sts.endpoint_url(url);
    }
    sts.build()
}

fn scan_type(target: Target) -> AwsScanType {
    AwsScanType::from(target.scan_type().as_aws_str())
}

fn resource_type(target: Target) -> AwsResourceType {
    AwsResourceType::from(target.resource_type().as_aws_str())
}

fn date(value: Option<&aws_smithy_types::DateTime>) -> Option<serde_json::Value> {
    value
        .and_then(|d| d.fmt(Format::DateTime).ok())
        .map(serde_json::Value::String)
}

fn region_key(key: &aws_sdk_kms::types::MultiRegionKey) -> MultiRegionKey {
    MultiRegionKey {
        arn: key.arn().unwrap_or_default().to_owned(),
        region: key.region().unwrap_or_default().to_owned(),
    }
}

/// The SDK's key metadata in the describe-key shape the verifier reads.
fn key_metadata(m: &aws_sdk_kms::types::KeyMetadata) -> KeyMetadata {
    let name = |value: Option<&str>| value.unwrap_or_default().to_owned();
    KeyMetadata {
        aws_account_id: name(m.aws_account_id()),
        key_id: m.key_id().to_owned(),
        arn: name(m.arn()),
        creation_date: date(m.creation_date()),
        enabled: m.enabled(),
        description: name(m.description()),
        key_usage: name(m.key_usage().map(|u| u.as_str())),
        key_state: name(m.key_state().map(|s| s.as_str())),
        deletion_date: date(m.deletion_date()),
        origin: name(m.origin().map(|o| o.as_str())),
        key_manager: name(m.key_manager().map(|k| k.as_str())),
        key_spec: name(m.key_spec().map(|k| k.as_str())),
        encryption_algorithms: m
            .encryption_algorithms()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        signing_algorithms: m
            .signing_algorithms()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        multi_region: m.multi_region().unwrap_or(false),
        multi_region_configuration: m.multi_region_configuration().map(|c| {
            MultiRegionConfiguration {
                multi_region_key_type: name(c.multi_region_key_type().map(|t| t.as_str())),
                primary_key: c.primary_key().map(region_key),
                replica_keys: c.replica_keys().iter().map(region_key).collect(),
            }
        }),
    }
}

#[async_trait]
impl Backend for AwsBackend {
    async fn get_encryption_key(
        &self,
        target: ScopedTarget,
    ) -> Result<Option<String>, BackendError> {
        let clients = self.scope_clients(target).await;
        let target = target.target;
        let result = clients
            .inspector
            .get_encryption_key()
            .scan_type(scan_type(target))
            .resource_type(resource_type(target))
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(output.kms_key_id().to_owned())),
            // Inspector's way of saying the AWS owned key is in use.
            Err(SdkError::ServiceError(context))
                if context.err().is_resource_not_found_exception() =>
            {
                Ok(None)
            }
            Err(error) => Err(clients.access.failed("GetEncryptionKey", error)),
        }
    }

    async fn update_encryption_key(
        &self,
        target: ScopedTarget,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        let clients = self.scope_clients(target).await;
        let target = target.target;
        clients
            .inspector
            .update_encryption_key()
            .kms_key_id(key.as_str())
            .scan_type(scan_type(target))
            .resource_type(resource_type(target))
            .send()
            .await
            .map(drop)
            .map_err(|e| clients.access.failed("UpdateEncryptionKey", e))
    }

    async fn reset_encryption_key(&self, target: ScopedTarget) -> Result<(), BackendError> {
        let clients = self.scope_clients(target).await;
        let target = target.target;
        clients
            .inspector
            .reset_encryption_key()
            .scan_type(scan_type(target))
            .resource_type(resource_type(target))
            .send()
            .await
            .map(drop)
            .map_err(|e| clients.access.failed("ResetEncryptionKey", e))
    }

    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError> {
        let clients = self.key_clients(key).await;
        let output = clients
            .kms
            .describe_key()
            .key_id(key.as_str())
            .send()
            .await
            .map_err(|e| clients.access.failed("DescribeKey", e))?;
        output
            .key_metadata()
            .map(key_metadata)
            .ok_or_else(|| BackendError::internal("DescribeKey answered without key metadata"))
    }

    async fn resolve_alias(
        &self,
        scope: Scope,
        alias_name: &str,
    ) -> Result<Option<KeyArn>, BackendError> {
        let clients = self.clients(scope.account_id(), scope.region()).await;
        let answer = clients
            .kms
            .describe_key()
            .key_id(alias_name)
            .send()
            .await
            .map_err(|e| clients.access.failed("DescribeKey", e));
        let output = match answer {
            Ok(output) => output,
            Err(BackendError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let arn = output
            .key_metadata()
            .map(|metadata| metadata.arn().unwrap_or_default())
            .unwrap_or_default();
        KeyArn::parse(arn)
            .map(Some)
            .map_err(|e| BackendError::internal(format!("DescribeKey of `{alias_name}`: {e}")))
    }

    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError> {
        let clients = self.key_clients(key).await;
        let output = clients
            .kms
            .get_key_policy()
            .key_id(key.as_str())
            .policy_name("default")
            .send()
            .await
            .map_err(|e| clients.access.failed("GetKeyPolicy", e))?;
        Ok(output.policy().unwrap_or_default().to_owned())
    }

    async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        // Each finding is read in its ARN's account and Region: one call per scope named.
        let mut scopes: Vec<((&str, &str), Vec<FindingArn>)> = Vec::new();
        for finding in findings {
            let scope = (finding.account_id(), finding.region());
            match scopes.iter_mut().find(|(s, _)| *s == scope) {
                Some((_, group)) => group.push(finding.clone()),
                None => scopes.push((scope, vec![finding.clone()])),
            }
        }
        if let [((account_id, region), group)] = scopes.as_slice() {
            return self
                .snippets_in(&*self.clients(account_id, region).await, group)
                .await;
        }
        // Across scopes, one scope's failure (its role not assumable, say) is its findings'
        // errors, and the others are still answered.
        let mut snippets = CodeSnippets::default();
        for ((account_id, region), group) in &scopes {
            match self
                .snippets_in(&*self.clients(account_id, region).await, group)
                .await
            {
                Ok(answer) => {
                    snippets.results.extend(answer.results);
                    snippets.errors.extend(answer.errors);
                }
                Err(error) => {
                    tracing::warn!(account = account_id, region, %error, "BatchGetCodeSnippet failed in one scope");
                    let code = match error {
                        BackendError::AccessDenied { .. } => SnippetErrorCode::AccessDenied,
                        _ => SnippetErrorCode::InternalError,
                    };
                    snippets
                        .errors
                        .extend(group.iter().map(|finding| SnippetError {
                            finding_arn: finding.as_str().to_owned(),
                            code,
                            message: code.describe().to_owned(),
                        }));
                }
            }
        }
        Ok(snippets)
    }

    async fn principal_policies(
        &self,
        principal_arn: &str,
    ) -> Result<Option<Arc<PrincipalPolicies>>, BackendError> {
        let account_id = principal_arn.split(':').nth(4).unwrap_or_default();
        self.iam(account_id)
            .await
            .get(principal_arn)
            .await
            .map(Some)
    }
}

impl AwsBackend {
    /// Inspector's BatchGetCodeSnippet of `findings` through `clients` (one scope's).
    async fn snippets_in(
        &self,
        clients: &ScopeClients,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        let output = clients
            .inspector
            .batch_get_code_snippet()
            .set_finding_arns(Some(
                findings.iter().map(|f| f.as_str().to_owned()).collect(),
            ))
            .send()
            .await
            .map_err(|e| clients.access.failed("BatchGetCodeSnippet", e))?;
        let mut snippets = CodeSnippets::default();
        for result in output.code_snippet_results() {
            let Some(finding_arn) = result.finding_arn() else {
                tracing::warn!("BatchGetCodeSnippet answered a result without a finding ARN");
                continue;
            };
            snippets.results.push(CodeSnippet {
                finding_arn: finding_arn.to_owned(),
                start_line: result.start_line().unwrap_or_default(),
                end_line: result.end_line().unwrap_or_default(),
                lines: result
                    .code_snippet()
                    .iter()
                    .map(|line| CodeLine {
                        content: line.content().to_owned(),
                        line_number: line.line_number(),
                    })
                    .collect(),
                suggested_fixes: result
                    .suggested_fixes()
                    .iter()
                    .map(|fix| SuggestedFix {
                        description: fix.description().unwrap_or_default().to_owned(),
                        code: fix.code().unwrap_or_default().to_owned(),
                    })
                    .collect(),
            });
        }
        for error in output.errors() {
            let code = SnippetErrorCode::from_aws_str(error.error_code().as_str());
            // AWS's text goes to the log; the caller gets the sidecar's own words.
            tracing::info!(
                finding = error.finding_arn(),
                code = error.error_code().as_str(),
                detail = error.error_message(),
                "BatchGetCodeSnippet: a finding's snippet was not returned"
            );
            snippets.errors.push(SnippetError {
                finding_arn: error.finding_arn().to_owned(),
                code,
                message: code.describe().to_owned(),
            });
        }
        Ok(snippets)
    }
}
