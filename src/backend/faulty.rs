//! Test hook (the `test-hooks` feature, which builds users run leave off): a backend wrapper
//! that injects faults read from a file, and a fixed latency before writes, so reliability
//! scenarios (a backend that is down, slow, hanging or throttling) can be driven against the
//! real server. On only when `local.fault_file` or `local.write_latency` is set.
//!
//! The file is read again on every backend call, so a test changes the faults while the
//! server runs; a missing file means no faults. Example:
//!
//! ```toml
//! # Applies to get_encryption_key, describe_key, get_key_policy and batch_get_code_snippet.
//! [reads]
//! error = "unavailable"   # unavailable | throttled | timeout | internal | access_denied
//! latency = "200ms"       # added before the call
//! hang = false            # never answer
//!
//! # Applies to update_encryption_key and reset_encryption_key; a faulted write is not made.
//! [writes]
//! hang = true
//! ```
//!
//! A share of the calls, deterministically: `first = 3` gives the error (or hang) of its
//! table to the first three calls of that kind alone, `every = 2` to every second one (the
//! 2nd, the 4th, ...); with both, a call must be among the first and a multiple of `every`.
//! Calls are counted by kind from the server's start, whatever the file said when they were
//! made; the latency applies to every call regardless.
//!
//! ```toml
//! [writes]
//! error = "throttled"
//! every = 2
//! ```

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use serde::Deserialize;

use super::{Backend, BackendError, PrincipalPolicies};
use crate::{
    config::LocalConfig,
    domain::{CodeSnippets, FindingArn, KeyArn, Scope, ScopedTarget},
    verify::KeyMetadata,
};

/// The faults of one kind of call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// The error every call answers (after the latency), by class.
    pub error: Option<FaultError>,
    /// Added before every call.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// The call never answers (until the caller gives up).
    pub hang: bool,
    /// The error and the hang are for the first this many calls of the kind alone.
    pub first: Option<u64>,
    /// The error and the hang are for every this-many-th call of the kind alone.
    pub every: Option<u64>,
}

impl Fault {
    /// Whether the `n`th call of its kind (counted from 1) gets the error or the hang.
    fn strikes(&self, n: u64) -> bool {
        self.first.is_none_or(|first| n <= first)
            && self
                .every
                .is_none_or(|every| every <= 1 || n.is_multiple_of(every))
    }
}

/// An injected error, one per backend error class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultError {
    Unavailable,
    Throttled,
    Timeout,
    Internal,
    AccessDenied,
}

/// The retry hint an injected throttle carries: not the server's own fallback for a backend
/// that gives none (1 s, `status::DEFAULT_RETRY_AFTER`), so a test can tell that the
/// backend's hint is what reaches the caller.
pub const THROTTLED_RETRY_AFTER: Duration = Duration::from_millis(1500);

impl From<FaultError> for BackendError {
    fn from(error: FaultError) -> BackendError {
        const INJECTED: &str = "injected fault (local.fault_file)";
        match error {
            FaultError::Unavailable => BackendError::Unavailable {
                message: INJECTED.into(),
                retry_after: None,
            },
            FaultError::Throttled => BackendError::Throttled {
                retry_after: Some(THROTTLED_RETRY_AFTER),
            },
            FaultError::Timeout => BackendError::Timeout,
            FaultError::Internal => BackendError::internal(INJECTED),
            FaultError::AccessDenied => BackendError::AccessDenied {
                message: INJECTED.into(),
            },
        }
    }
}

/// The fault file's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub reads: Fault,
    pub writes: Fault,
}

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
}

/// Injects the faults of `file`, and `write_latency` before every write, into the calls of
/// the backend it wraps.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    file: Option<PathBuf>,
    write_latency: Duration,
    /// The calls made so far, reads and writes.
    reads: AtomicU64,
    writes: AtomicU64,
}

