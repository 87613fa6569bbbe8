//! The canonical container spec: what determines a container's behaviour,
//! as the runtime receives it, in a form whose digest does not depend on
//! things that change from one scheduling to the next (pod UIDs in paths,
//! the order the kubelet happens to emit environment variables in).
//!
//! `aver-node` builds it from the CRI `ContainerConfig`; `aver policy
//! from-model` and the controller build it from the pod spec they render.
//! Both must agree, so the rules below are the contract between them.

use serde::{Deserialize, Serialize};

use aver_crds::Sha256Digest;

use crate::encoding::Encoder;

/// Domain and version of the spec encoding; a change in what is measured
/// bumps the version, so old and new digests never collide.
pub const SPEC_DOMAIN: &str = "aver-container-spec";
pub const SPEC_VERSION: u16 = 1;

/// One environment variable, its value recorded only as a digest: the node
/// log is shown to every client of every endpoint on the node, and
/// environment values are where secrets live. A policy pins the value all
/// the same, through the digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    /// SHA-256 of the value's bytes.
    pub value_sha256: Sha256Digest,
}

impl EnvVar {
    pub fn new(name: impl Into<String>, value: &str) -> Self {
        use sha2::{Digest as _, Sha256};
        Self {
            name: name.into(),
            value_sha256: Sha256Digest(Sha256::digest(value.as_bytes()).into()),
        }
    }
}

/// The identity a container's processes run as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplemental_groups: Vec<i64>,
}

/// A security profile (seccomp or AppArmor) as the CRI names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    /// `runtime-default`, `unconfined` or `localhost`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelinuxOptions {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub role: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub level: String,
}

/// Which namespace a container joins, as the CRI `NamespaceMode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamespaceMode {
    /// The pod's own namespace (the default for network and IPC).
    #[default]
    Pod,
    /// The container's own namespace (the default for PID).
    Container,
    /// The node's: the container sees and reaches the host.
    Node,
    /// Another container's namespace (`targetId`).
    Target,
}

