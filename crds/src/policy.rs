//! The attestation policy: what a verifier accepts as the right code on the
//! right platform. Embedded in `ConfidentialModel.spec.attestation` and read
//! from client policy files, so there is exactly one schema.

use std::collections::BTreeSet;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::boot_policy::{BootPolicy, RuntimePolicy, BOOT_LOG_PCRS, IMA_PCR};
use crate::{AkName, Sha256Digest};

/// PCR that `aver-node` (and `aver-enclave` in enclave mode) extends with
/// workload events unless told otherwise.
///
/// PCR 13, because the others a measured Linux boot leaves free are not:
/// 0–7 are the firmware's, 8–9 the boot loader's and the kernel EFI stub's
/// (initrd, command line), 10 is IMA's; on systemd images systemd-stub uses
/// 11 (the UKI) and 12 (command line, credentials), shim 14 (MokList) and
/// systemd-pcrextend 15 (machine id, file systems). 13 is extended only by
/// systemd-stub for system extension images, which a hardened node image
/// does not load, and is where Google's Confidential Space measures its
/// containers. 16 and 23 can be reset by any local process, 17–22 belong to
/// dynamic launch. A foreign extend of the workload PCR is detected: the
/// node log no longer replays to it, and the verifier says so.
pub const DEFAULT_WORKLOAD_PCR: u8 = 13;

/// Highest PCR index a TPM 2.0 PC-client platform has.
pub const MAX_PCR: u8 = 23;

/// PCRs that may hold workload measurements: resettable only by a reboot
/// (unlike 16 and 23), and not explained by the firmware event log (0–9),
/// IMA (10) or dynamic launch (17–22).
pub const WORKLOAD_PCRS: std::ops::RangeInclusive<u8> = 11..=15;

/// What a verifier requires of an endpoint before any request data is sent.
///
/// The `schemars` attributes below only shape the schema the API server
/// enforces for `ConfidentialModel.spec.attestation` (ranges, list keys, CEL
/// rules); they mirror [`AttestationPolicy::validate`], which stays the one
/// check for policy files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.referencePcrs) || !has(self.workloadPcr) || !self.referencePcrs.exists(r, r.pcr == self.workloadPcr)",
        "message": "workloadPcr must not also be a reference (boot) PCR"
    },
    {
        "rule": "(has(self.referencePcrs) && size(self.referencePcrs) > 0) || has(self.boot) || (has(self.allowUnverifiedBoot) && self.allowUnverifiedBoot)",
        "message": "the policy checks no boot chain: set boot rules (aver policy boot) or referencePcrs, or allowUnverifiedBoot: true for development on a software TPM"
    }
]))]
pub struct AttestationPolicy {
    /// Boot-time PCRs (sha256 bank) and the values a hardened node image may
    /// produce in them. Each listed PCR must be quoted and hold one of its
    /// values; PCRs not listed are not checked.
    #[serde(default)]
    #[schemars(length(max = 24), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pcr"]))]
    pub reference_pcrs: Vec<ReferencePcr>,

    /// PCR into which aver-node (or aver-enclave in enclave mode) extends
    /// its workload events (default 13).
    #[serde(default = "default_workload_pcr")]
    #[schemars(range(min = 11, max = 15), extend("format" = "int32"))]
    pub workload_pcr: u8,

    /// The boot chain the node must have run, checked by meaning against
    /// the firmware event log the evidence carries (replayed to PCRs 0–9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootPolicy>,

    /// What may have run on the node since boot, checked against the
    /// kernel's IMA list the evidence carries (replayed to PCR 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimePolicy>,

    /// Accept any boot chain, for development on a software TPM (swtpm),
    /// whose PCRs no firmware extended. A policy that sets neither
    /// referencePcrs nor boot rules is refused unless this is true: it would
    /// accept a node that booted anything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unverified_boot: bool,

    /// Workload measurements the latest launch of aver-enclave must carry.
    pub allowed: AllowedWorkload,

    /// Which attestation keys (and, later, which TPM manufacturers) are trusted.
    pub trust: TrustRoots,

    /// How often the controller re-attests every endpoint, e.g. "30s", "5m".
    #[serde(default = "default_interval")]
    #[schemars(
        length(max = 16),
        pattern(DURATION_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": "duration(self) >= duration('5s')",
            "message": "interval must be at least 5s"
        }])
    )]
    pub interval: String,

    /// How long verified evidence may be relied on (pinned) before it must be
    /// fetched and verified again, e.g. "5m".
    #[serde(default = "default_max_evidence_age")]
    #[schemars(
        length(max = 16),
        pattern(DURATION_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": "duration(self) > duration('0s')",
            "message": "maxEvidenceAge must be a positive duration"
        }])
    )]
    pub max_evidence_age: String,
}

/// One boot PCR and its acceptable values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferencePcr {
    /// PCR index, 0 to 23.
    #[schemars(range(min = 0, max = 23), extend("format" = "int32"))]
    pub pcr: u8,
    /// Acceptable values of this PCR in the sha256 bank; any one matches.
    #[schemars(length(min = 1, max = 64))]
    pub values: Vec<Sha256Digest>,
}

