//! `EncryptionKeyService`: Get, Update (behind verification) and Reset.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{ServiceError, validation};
use crate::{
    backend::{Backend, BackendError},
    domain::KeyArn,
    proto::{self, encryption_key_service_server::EncryptionKeyService},
    verify::{self, Finding, Report},
};

/// The encryption-key service over a backend.
#[derive(Clone)]
pub struct EncryptionKeys {
    backend: Arc<dyn Backend>,
    region: String,
}

impl EncryptionKeys {
    /// `region` is the Region the sidecar manages keys for; keys must be in it or be
    /// multi-Region.
    pub fn new(backend: Arc<dyn Backend>, region: String) -> EncryptionKeys {
        EncryptionKeys { backend, region }
    }

    /// Verifies `key` for use: it must exist and pass the key rules.
    async fn verify(&self, key: &KeyArn) -> Result<Report, ServiceError> {
        let findings = match self.backend.describe_key(key).await {
            Ok(metadata) => verify::verify_key_metadata(&metadata, &self.region),
            Err(BackendError::NotFound { .. }) => vec![
                Finding::error("KEY_NOT_FOUND", format!("key `{key}` does not exist"))
                    .with_fix("create the key, or check the Region and account in its ARN"),
            ],
            Err(e) => return Err(e.into()),
        };
        Ok(Report::new(verify::KEY_METADATA_PROFILE, findings))
    }

    async fn get(
        &self,
        request: proto::GetEncryptionKeyRequest,
    ) -> Result<proto::GetEncryptionKeyResponse, ServiceError> {
        let target = validation::target_request(request.scan_type, request.resource_type)?;
        match self.backend.get_encryption_key(target).await? {
            Some(kms_key_id) => Ok(proto::GetEncryptionKeyResponse { kms_key_id }),
            None => Err(ServiceError::AwsOwnedKey(target)),
        }
    }

    async fn update(
        &self,
        request: proto::UpdateEncryptionKeyRequest,
    ) -> Result<proto::UpdateEncryptionKeyResponse, ServiceError> {
        let (key, target) = validation::update_request(&request)?;
        let report = self.verify(&key).await?;
        if !report.passed {
            tracing::info!(%target, key = %key, "update refused: the key failed verification");
            return Err(ServiceError::VerificationFailed { key, report });
        }
        let applied = !request.validate_only;
        if applied {
            self.backend.update_encryption_key(target, &key).await?;
            tracing::info!(%target, key = %key, "customer managed key put in use");
        }
        Ok(proto::UpdateEncryptionKeyResponse {
            applied,
            report: Some(report.into()),
        })
    }

    async fn reset(
        &self,
        request: proto::ResetEncryptionKeyRequest,
    ) -> Result<proto::ResetEncryptionKeyResponse, ServiceError> {
        let target = validation::target_request(request.scan_type, request.resource_type)?;
        self.backend.reset_encryption_key(target).await?;
        tracing::info!(%target, "reset to the AWS owned key");
        Ok(proto::ResetEncryptionKeyResponse {})
    }
}

#[tonic::async_trait]
impl EncryptionKeyService for EncryptionKeys {
    async fn get_encryption_key(
        &self,
        request: Request<proto::GetEncryptionKeyRequest>,
    ) -> Result<Response<proto::GetEncryptionKeyResponse>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    async fn update_encryption_key(
        &self,
        request: Request<proto::UpdateEncryptionKeyRequest>,
    ) -> Result<Response<proto::UpdateEncryptionKeyResponse>, Status> {
        Ok(Response::new(self.update(request.into_inner()).await?))
    }

    async fn reset_encryption_key(
        &self,
        request: Request<proto::ResetEncryptionKeyRequest>,
    ) -> Result<Response<proto::ResetEncryptionKeyResponse>, Status> {
        Ok(Response::new(self.reset(request.into_inner()).await?))
    }
}

impl From<Report> for proto::VerificationReport {
    fn from(report: Report) -> proto::VerificationReport {
        proto::VerificationReport {
            passed: report.passed,
            profile: report.profile,
            findings: report.findings.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<Finding> for proto::Finding {
    fn from(finding: Finding) -> proto::Finding {
        use verify::Severity as S;
        let severity = match finding.severity {
            S::Error => proto::Severity::Error,
            S::SecurityWarning => proto::Severity::SecurityWarning,
            S::Warning => proto::Severity::Warning,
            S::Suggestion => proto::Severity::Suggestion,
        };
        proto::Finding {
            code: finding.code.to_owned(),
            severity: severity.into(),
            message: finding.message,
            sid: finding.sid,
            location: finding.location.map(|l| proto::Location {
                path: l.path,
                line: l.line,
                column: l.column,
            }),
            fix: finding.fix,
        }
    }
}
