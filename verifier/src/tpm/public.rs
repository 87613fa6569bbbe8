//! TPMT_PUBLIC of an attestation key, and its TPM name.

use super::reader::Reader;
use super::{alg, digest, TpmParseError, ECC_NIST_P256, ECC_NIST_P384};

const MAX_DIGEST: usize = 64;
const MAX_ECC_PARAMETER: usize = 66;
const MAX_RSA_KEY: usize = 512;
const MIN_RSA_BITS: u16 = 2048;
const MAX_RSA_BITS: u16 = 4096;

/// TPMA_OBJECT bits an attestation key must (and must not) have.
pub(super) mod attributes {
    pub(crate) const FIXED_TPM: u32 = 1 << 1;
    pub(crate) const FIXED_PARENT: u32 = 1 << 4;
    pub(crate) const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub(crate) const RESTRICTED: u32 = 1 << 16;
    pub(crate) const DECRYPT: u32 = 1 << 17;
    pub(crate) const SIGN: u32 = 1 << 18;
}

/// The verification key inside an AK's public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    EccP256 { x: [u8; 32], y: [u8; 32] },
    EccP384 { x: [u8; 48], y: [u8; 48] },
    Rsa { n: Vec<u8>, e: u32 },
}

impl PublicKey {
    /// Whether the DER SubjectPublicKeyInfo `spki` holds this key: the same
    /// RSA modulus and exponent, or the same curve and point (uncompressed
    /// or compressed).
    pub fn matches_spki(&self, spki: &[u8]) -> bool {
        use x509_parser::prelude::FromDer as _;
        use x509_parser::public_key::PublicKey as Spki;
        const NIST_P256: &str = "1.2.840.10045.3.1.7";
        const NIST_P384: &str = "1.3.132.0.34";
        let Ok(([], info)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki) else {
            return false;
        };
        let curve = info
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|oid| oid.to_id_string());
        let unsigned = |bytes: &[u8]| -> Vec<u8> {
            let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
            bytes[start..].to_vec()
        };
        match (self, info.parsed()) {
            (Self::Rsa { n, e }, Ok(Spki::RSA(key))) => {
                unsigned(key.modulus) == unsigned(n)
                    && unsigned(key.exponent) == unsigned(&e.to_be_bytes())
            }
            (Self::EccP256 { x, y }, Ok(Spki::EC(point)))
                if curve.as_deref() == Some(NIST_P256) =>
            {
                p256::PublicKey::from_sec1_bytes(point.data()).is_ok_and(|key| {
                    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                    let encoded = key.to_encoded_point(false);
                    encoded.x().map(|v| v.as_slice()) == Some(x.as_slice())
                        && encoded.y().map(|v| v.as_slice()) == Some(y.as_slice())
                })
            }
            (Self::EccP384 { x, y }, Ok(Spki::EC(point)))
                if curve.as_deref() == Some(NIST_P384) =>
            {
                p384::PublicKey::from_sec1_bytes(point.data()).is_ok_and(|key| {
                    use p384::elliptic_curve::sec1::ToEncodedPoint as _;
                    let encoded = key.to_encoded_point(false);
                    encoded.x().map(|v| v.as_slice()) == Some(x.as_slice())
                        && encoded.y().map(|v| v.as_slice()) == Some(y.as_slice())
                })
            }
            _ => false,
        }
    }
}

/// An AK public area with the name the TPM gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic {
    /// TPM name: nameAlg (SHA-1, SHA-256, SHA-384 or SHA-512) followed by
    /// that hash of the TPMT_PUBLIC, as `tpm2_readpublic` prints it.
    pub name: Vec<u8>,
    pub name_alg: u16,
    pub object_attributes: u32,
    /// The key's own signing scheme and its hash (`alg::RSASSA`,
    /// `alg::SHA384`), or `None` for a key whose scheme is NULL (the
    /// signer chooses per quote).
    pub scheme: Option<(u16, u16)>,
    pub key: PublicKey,
}

