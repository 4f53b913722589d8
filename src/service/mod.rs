//! The gRPC services: request validation, the calls into the cache (reads) and the backend
//! (writes, verification's reads), verification through the pure library, and the mapping of
//! results to responses. Errors leave as [`ServiceError`]; `crate::status` alone turns them
//! into `tonic::Status`.

mod audience;
mod code_snippets;
pub mod drift;
mod encryption_key;
mod fleet;
mod inventory;
pub mod keycheck;
mod local_kms;
pub mod quota;
pub mod validation;

pub use code_snippets::LocalCodeScanningApi;
pub use encryption_key::{EncryptionKeys, WatchLimits};
pub use fleet::{Reconciler, read_desired_state};
pub use keycheck::KeyVerifier;
pub use local_kms::LocalKmsApi;

use crate::{
    backend::BackendError,
    domain::{KeyArn, ResourceType, ScanType, Scope, ScopedTarget},
    scopes::ManagedScopes,
    verify::Report,
};
use validation::FieldViolation;

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    /// No customer managed key is set: the AWS owned key is in use.
    #[error("no customer managed key is set for {0}; the AWS owned key is in use")]
    AwsOwnedKey(ScopedTarget),
    /// Verification found at least one ERROR; nothing was changed. The report is boxed: it
    /// is the largest thing an error carries, and every `Result` of the service would be as
    /// large as it.
    #[error("key `{key}` failed verification")]
    VerificationFailed { key: KeyArn, report: Box<Report> },
    /// The call is about a stored key, which needs more than the caller's role.
    #[error(transparent)]
    RoleRequired(#[from] crate::rpc::RoleRequired),
    /// The caller spent its quota of uncached backend calls.
    #[error(
        "the caller's quota of uncached backend calls (ops.uncached_calls_per_minute) is spent; retry in {retry_after:?}"
    )]
    QuotaExceeded { retry_after: std::time::Duration },
    /// `ops.max_watch_streams` Watch streams are open.
    #[error("{0} WatchEncryptionKey streams are open, the most ops.max_watch_streams allows")]
    TooManyWatches(usize),
    /// A Watch stream's reader was too slow and missed events.
    #[error("the watch fell behind and missed events; watch again")]
    WatchFellBehind,
    /// A Watch stream lasted `ops.max_watch_duration`.
    #[error("the watch lasted ops.max_watch_duration ({0:?}); watch again")]
    WatchExpired(std::time::Duration),
    /// The request names an account and Region the sidecar does not manage. Not NOT_FOUND,
    /// which clients read as "the AWS owned key is in use".
    #[error(
        "the sidecar does not manage account {account_id} in {region}; the scopes it manages are its own, those of its [[accounts]] configuration and those of its [organization] listing"
    )]
    ScopeNotManaged {
        /// The request field that names the scope (`account_id`, or `finding_arns`).
        field: &'static str,
        account_id: String,
        region: String,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Tells the audit line of a request which key and target it was about.
fn audit_subject<T>(
    request: &tonic::Request<T>,
    key: &str,
    scan_type: Option<i32>,
    resource_type: Option<i32>,
) {
    let Some(subject) = request.extensions().get::<crate::audit::AuditSubject>() else {
        return;
    };
    // The AWS spellings, as everywhere else; a value the API does not know as its number.
    let scan = scan_type.map(|v| {
        crate::proto::ScanType::try_from(v)
            .ok()
            .and_then(ScanType::from_proto)
            .map_or_else(|| v.to_string(), |t| t.as_aws_str().to_owned())
    });
    let resource = resource_type.map(|v| {
        crate::proto::ResourceType::try_from(v)
            .ok()
            .and_then(ResourceType::from_proto)
            .map_or_else(|| v.to_string(), |t| t.as_aws_str().to_owned())
    });
    subject.record(
        (!key.is_empty()).then_some(key),
        scan.as_deref(),
        resource.as_deref(),
    );
}

/// The managed scope a request names (empty account and Region: the sidecar's own), when
/// `caller` may act there: its role there first (a caller limited to some scopes learns
/// nothing of the others), then whether the sidecar manages it. `stored_key`: the call is
/// about a stored key, which needs the method's stored-key role there.
pub fn managed_scope(
    scopes: &ManagedScopes,
    caller: Option<&crate::rpc::CallerContext>,
    (account_id, region): (&str, &str),
    stored_key: bool,
) -> Result<Scope, ServiceError> {
    let own = scopes.own();
    let account_id = if account_id.is_empty() {
        own.account_id()
    } else {
        account_id
    };
    let region = if region.is_empty() {
        own.region()
    } else {
        region
    };
    if let Some(caller) = caller.filter(|c| c.scoped.is_some()) {
        caller.may_act_in(account_id, region, stored_key)?;
    }
    if (account_id, region) == (own.account_id(), own.region()) {
        return Ok(own);
    }
    scopes
        .find(account_id, region)
        .ok_or_else(|| ServiceError::ScopeNotManaged {
            field: if scopes.manages_account(account_id) {
                "region"
            } else {
                "account_id"
            },
            account_id: account_id.to_owned(),
            region: region.to_owned(),
        })
}

impl From<Vec<FieldViolation>> for ServiceError {
    fn from(violations: Vec<FieldViolation>) -> ServiceError {
        ServiceError::InvalidArgument(violations)
    }
}
