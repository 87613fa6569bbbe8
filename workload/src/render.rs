//! The objects the controller owns for each `ConfidentialModel`: a
//! Deployment of enclave + engine pods and a Service in front of them.
//!
//! Pure functions of the resource and the platform's settings, so that the
//! controller applies exactly the pod a client renders for itself (`aver
//! policy from-model`), and so that the scheduling constraints are
//! unit-tested without an API server. Why a Deployment and not a
//! StatefulSet is explained in `controller/README.md`.
//!
//! Two shapes of pod, chosen by `spec.measurement`:
//!
//! - `node` (default): `aver-node` measures every container at the CRI. The
//!   pod has no TPM and no host state; the enclave reaches the node agent
//!   through its socket directory (read-only), and nothing in a container's
//!   spec depends on the pod or the node it lands on, so that the spec
//!   digests a client computes from the resource are the ones the node
//!   measures (see [`crate::expected`]).
//! - `enclave` (legacy): the enclave gets the TPM (device, device plugin or
//!   TCTI) and a host directory for its event log, and measures itself.

use std::collections::BTreeMap;

use aver_crds::protocol::{enclave_flags as flags, flag, HEALTHZ_PATH, READYZ_PATH};
use aver_crds::{ConfidentialModel, Measurement, ModelSource, TpmDevice};
use aver_node_log::CONFIDENTIAL_LABEL;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, ImageVolumeSource, Lifecycle, LifecycleHandler,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Service, ServicePort, ServiceSpec, SleepAction, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

/// Label that ties pods (and the Service selector) to their model.
pub const MODEL_LABEL: &str = "aver.dev/model";
/// Label on every enclave pod of every model: at most one per node, because
/// all enclaves on a node would extend the same TPM's workload PCR.
pub const ENCLAVE_LABEL: &str = "aver.dev/enclave";
/// Name of the enclave container with `measurement: enclave`.
pub const ENCLAVE_CONTAINER: &str = "aver-enclave";
/// Name of the enclave container with `measurement: node`: the node
/// policy's key holder, the only container the node agent serves.
pub const NODE_ENCLAVE_CONTAINER: &str = "enclave";
/// Name of the engine container.
pub const ENGINE_CONTAINER: &str = "engine";
/// TLS port the enclave listens on in every pod.
pub use aver_crds::protocol::ENCLAVE_PORT;
/// Name of the enclave's port, targeted by the Service.
pub const ENCLAVE_PORT_NAME: &str = "https";
/// Name of the model files' volume in the pod.
pub const MODEL_VOLUME: &str = "model";
/// Where the model files are mounted in both containers.
pub const MODEL_MOUNT: &str = "/models";
/// Where the enclave keeps its state (with `measurement: enclave`, its
/// workload event log).
pub const STATE_MOUNT: &str = "/var/lib/aver";
/// The node agent's socket, inside the agent socket directory.
pub const AGENT_SOCKET: &str = "/run/aver-node/agent.sock";
/// How long the enclave may take to measure the model and start listening
/// before the kubelet restarts it: an hour, about 1.8 TiB of weights at the
/// hashing rate measured here.
pub const STARTUP_TIMEOUT_SECONDS: i32 = 3600;
/// How often the startup probe asks: every second, because the pod is
/// Ready (and its endpoint attested) only after the first probe that
/// succeeds; at 5 s a small model's pod idled about 4 s after it was
/// listening. One HTTPS request a second, and only until the first success.
const STARTUP_PERIOD_SECONDS: i32 = 1;
/// User and group the engine runs as with `measurement: node` unless
/// `spec.engine.runAsUser` says otherwise.
pub const NODE_ENGINE_UID: i64 = 65532;
/// User and group the enclave runs as with `measurement: node`: fixed in
/// the pod spec, so that its measured spec does not depend on the image's
/// `USER`.
pub const NODE_ENCLAVE_UID: i64 = 65532;
/// Memory limit of the enclave container unless the resource sets its
/// resources: 1024 TLS connections with their buffers, and the model
/// hashing's, fit well within it.
pub const ENCLAVE_MEMORY_LIMIT: &str = "512Mi";
/// Seconds the pod gets beyond its drain to exit.
const EXIT_GRACE_SECONDS: i64 = 15;
/// The engine's memory-backed `/dev/shm` (`spec.pod.shmSize`).
const SHM_VOLUME: &str = "dshm";
/// Taint that hardened nodes carry so that only aver enclaves land on them.
pub const HARDENED_TAINT_KEY: &str = "aver.dev/hardened";
/// Topology key for "one per node".
const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";
/// PCRs the enclave quotes besides the policy's: the platform PCRs every
/// aver quote covers (boot chain 0–9, IMA 10).
const DEFAULT_QUOTED_BOOT_PCRS: [u8; 11] = aver_crds::boot_policy::PLATFORM_PCRS;

/// What rendering needs besides the resource: cluster-wide choices of the
/// platform team, as opposed to per-model choices in the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Image of aver-enclave.
    pub enclave_image: String,
    /// Node labels of TPM nodes, unless the resource overrides them.
    pub tpm_node_selector: BTreeMap<String, String>,
    /// Host directory for the enclave's event log (`measurement: enclave`).
    pub state_host_path: String,
    /// Host directories below which `spec.model.source.hostPath` may lie.
    /// Empty: host path sources are refused.
    pub allowed_model_host_paths: Vec<String>,
}

