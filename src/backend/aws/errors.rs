//! AWS SDK errors, classified once: the gRPC code, retry hint and metric label follow from
//! the class. AWS's own text goes to the log, never to callers.

use std::time::Duration;

use aws_smithy_runtime_api::client::{orchestrator::HttpResponse, result::SdkError};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::backend::BackendError;

/// An SDK error in words, for the log (never the response body: an unreadable
/// BatchGetCodeSnippet answer holds code).
pub(super) fn describe_sdk_error<E: ProvideErrorMetadata + std::fmt::Debug>(
    error: &SdkError<E, HttpResponse>,
) -> String {
    match error {
        SdkError::ServiceError(context) => format!(
            "{}: {}",
            context.err().code().unwrap_or("unknown error"),
            context.err().message().unwrap_or_default()
        ),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(failure) => format!("cannot reach AWS: {failure:?}"),
        // Never the response itself: an unreadable BatchGetCodeSnippet body holds code.
        SdkError::ResponseError(context) => format!(
            "the response could not be read (HTTP {})",
            context.raw().status().as_u16()
        ),
        SdkError::ConstructionFailure(_) => "the request could not be built".into(),
        _ => "unknown SDK error".into(),
    }
}

/// Classifies an SDK error once: the gRPC code, retry hint and metric label follow from
/// the class. AWS's text goes to the log.
pub(super) fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    operation: &'static str,
    error: SdkError<E, HttpResponse>,
) -> BackendError {
    let (code, retry_after) = match &error {
        SdkError::ServiceError(context) => {
            let retry_after = context
                .raw()
                .headers()
                .get("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            (context.err().code().unwrap_or("").to_owned(), retry_after)
        }
        _ => (String::new(), None),
    };
    tracing::warn!(operation, code = %code, detail = %describe_sdk_error(&error), "AWS call failed");
    match &error {
        SdkError::TimeoutError(_) => return BackendError::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => return BackendError::Timeout,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            return BackendError::Unavailable {
                message: format!("{operation}: AWS could not be reached"),
                retry_after: None,
            };
        }
        SdkError::ServiceError(_) => {}
        _ => return BackendError::internal(format!("{operation}: the request could not be built")),
    }
    match code.as_str() {
        "ValidationException" | "InvalidArnException" | "ValidationError" => {
            BackendError::InvalidRequest {
                field: "request",
                message: format!("AWS refused the {operation} request as invalid"),
            }
        }
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException" => BackendError::AccessDenied {
            message: format!("{operation} ({code})"),
        },
        "ResourceNotFoundException" | "NotFoundException" | "NoSuchEntity" => {
            BackendError::NotFound {
                what: operation.to_owned(),
            }
        }
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => BackendError::Throttled { retry_after },
        "KMSInvalidStateException" | "DisabledException" => BackendError::InvalidState {
            message: format!("the key's state does not allow {operation}"),
        },
        "InternalServerException"
        | "KMSInternalException"
        | "DependencyTimeoutException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "ServiceFailure"
        | "InternalFailure" => BackendError::Unavailable {
            message: format!("{operation}: {code}"),
            retry_after,
        },
        _ => BackendError::internal(format!("{operation}: unexpected AWS error `{code}`")),
    }
}
