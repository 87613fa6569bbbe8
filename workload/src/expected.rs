//! The container specs `aver-node` will measure for a rendered pod.
//!
//! `aver-node` measures the CRI `ContainerConfig` the kubelet sends, after
//! the kubelet has merged security contexts, expanded variables, injected
//! its own environment and added its own mounts. A policy lists the digests
//! of those specs ([`ContainerSpec::digest`]), so whoever writes the policy
//! must redo the kubelet's conversion from the pod spec. This module does,
//! following the kubelet of Kubernetes v1.34 rule by rule (the Go function
//! each rule comes from is named where it is applied):
//!
//! - `kuberuntime_container.go` `generateContainerConfig`: command and args
//!   expanded against the final environment, working dir, mounts, devices;
//! - `kubelet_pods.go` `makeEnvironmentVariables`: declared variables in
//!   order (`$(VAR)` expanded against earlier ones and the service
//!   variables), then the `default/kubernetes` Service's variables, which
//!   the kubelet injects even with `enableServiceLinks: false`;
//!   `makeMounts`: volume mounts, then `/etc/hosts` unless a volume is
//!   mounted there; `kuberuntime_container.go` `makeMounts`: the termination
//!   message file;
//! - `security_context.go` `determineEffectiveSecurityContext` and
//!   `pkg/securitycontext/util.go`: pod and container security contexts
//!   merged (container wins), the image's user when none is set,
//!   supplemental groups (fsGroup first), no_new_privs from
//!   `allowPrivilegeEscalation: false`, the default masked and read-only
//!   paths unless `procMount: Unmasked`;
//! - `helpers.go` `getSeccompProfile` / `getAppArmorProfile`: container
//!   profile, else the pod's, else the kubelet's `--seccomp-default`;
//! - `util/util.go` `NamespacesForPod`: network and IPC of the pod, PID of
//!   the container unless `shareProcessNamespace` or a host namespace.
//!
//! What a static conversion cannot know is either a parameter
//! ([`KubeletParams`]: the `kubernetes` Service's address, the kubelet's
//! root directory and `--seccomp-default`, the image's `USER`, CPUs with a
//! `thermal_throttle` directory) or refused with [`ExpectedError::Unmeasurable`]:
//! values that differ from pod to pod or live outside the resource (per-pod
//! downward-API fields, Secrets and ConfigMaps, other Services' variables),
//! mounts the node log records with the pod UID (sub paths) or whose
//! source the resource does not name (a claim's volume, until the
//! controller publishes it; image volumes without their ID), device plugin
//! allocations, user namespaces. The controller renders node-measured pods
//! without any of these.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use aver_crds::{
    AllowedContainer, AllowedPod, ConfidentialModel, Measurement, ModelVolume, ModelVolumeType,
    Sha256Digest,
};
use aver_node_log::policy::AGENT_SOCKET_DIR;
use aver_node_log::spec::EnvVar as SpecEnv;
use aver_node_log::spec::{
    Mount, MountSource, NamespaceMode, Namespaces, Profile, SelinuxOptions, User,
};
use aver_node_log::spec::{CSI_PLUGIN_DIR, LOCAL_VOLUME_PLUGIN_DIR};
use aver_node_log::ContainerSpec;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext, Volume,
};

use crate::render::{self, WorkloadConfig, WorkloadError};

/// The kubelet's default `terminationMessagePath` (API server default).
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The kubelet's default root directory (`--root-dir`).
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";
/// The usual ClusterIP and port of `default/kubernetes` (first address of
/// the default service CIDR 10.96.0.0/12).
pub const DEFAULT_KUBERNETES_SERVICE: &str = "10.96.0.1:443";

/// `defaultMaskedPaths` of `pkg/securitycontext/util.go` (kept in sync
/// with moby), without the per-CPU `thermal_throttle` paths.
pub const DEFAULT_MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// `defaultReadonlyPaths` of `pkg/securitycontext/util.go`.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The user an image declares (`USER` in its config), which the kubelet
/// uses when the security context sets no `runAsUser`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUser {
    /// A numeric user (`USER 1000` or `USER 1000:1000`).
    Uid(i64),
    /// A user name, resolved by the runtime inside the image.
    Name(String),
}

/// What the kubelet's conversion depends on besides the pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletParams {
    /// ClusterIP and port of the `default/kubernetes` Service, whose
    /// variables the kubelet injects into every container.
    pub kubernetes_service: SocketAddr,
    /// The kubelet's `--root-dir`: localhost seccomp profiles are below
    /// `<root>/seccomp`, and host paths below `<root>/pods` are classified.
    pub kubelet_root: String,
    /// The kubelet's `--seccomp-default`: RuntimeDefault instead of
    /// Unconfined for containers without a profile.
    pub seccomp_default: bool,
    /// The `USER` of images of containers without `runAsUser`, by container
    /// name. An image not listed is taken to declare none: the kubelet then
    /// runs it as UID 0.
    pub image_users: BTreeMap<String, ImageUser>,
    /// CPUs for which the node has `/sys/devices/system/cpu/cpuN/thermal_throttle`:
    /// the kubelet masks those paths too, so they are in the spec (bare
    /// metal with Intel CPUs has them; most VMs do not).
    pub thermal_throttle_cpus: Vec<u32>,
    /// The runtime's image ID (`sha256:…` of the image config) of each
    /// image volume's reference: the kubelet passes the ID it resolved, not
    /// the reference, so an image model source needs it.
    pub image_ids: BTreeMap<String, String>,
    /// Where each PersistentVolumeClaim is mounted from, by claim name: the
    /// kubelet mounts a claim from its bound volume's directory, named after
    /// the volume. [`expected_pod`] adds the model's claim from the
    /// resource's `status.modelVolume`.
    pub claims: BTreeMap<String, MountSource>,
}

impl KubeletParams {
    /// Defaults of a stock kubelet, with the given `kubernetes` Service.
    pub fn new(kubernetes_service: SocketAddr) -> Self {
        Self {
            kubernetes_service,
            kubelet_root: DEFAULT_KUBELET_ROOT.to_owned(),
            seccomp_default: false,
            image_users: BTreeMap::new(),
            thermal_throttle_cpus: Vec::new(),
            image_ids: BTreeMap::new(),
            claims: BTreeMap::new(),
        }
    }
}

