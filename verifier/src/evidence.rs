//! Evidence format v1: the document `aver-enclave` serves and the verifier
//! checks. JSON, because it travels over HTTP and is read by people
//! debugging a failed attestation; binary TPM structures inside it stay in
//! their marshalled form (base64) so their signatures still verify.
//!
//! ```json
//! {
//!   "version": 1,
//!   "nonce": "<64 hex: the verifier's challenge>",
//!   "spkiSha256": "sha256:<SHA-256 of the server's DER SubjectPublicKeyInfo>",
//!   "quote": { "attest": "<base64 TPMS_ATTEST>", "signature": "<base64 TPMT_SIGNATURE>" },
//!   "pcrs": [ { "pcr": 0, "value": "sha256:…" }, … ],          // sha256 bank, as quoted
//!   "akPublic": "<base64 TPMT_PUBLIC of the attestation key>",
//!   "eventLog": [ { "pcr": 15, "event": { "type": "launch-start", … } }, … ],
//!   "batch": { "leafIndex": 3, "siblings": ["<64 hex>", …] }   // optional
//! }
//! ```
//!
//! Unknown fields and versions other than [`EVIDENCE_VERSION`] are rejected:
//! a verifier must never skip over something it does not understand.
//!
//! The EK certificate is not part of the evidence: proving the AK resident
//! in a genuine TPM takes a round trip with the TPM (credential activation),
//! done once per TPM on `/.well-known/aver/activate` with its own documents
//! ([`crate::ek::activation`]); evidence stays one quote per nonce.

use std::fmt;

use aver_crds::Sha256Digest;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::binding::{MerkleProof, Nonce};
use crate::eventlog::LogEntry;

/// The only evidence version this verifier understands.
pub const EVIDENCE_VERSION: u32 = 1;

/// Evidence as received: nothing in it is trusted until
/// [`crate::verify::verify`] turns it into a [`crate::VerifiedReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Evidence {
    pub version: u32,
    pub nonce: Nonce,
    pub spki_sha256: Sha256Digest,
    pub quote: Quote,
    pub pcrs: Vec<PcrValue>,
    pub ak_public: Base64Bytes,
    pub event_log: Vec<LogEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<MerkleProof>,
}

/// A TPM2_Quote result, both parts in TPM wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quote {
    /// Marshalled TPMS_ATTEST (the signed bytes).
    pub attest: Base64Bytes,
    /// Marshalled TPMT_SIGNATURE over `attest`.
    pub signature: Base64Bytes,
}

/// One PCR value of the sha256 bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PcrValue {
    pub pcr: u8,
    pub value: Sha256Digest,
}

/// Bytes carried as standard base64 in JSON.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64Bytes(pub Vec<u8>);

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map(Base64Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Why bytes are not a v1 evidence document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence version {found} is not supported (this verifier understands version {EVIDENCE_VERSION})")]
    UnsupportedVersion { found: u64 },
    #[error("evidence is not a valid v1 document: {0}")]
    Malformed(String),
}

/// Upper bound on an evidence document; real ones are a few KiB. Refusing
/// larger input keeps a hostile server from making the client buffer or
/// parse without limit.
pub const MAX_EVIDENCE_BYTES: usize = 1 << 20;

impl Evidence {
    /// Parses a JSON evidence document, reporting an unsupported version in
    /// preference to whatever syntax a future version may have.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(EvidenceError::Malformed(format!(
                "document is {} bytes, more than the {MAX_EVIDENCE_BYTES}-byte limit",
                bytes.len()
            )));
        }
        match serde_json::from_slice::<Evidence>(bytes) {
            Ok(evidence) if evidence.version == EVIDENCE_VERSION => Ok(evidence),
            Ok(evidence) => Err(EvidenceError::UnsupportedVersion {
                found: u64::from(evidence.version),
            }),
            Err(parse_error) => {
                #[derive(Deserialize)]
                struct VersionOnly {
                    version: u64,
                }
                match serde_json::from_slice::<VersionOnly>(bytes) {
                    Ok(v) if v.version != u64::from(EVIDENCE_VERSION) => {
                        Err(EvidenceError::UnsupportedVersion { found: v.version })
                    }
                    _ => Err(EvidenceError::Malformed(parse_error.to_string())),
                }
            }
        }
    }

    /// Indented JSON, for files people read.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Compact JSON, for the wire.
    pub fn to_json_compact(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn minimal() -> Evidence {
        Evidence {
            version: EVIDENCE_VERSION,
            nonce: Nonce([1; 32]),
            spki_sha256: Sha256Digest([2; 32]),
            quote: Quote {
                attest: Base64Bytes(vec![1, 2, 3]),
                signature: Base64Bytes(vec![4]),
            },
            pcrs: vec![PcrValue {
                pcr: 15,
                value: Sha256Digest([0; 32]),
            }],
            ak_public: Base64Bytes(vec![5, 6]),
            event_log: vec![],
            batch: None,
        }
    }

    #[test]
    fn round_trips_and_rejects_other_versions() {
        let e = minimal();
        let json = e.to_json();
        assert_eq!(Evidence::from_json(&json), Ok(e));
        let v2 = String::from_utf8(json)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        assert_eq!(
            Evidence::from_json(v2.as_bytes()),
            Err(EvidenceError::UnsupportedVersion { found: 2 })
        );
        // A future version with fields this verifier does not know is still
        // reported as a version problem, not a syntax one.
        let v3 = v2.replace("\"version\": 2", "\"version\": 3, \"newField\": true");
        assert_eq!(
            Evidence::from_json(v3.as_bytes()),
            Err(EvidenceError::UnsupportedVersion { found: 3 })
        );
    }

    #[test]
    fn unknown_fields_and_oversize_input_are_malformed() {
        let json = String::from_utf8(minimal().to_json()).unwrap();
        let extra = json.replacen('{', "{\"extra\": 1,", 1);
        assert!(matches!(
            Evidence::from_json(extra.as_bytes()),
            Err(EvidenceError::Malformed(_))
        ));
        let huge = vec![b' '; MAX_EVIDENCE_BYTES + 1];
        assert!(matches!(
            Evidence::from_json(&huge),
            Err(EvidenceError::Malformed(_))
        ));
    }

    #[test]
    fn every_truncation_is_malformed() {
        let json = minimal().to_json();
        for len in 0..json.len() - 1 {
            assert!(
                Evidence::from_json(&json[..len]).is_err(),
                "prefix {len} parsed"
            );
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Evidence::from_json(&bytes);
        }

        #[test]
        fn random_text_never_panics(text in "\\PC{0,300}") {
            let _ = Evidence::from_json(text.as_bytes());
        }
    }
}