impl NamespaceMode {
    fn tag(self) -> u8 {
        match self {
            Self::Pod => 0,
            Self::Container => 1,
            Self::Node => 2,
            Self::Target => 3,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespaces {
    #[serde(default)]
    pub network: NamespaceMode,
    #[serde(default = "container_ns")]
    pub pid: NamespaceMode,
    #[serde(default)]
    pub ipc: NamespaceMode,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_id: String,
}

fn container_ns() -> NamespaceMode {
    NamespaceMode::Container
}

impl Namespaces {
    /// Whether any namespace is the node's.
    pub fn uses_host(&self) -> bool {
        [self.network, self.pid, self.ipc].contains(&NamespaceMode::Node)
    }
}

/// Where a mount comes from, with per-pod parts of host paths removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum MountSource {
    /// A pod volume, by plugin directory (`kubernetes.io~empty-dir`) and
    /// volume name.
    Volume { plugin: String, name: String },
    /// The kubelet-managed `/etc/hosts`.
    EtcHosts,
    /// The kubelet-managed termination message file.
    TerminationLog,
    /// Any other host path, in full: what the node exposes to the container.
    HostPath { path: String },
    /// An OCI image mounted as a volume (image volumes carry models), by the
    /// reference the runtime was given (the kubelet passes the resolved ID).
    Image { reference: String },
    /// The node agent's socket directory, which aver-node itself mounts
    /// (read-only, at [`crate::policy::AGENT_SOCKET_DIR`]) into the key holder
    /// of a confidential pod. The kubelet never asks for it, so the pod needs
    /// no host path volume (PodSecurity `restricted`) and the digest does not
    /// depend on where a node keeps its socket.
    NodeAgent,
}

/// The kubelet's volume directory of the CSI plugin (`kubernetes.io/csi`,
/// escaped), where every CSI volume, persistent or inline, is mounted.
pub const CSI_PLUGIN_DIR: &str = "kubernetes.io~csi";
/// The kubelet's volume directory of local PersistentVolumes.
pub const LOCAL_VOLUME_PLUGIN_DIR: &str = "kubernetes.io~local-volume";

impl MountSource {
    /// Classifies a mount's host path. Paths under the kubelet's pod
    /// directory name their volume, not the pod UID, so that the digest is
    /// the same for every replica; anything else is a host path.
    pub fn classify(host_path: &str, kubelet_root: &str) -> Self {
        let root = kubelet_root.trim_end_matches('/');
        let rest = host_path
            .strip_prefix(root)
            .and_then(|r| r.strip_prefix("/pods/"));
        if let Some(rest) = rest {
            let parts: Vec<&str> = rest.split('/').collect();
            // <uid>/volumes/<plugin>/<name>, except that CSI mounts from
            // <uid>/volumes/kubernetes.io~csi/<name>/mount (the directory
            // above holds the driver's vol_data.json, never mounted).
            match parts.as_slice() {
                [uid, ..] if !valid(uid) => {}
                [_, "volumes", CSI_PLUGIN_DIR, name, "mount"] if valid(name) => {
                    return Self::Volume {
                        plugin: CSI_PLUGIN_DIR.to_owned(),
                        name: (*name).to_owned(),
                    }
                }
                [_, "volumes", plugin, name]
                    if valid(plugin) && valid(name) && *plugin != CSI_PLUGIN_DIR =>
                {
                    return Self::Volume {
                        plugin: (*plugin).to_owned(),
                        name: (*name).to_owned(),
                    }
                }
                [_, "etc-hosts"] => return Self::EtcHosts,
                [_, "containers", name, id] if valid(name) && valid(id) => {
                    return Self::TerminationLog
                }
                _ => {}
            }
        }
        Self::HostPath {
            path: host_path.to_owned(),
        }
    }

    fn encode(&self, e: &mut Encoder) {
        match self {
            Self::Volume { plugin, name } => {
                e.u8(1).str(plugin).str(name);
            }
            Self::EtcHosts => {
                e.u8(2);
            }
            Self::TerminationLog => {
                e.u8(3);
            }
            Self::HostPath { path } => {
                e.u8(4).str(path);
            }
            Self::Image { reference } => {
                e.u8(5).str(reference);
            }
            Self::NodeAgent => {
                e.u8(6);
            }
        }
    }
}

fn valid(part: &&str) -> bool {
    !part.is_empty() && *part != "." && *part != ".."
}

impl std::fmt::Display for MountSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Volume { plugin, name } => write!(f, "volume {plugin}/{name}"),
            Self::EtcHosts => f.write_str("etc-hosts"),
            Self::TerminationLog => f.write_str("termination-log"),
            Self::HostPath { path } => write!(f, "host path {path}"),
            Self::Image { reference } => write!(f, "image {reference}"),
            Self::NodeAgent => f.write_str("node agent socket"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub container_path: String,
    pub source: MountSource,
    #[serde(default)]
    pub readonly: bool,
    /// `private`, `host-to-container` or `bidirectional`.
    #[serde(default = "private")]
    pub propagation: String,
    #[serde(default)]
    pub selinux_relabel: bool,
}

fn private() -> String {
    "private".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
}

/// What determines a container's behaviour; see the module docs and
/// `docs/node-measurement.md` for what is in and out, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The environment as the runtime receives it, kubelet-injected
    /// variables included; order is not significant (the kubelet emits it
    /// in map order), so the digest sorts it.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub capabilities_add: Vec<String>,
    #[serde(default)]
    pub capabilities_drop: Vec<String>,
    #[serde(default)]
    pub no_new_privs: bool,
    #[serde(default)]
    pub readonly_rootfs: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Profile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor: Option<Profile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<SelinuxOptions>,
    #[serde(default)]
    pub namespaces: Namespaces,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
}

impl ContainerSpec {
    /// Puts every order-insignificant list in its canonical order. The
    /// digest does this itself; call it to show or store the canonical form.
    pub fn canonicalize(&mut self) {
        self.env.sort();
        self.user.supplemental_groups.sort_unstable();
        self.capabilities_add.sort();
        self.capabilities_add.dedup();
        self.capabilities_drop.sort();
        self.capabilities_drop.dedup();
        self.mounts
            .sort_by(|a, b| a.container_path.cmp(&b.container_path));
        self.devices.sort();
        self.masked_paths.sort();
        self.readonly_paths.sort();
    }

