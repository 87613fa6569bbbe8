//! Why an attested request did not happen.

use aver_verifier::VerifyError;

/// Every failure before, during or after attestation. Whatever the variant,
/// no byte of the caller's request was sent unless attestation succeeded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: expected https://HOST:PORT[/path]")]
    BadEndpoint(String),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("{endpoint} presented no usable certificate: {reason}")]
    Certificate { endpoint: String, reason: String },
    #[error("HTTP exchange with {endpoint} failed: {source}")]
    Http {
        endpoint: String,
        source: hyper::Error,
    },
    #[error("{endpoint} answered the evidence request with HTTP {status}")]
    EvidenceStatus {
        endpoint: String,
        status: http::StatusCode,
    },
    #[error("evidence from {endpoint} is larger than {limit} bytes")]
    EvidenceTooLarge { endpoint: String, limit: usize },
    #[error("{endpoint} answered the activation request with HTTP {status}: {message}")]
    ActivationStatus {
        endpoint: String,
        status: http::StatusCode,
        message: String,
    },
    #[error("attestation refused: {0}")]
    Verify(#[from] VerifyError),
    #[error("invalid request: {0}")]
    Request(String),
}

impl ClientError {
    /// Stable label for metrics: the verification reason, or the stage.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadEndpoint(_) | Self::Request(_) => "request",
            Self::Connect { .. } | Self::ConnectTimeout(_) => "unreachable",
            Self::Tls { .. } | Self::Certificate { .. } => "tls",
            Self::Http { .. } | Self::EvidenceStatus { .. } | Self::EvidenceTooLarge { .. } => {
                "evidence-fetch"
            }
            Self::ActivationStatus { .. } => "activation-fetch",
            Self::Verify(e) => e.reason(),
        }
    }
}
