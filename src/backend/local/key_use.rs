//! What the scanning service may do with a local KMS key, decided as AWS KMS would: the
//! key's state, then its policy (and the configured identity policies) through the
//! verification evaluator — the same code and the same requests, with the `kms:ViaService`,
//! `kms:GrantOperations` and encryption-context keys the real services send, that `Update`
//! verifies against — and the key's grants. Also the grant and data-key operations.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::{
    crypto::{self, Secret},
    store::{KeyReads, StoredDataKey, StoredGrant, StoredKey, WriteTx},
};
use crate::{
    backend::BackendError,
    domain::Target,
    verify::{
        VerificationSettings,
        eval::{Decision, decide_bounded},
        policy::{Document, DocumentKind, analyze},
        profile::{GRANT_OPERATIONS, Params, Profile},
    },
};

/// The scanning service's principal, the grantee and retiring principal of its grants.
pub const SCANNING_PRINCIPAL: &str = "codeguru-security.amazonaws.com";

/// The key user for a target (its profile).
pub fn user(settings: &VerificationSettings, target: Target) -> KeyUser<'_> {
    KeyUser {
        settings,
        profile: settings.profile_for(target),
    }
}

/// The scanning service of one target, using keys.
#[derive(Debug, Clone, Copy)]
pub struct KeyUser<'a> {
    settings: &'a VerificationSettings,
    pub profile: Profile,
}

