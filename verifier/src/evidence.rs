//! The evidence format: the document an endpoint serves and the verifier
//! checks. JSON, because it travels over HTTP and is read by people
//! debugging a failed attestation; binary TPM structures inside it stay in
//! their marshalled form (base64) so their signatures still verify.
//!
//! Two versions, which differ only in the log that explains the quoted
//! workload PCR:
//!
//! - **v2, node-measured** ([`EVIDENCE_VERSION_NODE`]): `nodeLog`, the log
//!   `aver-node` kept below the pod: every pod sandbox and container the node
//!   created since boot, each with its image and canonical spec, and which
//!   container registered which TLS key (`docs/node-measurement.md`).
//! - **v1, enclave-reported** ([`EVIDENCE_VERSION_ENCLAVE`]): `eventLog`, the
//!   launch sequences `aver-enclave` extended itself. Weaker: it proves what
//!   the enclave reports about itself, not what the node ran. Still read, for
//!   policies without `allowed.pod`.
//!
//! ```json
//! {
//!   "version": 2,
//!   "nonce": "<64 hex: the verifier's challenge>",
//!   "spkiSha256": "sha256:<SHA-256 of the server's DER SubjectPublicKeyInfo>",
//!   "quote": { "attest": "<base64 TPMS_ATTEST>", "signature": "<base64 TPMT_SIGNATURE>" },
//!   "pcrs": [ { "pcr": 0, "value": "sha256:…" }, … ],          // sha256 bank, as quoted
//!   "akPublic": "<base64 TPMT_PUBLIC of the attestation key>",
//!   "nodeLog": [                                               // v2; v1 has "eventLog"
//!     { "pcr": 15, "event": { "type": "agent-start", "agentVersion": "0.1.0", "policy": "version: 1\n…" } },
//!     { "pcr": 15, "event": { "type": "pod-sandbox", "sandboxId": "…", "sandbox": { "pod": { … }, … } } },
//!     { "pcr": 15, "event": { "type": "container", "name": "engine", "image": { … }, "spec": { … }, … } },
//!     { "pcr": 15, "event": { "type": "tls-key", "spkiSha256": "sha256:…", "modelDigest": "sha256:…", … } },
//!     …
//!   ],
//!   "bootLog": "<base64 firmware event log>",                 // optional
//!   "imaLog": "<base64 IMA binary measurement list>",          // optional
//!   "batch": { "leafIndex": 3, "siblings": ["<64 hex>", …] },  // optional
//!   "akCertificate": "<base64 DER AK certificate>",           // optional
//!   "akChain": ["<base64 DER intermediate CA>", …]            // optional
//! }
//! ```
//!
//! A v1 document carries `eventLog` (`[ { "pcr": 15, "event": { "type":
//! "launch-start", … } }, … ]`) and no `nodeLog`; a v2 document the reverse.
//! Unknown fields, other versions and a log of the other version's kind are
//! rejected: a verifier must never skip over something it does not
//! understand.
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

use aver_node_log::NodeLogEntry;

use crate::binding::{MerkleProof, Nonce};
use crate::eventlog::LogEntry;

/// Evidence whose workload log is the enclave's own launch sequences
/// (`eventLog`): proves what the enclave reports, not what the node ran.
pub const EVIDENCE_VERSION_ENCLAVE: u32 = 1;

/// Evidence whose workload log is `aver-node`'s log below the pod
/// (`nodeLog`).
pub const EVIDENCE_VERSION_NODE: u32 = 2;

/// Every evidence version this verifier understands.
pub const EVIDENCE_VERSIONS: [u32; 2] = [EVIDENCE_VERSION_ENCLAVE, EVIDENCE_VERSION_NODE];

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
    /// v1 only: the enclave's launch sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_log: Vec<LogEntry>,
    /// v2 only: the node log `aver-node` kept in the workload PCR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_log: Vec<NodeLogEntry>,
    /// The firmware's event log (`binary_bios_measurements`, TCG PC Client
    /// format): explains PCRs 0–9. Absent where the node has none to give
    /// (a software TPM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_log: Option<Base64Bytes>,
    /// The kernel's IMA list (`binary_runtime_measurements`), read right
    /// after the quote: a prefix of it explains PCR 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ima_log: Option<Base64Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<MerkleProof>,
    /// The AK's certificate (DER, NV padding stripped) where the TPM has
    /// one, as cloud vTPMs provision in NV: trusts the AK under
    /// `trust.akRoots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_certificate: Option<Base64Bytes>,
    /// Intermediate CA certificates (DER) between the AK certificate and
    /// `trust.akRoots`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ak_chain: Vec<Base64Bytes>,
}