/// Why the expected specs of a pod cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpectedError {
    /// The pod itself cannot be rendered from the resource.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The resource uses `measurement: enclave`, whose pods aver-node does not
    /// measure.
    #[error("the resource has measurement: enclave: aver-node does not measure its pods, so there are no container specs to allow")]
    NotNodeMeasured,
    /// A container's image reference carries no `@sha256:` digest.
    #[error("container {container}: image {image:?} is not pinned by digest (repository@sha256:...), so no policy can name it")]
    UnpinnedImage {
        /// The container's name in the pod spec.
        container: String,
        /// The image reference as written.
        image: String,
    },
    /// The pod uses something whose effect on the container cannot be computed
    /// from the pod spec (init containers, a user namespace, raw block volumes…).
    #[error("container {container}: {what} cannot be in a spec digest computed from the pod spec")]
    Unmeasurable {
        /// The container concerned (the first one, for pod-wide features).
        container: String,
        /// The feature, as the message names it.
        what: String,
    },
}

/// One container as aver-node will record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedContainer {
    /// The container's name in the pod spec, as `allowed.pod` names it.
    pub name: String,
    /// The image reference of the pod spec.
    pub image: String,
    /// The digest the reference is pinned to.
    pub image_digest: Sha256Digest,
    /// The canonical spec (lists in canonical order).
    pub spec: ContainerSpec,
    /// `spec.digest()`.
    pub spec_digest: Sha256Digest,
}

/// Every container of a pod, in pod spec order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPod {
    /// One entry per container of the pod spec; init containers are refused,
    /// not listed.
    pub containers: Vec<ExpectedContainer>,
}

impl ExpectedPod {
    /// The policy's `allowed.pod`: each container's name, image digest and
    /// spec digest.
    pub fn allowed_pod(&self) -> AllowedPod {
        AllowedPod {
            containers: self
                .containers
                .iter()
                .map(|c| AllowedContainer {
                    name: c.name.clone(),
                    image_digests: vec![c.image_digest],
                    spec_digests: vec![c.spec_digest],
                })
                .collect(),
        }
    }
}

/// The containers aver-node will measure for the resource's pods, rendered
/// with [`render::pod_spec`].
pub fn expected_pod(
    cm: &ConfidentialModel,
    config: &WorkloadConfig,
    params: &KubeletParams,
) -> Result<ExpectedPod, ExpectedError> {
    if cm.spec.measurement != Measurement::Node {
        return Err(ExpectedError::NotNodeMeasured);
    }
    let (_, namespace) = render::identity(cm)?;
    let pod = render::pod_spec(cm, config)?;
    let mut params = std::borrow::Cow::Borrowed(params);
    if let Some(volume) = cm.status.as_ref().and_then(|s| s.model_volume.as_ref()) {
        let source = claim_source(volume, &params.kubelet_root)?;
        params
            .to_mut()
            .claims
            .insert(volume.claim_name.clone(), source);
    }
    let mut expected = pod_containers(&pod, &namespace, &params)?;
    // aver-node adds its socket to the key holder itself (the pod has no
    // volume for it): the spec it records has that mount.
    for c in &mut expected.containers {
        if c.name == render::NODE_ENCLAVE_CONTAINER {
            c.spec.mounts.push(Mount {
                container_path: AGENT_SOCKET_DIR.to_owned(),
                source: MountSource::NodeAgent,
                readonly: true,
                propagation: "private".to_owned(),
                selinux_relabel: false,
            });
            c.spec.canonicalize();
            c.spec_digest = c.spec.digest();
        }
    }
    Ok(expected)
}

/// Where the kubelet mounts a claim bound to `volume` from
/// (`GetPodVolumeDir`, or the path itself for a hostPath volume).
pub fn claim_source(
    volume: &ModelVolume,
    kubelet_root: &str,
) -> Result<MountSource, ExpectedError> {
    let plugin = |dir: &str| MountSource::Volume {
        plugin: dir.to_owned(),
        name: volume.volume_name.clone(),
    };
    Ok(match volume.type_ {
        ModelVolumeType::Local => plugin(LOCAL_VOLUME_PLUGIN_DIR),
        ModelVolumeType::Csi => plugin(CSI_PLUGIN_DIR),
        ModelVolumeType::HostPath => match &volume.path {
            Some(path) => MountSource::classify(path, kubelet_root),
            None => {
                return Err(ExpectedError::Unmeasurable {
                    container: render::NODE_ENCLAVE_CONTAINER.to_owned(),
                    what: format!(
                        "status.modelVolume of claim {}: a HostPath volume without its path",
                        volume.claim_name
                    ),
                })
            }
        },
    })
}

/// The expected containers of any pod spec in `namespace`.
pub fn pod_containers(
    pod: &PodSpec,
    namespace: &str,
    params: &KubeletParams,
) -> Result<ExpectedPod, ExpectedError> {
    let unmeasurable = |container: &str, what: &str| ExpectedError::Unmeasurable {
        container: container.to_owned(),
        what: what.to_owned(),
    };
    let first = pod.containers.first().map_or("(none)", |c| c.name.as_str());
    if pod.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(unmeasurable(first, "the pod's init containers"));
    }
    if pod.host_users == Some(false) {
        // The gate refuses user namespaces: the spec cannot describe them.
        return Err(unmeasurable(first, "a user namespace (hostUsers: false)"));
    }
    let containers = pod
        .containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            let image_digest =
                pinned_digest(&image).ok_or_else(|| ExpectedError::UnpinnedImage {
                    container: c.name.clone(),
                    image: image.clone(),
                })?;
            let spec = container_spec(pod, c, namespace, params)?;
            let spec_digest = spec.digest();
            Ok(ExpectedContainer {
                name: c.name.clone(),
                image,
                image_digest,
                spec,
                spec_digest,
            })
        })
        .collect::<Result<_, ExpectedError>>()?;
    Ok(ExpectedPod { containers })
}

/// The digest an image reference is pinned to (`…@sha256:<hex>`).
pub fn pinned_digest(image: &str) -> Option<Sha256Digest> {
    image
        .rsplit_once('@')
        .and_then(|(_, d)| Sha256Digest::parse(d).ok())
}

