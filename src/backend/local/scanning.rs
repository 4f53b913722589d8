//! The scanning service of the local backend, as the Inspector documentation describes
//! CodeGuru Security (or Amazon Q) handling code snippets: when a customer managed key is
//! put in use it gets a grant on the key (profiles that use one) and a data key under it;
//! snippets are stored encrypted (AES-256-GCM) under the data key; reading decrypts the data
//! key through KMS — key state, policy and grant checked every time — then the snippet.
//! Update re-encrypts the stored snippets under the new key's data key and retires the old
//! grant; Reset goes back to the AWS owned key the same way; disabling code scanning retires
//! the grant and deletes the data key and the snippets. Plaintext snippets and data keys
//! exist only in memory.
//!
//! Every change is one store transaction (see `Store::write`), so an interrupted Update
//! leaves the old key, grant, data key and snippets, or all of the new ones.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Place,
    crypto::{self, Secret},
    key_use,
    store::{KeyReads, StoredDataKey, StoredKey, StoredSnippet, WriteTx},
};
use crate::{
    backend::BackendError,
    domain::{CodeSnippet, CodeSnippets, FindingArn, SnippetError, SnippetErrorCode},
};

/// What the scanning service holds for a target (ids and counts only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanningState {
    pub kms_key_arn: Option<String>,
    pub data_key_id: Option<String>,
    pub grant_id: Option<String>,
    pub snippet_count: usize,
}

/// The additional data a snippet is sealed with: its finding and its data key.
fn snippet_binding(finding_arn: &str, data_key_id: &str) -> Vec<u8> {
    format!("inspector-keyd/snippet/v1\0{finding_arn}\0{data_key_id}").into_bytes()
}

fn live_key(reads: &impl KeyReads, arn: &str) -> Result<StoredKey, BackendError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    reads
        .key(arn)?
        .filter(|key| !key.is_deleted(now))
        .ok_or_else(|| BackendError::NotFound {
            what: format!("key `{arn}`"),
        })
}

/// The snippets stored for `target`, with their finding ARNs.
fn snippets_of(
    reads: &impl KeyReads,
    place: &Place,
) -> Result<Vec<(String, StoredSnippet)>, BackendError> {
    Ok(reads
        .snippets()?
        .into_iter()
        .filter(|(_, snippet)| snippet.target == place.name)
        .collect())
}

/// A new data key for `target` under `key` (`None`: the AWS owned key), with a new grant
/// first when the target's profile uses grants. Returns what to store and the plaintext.
fn new_data_key(
    tx: &mut WriteTx<'_>,
    place: &Place,
    key: Option<&str>,
) -> Result<(StoredDataKey, Secret), BackendError> {
    let user = key_use::user(&place.settings, place.target);
    match key {
        Some(arn) => {
            let key = live_key(tx, arn)?;
            let grant = if user.uses_grants() {
                Some(key_use::create_grant(
                    tx,
                    &user,
                    &key,
                    &format!("inspector-keyd/{}", place.name),
                )?)
            } else {
                None
            };
            key_use::generate_data_key(tx, &user, Some((&key, grant.as_ref())))
        }
        None => key_use::generate_data_key(tx, &user, None),
    }
}

/// Opens a stored snippet with its data key's plaintext.
fn open_snippet(
    finding_arn: &str,
    stored: &StoredSnippet,
    data_key: &[u8],
) -> Result<CodeSnippet, BackendError> {
    let plaintext = crypto::open(
        data_key,
        &snippet_binding(finding_arn, &stored.data_key_id),
        &stored.sealed,
    )?;
    serde_json::from_slice(&plaintext)
        .map_err(|e| BackendError::internal(format!("a stored snippet does not parse: {e}")))
}

fn seal_snippet(
    finding_arn: &str,
    snippet: &CodeSnippet,
    place: &Place,
    data_key: &StoredDataKey,
    plaintext_key: &[u8],
) -> Result<StoredSnippet, BackendError> {
    let plaintext = serde_json::to_vec(snippet).map_err(BackendError::internal)?;
    Ok(StoredSnippet {
        target: place.name.clone(),
        data_key_id: data_key.data_key_id.clone(),
        sealed: crypto::seal(
            plaintext_key,
            &snippet_binding(finding_arn, &data_key.data_key_id),
            &plaintext,
        )?,
    })
}

