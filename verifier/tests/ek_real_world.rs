//! EK certificates as TPM vendors really make them: padded NV contents,
//! P-521/P-384 CAs, RSA EKs under ECDSA roots, RSA-PSS, unsorted RDNs,
//! intermediates that expired while their EK certificates live on, and
//! hostile activation offers.
//!
//! The certificates are assembled here as DER, field by field, and signed
//! with RustCrypto: certificate generators cannot make every shape (P-521,
//! RSA-PSS, an unsorted SET) that real EK certificates have.

use std::time::Instant;

use aver_testkit::der::{bits, certificate_pem, int, null, oid, seq, set, tlv, utf8};
use aver_testkit::TpmAttributes;
use aver_verifier::ek::activation::{
    unix_now, ActivationError, ActivationOffer, PendingActivation,
};
use aver_verifier::ek::chain::{
    strip_nv_padding, validate_ek_certificate, EkChainError, MAX_INTERMEDIATES,
};
use aver_verifier::ek::{EkKind, EndorsementCertificate, TrustAnchors, ACTIVATION_VERSION};
use aver_verifier::evidence::Base64Bytes;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

// ---------------------------------------------------------------- DER ---

fn attribute(oid_text: &str, value: &str) -> Vec<u8> {
    seq(&[oid(oid_text), utf8(value)])
}

fn cn(common_name: &str) -> Vec<u8> {
    seq(&[set(&[attribute("2.5.4.3", common_name)])])
}

/// UTCTime before 2050, GeneralizedTime from then (RFC 5280 §4.1.2.5).
fn time(year: i32) -> Vec<u8> {
    if year < 2050 {
        tlv(0x17, format!("{:02}0101000000Z", year % 100).as_bytes())
    } else if year == 9999 {
        tlv(0x18, b"99991231235959Z")
    } else {
        tlv(0x18, format!("{year:04}0101000000Z").as_bytes())
    }
}

fn extension(oid_text: &str, critical: bool, value: Vec<u8>) -> Vec<u8> {
    let mut parts = vec![oid(oid_text)];
    if critical {
        parts.push(vec![0x01, 0x01, 0xff]);
    }
    parts.push(tlv(0x04, &value));
    seq(&parts)
}

fn ca_extensions() -> Vec<Vec<u8>> {
    vec![
        extension("2.5.29.19", true, seq(&[vec![0x01, 0x01, 0xff]])),
        // keyCertSign, cRLSign.
        extension("2.5.29.15", true, vec![0x03, 0x02, 0x01, 0x06]),
    ]
}

/// The TPM attributes in a critical SAN directoryName, an EKU of
/// tcg-kp-EKCertificate and keyEncipherment, as vendors write them.
fn ek_extensions(manufacturer: &'static str) -> Vec<Vec<u8>> {
    let tpm = TpmAttributes {
        manufacturer,
        model: "ST33HTPHAHD4",
        version: "id:00010102",
    };
    vec![
        extension("2.5.29.15", true, vec![0x03, 0x02, 0x05, 0x20]),
        extension("2.5.29.17", true, tpm.subject_alt_name()),
        extension("2.5.29.37", false, seq(&[oid("2.23.133.8.1")])),
    ]
}

// ------------------------------------------------------------- keys -----

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn oid(self) -> &'static str {
        match self {
            Self::Sha256 => "2.16.840.1.101.3.4.2.1",
            Self::Sha384 => "2.16.840.1.101.3.4.2.2",
            Self::Sha512 => "2.16.840.1.101.3.4.2.3",
        }
    }
}

enum Key {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
    RsaPkcs1(Box<rsa::RsaPrivateKey>, Hash),
    RsaPss(Box<rsa::RsaPrivateKey>, Hash),
}

fn rsa_key() -> rsa::RsaPrivateKey {
    aver_testkit::rsa_ek()
}

