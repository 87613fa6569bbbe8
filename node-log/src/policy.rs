//! The node policy: what may run on a hardened node. A file in the node
//! image, measured in full into the node log when `aver-node` starts.
//!
//! The same functions decide for the gate (before a container exists) and
//! for the verifier (replaying the log), so the client never relies on the
//! gate having been right: it re-applies the policy the log says was in
//! force to everything the log says ran.

use std::fmt;

use serde::{Deserialize, Serialize};

use aver_crds::Sha256Digest;

use crate::spec::{ContainerSpec, MountSource, NamespaceMode};

/// Pod label that marks a confidential model pod (the controller sets it to
/// the `ConfidentialModel`'s name). A pod without it must be a listed
/// system pod.
pub const CONFIDENTIAL_LABEL: &str = "aver.dev/confidential-model";

/// The only node policy version this code reads.
pub const NODE_POLICY_VERSION: u32 = 1;

/// Upper bound on a node policy file, so that its `agent-start` event stays
/// well inside the store's per-event limit (64 KiB of JSON).
pub const MAX_NODE_POLICY_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodePolicy {
    pub version: u32,
    #[serde(default)]
    pub confidential: ConfidentialPods,
    /// Pods other than confidential ones that may run on the node.
    #[serde(default)]
    pub system: Vec<SystemPod>,
}

/// What confidential model pods may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfidentialPods {
    /// Names the containers of a confidential pod may have. Anything else
    /// (a debug or injected container) is refused.
    #[serde(default = "default_containers")]
    pub containers: Vec<String>,
    /// The container that holds the TLS key and may ask for evidence.
    #[serde(default = "default_key_holder")]
    pub key_holder: String,
    /// Host paths confidential containers may mount (none by default: the
    /// agent socket reaches the key holder through aver-node's own mount,
    /// [`MountSource::NodeAgent`]; list model directories here).
    #[serde(default)]
    pub host_paths: Vec<HostPathRule>,
}

impl Default for ConfidentialPods {
    fn default() -> Self {
        Self {
            containers: default_containers(),
            key_holder: default_key_holder(),
            host_paths: Vec::new(),
        }
    }
}

/// Where the agent socket's directory appears inside the key holder of a
/// confidential pod (aver-node mounts it there; see [`MountSource::NodeAgent`]).
pub const AGENT_SOCKET_DIR: &str = "/run/aver-node";

fn default_containers() -> Vec<String> {
    vec!["enclave".to_owned(), "engine".to_owned()]
}

fn default_key_holder() -> String {
    "enclave".to_owned()
}

/// A host path (or a directory and everything under it) a container may mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPathRule {
    pub path: String,
    /// Only read-only mounts of it are allowed.
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

