//! What a successful verification established.
//!
//! # Proofs cannot be forged or edited
//!
//! A proof's fields are private and read through getters that hand out
//! shared references or copies, and every type inside one is either sealed
//! the same way or `#[non_exhaustive]`: code outside this crate can neither
//! build a proof nor change one it holds. The examples below must not
//! compile (each is a doctest that fails if it does).
//!
//! Editing a report:
//! ```compile_fail,E0616
//! fn edit(report: &mut aver_verifier::VerifiedReport) {
//!     report.ak_name = String::from("000b00");
//! }
//! ```
//! Extending an activation proof:
//! ```compile_fail,E0616
//! fn extend(proof: &mut aver_verifier::ek::ActivatedAk) {
//!     proof.valid_until = i64::MAX;
//! }
//! ```
//! Changing the model a launch proved:
//! ```compile_fail,E0616
//! fn swap(report: &mut aver_verifier::VerifiedReport, model: aver_verifier::Sha256Digest) {
//!     report.launch.model = model;
//! }
//! ```
//! Building a launch, a container or a measurement:
//! ```compile_fail,E0451
//! fn build(d: aver_verifier::Sha256Digest) -> aver_verifier::VerifiedLaunch {
//!     aver_verifier::VerifiedLaunch { model: d, tls_spki: d, engine: None, serving_config: None }
//! }
//! ```
//! ```compile_fail,E0639
//! fn build(d: aver_verifier::Sha256Digest) -> aver_verifier::MeasuredBy {
//!     aver_verifier::MeasuredBy::Enclave { enclave_version: String::new(), enclave_digest: d }
//! }
//! ```
//! ```compile_fail,E0639
//! fn build(d: aver_verifier::Sha256Digest) -> aver_verifier::MeasuredContainer {
//!     aver_verifier::MeasuredContainer {
//!         name: String::new(), image: String::new(), image_id: d, spec_digest: d, attempt: 0,
//!     }
//! }
//! ```

use aver_crds::Sha256Digest;
use serde::Serialize;

use crate::binding::Nonce;
use crate::ek::chain::AkCertificateInfo;
use crate::ek::ActivatedAk;
use crate::platform::PlatformReport;

/// Proof that evidence passed every check against a policy. Only
/// [`crate::verify()`] makes one (the struct cannot be built outside this
/// crate), so holding a `VerifiedReport` means the checks ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct VerifiedReport {
    /// TPM name of the attestation key that signed the quote.
    pub(crate) ak_name: String,
    /// The verifier's challenge the quote answered.
    pub(crate) nonce: Nonce,
    /// The TLS key the evidence is bound to, and that the latest launch measured.
    pub(crate) spki_sha256: Sha256Digest,
    /// TPM clock state at quote time, for freshness tracking per AK.
    pub(crate) clock: QuoteClock,
    /// Boot PCRs checked against the policy's reference values.
    pub(crate) boot_pcrs: Vec<CheckedPcr>,
    /// What the firmware event log and the IMA list proved, when the
    /// policy has `boot` or `runtime` rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<PlatformReport>,
    /// The workload PCR, whose log was replayed to its quoted value.
    pub(crate) workload_pcr: CheckedPcr,
    /// Enclave launches since boot: launch sequences in an enclave-reported
    /// log; TLS key registrations (by any pod) in a node log.
    pub(crate) launches_since_boot: usize,
    /// The evidence version verified ([`crate::evidence::EVIDENCE_VERSION_NODE`]
    /// or [`crate::evidence::EVIDENCE_VERSION_ENCLAVE`]).
    pub(crate) evidence_version: u32,
    /// Who measured the workload, and so what the report proves.
    pub(crate) measured_by: MeasuredBy,
    /// What serves behind the attested TLS key.
    pub(crate) launch: VerifiedLaunch,
    /// Whether the quote was shared with other challenges (Merkle batch).
    pub(crate) batched: bool,
    /// How the AK was proven TPM-resident, when it was by credential
    /// activation against `trust.ekRoots` (absent: trusted by `akNames`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) activation: Option<ActivatedAk>,
    /// The AK certificate that made the AK trusted under `trust.akRoots`
    /// (a cloud vTPM's), when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ak_certificate: Option<AkCertificateInfo>,
    /// The quote's signing hash or the AK's nameAlg is SHA-1, accepted only
    /// because the policy sets `trust.allowSha1`: collisions in SHA-1 are
    /// practical, so this report proves less than a SHA-256 one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) weak_hash: bool,
}