fn rsa_spki(key: &rsa::RsaPublicKey) -> Vec<u8> {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    seq(&[
        seq(&[oid("1.2.840.113549.1.1.1"), null()]),
        bits(key.to_pkcs1_der().unwrap().as_bytes()),
    ])
}

fn ec_spki(curve: &str, point: &[u8]) -> Vec<u8> {
    seq(&[seq(&[oid("1.2.840.10045.2.1"), oid(curve)]), bits(point)])
}

impl Key {
    fn p256() -> Self {
        Self::P256(p256::ecdsa::SigningKey::random(&mut rand::thread_rng()))
    }
    fn p384() -> Self {
        Self::P384(p384::ecdsa::SigningKey::random(&mut rand::thread_rng()))
    }
    fn p521() -> Self {
        Self::P521(p521::ecdsa::SigningKey::random(&mut rand::thread_rng()))
    }

    fn spki(&self) -> Vec<u8> {
        match self {
            Self::P256(k) => ec_spki(
                "1.2.840.10045.3.1.7",
                k.verifying_key().to_encoded_point(false).as_bytes(),
            ),
            Self::P384(k) => ec_spki(
                "1.3.132.0.34",
                k.verifying_key().to_encoded_point(false).as_bytes(),
            ),
            Self::P521(k) => {
                let point = p521::ecdsa::VerifyingKey::from(k).to_encoded_point(false);
                ec_spki("1.3.132.0.35", point.as_bytes())
            }
            Self::RsaPkcs1(k, _) | Self::RsaPss(k, _) => rsa_spki(&k.to_public_key()),
        }
    }

    fn algorithm(&self) -> Vec<u8> {
        match self {
            Self::P256(_) => seq(&[oid("1.2.840.10045.4.3.2")]),
            Self::P384(_) => seq(&[oid("1.2.840.10045.4.3.3")]),
            Self::P521(_) => seq(&[oid("1.2.840.10045.4.3.4")]),
            Self::RsaPkcs1(_, hash) => {
                let oid_text = match hash {
                    Hash::Sha256 => "1.2.840.113549.1.1.11",
                    Hash::Sha384 => "1.2.840.113549.1.1.12",
                    Hash::Sha512 => "1.2.840.113549.1.1.13",
                };
                seq(&[oid(oid_text), null()])
            }
            Self::RsaPss(_, hash) => {
                let hash_id = seq(&[oid(hash.oid()), null()]);
                let salt = match hash {
                    Hash::Sha256 => 32,
                    Hash::Sha384 => 48,
                    Hash::Sha512 => 64,
                };
                seq(&[
                    oid("1.2.840.113549.1.1.10"),
                    seq(&[
                        tlv(0xa0, &hash_id),
                        tlv(0xa1, &seq(&[oid("1.2.840.113549.1.1.8"), hash_id.clone()])),
                        tlv(0xa2, &int(&[salt])),
                    ]),
                ])
            }
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = &mut rand::thread_rng();
        match self {
            Self::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            Self::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            Self::P521(k) => {
                let s: p521::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            Self::RsaPkcs1(k, hash) => {
                let k = (**k).clone();
                match hash {
                    Hash::Sha256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(k)
                        .sign(message)
                        .to_vec(),
                    Hash::Sha384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(k)
                        .sign(message)
                        .to_vec(),
                    Hash::Sha512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(k)
                        .sign(message)
                        .to_vec(),
                }
            }
            Self::RsaPss(k, hash) => {
                let k = (**k).clone();
                match hash {
                    Hash::Sha256 => rsa::pss::BlindedSigningKey::<Sha256>::new(k)
                        .sign_with_rng(rng, message)
                        .to_vec(),
                    Hash::Sha384 => rsa::pss::BlindedSigningKey::<Sha384>::new(k)
                        .sign_with_rng(rng, message)
                        .to_vec(),
                    Hash::Sha512 => rsa::pss::BlindedSigningKey::<Sha512>::new(k)
                        .sign_with_rng(rng, message)
                        .to_vec(),
                }
            }
        }
    }
}

// ------------------------------------------------------ certificates ----

struct Ca {
    name: Vec<u8>,
    key: Key,
    der: Vec<u8>,
}

struct Tbs<'a> {
    serial: &'a [u8],
    subject: Vec<u8>,
    spki: Vec<u8>,
    validity: (i32, i32),
    extensions: Vec<Vec<u8>>,
}

/// A certificate for `tbs`, issued by `issuer_name` with `issuer_key`,
/// whose signature algorithm field says `algorithm`.
fn issue(tbs: Tbs<'_>, issuer_name: &[u8], algorithm: Vec<u8>, issuer_key: &Key) -> Vec<u8> {
    let tbs = seq(&[
        tlv(0xa0, &int(&[2])),
        int(tbs.serial),
        algorithm.clone(),
        issuer_name.to_vec(),
        seq(&[time(tbs.validity.0), time(tbs.validity.1)]),
        tbs.subject,
        tbs.spki,
        tlv(0xa3, &seq(&tbs.extensions)),
    ]);
    let signature = issuer_key.sign(&tbs);
    seq(&[tbs, algorithm, bits(&signature)])
}

impl Ca {
    fn root(name: Vec<u8>, key: Key) -> Self {
        Self::build(name, key, None, (2015, 2045), ca_extensions())
    }

