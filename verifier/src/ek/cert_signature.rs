//! Certificate signature verification for EK certificate paths, in pure
//! Rust (RustCrypto): TPM vendors' CAs sign with ECDSA on P-256, P-384 and
//! P-521 (Infineon OPTIGA ECC Root CA 2, Nuvoton ECC521, STSAFE ECC Root
//! 02) and with RSA PKCS#1 v1.5 or RSA-PSS, with SHA-256/384/512; RSA EK
//! certificates are signed by ECDSA CAs and the other way round. ring,
//! behind x509-parser's `verify`, has no P-521, hence this module.
//!
//! SHA-1 is refused (the caller reports it as a weak signature); any other
//! algorithm, hash or key outside this set is unsupported, which is not the
//! same as a forged signature.

use ecdsa::signature::hazmat::PrehashVerifier as _;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use x509_parser::certificate::X509Certificate;
use x509_parser::signature_algorithm::{MaskGenAlgorithm, RsaSsaPssParams};
use x509_parser::x509::SubjectPublicKeyInfo;

const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_SHA256_RSA: &str = "1.2.840.113549.1.1.11";
const OID_SHA384_RSA: &str = "1.2.840.113549.1.1.12";
const OID_SHA512_RSA: &str = "1.2.840.113549.1.1.13";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const OID_ECDSA_SHA512: &str = "1.2.840.10045.4.3.4";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";
const OID_SHA1: &str = "1.3.14.3.2.26";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";
const OID_SHA512: &str = "2.16.840.1.101.3.4.2.3";
const OID_MGF1: &str = "1.2.840.113549.1.1.8";

/// Why a certificate's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignatureFailure {
    /// The signature does not verify with this issuer key.
    Bad,
    /// Signed with SHA-1 (including RSA-PSS with its SHA-1 defaults).
    Weak,
    /// An algorithm, hash, curve or key this verifier does not implement.
    Unsupported(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: &str) -> Result<Self, SignatureFailure> {
        match oid {
            OID_SHA256 => Ok(Self::Sha256),
            OID_SHA384 => Ok(Self::Sha384),
            OID_SHA512 => Ok(Self::Sha512),
            OID_SHA1 => Err(SignatureFailure::Weak),
            other => Err(SignatureFailure::Unsupported(format!("hash {other}"))),
        }
    }

    fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(message).to_vec(),
            Self::Sha384 => Sha384::digest(message).to_vec(),
            Self::Sha512 => Sha512::digest(message).to_vec(),
        }
    }
}

enum Scheme {
    Ecdsa(Hash),
    Pkcs1v15(Hash),
    Pss { hash: Hash, salt_length: usize },
}

/// The scheme of `cert`'s signature: known before any issuer is tried.
fn scheme(cert: &X509Certificate<'_>) -> Result<Scheme, SignatureFailure> {
    let algorithm = &cert.signature_algorithm;
    match algorithm.algorithm.to_id_string().as_str() {
        OID_ECDSA_SHA256 => Ok(Scheme::Ecdsa(Hash::Sha256)),
        OID_ECDSA_SHA384 => Ok(Scheme::Ecdsa(Hash::Sha384)),
        OID_ECDSA_SHA512 => Ok(Scheme::Ecdsa(Hash::Sha512)),
        OID_SHA256_RSA => Ok(Scheme::Pkcs1v15(Hash::Sha256)),
        OID_SHA384_RSA => Ok(Scheme::Pkcs1v15(Hash::Sha384)),
        OID_SHA512_RSA => Ok(Scheme::Pkcs1v15(Hash::Sha512)),
        OID_RSASSA_PSS => {
            // Absent parameters mean SHA-1, MGF1-SHA-1, salt 20.
            let Some(parameters) = algorithm.parameters.clone() else {
                return Err(SignatureFailure::Weak);
            };
            let params = RsaSsaPssParams::try_from(parameters).map_err(|e| {
                SignatureFailure::Unsupported(format!(
                    "RSASSA-PSS with unreadable parameters ({e})"
                ))
            })?;
            let hash = Hash::from_oid(&params.hash_algorithm_oid().to_id_string())?;
            let mgf = params.mask_gen_algorithm().map_err(|e| {
                SignatureFailure::Unsupported(format!("RSASSA-PSS mask generation ({e})"))
            })?;
            let MaskGenAlgorithm {
                mgf: mgf_oid,
                hash: mgf_hash,
            } = mgf;
            if mgf_oid.to_id_string() != OID_MGF1 {
                return Err(SignatureFailure::Unsupported(format!(
                    "RSASSA-PSS mask generation {mgf_oid}"
                )));
            }
            if Hash::from_oid(&mgf_hash.to_id_string())? != hash {
                return Err(SignatureFailure::Unsupported(
                    "RSASSA-PSS with an MGF1 hash other than the message hash".into(),
                ));
            }
            Ok(Scheme::Pss {
                hash,
                salt_length: params.salt_length() as usize,
            })
        }
        other => Err(SignatureFailure::Unsupported(other.to_owned())),
    }
}