/// Puts `key` (`None`: the AWS owned key) in use for `target`: a new grant and data key,
/// the stored snippets re-encrypted under it, the old grant retired and the old data key
/// deleted. Refused, changing nothing, when the stored snippets cannot be decrypted (the
/// old key is disabled or denies the scanning service) or the new key cannot be used.
pub fn switch_key(
    tx: &mut WriteTx<'_>,
    place: &Place,
    key: Option<&str>,
) -> Result<(), BackendError> {
    let target_key = &place.name;
    let old = tx.data_key(target_key)?;
    let snippets = snippets_of(tx, place)?;
    let mut opened = Vec::with_capacity(snippets.len());
    if let (Some(old), false) = (&old, snippets.is_empty()) {
        let plaintext = key_use::decrypt_data_key(tx, &key_use::user(&place.settings, place.target), old).map_err(
            |error| match error {
                BackendError::InvalidState { message } | BackendError::KeyAccessDenied { message } => {
                    BackendError::InvalidState {
                        message: format!(
                            "the stored code snippets cannot be re-encrypted ({message}); make the key usable again, or disable code scanning to delete them"
                        ),
                    }
                }
                other => other,
            },
        )?;
        for (finding_arn, stored) in &snippets {
            opened.push((
                finding_arn.clone(),
                open_snippet(finding_arn, stored, &plaintext)?,
            ));
        }
    }
    let (new, plaintext) = new_data_key(tx, place, key)?;
    for (finding_arn, snippet) in &opened {
        let sealed = seal_snippet(finding_arn, snippet, place, &new, &plaintext)?;
        tx.put_snippet(finding_arn, &sealed)?;
    }
    if let Some(grant_id) = old.as_ref().and_then(|old| old.grant_id.as_deref()) {
        key_use::retire_grant(tx, grant_id)?;
    }
    tx.put_data_key(target_key, &new)?;
    tx.set_config(target_key, key)
}

/// Records a finding's snippet for `target`, encrypted under the data key of the key in
/// use (made now if there is none). Fails, storing nothing, when that key cannot be used.
pub fn record(
    tx: &mut WriteTx<'_>,
    place: &Place,
    snippet: &CodeSnippet,
) -> Result<(), BackendError> {
    let target_key = &place.name;
    let in_use = tx.config(target_key)?;
    let (data_key, plaintext) = match tx.data_key(target_key)? {
        Some(data_key) if data_key.kms_key_arn == in_use => {
            let plaintext = key_use::decrypt_data_key(
                tx,
                &key_use::user(&place.settings, place.target),
                &data_key,
            )?;
            (data_key, plaintext)
        }
        stale => {
            // No data key yet (or one from before the key in use): make one.
            if let Some(grant_id) = stale.and_then(|old| old.grant_id) {
                key_use::retire_grant(tx, &grant_id)?;
            }
            let (data_key, plaintext) = new_data_key(tx, place, in_use.as_deref())?;
            tx.put_data_key(target_key, &data_key)?;
            (data_key, plaintext)
        }
    };
    let sealed = seal_snippet(&snippet.finding_arn, snippet, place, &data_key, &plaintext)?;
    tx.put_snippet(&snippet.finding_arn, &sealed)
}

/// Disables code scanning for `target`: retires the grant, deletes the data key and every
/// snippet. Returns how many snippets were deleted.
pub fn disable(tx: &mut WriteTx<'_>, place: &Place) -> Result<usize, BackendError> {
    let target_key = &place.name;
    if let Some(grant_id) = tx.data_key(target_key)?.and_then(|old| old.grant_id) {
        key_use::retire_grant(tx, &grant_id)?;
    }
    tx.delete_data_key(target_key)?;
    let snippets = snippets_of(tx, place)?;
    for (finding_arn, _) in &snippets {
        tx.delete_snippet(finding_arn)?;
    }
    Ok(snippets.len())
}

