//! The read-path cache between the service and the backend (moka). Per (scan type,
//! resource type) it holds the customer managed key ARN, or "the AWS owned key is in use",
//! each kind with its own TTL; concurrent misses for a target coalesce into one backend
//! call; Update and Reset write through before they return; and when a refresh fails for
//! a backend reason, the last value is served for a bounded time (stale-if-error).

use std::{
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use moka::{future::Cache, ops::compute::Op};
use serde::Deserialize;
use tokio::time::Instant;

use crate::{
    backend::{Backend, BackendError},
    domain::{CodeSnippets, FindingArn, KeyArn, SUPPORTED_TARGETS, Target},
};

/// Cache settings (the `[cache]` table of the configuration).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a customer managed key ARN is served without asking the backend.
    /// Default `60s`.
    #[serde(with = "humantime_serde")]
    pub key_ttl: Duration,
    /// How long "the AWS owned key is in use" is served without asking. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub aws_owned_ttl: Duration,
    /// How long past its TTL an entry may still be served while the backend is failing
    /// (unavailable, throttled, timing out). Default `10m`; `0s` disables stale reads.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// Most targets held. Default 64.
    pub capacity: u64,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            key_ttl: Duration::from_secs(60),
            aws_owned_ttl: Duration::from_secs(30),
            max_stale: Duration::from_secs(600),
            capacity: 64,
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// A fresh cached entry.
    Hit,
    /// Loaded from the backend for this call (or for a concurrent one it waited on).
    Miss,
    /// An expired entry, served because the backend is failing.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
        }
    }
}

/// A cached answer: the key ARN (`None`: the AWS owned key is in use), where it came
/// from, and how old it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Shared with the cache's entry: a hit copies no string.
    pub key_arn: Option<Arc<str>>,
    pub status: CacheStatus,
    pub age: Duration,
}

/// Cache counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    loads: AtomicU64,
    load_failures: AtomicU64,
    /// When each target's entry stops being fresh, and when it can no longer be served even
    /// as stale; set with the entry (a load or a write), read at each scrape.
    windows: Mutex<[Option<StaleWindow>; SUPPORTED_TARGETS.len()]>,
}

#[derive(Debug, Clone, Copy)]
struct StaleWindow {
    expires: Instant,
    servable_until: Instant,
}

/// A snapshot of [`CacheStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub loads: u64,
    pub load_failures: u64,
}