/// Why the workload for a resource cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The resource lacks metadata.name or metadata.namespace (the payload says
    /// which).
    #[error("the resource has no {0}")]
    MissingMetadata(&'static str),
    /// metadata.name is not a valid Service name (a DNS-1035 label).
    #[error("name {0:?} cannot name a Service: use at most 63 lowercase letters, digits and '-', starting with a letter")]
    InvalidName(String),
    /// spec.model.source sets none, or more than one, of its alternatives.
    #[error("spec.model.source must set exactly one of persistentVolumeClaim, image, hostPath")]
    ModelSource,
    /// A hostPath model source is not a clean absolute path below one of
    /// [`WorkloadConfig::allowed_model_host_paths`].
    #[error("spec.model.source.hostPath {path:?} is not below a directory the operator allows for model files ({allowed}); ask the operator to add it to --allowed-model-host-paths, or use a persistentVolumeClaim or image source")]
    HostPathNotAllowed {
        /// The hostPath as written in the resource.
        path: String,
        /// The allowed directories, comma-separated, or why there are none.
        allowed: String,
    },
    /// With `measurement: node`, an engine variable takes its value from a
    /// source outside the resource or one that differs between replicas.
    #[error("spec.engine.env {name}: {reason}; with measurement: node every value must be in the spec, because aver-node measures the environment the container gets and the evidence carries it")]
    EngineEnv {
        /// The variable's name in spec.engine.env.
        name: String,
        /// Why its value cannot be known from the resource.
        reason: String,
    },
}

/// Labels of everything the controller creates for `name`.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "aver-model".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "aver-controller".to_owned(),
        ),
        (MODEL_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The selector of a model's pods (immutable once the Deployment exists, so
/// it holds only the model label).
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(MODEL_LABEL.to_owned(), name.to_owned())])
}

/// Name and namespace of the resource, checked to be usable for the
/// Deployment, the Service and as a label value.
pub fn identity(cm: &ConfidentialModel) -> Result<(String, String), WorkloadError> {
    let name = cm
        .metadata
        .name
        .clone()
        .ok_or(WorkloadError::MissingMetadata("name"))?;
    let namespace = cm
        .metadata
        .namespace
        .clone()
        .ok_or(WorkloadError::MissingMetadata("namespace"))?;
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(WorkloadError::InvalidName(name));
    }
    Ok((name, namespace))
}

/// The name of the enclave container for the resource's measurement mode.
pub fn enclave_container(cm: &ConfidentialModel) -> &'static str {
    match cm.spec.measurement {
        Measurement::Node => NODE_ENCLAVE_CONTAINER,
        Measurement::Enclave => ENCLAVE_CONTAINER,
    }
}

fn owned_meta(cm: &ConfidentialModel, name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(name)),
        owner_references: cm.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The Deployment running the model's enclave + engine pods.
