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

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap},
};

use serde::Serialize;

use super::{
    Finding, FindingCode, Location, Severity,
    classes::{self, Matcher, Scope, Shape, TooLarge},
    condition::Family,
    eval::{self, Caller, Decision, Request},
    policy::{Condition, Effect, Names, Policy, PrincipalElement, Statement, is_multi_valued},
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

/// The bound on the context combinations one statement's analysis tries for one caller and
/// action; past it the statement is reported `ANALYSIS_INCOMPLETE`, never searched longer.
pub const MAX_COMBINATIONS: usize = 200_000;

/// The bound on the requests one analysis decides in all, so a large policy ends in
/// seconds at worst; the statements it did not reach are reported `ANALYSIS_INCOMPLETE`.
pub const MAX_DECISIONS: usize = 1_000_000;

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
    /// The grant that allows it, for an entry that comes from one of the key's grants
    /// rather than a policy statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
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
            (
                FindingCode::ExternalAccess,
                "a principal outside the account",
            )
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

/// Context keys whose value is the caller's own: the caller's classes decide them.
const CALLER_KEYS: [&str; 3] = [
    "aws:principalarn",
    "aws:principalaccount",
    "kms:calleraccount",
];

/// Keys that hold the caller's account.
const ACCOUNT_KEYS: [&str; 2] = ["aws:principalaccount", "kms:calleraccount"];

/// The most values one multivalued key's classes may have: its sets are every
/// combination of them.
const MAX_SET_CLASSES: usize = 10;

/// A service principal no policy names, standing for every such service.
const UNNAMED_SERVICE: &str = "unnamed-service.keyd.invalid";

/// The values one context key takes, one per class (`None`: absent); or why it cannot be
/// split exactly.
#[derive(Debug, Clone)]
enum KeyValues {
    Classes(Vec<Option<Vec<String>>>),
    Unanalysable(String),
}

/// A request's context values, key by key.
type Context = Vec<(String, Vec<String>)>;

/// Every combination of one class per key, as an odometer turns.
struct Contexts {
    axes: Vec<(String, Vec<Option<Vec<String>>>)>,
    digits: Vec<usize>,
    left: usize,
}

impl Iterator for Contexts {
    type Item = Context;

    fn next(&mut self) -> Option<Context> {
        self.left = self.left.checked_sub(1)?;
        let context = self
            .axes
            .iter()
            .zip(&self.digits)
            .filter_map(|((key, values), &i)| {
                values.get(i).cloned().flatten().map(|v| (key.clone(), v))
            })
            .collect();
        for (digit, (_, values)) in self.digits.iter_mut().zip(&self.axes) {
            *digit += 1;
            if *digit < values.len() {
                break;
            }
            *digit = 0;
        }
        Some(context)
    }
}

/// What an analysis works from: the callers, actions and context values to try.
struct Space<'a> {
    subject: &'a Subject<'a>,
    /// Every 12-digit account id any policy writes, and the key's and trusted accounts.
    named_accounts: Vec<String>,
    /// Every organization id the policies compare `aws:PrincipalOrgID` with, and the
    /// trusted one.
    named_organizations: Vec<String>,
    callers: Vec<Caller>,
    keys: HashMap<String, KeyValues>,
    /// Each key (lower-cased) as the policies first write it, for witnesses.
    spelling: HashMap<String, String>,
    gaps: Vec<Incomplete>,
}

fn statements<'p>(policies: &[&'p Policy]) -> impl Iterator<Item = &'p Statement> {
    policies.iter().flat_map(|p| &p.statements)
}

/// Every run of exactly 12 digits in `text`.
fn account_ids(text: &str, into: &mut Vec<String>) {
    let bytes = text.as_bytes();
    let mut start = None;
    for i in 0..=bytes.len() {
        let digit = bytes.get(i).is_some_and(u8::is_ascii_digit);
        match (digit, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s == 12 {
                    into.push(text[s..i].to_owned());
                }
                start = None;
            }
            _ => {}
        }
    }
}

fn principal_strings(statement: &Statement) -> Vec<&str> {
    match &statement.principal {
        PrincipalElement::Principal(p) | PrincipalElement::NotPrincipal(p) => p
            .aws
            .iter()
            .chain(&p.services)
            .map(String::as_str)
            .collect(),
        PrincipalElement::Absent => Vec::new(),
    }
}

fn names_of(names: &Names) -> &[String] {
    match names {
        Names::Only(v) | Names::AllExcept(v) => v,
    }
}

fn no_location() -> Location {
    Location {
        path: "key_policy".into(),
        line: 1,
        column: 1,
    }
}

fn gap(statement: Option<&Statement>, reason: String) -> Incomplete {
    Incomplete {
        sid: statement.and_then(|s| s.sid.clone()),
        location: statement.map_or_else(no_location, |s| s.location.clone()),
        reason,
    }
}

