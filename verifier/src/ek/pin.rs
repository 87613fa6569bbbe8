//! Node pinning: what identifies one enrolled TPM in `trust.ekPins`.
//!
//! `trust.ekRoots` trusts every TPM its vendors certified; a pin is the
//! SHA-256 of one TPM's EK certificate (its DER, without the padding an NV
//! index may carry after it) or of its EK public key (DER
//! SubjectPublicKeyInfo, which survives a re-issued certificate).
//! `aver-node enroll` prints both; the verifier accepts either.

use aver_crds::Sha256Digest;
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The two digests a TPM can be pinned by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EkPin {
    /// SHA-256 of the EK certificate's DER, NV padding stripped.
    pub certificate_sha256: Sha256Digest,
    /// SHA-256 of the certified EK public key (DER SubjectPublicKeyInfo).
    pub public_key_sha256: Sha256Digest,
}

impl EkPin {
    /// The digests of the EK certificate read from an NV index (`nv`, which
    /// may be padded after the certificate), or why it is not one.
    pub fn from_nv(nv: &[u8]) -> Result<Self, String> {
        let der = super::chain::strip_nv_padding(nv).map_err(|e| e.to_string())?;
        let (_, certificate) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        Ok(Self {
            certificate_sha256: sha256(der),
            public_key_sha256: sha256(certificate.public_key().raw),
        })
    }

    /// Whether `pins` lists this TPM by either digest.
    pub fn is_pinned(&self, pins: &[Sha256Digest]) -> Option<Sha256Digest> {
        [self.certificate_sha256, self.public_key_sha256]
            .into_iter()
            .find(|digest| pins.contains(digest))
    }
}

/// What `aver-node enroll` prints: the `trust:` entries that pin this TPM
/// (EK certificate and EK public key digest of every EK certificate in NV)
/// and, commented out, the AK name for trusting the AK by name instead.
/// Errors name an EK certificate that cannot be read as one.
pub fn enrolment_yaml(
    ak_name: &str,
    certificates: &[(super::EkKind, Vec<u8>)],
) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# This node's TPM, for the policy's trust: section (with trust.ekRoots set)."
    );
    let _ = writeln!(
        out,
        "# Either digest of an EK pins it; the public key outlives a re-issued certificate."
    );
    let _ = writeln!(out, "ekPins:");
    for (kind, nv) in certificates {
        let pin = EkPin::from_nv(nv).map_err(|reason| {
            format!(
                "{kind} EK certificate (NV 0x{:08x}): {reason}",
                kind.certificate_nv_index()
            )
        })?;
        let index = kind.certificate_nv_index();
        let _ = writeln!(
            out,
            "  - {}  # {kind} EK certificate (NV 0x{index:08x})",
            pin.certificate_sha256
        );
        let _ = writeln!(out, "  - {}  # {kind} EK public key", pin.public_key_sha256);
    }
    let _ = writeln!(
        out,
        "# Or trust this attestation key by name (no activation, no ekRoots needed):"
    );
    let _ = writeln!(out, "# akNames: [\"{ak_name}\"]");
    Ok(out)
}

fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_padded_certificate_has_no_pin() {
        for nv in [&[0x30, 0x82, 0x01][..], &[0x30, 0x05, 1], &[0xff; 8]] {
            assert!(EkPin::from_nv(nv).is_err(), "{nv:?}");
        }
    }

    #[test]
    fn a_padded_certificate_pins_by_its_der_and_its_public_key() {
        let der = aver_testkit::TestCa::root("pin test").der;
        let mut nv = der.clone();
        nv.resize(der.len() + 100, 0xff);
        let pin = EkPin::from_nv(&nv).unwrap();
        assert_eq!(pin.certificate_sha256, sha256(&der));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(pin.public_key_sha256, sha256(cert.public_key().raw));
        assert_ne!(pin.certificate_sha256, pin.public_key_sha256);

        let name = format!("000b{}", "ab".repeat(32));
        let yaml = enrolment_yaml(&name, &[(super::super::EkKind::Rsa2048, nv)]).unwrap();
        assert!(yaml.contains(&format!(
            "  - {}  # rsa2048 EK certificate (NV 0x01c00002)",
            pin.certificate_sha256
        )));
        assert!(yaml.contains(&format!(
            "  - {}  # rsa2048 EK public key",
            pin.public_key_sha256
        )));
        assert!(yaml.contains(&name));
        let error = enrolment_yaml(&name, &[(super::super::EkKind::EccP256, vec![0xff; 4])]);
        assert!(error.unwrap_err().contains("NV 0x01c0000a"));
    }

    #[test]
    fn either_digest_pins() {
        let pin = EkPin {
            certificate_sha256: Sha256Digest([1; 32]),
            public_key_sha256: Sha256Digest([2; 32]),
        };
        assert_eq!(
            pin.is_pinned(&[Sha256Digest([2; 32])]),
            Some(Sha256Digest([2; 32]))
        );
        assert_eq!(
            pin.is_pinned(&[Sha256Digest([1; 32])]),
            Some(Sha256Digest([1; 32]))
        );
        assert_eq!(pin.is_pinned(&[Sha256Digest([3; 32])]), None);
    }
}