impl HostPathRule {
    fn allows(&self, host_path: &str, readonly: bool) -> bool {
        clean(host_path)
            && (host_path == self.path
                || host_path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/') || self.path == "/"))
            && (readonly || !self.read_only)
    }
}

/// An absolute path without `.`/`..` components or empty segments.
fn clean(path: &str) -> bool {
    path.starts_with('/')
        && (path == "/"
            || path[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// A system pod the node runs besides confidential ones (a CNI agent, a
/// log shipper), pinned by image digest, with what it may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemPod {
    /// For messages only.
    pub name: String,
    pub namespace: String,
    /// Image digests (ID or manifest digest) its containers may run.
    pub images: Vec<Sha256Digest>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub host_pid: bool,
    #[serde(default)]
    pub host_ipc: bool,
    #[serde(default)]
    pub privileged: bool,
    /// Capabilities its containers may add.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub host_paths: Vec<HostPathRule>,
    /// Host device paths its containers may use.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Whether exec, attach and port-forward into it are allowed.
    #[serde(default)]
    pub exec: bool,
}

/// Why a node policy file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodePolicyError {
    #[error("node policy is {0} bytes, more than the {MAX_NODE_POLICY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("node policy is not valid YAML for the node policy schema: {0}")]
    Syntax(String),
    #[error(
        "node policy version {0} is not supported (this build reads version {NODE_POLICY_VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error("node policy: {0}")]
    Invalid(String),
}

impl NodePolicy {
    /// Parses and validates a node policy file.
    pub fn from_yaml(text: &str) -> Result<Self, NodePolicyError> {
        if text.len() > MAX_NODE_POLICY_BYTES {
            return Err(NodePolicyError::TooLarge(text.len()));
        }
        let policy: Self =
            serde_norway::from_str(text).map_err(|e| NodePolicyError::Syntax(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), NodePolicyError> {
        let invalid = |m: String| Err(NodePolicyError::Invalid(m));
        if self.version != NODE_POLICY_VERSION {
            return Err(NodePolicyError::UnsupportedVersion(self.version));
        }
        let c = &self.confidential;
        if c.containers.is_empty() {
            return invalid("confidential.containers lists no container name".into());
        }
        if !c.containers.contains(&c.key_holder) {
            return invalid(format!(
                "confidential.keyHolder {:?} is not one of confidential.containers",
                c.key_holder
            ));
        }
        let rules = c
            .host_paths
            .iter()
            .chain(self.system.iter().flat_map(|s| s.host_paths.iter()));
        for rule in rules {
            if !clean(&rule.path) {
                return invalid(format!(
                    "host path {:?} must be absolute, without . or .. components",
                    rule.path
                ));
            }
        }
        for s in &self.system {
            if s.images.is_empty() {
                return invalid(format!("system pod {:?} lists no image digest", s.name));
            }
            if s.namespace.is_empty() {
                return invalid(format!("system pod {:?} has no namespace", s.name));
            }
        }
        Ok(())
    }

    /// The policy refusing everything but confidential pods, with defaults.
    pub fn confidential_only() -> Self {
        Self {
            version: NODE_POLICY_VERSION,
            confidential: ConfidentialPods::default(),
            system: Vec::new(),
        }
    }
}

/// A pod as the runtime was asked to create it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the node policy looks at in a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxInfo {
    pub pod: PodRef,
    /// The value of [`CONFIDENTIAL_LABEL`], if the pod carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidential_model: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub host_pid: bool,
    #[serde(default)]
    pub host_ipc: bool,
    #[serde(default)]
    pub privileged: bool,
}

/// An image as the runtime resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageIdentity {
    /// The reference the kubelet asked for (informational).
    pub reference: String,
    /// The runtime's image ID (the digest of the image config).
    pub id: Sha256Digest,
    /// `repository@sha256:…` manifest digests the runtime knows the image by.
    #[serde(default)]
    pub repo_digests: Vec<String>,
}

impl ImageIdentity {
    /// Whether the image is the one `digest` names, by ID or manifest digest.
    pub fn matches(&self, digest: &Sha256Digest) -> bool {
        self.id == *digest
            || self.repo_digests.iter().any(|r| {
                r.rsplit_once('@')
                    .and_then(|(_, d)| Sha256Digest::parse(d).ok())
                    .is_some_and(|d| d == *digest)
            })
    }

    /// The digest to show: the first manifest digest, else the ID.
    pub fn shown(&self) -> String {
        self.repo_digests
            .first()
            .and_then(|r| r.rsplit_once('@'))
            .map_or_else(|| self.id.to_string(), |(_, d)| d.to_owned())
    }
}

/// Kinds of access into a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessKind {
    Exec,
    ExecSync,
    Attach,
    PortForward,
}

impl AccessKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::ExecSync => "exec-sync",
            Self::Attach => "attach",
            Self::PortForward => "port-forward",
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            Self::Exec => 1,
            Self::ExecSync => 2,
            Self::Attach => 3,
            Self::PortForward => 4,
        }
    }
}

/// A refusal by the node policy: what was refused and why, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: {reason}")]
pub struct Refusal {
    /// What was refused: "container debugger (image sha256:…) in pod ml/llama-0".
    pub subject: String,
    pub reason: String,
    /// Short label for metrics.
    pub label: &'static str,
}

impl Refusal {
    fn new(subject: String, label: &'static str, reason: impl Into<String>) -> Self {
        Self {
            subject,
            reason: reason.into(),
            label,
        }
    }
}

impl NodePolicy {
    /// Decides whether a pod sandbox may be created.
    pub fn admit_sandbox(&self, s: &SandboxInfo) -> Result<(), Refusal> {
        let subject = format!("pod {}", s.pod);
        if s.confidential_model.is_some() {
            let host = [
                (s.host_network, "the host network"),
                (s.host_pid, "the host PID namespace"),
                (s.host_ipc, "the host IPC namespace"),
                (s.privileged, "privileged mode"),
            ];
            if let Some((_, what)) = host.iter().find(|(on, _)| *on) {
                return Err(Refusal::new(
                    subject,
                    "confidential-host-access",
                    format!("a confidential model pod may not use {what}"),
                ));
            }
            return Ok(());
        }
        let fits = self.system.iter().any(|p| {
            p.namespace == s.pod.namespace
                && (!s.host_network || p.host_network)
                && (!s.host_pid || p.host_pid)
                && (!s.host_ipc || p.host_ipc)
                && (!s.privileged || p.privileged)
        });
        if fits {
            Ok(())
        } else {
            Err(Refusal::new(
                subject,
                "not-allowed",
                "not a confidential model pod, and no system pod of the node policy allows it in this namespace with these host namespaces",
            ))
        }
    }