pub fn deployment(
    cm: &ConfidentialModel,
    config: &WorkloadConfig,
) -> Result<Deployment, WorkloadError> {
    let (name, namespace) = identity(cm)?;
    Ok(Deployment {
        metadata: owned_meta(cm, &name, &namespace),
        spec: Some(DeploymentSpec {
            replicas: Some(cm.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                ..LabelSelector::default()
            },
            strategy: Some(rollout_strategy(cm.spec.replicas)),
            template: pod_template(cm, config)?,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// How a new pod template replaces the old pods.
///
/// One enclave per node (anti-affinity), so a surge pod needs a TPM node
/// that runs no enclave. With several replicas, old pods go first, one at
/// a time: capacity drops by one, service never stops, and a fully used
/// set of TPM nodes cannot stall the rollout. A single replica is replaced
/// surge-first instead, since removing it first is an outage: the new pod
/// must be ready (its model measured) before the old one stops. Without a
/// spare TPM node the new pod stays `Pending` and the old one keeps
/// serving; the Deployment reports `ProgressDeadlineExceeded`.
pub fn rollout_strategy(replicas: i32) -> DeploymentStrategy {
    let (max_surge, max_unavailable) = if replicas <= 1 { (1, 0) } else { (0, 1) };
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(max_surge)),
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
        }),
    }
}

/// The model's PodDisruptionBudget: voluntary disruptions (node drains,
/// cluster upgrades) take at most one of its pods at a time, so that a
/// drain of several TPM nodes cannot take every endpoint at once. Pods that
/// are not ready (still measuring, crash-looping) may always be evicted
/// (`unhealthyPodEvictionPolicy: AlwaysAllow`): they serve nothing, and a
/// budget that counted them would block drains.
pub fn pod_disruption_budget(cm: &ConfidentialModel) -> Result<PodDisruptionBudget, WorkloadError> {
    let (name, namespace) = identity(cm)?;
    Ok(PodDisruptionBudget {
        metadata: owned_meta(cm, &name, &namespace),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&name)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The model's NetworkPolicy: its pods admit connections to the enclave's
/// TLS port only. The engine already listens on loopback (the controller
/// tells it to, see docs/engines.md); this also covers an engine that
/// ignores the flag, or a port it opens besides. Egress is not limited: an
/// engine may need to reach a model hub or a metrics sink, which the
/// cluster's own policies decide.
pub fn network_policy(cm: &ConfidentialModel) -> Result<NetworkPolicy, WorkloadError> {
    let (name, namespace) = identity(cm)?;
    Ok(NetworkPolicy {
        metadata: owned_meta(cm, &name, &namespace),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(&name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                // From anywhere: clients, the controller and the Service.
                from: None,
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(ENCLAVE_PORT))),
                    protocol: Some("TCP".to_owned()),
                    end_port: None,
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// The pod template of the model's Deployment: what every replica runs.
pub fn pod_template(
    cm: &ConfidentialModel,
    config: &WorkloadConfig,
) -> Result<PodTemplateSpec, WorkloadError> {
    let (name, _) = identity(cm)?;
    let mut pod_labels = labels(&name);
    pod_labels.insert(ENCLAVE_LABEL.to_owned(), "true".to_owned());
    if cm.spec.measurement == Measurement::Node {
        // What aver-node admits as a confidential pod.
        pod_labels.insert(CONFIDENTIAL_LABEL.to_owned(), name.clone());
    }
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(cm, config)?),
    })
}

/// The Service in front of the model's enclaves.
pub fn service(cm: &ConfidentialModel) -> Result<Service, WorkloadError> {
    let (name, namespace) = identity(cm)?;
    Ok(Service {
        metadata: owned_meta(cm, &name, &namespace),
        spec: Some(ServiceSpec {
            selector: Some(selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some(ENCLAVE_PORT_NAME.to_owned()),
                port: cm.spec.service.port,
                target_port: Some(IntOrString::String(ENCLAVE_PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("https".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The pod spec every replica runs.
pub fn pod_spec(cm: &ConfidentialModel, config: &WorkloadConfig) -> Result<PodSpec, WorkloadError> {
    let spec = &cm.spec;
    let node_labels = spec
        .tpm
        .node_selector
        .clone()
        .unwrap_or_else(|| config.tpm_node_selector.clone());
    let mut volumes = vec![model_volume(&spec.model.source)?];
    check_host_path(&spec.model.source, config)?;
    let node = spec.measurement == Measurement::Node;
    if node {
        check_engine_env(&spec.engine.env)?;
    }
    let mut enclave_mounts = vec![model_mount(&spec.model.source)];
    if !node {
        // The enclave's own workload event log; with node measurement the
        // node agent keeps the log and the enclave writes nothing.
        enclave_mounts.push(VolumeMount {
            name: "state".to_owned(),
            mount_path: STATE_MOUNT.to_owned(),
            ..VolumeMount::default()
        });
    }
    let mut enclave_resources = spec
        .pod
        .enclave_resources
        .clone()
        .unwrap_or_else(default_enclave_resources);
    let drain = spec.pod.drain_seconds();

    let mut args = if node {
        // No TPM, no state: the node agent measures, logs and quotes.
        vec![
            "serve".to_owned(),
            flag(flags::LISTEN),
            format!("[::]:{ENCLAVE_PORT}"),
            flag(flags::UPSTREAM),
            format!("http://127.0.0.1:{}", spec.engine.port),
            flag(flags::NODE_AGENT),
            AGENT_SOCKET.to_owned(),
            flag(flags::MODEL_DIR),
            MODEL_MOUNT.to_owned(),
        ]
    } else {
        volumes.push(state_volume(config));
        // TPM access: a TCTI to a (software) TPM, or the node's device,
        // either granted by a device plugin or mounted from the host.
        let tcti = match &spec.tpm.tcti {
            Some(tcti) => tcti.clone(),
            None => {
                let device = spec.tpm.device.clone().unwrap_or_default();
                add_device_access(
                    &device,
                    &mut volumes,
                    &mut enclave_mounts,
                    &mut enclave_resources,
                );
                format!("device:{}", device.path)
            }
        };
        let policy = &spec.attestation;
        let mut quote_pcrs: Vec<u8> = DEFAULT_QUOTED_BOOT_PCRS
            .into_iter()
            .chain(policy.required_pcrs())
            .collect();
        quote_pcrs.sort_unstable();
        quote_pcrs.dedup();
        let quote_pcrs = quote_pcrs
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",");
        vec![
            "serve".to_owned(),
            flag(flags::LISTEN),
            format!("[::]:{ENCLAVE_PORT}"),
            flag(flags::UPSTREAM),
            format!("http://127.0.0.1:{}", spec.engine.port),
            flag(flags::TCTI),
            tcti,
            flag(flags::ENGINE_DIGEST),
            spec.engine.digest.to_string(),
            flag(flags::MODEL_DIR),
            MODEL_MOUNT.to_owned(),
            flag(flags::STATE_DIR),
            STATE_MOUNT.to_owned(),
            flag(flags::WORKLOAD_PCR),
            policy.workload_pcr.to_string(),
            flag(flags::QUOTE_PCRS),
            quote_pcrs,
        ]
    };
    args.extend([flag(flags::DRAIN_TIMEOUT_SECS), drain.to_string()]);

    let log_format = EnvVar {
        name: "AVER_LOG_FORMAT".to_owned(),
        value: Some("json".to_owned()),
        value_from: None,
    };
    let env = if node {
        // Nothing per pod or per node: the measured spec must be the same
        // for every replica. The enclave learns its pod from the node agent.
        vec![log_format]
    } else {
        // Declared before any use in args so that $(AVER_NODE_IP) expands.
        vec![
            field_env("AVER_NODE_NAME", "spec.nodeName"),
            field_env("AVER_NODE_IP", "status.hostIP"),
            field_env("AVER_POD_NAME", "metadata.name"),
            log_format,
        ]
    };

    let mut enclave_security = SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    };
    if node {
        enclave_security.run_as_user = Some(NODE_ENCLAVE_UID);
        enclave_security.run_as_group = Some(NODE_ENCLAVE_UID);
        enclave_security.run_as_non_root = Some(true);
    }

    let enclave = Container {
        name: enclave_container(cm).to_owned(),
        image: Some(config.enclave_image.clone()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ENCLAVE_PORT_NAME.to_owned()),
            container_port: i32::from(ENCLAVE_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(https_probe(READYZ_PATH, 5)),
        liveness_probe: Some(https_probe(HEALTHZ_PATH, 10)),
        // The enclave hashes the whole model before it listens (about 2 s
        // per GiB on a shared 2-core machine, docs/availability.md): liveness
        // waits until it does, for up to STARTUP_TIMEOUT_SECONDS.
        startup_probe: Some(Probe {
            failure_threshold: Some(STARTUP_TIMEOUT_SECONDS / STARTUP_PERIOD_SECONDS),
            ..https_probe(HEALTHZ_PATH, STARTUP_PERIOD_SECONDS)
        }),
        volume_mounts: Some(enclave_mounts),
        resources: Some(enclave_resources),
        security_context: Some(enclave_security),
        ..Container::default()
    };

    let mut engine_mounts = vec![model_mount(&spec.model.source)];
    if let Some(size) = &spec.pod.shm_size {
        volumes.push(Volume {
            name: SHM_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: Some(size.clone()),
            }),
            ..Volume::default()
        });
        engine_mounts.push(VolumeMount {
            name: SHM_VOLUME.to_owned(),
            mount_path: "/dev/shm".to_owned(),
            ..VolumeMount::default()
        });
    }
    let engine = Container {
        name: ENGINE_CONTAINER.to_owned(),
        image: Some(spec.engine.image.clone()),
        args: (!spec.engine.args.is_empty()).then(|| spec.engine.args.clone()),
        env: (!spec.engine.env.is_empty()).then(|| spec.engine.env.clone()),
        resources: spec.engine.resources.clone(),
        volume_mounts: Some(engine_mounts),
        // The kubelet stops both containers at once; the engine must keep
        // answering the requests the enclave is draining, so its SIGTERM
        // comes only after the drain.
        lifecycle: (drain > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: i64::from(drain),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(engine_security(
            node.then(|| spec.engine.run_as_user.unwrap_or(NODE_ENGINE_UID)),
        )),
        ..Container::default()
    };

    let mut tolerations = vec![Toleration {
        key: Some(HARDENED_TAINT_KEY.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some("NoSchedule".to_owned()),
        ..Toleration::default()
    }];
    tolerations.extend(spec.pod.tolerations.iter().cloned());
    // The TPM labels win over an extra label with the same key: the extra
    // ones narrow the TPM nodes, never replace them.
    let node_labels: BTreeMap<String, String> = spec
        .pod
        .node_selector
        .clone()
        .into_iter()
        .chain(node_labels)
        .collect();

    Ok(PodSpec {
        containers: vec![enclave, engine],
        volumes: Some(volumes),
        // The drain, then time for both processes to exit.
        termination_grace_period_seconds: Some(i64::from(drain) + EXIT_GRACE_SECONDS),
        runtime_class_name: spec.pod.runtime_class_name.clone(),
        priority_class_name: spec.pod.priority_class_name.clone(),
        image_pull_secrets: (!spec.pod.image_pull_secrets.is_empty())
            .then(|| spec.pod.image_pull_secrets.clone()),
        // Neither container talks to the Kubernetes API (and a token volume
        // would be a per-pod mount in the measured spec).
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // The seccomp profile of a container without one is the kubelet's
        // choice (--seccomp-default); fixed here, it is part of the spec.
        security_context: node.then(|| PodSecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        affinity: Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(
                            node_labels
                                .into_iter()
                                .map(|(key, value)| NodeSelectorRequirement {
                                    key,
                                    operator: "In".to_owned(),
                                    values: Some(vec![value]),
                                })
                                .collect(),
                        ),
                        match_fields: None,
                    }],
                }),
                ..NodeAffinity::default()
            }),
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            ENCLAVE_LABEL.to_owned(),
                            "true".to_owned(),
                        )])),
                        ..LabelSelector::default()
                    }),
                    // Every namespace: enclaves of other models share the TPM too.
                    namespace_selector: Some(LabelSelector::default()),
                    topology_key: HOSTNAME_TOPOLOGY.to_owned(),
                    ..PodAffinityTerm::default()
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }),
        tolerations: Some(tolerations),
        ..PodSpec::default()
    })
}

