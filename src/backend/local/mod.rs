//! The embedded local backend: Inspector's key configuration and a local KMS, in a
//! durable store under the state directory. Needs no AWS account.

mod crypto;
mod kek;
pub mod key_use;
pub mod kms;
pub mod scanning;
mod store;

use std::{path::Path, sync::Arc};

use async_trait::async_trait;

pub use kms::{AliasEntry, CreateKeyInput, LocalKms};
pub use scanning::ScanningState;
use store::{KeyReads, Store};

use super::{Backend, BackendError};
use crate::{
    domain::{CodeSnippet, CodeSnippets, FindingArn, KeyArn, Scope, ScopedTarget, Target},
    scopes::ManagedScopes,
    verify::{KeyMetadata, VerificationSettings},
};

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "keyd.redb";

pub struct LocalBackend {
    kms: LocalKms,
    /// The emulated organization: each managed scope with the verification settings its
    /// scanning service acts under (the profiles and principal `Update` verifies keys for).
    scopes: Arc<ManagedScopes>,
}

/// One target of one scope as the local backend keeps it: what its scanning service
/// verifies there (the scope's Region, account and principal), and the store's name of
/// its rows.
#[derive(Debug, Clone)]
pub struct Place {
    pub settings: Arc<VerificationSettings>,
    pub target: Target,
    /// `CODE/AWS_LAMBDA_FUNCTION` in the sidecar's own scope (as stores written before
    /// there were scopes name it), `<account>/<region>/CODE/AWS_LAMBDA_FUNCTION` in others.
    pub name: String,
}

impl Place {
    /// `target` as `scopes` manage it.
    fn of(scopes: &ManagedScopes, target: ScopedTarget) -> Result<Place, BackendError> {
        let settings = scopes
            .settings(target.scope)
            .ok_or_else(|| BackendError::internal(format!("{target} is not a managed target")))?;
        let pair = format!(
            "{}/{}",
            target.target.scan_type().as_aws_str(),
            target.target.resource_type().as_aws_str()
        );
        let name = if target.scope == scopes.own() {
            pair
        } else {
            format!(
                "{}/{}/{pair}",
                target.scope.account_id(),
                target.scope.region()
            )
        };
        Ok(Place {
            settings: settings.verification.clone(),
            target: target.target,
            name,
        })
    }

    /// Every managed target.
    fn all(scopes: &ManagedScopes) -> Vec<Place> {
        scopes
            .targets()
            .into_iter()
            .filter_map(|target| Place::of(scopes, target).ok())
            .collect()
    }
}

impl LocalBackend {
    /// Opens the store in `state_dir` (created if missing), its key material sealed under
    /// the key-encryption key in `kek_file` (made at first start), for the scopes of
    /// `scopes`, each with the Region, account, profiles, principal and identity policies
    /// `Update` verifies keys against there (so the scanning service uses keys for what was
    /// verified). The sidecar's own scope's Region and account are the local KMS's defaults.
    pub fn open(
        state_dir: &Path,
        kek_file: &Path,
        scopes: Arc<ManagedScopes>,
    ) -> Result<LocalBackend, BackendError> {
        crate::files::private_dir(state_dir).map_err(|e| {
            BackendError::internal(format!(
                "cannot prepare the state directory `{}`: {e}",
                state_dir.display()
            ))
        })?;
        let store_path = state_dir.join(STORE_FILE);
        // A new store is created private (0600), never through a link.
        if std::fs::symlink_metadata(&store_path).is_err() {
            crate::files::create_private(&store_path).map_err(|e| {
                BackendError::internal(format!(
                    "cannot create the local store `{}`: {e}",
                    store_path.display()
                ))
            })?;
        }
        // The crypto library seeds its random generator on first use (about 30 ms): begun
        // now on a thread of its own, so neither start-up nor the first Update after it
        // waits for all of it.
        let _ = std::thread::Builder::new()
            .name("crypto-warm-up".into())
            .spawn(|| crypto::random_key().map(drop));
        let store = Arc::new(Store::open(&store_path, kek_file)?);
        let own = scopes.own();
        let kms = LocalKms::new(store, own.region().to_owned(), own.account_id().to_owned());
        kms.add_missing_key_material()?;
        Ok(LocalBackend { kms, scopes })
    }

    /// The local KMS, for the local-only KMS service.
    pub fn kms(&self) -> &LocalKms {
        &self.kms
    }

    /// The local scanning service, for the local-only code-scanning service.
    pub fn scanning(&self) -> LocalScanning {
        LocalScanning {
            kms: self.kms.clone(),
            scopes: self.scopes.clone(),
        }
    }
}