/// The string predicates a text condition's values make, or why they cannot be made.
fn text_matchers(condition: &Condition) -> Result<Vec<Matcher>, String> {
    use super::condition::Base::*;
    condition
        .values
        .iter()
        .map(|value| match condition.operator.base {
            StringLike | StringNotLike => Ok(Matcher::like(value)),
            ArnEquals | ArnLike | ArnNotEquals | ArnNotLike => Ok(Matcher::arn(value)),
            StringEqualsIgnoreCase | StringNotEqualsIgnoreCase | Bool => {
                Matcher::equals_ignoring_case(value).ok_or_else(|| {
                    format!(
                        "`{}` compares `{value}`, which is not ASCII, ignoring case",
                        condition.key
                    )
                })
            }
            _ => Ok(Matcher::equals(value)),
        })
        .collect()
}

impl<'a> Space<'a> {
    fn new(subject: &'a Subject<'a>, key_policies: &[&Policy]) -> Space<'a> {
        let mut all: Vec<&Policy> = key_policies.to_vec();
        all.extend(subject.identity_policies.into_iter().flatten());
        all.extend(subject.boundary);

        let mut named_accounts = vec![subject.account_id.to_owned()];
        named_accounts.extend(subject.trust.trusted_accounts.iter().cloned());
        account_ids(subject.key_arn, &mut named_accounts);
        let mut named_organizations: Vec<String> = subject
            .trust
            .organization_id
            .map(str::to_owned)
            .into_iter()
            .collect();
        for statement in statements(&all) {
            for text in principal_strings(statement)
                .into_iter()
                .chain(names_of(&statement.resources).iter().map(String::as_str))
            {
                account_ids(text, &mut named_accounts);
            }
            for condition in &statement.conditions {
                for value in &condition.values {
                    account_ids(value, &mut named_accounts);
                    if condition.key.eq_ignore_ascii_case("aws:PrincipalOrgID")
                        && !value.contains(['*', '?'])
                    {
                        named_organizations.push(value.clone());
                    }
                }
            }
        }
        named_accounts.sort_unstable();
        named_accounts.dedup();
        named_organizations.sort_unstable();
        named_organizations.dedup();

