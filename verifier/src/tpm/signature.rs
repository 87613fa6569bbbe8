//! TPMT_SIGNATURE and its check against an AK public key.

use ring::signature as ring_sig;

use super::public::PublicKey;
use super::reader::Reader;
use super::{alg, TpmParseError};

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

    /// Whether this is a valid SHA-256 signature over `message` by `key`.
    /// A mismatch between key type and signature type is simply `false`.
    pub fn verifies(&self, key: &PublicKey, message: &[u8]) -> bool {
        match (self, key) {
            (Self::Ecdsa { hash_alg, r, s }, PublicKey::EccP256 { x, y }) => {
                if *hash_alg != alg::SHA256 {
                    return false;
                }
                let (Some(r), Some(s)) = (left_pad_32(r), left_pad_32(s)) else {
                    return false;
                };
                let mut point = [0u8; 65];
                point[0] = 0x04;
                point[1..33].copy_from_slice(x);
                point[33..].copy_from_slice(y);
                let mut fixed = [0u8; 64];
                fixed[..32].copy_from_slice(&r);
                fixed[32..].copy_from_slice(&s);
                ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, &fixed)
                    .is_ok()
            }
            (Self::RsaSsa { hash_alg, sig }, PublicKey::Rsa { n, e }) => {
                if *hash_alg != alg::SHA256 {
                    return false;
                }
                let e_bytes = e.to_be_bytes();
                let first = e_bytes.iter().position(|b| *b != 0).unwrap_or(3);
                ring_sig::RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: &e_bytes[first..],
                }
                .verify(&ring_sig::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok()
            }
            _ => false,
        }
    }

    pub fn hash_alg(&self) -> u16 {
        match self {
            Self::Ecdsa { hash_alg, .. } | Self::RsaSsa { hash_alg, .. } => *hash_alg,
        }
    }
}

/// ECC parameters are minimal-length big-endian integers; the fixed
/// signature form wants exactly 32 bytes each.
fn left_pad_32(v: &[u8]) -> Option<[u8; 32]> {
    let v = &v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..];
    if v.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
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
        assert_eq!(left_pad_32(&[1]).map(|a| a[31]), Some(1));
        let mut wide = vec![0u8; 33];
        wide[32] = 9;
        assert_eq!(left_pad_32(&wide).map(|a| a[31]), Some(9));
        assert!(left_pad_32(&[1u8; 33]).is_none());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Signature::parse(&bytes);
        }
    }
}
