//! TPMT_SIGNATURE and its check against an AK public key.

use ring::signature as ring_sig;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};

use super::public::PublicKey;
use super::reader::Reader;
use super::{alg, digest, TpmParseError};

/// MAX_ECC_KEY_BYTES (P-521).
const MAX_ECC_PARAMETER: usize = 66;
/// MAX_RSA_KEY_BYTES (RSA 4096).
const MAX_RSA_SIGNATURE: usize = 512;

/// A signature as the TPM produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    Ecdsa {
        hash_alg: u16,
        r: Vec<u8>,
        s: Vec<u8>,
    },
    RsaSsa {
        hash_alg: u16,
        sig: Vec<u8>,
    },
    RsaPss {
        hash_alg: u16,
        sig: Vec<u8>,
    },
}

impl Signature {
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmParseError> {
        let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
        let sig_alg = r.u16()?;
        let sig = match sig_alg {
            alg::ECDSA => Self::Ecdsa {
                hash_alg: r.u16()?,
                r: r.tpm2b("signatureR", MAX_ECC_PARAMETER)?.to_vec(),
                s: r.tpm2b("signatureS", MAX_ECC_PARAMETER)?.to_vec(),
            },
            alg::RSASSA => Self::RsaSsa {
                hash_alg: r.u16()?,
                sig: r.tpm2b("sig", MAX_RSA_SIGNATURE)?.to_vec(),
            },
            alg::RSAPSS => Self::RsaPss {
                hash_alg: r.u16()?,
                sig: r.tpm2b("sig", MAX_RSA_SIGNATURE)?.to_vec(),
            },
            other => {
                return Err(TpmParseError::Unsupported {
                    structure: "TPMT_SIGNATURE",
                    what: "signature algorithm",
                    value: other,
                })
            }
        };
        r.finish()?;
        Ok(sig)
    }

    /// Whether this is a valid signature over `message` by `key`, with the
    /// signature's own hash algorithm (SHA-1, SHA-256, SHA-384 or SHA-512;
    /// whether SHA-1 is acceptable is the caller's decision, see
    /// [`Self::hash_alg`]). A mismatch between key type and signature type,
    /// or an unknown hash, is simply `false`.
    pub fn verifies(&self, key: &PublicKey, message: &[u8]) -> bool {
        match (self, key) {
            (Self::Ecdsa { hash_alg, r, s }, PublicKey::EccP256 { x, y }) => {
                let (Some(r), Some(s)) = (left_pad::<32>(r), left_pad::<32>(s)) else {
                    return false;
                };
                if *hash_alg == alg::SHA256 {
                    let mut point = [0u8; 65];
                    point[0] = 0x04;
                    point[1..33].copy_from_slice(x);
                    point[33..].copy_from_slice(y);
                    let mut fixed = [0u8; 64];
                    fixed[..32].copy_from_slice(&r);
                    fixed[32..].copy_from_slice(&s);
                    return ring_sig::UnparsedPublicKey::new(
                        &ring_sig::ECDSA_P256_SHA256_FIXED,
                        point,
                    )
                    .verify(message, &fixed)
                    .is_ok();
                }
                let Some(hashed) = digest(*hash_alg, message) else {
                    return false;
                };
                verify_p256(x, y, &r, &s, &hashed)
            }
            (Self::Ecdsa { hash_alg, r, s }, PublicKey::EccP384 { x, y }) => {
                let (Some(r), Some(s)) = (left_pad::<48>(r), left_pad::<48>(s)) else {
                    return false;
                };
                let Some(hashed) = digest(*hash_alg, message) else {
                    return false;
                };
                verify_p384(x, y, &r, &s, &hashed)
            }
            (Self::RsaSsa { hash_alg, sig }, PublicKey::Rsa { n, e }) => {
                if *hash_alg == alg::SHA256 {
                    let e_bytes = e.to_be_bytes();
                    let first = e_bytes.iter().position(|b| *b != 0).unwrap_or(3);
                    return ring_sig::RsaPublicKeyComponents {
                        n: n.as_slice(),
                        e: &e_bytes[first..],
                    }
                    .verify(&ring_sig::RSA_PKCS1_2048_8192_SHA256, message, sig)
                    .is_ok();
                }
                let (Some(key), Some(hashed)) = (rsa_key(n, *e), digest(*hash_alg, message)) else {
                    return false;
                };
                let scheme = match *hash_alg {
                    alg::SHA1 => Pkcs1v15Sign::new::<sha1::Sha1>(),
                    alg::SHA384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
                    alg::SHA512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
                    _ => return false,
                };
                key.verify(scheme, &hashed, sig).is_ok()
            }
            (Self::RsaPss { hash_alg, sig }, PublicKey::Rsa { n, e }) => {
                let (Some(key), Some(hashed)) = (rsa_key(n, *e), digest(*hash_alg, message)) else {
                    return false;
                };
                // TPMs salt with the digest's length (TPM 2.0 Library 1.38
                // and later, and FIPS mode) or, older ones, with the largest
                // salt the key allows; either is a valid RSASSA-PSS signature.
                let em_len = n.len();
                let max_salt = em_len.saturating_sub(hashed.len() + 2);
                [hashed.len(), max_salt]
                    .iter()
                    .any(|salt| match pss(*hash_alg, *salt) {
                        Some(scheme) => key.verify(scheme, &hashed, sig).is_ok(),
                        None => false,
                    })
            }
            _ => false,
        }
    }

