//! The tasks beside the listeners (the reload of trusted files, the drift watch, the
//! readiness check, the purge of deleted keys), and the supervision of every task: spawned
//! under a name, so that one that fails, ends early or panics is named in the error that
//! stops the process.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::task::{Id, JoinError, JoinSet};

use crate::{
    backend::{Backend, aws::OrganizationAccounts, local::LocalKms},
    cache::{CacheState, REFRESH_AHEAD},
    config::{CacheConfig, Config},
    probes::Readiness,
    reload::Reloader,
    scopes::ManagedScopes,
    server::ServeError,
    service::{Reconciler, drift::KeyWatch},
};

/// A task's work: a listener's accept loop or a loop that runs until the end.
pub(super) type Task = Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>>;

/// A task under the name that errors give it.
pub(super) type Named = (String, Task);

/// A listener's accept loop, its failure naming the listener.
pub(super) fn listener_task(
    name: &str,
    serve: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
) -> Named {
    let listener = name.to_owned();
    let task = async move {
        serve
            .await
            .map_err(|source| ServeError::Serve { listener, source })
    };
    (name.to_owned(), Box::pin(task))
}

/// A loop that ends only when the process does (or fails without an error).
pub(super) fn background_task(name: &str, run: impl Future<Output = ()> + Send + 'static) -> Named {
    (
        name.to_owned(),
        Box::pin(async move {
            run.await;
            Ok(())
        }),
    )
}

/// How long readiness waits for another call's answer before asking the backend itself:
/// past the point where the cache refreshes a key that is being read, so steady reads keep
/// it informed, and within one key TTL, so it is never further behind than that.
fn readiness_quiet(cache: &CacheConfig) -> std::ops::Range<Duration> {
    cache.key_ttl.mul_f64(REFRESH_AHEAD.1 + 0.02)..cache.key_ttl
}

/// How often the local KMS forgets keys whose deletion date has passed (and at start).
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// The organization's accounts (`[organization]`), listed again every interval: an account
/// that joins is managed from the next listing, one that leaves no longer.
pub(super) struct OrganizationRefresh {
    pub lister: OrganizationAccounts,
    pub scopes: Arc<ManagedScopes>,
    pub cache: Arc<CacheState>,
    pub interval: Duration,
}

impl OrganizationRefresh {
    async fn run(self) {
        loop {
            tokio::time::sleep(crate::jitter::around(self.interval)).await;
            self.refresh().await;
        }
    }

    /// Lists the accounts and manages what the listing says; a listing that fails changes
    /// nothing (the last one's accounts stay managed) and is tried again at the next.
    async fn refresh(&self) {
        let accounts = match self.lister.list().await {
            Ok(accounts) => accounts,
            Err(error) => {
                tracing::warn!(%error, "listing the organization's accounts failed; the last listing's stay managed");
                return;
            }
        };
        let next = self.scopes.prepare(&accounts);
        // Slots first: a request that finds a new scope finds its cache slot.
        self.cache
            .manage(self.scopes.targets().into_iter().chain(next.targets()));
        let change = self.scopes.publish(next);
        self.cache.manage(self.scopes.targets());
        if change.added.is_empty() && change.removed.is_empty() {
            return;
        }
        let named = |scopes: &[crate::domain::Scope]| {
            let mut names: Vec<String> = scopes.iter().take(20).map(|s| s.to_string()).collect();
            if scopes.len() > names.len() {
                names.push(format!("and {} more", scopes.len() - names.len()));
            }
            names.join(", ")
        };
        tracing::info!(
            added = %named(&change.added),
            removed = %named(&change.removed),
            scopes = self.scopes.len(),
            "the organization's accounts changed"
        );
    }
}

/// The loops only some configurations run.
#[derive(Default)]
pub(super) struct OptionalLoops {
    /// The local backend's: the purge of deleted keys.
    pub local_kms: Option<LocalKms>,
    /// With `[organization]`.
    pub organization: Option<OrganizationRefresh>,
    /// With `[fleet] desired_state_file`.
    pub reconciler: Option<Reconciler>,
}