        let mut space = Space {
            subject,
            named_accounts,
            named_organizations,
            callers: Vec::new(),
            keys: HashMap::new(),
            spelling: HashMap::new(),
            gaps: Vec::new(),
        };
        for statement in statements(&all) {
            for condition in &statement.conditions {
                space
                    .spelling
                    .entry(condition.key.to_ascii_lowercase())
                    .or_insert_with(|| condition.key.clone());
            }
        }
        space.callers = space.callers(key_policies, &all);
        space.keys = space.key_values(&all);
        space
    }

    /// One caller per class: IAM principals as the principal elements and the caller
    /// conditions split them, and each named service and one unnamed.
    fn callers(&mut self, key_policies: &[&Policy], all: &[&Policy]) -> Vec<Caller> {
        let mut predicates: Vec<(Scope, Matcher)> =
            vec![(Scope::Whole, Matcher::like("arn:*:iam::*:role/*"))];
        predicates.extend(
            self.named_accounts
                .iter()
                .map(|a| (Scope::Account, Matcher::equals(a))),
        );
        predicates.extend(
            self.subject
                .principal_arn
                .map(|arn| (Scope::Whole, Matcher::equals(arn))),
        );
        let mut services: Vec<String> = Vec::new();
        for statement in statements(key_policies) {
            if let PrincipalElement::Principal(p) | PrincipalElement::NotPrincipal(p) =
                &statement.principal
            {
                predicates.extend(p.aws.iter().map(|a| (Scope::Whole, Matcher::equals(a))));
                services.extend(p.services.iter().cloned());
            }
        }
        for statement in statements(all) {
            for condition in &statement.conditions {
                let key = condition.key.to_ascii_lowercase();
                // A service a condition names is a caller of its own.
                if key == "aws:principalservicename" {
                    services.extend(
                        condition
                            .values
                            .iter()
                            .filter(|v| !v.contains(['*', '?']))
                            .cloned(),
                    );
                }
                if !CALLER_KEYS.contains(&key.as_str())
                    || condition.operator.family() != Family::Text
                {
                    continue;
                }
                let scope = if ACCOUNT_KEYS.contains(&key.as_str()) {
                    Scope::Account
                } else {
                    Scope::Whole
                };
                match text_matchers(condition) {
                    Ok(matchers) => predicates.extend(matchers.into_iter().map(|m| (scope, m))),
                    Err(reason) => self.gaps.push(gap(Some(statement), reason)),
                }
            }
        }
        let partition = self
            .subject
            .key_arn
            .split(':')
            .nth(1)
            .filter(|p| !p.is_empty())
            .unwrap_or("aws")
            .to_owned();
        let mut callers = Vec::new();
        match classes::representatives(&Shape::PrincipalArn { partition }, &predicates) {
            Ok(found) => {
                for (arn, _) in found {
                    let account = arn.split(':').nth(4).unwrap_or_default().to_owned();
                    callers.push(Caller::Aws { arn, account });
                }
            }
            Err(TooLarge) => self.gaps.push(gap(
                None,
                format!(
                    "the principals and caller conditions make more than {} classes of caller to search",
                    classes::MAX_STATES
                ),
            )),
        }
        // The configured principal may fall in a class with another representative.
        if let Some(arn) = self.subject.principal_arn
            && !callers
                .iter()
                .any(|c| matches!(c, Caller::Aws { arn: a, .. } if a == arn))
        {
            {
                let account = arn.split(':').nth(4).unwrap_or_default().to_owned();
                callers.push(Caller::Aws {
                    arn: arn.to_owned(),
                    account,
                });
            }
        }
        services.sort_unstable();
        services.dedup();
        callers.extend(services.into_iter().map(Caller::Service));
        callers.push(Caller::Service(UNNAMED_SERVICE.to_owned()));
        callers
    }

    /// The classes of every context key a condition reads (the caller's own keys aside).
    fn key_values(&mut self, all: &[&Policy]) -> HashMap<String, KeyValues> {
        struct Seen<'s> {
            text: Vec<Matcher>,
            order: Vec<f64>,
            addresses: Vec<String>,
            first: &'s Statement,
            problem: Option<String>,
        }
        let mut seen: BTreeMap<String, Seen<'_>> = BTreeMap::new();
        for statement in statements(all) {
            for condition in &statement.conditions {
                let key = condition.key.to_ascii_lowercase();
                if CALLER_KEYS.contains(&key.as_str()) {
                    continue;
                }
                let entry = seen.entry(key).or_insert_with(|| Seen {
                    text: Vec::new(),
                    order: Vec::new(),
                    addresses: Vec::new(),
                    first: statement,
                    problem: None,
                });
                match condition.operator.family() {
                    Family::Text => match text_matchers(condition) {
                        Ok(matchers) => entry.text.extend(matchers),
                        Err(reason) => entry.problem = Some(reason),
                    },
                    Family::Order => entry.order.extend(
                        condition
                            .values
                            .iter()
                            .filter_map(|v| condition.operator.order_value(v)),
                    ),
                    Family::Address => entry.addresses.extend(condition.values.iter().cloned()),
                    Family::Presence => {}
                }
            }
        }
        let mut keys = HashMap::new();
        for (key, mut seen) in seen {
            if key == "aws:sourceaccount" {
                seen.text
                    .extend(self.named_accounts.iter().map(|a| Matcher::equals(a)));
            }
            if key == "aws:principalorgid" {
                seen.text
                    .extend(self.named_organizations.iter().map(|o| Matcher::equals(o)));
            }
            let families = [
                !seen.text.is_empty(),
                !seen.order.is_empty(),
                !seen.addresses.is_empty(),
            ]
            .iter()
            .filter(|f| **f)
            .count();
            let values: Result<Vec<String>, String> = if let Some(problem) = seen.problem {
                Err(problem)
            } else if families > 1 {
                Err(format!(
                    "`{key}` is compared both as text and as a number, date or address"
                ))
            } else if !seen.order.is_empty() {
                Ok(classes::numeric_representatives(&seen.order))
            } else if !seen.addresses.is_empty() {
                Ok(classes::address_representatives(&seen.addresses))
            } else {
                let predicates: Vec<(Scope, Matcher)> =
                    seen.text.into_iter().map(|m| (Scope::Whole, m)).collect();
                let shape = if key == "aws:sourceaccount" {
                    Shape::AccountId
                } else {
                    Shape::Any
                };
                classes::representatives(&shape, &predicates)
                    .map(|found| found.into_iter().map(|(v, _)| v).collect())
                    .map_err(|TooLarge| {
                        format!(
                            "the values compared with `{key}` make more than {} classes to search",
                            classes::MAX_STATES
                        )
                    })
            };
            let classes = match values {
                Err(reason) => {
                    self.gaps.push(gap(Some(seen.first), reason.clone()));
                    KeyValues::Unanalysable(reason)
                }
                Ok(values) if is_multi_valued(&key) => {
                    if values.len() > MAX_SET_CLASSES {
                        let reason = format!(
                            "`{key}` holds a set, and its {} classes of value make too many sets to search",
                            values.len()
                        );
                        self.gaps.push(gap(Some(seen.first), reason.clone()));
                        KeyValues::Unanalysable(reason)
                    } else {
                        let mut sets = vec![None];
                        for mask in 1u32..(1 << values.len()) {
                            sets.push(Some(
                                values
                                    .iter()
                                    .enumerate()
                                    .filter(|(i, _)| mask & (1 << i) != 0)
                                    .map(|(_, v)| v.clone())
                                    .collect(),
                            ));
                        }
                        KeyValues::Classes(sets)
                    }
                }
                Ok(values) => {
                    let mut all = vec![None];
                    all.extend(values.into_iter().map(|v| Some(vec![v])));
                    KeyValues::Classes(all)
                }
            };
            keys.insert(key, classes);
        }
        keys
    }

    /// The context combinations to try for `caller`: every class of every key in `keys`,
    /// made one at a time. `Err` with their number when there are more than
    /// [`MAX_COMBINATIONS`].
    fn contexts(&self, caller: &Caller, keys: &[String]) -> Result<Contexts, usize> {
        let mut axes: Vec<(String, Vec<Option<Vec<String>>>)> = Vec::new();
        for key in keys {
            let one = |value: &str| vec![Some(vec![value.to_owned()])];
            // The caller's own keys: a service carries its name and no other aws:Principal…
            // key; an IAM principal never carries a service name.
            let values = match (caller, key.as_str()) {
                (Caller::Service(service), "aws:principalservicename") => one(service),
                (Caller::Service(_), "aws:principalisawsservice") => one("true"),
                (Caller::Service(_), k) if k.starts_with("aws:principal") => vec![None],
                (Caller::Aws { .. }, "aws:principalservicename") => vec![None],
                (Caller::Aws { .. }, "aws:principalisawsservice") => one("false"),
                _ => match self.keys.get(key) {
                    Some(KeyValues::Classes(values)) if !values.is_empty() => values.clone(),
                    _ => vec![None],
                },
            };
            let spelled = self.spelling.get(key).unwrap_or(key).clone();
            axes.push((spelled, values));
        }
        let total = axes
            .iter()
            .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()))
            .unwrap_or(usize::MAX);
        if total > MAX_COMBINATIONS {
            return Err(total);
        }
        Ok(Contexts {
            digits: vec![0; axes.len()],
            axes,
            left: total,
        })
    }

    /// Why one of `keys` has no exact classes, if one has none.
    fn unanalysable(&self, keys: &[String]) -> Option<&str> {
        keys.iter().find_map(|k| match self.keys.get(k) {
            Some(KeyValues::Unanalysable(reason)) => Some(reason.as_str()),
            _ => None,
        })
    }

    /// Whether a request comes from outside, and whether no policy names its account.
    fn reach(&self, request: &Request) -> (bool, bool) {
        let trust = &self.subject.trust;
        let inside = |account: &str| {
            account == self.subject.account_id
                || trust.trusted_accounts.iter().any(|a| a == account)
        };
        let named = |account: &str| self.named_accounts.iter().any(|a| a == account);
        match &request.caller {
            Caller::Aws { account, .. } => {
                let organization = request
                    .context_value("aws:PrincipalOrgID")
                    .and_then(|v| v.first());
                let in_organization =
                    organization.is_some_and(|o| trust.organization_id.is_some_and(|t| t == o));
                let external = !inside(account) && !in_organization;
                let public = !named(account)
                    && organization.is_none_or(|o| !self.named_organizations.contains(o));
                (external, public)
            }
            Caller::Service(_) => match service_account(request) {
                Some(account) => (!inside(account), !named(account)),
                None => (true, true),
            },
        }
    }
}

