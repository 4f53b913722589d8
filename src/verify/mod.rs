//! Verification of a KMS key and its policies before the key is put in use. A pure
//! library: no I/O. The service, the CLI and the tests all call [`verify`].
//!
//! Finding codes are stable; docs/verification.md documents each with an example.

pub mod access;
pub mod classes;
mod codes;
pub mod condition;
pub mod eval;
pub mod json;
mod key;
pub mod policy;
pub mod profile;
pub mod render;
mod settings;
pub mod variables;
pub mod wildcard;

pub use codes::FindingCode;
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

impl Severity {
    /// The wire name, as reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::SecurityWarning => "SECURITY_WARNING",
            Severity::Warning => "WARNING",
            Severity::Suggestion => "SUGGESTION",
        }
    }
}

/// Where in a policy document a finding points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub path: String,
    pub line: u32,
    pub column: u32,
}

/// One thing the verifier found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: FindingCode,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The profile's requests the finding is about (one finding per cause, listing every
    /// request it affects), such as `kms:Decrypt via inspector2.us-east-1.amazonaws.com`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<String>,
}

impl Finding {
    /// A finding of `code`, at the severity the code declares.
    pub fn new(code: FindingCode, message: impl Into<String>) -> Finding {
        Finding {
            code,
            severity: code.severity(),
            message: message.into(),
            sid: None,
            location: None,
            fix: None,
            requests: Vec::new(),
        }
    }

    /// The message followed by the requests the finding is about, for a single line such
    /// as a gRPC error's description.
    pub fn message_with_requests(&self) -> String {
        if self.requests.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.message, self.requests.join("; "))
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
    /// Who can read the code and who can break scanning; `None` when the key policy did
    /// not parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<access::AccessSummary>,
}