/// What the workload must be, in one of two modes.
///
/// - **Node-measured** (`pod` set): `aver-node` measured the pod below it
///   (evidence v2), and the runtime identifies the engine, so
///   `engineDigests` and `configDigests` must be absent.
/// - **Enclave-reported** (`engineDigests` set, the legacy v1 mode): the
///   enclave's latest launch sequence must carry these digests. This proves
///   what the enclave says about itself, not what the node ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.pod) || (has(self.engineDigests) && size(self.engineDigests) > 0)",
        "message": "allowed needs pod (node-measured evidence from aver-node) or engineDigests (enclave-reported evidence)"
    },
    {
        "rule": "!has(self.pod) || !has(self.engineDigests) || size(self.engineDigests) == 0",
        "message": "allowed.pod and allowed.engineDigests are exclusive: with pod the node's runtime identifies the engine"
    },
    {
        "rule": "!has(self.pod) || !has(self.configDigests)",
        "message": "allowed.configDigests is for enclave-reported evidence only: with pod the containers' spec digests cover their configuration"
    },
    {
        "rule": "has(self.pod) || !has(self.nodePolicies)",
        "message": "allowed.nodePolicies needs allowed.pod: only node-measured evidence records the node policy"
    }
]))]
pub struct AllowedWorkload {
    /// Allowed inference-engine image digests, as the enclave reports them
    /// (enclave-reported evidence v1). Absent when pod is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), transform = drop_default)]
    pub engine_digests: Vec<Sha256Digest>,
    /// Allowed model digests (SHA-256 over the model files in canonical order,
    /// as `aver digest model DIR` computes it).
    #[schemars(length(min = 1, max = 256))]
    pub model_digests: Vec<Sha256Digest>,
    /// Allowed serving-configuration digests (enclave-reported evidence
    /// only). Absent means any configuration is accepted; an empty list
    /// accepts none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub config_digests: Option<Vec<Sha256Digest>>,
    /// The containers the pod holding the TLS key must run, as `aver-node`
    /// measured them below the pod. With it, the evidence must come from
    /// `aver-node` (evidence v2) and the engine is identified by the
    /// runtime, not by the enclave; without it only enclave-reported
    /// evidence (v1) is accepted, which proves what the enclave says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<AllowedPod>,
    /// SHA-256 of the node policy files (`/etc/aver/node-policy.yaml`) the
    /// client accepts; every node policy the node log records must be one
    /// of them. The node policy is part of the node image, proven by the
    /// boot chain. Absent means any node policy the log records (the
    /// verifier still applies it to everything the node ran). Needs pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub node_policies: Option<Vec<Sha256Digest>>,
}

/// What the pod that holds the attested TLS key must run: exactly these
/// containers (each at least once, restarts included) and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedPod {
    /// The containers, by name (unique). Each must run at least once in the
    /// pod; a container of any other name fails verification.
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub containers: Vec<AllowedContainer>,
}

/// One container of the attested pod, identified as the node measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedContainer {
    /// Container name in the pod spec ("enclave", "engine").
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Image digests the runtime may report for it (manifest digest or
    /// image ID); any one matches.
    #[schemars(length(min = 1, max = 64))]
    pub image_digests: Vec<Sha256Digest>,
    /// Digests of the canonical container spec (command, args, env, user,
    /// security context, mounts, devices) as `aver policy from-model`
    /// computes them; any one matches.
    #[schemars(length(min = 1, max = 64))]
    pub spec_digests: Vec<Sha256Digest>,
}

/// Roots of trust for the platform: which attestation keys (AKs) may sign
/// quotes. An AK is trusted if `akNames` lists it, or if credential
/// activation proves it resident in a TPM whose EK certificate chains to
/// `ekRoots`, or if the node presents a certificate for it chaining to
/// `akRoots` (cloud vTPMs); at least one of the three must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.akNames) && size(self.akNames) > 0) || has(self.ekRoots) || has(self.akRoots)",
        "message": "trust needs akNames, ekRoots or akRoots"
    },
    {
        "rule": "!has(self.ekPins) || has(self.ekRoots)",
        "message": "trust.ekPins needs trust.ekRoots: pins narrow which TPMs activation against ekRoots accepts"
    }
]))]
pub struct TrustRoots {
    /// TPM names (hex, nameAlg-prefixed, e.g. "000b…") of attestation keys
    /// trusted directly by their public key.
    #[serde(default)]
    #[schemars(
        length(min = 1, max = 256),
        inner(pattern(AK_NAME_PATTERN)),
        transform = drop_default
    )]
    pub ak_names: Vec<String>,

    /// TPM manufacturer CA certificates (PEM bundle). An AK not listed in
    /// akNames is trusted once TPM2_ActivateCredential proves it resident in
    /// a TPM whose EK certificate chains to one of these (every certificate
    /// of the bundle is a trust anchor; intermediates may also come from the
    /// TPM). Zero-trust clients and the controller each activate once per
    /// TPM and remember the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 262144))]
    pub ek_roots: Option<String>,

    /// CA certificates that certify attestation keys (PEM bundle), such as
    /// a cloud provider's vTPM root. An AK not listed in akNames is trusted
    /// if the quote carries an AK certificate (read from the vTPM's NV)
    /// chaining to one of these whose key is the quoting AK's (every
    /// certificate of the bundle is a trust anchor; intermediates may come
    /// with the quote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 262144))]
    pub ak_roots: Option<String>,

    /// The operator's own nodes: SHA-256 of each enrolled TPM's EK
    /// certificate (DER, without NV padding) or EK public key (DER
    /// SubjectPublicKeyInfo), as `aver-node enroll` prints them. ekRoots
    /// alone trusts every TPM of a vendor, including one in an attacker's
    /// machine booting the public node image; with ekPins an AK activated
    /// against ekRoots is accepted only if its EK is pinned here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 4096), transform = drop_default)]
    pub ek_pins: Vec<Sha256Digest>,

    /// Accept quotes that rely on SHA-1: an attestation key whose signing
    /// scheme hashes with SHA-1, or a quote selecting the sha1 PCR bank.
    /// SHA-1 is collision-prone, so this is off by default; old TPMs that
    /// offer nothing else need it, and a report verified this way says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_sha1: bool,
}

