//! The audit log: one JSON line per mutation and per refusal, on the `inspector_keyd::audit`
//! tracing target and, when configured, appended to a file. Written even when the client
//! cancels. Never holds a token or key material. Refusals of callers that did not
//! authenticate are written at a bounded rate, the rest summed into one summary line a
//! second ([`crate::refusals`]).

use std::{
    fs::File,
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::refusals::{Refusals, Summary, Verdict};

/// The tracing target audit lines are logged on.
pub const AUDIT_TARGET: &str = "inspector_keyd::audit";

/// One audit record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: String,
    /// The identity the caller presented: the bearer token's (`token:sha256:<prefix>`) when
    /// it sent one, known or not; else its connection's (`unix:uid=…`, `spiffe://…`, …);
    /// `unknown` when there is neither.
    pub caller: String,
    /// The connection's identity, when it has one (with a token, who carried it).
    pub connection: Option<String>,
    /// The caller's role, when it has one.
    pub role: Option<String>,
    /// The gRPC method, `/package.Service/Method`.
    pub rpc: String,
    pub key_arn: Option<String>,
    pub scan_type: Option<String>,
    pub resource_type: Option<String>,
    /// The account and Region the call was about (the sidecar's own when it named none),
    /// when it was about a key setting.
    pub account_id: Option<String>,
    pub region: Option<String>,
    /// `allowed`, `denied` (authorization refused it, or the service found the caller's role
    /// short for what the call is about), or `cancelled` (the client went away).
    pub decision: &'static str,
    /// The gRPC status code name, such as `OK` or `PERMISSION_DENIED`.
    pub code: String,
    pub latency_ms: f64,
}

impl AuditRecord {
    /// A record of the call `rpc` by `caller` (over `connection`), now, as allowed: what
    /// the call and its answer tell is filled in as they come.
    pub fn new(
        request_id: &str,
        caller: String,
        connection: Option<String>,
        rpc: &str,
    ) -> AuditRecord {
        AuditRecord {
            time: now_rfc3339(),
            request_id: request_id.to_owned(),
            caller,
            connection,
            role: None,
            rpc: rpc.to_owned(),
            key_arn: None,
            scan_type: None,
            resource_type: None,
            account_id: None,
            region: None,
            decision: "allowed",
            code: String::new(),
            latency_ms: 0.0,
        }
    }
}

/// What a handler learned about the request that the audit line should say (the key and
/// target), left in the request's extensions by the authorization layer; and for a call that
/// makes several changes (ApplyFleet), a line per change as it is made.
#[derive(Debug, Clone, Default)]
pub struct AuditSubject(Arc<Mutex<Subject>>, Option<Arc<CallLine>>);

/// The call's own line as it began, and where lines go: a change's line starts from it.
#[derive(Debug)]
struct CallLine {
    log: AuditLog,
    record: AuditRecord,
}

/// One change a call made, as its own audit line says it.
#[derive(Debug, Clone, Copy)]
pub struct AuditedChange<'a> {
    pub key_arn: Option<&'a str>,
    pub scan_type: &'a str,
    pub resource_type: &'a str,
    pub account_id: &'a str,
    pub region: &'a str,
    /// The gRPC status code name the change would have answered alone (`OK`, …).
    pub code: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Subject {
    key_arn: Option<String>,
    scan_type: Option<String>,
    resource_type: Option<String>,
    scope: Option<(String, String)>,
}

impl AuditSubject {
    /// The subject of the call whose line is `record`, written to `log`.
    pub fn of_call(log: AuditLog, record: &AuditRecord) -> AuditSubject {
        AuditSubject(
            Arc::default(),
            Some(Arc::new(CallLine {
                log,
                record: record.clone(),
            })),
        )
    }

    /// Writes the line of one change the call made, now: the call's caller, role, method
    /// and request id, with the change's key, target, scope and outcome.
    pub fn write_change(&self, change: AuditedChange<'_>) {
        let Some(call) = &self.1 else {
            return;
        };
        let mut record = call.record.clone();
        record.time = now_rfc3339();
        record.key_arn = change.key_arn.map(str::to_owned);
        record.scan_type = Some(change.scan_type.to_owned());
        record.resource_type = Some(change.resource_type.to_owned());
        record.account_id = Some(change.account_id.to_owned());
        record.region = Some(change.region.to_owned());
        record.code = change.code.to_owned();
        call.log.write(&record);
    }

    pub fn record(
        &self,
        key_arn: Option<&str>,
        scan_type: Option<&str>,
        resource_type: Option<&str>,
    ) {
        if let Ok(mut subject) = self.0.lock() {
            if let Some(key) = key_arn {
                subject.key_arn = Some(key.to_owned());
            }
            if let Some(scan) = scan_type {
                subject.scan_type = Some(scan.to_owned());
            }
            if let Some(resource) = resource_type {
                subject.resource_type = Some(resource.to_owned());
            }
        }
    }

