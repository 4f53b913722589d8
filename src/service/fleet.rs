//! Plan and apply of a desired state for the organization's keys (`PlanFleet`,
//! `ApplyFleet`): for each managed scope and target the desired state names and the caller
//! may act in, what the key in use is and what it should be, verified in that scope; and,
//! applying, the writes, through the same cache, watch and audit as Update and Reset.

use std::{pin::Pin, sync::Arc, time::Duration};

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use super::{
    KeyVerifier, ServiceError, drift::KeyWatch, keycheck::Subject, validation::FieldViolation,
};
use crate::{
    audit::{AuditSubject, AuditedChange},
    backend::BackendError,
    cache::KeyCache,
    domain::{KeyArn, Scope, ScopedTarget, Target},
    fleet::desired::{DesiredKey, DesiredState},
    proto::{self, FleetAction},
    rpc,
    verify::Report,
};

/// Scopes per streamed message, as the inventory's.
const SCOPES_PER_MESSAGE: usize = 50;

/// Scopes planned (or applied) at once: a fleet is a bounded trickle of backend calls.
const SCOPES_AT_ONCE: usize = 8;

/// Tries of one write the backend throttles, and the first pause between them (doubled
/// each time, unless the backend says how long to wait).
const WRITE_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait before trying a throttled write again, whatever the backend asks
/// (before the ±15 % every pause gets).
const LONGEST_BACKOFF: Duration = Duration::from_secs(20);

/// Between two writes in one account and Region: the rate a scope is written at.
const WRITE_SPACING: Duration = Duration::from_millis(200);

/// One streamed message of a plan or an apply, before it is either's.
pub(super) struct FleetBatch {
    changes: Vec<proto::FleetChange>,
    scopes_done: u32,
    scopes_total: u32,
    summary: Option<proto::FleetSummary>,
}

impl From<FleetBatch> for proto::PlanFleetResponse {
    fn from(batch: FleetBatch) -> Self {
        proto::PlanFleetResponse {
            changes: batch.changes,
            scopes_done: batch.scopes_done,
            scopes_total: batch.scopes_total,
            summary: batch.summary,
        }
    }
}

impl From<FleetBatch> for proto::ApplyFleetResponse {
    fn from(batch: FleetBatch) -> Self {
        proto::ApplyFleetResponse {
            changes: batch.changes,
            scopes_done: batch.scopes_done,
            scopes_total: batch.scopes_total,
            summary: batch.summary,
        }
    }
}

/// A plan's or an apply's messages.
pub(super) type FleetStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// What a planned change writes.
enum Write {
    Update(KeyArn, Box<Report>),
    Reset,
}

/// One target's plan: what the plan says, and what applying it writes.
struct Planned {
    target: ScopedTarget,
    change: proto::FleetChange,
    write: Option<Write>,
}

/// What plans, applies, reconciles and the inventory reach the keys through: the cache, the
/// verifier and the watch the encryption-key service uses, and where the last reconcile round
/// found each target.
#[derive(Clone)]
pub struct Fleet {
    cache: KeyCache,
    verifier: KeyVerifier,
    watch: Arc<KeyWatch>,
    standings: Arc<Standings>,
}

impl Fleet {
    pub(super) fn new(cache: KeyCache, verifier: KeyVerifier, watch: Arc<KeyWatch>) -> Fleet {
        Fleet {
            cache,
            verifier,
            watch,
            standings: Arc::default(),
        }
    }

    pub(super) fn cache(&self) -> &KeyCache {
        &self.cache
    }

    pub(super) fn verifier(&self) -> &KeyVerifier {
        &self.verifier
    }

    fn watch(&self) -> &KeyWatch {
        &self.watch
    }

    pub(super) fn standings(&self) -> &Arc<Standings> {
        &self.standings
    }

