//! The access keys the AWS-protocol door accepts: a file in the AWS shared-credentials
//! format (an INI file, one `[profile]` per key pair with `aws_access_key_id` and
//! `aws_secret_access_key`, and optionally `aws_account_id`, the account the key acts in),
//! the same file a caller points the AWS CLI or an SDK at. It is a file the sidecar trusts
//! and that holds secrets (see `files::read_secret_trusted`), read again when it changes; a
//! broken new file is refused and the keys in force stay. At first start the sidecar writes
//! one random key pair per managed account to the default path.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use zeroize::Zeroizing;

/// The profile of the key pair the sidecar writes at first start for its own account.
pub const ADMIN_PROFILE: &str = "inspector-keyd-admin";

/// The profile of the key pair the sidecar writes at first start for `account_id`, another
/// account it manages.
pub fn admin_profile_of(account_id: &str) -> String {
    format!("{ADMIN_PROFILE}-{account_id}")
}

/// Why the credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the AWS credentials file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the AWS credentials file `{path}` is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot create the AWS credentials file `{path}`: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Shortest secret access key accepted.
const MIN_SECRET_LEN: usize = 16;

/// One key pair of the file.
struct Key {
    profile: String,
    secret: Zeroizing<String>,
    /// `aws_account_id`: the account the key acts in (`None`: the sidecar's own).
    account_id: Option<String>,
}

/// The key pairs of one version of the file, by access key id.
#[derive(Default)]
pub struct KeyTable {
    keys: HashMap<String, Key>,
}

impl KeyTable {
    /// The secret of an access key id, when the file holds it.
    pub fn secret_of(&self, access_key_id: &str) -> Option<Zeroizing<String>> {
        self.keys.get(access_key_id).map(|key| key.secret.clone())
    }

    /// The account an access key acts in, when the file holds the key: `Some(None)` when its
    /// profile sets no `aws_account_id` (the sidecar's own account).
    pub fn account_of(&self, access_key_id: &str) -> Option<Option<&str>> {
        self.keys
            .get(access_key_id)
            .map(|key| key.account_id.as_deref())
    }
}

/// Parses the shared-credentials format. Keys other than those a key pair needs (and
/// the CLI's `region` and `output`) are refused, naming the profile, so that a session
/// token or a typo is never silently ignored. Errors never repeat a secret.
fn parse(text: &str) -> Result<KeyTable, String> {
    struct Profile {
        name: String,
        line: usize,
        id: Option<String>,
        secret: Option<Zeroizing<String>>,
        account_id: Option<String>,
    }
    let mut profiles: Vec<Profile> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let Some(name) = name.strip_suffix(']').map(str::trim) else {
                return Err(format!("line {number}: a profile header is `[name]`"));
            };
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(format!("line {number}: the profile has no usable name"));
            }
            if profiles.iter().any(|p| p.name == name) {
                return Err(format!("line {number}: profile `{name}` appears twice"));
            }
            profiles.push(Profile {
                name: name.to_owned(),
                line: number,
                id: None,
                secret: None,
                account_id: None,
            });
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "line {number}: expected `name = value` or a `[profile]` header"
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(profile) = profiles.last_mut() else {
            return Err(format!(
                "line {number}: `{}` is outside any `[profile]`",
                key.escape_default()
            ));
        };
        match key {
            "aws_access_key_id" => {
                if !crate::domain::is_access_key_id(value) {
                    return Err(format!(
                        "line {number}: profile `{}`: aws_access_key_id must be 16 to 128 letters and digits",
                        profile.name
                    ));
                }
                profile.id = Some(value.to_owned());
            }
            "aws_secret_access_key" => {
                if value.len() < MIN_SECRET_LEN
                    || value.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(format!(
                        "line {number}: profile `{}`: aws_secret_access_key must be at least {MIN_SECRET_LEN} characters without spaces",
                        profile.name
                    ));
                }
                profile.secret = Some(Zeroizing::new(value.to_owned()));
            }
            // What the AWS SDKs read as the profile's account; here the account the key acts
            // in, so a key of one account never acts in another.
            "aws_account_id" => {
                if !crate::domain::is_account_id(value) {
                    return Err(format!(
                        "line {number}: profile `{}`: aws_account_id must be a 12-digit AWS account id",
                        profile.name
                    ));
                }
                profile.account_id = Some(value.to_owned());
            }
            "region" | "output" => {}
            "aws_session_token" | "aws_security_token" => {
                return Err(format!(
                    "line {number}: profile `{}`: session tokens are not used by the sidecar; give a key pair only",
                    profile.name
                ));
            }
            other => {
                return Err(format!(
                    "line {number}: profile `{}`: unknown key `{}` (a profile holds aws_access_key_id, aws_secret_access_key and optionally aws_account_id)",
                    profile.name,
                    other.escape_default()
                ));
            }
        }
    }
    let mut table = KeyTable::default();
    for profile in profiles {
        let (Some(id), Some(secret)) = (profile.id, profile.secret) else {
            return Err(format!(
                "profile `{}` (line {}) needs both aws_access_key_id and aws_secret_access_key",
                profile.name, profile.line
            ));
        };
        if let Some(other) = table.keys.get(&id) {
            return Err(format!(
                "profiles `{}` and `{}` have the same access key id",
                other.profile, profile.name
            ));
        }
        table.keys.insert(
            id,
            Key {
                profile: profile.name,
                secret,
                account_id: profile.account_id,
            },
        );
    }
    Ok(table)
}