/// The account a service acts for: `aws:SourceAccount`, else the account of
/// `aws:SourceArn`.
fn service_account(request: &Request) -> Option<&str> {
    request
        .context_value("aws:SourceAccount")
        .and_then(|v| v.first())
        .map(String::as_str)
        .or_else(|| {
            request
                .context_value("aws:SourceArn")
                .and_then(|v| v.first())
                .and_then(|arn| arn.split(':').nth(4))
                .filter(|a| crate::domain::is_account_id(a))
        })
}

/// The context keys a statement reads.
fn condition_keys(statement: &Statement, into: &mut Vec<String>) {
    for condition in &statement.conditions {
        let key = condition.key.to_ascii_lowercase();
        if !CALLER_KEYS.contains(&key.as_str()) && !into.contains(&key) {
            into.push(key);
        }
    }
}

fn uses_variables(statement: &Statement) -> bool {
    statement.resource_variables || statement.conditions.iter().any(|c| c.variables)
}

fn grantee(statement: &Statement, caller: &Caller) -> Grantee {
    match (&statement.principal, caller) {
        (PrincipalElement::Principal(p), _) if p.any => Grantee::Anyone,
        (PrincipalElement::Principal(_), Caller::Service(service)) => Grantee::Service {
            service: service.clone(),
        },
        (PrincipalElement::Principal(p), Caller::Aws { arn, account }) => {
            if p.aws.iter().any(|a| a == arn) {
                Grantee::Principal { arn: arn.clone() }
            } else {
                Grantee::Account {
                    account_id: account.clone(),
                }
            }
        }
        _ => Grantee::Anyone,
    }
}

fn allowed(decision: &Decision) -> bool {
    matches!(
        decision,
        Decision::Allow | Decision::IdentityPolicyNotChecked
    )
}

fn describe_condition(condition: &Condition) -> String {
    format!(
        "{} {} {}",
        condition.operator.name(),
        condition.key,
        condition.values.join(", ")
    )
}

fn witness(request: &Request) -> Witness {
    let (caller, account) = match &request.caller {
        Caller::Aws { arn, account } => (arn.clone(), Some(account.clone())),
        Caller::Service(service) => (service.clone(), service_account(request).map(str::to_owned)),
    };
    Witness {
        caller,
        account,
        action: request.action.clone(),
        resource: request.resource.clone(),
        context: request.context.iter().cloned().collect(),
        request: request.clone(),
    }
}

/// An entry as it is gathered.
struct Gathered {
    actions: Vec<bool>,
    external: bool,
    public: bool,
    witness: Option<(u8, Request)>,
    denied_by: Vec<String>,
}

/// Entries keyed by the allowing statement and grantee.
#[derive(Default)]
struct Entries(BTreeMap<(usize, bool, Grantee), Gathered>);

impl Entries {
    /// Entries are kept apart by the allowing statement, whether the actions read the code
    /// or break scanning (so each has a witness of its kind), and the grantee.
    fn key((index, grantee): (usize, Grantee), action: usize) -> (usize, bool, Grantee) {
        (index, action >= READS_CODE.len(), grantee)
    }

