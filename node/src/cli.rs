//! Command-line and environment settings of `aver-node`.
//!
//! Kept in the library so that parsing is unit-tested without spawning the
//! binary, and so the gate can read the same settings it is started with.

use std::net::SocketAddr;
use std::path::PathBuf;

use aver_tpm::tpm::parse_persistent_handle as parse_handle;
use clap::{Args, Parser, Subcommand};

/// The format of `--log-format`, shared by every aver binary.
pub use aver_logging::LogFormat;

/// PCR the node log is extended into unless configured otherwise (why 13:
/// [`aver_crds::policy::DEFAULT_WORKLOAD_PCR`]).
pub const DEFAULT_NODE_PCR: u8 = aver_crds::policy::DEFAULT_WORKLOAD_PCR;

/// The node agent of a hardened node: a CRI proxy in front of containerd
/// that admits and measures every pod and container into the TPM, and the
/// socket enclaves get their evidence from.
#[derive(Debug, Parser)]
#[command(name = "aver-node", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr. AVER_LOG sets the filter (e.g. AVER_LOG=debug;
    /// RUST_LOG is read when it is unset).
    #[arg(long, env = "AVER_NODE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the CRI to the kubelet (forwarding to containerd) and the agent
    /// socket to enclaves.
    Serve(ServeArgs),
    /// Print the attestation key's TPM name (hex), creating and persisting
    /// the key if needed.
    Ak(AkArgs),
    /// Print what enrols this node in a policy: the digests of its TPM's EK
    /// certificates and EK public keys, as `trust.ekPins` entries to paste
    /// under the policy's `trust:` (and the AK name, for `trust.akNames`).
    Enroll(AkArgs),
    /// Quote the platform PCRs (boot chain 0-9, IMA 10, the node log PCR)
    /// once and print the quote with the firmware event log and the IMA
    /// list as JSON: for checking a node image's boot against a boot policy
    /// (`aver policy boot`) before it runs workloads.
    Quote(QuoteArgs),
}

