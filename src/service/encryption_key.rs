//! `EncryptionKeyService`: Get, Update (behind verification) and Reset.

use std::sync::Arc;

use http::HeaderValue;

use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{
    ServiceError,
    audience::ReportAudience,
    drift::{KeyEvent, KeyEventKind, KeyWatch},
    keycheck::{KeyVerifier, Subject},
    validation,
};
use crate::{
    cache::{Cached, KeyCache},
    domain::{Scope, ScopedTarget},
    metrics::Metrics,
    proto::{self, encryption_key_service_server::EncryptionKeyService},
    rpc,
    verify::{
        self, Finding, RenderError, Report,
        access::{AccessEntry, AccessSummary, Grantee, Witness},
    },
};

/// The encryption-key service: reads through the cache, writes through it after
/// verification, and the key watch.
#[derive(Clone)]
pub struct EncryptionKeys {
    cache: KeyCache,
    verifier: KeyVerifier,
    watch: Arc<KeyWatch>,
    metrics: Metrics,
    /// Ends watch streams at shutdown.
    stop: tokio::sync::watch::Receiver<bool>,
    watch_limits: WatchLimits,
    quota: Arc<super::quota::CallerQuota>,
    /// Plans, applies, reconciles and lists the organization's keys.
    fleet: super::fleet::Fleet,
}

/// Bounds on WatchEncryptionKey streams: how many at once, and for how long each.
#[derive(Clone)]
pub struct WatchLimits {
    slots: Arc<tokio::sync::Semaphore>,
    max_streams: usize,
    max_duration: std::time::Duration,
}

impl WatchLimits {
    pub fn new(max_streams: usize, max_duration: std::time::Duration) -> WatchLimits {
        WatchLimits {
            slots: Arc::new(tokio::sync::Semaphore::new(max_streams)),
            max_streams,
            max_duration,
        }
    }
}

/// Adds the cache headers, and the request id of an answer the cache could not give (see
/// `get`), to an answer's metadata.
fn add_cache_metadata(
    metadata: &mut tonic::metadata::MetadataMap,
    cached: &Cached,
    request_id: Option<HeaderValue>,
) {
    if let Some(id) = request_id {
        rpc::answer_request_id(metadata.as_mut(), id);
    }
    use tonic::metadata::{AsciiMetadataKey, MetadataValue};
    // Names parsed once, not on every read.
    static NAMES: std::sync::LazyLock<(AsciiMetadataKey, AsciiMetadataKey)> =
        std::sync::LazyLock::new(|| {
            (
                AsciiMetadataKey::from_static(rpc::CACHE_HEADER),
                AsciiMetadataKey::from_static(rpc::CACHE_AGE_HEADER),
            )
        });
    // The ages of the first hour as static values, made once: a value formatted per read is
    // an allocation, and a shared one a count every core writes to.
    static AGES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
        let text: &'static str = (0..3600)
            .map(|age| format!("{age} "))
            .collect::<String>()
            .leak();
        text.split_terminator(' ').collect()
    });
    let (status, age) = &*NAMES;
    metadata.insert(
        status.clone(),
        MetadataValue::from_static(cached.status.as_str()),
    );
    let seconds = cached.age.as_secs();
    let value = usize::try_from(seconds)
        .ok()
        .and_then(|s| AGES.get(s))
        .map_or_else(|| seconds.into(), |age| MetadataValue::from_static(age));
    metadata.insert(age.clone(), value);
}

impl EncryptionKeys {
    pub fn new(
        cache: KeyCache,
        verifier: KeyVerifier,
        watch: Arc<KeyWatch>,
        metrics: Metrics,
        stop: tokio::sync::watch::Receiver<bool>,
        watch_limits: WatchLimits,
        quota: Arc<super::quota::CallerQuota>,
    ) -> EncryptionKeys {
        let fleet = super::fleet::Fleet::new(cache.clone(), verifier.clone(), watch.clone());
        EncryptionKeys {
            cache,
            verifier,
            watch,
            metrics,
            stop,
            watch_limits,
            quota,
            fleet,
        }
    }

