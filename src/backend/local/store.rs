//! The durable embedded store under the state directory (redb). Every write is one
//! transaction committed with fsync before it returns, so an acknowledged write survives
//! `kill -9` and an interrupted one leaves nothing half-applied.

use std::{path::Path, sync::Arc};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    crypto::{KEY_LEN, Secret},
    kek::Kek,
};
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
    kek: Arc<Kek>,
}

fn storage(e: impl std::fmt::Display) -> BackendError {
    BackendError::internal(format!("local store: {e}"))
}

/// Key id → the key's 256-bit secret (the emulated HSM's key material), sealed under the
/// key-encryption key (see `kek.rs`). Never part of [`StoredKey`], so it cannot leak through
/// metadata, `Debug` or JSON. A row of exactly [`KEY_LEN`] bytes is unsealed material of an
/// earlier version, sealed when the store is opened.
const KEY_MATERIAL: TableDefinition<&str, &[u8]> = TableDefinition::new("kms_key_material");
/// Grant id → JSON of [`StoredGrant`]. Retiring a grant deletes its row.
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("kms_grants");
/// Key ARN, NUL, grant id → nothing: each key's grants, read as one range rather than by
/// decoding every grant of the store. Written with [`GRANTS`] in the same transaction, and
/// made again from it at open (a store of an earlier version has grants and no index).
const GRANTS_BY_KEY: TableDefinition<&str, &[u8]> = TableDefinition::new("kms_grants_by_key");
/// Target → JSON of [`StoredDataKey`]: the scanning service's current data key, encrypted.
const DATA_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("data_keys");
/// Finding ARN → JSON of [`StoredSnippet`]: a snippet, encrypted under a data key.
const SNIPPETS: TableDefinition<&str, &[u8]> = TableDefinition::new("code_snippets");
/// Alias ARN → JSON of [`StoredAlias`]. Deleting an alias, or purging its key, deletes its row.
const ALIASES: TableDefinition<&str, &[u8]> = TableDefinition::new("kms_aliases");

/// A KMS alias as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAlias {
    /// `alias/<name>`.
    pub alias_name: String,
    pub alias_arn: String,
    /// The ARN of the key it names, in the alias's Region.
    pub target_key_arn: String,
    /// The key id of that key.
    pub target_key_id: String,
    /// Unix seconds.
    pub creation_date: i64,
    /// Unix seconds.
    pub last_updated_date: i64,
}

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
    grants_by_key: B,
    data_keys: B,
    snippets: B,
    aliases: B,
    kek: Arc<Kek>,
}

