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

fn decode(bytes: &[u8]) -> Result<StoredKey, BackendError> {
    serde_json::from_slice(bytes).map_err(storage)
}

/// Reads available both inside a write transaction and from a read transaction.
pub trait KeyReads {
    fn key(&self, arn: &str) -> Result<Option<StoredKey>, BackendError>;
    fn keys(&self) -> Result<Vec<StoredKey>, BackendError>;
    fn config(&self, target: &str) -> Result<Option<String>, BackendError>;
}

fn read_key(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    arn: &str,
) -> Result<Option<StoredKey>, BackendError> {
    table
        .get(arn)
        .map_err(storage)?
        .map(|v| decode(v.value()))
        .transpose()
}

fn read_keys(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<StoredKey>, BackendError> {
    let mut keys = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (_, v) = entry.map_err(storage)?;
        keys.push(decode(v.value())?);
    }
    Ok(keys)
}

fn read_config(
    table: &impl ReadableTable<&'static str, &'static str>,
    target: &str,
) -> Result<Option<String>, BackendError> {
    Ok(table
        .get(target)
        .map_err(storage)?
        .map(|v| v.value().to_owned()))
}

/// A write transaction in progress; see [`Store::write`].
pub struct WriteTx<'t> {
    keys: redb::Table<'t, &'static str, &'static [u8]>,
    config: redb::Table<'t, &'static str, &'static str>,
}

impl WriteTx<'_> {
    pub fn put_key(&mut self, key: &StoredKey) -> Result<(), BackendError> {
        let bytes = serde_json::to_vec(key).map_err(storage)?;
        self.keys
            .insert(key.arn.as_str(), bytes.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    pub fn set_config(&mut self, target: &str, arn: Option<&str>) -> Result<(), BackendError> {
        match arn {
            Some(arn) => self.config.insert(target, arn).map(drop),
            None => self.config.remove(target).map(drop),
        }
        .map_err(storage)
    }
}

impl KeyReads for WriteTx<'_> {
    fn key(&self, arn: &str) -> Result<Option<StoredKey>, BackendError> {
        read_key(&self.keys, arn)
    }
    fn keys(&self) -> Result<Vec<StoredKey>, BackendError> {
        read_keys(&self.keys)
    }
    fn config(&self, target: &str) -> Result<Option<String>, BackendError> {
        read_config(&self.config, target)
    }
}

/// A consistent snapshot for reading; see [`Store::read`].
pub struct ReadTx {
    keys: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    config: redb::ReadOnlyTable<&'static str, &'static str>,
}

impl KeyReads for ReadTx {
    fn key(&self, arn: &str) -> Result<Option<StoredKey>, BackendError> {
        read_key(&self.keys, arn)
    }
    fn keys(&self) -> Result<Vec<StoredKey>, BackendError> {
        read_keys(&self.keys)
    }
    fn config(&self, target: &str) -> Result<Option<String>, BackendError> {
        read_config(&self.config, target)
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
        };
        f(&tx)
    }
}
