//! The App built in process, as an embedding program or a test would: it tells where it
//! listens, serves there until its shutdown future resolves, and stops with an error naming
//! a task that panicked, which a test makes happen through the backend hook.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use inspector_keyd::{
    app::Hooks,
    backend::{Backend, BackendError},
    domain::{CodeSnippets, FindingArn, KeyArn, Scope, ScopedTarget},
    proto::encryption_key_service_client::EncryptionKeyServiceClient,
    verify::KeyMetadata,
};

/// Passes every call to the backend it wraps, and panics in the key reads after the first
/// `healthy_reads` of them.
struct PanicsAfter {
    inner: Arc<dyn Backend>,
    healthy_reads: usize,
    reads: AtomicUsize,
}

#[async_trait]
impl Backend for PanicsAfter {
    async fn get_encryption_key(
        &self,
        target: ScopedTarget,
    ) -> Result<Option<String>, BackendError> {
        if self.reads.fetch_add(1, Ordering::SeqCst) >= self.healthy_reads {
            panic!("injected panic in a key read");
        }
        self.inner.get_encryption_key(target).await
    }
    async fn update_encryption_key(
        &self,
        target: ScopedTarget,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        self.inner.update_encryption_key(target, key).await
    }
    async fn reset_encryption_key(&self, target: ScopedTarget) -> Result<(), BackendError> {
        self.inner.reset_encryption_key(target).await
    }
    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError> {
        self.inner.describe_key(key).await
    }
    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError> {
        self.inner.get_key_policy(key).await
    }
    async fn resolve_alias(
        &self,
        scope: Scope,
        alias_name: &str,
    ) -> Result<Option<KeyArn>, BackendError> {
        self.inner.resolve_alias(scope, alias_name).await
    }
    async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        self.inner.batch_get_code_snippet(findings).await
    }
}

#[tokio::test]
async fn the_app_tells_where_it_listens_serves_there_and_stops_when_asked() {
    let common::InProcess { app, dir } = common::InProcess::build("", Hooks::default()).await;
    let addresses = app.addresses().clone();
    let tcp = addresses.tcp.unwrap();
    assert!(tcp.ip().is_loopback() && tcp.port() != 0, "{addresses:?}");
    assert_ne!(addresses.metrics.unwrap().port(), 0);
    assert_eq!(addresses.unix_socket, Some(dir.path().join("keyd.sock")));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let mut client = EncryptionKeyServiceClient::connect(format!("http://{tcp}"))
        .await
        .unwrap();
    let status = client
        .get_encryption_key(common::get_request(common::LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(common::reason(&status), "AWS_OWNED_KEY");

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the app stops");
    assert!(ended.unwrap().is_ok());
    assert!(
        !dir.path().join("keyd.sock").exists(),
        "the socket is removed"
    );
}

#[tokio::test]
async fn a_task_that_panics_stops_the_app_with_an_error_naming_it() {
    // Readiness's first check reads once; the drift watch's first read, at once, panics.
    let hooks = Hooks {
        wrap_backend: Some(Box::new(|inner| {
            Arc::new(PanicsAfter {
                inner,
                healthy_reads: 1,
                reads: AtomicUsize::new(0),
            })
        })),
    };
    let app = common::InProcess::build("", hooks).await.app;
    let result = tokio::time::timeout(Duration::from_secs(10), app.run(std::future::pending()))
        .await
        .expect("the app stops by itself");
    let error = result.unwrap_err().to_string();
    assert_eq!(
        error,
        "the drift watch panicked: injected panic in a key read"
    );
}
