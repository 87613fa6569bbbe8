//! EK certificate path validation against the policy's manufacturer roots
//! (`trust.ekRoots`).
//!
//! EK certificates are not web certificates, and a WebPKI validator refuses
//! most genuine ones: the subject is often empty, with the TPM's
//! manufacturer, model and firmware version in a critical
//! subjectAltName directoryName (OIDs 2.23.133.2.1/2/3); there is no EKU or
//! only tcg-kp-EKCertificate (2.23.133.8.1); the key may be an RSA key
//! labelled id-RSAES-OAEP. So the path is validated here, with the checks
//! that matter and nothing web-specific:
//!
//! - each certificate's issuer name is its parent's subject, and its
//!   signature verifies with the parent's key (SHA-1 is refused);
//! - the EK certificate and the trust anchor are within their validity
//!   periods; an intermediate must be valid now, or, once expired, must
//!   have been valid when the certificate below it was issued (its
//!   notBefore): vendors keep issuing nothing new from an expired
//!   intermediate, but the EK certificates it issued at manufacture stay
//!   in the field for the TPM's life, and TCG treats the EK certificate as
//!   a statement made at manufacture;
//! - signatures are ECDSA (P-256, P-384, P-521), RSA PKCS#1 v1.5 or RSA-PSS
//!   with SHA-256/384/512 (`ek::cert_signature`); anything else is
//!   unsupported, SHA-1 is weak;
//! - every parent is a CA (basicConstraints cA, keyCertSign if keyUsage is
//!   present) whose pathLenConstraint allows the intermediates below it;
//! - no certificate carries a critical extension this code does not
//!   enforce (basicConstraints, keyUsage, subjectAltName, and on the EK
//!   certificate extendedKeyUsage): a critical nameConstraints or
//!   policyConstraints is refused, not ignored;
//! - the path ends at a certificate of `ekRoots` (every certificate in the
//!   bundle is a trust anchor), within [`MAX_CHAIN`] links;
//! - the leaf is an EK certificate: not a CA, keyUsage (if present) allows
//!   key encipherment or agreement, EKU (if present) names
//!   tcg-kp-EKCertificate, and its key is the kind its NV index says.

use aver_crds::Sha256Digest;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use x509_parser::certificate::X509Certificate;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Name;

use super::cert_signature::{self, SignatureFailure};
use super::credential::EkPublicKey;
use super::EkKind;

/// Most certificates above the EK certificate (intermediates and root).
pub const MAX_CHAIN: usize = 6;

/// Largest certificate accepted anywhere in a path. Real EK and CA
/// certificates are 1–2 KiB.
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;

/// Most EK certificates an activation offer may carry. A TPM has a handful
/// of EK certificate indices (RSA and ECC, low and high range).
pub const MAX_EK_CERTIFICATES: usize = 8;

/// Most intermediates an activation offer may carry. Real vendor paths
/// have one or two.
pub const MAX_INTERMEDIATES: usize = 32;

const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_SUBJECT_ALT_NAME: &str = "2.5.29.17";
const OID_EXTENDED_KEY_USAGE: &str = "2.5.29.37";

const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";
const OID_EK_CERTIFICATE_EKU: &str = "2.23.133.8.1";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_RSAES_OAEP: &str = "1.2.840.113549.1.1.7";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_NIST_P256: &str = "1.2.840.10045.3.1.7";
/// sha1WithRSAEncryption, sha1WithRSA (OIW), ecdsa-with-SHA1.
const SHA1_SIGNATURES: [&str; 3] = ["1.2.840.113549.1.1.5", "1.3.14.3.2.29", "1.2.840.10045.4.1"];

/// Whether a certificate is the EK certificate or a CA of its path: which
/// critical extensions are enforced differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ek,
    /// An AK certificate: nothing beyond the CA rules is enforced on it.
    Ak,
    Ca,
}

/// Why an EK certificate (or the policy's roots) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EkChainError {
    #[error("{field} holds no PEM certificate")]
    NoRoots { field: &'static str },
    #[error("not a bundle of PEM certificates: {0}")]
    BadRoots(String),
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{what} ({subject}) expired on {not_after}")]
    Expired {
        what: String,
        subject: String,
        not_after: String,
    },
    #[error("{what} ({subject}) is not valid before {not_before}")]
    NotYetValid {
        what: String,
        subject: String,
        not_before: String,
    },
    #[error("{subject} was issued by {issuer}, which is neither in {roots} nor a certificate of the chain the TPM presented: certificate from an untrusted CA")]
    UntrustedIssuer {
        subject: String,
        issuer: String,
        /// The policy field of the roots (`trust.ekRoots`, `trust.akRoots`).
        roots: &'static str,
    },
    #[error("the signature on {subject} does not verify with the key of its issuer {issuer}")]
    BadSignature { subject: String, issuer: String },
    #[error("{subject} is signed with SHA-1, which is not accepted")]
    WeakSignature { subject: String },
    #[error("{subject} is signed with an unsupported algorithm {algorithm}")]
    UnsupportedSignature { subject: String, algorithm: String },
    #[error("{subject} issued a certificate but is not a CA (basicConstraints cA / keyUsage keyCertSign)")]
    NotACa { subject: String },
    #[error("{subject} allows {allowed} intermediate CA(s) below it, but the path has {found}")]
    PathTooLong {
        subject: String,
        allowed: u32,
        found: usize,
    },
    #[error("the EK certificate chain is longer than {MAX_CHAIN} certificates or loops")]
    ChainTooLong,
    #[error("{subject} has a critical extension {oid} that this verifier does not understand")]
    UnknownCriticalExtension { subject: String, oid: String },
    #[error("the activation offer holds {found} {what}, more than the {limit} accepted")]
    TooManyCertificates {
        what: &'static str,
        found: usize,
        limit: usize,
    },
    #[error("not an EK certificate ({subject}): {reason}")]
    NotAnEkCertificate { subject: String, reason: String },
    #[error("EK certificate key is not an {expected} key: {found}")]
    WrongKey {
        expected: &'static str,
        found: String,
    },
}