impl AkPublic {
    /// Parses a TPMT_PUBLIC, or a TPM2B_PUBLIC (the TPMT_PUBLIC with a
    /// two-byte size prefix, as `tpm2_createak -u` writes it by default).
    /// The name is always of the TPMT_PUBLIC, without the prefix.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmParseError> {
        let first = match bytes {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => return Self::parse_tpmt(bytes),
        };
        let rest = bytes.len() - 2;
        if first == alg::RSA || first == alg::ECC {
            // A key type: a TPMT_PUBLIC, unless it is really a TPM2B whose
            // size happens to equal a key type and whose inner parses.
            return match Self::parse_tpmt(bytes) {
                Err(e) if usize::from(first) == rest => {
                    Self::parse_tpmt(&bytes[2..]).map_err(|_| e)
                }
                tpmt => tpmt,
            };
        }
        if usize::from(first) == rest {
            return Self::parse_tpmt(&bytes[2..]);
        }
        Err(TpmParseError::UnrecognisedPublic {
            len: bytes.len(),
            first,
            rest,
        })
    }

    fn parse_tpmt(bytes: &[u8]) -> Result<Self, TpmParseError> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let key_type = r.u16()?;
        let name_alg = r.u16()?;
        if super::hash_name(name_alg).is_none() {
            return Err(unsupported("nameAlg", name_alg));
        }
        let object_attributes = r.u32()?;
        r.tpm2b("authPolicy", MAX_DIGEST)?;
        let (scheme, key) = match key_type {
            alg::ECC => {
                expect_null_symmetric(&mut r)?;
                let scheme = match r.u16()? {
                    alg::NULL => None,
                    alg::ECDSA => Some((alg::ECDSA, scheme_hash(&mut r, "ECDSA scheme hash")?)),
                    other => return Err(unsupported("ECC scheme", other)),
                };
                let curve = r.u16()?;
                if curve != ECC_NIST_P256 && curve != ECC_NIST_P384 {
                    return Err(unsupported("ECC curve", curve));
                }
                let kdf = r.u16()?;
                if kdf != alg::NULL {
                    return Err(unsupported("ECC KDF", kdf));
                }
                let x = r.tpm2b("unique.x", MAX_ECC_PARAMETER)?;
                let y = r.tpm2b("unique.y", MAX_ECC_PARAMETER)?;
                let key = if curve == ECC_NIST_P256 {
                    PublicKey::EccP256 {
                        x: coordinate(x)?,
                        y: coordinate(y)?,
                    }
                } else {
                    PublicKey::EccP384 {
                        x: coordinate(x)?,
                        y: coordinate(y)?,
                    }
                };
                (scheme, key)
            }
            alg::RSA => {
                expect_null_symmetric(&mut r)?;
                let scheme = match r.u16()? {
                    alg::NULL => None,
                    alg::RSASSA => Some((alg::RSASSA, scheme_hash(&mut r, "RSASSA scheme hash")?)),
                    alg::RSAPSS => Some((alg::RSAPSS, scheme_hash(&mut r, "RSAPSS scheme hash")?)),
                    other => return Err(unsupported("RSA scheme", other)),
                };
                let bits = r.u16()?;
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
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
                (scheme, PublicKey::Rsa { n, e })
            }
            other => return Err(unsupported("key type", other)),
        };
        r.finish()?;
        let mut name = name_alg.to_be_bytes().to_vec();
        name.extend(digest(name_alg, bytes).unwrap_or_default());
        Ok(Self {
            name,
            name_alg,
            object_attributes,
            scheme,
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

/// The hash of a signing scheme: one this verifier can compute.
fn scheme_hash(r: &mut Reader<'_>, what: &'static str) -> Result<u16, TpmParseError> {
    let hash = r.u16()?;
    if super::hash_name(hash).is_none() {
        return Err(unsupported(what, hash));
    }
    Ok(hash)
}

fn coordinate<const N: usize>(v: &[u8]) -> Result<[u8; N], TpmParseError> {
    if v.len() > N {
        return Err(TpmParseError::Invalid {
            structure: "TPMT_PUBLIC",
            reason: "ECC coordinate longer than the curve's field",
        });
    }
    let mut out = [0u8; N];
    out[N - v.len()..].copy_from_slice(v);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    pub(crate) fn ecc_public(attributes: u32) -> Vec<u8> {
        aver_testkit::tpm::ak_public(attributes, [1; 32], [2; 32])
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
        bytes[17] = 0x05; // TPM_ECC_NIST_P521 in curveID
        assert!(matches!(
            AkPublic::parse(&bytes),
            Err(TpmParseError::Unsupported {
                what: "ECC curve",
                ..
            })
        ));
    }

    #[test]
    fn a_size_prefix_is_accepted_and_not_named() {
        let bytes = ecc_public(AK);
        let mut tpm2b = (bytes.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend(&bytes);
        assert_eq!(AkPublic::parse(&tpm2b), AkPublic::parse(&bytes));
        tpm2b.push(0);
        assert!(matches!(
            AkPublic::parse(&tpm2b),
            Err(TpmParseError::UnrecognisedPublic { .. })
        ));
    }

    /// What a TPMT_PUBLIC of a signing key says, with the authPolicy the
    /// parsed value drops (it counts only in the name).
    #[derive(Debug, Clone)]
    struct Template {
        name_alg: u16,
        object_attributes: u32,
        auth_policy: Vec<u8>,
        scheme: Option<(u16, u16)>,
        key: PublicKey,
    }

    /// Marshals a TPMT_PUBLIC as a TPM does: a default RSA exponent as 0.
    fn marshal(t: &Template) -> Vec<u8> {
        let mut v = Vec::new();
        let key_type = match t.key {
            PublicKey::Rsa { .. } => alg::RSA,
            _ => alg::ECC,
        };
        v.extend(key_type.to_be_bytes());
        v.extend(t.name_alg.to_be_bytes());
        v.extend(t.object_attributes.to_be_bytes());
        v.extend((t.auth_policy.len() as u16).to_be_bytes());
        v.extend(&t.auth_policy);
        v.extend(alg::NULL.to_be_bytes());
        match t.scheme {
            None => v.extend(alg::NULL.to_be_bytes()),
            Some((scheme, hash)) => {
                v.extend(scheme.to_be_bytes());
                v.extend(hash.to_be_bytes());
            }
        }
        let tpm2b = |v: &mut Vec<u8>, b: &[u8]| {
            v.extend((b.len() as u16).to_be_bytes());
            v.extend(b);
        };
        match &t.key {
            PublicKey::EccP256 { x, y } => {
                v.extend(ECC_NIST_P256.to_be_bytes());
                v.extend(alg::NULL.to_be_bytes());
                tpm2b(&mut v, x);
                tpm2b(&mut v, y);
            }
            PublicKey::EccP384 { x, y } => {
                v.extend(ECC_NIST_P384.to_be_bytes());
                v.extend(alg::NULL.to_be_bytes());
                tpm2b(&mut v, x);
                tpm2b(&mut v, y);
            }
            PublicKey::Rsa { n, e } => {
                v.extend(((n.len() * 8) as u16).to_be_bytes());
                v.extend(if *e == 65_537 { 0 } else { *e }.to_be_bytes());
                tpm2b(&mut v, n);
            }
        }
        v
    }

    fn arb_hash() -> impl Strategy<Value = u16> {
        prop::sample::select(vec![alg::SHA1, alg::SHA256, alg::SHA384, alg::SHA512])
    }

    fn arb_template() -> impl Strategy<Value = Template> {
        let ecc = (
            prop::option::of(arb_hash().prop_map(|h| (alg::ECDSA, h))),
            prop_oneof![
                (
                    prop::array::uniform(any::<u8>()),
                    prop::array::uniform(any::<u8>())
                )
                    .prop_map(|(x, y)| PublicKey::EccP256 { x, y }),
                (
                    prop::array::uniform(any::<u8>()),
                    prop::array::uniform(any::<u8>())
                )
                    .prop_map(|(x, y)| PublicKey::EccP384 { x, y }),
            ],
        );
        let rsa = (
            prop::option::of((
                prop::sample::select(vec![alg::RSASSA, alg::RSAPSS]),
                arb_hash(),
            )),
            (256usize..=512).prop_flat_map(|len| proptest::collection::vec(any::<u8>(), len)),
            prop_oneof![Just(65_537u32), 1u32..],
        )
            .prop_map(|(scheme, n, e)| (scheme, PublicKey::Rsa { n, e }));
        (
            arb_hash(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_DIGEST),
            prop_oneof![ecc, rsa],
        )
            .prop_map(
                |(name_alg, object_attributes, auth_policy, (scheme, key))| Template {
                    name_alg,
                    object_attributes,
                    auth_policy,
                    scheme,
                    key,
                },
            )
    }

    proptest! {
        #[test]
        fn marshalled_keys_parse_back(t in arb_template()) {
            let bytes = marshal(&t);
            let mut name = t.name_alg.to_be_bytes().to_vec();
            name.extend(digest(t.name_alg, &bytes).unwrap());
            let expected = AkPublic {
                name,
                name_alg: t.name_alg,
                object_attributes: t.object_attributes,
                scheme: t.scheme,
                key: t.key.clone(),
            };
            prop_assert_eq!(AkPublic::parse(&bytes), Ok(expected.clone()));
            // As a TPM2B_PUBLIC: the same key, named without the prefix.
            let mut tpm2b = (bytes.len() as u16).to_be_bytes().to_vec();
            tpm2b.extend(&bytes);
            prop_assert_eq!(AkPublic::parse(&tpm2b), Ok(expected));
        }

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
