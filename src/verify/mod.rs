//! Verification of a KMS key and its policies before the key is put in use. A pure
//! library: no I/O. The service, the CLI and the tests all call [`verify`].
//!
//! Finding codes are stable; docs/verification.md documents each with an example.

pub mod condition;
pub mod eval;
pub mod json;
mod key;
pub mod policy;
pub mod profile;
pub mod render;
mod settings;

pub use key::{
    KeyMetadata, MultiRegionConfiguration, MultiRegionKey, parse_describe_key, verify_key_metadata,
};
pub use profile::Profile;
pub use render::{RenderError, render};
pub use settings::VerificationSettings;

use eval::{Caller, Decision, Request};
use policy::{Document, DocumentKind};

use serde::Serialize;

/// How much a finding matters; a report passes when it has no [`Severity::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Error,
    SecurityWarning,
    Warning,
    Suggestion,
}

/// Where in a policy document a finding points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub path: String,
    pub line: u32,
    pub column: u32,
}

/// One thing the verifier found. `code` is a stable UPPER_SNAKE string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn error(code: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            code,
            severity: Severity::Error,
            message: message.into(),
            sid: None,
            location: None,
            fix: None,
        }
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }

    pub fn at(mut self, location: Location) -> Finding {
        self.location = Some(location);
        self
    }
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub passed: bool,
    pub profile: String,
    pub findings: Vec<Finding>,
}

impl Report {
    /// A report over `findings`; `passed` is derived, never set by hand.
    pub fn new(profile: impl Into<String>, findings: Vec<Finding>) -> Report {
        Report {
            passed: !findings.iter().any(|f| f.severity == Severity::Error),
            profile: profile.into(),
            findings,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }
}

impl Finding {
    pub fn new(code: &'static str, severity: Severity, message: impl Into<String>) -> Finding {
        Finding {
            code,
            severity,
            message: message.into(),
            sid: None,
            location: None,
            fix: None,
        }
    }
}

/// Everything a verification looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub profile: Profile,
    /// The Region Inspector scans in (the sidecar's Region).
    pub region: &'a str,
    pub account_id: &'a str,
    /// The IAM principal that calls Inspector.
    pub principal_arn: &'a str,
    /// DescribeKey's metadata; `None` reports KEY_METADATA_NOT_CHECKED.
    pub key_metadata: Option<&'a KeyMetadata>,
    /// The key policy, as text.
    pub key_policy: &'a str,
    /// The principal's identity policies, as text; none supplied reports
    /// IDENTITY_POLICY_NOT_CHECKED where they would decide.
    pub identity_policies: &'a [String],
    /// `identity_policies` are all the principal has (read from IAM), so an empty list means
    /// it has none, not that none were supplied.
    pub identity_policies_complete: bool,
    /// The principal's permissions boundary, as text; `None`: it has none (or it is not
    /// known). It caps what identity policies, and key-policy grants to a role, allow.
    pub permissions_boundary: Option<&'a str>,
}

/// Verifies a key and its policies for a profile.
pub fn verify(input: &Input<'_>) -> Report {
    let mut findings = Vec::new();
    let key_arn = match input.key_metadata {
        Some(metadata) => {
            if let Err(e) = crate::domain::KeyArn::parse(&metadata.arn) {
                findings.push(
                    Finding::error("KEY_ARN_INVALID", format!("Inspector would refuse the key ARN: {e}"))
                        .with_fix("use a key whose ARN matches Inspector's pattern (multi-Region ids are mrk- and 32 letters or digits)"),
                );
            }
            findings.extend(verify_key_metadata(metadata, input.region));
            metadata.arn.clone()
        }
        None => {
            findings.push(Finding::new(
                "KEY_METADATA_NOT_CHECKED",
                Severity::Warning,
                "no key metadata was given, so the key's state, spec, usage, manager and Region were not checked",
            ));
            format!(
                "arn:{}:kms:{}:{}:key/00000000-0000-0000-0000-000000000000",
                crate::domain::partition_of(input.region),
                input.region,
                input.account_id
            )
        }
    };

    let (key_policy, key_findings) = policy::analyze(Document {
        kind: DocumentKind::KeyPolicy,
        name: "key_policy",
        text: input.key_policy,
    });
    findings.extend(key_findings);
    let mut identity = Vec::new();
    for (i, text) in input.identity_policies.iter().enumerate() {
        let name = format!("identity_policies[{i}]");
        let (parsed, identity_findings) = policy::analyze(Document {
            kind: DocumentKind::IdentityPolicy,
            name: &name,
            text,
        });
        findings.extend(identity_findings);
        identity.extend(parsed);
    }
    let boundary = input.permissions_boundary.and_then(|text| {
        let (parsed, boundary_findings) = policy::analyze(Document {
            kind: DocumentKind::IdentityPolicy,
            name: "permissions_boundary",
            text,
        });
        findings.extend(boundary_findings);
        parsed
    });
    if let Some(key_policy) = key_policy {
        let supplied = (input.identity_policies_complete || !input.identity_policies.is_empty())
            .then_some(identity.as_slice());
        let policies = Policies {
            key_policy: &key_policy,
            identity: supplied,
            boundary: boundary.as_ref(),
        };
        requirement_findings(input, &key_arn, &policies, &mut findings);
    }
    Report::new(input.profile.name(), findings)
}

