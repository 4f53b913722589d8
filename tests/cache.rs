//! The read-path cache against a fake backend that counts calls and can be made slow or
//! failing: coalescing, write-through under a racing load, TTLs, stale-if-error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use inspector_keyd::{
    backend::{Backend, BackendError},
    cache::{CacheStatus, KeyCache},
    config::CacheConfig,
    domain::{
        CodeSnippets, FindingArn, KeyArn, ResourceType, ScanType, Scope, ScopedTarget, Target,
    },
    verify::{KeyMetadata, Report},
};
use tokio::sync::Semaphore;

const OLD: &str = "arn:aws:kms:us-east-1:111122223333:key/11111111-1111-4111-8111-111111111111";
const NEW: &str = "arn:aws:kms:us-east-1:111122223333:key/22222222-2222-4222-8222-222222222222";

/// A verdict with no findings.
fn passed() -> Report {
    Report::new("test", Vec::new())
}

fn lambda() -> ScopedTarget {
    ScopedTarget::new(
        Scope::of("111122223333", "us-east-1"),
        Target::new(ScanType::Code, ResourceType::AwsLambdaFunction).unwrap(),
    )
}

/// A backend whose key configuration is a value in memory; Gets are counted, and can be
/// held at a gate or made to fail.
#[derive(Default)]
struct FakeBackend {
    key: Mutex<Option<String>>,
    gets: AtomicUsize,
    failure: Mutex<Option<BackendError>>,
    /// The error every Update and Reset answers, without writing, when set.
    write_failure: Mutex<Option<BackendError>>,
    /// When set, each Get reads the value, then waits for a permit before answering.
    gate: Mutex<Option<Arc<Semaphore>>>,
    /// Gets that have read the value (for the racing test).
    started: tokio::sync::Notify,
}

