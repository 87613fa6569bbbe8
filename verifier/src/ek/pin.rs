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
        let der = strip_nv_padding(nv)?;
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

fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// The certificate's own DER: the outer SEQUENCE, without what follows it
/// (NV indices are often larger than the certificate and padded with 0x00
/// or 0xff).
pub fn strip_nv_padding(nv: &[u8]) -> Result<&[u8], String> {
    let too_short = || format!("{} bytes are too short for a certificate", nv.len());
    if nv.first() != Some(&0x30) {
        return Err("does not start with a DER SEQUENCE".into());
    }
    let first = *nv.get(1).ok_or_else(too_short)?;
    let (header, length) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err("DER length is indefinite or too large".into());
        }
        let bytes = nv.get(2..2 + count).ok_or_else(too_short)?;
        let length = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (2 + count, length)
    };
    nv.get(..header + length).ok_or_else(too_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_after_the_certificate_is_not_part_of_it() {
        let der = [0x30, 0x82, 0x00, 0x03, 1, 2, 3];
        let mut padded = der.to_vec();
        padded.extend([0xff; 9]);
        assert_eq!(strip_nv_padding(&padded), Ok(&der[..]));
        assert_eq!(
            strip_nv_padding(&[0x30, 0x02, 5, 6, 0]),
            Ok(&[0x30, 0x02, 5, 6][..])
        );
        assert!(strip_nv_padding(&[0x30, 0x82, 0x01]).is_err());
        assert!(strip_nv_padding(&[0x30, 0x05, 1]).is_err());
        assert!(strip_nv_padding(&[0xff; 8]).is_err());
        assert!(EkPin::from_nv(&padded).is_err());
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
