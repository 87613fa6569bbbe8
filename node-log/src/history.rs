//! What a node log proves once it replays to the quoted PCR: every pod and
//! container the node started since boot, each admitted by the node policy
//! in force, and which container holds which TLS key.

use std::collections::BTreeMap;

use aver_crds::{AllowedPod, Sha256Digest};

use crate::event::{replay, NodeEvent, NodeLogEntry, MAX_NODE_LOG_EVENTS};
use crate::policy::{AccessKind, ImageIdentity, NodePolicy, NodePolicyError, Refusal, SandboxInfo};
use crate::spec::ContainerSpec;

/// Why a node log proves nothing, or not what the verifier needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeLogError {
    #[error("node log is empty: aver-node never measured anything into PCR {0}")]
    Empty(u8),
    #[error("node log has {0} events, more than the {MAX_NODE_LOG_EVENTS} a node records")]
    TooLong(usize),
    #[error("node log entry {index} is for PCR {found}, but the workload PCR is {expected}")]
    WrongPcr {
        index: usize,
        found: u8,
        expected: u8,
    },
    #[error("node log replays to {replayed} but the quoted PCR {pcr} is {quoted}: the PCR was extended by something not in the log, or the log was edited")]
    ReplayMismatch {
        pcr: u8,
        replayed: Sha256Digest,
        quoted: Sha256Digest,
    },
    #[error("node log starts with {0}, not agent-start: something measured before aver-node")]
    NoAgentStart(&'static str),
    #[error("node log entry {index}: the node policy does not parse: {source}")]
    BadNodePolicy {
        index: usize,
        source: NodePolicyError,
    },
    #[error("node log entry {index}: node policy {digest} is not one the policy allows (allowed.nodePolicies)")]
    NodePolicyNotAllowed { index: usize, digest: Sha256Digest },
    #[error("node log entry {index}: sandbox {id} is recorded twice")]
    DuplicateSandbox { index: usize, id: String },
    #[error("node log entry {index}: container {id} is recorded twice")]
    DuplicateContainer { index: usize, id: String },
    #[error("node log entry {index} ({kind}) names sandbox {id}, which the log never created")]
    UnknownSandbox {
        index: usize,
        kind: &'static str,
        id: String,
    },
    #[error("node log entry {index} ({kind}) names container {id}, which the log never created in that sandbox")]
    UnknownContainer {
        index: usize,
        kind: &'static str,
        id: String,
    },
    #[error("node log entry {index}: {refusal}")]
    NotAllowed { index: usize, refusal: Refusal },
    #[error("node log entry {index}: TLS key registered by container {container} of pod {pod}, which is not the key holder of a confidential model pod")]
    KeyFromNonHolder {
        index: usize,
        container: String,
        pod: String,
    },
    #[error("node log entry {index}: container {container} registered a TLS key twice")]
    KeyRegisteredTwice { index: usize, container: String },
    #[error("no container on this node registered the TLS key {0}: the key was not measured by aver-node")]
    KeyNotMeasured(Sha256Digest),
    #[error("TLS key {0} is registered more than once on this node")]
    KeyBoundTwice(Sha256Digest),
}

/// A pod sandbox the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    pub info: SandboxInfo,
    /// IDs of its containers, in creation order.
    pub containers: Vec<String>,
    pub accesses: Vec<AccessKind>,
    /// Index of the `agent-start` whose policy admitted it.
    pub policy_index: usize,
}

/// A container the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub image: ImageIdentity,
    pub spec: ContainerSpec,
    pub spec_digest: Sha256Digest,
}

/// A TLS key registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub sandbox_id: String,
    pub container_id: String,
    pub spki_sha256: Sha256Digest,
    pub model_digest: Sha256Digest,
}

/// The history of a node since boot, as a replayed log proves it.
#[derive(Debug, Clone)]
pub struct NodeHistory {
    /// Digests of the node policies in force, one per `agent-start`.
    pub policies: Vec<Sha256Digest>,
    pub agent_starts: usize,
    pub sandboxes: BTreeMap<String, SandboxRecord>,
    pub containers: BTreeMap<String, ContainerRecord>,
    pub keys: Vec<KeyRecord>,
}

/// SHA-256 of a node policy file, as `allowed.nodePolicies` lists it.
pub fn policy_digest(text: &str) -> Sha256Digest {
    use sha2::{Digest as _, Sha256};
    Sha256Digest(Sha256::digest(text.as_bytes()).into())
}