/// Which firmware event log and IMA list go with every quote.
#[derive(Debug, Clone, Args)]
pub struct PlatformLogArgs {
    /// Firmware event log served with quotes [default: the kernel's
    /// securityfs file, for a `device:` TPM only].
    #[arg(long, env = "AVER_NODE_BOOT_LOG")]
    pub boot_log: Option<PathBuf>,
    /// IMA measurement list served with quotes [default: the kernel's
    /// securityfs file, for a `device:` TPM only].
    #[arg(long, env = "AVER_NODE_IMA_LOG")]
    pub ima_log: Option<PathBuf>,
    /// NV index holding the AK's certificate, served with quotes for
    /// policies with trust.akRoots (a cloud vTPM's: GCE 0x01c10000 RSA,
    /// 0x01c10002 ECC; Azure 0x01c101d0).
    #[arg(long, env = "AVER_NODE_AK_CERTIFICATE_NV", value_parser = parse_nv_index, conflicts_with = "ak_certificate")]
    pub ak_certificate_nv: Option<u32>,
    /// File holding the AK's certificate (DER), instead of an NV index.
    #[arg(long, env = "AVER_NODE_AK_CERTIFICATE")]
    pub ak_certificate: Option<PathBuf>,
    /// Intermediate CA certificates (PEM) between the AK certificate and
    /// the verifier's trust.akRoots, served with quotes.
    #[arg(long, env = "AVER_NODE_AK_CHAIN")]
    pub ak_chain: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct QuoteArgs {
    #[command(flatten)]
    pub tpm: TpmArgs,
    #[command(flatten)]
    pub logs: PlatformLogArgs,
    /// The 32 bytes (64 hex characters) the quote is bound to, e.g. a
    /// verifier's nonce.
    #[arg(long, value_parser = parse_qualifying_data)]
    pub qualifying_data: [u8; 32],
    /// The node log PCR, quoted with the platform PCRs (11 to 15).
    #[arg(long, env = "AVER_NODE_PCR", default_value_t = DEFAULT_NODE_PCR, value_parser = parse_node_pcr)]
    pub pcr: u8,
}

/// Which TPM and which attestation key.
#[derive(Debug, Clone, Args)]
pub struct TpmArgs {
    /// TPM to use: `device:/dev/tpmrm0` (kernel resource manager) or
    /// `swtpm:host=127.0.0.1,port=2321` (software TPM; its control port is
    /// port + 1).
    #[arg(long, env = "AVER_NODE_TCTI", default_value = "device:/dev/tpmrm0")]
    pub tcti: String,
    /// Persistent handle of the attestation key (hex with 0x, or decimal).
    #[arg(long, env = "AVER_NODE_AK_HANDLE", default_value = "0x81010100", value_parser = parse_handle)]
    pub ak_handle: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// CRI socket served to the kubelet (its
    /// `--container-runtime-endpoint=unix://…`).
    #[arg(long, env = "AVER_NODE_LISTEN", default_value = "/run/aver-node/cri.sock", value_parser = parse_unix_endpoint)]
    pub listen: PathBuf,
    /// containerd's CRI socket, every call is forwarded to (a path or
    /// `unix://` URL).
    #[arg(long, env = "AVER_NODE_RUNTIME_ENDPOINT", default_value = "/run/containerd/containerd.sock", value_parser = parse_unix_endpoint)]
    pub runtime_endpoint: PathBuf,
    /// Agent socket for enclaves (mode 0666; mount its directory into
    /// confidential pods).
    #[arg(long, env = "AVER_NODE_AGENT_SOCKET", default_value = "/run/aver-node/agent.sock", value_parser = parse_unix_endpoint)]
    pub agent_socket: PathBuf,
    /// Directory holding the node log across restarts.
    #[arg(
        long,
        env = "AVER_NODE_STATE_DIR",
        default_value = "/var/lib/aver-node"
    )]
    pub state_dir: PathBuf,
    /// Node policy: which pods may run on this node.
    #[arg(
        long,
        env = "AVER_NODE_POLICY",
        default_value = "/etc/aver/node-policy.yaml"
    )]
    pub policy: PathBuf,
    #[command(flatten)]
    pub tpm: TpmArgs,
    #[command(flatten)]
    pub logs: PlatformLogArgs,
    /// PCR the node log is extended into (11 to 15).
    #[arg(long, env = "AVER_NODE_PCR", default_value_t = DEFAULT_NODE_PCR, value_parser = parse_node_pcr)]
    pub pcr: u8,
    /// The kubelet's root directory: host paths below its `pods/` directory
    /// are recorded as the pod volumes they are, not as host paths.
    #[arg(
        long,
        env = "AVER_NODE_KUBELET_ROOT",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_root: PathBuf,
    /// Address to serve Prometheus `/metrics`, `/healthz` and `/readyz`
    /// on [default: not served].
    #[arg(long, env = "AVER_NODE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct AkArgs {
    #[command(flatten)]
    pub tpm: TpmArgs,
}

fn parse_qualifying_data(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    if text.len() != 64 || hex::decode_to_slice(text, &mut out).is_err() {
        return Err(format!("{text:?} is not 64 hex characters (32 bytes)"));
    }
    Ok(out)
}

fn parse_nv_index(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse::<u32>(),
    };
    let index = parsed.map_err(|_| format!("{text:?} is not an NV index (e.g. 0x01c10002)"))?;
    if index >> 24 != 0x01 {
        return Err(format!(
            "0x{index:08x} is not an NV index (0x01000000 to 0x01ffffff)"
        ));
    }
    Ok(index)
}

/// PCRs 11 to 15 are for the OS; 0-9 are explained by the boot log, 10 by
/// IMA, and 16-23 are resettable or dynamic-launch PCRs: none of those may
/// hold the node log.
fn parse_node_pcr(text: &str) -> Result<u8, String> {
    match text.parse::<u8>() {
        Ok(pcr) if aver_crds::policy::WORKLOAD_PCRS.contains(&pcr) => Ok(pcr),
        _ => Err(format!(
            "{text:?}: the node log PCR must be 11 to 15 (0-9 are the boot chain's, 10 is IMA's)"
        )),
    }
}

