//! The agent socket: where the enclave container of a confidential pod
//! registers its TLS key and asks for quotes.
//!
//! The socket is the only interface between pods and the node's TPM, so it
//! identifies callers by what the kernel says about them, not by anything
//! they send: `SO_PEERCRED` gives the connecting process, its
//! `/proc/<pid>/cgroup` the container it runs in ([`cgroup`]). What a caller
//! may do is decided by an [`Agent`]; [`server`] only identifies, parses and
//! answers. [`protocol`] and [`client`] are what the enclave uses.

pub mod cgroup;
pub mod client;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;

pub use cgroup::container_id_from_cgroup;
pub use client::{AgentClient, ClientError};
pub use protocol::{QuoteResponse, TlsKeyRequest};
#[cfg(feature = "server")]
pub use server::{serve, AgentServer};

/// Who is calling, as the kernel identified the connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    /// PID of the process that connected, in the agent's PID namespace.
    pub pid: u32,
    /// The container that process runs in, from its cgroup; `None` for a
    /// process outside any container (or one that exited before it was
    /// identified).
    pub container_id: Option<String>,
}

/// Why the agent refused or failed a request; each maps to one HTTP status,
/// and the message becomes the `{"error": …}` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this (403): not the enclave container of a
    /// confidential pod, or a second TLS key registration.
    #[error("{0}")]
    Forbidden(String),
    /// What the request refers to is unknown (404), e.g. a caller whose
    /// container the gate never measured.
    #[error("{0}")]
    NotFound(String),
    /// The agent cannot serve this now (503), e.g. not configured yet.
    #[error("{0}")]
    Unavailable(String),
    /// The caller already has as much work in flight as it may (429).
    #[error("{0}")]
    Busy(String),
    /// The agent failed (500), e.g. the TPM did not answer.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AgentError::BadRequest(_) => http::StatusCode::BAD_REQUEST,
            AgentError::Forbidden(_) => http::StatusCode::FORBIDDEN,
            AgentError::NotFound(_) => http::StatusCode::NOT_FOUND,
            AgentError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            AgentError::Busy(_) => http::StatusCode::TOO_MANY_REQUESTS,
            AgentError::Internal(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What the agent does for an identified caller.
#[async_trait::async_trait]
pub trait Agent: Send + Sync + 'static {
    /// `POST /v1/tls-key`: records the caller's TLS key (`tls-key` event).
    async fn register_tls_key(&self, caller: Caller, req: TlsKeyRequest) -> Result<(), AgentError>;

    /// `POST /v1/quote`: a quote over the node's PCRs bound to `qualifying`,
    /// with the node log.
    async fn quote(
        &self,
        caller: Caller,
        qualifying: [u8; 32],
    ) -> Result<QuoteResponse, AgentError>;
}

/// An agent that refuses everything with 503, for running the CRI proxy
/// before the measuring agent exists.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotImplemented;

#[async_trait::async_trait]
impl Agent for NotImplemented {
    async fn register_tls_key(&self, _: Caller, _: TlsKeyRequest) -> Result<(), AgentError> {
        Err(AgentError::Unavailable("not implemented yet".into()))
    }

    async fn quote(&self, _: Caller, _: [u8; 32]) -> Result<QuoteResponse, AgentError> {
        Err(AgentError::Unavailable("not implemented yet".into()))
    }
}
