//! The read-path cache between the service and the backend, and the one holder of the key
//! in use: per managed target (a scope's scan type and resource type) it holds the customer
//! managed key ARN, or "the AWS owned key is in use", each kind with its own TTL, and the last verification verdict
//! on that key. Concurrent misses for a target coalesce into one backend call; Update and
//! Reset write through before they return; the drift watch refreshes it from the backend;
//! and when a refresh fails for a backend reason, the last value is served for a bounded
//! time (stale-if-error). A target that is being read is refreshed ahead of expiry in the
//! background, so steady reads never wait for the backend and cost it about one call per
//! TTL. The managed targets are known at start, so each has a slot of its own in a map made
//! once: a cached read is a lookup and one uncontended atomic load.

use std::{
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use tokio::time::Instant;

use crate::{
    backend::{Backend, BackendError},
    config::CacheConfig,
    domain::{CodeSnippets, FindingArn, KeyArn, ScopedTarget},
    jitter,
    metrics::ScopedTargetLabels,
    striped::StripedCounter,
    verify::Report,
};

/// Where in its TTL an entry that is being read is refreshed, as fractions of the TTL (a
/// uniform draw per entry): late, so a steadily read target costs about one backend call
/// per TTL; early enough that the refresh lands before the entry expires; spread, so
/// sidecars that loaded together do not refresh together.
pub const REFRESH_AHEAD: (f64, f64) = (0.75, 0.9);

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
    /// A copy of the entry's: the answer needs one, and sharing the entry's would be a
    /// count every core writes to.
    pub key_arn: Option<String>,
    pub status: CacheStatus,
    pub age: Duration,
}

/// Cache counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: StripedCounter,
    misses: AtomicU64,
    stale: AtomicU64,
    loads: AtomicU64,
    refreshes: AtomicU64,
    load_failures: AtomicU64,
}

/// A snapshot of [`CacheStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    /// Backend loads, refreshes included.
    pub loads: u64,
    /// Loads made ahead of expiry, in the background.
    pub refreshes: u64,
    pub load_failures: u64,
}

