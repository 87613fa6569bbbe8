//! Why the proxy could not start or run.

use std::net::SocketAddr;
use std::path::PathBuf;

use aver_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The policy cannot be enforced (invalid, or a bad maxEvidenceAge).
    #[error("invalid policy: {0}")]
    Policy(ClientError),
    #[error("invalid upstream {0:?}: expected https://HOST:PORT")]
    BadUpstream(String),
    #[error("refusing to listen on {0}, which is not a loopback address: anyone who can reach it could use the attested upstream (allow it explicitly with allow_remote / --allow-remote)")]
    RemoteListen(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot read the upstream endpoints from the cluster: {0}")]
    Cluster(String),
    #[error("the proxy is already running")]
    AlreadyRunning,
    #[error("accepting connections on {addr} failed: {source}")]
    Accept {
        addr: String,
        source: std::io::Error,
    },
    #[error("unix socket path {0} is in use by something that is not a socket")]
    NotASocket(PathBuf),
}