impl NodeHistory {
    /// Replays the log to the quoted PCR, then re-applies the node policy to
    /// every event. `allowed_policies`, if given, lists the node policy
    /// digests the verifier accepts.
    pub fn from_log(
        entries: &[NodeLogEntry],
        pcr: u8,
        quoted: &Sha256Digest,
        allowed_policies: Option<&[Sha256Digest]>,
    ) -> Result<Self, NodeLogError> {
        if entries.is_empty() {
            return Err(NodeLogError::Empty(pcr));
        }
        if entries.len() > MAX_NODE_LOG_EVENTS {
            return Err(NodeLogError::TooLong(entries.len()));
        }
        if let Some((index, e)) = entries.iter().enumerate().find(|(_, e)| e.pcr != pcr) {
            return Err(NodeLogError::WrongPcr {
                index,
                found: e.pcr,
                expected: pcr,
            });
        }
        let replayed = replay(entries);
        if replayed != *quoted {
            return Err(NodeLogError::ReplayMismatch {
                pcr,
                replayed,
                quoted: *quoted,
            });
        }
        let mut h = Self {
            policies: Vec::new(),
            agent_starts: 0,
            sandboxes: BTreeMap::new(),
            containers: BTreeMap::new(),
            keys: Vec::new(),
        };
        let mut policy: Option<(usize, NodePolicy)> = None;
        for (index, entry) in entries.iter().enumerate() {
            h.apply(index, &entry.event, &mut policy, allowed_policies)?;
        }
        Ok(h)
    }

    fn apply(
        &mut self,
        index: usize,
        event: &NodeEvent,
        policy: &mut Option<(usize, NodePolicy)>,
        allowed_policies: Option<&[Sha256Digest]>,
    ) -> Result<(), NodeLogError> {
        if let NodeEvent::AgentStart { policy: text, .. } = event {
            let digest = policy_digest(text);
            if allowed_policies.is_some_and(|allowed| !allowed.contains(&digest)) {
                return Err(NodeLogError::NodePolicyNotAllowed { index, digest });
            }
            let parsed = NodePolicy::from_yaml(text)
                .map_err(|source| NodeLogError::BadNodePolicy { index, source })?;
            *policy = Some((index, parsed));
            self.policies.push(digest);
            self.agent_starts += 1;
            return Ok(());
        }
        let Some((policy_index, policy)) = policy.as_ref() else {
            return Err(NodeLogError::NoAgentStart(event.kind()));
        };
        let not_allowed = |refusal| NodeLogError::NotAllowed { index, refusal };
        match event {
            // Handled above, before a policy is required.
            NodeEvent::AgentStart { .. } => {}
            NodeEvent::PodSandbox {
                sandbox_id,
                sandbox,
            } => {
                if self.sandboxes.contains_key(sandbox_id) {
                    return Err(NodeLogError::DuplicateSandbox {
                        index,
                        id: sandbox_id.clone(),
                    });
                }
                policy.admit_sandbox(sandbox).map_err(not_allowed)?;
                self.sandboxes.insert(
                    sandbox_id.clone(),
                    SandboxRecord {
                        id: sandbox_id.clone(),
                        info: sandbox.clone(),
                        containers: Vec::new(),
                        accesses: Vec::new(),
                        policy_index: *policy_index,
                    },
                );
            }
            NodeEvent::Container {
                sandbox_id,
                container_id,
                name,
                attempt,
                image,
                spec,
            } => {
                let sandbox = self.sandboxes.get_mut(sandbox_id).ok_or_else(|| {
                    NodeLogError::UnknownSandbox {
                        index,
                        kind: event.kind(),
                        id: sandbox_id.clone(),
                    }
                })?;
                if self.containers.contains_key(container_id) {
                    return Err(NodeLogError::DuplicateContainer {
                        index,
                        id: container_id.clone(),
                    });
                }
                policy
                    .admit_container(&sandbox.info, name, image, spec)
                    .map_err(not_allowed)?;
                sandbox.containers.push(container_id.clone());
                self.containers.insert(
                    container_id.clone(),
                    ContainerRecord {
                        id: container_id.clone(),
                        sandbox_id: sandbox_id.clone(),
                        name: name.clone(),
                        attempt: *attempt,
                        image: image.clone(),
                        spec_digest: spec.digest(),
                        spec: spec.clone(),
                    },
                );
            }
            NodeEvent::Access {
                sandbox_id,
                container_id,
                kind,
            } => {
                let container = match container_id {
                    None => None,
                    Some(id) => Some(self.container_in(index, event, sandbox_id, id)?),
                };
                let sandbox =
                    self.sandboxes
                        .get(sandbox_id)
                        .ok_or_else(|| NodeLogError::UnknownSandbox {
                            index,
                            kind: event.kind(),
                            id: sandbox_id.clone(),
                        })?;
                policy
                    .admit_access(
                        &sandbox.info,
                        container.as_ref().map(|c| (c.name.as_str(), &c.image)),
                        *kind,
                    )
                    .map_err(not_allowed)?;
                if let Some(s) = self.sandboxes.get_mut(sandbox_id) {
                    s.accesses.push(*kind);
                }
            }
            NodeEvent::TlsKey {
                sandbox_id,
                container_id,
                spki_sha256,
                model_digest,
            } => {
                let container = self.container_in(index, event, sandbox_id, container_id)?;
                let sandbox = &self.sandboxes[sandbox_id];
                if sandbox.info.confidential_model.is_none()
                    || container.name != policy.confidential.key_holder
                {
                    return Err(NodeLogError::KeyFromNonHolder {
                        index,
                        container: container.name,
                        pod: sandbox.info.pod.to_string(),
                    });
                }
                if self.keys.iter().any(|k| k.container_id == *container_id) {
                    return Err(NodeLogError::KeyRegisteredTwice {
                        index,
                        container: container.name,
                    });
                }
                self.keys.push(KeyRecord {
                    sandbox_id: sandbox_id.clone(),
                    container_id: container_id.clone(),
                    spki_sha256: *spki_sha256,
                    model_digest: *model_digest,
                });
            }
        }
        Ok(())
    }

