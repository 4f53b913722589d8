//! AES-256-GCM for the local backend (aws-lc-rs): the local KMS seals data keys under a
//! key's material, and the scanning service seals snippets under a data key. A sealed
//! value is the 12-byte random nonce, then the ciphertext and its 16-byte tag; the
//! additional data binds it to where it belongs, so a value moved elsewhere does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use zeroize::Zeroizing;

use crate::backend::BackendError;

/// Bytes in the clear that must not outlive their use (key material, a data key, a
/// snippet): wiped from memory when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// The length of a key (key material or data key), in bytes.
pub const KEY_LEN: usize = 32;

/// A new random 256-bit key, wiped from memory when dropped.
pub fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, BackendError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(key.as_mut_slice())
        .map_err(|_| BackendError::internal("no random bytes"))?;
    Ok(key)
}

fn cipher(key: &[u8]) -> Result<RandomizedNonceKey, BackendError> {
    RandomizedNonceKey::new(&AES_256_GCM, key)
        .map_err(|_| BackendError::internal("a stored key is not 256 bits"))
}

/// Encrypts `plaintext` under `key`, bound to `aad`.
pub fn seal(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
    // Wiped when dropped: it holds the plaintext until it is encrypted in place.
    let mut buffer = Zeroizing::new(plaintext.to_vec());
    let nonce = cipher(key)?
        .seal_in_place_append_tag(Aad::from(aad), &mut *buffer)
        .map_err(|_| BackendError::internal("encryption failed"))?;
    let mut sealed = nonce.as_ref().to_vec();
    sealed.extend_from_slice(&buffer);
    Ok(sealed)
}

/// Decrypts what [`seal`] made with the same key and `aad`; fails on any other input. The
/// plaintext is wiped from memory when dropped.
pub fn open(key: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Secret, BackendError> {
    let broken = || BackendError::internal("a stored ciphertext does not decrypt");
    let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN).ok_or_else(broken)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| broken())?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let len = cipher(key)?
        .open_in_place(nonce, Aad::from(aad), &mut buffer)
        .map_err(|_| broken())?
        .len();
    // The tag after the plaintext goes; the whole buffer is still wiped on drop.
    buffer.truncate(len);
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_binding() {
        let key = random_key().unwrap();
        let sealed = seal(&*key, b"finding-1", b"secret code").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"secret code"));
        assert_eq!(
            open(&*key, b"finding-1", &sealed).unwrap().as_slice(),
            b"secret code"
        );
        assert!(open(&*key, b"finding-2", &sealed).is_err());
        assert!(open(&*random_key().unwrap(), b"finding-1", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert!(open(&*key, b"finding-1", &tampered).is_err());
        assert!(open(&*key, b"finding-1", &sealed[..5]).is_err());
        // A fresh nonce each time.
        assert_ne!(
            seal(&*key, b"x", b"y").unwrap(),
            seal(&*key, b"x", b"y").unwrap()
        );
    }
}
