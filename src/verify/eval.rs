//! The evaluator: does a key policy (with the principal's identity policies) allow one
//! request? AWS semantics for KMS keys: an explicit deny in any policy wins; otherwise the
//! key policy must allow the principal directly, or allow the account and then an
//! identity policy must allow too. Service principals are allowed by the key policy alone.
//! A permissions boundary caps what the identity policies allow, and what a key policy
//! grants to a role's ARN (docs/verification.md cites IAM's rules).

use super::{
    Location,
    condition::glob,
    policy::{Effect, Names, Policy, PrincipalElement, Principals, Statement, names_account},
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
    fn context_value(&self, key: &str) -> Option<&[String]> {
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

fn principal_match(statement: &Statement, caller: &Caller) -> PrincipalMatch {
    match &statement.principal {
        PrincipalElement::Absent => PrincipalMatch::Direct,
        PrincipalElement::Principal(p) => principals_match(p, caller),
        PrincipalElement::NotPrincipal(p) => match principals_match(p, caller) {
            PrincipalMatch::No => PrincipalMatch::Direct,
            _ => PrincipalMatch::No,
        },
    }
}

fn names_match(names: &Names, value: &str, matches: impl Fn(&str, &str) -> bool) -> bool {
    match names {
        Names::Only(patterns) => patterns.iter().any(|p| matches(p, value)),
        Names::AllExcept(patterns) => !patterns.iter().any(|p| matches(p, value)),
    }
}

/// Whether a statement's action, resource and conditions cover the request.
fn covers(statement: &Statement, request: &Request) -> bool {
    names_match(&statement.actions, &request.action, |p, a| glob(p, a, true))
        && names_match(&statement.resources, &request.resource, |p, r| {
            glob(p, r, false)
        })
        && statement
            .conditions
            .iter()
            .all(|c| c.operator.holds(&c.values, request.context_value(&c.key)))
}

fn deny(statement: &Statement) -> Decision {
    Decision::ExplicitDeny {
        sid: statement.sid.clone(),
        location: statement.location.clone(),
    }
}

/// Whether a permissions boundary caps what a key-policy statement that names the caller
/// grants: a grant to a role's ARN is capped (the role's sessions make the requests); one
/// to an IAM user, or to everyone (`"*"`), is not.
fn capped_by_boundary(statement: &Statement, caller: &Caller) -> bool {
    let Caller::Aws { arn, .. } = caller else {
        return false;
    };
    let is_role = arn
        .split(':')
        .nth(5)
        .is_some_and(|resource| resource.starts_with("role/"));
    let to_everyone = matches!(&statement.principal, PrincipalElement::Principal(p) if p.any);
    is_role && !to_everyone
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
    let boundary_allows = boundary.is_none_or(|b| {
        b.statements
            .iter()
            .any(|s| s.effect == Effect::Allow && covers(s, request))
    });

    // A principal of another account needs its own account's IAM policy as well.
    let key_account = request.resource.split(':').nth(4).filter(|a| !a.is_empty());
    let cross_account = matches!(&request.caller,
        Caller::Aws { account, .. } if key_account.is_some_and(|k| k != account.as_str()));
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