impl VerifiedReport {
    /// TPM name of the attestation key that signed the quote.
    pub fn ak_name(&self) -> &str {
        &self.ak_name
    }

    /// The verifier's challenge the quote answered.
    pub fn nonce(&self) -> Nonce {
        self.nonce
    }

    /// The TLS key the evidence is bound to, and that the latest launch measured.
    pub fn spki_sha256(&self) -> Sha256Digest {
        self.spki_sha256
    }

    /// TPM clock state at quote time, for freshness tracking per AK.
    pub fn clock(&self) -> QuoteClock {
        self.clock
    }

    /// Boot PCRs checked against the policy's reference values.
    pub fn boot_pcrs(&self) -> &[CheckedPcr] {
        &self.boot_pcrs
    }

    /// What the firmware event log and the IMA list proved, when the
    /// policy has `boot` or `runtime` rules.
    pub fn platform(&self) -> Option<&PlatformReport> {
        self.platform.as_ref()
    }

    /// The workload PCR, whose log was replayed to its quoted value.
    pub fn workload_pcr(&self) -> CheckedPcr {
        self.workload_pcr
    }

    /// Enclave launches since boot: launch sequences in an enclave-reported
    /// log; TLS key registrations (by any pod) in a node log.
    pub fn launches_since_boot(&self) -> usize {
        self.launches_since_boot
    }

    /// The evidence version verified ([`crate::evidence::EVIDENCE_VERSION_NODE`]
    /// or [`crate::evidence::EVIDENCE_VERSION_ENCLAVE`]).
    pub fn evidence_version(&self) -> u32 {
        self.evidence_version
    }

    /// Who measured the workload, and so what the report proves.
    pub fn measured_by(&self) -> &MeasuredBy {
        &self.measured_by
    }

    /// What serves behind the attested TLS key.
    pub fn launch(&self) -> &VerifiedLaunch {
        &self.launch
    }

    /// Whether the quote was shared with other challenges (Merkle batch).
    pub fn batched(&self) -> bool {
        self.batched
    }

    /// How the AK was proven TPM-resident, when it was by credential
    /// activation against `trust.ekRoots` (absent: trusted by `akNames`).
    pub fn activation(&self) -> Option<&ActivatedAk> {
        self.activation.as_ref()
    }

    /// The AK certificate that made the AK trusted under `trust.akRoots`
    /// (a cloud vTPM's), when it was.
    pub fn ak_certificate(&self) -> Option<&AkCertificateInfo> {
        self.ak_certificate.as_ref()
    }

    /// The quote's signing hash or the AK's nameAlg is SHA-1, accepted only
    /// because the policy sets `trust.allowSha1`: collisions in SHA-1 are
    /// practical, so this report proves less than a SHA-256 one.
    pub fn weak_hash(&self) -> bool {
        self.weak_hash
    }
}

/// Proof that a node's platform passed a policy's AK trust, reference PCRs
/// and boot and runtime rules ([`crate::verify_node`] alone builds one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct VerifiedNode {
    /// TPM name of the attestation key that signed the quote.
    pub(crate) ak_name: String,
    /// The verifier's challenge the quote answered.
    pub(crate) nonce: Nonce,
    /// TPM clock state at quote time.
    pub(crate) clock: QuoteClock,
    /// Boot PCRs checked against the policy's reference values.
    pub(crate) boot_pcrs: Vec<CheckedPcr>,
    /// What the firmware event log and the IMA list proved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<PlatformReport>,
    /// The AK certificate that made the AK trusted under `trust.akRoots`
    /// (a cloud vTPM's), when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ak_certificate: Option<AkCertificateInfo>,
    /// SHA-1 was relied on (quote signature or AK name), accepted only
    /// because the policy sets `trust.allowSha1`.
    pub(crate) weak_hash: bool,
}

impl VerifiedNode {
    /// TPM name of the attestation key that signed the quote.
    pub fn ak_name(&self) -> &str {
        &self.ak_name
    }

    /// The verifier's challenge the quote answered.
    pub fn nonce(&self) -> Nonce {
        self.nonce
    }

    /// TPM clock state at quote time.
    pub fn clock(&self) -> QuoteClock {
        self.clock
    }

