//! The organization the local backend emulates in the organization and fleet suites.

use super::{Sidecar, write_whole};

/// The sidecar's own account (the local backend's default).
pub const OWN: &str = "111122223333";
pub const OTHER: &str = "222233334444";

/// The sidecar's own account in us-east-1 (its Region) and eu-west-1, and another account
/// in both.
pub const ORGANIZATION: &str = r#"
[[accounts]]
id = "222233334444"
regions = ["us-east-1", "eu-west-1"]

[[accounts]]
id = "111122223333"
regions = ["eu-west-1"]
"#;

/// A sidecar of [`ORGANIZATION`] with a rules file: the sidecar's own user admin everywhere,
/// then `rules` (`[[rule]]` tables); the directory holds the file.
pub fn with_rules(rules: &str) -> (Sidecar, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.toml");
    write_whole(
        &file,
        &format!(
            "[[rule]]\nrole = \"admin\"\nunix_uid = {}\n{rules}",
            rustix::process::getuid().as_raw()
        ),
        0o644,
    );
    let sidecar = Sidecar::start_with(&format!(
        "{ORGANIZATION}\n[authz]\nrules_file = {:?}\n",
        file.to_str().unwrap()
    ));
    (sidecar, dir)
}
