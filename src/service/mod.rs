//! The gRPC services: request validation, the calls into the backend (through the
//! verification library), and the mapping of results to responses. Errors leave as
//! [`ServiceError`]; `crate::status` alone turns them into `tonic::Status`.

mod encryption_key;
mod local_kms;
pub mod validation;

pub use encryption_key::{EncryptionKeys, VerificationSettings};
pub use local_kms::LocalKmsApi;

use crate::{
    backend::BackendError,
    domain::{KeyArn, Target},
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
    AwsOwnedKey(Target),
    /// Verification found at least one ERROR; nothing was changed.
    #[error("key `{key}` failed verification")]
    VerificationFailed { key: KeyArn, report: Report },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<Vec<FieldViolation>> for ServiceError {
    fn from(violations: Vec<FieldViolation>) -> ServiceError {
        ServiceError::InvalidArgument(violations)
    }
}
