//! What the proxy listens on, where it sends, and its tunables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aver_crds::AttestationPolicy;

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// One enclave, `https://host:port` (a path, if any, prefixes every
    /// forwarded request's path).
    Url(String),
    /// Every endpoint a ConfidentialModel's status lists (`status.endpoints`),
    /// each attested by this proxy against its own policy; the list is read
    /// again every [`ProxyConfig::endpoint_refresh`].
    #[cfg(feature = "cluster")]
    Cluster {
        /// The ConfidentialModel whose verified endpoints are used.
        name: String,
        /// The namespace it lives in.
        namespace: String,
    },
}

/// Where the proxy accepts plain HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address: loopback only unless [`ProxyConfig::allow_remote`].
    Tcp(SocketAddr),
    /// A unix socket at this path, made owner-only (mode
    /// [`ProxyConfig::unix_mode`]); a stale socket file there is replaced.
    Unix(PathBuf),
}

/// Everything [`crate::Proxy::bind`] needs. Build with [`Self::new`], then
/// set fields directly or with the `with_*` builders.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// What every upstream connection's evidence must satisfy before it
    /// carries a request; its maxEvidenceAge bounds re-attestation.
    pub policy: AttestationPolicy,
    /// The enclave(s) requests are forwarded to.
    pub upstream: Upstream,
    /// Where local clients connect, in plain HTTP/1.1.
    pub listen: Listen,
    /// Accept a TCP listen address that is not loopback. Anyone who can
    /// connect to the port can then use the attested upstream.
    pub allow_remote: bool,
    /// Timeout for the TCP connect and TLS handshake to an enclave, and for
    /// each attestation exchange.
    pub connect_timeout: Duration,
    /// At most this many connections per endpoint (busy + idle); a request
    /// beyond that waits for one to come free.
    pub max_connections_per_endpoint: usize,
    /// Idle pooled connections older than this (idle) are closed.
    pub idle_timeout: Duration,
    /// Re-attest a connection once its evidence is this old. `None`: three
    /// quarters of the policy's `maxEvidenceAge` (at most 30 s before it).
    pub reattest_after: Option<Duration>,
    /// An endpoint that failed attestation or connection stays out of
    /// rotation this long (it is still tried when every endpoint is out).
    pub retry_after: Duration,
    /// How often the cluster's endpoint list is read again.
    pub endpoint_refresh: Duration,
    /// Permission bits of a unix socket.
    pub unix_mode: u32,
    /// Kubeconfig file [default: $KUBECONFIG, ~/.kube/config, or in-cluster].
    #[cfg(feature = "cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[cfg(feature = "cluster")]
    pub kube_context: Option<String>,
}

impl ProxyConfig {
    /// The defaults: loopback only, 10 s connect timeout, 32 connections per
    /// endpoint, 60 s idle timeout, 10 s retry pause, 30 s cluster refresh, mode 0600.
    pub fn new(policy: AttestationPolicy, upstream: Upstream, listen: Listen) -> Self {
        Self {
            policy,
            upstream,
            listen,
            allow_remote: false,
            connect_timeout: Duration::from_secs(10),
            max_connections_per_endpoint: 32,
            idle_timeout: Duration::from_secs(60),
            reattest_after: None,
            retry_after: Duration::from_secs(10),
            endpoint_refresh: Duration::from_secs(30),
            unix_mode: 0o600,
            #[cfg(feature = "cluster")]
            kubeconfig: None,
            #[cfg(feature = "cluster")]
            kube_context: None,
        }
    }

    /// See [`Self::allow_remote`]: exposes the attested upstream to the network.
    pub fn with_allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// See [`Self::connect_timeout`]; a whole attestation (connect, handshake,
    /// evidence exchange) gets three times it.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// See [`Self::max_connections_per_endpoint`]: requests beyond it queue.
    pub fn with_max_connections_per_endpoint(mut self, n: usize) -> Self {
        self.max_connections_per_endpoint = n;
        self
    }

    /// See [`Self::idle_timeout`].
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// See [`Self::reattest_after`]; an age beyond the policy's
    /// maxEvidenceAge is lowered to it.
    pub fn with_reattest_after(mut self, age: Duration) -> Self {
        self.reattest_after = Some(age);
        self
    }

    /// See [`Self::retry_after`].
    pub fn with_retry_after(mut self, pause: Duration) -> Self {
        self.retry_after = pause;
        self
    }

    /// See [`Self::endpoint_refresh`]; only a cluster upstream uses it.
    pub fn with_endpoint_refresh(mut self, every: Duration) -> Self {
        self.endpoint_refresh = every;
        self
    }

    /// See [`Self::unix_mode`]: widen it only for a group that may use the
    /// attested upstream.
    pub fn with_unix_mode(mut self, mode: u32) -> Self {
        self.unix_mode = mode;
        self
    }

    /// Where a cluster upstream is read from: [`Self::kubeconfig`] and
    /// [`Self::kube_context`], `None` for the default of each.
    #[cfg(feature = "cluster")]
    pub fn with_kubeconfig(mut self, path: Option<PathBuf>, context: Option<String>) -> Self {
        self.kubeconfig = path;
        self.kube_context = context;
        self
    }
}

/// The evidence age at which a connection is re-attested: before
/// `max_age` runs out, by a quarter of it (at most 30 s).
pub(crate) fn default_reattest_after(max_age: Duration) -> Duration {
    let margin = (max_age / 4).min(Duration::from_secs(30));
    max_age.saturating_sub(margin)
}