/// A policy that cannot be enforced as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text is not YAML, or does not deserialize into the policy schema.
    #[error("policy is not valid YAML/JSON for the attestation policy schema: {0}")]
    Syntax(String),
    /// A referencePcrs entry names a PCR above [`MAX_PCR`].
    #[error("policy PCR {0} is out of range (0..={MAX_PCR})")]
    PcrOutOfRange(u8),
    /// workloadPcr is outside [`WORKLOAD_PCRS`].
    #[error("policy workloadPcr {0} must be 11 to 15: PCRs 0-9 belong to the boot chain, 10 to IMA, 16 and 23 can be reset by any local process, 17-22 belong to dynamic launch")]
    BadWorkloadPcr(u8),
    /// Two referencePcrs entries name the same PCR, so which values apply is ambiguous.
    #[error("policy lists PCR {0} more than once in referencePcrs")]
    DuplicatePcr(u8),
    /// A referencePcrs entry lists no values, so no quote could match it.
    #[error("policy reference PCR {0} has no acceptable values")]
    EmptyPcrValues(u8),
    /// workloadPcr is also listed in referencePcrs.
    #[error("policy workloadPcr {0} must not also be a reference (boot) PCR")]
    WorkloadPcrIsReference(u8),
    /// Neither boot nor referencePcrs is set, and allowUnverifiedBoot is false.
    #[error("policy checks no boot chain: it sets neither boot rules nor referencePcrs, so a node that booted anything would pass; add boot rules (`aver policy boot`) or referencePcrs, or set allowUnverifiedBoot: true for development on a software TPM")]
    UnverifiedBoot,
    /// An allow-list is present but empty (it would reject everything); the
    /// payload names the list (e.g. "model digests", "boot.kernelCmdlines").
    #[error("policy allows no {0}: list at least one entry")]
    NothingAllowed(&'static str),
    /// A runtime.files entry is not absolute, unique or digested, or there are too
    /// many; the payload says which.
    #[error("policy runtime.files: {0}")]
    BadRuntimeFile(String),
    /// trust sets none of akNames, ekRoots and akRoots.
    #[error("policy trusts no attestation key: set trust.akNames, trust.ekRoots or trust.akRoots")]
    NoTrustRoot,
    /// trust.ekRoots is too large or not well-formed PEM certificate blocks; the
    /// payload says what is wrong.
    #[error("policy trust.ekRoots is not a PEM bundle of certificates: {0}")]
    BadEkRoots(String),
    /// trust.akRoots is too large or not well-formed PEM certificate blocks; the
    /// payload says what is wrong.
    #[error("policy trust.akRoots is not a PEM bundle of certificates: {0}")]
    BadAkRoots(String),
    /// trust.ekPins is set without trust.ekRoots.
    #[error("policy trust.ekPins needs trust.ekRoots: pins narrow which TPMs activation against ekRoots accepts, and without ekRoots nothing is activated")]
    EkPinsWithoutRoots,
    /// trust.ekPins lists the same EK digest twice.
    #[error("policy trust.ekPins lists {0} more than once")]
    DuplicateEkPin(Sha256Digest),
    /// An akNames entry is not a hex TPM name of a known nameAlg.
    #[error("policy akName {0:?} is not a hex TPM name: nameAlg and digest, 000b + 64 hex (SHA-256), 000c + 96 (SHA-384), 000d + 128 (SHA-512), or 0004 + 40 (SHA-1, with trust.allowSha1)")]
    BadAkName(String),
    /// An akNames entry is a SHA-1 name and trust.allowSha1 is off.
    #[error("policy akName {0:?} is a SHA-1 name: SHA-1 collisions are practical, so it is accepted only with trust.allowSha1")]
    Sha1AkName(String),
    /// A duration (interval, maxEvidenceAge) is not an integer followed by `ms`,
    /// `s`, `m` or `h`, or overflows.
    #[error("policy {field} {value:?} is not a duration like \"30s\" or \"5m\"")]
    BadDuration {
        /// The policy field as spelled in the file: `interval` or `maxEvidenceAge`.
        field: &'static str,
        /// The text found there.
        value: String,
    },
    /// interval is shorter than 5s, the floor the CRD schema also enforces.
    #[error("policy interval must be at least 5s, got {0:?}")]
    IntervalTooShort(String),
    /// allowed sets neither pod nor engineDigests.
    #[error("policy allowed needs either pod (node-measured evidence from aver-node) or engineDigests (enclave-reported evidence)")]
    NoWorkloadMode,
    /// allowed sets both pod and engineDigests.
    #[error("policy allowed.pod and allowed.engineDigests are exclusive: with pod the node's runtime identifies the engine image, so remove engineDigests")]
    PodWithEngineDigests,
    /// allowed.configDigests is set in a node-measured (pod) policy.
    #[error("policy allowed.configDigests is for enclave-reported evidence only: with allowed.pod the containers' spec digests cover their configuration")]
    PodWithConfigDigests,
    /// allowed.nodePolicies is set in an enclave-reported (engineDigests) policy.
    #[error("policy allowed.nodePolicies needs allowed.pod: only node-measured evidence records the node policy")]
    NodePoliciesWithoutPod,
    /// allowed.pod.containers is empty.
    #[error("policy allowed.pod lists no container")]
    NoPodContainers,
    /// Two allowed.pod.containers entries have the same name.
    #[error("policy allowed.pod.containers lists container {0:?} more than once")]
    DuplicateContainer(String),
    /// An allowed.pod container lists no image digests or no spec digests.
    #[error("policy allowed.pod container {name:?} allows no {field}: list at least one digest")]
    ContainerAllowsNothing {
        /// The container's name in allowed.pod.containers.
        name: String,
        /// The empty list: "image digests" or "spec digests".
        field: &'static str,
    },
}