    fn build(
        name: Vec<u8>,
        key: Key,
        parent: Option<&Ca>,
        validity: (i32, i32),
        extensions: Vec<Vec<u8>>,
    ) -> Self {
        let tbs = Tbs {
            serial: &[0x01],
            subject: name.clone(),
            spki: key.spki(),
            validity,
            extensions,
        };
        let der = match parent {
            Some(parent) => issue(tbs, &parent.name, parent.key.algorithm(), &parent.key),
            None => issue(tbs, &name, key.algorithm(), &key),
        };
        Self { name, key, der }
    }

    fn intermediate(name: &str, key: Key, parent: &Ca) -> Self {
        Self::build(cn(name), key, Some(parent), (2015, 2045), ca_extensions())
    }

    fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem(&certificate_pem(&self.der)).unwrap()
    }

    /// An EK certificate for `spki` with an empty subject.
    fn ek(&self, spki: Vec<u8>, validity: (i32, i32)) -> Vec<u8> {
        self.ek_with(&[0x01, 0x02], spki, validity, ek_extensions("id:53544D20"))
    }

    fn ek_with(
        &self,
        serial: &[u8],
        spki: Vec<u8>,
        validity: (i32, i32),
        extensions: Vec<Vec<u8>>,
    ) -> Vec<u8> {
        let tbs = Tbs {
            serial,
            subject: seq(&[]),
            spki,
            validity,
            extensions,
        };
        issue(tbs, &self.name, self.key.algorithm(), &self.key)
    }
}

fn rsa_ek_spki() -> Vec<u8> {
    rsa_spki(&rsa_key().to_public_key())
}

fn ecc_ek_spki() -> Vec<u8> {
    Key::p256().spki()
}

fn validate(
    ek: &[u8],
    kind: EkKind,
    intermediates: &[Vec<u8>],
    anchors: &TrustAnchors,
) -> Result<aver_verifier::ek::chain::ValidatedEk, EkChainError> {
    validate_ek_certificate(ek, kind, intermediates, anchors, unix_now())
}

/// The same certificate with one bit of its signature flipped.
fn forged(der: &[u8]) -> Vec<u8> {
    let mut der = der.to_vec();
    let last = der.len() - 2;
    der[last] ^= 0x01;
    der
}

// ------------------------------------------------------------- tests ----

