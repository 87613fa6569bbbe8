//! Node log events and their PCR digests.

use serde::{Deserialize, Serialize};

use aver_crds::Sha256Digest;

use crate::encoding::Encoder;
use crate::policy::{AccessKind, ImageIdentity, SandboxInfo};
use crate::spec::ContainerSpec;

/// Domain and version of event digests: a value `aver-node` extends can
/// never be confused with one another tool (or the enclave's v1 log) extends.
pub const EVENT_DOMAIN: &str = "aver-node-event";
pub const EVENT_VERSION: u16 = 1;

/// Upper bound on the number of events since boot. At the bound `aver-node`
/// refuses new sandboxes until the node reboots: it fails closed rather than
/// forget what ran, and a verifier never has to read an unbounded log.
pub const MAX_NODE_LOG_EVENTS: usize = 4096;

/// A typed node event. The PCR is extended with [`NodeEvent::digest`].
// Events are built once per container and then serialised; their size on
// the stack does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum NodeEvent {
    /// `aver-node` started: after a TPM reset, the log's first event; after
    /// a restart of the agent, again, with the policy now in force.
    AgentStart {
        agent_version: String,
        /// The node policy file, verbatim (its bytes are what is hashed).
        policy: String,
    },
    /// A pod sandbox was admitted and created.
    PodSandbox {
        sandbox_id: String,
        sandbox: SandboxInfo,
    },
    /// A container was admitted and created; recorded before it can start.
    Container {
        sandbox_id: String,
        container_id: String,
        name: String,
        attempt: u32,
        image: ImageIdentity,
        spec: ContainerSpec,
    },
    /// An exec, attach or port-forward the node policy let through.
    Access {
        sandbox_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
        kind: AccessKind,
    },
    /// The key-holder container of a confidential pod holds this TLS key and
    /// measured this model.
    TlsKey {
        sandbox_id: String,
        container_id: String,
        spki_sha256: Sha256Digest,
        model_digest: Sha256Digest,
    },
}

impl NodeEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AgentStart { .. } => "agent-start",
            Self::PodSandbox { .. } => "pod-sandbox",
            Self::Container { .. } => "container",
            Self::Access { .. } => "access",
            Self::TlsKey { .. } => "tls-key",
        }
    }

    /// The value extended into the PCR: SHA-256 of the event's canonical
    /// encoding (domain, version, a tag per kind, then every field).
    pub fn digest(&self) -> Sha256Digest {
        let mut e = Encoder::new(EVENT_DOMAIN, EVENT_VERSION);
        match self {
            Self::AgentStart {
                agent_version,
                policy,
            } => {
                e.u8(1).str(agent_version).str(policy);
            }
            Self::PodSandbox {
                sandbox_id,
                sandbox: s,
            } => {
                e.u8(2)
                    .str(sandbox_id)
                    .str(&s.pod.namespace)
                    .str(&s.pod.name)
                    .str(&s.pod.uid)
                    .opt(s.confidential_model.as_deref(), |e, m| {
                        e.str(m);
                    })
                    .bool(s.host_network)
                    .bool(s.host_pid)
                    .bool(s.host_ipc)
                    .bool(s.privileged);
            }
            Self::Container {
                sandbox_id,
                container_id,
                name,
                attempt,
                image,
                spec,
            } => {
                let mut repo_digests = image.repo_digests.clone();
                repo_digests.sort();
                e.u8(3)
                    .str(sandbox_id)
                    .str(container_id)
                    .str(name)
                    .u32(*attempt)
                    .str(&image.reference)
                    .digest_value(&image.id)
                    .strs(&repo_digests)
                    .digest_value(&spec.digest());
            }
            Self::Access {
                sandbox_id,
                container_id,
                kind,
            } => {
                e.u8(4)
                    .str(sandbox_id)
                    .opt(container_id.as_deref(), |e, c| {
                        e.str(c);
                    })
                    .u8(kind.tag());
            }
            Self::TlsKey {
                sandbox_id,
                container_id,
                spki_sha256,
                model_digest,
            } => {
                e.u8(5)
                    .str(sandbox_id)
                    .str(container_id)
                    .digest_value(spki_sha256)
                    .digest_value(model_digest);
            }
        }
        e.digest()
    }
}

/// One entry of the node log as served in evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeLogEntry {
    /// PCR the event was extended into.
    pub pcr: u8,
    pub event: NodeEvent,
}

/// Extends a SHA-256 PCR value the way the TPM does.
pub fn extend(pcr: &Sha256Digest, value: &Sha256Digest) -> Sha256Digest {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(pcr.as_bytes());
    h.update(value.as_bytes());
    Sha256Digest(h.finalize().into())
}

/// Replays `entries` from a reset PCR (all zeros).
pub fn replay<'a>(entries: impl IntoIterator<Item = &'a NodeLogEntry>) -> Sha256Digest {
    entries
        .into_iter()
        .fold(Sha256Digest([0; 32]), |pcr, entry| {
            extend(&pcr, &entry.event.digest())
        })
}
