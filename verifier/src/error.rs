//! Every reason verification can fail, each with one clear message.

use aver_crds::{PolicyError, Sha256Digest};
use aver_node_log::{NodeLogError, PodMismatch};

use crate::ek::chain::EkChainError;
use crate::ek::ActivationError;
use crate::eventlog::EventLogError;
use crate::evidence::EvidenceError;
use crate::platform::{BootError, RuntimeError};
use crate::tpm::TpmParseError;

/// Why evidence was not accepted. Callers match on the variant to count
/// failures by reason; users read the message, which names what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    /// A policy's `trust.ekRoots` or `trust.akRoots` certificates do not
    /// parse, or one is not a CA; found when the policy is loaded.
    #[error("invalid policy: {0}")]
    PolicyRoots(EkChainError),
    #[error("evidence answers nonce {found}, not the nonce this verifier sent: replayed or misrouted evidence")]
    NonceMismatch { found: String },
    #[error("evidence is bound to TLS key {found}, but this connection's key is {expected}: possible man-in-the-middle")]
    SpkiMismatch {
        expected: Sha256Digest,
        found: Sha256Digest,
    },
    #[error("malformed {part}: {source}")]
    Tpm {
        part: &'static str,
        source: TpmParseError,
    },
    #[error("attestation key {name} is not a restricted, TPM-resident signing key")]
    NotAnAttestationKey { name: String },
    #[error("attestation key {name} is not trusted by the policy (trust.akNames)")]
    UntrustedAk { name: String },
    #[error("attestation key {name} is neither listed in trust.akNames nor proven resident in a genuine TPM (trust.ekRoots needs credential activation, which was not done for this key)")]
    AkNotProven { name: String },
    #[error("attestation key {name} is not listed in trust.akNames, and the quote carries no AK certificate for trust.akRoots (no certificate)")]
    NoAkCertificate { name: String },
    #[error("attestation key {name}: its AK certificate was issued by {issuer}, which does not chain to trust.akRoots (untrusted issuer)")]
    AkCertificateUntrusted { name: String, issuer: String },
    #[error("attestation key {name}: the AK certificate ({subject}, issued by {issuer}) certifies another key (key mismatch)")]
    AkCertificateKeyMismatch {
        name: String,
        subject: String,
        issuer: String,
    },
    #[error("attestation key {name}: its AK certificate is not accepted: {source}")]
    AkCertificateInvalid {
        name: String,
        source: crate::ek::EkChainError,
    },
    #[error("attestation key {name} is resident in a TPM certified by trust.ekRoots, but that TPM is not one of the policy's nodes: its EK certificate {certificate} and EK public key {public_key} are not in trust.ekPins (to enrol the node, run `aver-node enroll` on it and add its pins to trust.ekPins)")]
    EkNotPinned {
        name: String,
        certificate: Sha256Digest,
        public_key: Sha256Digest,
    },
    #[error("credential activation proved attestation key {activated}, but the quote is signed by {quoted}")]
    ActivatedAkMismatch { activated: String, quoted: String },
    #[error("attestation key activation failed: {0}")]
    Activation(#[from] ActivationError),
    #[error("the {what} is SHA-1, which the policy does not accept (set trust.allowSha1 for TPMs that can do no better)")]
    Sha1NotAllowed { what: &'static str },
    #[error("quote signature does not verify with attestation key {name}")]
    BadSignature { name: String },
    #[error("quote qualifying data does not commit to this nonce and TLS key: replayed quote or evidence for another connection")]
    QualifyingDataMismatch,
    #[error("PCR values in the evidence do not match the quoted PCR selection: {0}")]
    PcrSetMismatch(String),
    #[error(
        "PCR values in the evidence do not hash to the quoted PCR digest: a PCR value was altered"
    )]
    PcrDigestMismatch,
    #[error("policy needs PCR {0}, but the quote does not cover it")]
    PcrNotQuoted(u8),
    #[error("boot PCR {pcr} is {value}, which is not a reference value of the policy")]
    BootPcrMismatch { pcr: u8, value: Sha256Digest },
    #[error("boot chain rejected: {0}")]
    Boot(#[from] BootError),
    #[error("runtime rejected: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("workload event log rejected: {0}")]
    EventLog(#[from] EventLogError),
    #[error("the enclave's latest launch measured TLS key {measured}, not the key {bound} this evidence is bound to")]
    LaunchSpkiMismatch {
        measured: Sha256Digest,
        bound: Sha256Digest,
    },
    #[error("the policy requires node-measured evidence (version 2, from aver-node) because it sets allowed.pod, but this is version {found} evidence, which only the enclave vouches for")]
    NodeEvidenceRequired { found: u32 },
    #[error("the policy accepts only enclave-reported evidence (version 1: it sets allowed.engineDigests, not allowed.pod), but this is version {found} evidence: set allowed.pod to verify node-measured evidence")]
    EnclaveEvidenceRequired { found: u32 },
    #[error("node log rejected: {0}")]
    NodeLog(#[from] NodeLogError),
    #[error("attested pod rejected: {0}")]
    Pod(#[from] PodMismatch),
    #[error("engine digest {0} is not allowed by the policy")]
    EngineNotAllowed(Sha256Digest),
    #[error("model digest {0} is not allowed by the policy")]
    ModelNotAllowed(Sha256Digest),
    #[error("serving config digest {0} is not allowed by the policy")]
    ConfigNotAllowed(Sha256Digest),
    #[error("TPM clock went backwards for attestation key {name}: reset/restart count {now_reset}/{now_restart} after {seen_reset}/{seen_restart} (clock {now_clock} after {seen_clock})")]
    ClockRegression {
        name: String,
        seen_reset: u32,
        seen_restart: u32,
        seen_clock: u64,
        now_reset: u32,
        now_restart: u32,
        now_clock: u64,
    },
}

impl VerifyError {
    /// A short, stable label for metrics and logs ("nonce", "signature", …).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Evidence(EvidenceError::UnsupportedVersion { .. }) => "version",
            Self::Evidence(_) | Self::Tpm { .. } => "malformed",
            Self::Policy(_) | Self::PolicyRoots(_) => "policy-invalid",
            Self::NonceMismatch { .. } | Self::QualifyingDataMismatch => "freshness",
            Self::SpkiMismatch { .. } | Self::LaunchSpkiMismatch { .. } => "channel-binding",
            Self::NotAnAttestationKey { .. }
            | Self::UntrustedAk { .. }
            | Self::AkNotProven { .. }
            | Self::EkNotPinned { .. }
            | Self::NoAkCertificate { .. }
            | Self::AkCertificateUntrusted { .. }
            | Self::AkCertificateKeyMismatch { .. }
            | Self::AkCertificateInvalid { .. } => "untrusted-key",
            Self::ActivatedAkMismatch { .. } => "activation",
            Self::Activation(e) => e.reason(),
            Self::BadSignature { .. } => "signature",
            Self::Sha1NotAllowed { .. } => "weak-hash",
            Self::PcrSetMismatch(_) | Self::PcrDigestMismatch | Self::PcrNotQuoted(_) => "pcrs",
            Self::BootPcrMismatch { .. } => "boot-pcr",
            Self::Boot(_) => "boot",
            Self::Runtime(_) => "runtime",
            Self::EventLog(_) => "event-log",
            Self::NodeEvidenceRequired { .. } | Self::EnclaveEvidenceRequired { .. } => {
                "evidence-mode"
            }
            Self::NodeLog(e) => node_log_reason(e),
            Self::Pod(_) => "pod",
            Self::EngineNotAllowed(_) => "engine",
            Self::ModelNotAllowed(_) => "model",
            Self::ConfigNotAllowed(_) => "config",
            Self::ClockRegression { .. } => "clock",
        }
    }
}

/// Node log failures by what they say about the node: its log does not
/// explain the quote, something ran that the node policy refuses, or the
/// TLS key is not bound to one key-holder container.
fn node_log_reason(error: &NodeLogError) -> &'static str {
    match error {
        NodeLogError::BadNodePolicy { .. }
        | NodeLogError::NodePolicyNotAllowed { .. }
        | NodeLogError::NotAllowed { .. } => "node-policy",
        NodeLogError::KeyFromNonHolder { .. }
        | NodeLogError::KeyRegisteredTwice { .. }
        | NodeLogError::KeyNotMeasured(_)
        | NodeLogError::KeyBoundTwice(_) => "channel-binding",
        _ => "node-log",
    }
}