impl KeyUser<'_> {
    /// Whether the scanning service uses keys through a grant (else the key policy names it).
    pub fn uses_grants(&self) -> bool {
        self.profile == Profile::CodeguruGrants
    }

    /// The requests the real services send for `action` on `key`.
    fn requests(&self, key: &StoredKey, action: &str) -> Vec<crate::verify::eval::Request> {
        self.profile
            .requirements(&Params {
                region: &self.settings.region,
                account_id: &self.settings.account_id,
                principal_arn: &self.settings.principal_arn,
                key_arn: &key.arn,
            })
            .required
            .into_iter()
            .map(|required| required.request)
            .filter(|request| request.action.eq_ignore_ascii_case(action))
            .collect()
    }

    /// The encryption context the services send with data-key operations (the values of
    /// the requests' `kms:EncryptionContext:` keys).
    pub fn encryption_context(&self, key: &StoredKey) -> BTreeMap<String, String> {
        const PREFIX: &str = "kms:EncryptionContext:";
        self.requests(key, "kms:GenerateDataKeyWithoutPlaintext")
            .iter()
            .flat_map(|request| request.context.iter())
            .filter_map(|(name, values)| {
                let (head, rest) = (name.get(..PREFIX.len())?, name.get(PREFIX.len()..)?);
                head.eq_ignore_ascii_case(PREFIX)
                    .then(|| Some((rest.to_owned(), values.first()?.clone())))?
            })
            .collect()
    }

    /// Whether `action` on `key` is allowed: the key is enabled, no policy denies it, and
    /// `grant` (the scanning service's grant, for profiles that use one) lists the
    /// operation or the policies allow every request the services send for it.
    pub fn authorize(
        &self,
        key: &StoredKey,
        action: &str,
        grant: Option<&StoredGrant>,
    ) -> Result<(), BackendError> {
        usable(key)?;
        let denied = |why: String| BackendError::KeyAccessDenied {
            message: format!("{action} on `{}` {why}", key.arn),
        };
        let Some(key_policy) = analyze(Document {
            kind: DocumentKind::KeyPolicy,
            name: "key_policy",
            text: &key.policy,
        })
        .0
        else {
            return Err(denied("is denied: the key policy does not parse".into()));
        };
        let requests = self.requests(key, action);
        if requests.is_empty() {
            return Err(denied(format!(
                "is not an operation of profile {}",
                self.profile.name()
            )));
        }
        let operation = action.trim_start_matches("kms:");
        let granted = grant.is_some_and(|grant| {
            grant.key_arn == key.arn && grant.operations.iter().any(|op| op == operation)
        });
        for request in &requests {
            match decide_bounded(
                &key_policy,
                self.settings.parsed_identity_policies.as_deref(),
                self.settings.parsed_permissions_boundary.as_ref(),
                request,
            ) {
                // An explicit deny wins over every allow, grants included.
                Decision::ExplicitDeny { sid, .. } => {
                    return Err(denied(format!(
                        "is denied by statement {}",
                        sid.map_or_else(|| "(no Sid)".to_owned(), |sid| format!("`{sid}`"))
                    )));
                }
                Decision::Allow | Decision::IdentityPolicyNotChecked => {}
                Decision::ImplicitDeny if granted => {}
                Decision::ImplicitDeny => {
                    return Err(denied(
                        "is not allowed by the key policy (or the identity policies)".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// KMS refuses cryptographic operations on a key that is not enabled.
fn usable(key: &StoredKey) -> Result<(), BackendError> {
    let state = |what: &str| BackendError::InvalidState {
        message: format!("`{}` is {what}", key.arn),
    };
    match key.key_state.as_str() {
        "Enabled" => {}
        "Disabled" => return Err(state("disabled")),
        "PendingDeletion" => return Err(state("pending deletion")),
        other => return Err(state(&format!("in state {other}"))),
    }
    if key.key_spec != "SYMMETRIC_DEFAULT" || key.key_usage != "ENCRYPT_DECRYPT" {
        return Err(state("not a symmetric encryption key"));
    }
    Ok(())
}

/// The additional data a data key's KMS ciphertext is bound to: the key and the context.
fn data_key_binding(kms_key: &str, context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut binding = format!("inspector-keyd/data-key/v1\0{kms_key}\0").into_bytes();
    binding.extend(serde_json::to_vec(context).unwrap_or_default());
    binding
}

/// The id under which the AWS owned key of the scanning service keeps its material: not a
/// KMS key id, so no request can name it.
const AWS_OWNED_KEY_ID: &str = "aws-owned-key:code-scanning";

fn material(reads: &impl KeyReads, key_id: &str) -> Result<Secret, BackendError> {
    reads
        .material(key_id)?
        .ok_or_else(|| BackendError::internal(format!("no key material for `{key_id}`")))
}

/// CreateGrant: the scanning service's grant on `key` for the six operations.
pub fn create_grant(
    tx: &mut WriteTx<'_>,
    user: &KeyUser<'_>,
    key: &StoredKey,
    name: &str,
) -> Result<StoredGrant, BackendError> {
    user.authorize(key, "kms:CreateGrant", None)?;
    let grant = StoredGrant {
        grant_id: format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ),
        key_arn: key.arn.clone(),
        name: name.to_owned(),
        grantee_principal: SCANNING_PRINCIPAL.to_owned(),
        retiring_principal: SCANNING_PRINCIPAL.to_owned(),
        issuing_account: format!("arn:aws:iam::{}:root", key.account_id),
        operations: GRANT_OPERATIONS.map(str::to_owned).to_vec(),
        creation_date: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    tx.put_grant(&grant)?;
    Ok(grant)
}

/// RetireGrant by its retiring principal; a grant already gone is not an error. KMS lets a
/// grant be retired whatever the key's state, so cleaning up always works.
pub fn retire_grant(tx: &mut WriteTx<'_>, grant_id: &str) -> Result<(), BackendError> {
    tx.delete_grant(grant_id)
}

/// A new data key for the scanning service: GenerateDataKeyWithoutPlaintext under `key`
/// (through `grant` when the profile uses one), or under the AWS owned key when `key` is
/// `None`. Returns what is stored (the ciphertext only) and the plaintext, which the caller
/// uses in memory and drops (wiped when dropped).
pub fn generate_data_key(
    tx: &mut WriteTx<'_>,
    user: &KeyUser<'_>,
    key: Option<(&StoredKey, Option<&StoredGrant>)>,
) -> Result<(StoredDataKey, Secret), BackendError> {
    let plaintext = crypto::random_key()?;
    let data_key_id = uuid::Uuid::new_v4().to_string();
    let stored = match key {
        Some((key, grant)) => {
            user.authorize(key, "kms:GenerateDataKeyWithoutPlaintext", grant)?;
            let context = user.encryption_context(key);
            let ciphertext = crypto::seal(
                &material(tx, &key.key_id)?,
                &data_key_binding(&key.arn, &context),
                plaintext.as_slice(),
            )?;
            StoredDataKey {
                data_key_id,
                kms_key_arn: Some(key.arn.clone()),
                grant_id: grant.map(|g| g.grant_id.clone()),
                encryption_context: context,
                ciphertext,
            }
        }
        None => {
            let service_key = match tx.material(AWS_OWNED_KEY_ID)? {
                Some(material) => material,
                None => {
                    let material = crypto::random_key()?;
                    tx.put_material(AWS_OWNED_KEY_ID, material.as_slice())?;
                    Zeroizing::new(material.to_vec())
                }
            };
            let context = BTreeMap::new();
            StoredDataKey {
                data_key_id,
                kms_key_arn: None,
                grant_id: None,
                ciphertext: crypto::seal(
                    &service_key,
                    &data_key_binding(AWS_OWNED_KEY_ID, &context),
                    plaintext.as_slice(),
                )?,
                encryption_context: context,
            }
        }
    };
    Ok((stored, Zeroizing::new(plaintext.to_vec())))
}

/// Decrypt of a stored data key, as the scanning service asks KMS for it: key state,
/// policy and grant checked on every call.
pub fn decrypt_data_key(
    reads: &impl KeyReads,
    user: &KeyUser<'_>,
    data_key: &StoredDataKey,
) -> Result<Secret, BackendError> {
    let (material, binding) = match &data_key.kms_key_arn {
        Some(arn) => {
            let key = reads
                .key(arn)?
                .filter(|k| !k.is_deleted(time::OffsetDateTime::now_utc().unix_timestamp()))
                .ok_or_else(|| BackendError::NotFound {
                    what: format!("key `{arn}`"),
                })?;
            let grant = match &data_key.grant_id {
                Some(id) => reads.grant(id)?,
                None => None,
            };
            user.authorize(&key, "kms:Decrypt", grant.as_ref())?;
            (
                material(reads, &key.key_id)?,
                data_key_binding(arn, &data_key.encryption_context),
            )
        }
        None => (
            material(reads, AWS_OWNED_KEY_ID)?,
            data_key_binding(AWS_OWNED_KEY_ID, &data_key.encryption_context),
        ),
    };
    crypto::open(&material, &binding, &data_key.ciphertext)
}
