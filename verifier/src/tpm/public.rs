//! TPMT_PUBLIC of an attestation key, and its TPM name.

use sha2::{Digest, Sha256};

use super::reader::Reader;
use super::{alg, TpmParseError, ECC_NIST_P256};

const MAX_DIGEST: usize = 64;
const MAX_ECC_PARAMETER: usize = 66;
const MAX_RSA_KEY: usize = 512;
const MIN_RSA_BITS: u16 = 2048;

/// TPMA_OBJECT bits an attestation key must (and must not) have.
pub mod attributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// The verification key inside an AK's public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    EccP256 { x: [u8; 32], y: [u8; 32] },
    Rsa { n: Vec<u8>, e: u32 },
}

/// An AK public area with the name the TPM gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic {
    /// TPM name: nameAlg (SHA-256) followed by SHA-256 of the TPMT_PUBLIC.
    pub name: Vec<u8>,
    pub object_attributes: u32,
    pub key: PublicKey,
}

impl AkPublic {
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmParseError> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let key_type = r.u16()?;
        let name_alg = r.u16()?;
        if name_alg != alg::SHA256 {
            return Err(TpmParseError::Unsupported {
                structure: "TPMT_PUBLIC",
                what: "nameAlg",
                value: name_alg,
            });
        }
        let object_attributes = r.u32()?;
        r.tpm2b("authPolicy", MAX_DIGEST)?;
        let key = match key_type {
            alg::ECC => {
                expect_null_symmetric(&mut r)?;
                let scheme = r.u16()?;
                match scheme {
                    alg::NULL => {}
                    alg::ECDSA => {
                        let hash = r.u16()?;
                        if hash != alg::SHA256 {
                            return Err(unsupported("ECDSA scheme hash", hash));
                        }
                    }
                    other => return Err(unsupported("ECC scheme", other)),
                }
                let curve = r.u16()?;
                if curve != ECC_NIST_P256 {
                    return Err(unsupported("ECC curve", curve));
                }
                let kdf = r.u16()?;
                if kdf != alg::NULL {
                    return Err(unsupported("ECC KDF", kdf));
                }
                let x = coordinate(r.tpm2b("unique.x", MAX_ECC_PARAMETER)?)?;
                let y = coordinate(r.tpm2b("unique.y", MAX_ECC_PARAMETER)?)?;
                PublicKey::EccP256 { x, y }
            }
            alg::RSA => {
                expect_null_symmetric(&mut r)?;
                let scheme = r.u16()?;
                match scheme {
                    alg::NULL => {}
                    alg::RSASSA => {
                        let hash = r.u16()?;
                        if hash != alg::SHA256 {
                            return Err(unsupported("RSASSA scheme hash", hash));
                        }
                    }
                    other => return Err(unsupported("RSA scheme", other)),
                }
                let bits = r.u16()?;
                if bits < MIN_RSA_BITS {
                    return Err(unsupported("RSA key size (bits)", bits));
                }
                let e = match r.u32()? {
                    0 => 65_537,
                    e => e,
                };
                let n = r.tpm2b("unique.rsa", MAX_RSA_KEY)?.to_vec();
                if n.len() * 8 != usize::from(bits) {
                    return Err(TpmParseError::Invalid {
                        structure: "TPMT_PUBLIC",
                        reason: "RSA modulus length does not match keyBits",
                    });
                }
                PublicKey::Rsa { n, e }
            }
            other => return Err(unsupported("key type", other)),
        };
        r.finish()?;
        let mut name = alg::SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(bytes));
        Ok(Self {
            name,
            object_attributes,
            key,
        })
    }

    /// Hex of the TPM name, the form policies use to trust an AK.
    pub fn name_hex(&self) -> String {
        hex::encode(&self.name)
    }

    /// A restricted signing key that cannot leave its TPM: the TPM signs
    /// with it only data it produced itself (quotes), never a caller-made
    /// digest that merely looks like a quote. Any other key proves nothing.
    pub fn is_attestation_key(&self) -> bool {
        use attributes::*;
        let required = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN;
        self.object_attributes & required == required && self.object_attributes & DECRYPT == 0
    }
}

fn unsupported(what: &'static str, value: u16) -> TpmParseError {
    TpmParseError::Unsupported {
        structure: "TPMT_PUBLIC",
        what,
        value,
    }
}

/// Signing keys carry no symmetric algorithm (TPMT_SYM_DEF_OBJECT = NULL).
fn expect_null_symmetric(r: &mut Reader<'_>) -> Result<(), TpmParseError> {
    let sym = r.u16()?;
    if sym != alg::NULL {
        return Err(unsupported("symmetric algorithm of a signing key", sym));
    }
    Ok(())
}

fn coordinate(v: &[u8]) -> Result<[u8; 32], TpmParseError> {
    if v.len() > 32 {
        return Err(TpmParseError::Invalid {
            structure: "TPMT_PUBLIC",
            reason: "P-256 coordinate longer than 32 bytes",
        });
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn ecc_public(attributes: u32) -> Vec<u8> {
        crate::ek::testing::ak_public(attributes, [1; 32], [2; 32])
    }

    const AK: u32 = attributes::FIXED_TPM
        | attributes::FIXED_PARENT
        | attributes::SENSITIVE_DATA_ORIGIN
        | attributes::RESTRICTED
        | attributes::SIGN;

    #[test]
    fn parses_an_ecc_ak_and_names_it() {
        let bytes = ecc_public(AK);
        let ak = AkPublic::parse(&bytes).unwrap();
        assert!(ak.is_attestation_key());
        assert_eq!(&ak.name[..2], &[0x00, 0x0b]);
        assert_eq!(&ak.name[2..], Sha256::digest(&bytes).as_slice());
        assert_eq!(
            ak.key,
            PublicKey::EccP256 {
                x: [1; 32],
                y: [2; 32]
            }
        );
    }

    #[test]
    fn unrestricted_or_decrypting_keys_are_not_aks() {
        let plain = AkPublic::parse(&ecc_public(AK & !attributes::RESTRICTED)).unwrap();
        assert!(!plain.is_attestation_key());
        let decrypt = AkPublic::parse(&ecc_public(AK | attributes::DECRYPT)).unwrap();
        assert!(!decrypt.is_attestation_key());
        let movable = AkPublic::parse(&ecc_public(AK & !attributes::FIXED_TPM)).unwrap();
        assert!(!movable.is_attestation_key());
    }

    #[test]
    fn other_curves_are_unsupported() {
        let mut bytes = ecc_public(AK);
        bytes[17] = 0x04; // TPM_ECC_NIST_P384 in curveID
        assert!(matches!(
            AkPublic::parse(&bytes),
            Err(TpmParseError::Unsupported {
                what: "ECC curve",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = AkPublic::parse(&bytes);
        }

        #[test]
        fn mutated_keys_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = ecc_public(AK);
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            let _ = AkPublic::parse(&bytes);
        }
    }
}