    fn container_in(
        &self,
        index: usize,
        event: &NodeEvent,
        sandbox_id: &str,
        container_id: &str,
    ) -> Result<ContainerRecord, NodeLogError> {
        self.containers
            .get(container_id)
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .ok_or_else(|| NodeLogError::UnknownContainer {
                index,
                kind: event.kind(),
                id: container_id.to_owned(),
            })
    }

    /// The pod that registered `spki`: exactly one registration must exist.
    pub fn key_holder(&self, spki: &Sha256Digest) -> Result<BoundPod<'_>, NodeLogError> {
        let mut keys = self.keys.iter().filter(|k| k.spki_sha256 == *spki);
        let key = keys.next().ok_or(NodeLogError::KeyNotMeasured(*spki))?;
        if keys.next().is_some() {
            return Err(NodeLogError::KeyBoundTwice(*spki));
        }
        let sandbox = &self.sandboxes[&key.sandbox_id];
        let containers = sandbox
            .containers
            .iter()
            .map(|id| &self.containers[id])
            .collect();
        Ok(BoundPod {
            key,
            sandbox,
            containers,
        })
    }
}

/// The pod holding the attested TLS key, with everything it ran.
#[derive(Debug, Clone)]
pub struct BoundPod<'a> {
    pub key: &'a KeyRecord,
    pub sandbox: &'a SandboxRecord,
    pub containers: Vec<&'a ContainerRecord>,
}

/// Why the key-holding pod is not the one the policy allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PodMismatch {
    #[error("container {name} (image {image}) in pod {pod}: not an allowed container")]
    UnexpectedContainer {
        name: String,
        image: String,
        pod: String,
    },
    #[error("container {name} in pod {pod} runs image {image}, not an allowed one")]
    ImageNotAllowed {
        name: String,
        image: String,
        pod: String,
    },
    #[error("container {name} in pod {pod} runs spec {digest}, not an allowed one{}", if .changes.is_empty() { String::new() } else { format!(" ({})", .changes.join("; ")) })]
    SpecNotAllowed {
        name: String,
        pod: String,
        digest: Sha256Digest,
        changes: Vec<String>,
    },
    #[error("pod {pod} never ran its {name} container")]
    MissingContainer { name: String, pod: String },
    #[error("{kind} into pod {pod} was recorded: someone reached inside the pod")]
    Accessed { kind: &'static str, pod: String },
    #[error("pod {pod} is not a confidential model pod")]
    NotConfidential { pod: String },
}

