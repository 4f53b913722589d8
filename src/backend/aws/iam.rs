//! A principal's identity policies and permissions boundary, read from IAM for the aws
//! backend, and kept for the drift interval so that the Update gate, VerifyKeyPolicy and the
//! drift check do not each ask IAM. Read-only IAM calls only; every list is paginated and
//! bounded. What IAM evaluates, per the IAM User Guide's policy evaluation logic: for a role,
//! its inline and attached managed policies; for a user, also those of its groups; and the
//! permissions boundary of either.

use std::{sync::Arc, time::Duration};

use aws_smithy_async::future::pagination_stream::PaginationStream;
use aws_smithy_runtime_api::client::{orchestrator::HttpResponse, result::SdkError};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::{sync::Mutex, time::Instant};

use super::{AccountAccess, classify};
use crate::{
    backend::{BackendError, PrincipalPolicies, SourcedPolicy},
    domain::IamPrincipal,
    metrics::Metrics,
};

/// How long a failed read is kept: long enough that callers cannot make the sidecar ask IAM
/// on every verification while IAM refuses, short enough that a fixed permission is seen
/// soon.
const FAILURE_TTL: Duration = Duration::from_secs(30);

/// The most items one IAM list may hold before the read gives up. IAM's own quotas are far
/// lower (20 managed policies per role or user, 10 groups per user, inline policies within
/// 10,240 characters in all); the bound stops an endpoint that pages forever.
const MAX_LIST_ITEMS: usize = 200;

/// The last answer, for one principal (the sidecar verifies for the one it is configured
/// with).
struct Held {
    principal: String,
    at: Instant,
    answer: Result<Arc<PrincipalPolicies>, BackendError>,
}

impl Held {
    /// How long the answer is kept: `ttl`, or less for a failure.
    fn kept_for(&self, ttl: Duration) -> Duration {
        if self.answer.is_ok() {
            ttl
        } else {
            ttl.min(FAILURE_TTL)
        }
    }

    fn fresh_for(&self, principal: &str, ttl: Duration) -> bool {
        self.principal == principal && self.at.elapsed() < self.kept_for(ttl)
    }
}

/// Whose identity policies IAM lists: a role, a user, or a group of that user. Each kind
/// has its own IAM operations; what is read of each is the same.
#[derive(Debug, Clone, Copy)]
enum Holder<'a> {
    Role(&'a str),
    User(&'a str),
    Group(&'a str),
}

impl std::fmt::Display for Holder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Role(name) => write!(f, "role `{name}`"),
            Holder::User(name) => write!(f, "user `{name}`"),
            Holder::Group(name) => write!(f, "group `{name}`"),
        }
    }
}

/// Every item of the paginated IAM list `$method` for the entity `$name` (set by `$setter`),
/// bounded.
macro_rules! list {
    ($self:ident, $operation:literal, $method:ident, $setter:ident, $name:expr) => {
        bounded(
            $operation,
            $self
                .iam
                .$method()
                .$setter($name)
                .into_paginator()
                .items()
                .send(),
        )
        .await
    };
}

/// The decoded document of the inline policy `$policy` of the entity `$name`.
macro_rules! inline {
    ($self:ident, $operation:literal, $method:ident, $setter:ident, $name:expr, $policy:expr, $source:expr) => {
        match $self
            .iam
            .$method()
            .$setter($name)
            .policy_name($policy)
            .send()
            .await
        {
            Ok(output) => decode($operation, output.policy_document()),
            Err(e) => Err(iam_error($operation, $source, e)),
        }
    };
}

/// Reads principals' policies from IAM, keeping the last answer for `ttl`.
pub struct IamPolicies {
    iam: aws_sdk_iam::Client,
    ttl: Duration,
    /// Counts the reads (`principal_policies`), not the answers kept: the backend-call
    /// metric says how often IAM was called.
    metrics: Metrics,
    /// Held while IAM is read, so verifications at the same time wait for one read.
    last: Mutex<Option<Held>>,
    /// The account whose IAM this reads, and how: its errors name another account's role.
    access: Arc<AccountAccess>,
}

impl IamPolicies {
    pub(super) fn new(
        iam: aws_sdk_iam::Client,
        ttl: Duration,
        metrics: Metrics,
        access: Arc<AccountAccess>,
    ) -> IamPolicies {
        IamPolicies {
            iam,
            ttl,
            metrics,
            last: Mutex::new(None),
            access,
        }
    }

    /// The policies of `principal_arn`: the kept answer while it is fresh, else IAM's.
    pub async fn get(&self, principal_arn: &str) -> Result<Arc<PrincipalPolicies>, BackendError> {
        let mut last = self.last.lock().await;
        if let Some(held) = last.as_ref()
            && held.fresh_for(principal_arn, self.ttl)
        {
            return held.answer.clone();
        }
        let answer = self
            .read(principal_arn)
            .await
            .map_err(|e| self.access.explain(e))
            .map(Arc::new);
        self.metrics.count_backend(
            "principal_policies",
            answer.as_ref().map_or_else(BackendError::class, |_| "ok"),
        );
        *last = Some(Held {
            principal: principal_arn.to_owned(),
            at: Instant::now(),
            answer: answer.clone(),
        });
        answer
    }

