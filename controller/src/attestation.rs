//! The seam between the controller and attestation: one endpoint in, a
//! verified certificate and measurements (or a reason) out.
//!
//! The controller never checks evidence itself. [`EndpointAttester`] is
//! implemented on top of the verifier's attested TLS client (open TLS to the
//! enclave, fetch evidence for a fresh nonce on that connection, verify it
//! with `aver_verifier::verify`); tests implement it directly. Everything
//! around it — scheduling, status, events, pod deletion — is the
//! controller's and is tested without a TPM.

use std::future::Future;
use std::time::Duration;

use aver_crds::{AkActivation, BootPolicyResult, EndpointMeasurements, Sha256Digest};
use aver_verifier::ValidatedPolicy;
use aver_verifier::{VerifiedReport, VerifyError};
use base64::Engine as _;

/// One endpoint to attest: a ready pod's enclave.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttestTarget {
    /// Pod name.
    pub pod: String,
    /// Pod UID, so that a replacement pod with the same name is a new target
    /// and a pod deletion hits only the pod that failed.
    pub pod_uid: String,
    /// Node the pod runs on.
    pub node: String,
    /// Pod IP.
    pub address: String,
    /// Enclave TLS port.
    pub port: u16,
}

/// What a successful attestation established about an endpoint: the
/// certificate whose key the evidence is bound to, and the measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedEndpoint {
    /// The server's leaf certificate, DER, as seen on the attested connection.
    pub certificate_der: Vec<u8>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, which the evidence
    /// is bound to.
    pub spki_sha256: Sha256Digest,
    /// The verified measurements, as published in status.
    pub measurements: EndpointMeasurements,
}

impl AttestedEndpoint {
    /// Summarises a verifier report for status. Only what clients need to
    /// pin and to see what runs is kept; the report itself stays with the
    /// attester.
    pub fn from_report(certificate_der: Vec<u8>, report: &VerifiedReport) -> Self {
        Self {
            certificate_der,
            spki_sha256: report.spki_sha256(),
            measurements: EndpointMeasurements {
                model: report.launch().model(),
                engine: report.launch().engine(),
                serving_config: report.launch().serving_config(),
                ak_name: report.ak_name().to_owned(),
                boot_policy: BootPolicyResult {
                    result: BootPolicyResult::PASSED.to_owned(),
                    checked_pcrs: report.boot_pcrs().iter().map(|p| p.pcr).collect(),
                    proven: report
                        .platform()
                        .iter()
                        .flat_map(|p| p.boot().into_iter().chain(p.runtime()))
                        .flat_map(|log| log.statements().iter())
                        .take(MAX_PROVEN_STATEMENTS)
                        .map(|s| truncated(s, MAX_PROVEN_CHARS))
                        .collect(),
                },
                ak_activation: report.activation().map(|a| AkActivation {
                    ek_certificate_sha256: a.ek().certificate_sha256,
                    ek_kind: a.ek().kind.to_string(),
                    ek_issuer: a.ek().issuer.clone(),
                    tpm: a.ek().tpm.as_ref().map(|t| t.describe()),
                    activated_at: a.activated_at().to_owned(),
                }),
            },
        }
    }

    /// The certificate as PEM, the form status carries.
    pub fn certificate_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.certificate_der);
        let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 60);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            // Base64 output is ASCII, so every chunk is valid UTF-8.
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }
}

/// Why an endpoint was not attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// Evidence was obtained and refused: the endpoint is not what the
    /// policy allows (or lies). Its pod is deleted at once if so configured.
    #[error("evidence rejected: {0}")]
    Rejected(#[from] VerifyError),
    /// The endpoint answered in a way no honest enclave does (bad HTTP
    /// status, oversized or unparsable evidence, no certificate). Treated
    /// like a rejection.
    #[error("{message}")]
    Protocol {
        /// Stable label for metrics and events, e.g. "evidence-fetch", "tls".
        reason: &'static str,
        /// Human-readable detail, for logs and the Event note.
        message: String,
    },
    /// The endpoint could not be reached or the connection broke
    /// (refused, reset, TLS handshake cut short). May be transient: its pod
    /// is deleted only after several in a row.
    #[error("{message}")]
    Unavailable {
        /// Stable label, e.g. "unreachable", "tls".
        reason: &'static str,
        /// Human-readable detail, for logs and the Event note.
        message: String,
    },
    /// The attestation did not finish in time. Counted like unreachable.
    #[error("attestation did not finish within {0:?}")]
    Timeout(Duration),
}

impl AttestError {
    /// A short, stable label for metrics, events and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rejected(e) => e.reason(),
            Self::Protocol { reason, .. } => reason,
            Self::Unavailable { reason, .. } => reason,
            Self::Timeout(_) => "timeout",
        }
    }

    /// Whether the failure says the endpoint is untrustworthy (as opposed to
    /// merely unavailable right now).
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::Rejected(_) | Self::Protocol { .. })
    }
}

/// Attests one endpoint against a policy.
///
/// Implementations must use a fresh nonce per call and bind the evidence to
/// the TLS key of the connection they fetched it on; the returned
/// certificate is that connection's. They need not enforce a time limit:
/// the caller does.
pub trait EndpointAttester: Send + Sync + 'static {
    /// Attests `target` once: the endpoint it reached and verified against
    /// `policy`, or why not.
    fn attest(
        &self,
        target: &AttestTarget,
        policy: &ValidatedPolicy,
    ) -> impl Future<Output = Result<AttestedEndpoint, AttestError>> + Send;
}

/// Bounds of `bootPolicy.proven` in the CRD schema: a statement quoting a
/// long kernel command line is cut rather than failing the status update.
const MAX_PROVEN_STATEMENTS: usize = 64;
const MAX_PROVEN_CHARS: usize = 1024;

fn truncated(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_statements_are_cut_to_the_schema_bound() {
        let long = "x".repeat(5000);
        let cut = truncated(&long, MAX_PROVEN_CHARS);
        assert_eq!(cut.chars().count(), MAX_PROVEN_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(truncated("short", MAX_PROVEN_CHARS), "short");
    }

    #[test]
    fn pem_wraps_at_64_columns() {
        let endpoint = AttestedEndpoint {
            certificate_der: vec![0xab; 100],
            spki_sha256: Sha256Digest([1; 32]),
            measurements: EndpointMeasurements {
                model: Sha256Digest([2; 32]),
                engine: Some(Sha256Digest([3; 32])),
                serving_config: Some(Sha256Digest([4; 32])),
                ak_name: "000b".into(),
                boot_policy: BootPolicyResult {
                    result: "Passed".into(),
                    checked_pcrs: vec![0],
                    proven: vec![],
                },
                ak_activation: None,
            },
        };
        let pem = endpoint.certificate_pem();
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        assert_eq!(lines[1].len(), 64);
        let body: String = lines[1..lines.len() - 1].concat();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .expect("base64"),
            vec![0xab; 100]
        );
    }

    #[test]
    fn reasons_and_severity() {
        assert_eq!(
            AttestError::Rejected(VerifyError::QualifyingDataMismatch).reason(),
            "freshness"
        );
        assert!(AttestError::Rejected(VerifyError::PcrDigestMismatch).is_rejection());
        assert!(!AttestError::Timeout(Duration::from_secs(1)).is_rejection());
        let unreachable = AttestError::Unavailable {
            reason: "unreachable",
            message: "refused".into(),
        };
        assert_eq!(unreachable.reason(), "unreachable");
        assert!(!unreachable.is_rejection());
    }
}
