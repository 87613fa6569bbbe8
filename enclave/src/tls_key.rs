//! The enclave's TLS key (docs/architecture.md#key-residency): generated at start inside this
//! process, held only in memory, never written, logged or exported. Its
//! public half is what the evidence binds (the SPKI hash in the quote's
//! qualifying data and in the launch measurements); the private half signs
//! TLS handshakes and the enclave's self-signed certificate, nothing else.
//!
//! The private scalar exists in exactly one place: the first 32 bytes of a
//! `LockedPage` (locked in RAM, left out of core dumps, zeroed on drop).
//! The random bytes are written there directly by the kernel. No library
//! gets a long-lived copy: rcgen signs the certificate through
//! [`rcgen::SigningKey`] and rustls signs handshakes through
//! [`rustls::sign::SigningKey`], both implemented here. Each signature
//! builds a `p256` signing key from the page, uses it and drops it (it
//! zeroizes itself); the stack the computation used, where the arithmetic
//! leaves intermediate copies, is then overwritten (`scrub_stack`).

use std::sync::Arc;

use aver_crds::Sha256Digest;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, Signature};
use rcgen::PublicKeyData as _;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::{Digest as _, Sha256};

use crate::locked_page::{LockedPage, LockedPageError};

/// Length of a P-256 private scalar, big-endian.
const SCALAR_LEN: usize = 32;

/// Draws of random bytes tried before giving up on finding a scalar in
/// `[1, n)`: one draw fails with probability below 2^-32.
const SCALAR_DRAWS: usize = 4;

/// How much stack below the signer's frame [`scrub_stack`] overwrites:
/// comfortably more than a P-256 signature or key derivation uses.
const SCRUB_STACK_BYTES: usize = 32 * 1024;

/// Why no key could be generated.
#[derive(Debug, thiserror::Error)]
pub enum TlsKeyError {
    #[error("cannot generate the TLS key: {0}")]
    Page(#[from] LockedPageError),
    #[error("cannot generate the TLS key: the system random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("cannot generate the TLS key: {SCALAR_DRAWS} random draws gave no valid P-256 scalar")]
    NoScalar,
}

/// An ECDSA P-256 key pair that exists only in this process's memory.
///
/// Deliberately neither `Clone` nor serialisable, and its `Debug` shows the
/// public half only, so that the private key cannot leak through a log line
/// or a stray copy. Handles given to rustls share the same locked page.
pub struct TlsKey {
    inner: Arc<KeyMaterial>,
}

/// The one copy of the private scalar and the public key derived from it.
struct KeyMaterial {
    /// The scalar in the first [`SCALAR_LEN`] bytes; the rest stays zero.
    secret: LockedPage,
    /// Uncompressed SEC1 point (`04 || X || Y`).
    public_point: Vec<u8>,
    spki_der: Vec<u8>,
}

impl TlsKey {
    /// Generates a fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, TlsKeyError> {
        let mut secret = LockedPage::new()?;
        let mut public_point = None;
        for _ in 0..SCALAR_DRAWS {
            getrandom::getrandom(&mut secret.bytes_mut()[..SCALAR_LEN])
                .map_err(TlsKeyError::Random)?;
            public_point = derive_public_point(scalar(&secret));
            if public_point.is_some() {
                break;
            }
        }
        scrub_stack();
        let Some(public_point) = public_point else {
            return Err(TlsKeyError::NoScalar);
        };
        let mut material = KeyMaterial {
            secret,
            public_point,
            spki_der: Vec::new(),
        };
        material.spki_der = CertificateSigner(&material).subject_public_key_info();
        Ok(Self {
            inner: Arc::new(material),
        })
    }

    /// DER SubjectPublicKeyInfo of the public key.
    pub fn spki_der(&self) -> &[u8] {
        &self.inner.spki_der
    }

    /// SHA-256 of [`Self::spki_der`]: the value the evidence binds and a
    /// client pins.
    pub fn spki_sha256(&self) -> Sha256Digest {
        Sha256Digest(Sha256::digest(&self.inner.spki_der).into())
    }

    /// A self-signed certificate for this key, signed by it.
    pub fn self_signed(
        &self,
        params: &rcgen::CertificateParams,
    ) -> Result<rcgen::Certificate, rcgen::Error> {
        params.self_signed(&CertificateSigner(&self.inner))
    }

    /// The signer rustls uses for TLS 1.3 handshakes (ECDSA P-256 SHA-256),
    /// backed by this key's locked page.
    pub fn rustls_signing_key(&self) -> Arc<dyn rustls::sign::SigningKey> {
        Arc::new(HandshakeSigner(self.inner.clone()))
    }

    /// Address of the locked page holding the scalar (for tests that look
    /// the page up in `/proc/self/smaps`).
    #[cfg(test)]
    fn secret_address(&self) -> usize {
        self.inner.secret.address()
    }
}

impl std::fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsKey")
            .field("spki_sha256", &self.spki_sha256())
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// ECDSA P-256 with SHA-256 over `message`, DER-encoded (as X.509 and
    /// TLS 1.3 both want it).
    fn sign(&self, message: &[u8]) -> Result<DerSignature, p256::ecdsa::Error> {
        let signature = sign_with_scalar(scalar(&self.secret), message);
        // The secret-bearing frames were all below this one and have
        // returned; overwrite what they left.
        scrub_stack();
        Ok(signature?.to_der())
    }
}

/// The scalar's bytes, borrowed from the locked page.
fn scalar(page: &LockedPage) -> &p256::FieldBytes {
    p256::FieldBytes::from_slice(&page.bytes()[..SCALAR_LEN])
}