impl FaultyBackend {
    pub fn new(
        inner: Arc<dyn Backend>,
        file: Option<PathBuf>,
        write_latency: Duration,
    ) -> FaultyBackend {
        tracing::warn!(file = ?file, ?write_latency, "fault injection is on (local.fault_file, local.write_latency): for tests only");
        FaultyBackend {
            inner,
            file,
            write_latency,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// The backend wrapper `local.fault_file` and `local.write_latency` ask for, which the
    /// App applies where a test's own wrapper goes (inside it): the faults, or the backend
    /// as it is when none are asked for.
    pub fn wrapper(
        local: &LocalConfig,
    ) -> impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend> + Send + 'static {
        let (file, write_latency) = (local.fault_file.clone(), local.write_latency);
        move |inner| {
            if file.is_none() && write_latency.is_zero() {
                return inner;
            }
            Arc::new(FaultyBackend::new(inner, file, write_latency))
        }
    }

    /// The faults in force: none when the file is missing or does not parse (logged).
    async fn faults(&self) -> Faults {
        let Some(file) = &self.file else {
            return Faults::default();
        };
        match tokio::fs::read_to_string(file).await {
            Ok(text) => toml::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "fault file ignored");
                Faults::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Faults::default(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "fault file unreadable");
                Faults::default()
            }
        }
    }

    async fn inject(&self, kind: Kind) -> Result<(), BackendError> {
        let faults = self.faults().await;
        let (fault, n) = match kind {
            Kind::Read => (faults.reads, self.reads.fetch_add(1, Ordering::Relaxed) + 1),
            Kind::Write => {
                let n = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
                if !self.write_latency.is_zero() {
                    tokio::time::sleep(self.write_latency).await;
                }
                (faults.writes, n)
            }
        };
        if !fault.latency.is_zero() {
            tokio::time::sleep(fault.latency).await;
        }
        if !fault.strikes(n) {
            return Ok(());
        }
        if fault.hang {
            // Until the caller's deadline drops this future; a day bounds it regardless.
            tokio::time::sleep(Duration::from_secs(86_400)).await;
        }
        match fault.error {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    async fn get_encryption_key(
        &self,
        target: ScopedTarget,
    ) -> Result<Option<String>, BackendError> {
        self.inject(Kind::Read).await?;
        self.inner.get_encryption_key(target).await
    }

    async fn update_encryption_key(
        &self,
        target: ScopedTarget,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        self.inject(Kind::Write).await?;
        self.inner.update_encryption_key(target, key).await
    }

    async fn reset_encryption_key(&self, target: ScopedTarget) -> Result<(), BackendError> {
        self.inject(Kind::Write).await?;
        self.inner.reset_encryption_key(target).await
    }

    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError> {
        self.inject(Kind::Read).await?;
        self.inner.describe_key(key).await
    }

    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError> {
        self.inject(Kind::Read).await?;
        self.inner.get_key_policy(key).await
    }

    async fn resolve_alias(
        &self,
        scope: Scope,
        alias_name: &str,
    ) -> Result<Option<KeyArn>, BackendError> {
        self.inject(Kind::Read).await?;
        self.inner.resolve_alias(scope, alias_name).await
    }

    async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        self.inject(Kind::Read).await?;
        self.inner.batch_get_code_snippet(findings).await
    }

    /// Not faulted: the local backend it wraps has no IAM.
    async fn principal_policies(
        &self,
        principal_arn: &str,
    ) -> Result<Option<Arc<PrincipalPolicies>>, BackendError> {
        self.inner.principal_policies(principal_arn).await
    }

    /// Not faulted: the grants come from the same store the key does, after its reads.
    async fn list_grants(
        &self,
        key: &KeyArn,
    ) -> Result<Option<Vec<crate::verify::access::Grant>>, BackendError> {
        self.inner.list_grants(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_file_names_classes_latency_and_hangs() {
        let faults: Faults = toml::from_str(
            "[reads]\nerror = \"throttled\"\nlatency = \"250ms\"\n[writes]\nhang = true\n",
        )
        .unwrap();
        assert_eq!(faults.reads.error, Some(FaultError::Throttled));
        assert_eq!(faults.reads.latency, Duration::from_millis(250));
        assert!(faults.writes.hang && faults.writes.error.is_none());
        assert!(toml::from_str::<Faults>("[reads]\nerror = \"flaky\"\n").is_err());
        assert!(toml::from_str::<Faults>("[read]\n").is_err());
        assert_eq!(
            BackendError::from(FaultError::Throttled).class(),
            "throttled"
        );
    }

    #[test]
    fn first_and_every_fault_a_share_of_the_calls() {
        let faults: Faults =
            toml::from_str("[reads]\nerror = \"throttled\"\nfirst = 3\n[writes]\nerror = \"throttled\"\nevery = 2\n")
                .unwrap();
        let struck = |fault: Fault| (1..=8).filter(|n| fault.strikes(*n)).collect::<Vec<_>>();
        assert_eq!(struck(faults.reads), [1, 2, 3]);
        assert_eq!(struck(faults.writes), [2, 4, 6, 8]);
        let both: Fault = toml::from_str("first = 5\nevery = 2\n").unwrap();
        assert_eq!(struck(both), [2, 4]);
        assert_eq!(struck(Fault::default()), (1..=8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn every_second_write_is_throttled_and_reads_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("faults.toml");
        std::fs::write(&file, "[writes]\nerror = \"throttled\"\nevery = 2\n").unwrap();
        let settings = super::super::local::tests::settings();
        let local = super::super::local::LocalBackend::open(
            dir.path(),
            &dir.path().join("kek"),
            Arc::new(crate::scopes::ManagedScopes::only(&settings)),
        )
        .unwrap();
        let faulty = FaultyBackend::new(Arc::new(local), Some(file), Duration::ZERO);
        let mut throttled = Vec::new();
        for _ in 0..4 {
            faulty.inject(Kind::Read).await.unwrap();
            throttled.push(matches!(
                faulty.inject(Kind::Write).await,
                Err(BackendError::Throttled { .. })
            ));
        }
        assert_eq!(throttled, [false, true, false, true]);
    }
}
