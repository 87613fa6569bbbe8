//! From what the kubelet asks of the runtime (CRI messages) to what the node
//! log records. Fails closed: a CRI feature the canonical spec cannot
//! represent (CDI devices, ambient capabilities, user namespaces, ID-mapped
//! mounts) is refused rather than started unmeasured.

use k8s_cri::v1::{
    ContainerConfig, LinuxContainerSecurityContext, NamespaceMode as CriNamespaceMode,
    NamespaceOption, PodSandboxConfig, SecurityProfile,
};

use aver_node_log::policy::AGENT_SOCKET_DIR;
use aver_node_log::spec::{
    Device, EnvVar, Mount, MountSource, NamespaceMode, Namespaces, Profile, SelinuxOptions, User,
};
use aver_node_log::{ContainerSpec, PodRef, SandboxInfo, CONFIDENTIAL_LABEL};

/// A CRI request the gate cannot measure faithfully.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} cannot be measured by aver-node, so it is refused")]
pub struct Unmeasurable(pub String);

/// The sandbox as the node policy sees it.
pub fn sandbox_info(config: &PodSandboxConfig) -> Result<SandboxInfo, Unmeasurable> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| Unmeasurable("a pod sandbox without metadata".into()))?;
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let ns = security.and_then(|s| s.namespace_options.as_ref());
    if let Some(userns) = ns.and_then(|n| n.userns_options.as_ref()) {
        // NODE (the node's user namespace, what the kubelet sends for
        // `hostUsers` unset or true) is the only one the spec describes.
        if !host_user_namespace(userns) {
            return Err(Unmeasurable(format!(
                "pod {}/{} with a user namespace",
                meta.namespace, meta.name
            )));
        }
    }
    let node = |mode: Option<i32>| mode == Some(CriNamespaceMode::Node as i32);
    Ok(SandboxInfo {
        pod: PodRef {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
        },
        confidential_model: config.labels.get(CONFIDENTIAL_LABEL).cloned(),
        host_network: node(ns.map(|n| n.network)),
        host_pid: node(ns.map(|n| n.pid)),
        host_ipc: node(ns.map(|n| n.ipc)),
        privileged: security.is_some_and(|s| s.privileged),
    })
}

/// Adds the node agent's socket directory to the key holder of a
/// confidential pod: to the config the runtime gets (read-only, at
/// [`AGENT_SOCKET_DIR`]) and to its canonical spec, as
/// [`MountSource::NodeAgent`]. A config that already mounts something there
/// or below is refused rather than shadowed.
pub fn mount_node_agent(
    config: &mut ContainerConfig,
    spec: &mut ContainerSpec,
    agent_dir: &str,
) -> Result<(), Unmeasurable> {
    let below = format!("{AGENT_SOCKET_DIR}/");
    if let Some(m) = config
        .mounts
        .iter()
        .find(|m| m.container_path == AGENT_SOCKET_DIR || m.container_path.starts_with(&below))
    {
        let name = config
            .metadata
            .as_ref()
            .map_or("(unnamed)", |m| m.name.as_str());
        return Err(Unmeasurable(format!(
            "container {name}: mounts {} where aver-node puts the agent socket ({AGENT_SOCKET_DIR})",
            m.container_path
        )));
    }
    config.mounts.push(k8s_cri::v1::Mount {
        container_path: AGENT_SOCKET_DIR.to_owned(),
        host_path: agent_dir.to_owned(),
        readonly: true,
        ..Default::default()
    });
    spec.mounts.push(Mount {
        container_path: AGENT_SOCKET_DIR.to_owned(),
        source: MountSource::NodeAgent,
        readonly: true,
        propagation: "private".to_owned(),
        selinux_relabel: false,
    });
    spec.canonicalize();
    Ok(())
}

