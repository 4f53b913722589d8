//! A local emulation of the AWS KMS operations the sidecar depends on: keys with the
//! metadata DescribeKey shows, key states, multi-Region keys and key policies, kept in the
//! durable store. Semantics follow AWS KMS where it documents them.

use std::sync::Arc;

use time::OffsetDateTime;

use super::store::{KeyReads, Store, StoredAlias, StoredKey};
use crate::{
    backend::BackendError,
    domain::{is_account_id, is_region_name, partition_of},
    verify::{
        KeyMetadata, MultiRegionConfiguration, MultiRegionKey, json, policy::MAX_POLICY_BYTES,
        profile::account_delegation_statement,
    },
};

/// Key specs with the key usages KMS allows for each.
const KEY_SPECS: &[(&str, &[&str])] = &[
    ("SYMMETRIC_DEFAULT", &["ENCRYPT_DECRYPT"]),
    ("RSA_2048", &["ENCRYPT_DECRYPT", "SIGN_VERIFY"]),
    ("RSA_3072", &["ENCRYPT_DECRYPT", "SIGN_VERIFY"]),
    ("RSA_4096", &["ENCRYPT_DECRYPT", "SIGN_VERIFY"]),
    ("ECC_NIST_P256", &["SIGN_VERIFY", "KEY_AGREEMENT"]),
    ("ECC_NIST_P384", &["SIGN_VERIFY", "KEY_AGREEMENT"]),
    ("ECC_NIST_P521", &["SIGN_VERIFY", "KEY_AGREEMENT"]),
    ("ECC_SECG_P256K1", &["SIGN_VERIFY"]),
    ("ECC_NIST_EDWARDS25519", &["SIGN_VERIFY"]),
    ("HMAC_224", &["GENERATE_VERIFY_MAC"]),
    ("HMAC_256", &["GENERATE_VERIFY_MAC"]),
    ("HMAC_384", &["GENERATE_VERIFY_MAC"]),
    ("HMAC_512", &["GENERATE_VERIFY_MAC"]),
    ("SM2", &["ENCRYPT_DECRYPT", "SIGN_VERIFY", "KEY_AGREEMENT"]),
    ("ML_DSA_44", &["SIGN_VERIFY"]),
    ("ML_DSA_65", &["SIGN_VERIFY"]),
    ("ML_DSA_87", &["SIGN_VERIFY"]),
];

/// The key policy KMS gives a key created without one: the account may delegate
/// access through IAM policies.
pub fn default_key_policy(region: &str, account_id: &str) -> String {
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [account_delegation_statement(region, account_id)]
    });
    serde_json::to_string_pretty(&policy).unwrap_or_default()
}

/// What KMS itself checks of a policy document on CreateKey/PutKeyPolicy: a JSON object
/// within the size limit, in the allowed characters.
fn check_policy_document(policy: &str) -> Result<(), BackendError> {
    let invalid = |message: String| BackendError::InvalidRequest {
        field: "policy",
        message,
    };
    if policy.len() > MAX_POLICY_BYTES {
        return Err(invalid(format!(
            "the policy is {} bytes; key policies are limited to {MAX_POLICY_BYTES} bytes",
            policy.len()
        )));
    }
    if let Some(c) = policy
        .chars()
        .find(|&c| !(matches!(c, '\t' | '\n' | '\r') || (' '..='\u{ff}').contains(&c)))
    {
        return Err(invalid(format!(
            "the policy contains the character U+{:04X}; key policies allow printable ASCII, Latin-1, tab, LF and CR",
            c as u32
        )));
    }
    // The reading `policy verify` and the evaluator use, so a duplicate member is refused
    // here rather than stored as a policy that each reader understands differently.
    match json::parse_unique(policy) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(invalid("the policy is not a JSON object".into())),
        Err(e) => Err(invalid(format!("the policy is {e}"))),
    }
}

/// The prefix of every alias name.
const ALIAS_PREFIX: &str = "alias/";
/// The prefix KMS reserves for the aliases of AWS managed keys.
const RESERVED_ALIAS_PREFIX: &str = "alias/aws/";
/// The most characters an alias name has after `alias/` (256 in all, as in KMS).
const MAX_ALIAS_NAME_CHARS: usize = 250;