    pub fn hash_alg(&self) -> u16 {
        match self {
            Self::Ecdsa { hash_alg, .. }
            | Self::RsaSsa { hash_alg, .. }
            | Self::RsaPss { hash_alg, .. } => *hash_alg,
        }
    }
}

fn rsa_key(n: &[u8], e: u32) -> Option<RsaPublicKey> {
    RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from(e)).ok()
}

fn pss(hash_alg: u16, salt: usize) -> Option<Pss> {
    Some(match hash_alg {
        alg::SHA1 => Pss::new_with_salt::<sha1::Sha1>(salt),
        alg::SHA256 => Pss::new_with_salt::<sha2::Sha256>(salt),
        alg::SHA384 => Pss::new_with_salt::<sha2::Sha384>(salt),
        alg::SHA512 => Pss::new_with_salt::<sha2::Sha512>(salt),
        _ => return None,
    })
}

fn verify_p256(x: &[u8; 32], y: &[u8; 32], r: &[u8; 32], s: &[u8; 32], hashed: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
    let (Ok(key), Ok(sig)) = (
        p256::ecdsa::VerifyingKey::from_encoded_point(&point),
        p256::ecdsa::Signature::from_scalars(*r, *s),
    ) else {
        return false;
    };
    key.verify_prehash(hashed, &sig).is_ok()
}

fn verify_p384(x: &[u8; 48], y: &[u8; 48], r: &[u8; 48], s: &[u8; 48], hashed: &[u8]) -> bool {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    let point = p384::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
    let (Ok(key), Ok(sig)) = (
        p384::ecdsa::VerifyingKey::from_encoded_point(&point),
        p384::ecdsa::Signature::from_scalars(*r, *s),
    ) else {
        return false;
    };
    key.verify_prehash(hashed, &sig).is_ok()
}

/// ECC parameters are minimal-length big-endian integers; the fixed
/// signature form wants exactly the field size each.
fn left_pad<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    let v = &v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..];
    if v.len() > N {
        return None;
    }
    let mut out = [0u8; N];
    out[N - v.len()..].copy_from_slice(v);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_ecdsa_and_rejects_hmac() {
        let mut bytes = vec![0x00, 0x18, 0x00, 0x0b, 0x00, 0x02, 1, 2, 0x00, 0x01, 3];
        assert_eq!(
            Signature::parse(&bytes),
            Ok(Signature::Ecdsa {
                hash_alg: alg::SHA256,
                r: vec![1, 2],
                s: vec![3]
            })
        );
        bytes[1] = 0x05; // TPM_ALG_HMAC
        assert!(matches!(
            Signature::parse(&bytes),
            Err(TpmParseError::Unsupported { .. })
        ));
    }

    #[test]
    fn padding_keeps_value_and_rejects_oversize() {
        assert_eq!(left_pad::<32>(&[1]).map(|a| a[31]), Some(1));
        let mut wide = vec![0u8; 33];
        wide[32] = 9;
        assert_eq!(left_pad::<32>(&wide).map(|a| a[31]), Some(9));
        assert!(left_pad::<32>(&[1u8; 33]).is_none());
    }

    /// Marshals a TPMT_SIGNATURE as a TPM does.
    fn marshal(sig: &Signature) -> Vec<u8> {
        use aver_testkit::tpm::{ecdsa_signature, rsa_signature};
        match sig {
            Signature::Ecdsa { hash_alg, r, s } => ecdsa_signature(*hash_alg, r, s),
            Signature::RsaSsa { hash_alg, sig } => rsa_signature(alg::RSASSA, *hash_alg, sig),
            Signature::RsaPss { hash_alg, sig } => rsa_signature(alg::RSAPSS, *hash_alg, sig),
        }
    }

    /// Any signature within the parser's bounds; the hash is any id, since
    /// parsing does not judge it (verification does).
    fn arb_signature() -> impl Strategy<Value = Signature> {
        let bytes = |max| proptest::collection::vec(any::<u8>(), 0..=max);
        prop_oneof![
            (
                any::<u16>(),
                bytes(MAX_ECC_PARAMETER),
                bytes(MAX_ECC_PARAMETER)
            )
                .prop_map(|(hash_alg, r, s)| Signature::Ecdsa { hash_alg, r, s }),
            (any::<u16>(), bytes(MAX_RSA_SIGNATURE))
                .prop_map(|(hash_alg, sig)| Signature::RsaSsa { hash_alg, sig }),
            (any::<u16>(), bytes(MAX_RSA_SIGNATURE))
                .prop_map(|(hash_alg, sig)| Signature::RsaPss { hash_alg, sig }),
        ]
    }

    proptest! {
        #[test]
        fn marshalled_signatures_parse_back(sig in arb_signature()) {
            let bytes = marshal(&sig);
            prop_assert_eq!(Signature::parse(&bytes), Ok(sig));
        }

        #[test]
        fn accepted_bytes_marshal_back_to_themselves(
            sig in arb_signature(),
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            // A mutant the parser still accepts is exactly the signature it
            // reads: nothing in the bytes is skipped or normalised.
            let mut bytes = marshal(&sig);
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            if let Ok(parsed) = Signature::parse(&bytes) {
                prop_assert_eq!(marshal(&parsed), bytes);
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Signature::parse(&bytes);
        }
    }
}