    /// The managed scope a request names, when the caller may act there.
    fn scope(
        &self,
        caller: Option<&rpc::CallerContext>,
        requested: (&str, &str),
        stored_key: bool,
    ) -> Result<Scope, ServiceError> {
        super::managed_scope(self.verifier.scopes(), caller, requested, stored_key)
    }

    /// Tells the audit line of `request` the account and Region it names (the sidecar's
    /// own for an empty one), when well formed: a malformed one is refused, and not logged.
    fn audit_scope<T>(&self, request: &Request<T>, account_id: &str, region: &str) {
        let Some(subject) = request.extensions().get::<crate::audit::AuditSubject>() else {
            return;
        };
        let (account_id, region) = self.verifier.scopes().requested(account_id, region);
        if crate::domain::is_account_id(account_id) && crate::domain::is_region_name(region) {
            subject.record_scope(account_id, region);
        }
    }

    /// The managed target a request names, when the caller may act in its scope.
    fn scoped(
        &self,
        caller: Option<&rpc::CallerContext>,
        (target, scope): validation::Requested<'_>,
    ) -> Result<ScopedTarget, ServiceError> {
        Ok(ScopedTarget::new(self.scope(caller, scope, false)?, target))
    }

    /// Counts an uncached backend call against the caller's quota.
    fn charge(&self, caller: Option<&rpc::CallerContext>) -> Result<(), ServiceError> {
        let key = caller.map_or("unknown", |c| c.quota_key.as_str());
        self.quota
            .take(key)
            .map_err(|retry_after| ServiceError::QuotaExceeded { retry_after })
    }

    /// A read: the cache's fresh answer, else a load. Only the load opens the RPC's span
    /// (the outer layer leaves the cached read without one): a hit logs nothing. What the
    /// load answers carries the id its span was recorded under.
    async fn get(
        &self,
        request: Request<proto::GetEncryptionKeyRequest>,
    ) -> Result<(ScopedTarget, Cached, Option<HeaderValue>), Status> {
        let r = request.get_ref();
        let requested =
            validation::target_request(r.scan_type, r.resource_type, &r.account_id, &r.region)
                .map_err(ServiceError::from)?;
        let target = self.scoped(request.extensions().get(), requested)?;
        if let Some(hit) = self.cache.get_fresh(target) {
            return Ok((target, hit, None));
        }
        let id = rpc::request_id_or_new(request.metadata().as_ref());
        let loaded = self
            .cache
            .load(target)
            .instrument(rpc::rpc_span(
                id.to_str().unwrap_or_default(),
                rpc::CACHED_READ.path,
            ))
            .await;
        match loaded {
            Ok(loaded) => Ok((target, loaded, Some(id))),
            Err(e) => {
                let mut status = Status::from(ServiceError::from(e));
                rpc::answer_request_id(status.metadata_mut().as_mut(), id);
                Err(status)
            }
        }
    }

    async fn update(
        &self,
        caller: Option<&rpc::CallerContext>,
        request: proto::UpdateEncryptionKeyRequest,
    ) -> Result<proto::UpdateEncryptionKeyResponse, ServiceError> {
        let (key, requested) = validation::update_request(&request)?;
        let target = self.scoped(caller, requested)?;
        let settings = self.verifier.settings_in(target.scope);
        let report = self
            .verifier
            .verify_key(&key, &Subject::configured(&settings, target.target))
            .await?;
        self.metrics
            .count_verification(&report.profile, report.passed);
        if !report.passed {
            tracing::info!(%target, key = %key, "update refused: the key failed verification");
            return Err(ServiceError::VerificationFailed {
                key,
                report: Box::new(report),
            });
        }
        let applied = !request.validate_only;
        if applied {
            self.cache.update(target, &key, report.clone()).await?;
            tracing::info!(%target, key = %key, "customer managed key put in use");
            self.watch.updated(target, &key, &report);
        }
        Ok(proto::UpdateEncryptionKeyResponse {
            applied,
            report: Some(report.into()),
        })
    }