#[test]
fn ek_certificates_padded_to_the_nv_index_size_are_accepted() {
    let root = Ca::root(cn("STM TPM EK Root CA"), Key::p256());
    let ek = root.ek(rsa_ek_spki(), (2020, 9999));
    let anchors = root.anchors();
    for pad in [0xff, 0x00] {
        let mut nv = ek.clone();
        nv.resize(2048, pad);
        let validated = validate(&nv, EkKind::Rsa2048, &[], &anchors).unwrap();
        // The identity of the TPM is the certificate, not its padding.
        assert_eq!(
            validated.info().certificate_sha256.0,
            <[u8; 32]>::from(Sha256::digest(&ek))
        );
        assert_eq!(strip_nv_padding(&nv).unwrap(), &ek[..]);
    }
    let mut mixed = ek.clone();
    mixed.extend([0xff, 0xff, 0x00]);
    let error = validate(&mixed, EkKind::Rsa2048, &[], &anchors).unwrap_err();
    assert!(error.to_string().contains("not NV padding"), "{error}");
    let mut data = ek.clone();
    data.extend([0xff, 0x30, 0x00]);
    assert!(matches!(
        validate(&data, EkKind::Rsa2048, &[], &anchors),
        Err(EkChainError::Malformed { .. })
    ));
    assert!(matches!(
        strip_nv_padding(&ek[..ek.len() - 1]),
        Err(EkChainError::Malformed { .. })
    ));
}

#[test]
fn p521_root_p384_intermediate_chains_verify() {
    let root = Ca::root(cn("Nuvoton TPM Root CA 2111"), Key::p521());
    let intermediate = Ca::intermediate("NTC TPM EK CA 2110", Key::p384(), &root);
    let anchors = root.anchors();
    let chain = vec![intermediate.der.clone()];

    let ecc = intermediate.ek(ecc_ek_spki(), (2020, 9999));
    let validated = validate(&ecc, EkKind::EccP256, &chain, &anchors).unwrap();
    assert_eq!(validated.info().chain.len(), 2);
    // An RSA EK under the same ECDSA CAs.
    let rsa = intermediate.ek(rsa_ek_spki(), (2020, 9999));
    validate(&rsa, EkKind::Rsa2048, &chain, &anchors).unwrap();

    // A forged signature at either link is a bad signature, not an
    // unsupported algorithm.
    assert!(matches!(
        validate(&forged(&ecc), EkKind::EccP256, &chain, &anchors),
        Err(EkChainError::BadSignature { .. })
    ));
    assert!(matches!(
        validate(
            &ecc,
            EkKind::EccP256,
            &[forged(&intermediate.der)],
            &anchors
        ),
        Err(EkChainError::BadSignature { .. })
    ));
}

#[test]
fn rsa_pkcs1_and_pss_signatures_verify_with_sha2() {
    for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
        for pss in [false, true] {
            let key = Box::new(rsa_key());
            let key = if pss {
                Key::RsaPss(key, hash)
            } else {
                Key::RsaPkcs1(key, hash)
            };
            let root = Ca::root(cn("Infineon OPTIGA(TM) RSA Root CA"), key);
            let anchors = root.anchors();
            let ek = root.ek(ecc_ek_spki(), (2020, 9999));
            validate(&ek, EkKind::EccP256, &[], &anchors).unwrap();
            assert!(matches!(
                validate(&forged(&ek), EkKind::EccP256, &[], &anchors),
                Err(EkChainError::BadSignature { .. })
            ));
        }
    }
}