    fn add(
        &mut self,
        key: (usize, Grantee),
        action: usize,
        request: &Request,
        reach: (bool, bool),
    ) {
        let gathered = self
            .0
            .entry(Entries::key(key, action))
            .or_insert_with(|| Gathered {
                actions: vec![false; ACTIONS.len()],
                external: false,
                public: false,
                witness: None,
                denied_by: Vec::new(),
            });
        gathered.actions[action] = true;
        gathered.external |= reach.0;
        gathered.public |= reach.1;
        let rank = u8::from(reach.0) + u8::from(reach.1);
        if gathered.witness.as_ref().is_none_or(|(r, _)| rank > *r) {
            gathered.witness = Some((rank, request.clone()));
        }
    }

    fn denied(&mut self, key: (usize, Grantee), action: usize, sid: Option<&str>) {
        if let (Some(gathered), Some(sid)) = (self.0.get_mut(&Entries::key(key, action)), sid)
            && !gathered.denied_by.iter().any(|s| s == sid)
        {
            gathered.denied_by.push(sid.to_owned());
        }
    }

    fn into_entries(self, policy: &Policy) -> Vec<AccessEntry> {
        self.0
            .into_iter()
            .filter_map(|((index, _, grantee), gathered)| {
                let statement = policy.statements.get(index)?;
                let (_, request) = gathered.witness?;
                let actions: Vec<String> = ACTIONS
                    .iter()
                    .zip(&gathered.actions)
                    .filter(|(_, on)| **on)
                    .map(|(a, _)| (*a).to_owned())
                    .collect();
                Some(AccessEntry {
                    grantee,
                    reads_code: actions.iter().any(|a| READS_CODE.contains(&a.as_str())),
                    breaks_scanning: actions
                        .iter()
                        .any(|a| BREAKS_SCANNING.contains(&a.as_str())),
                    actions,
                    conditions: statement
                        .conditions
                        .iter()
                        .map(describe_condition)
                        .collect(),
                    except_denied_by: gathered.denied_by,
                    sid: statement.sid.clone(),
                    location: statement.location.clone(),
                    external: gathered.external,
                    public: gathered.public,
                    witness: witness(&request),
                    grant_id: None,
                    statement: index,
                })
            })
            .collect()
    }
}

/// Every action the summary answers for.
const ACTIONS: [&str; 12] = [
    READS_CODE[0],
    READS_CODE[1],
    READS_CODE[2],
    READS_CODE[3],
    READS_CODE[4],
    READS_CODE[5],
    READS_CODE[6],
    BREAKS_SCANNING[0],
    BREAKS_SCANNING[1],
    BREAKS_SCANNING[2],
    BREAKS_SCANNING[3],
    BREAKS_SCANNING[4],
];

/// The identity policies and boundary that go with `caller`: the subject's principal's,
/// nobody else's (they are not known).
fn identity_of<'s>(
    subject: &'s Subject<'_>,
    caller: &Caller,
) -> (Option<&'s [Policy]>, Option<&'s Policy>) {
    match (caller, subject.principal_arn) {
        (Caller::Aws { arn, .. }, Some(principal)) if arn == principal => {
            (subject.identity_policies, subject.boundary)
        }
        _ => (None, None),
    }
}

/// The keys that decide `action` for `caller` under `key_policies` and the caller's own
/// policies (a statement that cannot apply reads nothing that matters).
fn deciding_keys(
    key_policies: &[&Policy],
    own: (Option<&[Policy]>, Option<&Policy>),
    request: &Request,
) -> Vec<String> {
    let mut keys = Vec::new();
    for statement in statements(key_policies) {
        if (eval::applies_to(statement, &request.caller)
            || matches!(statement.principal, PrincipalElement::NotPrincipal(_)))
            && (statement.resource_variables
                || eval::covers_action_and_resource(statement, request))
        {
            condition_keys(statement, &mut keys);
        }
    }
    for statement in own
        .0
        .into_iter()
        .flatten()
        .chain(own.1)
        .flat_map(|p| &p.statements)
    {
        if statement.resource_variables || eval::covers_action_and_resource(statement, request) {
            condition_keys(statement, &mut keys);
        }
    }
    keys.sort_unstable();
    keys
}

/// The key policy of one Allow statement and every Deny: what it allows, it allows.
fn alone_with_denies(policy: &Policy, index: usize) -> Policy {
    Policy {
        kind: policy.kind,
        statements: policy
            .statements
            .iter()
            .enumerate()
            .filter(|(i, s)| *i == index || s.effect == Effect::Deny)
            .map(|(_, s)| s.clone())
            .collect(),
    }
}

/// A grant on the key, as KMS lists it: its grantee may make the grant's operations, and
/// its retiring principal may retire it, whatever the key policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub grant_id: String,
    pub grantee_principal: String,
    /// Empty: none.
    pub retiring_principal: String,
    /// Operation names as KMS writes them (`Decrypt`, `RetireGrant`).
    pub operations: Vec<String>,
}

fn grantee_is(grantee: &Grantee, caller: &Caller) -> bool {
    match (grantee, caller) {
        (Grantee::Principal { arn }, Caller::Aws { arn: caller, .. }) => arn == caller,
        (Grantee::Service { service }, Caller::Service(caller)) => service == caller,
        _ => false,
    }
}