/// The canonical spec of one container of `pod`, as aver-node will record
/// the kubelet's `CreateContainer` request for it.
pub fn container_spec(
    pod: &PodSpec,
    container: &Container,
    namespace: &str,
    params: &KubeletParams,
) -> Result<ContainerSpec, ExpectedError> {
    let name = container.name.as_str();
    let unmeasurable = |what: String| ExpectedError::Unmeasurable {
        container: name.to_owned(),
        what,
    };
    check_resources(container).map_err(unmeasurable)?;
    if container
        .volume_devices
        .as_ref()
        .is_some_and(|d| !d.is_empty())
    {
        return Err(unmeasurable("raw block volumes (volumeDevices)".into()));
    }

    let env = environment(pod, container, namespace, params).map_err(unmeasurable)?;
    // generateContainerConfig: ExpandContainerCommandAndArgs over opts.Envs.
    let vars: BTreeMap<&str, &str> = env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|s| expand(s, |k| vars.get(k).map(|v| (*v).to_owned())))
            .collect()
    };
    let command = expand_all(&container.command);
    let args = expand_all(&container.args);

    let sc = effective_security_context(
        pod.security_context.as_ref(),
        container.security_context.as_ref(),
    );
    let caps = sc.capabilities.clone().unwrap_or_default();
    let unmasked = sc.proc_mount.as_deref() == Some("Unmasked");
    let mut masked_paths: Vec<String> = Vec::new();
    let mut readonly_paths: Vec<String> = Vec::new();
    if !unmasked {
        masked_paths = DEFAULT_MASKED_PATHS
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        masked_paths.extend(
            params
                .thermal_throttle_cpus
                .iter()
                .map(|cpu| format!("/sys/devices/system/cpu/cpu{cpu}/thermal_throttle")),
        );
        readonly_paths = DEFAULT_READONLY_PATHS
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
    }

    let mut spec = ContainerSpec {
        command,
        args,
        env: env
            .iter()
            .map(|(name, value)| SpecEnv::new(name.clone(), value))
            .collect(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        user: user(pod.security_context.as_ref(), &sc, name, params),
        privileged: sc.privileged.unwrap_or(false),
        capabilities_add: caps.add.unwrap_or_default(),
        capabilities_drop: caps.drop.unwrap_or_default(),
        // AddNoNewPrivileges: only an explicit allowPrivilegeEscalation: false.
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        seccomp: Some(
            seccomp(
                pod.security_context.as_ref(),
                container.security_context.as_ref(),
                params,
            )
            .map_err(unmeasurable)?,
        ),
        apparmor: apparmor(
            pod.security_context.as_ref(),
            container.security_context.as_ref(),
        )
        .map_err(unmeasurable)?,
        selinux: sc.se_linux_options.as_ref().map(|o| SelinuxOptions {
            user: o.user.clone().unwrap_or_default(),
            role: o.role.clone().unwrap_or_default(),
            kind: o.type_.clone().unwrap_or_default(),
            level: o.level.clone().unwrap_or_default(),
        }),
        namespaces: namespaces(pod),
        mounts: mounts(pod, container, params).map_err(unmeasurable)?,
        devices: Vec::new(),
        masked_paths,
        readonly_paths,
    };
    spec.canonicalize();
    Ok(spec)
}

/// Resources a device plugin or the node decides: its allocation adds
/// devices, environment and mounts that differ per node.
fn check_resources(container: &Container) -> Result<(), String> {
    let Some(resources) = &container.resources else {
        return Ok(());
    };
    let standard = |name: &str| {
        matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
    };
    let extended = resources
        .limits
        .iter()
        .chain(resources.requests.iter())
        .flat_map(|m| m.keys())
        .find(|k| !standard(k));
    match extended {
        Some(name) => Err(format!(
            "extended resource {name} (its device plugin adds devices, environment and mounts chosen per node)"
        )),
        None => Ok(()),
    }
}

/// `makeEnvironmentVariables`, for what can be known from the pod spec.
fn environment(
    pod: &PodSpec,
    container: &Container,
    namespace: &str,
    params: &KubeletParams,
) -> Result<Vec<(String, String)>, String> {
    // The API server defaults enableServiceLinks to true; then every Service
    // of the namespace adds variables, which the resource does not list.
    if pod.enable_service_links != Some(false) {
        return Err("enableServiceLinks (the variables of the namespace's Services)".into());
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err("envFrom (ConfigMap or Secret contents)".into());
    }
    let service_env = kubernetes_service_env(params.kubernetes_service);
    let mut declared: BTreeMap<String, String> = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let value = declared_value(pod, var, namespace, &declared, &service_env)?;
        declared.insert(var.name.clone(), value);
    }
    let mut env: Vec<(String, String)> = declared
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    // Remaining service variables: those not declared by the container.
    env.extend(
        service_env
            .iter()
            .filter(|(k, _)| !declared.contains_key(*k))
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    Ok(env)
}

/// One declared variable's runtime value (step 1a/1b of the kubelet).
fn declared_value(
    pod: &PodSpec,
    var: &EnvVar,
    namespace: &str,
    declared: &BTreeMap<String, String>,
    service_env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let value = var.value.clone().unwrap_or_default();
    if !value.is_empty() {
        return Ok(expand(&value, |k| {
            declared.get(k).or_else(|| service_env.get(k)).cloned()
        }));
    }
    let Some(from) = &var.value_from else {
        return Ok(String::new());
    };
    if let Some(field) = &from.field_ref {
        return match field.field_path.as_str() {
            "metadata.namespace" => Ok(namespace.to_owned()),
            // The ServiceAccount admission plugin defaults it.
            "spec.serviceAccountName" => Ok(pod
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned())),
            other => Err(format!(
                "env {}: fieldRef {other} (its value differs from pod to pod)",
                var.name
            )),
        };
    }
    let source = if from.secret_key_ref.is_some() {
        "secretKeyRef"
    } else if from.config_map_key_ref.is_some() {
        "configMapKeyRef"
    } else if from.resource_field_ref.is_some() {
        "resourceFieldRef"
    } else {
        "a value source"
    };
    Err(format!("env {}: {source} (not in the pod spec)", var.name))
}

/// `envvars.FromServices` for the `default/kubernetes` Service: one port,
/// named `https`, TCP.
pub fn kubernetes_service_env(service: SocketAddr) -> BTreeMap<String, String> {
    let ip = service.ip().to_string();
    let port = service.port().to_string();
    // net.JoinHostPort: IPv6 addresses in brackets, as SocketAddr shows them.
    let url = format!("tcp://{service}");
    let prefix = format!("KUBERNETES_PORT_{port}_TCP");
    BTreeMap::from([
        ("KUBERNETES_SERVICE_HOST".to_owned(), ip.clone()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), port.clone()),
        ("KUBERNETES_PORT".to_owned(), url.clone()),
        (prefix.clone(), url),
        (format!("{prefix}_PROTO"), "tcp".to_owned()),
        (format!("{prefix}_PORT"), port),
        (format!("{prefix}_ADDR"), ip),
    ])
}

/// `third_party/forked/golang/expansion.Expand`: `$(VAR)` is replaced by
/// the variable's value, or left as written when it has none; `$$` is a
/// literal `$`; any other `$` is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A trailing `$` is copied as is.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after[1..].find(')') {
                Some(close) => {
                    let name = &after[1..1 + close];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 2..];
                }
                // Incomplete reference: "$(" is copied and scanning goes on.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `DetermineEffectiveSecurityContext`: the pod's fields that apply to