    /// The spec digest a policy lists: SHA-256 of the canonical encoding.
    pub fn digest(&self) -> Sha256Digest {
        self.encoder().digest()
    }

    /// The canonical encoding itself (what [`Self::digest`] hashes).
    pub fn encoding(&self) -> Vec<u8> {
        self.encoder().into_bytes()
    }

    fn encoder(&self) -> Encoder {
        let mut s = self.clone();
        s.canonicalize();
        let mut e = Encoder::new(SPEC_DOMAIN, SPEC_VERSION);
        e.strs(&s.command).strs(&s.args);
        e.list(&s.env, |e, v| {
            e.str(&v.name).digest_value(&v.value_sha256);
        });
        e.str(&s.working_dir);
        e.opt(s.user.uid.as_ref(), |e, v| {
            e.i64(*v);
        })
        .opt(s.user.gid.as_ref(), |e, v| {
            e.i64(*v);
        })
        .str(&s.user.username)
        .list(&s.user.supplemental_groups, |e, g| {
            e.i64(*g);
        });
        e.bool(s.privileged)
            .strs(&s.capabilities_add)
            .strs(&s.capabilities_drop)
            .bool(s.no_new_privs)
            .bool(s.readonly_rootfs);
        for profile in [&s.seccomp, &s.apparmor] {
            e.opt(profile.as_ref(), |e, p| {
                e.str(&p.kind).str(&p.name);
            });
        }
        e.opt(s.selinux.as_ref(), |e, o| {
            e.str(&o.user).str(&o.role).str(&o.kind).str(&o.level);
        });
        e.u8(s.namespaces.network.tag())
            .u8(s.namespaces.pid.tag())
            .u8(s.namespaces.ipc.tag())
            .str(&s.namespaces.target_id);
        e.list(&s.mounts, |e, m| {
            e.str(&m.container_path);
            m.source.encode(e);
            e.bool(m.readonly)
                .str(&m.propagation)
                .bool(m.selinux_relabel);
        });
        e.list(&s.devices, |e, d| {
            e.str(&d.container_path)
                .str(&d.host_path)
                .str(&d.permissions);
        });
        e.strs(&s.masked_paths).strs(&s.readonly_paths);
        e
    }

    /// Environment variable names and values that differ from `other`, for
    /// messages that say what changed ("env HTTPS_PROXY added").
    pub fn differences(&self, other: &ContainerSpec) -> Vec<String> {
        let mut a = self.clone();
        a.canonicalize();
        let mut b = other.clone();
        b.canonicalize();
        let mut out = Vec::new();
        macro_rules! field {
            ($f:ident) => {
                if a.$f != b.$f {
                    out.push(format!(
                        "{} {:?} (expected {:?})",
                        stringify!($f),
                        a.$f,
                        b.$f
                    ));
                }
            };
        }
        field!(command);
        field!(args);
        for v in &a.env {
            match b.env.iter().find(|w| w.name == v.name) {
                None => out.push(format!("env {} added", v.name)),
                Some(w) if w.value_sha256 != v.value_sha256 => {
                    out.push(format!("env {} changed", v.name))
                }
                Some(_) => {}
            }
        }
        for w in &b.env {
            if !a.env.iter().any(|v| v.name == w.name) {
                out.push(format!("env {} removed", w.name));
            }
        }
        field!(working_dir);
        field!(user);
        field!(privileged);
        field!(capabilities_add);
        field!(capabilities_drop);
        field!(no_new_privs);
        field!(readonly_rootfs);
        field!(seccomp);
        field!(apparmor);
        field!(selinux);
        field!(namespaces);
        field!(mounts);
        field!(devices);
        field!(masked_paths);
        field!(readonly_paths);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccessKind, ImageIdentity, NodeEvent, NodeLogEntry, PodRef, SandboxInfo};
    use proptest::prelude::*;