    /// Decides whether a container may be created in a sandbox.
    pub fn admit_container(
        &self,
        s: &SandboxInfo,
        name: &str,
        image: &ImageIdentity,
        spec: &ContainerSpec,
    ) -> Result<(), Refusal> {
        let subject = format!(
            "container {name} (image {}) in pod {}",
            image.shown(),
            s.pod
        );
        let refuse = |label, reason: String| Err(Refusal::new(subject.clone(), label, reason));
        if s.confidential_model.is_some() {
            let c = &self.confidential;
            if !c.containers.iter().any(|n| n == name) {
                return refuse(
                    "not-allowed",
                    format!(
                        "not an allowed container of a confidential model pod (allowed: {})",
                        c.containers.join(", ")
                    ),
                );
            }
            if spec.privileged {
                return refuse(
                    "privileged",
                    "privileged containers are not allowed in a confidential model pod".into(),
                );
            }
            if !spec.capabilities_add.is_empty() {
                return refuse(
                    "capabilities",
                    format!(
                        "adds capabilities {}, not allowed in a confidential model pod",
                        spec.capabilities_add.join(", ")
                    ),
                );
            }
            let ns = &spec.namespaces;
            if ns.uses_host() || [ns.network, ns.pid, ns.ipc].contains(&NamespaceMode::Target) {
                return refuse(
                    "host-namespace",
                    "joins a host or another container's namespace, not allowed in a confidential model pod".into(),
                );
            }
            if let Some(d) = spec.devices.first() {
                return refuse(
                    "device",
                    format!(
                        "uses device {}, not allowed in a confidential model pod",
                        d.host_path
                    ),
                );
            }
            if let Some(m) = spec
                .mounts
                .iter()
                .find(|m| m.source == MountSource::NodeAgent)
            {
                if name != c.key_holder || !m.readonly || m.container_path != AGENT_SOCKET_DIR {
                    return refuse(
                        "node-agent",
                        format!(
                            "mounts the node agent socket at {}{}; only the key holder {} may have it, read-only at {AGENT_SOCKET_DIR}",
                            m.container_path,
                            if m.readonly { " read-only" } else { " read-write" },
                            c.key_holder
                        ),
                    );
                }
            }
            return check_host_paths(spec, &c.host_paths)
                .or_else(|reason| refuse("host-path", reason));
        }
        let Some(entry) = self
            .system
            .iter()
            .find(|p| p.namespace == s.pod.namespace && p.images.iter().any(|d| image.matches(d)))
        else {
            return refuse(
                "not-allowed",
                "not in a confidential model pod, and no system pod of the node policy lists this image in this namespace".into(),
            );
        };
        let entry_says = |what: &str| {
            format!(
                "system pod {:?} of the node policy does not allow {what}",
                entry.name
            )
        };
        if spec.privileged && !entry.privileged {
            return refuse("privileged", entry_says("privileged containers"));
        }
        if let Some(cap) = spec
            .capabilities_add
            .iter()
            .find(|c| !entry.capabilities.contains(c))
        {
            return refuse("capabilities", entry_says(&format!("capability {cap}")));
        }
        let ns = &spec.namespaces;
        let host_ns = [
            (
                ns.network == NamespaceMode::Node || s.host_network,
                entry.host_network,
                "the host network",
            ),
            (
                ns.pid == NamespaceMode::Node || s.host_pid,
                entry.host_pid,
                "the host PID namespace",
            ),
            (
                ns.ipc == NamespaceMode::Node || s.host_ipc,
                entry.host_ipc,
                "the host IPC namespace",
            ),
        ];
        if let Some((_, _, what)) = host_ns.iter().find(|(used, allowed, _)| *used && !allowed) {
            return refuse("host-namespace", entry_says(what));
        }
        if let Some(d) = spec
            .devices
            .iter()
            .find(|d| !entry.devices.contains(&d.host_path))
        {
            return refuse("device", entry_says(&format!("device {}", d.host_path)));
        }
        if spec
            .mounts
            .iter()
            .any(|m| m.source == MountSource::NodeAgent)
        {
            return refuse(
                "node-agent",
                "mounts the node agent socket, which only confidential model pods get".into(),
            );
        }
        check_host_paths(spec, &entry.host_paths).or_else(|reason| refuse("host-path", reason))
    }

