//! Prometheus metrics (prometheus-client), all named `inspector_keyd_*`, with
//! low-cardinality labels only: RPC method names, codes, roles, classes, profiles and
//! targets — never key ARNs or callers.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus_client::{
    collector::Collector,
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Metric, Registry},
};

use crate::{
    domain::{SUPPORTED_TARGETS, ScopedTarget, Target},
    proto::ENCRYPTION_KEY_SERVICE,
    rpc::{self, Role},
    striped::{DurationHistogram, StripedCounter},
    verify::{FindingCode, Profile, Report, Severity},
};

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

impl VerificationLabels {
    fn new(profile: &str, passed: bool) -> VerificationLabels {
        VerificationLabels {
            profile: profile.to_owned(),
            result: if passed { "passed" } else { "failed" }.to_owned(),
        }
    }
}

/// A scope's target's labels, on the series that exist only while something fails there
/// (so their count follows what fails, not the accounts managed).
/// Where a managed target stands against the desired state (`[fleet]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetStateLabels {
    state: &'static str,
}

/// The states `inspector_keyd_fleet_targets` counts, each exported from the first scrape.
pub const FLEET_STATES: [&str; 3] = ["in_desired_state", "out_of_desired_state", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ScopedTargetLabels {
    account_id: &'static str,
    region: &'static str,
    #[prometheus(flatten)]
    target: TargetLabels,
}

impl ScopedTargetLabels {
    pub(crate) fn of(target: ScopedTarget) -> ScopedTargetLabels {
        ScopedTargetLabels {
            account_id: target.scope.account_id(),
            region: target.scope.region(),
            target: TargetLabels::of(target.target),
        }
    }
}

/// A target's labels, on every metric about one (the cache's too).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TargetLabels {
    scan_type: &'static str,
    resource_type: &'static str,
}

impl TargetLabels {
    pub(crate) fn of(target: Target) -> TargetLabels {
        TargetLabels {
            scan_type: target.scan_type().as_aws_str(),
            resource_type: target.resource_type().as_aws_str(),
        }
    }

    /// The series of one of its failing checks.
    fn failing(&self, check: &'static str) -> FailingCheckLabels {
        FailingCheckLabels {
            scan_type: self.scan_type,
            resource_type: self.resource_type,
            check,
        }
    }
}

/// One failing check (an ERROR finding's code) of a target's key.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailingCheckLabels {
    scan_type: &'static str,
    resource_type: &'static str,
    check: &'static str,
}

/// A file the sidecar reloads when it changes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
}

/// A listener, and why one of its connections was refused or ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

/// The files the sidecar reloads, as the `file` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadedFile {
    /// The authorization rules file.
    Rules,
    /// The TLS certificate, key and client CAs.
    Tls,
    /// The AWS-protocol door's credentials file.
    AwsCredentials,
}

impl ReloadedFile {
    const ALL: [ReloadedFile; 3] = [
        ReloadedFile::Rules,
        ReloadedFile::Tls,
        ReloadedFile::AwsCredentials,
    ];

    fn label(self) -> ReloadLabels {
        ReloadLabels {
            file: match self {
                ReloadedFile::Rules => "rules",
                ReloadedFile::Tls => "tls",
                ReloadedFile::AwsCredentials => "aws_credentials",
            },
        }
    }
}

/// Every metric the sidecar exports. Cheap to clone (one shared handle).
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