/// A quote of a node's PCRs and the logs that explain them, as `aver-node`
/// serves it (its agent socket's `POST /v1/quote` answer, and `aver-node
/// quote`'s output). An enclave wraps it, with its batch proof, into
/// evidence v2; `aver verify-node` checks one on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeQuote {
    /// Marshalled `TPMS_ATTEST`, as the TPM signed it.
    pub attest: Base64Bytes,
    /// Marshalled `TPMT_SIGNATURE` over `attest` by the AK.
    pub signature: Base64Bytes,
    /// The quoted PCR values (SHA-256 bank), ascending.
    pub pcrs: Vec<PcrValue>,
    /// Marshalled `TPMT_PUBLIC` of the AK.
    pub ak_public: Base64Bytes,
    /// The node log as of the quote: it replays to the quoted workload PCR.
    pub node_log: Vec<NodeLogEntry>,
    /// The firmware event log, when the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_log: Option<Base64Bytes>,
    /// The IMA list read right after the quote, when the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ima_log: Option<Base64Bytes>,
    /// The AK's certificate (DER, NV padding stripped) where the TPM has
    /// one, as cloud vTPMs provision in NV: trusts the AK under
    /// `trust.akRoots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_certificate: Option<Base64Bytes>,
    /// Intermediate CA certificates (DER) between the AK certificate and
    /// `trust.akRoots`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ak_chain: Vec<Base64Bytes>,
}

impl NodeQuote {
    /// The evidence document (v2) this quote makes for one challenge.
    pub fn into_evidence(
        self,
        nonce: Nonce,
        spki_sha256: Sha256Digest,
        batch: Option<MerkleProof>,
    ) -> Evidence {
        Evidence {
            version: EVIDENCE_VERSION_NODE,
            nonce,
            spki_sha256,
            quote: Quote {
                attest: self.attest,
                signature: self.signature,
            },
            pcrs: self.pcrs,
            ak_public: self.ak_public,
            event_log: Vec::new(),
            node_log: self.node_log,
            boot_log: self.boot_log,
            ima_log: self.ima_log,
            batch,
            ak_certificate: self.ak_certificate,
            ak_chain: self.ak_chain,
        }
    }
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

/// Why bytes are not an evidence document this verifier understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    #[error("evidence version {found} is not supported (this verifier understands versions {EVIDENCE_VERSION_ENCLAVE} and {EVIDENCE_VERSION_NODE})")]
    UnsupportedVersion { found: u64 },
    #[error("evidence is not a valid document: {0}")]
    Malformed(String),
}

