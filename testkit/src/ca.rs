//! The test PKI: manufacturer CAs and EK certificates shaped like real ones
//! (empty subject, critical subjectAltName directoryName with the TPM
//! attributes, tcg-kp-EKCertificate EKU, keyEncipherment), made with rcgen.
//!
//! CA keys are ECDSA P-256. EK keys are given as public keys only
//! ([`ForeignKey`]): RSA 2048 or P-256, as the TPM (or [`rsa_ek`]) holds the
//! private half.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SignatureAlgorithm,
};

use crate::der::{oid, seq, set, tlv, utf8};

/// tcg-kp-EKCertificate (2.23.133.8.1), the EK certificate's EKU.
pub const EK_CERTIFICATE_EKU: &[u64] = &[2, 23, 133, 8, 1];

/// A CA that can issue certificates: a root, or an intermediate below one.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    /// The CA's certificate, DER.
    pub der: Vec<u8>,
    /// The CA's certificate, PEM.
    pub pem: String,
}

impl TestCa {
    /// A self-signed root, with no path length limit.
    pub fn root(common_name: &str) -> Self {
        Self::build(common_name, None, BasicConstraints::Unconstrained, |_| {})
    }

    /// An intermediate issued by `parent`.
    pub fn intermediate(common_name: &str, parent: &TestCa, constraint: BasicConstraints) -> Self {
        Self::build(common_name, Some(parent), constraint, |_| {})
    }