/// Durations as [`parse_duration`] reads them (and Go/CEL `duration()` too).
const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h)$";

/// A TPM name with a SHA-256 nameAlg, as `validate` requires.
const AK_NAME_PATTERN: &str =
    "^(0004[0-9a-fA-F]{40}|000b[0-9a-fA-F]{64}|000c[0-9a-fA-F]{96}|000d[0-9a-fA-F]{128})$";

/// Removes the schema default of a field whose serde default (empty) would
/// not pass its own `minItems` (the API server refuses a CRD whose defaults
/// do not validate, and an empty trust list is an error anyway), or whose
/// absence means something (`engineDigests`: absent in node-measured
/// policies, where the API server must not write an empty list).
fn drop_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

fn default_workload_pcr() -> u8 {
    DEFAULT_WORKLOAD_PCR
}

fn default_interval() -> String {
    "30s".to_owned()
}

fn default_max_evidence_age() -> String {
    "5m".to_owned()
}

impl AttestationPolicy {
    /// Parses a policy file (YAML, which includes JSON) and validates it, so
    /// that a policy that cannot be enforced is refused before it is used.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let policy: Self =
            serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// The policy file [`from_yaml`](Self::from_yaml) reads back, as `aver
    /// policy` prints it.
    pub fn to_yaml(&self) -> String {
        // Serialising plain data structs to YAML cannot fail.
        serde_norway::to_string(self).unwrap_or_default()
    }