/// Upper bound on an evidence document. A v1 document is a few KiB; a v2
/// document carries the node log since boot, which holds every container's
/// full canonical spec (command, args, environment, mounts) and the node
/// policy of every agent start. [`aver_node_log::MAX_NODE_LOG_EVENTS`]
/// bounds the log at 4096 events, and container events are around a KiB of
/// JSON each, so a node at that bound produces documents of a few MiB. A
/// larger document is refused rather than read: a hostile server must not
/// make the client buffer or parse without limit.
pub const MAX_EVIDENCE_BYTES: usize = 4 << 20;

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
            Ok(evidence) => {
                evidence.check_shape()?;
                Ok(evidence)
            }
            Err(parse_error) => {
                #[derive(Deserialize)]
                struct VersionOnly {
                    version: u64,
                }
                match serde_json::from_slice::<VersionOnly>(bytes) {
                    Ok(v) if !EVIDENCE_VERSIONS.iter().any(|&k| u64::from(k) == v.version) => {
                        Err(EvidenceError::UnsupportedVersion { found: v.version })
                    }
                    _ => Err(EvidenceError::Malformed(parse_error.to_string())),
                }
            }
        }
    }

    /// Checks that the version is one this verifier understands and that
    /// the document carries that version's log and not the other's. Parsing
    /// does this; [`crate::verify()`] does it again for documents built in
    /// code.
    pub fn check_shape(&self) -> Result<(), EvidenceError> {
        match self.version {
            EVIDENCE_VERSION_ENCLAVE if !self.node_log.is_empty() => Err(EvidenceError::Malformed(
                "a version 1 (enclave-reported) document carries eventLog, not nodeLog".into(),
            )),
            EVIDENCE_VERSION_NODE if !self.event_log.is_empty() => Err(EvidenceError::Malformed(
                "a version 2 (node-measured) document carries nodeLog, not eventLog".into(),
            )),
            EVIDENCE_VERSION_ENCLAVE | EVIDENCE_VERSION_NODE => Ok(()),
            other => Err(EvidenceError::UnsupportedVersion {
                found: u64::from(other),
            }),
        }
    }

    /// Whether the workload was measured by `aver-node` (v2).
    pub fn is_node_measured(&self) -> bool {
        self.version == EVIDENCE_VERSION_NODE
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
    use crate::binding::HexHash;
    use crate::eventlog::WorkloadEvent;
    use aver_node_log::NodeEvent;
    use proptest::prelude::*;

    fn minimal() -> Evidence {
        Evidence {
            version: EVIDENCE_VERSION_ENCLAVE,
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
            event_log: vec![LogEntry {
                pcr: 15,
                event: WorkloadEvent::Engine {
                    digest: Sha256Digest([3; 32]),
                },
            }],
            node_log: vec![],
            boot_log: None,
            ima_log: None,
            batch: None,
            ak_certificate: None,
            ak_chain: Vec::new(),
        }
    }

    fn node_entry() -> NodeLogEntry {
        NodeLogEntry {
            pcr: 15,
            event: NodeEvent::AgentStart {
                agent_version: "0.1.0".into(),
                policy: "version: 1\n".into(),
            },
        }
    }

    fn minimal_v2() -> Evidence {
        Evidence {
            version: EVIDENCE_VERSION_NODE,
            event_log: vec![],
            node_log: vec![node_entry()],
            ..minimal()
        }
    }

    fn text(e: &Evidence) -> String {
        String::from_utf8(e.to_json()).unwrap()
    }

    #[test]
    fn both_versions_round_trip_with_their_own_log() {
        let v1 = minimal();
        let json = text(&v1);
        assert!(
            json.contains("\"eventLog\"") && !json.contains("nodeLog"),
            "{json}"
        );
        assert_eq!(Evidence::from_json(json.as_bytes()), Ok(v1.clone()));
        assert!(!v1.is_node_measured());

        let v2 = minimal_v2();
        let json = text(&v2);
        assert!(
            json.contains("\"nodeLog\"") && !json.contains("eventLog"),
            "{json}"
        );
        assert!(json.contains("\"type\": \"agent-start\""), "{json}");
        assert_eq!(Evidence::from_json(json.as_bytes()), Ok(v2.clone()));
        assert_eq!(Evidence::from_json(&v2.to_json_compact()), Ok(v2.clone()));
        assert!(v2.is_node_measured());
    }

    #[test]
    fn a_log_of_the_other_version_is_malformed() {
        // v1 with a node log: the version says "the enclave measured itself",
        // the log says otherwise; neither is read.
        let mut v1 = minimal();
        v1.node_log = vec![node_entry()];
        let error = Evidence::from_json(&v1.to_json()).unwrap_err();
        assert!(
            matches!(&error, EvidenceError::Malformed(m) if m.contains("version 1") && m.contains("not nodeLog")),
            "{error}"
        );
        assert_eq!(v1.check_shape(), Err(error));

        let mut v2 = minimal_v2();
        v2.event_log = minimal().event_log;
        let error = Evidence::from_json(&v2.to_json()).unwrap_err();
        assert!(
            matches!(&error, EvidenceError::Malformed(m) if m.contains("version 2") && m.contains("not eventLog")),
            "{error}"
        );
        // Relabelling a v1 document as v2 does not make it node-measured.
        let relabelled = text(&minimal()).replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            Evidence::from_json(relabelled.as_bytes()),
            Err(EvidenceError::Malformed(_))
        ));
        let relabelled = text(&minimal_v2()).replace("\"version\": 2", "\"version\": 1");
        assert!(matches!(
            Evidence::from_json(relabelled.as_bytes()),
            Err(EvidenceError::Malformed(_))
        ));
    }

    #[test]
    fn a_missing_log_parses_and_is_left_to_verification() {
        // An empty log proves nothing, which verification reports with the
        // PCR it concerns; parsing only checks the shape.
        let mut v2 = minimal_v2();
        v2.node_log.clear();
        assert_eq!(Evidence::from_json(&v2.to_json()), Ok(v2));
    }

    #[test]
    fn other_versions_are_unsupported() {
        for e in [minimal(), minimal_v2()] {
            let json = text(&e);
            let from = format!("\"version\": {}", e.version);
            let v3 = json.replace(&from, "\"version\": 3");
            assert_eq!(
                Evidence::from_json(v3.as_bytes()),
                Err(EvidenceError::UnsupportedVersion { found: 3 })
            );
            // A future version with fields this verifier does not know is
            // still reported as a version problem, not a syntax one.
            let v4 = json.replace(&from, "\"version\": 4, \"newField\": true");
            assert_eq!(
                Evidence::from_json(v4.as_bytes()),
                Err(EvidenceError::UnsupportedVersion { found: 4 })
            );
        }
        let mut built = minimal_v2();
        built.version = 0;
        assert_eq!(
            built.check_shape(),
            Err(EvidenceError::UnsupportedVersion { found: 0 })
        );
        assert!(EvidenceError::UnsupportedVersion { found: 3 }
            .to_string()
            .contains("versions 1 and 2"));
    }

    #[test]
    fn unknown_fields_and_oversize_input_are_malformed() {
        for e in [minimal(), minimal_v2()] {
            let json = text(&e);
            let extra = json.replacen('{', "{\"extra\": 1,", 1);
            assert!(matches!(
                Evidence::from_json(extra.as_bytes()),
                Err(EvidenceError::Malformed(_))
            ));
        }
        // Inside a node event too: a field the verifier does not know could
        // be one the gate measured.
        let json =
            text(&minimal_v2()).replace("\"agentVersion\"", "\"debug\": true, \"agentVersion\"");
        assert!(matches!(
            Evidence::from_json(json.as_bytes()),
            Err(EvidenceError::Malformed(_))
        ));
        let unknown_event = text(&minimal_v2()).replace("agent-start", "agent-restart");
        assert!(matches!(
            Evidence::from_json(unknown_event.as_bytes()),
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
        for e in [minimal(), minimal_v2()] {
            let json = e.to_json();
            for len in 0..json.len() - 1 {
                assert!(
                    Evidence::from_json(&json[..len]).is_err(),
                    "prefix {len} parsed"
                );
            }
        }
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Base64Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Base64Bytes)
    }

    fn arb_digest() -> impl Strategy<Value = Sha256Digest> {
        prop::array::uniform32(any::<u8>()).prop_map(Sha256Digest)
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "\\PC{0,12}"
    }

    fn arb_workload_event() -> impl Strategy<Value = WorkloadEvent> {
        prop_oneof![
            (arb_text(), arb_digest()).prop_map(|(enclave_version, enclave_digest)| {
                WorkloadEvent::LaunchStart {
                    enclave_version,
                    enclave_digest,
                }
            }),
            arb_digest().prop_map(|digest| WorkloadEvent::Engine { digest }),
            arb_digest().prop_map(|digest| WorkloadEvent::Model { digest }),
            arb_digest().prop_map(|digest| WorkloadEvent::ServingConfig { digest }),
            arb_digest().prop_map(|digest| WorkloadEvent::TlsSpki { digest }),
        ]
    }

    fn arb_node_event() -> impl Strategy<Value = NodeEvent> {
        use aver_node_log::{AccessKind, ContainerSpec, ImageIdentity, PodRef, SandboxInfo};
        prop_oneof![
            (arb_text(), arb_text()).prop_map(|(agent_version, policy)| NodeEvent::AgentStart {
                agent_version,
                policy
            }),
            (
                arb_text(),
                (arb_text(), arb_text(), arb_text()),
                prop::option::of(arb_text()),
                prop::array::uniform4(any::<bool>()),
            )
                .prop_map(
                    |(sandbox_id, (namespace, name, uid), confidential_model, host)| {
                        NodeEvent::PodSandbox {
                            sandbox_id,
                            sandbox: SandboxInfo {
                                pod: PodRef {
                                    namespace,
                                    name,
                                    uid,
                                },
                                confidential_model,
                                host_network: host[0],
                                host_pid: host[1],
                                host_ipc: host[2],
                                privileged: host[3],
                            },
                        }
                    }
                ),
            (
                (arb_text(), arb_text(), arb_text(), any::<u32>()),
                (
                    arb_text(),
                    arb_digest(),
                    proptest::collection::vec(arb_text(), 0..3)
                ),
                proptest::collection::vec(arb_text(), 0..3),
            )
                .prop_map(
                    |(
                        (sandbox_id, container_id, name, attempt),
                        (reference, id, repo_digests),
                        args,
                    )| {
                        NodeEvent::Container {
                            sandbox_id,
                            container_id,
                            name,
                            attempt,
                            image: ImageIdentity {
                                reference,
                                id,
                                repo_digests,
                            },
                            spec: ContainerSpec {
                                args,
                                ..Default::default()
                            },
                        }
                    }
                ),
            (
                arb_text(),
                prop::option::of(arb_text()),
                prop::sample::select(vec![
                    AccessKind::Exec,
                    AccessKind::ExecSync,
                    AccessKind::Attach,
                    AccessKind::PortForward,
                ]),
            )
                .prop_map(|(sandbox_id, container_id, kind)| NodeEvent::Access {
                    sandbox_id,
                    container_id,
                    kind
                }),
            (arb_text(), arb_text(), arb_digest(), arb_digest()).prop_map(
                |(sandbox_id, container_id, spki_sha256, model_digest)| NodeEvent::TlsKey {
                    sandbox_id,
                    container_id,
                    spki_sha256,
                    model_digest,
                }
            ),
        ]
    }

    /// Any well-shaped document of either version: v1 with an enclave log,
    /// v2 with a node log, every optional part present or not.
    fn arb_evidence() -> impl Strategy<Value = Evidence> {
        let log = prop_oneof![
            proptest::collection::vec(
                (any::<u8>(), arb_workload_event())
                    .prop_map(|(pcr, event)| LogEntry { pcr, event }),
                0..6
            )
            .prop_map(|log| (EVIDENCE_VERSION_ENCLAVE, log, Vec::new())),
            proptest::collection::vec(
                (any::<u8>(), arb_node_event())
                    .prop_map(|(pcr, event)| NodeLogEntry { pcr, event }),
                0..6
            )
            .prop_map(|log| (EVIDENCE_VERSION_NODE, Vec::new(), log)),
        ];
        let proof = (
            any::<u32>(),
            proptest::collection::vec(prop::array::uniform32(any::<u8>()).prop_map(HexHash), 0..4),
        )
            .prop_map(|(leaf_index, siblings)| MerkleProof {
                leaf_index,
                siblings,
            });
        (
            (
                prop::array::uniform32(any::<u8>()).prop_map(Nonce),
                arb_digest(),
                arb_bytes(128),
                arb_bytes(128),
            ),
            proptest::collection::vec(
                (any::<u8>(), arb_digest()).prop_map(|(pcr, value)| PcrValue { pcr, value }),
                0..4,
            ),
            arb_bytes(128),
            log,
            (
                prop::option::of(arb_bytes(256)),
                prop::option::of(arb_bytes(256)),
                prop::option::of(proof),
            ),
            (
                prop::option::of(arb_bytes(128)),
                proptest::collection::vec(arb_bytes(64), 0..3),
            ),
        )
            .prop_map(
                |(
                    (nonce, spki_sha256, attest, signature),
                    pcrs,
                    ak_public,
                    (version, event_log, node_log),
                    (boot_log, ima_log, batch),
                    (ak_certificate, ak_chain),
                )| Evidence {
                    version,
                    nonce,
                    spki_sha256,
                    quote: Quote { attest, signature },
                    pcrs,
                    ak_public,
                    event_log,
                    node_log,
                    boot_log,
                    ima_log,
                    batch,
                    ak_certificate,
                    ak_chain,
                },
            )
    }

    proptest! {
        #[test]
        fn documents_parse_back_from_both_encodings(e in arb_evidence()) {
            prop_assert_eq!(Evidence::from_json(&e.to_json()), Ok(e.clone()));
            prop_assert_eq!(Evidence::from_json(&e.to_json_compact()), Ok(e));
        }

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