/// The policy's EK roots, parsed. Every certificate of the bundle is a
/// trust anchor.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    certificates: Vec<Vec<u8>>,
    policy_sha256: Sha256Digest,
    /// The policy field the bundle came from, for messages.
    label: &'static str,
}

/// The certificates (DER) of a PEM bundle, each parsed and a CA: the form
/// of `trust.ekRoots` and of the intermediates an enclave serves
/// (`aver-enclave serve --ek-chain`). `what` names the bundle in errors.
pub fn ca_certificates_from_pem(bundle: &str, what: &str) -> Result<Vec<Vec<u8>>, EkChainError> {
    let mut certificates = Vec::new();
    for (index, block) in x509_parser::pem::Pem::iter_from_buffer(bundle.as_bytes()).enumerate() {
        let block = block.map_err(|e| EkChainError::BadRoots(format!("{what}: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(EkChainError::BadRoots(format!(
                "{what}: block {} is a {:?}, not a CERTIFICATE",
                index + 1,
                block.label
            )));
        }
        let what = format!("{what} certificate {}", index + 1);
        let cert = parse(&block.contents, &what)?;
        if !is_ca(&cert, &what)? {
            return Err(EkChainError::NotACa {
                subject: name(cert.subject()),
            });
        }
        certificates.push(block.contents);
    }
    Ok(certificates)
}

impl TrustAnchors {
    /// Parses `trust.ekRoots`. Each certificate must parse and be a CA.
    pub fn from_pem(bundle: &str) -> Result<Self, EkChainError> {
        Self::from_pem_field(bundle, "trust.ekRoots")
    }

    /// Parses the roots of policy field `field` (`trust.akRoots`).
    pub fn from_pem_field(bundle: &str, field: &'static str) -> Result<Self, EkChainError> {
        let certificates = ca_certificates_from_pem(bundle, field)?;
        if certificates.is_empty() {
            return Err(EkChainError::NoRoots { field });
        }
        Ok(Self {
            certificates,
            policy_sha256: roots_sha256(bundle),
            label: field,
        })
    }

    /// SHA-256 of the policy's `ekRoots` text: an activation proven under
    /// these roots counts only for a policy with exactly these roots.
    pub fn policy_sha256(&self) -> Sha256Digest {
        self.policy_sha256
    }

    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }
}

/// The fingerprint of a policy's `ekRoots` text (see
/// [`TrustAnchors::policy_sha256`]).
pub fn roots_sha256(bundle: &str) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bundle.as_bytes()).into())
}

/// What a valid EK certificate says, for reports and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EkCertificateInfo {
    /// Which EK (and NV index) the certificate is for.
    pub kind: EkKind,
    /// SHA-256 of the certificate's DER: the identity of this TPM.
    pub certificate_sha256: Sha256Digest,
    /// Subject, often empty for EK certificates.
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// TPM manufacturer, model and firmware version from the subjectAltName.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmIdentity>,
    /// Subjects of the issuers, from the EK certificate's issuer up to the
    /// trust anchor (last).
    pub chain: Vec<String>,
}

/// The TPM device attributes of an EK certificate (TCG EK Credential
/// Profile §3.2.9), as written (e.g. manufacturer "id:49465800").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmIdentity {
    pub manufacturer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl TpmIdentity {
    /// `manufacturer (vendor) model version`, with the four-letter TCG
    /// vendor code decoded when the id is printable ("id:49465800" → IFX).
    pub fn describe(&self) -> String {
        let mut text = self.manufacturer.clone();
        if let Some(vendor) = vendor_code(&self.manufacturer) {
            text.push_str(&format!(" ({vendor})"));
        }
        if let Some(model) = &self.model {
            text.push_str(&format!(" model {model}"));
        }
        if let Some(version) = &self.version {
            text.push_str(&format!(" version {version}"));
        }
        text
    }
}

fn vendor_code(manufacturer: &str) -> Option<String> {
    let hex_id = manufacturer.strip_prefix("id:")?;
    let bytes = hex::decode(hex_id).ok()?;
    // A 4-byte code, padded with spaces or NULs ("STM ", "IFX\0").
    if bytes.len() != 4 {
        return None;
    }
    let code: String = bytes.iter().map(|&b| b as char).collect();
    let code = code.trim_end_matches([' ', '\0']);
    (!code.is_empty() && code.chars().all(|c| c.is_ascii_graphic())).then(|| code.to_owned())
}

/// An EK certificate whose chain reached a trust anchor, and its key.
#[derive(Debug, Clone)]
pub struct ValidatedEk {
    pub(crate) info: EkCertificateInfo,
    pub(crate) public_key: EkPublicKey,
    /// Unix time at which the first certificate of the path expires.
    pub(crate) valid_until: i64,
}

impl ValidatedEk {
    /// What the certificate says, and its chain.
    pub fn info(&self) -> &EkCertificateInfo {
        &self.info
    }

    /// The certified EK public key, which credentials are wrapped to.
    pub fn public_key(&self) -> &EkPublicKey {
        &self.public_key
    }