    /// Checks what the schema alone cannot: ranges, uniqueness, non-empty
    /// allow-lists. An empty allow-list would silently reject everything (or,
    /// worse, be read as "anything"), so it is an error.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut seen = BTreeSet::new();
        for reference in &self.reference_pcrs {
            if reference.pcr > MAX_PCR {
                return Err(PolicyError::PcrOutOfRange(reference.pcr));
            }
            if !seen.insert(reference.pcr) {
                return Err(PolicyError::DuplicatePcr(reference.pcr));
            }
            if reference.values.is_empty() {
                return Err(PolicyError::EmptyPcrValues(reference.pcr));
            }
        }
        if !WORKLOAD_PCRS.contains(&self.workload_pcr) {
            return Err(PolicyError::BadWorkloadPcr(self.workload_pcr));
        }
        if seen.contains(&self.workload_pcr) {
            return Err(PolicyError::WorkloadPcrIsReference(self.workload_pcr));
        }
        if self.reference_pcrs.is_empty() && self.boot.is_none() && !self.allow_unverified_boot {
            return Err(PolicyError::UnverifiedBoot);
        }
        self.allowed.validate()?;
        if let Some(boot) = &self.boot {
            boot.validate()?;
        }
        if let Some(runtime) = &self.runtime {
            runtime.validate()?;
        }
        if self.trust.ak_names.is_empty()
            && self.trust.ek_roots.is_none()
            && self.trust.ak_roots.is_none()
        {
            return Err(PolicyError::NoTrustRoot);
        }
        if let Some(roots) = &self.trust.ek_roots {
            check_pem_bundle(roots).map_err(PolicyError::BadEkRoots)?;
        }
        if let Some(roots) = &self.trust.ak_roots {
            check_pem_bundle(roots).map_err(PolicyError::BadAkRoots)?;
        }
        if !self.trust.ek_pins.is_empty() && self.trust.ek_roots.is_none() {
            return Err(PolicyError::EkPinsWithoutRoots);
        }
        let mut pins = BTreeSet::new();
        for pin in &self.trust.ek_pins {
            if !pins.insert(pin.0) {
                return Err(PolicyError::DuplicateEkPin(*pin));
            }
        }
        for name in &self.trust.ak_names {
            let parsed = AkName::parse(name).map_err(|_| PolicyError::BadAkName(name.clone()))?;
            if parsed.is_sha1() && !self.trust.allow_sha1 {
                return Err(PolicyError::Sha1AkName(name.clone()));
            }
        }
        let interval = self.interval()?;
        if interval < Duration::from_secs(5) {
            return Err(PolicyError::IntervalTooShort(self.interval.clone()));
        }
        self.max_evidence_age()?;
        Ok(())
    }

    /// How often the controller re-attests, as a [`Duration`];
    /// [`PolicyError::BadDuration`] only for a policy that was never validated.
    pub fn interval(&self) -> Result<Duration, PolicyError> {
        parse_duration("interval", &self.interval)
    }

    /// How long verified evidence may be relied on, as a [`Duration`];
    /// [`PolicyError::BadDuration`] only for a policy that was never validated.
    pub fn max_evidence_age(&self) -> Result<Duration, PolicyError> {
        parse_duration("maxEvidenceAge", &self.max_evidence_age)
    }

    /// The PCRs a quote must cover for this policy: every reference PCR,
    /// the workload PCR, and the PCRs the boot log (0–9) and the IMA list
    /// (10) explain when the policy checks them, in ascending order.
    pub fn required_pcrs(&self) -> BTreeSet<u8> {
        let mut pcrs: BTreeSet<u8> = self
            .reference_pcrs
            .iter()
            .map(|r| r.pcr)
            .chain(std::iter::once(self.workload_pcr))
            .collect();
        if self.boot.is_some() || self.runtime.is_some() {
            pcrs.extend(BOOT_LOG_PCRS);
        }
        if self.runtime.is_some() {
            pcrs.insert(IMA_PCR);
        }
        pcrs
    }
}

impl AllowedWorkload {
    /// Whether the policy is node-measured (`pod` set): evidence must be v2.
    pub fn is_node_measured(&self) -> bool {
        self.pod.is_some()
    }

    /// Exactly one mode, and no empty allow-list in it.
    fn validate(&self) -> Result<(), PolicyError> {
        match &self.pod {
            None => {
                if self.engine_digests.is_empty() {
                    return Err(PolicyError::NoWorkloadMode);
                }
                if self.node_policies.is_some() {
                    return Err(PolicyError::NodePoliciesWithoutPod);
                }
            }
            Some(pod) => {
                if !self.engine_digests.is_empty() {
                    return Err(PolicyError::PodWithEngineDigests);
                }
                if self.config_digests.is_some() {
                    return Err(PolicyError::PodWithConfigDigests);
                }
                if pod.containers.is_empty() {
                    return Err(PolicyError::NoPodContainers);
                }
                let mut names = BTreeSet::new();
                for c in &pod.containers {
                    if !names.insert(c.name.as_str()) {
                        return Err(PolicyError::DuplicateContainer(c.name.clone()));
                    }
                    let nothing = |field| PolicyError::ContainerAllowsNothing {
                        name: c.name.clone(),
                        field,
                    };
                    if c.image_digests.is_empty() {
                        return Err(nothing("image digests"));
                    }
                    if c.spec_digests.is_empty() {
                        return Err(nothing("spec digests"));
                    }
                }
                if self.node_policies.as_ref().is_some_and(Vec::is_empty) {
                    return Err(PolicyError::NothingAllowed("node policies"));
                }
            }
        }
        if self.model_digests.is_empty() {
            return Err(PolicyError::NothingAllowed("model digests"));
        }
        Ok(())
    }
}

/// Largest `trust.ekRoots` bundle: a few dozen manufacturer CAs.
pub const MAX_EK_ROOTS_BYTES: usize = 256 * 1024;

