//! The key watch: the events that change a target's key in use, and the drift check that
//! re-verifies every configured customer managed key on an interval, reading it from the
//! backend (never a cached copy), to notice a key disabled or a policy edited behind the
//! sidecar's back. The key in use and its last verdict live in the cache (its one holder):
//! the drift check refreshes them there, so a key changed in AWS is what readers get next.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::broadcast;

use super::keycheck::{KeyVerifier, Subject};
use crate::{
    backend::BackendError,
    cache::{KeyCache, KeyInUse},
    domain::{KeyArn, ScopedTarget},
    metrics::Metrics,
    verify::Report,
};

/// What happened to a target's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEventKind {
    Current,
    Updated,
    Reset,
    DriftDetected,
    DriftResolved,
    DesiredStateDrift,
    DesiredStateRestored,
}

/// One event of a target's key.
#[derive(Debug, Clone)]
pub struct KeyEvent {
    pub kind: KeyEventKind,
    pub target: ScopedTarget,
    /// The customer managed key in use; `None`: the AWS owned key.
    pub key_arn: Option<String>,
    pub report: Option<Report>,
    pub time: OffsetDateTime,
}

/// The events of every target.
pub struct KeyWatch {
    cache: KeyCache,
    verifier: KeyVerifier,
    metrics: Metrics,
    events: broadcast::Sender<KeyEvent>,
}