    /// Unix time at which the first certificate of the path expires.
    pub fn valid_until(&self) -> i64 {
        self.valid_until
    }
}

/// Checks the size of an activation offer before any certificate is
/// parsed: a hostile server cannot make the verifier try thousands of
/// certificates against each other.
pub fn check_offer_size(ek_certificates: usize, intermediates: usize) -> Result<(), EkChainError> {
    if ek_certificates > MAX_EK_CERTIFICATES {
        return Err(EkChainError::TooManyCertificates {
            what: "EK certificates",
            found: ek_certificates,
            limit: MAX_EK_CERTIFICATES,
        });
    }
    if intermediates > MAX_INTERMEDIATES {
        return Err(EkChainError::TooManyCertificates {
            what: "EK chain certificates",
            found: intermediates,
            limit: MAX_INTERMEDIATES,
        });
    }
    Ok(())
}

/// The DER certificate at the start of an NV index's contents. TPM
/// vendors (STMicroelectronics among them) provision the EK certificate in
/// an NV index larger than it, the rest left erased (0xFF) or zeroed; the
/// outer SEQUENCE's length says where the certificate ends. Anything after
/// it other than only 0xFF or only 0x00 is refused.
pub fn strip_nv_padding(bytes: &[u8]) -> Result<&[u8], EkChainError> {
    strip_nv_padding_of(bytes, "EK certificate")
}

/// [`strip_nv_padding`], naming the certificate `what` in errors.
pub fn strip_nv_padding_of<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], EkChainError> {
    let malformed = |reason: String| EkChainError::Malformed {
        what: what.into(),
        reason,
    };
    let Some(length) = der_sequence_length(bytes) else {
        return Err(malformed(
            "not a DER X.509 certificate (no outer SEQUENCE)".into(),
        ));
    };
    if length > bytes.len() {
        return Err(malformed(format!(
            "truncated: the certificate says {length} bytes, {} were read",
            bytes.len()
        )));
    }
    let (certificate, rest) = bytes.split_at(length);
    let padding = rest.iter().all(|&b| b == 0xff) || rest.iter().all(|&b| b == 0x00);
    if !padding {
        return Err(malformed(format!(
            "{} trailing bytes after the certificate that are not NV padding (0xFF or 0x00)",
            rest.len()
        )));
    }
    Ok(certificate)
}

/// Total length (header included) of the DER SEQUENCE `bytes` starts with.
pub fn der_sequence_length(bytes: &[u8]) -> Option<usize> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    if first < 0x80 {
        return Some(2 + first as usize);
    }
    let count = (first & 0x7f) as usize;
    // DER: long form only for lengths of 128 and more, at most 4 bytes
    // here (certificates are far smaller), no leading zero byte.
    if count == 0 || count > 4 || rest.len() < count || rest[0] == 0 {
        return None;
    }
    let length = rest[..count]
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    if length < 0x80 {
        return None;
    }
    Some(2 + count + length)
}