/// The shape of a PEM certificate bundle: one or more well-formed
/// `CERTIFICATE` blocks of base64 (text between blocks is ignored). The
/// certificates themselves are parsed and checked by the verifier, which
/// owns the X.509 code; this catches a truncated or mis-pasted bundle when
/// the policy is loaded.
fn check_pem_bundle(text: &str) -> Result<(), String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    if text.len() > MAX_EK_ROOTS_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_EK_ROOTS_BYTES}-byte limit",
            text.len()
        ));
    }
    let mut blocks = 0;
    let mut inside = false;
    let mut body = 0usize;
    for (number, line) in text.lines().map(str::trim).enumerate() {
        let number = number + 1;
        match (inside, line) {
            (_, "") => {}
            (false, BEGIN) => {
                inside = true;
                body = 0;
            }
            (true, END) => {
                if body == 0 {
                    return Err(format!("line {number}: empty certificate block"));
                }
                inside = false;
                blocks += 1;
            }
            (true, data)
                if data
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) =>
            {
                body += data.len();
            }
            (true, _) => return Err(format!("line {number}: not base64 inside a certificate")),
            // Bundles often carry comments ("# Vendor RSA Root") between blocks.
            (false, _) => {}
        }
    }
    if inside {
        return Err("the last certificate block has no END line".into());
    }
    if blocks == 0 {
        return Err("no certificate".into());
    }
    Ok(())
}