    /// A CA named `common_name`, issued by `parent` (self-signed without
    /// one), with keyCertSign and cRLSign; `tweak` may change its
    /// parameters before it is signed.
    pub fn build(
        common_name: &str,
        parent: Option<&TestCa>,
        constraint: BasicConstraints,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Self {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generates a P-256 key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(constraint);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        tweak(&mut params);
        let cert = match parent {
            Some(parent) => params.signed_by(&key, &parent.issuer()),
            None => params.self_signed(&key),
        }
        .expect("signs the CA certificate");
        Self {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            params,
            key,
        }
    }

    /// The CA as rcgen's issuer, to sign certificates this crate has no
    /// builder for.
    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// The CA's private key, PKCS#8 PEM: for tools that sign with it
    /// themselves.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs `params` for `key` with this CA; DER.
    pub fn issue(&self, params: &CertificateParams, key: &impl PublicKeyData) -> Vec<u8> {
        params
            .signed_by(key, &self.issuer())
            .expect("signs the certificate")
            .der()
            .to_vec()
    }

    /// This CA's name and key, certified by `other` instead of its parent;
    /// DER.
    pub fn cross_signed_by(&self, other: &TestCa) -> Vec<u8> {
        self.params
            .signed_by(&self.key, &other.issuer())
            .expect("signs the CA certificate")
            .der()
            .to_vec()
    }
}

/// A public key whose private half this crate does not hold (a TPM's EK),
/// given as its subjectPublicKey bits.
pub struct ForeignKey {
    /// The subjectPublicKey BIT STRING's content: a PKCS#1 RSAPublicKey, or
    /// an uncompressed SEC 1 point.
    pub bits: Vec<u8>,
    /// The key's type, as rcgen names it.
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
    /// An RSA key.
    pub fn rsa(key: &rsa::RsaPublicKey) -> Self {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        Self {
            bits: key
                .to_pkcs1_der()
                .expect("encodes the RSA key")
                .as_bytes()
                .to_vec(),
            algorithm: &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// A P-256 key.
    pub fn p256(key: &p256::PublicKey) -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        Self {
            bits: key.to_encoded_point(false).as_bytes().to_vec(),
            algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }

    /// A fresh P-256 key, its private half thrown away.
    pub fn random_p256() -> Self {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generates a P-256 key");
        Self {
            bits: key.der_bytes().to_vec(),
            algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// The TPM attributes an EK certificate's subjectAltName carries
/// in its directoryName: manufacturer, model, version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpmAttributes {
    /// tcg-at-tpmManufacturer (2.23.133.2.1), "id:" and the vendor ID.
    pub manufacturer: &'static str,
    /// tcg-at-tpmModel (2.23.133.2.2).
    pub model: &'static str,
    /// tcg-at-tpmVersion (2.23.133.2.3), "id:" and the firmware version.
    pub version: &'static str,
}

impl TpmAttributes {
    /// An Infineon SLB 9670, the TPM [`ek_certificate`] certifies.
    pub const INFINEON_SLB9670: Self = Self {
        manufacturer: "id:49465800",
        model: "SLB9670",
        version: "id:000F0010",
    };

    /// What swtpm's EK certificates say (IBM's vendor ID), for
    /// certificates that stand beside ones swtpm-localca issued.
    pub const SWTPM: Self = Self {
        manufacturer: "id:00001014",
        model: "swtpm",
        version: "id:20191023",
    };

    /// The DER of a subjectAltName with one directoryName holding these
    /// attributes, as TPM vendors write it.
    pub fn subject_alt_name(&self) -> Vec<u8> {
        let attribute = |oid_text: &str, value: &str| seq(&[oid(oid_text), utf8(value)]);
        let name = seq(&[set(&[
            attribute("2.23.133.2.1", self.manufacturer),
            attribute("2.23.133.2.2", self.model),
            attribute("2.23.133.2.3", self.version),
        ])]);
        seq(&[tlv(0xa4, &name)])
    }
}

/// The parameters of an EK certificate for `tpm`, valid from January 1st of
/// `validity.0` to January 1st of `validity.1`: empty subject, critical SAN
/// with the TPM attributes, tcg-kp-EKCertificate EKU, keyEncipherment.
pub fn ek_params(validity: (i32, i32), tpm: &TpmAttributes) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.not_before = rcgen::date_time_ymd(validity.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(validity.1, 1, 1);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(EK_CERTIFICATE_EKU.to_vec())];
    let mut san = CustomExtension::from_oid_content(&[2, 5, 29, 17], tpm.subject_alt_name());
    san.set_criticality(true);
    params.custom_extensions = vec![san];
    params
}

/// An EK certificate for `key` of an Infineon SLB 9670, issued by `ca`,
/// valid from `validity.0` to `validity.1` (years, January 1st); `tweak`
/// may change its parameters before it is signed. DER.
pub fn ek_certificate(
    ca: &TestCa,
    key: &ForeignKey,
    validity: (i32, i32),
    tweak: impl FnOnce(&mut CertificateParams),
) -> Vec<u8> {
    let mut params = ek_params(validity, &TpmAttributes::INFINEON_SLB9670);
    tweak(&mut params);
    ca.issue(&params, key)
}

/// The RSA 2048 EK private key tests use where a TPM is simulated in
/// software, PKCS#8 PEM. A fixed key: generating one per test is slow in
/// debug builds.
pub const RSA_EK_PEM: &str = include_str!("test_rsa_ek.pem");

/// The [`RSA_EK_PEM`] key.
pub fn rsa_ek() -> rsa::RsaPrivateKey {
    use rsa::pkcs8::DecodePrivateKey as _;
    rsa::RsaPrivateKey::from_pkcs8_pem(RSA_EK_PEM).expect("the test EK key parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_san_is_one_directory_name_of_three_attributes() {
        let tpm = TpmAttributes {
            manufacturer: "a",
            model: "b",
            version: "c",
        };
        let attribute = |arc: u8, value: u8| {
            vec![
                0x30, 0x0a, 0x06, 0x05, 0x67, 0x81, 0x05, 0x02, arc, 0x0c, 0x01, value,
            ]
        };
        let mut expected = vec![0x30, 0x2a, 0xa4, 0x28, 0x30, 0x26, 0x31, 0x24];
        expected.extend(attribute(1, b'a'));
        expected.extend(attribute(2, b'b'));
        expected.extend(attribute(3, b'c'));
        assert_eq!(tpm.subject_alt_name(), expected);
    }

    #[test]
    fn a_chain_issues_ek_certificates() {
        let root = TestCa::root("Root");
        let intermediate =
            TestCa::intermediate("Intermediate", &root, BasicConstraints::Constrained(0));
        let rsa = ek_certificate(
            &intermediate,
            &ForeignKey::rsa(&rsa_ek().to_public_key()),
            (2020, 2099),
            |_| {},
        );
        let ecc = ek_certificate(&root, &ForeignKey::random_p256(), (2020, 2099), |_| {});
        assert_eq!(rsa[0], 0x30);
        assert_eq!(ecc[0], 0x30);
        assert!(root.pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(root.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(intermediate.cross_signed_by(&root), intermediate.der);
    }
}