    /// Boot PCRs checked against the policy's reference values.
    pub fn boot_pcrs(&self) -> &[CheckedPcr] {
        &self.boot_pcrs
    }

    /// What the firmware event log and the IMA list proved.
    pub fn platform(&self) -> Option<&PlatformReport> {
        self.platform.as_ref()
    }

    /// The AK certificate that made the AK trusted under `trust.akRoots`
    /// (a cloud vTPM's), when it was.
    pub fn ak_certificate(&self) -> Option<&AkCertificateInfo> {
        self.ak_certificate.as_ref()
    }

    /// SHA-1 was relied on (quote signature or AK name), accepted only
    /// because the policy sets `trust.allowSha1`.
    pub fn weak_hash(&self) -> bool {
        self.weak_hash
    }
}

impl VerifiedNode {
    /// A human-readable summary, as the CLI prints it.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "verified: node platform accepted by policy");
        let _ = writeln!(out, "  attestation key   {}", self.ak_name);
        if let Some(certificate) = &self.ak_certificate {
            write_ak_certificate(&mut out, certificate);
        }
        if self.weak_hash {
            let _ = writeln!(
                out,
                "  weak hash         SHA-1 accepted by trust.allowSha1 (quote signature or AK name)"
            );
        }
        for pcr in &self.boot_pcrs {
            let _ = writeln!(out, "  boot pcr {:<8} {} (reference)", pcr.pcr, pcr.value);
        }
        write_platform(&mut out, self.platform.as_ref());
        let _ = writeln!(out, "  nonce             {}", self.nonce.to_hex());
        out
    }
}

/// How an AK certificate made the AK trusted.
fn write_ak_certificate(out: &mut String, certificate: &AkCertificateInfo) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "  ak trust          certified by {} (trust.akRoots)",
        certificate.issuer
    );
    let _ = writeln!(
        out,
        "  ak certificate    {} {} (serial {}, not after {})",
        certificate.certificate_sha256,
        certificate.subject,
        certificate.serial,
        certificate.not_after
    );
}

/// The boot and runtime statements, one line each.
fn write_platform(out: &mut String, platform: Option<&PlatformReport>) {
    use std::fmt::Write as _;
    let Some(platform) = platform else {
        return;
    };
    for (label, log) in [("boot", &platform.boot), ("runtime", &platform.runtime)] {
        for statement in log.iter().flat_map(|l| &l.statements) {
            let _ = writeln!(out, "  {label:<17} {statement}");
        }
    }
}

/// Who measured the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[non_exhaustive]
pub enum MeasuredBy {
    /// `aver-node`, below the pod (evidence v2): the node's runtime
    /// identified every container of the pod holding the TLS key, and the
    /// node policy was re-applied to everything the node ran since boot.
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    Node {
        /// The pod holding the TLS key, `namespace/name`.
        pod: String,
        pod_uid: String,
        /// Its `aver.dev/confidential-model` label.
        confidential_model: String,
        /// Every container the pod ran, restarts included, in creation order.
        containers: Vec<MeasuredContainer>,
        /// How often `aver-node` started since boot.
        agent_starts: usize,
        /// Digests of the node policies in force, one per agent start.
        node_policies: Vec<Sha256Digest>,
    },
    /// The enclave itself (evidence v1): proves what the enclave reports,
    /// not what the node ran. Version and digest are its own claims.
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    Enclave {
        enclave_version: String,
        enclave_digest: Sha256Digest,
    },
}

/// A container of the attested pod, as the node's runtime resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct MeasuredContainer {
    pub name: String,
    /// The image digest shown for it: its first manifest digest, else its ID.
    pub image: String,
    /// The runtime's image ID.
    pub image_id: Sha256Digest,
    /// Digest of its canonical spec.
    pub spec_digest: Sha256Digest,
    pub attempt: u32,
}

/// What serves behind the attested TLS key, in both evidence versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedLaunch {
    /// Model digest the enclave measured, allowed by the policy.
    pub(crate) model: Sha256Digest,
    /// The TLS key the measurement binds (the connection's key).
    pub(crate) tls_spki: Sha256Digest,
    /// Engine image digest the enclave reported (enclave-reported evidence
    /// only; node-measured evidence identifies it in [`MeasuredBy::Node`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) engine: Option<Sha256Digest>,
    /// Serving configuration digest the enclave reported (enclave-reported
    /// evidence only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) serving_config: Option<Sha256Digest>,
}