/// The enclave's resources unless `spec.pod.enclaveResources` says
/// otherwise: a memory limit, so that a flood of connections cannot take
/// the node's memory, and no CPU limit, so that hashing the model at start
/// is not throttled.
fn default_enclave_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(ENCLAVE_MEMORY_LIMIT.to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// A host path model source must lie below one of the operator's allowed
/// directories: a model pod may otherwise read any directory of the node.
fn check_host_path(source: &ModelSource, config: &WorkloadConfig) -> Result<(), WorkloadError> {
    let Some(host) = &source.host_path else {
        return Ok(());
    };
    let allowed = config.allowed_model_host_paths.iter().any(|dir| {
        let dir = dir.trim_end_matches('/');
        clean_absolute(&host.path)
            && (host.path == dir
                || host
                    .path
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.starts_with('/')))
    });
    if allowed {
        return Ok(());
    }
    Err(WorkloadError::HostPathNotAllowed {
        path: host.path.clone(),
        allowed: if config.allowed_model_host_paths.is_empty() {
            "none: host path sources are off".to_owned()
        } else {
            config.allowed_model_host_paths.join(", ")
        },
    })
}

/// An absolute path without empty, `.` or `..` components.
fn clean_absolute(path: &str) -> bool {
    path.len() > 1
        && path.starts_with('/')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Downward-API fields whose value is the same for every replica.
pub const STATIC_FIELD_PATHS: [&str; 2] = ["metadata.namespace", "spec.serviceAccountName"];

/// With node measurement the engine's environment must be knowable from
/// the resource: literal values, or the namespace and service account.
fn check_engine_env(env: &[EnvVar]) -> Result<(), WorkloadError> {
    for var in env {
        let Some(from) = &var.value_from else {
            continue;
        };
        if var.value.as_deref().is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let reason = if let Some(field) = &from.field_ref {
            if STATIC_FIELD_PATHS.contains(&field.field_path.as_str()) {
                continue;
            }
            format!(
                "fieldRef {} differs from pod to pod (only {} are the same for every replica)",
                field.field_path,
                STATIC_FIELD_PATHS.join(" and ")
            )
        } else if from.secret_key_ref.is_some() {
            "a Secret's value would be measured and shown to every client in the evidence".into()
        } else if from.config_map_key_ref.is_some() {
            "a ConfigMap's value is not in the resource, so no client can compute the spec digest"
                .into()
        } else if from.resource_field_ref.is_some() {
            "resourceFieldRef values depend on the node when no limit is set".into()
        } else {
            "this value source is not in the resource".into()
        };
        return Err(WorkloadError::EngineEnv {
            name: var.name.clone(),
            reason,
        });
    }
    Ok(())
}

/// The engine's security context. Node-measured pods pin its user (never
/// root) and drop every capability: PodSecurity `restricted`, and a spec
/// that does not depend on the image.
fn engine_security(node_user: Option<i64>) -> SecurityContext {
    let mut security = SecurityContext {
        allow_privilege_escalation: Some(false),
        ..SecurityContext::default()
    };
    if let Some(uid) = node_user {
        security.run_as_user = Some(uid);
        security.run_as_group = Some(uid);
        security.run_as_non_root = Some(true);
        security.capabilities = Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        });
    }
    security
}