/// Validates the EK certificate `ek_der` (read from the NV index of
/// `kind`, possibly followed by NV padding) up to one of `anchors`, using
/// `intermediates` (untrusted, presented by the server, at most
/// [`MAX_INTERMEDIATES`]) to build the path, at Unix time `now`.
///
/// This is CPU work bounded by the limits above (a few signature checks
/// per link); callers on an async runtime run it on a blocking thread.
pub fn validate_ek_certificate(
    ek_der: &[u8],
    kind: EkKind,
    intermediates: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<ValidatedEk, EkChainError> {
    check_offer_size(1, intermediates.len())?;
    let now = ASN1Time::from_timestamp(now).map_err(|e| EkChainError::Malformed {
        what: "verifier clock".into(),
        reason: e.to_string(),
    })?;
    let ek_der = strip_nv_padding(ek_der)?;
    let ek = parse(ek_der, "EK certificate")?;
    let ek_subject = name(ek.subject());
    check_validity(&ek, "EK certificate", now)?;
    check_critical_extensions(&ek, Role::Ek)?;
    check_ek_usage(&ek, &ek_subject)?;
    let public_key = ek_public_key(&ek, kind)?;
    let tpm = tpm_identity(&ek);

    let path = validate_path(&ek, intermediates, anchors, now, &EK_PATH)?;
    Ok(ValidatedEk {
        info: EkCertificateInfo {
            kind,
            certificate_sha256: Sha256Digest(Sha256::digest(ek_der).into()),
            subject: ek_subject,
            issuer: name(ek.issuer()),
            serial: serial(ek.raw_serial()),
            not_after: rfc3339(ek.validity().not_after),
            tpm,
            chain: path.chain,
        },
        public_key,
        valid_until: path.valid_until,
    })
}

/// How the certificates of one kind of path are named in errors.
struct PathLabels {
    chain: &'static str,
    intermediate: &'static str,
    root: &'static str,
}

const EK_PATH: PathLabels = PathLabels {
    chain: "EK chain certificate",
    intermediate: "EK intermediate certificate",
    root: "EK root certificate",
};

const AK_PATH: PathLabels = PathLabels {
    chain: "AK chain certificate",
    intermediate: "AK intermediate certificate",
    root: "AK root certificate",
};

/// A path from a leaf up to a trust anchor.
struct ValidPath {
    /// Subjects of the issuers, from the leaf's issuer up to the anchor.
    chain: Vec<String>,
    /// Unix time at which the first certificate of the path expires.
    valid_until: i64,
}

/// The path shared by EK and AK certificates: from `leaf` (whose own
/// validity, critical extensions and role-specific rules the caller has
/// checked) through `intermediates` up to one of `anchors`, checking each
/// link's signature algorithm and signature, each parent's validity,
/// critical extensions, CA status and path length.
fn validate_path(
    leaf: &X509Certificate<'_>,
    intermediates: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: ASN1Time,
    labels: &PathLabels,
) -> Result<ValidPath, EkChainError> {
    let intermediates: Vec<X509Certificate<'_>> = intermediates
        .iter()
        .enumerate()
        .map(|(i, der)| parse(der, &format!("{} {}", labels.chain, i + 1)))
        .collect::<Result<_, _>>()?;
    // Candidates for an issuer are found by subject name, not by trying
    // every certificate presented.
    let mut by_subject: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, cert) in intermediates.iter().enumerate() {
        by_subject
            .entry(cert.subject().as_raw())
            .or_default()
            .push(i);
    }
    let anchor_certs: Vec<X509Certificate<'_>> = anchors
        .certificates
        .iter()
        .map(|der| parse(der, &format!("{} certificate", anchors.label)))
        .collect::<Result<_, _>>()?;

    let mut chain = Vec::new();
    let mut used = Vec::new();
    let mut valid_until = leaf.validity().not_after.timestamp();
    let mut child = leaf;
    // Intermediate CAs between the current issuer and the leaf.
    let mut intermediates_below = 0usize;
    loop {
        if chain.len() >= MAX_CHAIN {
            return Err(EkChainError::ChainTooLong);
        }
        let subject = name(child.subject());
        let issuer_name = child.issuer();
        check_signature_algorithm(child, &subject)?;
        let mut bad_signature = None;
        let signed_by = |issuer: &X509Certificate<'_>| -> Result<bool, EkChainError> {
            match cert_signature::verify(child, issuer.public_key()) {
                Ok(()) => Ok(true),
                Err(SignatureFailure::Bad) => Ok(false),
                Err(failure) => Err(signature_error(failure, &subject)),
            }
        };

        // A trust anchor that signed `child` ends the path.
        for anchor in anchor_certs
            .iter()
            .filter(|a| a.subject().as_raw() == issuer_name.as_raw())
        {
            if signed_by(anchor)? {
                check_validity(anchor, labels.root, now)?;
                check_critical_extensions(anchor, Role::Ca)?;
                check_issuer(anchor, labels.root, intermediates_below)?;
                chain.push(name(anchor.subject()));
                valid_until = valid_until.min(anchor.validity().not_after.timestamp());
                return Ok(ValidPath { chain, valid_until });
            }
            bad_signature = Some(name(anchor.subject()));
        }

        // Otherwise an intermediate the server presented, not used yet.
        let candidates = by_subject
            .get(issuer_name.as_raw())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut next = None;
        for &index in candidates {
            if used.contains(&index) {
                continue;
            }
            if signed_by(&intermediates[index])? {
                next = Some(index);
                break;
            }
            bad_signature.get_or_insert_with(|| name(intermediates[index].subject()));
        }
        let Some(index) = next else {
            if let Some(issuer) = bad_signature {
                return Err(EkChainError::BadSignature { subject, issuer });
            }
            return Err(EkChainError::UntrustedIssuer {
                subject,
                issuer: name(issuer_name),
                roots: anchors.label,
            });
        };
        let parent = &intermediates[index];
        let what = labels.intermediate;
        match check_validity(parent, what, now) {
            Ok(()) => valid_until = valid_until.min(parent.validity().not_after.timestamp()),
            // Expired since, but valid when it issued `child`: accepted,
            // and its past expiry does not bound the path.
            Err(EkChainError::Expired { .. })
                if parent.validity().is_valid_at(child.validity().not_before) => {}
            Err(error) => return Err(error),
        }
        check_critical_extensions(parent, Role::Ca)?;
        check_issuer(parent, what, intermediates_below)?;
        chain.push(name(parent.subject()));
        used.push(index);
        intermediates_below += 1;
        child = parent;
    }
}

/// What a valid AK certificate says, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AkCertificateInfo {
    /// SHA-256 of the certificate's DER (without NV padding).
    pub certificate_sha256: Sha256Digest,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// Subjects of the issuers, from the AK certificate's issuer up to the
    /// trust anchor (last).
    pub chain: Vec<String>,
}

/// An AK certificate (a cloud vTPM's, read from its NV) whose path reached
/// one of `anchors` (`trust.akRoots`), with its SubjectPublicKeyInfo.
#[derive(Debug, Clone)]
pub struct ValidatedAkCertificate {
    pub info: AkCertificateInfo,
    /// DER SubjectPublicKeyInfo of the certified key.
    pub subject_public_key_info: Vec<u8>,
    /// Unix time at which the first certificate of the path expires.
    pub valid_until: i64,
}