fn context_value<'r>(request: &'r Request, key: &str) -> Option<&'r [String]> {
    request
        .context
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_slice())
}

/// `arn:aws:iam::111122223333:role/x calling kms:Decrypt via inspector2.us-east-1.amazonaws.com`.
fn describe(request: &Request) -> String {
    let who = match &request.caller {
        Caller::Aws { arn, .. } => format!("`{arn}`"),
        Caller::Service(service) => format!("service `{service}`"),
    };
    let via = context_value(request, "kms:ViaService")
        .map(|v| format!(" via {}", v.join(", ")))
        .unwrap_or_default();
    let operations = context_value(request, "kms:GrantOperations")
        .map(|v| format!(" for grant operations {}", v.join(", ")))
        .unwrap_or_default();
    format!("{who} calling {}{via}{operations}", request.action)
}

/// The parsed policies a request is decided against.
struct Policies<'p> {
    key_policy: &'p policy::Policy,
    identity: Option<&'p [policy::Policy]>,
    boundary: Option<&'p policy::Policy>,
}

impl Policies<'_> {
    fn decide(&self, request: &Request) -> Decision {
        eval::decide_bounded(self.key_policy, self.identity, self.boundary, request)
    }

    /// The permissions boundary alone denies `request` (implicitly): without it, the
    /// other policies allow it, or leave it to identity policies that were not supplied.
    fn boundary_caps(&self, request: &Request) -> bool {
        self.boundary.is_some()
            && matches!(
                eval::decide(self.key_policy, self.identity, request),
                Decision::Allow | Decision::IdentityPolicyNotChecked
            )
    }
}