    async fn reset(
        &self,
        caller: Option<&rpc::CallerContext>,
        request: proto::ResetEncryptionKeyRequest,
    ) -> Result<proto::ResetEncryptionKeyResponse, ServiceError> {
        let target = self.scoped(
            caller,
            validation::target_request(
                request.scan_type,
                request.resource_type,
                &request.account_id,
                &request.region,
            )?,
        )?;
        self.cache.reset(target).await?;
        tracing::info!(%target, "reset to the AWS owned key");
        self.watch.reset(target);
        Ok(proto::ResetEncryptionKeyResponse {})
    }

    async fn verify_policy(
        &self,
        caller: Option<&rpc::CallerContext>,
        request: proto::VerifyKeyPolicyRequest,
    ) -> Result<proto::VerifyKeyPolicyResponse, ServiceError> {
        let checked = validation::verify_request(&request, |target| {
            self.verifier.settings().profile_for(target)
        })?;
        let stored = matches!(checked.key, validation::KeyToVerify::Stored(_));
        let settings = self
            .verifier
            .settings_in(self.scope(caller, checked.scope, stored)?);
        let principal_arn = checked.principal_arn.unwrap_or(&settings.principal_arn);
        let report = match checked.key {
            validation::KeyToVerify::Stored(key) => {
                let identity_policies = if request.identity_policies.is_empty() {
                    &settings.identity_policies
                } else {
                    &request.identity_policies
                };
                let subject = Subject {
                    profile: checked.profile,
                    principal_arn,
                    identity_policies,
                    settings: &settings,
                };
                self.verifier.verify_key(&key, &subject).await?
            }
            validation::KeyToVerify::Inline {
                metadata,
                key_policy,
            } => {
                let subject = Subject {
                    profile: checked.profile,
                    principal_arn,
                    identity_policies: &request.identity_policies,
                    settings: &settings,
                };
                self.verifier
                    .verify_inline(&subject, metadata.as_deref(), key_policy)
            }
        };
        self.metrics
            .count_verification(&report.profile, report.passed);
        Ok(proto::VerifyKeyPolicyResponse {
            report: Some(report.into()),
        })
    }

    fn render_policy(
        &self,
        request: proto::RenderKeyPolicyRequest,
    ) -> Result<proto::RenderKeyPolicyResponse, ServiceError> {
        let profile = validation::profile_name(&request.profile)?;
        let or = |value: &'_ str, default: &'_ str| {
            if value.is_empty() {
                default.to_owned()
            } else {
                value.to_owned()
            }
        };
        let settings = self.verifier.settings();
        let region = or(&request.region, &settings.region);
        let account_id = or(&request.account_id, &settings.account_id);
        let principal_arn = or(&request.principal_arn, &settings.principal_arn);
        let existing = (!request.existing_policy_json.is_empty())
            .then_some(request.existing_policy_json.as_str());
        let policy_json = verify::render(profile, &region, &account_id, &principal_arn, existing)
            .map_err(|e| {
            let field = match e {
                RenderError::Region { .. } => "region",
                RenderError::Account { .. } => "account_id",
                RenderError::Principal { .. } => "principal_arn",
                RenderError::Existing(_) | RenderError::TooLarge(_) => "existing_policy_json",
            };
            ServiceError::InvalidArgument(vec![validation::FieldViolation::new(
                field,
                e.to_string(),
            )])
        })?;
        let document_kind = match profile.document_kind() {
            verify::policy::DocumentKind::KeyPolicy => proto::PolicyDocumentKind::KeyPolicy,
            verify::policy::DocumentKind::IdentityPolicy => {
                proto::PolicyDocumentKind::IdentityPolicy
            }
        };
        Ok(proto::RenderKeyPolicyResponse {
            policy_json,
            document_kind: document_kind.into(),
        })
    }
}