impl CacheStats {
    pub fn snapshot(&self) -> CacheCounts {
        CacheCounts {
            hits: self.hits.get(),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            load_failures: self.load_failures.load(Ordering::Relaxed),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a target's slot holds.
#[derive(Debug, Clone)]
struct Entry {
    key_arn: Option<Arc<str>>,
    loaded_at: Instant,
    /// From when a read of it starts a refresh in the background (before it expires).
    refresh_at: Instant,
    /// The last verification of `key_arn` (by Update or the drift watch); `None` until one.
    verdict: Option<Arc<Report>>,
    /// When the backend said `key_arn` is in use, and when `verdict` was made: what the
    /// inventory reports (wall-clock time, unlike `loaded_at`).
    read_at: SystemTime,
    verified_at: Option<SystemTime>,
    /// Whether reads are answered from it. The drift watch's refresh of a target nobody
    /// has read keeps what it found (and its verdict) without serving it: the first read
    /// still asks the backend.
    serves_reads: bool,
}

/// How long an answer is served: a key ARN, or "the AWS owned key" (`None`).
fn ttl_of(key_arn: Option<&str>, config: &CacheConfig) -> Duration {
    if key_arn.is_some() {
        config.key_ttl
    } else {
        config.aws_owned_ttl
    }
}

impl Entry {
    /// An entry loaded now.
    fn new(key_arn: Option<Arc<str>>, verdict: Option<Arc<Report>>, config: &CacheConfig) -> Entry {
        let loaded_at = Instant::now();
        let ttl = ttl_of(key_arn.as_deref(), config);
        let read_at = SystemTime::now();
        Entry {
            key_arn,
            loaded_at,
            refresh_at: loaded_at + jitter::between(ttl, REFRESH_AHEAD.0, REFRESH_AHEAD.1),
            verified_at: verdict.as_ref().map(|_| read_at),
            verdict,
            read_at,
            serves_reads: true,
        }
    }

    fn ttl(&self, config: &CacheConfig) -> Duration {
        ttl_of(self.key_arn.as_deref(), config)
    }

    fn is_fresh(&self, now: Instant, config: &CacheConfig) -> bool {
        self.serves_reads && now.saturating_duration_since(self.loaded_at) < self.ttl(config)
    }

    /// Whether it may still be served while the backend fails.
    fn may_serve_stale(&self, now: Instant, config: &CacheConfig) -> bool {
        self.serves_reads
            && now.saturating_duration_since(self.loaded_at) <= self.ttl(config) + config.max_stale
    }

    fn answer(&self, status: CacheStatus, now: Instant) -> Cached {
        Cached {
            key_arn: self.key_arn.as_deref().map(str::to_owned),
            status,
            age: now.saturating_duration_since(self.loaded_at),
        }
    }

    /// The entry after the backend said `key_arn` is in use: the verdict stays when the key
    /// did not change.
    fn reloaded(previous: Option<&Entry>, key_arn: Option<String>, config: &CacheConfig) -> Entry {
        let kept = previous.filter(|p| p.key_arn.as_deref() == key_arn.as_deref());
        let mut entry = Entry::new(
            key_arn.map(Arc::from),
            kept.and_then(|p| p.verdict.clone()),
            config,
        );
        entry.verified_at = kept.and_then(|p| p.verified_at);
        entry
    }
}

/// One target's entry, and the lock its loads and writes take (so concurrent misses make
/// one backend call, and a write waits for a load in flight rather than being overwritten
/// by it).
#[derive(Debug, Default)]
struct Slot {
    /// Read by every call without a lock or a shared count: a read lock, or a clone of a
    /// shared `Arc`, is a write to a line both cores would take turns owning.
    entry: ArcSwapOption<Entry>,
    load: tokio::sync::Mutex<()>,
    /// Serializes the target's writes, so the cache ends with the value the backend ended
    /// with; other targets' writes (another scope's, in a fleet apply) go on meanwhile.
    write: tokio::sync::Mutex<()>,
    /// A refresh ahead of expiry is under way (one at a time).
    refreshing: AtomicBool,
    /// Loads finished so far, and the error of the last one if it failed: a call that
    /// waited for a load answers as that load did instead of asking the backend again.
    loads: std::sync::Mutex<LoadRecord>,
}

#[derive(Debug, Default)]
struct LoadRecord {
    finished: u64,
    failure: Option<BackendError>,
}

/// What the cache holds, shared with the metrics: the counters and each target's slot.
#[derive(Debug)]
pub struct CacheState {
    config: CacheConfig,
    stats: CacheStats,
    /// A slot per managed target, made as the scopes are known ([`CacheState::manage`]):
    /// a read finds its slot without a lock.
    slots: ArcSwap<std::collections::HashMap<ScopedTarget, Arc<Slot>>>,
}

/// The cache's counters and stale windows, read at each scrape.
impl Collector for CacheState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.stats().snapshot();
        for (name, help, value) in [
            (
                "inspector_keyd_cache_hits",
                "GetEncryptionKey answers served fresh from the cache",
                counts.hits,
            ),
            (
                "inspector_keyd_cache_misses",
                "GetEncryptionKey calls that did not find a fresh entry",
                counts.misses,
            ),
            (
                "inspector_keyd_cache_stale",
                "stale answers served while the backend failed",
                counts.stale,
            ),
            (
                "inspector_keyd_cache_loads",
                "backend loads made by the cache",
                counts.loads,
            ),
            (
                "inspector_keyd_cache_refreshes",
                "of those, loads made ahead of expiry in the background for targets being read",
                counts.refreshes,
            ),
            (
                "inspector_keyd_cache_load_failures",
                "cache loads that failed",
                counts.load_failures,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            "inspector_keyd_cache_stale_seconds_left",
            "for a target whose cached key is past its TTL: seconds it may still be served \
             while the backend fails (cache.max_stale); reads fail once it reaches 0",
            None,
            MetricType::Gauge,
        )?;
        for (target, left) in self.stale_windows() {
            // Only targets whose backend fails have a window: the series follow them.
            let labels = ScopedTargetLabels::of(target);
            ConstGauge::new(left.as_secs_f64()).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl CacheState {
    pub fn new(config: CacheConfig) -> CacheState {
        CacheState {
            config,
            stats: CacheStats::default(),
            slots: ArcSwap::from_pointee(std::collections::HashMap::new()),
        }
    }

    /// Holds a slot for each of `targets`, the targets managed now: one managed before
    /// keeps its slot and what it holds, one no longer managed loses it. Called at start
    /// and at each listing of the organization, by one task at a time.
    pub fn manage(&self, targets: impl IntoIterator<Item = ScopedTarget>) {
        let before = self.slots.load_full();
        let slots = targets
            .into_iter()
            .map(|target| (target, before.get(&target).cloned().unwrap_or_default()))
            .collect();
        self.slots.store(Arc::new(slots));
    }

    /// The managed targets.
    fn targets(&self) -> Vec<ScopedTarget> {
        self.slots.load().keys().copied().collect()
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// `target`'s slot; `None` when it is not managed (requests are checked before).
    fn slot(&self, target: ScopedTarget) -> Option<Arc<Slot>> {
        self.slots.load().get(&target).cloned()
    }

    fn entry(&self, target: ScopedTarget) -> Option<Entry> {
        self.slot(target)?.entry.load().as_deref().cloned()
    }

    fn set(&self, target: ScopedTarget, entry: Option<Entry>) {
        if let Some(slot) = self.slot(target) {
            slot.entry.store(entry.map(Arc::new));
        }
    }

    /// When a read of `target` starts its refresh ahead of expiry (`None`: nothing is held
    /// for reads). The cache tests read it to see the spread.
    pub fn refresh_due(&self, target: ScopedTarget) -> Option<Instant> {
        self.entry(target)
            .filter(|e| e.serves_reads)
            .map(|e| e.refresh_at)
    }

    /// For each target whose entry is past its TTL, how long it may still be served while
    /// the backend fails (zero once that window is over). A fresh entry, or none, is not
    /// listed: only an expired entry is what a failing backend leaves readers with.
    pub fn stale_windows(&self) -> Vec<(ScopedTarget, Duration)> {
        let now = Instant::now();
        let mut windows: Vec<(ScopedTarget, Duration)> = self
            .targets()
            .into_iter()
            .filter_map(|target| {
                let entry = self.entry(target).filter(|e| e.serves_reads)?;
                let expires = entry.loaded_at + entry.ttl(&self.config);
                (now >= expires).then(|| {
                    let servable_until = expires + self.config.max_stale;
                    (target, servable_until.saturating_duration_since(now))
                })
            })
            .collect();
        windows.sort_unstable_by_key(|(target, _)| *target);
        windows
    }
}

/// The key in use for a target as the cache holds it, with the last verdict on it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInUse {
    /// `None`: the AWS owned key.
    pub key_arn: Option<Arc<str>>,
    pub verdict: Option<Arc<Report>>,
    /// When the backend was last read for it (`None` when nothing was read), and when
    /// `verdict` was made.
    pub read_at: Option<SystemTime>,
    pub verified_at: Option<SystemTime>,
}

impl From<&Entry> for KeyInUse {
    fn from(entry: &Entry) -> KeyInUse {
        KeyInUse {
            key_arn: entry.key_arn.clone(),
            verdict: entry.verdict.clone(),
            read_at: Some(entry.read_at),
            verified_at: entry.verified_at,
        }
    }
}

/// A target the cache has no slot for: requests name managed scopes only, so this is a
/// fault of the sidecar's own.
fn not_managed(target: ScopedTarget) -> BackendError {
    BackendError::internal(format!("{target} is not a managed target"))
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
    state: Arc<CacheState>,
}

impl KeyCache {
    /// A cache of `targets` (the managed ones) over `backend`.
    pub fn new(
        backend: Arc<dyn Backend>,
        config: CacheConfig,
        targets: impl IntoIterator<Item = ScopedTarget>,
    ) -> KeyCache {
        let state = CacheState::new(config);
        state.manage(targets);
        KeyCache::with_state(backend, Arc::new(state))
    }

    /// A cache holding `state` (shared with the metrics).
    pub fn with_state(backend: Arc<dyn Backend>, state: Arc<CacheState>) -> KeyCache {
        KeyCache { backend, state }
    }

    pub fn stats(&self) -> &CacheStats {
        &self.state.stats
    }

    pub fn state(&self) -> &CacheState {
        &self.state
    }

    /// The key in use for `target`, from the cache when fresh.
    pub async fn get(&self, target: ScopedTarget) -> Result<Cached, BackendError> {
        match self.get_fresh(target) {
            Some(hit) => Ok(hit),
            None => self.load(target).await,
        }
    }

    /// The cache's answer for `target` when it is fresh (a hit), else `None`. A hit past
    /// the entry's refresh point starts its refresh in the background.
    pub fn get_fresh(&self, target: ScopedTarget) -> Option<Cached> {
        let now = Instant::now();
        // Read in place: no copy of the entry.
        let (answer, refresh_due) = {
            let slots = self.state.slots.load();
            let held = slots.get(&target)?.entry.load();
            let entry = held.as_deref()?;
            if !entry.is_fresh(now, &self.state.config) {
                return None;
            }
            (entry.answer(CacheStatus::Hit, now), now >= entry.refresh_at)
        };
        self.state.stats.hits.inc();
        if refresh_due {
            self.start_refresh_ahead(target);
        }
        Some(answer)
    }

    /// Spawns the refresh of `target`'s entry unless one is under way.
    fn start_refresh_ahead(&self, target: ScopedTarget) {
        let Some(slot) = self.state.slot(target) else {
            return;
        };
        if slot.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            cache.refresh_ahead(target).await;
            if let Some(slot) = cache.state.slot(target) {
                slot.refreshing.store(false, Ordering::Release);
            }
        });
    }

    /// Reloads a fresh entry that reads found past its refresh point, while reads keep
    /// being answered from it. A failure keeps the entry until it expires, without another
    /// refresh: the reads after that load (or serve it stale) as any miss does.
    async fn refresh_ahead(&self, target: ScopedTarget) {
        let (stats, config) = (&self.state.stats, &self.state.config);
        let Some(slot) = self.state.slot(target) else {
            return;
        };
        let _loading = slot.load.lock().await;
        let Some(current) = self.state.entry(target) else {
            return;
        };
        let now = Instant::now();
        // A write, a load or the drift watch may have replaced it meanwhile.
        if !current.is_fresh(now, config) || now < current.refresh_at {
            return;
        }
        CacheStats::count(&stats.loads);
        CacheStats::count(&stats.refreshes);
        match self.backend.get_encryption_key(target).await {
            Ok(key_arn) => {
                let refreshed = Entry::reloaded(Some(&current), key_arn, config);
                self.state.set(target, Some(refreshed));
            }
            Err(error) => {
                CacheStats::count(&stats.load_failures);
                tracing::warn!(%target, %error, "refreshing the cached key failed; it is served until it expires");
                let expires = current.loaded_at + current.ttl(config);
                self.state.set(
                    target,
                    Some(Entry {
                        refresh_at: expires,
                        ..current
                    }),
                );
            }
        }
    }

    /// A read [`KeyCache::get_fresh`] could not answer (a miss): loads from the backend, or
    /// serves the stale entry while the backend is in trouble.
    pub async fn load(&self, target: ScopedTarget) -> Result<Cached, BackendError> {
        let stats = &self.state.stats;
        let config = &self.state.config;
        CacheStats::count(&stats.misses);
        let slot = self.state.slot(target).ok_or_else(|| not_managed(target))?;
        let record = || slot.loads.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = record().finished;
        // Calls for one target load one at a time: the first loads; the ones that waited
        // find its fresh entry, or answer as its failure did (during an outage, a queue of
        // readers must not each wait for a failing call of its own).
        let _loading = slot.load.lock().await;
        let current = self.state.entry(target);
        if let Some(entry) = &current
            && entry.is_fresh(Instant::now(), config)
        {
            return Ok(entry.answer(CacheStatus::Miss, Instant::now()));
        }
        let waited_for = {
            let record = record();
            (record.finished != seen)
                .then(|| record.failure.clone())
                .flatten()
        };
        let result = match waited_for {
            Some(failure) => Err(failure),
            None => {
                CacheStats::count(&stats.loads);
                let result = self.backend.get_encryption_key(target).await;
                let mut record = record();
                record.finished += 1;
                record.failure = result.as_ref().err().cloned();
                if result.is_err() {
                    CacheStats::count(&stats.load_failures);
                }
                result
            }
        };
        match result {
            Ok(key_arn) => {
                let loaded = Entry::reloaded(current.as_ref(), key_arn, config);
                let answer = loaded.answer(CacheStatus::Miss, Instant::now());
                self.state.set(target, Some(loaded));
                Ok(answer)
            }
            Err(error) => {
                let now = Instant::now();
                match current {
                    Some(stale)
                        if is_backend_trouble(&error) && stale.may_serve_stale(now, config) =>
                    {
                        CacheStats::count(&stats.stale);
                        tracing::warn!(%target, %error, age = ?now.saturating_duration_since(stale.loaded_at), "serving a stale key while the backend fails");
                        Ok(stale.answer(CacheStatus::Stale, now))
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// What the cache holds for `target`, loading it when it holds nothing yet.
    pub async fn key_in_use(&self, target: ScopedTarget) -> Result<KeyInUse, BackendError> {
        if let Some(entry) = self.state.entry(target) {
            return Ok(KeyInUse::from(&entry));
        }
        self.load(target).await?;
        Ok(self
            .state
            .entry(target)
            .map(|e| KeyInUse::from(&e))
            .unwrap_or(KeyInUse {
                key_arn: None,
                verdict: None,
                read_at: None,
                verified_at: None,
            }))
    }

    /// What is in use for `target` now, for comparing with what should be: what the cache
    /// holds when it was read from the backend within its TTL (whether or not it serves
    /// reads), else read from the backend again. A backend that cannot answer is an error,
    /// never a stale answer. As [`KeyCache::refresh`]: what the cache held before, and now.
    pub async fn current_key_in_use(
        &self,
        target: ScopedTarget,
    ) -> Result<(Option<KeyInUse>, KeyInUse), BackendError> {
        if let Some(entry) = self.state.entry(target)
            && entry.loaded_at.elapsed() < entry.ttl(&self.state.config)
        {
            let held = KeyInUse::from(&entry);
            return Ok((Some(held.clone()), held));
        }
        self.refresh(target).await
    }

    /// Reads the key in use from the backend (never from the cache) and holds it, so
    /// readers of the target get what the backend says now (a target nobody read yet is
    /// not served from it): returns what the cache held before and what it holds now. A
    /// backend that cannot answer changes nothing.
    pub async fn refresh(
        &self,
        target: ScopedTarget,
    ) -> Result<(Option<KeyInUse>, KeyInUse), BackendError> {
        let slot = self.state.slot(target).ok_or_else(|| not_managed(target))?;
        let _loading = slot.load.lock().await;
        let previous = self.state.entry(target);
        let key_arn = self.backend.get_encryption_key(target).await?;
        let mut refreshed = Entry::reloaded(previous.as_ref(), key_arn, &self.state.config);
        refreshed.serves_reads = previous.as_ref().is_some_and(|p| p.serves_reads);
        let now = KeyInUse::from(&refreshed);
        self.state.set(target, Some(refreshed));
        Ok((previous.as_ref().map(KeyInUse::from), now))
    }

    /// Records `verdict` on `key_arn`, when that key is still the one held for `target`.
    pub async fn set_verdict(&self, target: ScopedTarget, key_arn: &str, verdict: Report) {
        let Some(slot) = self.state.slot(target) else {
            return;
        };
        let _loading = slot.load.lock().await;
        if let Some(mut entry) = self.state.entry(target)
            && entry.key_arn.as_deref() == Some(key_arn)
        {
            entry.verdict = Some(Arc::new(verdict));
            entry.verified_at = Some(SystemTime::now());
            self.state.set(target, Some(entry));
        }
    }

    /// Puts `key` in use, with the verdict that let it in; the cache holds both before this
    /// returns.
    pub async fn update(
        &self,
        target: ScopedTarget,
        key: &KeyArn,
        verdict: Report,
    ) -> Result<(), BackendError> {
        let slot = self.state.slot(target).ok_or_else(|| not_managed(target))?;
        let _write = slot.write.lock().await;
        let result = self.backend.update_encryption_key(target, key).await;
        self.write_through(
            target,
            &result,
            Some(Arc::from(key.as_str())),
            Some(Arc::new(verdict)),
        )
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
    pub async fn reset(&self, target: ScopedTarget) -> Result<(), BackendError> {
        let slot = self.state.slot(target).ok_or_else(|| not_managed(target))?;
        let _write = slot.write.lock().await;
        let result = self.backend.reset_encryption_key(target).await;
        self.write_through(target, &result, None, None).await;
        result
    }

    /// After a write: the new value; after a refused write, the entry as it was; after a
    /// write whose outcome is unknown, no entry (the next read asks the backend, and is not
    /// served a value the write may have replaced). Waits for a load in flight, so it cannot
    /// overwrite this.
    async fn write_through(
        &self,
        target: ScopedTarget,
        result: &Result<(), BackendError>,
        key_arn: Option<Arc<str>>,
        verdict: Option<Arc<Report>>,
    ) {
        let written = match result {
            Ok(()) => true,
            Err(error) if write_outcome_unknown(error) => false,
            Err(_) => return,
        };
        let Some(slot) = self.state.slot(target) else {
            return;
        };
        let _loading = slot.load.lock().await;
        let value = written.then(|| Entry::new(key_arn, verdict, &self.state.config));
        self.state.set(target, value);
    }
}