#[test]
fn other_algorithms_are_unsupported_and_sha1_is_weak() {
    let root = Ca::root(cn("Root"), Key::p256());
    let anchors = root.anchors();
    let tbs = || Tbs {
        serial: &[0x07],
        subject: seq(&[]),
        spki: rsa_ek_spki(),
        validity: (2020, 9999),
        extensions: ek_extensions("id:49465800"),
    };
    // Ed25519 and ecdsa-with-SHA224: real algorithms this verifier does not
    // implement.
    for algorithm in ["1.3.101.112", "1.2.840.10045.4.3.1"] {
        let ek = issue(tbs(), &root.name, seq(&[oid(algorithm)]), &root.key);
        let error = validate(&ek, EkKind::Rsa2048, &[], &anchors).unwrap_err();
        assert_eq!(
            error,
            EkChainError::UnsupportedSignature {
                subject: "(empty subject)".into(),
                algorithm: algorithm.into(),
            }
        );
    }
    // ecdsa-with-SHA1, and RSA-PSS with its default (SHA-1) parameters.
    for algorithm in [
        seq(&[oid("1.2.840.10045.4.1")]),
        seq(&[oid("1.2.840.113549.1.1.10"), seq(&[])]),
    ] {
        let ek = issue(tbs(), &root.name, algorithm, &root.key);
        assert!(matches!(
            validate(&ek, EkKind::Rsa2048, &[], &anchors),
            Err(EkChainError::WeakSignature { .. })
        ));
    }
}

#[test]
fn critical_extensions_that_are_not_enforced_are_refused() {
    let root = Ca::root(cn("Root"), Key::p256());
    let anchors = root.anchors();
    // nameConstraints: permitted subtree dNSName "example.com".
    let name_constraints = seq(&[tlv(0xa0, &seq(&[tlv(0x82, b"example.com")]))]);
    // policyConstraints: requireExplicitPolicy 0.
    let policy_constraints = seq(&[tlv(0x80, &[0])]);
    for (oid_text, value) in [
        ("2.5.29.30", name_constraints.clone()),
        ("2.5.29.36", policy_constraints),
    ] {
        let mut extensions = ca_extensions();
        extensions.push(extension(oid_text, true, value));
        let intermediate = Ca::build(
            cn("Constrained CA"),
            Key::p256(),
            Some(&root),
            (2015, 2045),
            extensions,
        );
        let ek = intermediate.ek(rsa_ek_spki(), (2020, 9999));
        assert_eq!(
            validate(
                &ek,
                EkKind::Rsa2048,
                std::slice::from_ref(&intermediate.der),
                &anchors
            )
            .unwrap_err(),
            EkChainError::UnknownCriticalExtension {
                subject: "\"CN=Constrained CA\"".into(),
                oid: oid_text.into(),
            }
        );
    }
    // The same constraint, not critical, may be ignored (RFC 5280 §4.2).
    let mut extensions = ca_extensions();
    extensions.push(extension("2.5.29.30", false, name_constraints));
    let intermediate = Ca::build(
        cn("Constrained CA"),
        Key::p256(),
        Some(&root),
        (2015, 2045),
        extensions,
    );
    let ek = intermediate.ek(rsa_ek_spki(), (2020, 9999));
    validate(
        &ek,
        EkKind::Rsa2048,
        std::slice::from_ref(&intermediate.der),
        &anchors,
    )
    .unwrap();
}

#[test]
fn reports_decode_space_padded_vendor_codes_and_drop_der_serial_zeros() {
    let root = Ca::root(cn("STM TPM EK Root CA"), Key::p384());
    let ek = root.ek_with(
        &[0x00, 0x8a, 0x01, 0xff],
        rsa_ek_spki(),
        (2020, 9999),
        ek_extensions("id:53544D20"),
    );
    let info = validate(&ek, EkKind::Rsa2048, &[], &root.anchors())
        .unwrap()
        .info()
        .clone();
    assert_eq!(info.serial, "8a:01:ff");
    let tpm = info.tpm.unwrap();
    assert_eq!(
        tpm.describe(),
        "id:53544D20 (STM) model ST33HTPHAHD4 version id:00010102"
    );
}