/// The entries the key's grants make: one per grantee and kind of action (the grantee's
/// operations; the retiring principal's `kms:RetireGrant`). A grant names its principals, so
/// its access is never public; it is external when a principal is outside.
pub fn grant_entries(grants: &[Grant], subject: &Subject<'_>) -> Vec<AccessEntry> {
    let mut entries = Vec::new();
    for grant in grants {
        let mut holders: Vec<(&str, Vec<String>)> = vec![(
            grant.grantee_principal.as_str(),
            grant
                .operations
                .iter()
                .map(|o| format!("kms:{o}"))
                .collect(),
        )];
        if !grant.retiring_principal.is_empty() {
            let retire = "kms:RetireGrant".to_owned();
            match holders
                .iter_mut()
                .find(|(p, _)| *p == grant.retiring_principal)
            {
                Some((_, operations)) if !operations.contains(&retire) => {
                    operations.push(retire);
                }
                Some(_) => {}
                None => holders.push((grant.retiring_principal.as_str(), vec![retire])),
            }
        }
        for (principal, operations) in holders {
            let caller = match principal.split(':').nth(4) {
                Some(account) if principal.starts_with("arn:") => Caller::Aws {
                    arn: principal.to_owned(),
                    account: account.to_owned(),
                },
                _ => Caller::Service(principal.to_owned()),
            };
            let (grantee, external) = match &caller {
                Caller::Aws { arn, account } => (
                    Grantee::Principal { arn: arn.clone() },
                    account != subject.account_id
                        && !subject.trust.trusted_accounts.iter().any(|a| a == account),
                ),
                Caller::Service(service) => (
                    Grantee::Service {
                        service: service.clone(),
                    },
                    false,
                ),
            };
            for kind in [&READS_CODE[..], &BREAKS_SCANNING[..]] {
                let actions: Vec<String> = kind
                    .iter()
                    .filter(|a| operations.iter().any(|o| o.eq_ignore_ascii_case(a)))
                    .map(|a| (*a).to_owned())
                    .collect();
                let Some(first) = actions.first() else {
                    continue;
                };
                let request = Request {
                    caller: caller.clone(),
                    action: first.clone(),
                    resource: subject.key_arn.to_owned(),
                    context: Vec::new(),
                };
                entries.push(AccessEntry {
                    grantee: grantee.clone(),
                    reads_code: kind == &READS_CODE[..],
                    breaks_scanning: kind == &BREAKS_SCANNING[..],
                    actions,
                    conditions: Vec::new(),
                    except_denied_by: Vec::new(),
                    sid: None,
                    location: Location {
                        path: format!("grants[\"{}\"]", grant.grant_id),
                        line: 0,
                        column: 0,
                    },
                    external,
                    public: false,
                    witness: witness(&request),
                    grant_id: Some(grant.grant_id.clone()),
                    statement: 0,
                });
            }
        }
    }
    entries
}

/// Adds the key's grants to a report's summary, and their findings (an external grantee
/// is `EXTERNAL_ACCESS`) to its findings.
pub fn add_grants(report: &mut super::Report, grants: &[Grant], subject: &Subject<'_>) {
    let entries = grant_entries(grants, subject);
    let findings = findings(
        &AccessSummary {
            entries: entries.clone(),
            incomplete: Vec::new(),
        },
        subject.trust,
    );
    if let Some(summary) = &mut report.access {
        summary.entries.extend(entries);
    }
    report.findings.extend(findings);
    report.passed = !report
        .findings
        .iter()
        .any(|f| f.severity == Severity::Error);
}