    /// Decides whether an exec, attach or port-forward may reach a container
    /// (`container` is `None` for a port-forward, which targets the sandbox).
    pub fn admit_access(
        &self,
        s: &SandboxInfo,
        container: Option<(&str, &ImageIdentity)>,
        kind: AccessKind,
    ) -> Result<(), Refusal> {
        let subject = match container {
            Some((name, _)) => format!("{} into container {name} of pod {}", kind.name(), s.pod),
            None => format!("{} into pod {}", kind.name(), s.pod),
        };
        if s.confidential_model.is_some() {
            return Err(Refusal::new(
                subject,
                "confidential-access",
                "nobody may exec, attach or port-forward into a confidential model pod",
            ));
        }
        let allowed = self.system.iter().any(|p| {
            p.namespace == s.pod.namespace
                && p.exec
                && container.is_none_or(|(_, image)| p.images.iter().any(|d| image.matches(d)))
        });
        if allowed {
            Ok(())
        } else {
            Err(Refusal::new(
                subject,
                "access",
                "the node policy does not allow exec, attach or port-forward into this pod",
            ))
        }
    }
}

fn check_host_paths(spec: &ContainerSpec, rules: &[HostPathRule]) -> Result<(), String> {
    for m in &spec.mounts {
        if let MountSource::HostPath { path } = &m.source {
            if !rules.iter().any(|r| r.allows(path, m.readonly)) {
                return Err(format!(
                    "mounts host path {path}{} at {}, which the node policy does not allow",
                    if m.readonly {
                        " read-only"
                    } else {
                        " read-write"
                    },
                    m.container_path
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Mount;

    fn pod(confidential: bool) -> SandboxInfo {
        SandboxInfo {
            pod: PodRef {
                namespace: "ml".into(),
                name: "llama-0".into(),
                uid: "u1".into(),
            },
            confidential_model: confidential.then(|| "llama".into()),
            host_network: false,
            host_pid: false,
            host_ipc: false,
            privileged: false,
        }
    }

    fn image(id: u8) -> ImageIdentity {
        ImageIdentity {
            reference: "x".into(),
            id: Sha256Digest([id; 32]),
            repo_digests: vec![format!("example.com/x@{}", Sha256Digest([id + 100; 32]))],
        }
    }

    fn system_policy() -> NodePolicy {
        let mut p = NodePolicy::confidential_only();
        p.system.push(SystemPod {
            name: "cni".into(),
            namespace: "kube-system".into(),
            images: vec![Sha256Digest([7; 32])],
            host_network: true,
            host_pid: false,
            host_ipc: false,
            privileged: false,
            capabilities: vec!["NET_ADMIN".into()],
            host_paths: vec![HostPathRule {
                path: "/etc/cni".into(),
                read_only: false,
            }],
            devices: vec![],
            exec: false,
        });
        p
    }

    #[test]
    fn confidential_pods_get_only_their_containers() {
        let p = NodePolicy::confidential_only();
        let s = pod(true);
        let spec = ContainerSpec::default();
        p.admit_sandbox(&s).unwrap();
        p.admit_container(&s, "engine", &image(1), &spec).unwrap();
        let e = p
            .admit_container(&s, "debugger", &image(1), &spec)
            .unwrap_err();
        assert_eq!(e.label, "not-allowed");
        assert!(
            e.to_string()
                .starts_with("container debugger (image sha256:6565"),
            "{e}"
        );
        let mut privileged = spec.clone();
        privileged.privileged = true;
        assert_eq!(
            p.admit_container(&s, "engine", &image(1), &privileged)
                .unwrap_err()
                .label,
            "privileged"
        );
        let mut host = spec.clone();
        host.namespaces.pid = NamespaceMode::Node;
        assert_eq!(
            p.admit_container(&s, "engine", &image(1), &host)
                .unwrap_err()
                .label,
            "host-namespace"
        );
        let mut target = spec.clone();
        target.namespaces.pid = NamespaceMode::Target;
        assert!(p.admit_container(&s, "engine", &image(1), &target).is_err());
        let mount = |container_path: &str, source: MountSource, readonly: bool| Mount {
            container_path: container_path.into(),
            source,
            readonly,
            propagation: "private".into(),
            selinux_relabel: false,
        };
        // No host path by default; a listed directory read-only, below it,
        // nothing beside or above it.
        let host = |path: &str, readonly| {
            let mut m = spec.clone();
            m.mounts.push(mount(
                "/models",
                MountSource::HostPath { path: path.into() },
                readonly,
            ));
            m
        };
        assert_eq!(
            p.admit_container(&s, "engine", &image(1), &host("/srv/models", true))
                .unwrap_err()
                .label,
            "host-path"
        );
        let mut models = NodePolicy::confidential_only();
        models.confidential.host_paths.push(HostPathRule {
            path: "/srv/models".into(),
            read_only: true,
        });
        for (path, readonly, ok) in [
            ("/srv/models", true, true),
            ("/srv/models/llama", true, true),
            ("/srv/models", false, false),
            ("/srv/modelsx", true, false),
            ("/srv/models/../../etc", true, false),
            ("/", true, false),
        ] {
            assert_eq!(
                models
                    .admit_container(&s, "engine", &image(1), &host(path, readonly))
                    .is_ok(),
                ok,
                "{path} {readonly}"
            );
        }
        // The node agent's own mount: the key holder only, read-only, where
        // the enclave expects it.
        for (name, container_path, readonly, ok) in [
            ("enclave", AGENT_SOCKET_DIR, true, true),
            ("engine", AGENT_SOCKET_DIR, true, false),
            ("enclave", AGENT_SOCKET_DIR, false, false),
            ("enclave", "/tmp", true, false),
        ] {
            let mut m = spec.clone();
            m.mounts
                .push(mount(container_path, MountSource::NodeAgent, readonly));
            let got = p.admit_container(&s, name, &image(1), &m);
            assert_eq!(got.is_ok(), ok, "{name} {container_path} {readonly}");
            if let Err(e) = got {
                assert_eq!(e.label, "node-agent");
            }
        }
        for kind in [AccessKind::Exec, AccessKind::ExecSync, AccessKind::Attach] {
            assert!(p
                .admit_access(&s, Some(("engine", &image(1))), kind)
                .is_err());
        }
        assert!(p.admit_access(&s, None, AccessKind::PortForward).is_err());
        let mut hostnet = pod(true);
        hostnet.host_network = true;
        assert!(p.admit_sandbox(&hostnet).is_err());
    }

    #[test]
    fn system_pods_by_image_and_allowance() {
        let p = system_policy();
        let mut s = pod(false);
        assert!(p.admit_sandbox(&s).is_err(), "other namespace");
        s.pod.namespace = "kube-system".into();
        s.host_network = true;
        p.admit_sandbox(&s).unwrap();
        s.host_pid = true;
        assert!(p.admit_sandbox(&s).is_err());
        s.host_pid = false;
        let mut spec = ContainerSpec {
            capabilities_add: vec!["NET_ADMIN".into()],
            ..Default::default()
        };
        p.admit_container(&s, "cni", &image(7), &spec).unwrap();
        // By manifest digest too.
        let mut by_manifest = image(9);
        by_manifest.repo_digests = vec![format!("r@{}", Sha256Digest([7; 32]))];
        p.admit_container(&s, "cni", &by_manifest, &spec).unwrap();
        assert!(p.admit_container(&s, "cni", &image(8), &spec).is_err());
        spec.privileged = true;
        assert_eq!(
            p.admit_container(&s, "cni", &image(7), &spec)
                .unwrap_err()
                .label,
            "privileged"
        );
        spec.privileged = false;
        spec.capabilities_add.push("SYS_ADMIN".into());
        assert_eq!(
            p.admit_container(&s, "cni", &image(7), &spec)
                .unwrap_err()
                .label,
            "capabilities"
        );
        assert!(p
            .admit_access(&s, Some(("cni", &image(7))), AccessKind::Exec)
            .is_err());
        spec.capabilities_add.pop();
        spec.mounts.push(Mount {
            container_path: AGENT_SOCKET_DIR.into(),
            source: MountSource::NodeAgent,
            readonly: true,
            propagation: "private".into(),
            selinux_relabel: false,
        });
        assert_eq!(
            p.admit_container(&s, "cni", &image(7), &spec)
                .unwrap_err()
                .label,
            "node-agent"
        );
    }

    #[test]
    fn policy_files_are_validated() {
        let ok = "version: 1\n";
        assert_eq!(
            NodePolicy::from_yaml(ok).unwrap(),
            NodePolicy::confidential_only()
        );
        assert!(matches!(
            NodePolicy::from_yaml("version: 2\n"),
            Err(NodePolicyError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            NodePolicy::from_yaml("version: 1\nextra: 1\n"),
            Err(NodePolicyError::Syntax(_))
        ));
        assert!(NodePolicy::from_yaml("version: 1\nconfidential:\n  keyHolder: x\n").is_err());
        assert!(NodePolicy::from_yaml(
            "version: 1\nsystem:\n- {name: a, namespace: n, images: [], exec: true}\n"
        )
        .is_err());
        assert!(NodePolicy::from_yaml(
            "version: 1\nconfidential:\n  hostPaths: [{path: 'run/x'}]\n"
        )
        .is_err());
    }
}
