//! The production [`EndpointAttester`]: the verifier's attested TLS client.
//!
//! Each call opens a new TLS connection to the pod, fetches evidence for a
//! fresh nonce on that connection and verifies it against the model's policy
//! bound to the connection's key (`AttestedConnection::attest`). The TPM
//! clock of every attestation key is tracked across calls, so a replayed or
//! rolled-back quote is refused even when it is otherwise valid.
//!
//! When a policy trusts AKs through `trust.ekRoots`, each node's AK is
//! activated (EK certificate chain + TPM2_ActivateCredential) the first
//! time it is seen and the proof is kept in an in-memory cache keyed by EK
//! certificate, so re-attestation does not repeat it. The proof is also
//! published in `status.endpoints[].measurements.akActivation`, but never
//! read back: after a controller restart each TPM is activated once more.

use std::sync::Mutex;
use std::time::Duration;

use aver_client::{ActivationMode, AttestedConnection, ClientError, Endpoint};
use aver_verifier::ek::ActivationCache;
use aver_verifier::ClockHistory;
use aver_verifier::ValidatedPolicy;

use crate::attestation::{AttestError, AttestTarget, AttestedEndpoint, EndpointAttester};

/// Attests over TLS with the verifier library.
pub struct TlsAttester {
    connect_timeout: Duration,
    clocks: Mutex<ClockHistory>,
    activations: ActivationCache,
}

impl TlsAttester {
    /// `connect_timeout` bounds the TCP connect and the TLS handshake of each
    /// attestation, not the whole of it (the caller times that).
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            clocks: Mutex::new(ClockHistory::new()),
            activations: ActivationCache::default(),
        }
    }

    /// AKs activated so far, one per TPM.
    pub fn activations(&self) -> &ActivationCache {
        &self.activations
    }
}

impl EndpointAttester for TlsAttester {
    async fn attest(
        &self,
        target: &AttestTarget,
        policy: &ValidatedPolicy,
    ) -> Result<AttestedEndpoint, AttestError> {
        let endpoint = Endpoint::new(target.address.clone(), target.port);
        let connection = AttestedConnection::attest_with(
            &endpoint,
            policy,
            self.connect_timeout,
            ActivationMode::IfNeeded(&self.activations),
        )
        .await
        .map_err(classify)?;
        let report = connection.report().ok_or_else(|| AttestError::Protocol {
            reason: "evidence-fetch",
            message: format!(
                "{}: connection has no verified report",
                endpoint.authority()
            ),
        })?;
        self.clocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(report)?;
        Ok(AttestedEndpoint::from_report(
            connection.certificate_der().to_vec(),
            report,
        ))
    }
}

/// Sorts client failures into the controller's classes: refused evidence,
/// dishonest answers (treated like refusals), and unavailability — the
/// network (refused, reset, TLS or HTTP exchange cut short) or load (the
/// enclave says 429 or 503, or 408 for a request it could not finish in
/// time). Unavailability never deletes a pod.
fn classify(error: ClientError) -> AttestError {
    let reason = error.reason();
    match error {
        ClientError::Verify(e) => AttestError::Rejected(e),
        ClientError::Connect { .. }
        | ClientError::ConnectTimeout(_)
        | ClientError::Tls { .. }
        | ClientError::Http { .. } => AttestError::Unavailable {
            reason,
            message: error.to_string(),
        },
        ClientError::EvidenceStatus { status, .. }
        | ClientError::ActivationStatus { status, .. }
            if is_busy(status) =>
        {
            AttestError::Unavailable {
                reason: "busy",
                message: error.to_string(),
            }
        }
        other => AttestError::Protocol {
            reason,
            message: other.to_string(),
        },
    }
}

/// Statuses an honest enclave answers under load.
fn is_busy(status: http::StatusCode) -> bool {
    matches!(
        status,
        http::StatusCode::TOO_MANY_REQUESTS
            | http::StatusCode::SERVICE_UNAVAILABLE
            | http::StatusCode::REQUEST_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_unavailable_not_rejected() {
        // Bind then drop: nothing listens on this port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let target = AttestTarget {
            pod: "p".into(),
            pod_uid: "u".into(),
            node: "n".into(),
            address: "127.0.0.1".into(),
            port,
        };
        let policy =
            ValidatedPolicy::new(crate::workload::tests::model("m").spec.attestation).unwrap();
        let error = TlsAttester::new(Duration::from_secs(2))
            .attest(&target, &policy)
            .await
            .expect_err("nothing listens");
        assert_eq!(error.reason(), "unreachable");
        assert!(!error.is_rejection());
    }

    #[test]
    fn verification_failures_are_rejections() {
        let error = classify(ClientError::Verify(
            aver_verifier::VerifyError::PcrDigestMismatch,
        ));
        assert!(error.is_rejection());
        assert_eq!(error.reason(), "pcrs");
        let error = classify(ClientError::EvidenceStatus {
            endpoint: "x".into(),
            status: http::StatusCode::NOT_FOUND,
        });
        assert!(error.is_rejection());
        assert_eq!(error.reason(), "evidence-fetch");
    }

    #[test]
    fn an_enclave_under_load_is_unavailable_not_rejected() {
        for status in [
            http::StatusCode::TOO_MANY_REQUESTS,
            http::StatusCode::SERVICE_UNAVAILABLE,
            http::StatusCode::REQUEST_TIMEOUT,
        ] {
            let error = classify(ClientError::EvidenceStatus {
                endpoint: "x".into(),
                status,
            });
            assert!(!error.is_rejection(), "{status}");
            assert_eq!(error.reason(), "busy");
            let error = classify(ClientError::ActivationStatus {
                endpoint: "x".into(),
                status,
                message: "retry later".into(),
            });
            assert!(!error.is_rejection(), "{status}");
        }
        let error = classify(ClientError::ActivationStatus {
            endpoint: "x".into(),
            status: http::StatusCode::INTERNAL_SERVER_ERROR,
            message: "nonsense".into(),
        });
        assert!(
            error.is_rejection(),
            "other statuses are still protocol failures"
        );
    }
}
