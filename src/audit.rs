//! The audit log: one JSON line per mutation and per refusal, on the `inspector_keyd::audit`
//! tracing target and, when configured, appended to a file. Written even when the client
//! cancels. Never holds a token or key material.

use std::{
    fs::File,
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use serde::Serialize;

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
    /// `allowed`, `denied` (authorization refused it, or the service found the caller's role
    /// short for what the call is about), or `cancelled` (the client went away).
    pub decision: &'static str,
    /// The gRPC status code name, such as `OK` or `PERMISSION_DENIED`.
    pub code: String,
    pub latency_ms: f64,
}

/// What a handler learned about the request that the audit line should say (the key and
/// target), left in the request's extensions by the authorization layer.
#[derive(Debug, Clone, Default)]
pub struct AuditSubject(Arc<Mutex<Subject>>);

#[derive(Debug, Clone, Default)]
struct Subject {
    key_arn: Option<String>,
    scan_type: Option<String>,
    resource_type: Option<String>,
}

impl AuditSubject {
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

    /// Copies what was recorded into `record`.
    pub fn fill(&self, record: &mut AuditRecord) {
        if let Ok(subject) = self.0.lock() {
            record.key_arn.clone_from(&subject.key_arn);
            record.scan_type.clone_from(&subject.scan_type);
            record.resource_type.clone_from(&subject.resource_type);
        }
    }
}

/// Where audit lines go.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    file: Option<Arc<Mutex<File>>>,
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
        Ok(AuditLog { file })
    }

    pub fn write(&self, record: &AuditRecord) {
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
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
