//! The one place errors become `tonic::Status`, with the gRPC rich error model: ErrorInfo
//! (UPPER_SNAKE reason, domain `inspector-keyd`), BadRequest, PreconditionFailure,
//! RetryInfo. Internal detail is logged here and never sent to callers.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

use crate::{authz::AuthzError, backend::BackendError, service::ServiceError, verify::Report};

/// ErrorInfo domain of every error this sidecar returns.
pub const ERROR_DOMAIN: &str = "inspector-keyd";

/// Retry hint when the backend gave none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

fn info(details: &mut ErrorDetails, reason: &str, metadata: &[(&str, String)]) {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
}

fn status(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: &[(&str, String)],
) -> Status {
    let mut details = ErrorDetails::new();
    info(&mut details, reason, metadata);
    Status::with_error_details(code, message, details)
}

fn invalid_argument(violations: Vec<(String, String)>) -> Status {
    let message = violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    info(&mut details, "INVALID_REQUEST", &[]);
    details.set_bad_request(
        violations
            .into_iter()
            .map(|(field, description)| FieldViolation::new(field, description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {message}"),
        details,
    )
}

fn verification_failed(key: &str, report: Report) -> Status {
    let errors: Vec<_> = report.errors().collect();
    let message = format!(
        "key `{key}` failed verification (profile {}): {}",
        report.profile,
        errors
            .iter()
            .map(|f| f.message_with_requests())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut details = ErrorDetails::new();
    info(
        &mut details,
        "KEY_VERIFICATION_FAILED",
        &[("profile", report.profile.clone())],
    );
    details.set_precondition_failure(
        errors
            .iter()
            .map(|f| {
                let subject = f
                    .sid
                    .clone()
                    .or_else(|| f.location.as_ref().map(|l| l.path.clone()))
                    .unwrap_or_else(|| key.to_owned());
                PreconditionViolation::new(f.code.as_str(), subject, f.message_with_requests())
            })
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::FailedPrecondition, message, details)
}

fn retry(code: Code, message: &str, reason: &str, retry_after: Option<Duration>) -> Status {
    let mut details = ErrorDetails::new();
    info(&mut details, reason, &[]);
    details.set_retry_info(Some(retry_after.unwrap_or(DEFAULT_RETRY_AFTER)));
    Status::with_error_details(code, message, details)
}

impl From<BackendError> for Status {
    fn from(error: BackendError) -> Status {
        match error {
            BackendError::NotFound { what } => status(
                Code::NotFound,
                format!("{what} not found"),
                "NOT_FOUND",
                &[],
            ),
            BackendError::AlreadyExists { what } => status(
                Code::AlreadyExists,
                format!("{what} already exists"),
                "ALREADY_EXISTS",
                &[],
            ),
            BackendError::InvalidRequest { field, message } => {
                invalid_argument(vec![(field.to_owned(), message)])
            }
            BackendError::InvalidState { message } => {
                status(Code::FailedPrecondition, message, "INVALID_STATE", &[])
            }
            BackendError::KeyAccessDenied { message } => {
                status(Code::FailedPrecondition, message, "KEY_ACCESS_DENIED", &[])
            }
            BackendError::AccessDenied { message } => {
                tracing::warn!(%message, "the backend denied the sidecar's access");
                // The message is the sidecar's own words (the operation, AWS's error code,
                // and for another account its id and the role assumed there), never AWS's
                // text: it says where the permission is missing.
                status(
                    Code::PermissionDenied,
                    format!(
                        "the backend denied the sidecar's access: {message}; check the permissions of the sidecar's identity, or of the role it assumes in that account"
                    ),
                    "BACKEND_ACCESS_DENIED",
                    &[],
                )
            }
            BackendError::Throttled { retry_after } => retry(
                Code::ResourceExhausted,
                "the backend is throttling requests; retry later",
                "BACKEND_THROTTLED",
                retry_after,
            ),
            BackendError::Unavailable {
                message,
                retry_after,
            } => {
                tracing::warn!(%message, "backend unavailable");
                retry(
                    Code::Unavailable,
                    "the backend is unavailable; retry later",
                    "BACKEND_UNAVAILABLE",
                    retry_after,
                )
            }
            BackendError::Timeout => status(
                Code::DeadlineExceeded,
                "the backend did not answer in time",
                "BACKEND_TIMEOUT",
                &[],
            ),
            BackendError::Internal { message } => {
                tracing::error!(%message, "internal error");
                status(
                    Code::Internal,
                    "internal error; see the sidecar's log",
                    "INTERNAL",
                    &[],
                )
            }
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        match error {
            ServiceError::InvalidArgument(violations) => invalid_argument(
                violations
                    .into_iter()
                    .map(|v| (v.field.to_owned(), v.description))
                    .collect(),
            ),
            ServiceError::AwsOwnedKey(target) => status(
                Code::NotFound,
                ServiceError::AwsOwnedKey(target).to_string(),
                "AWS_OWNED_KEY",
                &[
                    (
                        "scan_type",
                        target.target.scan_type().as_aws_str().to_owned(),
                    ),
                    (
                        "resource_type",
                        target.target.resource_type().as_aws_str().to_owned(),
                    ),
                    ("account_id", target.scope.account_id().to_owned()),
                    ("region", target.scope.region().to_owned()),
                ],
            ),
            ServiceError::VerificationFailed { key, report } => {
                verification_failed(key.as_str(), *report)
            }
            ServiceError::RoleRequired(refused) => refused.into(),
            error @ ServiceError::QuotaExceeded { retry_after } => retry(
                Code::ResourceExhausted,
                &error.to_string(),
                "CALLER_QUOTA_EXCEEDED",
                Some(retry_after),
            ),
            error @ ServiceError::TooManyWatches(_) => retry(
                Code::ResourceExhausted,
                &error.to_string(),
                "TOO_MANY_WATCHES",
                None,
            ),
            error @ ServiceError::WatchFellBehind => {
                status(Code::DataLoss, error.to_string(), "WATCH_FELL_BEHIND", &[])
            }
            error @ ServiceError::WatchExpired(_) => retry(
                Code::Unavailable,
                &error.to_string(),
                "WATCH_EXPIRED",
                Some(Duration::ZERO),
            ),
            ServiceError::ScopeNotManaged {
                field,
                ref account_id,
                ref region,
            } => {
                let message = error.to_string();
                let mut details = ErrorDetails::new();
                info(
                    &mut details,
                    "SCOPE_NOT_MANAGED",
                    &[
                        ("account_id", account_id.clone()),
                        ("region", region.clone()),
                    ],
                );
                details.set_bad_request(vec![FieldViolation::new(field, message.clone())]);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::Backend(error) => error.into(),
        }
    }
}

impl From<AuthzError> for Status {
    fn from(error: AuthzError) -> Status {
        match &error {
            AuthzError::Unauthenticated(_) => status(
                Code::Unauthenticated,
                error.to_string(),
                "UNAUTHENTICATED",
                &[],
            ),
            AuthzError::RoleRequired(refused) => refused.clone().into(),
        }
    }
}

/// The caller's role is short of what the call needs (ROLE_REQUIRED, naming both).
impl From<crate::rpc::RoleRequired> for Status {
    fn from(refused: crate::rpc::RoleRequired) -> Status {
        status(
            Code::PermissionDenied,
            refused.to_string(),
            "ROLE_REQUIRED",
            &[
                ("required_role", refused.required.to_string()),
                ("caller", refused.caller),
            ],
        )
    }
}

/// The server is at its concurrency limit and shed the call.
#[derive(Debug, Clone, Copy)]
pub struct Overloaded;

/// Retry hint for a shed call.
const SHED_RETRY_AFTER: Duration = Duration::from_millis(100);

impl From<Overloaded> for Status {
    fn from(_: Overloaded) -> Status {
        retry(
            Code::ResourceExhausted,
            "the sidecar is at its concurrency limit; retry shortly",
            "OVERLOADED",
            Some(SHED_RETRY_AFTER),
        )
    }
}

/// The call ran past its deadline (the configured one, or the caller's shorter one).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineExceeded(pub Duration);

impl From<DeadlineExceeded> for Status {
    fn from(DeadlineExceeded(deadline): DeadlineExceeded) -> Status {
        status(
            Code::DeadlineExceeded,
            format!("the call did not finish within its deadline of {deadline:?}"),
            "DEADLINE_EXCEEDED",
            &[],
        )
    }
}
