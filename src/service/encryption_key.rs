//! `EncryptionKeyService`: Get, Update (behind verification) and Reset.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{ServiceError, validation};
use crate::{
    backend::BackendError,
    cache::{Cached, KeyCache},
    domain::{KeyArn, ResourceType, Target},
    proto::{self, encryption_key_service_server::EncryptionKeyService},
    verify::{self, Finding, Profile, RenderError, Report},
};

/// What keys are verified against: the sidecar's Region and account, the principal that
/// calls Inspector with its identity policies, and the profile per target.
#[derive(Debug, Clone)]
pub struct VerificationSettings {
    pub region: String,
    pub account_id: String,
    pub principal_arn: String,
    pub identity_policies: Vec<String>,
    pub lambda_profile: Profile,
    pub code_repository_profile: Profile,
}

impl VerificationSettings {
    pub fn profile_for(&self, target: Target) -> Profile {
        match target.resource_type() {
            ResourceType::CodeRepository => self.code_repository_profile,
            _ => self.lambda_profile,
        }
    }
}

/// The encryption-key service, over the cache in front of the backend.
#[derive(Clone)]
pub struct EncryptionKeys {
    cache: KeyCache,
    settings: Arc<VerificationSettings>,
}

/// Response metadata saying where a Get answer came from.
pub const CACHE_HEADER: &str = "x-keyd-cache";
/// Response metadata: the age of the answer, in whole seconds.
pub const CACHE_AGE_HEADER: &str = "x-keyd-cache-age";

fn add_cache_metadata(metadata: &mut tonic::metadata::MetadataMap, cached: &Cached) {
    metadata.insert(
        CACHE_HEADER,
        tonic::metadata::MetadataValue::from_static(cached.status.as_str()),
    );
    metadata.insert(CACHE_AGE_HEADER, cached.age.as_secs().into());
}

/// Whose access a verification checks.
struct Subject<'a> {
    profile: Profile,
    principal_arn: &'a str,
    identity_policies: &'a [String],
}

impl EncryptionKeys {
    pub fn new(cache: KeyCache, settings: VerificationSettings) -> EncryptionKeys {
        EncryptionKeys {
            cache,
            settings: Arc::new(settings),
        }
    }

    fn verify_documents(
        &self,
        subject: &Subject<'_>,
        metadata: Option<&verify::KeyMetadata>,
        key_policy: &str,
    ) -> Report {
        verify::verify(&verify::Input {
            profile: subject.profile,
            region: &self.settings.region,
            account_id: &self.settings.account_id,
            principal_arn: subject.principal_arn,
            key_metadata: metadata,
            key_policy,
            identity_policies: subject.identity_policies,
        })
    }

