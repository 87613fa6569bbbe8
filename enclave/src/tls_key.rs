//! The enclave's TLS key (DESIGN §3.3): generated at start inside this
//! process, held only in memory, never written, logged or exported. Its
//! public half is what the evidence binds (the SPKI hash in the quote's
//! qualifying data and in the launch measurements); the private half signs
//! TLS handshakes and nothing else.

use aver_crds::Sha256Digest;
use rcgen::{KeyPair, PublicKeyData as _};
use sha2::{Digest as _, Sha256};

/// Why no key could be generated (the system RNG failed).
#[derive(Debug, thiserror::Error)]
#[error("cannot generate the TLS key: {0}")]
pub struct TlsKeyError(#[from] rcgen::Error);

/// An ECDSA P-256 key pair that exists only in this process's memory.
///
/// Deliberately neither `Clone` nor serialisable, and its `Debug` shows the
/// public half only, so that the private key cannot leak through a log line
/// or a stray copy.
pub struct TlsKey {
    key_pair: KeyPair,
    spki_der: Vec<u8>,
}

impl TlsKey {
    /// Generates a fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, TlsKeyError> {
        let key_pair = KeyPair::generate()?;
        let spki_der = key_pair.subject_public_key_info();
        Ok(Self { key_pair, spki_der })
    }

    /// DER SubjectPublicKeyInfo of the public key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 of [`Self::spki_der`]: the value the evidence binds and a
    /// client pins.
    pub fn spki_sha256(&self) -> Sha256Digest {
        Sha256Digest(Sha256::digest(&self.spki_der).into())
    }

    /// The key pair, for the TLS server to build its certificate and signer.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }
}

impl std::fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsKey")
            .field("spki_sha256", &self.spki_sha256())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::DecodePublicKey as _;

    #[test]
    fn spki_is_a_p256_public_key_and_keys_are_fresh() {
        let a = TlsKey::generate().unwrap();
        let b = TlsKey::generate().unwrap();
        assert!(p256::PublicKey::from_public_key_der(a.spki_der()).is_ok());
        assert_ne!(a.spki_sha256(), b.spki_sha256());
        assert_eq!(
            a.spki_sha256().0,
            <[u8; 32]>::from(Sha256::digest(a.spki_der()))
        );
    }

    #[test]
    fn debug_shows_no_private_key() {
        let key = TlsKey::generate().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.spki_sha256().to_string()), "{shown}");
        let private_der = key.key_pair().serialize_der();
        assert!(!shown.contains(&hex::encode(&private_der)));
        assert!(!shown.to_lowercase().contains("private"));
    }
}