/// A key event as the Watch stream sends it to `audience`: the one place events become
/// messages, so no event reaches a caller with more than it may see.
fn event_message(event: KeyEvent, audience: ReportAudience) -> proto::WatchEncryptionKeyResponse {
    use proto::KeyEventType as T;
    let kind = match event.kind {
        KeyEventKind::Current => T::Current,
        KeyEventKind::Updated => T::Updated,
        KeyEventKind::Reset => T::Reset,
        KeyEventKind::DriftDetected => T::DriftDetected,
        KeyEventKind::DriftResolved => T::DriftResolved,
        KeyEventKind::DesiredStateDrift => T::DesiredStateDrift,
        KeyEventKind::DesiredStateRestored => T::DesiredStateRestored,
    };
    proto::WatchEncryptionKeyResponse {
        r#type: kind.into(),
        scan_type: event.target.target.scan_type().to_proto().into(),
        resource_type: event.target.target.resource_type().to_proto().into(),
        account_id: event.target.scope.account_id().to_owned(),
        region: event.target.scope.region().to_owned(),
        kms_key_id: event.key_arn.unwrap_or_default(),
        report: event.report.map(|report| audience.report(report)),
        time: Some(prost_types::Timestamp {
            seconds: event.time.unix_timestamp(),
            nanos: i32::try_from(event.time.nanosecond()).unwrap_or(0),
        }),
    }
}

type WatchStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<proto::WatchEncryptionKeyResponse, Status>> + Send>>;

impl EncryptionKeys {
    /// The reconciler of `config`'s desired state, when it names one.
    pub fn reconciler(
        &self,
        config: &crate::config::FleetConfig,
        audit: crate::audit::AuditLog,
        metrics: Metrics,
    ) -> Option<super::Reconciler> {
        self.fleet.reconciler(config, audit, metrics)
    }
}

#[tonic::async_trait]
impl EncryptionKeyService for EncryptionKeys {
    type WatchEncryptionKeyStream = WatchStream;
    type ListEncryptionKeysStream = super::inventory::InventoryStream;
    type PlanFleetStream = super::fleet::FleetStream<proto::PlanFleetResponse>;
    type ApplyFleetStream = super::fleet::FleetStream<proto::ApplyFleetResponse>;

    async fn plan_fleet(
        &self,
        request: Request<proto::PlanFleetRequest>,
    ) -> Result<Response<Self::PlanFleetStream>, Status> {
        let caller = request.extensions().get::<rpc::CallerContext>().cloned();
        Ok(Response::new(self.fleet.plan(
            caller.as_ref(),
            &request.get_ref().desired_state,
            false,
            None,
            None,
        )?))
    }

    async fn apply_fleet(
        &self,
        request: Request<proto::ApplyFleetRequest>,
    ) -> Result<Response<Self::ApplyFleetStream>, Status> {
        let caller = request.extensions().get::<rpc::CallerContext>().cloned();
        let audit = request
            .extensions()
            .get::<crate::audit::AuditSubject>()
            .cloned();
        let request = request.get_ref();
        Ok(Response::new(
            self.fleet.plan(
                caller.as_ref(),
                &request.desired_state,
                true,
                audit,
                request
                    .confirmed
                    .as_ref()
                    .map(super::fleet::ConfirmedChanges::of),
            )?,
        ))
    }

    async fn list_encryption_keys(
        &self,
        request: Request<proto::ListEncryptionKeysRequest>,
    ) -> Result<Response<Self::ListEncryptionKeysStream>, Status> {
        let caller = request.extensions().get::<rpc::CallerContext>().cloned();
        Ok(Response::new(
            self.fleet.inventory(caller.as_ref(), request.get_ref())?,
        ))
    }