    /// The plan of `desired_state` for `caller`, applied when `apply` (writes audited on
    /// `audit`, the call's audit subject; only the changes `confirmed` holds, when given).
    pub(super) fn plan<M: From<FleetBatch> + Send + 'static>(
        &self,
        caller: Option<&rpc::CallerContext>,
        desired_state: &str,
        apply: bool,
        audit: Option<AuditSubject>,
        confirmed: Option<ConfirmedChanges>,
    ) -> Result<FleetStream<M>, ServiceError> {
        let desired = DesiredState::parse(desired_state).map_err(|error| {
            ServiceError::InvalidArgument(vec![FieldViolation::new(
                "desired_state",
                error.to_string(),
            )])
        })?;
        let scoped_caller = caller.filter(|c| c.scoped.is_some());
        let may_act = |scope: Scope| {
            scoped_caller.is_none_or(|c| {
                c.may_act_in(scope.account_id(), scope.region(), false)
                    .is_ok()
            })
        };
        let managed = self.verifier().scopes().all();
        let scopes: Vec<Scope> = managed
            .iter()
            .map(|settings| settings.scope)
            .filter(|&scope| may_act(scope))
            .collect();
        let unknown = unmanaged_names(&desired, &scopes);
        let (sender, receiver) = mpsc::channel(2);
        let run = FleetRun {
            keys: self.clone(),
            desired: Arc::new(desired),
            apply,
            audit,
            confirmed: confirmed.map(Arc::new),
        };
        tokio::spawn(run.send(scopes, unknown, sender));
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

/// One plan or apply, as it runs.
#[derive(Clone)]
struct FleetRun {
    keys: Fleet,
    desired: Arc<DesiredState>,
    apply: bool,
    audit: Option<AuditSubject>,
    /// Applying a confirmed plan: the changes that may be written.
    confirmed: Option<Arc<ConfirmedChanges>>,
}

/// A confirmed plan's changes that write, by (account, Region, resource type): what each
/// was confirmed as (action, from, to).
pub(super) struct ConfirmedChanges(
    std::collections::HashMap<(String, String, i32), (i32, String, String)>,
);

impl ConfirmedChanges {
    pub(super) fn of(plan: &proto::ConfirmedPlan) -> ConfirmedChanges {
        ConfirmedChanges(
            plan.changes
                .iter()
                .filter(|change| would_write(change))
                .map(|change| {
                    (
                        (
                            change.account_id.clone(),
                            change.region.clone(),
                            change.resource_type,
                        ),
                        (
                            change.action,
                            change.from_kms_key_id.clone(),
                            change.to_kms_key_id.clone(),
                        ),
                    )
                })
                .collect(),
        )
    }

    /// Whether `change` is one that was confirmed.
    fn holds(&self, change: &proto::FleetChange) -> bool {
        let key = (
            change.account_id.clone(),
            change.region.clone(),
            change.resource_type,
        );
        self.0.get(&key).is_some_and(|(action, from, to)| {
            *action == change.action
                && *from == change.from_kms_key_id
                && *to == change.to_kms_key_id
        })
    }
}

impl FleetRun {
    /// Plans (and applies) `scopes` batch by batch, each batch's changes one message, then
    /// the summary; until done or the caller goes away.
    async fn send<M: From<FleetBatch>>(
        self,
        scopes: Vec<Scope>,
        unknown: Vec<proto::FleetChange>,
        sender: mpsc::Sender<Result<M, Status>>,
    ) {
        let total = u32::try_from(scopes.len()).unwrap_or(u32::MAX);
        let at_once = Arc::new(Semaphore::new(SCOPES_AT_ONCE));
        let mut summary = proto::FleetSummary::default();
        let mut done: u32 = 0;
        for batch in scopes.chunks(SCOPES_PER_MESSAGE) {
            let mut running = JoinSet::new();
            let mut tasks = std::collections::HashMap::new();
            for (at, &scope) in batch.iter().enumerate() {
                let (run, at_once) = (self.clone(), at_once.clone());
                let task = running.spawn(async move {
                    let _turn = at_once.acquire_owned().await;
                    (at, run.scope(scope).await)
                });
                tasks.insert(task.id(), (at, scope));
            }
            let mut planned: Vec<(usize, Vec<proto::FleetChange>)> = Vec::new();
            while let Some(finished) = running.join_next().await {
                match finished {
                    Ok(finished) => planned.push(finished),
                    // A fault of the sidecar's own: the scope is an error, not left out.
                    Err(error) => {
                        if let Some(&(at, scope)) = tasks.get(&error.id()) {
                            tracing::error!(%scope, %error, "fleet: planning a scope failed");
                            planned.push((at, vec![scope_failed(scope)]));
                        }
                    }
                }
            }
            planned.sort_unstable_by_key(|(at, _)| *at);
            let changes: Vec<proto::FleetChange> = planned
                .into_iter()
                .flat_map(|(_, changes)| changes)
                .collect();
            changes
                .iter()
                .for_each(|change| count(&mut summary, change));
            done = done.saturating_add(u32::try_from(batch.len()).unwrap_or(u32::MAX));
            let message = FleetBatch {
                changes,
                scopes_done: done,
                scopes_total: total,
                summary: None,
            };
            if sender.send(Ok(message.into())).await.is_err() {
                return;
            }
        }
        unknown
            .iter()
            .for_each(|change| count(&mut summary, change));
        let last = FleetBatch {
            changes: unknown,
            scopes_done: done,
            scopes_total: total,
            summary: Some(summary),
        };
        let _ = sender.send(Ok(last.into())).await;
    }

    /// The plan of one scope's targets (those the desired state names), applied one write
    /// at a time when applying.
    async fn scope(&self, scope: Scope) -> Vec<proto::FleetChange> {
        self.scope_targets(scope)
            .await
            .into_iter()
            .map(|(_, change)| change)
            .collect()
    }

    /// [`FleetRun::scope`], each change with its target.
    async fn scope_targets(&self, scope: Scope) -> Vec<(ScopedTarget, proto::FleetChange)> {
        let mut changes = Vec::new();
        let mut wrote = false;
        for target in Target::all() {
            let Some((wanted, line)) = self.desired.wanted(scope, target) else {
                continue;
            };
            let target = ScopedTarget::new(scope, target);
            let mut planned = self.plan(target, wanted, line).await;
            if self.apply
                && planned.write.is_some()
                && let Some(confirmed) = &self.confirmed
                && !confirmed.holds(&planned.change)
            {
                // What the person said yes to is not what would be written now.
                planned.write = None;
                planned.change.error = format!(
                    "{target} changed since the plan was confirmed: not written; plan again"
                );
            }
            if self.apply
                && let Some(write) = planned.write.take()
            {
                if wrote {
                    tokio::time::sleep(WRITE_SPACING).await;
                }
                self.write(planned.target, write, &mut planned.change).await;
                wrote = true;
            }
            changes.push((planned.target, planned.change));
        }
        changes
    }

    /// What `target` has, what `wanted` makes it, and that key's verification there.
    async fn plan(&self, target: ScopedTarget, wanted: &DesiredKey, line: usize) -> Planned {
        let scope = target.scope;
        let mut planned = Planned {
            target,
            change: proto::FleetChange {
                account_id: scope.account_id().to_owned(),
                region: scope.region().to_owned(),
                scan_type: target.target.scan_type().to_proto().into(),
                resource_type: target.target.resource_type().to_proto().into(),
                line: u32::try_from(line).unwrap_or(u32::MAX),
                ..Default::default()
            },
            write: None,
        };
        let change = &mut planned.change;
        let held = match self.keys.cache().current_key_in_use(target).await {
            Ok((previous, held)) => {
                self.keys
                    .watch()
                    .reset_seen(target, previous.as_ref(), &held);
                held
            }
            Err(error) => {
                change.error = said(error);
                return planned;
            }
        };
        change.from_kms_key_id = held.key_arn.as_deref().unwrap_or_default().to_owned();
        let desired_key = match wanted {
            DesiredKey::AwsOwned => None,
            DesiredKey::Key(key) => Some(key.clone()),
            DesiredKey::Alias(alias) => {
                match self.keys.verifier().resolve_alias(scope, alias).await {
                    Ok(Some(key)) => Some(key),
                    Ok(None) => {
                        change.error =
                            format!("the alias `{alias}` does not exist in {scope} (line {line})");
                        return planned;
                    }
                    Err(error) => {
                        change.error = said(error);
                        return planned;
                    }
                }
            }
        };
        let Some(key) = desired_key else {
            change.action = if held.key_arn.is_some() {
                planned.write = Some(Write::Reset);
                FleetAction::Reset
            } else {
                FleetAction::None
            }
            .into();
            return planned;
        };
        change.to_kms_key_id = key.as_str().to_owned();
        let in_use = held.key_arn.as_deref() == Some(key.as_str());
        // The key in use keeps the verdict the drift watch keeps fresh; another is verified
        // now, in this scope.
        let report = match held.verdict.filter(|_| in_use) {
            Some(verdict) => (*verdict).clone(),
            None => {
                let settings = self.keys.verifier().settings_in(scope);
                match self
                    .keys
                    .verifier()
                    .verify_key(&key, &Subject::configured(&settings, target.target))
                    .await
                {
                    Ok(report) => report,
                    Err(error) => {
                        change.error = said(error);
                        return planned;
                    }
                }
            }
        };
        change.action = if in_use {
            FleetAction::None
        } else {
            FleetAction::Update
        }
        .into();
        if !report.passed {
            change.error = format!(
                "`{key}` fails verification in {scope}: {}",
                failing_codes(&report)
            );
        } else if !in_use {
            planned.write = Some(Write::Update(key, Box::new(report.clone())));
        }
        change.report = Some(report.into());
        planned
    }

    /// Makes one planned write, trying a throttled one again with backoff.
    async fn write(&self, target: ScopedTarget, write: Write, change: &mut proto::FleetChange) {
        let cache = self.keys.cache();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=WRITE_ATTEMPTS {
            let result = match &write {
                Write::Update(key, report) => cache.update(target, key, (**report).clone()).await,
                Write::Reset => cache.reset(target).await,
            };
            let pause = match result {
                Ok(()) => {
                    change.applied = true;
                    match &write {
                        Write::Update(key, report) => {
                            tracing::info!(%target, key = %key, "fleet: customer managed key put in use");
                            self.keys.watch().updated(target, key, report);
                        }
                        Write::Reset => {
                            tracing::info!(%target, "fleet: reset to the AWS owned key");
                            self.keys.watch().reset(target);
                        }
                    }
                    self.audit(target, &write, "OK");
                    return;
                }
                Err(BackendError::Throttled { retry_after }) if attempt < WRITE_ATTEMPTS => {
                    // The backend's hint, within reason: a scope must not hold one of the
                    // run's places for as long as any header says.
                    retry_after.unwrap_or(backoff).min(LONGEST_BACKOFF)
                }
                Err(error) => {
                    let status = Status::from(ServiceError::from(error));
                    change.error = status.message().to_owned();
                    self.audit(target, &write, rpc::code_name(status.code()));
                    return;
                }
            };
            change.retries += 1;
            tracing::info!(%target, attempt, ?pause, "fleet: the backend throttled a write; trying again");
            tokio::time::sleep(crate::jitter::around(pause)).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    /// The audit line of one write.
    fn audit(&self, target: ScopedTarget, write: &Write, code: &'static str) {
        let Some(audit) = &self.audit else {
            return;
        };
        audit.write_change(AuditedChange {
            key_arn: match write {
                Write::Update(key, _) => Some(key.as_str()),
                Write::Reset => None,
            },
            scan_type: target.target.scan_type().as_aws_str(),
            resource_type: target.target.resource_type().as_aws_str(),
            account_id: target.scope.account_id(),
            region: target.scope.region(),
            code,
        });
    }
}

/// The accounts and Regions `desired` names (not `"*"`) that none of `scopes` has, each an
/// error line of its own: a typo there would otherwise plan nothing, silently.
fn unmanaged_names(desired: &DesiredState, scopes: &[Scope]) -> Vec<proto::FleetChange> {
    let accounts: std::collections::HashSet<&str> = scopes.iter().map(|s| s.account_id()).collect();
    let regions: std::collections::HashSet<&str> = scopes.iter().map(|s| s.region()).collect();
    let mut unknown: Vec<proto::FleetChange> = Vec::new();
    for (account_id, line) in desired.named_accounts() {
        if !accounts.contains(account_id) {
            unknown.push(proto::FleetChange {
                account_id: account_id.to_owned(),
                line: u32::try_from(line).unwrap_or(u32::MAX),
                error: format!(
                    "line {line}: account {account_id} is not managed by this sidecar (or not by your rules)"
                ),
                ..Default::default()
            });
        }
    }
    for (region, line) in desired.named_regions() {
        if !regions.contains(region) {
            unknown.push(proto::FleetChange {
                region: region.to_owned(),
                line: u32::try_from(line).unwrap_or(u32::MAX),
                error: format!(
                    "line {line}: no account is managed in {region} by this sidecar (or by your rules)"
                ),
                ..Default::default()
            });
        }
    }
    unknown
}

/// Whether applying `change` writes.
fn would_write(change: &proto::FleetChange) -> bool {
    change.error.is_empty() && change.action() != FleetAction::None
}

/// The change of a scope whose planning failed inside the sidecar.
fn scope_failed(scope: Scope) -> proto::FleetChange {
    proto::FleetChange {
        account_id: scope.account_id().to_owned(),
        region: scope.region().to_owned(),
        error: format!(
            "{scope} could not be planned: an internal error (the sidecar's log says more)"
        ),
        ..Default::default()
    }
}

/// What a call answering `error` would say: never AWS's own text.
fn said(error: impl Into<ServiceError>) -> String {
    Status::from(error.into()).message().to_owned()
}

/// The codes of a failing report's errors.
fn failing_codes(report: &Report) -> String {
    let codes: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.severity == crate::verify::Severity::Error)
        .map(|f| f.code.to_string())
        .collect();
    codes.join(", ")
}

/// Adds `change` to the summary.
fn count(summary: &mut proto::FleetSummary, change: &proto::FleetChange) {
    if !change.error.is_empty() {
        summary.errors += 1;
    } else {
        match change.action() {
            FleetAction::None => summary.unchanged += 1,
            FleetAction::Update => summary.updates += 1,
            FleetAction::Reset => summary.resets += 1,
            FleetAction::Unspecified => {}
        }
    }
    if change.applied {
        summary.applied += 1;
    }
    summary.retries += change.retries;
}

/// Where a target stands against the desired state, as the last round found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    In,
    Out,
    Error,
}

impl Standing {
    pub(super) fn to_proto(self) -> proto::DesiredStateStanding {
        match self {
            Standing::In => proto::DesiredStateStanding::In,
            Standing::Out => proto::DesiredStateStanding::Out,
            Standing::Error => proto::DesiredStateStanding::Error,
        }
    }
}

/// Where each target stood at the last reconcile round; empty without `[fleet]`. The
/// reconciler writes it, the inventory reads it.
#[derive(Debug, Default)]
pub(super) struct Standings(std::sync::Mutex<std::collections::HashMap<ScopedTarget, Standing>>);

impl Standings {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ScopedTarget, Standing>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn of(&self, target: ScopedTarget) -> Option<Standing> {
        self.map().get(&target).copied()
    }

    /// Records `now`; returns what was recorded before.
    fn set(&self, target: ScopedTarget, now: Standing) -> Option<Standing> {
        self.map().insert(target, now)
    }

    /// Keeps `targets` only; the counts of in, out and error.
    fn keep_only(&self, targets: &std::collections::HashSet<ScopedTarget>) -> [usize; 3] {
        let mut map = self.map();
        map.retain(|target, _| targets.contains(target));
        counts(map.values().copied())
    }

    fn counts(&self) -> [usize; 3] {
        counts(self.map().values().copied())
    }
}

fn counts(standings: impl Iterator<Item = Standing>) -> [usize; 3] {
    let mut counts = [0usize; 3];
    for standing in standings {
        counts[match standing {
            Standing::In => 0,
            Standing::Out => 1,
            Standing::Error => 2,
        }] += 1;
    }
    counts
}

/// Keeps the managed scopes in the desired state of a file (`[fleet]`): a round over every
/// scope each interval, one scope at a time spread over it, reporting drift (a metric, a
/// Watch event, a log line) and, enforcing, applying it as `ApplyFleet` does.
pub struct Reconciler {
    keys: Fleet,
    file: std::path::PathBuf,
    interval: Duration,
    enforce: bool,
    audit: crate::audit::AuditLog,
    metrics: crate::metrics::Metrics,
}

/// Why the desired-state file cannot be used.
pub fn read_desired_state(file: &std::path::Path) -> Result<DesiredState, String> {
    let bytes = crate::files::read_trusted(file)
        .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("`{}` is not UTF-8 text", file.display()))?;
    DesiredState::parse(&text).map_err(|e| format!("`{}`: {e}", file.display()))
}

