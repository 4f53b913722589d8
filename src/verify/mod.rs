//! Verification of a KMS key (and, with the policy verification work, its policies) before
//! it is put in use. A pure library: no I/O. The service, the CLI and the tests call it.

mod key;

pub use key::{KeyMetadata, MultiRegionConfiguration, MultiRegionKey, verify_key_metadata};

use serde::Serialize;

/// How much a finding matters; a report passes when it has no [`Severity::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Error,
    SecurityWarning,
    Warning,
    Suggestion,
}

/// Where in a policy document a finding points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub path: String,
    pub line: u32,
    pub column: u32,
}

/// One thing the verifier found. `code` is a stable UPPER_SNAKE string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn error(code: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            code,
            severity: Severity::Error,
            message: message.into(),
            sid: None,
            location: None,
            fix: None,
        }
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub passed: bool,
    pub profile: String,
    pub findings: Vec<Finding>,
}

impl Report {
    /// A report over `findings`; `passed` is derived, never set by hand.
    pub fn new(profile: impl Into<String>, findings: Vec<Finding>) -> Report {
        Report {
            passed: !findings.iter().any(|f| f.severity == Severity::Error),
            profile: profile.into(),
            findings,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }
}

/// The name reports carry while only the key's metadata is verified.
pub const KEY_METADATA_PROFILE: &str = "key-metadata";
