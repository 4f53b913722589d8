//! Verifying a key the backend holds, for a target's profile: shared by the Update gate,
//! VerifyKeyPolicy and the drift watch. Reads the key as it is now (never cached).

use std::sync::Arc;

use crate::{
    backend::{Backend, BackendError},
    domain::{KeyArn, Target},
    verify::{self, Finding, KeyMetadata, Profile, Report, VerificationSettings},
};

/// Whose access a verification checks.
pub struct Subject<'a> {
    pub profile: Profile,
    pub principal_arn: &'a str,
    pub identity_policies: &'a [String],
}

/// Verifies keys through the backend.
#[derive(Clone)]
pub struct KeyVerifier {
    backend: Arc<dyn Backend>,
    settings: Arc<VerificationSettings>,
}

impl KeyVerifier {
    pub fn new(backend: Arc<dyn Backend>, settings: VerificationSettings) -> KeyVerifier {
        KeyVerifier {
            backend,
            settings: Arc::new(settings),
        }
    }

    pub fn settings(&self) -> &VerificationSettings {
        &self.settings
    }

    /// The configured subject for a target.
    pub fn subject_for(&self, target: Target) -> Subject<'_> {
        Subject {
            profile: self.settings.profile_for(target),
            principal_arn: &self.settings.principal_arn,
            identity_policies: &self.settings.identity_policies,
        }
    }

    /// Verifies documents given inline.
    pub fn verify_documents(
        &self,
        subject: &Subject<'_>,
        metadata: Option<&KeyMetadata>,
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

    /// Verifies a key the backend holds: its metadata and its policy, as they are now.
    pub async fn verify_key(
        &self,
        key: &KeyArn,
        subject: &Subject<'_>,
    ) -> Result<Report, BackendError> {
        let (metadata, policy) = tokio::join!(
            self.backend.describe_key(key),
            self.backend.get_key_policy(key)
        );
        let metadata = match metadata {
            Ok(metadata) => metadata,
            Err(BackendError::NotFound { .. }) => {
                let finding =
                    Finding::error("KEY_NOT_FOUND", format!("key `{key}` does not exist"))
                        .with_fix("create the key, or check the Region and account in its ARN");
                return Ok(Report::new(subject.profile.name(), vec![finding]));
            }
            Err(e) => return Err(e),
        };
        Ok(self.verify_documents(subject, Some(&metadata), &policy?))
    }
}