impl CacheStats {
    pub fn snapshot(&self) -> CacheCounts {
        CacheCounts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            load_failures: self.load_failures.load(Ordering::Relaxed),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// For each target whose entry is past its TTL, how long it may still be served while
    /// the backend fails (zero once that window is over). A fresh entry, or none, is not
    /// listed: only an expired entry is what a failing backend leaves readers with.
    pub fn stale_windows(&self) -> Vec<(Target, Duration)> {
        let now = Instant::now();
        let windows = *self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        Target::all()
            .filter_map(|target| {
                let window = windows.get(target.index()).copied().flatten()?;
                (now >= window.expires)
                    .then(|| (target, window.servable_until.saturating_duration_since(now)))
            })
            .collect()
    }

    fn set_window(&self, target: Target, entry: Option<&Entry>, config: &CacheConfig) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = windows.get_mut(target.index()) {
            *slot = entry.map(|entry| StaleWindow {
                expires: entry.loaded_at + entry.ttl(config),
                servable_until: entry.loaded_at + entry.ttl(config) + config.max_stale,
            });
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key_arn: Option<Arc<str>>,
    loaded_at: Instant,
}

impl Entry {
    fn ttl(&self, config: &CacheConfig) -> Duration {
        if self.key_arn.is_some() {
            config.key_ttl
        } else {
            config.aws_owned_ttl
        }
    }

    fn is_fresh(&self, now: Instant, config: &CacheConfig) -> bool {
        now.saturating_duration_since(self.loaded_at) < self.ttl(config)
    }

    /// Whether it may still be served while the backend fails.
    fn may_serve_stale(&self, now: Instant, config: &CacheConfig) -> bool {
        now.saturating_duration_since(self.loaded_at) <= self.ttl(config) + config.max_stale
    }

    fn answer(&self, status: CacheStatus, now: Instant) -> Cached {
        Cached {
            key_arn: self.key_arn.clone(),
            status,
            age: now.saturating_duration_since(self.loaded_at),
        }
    }
}

/// Failures that a stale value may stand in for: the backend's trouble, not the request's.
fn is_backend_trouble(error: &BackendError) -> bool {
    matches!(
        error,
        BackendError::Unavailable { .. } | BackendError::Throttled { .. } | BackendError::Timeout
    )
}

/// Whether a failed write leaves the backend's state unknown (it may have been applied), as
/// opposed to a refusal, after which the state is known to be unchanged.
fn write_outcome_unknown(error: &BackendError) -> bool {
    matches!(
        error,
        BackendError::Unavailable { .. } | BackendError::Timeout | BackendError::Internal { .. }
    )
}

/// The cache over a backend. Cheap to clone.
#[derive(Clone)]
pub struct KeyCache {
    backend: Arc<dyn Backend>,
    entries: Cache<Target, Entry>,
    config: Arc<CacheConfig>,
    stats: Arc<CacheStats>,
    /// Serializes writes, so the cache ends with the value the backend ended with.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// What moka holds for each target, for reads (see [`ReadSlots`]).
    read_slots: Arc<ReadSlots>,
}

/// Each target's entry as its last load or write left it: a read takes it from here, an
/// uncontended read lock, instead of moka's read path, which records every read for its
/// eviction policy and measured at about 0.8 µs of a 13 µs cached read (BENCHMARKS.md). A
/// slot is only set inside moka's compute for that target, under its per-key lock, to what
/// moka then holds, so slot and cache cannot disagree; freshness is checked on every read.
#[derive(Default)]
struct ReadSlots([RwLock<Option<Entry>>; SUPPORTED_TARGETS.len()]);

impl ReadSlots {
    fn get(&self, target: Target) -> Option<Entry> {
        self.0.get(target.index())?.read().ok()?.clone()
    }

    fn set(&self, target: Target, entry: Option<&Entry>) {
        if let Some(slot) = self.0.get(target.index()) {
            *slot.write().unwrap_or_else(PoisonError::into_inner) = entry.cloned();
        }
    }
}

impl KeyCache {
    pub fn new(backend: Arc<dyn Backend>, config: CacheConfig) -> KeyCache {
        KeyCache::with_stats(backend, config, Arc::new(CacheStats::default()))
    }

    /// A cache counting into `stats` (shared with the metrics).
    pub fn with_stats(
        backend: Arc<dyn Backend>,
        config: CacheConfig,
        stats: Arc<CacheStats>,
    ) -> KeyCache {
        // moka forgets an entry once it can no longer be served even as stale; freshness
        // itself is decided here, against tokio's clock.
        let longest = config.key_ttl.max(config.aws_owned_ttl) + config.max_stale;
        let entries = Cache::builder()
            .max_capacity(config.capacity)
            .time_to_live(longest.max(Duration::from_millis(1)))
            .build();
        KeyCache {
            backend,
            entries,
            config: Arc::new(config),
            stats,
            writes: Arc::new(tokio::sync::Mutex::new(())),
            read_slots: Arc::default(),
        }
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The key in use for `target`, from the cache when fresh.
    pub async fn get(&self, target: Target) -> Result<Cached, BackendError> {
        match self.get_fresh(target).await {
            Some(hit) => Ok(hit),
            None => self.load(target).await,
        }
    }

    /// The cache's answer for `target` when it is fresh (a hit), else `None`.
    pub async fn get_fresh(&self, target: Target) -> Option<Cached> {
        let now = Instant::now();
        let entry = self.read_slots.get(target)?;
        entry.is_fresh(now, &self.config).then(|| {
            CacheStats::count(&self.stats.hits);
            entry.answer(CacheStatus::Hit, now)
        })
    }

    /// A read [`KeyCache::get_fresh`] could not answer (a miss): loads from the backend, or
    /// serves the stale entry while the backend is in trouble.
    pub async fn load(&self, target: Target) -> Result<Cached, BackendError> {
        CacheStats::count(&self.stats.misses);
        // Calls for one target run one at a time: the first loads, the ones that waited
        // find its fresh entry.
        let mut failure: Option<(BackendError, Option<Entry>)> = None;
        let failure_slot = &mut failure;
        let result = self
            .entries
            .entry(target)
            .and_compute_with(|current| async move {
                let current = current.map(|e| e.into_value());
                if let Some(entry) = &current
                    && entry.is_fresh(Instant::now(), &self.config)
                {
                    return Op::Nop;
                }
                CacheStats::count(&self.stats.loads);
                match self.backend.get_encryption_key(target).await {
                    Ok(key_arn) => {
                        let loaded = Entry {
                            key_arn: key_arn.map(Arc::from),
                            loaded_at: Instant::now(),
                        };
                        self.read_slots.set(target, Some(&loaded));
                        self.stats.set_window(target, Some(&loaded), &self.config);
                        Op::Put(loaded)
                    }
                    Err(error) => {
                        CacheStats::count(&self.stats.load_failures);
                        *failure_slot = Some((error, current));
                        Op::Nop
                    }
                }
            })
            .await;
        let now = Instant::now();
        match failure {
            None => match result.into_entry() {
                Some(entry) => Ok(entry.into_value().answer(CacheStatus::Miss, now)),
                None => Err(BackendError::internal(
                    "the cache lost an entry it just loaded",
                )),
            },
            Some((error, Some(stale)))
                if is_backend_trouble(&error) && stale.may_serve_stale(now, &self.config) =>
            {
                CacheStats::count(&self.stats.stale);
                tracing::warn!(%target, %error, age = ?now.saturating_duration_since(stale.loaded_at), "serving a stale key while the backend fails");
                Ok(stale.answer(CacheStatus::Stale, now))
            }
            Some((error, _)) => Err(error),
        }
    }

    /// Puts `key` in use, then the cache holds it before this returns.
    pub async fn update(&self, target: Target, key: &KeyArn) -> Result<(), BackendError> {
        let _write = self.writes.lock().await;
        let result = self.backend.update_encryption_key(target, key).await;
        self.write_through(target, &result, Some(key.as_str().to_owned()))
            .await;
        result
    }

    /// Code snippets, straight from the backend: they are customer code and never kept.
    pub async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        self.backend.batch_get_code_snippet(findings).await
    }

    /// Goes back to the AWS owned key; the cache says so before this returns.
    pub async fn reset(&self, target: Target) -> Result<(), BackendError> {
        let _write = self.writes.lock().await;
        let result = self.backend.reset_encryption_key(target).await;
        self.write_through(target, &result, None).await;
        result
    }

    /// After a write: the new value; after a refused write, the entry as it was; after a
    /// write whose outcome is unknown, no entry (the next read asks the backend, and is not
    /// served a value the write may have replaced). Waits for a load in flight, so it cannot
    /// overwrite this.
    async fn write_through(
        &self,
        target: Target,
        result: &Result<(), BackendError>,
        written: Option<String>,
    ) {
        let value = match result {
            Ok(()) => Some(written),
            Err(error) if write_outcome_unknown(error) => None,
            Err(_) => return,
        };
        self.entries
            .entry(target)
            .and_compute_with(|_| async move {
                let written = value.map(|key_arn| Entry {
                    key_arn: key_arn.map(Arc::from),
                    loaded_at: Instant::now(),
                });
                self.read_slots.set(target, written.as_ref());
                self.stats
                    .set_window(target, written.as_ref(), &self.config);
                match written {
                    Some(entry) => Op::Put(entry),
                    None => Op::Remove,
                }
            })
            .await;
    }
}