/// The canonical spec of a container config, with host paths under the
/// kubelet's pod directory classified (see [`MountSource::classify`]).
pub fn container_spec(
    config: &ContainerConfig,
    kubelet_root: &str,
) -> Result<ContainerSpec, Unmeasurable> {
    let name = config
        .metadata
        .as_ref()
        .map_or("(unnamed)", |m| m.name.as_str());
    let unmeasurable = |what: &str| Unmeasurable(format!("container {name}: {what}"));
    if !config.cdi_devices.is_empty() {
        return Err(unmeasurable("CDI devices"));
    }
    if config.windows.is_some() {
        return Err(unmeasurable("a Windows container config"));
    }
    let default_sc = LinuxContainerSecurityContext::default();
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let caps = sc.capabilities.clone().unwrap_or_default();
    if !caps.add_ambient_capabilities.is_empty() {
        return Err(unmeasurable("ambient capabilities"));
    }
    // Deprecated in the CRI, but a runtime still honours them: refuse rather
    // than let a profile through that the spec does not record.
    #[allow(deprecated)]
    let legacy_profiles = !sc.apparmor_profile.is_empty() || !sc.seccomp_profile_path.is_empty();
    if legacy_profiles {
        return Err(unmeasurable(
            "deprecated seccomp_profile_path/apparmor_profile fields",
        ));
    }
    let namespaces =
        namespaces(sc.namespace_options.as_ref()).map_err(|what| unmeasurable(&what))?;
    let mut mounts = Vec::with_capacity(config.mounts.len());
    for m in &config.mounts {
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(unmeasurable("ID-mapped mounts"));
        }
        let source = match &m.image {
            Some(image) if !image.image.is_empty() => MountSource::Image {
                reference: image.image.clone(),
            },
            _ => MountSource::classify(&m.host_path, kubelet_root),
        };
        mounts.push(Mount {
            container_path: m.container_path.clone(),
            source,
            readonly: m.readonly || m.recursive_read_only,
            propagation: propagation(m.propagation).to_owned(),
            selinux_relabel: m.selinux_relabel,
        });
    }
    let mut spec = ContainerSpec {
        command: config.command.clone(),
        args: config.args.clone(),
        env: config
            .envs
            .iter()
            .map(|kv| EnvVar::new(kv.key.clone(), &kv.value))
            .collect(),
        working_dir: config.working_dir.clone(),
        user: User {
            uid: sc.run_as_user.as_ref().map(|v| v.value),
            gid: sc.run_as_group.as_ref().map(|v| v.value),
            username: sc.run_as_username.clone(),
            supplemental_groups: sc.supplemental_groups.clone(),
        },
        privileged: sc.privileged,
        capabilities_add: caps.add_capabilities,
        capabilities_drop: caps.drop_capabilities,
        no_new_privs: sc.no_new_privs,
        readonly_rootfs: sc.readonly_rootfs,
        seccomp: sc.seccomp.as_ref().map(profile),
        apparmor: sc.apparmor.as_ref().map(profile),
        selinux: sc.selinux_options.as_ref().map(|o| SelinuxOptions {
            user: o.user.clone(),
            role: o.role.clone(),
            kind: o.r#type.clone(),
            level: o.level.clone(),
        }),
        namespaces,
        mounts,
        devices: config
            .devices
            .iter()
            .map(|d| Device {
                container_path: d.container_path.clone(),
                host_path: d.host_path.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
    };
    spec.canonicalize();
    Ok(spec)
}

/// Whether the container stays in the node's user namespace: mode NODE,
/// no ID mappings. (The CRI's default mode, 0, is POD: a user namespace of
/// the pod's own.)
fn host_user_namespace(userns: &k8s_cri::v1::UserNamespace) -> bool {
    userns.mode == CriNamespaceMode::Node as i32 && userns.uids.is_empty() && userns.gids.is_empty()
}

fn namespaces(ns: Option<&NamespaceOption>) -> Result<Namespaces, String> {
    let Some(ns) = ns else {
        return Ok(Namespaces::default());
    };
    if let Some(userns) = &ns.userns_options {
        if !host_user_namespace(userns) {
            return Err("a user namespace".into());
        }
    }
    let mode = |v: i32| match CriNamespaceMode::try_from(v) {
        Ok(CriNamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(CriNamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(CriNamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(CriNamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(format!("namespace mode {v}")),
    };
    Ok(Namespaces {
        network: mode(ns.network)?,
        pid: mode(ns.pid)?,
        ipc: mode(ns.ipc)?,
        target_id: ns.target_id.clone(),
    })
}

fn propagation(v: i32) -> &'static str {
    match v {
        1 => "host-to-container",
        2 => "bidirectional",
        _ => "private",
    }
}

fn profile(p: &SecurityProfile) -> Profile {
    Profile {
        kind: match p.profile_type {
            0 => "runtime-default",
            1 => "unconfined",
            2 => "localhost",
            _ => "unknown",
        }
        .to_owned(),
        name: p.localhost_ref.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{
        Capability, ContainerMetadata, Int64Value, KeyValue, LinuxContainerConfig,
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount as CriMount, PodSandboxMetadata,
    };

    fn config() -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "engine".into(),
                attempt: 0,
            }),
            command: vec!["/engine".into()],
            args: vec!["--port=8000".into()],
            envs: vec![
                KeyValue {
                    key: "B".into(),
                    value: "2".into(),
                },
                KeyValue {
                    key: "A".into(),
                    value: "1".into(),
                },
            ],
            mounts: vec![CriMount {
                container_path: "/models".into(),
                host_path: "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~empty-dir/model"
                    .into(),
                readonly: true,
                ..Default::default()
            }],
            linux: Some(LinuxContainerConfig {
                resources: None,
                security_context: Some(LinuxContainerSecurityContext {
                    run_as_user: Some(Int64Value { value: 65532 }),
                    capabilities: Some(Capability {
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    no_new_privs: true,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_config_becomes_its_canonical_spec() {
        let spec = container_spec(&config(), "/var/lib/kubelet").unwrap();
        assert_eq!(spec.env[0].name, "A", "sorted");
        assert_eq!(spec.user.uid, Some(65532));
        assert!(spec.no_new_privs);
        assert_eq!(
            spec.mounts[0].source,
            MountSource::Volume {
                plugin: "kubernetes.io~empty-dir".into(),
                name: "model".into()
            }
        );
        // Another replica (other pod UID, env in another order): same digest.
        let mut other = config();
        other.envs.reverse();
        other.mounts[0].host_path =
            "/var/lib/kubelet/pods/uid-2/volumes/kubernetes.io~empty-dir/model".into();
        assert_eq!(
            container_spec(&other, "/var/lib/kubelet").unwrap().digest(),
            spec.digest()
        );
        // Labels, annotations and log paths do not matter.
        let mut labelled = config();
        labelled.labels.insert("x".into(), "y".into());
        labelled.log_path = "engine/0.log".into();
        assert_eq!(
            container_spec(&labelled, "/var/lib/kubelet")
                .unwrap()
                .digest(),
            spec.digest()
        );
    }

    #[test]
    fn unrepresentable_features_are_refused() {
        let mut cdi = config();
        cdi.cdi_devices.push(Default::default());
        assert!(container_spec(&cdi, "/var/lib/kubelet").is_err());
        let mut ambient = config();
        if let Some(sc) = ambient
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.capabilities = Some(Capability {
                add_ambient_capabilities: vec!["NET_RAW".into()],
                ..Default::default()
            });
        }
        assert!(container_spec(&ambient, "/var/lib/kubelet").is_err());
        let mut mapped = config();
        mapped.mounts[0].uid_mappings.push(Default::default());
        assert!(container_spec(&mapped, "/var/lib/kubelet").is_err());
    }

    #[test]
    fn the_agent_socket_is_mounted_by_the_node_not_the_kubelet() {
        let mut cfg = config();
        let mut spec = container_spec(&cfg, "/var/lib/kubelet").unwrap();
        let before = spec.digest();
        mount_node_agent(&mut cfg, &mut spec, "/run/node-a").unwrap();
        let added = cfg.mounts.last().unwrap();
        assert_eq!(
            (
                added.container_path.as_str(),
                added.host_path.as_str(),
                added.readonly
            ),
            (AGENT_SOCKET_DIR, "/run/node-a", true)
        );
        assert!(spec
            .mounts
            .iter()
            .any(|m| m.source == MountSource::NodeAgent && m.readonly));
        assert_ne!(spec.digest(), before);
        // Another node keeps its socket elsewhere: the same digest.
        let mut other_cfg = config();
        let mut other = container_spec(&other_cfg, "/var/lib/kubelet").unwrap();
        mount_node_agent(&mut other_cfg, &mut other, "/var/run/elsewhere").unwrap();
        assert_eq!(other.digest(), spec.digest());
        // A kubelet mount at or below the socket's place is refused.
        for path in [AGENT_SOCKET_DIR, "/run/aver-node/agent.sock"] {
            let mut shadow = config();
            shadow.mounts[0].container_path = path.into();
            let mut s = container_spec(&shadow, "/var/lib/kubelet").unwrap();
            let e = mount_node_agent(&mut shadow, &mut s, "/run/node-a").unwrap_err();
            assert!(e.to_string().contains(path), "{e}");
        }
    }

    #[test]
    fn sandbox_labels_and_host_namespaces() {
        let mut sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "llama-0".into(),
                uid: "u".into(),
                namespace: "ml".into(),
                attempt: 0,
            }),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: 2,
                        pid: 1,
                        ipc: 0,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        sandbox
            .labels
            .insert(CONFIDENTIAL_LABEL.into(), "llama".into());
        let info = sandbox_info(&sandbox).unwrap();
        assert_eq!(info.confidential_model.as_deref(), Some("llama"));
        assert!(info.host_network && !info.host_pid && !info.host_ipc);
        // The kubelet names the node's user namespace explicitly (NODE, 2);
        // a user namespace of the pod's own (POD, 0), or ID mappings, are
        // refused.
        let userns = |mode: i32, mapped: bool| {
            let mut s = sandbox.clone();
            let options = s
                .linux
                .as_mut()
                .and_then(|l| l.security_context.as_mut())
                .and_then(|c| c.namespace_options.as_mut())
                .unwrap();
            options.userns_options = Some(k8s_cri::v1::UserNamespace {
                mode,
                uids: if mapped {
                    vec![Default::default()]
                } else {
                    vec![]
                },
                gids: vec![],
            });
            sandbox_info(&s)
        };
        assert!(userns(CriNamespaceMode::Node as i32, false).is_ok());
        assert!(userns(CriNamespaceMode::Pod as i32, false).is_err());
        assert!(userns(CriNamespaceMode::Node as i32, true).is_err());
        sandbox.metadata = None;
        assert!(sandbox_info(&sandbox).is_err());
    }
}