/// containers, overridden field by field by the container's.
fn effective_security_context(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
) -> SecurityContext {
    let mut sc = pod.map_or_else(SecurityContext::default, |p| SecurityContext {
        se_linux_options: p.se_linux_options.clone(),
        run_as_user: p.run_as_user,
        run_as_group: p.run_as_group,
        run_as_non_root: p.run_as_non_root,
        ..SecurityContext::default()
    });
    let Some(c) = container else {
        return sc;
    };
    macro_rules! over {
        ($($f:ident),*) => {$(
            if c.$f.is_some() {
                sc.$f = c.$f.clone();
            }
        )*};
    }
    over!(
        se_linux_options,
        capabilities,
        privileged,
        run_as_user,
        run_as_group,
        run_as_non_root,
        read_only_root_filesystem,
        allow_privilege_escalation,
        proc_mount
    );
    sc
}

/// The user: `runAsUser`, else the image's; groups from the pod.
fn user(
    pod: Option<&PodSecurityContext>,
    sc: &SecurityContext,
    container: &str,
    params: &KubeletParams,
) -> User {
    let (uid, username) = match (sc.run_as_user, params.image_users.get(container)) {
        (Some(uid), _) => (Some(uid), String::new()),
        (None, Some(ImageUser::Uid(uid))) => (Some(*uid), String::new()),
        (None, Some(ImageUser::Name(name))) => (None, name.clone()),
        // getImageUser: "If non of them is set, treat it as root."
        (None, None) => (Some(0), String::new()),
    };
    let mut supplemental_groups = Vec::new();
    if let Some(pod) = pod {
        supplemental_groups.extend(pod.fs_group);
        supplemental_groups.extend(pod.supplemental_groups.iter().flatten());
    }
    User {
        uid,
        gid: sc.run_as_group,
        username,
        supplemental_groups,
    }
}

/// `getSeccompProfile`.
fn seccomp(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
    params: &KubeletParams,
) -> Result<Profile, String> {
    let field = container
        .and_then(|c| c.seccomp_profile.as_ref())
        .or_else(|| pod.and_then(|p| p.seccomp_profile.as_ref()));
    let profile = |kind: &str, name: String| Profile {
        kind: kind.to_owned(),
        name,
    };
    let Some(SeccompProfile {
        type_,
        localhost_profile,
    }) = field
    else {
        return Ok(if params.seccomp_default {
            profile("runtime-default", String::new())
        } else {
            profile("unconfined", String::new())
        });
    };
    Ok(match type_.as_str() {
        "RuntimeDefault" => profile("runtime-default", String::new()),
        "Localhost" => match localhost_profile.as_deref() {
            Some(p) if !p.is_empty() => profile(
                "localhost",
                format!("{}/seccomp/{p}", params.kubelet_root.trim_end_matches('/')),
            ),
            _ => return Err("a Localhost seccomp profile without localhostProfile".into()),
        },
        _ => profile("unconfined", String::new()),
    })
}

/// `getAppArmorProfile` (fields only: the controller sets no annotations).
fn apparmor(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
) -> Result<Option<Profile>, String> {
    let field = container
        .and_then(|c| c.app_armor_profile.as_ref())
        .or_else(|| pod.and_then(|p| p.app_armor_profile.as_ref()));
    let Some(p) = field else {
        return Ok(None);
    };
    let (kind, name) = match p.type_.as_str() {
        "RuntimeDefault" => ("runtime-default", String::new()),
        "Unconfined" => ("unconfined", String::new()),
        "Localhost" => match &p.localhost_profile {
            Some(name) => ("localhost", name.clone()),
            None => return Err("a Localhost AppArmor profile without localhostProfile".into()),
        },
        other => return Err(format!("AppArmor profile type {other:?}")),
    };
    Ok(Some(Profile {
        kind: kind.to_owned(),
        name,
    }))
}

/// `NamespacesForPod`.
fn namespaces(pod: &PodSpec) -> Namespaces {
    let host = |on: Option<bool>, otherwise| {
        if on == Some(true) {
            NamespaceMode::Node
        } else {
            otherwise
        }
    };
    let pid = if pod.share_process_namespace == Some(true) {
        NamespaceMode::Pod
    } else {
        NamespaceMode::Container
    };
    Namespaces {
        network: host(pod.host_network, NamespaceMode::Pod),
        pid: host(pod.host_pid, pid),
        ipc: host(pod.host_ipc, NamespaceMode::Pod),
        target_id: String::new(),
    }
}

/// `makeMounts` (kubelet) and `makeMounts` (kuberuntime), on a node
/// without SELinux (no relabelling).
fn mounts(
    pod: &PodSpec,
    container: &Container,
    params: &KubeletParams,
) -> Result<Vec<Mount>, String> {
    let volumes: BTreeMap<&str, &Volume> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mut out = Vec::new();
    let mut etc_hosts = true;
    for m in container.volume_mounts.iter().flatten() {
        etc_hosts &= m.mount_path != "/etc/hosts";
        let volume = volumes.get(m.name.as_str()).ok_or_else(|| {
            format!(
                "a mount of volume {:?}, which the pod does not have",
                m.name
            )
        })?;
        if m.sub_path.as_deref().is_some_and(|s| !s.is_empty())
            || m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty())
        {
            return Err(format!(
                "the subPath mount of volume {} (the kubelet bind-mounts it from the pod's volume-subpaths directory, which the node log records with the pod UID)",
                m.name
            ));
        }
        let (source, must_read_only) = volume_source(volume, params)?;
        out.push(Mount {
            container_path: m.mount_path.clone(),
            source,
            readonly: m.read_only.unwrap_or(false) || must_read_only,
            propagation: propagation(m.mount_propagation.as_deref())?,
            selinux_relabel: false,
        });
    }
    let private = "private".to_owned();
    if etc_hosts {
        out.push(Mount {
            container_path: "/etc/hosts".to_owned(),
            source: MountSource::EtcHosts,
            readonly: false,
            propagation: private.clone(),
            selinux_relabel: false,
        });
    }
    let termination = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.to_owned());
    if !termination.is_empty() {
        out.push(Mount {
            container_path: termination,
            source: MountSource::TerminationLog,
            readonly: false,
            propagation: private,
            selinux_relabel: false,
        });
    }
    Ok(out)
}

