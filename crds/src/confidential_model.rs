//! The `ConfidentialModel` resource (group `aver.dev`, version `v1alpha1`):
//! what a platform team writes to serve a model from attested enclaves, and
//! the status through which the controller publishes the endpoints it has
//! verified (docs/architecture.md#contracts).
//!
//! The status is a discovery and pinning convenience, not a root of trust:
//! anyone who can write the API can write it. Zero-trust clients re-verify
//! the evidence themselves with the same [`AttestationPolicy`].
//!
//! The schema the API server enforces is generated from these types; rules
//! that a JSON schema cannot express (one-of choices, cross-field
//! consistency, duration bounds) are CEL rules (`x-kubernetes-validations`)
//! attached with `schemars(extend(...))`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AttestationPolicy, Sha256Digest};

/// API group of every aver resource.
pub const GROUP: &str = "aver.dev";
/// The only served version so far.
pub const VERSION: &str = "v1alpha1";

/// Port the engine listens on unless `spec.engine.port` says otherwise (the
/// default of vLLM and of most OpenAI-compatible servers).
pub const DEFAULT_ENGINE_PORT: i32 = 8000;
/// Service port unless `spec.service.port` says otherwise.
pub const DEFAULT_SERVICE_PORT: i32 = 443;
/// Device node of the kernel's TPM resource manager.
pub const DEFAULT_TPM_DEVICE: &str = "/dev/tpmrm0";
/// Upper bound on replicas: every verified endpoint adds about 1 KiB
/// (mostly its certificate) to the status, which must stay well under the
/// API server's 1.5 MiB object limit.
pub const MAX_REPLICAS: i32 = 500;

/// Condition type: every desired replica serves with verified evidence.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: every ready pod has current verified evidence.
pub const CONDITION_ATTESTED: &str = "Attested";
/// Condition type: something is wrong that the controller cannot fix by
/// waiting (an endpoint failed attestation, the spec cannot be deployed).
pub const CONDITION_DEGRADED: &str = "Degraded";

/// A model served only from TPM-attested `aver-enclave` pods.
///
/// The controller runs `spec.replicas` pods (enclave + inference engine) on
/// TPM nodes, re-attests each ready pod every `spec.attestation.interval`
/// and lists the endpoints it verified in `status.endpoints`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
// Several printer columns share keys such as `type_`; they are not duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "aver.dev",
    version = "v1alpha1",
    kind = "ConfidentialModel",
    plural = "confidentialmodels",
    shortname = "cmodel",
    category = "aver",
    namespaced,
    status = "ConfidentialModelStatus",
    derive = "PartialEq",
    doc = "A model served only from TPM-attested aver-enclave pods. The controller runs spec.replicas pods (enclave + inference engine) on TPM nodes, re-attests every ready pod at spec.attestation.interval and lists the verified endpoints, with their certificates, in status.endpoints.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every desired replica serves with verified evidence"
    ),
    printcolumn(
        name = "Attested",
        type_ = "integer",
        json_path = ".status.attestedReplicas",
        description = "Endpoints verified within maxEvidenceAge"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired replicas",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(
    description = "Desired state: the model, its engine, where it runs and what every endpoint must prove."
)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.attestation.allowed.modelDigests.exists(d, d == self.model.digest)",
        "message": "model.digest must be one of attestation.allowed.modelDigests, or no pod could ever be attested"
    },
    {
        "rule": "!has(self.attestation.allowed.engineDigests) || self.attestation.allowed.engineDigests.exists(d, d == self.engine.digest)",
        "message": "engine.digest must be one of attestation.allowed.engineDigests, or no pod could ever be attested"
    },
    {
        "rule": "(has(self.measurement) && self.measurement == 'enclave') || !has(self.tpm) || (!has(self.tpm.device) && !has(self.tpm.tcti))",
        "message": "tpm.device and tpm.tcti give the enclave the TPM, which only measurement: enclave does; with measurement: node (the default) aver-node alone uses the TPM"
    },
    {
        "rule": "!has(self.attestation.interval) || !has(self.attestation.maxEvidenceAge) || duration(self.attestation.maxEvidenceAge) >= duration(self.attestation.interval)",
        "message": "attestation.maxEvidenceAge must be at least attestation.interval, or endpoints would drop out of status between attestations"
    }
]))]
pub struct ConfidentialModelSpec {
    /// The model weights served, and their digest.
    pub model: ModelSpec,

    /// The inference engine container that serves the model behind the enclave.
    pub engine: EngineSpec,

