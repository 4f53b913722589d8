//! The key-encryption key of the local KMS: every key's material is stored sealed under it
//! (AES-256-GCM, bound to the key id), and it lives in a file of its own, so a copy of the
//! store alone reveals no key. The file is made on first start (0600, hex) and read on
//! every start after it, with the checks of any secret the server created.

use std::path::Path;

use zeroize::Zeroizing;

use super::crypto::{self, KEY_LEN, Secret};
use crate::backend::BackendError;

/// Length of the file's content: the key in hex.
const HEX_LEN: usize = 2 * KEY_LEN;

pub struct Kek {
    key: Zeroizing<[u8; KEY_LEN]>,
}

/// The additional data a key's sealed material is bound to, so that material moved to
/// another key's row does not open.
fn binding(key_id: &str) -> Vec<u8> {
    format!("inspector-keyd/key-material/v1\0{key_id}").into_bytes()
}

fn kek_error(path: &Path, e: impl std::fmt::Display) -> BackendError {
    BackendError::internal(format!("the key-encryption key `{}`: {e}", path.display()))
}

impl Kek {
    /// Reads the key at `path`, or makes one there when there is none and `may_create`
    /// (no material is sealed yet: making a new key would lose every key sealed under the
    /// missing one).
    pub fn load_or_create(path: &Path, may_create: bool) -> Result<Kek, BackendError> {
        match crate::files::read_private_secret(path, HEX_LEN).map_err(|e| kek_error(path, e))? {
            Some(hex) => Kek::from_hex(&hex)
                .ok_or_else(|| kek_error(path, format!("must hold {HEX_LEN} hexadecimal digits"))),
            None if may_create => Kek::create(path),
            None => Err(kek_error(
                path,
                "is missing, and the store holds key material sealed under it: restore the \
                 file (a new one would not open the keys)",
            )),
        }
    }

    fn from_hex(hex: &str) -> Option<Kek> {
        if hex.len() != HEX_LEN {
            return None;
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Kek { key })
    }

    fn create(path: &Path) -> Result<Kek, BackendError> {
        let key = crypto::random_key()?;
        crate::files::create_private_secret(path, key.as_slice())
            .map_err(|e| kek_error(path, e))?;
        Ok(Kek { key })
    }

    /// `material` sealed for the row of `key_id`.
    pub fn seal(&self, key_id: &str, material: &[u8]) -> Result<Vec<u8>, BackendError> {
        crypto::seal(self.key.as_slice(), &binding(key_id), material)
    }

    /// The material of `key_id` from its sealed row.
    pub fn open(&self, key_id: &str, sealed: &[u8]) -> Result<Secret, BackendError> {
        crypto::open(self.key.as_slice(), &binding(key_id), sealed).map_err(|_| {
            BackendError::internal(format!(
                "the key material of `{key_id}` does not open under the key-encryption key \
                 (the store and the key file do not belong together)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let made = Kek::load_or_create(&path, true).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = made.seal("key-1", b"material").unwrap();
        let read = Kek::load_or_create(&path, false).unwrap();
        assert_eq!(read.open("key-1", &sealed).unwrap().as_slice(), b"material");
        // Bound to the key id.
        assert!(read.open("key-2", &sealed).is_err());
    }

    #[test]
    fn a_missing_or_malformed_key_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let missing = Kek::load_or_create(&path, false).err().unwrap().to_string();
        assert!(missing.contains("is missing"), "{missing}");
        assert!(missing.contains(&path.display().to_string()), "{missing}");
        assert!(
            !path.exists(),
            "a key file was made where material needs the old one"
        );

        let mut file = crate::files::create_private(&path).unwrap();
        std::io::Write::write_all(&mut file, "zz".repeat(KEY_LEN).as_bytes()).unwrap();
        let malformed = Kek::load_or_create(&path, true).err().unwrap().to_string();
        assert!(malformed.contains("hexadecimal"), "{malformed}");

        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let open = Kek::load_or_create(&path, true).err().unwrap().to_string();
        assert!(open.contains("0600"), "{open}");
    }
}
