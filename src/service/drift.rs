//! The key watch: the state of each target (the key in use, whether it passes
//! verification), the events that change it, and the drift check that re-verifies every
//! configured customer managed key on an interval, through the backend (never the cache),
//! to notice a key disabled or a policy edited behind the sidecar's back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::sync::broadcast;

use super::keycheck::KeyVerifier;
use crate::{
    backend::Backend,
    domain::{KeyArn, Target},
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
}

/// One event of a target's key.
#[derive(Debug, Clone)]
pub struct KeyEvent {
    pub kind: KeyEventKind,
    pub target: Target,
    /// The customer managed key in use; `None`: the AWS owned key.
    pub key_arn: Option<String>,
    pub report: Option<Report>,
    pub time: OffsetDateTime,
}

/// What is known of a target.
#[derive(Debug, Clone, Default)]
struct TargetState {
    key_arn: Option<String>,
    /// The last verification of that key; `None` until one was made.
    report: Option<Report>,
}

/// The state of every target, and the events.
pub struct KeyWatch {
    backend: Arc<dyn Backend>,
    verifier: KeyVerifier,
    metrics: Metrics,
    states: Mutex<HashMap<Target, TargetState>>,
    events: broadcast::Sender<KeyEvent>,
}

impl KeyWatch {
    pub fn new(backend: Arc<dyn Backend>, verifier: KeyVerifier, metrics: Metrics) -> KeyWatch {
        let (events, _) = broadcast::channel(256);
        KeyWatch {
            backend,
            verifier,
            metrics,
            states: Mutex::new(HashMap::new()),
            events,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<KeyEvent> {
        self.events.subscribe()
    }

    /// The state of a target, as a `Current` event.
    pub fn current(&self, target: Target) -> KeyEvent {
        let state = self
            .states
            .lock()
            .ok()
            .and_then(|s| s.get(&target).cloned())
            .unwrap_or_default();
        KeyEvent {
            kind: KeyEventKind::Current,
            target,
            key_arn: state.key_arn,
            report: state.report,
            time: OffsetDateTime::now_utc(),
        }
    }

    fn publish(&self, kind: KeyEventKind, target: Target, state: &TargetState) {
        let verdict = state.key_arn.as_ref().and(state.report.as_ref());
        self.metrics.set_key_verification(target, verdict);
        // Nobody listening is fine.
        let _ = self.events.send(KeyEvent {
            kind,
            target,
            key_arn: state.key_arn.clone(),
            report: state.report.clone(),
            time: OffsetDateTime::now_utc(),
        });
    }

    fn set(&self, target: Target, state: TargetState) -> Option<TargetState> {
        self.states
            .lock()
            .ok()
            .and_then(|mut states| states.insert(target, state))
    }

    /// A key was put in use through this sidecar, after passing `report`.
    pub fn updated(&self, target: Target, key: &KeyArn, report: Report) {
        let state = TargetState {
            key_arn: Some(key.as_str().to_owned()),
            report: Some(report),
        };
        self.set(target, state.clone());
        self.publish(KeyEventKind::Updated, target, &state);
    }

    /// The AWS owned key was put back in use through this sidecar.
    pub fn reset(&self, target: Target) {
        let state = TargetState::default();
        self.set(target, state.clone());
        self.publish(KeyEventKind::Reset, target, &state);
    }

    /// Re-verifies the key in use for every target; publishes DRIFT_DETECTED or
    /// DRIFT_RESOLVED when a verdict flips. A backend that cannot answer changes nothing.
    pub async fn check(&self) {
        for target in Target::all() {
            let key_arn = match self.backend.get_encryption_key(target).await {
                Ok(key) => key,
                Err(error) => {
                    tracing::warn!(%target, %error, "drift check: cannot read the key in use");
                    continue;
                }
            };
            let Some(key_arn) = key_arn else {
                let previous = self.set(target, TargetState::default());
                if previous.is_some_and(|p| p.key_arn.is_some()) {
                    self.publish(KeyEventKind::Reset, target, &TargetState::default());
                } else {
                    self.metrics.set_key_verification(target, None);
                }
                continue;
            };
            let report = match KeyArn::parse(&key_arn) {
                Ok(key) => match self
                    .verifier
                    .verify_key(&key, &self.verifier.subject_for(target))
                    .await
                {
                    Ok(report) => report,
                    Err(error) => {
                        tracing::warn!(%target, %error, "drift check: cannot verify the key in use");
                        continue;
                    }
                },
                Err(error) => {
                    tracing::warn!(%target, %error, "drift check: the key in use is not a key ARN");
                    continue;
                }
            };
            self.metrics
                .count_verification(report.profile.as_str(), report.passed);
            let state = TargetState {
                key_arn: Some(key_arn.clone()),
                report: Some(report.clone()),
            };
            let previous = self.set(target, state.clone());
            let was = previous
                .as_ref()
                .and_then(|p| p.report.as_ref().map(|r| (p.key_arn.clone(), r.passed)));
            let kind = match (was, report.passed) {
                // First look, or another key: report only a failure.
                (None, false) => Some(KeyEventKind::DriftDetected),
                (Some((old, _)), false) if old.as_deref() != Some(key_arn.as_str()) => {
                    Some(KeyEventKind::DriftDetected)
                }
                (Some((_, true)), false) => Some(KeyEventKind::DriftDetected),
                (Some((old, false)), true) if old.as_deref() == Some(key_arn.as_str()) => {
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
                    self.publish(kind, target, &state);
                }
                None => self.metrics.set_key_verification(target, Some(&report)),
            }
        }
    }

    /// Checks every `interval` until the task is dropped.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            self.check().await;
            tokio::time::sleep(interval).await;
        }
    }
}
