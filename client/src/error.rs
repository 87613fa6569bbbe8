//! Why an attested request did not happen.

use aver_verifier::VerifyError;

/// Every failure before, during or after attestation. Whatever the variant,
/// no byte of the caller's request was sent unless attestation succeeded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL does not parse, is not `https://`, has no host, or its host
    /// is not a valid TLS server name.
    #[error("invalid endpoint {0:?}: expected https://HOST:PORT[/path]")]
    BadEndpoint(String),
    /// The TCP connection was refused or failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The TCP connect or the TLS handshake took longer than the connect
    /// timeout; the payload is the endpoint's `host:port`.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    /// The TLS handshake failed, including a pinned connection whose server
    /// presented a key that is not pinned.
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// Why rustls or the socket ended the handshake.
        source: std::io::Error,
    },
    /// The handshake completed but no certificate was presented, or its
    /// SPKI could not be extracted to bind the evidence to.
    #[error("{endpoint} presented no usable certificate: {reason}")]
    Certificate {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// What was wrong with the certificate.
        reason: String,
    },
    /// The HTTP/1 handshake or a request on the connection failed.
    #[error("HTTP exchange with {endpoint} failed: {source}")]
    Http {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// Why hyper gave up on the exchange.
        source: hyper::Error,
    },
    /// The server answered the evidence request with a status other than 200.
    #[error("{endpoint} answered the evidence request with HTTP {status}")]
    EvidenceStatus {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// The status it answered with.
        status: http::StatusCode,
    },
    /// The evidence body exceeded the limit (or was cut short while read).
    #[error("evidence from {endpoint} is larger than {limit} bytes")]
    EvidenceTooLarge {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// The limit, [`MAX_EVIDENCE_BYTES`](aver_verifier::evidence::MAX_EVIDENCE_BYTES).
        limit: usize,
    },
    /// The activation exchange failed at the HTTP level: an unexpected
    /// status, a refused offer, or an answer too large or cut short.
    #[error("{endpoint} answered the activation request with HTTP {status}: {message}")]
    ActivationStatus {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// The status it answered with (422 when it refused the offer).
        status: http::StatusCode,
        /// The server's error message, or what was wrong with the answer.
        message: String,
    },
    /// The evidence or the activation did not verify against the policy,
    /// or could not be parsed.
    #[error("attestation refused: {0}")]
    Verify(#[from] VerifyError),
    /// A request could not be built: the caller's URI or `Host`, or one the
    /// client makes itself; also EK certificate validation that stopped.
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
