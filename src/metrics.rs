//! Prometheus metrics (prometheus-client), all named `inspector_keyd_*`, with
//! low-cardinality labels only: RPC method names, codes, roles, classes, profiles and
//! targets — never key ARNs or callers.

use std::sync::{Arc, OnceLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{cache::CacheStats, domain::Target};

// Label values are static strings: counting a call allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    rpc: &'static str,
    role: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    operation: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerificationLabels {
    profile: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    scan_type: String,
    resource_type: String,
}

fn rpc_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric the sidecar exports. Cheap to clone (one shared handle).
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

struct Families {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<RpcLabels, Histogram, fn() -> Histogram>,
    authz_decisions: Family<AuthzLabels, Counter>,
    backend_calls: Family<BackendLabels, Counter>,
    verifications: Family<VerificationLabels, Counter>,
    key_verification_passed: Family<TargetLabels, Gauge>,
    /// The series each (method, code) uses, looked up once: counting a call takes no lock
    /// and hashes nothing.
    rpc_series: Vec<OnceLock<(Counter, Histogram)>>,
    /// The series each (method, role, decision) uses.
    authz_series: Vec<OnceLock<Counter>>,
}

/// The cache's counters, read at each scrape.
#[derive(Debug)]
struct CacheCollector(Arc<CacheStats>);

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.snapshot();
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
                "inspector_keyd_cache_load_failures",
                "cache loads that failed",
                counts.load_failures,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// The RPC methods labels name; any other path is `other` (the last entry).
const METHODS: [&str; 25] = [
    "GetEncryptionKey",
    "UpdateEncryptionKey",
    "ResetEncryptionKey",
    "VerifyKeyPolicy",
    "RenderKeyPolicy",
    "WatchEncryptionKey",
    "CreateKey",
    "DescribeKey",
    "ListKeys",
    "GetKeyPolicy",
    "PutKeyPolicy",
    "EnableKey",
    "DisableKey",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "ReplicateKey",
    "ListGrants",
    "BatchGetCodeSnippet",
    "RecordCodeFinding",
    "DisableCodeScanning",
    "DescribeCodeScanning",
    "Check",
    "Watch",
    "ServerReflectionInfo",
    "other",
];

/// gRPC codes are 0 to 16.
const CODES: usize = 17;

fn method_index(path: &str) -> usize {
    let method = path.rsplit('/').next().unwrap_or_default();
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|known| *known == method)
        .unwrap_or(METHODS.len() - 1)
}

/// The method part of `/package.Service/Method`, for labels; unknown paths are `other`.
pub fn method_label(path: &str) -> &'static str {
    METHODS[method_index(path)]
}

impl Metrics {
    /// A registry with every metric, the cache's counters read from `cache`.
    pub fn new(cache: Arc<CacheStats>) -> Metrics {
        let mut registry = Registry::default();
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "inspector_keyd_rpc_requests",
            "RPCs answered, by method and gRPC code",
            rpc_requests.clone(),
        );
        let rpc_duration =
            Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(rpc_histogram);
        registry.register(
            "inspector_keyd_rpc_duration_seconds",
            "RPC latency, by method and gRPC code",
            rpc_duration.clone(),
        );
        let authz_decisions = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "inspector_keyd_authz_decisions",
            "authorization decisions, by RPC, role and decision",
            authz_decisions.clone(),
        );
        let backend_calls = Family::<BackendLabels, Counter>::default();
        registry.register(
            "inspector_keyd_backend_calls",
            "backend calls, by operation and result class (ok or the error class)",
            backend_calls.clone(),
        );
        let verifications = Family::<VerificationLabels, Counter>::default();
        registry.register(
            "inspector_keyd_verifications",
            "key verifications, by profile and result",
            verifications.clone(),
        );
        let key_verification_passed = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "inspector_keyd_key_verification_passed",
            "1 when the customer managed key in use passes verification, 0 when it does not (drift)",
            key_verification_passed.clone(),
        );
        registry.register_collector(Box::new(CacheCollector(cache)));
        Metrics(Arc::new(Families {
            registry,
            rpc_requests,
            rpc_duration,
            authz_decisions,
            backend_calls,
            verifications,
            key_verification_passed,
            rpc_series: (0..METHODS.len() * CODES)
                .map(|_| OnceLock::new())
                .collect(),
            authz_series: (0..METHODS.len() * 3 * 2)
                .map(|_| OnceLock::new())
                .collect(),
        }))
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.0.registry).is_err() {
            tracing::error!("cannot encode the metrics");
        }
        text
    }

    pub fn observe_rpc(&self, path: &str, code: tonic::Code, seconds: f64) {
        let method = method_index(path);
        let code_index = usize::try_from(code as i32).unwrap_or(0).min(CODES - 1);
        let Some(slot) = self.0.rpc_series.get(method * CODES + code_index) else {
            return;
        };
        let (counter, histogram) = slot.get_or_init(|| {
            let labels = RpcLabels {
                method: METHODS[method],
                code: crate::authz::code_name(code),
            };
            (
                self.0.rpc_requests.get_or_create(&labels).clone(),
                self.0.rpc_duration.get_or_create(&labels).clone(),
            )
        });
        counter.inc();
        histogram.observe(seconds);
    }

    /// An authorization decision; `role` is the caller's (none when it has no role).
    pub fn count_authz(&self, path: &str, role: Option<crate::authz::Role>, allowed: bool) {
        let (role_index, role) = match role {
            Some(crate::authz::Role::Admin) => (0, "admin"),
            Some(crate::authz::Role::ReadOnly) => (1, "read-only"),
            None => (2, "none"),
        };
        let method = method_index(path);
        let index = (method * 3 + role_index) * 2 + usize::from(allowed);
        let Some(slot) = self.0.authz_series.get(index) else {
            return;
        };
        slot.get_or_init(|| {
            self.0
                .authz_decisions
                .get_or_create(&AuthzLabels {
                    rpc: METHODS[method],
                    role,
                    decision: if allowed { "allow" } else { "deny" },
                })
                .clone()
        })
        .inc();
    }

    pub fn count_backend(&self, operation: &'static str, class: &'static str) {
        self.0
            .backend_calls
            .get_or_create(&BackendLabels { operation, class })
            .inc();
    }

    pub fn count_verification(&self, profile: &str, passed: bool) {
        self.0
            .verifications
            .get_or_create(&VerificationLabels {
                profile: profile.to_owned(),
                result: if passed { "passed" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// 1 or 0 for a target's key; `None` (the AWS owned key in use) removes the series.
    pub fn set_key_verification_passed(&self, target: Target, passed: Option<bool>) {
        let labels = TargetLabels {
            scan_type: target.scan_type().as_aws_str().to_owned(),
            resource_type: target.resource_type().as_aws_str().to_owned(),
        };
        match passed {
            Some(passed) => {
                self.0
                    .key_verification_passed
                    .get_or_create(&labels)
                    .set(i64::from(passed));
            }
            None => {
                self.0.key_verification_passed.remove(&labels);
            }
        }
    }
}
