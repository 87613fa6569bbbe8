//! TPM2_MakeCredential done in software (TPM 2.0 Library, Part 1, §24 and
//! Annex B.10.4 / C.6.4; Part 3, TPM2_MakeCredential).
//!
//! The verifier wraps a random secret so that only a TPM holding the EK's
//! private key *and* having an object with the given name loaded can
//! unwrap it (TPM2_ActivateCredential). Doing this in software, with the EK
//! public key taken from a certificate the verifier checked, is what makes
//! the proof independent of the server: nothing the server says about its
//! EK is used.
//!
//! With `nameAlg` SHA-256 and the EK's symmetric algorithm AES-128-CFB (the
//! TCG default EK templates for RSA 2048 and NIST P-256):
//!
//! - `seed`: 32 random bytes, RSA-OAEP(SHA-256, label "IDENTITY\0")-encrypted
//!   to an RSA EK; or, for an ECC EK, `KDFe(Z, "IDENTITY", Qe.x, Qek.x)`
//!   where `Z` is the ECDH secret between a fresh ephemeral key `Qe` and the
//!   EK, and `Qe` is sent as the encrypted secret;
//! - `symKey = KDFa(seed, "STORAGE", name, ∅, 128)`;
//! - `encIdentity = AES-128-CFB(symKey, IV = 0, TPM2B_DIGEST(credential))`;
//! - `hmacKey = KDFa(seed, "INTEGRITY", ∅, ∅, 256)`;
//! - `integrity = HMAC-SHA256(hmacKey, encIdentity || name)`;
//! - credential blob (`TPM2B_ID_OBJECT` contents) = `TPM2B(integrity) ||
//!   encIdentity`.

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;

use super::kdf::{kdfa_sha256, kdfe_sha256};

/// Size of the seed and of the largest credential: the digest size of the
/// EK's name algorithm (SHA-256).
pub const SEED_BYTES: usize = 32;

/// The OAEP label of credential protection: "IDENTITY" with its NUL.
const IDENTITY_LABEL: &str = "IDENTITY\0";

type Aes128CfbEnc = cfb_mode::Encryptor<aes::Aes128>;

/// The public part of an endorsement key, as read from its certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum EkPublicKey {
    Rsa2048(rsa::RsaPublicKey),
    EccP256(p256::PublicKey),
}

impl std::fmt::Debug for EkPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rsa2048(_) => f.write_str("EkPublicKey::Rsa2048"),
            Self::EccP256(_) => f.write_str("EkPublicKey::EccP256"),
        }
    }
}

/// What TPM2_ActivateCredential takes: the contents of a `TPM2B_ID_OBJECT`
/// and of a `TPM2B_ENCRYPTED_SECRET` (without their size prefixes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialBlob {
    pub id_object: Vec<u8>,
    pub encrypted_secret: Vec<u8>,
}

/// Why a credential could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    #[error("a credential must be 1 to {SEED_BYTES} bytes, got {0}")]
    BadCredentialSize(usize),
    #[error("the object name must be a SHA-256 TPM name (34 bytes), got {0} bytes")]
    BadName(usize),
    #[error("RSA-OAEP encryption to the EK failed: {0}")]
    Rsa(String),
    #[error("a P-256 point did not encode as 65 uncompressed bytes")]
    Ecc,
}

