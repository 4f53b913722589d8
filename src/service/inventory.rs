//! The inventory of the organization's keys (`ListEncryptionKeys`): for every managed scope
//! the caller may read and each target, what the cache holds (loaded when it holds nothing),
//! streamed in batches so thousands of scopes never make one giant message.

use std::{pin::Pin, sync::Arc};

use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use super::{ServiceError, audience::ReportAudience, fleet::Fleet, validation};
use crate::{
    backend::BackendError,
    cache::{KeyCache, KeyInUse},
    domain::{Scope, ScopedTarget, Target},
    proto, rpc,
};

/// Scopes per streamed message: a message stays small (a report is a few KiB) whatever the
/// number of scopes.
const SCOPES_PER_MESSAGE: usize = 50;

/// Targets read from the backend at once when the cache holds nothing for them: the
/// inventory of a cold sidecar is a bounded trickle of calls, not a burst.
const READS_AT_ONCE: usize = 16;

pub(super) type InventoryStream =
    Pin<Box<dyn Stream<Item = Result<proto::ListEncryptionKeysResponse, Status>> + Send>>;

impl Fleet {
    /// The inventory for `caller`: the managed scopes its rules let it read, as filtered by
    /// the request, each with what the caller may see of its reports.
    pub(super) fn inventory(
        &self,
        caller: Option<&rpc::CallerContext>,
        request: &proto::ListEncryptionKeysRequest,
    ) -> Result<InventoryStream, ServiceError> {
        validation::inventory_filters(&request.account_ids, &request.regions)?;
        let named =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        let scoped_caller = caller.filter(|c| c.scoped.is_some());
        let scopes: Vec<(Scope, ReportAudience)> = self
            .verifier()
            .scopes()
            .all()
            .into_iter()
            .map(|settings| settings.scope)
            .filter(|scope| {
                named(&request.account_ids, scope.account_id())
                    && named(&request.regions, scope.region())
                    // A caller limited to some scopes learns nothing of the others.
                    && scoped_caller.is_none_or(|c| {
                        c.may_act_in(scope.account_id(), scope.region(), false).is_ok()
                    })
            })
            .map(|scope| (scope, ReportAudience::of(caller, scope)))
            .collect();
        let (sender, receiver) = mpsc::channel(2);
        tokio::spawn(send_inventory(
            self.cache().clone(),
            self.standings().clone(),
            scopes,
            sender,
        ));
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

/// Sends the inventory of `scopes`, batch by batch, until done or the caller goes away.
async fn send_inventory(
    cache: KeyCache,
    standings: Arc<super::fleet::Standings>,
    scopes: Vec<(Scope, ReportAudience)>,
    sender: mpsc::Sender<Result<proto::ListEncryptionKeysResponse, Status>>,
) {
    let total = u32::try_from(scopes.len()).unwrap_or(u32::MAX);
    let reads = Arc::new(tokio::sync::Semaphore::new(READS_AT_ONCE));
    let mut done: u32 = 0;
    // An empty inventory is still one (empty) message: the caller sees the total.
    let batches: Vec<&[(Scope, ReportAudience)]> = if scopes.is_empty() {
        vec![&[]]
    } else {
        scopes.chunks(SCOPES_PER_MESSAGE).collect()
    };
    for batch in batches {
        let mut reading = JoinSet::new();
        let mut tasks = std::collections::HashMap::new();
        let targets = batch.iter().flat_map(|&(scope, audience)| {
            Target::all().map(move |t| (ScopedTarget::new(scope, t), audience))
        });
        for (at, (target, audience)) in targets.enumerate() {
            let (cache, reads) = (cache.clone(), reads.clone());
            let standing = standings.of(target);
            let task = reading.spawn(async move {
                let _turn = reads.acquire_owned().await;
                let mut entry = entry(target, cache.key_in_use(target).await, audience);
                if let Some(standing) = standing {
                    entry.set_desired_state(standing.to_proto());
                }
                (at, entry)
            });
            tasks.insert(task.id(), (at, target, audience));
        }
        let mut entries: Vec<(usize, proto::KeyInventoryEntry)> = Vec::new();
        while let Some(read) = reading.join_next().await {
            match read {
                Ok(read) => entries.push(read),
                // A fault of the sidecar's own: the target is listed with an error.
                Err(error) => {
                    if let Some(&(at, target, audience)) = tasks.get(&error.id()) {
                        tracing::error!(%target, %error, "inventory: reading a target failed");
                        let failed = BackendError::internal("reading it failed");
                        entries.push((at, entry(target, Err(failed), audience)));
                    }
                }
            }
        }
        entries.sort_unstable_by_key(|(at, _)| *at);
        done = done.saturating_add(u32::try_from(batch.len()).unwrap_or(u32::MAX));
        let message = proto::ListEncryptionKeysResponse {
            entries: entries.into_iter().map(|(_, entry)| entry).collect(),
            scopes_done: done,
            scopes_total: total,
        };
        if sender.send(Ok(message)).await.is_err() {
            return;
        }
    }
}

/// One target's entry, as `audience` may see it.
fn entry(
    target: ScopedTarget,
    held: Result<KeyInUse, BackendError>,
    audience: ReportAudience,
) -> proto::KeyInventoryEntry {
    let mut entry = proto::KeyInventoryEntry {
        account_id: target.scope.account_id().to_owned(),
        region: target.scope.region().to_owned(),
        scan_type: target.target.scan_type().to_proto().into(),
        resource_type: target.target.resource_type().to_proto().into(),
        ..Default::default()
    };
    match held {
        Ok(held) => {
            entry.kms_key_id = held.key_arn.as_deref().unwrap_or_default().to_owned();
            entry.report = held
                .verdict
                .map(|report| audience.report((*report).clone()));
            entry.read_at = held.read_at.map(Into::into);
            entry.verified_at = held.verified_at.map(Into::into);
        }
        // The words the call itself would answer with: never AWS's text.
        Err(error) => entry.error = Status::from(ServiceError::from(error)).message().to_owned(),
    }
    entry
}