/// Every local that holds the secret (the signing key, the scalar in limb
/// form, the RFC 6979 nonce state) lives in this frame or below it, never in
/// the caller's, so that [`scrub_stack`] called by the caller covers them.
#[inline(never)]
fn sign_with_scalar(
    scalar: &p256::FieldBytes,
    message: &[u8],
) -> Result<Signature, p256::ecdsa::Error> {
    // Zeroized when dropped at the end of this function.
    let key = p256::ecdsa::SigningKey::from_bytes(scalar)?;
    key.try_sign(message)
}

/// The public point of `scalar`, or `None` if it is not in `[1, n)`. Like
/// [`sign_with_scalar`], keeps its secret-bearing locals in its own frame.
#[inline(never)]
fn derive_public_point(scalar: &p256::FieldBytes) -> Option<Vec<u8>> {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    let secret = p256::SecretKey::from_bytes(scalar).ok()?;
    let point = secret.public_key().to_encoded_point(false);
    Some(point.as_bytes().to_vec())
}

/// Overwrites [`SCRUB_STACK_BYTES`] of stack below the caller's frame with
/// zeros. The elliptic-curve arithmetic copies the scalar (and values
/// derived from it) into locals that are not zeroized when they go out of
/// scope; those frames have returned when this runs, and this frame covers
/// the memory they used (the same approach as libgcrypt's
/// `_gcry_burn_stack`).
#[inline(never)]
fn scrub_stack() {
    use zeroize::Zeroize as _;
    let mut scratch = [0u8; SCRUB_STACK_BYTES];
    // Volatile writes: not elided although the array is never read.
    scratch.zeroize();
    std::hint::black_box(&scratch);
}

/// rcgen's view of the key: signs the certificate without rcgen ever
/// holding private key bytes. Also what writes the SPKI, so that the one in
/// the certificate and the one the evidence binds are the same bytes.
struct CertificateSigner<'a>(&'a KeyMaterial);

impl rcgen::PublicKeyData for CertificateSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.0.public_point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for CertificateSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0
            .sign(msg)
            .map(|signature| signature.as_bytes().to_vec())
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// rustls's view of the key, for the server's certified key.
#[derive(Clone)]
struct HandshakeSigner(Arc<KeyMaterial>);

impl std::fmt::Debug for HandshakeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeSigner")
            .field("scheme", &SignatureScheme::ECDSA_NISTP256_SHA256)
            .finish_non_exhaustive()
    }
}

impl rustls::sign::SigningKey for HandshakeSigner {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.0.spki_der.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl rustls::sign::Signer for HandshakeSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign(message)
            .map(|signature| signature.as_bytes().to_vec())
            .map_err(|_| rustls::Error::General("ECDSA P-256 signing failed".into()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;

    fn verifying_key(key: &TlsKey) -> p256::ecdsa::VerifyingKey {
        p256::ecdsa::VerifyingKey::from_public_key_der(key.spki_der()).unwrap()
    }

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
        let scalar = hex::encode(scalar(&key.inner.secret));
        assert!(!shown.contains(&scalar));
        assert!(!shown.to_lowercase().contains("private"));
        let signer = format!("{:?}", key.rustls_signing_key());
        assert!(!signer.contains(&scalar), "{signer}");
    }

    #[test]
    fn the_scalar_is_the_private_half_of_the_spki() {
        let key = TlsKey::generate().unwrap();
        let secret = p256::SecretKey::from_bytes(scalar(&key.inner.secret)).unwrap();
        assert_eq!(
            secret.public_key(),
            p256::PublicKey::from_public_key_der(key.spki_der()).unwrap()
        );
        // The rest of the page holds nothing.
        assert!(key.inner.secret.bytes()[SCALAR_LEN..]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn handshake_signatures_verify_against_the_spki() {
        let key = TlsKey::generate().unwrap();
        let signing_key = key.rustls_signing_key();
        assert_eq!(signing_key.algorithm(), SignatureAlgorithm::ECDSA);
        assert_eq!(signing_key.public_key().unwrap().as_ref(), key.spki_der());
        assert!(signing_key
            .choose_scheme(&[SignatureScheme::RSA_PSS_SHA256, SignatureScheme::ED25519])
            .is_none());
        let signer = signing_key
            .choose_scheme(&[
                SignatureScheme::RSA_PSS_SHA256,
                SignatureScheme::ECDSA_NISTP256_SHA256,
            ])
            .unwrap();
        assert_eq!(signer.scheme(), SignatureScheme::ECDSA_NISTP256_SHA256);
        let message = b"TLS 1.3, server CertificateVerify";
        let der = signer.sign(message).unwrap();
        let signature = Signature::from_der(&der).unwrap();
        verifying_key(&key).verify(message, &signature).unwrap();
        assert!(verifying_key(&key)
            .verify(b"another message", &signature)
            .is_err());
    }

    #[test]
    fn the_certificate_is_self_signed_by_the_key() {
        let key = TlsKey::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = key.self_signed(&params).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        assert_eq!(parsed.public_key().raw, key.spki_der());
        let signature = Signature::from_der(&parsed.signature_value.data).unwrap();
        verifying_key(&key)
            .verify(parsed.tbs_certificate.as_ref(), &signature)
            .unwrap();
        // rustls agrees that certificate and signer belong together.
        let certified =
            rustls::sign::CertifiedKey::new(vec![cert.der().clone()], key.rustls_signing_key());
        certified.keys_match().unwrap();
    }

    #[test]
    fn the_scalar_lives_in_a_locked_page_left_out_of_core_dumps() {
        let key = TlsKey::generate().unwrap();
        let address = key.secret_address();
        let flags = crate::locked_page::vm_flags(address).expect("the key's page is mapped");
        assert!(flags.iter().any(|f| f == "lo"), "{flags:?}");
        assert!(flags.iter().any(|f| f == "dd"), "{flags:?}");
    }
}
