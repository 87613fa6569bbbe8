//! What a successful verification established.

use aver_crds::Sha256Digest;
use serde::Serialize;

use crate::binding::Nonce;
use crate::ek::ActivatedAk;
use crate::eventlog::LaunchMeasurements;

/// Proof that evidence passed every check against a policy. Only
/// [`crate::verify()`] makes one (the struct cannot be built outside this
/// crate), so holding a `VerifiedReport` means the checks ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct VerifiedReport {
    /// TPM name of the attestation key that signed the quote.
    pub ak_name: String,
    /// The verifier's challenge the quote answered.
    pub nonce: Nonce,
    /// The TLS key the evidence is bound to, and that the latest launch measured.
    pub spki_sha256: Sha256Digest,
    /// TPM clock state at quote time, for freshness tracking per AK.
    pub clock: QuoteClock,
    /// Boot PCRs checked against the policy's reference values.
    pub boot_pcrs: Vec<CheckedPcr>,
    /// The workload PCR and the number of enclave launches it records.
    pub workload_pcr: CheckedPcr,
    pub launches_since_boot: usize,
    /// Measurements of the running enclave's launch.
    pub launch: LaunchMeasurements,
    /// Whether the quote was shared with other challenges (Merkle batch).
    pub batched: bool,
    /// How the AK was proven TPM-resident, when it was by credential
    /// activation against `trust.ekRoots` (absent: trusted by `akNames`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<ActivatedAk>,
}

/// TPMS_CLOCK_INFO and firmware version of the quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuoteClock {
    pub clock_ms: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub firmware_version: u64,
}

/// A PCR value that the verifier checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
        match &self.activation {
            Some(activation) => out.push_str(&activation.to_text()),
            None => {
                let _ = writeln!(out, "  ak trust          listed in trust.akNames");
            }
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
        let _ = writeln!(
            out,
            "  enclave           {} ({})",
            self.launch.enclave_version, self.launch.enclave_digest
        );
        let _ = writeln!(out, "  engine            {}", self.launch.engine);
        let _ = writeln!(out, "  model             {}", self.launch.model);
        let _ = writeln!(out, "  serving config    {}", self.launch.serving_config);
        let _ = writeln!(out, "  tls spki          {}", self.spki_sha256);
        let _ = writeln!(out, "  nonce             {}", self.nonce.to_hex());
        out
    }
}