    fn sample() -> ContainerSpec {
        ContainerSpec {
            command: vec!["/engine".into()],
            args: vec!["--host".into(), "127.0.0.1".into()],
            env: vec![EnvVar::new("B", "2"), EnvVar::new("A", "1")],
            mounts: vec![Mount {
                container_path: "/models".into(),
                source: MountSource::Volume {
                    plugin: "kubernetes.io~empty-dir".into(),
                    name: "model".into(),
                },
                readonly: true,
                propagation: "private".into(),
                selinux_relabel: false,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn env_order_does_not_matter_but_content_does() {
        let a = sample();
        let mut b = sample();
        b.env.reverse();
        assert_eq!(a.digest(), b.digest());
        b.env.push(EnvVar::new("HTTPS_PROXY", "http://evil"));
        assert_ne!(a.digest(), b.digest());
        assert_eq!(b.differences(&a), vec!["env HTTPS_PROXY added".to_owned()]);
    }

    #[test]
    fn every_behavioural_field_changes_the_digest() {
        let base = sample();
        let d = base.digest();
        let mut variants: Vec<ContainerSpec> = Vec::new();
        let mut push = |f: &dyn Fn(&mut ContainerSpec)| {
            let mut s = base.clone();
            f(&mut s);
            variants.push(s);
        };
        push(&|s| s.args.push("--enable-log-requests".into()));
        push(&|s| s.command = vec!["/bin/sh".into()]);
        push(&|s| s.working_dir = "/tmp".into());
        push(&|s| s.user.uid = Some(0));
        push(&|s| s.privileged = true);
        push(&|s| s.capabilities_add.push("SYS_PTRACE".into()));
        push(&|s| s.capabilities_drop.push("ALL".into()));
        push(&|s| s.no_new_privs = true);
        push(&|s| s.readonly_rootfs = true);
        push(&|s| {
            s.seccomp = Some(Profile {
                kind: "unconfined".into(),
                name: String::new(),
            })
        });
        push(&|s| s.namespaces.pid = NamespaceMode::Node);
        push(&|s| s.namespaces.network = NamespaceMode::Node);
        push(&|s| s.mounts[0].readonly = false);
        push(&|s| s.mounts[0].source = MountSource::HostPath { path: "/".into() });
        push(&|s| {
            s.devices.push(Device {
                container_path: "/dev/tpmrm0".into(),
                host_path: "/dev/tpmrm0".into(),
                permissions: "rw".into(),
            })
        });
        push(&|s| s.masked_paths.push("/proc/kcore".into()));
        let mut seen = std::collections::BTreeSet::new();
        seen.insert(d);
        for v in &variants {
            assert!(seen.insert(v.digest()), "{v:?} collides");
        }
    }

    #[test]
    fn kubelet_paths_are_classified_without_the_pod_uid() {
        let root = "/var/lib/kubelet";
        assert_eq!(
            MountSource::classify(
                "/var/lib/kubelet/pods/1234-abcd/volumes/kubernetes.io~empty-dir/cache",
                root
            ),
            MountSource::Volume {
                plugin: "kubernetes.io~empty-dir".into(),
                name: "cache".into()
            }
        );
        assert_eq!(
            MountSource::classify("/var/lib/kubelet/pods/u/etc-hosts", root),
            MountSource::EtcHosts
        );
        assert_eq!(
            MountSource::classify("/var/lib/kubelet/pods/u/containers/engine/0a1b", root),
            MountSource::TerminationLog
        );
        assert_eq!(
            MountSource::classify(
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pvc-1a2b/mount",
                root
            ),
            MountSource::Volume {
                plugin: CSI_PLUGIN_DIR.into(),
                name: "pvc-1a2b".into()
            }
        );
        assert_eq!(
            MountSource::classify(
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~local-volume/weights",
                root
            ),
            MountSource::Volume {
                plugin: LOCAL_VOLUME_PLUGIN_DIR.into(),
                name: "weights".into()
            }
        );
        for other in [
            // The CSI volume's own directory (vol_data.json) is not its mount.
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pvc-1a2b",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/../mount",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache/mount",
            "/var/lib/kubelet/pods/u/volumes/x/../../../../etc",
            "/var/lib/kubelet/pods/u/volumes/p/n/extra",
            "/var/lib/kubelet/pods/../volumes/p/n",
            "/etc",
            "/var/lib/kubeletx/pods/u/etc-hosts",
        ] {
            assert_eq!(
                MountSource::classify(other, root),
                MountSource::HostPath { path: other.into() },
                "{other}"
            );
        }
    }

    #[test]
    fn env_values_stay_on_the_node_but_are_pinned() {
        let mut s = sample();
        s.env.push(EnvVar::new("API_KEY", "hunter2-secret"));
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("API_KEY") && !json.contains("hunter2"),
            "{json}"
        );
        let mut other = s.clone();
        other.env.pop();
        other.env.push(EnvVar::new("API_KEY", "another"));
        assert_ne!(s.digest(), other.digest());
        assert_eq!(
            other.differences(&s),
            vec!["env API_KEY changed".to_owned()]
        );
    }

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,10}"
    }

    fn texts() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(text(), 0..4)
    }