/// The scanning service of the local backend: records findings, disables code scanning.
#[derive(Clone)]
pub struct LocalScanning {
    kms: LocalKms,
    scopes: Arc<ManagedScopes>,
}

impl LocalScanning {
    /// Records a finding's snippet for `target`, stored encrypted.
    pub async fn record(
        &self,
        target: ScopedTarget,
        snippet: CodeSnippet,
    ) -> Result<(), BackendError> {
        let place = Place::of(&self.scopes, target)?;
        self.kms
            .blocking(move |kms| kms.store.write(|tx| scanning::record(tx, &place, &snippet)))
            .await
    }

    /// The scopes whose scanning services it emulates.
    pub fn scopes(&self) -> &ManagedScopes {
        &self.scopes
    }

    /// Disables code scanning for `target`; returns how many snippets were deleted.
    pub async fn disable(&self, target: ScopedTarget) -> Result<usize, BackendError> {
        let place = Place::of(&self.scopes, target)?;
        self.kms
            .blocking(move |kms| kms.store.write(|tx| scanning::disable(tx, &place)))
            .await
    }

    /// What is held for `target`.
    pub async fn describe(&self, target: ScopedTarget) -> Result<ScanningState, BackendError> {
        let place = Place::of(&self.scopes, target)?;
        self.kms
            .blocking(move |kms| kms.store.read(|tx| scanning::describe(tx, &place)))
            .await
    }
}

#[async_trait]
impl Backend for LocalBackend {
    async fn list_grants(
        &self,
        key: &KeyArn,
    ) -> Result<Option<Vec<crate::verify::access::Grant>>, BackendError> {
        let grants = self.kms.list_grants(key.to_string()).await?;
        Ok(Some(
            grants
                .into_iter()
                .map(|g| crate::verify::access::Grant {
                    grant_id: g.grant_id,
                    grantee_principal: g.grantee_principal,
                    retiring_principal: g.retiring_principal,
                    operations: g.operations,
                })
                .collect(),
        ))
    }

    async fn get_encryption_key(
        &self,
        target: ScopedTarget,
    ) -> Result<Option<String>, BackendError> {
        let place = Place::of(&self.scopes, target)?;
        self.kms
            .blocking(move |kms| kms.store.read(|tx| tx.config(&place.name)))
            .await
    }

    async fn update_encryption_key(
        &self,
        target: ScopedTarget,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        let arn = key.as_str().to_owned();
        let place = Place::of(&self.scopes, target)?;
        self.kms
            .blocking(move |kms| {
                kms.store
                    .write(|tx| scanning::switch_key(tx, &place, Some(&arn)))
            })
            .await
    }

    async fn reset_encryption_key(&self, target: ScopedTarget) -> Result<(), BackendError> {
        let place = Place::of(&self.scopes, target)?;
        self.kms
            .blocking(move |kms| kms.store.write(|tx| scanning::switch_key(tx, &place, None)))
            .await
    }

    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError> {
        let arn = key.as_str().to_owned();
        self.kms.blocking(move |kms| kms.describe_arn(&arn)).await
    }

    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError> {
        let arn = key.as_str().to_owned();
        self.kms.blocking(move |kms| kms.policy_of_arn(&arn)).await
    }

    async fn resolve_alias(
        &self,
        scope: Scope,
        alias_name: &str,
    ) -> Result<Option<KeyArn>, BackendError> {
        let (account_id, region, alias_name) = (
            scope.account_id().to_owned(),
            scope.region().to_owned(),
            alias_name.to_owned(),
        );
        let target = self
            .kms
            .blocking(move |kms| kms.alias_target(&account_id, &region, &alias_name))
            .await?;
        target
            .map(|arn| KeyArn::parse(&arn).map_err(|e| BackendError::internal(e.to_string())))
            .transpose()
    }

    async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        let findings = findings.to_vec();
        let places = Place::all(&self.scopes);
        self.kms
            .blocking(move |kms| {
                kms.store
                    .read(|tx| scanning::batch_get(tx, &places, &findings))
            })
            .await
    }
}

#[cfg(test)]
pub(in crate::backend) mod tests {
    use super::*;
    use crate::domain::{CodeLine, ResourceType, ScanType};

    fn lambda() -> Target {
        Target::new(ScanType::Code, ResourceType::AwsLambdaFunction).unwrap()
    }

