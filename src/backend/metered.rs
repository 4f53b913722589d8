//! A backend wrapper that counts every call by operation and result class, and keeps the
//! last answer for readiness, which rides on the calls the cache and the drift check make
//! instead of making its own.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::{sync::watch, time::Instant};

use super::{Backend, BackendError, PrincipalPolicies};
use crate::{
    domain::{CodeSnippets, FindingArn, KeyArn, Scope, ScopedTarget},
    metrics::Metrics,
    verify::KeyMetadata,
};

/// The last answer of the backend to any call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendAnswer {
    /// It answered: any outcome but an outage or an internal failure (throttling and
    /// refusals of the request still mean the backend is there).
    pub reachable: bool,
    pub at: Instant,
}

/// Where the backend's answers are seen: the metered backend records every call's, and a
/// readiness probe records its own timeout. Subscribers are woken when reachability
/// changes, not on every answer.
#[derive(Debug)]
pub struct BackendAnswers {
    last: watch::Sender<Option<BackendAnswer>>,
}

impl Default for BackendAnswers {
    fn default() -> BackendAnswers {
        BackendAnswers {
            last: watch::Sender::new(None),
        }
    }
}

impl BackendAnswers {
    /// Records an answer now.
    pub fn record(&self, reachable: bool) {
        let answer = BackendAnswer {
            reachable,
            at: Instant::now(),
        };
        self.last.send_if_modified(|last| {
            let changed = last.is_none_or(|l| l.reachable != reachable);
            *last = Some(answer);
            changed
        });
    }

    /// The last answer, if any yet.
    pub fn last(&self) -> Option<BackendAnswer> {
        *self.last.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<BackendAnswer>> {
        self.last.subscribe()
    }
}

/// Counts the calls of the backend it wraps.
pub struct MeteredBackend {
    inner: Arc<dyn Backend>,
    metrics: Metrics,
    answers: Arc<BackendAnswers>,
}

impl MeteredBackend {
    pub fn new(inner: Arc<dyn Backend>, metrics: Metrics) -> MeteredBackend {
        MeteredBackend {
            inner,
            metrics,
            answers: Arc::default(),
        }
    }

    /// The answers of every call through it.
    pub fn answers(&self) -> Arc<BackendAnswers> {
        self.answers.clone()
    }

    fn count<T>(
        &self,
        operation: &'static str,
        result: Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let class = match &result {
            Ok(_) => "ok",
            Err(e) => e.class(),
        };
        self.metrics.count_backend(operation, class);
        self.answers.record(
            result
                .as_ref()
                .map_or_else(BackendError::backend_answered, |_| true),
        );
        result
    }
}

#[async_trait]
impl Backend for MeteredBackend {
    async fn get_encryption_key(
        &self,
        target: ScopedTarget,
    ) -> Result<Option<String>, BackendError> {
        let result = self.inner.get_encryption_key(target).await;
        self.count("get_encryption_key", result)
    }

    async fn update_encryption_key(
        &self,
        target: ScopedTarget,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        let result = self.inner.update_encryption_key(target, key).await;
        self.count("update_encryption_key", result)
    }

    async fn reset_encryption_key(&self, target: ScopedTarget) -> Result<(), BackendError> {
        let result = self.inner.reset_encryption_key(target).await;
        self.count("reset_encryption_key", result)
    }

    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError> {
        let result = self.inner.describe_key(key).await;
        self.count("describe_key", result)
    }

    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError> {
        let result = self.inner.get_key_policy(key).await;
        self.count("get_key_policy", result)
    }

    async fn resolve_alias(
        &self,
        scope: Scope,
        alias_name: &str,
    ) -> Result<Option<KeyArn>, BackendError> {
        let result = self.inner.resolve_alias(scope, alias_name).await;
        self.count("resolve_alias", result)
    }

    async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        let result = self.inner.batch_get_code_snippet(findings).await;
        self.count("batch_get_code_snippet", result)
    }

    /// Not counted here: the aws backend keeps IAM's answer for the drift interval and
    /// counts its reads of IAM itself. Nor an answer readiness follows: without IAM,
    /// verification goes on (IDENTITY_POLICY_NOT_CHECKED says why) and so does serving keys.
    async fn principal_policies(
        &self,
        principal_arn: &str,
    ) -> Result<Option<Arc<PrincipalPolicies>>, BackendError> {
        self.inner.principal_policies(principal_arn).await
    }

    /// Not counted: only the local backend lists grants, from its own store (no AWS call).
    async fn list_grants(
        &self,
        key: &KeyArn,
    ) -> Result<Option<Vec<crate::verify::access::Grant>>, BackendError> {
        self.inner.list_grants(key).await
    }
}