struct Families {
    registry: Registry,
    // What every call counts is striped: the cores would otherwise share the lines.
    rpc_requests: Family<RpcLabels, StripedCounter>,
    rpc_duration: Family<RpcLabels, DurationHistogram>,
    authz_decisions: Family<AuthzLabels, StripedCounter>,
    backend_calls: Family<BackendLabels, Counter>,
    verifications: Family<VerificationLabels, Counter>,
    key_verification_passed: Family<TargetLabels, Gauge>,
    key_verification_failing_check: Family<FailingCheckLabels, Gauge>,
    scope_key_failing: Family<ScopedTargetLabels, Gauge>,
    fleet_targets: Family<FleetStateLabels, Gauge>,
    /// The checks each target's key fails now (the series above that are set), so that a
    /// new verdict removes the ones that no longer fail.
    failing_checks: Mutex<[Vec<&'static str>; SUPPORTED_TARGETS.len()]>,
    ready: Gauge,
    rpc_shed: Counter,
    reload_failures: Family<ReloadLabels, Counter>,
    reload_failing: Family<ReloadLabels, Gauge>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ConnectionLabels, Counter>,
    connections_cut: Family<ConnectionLabels, Counter>,
    /// The series each (method, code) uses, looked up once: counting a call takes no lock
    /// and hashes nothing.
    rpc_series: Vec<OnceLock<(StripedCounter, DurationHistogram)>>,
    /// The series each (method, role, decision) uses.
    authz_series: Vec<OnceLock<StripedCounter>>,
}

/// gRPC codes are 0 to 16.
const CODES: usize = 17;

/// Roles as the authorization metric counts them: each role, and none.
const ROLES: usize = Role::ALL.len() + 1;

/// A method's row in the method table; paths not served share one more, labelled `other`.
fn method_index(method: Option<&rpc::Method>) -> usize {
    method.map_or(rpc::METHODS.len(), |m| m.index)
}

fn method_name(index: usize) -> &'static str {
    rpc::METHODS.get(index).map_or("other", |m| m.name)
}

/// A new metric, registered in `registry` as `name` with `help`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// `count` series slots, each filled at its first use.
fn unset_series<T>(count: usize) -> Vec<OnceLock<T>> {
    (0..count).map(|_| OnceLock::new()).collect()
}

/// A method of the API every sidecar serves (the local backend's services, health and
/// reflection are not).
fn is_api_method(method: &rpc::Method) -> bool {
    method
        .path
        .strip_prefix('/')
        .and_then(|path| path.strip_prefix(ENCRYPTION_KEY_SERVICE))
        .is_some_and(|name| name.starts_with('/'))
}

/// The checks a verdict may report failing: the codes of ERROR findings (a code with a
/// severity note is an ERROR in some cases).
fn checks_that_can_fail() -> impl Iterator<Item = FindingCode> {
    FindingCode::ALL
        .iter()
        .copied()
        .filter(|code| code.severity() == Severity::Error || code.severity_note().is_some())
}