    /// The account and Region the call is about.
    pub fn record_scope(&self, account_id: &str, region: &str) {
        if let Ok(mut subject) = self.0.lock() {
            subject.scope = Some((account_id.to_owned(), region.to_owned()));
        }
    }

    /// Copies what was recorded into `record`.
    pub fn fill(&self, record: &mut AuditRecord) {
        if let Ok(subject) = self.0.lock() {
            record.key_arn.clone_from(&subject.key_arn);
            record.scan_type.clone_from(&subject.scan_type);
            record.resource_type.clone_from(&subject.resource_type);
            if let Some((account_id, region)) = &subject.scope {
                record.account_id = Some(account_id.clone());
                record.region = Some(region.clone());
            }
        }
    }
}

/// The audit line of refusals of unauthenticated callers that were not audited one by one.
#[derive(Debug, Serialize)]
struct RefusalSummaryRecord<'a> {
    /// RFC 3339, UTC: when the summary was written.
    time: String,
    /// When the first refusal it sums came.
    since: String,
    /// Tells this line from a call's: `refusals_not_audited_one_by_one`.
    summary: &'static str,
    decision: &'static str,
    refusals: u64,
    /// `{source, refusals}`, most first.
    from: Vec<SourceCount<'a>>,
    /// Refusals from sources beyond those in `from`.
    others: u64,
}

#[derive(Debug, Serialize)]
struct SourceCount<'a> {
    source: &'a str,
    refusals: u64,
}

/// Now, RFC 3339 in UTC, as audit lines give times.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Where audit lines go.
#[derive(Clone, Default)]
pub struct AuditLog {
    file: Option<Arc<Mutex<File>>>,
    /// Shared by every clone: the door and the gRPC layers draw on one rate.
    refusals: Arc<Refusals>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("file", &self.file.is_some())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Audit lines on the tracing target, and appended to `path` when given.
    pub fn open(path: Option<&Path>) -> std::io::Result<AuditLog> {
        let file = match path {
            Some(path) => Some(Arc::new(Mutex::new(crate::files::open_private_append(
                path,
            )?))),
            None => None,
        };
        Ok(AuditLog {
            file,
            refusals: Arc::default(),
        })
    }

    /// Whether the refusal of a caller that did not authenticate, from `source`, is to be
    /// logged and audited in full. When it is not, it is summed into the summary written
    /// [`crate::refusals::SUMMARY_INTERVAL`] after the first such refusal. The caller
    /// counts it in the metrics either way.
    pub fn admit_refusal(&self, source: &str) -> bool {
        match self.refusals.admit(source) {
            Verdict::Write => true,
            Verdict::Summed { opened } => {
                if opened {
                    self.schedule_summary();
                }
                false
            }
        }
    }

    /// Writes the pending summary one interval from now (one writer per summary: only
    /// the refusal that opened it schedules one).
    fn schedule_summary(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime (never while serving) it is written at once.
            self.write_summary();
            return;
        };
        let log = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(crate::refusals::SUMMARY_INTERVAL).await;
            log.write_summary();
        });
    }

    fn write_summary(&self) {
        let Some(summary) = self.refusals.take_summary() else {
            return;
        };
        let Summary {
            since,
            refusals,
            from,
            others,
        } = &summary;
        let since = since.map(rfc3339).unwrap_or_default();
        tracing::warn!(
            refusals,
            since = %since,
            "{} (each is counted in inspector_keyd_authz_decisions_total)",
            summary.message()
        );
        let record = RefusalSummaryRecord {
            time: now_rfc3339(),
            since,
            summary: "refusals_not_audited_one_by_one",
            decision: "denied",
            refusals: *refusals,
            from: from
                .iter()
                .map(|(source, refusals)| SourceCount {
                    source,
                    refusals: *refusals,
                })
                .collect(),
            others: *others,
        };
        if let Ok(line) = serde_json::to_string(&record) {
            self.write_line(&line);
        }
    }

    pub fn write(&self, record: &AuditRecord) {
        if let Ok(line) = serde_json::to_string(record) {
            self.write_line(&line);
        }
    }

    fn write_line(&self, line: &str) {
        tracing::info!(target: AUDIT_TARGET, "{line}");
        if let Some(file) = &self.file {
            let written = file
                .lock()
                .map_err(|_| std::io::Error::other("audit file lock poisoned"))
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot write the audit file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refusals_past_the_rate_are_audited_in_one_summary_a_second_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        let written = (0..100)
            .filter(|_| log.admit_refusal("tcp:127.0.0.1"))
            .count();
        assert!(written <= crate::refusals::BURST as usize + 1, "{written}");
        // Nothing yet: the summary comes one interval after its first refusal.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        tokio::time::sleep(crate::refusals::SUMMARY_INTERVAL * 2).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["summary"], "refusals_not_audited_one_by_one");
        assert_eq!(lines[0]["refusals"], 100 - written as u64);
        assert_eq!(lines[0]["from"][0]["source"], "tcp:127.0.0.1");
        assert_eq!(lines[0]["from"][0]["refusals"], 100 - written as u64);
    }
}
