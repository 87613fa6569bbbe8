//! Settings of `aver-controller`: command-line flags, each also readable
//! from an `AVER_*` environment variable, and the plain structs the library
//! parts take (so that they are built in tests without parsing flags).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use aver_workload::KubeletParams;
use clap::Parser;

/// The format of `--log-format`, shared by every aver binary.
pub use aver_logging::LogFormat;
pub use aver_workload::render::HARDENED_TAINT_KEY;
pub use aver_workload::WorkloadConfig;

/// Field manager of every server-side apply, so that `managedFields` show
/// which fields the controller owns and conflicts name it.
pub const FIELD_MANAGER: &str = "aver-controller";

/// Default label of nodes with a usable TPM.
pub const DEFAULT_TPM_NODE_LABEL: &str = "aver.dev/tpm=true";

/// Kubernetes operator for ConfidentialModel resources: runs aver-enclave
/// workloads on TPM nodes, re-attests every endpoint and publishes the
/// verified ones in status.
#[derive(Debug, Clone, Parser)]
#[command(name = "aver-controller", version, about, long_about = None)]
pub struct Args {
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "AVER_NAMESPACE")]
    pub namespace: Option<String>,

    /// Image of aver-enclave, pinned by digest in production.
    #[arg(long, env = "AVER_ENCLAVE_IMAGE")]
    pub enclave_image: String,

    /// Node label (KEY=VALUE) that marks nodes with a usable TPM, used unless
    /// a ConfidentialModel sets spec.tpm.nodeSelector.
    #[arg(long, env = "AVER_TPM_NODE_LABEL", default_value = DEFAULT_TPM_NODE_LABEL, value_parser = parse_label)]
    pub tpm_node_label: (String, String),

    /// Directory on each node that keeps the enclave's workload event log.
    /// It belongs to the node's TPM (whose PCRs it replays), not to a pod.
    #[arg(long, env = "AVER_STATE_HOST_PATH", default_value = "/var/lib/aver")]
    pub state_host_path: String,

    /// Host directories (comma-separated) below which a ConfidentialModel's
    /// spec.model.source.hostPath may lie. Empty (the default): host path
    /// sources are refused, since a model pod could otherwise read any
    /// directory of the node.
    #[arg(long, env = "AVER_ALLOWED_MODEL_HOST_PATHS", value_delimiter = ',', value_parser = parse_host_dir)]
    pub allowed_model_host_paths: Vec<String>,

    /// ClusterIP:port of the default/kubernetes Service, whose variables the
    /// kubelet injects into every container, so they are part of the spec
    /// aver-node measures (measurement: node). Default: from
    /// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, which the
    /// kubelet sets in the controller's own pod.
    #[arg(long, env = "AVER_KUBERNETES_SERVICE")]
    pub kubernetes_service: Option<SocketAddr>,

    /// Most attestations in flight at once.
    #[arg(long, env = "AVER_ATTEST_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub attest_concurrency: u32,

    /// Time limit of one attestation (connect, evidence, verification).
    #[arg(long, env = "AVER_ATTEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub attest_timeout: Duration,

    /// Fraction of the interval by which re-attestations are spread early
    /// (0 = all at the interval, 0.5 = anywhere in its second half).
    #[arg(long, env = "AVER_ATTEST_JITTER", default_value_t = 0.1, value_parser = parse_fraction)]
    pub attest_jitter: f64,

    /// Delete the pod of an endpoint whose evidence is refused, so that it is
    /// rescheduled. An endpoint that is merely unavailable (unreachable,
    /// timed out, busy) is left out of the status but never deleted: load
    /// and network failures prove nothing about the pod.
    #[arg(long, env = "AVER_DELETE_FAILED_PODS", default_value_t = true, action = clap::ArgAction::Set)]
    pub delete_failed_pods: bool,

    /// Most pods deleted per minute across all models (a token bucket), so
    /// that a bad policy or a verifier bug cannot delete the whole fleet at
    /// once; deletions over it are deferred to the pod's next failure.
    #[arg(long, env = "AVER_MAX_POD_DELETIONS_PER_MINUTE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_pod_deletions_per_minute: u32,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "AVER_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Elect a leader through a coordination.k8s.io Lease, so that several
    /// replicas can run and only one acts.
    #[arg(long, env = "AVER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "AVER_LEASE_NAME", default_value = "aver-controller")]
    pub lease_name: String,

    /// Namespace of the Lease (default: --namespace, else "default"; the
    /// chart sets it to the controller's own namespace).
    #[arg(long, env = "AVER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Identity of this replica in the Lease (default: the host name, which
    /// is the pod name in a cluster).
    #[arg(long, env = "AVER_POD_NAME")]
    pub identity: Option<String>,

    /// How long a leader's Lease is honoured without renewal.
    #[arg(long, env = "AVER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps trying to renew before it gives up.
    #[arg(long, env = "AVER_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often candidates and the leader try to acquire or renew.
    #[arg(long, env = "AVER_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// Log format on stderr. AVER_LOG sets the filter (e.g. AVER_LOG=debug;
    /// RUST_LOG is read when it is unset).
    #[arg(long, env = "AVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How the re-attestation loop paces itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ReattestConfig {
    /// Most attestations in flight.
    pub concurrency: usize,
    /// Time limit of one attestation.
    pub timeout: Duration,
    /// Fraction of the interval by which attestations are spread early.
    pub jitter: f64,
    /// How often the endpoint source is re-read.
    pub refresh: Duration,
    /// Whether rejected endpoints' pods are deleted at all.
    pub delete_failed_pods: bool,
    /// Fleet-wide budget of pod deletions per minute.
    pub max_pod_deletions_per_minute: u32,
}

