//! Key rules: what Inspector needs of the KMS key itself, checked on the metadata that
//! `aws kms describe-key` prints.

use serde::{Deserialize, Serialize};

use super::{Finding, FindingCode};

/// `KeyMetadata` as KMS DescribeKey returns it (field names as AWS spells them). Fields
/// the verifier does not read are kept so the same type can describe a local key fully.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    #[serde(rename = "AWSAccountId", default)]
    pub aws_account_id: String,
    pub key_id: String,
    #[serde(default)]
    pub arn: String,
    /// RFC 3339. (Raw API JSON carries epoch seconds; the verifier does not read dates.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date: Option<serde_json::Value>,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub key_usage: String,
    #[serde(default)]
    pub key_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<serde_json::Value>,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub key_manager: String,
    #[serde(default)]
    pub key_spec: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encryption_algorithms: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_algorithms: Vec<String>,
    #[serde(default)]
    pub multi_region: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region_configuration: Option<MultiRegionConfiguration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct MultiRegionConfiguration {
    pub multi_region_key_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<MultiRegionKey>,
    #[serde(default)]
    pub replica_keys: Vec<MultiRegionKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct MultiRegionKey {
    pub arn: String,
    pub region: String,
}

impl KeyMetadata {
    /// The Region, read from the key ARN.
    pub fn region(&self) -> &str {
        self.arn.split(':').nth(3).unwrap_or_default()
    }
}

/// Reads the JSON `aws kms describe-key` prints (`{"KeyMetadata": {...}}`), or the bare
/// metadata object.
pub fn parse_describe_key(text: &str) -> Result<KeyMetadata, String> {
    #[derive(Deserialize)]
    struct Describe {
        #[serde(rename = "KeyMetadata")]
        key_metadata: KeyMetadata,
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let metadata = if value.get("KeyMetadata").is_some() {
        serde_json::from_value::<Describe>(value).map(|d| d.key_metadata)
    } else {
        serde_json::from_value::<KeyMetadata>(value)
    };
    metadata.map_err(|e| format!("not DescribeKey output: {e}"))
}

/// Checks the key rules: enabled, symmetric, for encryption, customer managed, and in the
/// sidecar's Region unless multi-Region. One ERROR finding per broken rule.
pub fn verify_key_metadata(key: &KeyMetadata, region: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    if key.key_state != "Enabled" {
        findings.push(
            Finding::new(
                FindingCode::KeyNotEnabled,
                format!(
                    "the key is in state `{}`; Inspector needs an Enabled key",
                    key.key_state
                ),
            )
            .with_fix(match key.key_state.as_str() {
                "PendingDeletion" => {
                    "cancel the key deletion (CancelKeyDeletion), then enable the key (EnableKey)"
                }
                _ => "enable the key (EnableKey) or choose an enabled key",
            }),
        );
    }
    if key.key_spec != "SYMMETRIC_DEFAULT" {
        findings.push(
            Finding::new(
                FindingCode::KeyNotSymmetric,
                format!("the key has key spec `{}`; Inspector needs a symmetric key (SYMMETRIC_DEFAULT)", key.key_spec),
            )
            .with_fix("create a key with key spec SYMMETRIC_DEFAULT"),
        );
    }
    if key.key_usage != "ENCRYPT_DECRYPT" {
        findings.push(
            Finding::new(
                FindingCode::KeyUsageNotEncryptDecrypt,
                format!(
                    "the key has key usage `{}`; Inspector needs ENCRYPT_DECRYPT",
                    key.key_usage
                ),
            )
            .with_fix("create a key with key usage ENCRYPT_DECRYPT"),
        );
    }
    if key.key_manager != "CUSTOMER" {
        findings.push(
            Finding::new(
                FindingCode::KeyNotCustomerManaged,
                format!(
                    "the key is managed by `{}`; Inspector needs a customer managed key",
                    key.key_manager
                ),
            )
            .with_fix("create a customer managed key"),
        );
    }
    if key.region() != region && !key.multi_region {
        findings.push(
            Finding::new(
                FindingCode::KeyRegionMismatch,
                format!(
                    "the key is in Region `{}` but Inspector runs in `{region}`; use a key in `{region}` or a multi-Region key",
                    key.region()
                ),
            )
            .with_fix(format!("create the key in {region}, or use a multi-Region key replicated to {region}")),
        );
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_key() -> KeyMetadata {
        KeyMetadata {
            aws_account_id: "111122223333".into(),
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            arn: "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                .into(),
            enabled: true,
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_state: "Enabled".into(),
            origin: "AWS_KMS".into(),
            key_manager: "CUSTOMER".into(),
            key_spec: "SYMMETRIC_DEFAULT".into(),
            ..KeyMetadata::default()
        }
    }

    fn codes(key: &KeyMetadata, region: &str) -> Vec<&'static str> {
        verify_key_metadata(key, region)
            .iter()
            .map(|f| f.code.as_str())
            .collect()
    }

    #[test]
    fn a_good_key_has_no_findings() {
        assert!(codes(&good_key(), "us-east-1").is_empty());
    }

    #[test]
    fn each_broken_rule_is_one_finding() {
        let mut key = good_key();
        key.key_state = "Disabled".into();
        key.enabled = false;
        assert_eq!(codes(&key, "us-east-1"), ["KEY_NOT_ENABLED"]);

        let mut key = good_key();
        key.key_spec = "RSA_2048".into();
        key.key_usage = "SIGN_VERIFY".into();
        assert_eq!(
            codes(&key, "us-east-1"),
            ["KEY_NOT_SYMMETRIC", "KEY_USAGE_NOT_ENCRYPT_DECRYPT"]
        );

        let mut key = good_key();
        key.key_manager = "AWS".into();
        assert_eq!(codes(&key, "us-east-1"), ["KEY_NOT_CUSTOMER_MANAGED"]);

        assert_eq!(codes(&good_key(), "eu-west-1"), ["KEY_REGION_MISMATCH"]);
        let mut key = good_key();
        key.multi_region = true;
        assert!(codes(&key, "eu-west-1").is_empty());
    }

    #[test]
    fn reads_describe_key_json() {
        let json = r#"{"KeyMetadata": {"AWSAccountId": "111122223333", "KeyId": "k",
            "Arn": "arn:aws:kms:us-east-1:111122223333:key/k", "CreationDate": 1687339200.5,
            "Enabled": true, "KeyUsage": "ENCRYPT_DECRYPT", "KeyState": "Enabled",
            "Origin": "AWS_KMS", "KeyManager": "CUSTOMER", "KeySpec": "SYMMETRIC_DEFAULT",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT", "MultiRegion": false}}"#;
        let parsed = parse_describe_key(json).unwrap();
        assert_eq!(parsed.region(), "us-east-1");
        assert!(verify_key_metadata(&parsed, "us-east-1").is_empty());
        assert!(
            parse_describe_key("[]")
                .unwrap_err()
                .contains("not DescribeKey output")
        );
        assert!(
            parse_describe_key("{")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
