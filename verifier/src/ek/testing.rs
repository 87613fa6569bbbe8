//! Test PKI: CAs and EK certificates shaped like real ones (empty subject,
//! critical subjectAltName directoryName with the TPM attributes,
//! tcg-kp-EKCertificate EKU, keyEncipherment), made with rcgen.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SignatureAlgorithm,
};

/// A CA that can issue certificates.
pub(crate) struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub der: Vec<u8>,
    pub pem: String,
}

impl TestCa {
    /// A self-signed root.
    pub(crate) fn root(common_name: &str) -> Self {
        Self::build(common_name, None, BasicConstraints::Unconstrained, |_| {})
    }

    /// An intermediate issued by `parent`.
    pub(crate) fn intermediate(
        common_name: &str,
        parent: &TestCa,
        constraint: BasicConstraints,
    ) -> Self {
        Self::build(common_name, Some(parent), constraint, |_| {})
    }

    pub(crate) fn build(
        common_name: &str,
        parent: Option<&TestCa>,
        constraint: BasicConstraints,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(constraint);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        tweak(&mut params);
        let cert = match parent {
            Some(parent) => params.signed_by(&key, &parent.issuer()).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        Self {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            params,
            key,
        }
    }

    pub(crate) fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// An EK public key given as its subjectPublicKey bits.
pub(crate) struct ForeignKey {
    pub bits: Vec<u8>,
    pub algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for ForeignKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl ForeignKey {
    pub(crate) fn rsa(key: &rsa::RsaPublicKey) -> Self {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        Self {
            bits: key.to_pkcs1_der().unwrap().as_bytes().to_vec(),
            algorithm: &rcgen::PKCS_RSA_SHA256,
        }
    }

    pub(crate) fn p256(key: &p256::PublicKey) -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        Self {
            bits: key.to_encoded_point(false).as_bytes().to_vec(),
            algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// The DER of a subjectAltName with one directoryName holding the TPM
/// manufacturer, model and version, as TPM vendors write it.
pub(crate) fn tpm_san(manufacturer: &str, model: &str, version: &str) -> Vec<u8> {
    let attribute = |last_arc: u8, value: &str| {
        let oid = tlv(0x06, &[0x67, 0x81, 0x05, 0x02, last_arc]);
        let utf8 = tlv(0x0c, value.as_bytes());
        tlv(0x30, &[oid, utf8].concat())
    };
    let set = tlv(
        0x31,
        &[
            attribute(1, manufacturer),
            attribute(2, model),
            attribute(3, version),
        ]
        .concat(),
    );
    let name = tlv(0x30, &set);
    let directory_name = tlv(0xa4, &name);
    tlv(0x30, &directory_name)
}

/// An EK certificate for `key`, issued by `ca`, valid from `not_before`
/// to `not_after` (years), shaped like a vendor's; `tweak` may change it.
pub(crate) fn ek_certificate(
    ca: &TestCa,
    key: &ForeignKey,
    validity: (i32, i32),
    tweak: impl FnOnce(&mut CertificateParams),
) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.not_before = rcgen::date_time_ymd(validity.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(validity.1, 1, 1);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])];
    let mut san = CustomExtension::from_oid_content(
        &[2, 5, 29, 17],
        tpm_san("id:49465800", "SLB9670", "id:000F0010"),
    );
    san.set_criticality(true);
    params.custom_extensions = vec![san];
    tweak(&mut params);
    params.signed_by(key, &ca.issuer()).unwrap().der().to_vec()
}

/// The RSA private key of the unit tests' EK.
pub(crate) fn rsa_ek() -> rsa::RsaPrivateKey {
    use rsa::pkcs8::DecodePrivateKey as _;
    rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("test_rsa_ek.pem")).unwrap()
}

/// A TPMT_PUBLIC of an ECC P-256 key with `attributes` and point (x, y).
pub(crate) fn ak_public(attributes: u32, x: [u8; 32], y: [u8; 32]) -> Vec<u8> {
    use crate::tpm::{alg, ECC_NIST_P256};
    let mut v = Vec::new();
    v.extend(alg::ECC.to_be_bytes());
    v.extend(alg::SHA256.to_be_bytes());
    v.extend(attributes.to_be_bytes());
    v.extend(0u16.to_be_bytes()); // authPolicy
    v.extend(alg::NULL.to_be_bytes()); // symmetric
    v.extend(alg::ECDSA.to_be_bytes());
    v.extend(alg::SHA256.to_be_bytes());
    v.extend(ECC_NIST_P256.to_be_bytes());
    v.extend(alg::NULL.to_be_bytes()); // kdf
    v.extend(32u16.to_be_bytes());
    v.extend(x);
    v.extend(32u16.to_be_bytes());
    v.extend(y);
    v
}

/// Attributes of aver's AK: fixedTPM, fixedParent, sensitiveDataOrigin,
/// userWithAuth, restricted, sign.
pub(crate) const AK_ATTRIBUTES: u32 =
    (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);