/// A socket path, given as a path or as a `unix://` URL (the kubelet's
/// spelling); other schemes are refused.
fn parse_unix_endpoint(text: &str) -> Result<PathBuf, String> {
    let path = match text.split_once("://") {
        Some(("unix", path)) => path,
        Some((scheme, _)) => {
            return Err(format!(
                "{text:?}: only unix sockets are supported, not {scheme}://"
            ))
        }
        None => text,
    };
    if path.is_empty() {
        return Err("empty socket path".into());
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aver_tpm::tpm::DEFAULT_AK_HANDLE;
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("aver-node").chain(args.iter().copied()))
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        match parse(&all)?.command {
            Command::Serve(s) => Ok(s),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn quote_takes_64_hex_qualifying_data_and_the_log_paths() {
        let hex64 = "ab".repeat(32);
        let parsed =
            parse(&["quote", "--qualifying-data", &hex64, "--boot-log", "/tmp/b"]).unwrap();
        let Command::Quote(args) = parsed.command else {
            panic!("not quote");
        };
        assert_eq!(args.qualifying_data, [0xab; 32]);
        assert_eq!(args.logs.boot_log, Some(PathBuf::from("/tmp/b")));
        assert_eq!(args.pcr, 13);
        assert!(parse(&["quote", "--qualifying-data", "abcd"]).is_err());
        assert!(parse(&["quote"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_are_the_documented_paths() {
        let args = serve(&[]).unwrap();
        assert_eq!(args.listen, PathBuf::from("/run/aver-node/cri.sock"));
        assert_eq!(
            args.runtime_endpoint,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            args.agent_socket,
            PathBuf::from("/run/aver-node/agent.sock")
        );
        assert_eq!(args.state_dir, PathBuf::from("/var/lib/aver-node"));
        assert_eq!(args.policy, PathBuf::from("/etc/aver/node-policy.yaml"));
        assert_eq!(args.tpm.tcti, "device:/dev/tpmrm0");
        assert_eq!(args.tpm.ak_handle, DEFAULT_AK_HANDLE);
        assert_eq!(args.pcr, 13);
        assert_eq!(args.logs.boot_log, None);
        assert_eq!(args.logs.ima_log, None);
        assert_eq!(args.kubelet_root, PathBuf::from("/var/lib/kubelet"));
        assert_eq!(args.metrics_addr, None);
    }

    #[test]
    fn endpoints_take_paths_or_unix_urls() {
        let args = serve(&[
            "--runtime-endpoint",
            "unix:///run/k3s/containerd/containerd.sock",
            "--listen",
            "/tmp/cri.sock",
        ])
        .unwrap();
        assert_eq!(
            args.runtime_endpoint,
            PathBuf::from("/run/k3s/containerd/containerd.sock")
        );
        assert_eq!(args.listen, PathBuf::from("/tmp/cri.sock"));
        let err = serve(&["--runtime-endpoint", "tcp://127.0.0.1:1234"]).unwrap_err();
        assert!(err.to_string().contains("only unix sockets"), "{err}");
    }

    #[test]
    fn bad_pcrs_and_handles_are_refused() {
        assert_eq!(serve(&["--pcr", "11"]).unwrap().pcr, 11);
        for pcr in ["7", "8", "10", "16", "x"] {
            assert!(serve(&["--pcr", pcr]).is_err(), "{pcr}");
        }
        assert_eq!(
            serve(&["--ak-handle", "0x81000001"]).unwrap().tpm.ak_handle,
            0x8100_0001
        );
        let err = serve(&["--ak-handle", "0x80000001"]).unwrap_err();
        assert!(err.to_string().contains("not a persistent handle"), "{err}");
    }

    #[test]
    fn metrics_address_is_optional() {
        let args = serve(&["--metrics-addr", "127.0.0.1:9464"]).unwrap();
        assert_eq!(args.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn every_command_has_help() {
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some() || arg.get_id() == "help",
                    "{} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