impl Fleet {
    /// The reconciler of `config`'s desired state, when it names one.
    pub(super) fn reconciler(
        &self,
        config: &crate::config::FleetConfig,
        audit: crate::audit::AuditLog,
        metrics: crate::metrics::Metrics,
    ) -> Option<Reconciler> {
        Some(Reconciler {
            keys: self.clone(),
            file: config.desired_state_file.clone()?,
            interval: config.interval,
            enforce: config.mode == crate::config::FleetMode::Enforce,
            audit,
            metrics,
        })
    }
}

impl Reconciler {
    /// Rounds until the task is dropped. A file that no longer parses (or cannot be read)
    /// keeps the last good one in force, and says so.
    pub async fn run(self) {
        let mut desired: Option<Arc<DesiredState>> = None;
        let mut unmanaged_said: Vec<String> = Vec::new();
        for round in 1u64.. {
            match read_desired_state(&self.file) {
                Ok(read) => desired = Some(Arc::new(read)),
                Err(error) => {
                    tracing::warn!(%error, "fleet: the desired state cannot be read; the last one read stays in force");
                }
            }
            let Some(desired) = desired.clone() else {
                tokio::time::sleep(crate::jitter::around(self.interval)).await;
                continue;
            };
            let record = crate::audit::AuditRecord {
                role: Some("admin".into()),
                ..crate::audit::AuditRecord::new(
                    &format!("reconcile-{round}"),
                    "inspector-keyd:reconcile".into(),
                    None,
                    "reconcile",
                )
            };
            // Each scope is planned first, so a drift is reported as such even where
            // `enforce` then writes it away.
            let observe = FleetRun {
                keys: self.keys.clone(),
                desired,
                apply: false,
                audit: Some(AuditSubject::of_call(self.audit.clone(), &record)),
                confirmed: None,
            };
            let enforce = self.enforce.then(|| FleetRun {
                apply: true,
                ..observe.clone()
            });
            let scopes = self.keys.verifier().scopes().all();
            // Said once for each file and organization, not each round.
            let managed: Vec<Scope> = scopes.iter().map(|settings| settings.scope).collect();
            let unmanaged: Vec<String> = unmanaged_names(&observe.desired, &managed)
                .into_iter()
                .map(|change| change.error)
                .collect();
            if unmanaged != unmanaged_said {
                for error in &unmanaged {
                    tracing::warn!(%error, "fleet: the desired state names what this sidecar does not manage");
                }
                unmanaged_said = unmanaged;
            }
            let gap = self.interval / u32::try_from(scopes.len().max(1)).unwrap_or(u32::MAX);
            let mut seen = std::collections::HashSet::new();
            for settings in scopes {
                let scope = settings.scope;
                // A listing of the organization may have removed it meanwhile.
                if self.keys.verifier().scopes().settings(scope).is_some() {
                    let mut changes = observe.scope_targets(scope).await;
                    if let Some(enforce) = &enforce
                        && changes.iter().any(|(_, change)| would_write(change))
                    {
                        for (target, change) in &changes {
                            self.record(*target, change);
                        }
                        changes = enforce.scope_targets(scope).await;
                    }
                    for (target, change) in changes {
                        seen.insert(target);
                        self.record(target, &change);
                    }
                    self.metrics
                        .set_fleet_targets(self.keys.standings().counts());
                }
                tokio::time::sleep(crate::jitter::around(gap)).await;
            }
            // Targets no longer named, or no longer managed, stand nowhere.
            self.metrics
                .set_fleet_targets(self.keys.standings().keep_only(&seen));
        }
    }