/// The loops beside the listeners.
pub(super) fn background(
    config: &Config,
    reloader: Reloader,
    key_watch: Arc<KeyWatch>,
    readiness: &Arc<Readiness>,
    backend: Arc<dyn Backend>,
    optional: OptionalLoops,
) -> Vec<Named> {
    let OptionalLoops {
        local_kms,
        organization,
        reconciler,
    } = optional;
    let mut tasks = vec![
        background_task("the rules and TLS reload", reloader.run()),
        background_task("the drift watch", key_watch.run(config.ops.drift_interval)),
        background_task(
            "the readiness check",
            readiness.clone().follow_backend(
                backend,
                readiness_quiet(&config.cache),
                config.ops.ready_check_interval,
            ),
        ),
    ];
    if let Some(reconciler) = reconciler {
        tasks.push(background_task(
            "the reconcile of the desired state",
            reconciler.run(),
        ));
    }
    if let Some(organization) = organization {
        tasks.push(background_task(
            "the listing of the organization's accounts",
            organization.run(),
        ));
    }
    if let Some(kms) = local_kms {
        tasks.push(background_task(
            "the purge of deleted keys",
            kms.purge_deleted_keys_every(PURGE_INTERVAL),
        ));
    }
    tasks
}

/// The running tasks: the listeners, drained at shutdown, and the background loops,
/// aborted then; each known by its name.
#[derive(Default)]
pub(super) struct Supervisor {
    names: HashMap<Id, String>,
    listeners: JoinSet<Result<(), ServeError>>,
    background: JoinSet<Result<(), ServeError>>,
}

impl Supervisor {
    pub(super) fn spawn_listeners(&mut self, tasks: Vec<Named>) {
        for (name, task) in tasks {
            self.names.insert(self.listeners.spawn(task).id(), name);
        }
    }

    pub(super) fn spawn_background(&mut self, tasks: Vec<Named>) {
        for (name, task) in tasks {
            self.names.insert(self.background.spawn(task).id(), name);
        }
    }

    /// `None` once `shutdown` resolves; the failure when a task ends first (always one,
    /// even when it ended without an error).
    pub(super) async fn until(&mut self, shutdown: impl Future<Output = ()>) -> Option<ServeError> {
        tokio::select! {
            () = shutdown => None,
            Some(ended) = self.listeners.join_next_with_id() => Some(ended_early(ended, &self.names)),
            Some(ended) = self.background.join_next_with_id() => Some(ended_early(ended, &self.names)),
        }
    }

    pub(super) fn abort_background(&mut self) {
        self.background.abort_all();
    }

    /// Waits at most `timeout` for the listeners to end; the first error of one, if any.
    pub(super) async fn drain(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ServeError>, tokio::time::error::Elapsed> {
        let names = &self.names;
        let listeners = &mut self.listeners;
        tokio::time::timeout(timeout, async {
            let mut first_error = None;
            while let Some(result) = listeners.join_next_with_id().await {
                if let Err(e) = ended(result, names) {
                    first_error.get_or_insert(e);
                }
            }
            first_error
        })
        .await
    }

    pub(super) fn abort_listeners(&mut self) {
        self.listeners.abort_all();
    }
}

fn task_name(id: Id, names: &HashMap<Id, String>) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| "a task".to_owned())
}

/// How a task ended while draining: its error or panic, if any.
fn ended(
    result: Result<(Id, Result<(), ServeError>), JoinError>,
    names: &HashMap<Id, String>,
) -> Result<(), ServeError> {
    match result {
        Ok((_, outcome)) => outcome,
        Err(error) => Err(join_failure(error, names)),
    }
}

/// A task that ended before the stop signal: always a failure, even without an error.
fn ended_early(
    result: Result<(Id, Result<(), ServeError>), JoinError>,
    names: &HashMap<Id, String>,
) -> ServeError {
    match result {
        Ok((_, Err(error))) => error,
        Ok((id, Ok(()))) => ServeError::TaskEnded {
            task: task_name(id, names),
        },
        Err(error) => join_failure(error, names),
    }
}

fn join_failure(error: JoinError, names: &HashMap<Id, String>) -> ServeError {
    let task = task_name(error.id(), names);
    if error.is_panic() {
        let payload = error.into_panic();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        ServeError::TaskPanicked { task, message }
    } else {
        ServeError::TaskEnded { task }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_early_or_panics_is_named() {
        let mut tasks = Supervisor::default();
        tasks.spawn_background(vec![background_task("the quiet loop", async {})]);
        let error = tasks.until(std::future::pending()).await.unwrap();
        assert_eq!(error.to_string(), "the quiet loop stopped unexpectedly");

        tasks.spawn_listeners(vec![(
            "tcp 127.0.0.1:1".to_owned(),
            Box::pin(async { panic!("boom") }),
        )]);
        let error = tasks.until(std::future::pending()).await.unwrap();
        assert_eq!(error.to_string(), "tcp 127.0.0.1:1 panicked: boom");

        assert!(tasks.until(async {}).await.is_none(), "shutdown first");
    }
}
