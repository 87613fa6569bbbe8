//! Why the proxy could not start or run.

use std::net::SocketAddr;
use std::path::PathBuf;

use aver_client::ClientError;

/// Why [`Proxy::bind`](crate::Proxy::bind) or [`Proxy::run`](crate::Proxy::run)
/// failed; nothing is listening (or still accepting) afterwards.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The policy cannot be enforced (invalid, or a bad maxEvidenceAge).
    #[error("invalid policy: {0}")]
    Policy(ClientError),
    /// [`Upstream::Url`](crate::Upstream::Url) is not an `https://` URL with
    /// a host (the port defaults to 443), or it carries a query.
    #[error("invalid upstream {0:?}: expected https://HOST:PORT")]
    BadUpstream(String),
    /// A non-loopback [`Listen::Tcp`](crate::Listen::Tcp) address without
    /// [`ProxyConfig::allow_remote`](crate::ProxyConfig::allow_remote).
    #[error("refusing to listen on {0}, which is not a loopback address: anyone who can reach it could use the attested upstream (allow it explicitly with allow_remote / --allow-remote)")]
    RemoteListen(SocketAddr),
    /// The listener could not be bound, a unix socket's old file could not be
    /// replaced (another process still listens on it) or its mode not set.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The listen address, `unix:PATH` for a unix socket.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the ConfidentialModel of a cluster upstream failed, or its
    /// status lists no verified endpoints yet.
    #[error("cannot read the upstream endpoints from the cluster: {0}")]
    Cluster(String),
    /// [`Proxy::run`](crate::Proxy::run) was called again: a proxy serves
    /// its listener once.
    #[error("the proxy is already running")]
    AlreadyRunning,
    /// Something other than a socket is at the
    /// [`Listen::Unix`](crate::Listen::Unix) path; it is left alone.
    #[error("unix socket path {0} is in use by something that is not a socket")]
    NotASocket(PathBuf),
}