impl Report {
    /// A report over `findings`; `passed` is derived, never set by hand.
    pub fn new(profile: impl Into<String>, findings: Vec<Finding>) -> Report {
        Report {
            passed: !findings.iter().any(|f| f.severity == Severity::Error),
            profile: profile.into(),
            findings,
            access: None,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
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
    /// Which accounts and organization are inside, for `EXTERNAL_ACCESS`.
    pub trust: access::Trust<'a>,
}

/// Verifies a key and its policies for a profile.
pub fn verify(input: &Input<'_>) -> Report {
    let mut findings = Vec::new();
    let key_arn = match input.key_metadata {
        Some(metadata) => {
            if let Err(e) = crate::domain::KeyArn::parse(&metadata.arn) {
                findings.push(
                    Finding::new(FindingCode::KeyArnInvalid, format!("Inspector would refuse the key ARN: {e}"))
                        .with_fix("use a key whose ARN matches Inspector's pattern (multi-Region ids are mrk- and 32 letters or digits)"),
                );
            }
            findings.extend(verify_key_metadata(metadata, input.region));
            metadata.arn.clone()
        }
        None => {
            findings.push(Finding::new(
                FindingCode::KeyMetadataNotChecked,
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
        let summary = access::summarize(
            &key_policy,
            &access::Subject {
                account_id: input.account_id,
                key_arn: &key_arn,
                principal_arn: Some(input.principal_arn),
                identity_policies: supplied,
                boundary: boundary.as_ref(),
                trust: input.trust,
            },
        );
        findings.extend(access::findings(&summary, input.trust));
        let mut report = Report::new(input.profile.name(), findings);
        report.access = Some(summary);
        return report;
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

/// Who makes a request: `` `arn:aws:iam::111122223333:role/x` `` or `service `q.amazonaws.com``.
fn caller_name(request: &Request) -> String {
    match &request.caller {
        Caller::Aws { arn, .. } => format!("`{arn}`"),
        Caller::Service(service) => format!("service `{service}`"),
    }
}

/// `kms:CreateGrant via codeguru-security.us-east-1.amazonaws.com for grant operations ...`.
fn describe_request(request: &Request) -> String {
    let via = context_value(request, "kms:ViaService")
        .map(|v| format!(" via {}", v.join(", ")))
        .unwrap_or_default();
    let source = match request.caller {
        Caller::Service(_) => context_value(request, "aws:SourceArn")
            .map(|v| format!(" for {}", v.join(", ")))
            .unwrap_or_default(),
        Caller::Aws { .. } => String::new(),
    };
    let operations = context_value(request, "kms:GrantOperations")
        .map(|v| format!(" for grant operations {}", v.join(", ")))
        .unwrap_or_default();
    format!("{}{via}{source}{operations}", request.action)
}

/// `arn:aws:iam::111122223333:role/x calling kms:Decrypt via inspector2.us-east-1.amazonaws.com`.
fn describe(request: &Request) -> String {
    format!(
        "{} calling {}",
        caller_name(request),
        describe_request(request)
    )
}

/// Findings that share a cause, in the order their first request came.
struct Groups<K> {
    groups: Vec<(K, Finding)>,
}

impl<K: PartialEq> Groups<K> {
    fn new() -> Self {
        Groups { groups: Vec::new() }
    }

    /// Adds `request` to the finding for `key`, made by `make` the first time.
    fn add(&mut self, key: K, request: &Request, make: impl FnOnce() -> Finding) {
        let described = describe_request(request);
        match self.groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, finding)) => {
                if !finding.requests.contains(&described) {
                    finding.requests.push(described);
                }
            }
            None => {
                let mut finding = make();
                finding.requests.push(described);
                self.groups.push((key, finding));
            }
        }
    }

    fn into_findings(self) -> impl Iterator<Item = Finding> {
        self.groups.into_iter().map(|(_, finding)| finding)
    }
}

/// Why a required request is not allowed, one finding per cause.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MissingCause {
    /// The key policy neither allows the principal nor delegates to its account.
    NoDelegation,
    /// The profile's statement (by index) is missing or does not cover the request.
    Statement(usize),
    /// The principal's permissions boundary does not allow the request.
    Boundary,
}

/// The statement a deny decision names, found by its location.
fn statement_at<'p>(
    key_policy: &'p policy::Policy,
    identity: Option<&'p [policy::Policy]>,
    location: &Location,
) -> Option<&'p policy::Statement> {
    key_policy
        .statements
        .iter()
        .chain(identity.into_iter().flatten().flat_map(|p| &p.statements))
        .find(|s| s.location == *location)
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

/// The findings about the profile's required requests the policies do not allow, one per
/// cause, then those about unknown condition keys and broader access than needed.
fn requirement_findings(
    input: &Input<'_>,
    key_arn: &str,
    policies: &Policies<'_>,
    findings: &mut Vec<Finding>,
) {
    let params = profile::Params {
        region: input.region,
        account_id: input.account_id,
        principal_arn: input.principal_arn,
        key_arn,
    };
    let requirements = input.profile.requirements(&params);
    let mut denied: Groups<(Location, String, bool)> = Groups::new();
    let mut missing: Groups<MissingCause> = Groups::new();
    let mut not_checked: Groups<()> = Groups::new();
    for required in &requirements.required {
        let request = &required.request;
        match policies.decide(request) {
            Decision::Allow => {}
            Decision::IdentityPolicyNotChecked => not_checked.add((), request, || {
                identity_policy_not_checked_finding(input.principal_arn)
            }),
            Decision::ExplicitDeny { sid, location } => {
                add_explicit_deny(&mut denied, input, policies, request, sid, location);
            }
            Decision::ImplicitDeny if policies.boundary_caps(request) => {
                missing.add(MissingCause::Boundary, request, || {
                    boundary_finding(request)
                });
            }
            Decision::ImplicitDeny => {
                add_implicit_deny(&mut missing, input, &requirements, policies, required);
            }
        }
    }
    findings.extend(denied.into_findings());
    findings.extend(missing.into_findings());
    findings.extend(not_checked.into_findings());
    let (key_policy, identity) = (policies.key_policy, policies.identity);
    unknown_key_findings(&requirements, key_policy, identity, findings);
    probe_broader_than_needed(input, &requirements, policies, findings);
}

/// The key policy delegates to the account and no identity policies of `principal_arn`
/// were given to decide.
fn identity_policy_not_checked_finding(principal_arn: &str) -> Finding {
    Finding::new(
        FindingCode::IdentityPolicyNotChecked,
        format!(
            "the key policy delegates to the account, so the identity policies of `{principal_arn}` decide whether it may make the requests listed, and none were given"
        ),
    )
    .with_fix("pass the principal's identity policies (--identity-policy, or verification.identity_policy_files in the config)")
}

/// Adds `request`, denied by the statement at `location`, to the finding for that
/// statement and caller.
fn add_explicit_deny(
    denied: &mut Groups<(Location, String, bool)>,
    input: &Input<'_>,
    policies: &Policies<'_>,
    request: &Request,
    sid: Option<String>,
    location: Location,
) {
    let statement = statement_at(policies.key_policy, policies.identity, &location);
    let not_principal = match statement.map(|s| &s.principal) {
        Some(policy::PrincipalElement::NotPrincipal(listed)) => {
            eval::not_principal_lists_without_exempting(listed, &request.caller)
        }
        _ => false,
    };
    let named = sid
        .as_deref()
        .map_or_else(|| "without a Sid".to_owned(), |s| format!("`{s}`"));
    let key = (location.clone(), caller_name(request), not_principal);
    denied.add(key, request, || {
        let mut finding = if not_principal {
            not_principal_finding(input, &named, &location)
        } else {
            explicitly_denied_finding(request, &named, &location)
        };
        finding.sid = sid;
        finding.location = Some(location);
        finding
    });
}

/// The statement `named` at `location` denies the caller of `request` what it needs.
fn explicitly_denied_finding(request: &Request, named: &str, location: &Location) -> Finding {
    Finding {
        code: FindingCode::RequiredAccessExplicitlyDenied,
        severity: FindingCode::RequiredAccessExplicitlyDenied.severity(),
        message: format!(
            "statement {named} ({}) denies {} the requests listed, which Inspector's scanning partner needs",
            location.path,
            caller_name(request),
        ),
        sid: None,
        location: None,
        fix: Some(
            "narrow or remove the denying statement so it does not cover these requests".into(),
        ),
        requests: Vec::new(),
    }
}

/// The caller's permissions boundary alone does not allow `request`.
fn boundary_finding(request: &Request) -> Finding {
    Finding::new(
        FindingCode::RequiredAccessMissing,
        format!(
            "the permissions boundary of {} does not allow the requests listed (a boundary caps what identity policies, and key-policy statements naming a role, allow)",
            caller_name(request)
        ),
    )
    .with_fix("allow these requests in the permissions boundary policy, or remove the boundary from the principal")
    .at(Location {
        path: "permissions_boundary".into(),
        line: 1,
        column: 1,
    })
}

/// Adds `required`'s request, which no statement allows, to the finding for what is
/// missing: the key policy's delegation to the account, or the profile's statement.
fn add_implicit_deny(
    missing: &mut Groups<MissingCause>,
    input: &Input<'_>,
    requirements: &profile::Requirements,
    policies: &Policies<'_>,
    required: &profile::Required,
) {
    let request = &required.request;
    // Is the key policy missing it, or (the key policy delegating to the account) the
    // identity policy?
    let key_policy_delegates =
        eval::decide(policies.key_policy, None, request) == Decision::IdentityPolicyNotChecked;
    let no_delegation = matches!(request.caller, Caller::Aws { .. })
        && input.profile.document_kind() == DocumentKind::IdentityPolicy
        && !key_policy_delegates;
    if no_delegation {
        missing.add(MissingCause::NoDelegation, request, || {
            Finding::new(
                FindingCode::RequiredAccessMissing,
                format!(
                    "the key policy neither allows {} nor delegates to its account, so none of the requests listed is allowed",
                    caller_name(request)
                ),
            )
            .with_fix(
                serde_json::to_string(&profile::account_delegation_statement(
                    input.region,
                    input.account_id,
                ))
                .unwrap_or_default(),
            )
        });
        return;
    }
    let target = match input.profile.document_kind() {
        DocumentKind::KeyPolicy => "key policy",
        DocumentKind::IdentityPolicy => "principal's identity policy",
    };
    let statement = requirements.statements.get(required.statement);
    missing.add(MissingCause::Statement(required.statement), request, || {
        let mut finding = Finding::new(
            FindingCode::RequiredAccessMissing,
            format!(
                "no statement of the {target} allows {} the requests listed",
                caller_name(request)
            ),
        );
        finding.sid = statement
            .and_then(|s| s.get("Sid"))
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        finding.fix = statement.map(|s| serde_json::to_string(s).unwrap_or_default());
        finding
    });
}

/// The finding for a `NotPrincipal` that lists the principal (or its account) but does not
/// exempt it: IAM exempts a role's session only when the session's own ARN is listed too,
/// and a user only with its account.
fn not_principal_finding(input: &Input<'_>, named: &str, location: &Location) -> Finding {
    let principal = input.principal_arn;
    let why = if matches!(
        crate::domain::IamPrincipal::parse(principal),
        Some(crate::domain::IamPrincipal::Role(_))
    ) {
        "the role acts as an assumed-role session, which NotPrincipal exempts only when the session's own ARN is listed as well, and a session's name is not known in advance"
    } else {
        "IAM exempts a user only when NotPrincipal lists the user and its account"
    };
    Finding::new(
        FindingCode::NotPrincipalDoesNotExempt,
        format!(
            "statement {named} ({}) denies everyone not in NotPrincipal, which names `{principal}` or its account; {why}, so the requests listed are denied",
            location.path
        ),
    )
    .with_fix(format!(
        "replace NotPrincipal with \"Principal\": \"*\" and exempt the principal with a condition: \"Condition\": {{\"ArnNotEquals\": {{\"aws:PrincipalArn\": \"{principal}\"}}}}"
    ))
}

/// One WARNING per condition key whose value the verifier does not know on a request it
/// checks (it was evaluated as absent), pointing at the first condition on it.
fn unknown_key_findings(
    requirements: &profile::Requirements,
    key_policy: &policy::Policy,
    identity: Option<&[policy::Policy]>,
    findings: &mut Vec<Finding>,
) {
    // The condition keys the policies use, once each; most policies use none the requests
    // lack, and then no statement needs a second look.
    let mut keys: Vec<&str> = Vec::new();
    for statement in key_policy
        .statements
        .iter()
        .chain(identity.into_iter().flatten().flat_map(|p| &p.statements))
    {
        for condition in &statement.conditions {
            if !keys.iter().any(|k| k.eq_ignore_ascii_case(&condition.key)) {
                keys.push(&condition.key);
            }
        }
    }
    let mut unknown: Groups<String> = Groups::new();
    for required in &requirements.required {
        let request = &required.request;
        let unknown_here: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| profile::unknown_key(request, k))
            .collect();
        if unknown_here.is_empty() {
            continue;
        }
        let key_statements = key_policy
            .statements
            .iter()
            .filter(|s| eval::applies_to(s, &request.caller));
        let identity_statements = identity
            .filter(|_| matches!(request.caller, Caller::Aws { .. }))
            .into_iter()
            .flatten()
            .flat_map(|p| &p.statements);
        for statement in key_statements.chain(identity_statements) {
            if statement.conditions.is_empty()
                || !eval::covers_action_and_resource(statement, request)
            {
                continue;
            }
            for condition in &statement.conditions {
                if !unknown_here
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(&condition.key))
                {
                    continue;
                }
                let key = condition.key.to_ascii_lowercase();
                unknown.add(key, request, || {
                    let what = if profile::present_with_unknown_value(request, &condition.key) {
                        "these requests carry it, but its value is not known before the request is made"
                    } else {
                        "the documentation does not settle whether these requests carry it"
                    };
                    let mut finding = Finding::new(
                        FindingCode::ConditionKeyNotInRequest,
                        format!(
                            "`{}` decides a condition on the requests listed, and {what}; the verifier evaluated it as absent",
                            condition.key
                        ),
                    )
                    .with_fix(format!(
                        "make sure the statement does what you want whatever `{}` is, or condition on a key the requests carry (docs/verification.md lists them)",
                        condition.key
                    ));
                    finding.sid = statement.sid.clone();
                    finding.location = Some(condition.location(statement));
                    finding
                });
            }
        }
    }
    findings.extend(unknown.into_findings());
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
                        FindingCode::GrantOperationsUnrestricted,
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
    let mut unrestricted: Groups<()> = Groups::new();
    for required in &requirements.required {
        let request = &required.request;
        if !matches!(request.caller, Caller::Aws { .. })
            || context_value(request, "kms:ViaService").is_none()
        {
            continue;
        }
        // The same request made by the principal directly: no forward access session.
        let mut probe = request.clone();
        probe.context.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("kms:ViaService")
                && !k.eq_ignore_ascii_case("aws:ViaAWSService")
        });
        probe
            .context
            .push(("aws:ViaAWSService".to_owned(), vec!["false".to_owned()]));
        if policies.decide(&probe) == Decision::Allow {
            unrestricted.add((), &probe, || {
                Finding::new(
                    FindingCode::ViaServiceUnrestricted,
                    format!(
                        "`{}` may make the requests listed directly, not only through the services that need the key",
                        input.principal_arn,
                    ),
                )
                .with_fix("condition the statements on kms:ViaService")
            });
        }
    }
    findings.extend(unrestricted.into_findings());
}