/// Validates an AK certificate (possibly followed by NV padding) up to one
/// of `anchors`, using the untrusted `intermediates`, at Unix time `now`:
/// the same path checks as an EK certificate's, without the EK-specific
/// rules for the leaf (its usage and key kind). Whether the certified key
/// is the quoting AK is the caller's check.
pub fn validate_ak_certificate(
    ak_der: &[u8],
    intermediates: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<ValidatedAkCertificate, EkChainError> {
    check_offer_size(1, intermediates.len())?;
    let now = ASN1Time::from_timestamp(now).map_err(|e| EkChainError::Malformed {
        what: "verifier clock".into(),
        reason: e.to_string(),
    })?;
    let ak_der = strip_nv_padding_of(ak_der, "AK certificate")?;
    let ak = parse(ak_der, "AK certificate")?;
    check_validity(&ak, "AK certificate", now)?;
    check_critical_extensions(&ak, Role::Ak)?;
    let path = validate_path(&ak, intermediates, anchors, now, &AK_PATH)?;
    Ok(ValidatedAkCertificate {
        info: AkCertificateInfo {
            certificate_sha256: Sha256Digest(Sha256::digest(ak_der).into()),
            subject: name(ak.subject()),
            issuer: name(ak.issuer()),
            serial: serial(ak.raw_serial()),
            not_after: rfc3339(ak.validity().not_after),
            chain: path.chain,
        },
        subject_public_key_info: ak.public_key().raw.to_vec(),
        valid_until: path.valid_until,
    })
}

fn signature_error(failure: SignatureFailure, subject: &str) -> EkChainError {
    match failure {
        SignatureFailure::Weak => EkChainError::WeakSignature {
            subject: subject.to_owned(),
        },
        SignatureFailure::Unsupported(algorithm) => EkChainError::UnsupportedSignature {
            subject: subject.to_owned(),
            algorithm,
        },
        // Not an error of the algorithm: the caller tries other issuers.
        SignatureFailure::Bad => EkChainError::BadSignature {
            subject: subject.to_owned(),
            issuer: "(unknown)".into(),
        },
    }
}

/// A certificate serial as colon-separated hex, without the leading zero
/// byte DER adds to keep a positive INTEGER positive.
fn serial(raw: &[u8]) -> String {
    let mut bytes = raw;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, EkChainError> {
    let malformed = |reason: String| EkChainError::Malformed {
        what: what.to_owned(),
        reason,
    };
    if der.len() > MAX_CERTIFICATE_BYTES {
        return Err(malformed(format!(
            "{} bytes, more than the {MAX_CERTIFICATE_BYTES}-byte limit",
            der.len()
        )));
    }
    match x509_parser::parse_x509_certificate(der) {
        // RFC 5280 §4.1.1.2: the unsigned copy of the signature algorithm
        // must equal the signed one; otherwise one certificate has many
        // byte forms (and digests) that all verify.
        Ok(([], cert)) if !same_algorithm(&cert) => Err(malformed(
            "the signatureAlgorithm outside the signed part differs from the one inside it"
                .to_owned(),
        )),
        // A signature is whole octets: unused bits in its BIT STRING would
        // again give the certificate other byte forms that verify.
        Ok(([], cert)) if cert.signature_value.unused_bits != 0 => Err(malformed(format!(
            "the signature BIT STRING declares {} unused bits; a signature has none",
            cert.signature_value.unused_bits
        ))),
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(malformed(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        ))),
        Err(e) => Err(malformed(format!("not a DER X.509 certificate ({e})"))),
    }
}

/// Whether the outer signatureAlgorithm is the signed one, byte for byte.
fn same_algorithm(cert: &X509Certificate<'_>) -> bool {
    let outer = &cert.signature_algorithm;
    let inner = &cert.tbs_certificate.signature;
    outer.algorithm == inner.algorithm
        && outer.parameters.as_ref().map(|p| p.as_bytes())
            == inner.parameters.as_ref().map(|p| p.as_bytes())
        && outer.parameters.as_ref().map(|p| p.header.tag())
            == inner.parameters.as_ref().map(|p| p.header.tag())
}

/// A name for messages; EK certificates often have an empty subject.
fn name(n: &X509Name<'_>) -> String {
    let text = n.to_string();
    if text.is_empty() {
        "(empty subject)".to_owned()
    } else {
        format!("\"{text}\"")
    }
}

/// RFC 3339 (UTC) of a certificate time. Written out here because EK
/// certificates commonly use 9999-12-31T23:59:59Z ("no well-defined
/// expiration", RFC 5280), beyond what date libraries represent.
fn rfc3339(time: ASN1Time) -> String {
    let secs = time.timestamp();
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

fn check_validity(
    cert: &X509Certificate<'_>,
    what: &str,
    now: ASN1Time,
) -> Result<(), EkChainError> {
    let validity = cert.validity();
    if now < validity.not_before {
        return Err(EkChainError::NotYetValid {
            what: what.to_owned(),
            subject: name(cert.subject()),
            not_before: rfc3339(validity.not_before),
        });
    }
    if now > validity.not_after {
        return Err(EkChainError::Expired {
            what: what.to_owned(),
            subject: name(cert.subject()),
            not_after: rfc3339(validity.not_after),
        });
    }
    Ok(())
}

fn check_signature_algorithm(
    cert: &X509Certificate<'_>,
    subject: &str,
) -> Result<(), EkChainError> {
    let algorithm = cert.signature_algorithm.algorithm.to_id_string();
    if SHA1_SIGNATURES.contains(&algorithm.as_str()) {
        return Err(EkChainError::WeakSignature {
            subject: subject.to_owned(),
        });
    }
    cert_signature::check_algorithm(cert).map_err(|failure| signature_error(failure, subject))
}

/// Critical extensions are accepted only when this validator enforces
/// them: basicConstraints and keyUsage (CA and EK checks), subjectAltName
/// (EK certificates mark their directoryName SAN critical, which often is
/// their only name), and extendedKeyUsage on the EK certificate (checked
/// for tcg-kp-EKCertificate). Anything else critical, nameConstraints and
/// policyConstraints included, is refused rather than silently ignored.
fn check_critical_extensions(cert: &X509Certificate<'_>, role: Role) -> Result<(), EkChainError> {
    for extension in cert.extensions().iter().filter(|e| e.critical) {
        let oid = extension.oid.to_id_string();
        let enforced = match oid.as_str() {
            OID_BASIC_CONSTRAINTS | OID_KEY_USAGE | OID_SUBJECT_ALT_NAME => true,
            OID_EXTENDED_KEY_USAGE => role == Role::Ek,
            _ => false,
        };
        let parsed = !matches!(
            extension.parsed_extension(),
            ParsedExtension::UnsupportedExtension { .. } | ParsedExtension::ParseError { .. }
        );
        if !enforced || !parsed {
            return Err(EkChainError::UnknownCriticalExtension {
                subject: name(cert.subject()),
                oid,
            });
        }
    }
    Ok(())
}

/// Whether `cert` may issue certificates: basicConstraints cA, and
/// keyCertSign when keyUsage is present.
fn is_ca(cert: &X509Certificate<'_>, what: &str) -> Result<bool, EkChainError> {
    let malformed = |e: x509_parser::error::X509Error| EkChainError::Malformed {
        what: what.to_owned(),
        reason: e.to_string(),
    };
    let ca = cert
        .basic_constraints()
        .map_err(malformed)?
        .is_some_and(|bc| bc.value.ca);
    let signs = cert
        .key_usage()
        .map_err(malformed)?
        .is_none_or(|ku| ku.value.key_cert_sign());
    Ok(ca && signs)
}

fn check_issuer(
    cert: &X509Certificate<'_>,
    what: &str,
    intermediates_below: usize,
) -> Result<(), EkChainError> {
    if !is_ca(cert, what)? {
        return Err(EkChainError::NotACa {
            subject: name(cert.subject()),
        });
    }
    let path_len = cert
        .basic_constraints()
        .ok()
        .flatten()
        .and_then(|bc| bc.value.path_len_constraint);
    if let Some(allowed) = path_len {
        if intermediates_below > allowed as usize {
            return Err(EkChainError::PathTooLong {
                subject: name(cert.subject()),
                allowed,
                found: intermediates_below,
            });
        }
    }
    Ok(())
}

fn check_ek_usage(cert: &X509Certificate<'_>, subject: &str) -> Result<(), EkChainError> {
    let not_ek = |reason: &str| EkChainError::NotAnEkCertificate {
        subject: subject.to_owned(),
        reason: reason.to_owned(),
    };
    let malformed = |e: x509_parser::error::X509Error| EkChainError::Malformed {
        what: "EK certificate".into(),
        reason: e.to_string(),
    };
    if cert
        .basic_constraints()
        .map_err(malformed)?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(not_ek("it is a CA certificate"));
    }
    if let Some(ku) = cert.key_usage().map_err(malformed)? {
        if !ku.value.key_encipherment() && !ku.value.key_agreement() {
            return Err(not_ek(
                "its keyUsage allows neither keyEncipherment nor keyAgreement",
            ));
        }
    }
    if let Some(eku) = cert.extended_key_usage().map_err(malformed)? {
        let names_ek = eku.value.any
            || eku
                .value
                .other
                .iter()
                .any(|oid| oid.to_id_string() == OID_EK_CERTIFICATE_EKU);
        if !names_ek {
            return Err(not_ek(
                "its extendedKeyUsage does not include tcg-kp-EKCertificate (2.23.133.8.1)",
            ));
        }
    }
    Ok(())
}

fn ek_public_key(cert: &X509Certificate<'_>, kind: EkKind) -> Result<EkPublicKey, EkChainError> {
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let key_bytes: &[u8] = &spki.subject_public_key.data;
    match kind {
        EkKind::Rsa2048 => {
            use rsa::pkcs1::DecodeRsaPublicKey as _;
            use rsa::traits::PublicKeyParts as _;
            let wrong = |found: String| EkChainError::WrongKey {
                expected: "RSA 2048",
                found,
            };
            // Some EK certificates label the key id-RSAES-OAEP, the scheme
            // it is used with; the key itself is the same RSAPublicKey.
            if algorithm != OID_RSA_ENCRYPTION && algorithm != OID_RSAES_OAEP {
                return Err(wrong(format!("algorithm {algorithm}")));
            }
            let key = rsa::RsaPublicKey::from_pkcs1_der(key_bytes)
                .map_err(|e| wrong(format!("unreadable RSA key ({e})")))?;
            if key.size() != 256 {
                return Err(wrong(format!("{} bits", key.size() * 8)));
            }
            Ok(EkPublicKey::Rsa2048(key))
        }
        EkKind::EccP256 => {
            let wrong = |found: String| EkChainError::WrongKey {
                expected: "ECC NIST P-256",
                found,
            };
            if algorithm != OID_EC_PUBLIC_KEY {
                return Err(wrong(format!("algorithm {algorithm}")));
            }
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string())
                .unwrap_or_default();
            if curve != OID_NIST_P256 {
                return Err(wrong(format!("curve {curve:?}")));
            }
            let key = p256::PublicKey::from_sec1_bytes(key_bytes)
                .map_err(|_| wrong("not a valid P-256 point".into()))?;
            Ok(EkPublicKey::EccP256(key))
        }
    }
}