    /// The data key in use for Lambda code scanning, decrypted as the scanning service does.
    fn data_key_plaintext(backend: &LocalBackend) -> Vec<u8> {
        let place = Place::of(&backend.scopes, own_lambda(backend)).unwrap();
        let user = key_use::user(&place.settings, lambda());
        backend
            .kms
            .store
            .read(|tx| {
                let data_key = tx.data_key(&place.name)?.unwrap();
                key_use::decrypt_data_key(tx, &user, &data_key).map(|k| k.to_vec())
            })
            .unwrap()
    }

    /// The own scope's verification settings the backend tests use.
    pub(in crate::backend) fn settings() -> VerificationSettings {
        VerificationSettings::new(
            "us-east-1".into(),
            "111122223333".into(),
            "arn:aws:iam::111122223333:role/inspector-keyd".into(),
            Vec::new(),
            None,
            crate::verify::Profile::CodeguruGrants,
            crate::verify::Profile::AmazonQCodeRepository,
        )
    }

    fn open(dir: &Path) -> Result<LocalBackend, BackendError> {
        LocalBackend::open(
            dir,
            &dir.join("kek"),
            Arc::new(ManagedScopes::only(&settings())),
        )
    }

    fn own_lambda(backend: &LocalBackend) -> ScopedTarget {
        ScopedTarget::new(backend.scopes.own(), lambda())
    }

    /// The unsealed material of `key_id`, if the store has any.
    fn material(backend: &LocalBackend, key_id: &str) -> Option<Vec<u8>> {
        backend
            .kms
            .store
            .read(|tx| tx.material(key_id))
            .unwrap()
            .map(|m| m.to_vec())
    }