impl Metrics {
    /// A registry with every metric, and what `cache` counts itself (the cache's counters,
    /// read at each scrape).
    pub fn new(cache: impl Collector) -> Metrics {
        let mut registry = Registry::default();
        // A scrape lists every registered metric first, in the order below, then the
        // collector's, wherever the collector is registered.
        registry.register_collector(Box::new(cache));
        let families = Families {
            rpc_requests: registered(
                &mut registry,
                "inspector_keyd_rpc_requests",
                "RPCs answered, by method and gRPC code",
            ),
            rpc_duration: registered(
                &mut registry,
                "inspector_keyd_rpc_duration_seconds",
                "RPC latency, by method and gRPC code",
            ),
            authz_decisions: registered(
                &mut registry,
                "inspector_keyd_authz_decisions",
                "authorization decisions, by RPC, role and decision",
            ),
            backend_calls: registered(
                &mut registry,
                "inspector_keyd_backend_calls",
                "backend calls, by operation and result class (ok or the error class)",
            ),
            verifications: registered(
                &mut registry,
                "inspector_keyd_verifications",
                "key verifications, by profile and result",
            ),
            key_verification_passed: registered(
                &mut registry,
                "inspector_keyd_key_verification_passed",
                "1 when the customer managed key in use passes verification, 0 when it does not (drift)",
            ),
            key_verification_failing_check: registered(
                &mut registry,
                "inspector_keyd_key_verification_failing_check",
                "1 for each check (finding code) the customer managed key in use fails",
            ),
            scope_key_failing: registered(
                &mut registry,
                "inspector_keyd_scope_key_failing",
                "1 for each managed account, Region and target whose customer managed key in use fails verification; no series for the others",
            ),
            fleet_targets: registered(
                &mut registry,
                "inspector_keyd_fleet_targets",
                "managed targets the desired state names, by where the last reconcile round found them (in_desired_state, out_of_desired_state, error); all 0 without [fleet]",
            ),
            failing_checks: Mutex::default(),
            ready: registered(
                &mut registry,
                "inspector_keyd_ready",
                "1 when the sidecar is ready (serving, and the backend answered its last check), \
                 as readiness probes see it",
            ),
            rpc_shed: registered(
                &mut registry,
                "inspector_keyd_rpc_shed",
                "RPCs refused with RESOURCE_EXHAUSTED because ops.max_concurrent_rpcs were running",
            ),
            reload_failures: registered(
                &mut registry,
                "inspector_keyd_reload_failures",
                "changed rules or TLS files that were refused (the ones in force stay)",
            ),
            reload_failing: registered(
                &mut registry,
                "inspector_keyd_reload_failing",
                "1 while the last change of the rules or TLS files was refused, 0 once one loads",
            ),
            connections_open: registered(
                &mut registry,
                "inspector_keyd_connections_open",
                "connections each listener holds",
            ),
            connections_refused: registered(
                &mut registry,
                "inspector_keyd_connections_refused",
                "connections closed at accept, by listener and the limit they met \
                 (listener_full, peer_ip_full, tls_handshakes_full)",
            ),
            connections_cut: registered(
                &mut registry,
                "inspector_keyd_connections_cut",
                "connections the server ended, by listener and reason (no_preface: no HTTP/2 \
                 preface in time; not_reading: the client stopped reading its answers)",
            ),
            rpc_series: unset_series((rpc::METHODS.len() + 1) * CODES),
            authz_series: unset_series((rpc::METHODS.len() + 1) * ROLES * 2),
            registry,
        };
        let metrics = Metrics(Arc::new(families));
        metrics.start_known_series();
        metrics
    }

    /// Creates at 0 every series whose labels are known in advance, so that a rule or panel
    /// has it from the first scrape on (Prometheus' instrumentation practice: a series that
    /// appears only at its first event reads as "No data", and `absent()` cannot tell a
    /// broken exporter from a quiet one). Only closed sets: no per-request value.
    fn start_known_series(&self) {
        // Successful calls of the API; other codes, and the services not every sidecar
        // serves, start at their first call (17 codes of histograms each would be most of
        // the scrape).
        for method in rpc::METHODS.iter().filter(|m| is_api_method(m)) {
            let _ = self.rpc_series(method_index(Some(method)), tonic::Code::Ok);
        }
        // Each decision authorization can make: a method's role or above is allowed, a
        // lesser role or none denied (a path not served needs admin).
        for method in rpc::METHODS.iter().map(Some).chain([None]) {
            let Some(needed) = rpc::role_needed(method) else {
                continue;
            };
            for role in Role::ALL {
                let _ = self.authz_series(method, Some(role), role >= needed);
            }
            let _ = self.authz_series(method, None, false);
        }
        for profile in Profile::ALL {
            for passed in [true, false] {
                drop(
                    self.0
                        .verifications
                        .get_or_create(&VerificationLabels::new(profile.name(), passed)),
                );
            }
        }
        // Each target's key fails no check until a verdict says otherwise.
        for target in Target::all() {
            let labels = TargetLabels::of(target);
            for check in checks_that_can_fail() {
                self.0
                    .key_verification_failing_check
                    .get_or_create(&labels.failing(check.as_str()))
                    .set(0);
            }
        }
        for state in FLEET_STATES {
            self.0
                .fleet_targets
                .get_or_create(&FleetStateLabels { state })
                .set(0);
        }
        // A file not watched is never refused: 0 is true of it too.
        for file in ReloadedFile::ALL {
            self.watch_reloads(file);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.0.registry).is_err() {
            tracing::error!("cannot encode the metrics");
        }
        text
    }