    async fn read(&self, principal_arn: &str) -> Result<PrincipalPolicies, BackendError> {
        let (principal, found_arn, boundary) = match IamPrincipal::parse(principal_arn) {
            Some(IamPrincipal::Role(name)) => {
                let what = format!("role `{name}`");
                let output = self.iam.get_role().role_name(name).send().await;
                let output = output.map_err(|e| iam_error("iam:GetRole", &what, e))?;
                let role = output
                    .role()
                    .ok_or_else(|| BackendError::internal("iam:GetRole answered without a role"))?;
                let boundary = role.permissions_boundary();
                (
                    Holder::Role(name),
                    role.arn().to_owned(),
                    boundary_arn(boundary),
                )
            }
            Some(IamPrincipal::User(name)) => {
                let what = format!("user `{name}`");
                let output = self.iam.get_user().user_name(name).send().await;
                let output = output.map_err(|e| iam_error("iam:GetUser", &what, e))?;
                let user = output
                    .user()
                    .ok_or_else(|| BackendError::internal("iam:GetUser answered without a user"))?;
                let boundary = user.permissions_boundary();
                (
                    Holder::User(name),
                    user.arn().to_owned(),
                    boundary_arn(boundary),
                )
            }
            None => {
                return Err(BackendError::InvalidRequest {
                    field: "principal_arn",
                    message: format!(
                        "`{principal_arn}` is not the ARN of an IAM role or user, whose policies IAM lists"
                    ),
                });
            }
        };
        same_principal(principal_arn, &found_arn)?;
        let mut policies = PrincipalPolicies::default();
        let mut seen = Vec::new();
        self.add_policies_of(principal, &mut seen, &mut policies)
            .await?;
        // A user's requests are also allowed by the policies of its groups.
        if let Holder::User(user) = principal {
            let groups = list!(
                self,
                "iam:ListGroupsForUser",
                list_groups_for_user,
                user_name,
                user
            )?;
            for group in groups.iter().map(|g| g.group_name()) {
                self.add_policies_of(Holder::Group(group), &mut seen, &mut policies)
                    .await?;
            }
        }
        if let Some(arn) = boundary {
            policies.permissions_boundary = Some(self.managed_policy(&arn).await?);
        }
        Ok(policies)
    }

    /// Adds the inline and attached managed policies of `holder` to the identity policies.
    async fn add_policies_of(
        &self,
        holder: Holder<'_>,
        seen: &mut Vec<String>,
        policies: &mut PrincipalPolicies,
    ) -> Result<(), BackendError> {
        let names = match holder {
            Holder::Role(n) => list!(
                self,
                "iam:ListRolePolicies",
                list_role_policies,
                role_name,
                n
            ),
            Holder::User(n) => list!(
                self,
                "iam:ListUserPolicies",
                list_user_policies,
                user_name,
                n
            ),
            Holder::Group(n) => {
                list!(
                    self,
                    "iam:ListGroupPolicies",
                    list_group_policies,
                    group_name,
                    n
                )
            }
        }?;
        for name in names {
            let source = format!("inline policy `{name}` of {holder}");
            let document = match holder {
                Holder::Role(n) => inline!(
                    self,
                    "iam:GetRolePolicy",
                    get_role_policy,
                    role_name,
                    n,
                    &name,
                    &source
                ),
                Holder::User(n) => inline!(
                    self,
                    "iam:GetUserPolicy",
                    get_user_policy,
                    user_name,
                    n,
                    &name,
                    &source
                ),
                Holder::Group(n) => inline!(
                    self,
                    "iam:GetGroupPolicy",
                    get_group_policy,
                    group_name,
                    n,
                    &name,
                    &source
                ),
            }?;
            policies
                .identity_policies
                .push(SourcedPolicy { source, document });
        }
        let attached = match holder {
            Holder::Role(n) => list!(
                self,
                "iam:ListAttachedRolePolicies",
                list_attached_role_policies,
                role_name,
                n
            ),
            Holder::User(n) => list!(
                self,
                "iam:ListAttachedUserPolicies",
                list_attached_user_policies,
                user_name,
                n
            ),
            Holder::Group(n) => list!(
                self,
                "iam:ListAttachedGroupPolicies",
                list_attached_group_policies,
                group_name,
                n
            ),
        }?;
        for arn in attached.iter().filter_map(|p| p.policy_arn()) {
            self.add_managed(arn, seen, policies).await?;
        }
        Ok(())
    }