    async fn watch_encryption_key(
        &self,
        request: Request<proto::WatchEncryptionKeyRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = request.extensions().get::<rpc::CallerContext>().cloned();
        let r = request.into_inner();
        let requested =
            validation::target_request(r.scan_type, r.resource_type, &r.account_id, &r.region)
                .map_err(ServiceError::from)?;
        let target = self.scoped(caller.as_ref(), requested)?;
        let audience = ReportAudience::of(caller.as_ref(), target.scope);
        let limits = &self.watch_limits;
        let slot = limits
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServiceError::TooManyWatches(limits.max_streams))?;
        // Subscribe first, so no change between the snapshot and the stream is lost.
        let changes =
            BroadcastStream::new(self.watch.subscribe()).filter_map(move |event| match event {
                Ok(event) if event.target == target => Some(Ok(event_message(event, audience))),
                Ok(_) => None,
                // A slow reader missed events: say so rather than pretend it did not.
                Err(_) => Some(Err(ServiceError::WatchFellBehind.into())),
            });
        let current = self
            .watch
            .current(target)
            .await
            .map_err(ServiceError::from)?;
        let first = tokio_stream::once(Ok(event_message(current, audience)));
        // The stream holds its slot until it is dropped, and ends with WATCH_EXPIRED at
        // its maximum duration.
        let stream = crate::drain::Expiring::new(
            first.chain(changes),
            limits.max_duration,
            Err(ServiceError::WatchExpired(limits.max_duration).into()),
            slot,
        );
        let stream = crate::drain::UntilStopped::new(stream, self.stop.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_encryption_key(
        &self,
        request: Request<proto::GetEncryptionKeyRequest>,
    ) -> Result<Response<proto::GetEncryptionKeyResponse>, Status> {
        let (target, mut cached, request_id) = self.get(request).await?;
        match cached.key_arn.take() {
            Some(kms_key_id) => {
                // Room for what the answer carries (the two cache headers, the content type
                // and the request id) from the start: growing the map rehashes it.
                let mut response = Response::from_parts(
                    tonic::metadata::MetadataMap::with_capacity(4),
                    proto::GetEncryptionKeyResponse { kms_key_id },
                    tonic::Extensions::default(),
                );
                add_cache_metadata(response.metadata_mut(), &cached, request_id);
                Ok(response)
            }
            None => {
                let mut status = Status::from(ServiceError::AwsOwnedKey(target));
                add_cache_metadata(status.metadata_mut(), &cached, request_id);
                Err(status)
            }
        }
    }

    async fn update_encryption_key(
        &self,
        request: Request<proto::UpdateEncryptionKeyRequest>,
    ) -> Result<Response<proto::UpdateEncryptionKeyResponse>, Status> {
        let r = request.get_ref();
        super::audit_subject(
            &request,
            &r.kms_key_id,
            Some(r.scan_type),
            Some(r.resource_type),
        );
        self.audit_scope(&request, &r.account_id, &r.region);
        let caller = request.extensions().get::<rpc::CallerContext>().cloned();
        Ok(Response::new(
            self.update(caller.as_ref(), request.into_inner()).await?,
        ))
    }

    async fn reset_encryption_key(
        &self,
        request: Request<proto::ResetEncryptionKeyRequest>,
    ) -> Result<Response<proto::ResetEncryptionKeyResponse>, Status> {
        let r = request.get_ref();
        super::audit_subject(&request, "", Some(r.scan_type), Some(r.resource_type));
        self.audit_scope(&request, &r.account_id, &r.region);
        let caller = request.extensions().get::<rpc::CallerContext>().cloned();
        Ok(Response::new(
            self.reset(caller.as_ref(), request.into_inner()).await?,
        ))
    }

    async fn verify_key_policy(
        &self,
        request: Request<proto::VerifyKeyPolicyRequest>,
    ) -> Result<Response<proto::VerifyKeyPolicyResponse>, Status> {
        let caller = request.extensions().get::<rpc::CallerContext>().cloned();
        // A stored key's report reveals its state and who may decrypt with it, and is read
        // from the backend uncached.
        if let Some(proto::verify_key_policy_request::Key::KmsKeyId(key)) = &request.get_ref().key {
            super::audit_subject(&request, key, None, None);
            let r = request.get_ref();
            self.audit_scope(&request, &r.account_id, &r.region);
            rpc::CallerContext::may_use_stored_key(caller.as_ref())
                .map_err(ServiceError::RoleRequired)?;
            self.charge(caller.as_ref())?;
        }
        Ok(Response::new(
            self.verify_policy(caller.as_ref(), request.into_inner())
                .await?,
        ))
    }

    async fn render_key_policy(
        &self,
        request: Request<proto::RenderKeyPolicyRequest>,
    ) -> Result<Response<proto::RenderKeyPolicyResponse>, Status> {
        Ok(Response::new(self.render_policy(request.into_inner())?))
    }

    async fn batch_get_code_snippet(
        &self,
        request: Request<proto::BatchGetCodeSnippetRequest>,
    ) -> Result<Response<proto::BatchGetCodeSnippetResponse>, Status> {
        let caller = request.extensions().get::<rpc::CallerContext>();
        let findings = validation::finding_arns(&request.get_ref().finding_arns)
            .map_err(ServiceError::from)?;
        let (findings, denied) = super::code_snippets::split_by_account(
            findings,
            caller.and_then(|c| c.acting_account.as_deref()),
        );
        // Each finding is read in its ARN's account and Region.
        for finding in &findings {
            self.scope(caller, (finding.account_id(), finding.region()), false)
                .map_err(|error| match error {
                    ServiceError::ScopeNotManaged {
                        account_id, region, ..
                    } => ServiceError::ScopeNotManaged {
                        field: "finding_arns",
                        account_id,
                        region,
                    },
                    other => other,
                })?;
        }
        let mut answer = proto::BatchGetCodeSnippetResponse::default();
        if !findings.is_empty() {
            // Snippets are never cached: every call that reads one reaches the backend.
            self.charge(caller)?;
            answer = super::code_snippets::batch_get(&self.cache, &findings).await?;
        }
        answer.errors.extend(denied);
        Ok(Response::new(answer))
    }
}

impl From<Report> for proto::VerificationReport {
    fn from(report: Report) -> proto::VerificationReport {
        proto::VerificationReport {
            passed: report.passed,
            profile: report.profile,
            findings: report.findings.into_iter().map(Into::into).collect(),
            access: report.access.map(Into::into),
        }
    }
}

impl From<verify::Location> for proto::Location {
    fn from(location: verify::Location) -> proto::Location {
        proto::Location {
            path: location.path,
            line: location.line,
            column: location.column,
        }
    }
}

impl From<AccessSummary> for proto::AccessSummary {
    fn from(summary: AccessSummary) -> proto::AccessSummary {
        proto::AccessSummary {
            entries: summary.entries.into_iter().map(Into::into).collect(),
            incomplete: summary
                .incomplete
                .into_iter()
                .map(|gap| proto::AnalysisGap {
                    sid: gap.sid,
                    location: Some(gap.location.into()),
                    reason: gap.reason,
                })
                .collect(),
        }
    }
}

impl From<Grantee> for proto::Grantee {
    fn from(grantee: Grantee) -> proto::Grantee {
        use proto::GranteeKind as K;
        let description = grantee.describe();
        let (kind, id) = match grantee {
            Grantee::Principal { arn } => (K::Principal, arn),
            Grantee::Account { account_id } => (K::Account, account_id),
            Grantee::Service { service } => (K::Service, service),
            Grantee::Anyone => (K::Anyone, String::new()),
        };
        proto::Grantee {
            kind: kind.into(),
            id,
            description,
        }
    }
}

impl From<AccessEntry> for proto::AccessEntry {
    fn from(entry: AccessEntry) -> proto::AccessEntry {
        proto::AccessEntry {
            grantee: Some(entry.grantee.into()),
            actions: entry.actions,
            reads_code: entry.reads_code,
            breaks_scanning: entry.breaks_scanning,
            conditions: entry.conditions,
            except_denied_by: entry.except_denied_by,
            sid: entry.sid,
            location: Some(entry.location.into()),
            external: entry.external,
            public: entry.public,
            witness: Some(entry.witness.into()),
            grant_id: entry.grant_id,
        }
    }
}

impl From<Witness> for proto::Witness {
    fn from(witness: Witness) -> proto::Witness {
        let description = witness.describe();
        proto::Witness {
            caller: witness.caller,
            account: witness.account,
            action: witness.action,
            resource: witness.resource,
            context: witness
                .context
                .into_iter()
                .map(|(key, values)| proto::ContextValue { key, values })
                .collect(),
            description,
        }
    }
}

impl From<Finding> for proto::Finding {
    fn from(finding: Finding) -> proto::Finding {
        use verify::Severity as S;
        let severity = match finding.severity {
            S::Error => proto::Severity::Error,
            S::SecurityWarning => proto::Severity::SecurityWarning,
            S::Warning => proto::Severity::Warning,
            S::Suggestion => proto::Severity::Suggestion,
        };
        proto::Finding {
            code: finding.code.as_str().to_owned(),
            severity: severity.into(),
            message: finding.message,
            sid: finding.sid,
            location: finding.location.map(Into::into),
            fix: finding.fix,
            requests: finding.requests,
        }
    }
}