impl FakeBackend {
    fn with_key(key: Option<&str>) -> Arc<FakeBackend> {
        let fake = FakeBackend::default();
        *fake.key.lock().unwrap() = key.map(str::to_owned);
        Arc::new(fake)
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn fail_with(&self, error: Option<BackendError>) {
        *self.failure.lock().unwrap() = error;
    }
}

#[async_trait]
impl Backend for FakeBackend {
    async fn get_encryption_key(
        &self,
        _target: ScopedTarget,
    ) -> Result<Option<String>, BackendError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let value = self.key.lock().unwrap().clone();
        let failure = self.failure.lock().unwrap().clone();
        let gate = self.gate.lock().unwrap().clone();
        self.started.notify_one();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        } else {
            // Long enough for a thousand callers to pile up behind the first.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }

    async fn update_encryption_key(
        &self,
        _target: ScopedTarget,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        if let Some(error) = self.write_failure.lock().unwrap().clone() {
            return Err(error);
        }
        *self.key.lock().unwrap() = Some(key.as_str().to_owned());
        Ok(())
    }

    async fn reset_encryption_key(&self, _target: ScopedTarget) -> Result<(), BackendError> {
        if let Some(error) = self.write_failure.lock().unwrap().clone() {
            return Err(error);
        }
        *self.key.lock().unwrap() = None;
        Ok(())
    }

    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError> {
        Err(BackendError::NotFound {
            what: key.to_string(),
        })
    }

    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError> {
        Err(BackendError::NotFound {
            what: key.to_string(),
        })
    }

    async fn resolve_alias(&self, _: Scope, _: &str) -> Result<Option<KeyArn>, BackendError> {
        Ok(None)
    }

    async fn batch_get_code_snippet(&self, _: &[FindingArn]) -> Result<CodeSnippets, BackendError> {
        Err(BackendError::internal("the cache never reads snippets"))
    }
}

fn config() -> CacheConfig {
    CacheConfig {
        key_ttl: Duration::from_secs(60),
        aws_owned_ttl: Duration::from_secs(10),
        max_stale: Duration::from_secs(300),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_reads_make_one_backend_call() {
    let fake = FakeBackend::with_key(Some(OLD));
    let gate = Arc::new(Semaphore::new(0));
    *fake.gate.lock().unwrap() = Some(gate.clone());
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let cache = cache.clone();
        reads.spawn(async move { cache.get(lambda()).await });
    }
    // The first load is held at the gate until every read has missed and waits behind it.
    let all_waiting = common::eventually(Duration::from_secs(10), || async {
        cache.stats().snapshot().misses == 1000
    })
    .await;
    assert!(all_waiting, "{:?}", cache.stats().snapshot());
    assert_eq!(fake.gets(), 1);
    // Permits for every read, so that reads which failed to coalesce answer (and are
    // counted) instead of hanging.
    gate.add_permits(1000);
    let mut answers = 0;
    while let Some(result) = reads.join_next().await {
        let cached = result.unwrap().unwrap();
        assert_eq!(cached.key_arn.as_deref(), Some(OLD));
        answers += 1;
    }
    assert_eq!(answers, 1000);
    assert_eq!(
        fake.gets(),
        1,
        "concurrent misses must coalesce into one backend call"
    );
    let counts = cache.stats().snapshot();
    assert_eq!((counts.loads, counts.hits, counts.misses), (1, 0, 1000));
}

#[tokio::test(start_paused = true)]
async fn an_update_wins_over_a_load_of_the_old_value_in_flight() {
    let fake = FakeBackend::with_key(Some(OLD));
    let gate = Arc::new(Semaphore::new(0));
    *fake.gate.lock().unwrap() = Some(gate.clone());
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);

    // A read starts loading the old value and is held there.
    let started = fake.started.notified();
    let slow_read = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get(lambda()).await }
    });
    started.await;

    // The update lands in the backend while that load is in flight.
    let mut update = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .update(lambda(), &KeyArn::parse(NEW).unwrap(), passed())
                .await
        }
    });
    // On the paused clock a timer fires only once every task waits: the timeout elapsing
    // proves the update can make no progress while the load is held, though its write has
    // reached the backend.
    let held = tokio::time::timeout(Duration::from_secs(1), &mut update).await;
    assert!(
        held.is_err(),
        "the write-through waits for the load in flight"
    );
    assert_eq!(fake.key.lock().unwrap().as_deref(), Some(NEW));
    gate.add_permits(1);
    assert_eq!(
        slow_read.await.unwrap().unwrap().key_arn.as_deref(),
        Some(OLD)
    );
    update.await.unwrap().unwrap();

    // Every read that starts after the update returned sees the new key, from the cache.
    *fake.gate.lock().unwrap() = None;
    let gets_before = fake.gets();
    for _ in 0..100 {
        let cached = cache.get(lambda()).await.unwrap();
        assert_eq!(cached.key_arn.as_deref(), Some(NEW));
        assert_eq!(cached.status, CacheStatus::Hit);
    }
    assert_eq!(fake.gets(), gets_before);

    cache.reset(lambda()).await.unwrap();
    let cached = cache.get(lambda()).await.unwrap();
    assert_eq!((cached.key_arn, cached.status), (None, CacheStatus::Hit));
}