fn requirement_findings(
    input: &Input<'_>,
    key_arn: &str,
    policies: &Policies<'_>,
    findings: &mut Vec<Finding>,
) {
    let key_policy = policies.key_policy;
    let params = profile::Params {
        region: input.region,
        account_id: input.account_id,
        principal_arn: input.principal_arn,
        key_arn,
    };
    let requirements = input.profile.requirements(&params);
    let target = match input.profile.document_kind() {
        DocumentKind::KeyPolicy => "key policy",
        DocumentKind::IdentityPolicy => "principal's identity policy",
    };
    let mut not_checked = Vec::new();
    for required in &requirements.required {
        let request = &required.request;
        let statement = requirements.statements.get(required.statement);
        let statement_json = statement.map(|s| serde_json::to_string(s).unwrap_or_default());
        match policies.decide(request) {
            Decision::Allow => {}
            Decision::IdentityPolicyNotChecked => {
                if !not_checked.contains(&request.action) {
                    not_checked.push(request.action.clone());
                }
            }
            Decision::ExplicitDeny { sid, location } => findings.push(Finding {
                code: "REQUIRED_ACCESS_EXPLICITLY_DENIED",
                severity: Severity::Error,
                message: format!(
                    "{} is denied by statement {} ({}); Inspector's scanning partner needs it",
                    describe(request),
                    sid.as_deref()
                        .map_or_else(|| "without a Sid".to_owned(), |s| format!("`{s}`")),
                    location.path
                ),
                fix: Some(
                    "narrow or remove the denying statement so it does not cover this request"
                        .into(),
                ),
                sid,
                location: Some(location),
            }),
            Decision::ImplicitDeny if policies.boundary_caps(request) => findings.push(
                Finding::error(
                    "REQUIRED_ACCESS_MISSING",
                    format!(
                        "{} is not allowed: the principal's permissions boundary does not allow it (a boundary caps what identity policies, and key-policy statements naming a role, allow)",
                        describe(request)
                    ),
                )
                .with_fix(format!(
                    "allow {} in the permissions boundary policy, or remove the boundary from the principal",
                    request.action
                ))
                .at(Location {
                    path: "permissions_boundary".into(),
                    line: 1,
                    column: 1,
                }),
            ),
            Decision::ImplicitDeny => {
                // Is the key policy missing it, or (the key policy delegating to the
                // account) the identity policy?
                let key_policy_delegates =
                    eval::decide(key_policy, None, request) == Decision::IdentityPolicyNotChecked;
                let (where_missing, fix) = match (
                    &request.caller,
                    input.profile.document_kind(),
                    key_policy_delegates,
                ) {
                    (Caller::Aws { .. }, DocumentKind::IdentityPolicy, false) => (
                        "the key policy neither allows the principal nor delegates to its account"
                            .to_owned(),
                        serde_json::to_string(&profile::account_delegation_statement(
                            input.region,
                            input.account_id,
                        ))
                        .unwrap_or_default(),
                    ),
                    _ => (
                        format!("no statement of the {target} allows it"),
                        statement_json.unwrap_or_default(),
                    ),
                };
                findings.push(Finding {
                    code: "REQUIRED_ACCESS_MISSING",
                    severity: Severity::Error,
                    message: format!("{} is not allowed: {where_missing}", describe(request)),
                    sid: statement
                        .and_then(|s| s.get("Sid"))
                        .and_then(|s| s.as_str())
                        .map(str::to_owned),
                    location: None,
                    fix: Some(fix),
                });
            }
        }
    }
    if !not_checked.is_empty() {
        findings.push(
            Finding::new(
                "IDENTITY_POLICY_NOT_CHECKED",
                Severity::Warning,
                format!(
                    "the key policy delegates to the account, so the identity policies of `{}` decide whether it may call {}, and none were given",
                    input.principal_arn,
                    not_checked.join(", ")
                ),
            )
            .with_fix("pass the principal's identity policies (--identity-policy, or verification.identity_policy_files in the config)"),
        );
    }
    probe_broader_than_needed(input, &requirements, policies, findings);
}

/// Warnings for access wider than the profile needs: grants for any operation, and use of
/// the key outside the services that need it.
fn probe_broader_than_needed(
    input: &Input<'_>,
    requirements: &profile::Requirements,
    policies: &Policies<'_>,
    findings: &mut Vec<Finding>,
) {
    for required in &requirements.required {
        let request = &required.request;
        if request.action.eq_ignore_ascii_case("kms:CreateGrant") {
            let mut probe = request.clone();
            for (key, values) in &mut probe.context {
                if key.eq_ignore_ascii_case("kms:GrantOperations") {
                    *values = profile::ALL_GRANT_OPERATIONS.map(str::to_owned).to_vec();
                }
            }
            if policies.decide(&probe) == Decision::Allow {
                findings.push(
                    Finding::new(
                        "GRANT_OPERATIONS_UNRESTRICTED",
                        Severity::SecurityWarning,
                        format!(
                            "{} is allowed with every grant operation, not only {}",
                            describe(request),
                            profile::GRANT_OPERATIONS.join(", ")
                        ),
                    )
                    .with_fix("limit kms:GrantOperations with ForAllValues:StringEquals to the operations the profile lists"),
                );
            }
        }
    }
    let mut unrestricted: Vec<String> = Vec::new();
    for required in &requirements.required {
        let request = &required.request;
        if !matches!(request.caller, Caller::Aws { .. })
            || context_value(request, "kms:ViaService").is_none()
        {
            continue;
        }
        let mut probe = request.clone();
        probe
            .context
            .retain(|(k, _)| !k.eq_ignore_ascii_case("kms:ViaService"));
        if policies.decide(&probe) == Decision::Allow && !unrestricted.contains(&request.action) {
            unrestricted.push(request.action.clone());
        }
    }
    if !unrestricted.is_empty() {
        findings.push(
            Finding::new(
                "VIA_SERVICE_UNRESTRICTED",
                Severity::SecurityWarning,
                format!(
                    "`{}` may call {} directly, not only through the services that need the key",
                    input.principal_arn,
                    unrestricted.join(", ")
                ),
            )
            .with_fix("condition the statements on kms:ViaService"),
        );
    }
}
