//! Command-line and environment settings of `aver-enclave`.
//!
//! Every subcommand shares one definition of the launch settings
//! ([`LaunchArgs`], flattened into each subcommand that launches). The flags
//! the controller renders into pods are named in `aver_crds::protocol`, so
//! the two sides cannot drift; the tests below parse the rendered command
//! line. The library takes typed configurations, never these types.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use aver_crds::protocol::enclave_flags as flags;
use aver_crds::Sha256Digest;
use aver_logging::LogFormat;
use aver_verifier::binding::Nonce;
use clap::{Args, Parser, Subcommand};

use aver_enclave::launch::LaunchConfig;
use aver_enclave::launch_log::{
    check_workload_pcr, DEFAULT_MAX_LAUNCHES, DEFAULT_STATE_DIR, DEFAULT_WORKLOAD_PCR,
};
use aver_enclave::measure::WorkloadInputs;
use aver_enclave::node_agent::NodeAgentConfig;
use aver_enclave::tpm::{parse_persistent_handle as parse_handle, PCR_COUNT};

/// The platform PCRs quoted by default (boot chain 0–9, IMA 10), to which
/// the workload PCR is added.
const DEFAULT_BOOT_PCRS: [u8; 11] = aver_crds::boot_policy::PLATFORM_PCRS;

/// The hardened server in each model pod: measures the workload into the
/// TPM and produces attestation evidence bound to its in-memory TLS key.
#[derive(Debug, Parser)]
#[command(name = "aver-enclave", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr. AVER_LOG sets the filter (e.g. AVER_LOG=debug;
    /// RUST_LOG is read when it is unset).
    #[arg(long, env = "AVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve attested TLS: evidence at /.well-known/aver/evidence,
    /// everything else proxied to the engine. With --node-agent the evidence
    /// comes from aver-node; otherwise the launch is first measured into the
    /// TPM given by --tcti.
    Serve(ServeArgs),
    /// Measure a launch, then write evidence for one nonce to a file and
    /// print the TLS SPKI digest (the value to pass to `aver verify-evidence --spki`).
    Evidence(EvidenceArgs),
    /// Print the attestation key's TPM name (hex), creating and persisting
    /// the key if needed.
    Ak(AkArgs),
}

/// Which TPM and which attestation key.
#[derive(Debug, Clone, Args)]
pub struct TpmArgs {
    /// TPM to use: `device:/dev/tpmrm0` (kernel resource manager) or
    /// `swtpm:host=127.0.0.1,port=2321` (software TPM; its control port is
    /// port + 1).
    #[arg(long = flags::TCTI, env = "AVER_TCTI", default_value = "device:/dev/tpmrm0")]
    pub tcti: String,
    /// Persistent handle of the attestation key (hex with 0x, or decimal).
    #[arg(long, env = "AVER_AK_HANDLE", default_value = "0x81010100", value_parser = parse_handle)]
    pub ak_handle: u32,
}

/// Settings of a launch the enclave records in its own TPM (local TPM
/// mode): where its state lives, which PCRs, and the model it measures.
/// The engine digest is declared by each subcommand, since `serve
/// --node-agent` has none.
#[derive(Debug, Clone, Args)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub tpm: TpmArgs,
    /// Directory holding the workload event log across restarts.
    #[arg(long = flags::STATE_DIR, env = "AVER_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// PCR the launch is measured into (11 to 15).
    #[arg(long = flags::WORKLOAD_PCR, env = "AVER_WORKLOAD_PCR", default_value_t = DEFAULT_WORKLOAD_PCR, value_parser = parse_workload_pcr)]
    pub workload_pcr: u8,
    /// Most launches measured into the workload PCR per boot (TPM reset).
    /// The PCR cannot be compacted, so each start adds a launch sequence
    /// (about 650 bytes) to the log every verifier fetches; the start after
    /// this many is refused, with nothing extended, until the node reboots.
    /// The default, 1024 (about 650 KiB of evidence), lasts a pod crash
    /// looping every 5 minutes three and a half days.
    #[arg(long, env = "AVER_MAX_LAUNCHES", default_value_t = DEFAULT_MAX_LAUNCHES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_launches: u32,
    /// PCRs every quote covers, e.g. `0,1,2,3,4,5,6,7,15` or `0-7,15`
    /// [default: 0-10 and the workload PCR].
    #[arg(long = flags::QUOTE_PCRS, env = "AVER_QUOTE_PCRS")]
    pub quote_pcrs: Option<PcrList>,
    /// Directory of the model files that are measured.
    #[arg(long = flags::MODEL_DIR, env = "AVER_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Serving configuration file [default: none, measured as the SHA-256
    /// of the empty string].
    #[arg(long = flags::SERVING_CONFIG, env = "AVER_SERVING_CONFIG")]
    pub serving_config: Option<PathBuf>,
}