    #[tokio::test]
    async fn key_material_is_stored_only_sealed_under_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path()).unwrap();
        let mut keys = Vec::new();
        for _ in 0..3 {
            let key = backend
                .kms
                .create_key(CreateKeyInput::default())
                .await
                .unwrap();
            keys.push((key.key_id.clone(), material(&backend, &key.key_id).unwrap()));
        }
        let materials: Vec<Vec<u8>> = keys.iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(materials[0].len(), crypto::KEY_LEN);
        assert_not_on_disk(dir.path(), &materials);
        drop(backend);
        // Reopened with its key file, the store opens its keys.
        let backend = open(dir.path()).unwrap();
        for (key_id, stored) in &keys {
            assert_eq!(&material(&backend, key_id).unwrap(), stored);
        }
        drop(backend);

        // The store without its key file: refused, and no new key file is made.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join(STORE_FILE),
            elsewhere.path().join(STORE_FILE),
        )
        .unwrap();
        let missing = open(elsewhere.path()).err().unwrap().to_string();
        assert!(missing.contains("is missing"), "{missing}");
        assert!(!elsewhere.path().join("kek").exists());
        // With another store's key file: refused, naming the mismatch.
        drop(open(tempfile::tempdir().unwrap().path()).unwrap());
        let other = tempfile::tempdir().unwrap();
        drop(open(other.path()).unwrap());
        std::fs::copy(other.path().join("kek"), elsewhere.path().join("kek")).unwrap();
        let wrong = open(elsewhere.path()).err().unwrap().to_string();
        assert!(wrong.contains("do not belong together"), "{wrong}");
    }

    #[tokio::test]
    async fn deleted_keys_lose_their_material_but_a_live_replica_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path()).unwrap();
        let kms = &backend.kms;
        let single = kms.create_key(CreateKeyInput::default()).await.unwrap();
        let multi = kms
            .create_key(CreateKeyInput {
                multi_region: true,
                ..CreateKeyInput::default()
            })
            .await
            .unwrap();
        kms.replicate_key(multi.key_id.clone(), "us-west-2".into(), String::new())
            .await
            .unwrap();
        let kept = kms.create_key(CreateKeyInput::default()).await.unwrap();
        let key_in_use = KeyArn::parse(&single.arn).unwrap();
        backend
            .update_encryption_key(own_lambda(&backend), &key_in_use)
            .await
            .unwrap();
        for key in [&single.key_id, &multi.key_id] {
            kms.schedule_key_deletion(key.clone(), 7).await.unwrap();
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Nothing is purged before the deletion date.
        assert_eq!(kms.purge_deleted_keys(now).unwrap(), 0);
        assert!(material(&backend, &single.key_id).is_some());

        let after = now + 8 * 86_400;
        assert_eq!(kms.purge_deleted_keys(after).unwrap(), 2);
        assert_eq!(kms.purge_deleted_keys(after).unwrap(), 0);
        assert_eq!(material(&backend, &single.key_id), None);
        // The replica in us-west-2 still uses the multi-Region key's material.
        assert!(material(&backend, &multi.key_id).is_some());
        assert!(material(&backend, &kept.key_id).is_some());
        assert!(matches!(
            kms.describe_key(single.arn.clone()).await,
            Err(BackendError::NotFound { .. })
        ));
        assert!(kms.list_grants(single.arn.clone()).await.is_err());
        let listed: Vec<String> = kms
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|(_, arn)| arn)
            .collect();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.contains(&kept.arn));
    }

    #[tokio::test]
    async fn aliases_go_with_their_key_when_it_is_purged() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path()).unwrap();
        let kms = &backend.kms;
        let doomed = kms.create_key(CreateKeyInput::default()).await.unwrap();
        let kept = kms.create_key(CreateKeyInput::default()).await.unwrap();
        for (alias, key) in [
            ("alias/doomed", &doomed),
            ("alias/doomed-too", &doomed),
            ("alias/kept", &kept),
        ] {
            kms.create_alias(alias.into(), key.key_id.clone())
                .await
                .unwrap();
        }
        kms.schedule_key_deletion(doomed.key_id.clone(), 7)
            .await
            .unwrap();
        let names = |kms: &LocalKms| {
            kms.store
                .read(|tx| tx.aliases())
                .unwrap()
                .into_iter()
                .map(|a| a.alias_name)
                .collect::<Vec<_>>()
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(kms.purge_deleted_keys(now).unwrap(), 0);
        assert_eq!(
            names(kms),
            ["alias/doomed", "alias/doomed-too", "alias/kept"]
        );

        assert_eq!(kms.purge_deleted_keys(now + 8 * 86_400).unwrap(), 1);
        assert_eq!(names(kms), ["alias/kept"]);
        assert!(matches!(
            kms.describe_key("alias/doomed".into()).await,
            Err(BackendError::NotFound { .. })
        ));
        assert_eq!(
            kms.describe_key("alias/kept".into()).await.unwrap().arn,
            kept.arn
        );
        // The name is free for another key.
        kms.create_alias("alias/doomed".into(), kept.arn.clone())
            .await
            .unwrap();
    }

    /// No file under `dir` holds any of `secrets`: raw, as hex, or as a JSON byte array.
    fn assert_not_on_disk(dir: &Path, secrets: &[Vec<u8>]) {
        let mut paths = vec![dir.to_path_buf()];
        let mut scanned = 0;
        while let Some(path) = paths.pop() {
            if path.is_dir() {
                paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            scanned += 1;
            for secret in secrets {
                let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
                let json = serde_json::to_vec(secret).unwrap();
                for form in [secret.as_slice(), hex.as_bytes(), &json[1..json.len() - 1]] {
                    assert!(
                        !bytes.windows(form.len()).any(|w| w == form),
                        "{} holds a data key's plaintext",
                        path.display()
                    );
                }
            }
        }
        assert!(scanned > 0);
    }

    #[tokio::test]
    async fn data_keys_plaintext_never_reaches_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path()).unwrap();
        let snippet = CodeSnippet {
            finding_arn: format!(
                "arn:aws:inspector2:us-east-1:111122223333:finding/{}",
                "c".repeat(32)
            ),
            start_line: 1,
            end_line: 1,
            lines: vec![CodeLine {
                content: "x = 1".into(),
                line_number: 1,
            }],
            suggested_fixes: Vec::new(),
        };
        let mut seen = Vec::new();
        backend
            .scanning()
            .record(own_lambda(&backend), snippet)
            .await
            .unwrap();
        seen.push(data_key_plaintext(&backend));
        for _ in 0..2 {
            let key = backend
                .kms
                .create_key(CreateKeyInput::default())
                .await
                .unwrap();
            let key = KeyArn::parse(&key.arn).unwrap();
            backend
                .update_encryption_key(own_lambda(&backend), &key)
                .await
                .unwrap();
            seen.push(data_key_plaintext(&backend));
            assert_not_on_disk(dir.path(), &seen);
        }
        backend
            .reset_encryption_key(own_lambda(&backend))
            .await
            .unwrap();
        seen.push(data_key_plaintext(&backend));
        assert_not_on_disk(dir.path(), &seen);
        // Four different data keys, and the scan would see one if it were written.
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4);
        let planted = dir.path().join("planted");
        std::fs::write(&planted, &seen[0]).unwrap();
        let caught = std::panic::catch_unwind(|| assert_not_on_disk(dir.path(), &seen));
        assert!(caught.is_err(), "the scan missed a planted plaintext");
    }
}