fn model_volume(source: &ModelSource) -> Result<Volume, WorkloadError> {
    let mut volume = Volume {
        name: MODEL_VOLUME.to_owned(),
        ..Volume::default()
    };
    match (
        &source.persistent_volume_claim,
        &source.image,
        &source.host_path,
    ) {
        (Some(pvc), None, None) => {
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(true),
            });
        }
        (None, Some(image), None) => {
            volume.image = Some(ImageVolumeSource {
                reference: Some(image.reference.clone()),
                pull_policy: Some("IfNotPresent".to_owned()),
            });
        }
        (None, None, Some(host)) => {
            volume.host_path = Some(HostPathVolumeSource {
                path: host.path.clone(),
                type_: Some("Directory".to_owned()),
            });
        }
        _ => return Err(WorkloadError::ModelSource),
    }
    Ok(volume)
}

fn model_mount(source: &ModelSource) -> VolumeMount {
    VolumeMount {
        name: MODEL_VOLUME.to_owned(),
        mount_path: MODEL_MOUNT.to_owned(),
        read_only: Some(true),
        sub_path: source
            .persistent_volume_claim
            .as_ref()
            .and_then(|pvc| pvc.sub_path.clone()),
        ..VolumeMount::default()
    }
}

fn state_volume(config: &WorkloadConfig) -> Volume {
    Volume {
        name: "state".to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: config.state_host_path.clone(),
            type_: Some("DirectoryOrCreate".to_owned()),
        }),
        ..Volume::default()
    }
}

