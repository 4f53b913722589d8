//! The durable embedded store under the state directory (redb). Every write is one
//! transaction committed with fsync before it returns, so an acknowledged write survives
//! `kill -9` and an interrupted one leaves nothing half-applied.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::backend::BackendError;

/// Target (`CODE/AWS_LAMBDA_FUNCTION`) → customer managed key ARN. No row: AWS owned key.
const KEY_CONFIG: TableDefinition<&str, &str> = TableDefinition::new("key_config");
/// Key ARN → JSON of [`StoredKey`].
const KMS_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("kms_keys");

/// A local KMS key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub key_id: String,
    pub arn: String,
    pub account_id: String,
    pub region: String,
    pub description: String,
    pub key_spec: String,
    pub key_usage: String,
    pub key_state: String,
    /// Unix seconds.
    pub creation_date: i64,
    /// Unix seconds; set while PendingDeletion.
    pub deletion_date: Option<i64>,
    pub multi_region: bool,
    /// For a multi-Region replica: the primary key's ARN.
    pub replica_of: Option<String>,
    pub policy: String,
}

impl StoredKey {
    /// A key whose scheduled deletion date has passed no longer exists.
    pub fn is_deleted(&self, now: i64) -> bool {
        self.key_state == "PendingDeletion" && self.deletion_date.is_some_and(|d| d <= now)
    }
}

pub struct Store {
    db: Database,
}

fn storage(e: impl std::fmt::Display) -> BackendError {
    BackendError::internal(format!("local store: {e}"))
}

/// Key id → the key's 256-bit secret (the emulated HSM's key material). Never part of
/// [`StoredKey`], so it cannot leak through metadata, `Debug` or JSON.
const KEY_MATERIAL: TableDefinition<&str, &[u8]> = TableDefinition::new("kms_key_material");
/// Grant id → JSON of [`StoredGrant`]. Retiring a grant deletes its row.
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("kms_grants");
/// Target → JSON of [`StoredDataKey`]: the scanning service's current data key, encrypted.
const DATA_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("data_keys");
/// Finding ARN → JSON of [`StoredSnippet`]: a snippet, encrypted under a data key.
const SNIPPETS: TableDefinition<&str, &[u8]> = TableDefinition::new("code_snippets");

/// A KMS grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGrant {
    pub grant_id: String,
    pub key_arn: String,
    pub name: String,
    pub grantee_principal: String,
    pub retiring_principal: String,
    pub issuing_account: String,
    pub operations: Vec<String>,
    /// Unix seconds.
    pub creation_date: i64,
}

/// A data key as stored: only its ciphertext (the plaintext never reaches the disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDataKey {
    pub data_key_id: String,
    /// The customer managed key it is encrypted under; `None`: the AWS owned key.
    pub kms_key_arn: Option<String>,
    /// The grant the scanning service uses the key through, when its profile uses one.
    pub grant_id: Option<String>,
    /// The KMS encryption context it was generated with.
    pub encryption_context: std::collections::BTreeMap<String, String>,
    /// The KMS ciphertext blob.
    pub ciphertext: Vec<u8>,
}

/// A snippet as stored: sealed under a data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSnippet {
    /// The target's config key (`CODE/AWS_LAMBDA_FUNCTION`).
    pub target: String,
    pub data_key_id: String,
    /// Nonce, ciphertext and tag (AES-256-GCM).
    pub sealed: Vec<u8>,
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BackendError> {
    serde_json::from_slice(bytes).map_err(storage)
}

fn get_json<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<T>, BackendError> {
    table
        .get(id)
        .map_err(storage)?
        .map(|v| from_json(v.value()))
        .transpose()
}

fn all_json<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>, BackendError> {
    let mut values = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (_, v) = entry.map_err(storage)?;
        values.push(from_json(v.value())?);
    }
    Ok(values)
}

/// The tables of one transaction: `B` the byte-valued tables, `C` the config table, each
/// either writable (a [`WriteTx`]) or a read-only snapshot (a [`ReadTx`]).
pub struct Tables<B, C> {
    keys: B,
    config: C,
    material: B,
    grants: B,
    data_keys: B,
    snippets: B,
}

/// A write transaction in progress; see [`Store::write`].
pub type WriteTx<'t> = Tables<
    redb::Table<'t, &'static str, &'static [u8]>,
    redb::Table<'t, &'static str, &'static str>,
>;

/// A consistent snapshot for reading; see [`Store::read`].
pub type ReadTx = Tables<
    redb::ReadOnlyTable<&'static str, &'static [u8]>,
    redb::ReadOnlyTable<&'static str, &'static str>,
>;

/// Reads available both inside a write transaction and from a read transaction.
pub trait KeyReads {
    fn key(&self, arn: &str) -> Result<Option<StoredKey>, BackendError>;
    fn keys(&self) -> Result<Vec<StoredKey>, BackendError>;
    fn config(&self, target: &str) -> Result<Option<String>, BackendError>;
    fn material(&self, key_id: &str) -> Result<Option<Vec<u8>>, BackendError>;
    fn grant(&self, grant_id: &str) -> Result<Option<StoredGrant>, BackendError>;
    fn grants(&self) -> Result<Vec<StoredGrant>, BackendError>;
    fn data_key(&self, target: &str) -> Result<Option<StoredDataKey>, BackendError>;
    fn snippet(&self, finding_arn: &str) -> Result<Option<StoredSnippet>, BackendError>;
    /// Every stored snippet with its finding ARN.
    fn snippets(&self) -> Result<Vec<(String, StoredSnippet)>, BackendError>;
}