#[test]
fn hostile_offers_are_bounded() {
    let root = Ca::root(cn("Root"), Key::p256());
    let anchors = root.anchors();
    let intermediate = Ca::intermediate("EK CA", Key::p256(), &root);
    let ek = intermediate.ek(rsa_ek_spki(), (2020, 9999));

    // Decoys under the real intermediate's name, then the real one: found
    // by name, tried in turn.
    let mut chain: Vec<Vec<u8>> = (0..MAX_INTERMEDIATES - 1)
        .map(|_| Ca::intermediate("EK CA", Key::p256(), &root).der)
        .collect();
    chain.push(intermediate.der.clone());
    let started = Instant::now();
    validate(&ek, EkKind::Rsa2048, &chain, &anchors).unwrap();
    assert!(started.elapsed().as_secs() < 10);

    chain.push(intermediate.der.clone());
    assert_eq!(
        validate(&ek, EkKind::Rsa2048, &chain, &anchors).unwrap_err(),
        EkChainError::TooManyCertificates {
            what: "EK chain certificates",
            found: MAX_INTERMEDIATES + 1,
            limit: MAX_INTERMEDIATES,
        }
    );

    let offer = ActivationOffer {
        version: ACTIVATION_VERSION,
        ak_public: Base64Bytes(Vec::new()),
        endorsement_keys: (0..9)
            .map(|_| EndorsementCertificate {
                kind: EkKind::Rsa2048,
                certificate: Base64Bytes(ek.clone()),
            })
            .collect(),
        ek_chain: vec![Base64Bytes(intermediate.der.clone())],
    };
    let error = PendingActivation::prepare(&offer, &anchors, unix_now(), &mut rand::thread_rng())
        .unwrap_err();
    assert!(
        matches!(
            error,
            ActivationError::OfferTooLarge(EkChainError::TooManyCertificates { found: 9, .. })
        ),
        "{error}"
    );
}

#[test]
fn unsorted_multi_valued_rdns_and_empty_subjects_are_accepted() {
    // One RDN holding O and CN, the longer encoding first: not the DER
    // order of a SET OF, as some vendors write it.
    let name = seq(&[set(&[
        attribute("2.5.4.10", "Vendor Corporation Incorporated"),
        attribute("2.5.4.3", "EK"),
    ])]);
    let root = Ca::root(name, Key::p384());
    // The EK certificate has an empty subject and its only name in a
    // critical SAN directoryName.
    let ek = root.ek(ecc_ek_spki(), (2020, 9999));
    let validated = validate(&ek, EkKind::EccP256, &[], &root.anchors()).unwrap();
    assert_eq!(validated.info().subject, "(empty subject)");
    assert!(validated.info().tpm.is_some());
}

#[test]
fn an_expired_intermediate_still_vouches_for_the_ek_certificates_it_issued() {
    let root = Ca::root(cn("Root"), Key::p256());
    let anchors = root.anchors();
    let intermediate = Ca::build(
        cn("Old EK CA"),
        Key::p256(),
        Some(&root),
        (2010, 2020),
        ca_extensions(),
    );
    let chain = vec![intermediate.der.clone()];

    // Issued in 2015, while the intermediate was valid.
    let ek = intermediate.ek(rsa_ek_spki(), (2015, 9999));
    let validated = validate(&ek, EkKind::Rsa2048, &chain, &anchors).unwrap();
    // The intermediate's past expiry does not bound the activation: the
    // root's does.
    assert!(validated.valid_until() > unix_now());

    // Dated after the intermediate expired: refused, with the date.
    let late = intermediate.ek(rsa_ek_spki(), (2021, 9999));
    assert!(matches!(
        validate(&late, EkKind::Rsa2048, &chain, &anchors),
        Err(EkChainError::Expired { .. })
    ));
    // An expired EK certificate or root is still refused.
    let expired = intermediate.ek(rsa_ek_spki(), (2015, 2019));
    assert!(matches!(
        validate(&expired, EkKind::Rsa2048, &chain, &anchors),
        Err(EkChainError::Expired { .. })
    ));
}