impl LaunchArgs {
    /// The PCRs to quote: as given, or the boot PCRs plus the workload PCR.
    pub fn quote_pcrs(&self) -> Vec<u8> {
        match &self.quote_pcrs {
            Some(list) => list.0.clone(),
            None => {
                let mut pcrs = DEFAULT_BOOT_PCRS.to_vec();
                pcrs.push(self.workload_pcr);
                pcrs.sort_unstable();
                pcrs.dedup();
                pcrs
            }
        }
    }

    /// The launch configuration these settings describe, for an engine
    /// image with digest `engine_digest`.
    pub fn to_config(&self, engine_digest: Sha256Digest) -> LaunchConfig {
        LaunchConfig {
            tcti: self.tpm.tcti.clone(),
            ak_handle: self.tpm.ak_handle,
            state_dir: self.state_dir.clone(),
            workload_pcr: self.workload_pcr,
            quote_pcrs: self.quote_pcrs(),
            max_launches: self.max_launches,
            workload: WorkloadInputs {
                engine_digest,
                model_dir: self.model_dir.clone(),
                serving_config: self.serving_config.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EvidenceArgs {
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Digest of the inference engine image (`sha256:<64 hex>`).
    #[arg(long = flags::ENGINE_DIGEST, env = "AVER_ENGINE_DIGEST")]
    pub engine_digest: Sha256Digest,
    /// The verifier's challenge: 64 hex characters.
    #[arg(long, value_parser = parse_nonce)]
    pub nonce: Nonce,
    /// File the evidence JSON is written to.
    #[arg(long)]
    pub out: PathBuf,
}

impl EvidenceArgs {
    /// The launch configuration these settings describe.
    pub fn to_config(&self) -> LaunchConfig {
        self.launch.to_config(self.engine_digest)
    }
}

/// The `serve` arguments of local TPM mode, which `--node-agent` excludes:
/// in that mode the enclave opens no TPM, keeps no state, and aver-node
/// (not the enclave) identifies the engine and its configuration and
/// decides what is quoted.
const LOCAL_TPM_ARGS: [&str; 9] = [
    "tcti",
    "ak_handle",
    "state_dir",
    "workload_pcr",
    "max_launches",
    "quote_pcrs",
    "engine_digest",
    "serving_config",
    "ek_chain",
];

/// Default of `--node-agent-timeout`.
pub const DEFAULT_NODE_AGENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Digest of the inference engine image (`sha256:<64 hex>`); local TPM
    /// mode only (with --node-agent, aver-node measures the engine).
    #[arg(
        long = flags::ENGINE_DIGEST,
        env = "AVER_ENGINE_DIGEST",
        required_unless_present = "node_agent"
    )]
    pub engine_digest: Option<Sha256Digest>,
    /// Get evidence from the node agent aver-node on this unix socket (e.g.
    /// /run/aver-node/agent.sock) instead of using a TPM: the enclave
    /// registers its TLS key and model digest there at start and never opens
    /// a TPM, and serves evidence v2 (the node log). Without it, the enclave
    /// measures its own launch into the TPM given by --tcti (evidence v1).
    #[arg(
        long = flags::NODE_AGENT,
        env = "AVER_NODE_AGENT",
        value_name = "SOCKET",
        conflicts_with_all = LOCAL_TPM_ARGS
    )]
    pub node_agent: Option<PathBuf>,
    /// With --node-agent: how long to keep retrying while aver-node is not
    /// reachable at start, and the bound on each of its answers (e.g. `30s`,
    /// `500ms`, `2m`; a bare number is seconds) [default: 30s].
    // No clap default: clap does not check `requires` for an argument that
    // has one. The conflicts are spelled out because clap does not require
    // an argument (here --node-agent) that conflicts with one given.
    #[arg(
        long,
        env = "AVER_NODE_AGENT_TIMEOUT",
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "node_agent",
        conflicts_with_all = LOCAL_TPM_ARGS
    )]
    pub node_agent_timeout: Option<Duration>,
    /// Address the TLS listener binds. The default IPv6 wildcard takes
    /// IPv4 connections too (and falls back to 0.0.0.0 without IPv6).
    #[arg(long = flags::LISTEN, env = "AVER_LISTEN", default_value = "[::]:8443")]
    pub listen: std::net::SocketAddr,
    /// The OpenAI-compatible inference engine, e.g. `http://127.0.0.1:8000`.
    #[arg(long = flags::UPSTREAM, env = "AVER_UPSTREAM", value_parser = parse_upstream)]
    pub upstream: String,
    /// Largest request body forwarded to the engine, in bytes.
    #[arg(long, env = "AVER_MAX_REQUEST_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Seconds to wait for the engine's response headers before answering 504.
    #[arg(long, env = "AVER_UPSTREAM_TIMEOUT_SECS", default_value_t = 300)]
    pub upstream_timeout_secs: u64,
    /// Milliseconds an evidence request waits for others to share its quote.
    /// 0 (default): requests that queue while a quote is signed share the
    /// next one, and a lone request waits for nothing.
    #[arg(long, env = "AVER_BATCH_WINDOW_MS", default_value_t = 0)]
    pub batch_window_ms: u64,
    /// Most evidence requests under one TPM quote (1 disables batching).
    #[arg(long, env = "AVER_MAX_BATCH", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_batch: u64,
    /// Most TLS connections open at once; more wait in the listen backlog.
    /// Keep it below the open-files limit (`ulimit -n`).
    #[arg(long, env = "AVER_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Seconds a connection may stay open without a request (also the time
    /// a client has to send a request's headers). Streaming answers are not
    /// cut by it.
    #[arg(long, env = "AVER_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_secs: u64,
    /// Seconds open requests (streamed answers) may run on after SIGTERM
    /// before their connections are closed. Keep the pod's
    /// terminationGracePeriodSeconds above it.
    #[arg(long = flags::DRAIN_TIMEOUT_SECS, env = "AVER_DRAIN_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_timeout_secs: u64,
    /// Seconds an evidence or activation request may take in all (body,
    /// waiting for the TPM, quoting) before it is answered 503 or 408.
    #[arg(long, env = "AVER_REQUEST_DEADLINE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub request_deadline_secs: u64,
    /// Credential activations admitted at once (running or waiting behind
    /// quotes); more are answered 429.
    #[arg(long, env = "AVER_ACTIVATION_QUEUE", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub activation_queue: u64,
    /// Credential activations one client address may ask for per minute;
    /// more are answered 429 with Retry-After. A verifier needs one per TPM.
    #[arg(long, env = "AVER_ACTIVATIONS_PER_PEER_PER_MINUTE", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=6000))]
    pub activations_per_peer_per_minute: u32,
    /// PEM file of the intermediate CA certificates between the TPM's EK
    /// certificate and its manufacturer's root, served to verifiers that
    /// activate the attestation key (vendors do not store them in the TPM).
    /// Local TPM mode only.
    #[arg(long, env = "AVER_EK_CHAIN")]
    pub ek_chain: Option<PathBuf>,
    /// Names written into the self-signed certificate (comma-separated).
    #[arg(
        long,
        env = "AVER_CERT_NAMES",
        value_delimiter = ',',
        default_value = "aver-enclave,localhost"
    )]
    pub cert_names: Vec<String>,
}

