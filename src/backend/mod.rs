//! The seam between the service and the world: where the encryption-key configuration
//! lives and where the KMS facts verification needs come from.

pub mod aws;
#[cfg(feature = "test-hooks")]
pub mod faulty;
pub mod local;
pub mod metered;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{
    domain::{CodeSnippets, FindingArn, KeyArn, Scope, ScopedTarget},
    verify::{KeyMetadata, access::Grant},
};

/// Inspector's key configuration plus the KMS reads verification needs.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The customer managed key ARN for `target`, or `None` when the AWS owned key is in use.
    async fn get_encryption_key(
        &self,
        target: ScopedTarget,
    ) -> Result<Option<String>, BackendError>;

    /// Puts `key` in use for `target`. Durable when it returns.
    async fn update_encryption_key(
        &self,
        target: ScopedTarget,
        key: &KeyArn,
    ) -> Result<(), BackendError>;

    /// Goes back to the AWS owned key for `target`. Idempotent; durable when it returns.
    async fn reset_encryption_key(&self, target: ScopedTarget) -> Result<(), BackendError>;

    /// The key's metadata, as KMS DescribeKey returns it.
    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError>;

    /// The key's policy document (the `default` policy), as KMS GetKeyPolicy returns it.
    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError>;

    /// The key the alias `alias_name` (`alias/<name>`) names in `scope`'s account and Region,
    /// as KMS DescribeKey of the alias there answers; `None` when there is no such alias.
    async fn resolve_alias(
        &self,
        scope: Scope,
        alias_name: &str,
    ) -> Result<Option<KeyArn>, BackendError>;

    /// Inspector's BatchGetCodeSnippet: a result or an error per finding; `Err` only when
    /// the whole call failed. Never cached: snippets are customer code.
    async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError>;

    /// The identity policies and permissions boundary IAM holds for the principal
    /// `principal_arn` (a role or user ARN), as of at most one drift interval ago; `None`
    /// when the backend has no IAM to read them from, as the local backend.
    async fn principal_policies(
        &self,
        principal_arn: &str,
    ) -> Result<Option<Arc<PrincipalPolicies>>, BackendError> {
        let _ = principal_arn;
        Ok(None)
    }

    /// The key's grants that are not retired, for its access summary; `None` when the
    /// backend does not read them (the aws backend: its IAM policy has no kms:ListGrants).
    async fn list_grants(&self, key: &KeyArn) -> Result<Option<Vec<Grant>>, BackendError> {
        let _ = key;
        Ok(None)
    }
}

/// One policy document of a principal, and where IAM keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedPolicy {
    /// Where it comes from, for findings: `inline policy `p` of role `r``,
    /// `managed policy `arn:...` (version v2)`.
    pub source: String,
    /// The JSON document (IAM's URL encoding undone).
    pub document: String,
}

/// What IAM evaluates for a principal's own requests besides resource policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrincipalPolicies {
    /// Its identity policies: inline and attached managed ones (a user's also include those
    /// of its groups).
    pub identity_policies: Vec<SourcedPolicy>,
    pub permissions_boundary: Option<SourcedPolicy>,
}

/// Why a backend call failed, classified once: the gRPC code, the retry hint, the metric
/// label and readiness all read the same class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The named thing does not exist (`what` names it for the caller).
    #[error("{what} not found")]
    NotFound { what: String },
    /// The named thing exists already (`what` names it for the caller).
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// The request is wrong; `field` names the request field at fault.
    #[error("invalid `{field}`: {message}")]
    InvalidRequest {
        field: &'static str,
        message: String,
    },
    /// The thing exists but its state forbids the operation (KMSInvalidStateException).
    #[error("{message}")]
    InvalidState { message: String },
    /// The backend refused the sidecar's own credentials.
    #[error("access denied: {message}")]
    AccessDenied { message: String },
    /// A key's policy (or the configured identity policies) refuses what the scanning
    /// service asks of the key; `message` names the key, the operation and the statement.
    #[error("{message}")]
    KeyAccessDenied { message: String },
    /// The backend asked us to slow down.
    #[error("throttled by the backend")]
    Throttled { retry_after: Option<Duration> },
    /// The backend is failing or unreachable; retrying later may work.
    #[error("backend unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The backend did not answer in time.
    #[error("backend call timed out")]
    Timeout,
    /// A fault inside the sidecar or its store. `message` is logged, never sent to callers.
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl BackendError {
    pub fn internal(message: impl ToString) -> BackendError {
        BackendError::Internal {
            message: message.to_string(),
        }
    }

    /// Whether the backend answered (it refused, found nothing, throttled), as opposed to
    /// not being reached or failing inside: what readiness follows.
    pub fn backend_answered(&self) -> bool {
        !matches!(
            self,
            BackendError::Unavailable { .. }
                | BackendError::Timeout
                | BackendError::Internal { .. }
        )
    }

    /// The error's class, for metrics: `user` (the request is wrong), `access_denied`,
    /// `not_found`, `throttled`, `transient` (unavailable or timed out), or `internal`.
    pub fn class(&self) -> &'static str {
        match self {
            BackendError::InvalidRequest { .. }
            | BackendError::InvalidState { .. }
            | BackendError::AlreadyExists { .. } => "user",
            BackendError::NotFound { .. } => "not_found",
            BackendError::AccessDenied { .. } | BackendError::KeyAccessDenied { .. } => {
                "access_denied"
            }
            BackendError::Throttled { .. } => "throttled",
            BackendError::Unavailable { .. } | BackendError::Timeout => "transient",
            BackendError::Internal { .. } => "internal",
        }
    }
}