/// KMS's rules for an alias name, which `field` of the request holds: `alias/` and 1 to 250
/// of a-z, A-Z, 0-9, `/`, `_` and `-`, not beginning `alias/aws/`.
fn check_alias_name(field: &'static str, alias_name: &str) -> Result<(), BackendError> {
    let invalid = |message: String| BackendError::InvalidRequest { field, message };
    if alias_name.is_empty() {
        return Err(invalid("is required".into()));
    }
    let Some(name) = alias_name.strip_prefix(ALIAS_PREFIX) else {
        return Err(invalid(format!(
            "`{alias_name}` does not begin with `{ALIAS_PREFIX}`; alias names are `alias/<name>`"
        )));
    };
    if name.is_empty() || name.chars().count() > MAX_ALIAS_NAME_CHARS {
        return Err(invalid(format!(
            "the name after `{ALIAS_PREFIX}` has {} characters; it has 1 to {MAX_ALIAS_NAME_CHARS}",
            name.chars().count()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-')))
    {
        return Err(invalid(format!(
            "contains the character {c:?}; alias names allow only a-z, A-Z, 0-9, `/`, `_` and `-`"
        )));
    }
    if alias_name.starts_with(RESERVED_ALIAS_PREFIX) {
        return Err(invalid(format!(
            "`{alias_name}` begins with `{RESERVED_ALIAS_PREFIX}`, which is reserved for AWS managed keys"
        )));
    }
    Ok(())
}

/// What a request's key identifier names: a key or an alias, each by its ARN.
enum KeyRef {
    Key(String),
    Alias(String),
}

/// An alias as ListAliases shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasEntry {
    pub alias_name: String,
    pub alias_arn: String,
    /// The key id, not its ARN, as in KMS.
    pub target_key_id: String,
    /// Unix seconds.
    pub creation_date: i64,
    /// Unix seconds.
    pub last_updated_date: i64,
}

impl From<StoredAlias> for AliasEntry {
    fn from(a: StoredAlias) -> AliasEntry {
        AliasEntry {
            alias_name: a.alias_name,
            alias_arn: a.alias_arn,
            target_key_id: a.target_key_id,
            creation_date: a.creation_date,
            last_updated_date: a.last_updated_date,
        }
    }
}

/// The alias stored under `alias_arn`, unless its key is gone (deleted, not yet purged): a
/// deleted key's aliases are gone with it.
fn live_alias(reads: &impl KeyReads, alias_arn: &str) -> Result<Option<StoredAlias>, BackendError> {
    let Some(alias) = reads.alias(alias_arn)? else {
        return Ok(None);
    };
    let key_live = reads
        .key(&alias.target_key_arn)?
        .is_some_and(|k| !k.is_deleted(now()));
    Ok(key_live.then_some(alias))
}

/// What CreateKey needs; empty strings take the AWS defaults.
#[derive(Debug, Clone, Default)]
pub struct CreateKeyInput {
    pub key_spec: String,
    pub key_usage: String,
    pub multi_region: bool,
    pub policy: String,
    pub description: String,
    pub region: String,
    /// Empty: the sidecar's account.
    pub account_id: String,
}

/// The ARN of the key `key_id` of `account_id` in `region`.
/// The ARN of the alias `alias_name` in `account_id`'s `region`.
fn alias_arn_in(account_id: &str, region: &str, alias_name: &str) -> String {
    format!(
        "arn:{}:kms:{region}:{account_id}:{alias_name}",
        partition_of(region)
    )
}

fn key_arn_in(account_id: &str, region: &str, key_id: &str) -> String {
    format!(
        "arn:{}:kms:{region}:{account_id}:key/{key_id}",
        partition_of(region)
    )
}

/// The local KMS. Cheap to clone; every operation is one store transaction.
#[derive(Clone)]
pub struct LocalKms {
    pub(super) store: Arc<Store>,
    region: String,
    account_id: String,
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> Option<serde_json::Value> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map(serde_json::Value::String)
}

/// The key (or alias: `what`) `id`, which the request field `field` names, does not exist.
fn not_found(field: &str, what: &str, id: &str) -> BackendError {
    BackendError::NotFound {
        what: format!("{field}: {what} `{id}`"),
    }
}

fn invalid_state(key: &StoredKey, what: &str) -> BackendError {
    BackendError::InvalidState {
        message: format!("`{}` is {what}", key.arn),
    }
}

/// The metadata DescribeKey shows for `key`, with its multi-Region group read from `reads`.
fn metadata(reads: &impl KeyReads, key: &StoredKey) -> Result<KeyMetadata, BackendError> {
    let multi_region_configuration = if key.multi_region {
        let group: Vec<StoredKey> = reads
            .keys()?
            .into_iter()
            .filter(|k| k.key_id == key.key_id && !k.is_deleted(now()))
            .collect();
        let primary = group.iter().find(|k| k.replica_of.is_none());
        Some(MultiRegionConfiguration {
            multi_region_key_type: if key.replica_of.is_none() {
                "PRIMARY"
            } else {
                "REPLICA"
            }
            .into(),
            primary_key: primary.map(|p| MultiRegionKey {
                arn: p.arn.clone(),
                region: p.region.clone(),
            }),
            replica_keys: group
                .iter()
                .filter(|k| k.replica_of.is_some())
                .map(|k| MultiRegionKey {
                    arn: k.arn.clone(),
                    region: k.region.clone(),
                })
                .collect(),
        })
    } else {
        None
    };
    let (encryption_algorithms, signing_algorithms) = algorithms(&key.key_spec, &key.key_usage);
    Ok(KeyMetadata {
        aws_account_id: key.account_id.clone(),
        key_id: key.key_id.clone(),
        arn: key.arn.clone(),
        creation_date: rfc3339(key.creation_date),
        enabled: key.key_state == "Enabled",
        description: key.description.clone(),
        key_usage: key.key_usage.clone(),
        key_state: key.key_state.clone(),
        deletion_date: key.deletion_date.and_then(rfc3339),
        origin: "AWS_KMS".into(),
        key_manager: "CUSTOMER".into(),
        key_spec: key.key_spec.clone(),
        encryption_algorithms,
        signing_algorithms,
        multi_region: key.multi_region,
        multi_region_configuration,
    })
}

fn algorithms(spec: &str, usage: &str) -> (Vec<String>, Vec<String>) {
    let list = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match (spec, usage) {
        ("SYMMETRIC_DEFAULT", _) => (list(&["SYMMETRIC_DEFAULT"]), vec![]),
        (s, "ENCRYPT_DECRYPT") if s.starts_with("RSA_") => {
            (list(&["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]), vec![])
        }
        (s, "SIGN_VERIFY") if s.starts_with("RSA_") => (
            vec![],
            list(&["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PSS_SHA_256"]),
        ),
        ("ECC_NIST_P256", "SIGN_VERIFY") => (vec![], list(&["ECDSA_SHA_256"])),
        ("ECC_NIST_P384", "SIGN_VERIFY") => (vec![], list(&["ECDSA_SHA_384"])),
        ("ECC_NIST_P521", "SIGN_VERIFY") => (vec![], list(&["ECDSA_SHA_512"])),
        _ => (vec![], vec![]),
    }
}

impl LocalKms {
    pub fn new(store: Arc<Store>, region: String, account_id: String) -> LocalKms {
        LocalKms {
            store,
            region,
            account_id,
        }
    }

    /// The Region keys are created in unless a request names another.
    pub fn region(&self) -> &str {
        &self.region
    }

    fn key_arn(&self, region: &str, key_id: &str) -> String {
        key_arn_in(&self.account_id, region, key_id)
    }

    /// The ARN of the alias `alias_name` in the sidecar's Region.
    fn alias_arn(&self, alias_name: &str) -> String {
        alias_arn_in(&self.account_id, &self.region, alias_name)
    }

    /// `account_id` and `region`, each the sidecar's own when empty.
    fn scope_or_own(&self, account_id: String, region: String) -> (String, String) {
        (
            if account_id.is_empty() {
                self.account_id.clone()
            } else {
                account_id
            },
            if region.is_empty() {
                self.region.clone()
            } else {
                region
            },
        )
    }

    /// What the request field `field` names: a key ARN or alias ARN as given, a key id or
    /// alias name (`alias/<name>`) in the sidecar's Region.
    fn resolve(&self, field: &'static str, key_id: &str) -> Result<KeyRef, BackendError> {
        if key_id.is_empty() {
            return Err(BackendError::InvalidRequest {
                field,
                message: "is required".into(),
            });
        }
        Ok(if key_id.starts_with(ALIAS_PREFIX) {
            KeyRef::Alias(self.alias_arn(key_id))
        } else if key_id.starts_with("arn:") {
            // arn:partition:kms:region:account:resource
            let resource = key_id.splitn(6, ':').nth(5).unwrap_or_default();
            if resource.starts_with(ALIAS_PREFIX) {
                KeyRef::Alias(key_id.to_owned())
            } else {
                KeyRef::Key(key_id.to_owned())
            }
        } else {
            KeyRef::Key(self.key_arn(&self.region, key_id))
        })
    }

    /// The live (not deleted) key `key_id`, a key ARN or key id in the request field
    /// `field`, names. An alias is refused: as in KMS, only DescribeKey (of these
    /// operations) takes one.
    fn live_key_in(
        &self,
        reads: &impl KeyReads,
        field: &'static str,
        key_id: &str,
    ) -> Result<StoredKey, BackendError> {
        match self.resolve(field, key_id)? {
            KeyRef::Key(arn) => reads
                .key(&arn)?
                .filter(|k| !k.is_deleted(now()))
                .ok_or_else(|| not_found(field, "key", key_id)),
            KeyRef::Alias(_) => Err(BackendError::InvalidRequest {
                field,
                message: format!(
                    "`{key_id}` is an alias; this operation takes a key ARN or key id, as in AWS KMS (DescribeKey takes aliases)"
                ),
            }),
        }
    }

    /// [`Self::live_key_in`] for the request field `key_id`.
    fn live_key(&self, reads: &impl KeyReads, key_id: &str) -> Result<StoredKey, BackendError> {
        self.live_key_in(reads, "key_id", key_id)
    }

    /// The live key `key_id` names: a key ARN or key id, or an alias name or alias ARN.
    fn live_key_or_alias(
        &self,
        reads: &impl KeyReads,
        key_id: &str,
    ) -> Result<StoredKey, BackendError> {
        let arn = match self.resolve("key_id", key_id)? {
            KeyRef::Key(arn) => arn,
            KeyRef::Alias(alias_arn) => {
                live_alias(reads, &alias_arn)?
                    .ok_or_else(|| not_found("key_id", "alias", key_id))?
                    .target_key_arn
            }
        };
        reads
            .key(&arn)?
            .filter(|k| !k.is_deleted(now()))
            .ok_or_else(|| not_found("key_id", "key", key_id))
    }

    /// Runs a blocking store operation off the async runtime.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&LocalKms) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let kms = self.clone();
        tokio::task::spawn_blocking(move || op(&kms))
            .await
            .map_err(BackendError::internal)?
    }

    pub async fn create_key(&self, input: CreateKeyInput) -> Result<KeyMetadata, BackendError> {
        self.blocking(move |kms| kms.create_key_now(input)).await
    }

    fn create_key_now(&self, input: CreateKeyInput) -> Result<KeyMetadata, BackendError> {
        let key_spec = if input.key_spec.is_empty() {
            "SYMMETRIC_DEFAULT".to_owned()
        } else {
            input.key_spec
        };
        let usages = KEY_SPECS
            .iter()
            .find(|(spec, _)| *spec == key_spec)
            .map(|(_, usages)| *usages)
            .ok_or_else(|| BackendError::InvalidRequest {
                field: "key_spec",
                message: format!(
                    "`{key_spec}` is not a KMS key spec; one of {}",
                    KEY_SPECS
                        .iter()
                        .map(|(s, _)| *s)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let key_usage = match (input.key_usage.as_str(), key_spec.as_str()) {
            ("", "SYMMETRIC_DEFAULT") => "ENCRYPT_DECRYPT".to_owned(),
            ("", _) => {
                return Err(BackendError::InvalidRequest {
                    field: "key_usage",
                    message: format!(
                        "is required for key spec `{key_spec}`; one of {}",
                        usages.join(", ")
                    ),
                });
            }
            (usage, _) if usages.contains(&usage) => usage.to_owned(),
            (usage, _) => {
                return Err(BackendError::InvalidRequest {
                    field: "key_usage",
                    message: format!(
                        "`{usage}` is not valid for key spec `{key_spec}`; one of {}",
                        usages.join(", ")
                    ),
                });
            }
        };
        let region = if input.region.is_empty() {
            self.region.clone()
        } else {
            input.region
        };
        if !is_region_name(&region) {
            return Err(BackendError::InvalidRequest {
                field: "region",
                message: format!("`{region}` is not an AWS Region name (for example us-east-1)"),
            });
        }
        let account_id = if input.account_id.is_empty() {
            self.account_id.clone()
        } else {
            input.account_id
        };
        if !is_account_id(&account_id) {
            return Err(BackendError::InvalidRequest {
                field: "account_id",
                message: format!("`{account_id}` is not a 12-digit AWS account id"),
            });
        }
        let policy = if input.policy.is_empty() {
            default_key_policy(&region, &account_id)
        } else {
            check_policy_document(&input.policy)?;
            input.policy
        };
        let uuid = uuid::Uuid::new_v4();
        let key_id = if input.multi_region {
            format!("mrk-{}", uuid.simple())
        } else {
            uuid.hyphenated().to_string()
        };
        let key = StoredKey {
            arn: key_arn_in(&account_id, &region, &key_id),
            key_id,
            account_id,
            region,
            description: input.description,
            key_spec,
            key_usage,
            key_state: "Enabled".into(),
            creation_date: now(),
            deletion_date: None,
            multi_region: input.multi_region,
            replica_of: None,
            policy,
        };
        self.store.write(|tx| {
            tx.put_key(&key)?;
            if key.key_spec == "SYMMETRIC_DEFAULT" {
                tx.put_material(&key.key_id, super::crypto::random_key()?.as_slice())?;
            }
            metadata(tx, &key)
        })
    }

    /// Gives key material to symmetric keys made before keys had any (state directories of
    /// earlier versions). Writes (and syncs) only when one lacks it.
    pub(super) fn add_missing_key_material(&self) -> Result<(), BackendError> {
        fn missing(reads: &impl KeyReads) -> Result<Vec<String>, BackendError> {
            let mut ids = Vec::new();
            for key in reads.keys()? {
                if key.key_spec == "SYMMETRIC_DEFAULT" && reads.material(&key.key_id)?.is_none() {
                    ids.push(key.key_id);
                }
            }
            Ok(ids)
        }
        if self.store.read(missing)?.is_empty() {
            return Ok(());
        }
        self.store.write(|tx| {
            for key_id in missing(tx)? {
                tx.put_material(&key_id, super::crypto::random_key()?.as_slice())?;
            }
            Ok(())
        })
    }

    /// Forgets the keys whose deletion date is past `now`: their rows, grants, aliases and,
    /// once no Region's copy of a key is left (multi-Region replicas share their material),
    /// its material, so nothing can decrypt under it again. Returns how many key rows went;
    /// writes only when one does.
    pub fn purge_deleted_keys(&self, now: i64) -> Result<usize, BackendError> {
        fn deleted(reads: &impl KeyReads, now: i64) -> Result<Vec<StoredKey>, BackendError> {
            Ok(reads
                .keys()?
                .into_iter()
                .filter(|k| k.is_deleted(now))
                .collect())
        }
        if self.store.read(|tx| deleted(tx, now))?.is_empty() {
            return Ok(0);
        }
        self.store.write(|tx| {
            let gone = deleted(tx, now)?;
            for key in &gone {
                tx.delete_key(&key.arn)?;
                for grant in tx.grants_of(&key.arn)? {
                    tx.delete_grant(&grant.grant_id)?;
                }
            }
            for alias in tx.aliases()? {
                if gone.iter().any(|k| k.arn == alias.target_key_arn) {
                    tx.delete_alias(&alias.alias_arn)?;
                }
            }
            let left = tx.keys()?;
            for key in &gone {
                if !left.iter().any(|k| k.key_id == key.key_id) {
                    tx.delete_material(&key.key_id)?;
                }
            }
            Ok(gone.len())
        })
    }

    /// Purges deleted keys now and every `interval` (± 15 %) after, for as long as the
    /// server runs.
    pub async fn purge_deleted_keys_every(self, interval: std::time::Duration) {
        loop {
            match self.blocking(|kms| kms.purge_deleted_keys(now())).await {
                Ok(0) => {}
                Ok(keys) => tracing::info!(keys, "purged deleted keys and their material"),
                Err(error) => tracing::warn!(%error, "purging deleted keys failed"),
            }
            tokio::time::sleep(crate::jitter::around(interval)).await;
        }
    }

    /// ListGrants: the key's grants that are not retired.
    pub async fn list_grants(
        &self,
        key_id: String,
    ) -> Result<Vec<super::store::StoredGrant>, BackendError> {
        self.blocking(move |kms| {
            kms.store.read(|tx| {
                let key = kms.live_key(tx, &key_id)?;
                tx.grants_of(&key.arn)
            })
        })
        .await
    }

    /// DescribeKey, of a key named by key ARN, key id, alias name or alias ARN.
    pub async fn describe_key(&self, key_id: String) -> Result<KeyMetadata, BackendError> {
        self.blocking(move |kms| {
            kms.store.read(|tx| {
                let key = kms.live_key_or_alias(tx, &key_id)?;
                metadata(tx, &key)
            })
        })
        .await
    }

    /// (key id, key ARN) of every live key, in every Region.
    pub async fn list_keys(&self) -> Result<Vec<(String, String)>, BackendError> {
        self.blocking(|kms| {
            kms.store.read(|tx| {
                let mut keys: Vec<StoredKey> = tx
                    .keys()?
                    .into_iter()
                    .filter(|k| !k.is_deleted(now()))
                    .collect();
                keys.sort_by(|a, b| (a.creation_date, &a.arn).cmp(&(b.creation_date, &b.arn)));
                Ok(keys.into_iter().map(|k| (k.key_id, k.arn)).collect())
            })
        })
        .await
    }

    pub async fn get_key_policy(&self, key_id: String) -> Result<String, BackendError> {
        self.blocking(move |kms| kms.store.read(|tx| Ok(kms.live_key(tx, &key_id)?.policy)))
            .await
    }

    pub async fn put_key_policy(&self, key_id: String, policy: String) -> Result<(), BackendError> {
        check_policy_document(&policy)?;
        self.modify(key_id, move |key| {
            key.policy = policy;
            Ok(())
        })
        .await
        .map(drop)
    }

    pub async fn enable_key(&self, key_id: String) -> Result<(), BackendError> {
        self.modify(key_id, |key| match key.key_state.as_str() {
            "Enabled" | "Disabled" => {
                key.key_state = "Enabled".into();
                Ok(())
            }
            "PendingDeletion" => Err(invalid_state(key, "pending deletion")),
            other => Err(invalid_state(key, &format!("in state {other}"))),
        })
        .await
        .map(drop)
    }

    pub async fn disable_key(&self, key_id: String) -> Result<(), BackendError> {
        self.modify(key_id, |key| match key.key_state.as_str() {
            "Enabled" | "Disabled" => {
                key.key_state = "Disabled".into();
                Ok(())
            }
            "PendingDeletion" => Err(invalid_state(key, "pending deletion")),
            other => Err(invalid_state(key, &format!("in state {other}"))),
        })
        .await
        .map(drop)
    }

    pub async fn schedule_key_deletion(
        &self,
        key_id: String,
        pending_window_in_days: u32,
    ) -> Result<KeyMetadata, BackendError> {
        let days = if pending_window_in_days == 0 {
            30
        } else {
            pending_window_in_days
        };
        if !(7..=30).contains(&days) {
            return Err(BackendError::InvalidRequest {
                field: "pending_window_in_days",
                message: format!("{days} is outside 7 to 30 days"),
            });
        }
        self.modify(key_id, move |key| {
            if key.key_state == "PendingDeletion" {
                return Err(invalid_state(key, "pending deletion"));
            }
            key.key_state = "PendingDeletion".into();
            key.deletion_date = Some(now() + i64::from(days) * 86_400);
            Ok(())
        })
        .await
    }

    pub async fn cancel_key_deletion(&self, key_id: String) -> Result<KeyMetadata, BackendError> {
        self.modify(key_id, |key| {
            if key.key_state != "PendingDeletion" {
                return Err(invalid_state(key, "not pending deletion"));
            }
            // As in AWS KMS, a key whose deletion is cancelled stays disabled.
            key.key_state = "Disabled".into();
            key.deletion_date = None;
            Ok(())
        })
        .await
    }

    pub async fn replicate_key(
        &self,
        key_id: String,
        replica_region: String,
        policy: String,
    ) -> Result<KeyMetadata, BackendError> {
        self.blocking(move |kms| {
            if !is_region_name(&replica_region) {
                return Err(BackendError::InvalidRequest {
                    field: "replica_region",
                    message: format!("`{replica_region}` is not an AWS Region name (for example us-east-1)"),
                });
            }
            if !policy.is_empty() {
                check_policy_document(&policy)?;
            }
            kms.store.write(|tx| {
                let primary = kms.live_key(tx, &key_id)?;
                if !primary.multi_region || primary.replica_of.is_some() {
                    return Err(BackendError::InvalidRequest {
                        field: "key_id",
                        message: format!("`{}` is not a multi-Region primary key", primary.arn),
                    });
                }
                if partition_of(&replica_region) != partition_of(&primary.region) || replica_region == primary.region {
                    return Err(BackendError::InvalidRequest {
                        field: "replica_region",
                        message: format!(
                            "`{replica_region}` must be another Region of the primary key's partition"
                        ),
                    });
                }
                // Replicas stay in the primary's account.
                let arn = key_arn_in(&primary.account_id, &replica_region, &primary.key_id);
                if tx.key(&arn)?.is_some_and(|k| !k.is_deleted(now())) {
                    return Err(BackendError::InvalidRequest {
                        field: "replica_region",
                        message: format!("the key already has a replica in `{replica_region}`"),
                    });
                }
                let replica = StoredKey {
                    arn,
                    region: replica_region,
                    creation_date: now(),
                    key_state: "Enabled".into(),
                    deletion_date: None,
                    replica_of: Some(primary.arn.clone()),
                    policy: if policy.is_empty() { primary.policy.clone() } else { policy },
                    ..primary
                };
                tx.put_key(&replica)?;
                metadata(tx, &replica)
            })
        })
        .await
    }

    /// CreateAlias: `alias_name` names the key `target_key_id` (a key ARN or key id), which
    /// is not pending deletion, in the key's account and Region. An existing name there is
    /// refused.
    pub async fn create_alias(
        &self,
        alias_name: String,
        target_key_id: String,
    ) -> Result<(), BackendError> {
        check_alias_name("alias_name", &alias_name)?;
        self.blocking(move |kms| {
            kms.store.write(|tx| {
                let key = kms.live_key_in(tx, "target_key_id", &target_key_id)?;
                if key.key_state == "PendingDeletion" {
                    return Err(invalid_state(&key, "pending deletion"));
                }
                let alias_arn = alias_arn_in(&key.account_id, &key.region, &alias_name);
                if live_alias(tx, &alias_arn)?.is_some() {
                    return Err(BackendError::AlreadyExists {
                        what: format!("alias_name: alias `{alias_name}`"),
                    });
                }
                let created = now();
                tx.put_alias(&StoredAlias {
                    alias_name,
                    alias_arn,
                    target_key_arn: key.arn,
                    target_key_id: key.key_id,
                    creation_date: created,
                    last_updated_date: created,
                })
            })
        })
        .await
    }

    /// DeleteAlias: the alias `alias_name` of `account_id`'s `region` (each empty: the
    /// sidecar's own); its key is unchanged.
    pub async fn delete_alias(
        &self,
        alias_name: String,
        account_id: String,
        region: String,
    ) -> Result<(), BackendError> {
        check_alias_name("alias_name", &alias_name)?;
        self.blocking(move |kms| {
            kms.store.write(|tx| {
                let (account_id, region) = kms.scope_or_own(account_id, region);
                let alias_arn = alias_arn_in(&account_id, &region, &alias_name);
                if live_alias(tx, &alias_arn)?.is_none() {
                    return Err(not_found("alias_name", "alias", &alias_name));
                }
                tx.delete_alias(&alias_arn)
            })
        })
        .await
    }

    /// ListAliases: the aliases of `account_id`'s `region` whose key is not deleted, or
    /// (`key_id` not empty: a key ARN or key id) those of one key, in the order of their
    /// ARNs. An empty account or Region is the sidecar's own, or with `key_id`, the key's.
    pub async fn list_aliases(
        &self,
        key_id: String,
        account_id: String,
        region: String,
    ) -> Result<Vec<AliasEntry>, BackendError> {
        self.blocking(move |kms| {
            kms.store.read(|tx| {
                let key = if key_id.is_empty() {
                    None
                } else {
                    Some(kms.live_key(tx, &key_id)?)
                };
                let (account_id, region) = match &key {
                    Some(key) if account_id.is_empty() && region.is_empty() => {
                        (key.account_id.clone(), key.region.clone())
                    }
                    _ => kms.scope_or_own(account_id, region),
                };
                let in_scope = alias_arn_in(&account_id, &region, ALIAS_PREFIX);
                let mut aliases = Vec::new();
                for alias in tx.aliases()? {
                    if !alias.alias_arn.starts_with(&in_scope)
                        || key
                            .as_ref()
                            .is_some_and(|key| key.arn != alias.target_key_arn)
                    {
                        continue;
                    }
                    if live_alias(tx, &alias.alias_arn)?.is_some() {
                        aliases.push(AliasEntry::from(alias));
                    }
                }
                Ok(aliases)
            })
        })
        .await
    }

    /// The key ARN the alias `alias_name` names in `account_id`'s `region`, when the alias
    /// exists and its key is not deleted.
    pub fn alias_target(
        &self,
        account_id: &str,
        region: &str,
        alias_name: &str,
    ) -> Result<Option<String>, BackendError> {
        check_alias_name("alias_name", alias_name)?;
        let alias_arn = alias_arn_in(account_id, region, alias_name);
        self.store
            .read(|tx| Ok(live_alias(tx, &alias_arn)?.map(|alias| alias.target_key_arn)))
    }

    /// Read-modify-write of one live key in a single transaction.
    async fn modify(
        &self,
        key_id: String,
        change: impl FnOnce(&mut StoredKey) -> Result<(), BackendError> + Send + 'static,
    ) -> Result<KeyMetadata, BackendError> {
        self.blocking(move |kms| {
            kms.store.write(|tx| {
                let mut key = kms.live_key(tx, &key_id)?;
                change(&mut key)?;
                tx.put_key(&key)?;
                metadata(tx, &key)
            })
        })
        .await
    }

    /// DescribeKey by exact ARN, for the backend trait.
    pub(super) fn describe_arn(&self, arn: &str) -> Result<KeyMetadata, BackendError> {
        self.store.read(|tx| {
            let key = self.live_key(tx, arn)?;
            metadata(tx, &key)
        })
    }

    /// GetKeyPolicy by exact ARN, for the backend trait.
    pub(super) fn policy_of_arn(&self, arn: &str) -> Result<String, BackendError> {
        self.store.read(|tx| Ok(self.live_key(tx, arn)?.policy))
    }
}

#[cfg(test)]
mod tests {
    use super::default_key_policy;

    #[test]
    fn the_default_key_policy_is_kms_default_statement_in_the_regions_partition() {
        assert_eq!(
            default_key_policy("cn-north-1", "111122223333"),
            r#"{
  "Version": "2012-10-17",
  "Id": "key-default-1",
  "Statement": [
    {
      "Sid": "Enable IAM User Permissions",
      "Effect": "Allow",
      "Principal": {
        "AWS": "arn:aws-cn:iam::111122223333:root"
      },
      "Action": "kms:*",
      "Resource": "*"
    }
  ]
}"#
        );
    }
}