    /// An RPC answered; `method` as the method table has it (`None`: a path not served).
    pub fn observe_rpc(
        &self,
        method: Option<&rpc::Method>,
        code: tonic::Code,
        duration: std::time::Duration,
    ) {
        if let Some((counter, histogram)) = self.rpc_series(method_index(method), code) {
            counter.inc();
            histogram.observe(duration);
        }
    }

    /// The series of a (method row, code), created at its first use.
    fn rpc_series(
        &self,
        method: usize,
        code: tonic::Code,
    ) -> Option<&(StripedCounter, DurationHistogram)> {
        let code_index = usize::try_from(code as i32).unwrap_or(0).min(CODES - 1);
        let slot = self.0.rpc_series.get(method * CODES + code_index)?;
        Some(slot.get_or_init(|| {
            let labels = RpcLabels {
                method: method_name(method),
                code: rpc::code_name(code),
            };
            (
                self.0.rpc_requests.get_or_create(&labels).clone(),
                self.0.rpc_duration.get_or_create(&labels).clone(),
            )
        }))
    }

    /// An authorization decision; `role` is the caller's (none when it has no role).
    pub fn count_authz(&self, method: Option<&rpc::Method>, role: Option<Role>, allowed: bool) {
        if let Some(counter) = self.authz_series(method, role, allowed) {
            counter.inc();
        }
    }

    /// The series of a (method, role, decision), created at its first use.
    fn authz_series(
        &self,
        method: Option<&rpc::Method>,
        role: Option<Role>,
        allowed: bool,
    ) -> Option<&StripedCounter> {
        let (role_index, role) = match role {
            Some(role) => (role as usize, role.as_str()),
            None => (Role::ALL.len(), "none"),
        };
        let method = method_index(method);
        let index = (method * ROLES + role_index) * 2 + usize::from(allowed);
        let slot = self.0.authz_series.get(index)?;
        Some(slot.get_or_init(|| {
            self.0
                .authz_decisions
                .get_or_create(&AuthzLabels {
                    rpc: method_name(method),
                    role,
                    decision: if allowed { "allow" } else { "deny" },
                })
                .clone()
        }))
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
            .get_or_create(&VerificationLabels::new(profile, passed))
            .inc();
    }

    /// The verdict on a target's key: `None` (the AWS owned key in use, or no verdict yet)
    /// removes its pass/fail series. Each check the verdict fails is set to 1, and each
    /// that no longer fails back to 0 (kept, not removed: panels and `absent()` need it).
    pub fn set_key_verification(&self, target: Target, report: Option<&Report>) {
        let labels = TargetLabels::of(target);
        match report {
            Some(report) => {
                self.0
                    .key_verification_passed
                    .get_or_create(&labels)
                    .set(i64::from(report.passed));
            }
            None => {
                self.0.key_verification_passed.remove(&labels);
            }
        }
        let mut failing: Vec<&'static str> = report
            .map(|r| r.errors().map(|f| f.code.as_str()).collect())
            .unwrap_or_default();
        failing.sort_unstable();
        failing.dedup();
        let mut current = self
            .0
            .failing_checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(current) = current.get_mut(target.index()) else {
            return;
        };
        for gone in current.iter().filter(|check| !failing.contains(check)) {
            self.0
                .key_verification_failing_check
                .get_or_create(&labels.failing(gone))
                .set(0);
        }
        for check in &failing {
            self.0
                .key_verification_failing_check
                .get_or_create(&labels.failing(check))
                .set(1);
        }
        *current = failing;
    }