/// Where `serve` gets its evidence from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeMode {
    /// Its own TPM: the launch is measured into it (evidence v1).
    LocalTpm(LaunchConfig),
    /// aver-node, over its agent socket (evidence v2).
    NodeAgent(NodeAgentConfig),
}

impl ServeArgs {
    /// The mode these flags select, with its settings.
    pub fn mode(&self) -> ServeMode {
        match (&self.node_agent, self.engine_digest) {
            (Some(socket), _) => ServeMode::NodeAgent(NodeAgentConfig {
                socket: socket.clone(),
                timeout: self
                    .node_agent_timeout
                    .unwrap_or(DEFAULT_NODE_AGENT_TIMEOUT),
                model_dir: self.launch.model_dir.clone(),
            }),
            (None, Some(engine_digest)) => {
                ServeMode::LocalTpm(self.launch.to_config(engine_digest))
            }
            // clap requires --engine-digest unless --node-agent is given.
            (None, None) => unreachable!("--engine-digest is required without --node-agent"),
        }
    }

    /// The server settings these flags describe.
    pub fn to_serve_config(&self) -> aver_enclave::server::ServeConfig {
        aver_enclave::server::ServeConfig {
            listen: self.listen,
            upstream: self.upstream.clone(),
            max_request_bytes: self.max_request_bytes,
            upstream_timeout: std::time::Duration::from_secs(self.upstream_timeout_secs),
            batch: aver_enclave::batcher::BatchConfig {
                window: std::time::Duration::from_millis(self.batch_window_ms),
                max_batch: usize::try_from(self.max_batch).unwrap_or(usize::MAX),
            },
            certificate_names: self.cert_names.clone(),
            limits: aver_enclave::server::limits::Limits {
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
                idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
                drain_timeout: std::time::Duration::from_secs(self.drain_timeout_secs),
                request_deadline: std::time::Duration::from_secs(self.request_deadline_secs),
                activation_queue: usize::try_from(self.activation_queue).unwrap_or(usize::MAX),
                activations_per_peer_per_minute: std::num::NonZeroU32::new(
                    self.activations_per_peer_per_minute,
                )
                .unwrap_or(std::num::NonZeroU32::MIN),
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct AkArgs {
    #[command(flatten)]
    pub tpm: TpmArgs,
    /// Print, instead of the name alone, the `trust:` entries that enrol
    /// this TPM: its EK certificate and EK public key digests for
    /// `trust.ekPins`, and the AK name.
    #[arg(long)]
    pub pins: bool,
}

/// A sorted, duplicate-free list of PCR numbers, written `0,1,2` with
/// optional ranges `0-7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrList(pub Vec<u8>);

impl FromStr for PcrList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut pcrs = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (low, high) = match part.split_once('-') {
                Some((low, high)) => (parse_pcr(low)?, parse_pcr(high)?),
                None => {
                    let pcr = parse_pcr(part)?;
                    (pcr, pcr)
                }
            };
            if low > high {
                return Err(format!("PCR range {part:?} runs backwards"));
            }
            pcrs.extend(low..=high);
        }
        pcrs.sort_unstable();
        pcrs.dedup();
        Ok(Self(pcrs))
    }
}

fn parse_pcr(text: &str) -> Result<u8, String> {
    match text.trim().parse::<u8>() {
        Ok(pcr) if pcr < PCR_COUNT => Ok(pcr),
        _ => Err(format!(
            "{text:?} is not a PCR number (0 to {})",
            PCR_COUNT - 1
        )),
    }
}

fn parse_workload_pcr(text: &str) -> Result<u8, String> {
    let pcr = parse_pcr(text)?;
    check_workload_pcr(pcr).map_err(|e| e.to_string())?;
    Ok(pcr)
}

/// Checked before the launch so that a typo does not cost a launch sequence.
fn parse_upstream(text: &str) -> Result<String, String> {
    aver_enclave::server::proxy::Proxy::check_upstream(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// A duration: a number with unit `ms`, `s`, `m` or `h`, or a bare number
/// of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err(format!("{text:?}: the duration must be more than zero"));
    }
    Ok(duration)
}

fn parse_nonce(text: &str) -> Result<Nonce, String> {
    Nonce::from_hex(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0101010101010101010101010101010101010101010101010101010101010101";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("aver-enclave").chain(args.iter().copied()))
    }

    fn evidence(extra: &[&str]) -> Result<EvidenceArgs, clap::Error> {
        let nonce = "ab".repeat(32);
        let mut args = vec![
            "evidence",
            "--nonce",
            &nonce,
            "--out",
            "/tmp/e.json",
            "--engine-digest",
            DIGEST,
            "--model-dir",
            "/models/m",
        ];
        args.extend_from_slice(extra);
        match parse(&args)?.command {
            Command::Evidence(e) => Ok(e),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_quote_boot_pcrs_and_the_workload_pcr() {
        let e = evidence(&[]).unwrap();
        let config = e.to_config();
        assert_eq!(config.workload_pcr, 13);
        assert_eq!(
            config.quote_pcrs,
            vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]
        );
        assert_eq!(config.ak_handle, 0x8101_0100);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/aver"));
        assert_eq!(config.workload.serving_config, None);
        assert_eq!(e.nonce, Nonce([0xab; 32]));

        let e = evidence(&["--workload-pcr", "14"]).unwrap();
        assert_eq!(
            e.launch.quote_pcrs(),
            vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14]
        );
    }

    #[test]
    fn pcr_lists_take_ranges_and_reject_nonsense() {
        assert_eq!(
            "0-7,15".parse::<PcrList>(),
            Ok(PcrList(vec![0, 1, 2, 3, 4, 5, 6, 7, 15]))
        );
        assert_eq!("15, 0,0".parse::<PcrList>(), Ok(PcrList(vec![0, 15])));
        assert!("24".parse::<PcrList>().is_err());
        assert!("7-3".parse::<PcrList>().is_err());
        assert!("".parse::<PcrList>().is_err());
        assert!("a".parse::<PcrList>().is_err());
        let e = evidence(&["--quote-pcrs", "0,2,15"]).unwrap();
        assert_eq!(e.launch.quote_pcrs(), vec![0, 2, 15]);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(evidence(&["--workload-pcr", "16"]).is_err());
        assert!(evidence(&["--workload-pcr", "7"]).is_err());
        assert!(evidence(&["--ak-handle", "0x80000001"]).is_err());
        assert!(evidence(&["--ak-handle", "zz"]).is_err());
        assert!(parse(&[
            "evidence",
            "--nonce",
            "abcd",
            "--out",
            "x",
            "--engine-digest",
            DIGEST,
            "--model-dir",
            "m"
        ])
        .is_err());
        // The engine digest must carry its algorithm.
        let bare = "01".repeat(32);
        assert!(parse(&[
            "evidence",
            "--nonce",
            &"ab".repeat(32),
            "--out",
            "x",
            "--engine-digest",
            &bare,
            "--model-dir",
            "m"
        ])
        .is_err());
    }

    #[test]
    fn handles_parse_in_hex_or_decimal() {
        assert_eq!(parse_handle("0x81010003"), Ok(0x8101_0003));
        assert_eq!(parse_handle("2164326403"), Ok(0x8101_0003));
        let e = evidence(&[
            "--ak-handle",
            "0x81000001",
            "--tcti",
            "swtpm:host=127.0.0.1,port=2321",
        ])
        .unwrap();
        assert_eq!(e.launch.tpm.ak_handle, 0x8100_0001);
        assert_eq!(e.launch.tpm.tcti, "swtpm:host=127.0.0.1,port=2321");
    }

    #[test]
    fn ak_and_log_format_parse() {
        let cli = parse(&["--log-format", "json", "ak", "--tcti", "swtpm:port=1"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(
            matches!(cli.command, Command::Ak(AkArgs { tpm, pins: false }) if tpm.tcti == "swtpm:port=1")
        );
        let cli = parse(&["ak", "--pins"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Ak(AkArgs { pins: true, .. })
        ));
        assert!(parse(&["--log-format", "xml", "ak"]).is_err());
    }

    fn serve(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut args = vec![
            "serve",
            "--upstream",
            "http://127.0.0.1:8000",
            "--model-dir",
            "/models/m",
        ];
        args.extend_from_slice(extra);
        match parse(&args)?.command {
            Command::Serve(s) => Ok(s),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn serve_selects_local_tpm_or_node_agent_mode() {
        let local = serve(&["--engine-digest", DIGEST]).unwrap();
        let ServeMode::LocalTpm(config) = local.mode() else {
            panic!("local TPM mode expected");
        };
        assert_eq!(config.tcti, "device:/dev/tpmrm0");
        assert_eq!(config.workload.engine_digest, Sha256Digest([1; 32]));

        let agent = serve(&["--node-agent", "/run/aver-node/agent.sock"]).unwrap();
        assert_eq!(
            agent.mode(),
            ServeMode::NodeAgent(NodeAgentConfig {
                socket: PathBuf::from("/run/aver-node/agent.sock"),
                timeout: DEFAULT_NODE_AGENT_TIMEOUT,
                model_dir: PathBuf::from("/models/m"),
            })
        );
        let agent = serve(&["--node-agent", "/s", "--node-agent-timeout", "500ms"]).unwrap();
        assert!(
            matches!(agent.mode(), ServeMode::NodeAgent(c) if c.timeout == Duration::from_millis(500))
        );
    }

    #[test]
    fn node_agent_mode_conflicts_with_the_local_tpm_flags() {
        use clap::error::ErrorKind;
        for flags in [
            &["--tcti", "swtpm:port=1"][..],
            &["--engine-digest", DIGEST],
            &["--serving-config", "/etc/serving.yaml"],
            &["--state-dir", "/var/lib/aver"],
            &["--ak-handle", "0x81010100"],
            &["--workload-pcr", "15"],
            &["--quote-pcrs", "0-7,15"],
            &["--ek-chain", "/etc/ek-chain.pem"],
        ] {
            let mut args = vec!["--node-agent", "/run/aver-node/agent.sock"];
            args.extend_from_slice(flags);
            let error = serve(&args).unwrap_err();
            assert_eq!(
                error.kind(),
                ErrorKind::ArgumentConflict,
                "{flags:?}: {error}"
            );
            assert!(error.to_string().contains("--node-agent"), "{error}");
        }
        // Without either, the local TPM mode needs its engine digest.
        let error = serve(&[]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument, "{error}");
        assert!(error.to_string().contains("--engine-digest"), "{error}");
        // The timeout belongs to node-agent mode.
        let error = serve(&["--engine-digest", DIGEST, "--node-agent-timeout", "5s"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{error}");
        assert!(serve(&["--node-agent-timeout", "5s"]).is_err());
        // The engine digest is still required for evidence, which has no
        // node-agent mode.
        assert!(parse(&[
            "evidence",
            "--nonce",
            &"ab".repeat(32),
            "--out",
            "x",
            "--model-dir",
            "m",
        ])
        .is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "0s", "1.5s", "-1s", "10 days", "5d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn command_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
