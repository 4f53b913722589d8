//! The evaluator: does a key policy (with the principal's identity policies) allow one
//! request? AWS semantics for KMS keys: an explicit deny in any policy wins; otherwise the
//! key policy must allow the principal directly, or allow the account and then an
//! identity policy must allow too. Service principals are allowed by the key policy alone.
//!
//! A role acts as one of its assumed-role sessions, whose name is not known: a `Principal`
//! naming the role matches it, but no `NotPrincipal` can exempt it (IAM exempts a session
//! only when the session's own ARN is listed too). An IAM user acts as itself, exempted by
//! a `NotPrincipal` that lists both the user and its account.
//!
//! A permissions boundary caps what the identity policies allow, and what a key policy
//! grants to a role's ARN (docs/verification.md cites IAM's rules).

use crate::domain::IamPrincipal;

use super::{
    Location,
    condition::Base,
    policy::{
        Condition, Effect, Names, Policy, PrincipalElement, Principals, Statement, is_multi_valued,
        names_account,
    },
    variables::{self, substitute},
    wildcard::{self, glob},
};

/// Who makes a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An IAM principal (role or user) of `account`.
    Aws { arn: String, account: String },
    /// An AWS service principal such as `q.amazonaws.com`.
    Service(String),
}

/// One request to KMS, with the context keys the calling service would send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub caller: Caller,
    /// Such as `kms:Decrypt`.
    pub action: String,
    /// The key ARN.
    pub resource: String,
    /// Context keys (any case) and their values; one value for single-valued keys.
    pub context: Vec<(String, Vec<String>)>,
}

impl Request {
    /// The request's values for a key, matched case-insensitively; `None` when absent.
    pub fn context_value(&self, key: &str) -> Option<&[String]> {
        self.context
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_slice())
            .or_else(|| self.implicit(key))
    }

    /// Keys every request from an IAM principal carries.
    fn implicit(&self, key: &str) -> Option<&[String]> {
        let Caller::Aws { arn, account } = &self.caller else {
            return None;
        };
        if key.eq_ignore_ascii_case("aws:PrincipalArn") {
            Some(std::slice::from_ref(arn))
        } else if key.eq_ignore_ascii_case("aws:PrincipalAccount")
            || key.eq_ignore_ascii_case("kms:CallerAccount")
        {
            Some(std::slice::from_ref(account))
        } else {
            None
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A statement denies it; `document` names the policy (`key_policy`, ...).
    ExplicitDeny {
        sid: Option<String>,
        location: Location,
    },
    /// Nothing allows it.
    ImplicitDeny,
    /// The key policy delegates to the account (or allows a principal of another
    /// account, which also needs its own IAM policy), and no identity policy was supplied
    /// to decide it.
    IdentityPolicyNotChecked,
}

/// How a key-policy statement's principal element relates to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrincipalMatch {
    /// Names the caller (or everyone).
    Direct,
    /// Names the caller's account: it delegates to the account's identity policies.
    Account,
    No,
}

fn principals_match(principals: &Principals, caller: &Caller) -> PrincipalMatch {
    if principals.any {
        return PrincipalMatch::Direct;
    }
    match caller {
        Caller::Service(service) => {
            if principals.services.iter().any(|s| s == service) {
                PrincipalMatch::Direct
            } else {
                PrincipalMatch::No
            }
        }
        Caller::Aws { arn, account } => {
            if principals.aws.iter().any(|p| p == arn) {
                PrincipalMatch::Direct
            } else if principals.aws.iter().any(|p| names_account(p, account)) {
                PrincipalMatch::Account
            } else {
                PrincipalMatch::No
            }
        }
    }
}