    fn digest() -> impl Strategy<Value = Sha256Digest> {
        prop::array::uniform32(any::<u8>()).prop_map(Sha256Digest)
    }

    fn namespace_mode() -> impl Strategy<Value = NamespaceMode> {
        prop::sample::select(vec![
            NamespaceMode::Pod,
            NamespaceMode::Container,
            NamespaceMode::Node,
            NamespaceMode::Target,
        ])
    }

    fn profile() -> impl Strategy<Value = Option<Profile>> {
        prop::option::of((text(), text()).prop_map(|(kind, name)| Profile { kind, name }))
    }

    fn mount_source() -> impl Strategy<Value = MountSource> {
        prop_oneof![
            (text(), text()).prop_map(|(plugin, name)| MountSource::Volume { plugin, name }),
            Just(MountSource::EtcHosts),
            Just(MountSource::TerminationLog),
            text().prop_map(|path| MountSource::HostPath { path }),
            text().prop_map(|reference| MountSource::Image { reference }),
            Just(MountSource::NodeAgent),
        ]
    }

    /// Any spec, every field at any value, lists in any order.
    fn arb_spec() -> impl Strategy<Value = ContainerSpec> {
        let env = proptest::collection::vec(
            (text(), digest()).prop_map(|(name, value_sha256)| EnvVar { name, value_sha256 }),
            0..4,
        );
        let user = (
            prop::option::of(any::<i64>()),
            prop::option::of(any::<i64>()),
            text(),
            proptest::collection::vec(any::<i64>(), 0..4),
        )
            .prop_map(|(uid, gid, username, supplemental_groups)| User {
                uid,
                gid,
                username,
                supplemental_groups,
            });
        let selinux = prop::option::of((text(), text(), text(), text()).prop_map(
            |(user, role, kind, level)| SelinuxOptions {
                user,
                role,
                kind,
                level,
            },
        ));
        let namespaces = (namespace_mode(), namespace_mode(), namespace_mode(), text()).prop_map(
            |(network, pid, ipc, target_id)| Namespaces {
                network,
                pid,
                ipc,
                target_id,
            },
        );
        let mount = (text(), mount_source(), any::<bool>(), text(), any::<bool>()).prop_map(
            |(container_path, source, readonly, propagation, selinux_relabel)| Mount {
                container_path,
                source,
                readonly,
                propagation,
                selinux_relabel,
            },
        );
        let device =
            (text(), text(), text()).prop_map(|(container_path, host_path, permissions)| Device {
                container_path,
                host_path,
                permissions,
            });
        (
            (texts(), texts(), env, text(), user),
            (
                any::<bool>(),
                texts(),
                texts(),
                any::<bool>(),
                any::<bool>(),
            ),
            (profile(), profile(), selinux, namespaces),
            (
                proptest::collection::vec(mount, 0..4),
                proptest::collection::vec(device, 0..3),
                texts(),
                texts(),
            ),
        )
            .prop_map(
                |(
                    (command, args, env, working_dir, user),
                    (
                        privileged,
                        capabilities_add,
                        capabilities_drop,
                        no_new_privs,
                        readonly_rootfs,
                    ),
                    (seccomp, apparmor, selinux, namespaces),
                    (mounts, devices, masked_paths, readonly_paths),
                )| ContainerSpec {
                    command,
                    args,
                    env,
                    working_dir,
                    user,
                    privileged,
                    capabilities_add,
                    capabilities_drop,
                    no_new_privs,
                    readonly_rootfs,
                    seccomp,
                    apparmor,
                    selinux,
                    namespaces,
                    mounts,
                    devices,
                    masked_paths,
                    readonly_paths,
                },
            )
    }

