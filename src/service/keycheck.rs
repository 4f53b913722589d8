//! Verifying a key the backend holds, for a target's profile: shared by the Update gate,
//! VerifyKeyPolicy and the drift watch. Reads the key as it is now (never cached), and the
//! principal's identity policies and permissions boundary from the backend's IAM (kept there
//! for the drift interval) unless they are given or configured.

use std::sync::Arc;

use crate::{
    backend::{Backend, BackendError, PrincipalPolicies},
    domain::{KeyArn, Scope, Target},
    scopes::ManagedScopes,
    verify::{self, Finding, FindingCode, KeyMetadata, Profile, Report, VerificationSettings},
};

/// Whose access a verification checks, and where.
pub struct Subject<'a> {
    pub profile: Profile,
    pub principal_arn: &'a str,
    pub identity_policies: &'a [String],
    /// The scope's settings: its Region, account, configured principal and trust.
    pub settings: &'a VerificationSettings,
}

/// The finding verification leaves where the identity policies could not be used.
const NOT_CHECKED: FindingCode = FindingCode::IdentityPolicyNotChecked;

/// The principal's policies as IAM holds them, or why IAM could not be read; `None` when
/// they were given or configured, or the backend has no IAM.
type FromIam = Option<Result<Arc<PrincipalPolicies>, BackendError>>;

/// Where a verification's identity policies and boundary come from.
enum Sources {
    /// The request's alone (inline documents).
    Given,
    /// The request's, else the configuration's; the configured boundary.
    GivenOrConfigured,
    /// IAM's answer for the configured principal.
    Iam(Result<Arc<PrincipalPolicies>, BackendError>),
}

/// Verifies keys through the backend.
#[derive(Clone)]
pub struct KeyVerifier {
    backend: Arc<dyn Backend>,
    scopes: Arc<ManagedScopes>,
}

impl KeyVerifier {
    pub fn new(backend: Arc<dyn Backend>, scopes: Arc<ManagedScopes>) -> KeyVerifier {
        KeyVerifier { backend, scopes }
    }

    /// The managed scopes.
    pub fn scopes(&self) -> &ManagedScopes {
        &self.scopes
    }

    /// The key the alias `alias_name` names in `scope`, as the backend's KMS resolves it.
    pub async fn resolve_alias(
        &self,
        scope: Scope,
        alias_name: &str,
    ) -> Result<Option<KeyArn>, BackendError> {
        self.backend.resolve_alias(scope, alias_name).await
    }

    /// The settings of the sidecar's own scope.
    pub fn settings(&self) -> &VerificationSettings {
        self.scopes.own_settings()
    }

    /// The settings of `scope` (the own scope's when it is not managed, which requests are
    /// checked for before).
    pub fn settings_in(&self, scope: Scope) -> Arc<VerificationSettings> {
        self.scopes.settings(scope).map_or_else(
            || self.scopes.own_settings().clone(),
            |s| s.verification.clone(),
        )
    }
}

impl<'a> Subject<'a> {
    /// The configured subject for `target` in the scope of `settings`.
    pub fn configured(settings: &'a VerificationSettings, target: Target) -> Subject<'a> {
        Subject {
            profile: settings.profile_for(target),
            principal_arn: &settings.principal_arn,
            identity_policies: &settings.identity_policies,
            settings,
        }
    }
}

impl KeyVerifier {
    /// The principal's policies from IAM, when nothing gives them: no identity policies in
    /// the request, none configured, and the principal is the configured one (the sidecar
    /// reads no other principal's policies).
    async fn policies_from_iam(&self, subject: &Subject<'_>) -> FromIam {
        if !subject.identity_policies.is_empty()
            || subject.settings.policies_configured()
            || subject.principal_arn != subject.settings.principal_arn
        {
            return None;
        }
        self.backend
            .principal_policies(subject.principal_arn)
            .await
            .transpose()
    }

    /// Verifies documents given inline, with only what the caller gave: never the configured
    /// principal's identity policies, boundary or IAM, which a read-only caller may not learn
    /// from the findings (and reading IAM would be a backend call on its behalf). Without
    /// identity policies the report says they, and any boundary, were not checked.
    pub fn verify_inline(
        &self,
        subject: &Subject<'_>,
        metadata: Option<&KeyMetadata>,
        key_policy: &str,
    ) -> Report {
        let mut report = self.verify_with(subject, &Sources::Given, metadata, key_policy);
        if subject.identity_policies.is_empty()
            && !report.findings.iter().any(|f| f.code == NOT_CHECKED)
        {
            report.findings.push(
                Finding::new(NOT_CHECKED,
                    format!(
                        "no identity policies were given, so the identity policies and permissions boundary of `{}` (their explicit denies, a boundary's cap on what the key policy grants a role) were not checked: inline verification uses only the documents in the request",
                        subject.principal_arn
                    ),
                )
                .with_fix("pass the principal's identity policies with the request (identity_policies), or verify the stored key by its ARN"),
            );
        }
        report
    }

