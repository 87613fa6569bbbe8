//! The objects the controller owns for each `ConfidentialModel`: a
//! Deployment of enclave + engine pods and a Service in front of them.
//!
//! Pure functions of the resource and the controller's settings, so that the
//! scheduling constraints are unit-tested without an API server. Why a
//! Deployment and not a StatefulSet is explained in `controller/README.md`.

use std::collections::BTreeMap;

use aver_crds::{ConfidentialModel, ModelSource, TpmDevice};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, ImageVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodAffinityTerm,
    PodAntiAffinity, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Service, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::config::{WorkloadConfig, HARDENED_TAINT_KEY};

/// Label that ties pods (and the Service selector) to their model.
pub const MODEL_LABEL: &str = "aver.dev/model";
/// Label on every enclave pod of every model: at most one per node, because
/// all enclaves on a node would extend the same TPM's workload PCR.
pub const ENCLAVE_LABEL: &str = "aver.dev/enclave";
/// Name of the enclave container.
pub const ENCLAVE_CONTAINER: &str = "aver-enclave";
/// Name of the engine container.
pub const ENGINE_CONTAINER: &str = "engine";
/// TLS port the enclave listens on in every pod.
pub const ENCLAVE_PORT: u16 = 8443;
/// Name of the enclave's port, targeted by the Service.
pub const ENCLAVE_PORT_NAME: &str = "https";
/// Where the model files are mounted in both containers.
pub const MODEL_MOUNT: &str = "/models";
/// Where the enclave keeps its workload event log.
pub const STATE_MOUNT: &str = "/var/lib/aver";
/// Topology key for "one per node".
const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";
/// Boot PCRs the enclave quotes besides those the policy requires, so that
/// evidence always shows the boot chain (the enclave's own default).
const DEFAULT_QUOTED_BOOT_PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// Why the workload for a resource cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("the resource has no {0}")]
    MissingMetadata(&'static str),
    #[error("name {0:?} cannot name a Service: use at most 63 lowercase letters, digits and '-', starting with a letter")]
    InvalidName(String),
    #[error("spec.model.source must set exactly one of persistentVolumeClaim, image, hostPath")]
    ModelSource,
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
    let mut pod_labels = labels(&name);
    pod_labels.insert(ENCLAVE_LABEL.to_owned(), "true".to_owned());

    Ok(Deployment {
        metadata: owned_meta(cm, &name, &namespace),
        spec: Some(DeploymentSpec {
            replicas: Some(cm.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                ..LabelSelector::default()
            },
            // One enclave per node: a surge pod would have nowhere to go on
            // a fully used set of TPM nodes, so old pods go first.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(cm, config)?),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
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

fn pod_spec(cm: &ConfidentialModel, config: &WorkloadConfig) -> Result<PodSpec, WorkloadError> {
    let spec = &cm.spec;
    let node_labels = spec
        .tpm
        .node_selector
        .clone()
        .unwrap_or_else(|| config.tpm_node_selector.clone());

    let mut volumes = vec![model_volume(&spec.model.source)?, state_volume(config)];
    let mut enclave_mounts = vec![
        model_mount(&spec.model.source),
        VolumeMount {
            name: "state".to_owned(),
            mount_path: STATE_MOUNT.to_owned(),
            ..VolumeMount::default()
        },
    ];
    let mut enclave_resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        ..ResourceRequirements::default()
    };

    // TPM access: a TCTI to a (software) TPM, or the node's device, either
    // granted by a device plugin or mounted from the host.
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

    let enclave = Container {
        name: ENCLAVE_CONTAINER.to_owned(),
        image: Some(config.enclave_image.clone()),
        args: Some(vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            format!("0.0.0.0:{ENCLAVE_PORT}"),
            "--upstream".to_owned(),
            format!("http://127.0.0.1:{}", spec.engine.port),
            "--tcti".to_owned(),
            tcti,
            "--engine-digest".to_owned(),
            spec.engine.digest.to_string(),
            "--model-dir".to_owned(),
            MODEL_MOUNT.to_owned(),
            "--state-dir".to_owned(),
            STATE_MOUNT.to_owned(),
            "--workload-pcr".to_owned(),
            policy.workload_pcr.to_string(),
            "--quote-pcrs".to_owned(),
            quote_pcrs,
        ]),
        // Declared before any use in args so that $(AVER_NODE_IP) expands.
        env: Some(vec![
            field_env("AVER_NODE_NAME", "spec.nodeName"),
            field_env("AVER_NODE_IP", "status.hostIP"),
            field_env("AVER_POD_NAME", "metadata.name"),
            EnvVar {
                name: "AVER_LOG_FORMAT".to_owned(),
                value: Some("json".to_owned()),
                value_from: None,
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(ENCLAVE_PORT_NAME.to_owned()),
            container_port: i32::from(ENCLAVE_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(https_probe("/readyz", 5)),
        liveness_probe: Some(https_probe("/healthz", 10)),
        volume_mounts: Some(enclave_mounts),
        resources: Some(enclave_resources),
        security_context: Some(SecurityContext {
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
        }),
        ..Container::default()
    };

    let engine = Container {
        name: ENGINE_CONTAINER.to_owned(),
        image: Some(spec.engine.image.clone()),
        args: (!spec.engine.args.is_empty()).then(|| spec.engine.args.clone()),
        env: (!spec.engine.env.is_empty()).then(|| spec.engine.env.clone()),
        resources: spec.engine.resources.clone(),
        volume_mounts: Some(vec![model_mount(&spec.model.source)]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    Ok(PodSpec {
        containers: vec![enclave, engine],
        volumes: Some(volumes),
        // Neither container talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
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
        tolerations: Some(vec![Toleration {
            key: Some(HARDENED_TAINT_KEY.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Toleration::default()
        }]),
        ..PodSpec::default()
    })
}

fn model_volume(source: &ModelSource) -> Result<Volume, WorkloadError> {
    let mut volume = Volume {
        name: "model".to_owned(),
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
        name: "model".to_owned(),
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
            let one = BTreeMap::from([(resource.clone(), Quantity("1".to_owned()))]);
            resources.limits = Some(one);
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
pub(crate) mod tests {
    use super::*;
    use aver_crds::{
        AllowedWorkload, AttestationPolicy, ConfidentialModelSpec, EngineSpec, ModelSpec,
        PvcModelSource, ReferencePcr, Sha256Digest, TpmSpec, TrustRoots,
    };

    pub(crate) fn digest(byte: u8) -> Sha256Digest {
        Sha256Digest([byte; 32])
    }

    /// A resource as the API server would hand it to the controller.
    pub(crate) fn model(name: &str) -> ConfidentialModel {
        let mut cm = ConfidentialModel::new(
            name,
            ConfidentialModelSpec {
                model: ModelSpec {
                    source: ModelSource {
                        persistent_volume_claim: Some(PvcModelSource {
                            claim_name: "weights".into(),
                            sub_path: Some("llama".into()),
                        }),
                        image: None,
                        host_path: None,
                    },
                    digest: digest(2),
                },
                engine: EngineSpec {
                    image: format!("vllm@{}", digest(1)),
                    digest: digest(1),
                    port: 8000,
                    args: vec!["--host".into(), "127.0.0.1".into()],
                    env: vec![],
                    resources: None,
                },
                replicas: 3,
                tpm: TpmSpec::default(),
                attestation: AttestationPolicy {
                    reference_pcrs: vec![ReferencePcr {
                        pcr: 9,
                        values: vec![digest(0)],
                    }],
                    workload_pcr: 15,
                    allowed: AllowedWorkload {
                        engine_digests: vec![digest(1)],
                        model_digests: vec![digest(2)],
                        config_digests: None,
                        pod: None,
                    },
                    trust: TrustRoots {
                        ak_names: vec![format!("000b{}", "cd".repeat(32))],
                        ek_roots: None,
                    },
                    interval: "30s".into(),
                    max_evidence_age: "5m".into(),
                },
                service: aver_crds::ServiceSpec::default(),
            },
        );
        cm.metadata.namespace = Some("ml".into());
        cm.metadata.uid = Some("uid-1".into());
        cm.metadata.generation = Some(4);
        cm
    }

    pub(crate) fn workload_config() -> WorkloadConfig {
        WorkloadConfig {
            enclave_image: "aver/enclave:test".into(),
            tpm_node_selector: BTreeMap::from([("aver.dev/tpm".into(), "true".into())]),
            state_host_path: "/var/lib/aver".into(),
        }
    }

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
        assert_eq!(arg_after(enclave, "--listen"), "0.0.0.0:8443");
        assert_eq!(arg_after(enclave, "--model-dir"), "/models");
        assert_eq!(arg_after(enclave, "--workload-pcr"), "15");
        // The policy's PCR 9 is quoted besides the default boot PCRs.
        assert_eq!(arg_after(enclave, "--quote-pcrs"), "0,1,2,3,4,5,6,7,9,15");
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
        cm.spec.model.source.host_path = Some(aver_crds::HostPathModelSource {
            path: "/data".into(),
        });
        assert_eq!(
            deployment(&cm, &workload_config()),
            Err(WorkloadError::ModelSource)
        );
    }
}