    /// Adds the managed policy `arn` to the identity policies, once however often it is
    /// attached (to the user and to its groups).
    async fn add_managed(
        &self,
        arn: &str,
        seen: &mut Vec<String>,
        policies: &mut PrincipalPolicies,
    ) -> Result<(), BackendError> {
        if seen.iter().any(|s| s == arn) {
            return Ok(());
        }
        seen.push(arn.to_owned());
        let policy = self.managed_policy(arn).await?;
        policies.identity_policies.push(policy);
        Ok(())
    }

    /// A managed policy's default version: the one IAM evaluates.
    async fn managed_policy(&self, arn: &str) -> Result<SourcedPolicy, BackendError> {
        let what = format!("managed policy `{arn}`");
        let output = self
            .iam
            .get_policy()
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| iam_error("iam:GetPolicy", &what, e))?;
        let version = output
            .policy()
            .and_then(|p| p.default_version_id())
            .ok_or_else(|| {
                BackendError::internal(format!(
                    "iam:GetPolicy answered without a default version for {what}"
                ))
            })?
            .to_owned();
        let output = self
            .iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(&version)
            .send()
            .await
            .map_err(|e| iam_error("iam:GetPolicyVersion", &what, e))?;
        let document = output
            .policy_version()
            .and_then(|v| v.document())
            .ok_or_else(|| {
                BackendError::internal(format!(
                    "iam:GetPolicyVersion answered without a document for {what}"
                ))
            })?;
        Ok(SourcedPolicy {
            source: format!("{what} (version {version})"),
            document: decode("iam:GetPolicyVersion", document)?,
        })
    }
}

/// Classifies an IAM error as every AWS error is; a missing entity is named.
fn iam_error<E: ProvideErrorMetadata + std::fmt::Debug>(
    operation: &'static str,
    what: &str,
    error: SdkError<E, HttpResponse>,
) -> BackendError {
    match classify(operation, error) {
        BackendError::NotFound { .. } => BackendError::NotFound {
            what: what.to_owned(),
        },
        other => other,
    }
}

/// The managed policy a permissions boundary names.
fn boundary_arn(
    boundary: Option<&aws_sdk_iam::types::AttachedPermissionsBoundary>,
) -> Option<String> {
    boundary
        .and_then(|b| b.permissions_boundary_arn())
        .map(str::to_owned)
}

/// IAM answers for the name in the caller's own account: a principal of another account, or
/// the same name on another path, is another principal.
fn same_principal(principal_arn: &str, found_arn: &str) -> Result<(), BackendError> {
    if principal_arn == found_arn {
        return Ok(());
    }
    Err(BackendError::InvalidRequest {
        field: "principal_arn",
        message: format!(
            "IAM answered for `{found_arn}`, not `{principal_arn}` (another account's principal, or another path): the sidecar reads only principals of its own account"
        ),
    })
}

/// IAM returns policy documents URL-encoded (RFC 3986).
fn decode(operation: &'static str, document: &str) -> Result<String, BackendError> {
    percent_encoding::percent_decode_str(document)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| {
            BackendError::internal(format!(
                "{operation} answered a document that is not URL-encoded UTF-8"
            ))
        })
}

/// Every item of a paginated IAM list, up to [`MAX_LIST_ITEMS`].
async fn bounded<T, E: ProvideErrorMetadata + std::fmt::Debug>(
    operation: &'static str,
    mut items: PaginationStream<Result<T, SdkError<E, HttpResponse>>>,
) -> Result<Vec<T>, BackendError> {
    let mut all = Vec::new();
    while let Some(item) = items.next().await {
        if all.len() == MAX_LIST_ITEMS {
            return Err(BackendError::internal(format!(
                "{operation} listed more than {MAX_LIST_ITEMS} items"
            )));
        }
        all.push(item.map_err(|e| classify(operation, e))?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_url_decoded_and_must_be_utf8() {
        assert_eq!(
            decode("op", "%7B%22Action%22%3A%22kms%3A%2A%22%7D").unwrap(),
            r#"{"Action":"kms:*"}"#
        );
        // A literal plus stays a plus (RFC 3986, not form encoding).
        assert_eq!(decode("op", "a+b%20c").unwrap(), "a+b c");
        assert!(decode("op", "%FF%FE").is_err());
    }

    #[test]
    fn answers_are_kept_for_the_interval_failures_shorter() {
        let held = |answer| Held {
            principal: "p".into(),
            at: Instant::now(),
            answer,
        };
        let hour = Duration::from_secs(3600);
        let ok = held(Ok(Arc::default()));
        assert_eq!(ok.kept_for(hour), hour);
        assert!(ok.fresh_for("p", hour));
        assert!(!ok.fresh_for("q", hour), "another principal's answer");
        assert!(!ok.fresh_for("p", Duration::ZERO));
        let failed = held(Err(BackendError::Timeout));
        assert_eq!(failed.kept_for(hour), FAILURE_TTL);
        assert_eq!(
            failed.kept_for(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}