    /// Where `change` leaves `target`, with an event and a log line when it drifts or comes
    /// back (by hand, or written back by `enforce`).
    fn record(&self, target: ScopedTarget, change: &proto::FleetChange) {
        let now = if !change.error.is_empty() {
            Standing::Error
        } else if change.action() == FleetAction::None || change.applied {
            Standing::In
        } else {
            Standing::Out
        };
        let before = self.keys.standings().set(target, now);
        // The key in use after the change: the one written, when it was applied.
        let in_use = if change.applied {
            &change.to_kms_key_id
        } else {
            &change.from_kms_key_id
        };
        let in_use = (!in_use.is_empty()).then_some(in_use.as_str());
        match (before, now) {
            (before, Standing::Out) if before != Some(Standing::Out) => {
                tracing::warn!(%target, in_use = in_use.unwrap_or("the AWS owned key"), wanted = %change.to_kms_key_id, "fleet: out of the desired state");
                self.keys.watch().desired_state(target, in_use, false);
            }
            (Some(Standing::Out), Standing::In) => {
                tracing::info!(%target, enforced = change.applied, "fleet: back in the desired state");
                self.keys.watch().desired_state(target, in_use, true);
            }
            (before, Standing::Error) if before != Some(Standing::Error) => {
                tracing::warn!(%target, error = %change.error, "fleet: cannot be brought to the desired state");
            }
            _ => {}
        }
    }
}