/// Where the kubelet mounts a volume from (`volumeutil.GetPath` of its
/// mounter), as the node log classifies it, and whether the plugin forces
/// read-only (`GetAttributes().ReadOnly`).
fn volume_source(volume: &Volume, params: &KubeletParams) -> Result<(MountSource, bool), String> {
    let plugin = |dir: &str, read_only: bool| {
        Ok((
            MountSource::Volume {
                plugin: dir.to_owned(),
                name: volume.name.clone(),
            },
            read_only,
        ))
    };
    if volume.empty_dir.is_some() {
        return plugin("kubernetes.io~empty-dir", false);
    }
    if volume.config_map.is_some() {
        return plugin("kubernetes.io~configmap", true);
    }
    if volume.secret.is_some() {
        return plugin("kubernetes.io~secret", true);
    }
    if volume.downward_api.is_some() {
        return plugin("kubernetes.io~downward-api", true);
    }
    if volume.projected.is_some() {
        return plugin("kubernetes.io~projected", true);
    }
    if let Some(host) = &volume.host_path {
        return Ok((
            MountSource::classify(&host.path, &params.kubelet_root),
            false,
        ));
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        // Every plugin supported here mounts read-only when the claim
        // source says so (`spec.ReadOnly`).
        return match params.claims.get(&claim.claim_name) {
            Some(source) => Ok((source.clone(), claim.read_only == Some(true))),
            None => Err(format!(
                "volume {} of claim {}, which is not resolved to its PersistentVolume (the kubelet mounts a claim from a directory named after its volume; the controller publishes it in status.modelVolume once the claim is bound)",
                volume.name, claim.claim_name
            )),
        };
    }
    if let Some(image) = &volume.image {
        let reference = image.reference.clone().unwrap_or_default();
        // The image volume plugin mounts read-only.
        return match params.image_ids.get(&reference) {
            Some(id) => Ok((MountSource::Image { reference: id.clone() }, true)),
            None => Err(format!(
                "image volume {} without the runtime's image ID of {reference} (the kubelet passes the ID it resolved, not the reference; give it as a parameter)",
                volume.name
            )),
        };
    }
    Err(format!(
        "volume {} of a kind the node log cannot classify",
        volume.name
    ))
}