impl BoundPod<'_> {
    /// Checks that the pod ran exactly the allowed containers and nothing
    /// else, and that nobody reached inside it. `reference_specs` are the
    /// expected specs, if the verifier has them, to say what differs.
    pub fn check(
        &self,
        allowed: &AllowedPod,
        reference_specs: &[(String, ContainerSpec)],
    ) -> Result<(), PodMismatch> {
        let pod = self.sandbox.info.pod.to_string();
        if self.sandbox.info.confidential_model.is_none() {
            return Err(PodMismatch::NotConfidential { pod });
        }
        if let Some(kind) = self.sandbox.accesses.first() {
            return Err(PodMismatch::Accessed {
                kind: kind.name(),
                pod,
            });
        }
        for c in &self.containers {
            let Some(rule) = allowed.containers.iter().find(|a| a.name == c.name) else {
                return Err(PodMismatch::UnexpectedContainer {
                    name: c.name.clone(),
                    image: c.image.shown(),
                    pod,
                });
            };
            if !rule.image_digests.iter().any(|d| c.image.matches(d)) {
                return Err(PodMismatch::ImageNotAllowed {
                    name: c.name.clone(),
                    image: c.image.shown(),
                    pod,
                });
            }
            if !rule.spec_digests.contains(&c.spec_digest) {
                let changes = reference_specs
                    .iter()
                    .find(|(n, _)| *n == c.name)
                    .map(|(_, s)| c.spec.differences(s))
                    .unwrap_or_default();
                return Err(PodMismatch::SpecNotAllowed {
                    name: c.name.clone(),
                    pod,
                    digest: c.spec_digest,
                    changes,
                });
            }
        }
        for rule in &allowed.containers {
            if !self.containers.iter().any(|c| c.name == rule.name) {
                return Err(PodMismatch::MissingContainer {
                    name: rule.name.clone(),
                    pod,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PodRef, CONFIDENTIAL_LABEL};
    use aver_crds::AllowedContainer;

    const POLICY: &str = "version: 1\n";

    fn entry(event: NodeEvent) -> NodeLogEntry {
        NodeLogEntry { pcr: 15, event }
    }

    fn sandbox(id: &str, confidential: bool) -> NodeEvent {
        NodeEvent::PodSandbox {
            sandbox_id: id.into(),
            sandbox: SandboxInfo {
                pod: PodRef {
                    namespace: "ml".into(),
                    name: format!("llama-{id}"),
                    uid: id.into(),
                },
                confidential_model: confidential.then(|| "llama".into()),
                host_network: false,
                host_pid: false,
                host_ipc: false,
                privileged: false,
            },
        }
    }

    fn image(b: u8) -> ImageIdentity {
        ImageIdentity {
            reference: "img".into(),
            id: Sha256Digest([b; 32]),
            repo_digests: vec![],
        }
    }

    fn spec(arg: &str) -> ContainerSpec {
        ContainerSpec {
            args: vec![arg.into()],
            ..Default::default()
        }
    }

    fn container(sandbox: &str, id: &str, name: &str, img: u8, arg: &str) -> NodeEvent {
        NodeEvent::Container {
            sandbox_id: sandbox.into(),
            container_id: id.into(),
            name: name.into(),
            attempt: 0,
            image: image(img),
            spec: spec(arg),
        }
    }

    fn key(sandbox: &str, container: &str, spki: u8) -> NodeEvent {
        NodeEvent::TlsKey {
            sandbox_id: sandbox.into(),
            container_id: container.into(),
            spki_sha256: Sha256Digest([spki; 32]),
            model_digest: Sha256Digest([9; 32]),
        }
    }

    fn genuine() -> Vec<NodeLogEntry> {
        [
            NodeEvent::AgentStart {
                agent_version: "0.1.0".into(),
                policy: POLICY.into(),
            },
            sandbox("s1", true),
            container("s1", "c-enclave", "enclave", 1, "serve"),
            container("s1", "c-engine", "engine", 2, "--host=127.0.0.1"),
            key("s1", "c-enclave", 0xaa),
        ]
        .into_iter()
        .map(entry)
        .collect()
    }

    fn allowed() -> AllowedPod {
        AllowedPod {
            containers: vec![
                AllowedContainer {
                    name: "enclave".into(),
                    image_digests: vec![Sha256Digest([1; 32])],
                    spec_digests: vec![spec("serve").digest()],
                },
                AllowedContainer {
                    name: "engine".into(),
                    image_digests: vec![Sha256Digest([2; 32])],
                    spec_digests: vec![spec("--host=127.0.0.1").digest()],
                },
            ],
        }
    }

    fn history(log: &[NodeLogEntry]) -> Result<NodeHistory, NodeLogError> {
        NodeHistory::from_log(log, 15, &replay(log), None)
    }

    #[test]
    fn genuine_pod_is_bound_and_allowed() {
        let log = genuine();
        let h = history(&log).unwrap();
        let bound = h.key_holder(&Sha256Digest([0xaa; 32])).unwrap();
        assert_eq!(bound.sandbox.info.pod.name, "llama-s1");
        bound.check(&allowed(), &[]).unwrap();
        assert!(matches!(
            h.key_holder(&Sha256Digest([0xbb; 32])),
            Err(NodeLogError::KeyNotMeasured(_))
        ));
        assert_eq!(CONFIDENTIAL_LABEL, "aver.dev/confidential-model");
    }

    #[test]
    fn replay_and_structure_are_enforced() {
        let log = genuine();
        let mut edited = log.clone();
        edited[3].event = container("s1", "c-engine", "engine", 2, "--enable-log-requests");
        assert!(matches!(
            NodeHistory::from_log(&edited, 15, &replay(&log), None),
            Err(NodeLogError::ReplayMismatch { .. })
        ));
        let mut no_start = log.clone();
        no_start.remove(0);
        assert!(matches!(
            history(&no_start),
            Err(NodeLogError::NoAgentStart("pod-sandbox"))
        ));
        let mut orphan = log.clone();
        orphan.insert(2, entry(container("nope", "c9", "engine", 2, "x")));
        assert!(matches!(
            history(&orphan),
            Err(NodeLogError::UnknownSandbox { index: 2, .. })
        ));
        let mut dup = log.clone();
        dup.push(entry(key("s1", "c-enclave", 0xbb)));
        assert!(matches!(
            history(&dup),
            Err(NodeLogError::KeyRegisteredTwice { .. })
        ));
        let mut engine_key = log.clone();
        engine_key.push(entry(key("s1", "c-engine", 0xbb)));
        assert!(matches!(
            history(&engine_key),
            Err(NodeLogError::KeyFromNonHolder { .. })
        ));
        assert!(matches!(
            NodeHistory::from_log(&log, 15, &replay(&log), Some(&[Sha256Digest([0; 32])])),
            Err(NodeLogError::NodePolicyNotAllowed { index: 0, .. })
        ));
        let mut other_pcr = log.clone();
        other_pcr[1].pcr = 14;
        assert!(matches!(
            history(&other_pcr),
            Err(NodeLogError::WrongPcr { index: 1, .. })
        ));
    }

    #[test]
    fn a_container_the_node_policy_refuses_fails_the_log() {
        let mut log = genuine();
        log.insert(4, entry(container("s1", "c-dbg", "debugger", 3, "sh")));
        let e = history(&log).unwrap_err();
        assert!(
            e.to_string()
                .contains("container debugger (image sha256:0303"),
            "{e}"
        );
        let mut system = genuine();
        system.push(entry(sandbox("s2", false)));
        assert!(matches!(
            history(&system),
            Err(NodeLogError::NotAllowed { index: 5, .. })
        ));
    }

    #[test]
    fn the_bound_pod_must_run_exactly_the_allowed_containers() {
        let check = |log: Vec<NodeLogEntry>| {
            let h = history(&log).unwrap();
            let bound = h.key_holder(&Sha256Digest([0xaa; 32])).unwrap();
            bound.check(&allowed(), &[("engine".into(), spec("--host=127.0.0.1"))])
        };
        let mut swapped = genuine();
        swapped[3].event = container("s1", "c-engine", "engine", 7, "--host=127.0.0.1");
        assert!(matches!(
            check(swapped),
            Err(PodMismatch::ImageNotAllowed { .. })
        ));
        let mut arg = genuine();
        arg[3].event = container("s1", "c-engine", "engine", 2, "--enable-log-requests");
        let e = check(arg).unwrap_err();
        assert!(e.to_string().contains("args"), "{e}");
        let mut missing = genuine();
        missing.remove(3);
        assert!(matches!(
            check(missing),
            Err(PodMismatch::MissingContainer { .. })
        ));
        // A restarted engine with the same spec is fine.
        let mut restarted = genuine();
        restarted.push(entry(container(
            "s1",
            "c-engine-2",
            "engine",
            2,
            "--host=127.0.0.1",
        )));
        check(restarted).unwrap();
    }
}
