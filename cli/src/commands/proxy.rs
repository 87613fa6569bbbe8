//! `aver proxy`: a local plain-HTTP endpoint in front of attested enclaves,
//! for clients that keep their own SDKs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::cluster::ClusterArgs;
use super::{load_policy, CommandResult};
use aver_proxy::{Listen, Proxy, ProxyConfig, Upstream};

#[derive(clap::Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct Args {
    /// Attestation policy (YAML or JSON) every upstream connection must
    /// satisfy before it carries a request.
    #[arg(long, env = "AVER_POLICY")]
    pub policy: PathBuf,
    /// The enclave to forward to, https://HOST:PORT.
    #[arg(
        long,
        env = "AVER_UPSTREAM",
        value_name = "URL",
        required_unless_present = "from_cluster",
        conflicts_with = "from_cluster"
    )]
    pub upstream: Option<String>,
    /// Forward to the endpoints listed in this ConfidentialModel's status
    /// (round robin), each attested here against --policy; the list is
    /// read again every --endpoint-refresh seconds.
    #[arg(long, env = "AVER_FROM_CLUSTER", value_name = "NAME")]
    pub from_cluster: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// TCP address to listen on (plain HTTP). Port 0 picks a free port; the
    /// first line on stdout names it.
    #[arg(
        long,
        env = "AVER_LISTEN",
        default_value = "127.0.0.1:8080",
        conflicts_with = "unix"
    )]
    pub listen: SocketAddr,
    /// Listen on a unix socket at PATH instead (mode 0600: only this user
    /// can connect).
    #[arg(long, env = "AVER_UNIX", value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Allow a --listen address that is not loopback. Anyone who can reach
    /// it can then use the attested upstream.
    #[arg(long, env = "AVER_ALLOW_REMOTE")]
    pub allow_remote: bool,
    /// Most connections kept per upstream endpoint (busy + idle).
    #[arg(long, env = "AVER_MAX_CONNECTIONS", default_value_t = 32)]
    pub max_connections: usize,
    /// Seconds to wait for an upstream connection and TLS handshake.
    #[arg(long, env = "AVER_CONNECT_TIMEOUT", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Seconds an endpoint that failed stays out of rotation.
    #[arg(long, env = "AVER_RETRY_AFTER", default_value_t = 10)]
    pub retry_after: u64,
    /// Seconds between reads of the ConfidentialModel's endpoint list.
    #[arg(long, env = "AVER_ENDPOINT_REFRESH", default_value_t = 30)]
    pub endpoint_refresh: u64,
}

const AFTER_HELP: &str = "\
Every upstream connection is attested (fresh nonce, evidence bound to that
TLS connection's key) before it carries a request, pooled, and re-attested
before the policy's maxEvidenceAge runs out. A request that cannot go to an
attested endpoint is answered 502 with header x-aver-error: <reason> and
{\"error\":{\"type\":\"aver_attestation_error\",\"code\":\"<reason>\",\"message\":\"...\"}};
none of its bytes leave this machine.

GET /aver/status   endpoints, attested or not, measurements, evidence age, last error
GET /aver/metrics  Prometheus metrics
anything else      forwarded to an attested endpoint

The local hop is plain HTTP: anyone who can connect to the port can use the
attested upstream. A unix socket (--unix) limits that to this user.

Example, with the OpenAI Python SDK:
  aver proxy --policy policy.yaml --upstream https://10.0.0.7:8443
  openai.OpenAI(base_url=\"http://127.0.0.1:8080/v1\", api_key=\"unused\")

Logs go to stderr (AVER_LOG=debug for more); stdout's first line is
`listening on http://ADDR` or `listening on unix:PATH`.";

pub fn run(args: Args) -> CommandResult {
    let policy = load_policy(&args.policy)?.into_policy();
    let upstream = match (&args.upstream, &args.from_cluster) {
        (Some(url), _) => Upstream::Url(url.clone()),
        (None, Some(name)) => Upstream::Cluster {
            name: name.clone(),
            namespace: args.cluster.namespace.clone(),
        },
        (None, None) => return Err(anyhow::anyhow!("give --upstream or --from-cluster").into()),
    };
    let listen = match &args.unix {
        Some(path) => Listen::Unix(path.clone()),
        None => Listen::Tcp(args.listen),
    };
    let config = ProxyConfig::new(policy, upstream, listen)
        .with_allow_remote(args.allow_remote)
        .with_connect_timeout(Duration::from_secs(args.connect_timeout))
        .with_max_connections_per_endpoint(args.max_connections)
        .with_retry_after(Duration::from_secs(args.retry_after))
        .with_endpoint_refresh(Duration::from_secs(args.endpoint_refresh))
        .with_kubeconfig(
            args.cluster.kubeconfig.clone(),
            args.cluster.context.clone(),
        );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let proxy = Proxy::bind(config).await.map_err(anyhow::Error::from)?;
        println!("listening on {}", proxy.local_addr());
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let status = proxy.status();
        tracing::info!(
            upstream = %status.upstream,
            endpoints = status.endpoints.len(),
            max_evidence_age_s = status.max_evidence_age_seconds,
            "proxy ready; upstream connections are attested on first use"
        );
        proxy
            .run(shutdown_signal())
            .await
            .map_err(anyhow::Error::from)?;
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = sigterm => {}
    }
}