/// `translateMountPropagation`.
fn propagation(mode: Option<&str>) -> Result<String, String> {
    Ok(match mode {
        None | Some("None") => "private",
        Some("HostToContainer") => "host-to-container",
        Some("Bidirectional") => "bidirectional",
        Some(other) => return Err(format!("mount propagation {other:?}")),
    }
    .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{enclave_image, node_model, node_workload_config};
    use k8s_openapi::api::core::v1::{
        AppArmorProfile, Capabilities, ConfigMapVolumeSource, EmptyDirVolumeSource, EnvFromSource,
        EnvVarSource, HostPathVolumeSource, ImageVolumeSource, ObjectFieldSelector,
        PersistentVolumeClaimVolumeSource, VolumeMount,
    };

    fn params() -> KubeletParams {
        KubeletParams::new("10.96.0.1:443".parse().unwrap())
    }

    fn plain(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        }
    }

    fn pod(container: Container) -> PodSpec {
        PodSpec {
            containers: vec![container],
            enable_service_links: Some(false),
            ..PodSpec::default()
        }
    }

    fn engine() -> Container {
        Container {
            name: "engine".into(),
            image: Some(format!("vllm@{}", crate::testing::digest(1))),
            ..Container::default()
        }
    }

    fn spec(pod: &PodSpec) -> Result<ContainerSpec, ExpectedError> {
        container_spec(pod, &pod.containers[0], "ml", &params())
    }

    /// Environment values are recorded as digests; `h` gives the digest to
    /// compare with.
    fn env_of(spec: &ContainerSpec) -> BTreeMap<String, aver_crds::Sha256Digest> {
        spec.env
            .iter()
            .map(|v| (v.name.clone(), v.value_sha256))
            .collect()
    }

    fn h(value: &str) -> aver_crds::Sha256Digest {
        SpecEnv::new("", value).value_sha256
    }

    fn unmeasurable(result: Result<ContainerSpec, ExpectedError>, what: &str) {
        match result {
            Err(ExpectedError::Unmeasurable { what: w, .. }) => {
                assert!(w.contains(what), "{w:?} does not mention {what:?}")
            }
            other => panic!("expected unmeasurable {what:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_kubernetes_service_variables_are_injected_without_service_links() {
        let spec = spec(&pod(engine())).unwrap();
        let expected: BTreeMap<String, aver_crds::Sha256Digest> = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), h(v)))
        .collect();
        assert_eq!(env_of(&spec), expected);
        let v6 = kubernetes_service_env("[fd00::1]:6443".parse().unwrap());
        assert_eq!(v6["KUBERNETES_PORT_6443_TCP"], "tcp://[fd00::1]:6443");
        assert_eq!(v6["KUBERNETES_SERVICE_HOST"], "fd00::1");
        // A declared variable of the same name wins over the kubelet's.
        let mut c = engine();
        c.env = Some(vec![plain("KUBERNETES_SERVICE_HOST", "mine")]);
        let spec = self::spec(&pod(c)).unwrap();
        assert_eq!(env_of(&spec)["KUBERNETES_SERVICE_HOST"], h("mine"));
        assert_eq!(spec.env.len(), 8);
        // Service links of other Services are not in the resource.
        let mut p = pod(engine());
        p.enable_service_links = None;
        unmeasurable(self::spec(&p), "enableServiceLinks");
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars = |k: &str| match k {
            "A" => Some("1".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        for (input, output) in [
            ("$(A)", "1"),
            ("x$(A)y$(A)", "x1y1"),
            ("$(MISSING)", "$(MISSING)"),
            ("$(EMPTY)", ""),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$x", "$x"),
            ("$é$(A)", "$é1"),
            ("$()", "$()"),
        ] {
            assert_eq!(expand(input, vars), output, "{input}");
        }
    }

    #[test]
    fn env_values_expand_against_earlier_variables_and_args_against_all() {
        let mut c = engine();
        c.env = Some(vec![
            plain("LATER_REF", "$(B)"),
            plain("B", "b"),
            plain("SVC", "$(KUBERNETES_SERVICE_HOST)"),
            plain("DUP", "first"),
            plain("DUP", "second"),
            EnvVar {
                name: "UNSET".into(),
                value: None,
                value_from: None,
            },
            field("NS", "metadata.namespace"),
            field("SA", "spec.serviceAccountName"),
        ]);
        c.command = Some(vec!["/bin/$(B)".into()]);
        c.args = Some(vec!["--x=$(LATER_REF)".into(), "$(NS)/$(SA)".into()]);
        c.working_dir = Some("/work".into());
        let spec = spec(&pod(c)).unwrap();
        let env = env_of(&spec);
        assert_eq!(env["LATER_REF"], h("$(B)"), "only earlier variables");
        assert_eq!(env["SVC"], h("10.96.0.1"));
        assert_eq!(env["DUP"], h("second"));
        assert_eq!(env["UNSET"], h(""));
        assert_eq!(env["NS"], h("ml"));
        assert_eq!(env["SA"], h("default"));
        assert_eq!(spec.command, ["/bin/b"]);
        assert_eq!(spec.args, ["--x=$(B)", "ml/default"]);
        assert_eq!(spec.working_dir, "/work");
    }

    #[test]
    fn per_pod_and_external_values_are_refused() {
        for path in [
            "metadata.name",
            "metadata.uid",
            "spec.nodeName",
            "status.podIP",
            "status.hostIP",
        ] {
            let mut c = engine();
            c.env = Some(vec![field("X", path)]);
            unmeasurable(spec(&pod(c)), path);
        }
        let mut c = engine();
        c.env = Some(vec![EnvVar {
            name: "T".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(Default::default()),
                ..EnvVarSource::default()
            }),
        }]);
        unmeasurable(spec(&pod(c)), "secretKeyRef");
        let mut c = engine();
        c.env_from = Some(vec![EnvFromSource::default()]);
        unmeasurable(spec(&pod(c)), "envFrom");
        let mut c = engine();
        c.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "nvidia.com/gpu".to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            )])),
            ..Default::default()
        });
        unmeasurable(spec(&pod(c)), "nvidia.com/gpu");
    }

    #[test]
    fn user_is_the_security_context_s_else_the_image_s_else_root() {
        let spec_with = |p: &PodSpec, params: &KubeletParams| {
            container_spec(p, &p.containers[0], "ml", params).unwrap()
        };
        let p = pod(engine());
        assert_eq!(
            spec_with(&p, &params()).user,
            User {
                uid: Some(0),
                ..User::default()
            }
        );
        let mut named = params();
        named
            .image_users
            .insert("engine".into(), ImageUser::Name("vllm".into()));
        assert_eq!(
            spec_with(&p, &named).user,
            User {
                uid: None,
                username: "vllm".into(),
                ..User::default()
            }
        );
        let mut p = pod(engine());
        p.security_context = Some(PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(2000),
            fs_group: Some(3000),
            supplemental_groups: Some(vec![5000, 4000]),
            ..PodSecurityContext::default()
        });
        p.containers[0].security_context = Some(SecurityContext {
            run_as_user: Some(1001),
            ..SecurityContext::default()
        });
        let user = spec_with(&p, &named).user;
        assert_eq!(
            user,
            User {
                uid: Some(1001),
                gid: Some(2000),
                username: String::new(),
                supplemental_groups: vec![3000, 4000, 5000],
            }
        );
    }

    #[test]
    fn privileges_come_from_the_container_context() {
        let mut c = engine();
        let base = spec(&pod(c.clone())).unwrap();
        assert!(!base.no_new_privs && !base.privileged && !base.readonly_rootfs);
        assert!(base.capabilities_add.is_empty() && base.capabilities_drop.is_empty());
        c.security_context = Some(SecurityContext {
            allow_privilege_escalation: Some(true),
            ..SecurityContext::default()
        });
        assert!(!spec(&pod(c.clone())).unwrap().no_new_privs);
        c.security_context = Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(true),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        });
        let s = spec(&pod(c)).unwrap();
        assert!(s.no_new_privs && s.privileged && s.readonly_rootfs);
        assert_eq!(
            (s.capabilities_add, s.capabilities_drop),
            (vec!["NET_ADMIN".to_owned()], vec!["ALL".to_owned()])
        );
    }

    #[test]
    fn seccomp_and_apparmor_profiles() {
        let profile = |kind: &str, name: &str| Profile {
            kind: kind.into(),
            name: name.into(),
        };
        let mut p = pod(engine());
        let s = spec(&p).unwrap();
        assert_eq!(s.seccomp, Some(profile("unconfined", "")));
        assert_eq!(s.apparmor, None);
        let mut defaulting = params();
        defaulting.seccomp_default = true;
        assert_eq!(
            container_spec(&p, &p.containers[0], "ml", &defaulting)
                .unwrap()
                .seccomp,
            Some(profile("runtime-default", ""))
        );
        p.security_context = Some(PodSecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            app_armor_profile: Some(AppArmorProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        });
        let s = spec(&p).unwrap();
        assert_eq!(s.seccomp, Some(profile("runtime-default", "")));
        assert_eq!(s.apparmor, Some(profile("runtime-default", "")));
        p.containers[0].security_context = Some(SecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "Localhost".into(),
                localhost_profile: Some("engine.json".into()),
            }),
            app_armor_profile: Some(AppArmorProfile {
                type_: "Localhost".into(),
                localhost_profile: Some("engine".into()),
            }),
            ..SecurityContext::default()
        });
        let s = spec(&p).unwrap();
        assert_eq!(
            s.seccomp,
            Some(profile("localhost", "/var/lib/kubelet/seccomp/engine.json"))
        );
        assert_eq!(s.apparmor, Some(profile("localhost", "engine")));
    }

    #[test]
    fn namespaces_follow_the_pod() {
        let mut p = pod(engine());
        assert_eq!(
            spec(&p).unwrap().namespaces,
            Namespaces {
                network: NamespaceMode::Pod,
                pid: NamespaceMode::Container,
                ipc: NamespaceMode::Pod,
                target_id: String::new()
            }
        );
        p.share_process_namespace = Some(true);
        assert_eq!(spec(&p).unwrap().namespaces.pid, NamespaceMode::Pod);
        p.host_network = Some(true);
        p.host_pid = Some(true);
        p.host_ipc = Some(true);
        let ns = spec(&p).unwrap().namespaces;
        assert_eq!(
            (ns.network, ns.pid, ns.ipc),
            (
                NamespaceMode::Node,
                NamespaceMode::Node,
                NamespaceMode::Node
            )
        );
    }

    #[test]
    fn masked_and_readonly_paths_are_the_kubelet_defaults() {
        let mut c = engine();
        let s = spec(&pod(c.clone())).unwrap();
        assert_eq!(s.masked_paths.len(), 12);
        assert!(s.masked_paths.contains(&"/proc/kcore".to_owned()));
        assert!(s
            .masked_paths
            .contains(&"/sys/devices/virtual/powercap".to_owned()));
        assert_eq!(s.readonly_paths.len(), 5);
        assert!(s.readonly_paths.contains(&"/proc/sysrq-trigger".to_owned()));
        let mut throttled = params();
        throttled.thermal_throttle_cpus = vec![0, 1];
        let p = pod(c.clone());
        let s = container_spec(&p, &p.containers[0], "ml", &throttled).unwrap();
        assert!(s
            .masked_paths
            .contains(&"/sys/devices/system/cpu/cpu1/thermal_throttle".to_owned()));
        c.security_context = Some(SecurityContext {
            proc_mount: Some("Unmasked".into()),
            ..SecurityContext::default()
        });
        let s = spec(&pod(c)).unwrap();
        assert!(s.masked_paths.is_empty() && s.readonly_paths.is_empty());
    }

    fn volume(name: &str, f: impl FnOnce(&mut Volume)) -> Volume {
        let mut v = Volume {
            name: name.into(),
            ..Volume::default()
        };
        f(&mut v);
        v
    }

    fn plugin_volume(plugin: &str, name: &str) -> MountSource {
        MountSource::Volume {
            plugin: plugin.into(),
            name: name.into(),
        }
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..VolumeMount::default()
        }
    }

    #[test]
    fn mounts_are_classified_as_the_node_records_them() {
        let mut p = pod(engine());
        p.volumes = Some(vec![
            volume("cache", |v| {
                v.empty_dir = Some(EmptyDirVolumeSource::default())
            }),
            volume("cfg", |v| {
                v.config_map = Some(ConfigMapVolumeSource::default())
            }),
            volume("host", |v| {
                v.host_path = Some(HostPathVolumeSource {
                    path: "/srv/models".into(),
                    type_: None,
                })
            }),
        ]);
        p.containers[0].volume_mounts = Some(vec![
            mount("cache", "/cache"),
            mount("cfg", "/etc/engine"),
            VolumeMount {
                read_only: Some(true),
                mount_propagation: Some("HostToContainer".into()),
                ..mount("host", "/models")
            },
        ]);
        let m = |path: &str, source: MountSource, readonly: bool, propagation: &str| Mount {
            container_path: path.into(),
            source,
            readonly,
            propagation: propagation.into(),
            selinux_relabel: false,
        };
        let volume = |plugin: &str, name: &str| MountSource::Volume {
            plugin: plugin.into(),
            name: name.into(),
        };
        assert_eq!(
            spec(&p).unwrap().mounts,
            vec![
                m(
                    "/cache",
                    volume("kubernetes.io~empty-dir", "cache"),
                    false,
                    "private"
                ),
                m(
                    "/dev/termination-log",
                    MountSource::TerminationLog,
                    false,
                    "private"
                ),
                // configMap volumes are read-only whatever the mount says.
                m(
                    "/etc/engine",
                    volume("kubernetes.io~configmap", "cfg"),
                    true,
                    "private"
                ),
                m("/etc/hosts", MountSource::EtcHosts, false, "private"),
                m(
                    "/models",
                    MountSource::HostPath {
                        path: "/srv/models".into()
                    },
                    true,
                    "host-to-container"
                ),
            ]
        );
        // A volume at /etc/hosts replaces the kubelet's; a custom or empty
        // termination message path moves or drops the log.
        p.containers[0].volume_mounts = Some(vec![mount("cache", "/etc/hosts")]);
        p.containers[0].termination_message_path = Some("/tmp/done".into());
        let paths: Vec<_> = spec(&p)
            .unwrap()
            .mounts
            .into_iter()
            .map(|m| (m.container_path, m.source))
            .collect();
        assert_eq!(
            paths,
            [
                (
                    "/etc/hosts".to_owned(),
                    volume("kubernetes.io~empty-dir", "cache")
                ),
                ("/tmp/done".to_owned(), MountSource::TerminationLog)
            ]
        );
        p.containers[0].termination_message_path = Some(String::new());
        assert_eq!(spec(&p).unwrap().mounts.len(), 1);
    }

    #[test]
    fn mounts_with_per_pod_sources_are_refused() {
        let mut p = pod(engine());
        p.volumes = Some(vec![
            volume("pvc", |v| {
                v.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "weights".into(),
                    read_only: Some(true),
                })
            }),
            volume("cache", |v| {
                v.empty_dir = Some(EmptyDirVolumeSource::default())
            }),
            volume("img", |v| {
                v.image = Some(ImageVolumeSource {
                    reference: Some("models@sha256:aa".into()),
                    pull_policy: None,
                })
            }),
        ]);
        p.containers[0].volume_mounts = Some(vec![mount("pvc", "/models")]);
        unmeasurable(spec(&p), "not resolved to its PersistentVolume");
        let mut with_claim = params();
        with_claim.claims.insert(
            "weights".into(),
            plugin_volume("kubernetes.io~local-volume", "pv-7"),
        );
        let s = container_spec(&p, &p.containers[0], "ml", &with_claim).unwrap();
        let models = s.mounts.iter().find(|m| m.container_path == "/models");
        assert_eq!(
            models.map(|m| (&m.source, m.readonly)).unwrap(),
            (&plugin_volume("kubernetes.io~local-volume", "pv-7"), true)
        );
        p.containers[0].volume_mounts = Some(vec![VolumeMount {
            sub_path: Some("x".into()),
            ..mount("cache", "/cache")
        }]);
        unmeasurable(spec(&p), "subPath");
        p.containers[0].volume_mounts = Some(vec![mount("img", "/models")]);
        unmeasurable(spec(&p), "image ID");
        let mut with_id = params();
        with_id
            .image_ids
            .insert("models@sha256:aa".into(), "sha256:bb".into());
        let s = container_spec(&p, &p.containers[0], "ml", &with_id).unwrap();
        let models = s
            .mounts
            .iter()
            .find(|m| m.container_path == "/models")
            .unwrap();
        assert_eq!(
            (&models.source, models.readonly),
            (
                &MountSource::Image {
                    reference: "sha256:bb".into()
                },
                true
            )
        );
    }

    #[test]
    fn the_node_measured_pod_of_a_model() {
        let cm = node_model("llama");
        let pod = expected_pod(&cm, &node_workload_config(), &params()).unwrap();
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["enclave", "engine"]);
        let enclave = &pod.containers[0];
        assert_eq!(enclave.image, enclave_image());
        assert_eq!(enclave.image_digest, crate::testing::digest(0xee));
        let s = &enclave.spec;
        assert_eq!(
            s.args,
            [
                "serve",
                "--listen",
                "[::]:8443",
                "--upstream",
                "http://127.0.0.1:8000",
                "--node-agent",
                "/run/aver-node/agent.sock",
                "--model-dir",
                "/models",
                "--drain-timeout-secs",
                "120",
            ]
        );
        assert_eq!(env_of(s)["AVER_LOG_FORMAT"], h("json"));
        assert_eq!(s.env.len(), 9);
        assert_eq!(s.user.uid, Some(65532));
        assert_eq!(s.user.gid, Some(65532));
        assert!(s.no_new_privs && s.readonly_rootfs);
        assert_eq!(s.capabilities_drop, ["ALL"]);
        assert_eq!(
            s.seccomp.as_ref().map(|p| p.kind.as_str()),
            Some("runtime-default")
        );
        let mounts: Vec<_> = s
            .mounts
            .iter()
            .map(|m| (m.container_path.as_str(), m.source.to_string(), m.readonly))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/dev/termination-log", "termination-log".to_owned(), false),
                ("/etc/hosts", "etc-hosts".to_owned(), false),
                ("/models", "host path /srv/models/llama".to_owned(), true),
                ("/run/aver-node", "node agent socket".to_owned(), true),
            ]
        );
        let engine = &pod.containers[1];
        assert_eq!(engine.image_digest, cm.spec.engine.digest);
        // The engine's user is pinned in the pod, whatever the image says.
        assert_eq!(engine.spec.user.uid, Some(crate::render::NODE_ENGINE_UID));
        assert_eq!(engine.spec.user.gid, Some(crate::render::NODE_ENGINE_UID));
        assert_eq!(engine.spec.capabilities_drop, ["ALL"]);
        assert!(engine.spec.no_new_privs);
        // The pod's seccomp profile reaches the engine too.
        assert_eq!(
            engine.spec.seccomp.as_ref().map(|p| p.kind.as_str()),
            Some("runtime-default")
        );
        // The node policy admits what the controller renders (a host path
        // model source only where the node policy lists it too).
        let mut policy = aver_node_log::NodePolicy::confidential_only();
        policy
            .confidential
            .host_paths
            .push(aver_node_log::policy::HostPathRule {
                path: "/srv/models".into(),
                read_only: true,
            });
        let sandbox = aver_node_log::SandboxInfo {
            pod: aver_node_log::PodRef {
                namespace: "ml".into(),
                name: "llama-0".into(),
                uid: "u".into(),
            },
            confidential_model: Some("llama".into()),
            host_network: false,
            host_pid: false,
            host_ipc: false,
            privileged: false,
        };
        for c in &pod.containers {
            let image = aver_node_log::ImageIdentity {
                reference: c.image.clone(),
                id: c.image_digest,
                repo_digests: Vec::new(),
            };
            policy
                .admit_container(&sandbox, &c.name, &image, &c.spec)
                .unwrap_or_else(|r| panic!("{r}"));
        }

        let allowed = pod.allowed_pod();
        assert_eq!(allowed.containers[0].spec_digests, [enclave.spec_digest]);
        assert_eq!(allowed.containers[1].image_digests, [cm.spec.engine.digest]);
        // Every replica, any namespace-independent change: same digests.
        let again = expected_pod(&node_model("llama"), &node_workload_config(), &params()).unwrap();
        assert_eq!(again, pod);
    }

    #[test]
    fn a_claim_is_mounted_from_the_volume_status_names() {
        let mut cm = node_model("llama");
        cm.spec.model.source = aver_crds::ModelSource {
            persistent_volume_claim: Some(aver_crds::PvcModelSource {
                claim_name: "weights".into(),
                sub_path: None,
            }),
            image: None,
            host_path: None,
        };
        let config = node_workload_config();
        match expected_pod(&cm, &config, &params()) {
            Err(ExpectedError::Unmeasurable { what, .. }) => {
                assert!(what.contains("status.modelVolume"), "{what}")
            }
            other => panic!("an unresolved claim is measurable: {other:?}"),
        }
        let models_source = |volume: ModelVolume| {
            let mut cm = cm.clone();
            cm.status.get_or_insert_with(Default::default).model_volume = Some(volume);
            let pod = expected_pod(&cm, &config, &params()).unwrap();
            let sources: Vec<_> = pod
                .containers
                .iter()
                .map(|c| {
                    let m = c.spec.mounts.iter().find(|m| m.container_path == "/models");
                    m.map(|m| (m.source.clone(), m.readonly))
                })
                .collect();
            // The enclave hashes exactly what the engine serves.
            assert_eq!(sources[0], sources[1]);
            sources[0].clone().unwrap()
        };
        let volume = |type_, path: Option<&str>| ModelVolume {
            claim_name: "weights".into(),
            volume_name: "pv-weights".into(),
            type_,
            path: path.map(Into::into),
        };
        assert_eq!(
            models_source(volume(ModelVolumeType::Local, None)),
            (plugin_volume(LOCAL_VOLUME_PLUGIN_DIR, "pv-weights"), true)
        );
        assert_eq!(
            models_source(volume(ModelVolumeType::Csi, None)),
            (plugin_volume(CSI_PLUGIN_DIR, "pv-weights"), true)
        );
        assert_eq!(
            models_source(volume(ModelVolumeType::HostPath, Some("/srv/weights"))),
            (
                MountSource::HostPath {
                    path: "/srv/weights".into()
                },
                true
            )
        );
        // Another volume, another digest: a pod mounting a different
        // volume than the one the claim is bound to is refused.
        let mut other = cm.clone();
        other
            .status
            .get_or_insert_with(Default::default)
            .model_volume = Some(volume(ModelVolumeType::Local, None));
        let mut renamed = other.clone();
        if let Some(v) = renamed
            .status
            .as_mut()
            .and_then(|s| s.model_volume.as_mut())
        {
            v.volume_name = "pv-other".into();
        }
        let digests = |cm: &ConfidentialModel| {
            expected_pod(cm, &config, &params())
                .unwrap()
                .allowed_pod()
                .containers
                .iter()
                .map(|c| c.spec_digests[0])
                .collect::<Vec<_>>()
        };
        let (a, b) = (digests(&other), digests(&renamed));
        assert!(a[0] != b[0] && a[1] != b[1]);
        // A status naming another claim does not resolve this one.
        let mut stale = other;
        if let Some(v) = stale.status.as_mut().and_then(|s| s.model_volume.as_mut()) {
            v.claim_name = "old-weights".into();
        }
        assert!(expected_pod(&stale, &config, &params()).is_err());
    }

    #[test]
    fn what_cannot_be_a_node_measured_pod() {
        let mut cm = node_model("llama");
        cm.spec.measurement = Measurement::Enclave;
        assert_eq!(
            expected_pod(&cm, &node_workload_config(), &params()),
            Err(ExpectedError::NotNodeMeasured)
        );
        let unpinned = WorkloadConfig {
            enclave_image: "aver/enclave:latest".into(),
            ..node_workload_config()
        };
        assert!(matches!(
            expected_pod(&node_model("llama"), &unpinned, &params()),
            Err(ExpectedError::UnpinnedImage { .. })
        ));
        // The legacy fixture's PVC with a sub path cannot be node-measured.
        let mut cm = crate::testing::model("llama");
        cm.spec.measurement = Measurement::Node;
        assert!(matches!(
            expected_pod(&cm, &node_workload_config(), &params()),
            Err(ExpectedError::Unmeasurable { .. })
        ));
    }
}
