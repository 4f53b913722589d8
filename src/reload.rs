//! The one reloader of trusted files: every consumer built from files the sidecar trusts
//! (the authorization rules, the TLS files, the AWS-protocol door's credentials) registers
//! with it, and it reads them again when they change (checked every interval, ± 15 %) and
//! on SIGHUP. Each consumer parses and checks its own files, refuses a broken new one and
//! keeps what is in force, and says so in its own log lines; the reloader counts the
//! outcome in the reload metrics.

use std::{path::Path, sync::Arc, time::Duration};

use crate::metrics::{Metrics, ReloadedFile};

/// How a consumer took its files, read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// What they hold is in force (or was already).
    Taken,
    /// Refused; what was in force stays.
    Refused,
}

/// Something built from trusted files, which the [`Reloader`] reads again for.
pub trait Reload: Send + Sync {
    /// Its `file` label in the reload metrics.
    fn label(&self) -> ReloadedFile;

    /// The files it is built from; a change in any of them reloads it.
    fn files(&self) -> Vec<&Path>;

    /// Reads its files again and puts what they hold in force, or refuses it and keeps
    /// what is in force; logs which.
    fn reload(&self) -> Reloaded;
}

/// What a consumer's files held when it last read them: by content, owner and mode (see
/// [`crate::files::fingerprint`]), not by modification time.
fn fingerprints(consumer: &dyn Reload) -> Vec<Option<[u8; 32]>> {
    consumer
        .files()
        .into_iter()
        .map(crate::files::fingerprint)
        .collect()
}

struct Watched {
    consumer: Arc<dyn Reload>,
    seen: Vec<Option<[u8; 32]>>,
}

/// The consumers of trusted files, read again when their files change and on SIGHUP.
pub struct Reloader {
    interval: Duration,
    metrics: Metrics,
    watched: Vec<Watched>,
}

impl Reloader {
    pub fn new(interval: Duration, metrics: Metrics) -> Reloader {
        Reloader {
            interval,
            metrics,
            watched: Vec::new(),
        }
    }

    /// Adds `consumer`, just built from its files: what they hold now is what it holds.
    /// Consumers are reloaded in the order they were added.
    pub fn watch(&mut self, consumer: Arc<dyn Reload>) {
        self.metrics.watch_reloads(consumer.label());
        let seen = fingerprints(consumer.as_ref());
        self.watched.push(Watched { consumer, seen });
    }

    /// Reloads every consumer whose files changed, or every one when `forced`.
    pub fn check(&mut self, forced: bool) {
        for watched in &mut self.watched {
            let now = fingerprints(watched.consumer.as_ref());
            if forced || now != watched.seen {
                // Seen even when refused: the same broken files are not refused again every
                // interval, only once they change (or on SIGHUP).
                watched.seen = now;
                let refused = watched.consumer.reload() == Reloaded::Refused;
                self.metrics.count_reload(watched.consumer.label(), refused);
            }
        }
    }

    /// Checks every interval (± 15 %), and reloads every consumer on SIGHUP, until the end.
    /// Runs even with no consumer: it is what makes SIGHUP harmless instead of fatal.
    pub async fn run(mut self) {
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let forced = tokio::select! {
                () = tokio::time::sleep(crate::jitter::around(self.interval)) => false,
                Some(()) = async {
                    match hangups.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            self.check(forced);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{
        path::PathBuf,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    struct Counting {
        file: PathBuf,
        reloads: AtomicUsize,
        refuse: bool,
    }

    impl Reload for Counting {
        fn label(&self) -> ReloadedFile {
            ReloadedFile::Rules
        }
        fn files(&self) -> Vec<&Path> {
            vec![&self.file]
        }
        fn reload(&self) -> Reloaded {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            if self.refuse {
                Reloaded::Refused
            } else {
                Reloaded::Taken
            }
        }
    }

    #[test]
    fn a_consumer_is_reloaded_when_its_file_changes_or_when_forced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.toml");
        std::fs::write(&file, "one").unwrap();
        let consumer = Arc::new(Counting {
            file: file.clone(),
            reloads: AtomicUsize::new(0),
            refuse: true,
        });
        let metrics = Metrics::new(Arc::new(crate::cache::CacheState::new(
            crate::config::CacheConfig::default(),
        )));
        let mut reloader = Reloader::new(Duration::from_secs(1), metrics);
        reloader.watch(consumer.clone());
        let reloads = || consumer.reloads.load(Ordering::SeqCst);

        reloader.check(false);
        assert_eq!(reloads(), 0, "unchanged");
        std::fs::write(&file, "two").unwrap();
        reloader.check(false);
        assert_eq!(reloads(), 1, "changed");
        reloader.check(false);
        assert_eq!(reloads(), 1, "refused once, not again until it changes");
        reloader.check(true);
        assert_eq!(reloads(), 2, "forced");
    }
}