/// Wraps `credential` for the TPM whose EK is `ek`, releasable only for
/// the object named `object_name` (a SHA-256 TPM name, `000b || digest`).
pub fn make_credential(
    ek: &EkPublicKey,
    credential: &[u8],
    object_name: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<CredentialBlob, CredentialError> {
    if credential.is_empty() || credential.len() > SEED_BYTES {
        return Err(CredentialError::BadCredentialSize(credential.len()));
    }
    if object_name.len() != 2 + SEED_BYTES || object_name[..2] != [0x00, 0x0b] {
        return Err(CredentialError::BadName(object_name.len()));
    }
    let (seed, encrypted_secret) = protect_seed(ek, rng)?;
    Ok(wrap(&seed, credential, object_name, encrypted_secret))
}

/// A fresh seed and its encryption to the EK.
fn protect_seed(
    ek: &EkPublicKey,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<([u8; SEED_BYTES], Vec<u8>), CredentialError> {
    match ek {
        EkPublicKey::Rsa2048(key) => {
            let mut seed = [0u8; SEED_BYTES];
            rng.fill_bytes(&mut seed);
            let padding = rsa::Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL);
            let encrypted = key
                .encrypt(rng, padding, &seed)
                .map_err(|e| CredentialError::Rsa(e.to_string()))?;
            Ok((seed, encrypted))
        }
        EkPublicKey::EccP256(key) => {
            use p256::elliptic_curve::sec1::ToEncodedPoint as _;
            let ephemeral = p256::ecdh::EphemeralSecret::random(rng);
            let ephemeral_point = ephemeral.public_key().to_encoded_point(false);
            let ek_point = key.to_encoded_point(false);
            // Uncompressed SEC1 points of P-256: 0x04 || x (32) || y (32).
            let (Some(qe), Some(ek_xy)) = (
                ephemeral_point.as_bytes().get(1..65),
                ek_point.as_bytes().get(1..65),
            ) else {
                return Err(CredentialError::Ecc);
            };
            let (qe_x, qe_y) = qe.split_at(32);
            let shared = ephemeral.diffie_hellman(key);
            let seed = kdfe_sha256(
                shared.raw_secret_bytes(),
                "IDENTITY",
                qe_x,
                &ek_xy[..32],
                SEED_BYTES,
            );
            let mut seed_array = [0u8; SEED_BYTES];
            seed_array.copy_from_slice(&seed);
            // TPMS_ECC_POINT: TPM2B x, TPM2B y.
            let mut encrypted = Vec::with_capacity(4 + 64);
            encrypted.extend_from_slice(&32u16.to_be_bytes());
            encrypted.extend_from_slice(qe_x);
            encrypted.extend_from_slice(&32u16.to_be_bytes());
            encrypted.extend_from_slice(qe_y);
            Ok((seed_array, encrypted))
        }
    }
}

/// The symmetric half of MakeCredential: encryption and integrity of the
/// credential under keys derived from `seed` and the object's name.
fn wrap(
    seed: &[u8; SEED_BYTES],
    credential: &[u8],
    object_name: &[u8],
    encrypted_secret: Vec<u8>,
) -> CredentialBlob {
    let sym_key = kdfa_sha256(seed, "STORAGE", object_name, &[], 16);
    let mut enc_identity = Vec::with_capacity(2 + credential.len());
    enc_identity.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    enc_identity.extend_from_slice(credential);
    let iv = [0u8; 16];
    Aes128CfbEnc::new(sym_key.as_slice().into(), &iv.into()).encrypt(&mut enc_identity);

    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], SEED_BYTES);
    let integrity = hmac_sha256(&hmac_key, &[&enc_identity, object_name]);

    let mut id_object = Vec::with_capacity(2 + integrity.len() + enc_identity.len());
    id_object.extend_from_slice(&(integrity.len() as u16).to_be_bytes());
    id_object.extend_from_slice(&integrity);
    id_object.extend_from_slice(&enc_identity);
    CredentialBlob {
        id_object,
        encrypted_secret,
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The TPM's side (TPM2_ActivateCredential) in software, for tests of the
/// format: recovers the seed with the EK's private key, checks the
/// integrity HMAC against `object_name`, and decrypts the credential.
#[cfg(test)]
pub(crate) mod tpm_side {
    use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};

    use super::*;

    pub(crate) enum EkPrivateKey {
        Rsa(Box<rsa::RsaPrivateKey>),
        Ecc(p256::SecretKey),
    }

    pub(crate) fn activate(
        ek: &EkPrivateKey,
        blob: &CredentialBlob,
        object_name: &[u8],
    ) -> Result<Vec<u8>, &'static str> {
        let seed = match ek {
            EkPrivateKey::Rsa(key) => key
                .decrypt(
                    rsa::Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL),
                    &blob.encrypted_secret,
                )
                .map_err(|_| "OAEP decryption failed")?,
            EkPrivateKey::Ecc(key) => {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                let s = &blob.encrypted_secret;
                if s.len() != 68 || s[..2] != [0, 32] || s[34..36] != [0, 32] {
                    return Err("bad ECC point");
                }
                let mut sec1 = vec![4u8];
                sec1.extend_from_slice(&s[2..34]);
                sec1.extend_from_slice(&s[36..68]);
                let qe = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| "bad point")?;
                let shared = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), qe.as_affine());
                let ek_point = key.public_key().to_encoded_point(false);
                kdfe_sha256(
                    shared.raw_secret_bytes(),
                    "IDENTITY",
                    &s[2..34],
                    ek_point.x().ok_or("no x")?,
                    SEED_BYTES,
                )
            }
        };
        let id = &blob.id_object;
        if id.len() < 2 + SEED_BYTES || id[..2] != [0, 32] {
            return Err("bad id object");
        }
        let (integrity, enc_identity) = id[2..].split_at(SEED_BYTES);
        let hmac_key = kdfa_sha256(&seed, "INTEGRITY", &[], &[], SEED_BYTES);
        if hmac_sha256(&hmac_key, &[enc_identity, object_name]) != integrity {
            return Err("integrity check failed");
        }
        let sym_key = kdfa_sha256(&seed, "STORAGE", object_name, &[], 16);
        let mut plain = enc_identity.to_vec();
        cfb_mode::Decryptor::<aes::Aes128>::new(sym_key.as_slice().into(), &[0u8; 16].into())
            .decrypt(&mut plain);
        let size = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
        if plain.len() != 2 + size {
            return Err("bad credential size");
        }
        Ok(plain[2..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::tpm_side::{activate, EkPrivateKey};
    use super::*;

    fn name(byte: u8) -> Vec<u8> {
        let mut n = vec![0x00, 0x0b];
        n.extend([byte; 32]);
        n
    }

    #[test]
    fn rsa_credential_round_trips_only_for_its_name() {
        let private = aver_testkit::rsa_ek();
        let ek = EkPublicKey::Rsa2048(private.to_public_key());
        let mut rng = rand::thread_rng();
        let blob = make_credential(&ek, &[9; 32], &name(1), &mut rng).unwrap();
        assert_eq!(blob.encrypted_secret.len(), 256);
        assert_eq!(blob.id_object.len(), 2 + 32 + 2 + 32);
        let key = EkPrivateKey::Rsa(Box::new(private));
        assert_eq!(activate(&key, &blob, &name(1)), Ok(vec![9; 32]));
        assert_eq!(
            activate(&key, &blob, &name(2)),
            Err("integrity check failed")
        );
    }

    #[test]
    fn ecc_credential_round_trips_only_for_its_name() {
        let mut rng = rand::thread_rng();
        let private = p256::SecretKey::random(&mut rng);
        let ek = EkPublicKey::EccP256(private.public_key());
        let blob = make_credential(&ek, b"short secret", &name(3), &mut rng).unwrap();
        assert_eq!(blob.encrypted_secret.len(), 68);
        let key = EkPrivateKey::Ecc(private);
        assert_eq!(
            activate(&key, &blob, &name(3)),
            Ok(b"short secret".to_vec())
        );
        assert!(activate(&key, &blob, &name(4)).is_err());
        // Another TPM's EK cannot recover the seed.
        let other = EkPrivateKey::Ecc(p256::SecretKey::random(&mut rng));
        assert!(activate(&other, &blob, &name(3)).is_err());
    }

    #[test]
    fn sizes_are_checked() {
        let mut rng = rand::thread_rng();
        let ek = EkPublicKey::EccP256(p256::SecretKey::random(&mut rng).public_key());
        assert_eq!(
            make_credential(&ek, &[], &name(1), &mut rng),
            Err(CredentialError::BadCredentialSize(0))
        );
        assert_eq!(
            make_credential(&ek, &[1; 33], &name(1), &mut rng),
            Err(CredentialError::BadCredentialSize(33))
        );
        assert_eq!(
            make_credential(&ek, &[1; 32], &[0, 4, 1], &mut rng),
            Err(CredentialError::BadName(3))
        );
    }
}