    /// Whether the key in use for a scope's target fails verification: a series while it
    /// does, none otherwise.
    /// How many managed targets stand in each of [`FLEET_STATES`], in that order.
    pub fn set_fleet_targets(&self, counts: [usize; 3]) {
        for (state, count) in FLEET_STATES.into_iter().zip(counts) {
            self.0
                .fleet_targets
                .get_or_create(&FleetStateLabels { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn set_scope_key_failing(&self, target: ScopedTarget, failing: bool) {
        let labels = ScopedTargetLabels::of(target);
        if failing {
            self.0.scope_key_failing.get_or_create(&labels).set(1);
        } else {
            self.0.scope_key_failing.remove(&labels);
        }
    }

    /// Readiness as the probes see it.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.set(i64::from(ready));
    }

    /// A call shed at the concurrency limit.
    pub fn count_shed(&self) {
        self.0.rpc_shed.inc();
    }

    /// Starts the reload series of a file the sidecar watches at 0.
    pub fn watch_reloads(&self, file: ReloadedFile) {
        // Creating the series is the point: a first failure then shows as an increase.
        drop(self.0.reload_failures.get_or_create(&file.label()));
        self.0.reload_failing.get_or_create(&file.label()).set(0);
    }

    pub fn connection_opened(&self, listener: &'static str) {
        self.0
            .connections_open
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    pub fn connection_closed(&self, listener: &'static str) {
        self.0
            .connections_open
            .get_or_create(&ListenerLabels { listener })
            .dec();
    }

    pub fn count_connection_refused(&self, listener: &'static str, reason: &'static str) {
        self.0
            .connections_refused
            .get_or_create(&ConnectionLabels { listener, reason })
            .inc();
    }

    pub fn count_connection_cut(&self, listener: &'static str, reason: &'static str) {
        self.0
            .connections_cut
            .get_or_create(&ConnectionLabels { listener, reason })
            .inc();
    }

    /// The outcome of reading a changed file again.
    pub fn count_reload(&self, file: ReloadedFile, refused: bool) {
        if refused {
            self.0.reload_failures.get_or_create(&file.label()).inc();
        }
        self.0
            .reload_failing
            .get_or_create(&file.label())
            .set(i64::from(refused));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::verify::{Finding, FindingCode};

    /// No cache: these tests are about the metrics' own families.
    #[derive(Debug)]
    struct NoCache;

    impl Collector for NoCache {
        fn encode(
            &self,
            _: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            Ok(())
        }
    }

    /// The failing check series set to 1 (the others are at 0).
    fn failing_checks(metrics: &Metrics) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|l| {
                l.starts_with("inspector_keyd_key_verification_failing_check{") && l.ends_with(" 1")
            })
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_new_registry_exports_its_known_series_at_zero() {
        let text = Metrics::new(NoCache).encode();
        for series in [
            "inspector_keyd_authz_decisions_total{rpc=\"UpdateEncryptionKey\",role=\"read-only\",decision=\"deny\"} 0",
            "inspector_keyd_authz_decisions_total{rpc=\"UpdateEncryptionKey\",role=\"admin\",decision=\"allow\"} 0",
            "inspector_keyd_authz_decisions_total{rpc=\"other\",role=\"none\",decision=\"deny\"} 0",
            "inspector_keyd_key_verification_failing_check{scan_type=\"CODE\",resource_type=\"CODE_REPOSITORY\",check=\"KEY_NOT_ENABLED\"} 0",
            "inspector_keyd_rpc_requests_total{method=\"GetEncryptionKey\",code=\"OK\"} 0",
            "inspector_keyd_rpc_duration_seconds_count{method=\"GetEncryptionKey\",code=\"OK\"} 0",
            "inspector_keyd_verifications_total{profile=\"amazon-q-lambda\",result=\"failed\"} 0",
            "inspector_keyd_reload_failing{file=\"tls\"} 0",
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }
        // Decisions authorization never makes, and calls of services not every sidecar
        // serves, are left out.
        assert!(!text.contains("role=\"none\",decision=\"allow\""), "{text}");
        assert!(!text.contains("rpc=\"GetEncryptionKey\",role=\"read-only\",decision=\"deny\""));
        assert!(!text.contains("method=\"CreateKey\""), "{text}");
        // Pre-created series are the ones counting uses.
        let metrics = Metrics::new(NoCache);
        let update = rpc::METHODS
            .iter()
            .find(|m| m.name == "UpdateEncryptionKey")
            .unwrap();
        metrics.count_authz(Some(update), Some(Role::Admin), true);
        let text = metrics.encode();
        assert!(text.contains(
            "inspector_keyd_authz_decisions_total{rpc=\"UpdateEncryptionKey\",role=\"admin\",decision=\"allow\"} 1"
        ), "{text}");
        assert_eq!(
            text.matches("rpc=\"UpdateEncryptionKey\",role=\"admin\",decision=\"allow\"")
                .count(),
            1
        );
    }

    #[test]
    fn a_new_verdict_replaces_the_failing_checks_of_its_target_only() {
        let metrics = Metrics::new(NoCache);
        let mut targets = Target::all();
        let (lambda, repository) = (targets.next().unwrap(), targets.next().unwrap());
        let failing = |codes: &[FindingCode]| {
            Report::new(
                "codeguru-grants",
                codes.iter().map(|c| Finding::new(*c, "x")).collect(),
            )
        };
        metrics.set_key_verification(
            lambda,
            Some(&failing(&[
                FindingCode::KeyNotEnabled,
                FindingCode::RequiredAccessExplicitlyDenied,
            ])),
        );
        metrics.set_key_verification(repository, Some(&failing(&[FindingCode::KeyNotEnabled])));
        assert_eq!(failing_checks(&metrics).len(), 3);

        metrics.set_key_verification(
            lambda,
            Some(&failing(&[FindingCode::RequiredAccessExplicitlyDenied])),
        );
        let left = failing_checks(&metrics);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().any(|l| l.contains("AWS_LAMBDA_FUNCTION")
            && l.contains("check=\"REQUIRED_ACCESS_EXPLICITLY_DENIED\"")
            && l.ends_with(" 1")));
        assert!(
            !left
                .iter()
                .any(|l| l.contains("AWS_LAMBDA_FUNCTION") && l.contains("KEY_NOT_ENABLED"))
        );

        // Passing (or the AWS owned key in use) leaves no failing check.
        metrics.set_key_verification(lambda, Some(&failing(&[])));
        metrics.set_key_verification(repository, None);
        assert_eq!(failing_checks(&metrics), Vec::<String>::new());
        // A check that no longer fails reads 0; it does not vanish.
        assert!(metrics.encode().contains(
            "inspector_keyd_key_verification_failing_check{scan_type=\"CODE\",resource_type=\"AWS_LAMBDA_FUNCTION\",check=\"REQUIRED_ACCESS_EXPLICITLY_DENIED\"} 0"
        ));
        assert!(metrics
            .encode()
            .contains("inspector_keyd_key_verification_passed{scan_type=\"CODE\",resource_type=\"AWS_LAMBDA_FUNCTION\"} 1"));
    }

    #[test]
    fn a_refused_reload_stays_failing_until_one_loads() {
        let metrics = Metrics::new(NoCache);
        metrics.watch_reloads(ReloadedFile::Rules);
        let text = metrics.encode();
        assert!(
            text.contains("inspector_keyd_reload_failures_total{file=\"rules\"} 0"),
            "{text}"
        );
        assert!(text.contains("inspector_keyd_reload_failing{file=\"rules\"} 0"));
        metrics.count_reload(ReloadedFile::Rules, true);
        metrics.count_reload(ReloadedFile::Rules, true);
        let text = metrics.encode();
        assert!(text.contains("inspector_keyd_reload_failures_total{file=\"rules\"} 2"));
        assert!(text.contains("inspector_keyd_reload_failing{file=\"rules\"} 1"));
        metrics.count_reload(ReloadedFile::Rules, false);
        let text = metrics.encode();
        assert!(text.contains("inspector_keyd_reload_failures_total{file=\"rules\"} 2"));
        assert!(text.contains("inspector_keyd_reload_failing{file=\"rules\"} 0"));
    }
}
