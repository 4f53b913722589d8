//! The embedded local backend: Inspector's key configuration and a local KMS, in a
//! durable store under the state directory. Needs no AWS account.

pub mod kms;
mod store;

use std::{path::Path, sync::Arc};

use async_trait::async_trait;

pub use kms::{CreateKeyInput, LocalKms};
use store::{KeyReads, Store};

use super::{Backend, BackendError};
use crate::{
    domain::{KeyArn, Target},
    verify::KeyMetadata,
};

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "keyd.redb";

pub struct LocalBackend {
    kms: LocalKms,
    /// Test/dev setting: latency before each key-configuration write.
    write_latency: std::time::Duration,
}

fn config_key(target: Target) -> String {
    format!(
        "{}/{}",
        target.scan_type().as_aws_str(),
        target.resource_type().as_aws_str()
    )
}

impl LocalBackend {
    /// Opens the store in `state_dir` (created if missing).
    pub fn open(
        state_dir: &Path,
        region: &str,
        account_id: &str,
    ) -> Result<LocalBackend, BackendError> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            BackendError::internal(format!(
                "cannot create state directory `{}`: {e}",
                state_dir.display()
            ))
        })?;
        let store = Arc::new(Store::open(&state_dir.join(STORE_FILE))?);
        Ok(LocalBackend {
            kms: LocalKms::new(store, region.to_owned(), account_id.to_owned()),
            write_latency: std::time::Duration::ZERO,
        })
    }

    /// Adds `latency` before every key-configuration write (test/dev only).
    pub fn with_write_latency(mut self, latency: std::time::Duration) -> LocalBackend {
        self.write_latency = latency;
        self
    }

    async fn injected_latency(&self) {
        if !self.write_latency.is_zero() {
            tokio::time::sleep(self.write_latency).await;
        }
    }

    /// The local KMS, for the local-only KMS service.
    pub fn kms(&self) -> &LocalKms {
        &self.kms
    }
}

#[async_trait]
impl Backend for LocalBackend {
    async fn get_encryption_key(&self, target: Target) -> Result<Option<String>, BackendError> {
        self.kms
            .blocking(move |kms| kms.store.read(|tx| tx.config(&config_key(target))))
            .await
    }

    async fn update_encryption_key(
        &self,
        target: Target,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        self.injected_latency().await;
        let arn = key.as_str().to_owned();
        self.kms
            .blocking(move |kms| {
                kms.store
                    .write(|tx| tx.set_config(&config_key(target), Some(&arn)))
            })
            .await
    }

    async fn reset_encryption_key(&self, target: Target) -> Result<(), BackendError> {
        self.injected_latency().await;
        self.kms
            .blocking(move |kms| {
                kms.store
                    .write(|tx| tx.set_config(&config_key(target), None))
            })
            .await
    }

    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError> {
        let arn = key.as_str().to_owned();
        self.kms.blocking(move |kms| kms.describe_arn(&arn)).await
    }

    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError> {
        let arn = key.as_str().to_owned();
        self.kms.blocking(move |kms| kms.policy_of_arn(&arn)).await
    }
}