/// Checks, before any issuer is looked for, that `cert` is signed with an
/// algorithm this module verifies.
pub(crate) fn check_algorithm(cert: &X509Certificate<'_>) -> Result<(), SignatureFailure> {
    scheme(cert).map(|_| ())
}

/// Verifies an ECDSA signature (DER) over `prehash` with a SEC1 point of
/// the curve of `$module`.
macro_rules! verify_ecdsa {
    ($module:ident, $key:expr, $prehash:expr, $signature:expr) => {
        match (
            $module::ecdsa::VerifyingKey::from_sec1_bytes($key),
            $module::ecdsa::Signature::from_der($signature),
        ) {
            (Ok(key), Ok(signature)) => key.verify_prehash($prehash, &signature).is_ok(),
            _ => false,
        }
    };
}

/// Verifies `cert`'s signature with `issuer`'s public key.
pub(crate) fn verify(
    cert: &X509Certificate<'_>,
    issuer: &SubjectPublicKeyInfo<'_>,
) -> Result<(), SignatureFailure> {
    let scheme = scheme(cert)?;
    let message = cert.tbs_certificate.as_ref();
    let signature: &[u8] = &cert.signature_value.data;
    let key_algorithm = issuer.algorithm.algorithm.to_id_string();
    let key_bytes: &[u8] = &issuer.subject_public_key.data;
    match scheme {
        Scheme::Ecdsa(hash) => {
            if key_algorithm != OID_EC_PUBLIC_KEY {
                // An ECDSA signature and a non-EC issuer key: not this issuer.
                return Err(SignatureFailure::Bad);
            }
            let curve = issuer
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string())
                .unwrap_or_default();
            let prehash = hash.digest(message);
            let verified = match curve.as_str() {
                OID_P256 => verify_ecdsa!(p256, key_bytes, &prehash, signature),
                OID_P384 => verify_ecdsa!(p384, key_bytes, &prehash, signature),
                OID_P521 => verify_ecdsa!(p521, key_bytes, &prehash, signature),
                other => {
                    return Err(SignatureFailure::Unsupported(format!(
                        "ECDSA on curve {other:?}"
                    )))
                }
            };
            verified.then_some(()).ok_or(SignatureFailure::Bad)
        }
        Scheme::Pkcs1v15(hash) | Scheme::Pss { hash, .. } => {
            use rsa::pkcs1::DecodeRsaPublicKey as _;
            // RSA keys are labelled rsaEncryption, or id-RSASSA-PSS on
            // PSS-only CA keys.
            if key_algorithm != OID_RSA_ENCRYPTION && key_algorithm != OID_RSASSA_PSS {
                return Err(SignatureFailure::Bad);
            }
            let key =
                rsa::RsaPublicKey::from_pkcs1_der(key_bytes).map_err(|_| SignatureFailure::Bad)?;
            let hashed = hash.digest(message);
            let result = match (scheme, hash) {
                (Scheme::Pkcs1v15(_), Hash::Sha256) => {
                    key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &hashed, signature)
                }
                (Scheme::Pkcs1v15(_), Hash::Sha384) => {
                    key.verify(rsa::Pkcs1v15Sign::new::<Sha384>(), &hashed, signature)
                }
                (Scheme::Pkcs1v15(_), Hash::Sha512) => {
                    key.verify(rsa::Pkcs1v15Sign::new::<Sha512>(), &hashed, signature)
                }
                (Scheme::Pss { salt_length, .. }, Hash::Sha256) => key.verify(
                    rsa::Pss::new_with_salt::<Sha256>(salt_length),
                    &hashed,
                    signature,
                ),
                (Scheme::Pss { salt_length, .. }, Hash::Sha384) => key.verify(
                    rsa::Pss::new_with_salt::<Sha384>(salt_length),
                    &hashed,
                    signature,
                ),
                (Scheme::Pss { salt_length, .. }, Hash::Sha512) => key.verify(
                    rsa::Pss::new_with_salt::<Sha512>(salt_length),
                    &hashed,
                    signature,
                ),
                (Scheme::Ecdsa(_), _) => unreachable!("matched above"),
            };
            result.map_err(|_| SignatureFailure::Bad)
        }
    }
}