#[tokio::test(start_paused = true)]
async fn entries_expire_on_their_own_ttl() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    assert_eq!(cache.get(lambda()).await.unwrap().status, CacheStatus::Miss);
    let hit = cache.get(lambda()).await.unwrap();
    assert_eq!(hit.status, CacheStatus::Hit);
    tokio::time::advance(Duration::from_secs(30)).await;
    let hit = cache.get(lambda()).await.unwrap();
    assert_eq!((hit.status, hit.age.as_secs()), (CacheStatus::Hit, 30));
    assert_eq!(fake.gets(), 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        cache.get(lambda()).await.unwrap().status,
        CacheStatus::Miss,
        "the key TTL is 60 s"
    );
    assert_eq!(fake.gets(), 2);

    // "AWS owned key in use" is cached too, on its own (shorter) TTL.
    *fake.key.lock().unwrap() = None;
    tokio::time::advance(Duration::from_secs(61)).await;
    let negative = cache.get(lambda()).await.unwrap();
    assert_eq!(
        (negative.key_arn, negative.status),
        (None, CacheStatus::Miss)
    );
    // 7 s: before the entry's refresh point (75-90 % of its TTL), so no refresh starts.
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(cache.get(lambda()).await.unwrap().status, CacheStatus::Hit);
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(
        cache.get(lambda()).await.unwrap().status,
        CacheStatus::Miss,
        "the AWS-owned TTL is 10 s"
    );
    assert_eq!(fake.gets(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_failing_backend_gets_stale_reads_for_max_stale_then_errors() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    cache.get(lambda()).await.unwrap();

    fake.fail_with(Some(BackendError::Unavailable {
        message: "connection refused".into(),
        retry_after: None,
    }));
    tokio::time::advance(Duration::from_secs(61)).await;
    let stale = cache.get(lambda()).await.unwrap();
    assert_eq!(
        (stale.key_arn.as_deref(), stale.status, stale.age.as_secs()),
        (Some(OLD), CacheStatus::Stale, 61)
    );
    tokio::time::advance(Duration::from_secs(298)).await;
    assert_eq!(
        cache.get(lambda()).await.unwrap().status,
        CacheStatus::Stale,
        "359 s old: within TTL + max_stale"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let error = cache.get(lambda()).await.unwrap_err();
    assert!(
        matches!(error, BackendError::Unavailable { .. }),
        "{error:?}"
    );
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    use tonic_types::StatusExt;
    assert!(status.get_error_details().retry_info().is_some());

    // Throttling past max_stale: RESOURCE_EXHAUSTED with RetryInfo from Retry-After.
    fake.fail_with(Some(BackendError::Throttled {
        retry_after: Some(Duration::from_secs(7)),
    }));
    let status = tonic::Status::from(cache.get(lambda()).await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.get_error_details().retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(7))
    );

    // Recovery: the next successful load is served and cached.
    fake.fail_with(None);
    *fake.key.lock().unwrap() = Some(NEW.to_owned());
    let fresh = cache.get(lambda()).await.unwrap();
    assert_eq!(
        (fresh.key_arn.as_deref(), fresh.status),
        (Some(NEW), CacheStatus::Miss)
    );
    let counts = cache.stats().snapshot();
    assert_eq!(counts.stale, 2);
    assert_eq!(counts.load_failures, 4);
}

#[tokio::test(start_paused = true)]
async fn errors_the_request_caused_are_never_hidden_by_a_stale_value() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    cache.get(lambda()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    for error in [
        BackendError::AccessDenied {
            message: "not authorized".into(),
        },
        BackendError::InvalidRequest {
            field: "kms_key_id",
            message: "bad".into(),
        },
        BackendError::NotFound {
            what: "configuration".into(),
        },
    ] {
        fake.fail_with(Some(error.clone()));
        assert_eq!(cache.get(lambda()).await.unwrap_err(), error);
    }
    assert_eq!(cache.stats().snapshot().stale, 0);
}

#[tokio::test(start_paused = true)]
async fn stale_reads_can_be_turned_off() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(
        fake.clone(),
        CacheConfig {
            max_stale: Duration::ZERO,
            ..config()
        },
        [lambda()],
    );
    cache.get(lambda()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    fake.fail_with(Some(BackendError::Timeout));
    assert_eq!(
        cache.get(lambda()).await.unwrap_err(),
        BackendError::Timeout
    );
}

#[tokio::test]
async fn a_refused_write_keeps_the_entry_and_one_of_unknown_outcome_drops_it() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    cache.get(lambda()).await.unwrap();
    let new = KeyArn::parse(NEW).unwrap();

    // Throttled: refused, so the state is known unchanged and the entry still answers.
    *fake.write_failure.lock().unwrap() = Some(BackendError::Throttled { retry_after: None });
    assert!(cache.update(lambda(), &new, passed()).await.is_err());
    assert!(cache.reset(lambda()).await.is_err());
    let cached = cache.get(lambda()).await.unwrap();
    assert_eq!(
        (cached.key_arn.as_deref(), cached.status),
        (Some(OLD), CacheStatus::Hit)
    );
    assert_eq!(fake.gets(), 1);

    // Timed out: it may have been applied, so the next read asks the backend.
    *fake.write_failure.lock().unwrap() = Some(BackendError::Timeout);
    assert!(cache.update(lambda(), &new, passed()).await.is_err());
    let cached = cache.get(lambda()).await.unwrap();
    assert_eq!(
        (cached.key_arn.as_deref(), cached.status),
        (Some(OLD), CacheStatus::Miss)
    );
    assert_eq!(fake.gets(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_expired_entry_reports_how_long_it_may_still_be_served_stale() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    let windows = |cache: &KeyCache| cache.state().stale_windows();
    assert_eq!(windows(&cache), vec![], "no entry yet");
    cache.get(lambda()).await.unwrap();
    // Loaded after the fake's 50 ms; fresh for its 60 s TTL.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(windows(&cache), vec![], "a fresh entry has no stale window");

    // Past the TTL: the rest of max_stale (300 s) counts down.
    tokio::time::advance(Duration::from_secs(40)).await;
    assert_eq!(windows(&cache), vec![(lambda(), Duration::from_secs(290))]);
    fake.fail_with(Some(BackendError::Timeout));
    assert_eq!(
        cache.get(lambda()).await.unwrap().status,
        CacheStatus::Stale
    );
    assert_eq!(
        windows(&cache),
        vec![(lambda(), Duration::from_millis(289_950))],
        "a stale answer does not extend the window"
    );
    tokio::time::advance(Duration::from_secs(300)).await;
    assert_eq!(windows(&cache), vec![(lambda(), Duration::ZERO)]);

    // A new load starts a fresh entry.
    fake.fail_with(None);
    cache.get(lambda()).await.unwrap();
    assert_eq!(windows(&cache), vec![]);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_holds_what_the_backend_says_now_and_keeps_the_verdict_of_an_unchanged_key() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    cache
        .update(lambda(), &KeyArn::parse(OLD).unwrap(), passed())
        .await
        .unwrap();
    let held = cache.key_in_use(lambda()).await.unwrap();
    assert_eq!(held.key_arn.as_deref(), Some(OLD));
    assert!(held.verdict.as_ref().is_some_and(|v| v.passed));

    // Refreshed with the key unchanged: the verdict stays.
    let (before, now) = cache.refresh(lambda()).await.unwrap();
    assert_eq!(
        before.as_ref().and_then(|b| b.key_arn.as_deref()),
        Some(OLD)
    );
    assert!(now.verdict.is_some());

    // The key changed behind the cache's back: the refresh holds the new key, with no
    // verdict yet, and a read right after gets it fresh, without a load.
    *fake.key.lock().unwrap() = Some(NEW.to_owned());
    let (before, now) = cache.refresh(lambda()).await.unwrap();
    assert_eq!(before.and_then(|b| b.key_arn).as_deref(), Some(OLD));
    assert_eq!(
        (now.key_arn.as_deref(), now.verdict.is_none()),
        (Some(NEW), true)
    );
    let gets = fake.gets();
    let read = cache.get(lambda()).await.unwrap();
    assert_eq!(
        (read.key_arn.as_deref(), read.status),
        (Some(NEW), CacheStatus::Hit)
    );
    assert_eq!(fake.gets(), gets);

    // A verdict recorded for a key no longer held is dropped.
    cache.set_verdict(lambda(), OLD, passed()).await;
    assert!(cache.key_in_use(lambda()).await.unwrap().verdict.is_none());
    cache.set_verdict(lambda(), NEW, passed()).await;
    assert!(cache.key_in_use(lambda()).await.unwrap().verdict.is_some());

    // A backend that cannot answer changes nothing.
    fake.fail_with(Some(BackendError::Timeout));
    assert!(cache.refresh(lambda()).await.is_err());
    assert_eq!(
        cache.key_in_use(lambda()).await.unwrap().key_arn.as_deref(),
        Some(NEW)
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_of_a_target_nobody_read_keeps_its_verdict_but_serves_no_read() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    let (before, now) = cache.refresh(lambda()).await.unwrap();
    assert!(before.is_none());
    assert_eq!(now.key_arn.as_deref(), Some(OLD));
    cache.set_verdict(lambda(), OLD, passed()).await;
    assert!(cache.key_in_use(lambda()).await.unwrap().verdict.is_some());
    // The first read still asks the backend, and the verdict of the same key stays.
    let gets = fake.gets();
    let read = cache.get(lambda()).await.unwrap();
    assert_eq!(
        (read.key_arn.as_deref(), read.status),
        (Some(OLD), CacheStatus::Miss)
    );
    assert_eq!(fake.gets(), gets + 1);
    assert!(cache.key_in_use(lambda()).await.unwrap().verdict.is_some());
    assert_eq!(cache.state().stale_windows(), vec![]);
}

/// Yields until `done` holds (bounded): lets a refresh spawned by a read run.
async fn settle(done: impl Fn() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    done()
}

/// A read bounded in (paused) time: a read that waited for the backend's gate would not
/// come back.
async fn read_now(cache: &KeyCache) -> (Option<String>, CacheStatus) {
    let read = tokio::time::timeout(Duration::from_secs(1), cache.get(lambda()))
        .await
        .expect("a read waited for the backend")
        .unwrap();
    (read.key_arn.map(|k| k.to_string()), read.status)
}

#[tokio::test(start_paused = true)]
async fn a_target_being_read_is_refreshed_ahead_of_expiry_and_reads_meanwhile_are_hits() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    cache.get(lambda()).await.unwrap();
    let loaded = tokio::time::Instant::now();
    let due = cache.state().refresh_due(lambda()).unwrap();
    let ttl = config().key_ttl;
    assert!(
        due >= loaded + ttl.mul_f64(0.74) && due <= loaded + ttl.mul_f64(0.9),
        "refresh due {:?} after the load",
        due - loaded
    );

    // Until then reads are hits and call nothing.
    tokio::time::advance(due - loaded - Duration::from_millis(1)).await;
    assert_eq!(read_now(&cache).await, (Some(OLD.into()), CacheStatus::Hit));
    assert!(
        !settle(|| fake.gets() > 1).await,
        "refreshed before it was due"
    );

    // Past it, a read starts one refresh; the backend now says NEW and holds its answer.
    let gate = Arc::new(Semaphore::new(0));
    *fake.gate.lock().unwrap() = Some(gate.clone());
    *fake.key.lock().unwrap() = Some(NEW.to_owned());
    tokio::time::advance(Duration::from_millis(2)).await;
    assert_eq!(read_now(&cache).await, (Some(OLD.into()), CacheStatus::Hit));
    assert!(settle(|| fake.gets() == 2).await, "no refresh started");
    for _ in 0..20 {
        assert_eq!(read_now(&cache).await, (Some(OLD.into()), CacheStatus::Hit));
    }
    assert_eq!(fake.gets(), 2, "one refresh at a time");

    // It lands: reads get what the backend said, still hits, fresh past the old expiry.
    gate.add_permits(1);
    assert!(
        settle(|| cache.state().refresh_due(lambda()).is_some_and(|d| d > due)).await,
        "the refresh did not land"
    );
    assert_eq!(read_now(&cache).await, (Some(NEW.into()), CacheStatus::Hit));
    tokio::time::advance(loaded + ttl + Duration::from_secs(1) - tokio::time::Instant::now()).await;
    assert_eq!(read_now(&cache).await, (Some(NEW.into()), CacheStatus::Hit));
    let counts = cache.stats().snapshot();
    assert_eq!((counts.misses, counts.loads, counts.refreshes), (1, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_leaves_the_entry_to_expire_without_asking_again() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    cache.get(lambda()).await.unwrap();
    let due = cache.state().refresh_due(lambda()).unwrap();
    fake.fail_with(Some(BackendError::Timeout));
    tokio::time::advance(due - tokio::time::Instant::now()).await;
    assert_eq!(read_now(&cache).await, (Some(OLD.into()), CacheStatus::Hit));
    // The refresh asks; the fake answers 50 ms later.
    assert!(settle(|| fake.gets() == 2).await);
    tokio::time::advance(Duration::from_millis(60)).await;
    assert!(settle(|| cache.stats().snapshot().load_failures == 1).await);
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(read_now(&cache).await, (Some(OLD.into()), CacheStatus::Hit));
    }
    assert_eq!(
        fake.gets(),
        2,
        "a failed refresh is not retried by every read"
    );
}

#[tokio::test(start_paused = true)]
async fn caches_loaded_at_the_same_instant_refresh_at_different_instants() {
    let fakes: Vec<_> = (0..2).map(|_| FakeBackend::with_key(Some(OLD))).collect();
    let caches: Vec<_> = fakes
        .iter()
        .map(|f| KeyCache::new(f.clone(), config(), [lambda()]))
        .collect();
    let (a, b) = tokio::join!(caches[0].get(lambda()), caches[1].get(lambda()));
    a.unwrap();
    b.unwrap();
    let dues: Vec<_> = caches
        .iter()
        .map(|c| c.state().refresh_due(lambda()).unwrap())
        .collect();
    assert_ne!(
        dues[0], dues[1],
        "two sidecars drew the same refresh instant"
    );
    let (first, second) = if dues[0] < dues[1] { (0, 1) } else { (1, 0) };

    // At the first one's instant, only the first one calls its backend.
    tokio::time::advance(dues[first] - tokio::time::Instant::now()).await;
    for cache in &caches {
        assert_eq!(read_now(cache).await.1, CacheStatus::Hit);
    }
    assert!(settle(|| fakes[first].gets() == 2).await);
    assert_eq!(fakes[second].gets(), 1);
    tokio::time::advance(dues[second] - tokio::time::Instant::now()).await;
    assert_eq!(read_now(&caches[second]).await.1, CacheStatus::Hit);
    assert!(settle(|| fakes[second].gets() == 2).await);
}

#[tokio::test(start_paused = true)]
async fn readers_queued_behind_a_failing_load_answer_as_it_did_without_calling_again() {
    let fake = FakeBackend::with_key(Some(OLD));
    let cache = KeyCache::new(fake.clone(), config(), [lambda()]);
    cache.get(lambda()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    // An outage whose calls hang until released: fifty reads queue behind the first.
    fake.fail_with(Some(BackendError::Timeout));
    let gate = Arc::new(Semaphore::new(0));
    *fake.gate.lock().unwrap() = Some(gate.clone());
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let cache = cache.clone();
        reads.spawn(async move { cache.get(lambda()).await });
    }
    assert!(settle(|| fake.gets() == 2).await, "no load started");
    // The first read of the test was a miss too.
    assert!(settle(|| cache.stats().snapshot().misses == 51).await);
    gate.add_permits(100);
    while let Some(read) = reads.join_next().await {
        let read = read.unwrap().unwrap();
        assert_eq!(
            (read.key_arn.as_deref(), read.status),
            (Some(OLD), CacheStatus::Stale)
        );
    }
    assert_eq!(
        fake.gets(),
        2,
        "each queued reader called the failing backend again"
    );
    // The next read after them asks again, and recovery is seen at once.
    fake.fail_with(None);
    assert_eq!(cache.get(lambda()).await.unwrap().status, CacheStatus::Miss);
    assert_eq!(fake.gets(), 3);
}