/// The access summary of a key policy for `subject`.
pub fn summarize(key_policy: &Policy, subject: &Subject<'_>) -> AccessSummary {
    let mut space = Space::new(subject, &[key_policy]);
    for statement in statements(&[key_policy])
        .chain(
            subject
                .identity_policies
                .into_iter()
                .flatten()
                .flat_map(|p| &p.statements),
        )
        .chain(subject.boundary.into_iter().flat_map(|p| &p.statements))
    {
        if uses_variables(statement) {
            space.gaps.push(gap(
                Some(statement),
                "the statement relates request values through a policy variable, which the classes of each value on its own do not decide".into(),
            ));
        }
    }
    let mut entries = Entries::default();
    let mut budget = MAX_DECISIONS;
    for (index, statement) in key_policy.statements.iter().enumerate() {
        if statement.effect != Effect::Allow {
            continue;
        }
        if budget == 0 {
            space.gaps.push(gap(Some(statement), out_of_budget()));
            continue;
        }
        let alone = alone_with_denies(key_policy, index);
        let mut too_many = None;
        let mut unanalysable = None;
        for caller in &space.callers {
            if !eval::applies_to(statement, caller) {
                continue;
            }
            let own = identity_of(subject, caller);
            let key = (index, grantee(statement, caller));
            for (action_index, action) in ACTIONS.iter().enumerate() {
                let mut request = Request {
                    caller: caller.clone(),
                    action: (*action).to_owned(),
                    resource: subject.key_arn.to_owned(),
                    context: Vec::new(),
                };
                if !statement.resource_variables
                    && !eval::covers_action_and_resource(statement, &request)
                {
                    continue;
                }
                let keys = deciding_keys(&[&alone], own, &request);
                if let Some(reason) = space.unanalysable(&keys) {
                    unanalysable = Some(reason.to_owned());
                }
                let contexts = match space.contexts(caller, &keys) {
                    Ok(contexts) => contexts,
                    Err(n) => {
                        too_many = Some(n);
                        continue;
                    }
                };
                for context in contexts {
                    request.context = context;
                    let Some(left) = budget.checked_sub(1) else {
                        break;
                    };
                    budget = left;
                    match eval::decide_bounded(&alone, own.0, own.1, &request) {
                        decision if allowed(&decision) => {
                            let reach = space.reach(&request);
                            entries.add(key.clone(), action_index, &request, reach);
                            if reach.1 {
                                break;
                            }
                        }
                        Decision::ExplicitDeny { sid, .. } => {
                            entries.denied(key.clone(), action_index, sid.as_deref());
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Some(reason) = unanalysable {
            space.gaps.push(gap(Some(statement), reason));
        }
        if budget == 0 {
            space.gaps.push(gap(Some(statement), out_of_budget()));
        }
        if let Some(n) = too_many {
            space.gaps.push(gap(
                Some(statement),
                format!(
                    "deciding the statement needs {n} combinations of condition values, more than the bound of {MAX_COMBINATIONS}"
                ),
            ));
        }
    }
    AccessSummary {
        entries: entries.into_entries(key_policy),
        incomplete: dedup_gaps(space.gaps),
    }
}

fn out_of_budget() -> String {
    format!(
        "the analysis decided its bound of {MAX_DECISIONS} requests before it finished this statement"
    )
}

fn dedup_gaps(mut gaps: Vec<Incomplete>) -> Vec<Incomplete> {
    let mut seen: Vec<(Location, String)> = Vec::new();
    gaps.retain(|g| {
        let key = (g.location.clone(), g.reason.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    gaps
}

/// How far a decision lets a request through: not at all, if the caller's identity
/// policies allow it (the key policy delegates and they are not known), or outright.
fn rank(decision: &Decision) -> u8 {
    match decision {
        Decision::Allow => 2,
        Decision::IdentityPolicyNotChecked => 1,
        Decision::ExplicitDeny { .. } | Decision::ImplicitDeny => 0,
    }
}

/// A policy with, for each of its Allow statements, the policy of that statement and every
/// Deny ([`alone_with_denies`]), made once.
struct Split<'p> {
    policy: &'p Policy,
    alone: Vec<Option<Policy>>,
}

impl<'p> Split<'p> {
    fn new(policy: &'p Policy) -> Split<'p> {
        let alone = policy
            .statements
            .iter()
            .enumerate()
            .map(|(i, s)| (s.effect == Effect::Allow).then(|| alone_with_denies(policy, i)))
            .collect();
        Split { policy, alone }
    }

    /// The first Allow statement that lets `request` through as far as `wanted` on its own
    /// (with the denies), for naming where access comes from.
    fn allowing_statement(
        &self,
        own: (Option<&[Policy]>, Option<&Policy>),
        request: &Request,
        wanted: u8,
    ) -> Option<(usize, &'p Statement)> {
        self.policy
            .statements
            .iter()
            .zip(&self.alone)
            .enumerate()
            .find(|(_, (s, alone))| {
                alone.as_ref().is_some_and(|alone| {
                    eval::applies_to(s, &request.caller)
                        && (s.resource_variables || eval::covers_action_and_resource(s, request))
                        && rank(&eval::decide_bounded(alone, own.0, own.1, request)) >= wanted
                })
            })
            .map(|(i, (s, _))| (i, s))
    }
}

/// The access `new` allows that `old` did not, and the access it removes.
pub fn diff(old: &Policy, new: &Policy, subject: &Subject<'_>) -> AccessDiff {
    let mut space = Space::new(subject, &[old, new]);
    for statement in statements(&[old, new]) {
        if uses_variables(statement) {
            space.gaps.push(gap(
                Some(statement),
                "the statement relates request values through a policy variable, which the classes of each value on its own do not decide".into(),
            ));
        }
    }
    let (old_split, new_split) = (Split::new(old), Split::new(new));
    let mut added = Entries::default();
    let mut removed = Entries::default();
    let mut too_many = None;
    let mut budget = MAX_DECISIONS;
    for caller in &space.callers {
        let own = identity_of(subject, caller);
        for (action_index, action) in ACTIONS.iter().enumerate() {
            let mut request = Request {
                caller: caller.clone(),
                action: (*action).to_owned(),
                resource: subject.key_arn.to_owned(),
                context: Vec::new(),
            };
            let keys = deciding_keys(&[old, new], own, &request);
            let contexts = match space.contexts(caller, &keys) {
                Ok(contexts) => contexts,
                Err(n) => {
                    too_many = Some(n);
                    continue;
                }
            };
            for context in contexts {
                request.context = context;
                let Some(left) = budget.checked_sub(1) else {
                    break;
                };
                budget = left;
                let before = rank(&eval::decide_bounded(old, own.0, own.1, &request));
                let after = rank(&eval::decide_bounded(new, own.0, own.1, &request));
                let (split, entries, wanted) = match before.cmp(&after) {
                    Ordering::Less => (&new_split, &mut added, after),
                    Ordering::Greater => (&old_split, &mut removed, before),
                    Ordering::Equal => continue,
                };
                if let Some((index, statement)) = split.allowing_statement(own, &request, wanted) {
                    let key = (index, grantee(statement, caller));
                    entries.add(key, action_index, &request, space.reach(&request));
                }
            }
        }
    }
    if budget == 0 {
        space
            .gaps
            .push(gap(new.statements.first(), out_of_budget()));
    }
    if let Some(n) = too_many {
        space.gaps.push(gap(
            new.statements.first(),
            format!(
                "comparing the policies needs {n} combinations of condition values for one caller and action, more than the bound of {MAX_COMBINATIONS}"
            ),
        ));
    }
    AccessDiff {
        new_access: added.into_entries(new),
        removed_access: removed.into_entries(old),
        incomplete: dedup_gaps(space.gaps),
    }
}

impl AccessEntry {
    /// Whether `request` is one of the requests the entry stands for: its grantee makes it,
    /// its action is listed, and the allowing statement of `policy` (the policy the entry
    /// was made from) covers it, conditions included.
    pub fn covers(&self, policy: &Policy, request: &Request) -> bool {
        let action_listed = self
            .actions
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&request.action));
        if self.grant_id.is_some() {
            // A grant allows its grantee its operations, whatever the policy says.
            return action_listed && grantee_is(&self.grantee, &request.caller);
        }
        let Some(statement) = policy.statements.get(self.statement) else {
            return false;
        };
        let grantee_makes_it = match (&self.grantee, &request.caller) {
            (Grantee::Account { account_id }, Caller::Aws { account, .. }) => account_id == account,
            (Grantee::Anyone, caller) => eval::applies_to(statement, caller),
            (grantee, caller) => grantee_is(grantee, caller),
        };
        grantee_makes_it
            && action_listed
            && eval::covers_action_and_resource(statement, request)
            && statement
                .conditions
                .iter()
                .all(|c| eval::condition_holds(c, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::policy::{Document, DocumentKind, analyze};

    const ACCOUNT: &str = "111122223333";
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn key_policy(text: &str) -> Policy {
        analyze(Document {
            kind: DocumentKind::KeyPolicy,
            name: "key_policy",
            text,
        })
        .0
        .unwrap()
    }

    fn subject() -> Subject<'static> {
        Subject {
            account_id: ACCOUNT,
            key_arn: KEY,
            principal_arn: None,
            identity_policies: None,
            boundary: None,
            trust: Trust::default(),
        }
    }

    #[test]
    fn a_statement_past_the_bound_is_reported_not_searched() {
        // Eight keys of four or more classes each: more combinations than the bound.
        let conditions: Vec<String> = (0..8)
            .map(|i| format!("\"k:key{i}\": [\"a{i}\", \"b{i}\", \"c{i}\"]"))
            .collect();
        let text = format!(
            r#"{{"Version": "2012-10-17", "Statement": [{{"Sid": "Wide", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*", "Condition": {{"StringEquals": {{{}}}}}}}]}}"#,
            conditions.join(", ")
        );
        let started = std::time::Instant::now();
        let summary = summarize(&key_policy(&text), &subject());
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        assert_eq!(summary.incomplete.len(), 1, "{summary:?}");
        assert_eq!(summary.incomplete[0].sid.as_deref(), Some("Wide"));
        assert!(summary.incomplete[0].reason.contains("combinations"));
        let findings = findings(&summary, Trust::default());
        assert!(
            findings
                .iter()
                .any(|f| f.code == FindingCode::AnalysisIncomplete)
        );
    }

    #[test]
    fn a_deny_that_excludes_other_accounts_leaves_no_external_access() {
        let text = r#"{"Version": "2012-10-17", "Statement": [
            {"Sid": "Everyone", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"},
            {"Sid": "OnlyUs", "Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
             "Condition": {"StringNotEquals": {"aws:PrincipalAccount": "111122223333"}}}]}"#;
        let summary = summarize(&key_policy(text), &subject());
        assert!(!summary.external() && !summary.public(), "{summary:?}");
        let entry = &summary.entries[0];
        assert_eq!(entry.grantee, Grantee::Anyone);
        assert_eq!(entry.except_denied_by, ["OnlyUs"]);
        assert_eq!(entry.witness.account.as_deref(), Some(ACCOUNT));
    }

    #[test]
    fn a_diff_is_three_way() {
        // Granting the role directly where the account already delegated is new access: it
        // no longer needs the role's identity policy.
        let delegation = r#"{"Sid": "Root", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"}"#;
        let direct = r#"{"Sid": "Role", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/r"}, "Action": "kms:Decrypt", "Resource": "*"}"#;
        let old = key_policy(&format!(
            r#"{{"Version": "2012-10-17", "Statement": [{delegation}]}}"#
        ));
        let new = key_policy(&format!(
            r#"{{"Version": "2012-10-17", "Statement": [{delegation}, {direct}]}}"#
        ));
        let diff = diff(&old, &new, &subject());
        assert_eq!(diff.new_access.len(), 1, "{diff:?}");
        assert_eq!(
            diff.new_access[0].grantee,
            Grantee::Principal {
                arn: "arn:aws:iam::111122223333:role/r".into()
            }
        );
        assert_eq!(diff.new_access[0].actions, ["kms:Decrypt"]);
        assert!(diff.removed_access.is_empty());
    }
}
