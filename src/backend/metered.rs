//! A backend wrapper that counts every call by operation and result class.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Backend, BackendError};
use crate::{
    domain::{CodeSnippets, FindingArn, KeyArn, Target},
    metrics::Metrics,
    verify::KeyMetadata,
};

/// Counts the calls of the backend it wraps.
pub struct MeteredBackend {
    inner: Arc<dyn Backend>,
    metrics: Metrics,
}

impl MeteredBackend {
    pub fn new(inner: Arc<dyn Backend>, metrics: Metrics) -> MeteredBackend {
        MeteredBackend { inner, metrics }
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
        result
    }
}

#[async_trait]
impl Backend for MeteredBackend {
    async fn get_encryption_key(&self, target: Target) -> Result<Option<String>, BackendError> {
        let result = self.inner.get_encryption_key(target).await;
        self.count("get_encryption_key", result)
    }

    async fn update_encryption_key(
        &self,
        target: Target,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        let result = self.inner.update_encryption_key(target, key).await;
        self.count("update_encryption_key", result)
    }

    async fn reset_encryption_key(&self, target: Target) -> Result<(), BackendError> {
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

    async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        let result = self.inner.batch_get_code_snippet(findings).await;
        self.count("batch_get_code_snippet", result)
    }
}