fn add_device_access(
    device: &TpmDevice,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
    resources: &mut ResourceRequirements,
) {
    match &device.resource_name {
        // The device plugin mounts the device and allows it in the cgroup.
        Some(resource) => {
            resources
                .limits
                .get_or_insert_with(BTreeMap::new)
                .insert(resource.clone(), Quantity("1".to_owned()));
        }
        None => {
            volumes.push(Volume {
                name: "tpm".to_owned(),
                host_path: Some(HostPathVolumeSource {
                    path: device.path.clone(),
                    type_: Some("CharDevice".to_owned()),
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "tpm".to_owned(),
                mount_path: device.path.clone(),
                ..VolumeMount::default()
            });
        }
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn https_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ENCLAVE_PORT_NAME.to_owned()),
            scheme: Some("HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

/// Name of the model a pod belongs to, from its labels.
pub fn model_of(pod: &impl ResourceExt) -> Option<&str> {
    pod.labels().get(MODEL_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{digest, model, node_model, node_workload_config, workload_config};
    use aver_crds::HostPathModelSource;
    use k8s_openapi::api::core::v1::Container;

    fn pod_of(deploy: &Deployment) -> PodSpec {
        deploy
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod spec")
    }

    fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .expect("container")
    }

    fn arg_after<'a>(container: &'a Container, flag: &str) -> &'a str {
        let args = container.args.as_ref().expect("args");
        let i = args.iter().position(|a| a == flag).expect(flag);
        &args[i + 1]
    }

    #[test]
    fn scheduling_constraints_pin_one_enclave_per_tpm_node() {
        let deploy = deployment(&model("llama"), &workload_config()).expect("builds");
        let pod = pod_of(&deploy);
        let affinity = pod.affinity.as_ref().expect("affinity");

        let terms = &affinity
            .node_affinity
            .as_ref()
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .expect("required node affinity")
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let expr = &terms[0].match_expressions.as_ref().expect("expressions")[0];
        assert_eq!(
            (
                expr.key.as_str(),
                expr.operator.as_str(),
                expr.values.as_deref()
            ),
            ("aver.dev/tpm", "In", Some(&["true".to_owned()][..]))
        );

        let anti = &affinity
            .pod_anti_affinity
            .as_ref()
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .expect("required anti-affinity")[0];
        assert_eq!(anti.topology_key, "kubernetes.io/hostname");
        assert_eq!(
            anti.label_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(BTreeMap::from([("aver.dev/enclave".into(), "true".into())]))
        );
        assert_eq!(anti.namespace_selector, Some(LabelSelector::default()));
        assert_eq!(
            pod.tolerations,
            Some(vec![Toleration {
                key: Some("aver.dev/hardened".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }])
        );
        let labels = deploy
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .expect("pod labels");
        assert_eq!(labels.get(ENCLAVE_LABEL).map(String::as_str), Some("true"));
        let strategy = deploy
            .spec
            .as_ref()
            .and_then(|s| s.strategy.clone())
            .expect("strategy");
        assert_eq!(
            strategy.rolling_update.and_then(|r| r.max_surge),
            Some(IntOrString::Int(0))
        );
    }

    #[test]
    fn a_single_replica_is_replaced_surge_first_and_several_one_by_one() {
        let limits = |replicas| {
            let mut cm = model("llama");
            cm.spec.replicas = replicas;
            let deploy = deployment(&cm, &workload_config()).expect("deployment");
            let rolling = deploy
                .spec
                .and_then(|s| s.strategy)
                .and_then(|s| s.rolling_update)
                .expect("rolling update");
            (rolling.max_surge, rolling.max_unavailable)
        };
        let int = |n| Some(IntOrString::Int(n));
        assert_eq!(limits(1), (int(1), int(0)), "no outage for one replica");
        assert_eq!(limits(0), (int(1), int(0)));
        assert_eq!(limits(2), (int(0), int(1)));
        assert_eq!(limits(5), (int(0), int(1)));
    }

    #[test]
    fn the_disruption_budget_takes_one_ready_pod_at_a_time() {
        let cm = model("llama");
        let pdb = pod_disruption_budget(&cm).expect("pdb");
        assert_eq!(pdb.metadata.name.as_deref(), Some("llama"));
        assert_eq!(pdb.metadata.namespace.as_deref(), Some("ml"));
        assert!(pdb
            .metadata
            .owner_references
            .is_some_and(|o| o[0].controller == Some(true)));
        let spec = pdb.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(selector("llama"))
        );
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
    }

    #[test]
    fn node_selector_override_replaces_the_default_label() {
        let mut cm = model("llama");
        cm.spec.tpm.node_selector =
            Some(BTreeMap::from([("tpm.example/ready".into(), "yes".into())]));
        let pod = pod_of(&deployment(&cm, &workload_config()).expect("builds"));
        let terms = pod
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .expect("affinity")
            .node_selector_terms;
        let keys: Vec<_> = terms[0]
            .match_expressions
            .iter()
            .flatten()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["tpm.example/ready"]);
    }

    #[test]
    fn enclave_runs_with_the_measured_inputs_and_device_access() {
        let cm = model("llama");
        let deploy = deployment(&cm, &workload_config()).expect("builds");
        let pod = pod_of(&deploy);
        let enclave = container(&pod, ENCLAVE_CONTAINER);
        assert_eq!(enclave.image.as_deref(), Some("aver/enclave:test"));
        assert_eq!(arg_after(enclave, "--tcti"), "device:/dev/tpmrm0");
        assert_eq!(arg_after(enclave, "--engine-digest"), digest(1).to_string());
        assert_eq!(arg_after(enclave, "--upstream"), "http://127.0.0.1:8000");
        assert_eq!(arg_after(enclave, "--listen"), "[::]:8443");
        assert_eq!(arg_after(enclave, "--drain-timeout-secs"), "120");
        assert_eq!(arg_after(enclave, "--model-dir"), "/models");
        assert_eq!(arg_after(enclave, "--workload-pcr"), "15");
        // The policy's PCR 12 is quoted besides the platform PCRs.
        assert_eq!(
            arg_after(enclave, "--quote-pcrs"),
            "0,1,2,3,4,5,6,7,8,9,10,12,15"
        );
        let tpm_volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tpm")
            .and_then(|v| v.host_path.clone())
            .expect("tpm host path");
        assert_eq!(tpm_volume.path, "/dev/tpmrm0");
        assert_eq!(tpm_volume.type_.as_deref(), Some("CharDevice"));
        let state = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "state")
            .and_then(|v| v.host_path.clone())
            .expect("state host path");
        assert_eq!(state.path, "/var/lib/aver");
        assert_eq!(pod.automount_service_account_token, Some(false));

        let engine = container(&pod, ENGINE_CONTAINER);
        assert_eq!(engine.image.as_deref(), Some(cm.spec.engine.image.as_str()));
        let mount = &engine.volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/models", Some(true))
        );
        assert_eq!(mount.sub_path.as_deref(), Some("llama"));
    }

    #[test]
    fn device_plugin_and_swtpm_access() {
        let mut cm = model("llama");
        cm.spec.tpm.device = Some(TpmDevice {
            path: "/dev/tpmrm0".into(),
            resource_name: Some("squat.ai/tpmrm".into()),
        });
        let pod = pod_of(&deployment(&cm, &workload_config()).expect("builds"));
        assert!(pod.volumes.iter().flatten().all(|v| v.name != "tpm"));
        let limits = container(&pod, ENCLAVE_CONTAINER)
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .expect("limits");
        assert_eq!(limits.get("squat.ai/tpmrm"), Some(&Quantity("1".into())));
        assert_eq!(
            limits.get("memory"),
            Some(&Quantity(ENCLAVE_MEMORY_LIMIT.into())),
            "the device plugin's resource is added to the default limit"
        );

        let mut cm = model("llama");
        cm.spec.tpm.tcti = Some("swtpm:host=$(AVER_NODE_IP),port=2321".into());
        let pod = pod_of(&deployment(&cm, &workload_config()).expect("builds"));
        let enclave = container(&pod, ENCLAVE_CONTAINER);
        assert_eq!(
            arg_after(enclave, "--tcti"),
            "swtpm:host=$(AVER_NODE_IP),port=2321"
        );
        assert!(pod.volumes.iter().flatten().all(|v| v.name != "tpm"));
        let env_names: Vec<_> = enclave
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert!(env_names.contains(&"AVER_NODE_IP"));
    }

    #[test]
    fn owned_objects_point_back_to_the_resource() {
        let cm = model("llama");
        let deploy = deployment(&cm, &workload_config()).expect("builds");
        let svc = service(&cm).expect("builds");
        for meta in [&deploy.metadata, &svc.metadata] {
            let owner = &meta.owner_references.as_ref().expect("owner")[0];
            assert_eq!(owner.kind, "ConfidentialModel");
            assert_eq!(owner.uid, "uid-1");
            assert_eq!(owner.controller, Some(true));
        }
        let ports = svc.spec.and_then(|s| s.ports).expect("ports");
        assert_eq!(ports[0].port, 443);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("https".into()))
        );
    }

    #[test]
    fn unusable_names_and_sources_are_errors() {
        let long = "a".repeat(64);
        for bad in ["9lives", long.as_str(), "ends-"] {
            assert_eq!(
                deployment(&model(bad), &workload_config()),
                Err(WorkloadError::InvalidName(bad.to_owned()))
            );
        }
        let mut cm = model("llama");
        cm.spec.model.source.host_path = Some(HostPathModelSource {
            path: "/data".into(),
        });
        assert_eq!(
            deployment(&cm, &workload_config()),
            Err(WorkloadError::ModelSource)
        );
    }

    #[test]
    fn node_measured_pods_have_no_tpm_and_no_host_state() {
        let cm = node_model("llama");
        let deploy = deployment(&cm, &node_workload_config()).expect("builds");
        let template = &deploy.spec.as_ref().expect("spec").template;
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert_eq!(
            labels.get(CONFIDENTIAL_LABEL).map(String::as_str),
            Some("llama")
        );
        let pod = template.spec.clone().expect("pod");
        assert_eq!(pod.enable_service_links, Some(false));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let volumes: BTreeMap<_, _> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        assert!(!volumes.contains_key("tpm"));
        // No state: the node agent keeps the log.
        assert!(!volumes.contains_key("state"));
        // No host path besides the model's: aver-node mounts its socket
        // into the enclave itself.
        assert_eq!(
            volumes
                .values()
                .filter(|v| v.host_path.is_some())
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["model"]
        );

        let enclave = container(&pod, "enclave");
        let startup = enclave.startup_probe.as_ref().expect("a startup probe");
        assert_eq!(
            startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3),
            STARTUP_TIMEOUT_SECONDS,
            "liveness waits for the model to be hashed"
        );
        let args = enclave.args.clone().expect("args");
        assert_eq!(
            arg_after(enclave, "--node-agent"),
            "/run/aver-node/agent.sock"
        );
        for legacy in [
            "--tcti",
            "--engine-digest",
            "--serving-config",
            "--workload-pcr",
        ] {
            assert!(!args.iter().any(|a| a == legacy), "{legacy} in {args:?}");
        }
        assert!(enclave
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| !m.mount_path.starts_with("/run/aver-node")));
        // No per-pod downward-API values.
        assert!(enclave.env.iter().flatten().all(|e| e.value_from.is_none()));
        // No device plugin resource: only the default memory limit.
        let limits = enclave
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .expect("limits");
        assert_eq!(
            limits,
            BTreeMap::from([("memory".into(), Quantity(ENCLAVE_MEMORY_LIMIT.into()))])
        );

        let engine = container(&pod, ENGINE_CONTAINER);
        assert!(engine
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "state"));
        assert_eq!(engine.args, Some(cm.spec.engine.args.clone()));
    }

    #[test]
    fn legacy_pods_are_not_labelled_confidential() {
        let deploy = deployment(&model("llama"), &workload_config()).expect("builds");
        let template = &deploy.spec.as_ref().expect("spec").template;
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert!(!labels.contains_key(CONFIDENTIAL_LABEL));
        let pod = template.spec.clone().expect("pod");
        assert!(pod.security_context.is_none());
        assert!(pod.volumes.iter().flatten().any(|v| v.name == "state"));
        container(&pod, ENCLAVE_CONTAINER);
    }

    #[test]
    fn host_path_sources_only_below_allowed_directories() {
        let mut cm = node_model("llama");
        let mut config = node_workload_config();
        for (path, ok) in [
            ("/srv/models/llama", true),
            ("/srv/models", true),
            ("/srv/models-evil", false),
            ("/srv/models/../../etc", false),
            ("/srv/models//x", false),
            ("/etc", false),
        ] {
            cm.spec.model.source.host_path = Some(HostPathModelSource { path: path.into() });
            let result = pod_spec(&cm, &config);
            assert_eq!(result.is_ok(), ok, "{path}: {result:?}");
        }
        config.allowed_model_host_paths.clear();
        cm.spec.model.source.host_path = Some(HostPathModelSource {
            path: "/srv/models/llama".into(),
        });
        let error = pod_spec(&cm, &config).expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("none: host path sources are off"),
            "{error}"
        );
        // Legacy pods too: the allow-list is about what a pod may read.
        cm.spec.measurement = Measurement::Enclave;
        assert!(matches!(
            pod_spec(&cm, &config),
            Err(WorkloadError::HostPathNotAllowed { .. })
        ));
    }

    #[test]
    fn node_measured_engines_take_no_per_pod_or_secret_env() {
        let var = |name: &str, from: EnvVarSource| EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(from),
        };
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        };
        let mut cm = node_model("llama");
        cm.spec.engine.env = vec![
            EnvVar {
                name: "PLAIN".into(),
                value: Some("1".into()),
                value_from: None,
            },
            var("NS", field("metadata.namespace")),
        ];
        pod_spec(&cm, &node_workload_config()).expect("static values are fine");
        for bad in [
            var("POD", field("metadata.name")),
            var("IP", field("status.podIP")),
            var(
                "TOKEN",
                EnvVarSource {
                    secret_key_ref: Some(Default::default()),
                    ..EnvVarSource::default()
                },
            ),
        ] {
            let mut cm = cm.clone();
            cm.spec.engine.env.push(bad.clone());
            assert!(
                matches!(pod_spec(&cm, &node_workload_config()), Err(WorkloadError::EngineEnv { ref name, .. }) if *name == bad.name),
                "{bad:?}"
            );
            cm.spec.measurement = Measurement::Enclave;
            cm.spec.model.source.host_path = Some(HostPathModelSource {
                path: "/srv/models/llama".into(),
            });
            pod_spec(&cm, &node_workload_config()).expect("legacy pods take any env");
        }
    }

    #[test]
    fn pod_settings_pass_through_to_every_replica() {
        let mut cm = crate::testing::node_model("llama");
        cm.spec.pod = serde_json::from_value(serde_json::json!({
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"gpu.example.com/model": "h100", "aver.dev/tpm": "false"},
            "runtimeClassName": "nvidia",
            "priorityClassName": "inference",
            "imagePullSecrets": [{"name": "registry"}],
            "shmSize": "16Gi",
            "drainSeconds": 600,
            "enclaveResources": {"limits": {"memory": "1Gi", "cpu": "2"}},
        }))
        .expect("pod settings");
        let pod =
            pod_of(&deployment(&cm, &crate::testing::node_workload_config()).expect("builds"));
        let keys: Vec<_> = pod
            .tolerations
            .iter()
            .flatten()
            .filter_map(|t| t.key.as_deref())
            .collect();
        assert_eq!(keys, [HARDENED_TAINT_KEY, "nvidia.com/gpu"]);
        let required: Vec<(String, Vec<String>)> = pod
            .affinity
            .clone()
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .map(|s| {
                s.node_selector_terms[0]
                    .match_expressions
                    .clone()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.key, r.values.unwrap_or_default()))
            .collect();
        assert_eq!(
            required,
            [
                ("aver.dev/tpm".to_owned(), vec!["true".to_owned()]),
                ("gpu.example.com/model".to_owned(), vec!["h100".to_owned()]),
            ],
            "the TPM labels and the extra ones, all required"
        );
        assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("inference"));
        assert_eq!(
            pod.image_pull_secrets
                .as_deref()
                .map(|s| s[0].name.as_str()),
            Some("registry")
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(615));

        let enclave = container(&pod, NODE_ENCLAVE_CONTAINER);
        assert_eq!(arg_after(enclave, "--drain-timeout-secs"), "600");
        assert_eq!(
            enclave.resources.as_ref().and_then(|r| r.limits.clone()),
            Some(BTreeMap::from([
                ("cpu".into(), Quantity("2".into())),
                ("memory".into(), Quantity("1Gi".into())),
            ]))
        );
        let engine = container(&pod, ENGINE_CONTAINER);
        let shm = engine
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/dev/shm")
            .expect("a /dev/shm mount");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == shm.name)
            .and_then(|v| v.empty_dir.clone())
            .expect("an emptyDir");
        assert_eq!(volume.medium.as_deref(), Some("Memory"));
        assert_eq!(volume.size_limit, Some(Quantity("16Gi".into())));
        let sleep = engine
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .expect("the engine stops after the drain");
        assert_eq!(sleep.seconds, 600);

        // Still node-measurable: the client computes the shm mount too.
        let kubelet = crate::KubeletParams::new("10.96.0.1:443".parse().expect("address"));
        let expected =
            crate::expected::expected_pod(&cm, &crate::testing::node_workload_config(), &kubelet)
                .expect("still node-measurable");
        let engine = expected
            .containers
            .iter()
            .find(|c| c.name == ENGINE_CONTAINER)
            .expect("engine");
        let shm = engine
            .spec
            .mounts
            .iter()
            .find(|m| m.container_path == "/dev/shm")
            .expect("shm in the measured spec");
        assert_eq!(
            shm.source,
            aver_node_log::spec::MountSource::Volume {
                plugin: "kubernetes.io~empty-dir".into(),
                name: SHM_VOLUME.into()
            }
        );
    }

    #[test]
    fn without_pod_settings_the_defaults_hold() {
        let pod = pod_of(&deployment(&model("llama"), &workload_config()).expect("builds"));
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(
                i64::from(aver_crds::confidential_model::DEFAULT_DRAIN_SECONDS)
                    + EXIT_GRACE_SECONDS
            )
        );
        assert!(pod.runtime_class_name.is_none() && pod.priority_class_name.is_none());
        assert!(pod.image_pull_secrets.is_none());
        let engine = container(&pod, ENGINE_CONTAINER);
        assert!(engine
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.mount_path != "/dev/shm"));
        // A drain of 0: no preStop sleep.
        let mut cm = model("llama");
        cm.spec.pod.drain_seconds = Some(0);
        let pod = pod_of(&deployment(&cm, &workload_config()).expect("builds"));
        assert!(container(&pod, ENGINE_CONTAINER).lifecycle.is_none());
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(EXIT_GRACE_SECONDS)
        );
    }

    #[test]
    fn the_network_policy_admits_the_enclave_port_only() {
        let policy = network_policy(&model("llama")).expect("policy");
        assert!(policy
            .metadata
            .owner_references
            .is_some_and(|o| o[0].controller == Some(true)));
        let spec = policy.spec.expect("spec");
        assert_eq!(
            spec.pod_selector.and_then(|s| s.match_labels),
            Some(selector("llama"))
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        let rules = spec.ingress.expect("ingress rules");
        assert_eq!(rules.len(), 1);
        assert!(rules[0].from.is_none(), "from any peer");
        let ports = rules[0].ports.clone().expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(IntOrString::Int(8443)));
        assert_eq!(ports[0].end_port, None);
        assert!(spec.egress.is_none());
    }
}
