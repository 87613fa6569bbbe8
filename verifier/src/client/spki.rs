//! The SubjectPublicKeyInfo digest that evidence binds.

use aver_crds::Sha256Digest;
use sha2::{Digest, Sha256};

/// SHA-256 of the DER SubjectPublicKeyInfo of a certificate: the TLS key's
/// identity, independent of the certificate's other (unauthenticated) fields.
pub fn spki_sha256(
    cert_der: &[u8],
) -> Result<Sha256Digest, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)?;
    Ok(Sha256Digest(
        Sha256::digest(cert.tbs_certificate.subject_pki.raw).into(),
    ))
}
