//! The organization the local backend emulates in the organization and fleet suites.

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