    /// Number of pods. At most one runs per node, because every enclave on a
    /// node would extend the same TPM's workload PCR.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = MAX_REPLICAS))]
    pub replicas: i32,

    /// Who measures the pod into the TPM: `node` (default), the node agent
    /// aver-node, which measures every container at the container runtime
    /// and is the only user of the TPM on the node; or `enclave` (legacy),
    /// for clusters without aver-node: the pod gets the TPM and the enclave
    /// measures itself, so the evidence proves only what the enclave says
    /// (any process in the pod could extend the TPM). Weaker: use it only
    /// where aver-node cannot run.
    #[serde(default)]
    pub measurement: Measurement,

    /// Which nodes have a TPM and, with `measurement: enclave`, how the
    /// enclave reaches it.
    #[serde(default)]
    pub tpm: TpmSpec,

    /// What every endpoint must prove before it is listed in status: the same
    /// schema as client policy files (`aver verify --policy`).
    pub attestation: AttestationPolicy,

    /// The Service in front of the enclaves.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Pod settings the cluster decides rather than the model: scheduling
    /// (GPU taints and labels, priority), the runtime class, pull secrets,
    /// shared memory, how long a stopping pod drains, the enclave's
    /// resources.
    #[serde(default, skip_serializing_if = "PodSettings::is_default")]
    pub pod: PodSettings,
}

/// Most seconds a stopping pod may drain.
pub const MAX_DRAIN_SECONDS: i32 = 3600;
/// Seconds a stopping pod drains unless `spec.pod.drainSeconds` says
/// otherwise: long enough for a long streamed answer to finish.
pub const DEFAULT_DRAIN_SECONDS: i32 = 120;

/// Pod settings passed through to every replica.
///
/// With `measurement: node` none of them is in a container's measured
/// spec except the enclave's drain flag and the engine's `/dev/shm`
/// mount: scheduling, priority and pull secrets decide where and whether a
/// pod runs, not what runs in it. The runtime class picks one of the
/// runtimes the node image configures (the node image is what the boot
/// chain proves), not a runtime of the pod's choosing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Tolerations besides the hardened-node one (`aver.dev/hardened`),
    /// for example for a GPU node pool's taint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Node labels every replica's node must have besides the TPM labels
    /// (`tpm.nodeSelector`), for example a GPU model. A key of the TPM
    /// labels keeps the TPM labels' value: these narrow the TPM nodes, never
    /// replace them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// RuntimeClass of the pods, for example `nvidia` for GPU nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the engine, enclave and model images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Size of a memory-backed `/dev/shm` in the engine container (PyTorch
    /// and NCCL need more than the runtime's 64 MiB), e.g. "16Gi". It
    /// counts against the pod's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Quantity>,
    /// Seconds a stopping pod keeps serving the requests it has (streamed
    /// answers), default 120: the enclave finishes them before it exits,
    /// and the engine is stopped only after that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_DRAIN_SECONDS))]
    pub drain_seconds: Option<i32>,
    /// Resources of the enclave container; default requests of 100m CPU
    /// and 64Mi memory and a 512Mi memory limit (no CPU limit: throttling
    /// would slow the model measurement at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enclave_resources: Option<ResourceRequirements>,
}

impl PodSettings {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// `drainSeconds`, or its default.
    pub fn drain_seconds(&self) -> i32 {
        self.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS)
    }
}

/// The model weights, mounted read-only at `/models` in both containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Where the model files come from.
    pub source: ModelSource,
    /// Digest of the model files (SHA-256 over the files in canonical order,
    /// as `aver digest model DIR` computes it). Must be allowed by
    /// attestation.allowed.modelDigests; the enclave measures the files it
    /// finds, so a source that does not hold these files fails attestation.
    pub digest: Sha256Digest,
}

/// Who measures a model's pods into the node's TPM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Measurement {
    /// aver-node measures every container at the container runtime; the
    /// pod has no TPM access and the enclave asks the node agent for
    /// evidence (docs/node-measurement.md).
    #[default]
    Node,
    /// Legacy: the enclave reads the TPM itself and measures its own
    /// launch. For clusters without aver-node; weaker, because the
    /// evidence proves what the enclave reports, not what the node ran.
    Enclave,
}

/// Exactly one source of model files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.image) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) == 1",
    "message": "set exactly one of persistentVolumeClaim, image, hostPath"
}]))]
pub struct ModelSource {
    /// A PersistentVolumeClaim in the same namespace holding the model files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcModelSource>,
    /// An OCI image or artifact holding the model files, mounted as an image
    /// volume (Kubernetes 1.33+ with the ImageVolume feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageModelSource>,
    /// A directory on the node. For test clusters only: the files are
    /// whatever the node holds. The controller refuses paths outside its
    /// allow-list (--allowed-model-host-paths, empty by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathModelSource>,
}