impl KeyWatch {
    pub fn new(cache: KeyCache, verifier: KeyVerifier, metrics: Metrics) -> KeyWatch {
        let (events, _) = broadcast::channel(256);
        KeyWatch {
            cache,
            verifier,
            metrics,
            events,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<KeyEvent> {
        self.events.subscribe()
    }

    /// The state of a target, as a `Current` event: what the cache holds (loaded when it
    /// holds nothing yet).
    pub async fn current(&self, target: ScopedTarget) -> Result<KeyEvent, BackendError> {
        let held = self.cache.key_in_use(target).await?;
        Ok(KeyEvent {
            kind: KeyEventKind::Current,
            target,
            key_arn: held.key_arn.map(|k| k.to_string()),
            report: held.verdict.map(|r| (*r).clone()),
            time: OffsetDateTime::now_utc(),
        })
    }

    fn publish(
        &self,
        kind: KeyEventKind,
        target: ScopedTarget,
        key_arn: Option<&str>,
        report: Option<&Report>,
    ) {
        self.set_metric(target, key_arn.and(report));
        // Nobody listening is fine.
        let _ = self.events.send(KeyEvent {
            kind,
            target,
            key_arn: key_arn.map(str::to_owned),
            report: report.cloned(),
            time: OffsetDateTime::now_utc(),
        });
    }

    /// The verification gauges: per (scan type, resource type) for the sidecar's own scope,
    /// and a series per scope only while its key fails, so they do not grow with the
    /// accounts.
    fn set_metric(&self, target: ScopedTarget, report: Option<&Report>) {
        self.metrics
            .set_scope_key_failing(target, report.is_some_and(|r| !r.passed));
        if target.scope == self.verifier.scopes().own() {
            self.metrics.set_key_verification(target.target, report);
        }
    }

    /// A reconcile round found `target` out of the desired state (`in_state` false), or in
    /// it again, with `key_arn` in use. The verification gauges are not the desired state's
    /// to set.
    pub fn desired_state(&self, target: ScopedTarget, key_arn: Option<&str>, in_state: bool) {
        let kind = if in_state {
            KeyEventKind::DesiredStateRestored
        } else {
            KeyEventKind::DesiredStateDrift
        };
        // Nobody listening is fine.
        let _ = self.events.send(KeyEvent {
            kind,
            target,
            key_arn: key_arn.map(str::to_owned),
            report: None,
            time: OffsetDateTime::now_utc(),
        });
    }

    /// A key was put in use through this sidecar, after passing `report`.
    pub fn updated(&self, target: ScopedTarget, key: &KeyArn, report: &Report) {
        self.publish(
            KeyEventKind::Updated,
            target,
            Some(key.as_str()),
            Some(report),
        );
    }

    /// The AWS owned key was put back in use through this sidecar.
    pub fn reset(&self, target: ScopedTarget) {
        self.publish(KeyEventKind::Reset, target, None, None);
    }

    /// A read of `target` from the backend found the AWS owned key where the cache held a
    /// customer managed one (`previous`): a reset made elsewhere, published as RESET. Whoever
    /// reads first (the drift check, or a fleet plan) says so; the others then find nothing
    /// changed. Whether it was one.
    pub fn reset_seen(
        &self,
        target: ScopedTarget,
        previous: Option<&KeyInUse>,
        now: &KeyInUse,
    ) -> bool {
        let reset = now.key_arn.is_none() && previous.is_some_and(|p| p.key_arn.is_some());
        if reset {
            self.publish(KeyEventKind::Reset, target, None, None);
        }
        reset
    }

    /// Re-verifies the key in use for `target`; publishes DRIFT_DETECTED or DRIFT_RESOLVED
    /// when its verdict flips. A backend that cannot answer changes nothing.
    async fn check_target(&self, target: ScopedTarget) {
        let (previous, now) = match self.cache.refresh(target).await {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(%target, %error, "drift check: cannot read the key in use");
                return;
            }
        };
        if self.reset_seen(target, previous.as_ref(), &now) {
            return;
        }
        let Some(key_arn) = now.key_arn else {
            self.set_metric(target, None);
            return;
        };
        let settings = self.verifier.settings_in(target.scope);
        let report = match KeyArn::parse(&key_arn) {
            Ok(key) => match self
                .verifier
                .verify_key(&key, &Subject::configured(&settings, target.target))
                .await
            {
                Ok(report) => report,
                Err(error) => {
                    tracing::warn!(%target, %error, "drift check: cannot verify the key in use");
                    return;
                }
            },
            Err(error) => {
                tracing::warn!(%target, %error, "drift check: the key in use is not a key ARN");
                return;
            }
        };
        self.metrics
            .count_verification(report.profile.as_str(), report.passed);
        self.cache
            .set_verdict(target, &key_arn, report.clone())
            .await;
        let was = previous.and_then(
            |KeyInUse {
                 key_arn, verdict, ..
             }| verdict.map(|v| (key_arn, v.passed)),
        );
        let kind = match (was, report.passed) {
            // First look, or another key: report only a failure.
            (None, false) => Some(KeyEventKind::DriftDetected),
            (Some((old, _)), false) if old.as_deref() != Some(&*key_arn) => {
                Some(KeyEventKind::DriftDetected)
            }
            (Some((_, true)), false) => Some(KeyEventKind::DriftDetected),
            (Some((old, false)), true) if old.as_deref() == Some(&*key_arn) => {
                Some(KeyEventKind::DriftResolved)
            }
            _ => None,
        };
        match kind {
            Some(kind) => {
                if kind == KeyEventKind::DriftDetected {
                    let problems: Vec<String> = report
                        .errors()
                        .map(|f| format!("{}: {}", f.code, f.message))
                        .collect();
                    tracing::warn!(%target, key = %key_arn, findings = %problems.join("; "), "key drift: the key in use no longer passes verification");
                } else {
                    tracing::info!(%target, key = %key_arn, "key drift resolved: the key in use passes verification again");
                }
                self.publish(kind, target, Some(&key_arn), Some(&report));
            }
            None => self.set_metric(target, Some(&report)),
        }
    }

    /// Checks every managed target at start, one after another, then once per `interval`
    /// until the task is dropped, one at a time and spread over the interval (the gaps
    /// ± 15 %, drawn each time): many scopes cost the backend a steady trickle of calls,
    /// never a burst of all of them at once.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        for target in self.verifier.scopes().targets() {
            self.check_target(target).await;
        }
        loop {
            // Each round checks the scopes managed as it begins: a listing of the
            // organization may have added or removed some.
            let targets = self.verifier.scopes().targets();
            let gap = interval / u32::try_from(targets.len().max(1)).unwrap_or(u32::MAX);
            for target in targets {
                tokio::time::sleep(crate::jitter::around(gap)).await;
                if self.verifier.scopes().settings(target.scope).is_some() {
                    self.check_target(target).await;
                }
            }
        }
    }
}