impl Default for ReattestConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            timeout: Duration::from_secs(10),
            jitter: 0.1,
            refresh: Duration::from_secs(2),
            delete_failed_pods: true,
            max_pod_deletions_per_minute: 10,
        }
    }
}

impl Args {
    /// Parses flags as the binary does (for callers without clap in scope).
    pub fn try_from_flags<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Self as Parser>::try_parse_from(argv)
    }

    /// The workload builders' settings.
    pub fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            enclave_image: self.enclave_image.clone(),
            tpm_node_selector: BTreeMap::from([self.tpm_node_label.clone()]),
            state_host_path: self.state_host_path.clone(),
            allowed_model_host_paths: self.allowed_model_host_paths.clone(),
        }
    }

    /// What the kubelet's conversion of node-measured pods depends on, if
    /// the `kubernetes` Service's address is known (flag, or the variables
    /// the kubelet gave this process).
    pub fn kubelet(&self) -> Option<KubeletParams> {
        self.kubernetes_service
            .or_else(|| {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
                let port = std::env::var("KUBERNETES_SERVICE_PORT").ok()?;
                let ip: std::net::IpAddr = host.parse().ok()?;
                Some(SocketAddr::new(ip, port.parse().ok()?))
            })
            .map(KubeletParams::new)
    }

    /// The re-attestation loop's settings.
    pub fn reattest(&self) -> ReattestConfig {
        ReattestConfig {
            concurrency: usize::try_from(self.attest_concurrency).unwrap_or(64),
            timeout: self.attest_timeout,
            jitter: self.attest_jitter,
            max_pod_deletions_per_minute: self.max_pod_deletions_per_minute,
            delete_failed_pods: self.delete_failed_pods,
            ..ReattestConfig::default()
        }
    }
}

/// `KEY=VALUE`, both non-empty.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not a node label KEY=VALUE")),
    }
}

/// An absolute directory without `.`, `..` or empty components.
fn parse_host_dir(text: &str) -> Result<String, String> {
    let dir = text.trim_end_matches('/');
    let clean = dir.starts_with('/')
        && dir[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if clean {
        Ok(dir.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an absolute directory without . or .. components (and / is too much)"
        ))
    }
}

/// Durations as in the resource: an integer and `ms`, `s`, `m` or `h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like \"500ms\", \"10s\" or \"1m\"");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=0.5).contains(&f) => Ok(f),
        _ => Err(format!("{text:?} is not a fraction from 0 to 0.5")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_env_style_flags_parse() {
        let args = Args::try_parse_from([
            "aver-controller",
            "--enclave-image",
            "aver/enclave@sha256:00",
        ])
        .expect("parses");
        assert_eq!(args.tpm_node_label, ("aver.dev/tpm".into(), "true".into()));
        assert!(args.delete_failed_pods);
        assert!(args.leader_elect);
        assert_eq!(args.attest_timeout, Duration::from_secs(10));
        assert_eq!(args.log_format, LogFormat::Text);
        let workload = args.workload();
        assert!(workload.allowed_model_host_paths.is_empty());
        assert_eq!(
            workload.tpm_node_selector,
            BTreeMap::from([("aver.dev/tpm".to_owned(), "true".to_owned())])
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            ["--tpm-node-label", "no-equals"],
            ["--attest-timeout", "10"],
            ["--attest-jitter", "0.9"],
            ["--attest-concurrency", "0"],
            ["--delete-failed-pods", "maybe"],
            ["--allowed-model-host-paths", "models"],
            ["--allowed-model-host-paths", "/"],
            ["--allowed-model-host-paths", "/srv/../etc"],
            ["--kubernetes-service", "kubernetes.default"],
        ] {
            let mut argv = vec!["aver-controller", "--enclave-image", "x"];
            argv.extend(bad);
            assert!(Args::try_parse_from(&argv).is_err(), "{bad:?} accepted");
        }
        let args = Args::try_parse_from([
            "aver-controller",
            "--enclave-image",
            "x",
            "--delete-failed-pods",
            "false",
            "--log-format",
            "json",
        ])
        .expect("parses");
        assert!(!args.delete_failed_pods);
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn model_host_paths_and_kubernetes_service() {
        let args = Args::try_parse_from([
            "aver-controller",
            "--enclave-image",
            "x",
            "--allowed-model-host-paths",
            "/srv/models/,/data",
            "--kubernetes-service",
            "10.0.0.1:6443",
        ])
        .expect("parses");
        assert_eq!(
            args.workload().allowed_model_host_paths,
            ["/srv/models", "/data"]
        );
        let kubelet = args.kubelet().expect("service known");
        assert_eq!(kubelet.kubernetes_service, "10.0.0.1:6443".parse().unwrap());
    }
}
