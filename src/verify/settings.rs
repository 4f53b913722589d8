//! What keys are verified against, for the service's Update gate, VerifyKeyPolicy and drift
//! watch, and for the local backend's scanning service, which uses keys for exactly what
//! Update verified them for: one set of settings for both.

use crate::domain::{ResourceType, Target};

use super::{
    Profile, access,
    policy::{Document, DocumentKind, Policy, analyze},
};

/// The sidecar's Region and account, the principal that calls Inspector with its identity
/// policies, and the profile per target.
#[derive(Debug, Clone)]
pub struct VerificationSettings {
    pub region: String,
    pub account_id: String,
    pub principal_arn: String,
    /// The configured identity policy documents of the principal, as written.
    pub identity_policies: Vec<String>,
    /// The same, parsed (documents that do not parse are left out: verification reports
    /// them); `None` when none are configured, and the account is then assumed to allow
    /// what its key policies delegate (IDENTITY_POLICY_NOT_CHECKED says so).
    pub parsed_identity_policies: Option<Vec<Policy>>,
    /// The configured permissions boundary of the principal, as written; `None`: none
    /// configured.
    pub permissions_boundary: Option<String>,
    /// The same, parsed (`None` also when it does not parse: verification reports it).
    pub parsed_permissions_boundary: Option<Policy>,
    pub lambda_profile: Profile,
    pub code_repository_profile: Profile,
    /// Accounts whose access to a key is not external, besides the sidecar's own.
    pub trusted_accounts: Vec<String>,
    /// The AWS Organizations id whose principals' access is not external; `None`: none.
    pub organization_id: Option<String>,
    /// `EXTERNAL_ACCESS` is an ERROR (the Update gate refuses the key) rather than a
    /// SECURITY_WARNING.
    pub deny_external_access: bool,
}

impl VerificationSettings {
    pub fn new(
        region: String,
        account_id: String,
        principal_arn: String,
        identity_policies: Vec<String>,
        permissions_boundary: Option<String>,
        lambda_profile: Profile,
        code_repository_profile: Profile,
    ) -> VerificationSettings {
        let parsed_identity_policies = (!identity_policies.is_empty()).then(|| {
            identity_policies
                .iter()
                .enumerate()
                .filter_map(|(i, text)| {
                    analyze(Document {
                        kind: DocumentKind::IdentityPolicy,
                        name: &format!("identity_policies[{i}]"),
                        text,
                    })
                    .0
                })
                .collect()
        });
        let parsed_permissions_boundary = permissions_boundary.as_deref().and_then(|text| {
            analyze(Document {
                kind: DocumentKind::IdentityPolicy,
                name: "permissions_boundary",
                text,
            })
            .0
        });
        VerificationSettings {
            region,
            account_id,
            principal_arn,
            identity_policies,
            parsed_identity_policies,
            permissions_boundary,
            parsed_permissions_boundary,
            lambda_profile,
            code_repository_profile,
            trusted_accounts: Vec::new(),
            organization_id: None,
            deny_external_access: false,
        }
    }

    /// The same settings with these accounts and organization trusted, and external access
    /// an ERROR when `deny_external_access`.
    pub fn with_trust(
        self,
        trusted_accounts: Vec<String>,
        organization_id: Option<String>,
        deny_external_access: bool,
    ) -> VerificationSettings {
        VerificationSettings {
            trusted_accounts,
            organization_id,
            deny_external_access,
            ..self
        }
    }

    /// The settings in another account or Region, for `principal_arn` there. The configured
    /// identity policies and boundary are the sidecar's own principal's: in another account
    /// none are known (IDENTITY_POLICY_NOT_CHECKED says so); in another Region of its own
    /// account, with the same principal, they stay.
    pub fn in_scope(
        &self,
        region: &str,
        account_id: &str,
        principal_arn: &str,
    ) -> VerificationSettings {
        let same_principal = account_id == self.account_id && principal_arn == self.principal_arn;
        let mut settings = VerificationSettings::new(
            region.to_owned(),
            account_id.to_owned(),
            principal_arn.to_owned(),
            if same_principal {
                self.identity_policies.clone()
            } else {
                Vec::new()
            },
            self.permissions_boundary.clone().filter(|_| same_principal),
            self.lambda_profile,
            self.code_repository_profile,
        );
        settings.trusted_accounts = self.trusted_accounts.clone();
        settings.organization_id = self.organization_id.clone();
        settings.deny_external_access = self.deny_external_access;
        settings
    }

    /// Who is inside, for the access summary's `EXTERNAL_ACCESS`.
    pub fn trust(&self) -> access::Trust<'_> {
        access::Trust {
            trusted_accounts: &self.trusted_accounts,
            organization_id: self.organization_id.as_deref(),
            deny_external_access: self.deny_external_access,
        }
    }

    /// Whether the principal's policies are configured (identity policy files or a
    /// permissions boundary file): then they are what verification uses, and IAM is not read.
    pub fn policies_configured(&self) -> bool {
        !self.identity_policies.is_empty() || self.permissions_boundary.is_some()
    }

    pub fn profile_for(&self, target: Target) -> Profile {
        match target.resource_type() {
            ResourceType::CodeRepository => self.code_repository_profile,
            _ => self.lambda_profile,
        }
    }
}