/// Whether a `NotPrincipal` element exempts the caller. A service principal is exempt when
/// listed. An IAM user only when both the user and its account are listed ("you must also
/// specify the account ARN of the not-denied principal"). A role's session never: IAM
/// checks the account, the role and the session ARN, and the session's name is not known
/// (nor can a wildcard name every session).
pub fn not_principal_exempts(principals: &Principals, caller: &Caller) -> bool {
    if principals.any {
        return true;
    }
    match caller {
        Caller::Service(service) => principals.services.iter().any(|s| s == service),
        Caller::Aws { arn, account } => {
            matches!(IamPrincipal::parse(arn), Some(IamPrincipal::User(_)))
                && principals.aws.iter().any(|p| p == arn)
                && principals.aws.iter().any(|p| names_account(p, account))
        }
    }
}

/// Whether a `NotPrincipal` element lists the caller (its ARN or its account) without
/// exempting it: the case IAM documents and people get wrong.
pub fn not_principal_lists_without_exempting(principals: &Principals, caller: &Caller) -> bool {
    match caller {
        Caller::Aws { arn, account } => {
            !not_principal_exempts(principals, caller)
                && principals
                    .aws
                    .iter()
                    .any(|p| p == arn || names_account(p, account))
        }
        Caller::Service(_) => false,
    }
}

fn principal_match(statement: &Statement, caller: &Caller) -> PrincipalMatch {
    match &statement.principal {
        PrincipalElement::Absent => PrincipalMatch::Direct,
        PrincipalElement::Principal(p) => principals_match(p, caller),
        PrincipalElement::NotPrincipal(p) => {
            if not_principal_exempts(p, caller) {
                PrincipalMatch::No
            } else {
                PrincipalMatch::Direct
            }
        }
    }
}

/// Whether a permissions boundary caps what a key-policy statement that names the caller
/// grants: a grant to a role's ARN is capped (the role's sessions make the requests); one
/// to an IAM user, or to everyone (`"*"`), is not.
fn capped_by_boundary(statement: &Statement, caller: &Caller) -> bool {
    let Caller::Aws { arn, .. } = caller else {
        return false;
    };
    let is_role = matches!(IamPrincipal::parse(arn), Some(IamPrincipal::Role(_)));
    let to_everyone = matches!(&statement.principal, PrincipalElement::Principal(p) if p.any);
    is_role && !to_everyone
}

/// Whether a key-policy statement's principal element takes in the caller (the caller
/// itself, its account, or everyone); always true for identity-policy statements.
pub fn applies_to(statement: &Statement, caller: &Caller) -> bool {
    principal_match(statement, caller) != PrincipalMatch::No
}

fn names_match(names: &Names, value: &str, matches: impl Fn(&str, &str) -> bool) -> bool {
    match names {
        Names::Only(patterns) => patterns.iter().any(|p| matches(p, value)),
        Names::AllExcept(patterns) => !patterns.iter().any(|p| matches(p, value)),
    }
}

/// Whether a statement's action and resource cover the request (conditions aside).
pub fn covers_action_and_resource(statement: &Statement, request: &Request) -> bool {
    names_match(&statement.actions, &request.action, |p, a| glob(p, a, true))
        && if statement.resource_variables {
            names_match(&statement.resources, &request.resource, |p, r| {
                // A resource whose variable has no value names no resource.
                variables::substitute_resource(p, |key| request.context_value(key))
                    .is_some_and(|units| wildcard::glob_units(&units, r))
            })
        } else {
            names_match(&statement.resources, &request.resource, |p, r| {
                glob(p, r, false)
            })
        }
}

/// Whether a condition holds for the request. An operator without `ForAllValues:` or
/// `ForAnyValue:` on a multivalued key the request carries matches nothing (the
/// documentation requires the qualifier, and `MISSING_SET_QUALIFIER` reports it as an
/// error; how IAM then compares is not documented, and matching nothing is what AWS has
/// said in talks and what the independent simulator does).
pub fn condition_holds(condition: &Condition, request: &Request) -> bool {
    let values = request.context_value(&condition.key);
    if values.is_some()
        && condition.operator.set.is_none()
        && condition.operator.base != Base::Null
        && is_multi_valued(&condition.key)
    {
        return false;
    }
    if condition.variables {
        let substituted: Vec<_> = condition
            .values
            .iter()
            .map(|v| substitute(v, |key| request.context_value(key)))
            .collect();
        condition.operator.holds_substituted(&substituted, values)
    } else {
        condition.operator.holds(&condition.values, values)
    }
}

