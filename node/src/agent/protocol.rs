//! The agent socket's wire format: JSON over HTTP/1.1 on a unix socket.
//!
//! Shared by the server in `aver-node` and the client in the enclave, so it
//! depends on serde and the evidence types only (no server code).

use std::fmt;
use std::str::FromStr;

use aver_crds::Sha256Digest;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Registers the caller's TLS key: body [`TlsKeyRequest`], answer 204.
pub const TLS_KEY_PATH: &str = "/v1/tls-key";

/// Quotes the node's PCRs: body [`QuoteRequest`], answer [`QuoteResponse`].
pub const QUOTE_PATH: &str = "/v1/quote";

/// Largest request body the agent reads. Both requests are a few hundred
/// bytes; anything larger is refused (413) before it is parsed.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// `POST /v1/tls-key`: the enclave's TLS key and the model it measured,
/// recorded as the `tls-key` event of the caller's container (once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsKeyRequest {
    /// SHA-256 of the DER SubjectPublicKeyInfo of the enclave's TLS key.
    pub spki_sha256: Sha256Digest,
    /// Digest of the model files the enclave measured before serving.
    pub model_digest: Sha256Digest,
}

/// `POST /v1/quote`: the data the quote is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuoteRequest {
    pub qualifying_data: QualifyingData,
}

/// The 32 bytes the TPM puts into the quote as `extraData` (the enclave
/// passes the digest that binds its batch of verifier nonces), written as
/// 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct QualifyingData(pub [u8; 32]);

/// Why a string is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("qualifying data must be 64 hex characters (32 bytes)")]
pub struct QualifyingDataError;

impl FromStr for QualifyingData {
    type Err = QualifyingDataError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if text.len() != 64 {
            return Err(QualifyingDataError);
        }
        hex::decode_to_slice(text, &mut out).map_err(|_| QualifyingDataError)?;
        Ok(Self(out))
    }
}

impl fmt::Display for QualifyingData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for QualifyingData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QualifyingData({self})")
    }
}

impl Serialize for QualifyingData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QualifyingData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The answer to `POST /v1/quote`: a TPM quote over the node's PCRs, the
/// node log that explains the workload PCR, and the firmware event log and
/// IMA list that explain PCRs 0-10. The enclave wraps it, with its batch
/// proof, into evidence v2. The type lives with the evidence format.
pub use aver_verifier::evidence::NodeQuote as QuoteResponse;

/// The body of every error answer (4xx, 5xx): one line saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use aver_node_log::{NodeEvent, NodeLogEntry};
    use aver_verifier::evidence::{Base64Bytes, PcrValue};

    const SPKI: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const MODEL: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn tls_key_request_is_camel_case_and_strict() {
        let json = format!(r#"{{"spkiSha256":"{SPKI}","modelDigest":"{MODEL}"}}"#);
        let request: TlsKeyRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(request.spki_sha256, Sha256Digest([0x11; 32]));
        assert_eq!(request.model_digest, Sha256Digest([0x22; 32]));
        assert_eq!(serde_json::to_string(&request).unwrap(), json);

        let extra = format!(r#"{{"spkiSha256":"{SPKI}","modelDigest":"{MODEL}","x":1}}"#);
        assert!(serde_json::from_str::<TlsKeyRequest>(&extra).is_err());
        let missing = format!(r#"{{"spkiSha256":"{SPKI}"}}"#);
        assert!(serde_json::from_str::<TlsKeyRequest>(&missing).is_err());
        let bare_hex = format!(
            r#"{{"spkiSha256":"{}","modelDigest":"{MODEL}"}}"#,
            &SPKI[7..]
        );
        assert!(serde_json::from_str::<TlsKeyRequest>(&bare_hex).is_err());
    }

    #[test]
    fn qualifying_data_is_64_hex() {
        let hex64 = "ab".repeat(32);
        let request: QuoteRequest =
            serde_json::from_str(&format!(r#"{{"qualifyingData":"{hex64}"}}"#)).unwrap();
        assert_eq!(request.qualifying_data, QualifyingData([0xab; 32]));
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            format!(r#"{{"qualifyingData":"{hex64}"}}"#)
        );
        for bad in ["", "ab", &"ab".repeat(33), &"zz".repeat(32)] {
            let json = format!(r#"{{"qualifyingData":"{bad}"}}"#);
            assert!(
                serde_json::from_str::<QuoteRequest>(&json).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_str::<QuoteRequest>(r#"{"nonce":"00"}"#).is_err());
    }

    #[test]
    fn quote_response_round_trips() {
        let response = QuoteResponse {
            attest: Base64Bytes(vec![1, 2, 3]),
            signature: Base64Bytes(vec![4]),
            pcrs: vec![PcrValue {
                pcr: 15,
                value: Sha256Digest([0x33; 32]),
            }],
            ak_public: Base64Bytes(vec![5, 6]),
            node_log: vec![NodeLogEntry {
                pcr: 15,
                event: NodeEvent::AgentStart {
                    agent_version: "0.1.0".into(),
                    policy: "version: 1\n".into(),
                },
            }],
            boot_log: Some(Base64Bytes(b"firmware log".to_vec())),
            ima_log: None,
            ak_certificate: None,
            ak_chain: Vec::new(),
        };
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(json["attest"], "AQID");
        assert_eq!(json["akPublic"], "BQY=");
        assert_eq!(json["pcrs"][0]["pcr"], 15);
        assert_eq!(json["nodeLog"][0]["event"]["type"], "agent-start");
        assert_eq!(json["bootLog"], "ZmlybXdhcmUgbG9n");
        assert!(json.get("imaLog").is_none());
        let back: QuoteResponse = serde_json::from_value(json).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn error_body_is_one_field() {
        let body: ErrorBody = serde_json::from_str(r#"{"error":"no"}"#).unwrap();
        assert_eq!(body.error, "no");
        assert!(serde_json::from_str::<ErrorBody>(r#"{"error":"no","code":1}"#).is_err());
    }
}