/// Every table of the store, opened in the transaction `$txn` (a write transaction opens
/// them writable, a read transaction as a snapshot: the same calls, other types).
macro_rules! open_tables {
    ($txn:expr, $kek:expr) => {
        Tables {
            keys: $txn.open_table(KMS_KEYS).map_err(storage)?,
            config: $txn.open_table(KEY_CONFIG).map_err(storage)?,
            material: $txn.open_table(KEY_MATERIAL).map_err(storage)?,
            grants: $txn.open_table(GRANTS).map_err(storage)?,
            grants_by_key: $txn.open_table(GRANTS_BY_KEY).map_err(storage)?,
            data_keys: $txn.open_table(DATA_KEYS).map_err(storage)?,
            snippets: $txn.open_table(SNIPPETS).map_err(storage)?,
            aliases: $txn.open_table(ALIASES).map_err(storage)?,
            kek: $kek.clone(),
        }
    };
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
    /// The material of `key_id`, unsealed; wiped from memory when dropped.
    fn material(&self, key_id: &str) -> Result<Option<Secret>, BackendError>;
    fn grant(&self, grant_id: &str) -> Result<Option<StoredGrant>, BackendError>;
    fn grants(&self) -> Result<Vec<StoredGrant>, BackendError>;
    /// The grants of the key `key_arn`.
    fn grants_of(&self, key_arn: &str) -> Result<Vec<StoredGrant>, BackendError>;
    fn data_key(&self, target: &str) -> Result<Option<StoredDataKey>, BackendError>;
    fn snippet(&self, finding_arn: &str) -> Result<Option<StoredSnippet>, BackendError>;
    /// Every stored snippet with its finding ARN.
    fn snippets(&self) -> Result<Vec<(String, StoredSnippet)>, BackendError>;
    fn alias(&self, alias_arn: &str) -> Result<Option<StoredAlias>, BackendError>;
    /// Every stored alias, in the order of their ARNs.
    fn aliases(&self) -> Result<Vec<StoredAlias>, BackendError>;
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
    fn material(&self, key_id: &str) -> Result<Option<Secret>, BackendError> {
        self.material
            .get(key_id)
            .map_err(storage)?
            .map(|v| self.kek.open(key_id, v.value()))
            .transpose()
    }
    fn grant(&self, grant_id: &str) -> Result<Option<StoredGrant>, BackendError> {
        get_json(&self.grants, grant_id)
    }
    fn grants(&self) -> Result<Vec<StoredGrant>, BackendError> {
        all_json(&self.grants)
    }
    fn grants_of(&self, key_arn: &str) -> Result<Vec<StoredGrant>, BackendError> {
        let prefix = grant_index_entry(key_arn, "");
        let mut grants = Vec::new();
        for entry in self
            .grants_by_key
            .range(prefix.as_str()..)
            .map_err(storage)?
        {
            let (index, _) = entry.map_err(storage)?;
            let Some(grant_id) = index.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            // An entry left by another version can name a grant that is now another's.
            grants.extend(self.grant(grant_id)?.filter(|g| g.key_arn == key_arn));
        }
        Ok(grants)
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
    fn alias(&self, alias_arn: &str) -> Result<Option<StoredAlias>, BackendError> {
        get_json(&self.aliases, alias_arn)
    }
    fn aliases(&self) -> Result<Vec<StoredAlias>, BackendError> {
        all_json(&self.aliases)
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
        let sealed = self.kek.seal(key_id, material)?;
        self.material
            .insert(key_id, sealed.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    pub fn delete_material(&mut self, key_id: &str) -> Result<(), BackendError> {
        self.material.remove(key_id).map_err(storage)?;
        Ok(())
    }

    pub fn delete_key(&mut self, arn: &str) -> Result<(), BackendError> {
        self.keys.remove(arn).map_err(storage)?;
        Ok(())
    }

    pub fn put_grant(&mut self, grant: &StoredGrant) -> Result<(), BackendError> {
        put_json(&mut self.grants, &grant.grant_id, grant)?;
        self.index_grant(grant)
    }

    fn index_grant(&mut self, grant: &StoredGrant) -> Result<(), BackendError> {
        let entry = grant_index_entry(&grant.key_arn, &grant.grant_id);
        self.grants_by_key
            .insert(entry.as_str(), [].as_slice())
            .map_err(storage)?;
        Ok(())
    }

    pub fn delete_grant(&mut self, grant_id: &str) -> Result<(), BackendError> {
        if let Some(grant) = self.grant(grant_id)? {
            let entry = grant_index_entry(&grant.key_arn, grant_id);
            self.grants_by_key.remove(entry.as_str()).map_err(storage)?;
        }
        self.grants.remove(grant_id).map_err(storage)?;
        Ok(())
    }

    /// Makes the index of each key's grants again from the grants. A row that does not
    /// decode is left out, and said: it must not stop the store from opening (before the
    /// index, only the ListGrants that read it failed).
    fn reindex_grants(&mut self) -> Result<(), BackendError> {
        self.grants_by_key.retain(|_, _| false).map_err(storage)?;
        let mut rows = Vec::new();
        for entry in self.grants.iter().map_err(storage)? {
            let (id, value) = entry.map_err(storage)?;
            rows.push((
                id.value().to_owned(),
                from_json::<StoredGrant>(value.value()),
            ));
        }
        for (grant_id, grant) in rows {
            match grant {
                Ok(grant) => self.index_grant(&grant)?,
                Err(error) => {
                    tracing::warn!(grant_id, %error, "local store: a grant row does not decode; left out of its key's grants");
                }
            }
        }
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

    pub fn put_alias(&mut self, alias: &StoredAlias) -> Result<(), BackendError> {
        put_json(&mut self.aliases, &alias.alias_arn, alias)
    }

    pub fn delete_alias(&mut self, alias_arn: &str) -> Result<(), BackendError> {
        self.aliases.remove(alias_arn).map_err(storage)?;
        Ok(())
    }
}

/// The grant index's entry of `grant_id` of `key_arn` (with an empty grant id: the prefix
/// of all of the key's). No ARN holds a NUL.
fn grant_index_entry(key_arn: &str, grant_id: &str) -> String {
    format!("{key_arn}\0{grant_id}")
}

/// The material rows: (key id, stored bytes).
fn material_rows(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Secret)>, BackendError> {
    let mut rows = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        rows.push((k.value().to_owned(), Zeroizing::new(v.value().to_vec())));
    }
    Ok(rows)
}

impl Store {
    /// Opens (or creates) the store file, with the key-encryption key at `kek_path` (made
    /// when the store seals no material yet). Material of an earlier version, stored
    /// unsealed, is sealed now; a key file that does not open the store's material is
    /// refused. Fails when another process holds the store open.
    pub fn open(path: &Path, kek_path: &Path) -> Result<Store, BackendError> {
        let db = Database::create(path).map_err(|e| {
            BackendError::internal(format!("cannot open local store `{}`: {e}", path.display()))
        })?;
        let rows = {
            let txn = db.begin_write().map_err(storage)?;
            let rows = material_rows(&txn.open_table(KEY_MATERIAL).map_err(storage)?)?;
            txn.abort().map_err(storage)?;
            rows
        };
        let sealed = rows.iter().find(|(_, v)| v.len() != KEY_LEN);
        let kek = Arc::new(Kek::load_or_create(kek_path, sealed.is_none())?);
        if let Some((key_id, value)) = sealed {
            kek.open(key_id, value)?;
        }
        let store = Store { db, kek };
        // Creates the tables (so read transactions always find them), seals what is not,
        // and indexes the grants.
        store.write(|tx| {
            for (key_id, value) in rows.iter().filter(|(_, v)| v.len() == KEY_LEN) {
                tx.put_material(key_id, value)?;
            }
            tx.reindex_grants()
        })?;
        Ok(store)
    }

    /// Runs `f` in one write transaction; commits (with fsync) only when `f` succeeds.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let out = {
            let mut tx: WriteTx<'_> = open_tables!(txn, self.kek);
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
        let tx: ReadTx = open_tables!(txn, self.kek);
        f(&tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsealed_material_of_an_earlier_version_is_sealed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.redb");
        let legacy = [7u8; KEY_LEN];
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(KEY_MATERIAL)
                .unwrap()
                .insert("key-1", legacy.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path, &dir.path().join("kek")).unwrap();
        let read = store.read(|tx| tx.material("key-1")).unwrap().unwrap();
        assert_eq!(read.as_slice(), legacy);
        let row = store
            .read(|tx| {
                Ok(tx
                    .material
                    .get("key-1")
                    .map_err(storage)?
                    .unwrap()
                    .value()
                    .to_vec())
            })
            .unwrap();
        assert_ne!(row.len(), KEY_LEN, "the row is still unsealed");
        assert!(!row.windows(KEY_LEN).any(|w| w == legacy));
        drop(store);
        // Sealed now: the key file is needed from here on.
        std::fs::remove_file(dir.path().join("kek")).unwrap();
        assert!(Store::open(&path, &dir.path().join("kek")).is_err());
    }

    fn grant(grant_id: &str, key_arn: &str) -> StoredGrant {
        StoredGrant {
            grant_id: grant_id.into(),
            key_arn: key_arn.into(),
            name: String::new(),
            grantee_principal: "arn:aws:iam::111122223333:role/scanner".into(),
            retiring_principal: String::new(),
            issuing_account: "111122223333".into(),
            operations: vec!["Decrypt".into()],
            creation_date: 0,
        }
    }

    #[test]
    fn each_keys_grants_are_read_by_key_including_those_an_earlier_version_stored() {
        const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/k1";
        // A key whose ARN starts with the other's: its grants are not the other's.
        const LONGER: &str = "arn:aws:kms:us-east-1:111122223333:key/k10";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.redb");
        {
            // An earlier version's store: grants, no index; and an index entry left by a
            // later version for a grant an earlier one then deleted.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut grants = txn.open_table(GRANTS).unwrap();
                for g in [grant("g1", KEY), grant("g2", LONGER), grant("g3", KEY)] {
                    let json = serde_json::to_vec(&g).unwrap();
                    grants.insert(g.grant_id.as_str(), json.as_slice()).unwrap();
                }
                // A row that does not decode does not stop the store from opening.
                grants.insert("g9", b"{not json".as_slice()).unwrap();
                let stale = grant_index_entry(KEY, "g0");
                txn.open_table(GRANTS_BY_KEY)
                    .unwrap()
                    .insert(stale.as_str(), [].as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&path, &dir.path().join("kek")).unwrap();
        let ids = |key: &str| -> Vec<String> {
            store
                .read(|tx| tx.grants_of(key))
                .unwrap()
                .into_iter()
                .map(|g| g.grant_id)
                .collect()
        };
        assert_eq!(ids(KEY), ["g1", "g3"]);
        assert_eq!(ids(LONGER), ["g2"]);
        assert_eq!(
            store
                .read(|tx| redb::ReadableTableMetadata::len(&tx.grants_by_key).map_err(storage))
                .unwrap(),
            3,
            "the stale entry is gone"
        );

        store
            .write(|tx| {
                tx.put_grant(&grant("g4", LONGER))?;
                tx.delete_grant("g1")
            })
            .unwrap();
        assert_eq!(ids(KEY), ["g3"]);
        assert_eq!(ids(LONGER), ["g2", "g4"]);
        assert!(ids("arn:aws:kms:us-east-1:111122223333:key/none").is_empty());
    }
}