/// TPM manufacturer, model and version from a subjectAltName directoryName
/// (or, on some certificates, the subject).
fn tpm_identity(cert: &X509Certificate<'_>) -> Option<TpmIdentity> {
    let mut names: Vec<&X509Name<'_>> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            if let GeneralName::DirectoryName(dn) = general {
                names.push(dn);
            }
        }
    }
    names.push(cert.subject());
    for dn in names {
        let mut manufacturer = None;
        let mut model = None;
        let mut version = None;
        for attribute in dn.iter_attributes() {
            let value = attribute
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|_| hex::encode(attribute.as_slice()));
            match attribute.attr_type().to_id_string().as_str() {
                OID_TPM_MANUFACTURER => manufacturer = Some(value),
                OID_TPM_MODEL => model = Some(value),
                OID_TPM_VERSION => version = Some(value),
                _ => {}
            }
        }
        if let Some(manufacturer) = manufacturer {
            return Some(TpmIdentity {
                manufacturer,
                model,
                version,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use rcgen::BasicConstraints;

    use super::*;
    use crate::ek::activation::unix_now;
    use aver_testkit::der::certificate_pem;
    use aver_testkit::{ek_certificate, rsa_ek, ForeignKey, TestCa};

    fn rsa_key() -> ForeignKey {
        ForeignKey::rsa(&rsa_ek().to_public_key())
    }

    fn anchors(cas: &[&TestCa]) -> TrustAnchors {
        let bundle: String = cas.iter().map(|ca| ca.pem.clone()).collect();
        TrustAnchors::from_pem(&bundle).unwrap()
    }

    fn check(
        ek: &[u8],
        intermediates: &[Vec<u8>],
        roots: &TrustAnchors,
    ) -> Result<ValidatedEk, EkChainError> {
        validate_ek_certificate(ek, EkKind::Rsa2048, intermediates, roots, unix_now())
    }

    #[test]
    fn a_vendor_shaped_ek_certificate_chains_to_its_root() {
        let root = TestCa::root("TPM Vendor Root");
        let ek = ek_certificate(&root, &rsa_key(), (2020, 2099), |_| {});
        let validated = check(&ek, &[], &anchors(&[&root])).unwrap();
        let info = &validated.info;
        assert_eq!(info.kind, EkKind::Rsa2048);
        assert_eq!(info.subject, "(empty subject)");
        assert_eq!(info.chain, vec!["\"CN=TPM Vendor Root\"".to_owned()]);
        let tpm = info.tpm.as_ref().expect("TPM attributes from the SAN");
        assert_eq!(tpm.manufacturer, "id:49465800");
        assert_eq!(
            tpm.describe(),
            "id:49465800 (IFX) model SLB9670 version id:000F0010"
        );
        assert!(matches!(validated.public_key, EkPublicKey::Rsa2048(_)));
        assert_eq!(
            info.certificate_sha256,
            Sha256Digest(Sha256::digest(&ek).into())
        );
    }

    #[test]
    fn intermediates_presented_by_the_server_complete_the_path() {
        let root = TestCa::root("Root");
        let intermediate =
            TestCa::intermediate("Intermediate", &root, BasicConstraints::Constrained(0));
        let ek = ek_certificate(&intermediate, &rsa_key(), (2020, 2099), |_| {});
        let roots = anchors(&[&root]);
        let validated = check(&ek, std::slice::from_ref(&intermediate.der), &roots).unwrap();
        assert_eq!(validated.info.chain.len(), 2);
        assert!(matches!(
            check(&ek, &[], &roots),
            Err(EkChainError::UntrustedIssuer { .. })
        ));
    }

    #[test]
    fn an_untrusted_ca_is_refused() {
        let genuine = TestCa::root("Genuine Vendor");
        let rogue = TestCa::root("Rogue CA");
        let ek = ek_certificate(&rogue, &rsa_key(), (2020, 2099), |_| {});
        let error = check(&ek, &[], &anchors(&[&genuine])).unwrap_err();
        assert!(
            error.to_string().contains("issued by \"CN=Rogue CA\"")
                && error.to_string().contains("untrusted CA"),
            "{error}"
        );
    }

    #[test]
    fn a_same_named_impostor_ca_fails_the_signature() {
        let genuine = TestCa::root("Vendor");
        let impostor = TestCa::root("Vendor");
        let ek = ek_certificate(&impostor, &rsa_key(), (2020, 2099), |_| {});
        assert!(matches!(
            check(&ek, &[], &anchors(&[&genuine])),
            Err(EkChainError::BadSignature { .. })
        ));
    }

    #[test]
    fn expired_and_future_certificates_are_refused_with_dates() {
        let root = TestCa::root("Root");
        let roots = anchors(&[&root]);
        let expired = ek_certificate(&root, &rsa_key(), (2000, 2001), |_| {});
        let error = check(&expired, &[], &roots).unwrap_err();
        assert_eq!(
            error.to_string(),
            "EK certificate ((empty subject)) expired on 2001-01-01T00:00:00Z"
        );
        let future = ek_certificate(&root, &rsa_key(), (2090, 2099), |_| {});
        assert!(matches!(
            check(&future, &[], &roots),
            Err(EkChainError::NotYetValid { .. })
        ));
    }

    #[test]
    fn malformed_certificates_are_refused() {
        let root = TestCa::root("Root");
        let roots = anchors(&[&root]);
        let error = check(b"not a certificate", &[], &roots).unwrap_err();
        assert!(
            error.to_string().starts_with("malformed EK certificate: "),
            "{error}"
        );
        let ek = ek_certificate(&root, &rsa_key(), (2020, 2099), |_| {});
        for cut in [1, ek.len() / 2, ek.len() - 1] {
            assert!(matches!(
                check(&ek[..cut], &[], &roots),
                Err(EkChainError::Malformed { .. })
            ));
        }
        let mut trailing = ek.clone();
        trailing.push(0x42);
        assert!(matches!(
            check(&trailing, &[], &roots),
            Err(EkChainError::Malformed { .. })
        ));
    }

    #[test]
    fn tampered_signatures_are_refused() {
        let root = TestCa::root("Root");
        let mut ek = ek_certificate(&root, &rsa_key(), (2020, 2099), |_| {});
        // Inside the TBS part: the signature no longer covers these bytes.
        let i = ek.len() / 2;
        ek[i] ^= 0x01;
        assert!(check(&ek, &[], &anchors(&[&root])).is_err());
    }

    #[test]
    fn the_unsigned_signature_algorithm_must_equal_the_signed_one() {
        let root = TestCa::root("Root");
        let ek = ek_certificate(&root, &rsa_key(), (2020, 2099), |_| {});
        let cert = x509_parser::parse_x509_certificate(&ek).unwrap().1;
        let oid = cert.signature_algorithm.algorithm.as_bytes().to_vec();
        // The outer AlgorithmIdentifier is the last copy of the OID.
        let at = ek
            .windows(oid.len())
            .rposition(|w| w == oid.as_slice())
            .unwrap();
        let mut altered = ek.clone();
        altered[at + oid.len() - 1] ^= 0x80;
        let err = check(&altered, &[], &anchors(&[&root])).unwrap_err();
        assert!(
            err.to_string().contains("differs from the one inside it"),
            "{err}"
        );
        assert!(check(&ek, &[], &anchors(&[&root])).is_ok());
    }

    #[test]
    fn issuers_must_be_cas_within_their_path_length() {
        let root = TestCa::root("Root");
        let not_ca = TestCa::build(
            "Leaf Posing As CA",
            Some(&root),
            BasicConstraints::Unconstrained,
            |p| {
                p.is_ca = rcgen::IsCa::ExplicitNoCa;
            },
        );
        let ek = ek_certificate(&not_ca, &rsa_key(), (2020, 2099), |_| {});
        assert!(matches!(
            check(&ek, std::slice::from_ref(&not_ca.der), &anchors(&[&root])),
            Err(EkChainError::NotACa { .. })
        ));

        let strict_root = TestCa::build(
            "Strict Root",
            None,
            BasicConstraints::Constrained(0),
            |_| {},
        );
        let intermediate = TestCa::intermediate(
            "Intermediate",
            &strict_root,
            BasicConstraints::Unconstrained,
        );
        let ek = ek_certificate(&intermediate, &rsa_key(), (2020, 2099), |_| {});
        assert!(matches!(
            check(
                &ek,
                std::slice::from_ref(&intermediate.der),
                &anchors(&[&strict_root])
            ),
            Err(EkChainError::PathTooLong {
                allowed: 0,
                found: 1,
                ..
            })
        ));
    }

    #[test]
    fn the_leaf_must_be_an_ek_certificate_of_the_right_kind() {
        let root = TestCa::root("Root");
        let roots = anchors(&[&root]);
        let web = ek_certificate(&root, &rsa_key(), (2020, 2099), |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        });
        assert!(matches!(
            check(&web, &[], &roots),
            Err(EkChainError::NotAnEkCertificate { .. })
        ));
        let signing = ek_certificate(&root, &rsa_key(), (2020, 2099), |p| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        });
        assert!(matches!(
            check(&signing, &[], &roots),
            Err(EkChainError::NotAnEkCertificate { .. })
        ));
        // No EKU at all is a common quirk and accepted.
        let no_eku = ek_certificate(&root, &rsa_key(), (2020, 2099), |p| {
            p.extended_key_usages.clear();
        });
        assert!(check(&no_eku, &[], &roots).is_ok());

        let ecc_key = p256::SecretKey::random(&mut rand::thread_rng()).public_key();
        let ecc = ek_certificate(&root, &ForeignKey::p256(&ecc_key), (2020, 2099), |_| {});
        assert!(matches!(
            check(&ecc, &[], &roots),
            Err(EkChainError::WrongKey {
                expected: "RSA 2048",
                ..
            })
        ));
        let validated =
            validate_ek_certificate(&ecc, EkKind::EccP256, &[], &roots, unix_now()).unwrap();
        assert_eq!(validated.public_key, EkPublicKey::EccP256(ecc_key));
    }

    #[test]
    fn unknown_critical_extensions_are_refused() {
        let root = TestCa::root("Root");
        let ek = ek_certificate(&root, &rsa_key(), (2020, 2099), |p| {
            let mut ext = rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, 1],
                vec![0x05, 0x00],
            );
            ext.set_criticality(true);
            p.custom_extensions.push(ext);
        });
        assert!(matches!(
            check(&ek, &[], &anchors(&[&root])),
            Err(EkChainError::UnknownCriticalExtension { .. })
        ));
    }

    #[test]
    fn certificate_times_print_as_rfc3339_up_to_year_9999() {
        let at = |secs| rfc3339(ASN1Time::from_timestamp(secs).unwrap());
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_577_836_800), "2020-01-01T00:00:00Z");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn root_bundles_are_checked_when_loaded() {
        assert_eq!(
            TrustAnchors::from_pem("").unwrap_err(),
            EkChainError::NoRoots {
                field: "trust.ekRoots"
            }
        );
        assert!(matches!(
            TrustAnchors::from_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ),
            Err(EkChainError::Malformed { .. })
        ));
        let root = TestCa::root("Root");
        let ek = ek_certificate(&root, &rsa_key(), (2020, 2099), |_| {});
        let leaf_pem = certificate_pem(&ek);
        assert!(matches!(
            TrustAnchors::from_pem(&leaf_pem),
            Err(EkChainError::NotACa { .. })
        ));
        let bundle = format!("{}{}", root.pem, TestCa::root("Other").pem);
        let two = TrustAnchors::from_pem(&bundle).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two.policy_sha256(), roots_sha256(&bundle));
    }
}