    fn arb_event() -> impl Strategy<Value = NodeEvent> {
        prop_oneof![
            (text(), text()).prop_map(|(agent_version, policy)| NodeEvent::AgentStart {
                agent_version,
                policy
            }),
            (
                (text(), text(), text(), text()),
                prop::option::of(text()),
                prop::array::uniform4(any::<bool>()),
            )
                .prop_map(
                    |((sandbox_id, namespace, name, uid), confidential_model, host)| {
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
                (text(), text(), text(), any::<u32>()),
                (text(), digest(), texts()),
                arb_spec(),
            )
                .prop_map(
                    |(
                        (sandbox_id, container_id, name, attempt),
                        (reference, id, repo_digests),
                        spec,
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
                            spec,
                        }
                    }
                ),
            (
                text(),
                prop::option::of(text()),
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
            (text(), text(), digest(), digest()).prop_map(
                |(sandbox_id, container_id, spki_sha256, model_digest)| NodeEvent::TlsKey {
                    sandbox_id,
                    container_id,
                    spki_sha256,
                    model_digest,
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn specs_round_trip_through_json(spec in arb_spec()) {
            let json = serde_json::to_vec(&spec).unwrap();
            let back: ContainerSpec = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(back.encoding(), spec.encoding());
            prop_assert_eq!(back, spec);
        }

        #[test]
        fn canonical_specs_are_a_fixed_point(spec in arb_spec()) {
            // canonicalize reorders lists, so compare marshal . parse .
            // marshal with marshal on the canonical form.
            let mut canonical = spec.clone();
            canonical.canonicalize();
            prop_assert_eq!(canonical.encoding(), spec.encoding());
            let json = serde_json::to_vec(&canonical).unwrap();
            let mut back: ContainerSpec = serde_json::from_slice(&json).unwrap();
            back.canonicalize();
            prop_assert_eq!(serde_json::to_vec(&back).unwrap(), json);
        }

        #[test]
        fn node_log_entries_round_trip_through_json(
            entries in proptest::collection::vec(
                (any::<u8>(), arb_event()).prop_map(|(pcr, event)| NodeLogEntry { pcr, event }),
                0..6,
            ),
        ) {
            let json = serde_json::to_vec(&entries).unwrap();
            let back: Vec<NodeLogEntry> = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(crate::replay(&back), crate::replay(&entries));
            prop_assert_eq!(back, entries);
        }
    }

    #[test]
    fn json_round_trip() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        let back: ContainerSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.digest(), s.digest());
        assert!(serde_json::from_str::<ContainerSpec>(r#"{"surprise":1}"#).is_err());
    }
}
