//! The agent socket client, for the enclave.
//!
//! One connection per call: calls are rare (a key registration at start, a
//! quote per batch of verifiers) and a fresh connection keeps the caller's
//! identity simple (the agent identifies each connection when it accepts it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::protocol::{
    ErrorBody, QualifyingData, QuoteRequest, QuoteResponse, TlsKeyRequest, QUOTE_PATH, TLS_KEY_PATH,
};

/// Largest answer the client reads: a quote carries the whole node log.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// How long a call may take unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the node agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node agent connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the node agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered with an error status and its `{"error"}` line.
    #[error("the node agent refused {path} ({status}): {message}")]
    Refused {
        path: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("the node agent's answer to {path} is invalid: {reason}")]
    BadResponse { path: &'static str, reason: String },
    #[error("cannot encode the request to {path}: {reason}")]
    Encode { path: &'static str, reason: String },
}

/// A client of the agent socket at one path.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AgentClient {
    /// A client for the agent socket at `socket` (e.g.
    /// `/run/aver-node/agent.sock`). Nothing is connected until a call.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds every call (connect, request and answer) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `POST /v1/tls-key`.
    pub async fn register_tls_key(&self, request: &TlsKeyRequest) -> Result<(), ClientError> {
        let body = encode(TLS_KEY_PATH, request)?;
        let (status, _) = self.post(TLS_KEY_PATH, body).await?;
        if status != StatusCode::NO_CONTENT && status != StatusCode::OK {
            return Err(ClientError::BadResponse {
                path: TLS_KEY_PATH,
                reason: format!("unexpected status {status}"),
            });
        }
        Ok(())
    }

    /// `POST /v1/quote`: a quote bound to `qualifying`, with the node log.
    pub async fn quote(&self, qualifying: [u8; 32]) -> Result<QuoteResponse, ClientError> {
        let body = encode(
            QUOTE_PATH,
            &QuoteRequest {
                qualifying_data: QualifyingData(qualifying),
            },
        )?;
        let (_, bytes) = self.post(QUOTE_PATH, body).await?;
        decode(QUOTE_PATH, &bytes)
    }

    /// Posts `body` to `path`; a success status and the body, or the
    /// agent's error as [`ClientError::Refused`].
    async fn post(
        &self,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        match tokio::time::timeout(self.timeout, self.post_unbounded(path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    async fn post_unbounded(
        &self,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, "aver-node")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Encode {
                path,
                reason: e.to_string(),
            })?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::BadResponse {
                path,
                reason: format!("cannot read the body: {e}"),
            })?
            .to_bytes();
        drop(sender);
        connection.abort();
        if status.is_success() {
            return Ok((status, bytes));
        }
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => body.error,
            Err(_) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        };
        Err(ClientError::Refused {
            path,
            status,
            message,
        })
    }
}

fn encode<T: serde::Serialize>(path: &'static str, body: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body).map_err(|e| ClientError::Encode {
        path,
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(path: &'static str, bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::BadResponse {
        path,
        reason: e.to_string(),
    })
}