/// What is held for `target`.
pub fn describe(reads: &impl KeyReads, place: &Place) -> Result<ScanningState, BackendError> {
    let data_key = reads.data_key(&place.name)?;
    Ok(ScanningState {
        kms_key_arn: data_key.as_ref().and_then(|d| d.kms_key_arn.clone()),
        grant_id: data_key.as_ref().and_then(|d| d.grant_id.clone()),
        data_key_id: data_key.map(|d| d.data_key_id),
        snippet_count: snippets_of(reads, place)?.len(),
    })
}

/// BatchGetCodeSnippet: each finding's snippet, decrypted, or why not. A finding of an
/// account or Region none of `places` is in is INVALID_INPUT; a key that cannot be used,
/// ACCESS_DENIED for every finding it protects.
pub fn batch_get(
    reads: &impl KeyReads,
    places: &[Place],
    findings: &[FindingArn],
) -> Result<CodeSnippets, BackendError> {
    let mut answer = CodeSnippets::default();
    // Data keys decrypted once per target: `Err` holds the per-finding error code.
    let mut data_keys: BTreeMap<String, Result<(String, Secret), SnippetErrorCode>> =
        BTreeMap::new();
    let mut seen = BTreeSet::new();
    for finding in findings {
        let arn = finding.as_str();
        if !seen.insert(arn) {
            continue;
        }
        let error = |code: SnippetErrorCode| SnippetError {
            finding_arn: arn.to_owned(),
            code,
            message: code.describe().to_owned(),
        };
        let in_scope = |place: &Place| {
            let prefix = format!(
                "arn:{}:inspector2:{}:{}:finding/",
                crate::domain::partition_of(&place.settings.region),
                place.settings.region,
                place.settings.account_id
            );
            arn.starts_with(&prefix)
        };
        if !places.iter().any(in_scope) {
            answer.errors.push(error(SnippetErrorCode::InvalidInput));
            continue;
        }
        let Some(stored) = reads.snippet(arn)? else {
            answer
                .errors
                .push(error(SnippetErrorCode::CodeSnippetNotFound));
            continue;
        };
        if !data_keys.contains_key(&stored.target) {
            let unwrapped = unwrap_target_key(reads, places, &stored.target);
            data_keys.insert(stored.target.clone(), unwrapped);
        }
        match data_keys.get(&stored.target) {
            Some(Ok((data_key_id, plaintext))) if *data_key_id == stored.data_key_id => {
                match open_snippet(arn, &stored, plaintext) {
                    Ok(snippet) => answer.results.push(snippet),
                    Err(e) => {
                        tracing::error!(finding = arn, error = %e, "a stored snippet does not open");
                        answer.errors.push(error(SnippetErrorCode::InternalError));
                    }
                }
            }
            Some(Err(code)) => answer.errors.push(error(*code)),
            _ => {
                tracing::error!(finding = arn, "a stored snippet's data key is gone");
                answer.errors.push(error(SnippetErrorCode::InternalError));
            }
        }
    }
    Ok(answer)
}

/// The data key of the target stored as `target_key`, decrypted: its id and plaintext, or
/// the error code of every finding it protects.
fn unwrap_target_key(
    reads: &impl KeyReads,
    places: &[Place],
    target_key: &str,
) -> Result<(String, Secret), SnippetErrorCode> {
    let place = places
        .iter()
        .find(|place| place.name == target_key)
        .ok_or(SnippetErrorCode::InternalError)?;
    let data_key = match reads.data_key(target_key) {
        Ok(Some(data_key)) => data_key,
        Ok(None) => return Err(SnippetErrorCode::InternalError),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a data key");
            return Err(SnippetErrorCode::InternalError);
        }
    };
    match key_use::decrypt_data_key(
        reads,
        &key_use::user(&place.settings, place.target),
        &data_key,
    ) {
        Ok(plaintext) => Ok((data_key.data_key_id, plaintext)),
        Err(
            e @ (BackendError::InvalidState { .. }
            | BackendError::KeyAccessDenied { .. }
            | BackendError::NotFound { .. }),
        ) => {
            tracing::info!(error = %e, "snippets unreadable: the key cannot be used");
            Err(SnippetErrorCode::AccessDenied)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot decrypt a data key");
            Err(SnippetErrorCode::InternalError)
        }
    }
}