/// Model files on a PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcModelSource {
    /// Name of the claim, in the ConfidentialModel's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory within the volume that holds the model (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub sub_path: Option<String>,
}

/// Model files in an OCI image or artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageModelSource {
    /// Image reference, pinned by digest (repository@sha256:...) so that
    /// every node mounts the same files.
    #[schemars(length(min = 1, max = 1024), pattern(PINNED_IMAGE_PATTERN))]
    pub reference: String,
}

/// Model files in a directory of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostPathModelSource {
    /// Absolute path of the directory on the node.
    #[schemars(length(min = 1, max = 1024), pattern("^/"))]
    pub path: String,
}

/// The inference engine container. It listens only inside the pod; all
/// traffic reaches it through the enclave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.image.endsWith('@' + self.digest)",
    "message": "image must be pinned to digest (repository@sha256:...), so that the measured engine is the one the node runs"
}]))]
pub struct EngineSpec {
    /// Engine image, pinned by digest (repository@sha256:...).
    #[schemars(length(min = 1, max = 1024), pattern(PINNED_IMAGE_PATTERN))]
    pub image: String,
    /// Digest of the engine image, which the enclave measures as the engine
    /// event. Must be the digest image is pinned to, and allowed by
    /// attestation.allowed.engineDigests when the policy lists them.
    pub digest: Sha256Digest,
    /// Port the engine listens on inside the pod; the enclave proxies to
    /// 127.0.0.1 on this port.
    #[serde(default = "default_engine_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Arguments of the engine container. The model files are at /models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables of the engine container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Compute resources of the engine container (GPUs, memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// UID (and GID) the engine runs as with `measurement: node`; default
    /// 65532. Fixed in the pod spec, so that the measured spec does not
    /// depend on the image's `USER`, and never root, so that the pod passes
    /// PodSecurity `restricted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub run_as_user: Option<i64>,
}

/// TPM node selection and access.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.device) && has(self.tcti))",
    "message": "set at most one of device and tcti"
}]))]
pub struct TpmSpec {
    /// Node labels that mark nodes with a usable TPM. Replaces the
    /// controller's default (aver.dev/tpm=true) when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Use the node's TPM device (the default, with /dev/tpmrm0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<TpmDevice>,
    /// Reach a TPM through a TCTI string instead of a device, for test
    /// clusters with a software TPM per node, e.g.
    /// "swtpm:host=$(AVER_NODE_IP),port=2321". $(AVER_NODE_IP) and
    /// $(AVER_NODE_NAME) expand to the pod's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern("^(swtpm|mssim):"))]
    pub tcti: Option<String>,
}

/// A TPM character device on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TpmDevice {
    /// Device path on the node and in the enclave container.
    #[serde(default = "default_tpm_device")]
    #[schemars(length(min = 1, max = 256), pattern("^/dev/"))]
    pub path: String,
    /// Extended resource of a device plugin that grants the container access
    /// to the device (e.g. "squat.ai/tpmrm"). Without one, the device is
    /// mounted from the host, which needs a runtime that allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub resource_name: Option<String>,
}

/// The Service in front of the enclaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Port of the Service; it forwards to the enclaves' TLS port.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// What the controller observed and verified.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfidentialModelStatus {
    /// The metadata.generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Attested and Degraded, as metav1.Condition.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pods of the workload that are running and ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Number of entries in endpoints.
    #[serde(default)]
    pub attested_replicas: i32,
    /// Endpoints verified within attestation.maxEvidenceAge, sorted by pod
    /// name. An endpoint that fails attestation is removed at the next status
    /// write.
    #[serde(default)]
    pub endpoints: Vec<VerifiedEndpoint>,
    /// The PersistentVolume that spec.model.source.persistentVolumeClaim is
    /// bound to, as the controller resolved it. The kubelet mounts a claim
    /// from a directory named after its volume, so the container specs of a
    /// node-measured pod (and the policy derived from the resource) depend
    /// on it; absent until the claim is bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_volume: Option<ModelVolume>,
}