/// Whether a statement's action, resource and conditions cover the request.
fn covers(statement: &Statement, request: &Request) -> bool {
    covers_action_and_resource(statement, request)
        && statement
            .conditions
            .iter()
            .all(|c| condition_holds(c, request))
}

fn deny(statement: &Statement) -> Decision {
    Decision::ExplicitDeny {
        sid: statement.sid.clone(),
        location: statement.location.clone(),
    }
}

/// Decides `request` against the key policy and, when supplied, the caller's identity
/// policies.
pub fn decide(
    key_policy: &Policy,
    identity_policies: Option<&[Policy]>,
    request: &Request,
) -> Decision {
    decide_bounded(key_policy, identity_policies, None, request)
}

/// As [`decide`], for a caller whose permissions boundary is `boundary` (`None`: none).
/// The boundary's denies deny; an identity-policy allow, and a key-policy allow naming a
/// role's ARN, count only where the boundary allows too; and a key-policy `Deny` with
/// `NotPrincipal` denies a principal with a boundary whatever it lists.
pub fn decide_bounded(
    key_policy: &Policy,
    identity_policies: Option<&[Policy]>,
    boundary: Option<&Policy>,
    request: &Request,
) -> Decision {
    let is_aws_caller = matches!(request.caller, Caller::Aws { .. });
    let identity = if is_aws_caller {
        identity_policies.unwrap_or(&[])
    } else {
        &[]
    };

    let boundary = boundary.filter(|_| is_aws_caller);

    // Explicit denies, in any policy, win. A deny naming the account covers its principals.
    let key_denies = key_policy.statements.iter().filter(|s| {
        s.effect == Effect::Deny
            && (principal_match(s, &request.caller) != PrincipalMatch::No
                || (boundary.is_some() && matches!(s.principal, PrincipalElement::NotPrincipal(_))))
    });
    let identity_denies = identity
        .iter()
        .chain(boundary)
        .flat_map(|p| &p.statements)
        .filter(|s| s.effect == Effect::Deny);
    if let Some(statement) = key_denies
        .chain(identity_denies)
        .find(|s| covers(s, request))
    {
        return deny(statement);
    }

    // A principal of another account needs its own account's IAM policy as well.
    let key_account = request.resource.split(':').nth(4).filter(|a| !a.is_empty());
    let cross_account = matches!(&request.caller,
        Caller::Aws { account, .. } if key_account.is_some_and(|k| k != account.as_str()));
    let boundary_allows = boundary.is_none_or(|b| {
        b.statements
            .iter()
            .any(|s| s.effect == Effect::Allow && covers(s, request))
    });
    let mut delegated = false;
    for statement in key_policy
        .statements
        .iter()
        .filter(|s| s.effect == Effect::Allow)
    {
        match principal_match(statement, &request.caller) {
            // A grant to a role's ARN counts only where its boundary allows too.
            PrincipalMatch::Direct
                if covers(statement, request)
                    && !cross_account
                    && (boundary_allows || !capped_by_boundary(statement, &request.caller)) =>
            {
                return Decision::Allow;
            }
            PrincipalMatch::Direct | PrincipalMatch::Account if covers(statement, request) => {
                delegated = true;
            }
            _ => {}
        }
    }
    // What the identity policies allow, the boundary caps.
    if !delegated || !boundary_allows {
        return Decision::ImplicitDeny;
    }
    match identity_policies {
        None => Decision::IdentityPolicyNotChecked,
        Some(_) => {
            let allowed = identity
                .iter()
                .flat_map(|p| &p.statements)
                .any(|s| s.effect == Effect::Allow && covers(s, request));
            if allowed {
                Decision::Allow
            } else {
                Decision::ImplicitDeny
            }
        }
    }
}