    /// Verifies a key the backend holds: its metadata and its policy, as they are now.
    pub async fn verify_key(
        &self,
        key: &KeyArn,
        subject: &Subject<'_>,
    ) -> Result<Report, BackendError> {
        let (metadata, policy, from_iam, grants) = tokio::join!(
            self.backend.describe_key(key),
            self.backend.get_key_policy(key),
            self.policies_from_iam(subject),
            self.backend.list_grants(key)
        );
        let sources = match from_iam {
            Some(read) => Sources::Iam(read),
            None => Sources::GivenOrConfigured,
        };
        let metadata = match metadata {
            Ok(metadata) => metadata,
            Err(BackendError::NotFound { .. }) => {
                let finding = Finding::new(
                    FindingCode::KeyNotFound,
                    format!("key `{key}` does not exist"),
                )
                .with_fix("create the key, or check the Region and account in its ARN");
                return Ok(Report::new(subject.profile.name(), vec![finding]));
            }
            Err(e) => return Err(e),
        };
        let mut report = self.verify_with(subject, &sources, Some(&metadata), &policy?);
        if let Some(grants) = grants? {
            verify::access::add_grants(
                &mut report,
                &grants,
                &verify::access::Subject {
                    account_id: &subject.settings.account_id,
                    key_arn: &metadata.arn,
                    principal_arn: Some(subject.principal_arn),
                    identity_policies: None,
                    boundary: None,
                    trust: subject.settings.trust(),
                },
            );
        }
        Ok(report)
    }

    fn verify_with(
        &self,
        subject: &Subject<'_>,
        sources: &Sources,
        metadata: Option<&KeyMetadata>,
        key_policy: &str,
    ) -> Report {
        let read: Vec<String>;
        let (identity_policies, identity_policies_complete, permissions_boundary) = match sources {
            Sources::Iam(Ok(policies)) => {
                read = policies
                    .identity_policies
                    .iter()
                    .map(|p| p.document.clone())
                    .collect();
                let boundary = policies.permissions_boundary.as_ref();
                (read.as_slice(), true, boundary.map(|b| b.document.as_str()))
            }
            Sources::Given => (subject.identity_policies, false, None),
            Sources::GivenOrConfigured | Sources::Iam(Err(_)) => (
                subject.identity_policies,
                false,
                subject.settings.permissions_boundary.as_deref(),
            ),
        };
        let mut report = verify::verify(&verify::Input {
            profile: subject.profile,
            region: &subject.settings.region,
            account_id: &subject.settings.account_id,
            principal_arn: subject.principal_arn,
            key_metadata: metadata,
            key_policy,
            identity_policies,
            identity_policies_complete,
            permissions_boundary,
            trust: subject.settings.trust(),
        });
        match sources {
            Sources::Iam(Ok(policies)) => name_sources(&mut report, policies),
            Sources::Iam(Err(error)) => note_unread(&mut report, subject.principal_arn, error),
            Sources::Given | Sources::GivenOrConfigured => {}
        }
        report
    }
}

/// Says which IAM policy a finding's `identity_policies[i]` or `permissions_boundary` is.
fn name_sources(report: &mut Report, policies: &PrincipalPolicies) {
    for finding in &mut report.findings {
        let Some(path) = finding.location.as_ref().map(|l| l.path.as_str()) else {
            continue;
        };
        let named = if let Some(rest) = path.strip_prefix("identity_policies[") {
            let index = rest.split(']').next().unwrap_or_default();
            index
                .parse::<usize>()
                .ok()
                .and_then(|i| policies.identity_policies.get(i))
                .map(|p| (format!("identity_policies[{index}]"), &p.source))
        } else if path.starts_with("permissions_boundary") {
            policies
                .permissions_boundary
                .as_ref()
                .map(|p| ("the permissions boundary".to_owned(), &p.source))
        } else {
            None
        };
        if let Some((name, source)) = named {
            finding
                .message
                .push_str(&format!("; {name} is IAM's {source}"));
        }
    }
}

/// Why the principal's policies could not be read, in the sidecar's words: AWS's text went
/// to the log when the call failed.
fn unread_reason(error: &BackendError) -> String {
    match error {
        BackendError::AccessDenied { message } => format!("IAM refused the sidecar's {message}"),
        BackendError::NotFound { what } => format!("{what} does not exist in IAM"),
        BackendError::InvalidRequest { message, .. } => message.clone(),
        BackendError::Throttled { .. } => "IAM throttled the sidecar's reads".into(),
        BackendError::Unavailable { .. } => "IAM could not be reached".into(),
        BackendError::Timeout => "IAM did not answer in time".into(),
        other => {
            tracing::warn!(error = %other, "the principal's policies could not be read from IAM");
            "IAM's answer could not be used (the sidecar's log says why)".into()
        }
    }
}

/// IDENTITY_POLICY_NOT_CHECKED, saying why IAM could not be read: on the finding the
/// verification left (the key policy delegates), or as a new one, since the identity
/// policies' denies and the boundary's cap on a role went unchecked either way.
fn note_unread(report: &mut Report, principal_arn: &str, error: &BackendError) {
    let reason = unread_reason(error);
    let fix = "let the sidecar read the principal's policies from IAM (the read-only IAM actions of deploy/iam/sidecar-policy.json), or configure verification.identity_policy_files";
    match report.findings.iter_mut().find(|f| f.code == NOT_CHECKED) {
        Some(finding) => {
            finding
                .message
                .push_str(&format!("; reading them from IAM failed: {reason}"));
            finding.fix = Some(fix.into());
        }
        None => report.findings.push(
            Finding::new(NOT_CHECKED,
                format!(
                    "the identity policies and permissions boundary of `{principal_arn}` could not be read from IAM ({reason}), so their explicit denies, and a boundary's cap on what the key policy grants a role, were not checked"
                ),
            )
            .with_fix(fix),
        ),
    }
}