/// Durations are written as an integer and a unit (`ms`, `s`, `m`, `h`), the
/// subset of Go/Kubernetes duration syntax that operators actually write.
fn parse_duration(field: &'static str, text: &str) -> Result<Duration, PolicyError> {
    let bad = || PolicyError::BadDuration {
        field,
        value: text.to_owned(),
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> Sha256Digest {
        Sha256Digest([byte; 32])
    }

    fn sample() -> AttestationPolicy {
        AttestationPolicy {
            reference_pcrs: vec![ReferencePcr {
                pcr: 0,
                values: vec![digest(0)],
            }],
            workload_pcr: DEFAULT_WORKLOAD_PCR,
            boot: None,
            runtime: None,
            allow_unverified_boot: false,
            allowed: AllowedWorkload {
                engine_digests: vec![digest(1)],
                model_digests: vec![digest(2)],
                config_digests: None,
                pod: None,
                node_policies: None,
            },
            trust: TrustRoots {
                ak_names: vec![format!("000b{}", "cd".repeat(32))],
                ek_roots: None,
                ak_roots: None,
                ek_pins: vec![],
                allow_sha1: false,
            },
            interval: "30s".into(),
            max_evidence_age: "5m".into(),
        }
    }

    #[test]
    fn yaml_round_trip_keeps_the_policy() {
        let policy = sample();
        let parsed = AttestationPolicy::from_yaml(&policy.to_yaml()).unwrap();
        assert_eq!(parsed, policy);
        assert_eq!(
            parsed.required_pcrs().into_iter().collect::<Vec<_>>(),
            [0, 13]
        );
    }

    #[test]
    fn boot_and_runtime_policies_require_the_platform_pcrs() {
        let mut p = sample();
        p.boot = Some(BootPolicy::default());
        assert_eq!(
            p.required_pcrs().into_iter().collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13]
        );
        p.runtime = Some(RuntimePolicy {
            files: vec![crate::AllowedFile {
                path: "/init".into(),
                digests: vec![digest(4)],
            }],
        });
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(
            p.required_pcrs().into_iter().collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]
        );
        let parsed = AttestationPolicy::from_yaml(&p.to_yaml()).unwrap();
        assert_eq!(parsed, p);
    }

    #[test]
    fn unenforceable_boot_and_runtime_policies_are_refused() {
        let mut p = sample();
        p.boot = Some(BootPolicy {
            kernel_cmdlines: Some(vec![]),
            ..BootPolicy::default()
        });
        assert_eq!(
            p.validate(),
            Err(PolicyError::NothingAllowed("boot.kernelCmdlines"))
        );
        for (path, digests, why) in [
            ("init", vec![digest(1)], "absolute"),
            ("/init", vec![], "allows no digest"),
        ] {
            let mut p = sample();
            p.runtime = Some(RuntimePolicy {
                files: vec![crate::AllowedFile {
                    path: path.into(),
                    digests,
                }],
            });
            let err = p.validate().unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
        let mut p = sample();
        let file = crate::AllowedFile {
            path: "/init".into(),
            digests: vec![digest(1)],
        };
        p.runtime = Some(RuntimePolicy {
            files: vec![file.clone(), file],
        });
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("more than once"));
        let text = "secureBoot: enabled\nkernelCmdlines: [\"ro\"]\nsurprise: 1\n";
        assert!(serde_norway::from_str::<BootPolicy>(text).is_err());
    }

    #[test]
    fn a_policy_checking_no_boot_chain_must_say_so() {
        let mut p = sample();
        p.reference_pcrs.clear();
        assert_eq!(p.validate(), Err(PolicyError::UnverifiedBoot));
        assert!(PolicyError::UnverifiedBoot
            .to_string()
            .contains("allowUnverifiedBoot: true"));
        p.allow_unverified_boot = true;
        assert_eq!(p.validate(), Ok(()));
        assert!(p.to_yaml().contains("allowUnverifiedBoot: true"));
        assert!(!sample().to_yaml().contains("allowUnverifiedBoot"));
        p.allow_unverified_boot = false;
        p.boot = Some(BootPolicy::default());
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn defaults_apply_when_omitted() {
        let yaml = format!(
            "allowUnverifiedBoot: true\nallowed:\n  engineDigests: [{e}]\n  modelDigests: [{m}]\ntrust:\n  akNames: [\"000b{n}\"]\n",
            e = digest(1),
            m = digest(2),
            n = "cd".repeat(32)
        );
        let p = AttestationPolicy::from_yaml(&yaml).unwrap();
        assert_eq!(p.workload_pcr, 13);
        assert_eq!(p.interval().unwrap(), Duration::from_secs(30));
        assert_eq!(p.max_evidence_age().unwrap(), Duration::from_secs(300));
    }

    #[test]
    fn unenforceable_policies_are_refused() {
        let mut p = sample();
        p.allowed.model_digests.clear();
        assert_eq!(
            p.validate(),
            Err(PolicyError::NothingAllowed("model digests"))
        );

        let mut p = sample();
        p.trust.ak_names.clear();
        assert_eq!(p.validate(), Err(PolicyError::NoTrustRoot));

        let mut p = sample();
        p.reference_pcrs.push(ReferencePcr {
            pcr: 0,
            values: vec![digest(3)],
        });
        assert_eq!(p.validate(), Err(PolicyError::DuplicatePcr(0)));

        let mut p = sample();
        p.reference_pcrs[0].pcr = 13;
        assert_eq!(p.validate(), Err(PolicyError::WorkloadPcrIsReference(13)));

        let mut p = sample();
        p.reference_pcrs[0].pcr = 24;
        assert_eq!(p.validate(), Err(PolicyError::PcrOutOfRange(24)));

        for resettable in [16, 23, 7, 8, 9, 10] {
            let mut p = sample();
            p.workload_pcr = resettable;
            assert_eq!(p.validate(), Err(PolicyError::BadWorkloadPcr(resettable)));
        }

        let mut p = sample();
        p.interval = "2s".into();
        assert!(matches!(
            p.validate(),
            Err(PolicyError::IntervalTooShort(_))
        ));

        let mut p = sample();
        p.max_evidence_age = "soon".into();
        assert!(matches!(p.validate(), Err(PolicyError::BadDuration { .. })));

        let mut p = sample();
        p.trust.ak_names = vec!["0004abcd".into()];
        assert!(matches!(p.validate(), Err(PolicyError::BadAkName(_))));

        // SHA-384 and SHA-512 names are fine; a SHA-1 name needs the opt-in.
        let mut p = sample();
        p.trust.ak_names = vec![
            format!("000c{}", "ab".repeat(48)),
            format!("000d{}", "ab".repeat(64)),
        ];
        assert_eq!(p.validate(), Ok(()));
        let sha1_name = format!("0004{}", "ab".repeat(20));
        p.trust.ak_names = vec![sha1_name.clone()];
        assert_eq!(p.validate(), Err(PolicyError::Sha1AkName(sha1_name)));
        p.trust.allow_sha1 = true;
        assert_eq!(p.validate(), Ok(()));
        p.trust.ak_names = vec![format!("000c{}", "ab".repeat(32))];
        assert!(matches!(p.validate(), Err(PolicyError::BadAkName(_))));
    }

    fn node_measured() -> AttestationPolicy {
        let mut p = sample();
        p.allowed.engine_digests.clear();
        p.allowed.pod = Some(AllowedPod {
            containers: ["enclave", "engine"]
                .into_iter()
                .map(|name| AllowedContainer {
                    name: name.into(),
                    image_digests: vec![digest(5)],
                    spec_digests: vec![digest(6)],
                })
                .collect(),
        });
        p
    }

    #[test]
    fn node_measured_policies_round_trip_without_engine_digests() {
        let mut p = node_measured();
        p.allowed.node_policies = Some(vec![digest(7)]);
        assert_eq!(p.validate(), Ok(()));
        let yaml = p.to_yaml();
        assert!(!yaml.contains("engineDigests"), "{yaml}");
        assert!(yaml.contains("nodePolicies"), "{yaml}");
        assert_eq!(AttestationPolicy::from_yaml(&yaml).unwrap(), p);
        assert!(p.allowed.is_node_measured());
        assert!(!sample().allowed.is_node_measured());
    }

    #[test]
    fn exactly_one_workload_mode() {
        let mut p = sample();
        p.allowed.engine_digests.clear();
        assert_eq!(p.validate(), Err(PolicyError::NoWorkloadMode));

        let mut p = node_measured();
        p.allowed.engine_digests = vec![digest(1)];
        assert_eq!(p.validate(), Err(PolicyError::PodWithEngineDigests));

        let mut p = node_measured();
        p.allowed.config_digests = Some(vec![digest(3)]);
        assert_eq!(p.validate(), Err(PolicyError::PodWithConfigDigests));

        let mut p = sample();
        p.allowed.node_policies = Some(vec![digest(7)]);
        assert_eq!(p.validate(), Err(PolicyError::NodePoliciesWithoutPod));

        let mut p = node_measured();
        p.allowed.node_policies = Some(vec![]);
        assert_eq!(
            p.validate(),
            Err(PolicyError::NothingAllowed("node policies"))
        );
    }

    #[test]
    fn pod_containers_are_unique_and_allow_something() {
        let mut p = node_measured();
        let pod = p.allowed.pod.as_mut().unwrap();
        pod.containers[1].name = "enclave".into();
        assert_eq!(
            p.validate(),
            Err(PolicyError::DuplicateContainer("enclave".into()))
        );

        let mut p = node_measured();
        p.allowed.pod.as_mut().unwrap().containers.clear();
        assert_eq!(p.validate(), Err(PolicyError::NoPodContainers));

        let mut p = node_measured();
        p.allowed.pod.as_mut().unwrap().containers[1]
            .spec_digests
            .clear();
        let error = p.validate().unwrap_err();
        assert_eq!(
            error,
            PolicyError::ContainerAllowsNothing {
                name: "engine".into(),
                field: "spec digests"
            }
        );
        assert!(error
            .to_string()
            .contains("\"engine\" allows no spec digests"));

        let mut p = node_measured();
        p.allowed.pod.as_mut().unwrap().containers[0]
            .image_digests
            .clear();
        assert!(matches!(
            p.validate(),
            Err(PolicyError::ContainerAllowsNothing {
                field: "image digests",
                ..
            })
        ));
    }

    const PEM: &str = "# Vendor root\n-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\nAAAA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn ek_roots_alone_are_a_trust_root() {
        let mut p = sample();
        p.trust.ak_names.clear();
        p.trust.ek_roots = Some(PEM.into());
        assert_eq!(p.validate(), Ok(()));
        let parsed = AttestationPolicy::from_yaml(&p.to_yaml()).unwrap();
        assert_eq!(parsed.trust.ek_roots.as_deref(), Some(PEM));
        assert!(parsed.trust.ak_names.is_empty());
    }

    #[test]
    fn ak_roots_alone_are_a_trust_root_and_are_checked() {
        let mut p = sample();
        p.trust.ak_names.clear();
        p.trust.ak_roots = Some(PEM.into());
        assert_eq!(p.validate(), Ok(()));
        let parsed = AttestationPolicy::from_yaml(&p.to_yaml()).unwrap();
        assert_eq!(parsed.trust.ak_roots.as_deref(), Some(PEM));
        p.trust.ak_roots = Some("not pem".into());
        assert!(matches!(p.validate(), Err(PolicyError::BadAkRoots(_))));
        p.trust.ak_roots = None;
        assert_eq!(p.validate(), Err(PolicyError::NoTrustRoot));
    }

    #[test]
    fn ek_pins_need_ek_roots_and_are_unique() {
        let mut p = sample();
        p.trust.ek_pins = vec![digest(8)];
        assert_eq!(p.validate(), Err(PolicyError::EkPinsWithoutRoots));
        p.trust.ek_roots = Some(PEM.into());
        assert_eq!(p.validate(), Ok(()));
        let yaml = p.to_yaml();
        assert!(yaml.contains("ekPins"), "{yaml}");
        assert_eq!(AttestationPolicy::from_yaml(&yaml).unwrap(), p);
        assert!(!sample().to_yaml().contains("ekPins"));
        p.trust.ek_pins.push(digest(8));
        assert_eq!(p.validate(), Err(PolicyError::DuplicateEkPin(digest(8))));
    }

    #[test]
    fn malformed_ek_roots_are_refused_when_loaded() {
        for (bundle, expected) in [
            ("", "no certificate"),
            ("just text\n", "no certificate"),
            ("-----BEGIN CERTIFICATE-----\nAAAA\n", "no END line"),
            (
                "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
                "empty certificate block",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                "not base64",
            ),
        ] {
            let mut p = sample();
            p.trust.ek_roots = Some(bundle.into());
            match p.validate() {
                Err(PolicyError::BadEkRoots(reason)) => {
                    assert!(reason.contains(expected), "{bundle:?}: {reason}")
                }
                other => panic!("{bundle:?}: {other:?}"),
            }
        }
        let mut p = sample();
        p.trust.ek_roots = Some(PEM.repeat(MAX_EK_ROOTS_BYTES / PEM.len() + 1));
        assert!(matches!(p.validate(), Err(PolicyError::BadEkRoots(_))));
    }

    #[test]
    fn unknown_fields_and_bad_digests_are_syntax_errors() {
        let mut yaml = sample().to_yaml();
        yaml.push_str("surprise: true\n");
        assert!(matches!(
            AttestationPolicy::from_yaml(&yaml),
            Err(PolicyError::Syntax(_))
        ));
        let yaml = sample().to_yaml().replace("sha256:", "sha1:");
        assert!(matches!(
            AttestationPolicy::from_yaml(&yaml),
            Err(PolicyError::Syntax(_))
        ));
    }

    #[test]
    fn durations_parse_and_overflow_is_rejected() {
        assert_eq!(parse_duration("f", "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("f", "2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("f", "").is_err());
        assert!(parse_duration("f", "5").is_err());
        assert!(parse_duration("f", "s").is_err());
        assert!(parse_duration("f", "99999999999999999999h").is_err());
        assert!(parse_duration("f", &format!("{}h", u64::MAX)).is_err());
    }
}