impl VerifiedLaunch {
    /// Model digest the enclave measured, allowed by the policy.
    pub fn model(&self) -> Sha256Digest {
        self.model
    }

    /// The TLS key the measurement binds (the connection's key).
    pub fn tls_spki(&self) -> Sha256Digest {
        self.tls_spki
    }

    /// Engine image digest the enclave reported (enclave-reported evidence
    /// only; node-measured evidence identifies it in [`MeasuredBy::Node`]).
    pub fn engine(&self) -> Option<Sha256Digest> {
        self.engine
    }

    /// Serving configuration digest the enclave reported (enclave-reported
    /// evidence only).
    pub fn serving_config(&self) -> Option<Sha256Digest> {
        self.serving_config
    }
}

/// TPMS_CLOCK_INFO and firmware version of the quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct QuoteClock {
    pub clock_ms: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub firmware_version: u64,
}

/// A PCR value that the verifier checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CheckedPcr {
    pub pcr: u8,
    pub value: Sha256Digest,
}

impl VerifiedReport {
    /// A human-readable multi-line summary, as the CLI prints it.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "verified: evidence accepted by policy");
        let _ = writeln!(out, "  attestation key   {}", self.ak_name);
        match (&self.activation, &self.ak_certificate) {
            (Some(activation), _) => out.push_str(&activation.to_text()),
            (None, Some(certificate)) => write_ak_certificate(&mut out, certificate),
            (None, None) => {
                let _ = writeln!(out, "  ak trust          listed in trust.akNames");
            }
        }
        if self.weak_hash {
            let _ = writeln!(
                out,
                "  weak hash         SHA-1 accepted by trust.allowSha1 (quote signature or AK name)"
            );
        }
        let _ = writeln!(
            out,
            "  tpm clock         reset {} restart {} clock {} ms firmware {:#x}",
            self.clock.reset_count,
            self.clock.restart_count,
            self.clock.clock_ms,
            self.clock.firmware_version
        );
        for pcr in &self.boot_pcrs {
            let _ = writeln!(out, "  boot pcr {:<8} {} (reference)", pcr.pcr, pcr.value);
        }
        write_platform(&mut out, self.platform.as_ref());
        let _ = writeln!(
            out,
            "  workload pcr {:<4} {} ({} launch{} since boot)",
            self.workload_pcr.pcr,
            self.workload_pcr.value,
            self.launches_since_boot,
            if self.launches_since_boot == 1 {
                ""
            } else {
                "es"
            }
        );
        match &self.measured_by {
            MeasuredBy::Node {
                pod,
                pod_uid,
                confidential_model,
                containers,
                agent_starts,
                node_policies,
            } => {
                let _ = writeln!(
                    out,
                    "  measured by       aver-node, below the pod (evidence v{})",
                    self.evidence_version
                );
                let mut policies: Vec<&Sha256Digest> = node_policies.iter().collect();
                policies.dedup();
                for policy in policies {
                    let _ = writeln!(out, "  node policy       {policy}");
                }
                let _ = writeln!(out, "  agent starts      {agent_starts} since boot");
                let _ = writeln!(
                    out,
                    "  pod               {pod} (uid {pod_uid}, confidential model {confidential_model})"
                );
                for c in containers {
                    let _ = writeln!(
                        out,
                        "  container         {} image {} spec {}{}",
                        c.name,
                        c.image,
                        c.spec_digest,
                        if c.attempt > 0 {
                            format!(" (restart {})", c.attempt)
                        } else {
                            String::new()
                        }
                    );
                }
            }
            MeasuredBy::Enclave {
                enclave_version,
                enclave_digest,
            } => {
                let _ = writeln!(
                    out,
                    "  measured by       the enclave itself (weaker: proves what the enclave reports, not what the node ran)"
                );
                let _ = writeln!(
                    out,
                    "  enclave           {enclave_version} ({enclave_digest}, self-reported)"
                );
            }
        }
        if let Some(engine) = &self.launch.engine {
            let _ = writeln!(out, "  engine            {engine}");
        }
        let _ = writeln!(out, "  model             {}", self.launch.model);
        if let Some(config) = &self.launch.serving_config {
            let _ = writeln!(out, "  serving config    {config}");
        }
        let _ = writeln!(out, "  tls spki          {}", self.spki_sha256);
        let _ = writeln!(out, "  nonce             {}", self.nonce.to_hex());
        out
    }
}