impl<B, C> KeyReads for Tables<B, C>
where
    B: ReadableTable<&'static str, &'static [u8]>,
    C: ReadableTable<&'static str, &'static str>,
{
    fn key(&self, arn: &str) -> Result<Option<StoredKey>, BackendError> {
        get_json(&self.keys, arn)
    }
    fn keys(&self) -> Result<Vec<StoredKey>, BackendError> {
        all_json(&self.keys)
    }
    fn config(&self, target: &str) -> Result<Option<String>, BackendError> {
        Ok(self
            .config
            .get(target)
            .map_err(storage)?
            .map(|v| v.value().to_owned()))
    }
    fn material(&self, key_id: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self
            .material
            .get(key_id)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }
    fn grant(&self, grant_id: &str) -> Result<Option<StoredGrant>, BackendError> {
        get_json(&self.grants, grant_id)
    }
    fn grants(&self) -> Result<Vec<StoredGrant>, BackendError> {
        all_json(&self.grants)
    }
    fn data_key(&self, target: &str) -> Result<Option<StoredDataKey>, BackendError> {
        get_json(&self.data_keys, target)
    }
    fn snippet(&self, finding_arn: &str) -> Result<Option<StoredSnippet>, BackendError> {
        get_json(&self.snippets, finding_arn)
    }
    fn snippets(&self) -> Result<Vec<(String, StoredSnippet)>, BackendError> {
        let mut values = Vec::new();
        for entry in self.snippets.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            values.push((k.value().to_owned(), from_json(v.value())?));
        }
        Ok(values)
    }
}

fn put_json(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    id: &str,
    value: &impl Serialize,
) -> Result<(), BackendError> {
    let bytes = serde_json::to_vec(value).map_err(storage)?;
    table.insert(id, bytes.as_slice()).map_err(storage)?;
    Ok(())
}

impl WriteTx<'_> {
    pub fn put_key(&mut self, key: &StoredKey) -> Result<(), BackendError> {
        put_json(&mut self.keys, &key.arn, key)
    }

    pub fn set_config(&mut self, target: &str, arn: Option<&str>) -> Result<(), BackendError> {
        match arn {
            Some(arn) => self.config.insert(target, arn).map(drop),
            None => self.config.remove(target).map(drop),
        }
        .map_err(storage)
    }

    pub fn put_material(&mut self, key_id: &str, material: &[u8]) -> Result<(), BackendError> {
        self.material.insert(key_id, material).map_err(storage)?;
        Ok(())
    }

    pub fn put_grant(&mut self, grant: &StoredGrant) -> Result<(), BackendError> {
        put_json(&mut self.grants, &grant.grant_id, grant)
    }

    pub fn delete_grant(&mut self, grant_id: &str) -> Result<(), BackendError> {
        self.grants.remove(grant_id).map_err(storage)?;
        Ok(())
    }

    pub fn put_data_key(&mut self, target: &str, key: &StoredDataKey) -> Result<(), BackendError> {
        put_json(&mut self.data_keys, target, key)
    }

    pub fn delete_data_key(&mut self, target: &str) -> Result<(), BackendError> {
        self.data_keys.remove(target).map_err(storage)?;
        Ok(())
    }

    pub fn put_snippet(
        &mut self,
        finding_arn: &str,
        snippet: &StoredSnippet,
    ) -> Result<(), BackendError> {
        put_json(&mut self.snippets, finding_arn, snippet)
    }

    pub fn delete_snippet(&mut self, finding_arn: &str) -> Result<(), BackendError> {
        self.snippets.remove(finding_arn).map_err(storage)?;
        Ok(())
    }
}

impl Store {
    /// Opens (or creates) the store file. Fails when another process holds it open.
    pub fn open(path: &Path) -> Result<Store, BackendError> {
        let db = Database::create(path).map_err(|e| {
            BackendError::internal(format!("cannot open local store `{}`: {e}", path.display()))
        })?;
        let store = Store { db };
        // Create the tables so read transactions always find them.
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    /// Runs `f` in one write transaction; commits (with fsync) only when `f` succeeds.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let out = {
            let mut tx = WriteTx {
                keys: txn.open_table(KMS_KEYS).map_err(storage)?,
                config: txn.open_table(KEY_CONFIG).map_err(storage)?,
                material: txn.open_table(KEY_MATERIAL).map_err(storage)?,
                grants: txn.open_table(GRANTS).map_err(storage)?,
                data_keys: txn.open_table(DATA_KEYS).map_err(storage)?,
                snippets: txn.open_table(SNIPPETS).map_err(storage)?,
            };
            f(&mut tx)?
        };
        txn.commit().map_err(storage)?;
        Ok(out)
    }

    /// Runs `f` on a consistent snapshot.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadTx) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let tx = ReadTx {
            keys: txn.open_table(KMS_KEYS).map_err(storage)?,
            config: txn.open_table(KEY_CONFIG).map_err(storage)?,
            material: txn.open_table(KEY_MATERIAL).map_err(storage)?,
            grants: txn.open_table(GRANTS).map_err(storage)?,
            data_keys: txn.open_table(DATA_KEYS).map_err(storage)?,
            snippets: txn.open_table(SNIPPETS).map_err(storage)?,
        };
        f(&tx)
    }
}