    /// Verifies a key the backend holds: its metadata and its policy.
    async fn verify_key(
        &self,
        key: &KeyArn,
        subject: &Subject<'_>,
    ) -> Result<Report, ServiceError> {
        let (metadata, policy) =
            tokio::join!(self.cache.describe_key(key), self.cache.get_key_policy(key));
        let metadata = match metadata {
            Ok(metadata) => metadata,
            Err(BackendError::NotFound { .. }) => {
                let finding =
                    Finding::error("KEY_NOT_FOUND", format!("key `{key}` does not exist"))
                        .with_fix("create the key, or check the Region and account in its ARN");
                return Ok(Report::new(subject.profile.name(), vec![finding]));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(self.verify_documents(subject, Some(&metadata), &policy?))
    }

    /// The answer and where it came from; "AWS owned key" is an answer here, and becomes
    /// NOT_FOUND at the edge.
    async fn get(
        &self,
        request: proto::GetEncryptionKeyRequest,
    ) -> Result<(Target, Cached), ServiceError> {
        let target = validation::target_request(request.scan_type, request.resource_type)?;
        Ok((target, self.cache.get(target).await?))
    }

    async fn update(
        &self,
        request: proto::UpdateEncryptionKeyRequest,
    ) -> Result<proto::UpdateEncryptionKeyResponse, ServiceError> {
        let (key, target) = validation::update_request(&request)?;
        let subject = Subject {
            profile: self.settings.profile_for(target),
            principal_arn: &self.settings.principal_arn,
            identity_policies: &self.settings.identity_policies,
        };
        let report = self.verify_key(&key, &subject).await?;
        if !report.passed {
            tracing::info!(%target, key = %key, "update refused: the key failed verification");
            return Err(ServiceError::VerificationFailed { key, report });
        }
        let applied = !request.validate_only;
        if applied {
            self.cache.update(target, &key).await?;
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
        self.cache.reset(target).await?;
        tracing::info!(%target, "reset to the AWS owned key");
        Ok(proto::ResetEncryptionKeyResponse {})
    }

    async fn verify_policy(
        &self,
        request: proto::VerifyKeyPolicyRequest,
    ) -> Result<proto::VerifyKeyPolicyResponse, ServiceError> {
        let checked =
            validation::verify_request(&request, |target| self.settings.profile_for(target))?;
        let identity_policies = if request.identity_policies.is_empty() {
            &self.settings.identity_policies
        } else {
            &request.identity_policies
        };
        let subject = Subject {
            profile: checked.profile,
            principal_arn: checked
                .principal_arn
                .unwrap_or(&self.settings.principal_arn),
            identity_policies,
        };
        let report = match checked.key {
            validation::KeyToVerify::Stored(key) => self.verify_key(&key, &subject).await?,
            validation::KeyToVerify::Inline {
                metadata,
                key_policy,
            } => self.verify_documents(&subject, metadata.as_deref(), key_policy),
        };
        Ok(proto::VerifyKeyPolicyResponse {
            report: Some(report.into()),
        })
    }

    fn render_policy(
        &self,
        request: proto::RenderKeyPolicyRequest,
    ) -> Result<proto::RenderKeyPolicyResponse, ServiceError> {
        let profile = validation::profile_name(&request.profile)?;
        let or = |value: &'_ str, default: &'_ str| {
            if value.is_empty() {
                default.to_owned()
            } else {
                value.to_owned()
            }
        };
        let region = or(&request.region, &self.settings.region);
        let account_id = or(&request.account_id, &self.settings.account_id);
        let principal_arn = or(&request.principal_arn, &self.settings.principal_arn);
        let existing = (!request.existing_policy_json.is_empty())
            .then_some(request.existing_policy_json.as_str());
        let policy_json = verify::render(profile, &region, &account_id, &principal_arn, existing)
            .map_err(|e| {
            let field = match e {
                RenderError::Region { .. } => "region",
                RenderError::Account { .. } => "account_id",
                RenderError::Principal { .. } => "principal_arn",
                RenderError::Existing(_) | RenderError::TooLarge(_) => "existing_policy_json",
            };
            ServiceError::InvalidArgument(vec![validation::FieldViolation::new(
                field,
                e.to_string(),
            )])
        })?;
        let document_kind = match profile.document_kind() {
            verify::policy::DocumentKind::KeyPolicy => proto::PolicyDocumentKind::KeyPolicy,
            verify::policy::DocumentKind::IdentityPolicy => {
                proto::PolicyDocumentKind::IdentityPolicy
            }
        };
        Ok(proto::RenderKeyPolicyResponse {
            policy_json,
            document_kind: document_kind.into(),
        })
    }
}

#[tonic::async_trait]
impl EncryptionKeyService for EncryptionKeys {
    async fn get_encryption_key(
        &self,
        request: Request<proto::GetEncryptionKeyRequest>,
    ) -> Result<Response<proto::GetEncryptionKeyResponse>, Status> {
        let (target, cached) = self.get(request.into_inner()).await?;
        match &cached.key_arn {
            Some(kms_key_id) => {
                let mut response = Response::new(proto::GetEncryptionKeyResponse {
                    kms_key_id: kms_key_id.clone(),
                });
                add_cache_metadata(response.metadata_mut(), &cached);
                Ok(response)
            }
            None => {
                let mut status = Status::from(ServiceError::AwsOwnedKey(target));
                add_cache_metadata(status.metadata_mut(), &cached);
                Err(status)
            }
        }
    }

    async fn update_encryption_key(
        &self,
        request: Request<proto::UpdateEncryptionKeyRequest>,
    ) -> Result<Response<proto::UpdateEncryptionKeyResponse>, Status> {
        let r = request.get_ref();
        super::audit_subject(
            &request,
            &r.kms_key_id,
            Some(r.scan_type),
            Some(r.resource_type),
        );
        Ok(Response::new(self.update(request.into_inner()).await?))
    }

    async fn reset_encryption_key(
        &self,
        request: Request<proto::ResetEncryptionKeyRequest>,
    ) -> Result<Response<proto::ResetEncryptionKeyResponse>, Status> {
        let r = request.get_ref();
        super::audit_subject(&request, "", Some(r.scan_type), Some(r.resource_type));
        Ok(Response::new(self.reset(request.into_inner()).await?))
    }

    async fn verify_key_policy(
        &self,
        request: Request<proto::VerifyKeyPolicyRequest>,
    ) -> Result<Response<proto::VerifyKeyPolicyResponse>, Status> {
        Ok(Response::new(
            self.verify_policy(request.into_inner()).await?,
        ))
    }

    async fn render_key_policy(
        &self,
        request: Request<proto::RenderKeyPolicyRequest>,
    ) -> Result<Response<proto::RenderKeyPolicyResponse>, Status> {
        Ok(Response::new(self.render_policy(request.into_inner())?))
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