/// The credentials file in force, read again when it changes.
pub struct AwsCredentials {
    path: PathBuf,
    current: RwLock<Arc<KeyTable>>,
}

impl AwsCredentials {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<AwsCredentials, CredentialsError> {
        Ok(AwsCredentials {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(Self::read(path)?)),
        })
    }

    fn read(path: &Path) -> Result<KeyTable, CredentialsError> {
        let bytes =
            crate::files::read_secret_trusted(path).map_err(|source| CredentialsError::Read {
                path: path.to_owned(),
                source,
            })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| CredentialsError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        parse(text).map_err(|message| CredentialsError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; a file that cannot be used is refused and the keys in force
    /// stay.
    pub fn reload(&self) -> Result<(), CredentialsError> {
        let table = Arc::new(Self::read(&self.path)?);
        match self.current.write() {
            Ok(mut current) => *current = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
        Ok(())
    }

    /// The keys in force: one version of the file, so that a request's secret and account
    /// come from the same one even when the file changes meanwhile.
    pub fn table(&self) -> Arc<KeyTable> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The secret of an access key id, when the file holds it.
    pub fn secret_of(&self, access_key_id: &str) -> Option<Zeroizing<String>> {
        self.table().secret_of(access_key_id)
    }

    /// The access key id of a profile, when the file holds it.
    pub fn access_key_id_of(&self, profile: &str) -> Option<String> {
        self.table()
            .keys
            .iter()
            .find(|(_, key)| key.profile == profile)
            .map(|(id, _)| id.clone())
    }
}

/// Upper-case letters and digits 2-7 (RFC 4648 base32), as AWS's own key ids use.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new key pair: an access key id `KEYD` + 16 base32 characters (so it is never taken
/// for an AWS key, whose ids begin `AKIA` or `ASIA`) and a 48-hex-digit secret (192 bits).
fn new_key_pair() -> Result<(String, Zeroizing<String>), std::io::Error> {
    let mut random = Zeroizing::new([0u8; 40]);
    aws_lc_rs::rand::fill(random.as_mut_slice())
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let (id_bytes, secret_bytes) = random.split_at(16);
    let id: String = std::iter::once("KEYD".to_owned())
        .chain(
            id_bytes
                .iter()
                .map(|b| char::from(BASE32[usize::from(b & 31)]).to_string()),
        )
        .collect();
    let secret: Zeroizing<String> = Zeroizing::new(
        secret_bytes[..24]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    );
    Ok((id, secret))
}

/// Makes sure the credentials file at `path` exists: when there is none, writes one (0600,
/// in a private directory) with a random key pair as profile [`ADMIN_PROFILE`] for the
/// sidecar's own account (without `aws_account_id`, as before accounts: it follows the
/// sidecar's own), and one as profile `inspector-keyd-admin-<id>` with `aws_account_id` for
/// each of `other_accounts`. An existing file is left as it is.
pub fn ensure_file(path: &Path, other_accounts: &[&str]) -> Result<(), CredentialsError> {
    let create_error = |source| CredentialsError::Create {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(create_error(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::private_dir(dir).map_err(create_error)?;
    }
    let format_error = || create_error(std::io::Error::other("cannot format the file"));
    // Room for every profile from the start, and each written in place: no copy of a secret
    // is left behind unzeroized by a reallocation or a temporary string.
    let mut text = Zeroizing::new(String::with_capacity(
        512 + 256 * (other_accounts.len() + 1),
    ));
    let (id, secret) = new_key_pair().map_err(create_error)?;
    std::fmt::Write::write_fmt(
        &mut *text,
        format_args!(
            "# Written by inspector-keyd at first start: the key pairs of its AWS-protocol door.\n\
             # Use one with the AWS CLI or an SDK: AWS_SHARED_CREDENTIALS_FILE=<this file>,\n\
             # AWS_PROFILE={ADMIN_PROFILE}. Under the default rules these keys are admin; a key\n\
             # acts in its profile's aws_account_id (the sidecar's own account when it has none)\n\
             # and in the Region the request is signed for.\n\
             [{ADMIN_PROFILE}]\naws_access_key_id = {id}\naws_secret_access_key = {}\n",
            secret.as_str()
        ),
    )
    .map_err(|_| format_error())?;
    for account in other_accounts {
        let (id, secret) = new_key_pair().map_err(create_error)?;
        std::fmt::Write::write_fmt(
            &mut *text,
            format_args!(
                "\n[{}]\naws_access_key_id = {id}\naws_secret_access_key = {}\naws_account_id = {account}\n",
                admin_profile_of(account),
                secret.as_str()
            ),
        )
        .map_err(|_| format_error())?;
    }
    crate::files::create_private_text(path, &text).map_err(create_error)
}

/// Registered with the reloader when the door is on.
impl crate::reload::Reload for AwsCredentials {
    fn label(&self) -> crate::metrics::ReloadedFile {
        crate::metrics::ReloadedFile::AwsCredentials
    }

    fn files(&self) -> Vec<&Path> {
        vec![&self.path]
    }

    fn reload(&self) -> crate::reload::Reloaded {
        match AwsCredentials::reload(self) {
            Ok(()) => {
                tracing::info!(
                    path = %self.path.display(),
                    "AWS-protocol door credentials reloaded"
                );
                crate::reload::Reloaded::Taken
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "new AWS-protocol door credentials refused; the keys in force stay"
                );
                crate::reload::Reloaded::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn profiles_are_key_pairs() {
        let table = parse(
            "# comment\n[default]\naws_access_key_id = AKIDEXAMPLE0000001\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\nregion = us-east-1\n\n; other\n[reader]\naws_access_key_id=KEYDREADER00000000\naws_secret_access_key=0123456789abcdef0123\n",
        )
        .unwrap();
        assert_eq!(table.keys.len(), 2);
        let key = &table.keys["KEYDREADER00000000"];
        assert_eq!(key.profile, "reader");
        assert_eq!(key.secret.as_str(), "0123456789abcdef0123");
        assert_eq!(table.account_of("KEYDREADER00000000"), Some(None));
        assert_eq!(table.account_of("KEYDNOBODY00000000"), None);
        let table = parse(
            "[other]\naws_access_key_id = KEYDOTHER000000000\naws_secret_access_key = 0123456789abcdef0123\naws_account_id = 222233334444\n",
        )
        .unwrap();
        assert_eq!(
            table.account_of("KEYDOTHER000000000"),
            Some(Some("222233334444"))
        );
    }

    #[test]
    fn bad_files_are_named_without_their_secrets() {
        for (text, expected) in [
            (
                "aws_access_key_id = AKIDEXAMPLE0000001\n",
                "outside any `[profile]`",
            ),
            (
                "[a]\naws_access_key_id = AKIDEXAMPLE0000001\n",
                "needs both",
            ),
            (
                "[a]\naws_access_key_id = short\naws_secret_access_key = s3cretvalue-0123456789\n",
                "16 to 128",
            ),
            (
                "[a]\naws_access_key_id = AKIDEXAMPLE0000001\naws_secret_access_key = tiny\n",
                "at least 16",
            ),
            (
                "[a]\naws_access_key_id = AKIDEXAMPLE0000001\naws_secret_access_key = s3cretvalue-0123456789\naws_session_token = s3cretvalue-0123456789\n",
                "session tokens",
            ),
            (
                "[a]\naws_acces_key_id = AKIDEXAMPLE0000001\n",
                "unknown key `aws_acces_key_id`",
            ),
            (
                "[a]\naws_access_key_id = AKIDEXAMPLE0000001\naws_secret_access_key = s3cretvalue-0123456789\naws_account_id = 2222-3333-4444\n",
                "profile `a`: aws_account_id must be a 12-digit AWS account id",
            ),
            ("[a\n", "`[name]`"),
            ("[a]\njust words\n", "expected `name = value`"),
            (
                "[a]\naws_access_key_id = AKIDEXAMPLE0000001\naws_secret_access_key = s3cretvalue-0123456789\n[a]\n",
                "appears twice",
            ),
            (
                "[a]\naws_access_key_id = AKIDEXAMPLE0000001\naws_secret_access_key = s3cretvalue-0123456789\n[b]\naws_access_key_id = AKIDEXAMPLE0000001\naws_secret_access_key = s3cretvalue-9876543210\n",
                "same access key id",
            ),
        ] {
            let error = parse(text).err().unwrap();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains("s3cretvalue"), "{error}");
        }
    }

    #[test]
    fn the_first_start_writes_a_private_admin_pair_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/aws-credentials");
        ensure_file(&path, &["222233334444", "444455556666"]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let credentials = AwsCredentials::load(&path).unwrap();
        let id = credentials.access_key_id_of(ADMIN_PROFILE).unwrap();
        assert!(id.starts_with("KEYD") && id.len() == 20, "{id}");
        assert_eq!(credentials.secret_of(&id).unwrap().len(), 48);
        let table = credentials.table();
        assert_eq!(table.account_of(&id), Some(None), "the sidecar's own");
        let mut ids = vec![id.clone()];
        for account in ["222233334444", "444455556666"] {
            let other = credentials
                .access_key_id_of(&admin_profile_of(account))
                .unwrap();
            assert_eq!(table.account_of(&other), Some(Some(account)));
            assert_eq!(credentials.secret_of(&other).unwrap().len(), 48);
            ids.push(other);
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "a pair of its own for each account");
        let text = std::fs::read_to_string(&path).unwrap();
        ensure_file(&path, &["333344445555"]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "never rewritten"
        );
        // Readable by others: refused, and the reload keeps the keys in force.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = credentials.reload().unwrap_err().to_string();
        assert!(error.contains("may be read by others"), "{error}");
        assert!(credentials.secret_of(&id).is_some());
    }
}