/// A bound model claim's volume, as far as it decides where the kubelet
/// mounts it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVolume {
    /// The claim (spec.model.source.persistentVolumeClaim.claimName).
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// The PersistentVolume it is bound to.
    #[schemars(length(min = 1, max = 253))]
    pub volume_name: String,
    /// The volume's kind, which names the kubelet's mount directory.
    #[serde(rename = "type")]
    pub type_: ModelVolumeType,
    /// The volume's directory on the node, for type HostPath (the kubelet
    /// mounts it as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
}

/// The PersistentVolume kinds whose kubelet mount directory is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ModelVolumeType {
    /// `spec.local`: mounted from `pods/<uid>/volumes/kubernetes.io~local-volume/<volume>`.
    Local,
    /// `spec.csi`: mounted from `pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`.
    #[serde(rename = "CSI")]
    Csi,
    /// `spec.hostPath`: mounted from the path itself.
    HostPath,
}

/// One enclave whose evidence the controller verified against the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedEndpoint {
    /// Name of the pod.
    pub pod: String,
    /// Node the pod runs on (whose TPM signed the evidence).
    pub node: String,
    /// IP address of the pod.
    pub address: String,
    /// TLS port of the enclave.
    pub port: i32,
    /// The enclave's self-signed TLS certificate, PEM. Its key was generated
    /// inside the enclave and is bound to the verified evidence.
    pub certificate_pem: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo: the value clients pin.
    pub spki_sha256: Sha256Digest,
    /// When the controller last verified this endpoint's evidence (RFC 3339).
    /// The controller may verify more often than it rewrites this field; the
    /// endpoint was verified at least this recently.
    pub last_attested: Time,
    /// What the verified evidence measured.
    pub measurements: EndpointMeasurements,
}

/// Measurements of an endpoint's enclave launch, as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointMeasurements {
    /// Model digest the enclave measured.
    pub model: Sha256Digest,
    /// Engine image digest the enclave reported (enclave-reported evidence;
    /// absent with node-measured evidence, where the node's runtime
    /// identified every container of the pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Sha256Digest>,
    /// Serving configuration digest the enclave reported (enclave-reported
    /// evidence only, like engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_config: Option<Sha256Digest>,
    /// TPM name of the attestation key that signed the quote.
    pub ak_name: String,
    /// Outcome of the boot-PCR check.
    pub boot_policy: BootPolicyResult,
    /// How the attestation key was proven resident in a genuine TPM, when
    /// the policy trusts it through trust.ekRoots rather than akNames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_activation: Option<AkActivation>,
}

/// A credential activation the controller did for an endpoint's AK: the EK
/// certificate chained to trust.ekRoots and the TPM released the secret.
/// The controller activates each TPM's AK once and reuses the proof for
/// re-attestation; this records it for people and tools, and is never read
/// back as proof (status is writable by whoever can write the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AkActivation {
    /// SHA-256 of the TPM's EK certificate (DER): which TPM holds the AK.
    pub ek_certificate_sha256: Sha256Digest,
    /// The EK used: "rsa2048" or "eccP256".
    pub ek_kind: String,
    /// Issuer of the EK certificate.
    pub ek_issuer: String,
    /// TPM manufacturer, model and version from the EK certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<String>,
    /// When the TPM released the secret (RFC 3339).
    pub activated_at: String,
}

/// Result of checking the quoted boot PCRs against the policy's reference
/// values. Listed endpoints always passed; the PCRs say what was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootPolicyResult {
    /// "Passed" for every listed endpoint.
    pub result: String,
    /// Boot PCRs whose values matched a reference value.
    #[serde(default)]
    pub checked_pcrs: Vec<u8>,
    /// What the policy's boot and runtime rules proved about the node, one
    /// sentence each ("Secure Boot is enabled, as boot.secureBoot
    /// requires"), from the firmware event log and the IMA list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    pub proven: Vec<String>,
}

/// Image references pinned by digest.
const PINNED_IMAGE_PATTERN: &str = "@sha256:[0-9a-f]{64}$";

fn default_replicas() -> i32 {
    1
}

fn default_engine_port() -> i32 {
    DEFAULT_ENGINE_PORT
}

fn default_service_port() -> i32 {
    DEFAULT_SERVICE_PORT
}

fn default_tpm_device() -> String {
    DEFAULT_TPM_DEVICE.to_owned()
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            port: DEFAULT_SERVICE_PORT,
        }
    }
}

impl Default for TpmDevice {
    fn default() -> Self {
        Self {
            path: DEFAULT_TPM_DEVICE.to_owned(),
            resource_name: None,
        }
    }
}

impl ConfidentialModelStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

impl BootPolicyResult {
    /// Value of `result` for an endpoint that passed.
    pub const PASSED: &'static str = "Passed";
}
