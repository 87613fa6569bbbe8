//! The `aver-node` binary: parses settings, sets up logging and runs one
//! subcommand, reporting failure as one line on stderr and a non-zero exit.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use aver_node::agent::protocol::QuoteResponse;
use aver_node::agent::AgentServer;
use aver_node::cli::{AkArgs, Cli, Command, PlatformLogArgs, QuoteArgs, ServeArgs};
use aver_node::cri::{CriProxy, Upstream};
use aver_node::gate::Gate;
use aver_node::metrics::Metrics;
use aver_node::platform_logs::PlatformLogs;
use aver_node::store::{Measurer, MeasurerConfig, DEFAULT_BOOT_PCRS};
use aver_node_log::NodePolicy;
use aver_serve::{MetricsServer, Readiness};
use aver_tpm::Tpm;
use aver_verifier::evidence::Base64Bytes;
use clap::Parser as _;
use tokio::sync::watch;

/// The CRI socket is for the kubelet (root) only.
const CRI_SOCKET_MODE: u32 = 0o600;

fn main() -> ExitCode {
    // Before any thread exists: it sets TSS2_LOG in the environment.
    aver_logging::quiet_tss_logging();
    let cli = Cli::parse();
    aver_logging::init(cli.log_format, aver_logging::TPM_DEFAULT_FILTER);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "aver-node: error: {}",
                aver_logging::error_line(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args),
        Command::Ak(args) => ak(args),
        Command::Enroll(args) => enroll(args),
        Command::Quote(args) => quote(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_async(args))
}

async fn serve_async(args: ServeArgs) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
    });

    let metrics = Metrics::new();
    // Ready once both sockets serve.
    let readiness = Readiness::new(false);
    if let Some(addr) = args.metrics_addr {
        let server = MetricsServer::bind(addr, Arc::new(metrics.clone()), readiness.clone())
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        tokio::spawn(server.run(stopped(stop_rx.clone())));
    }

    let policy_text = std::fs::read_to_string(&args.policy).with_context(|| {
        format!(
            "cannot read the node policy --policy {}",
            args.policy.display()
        )
    })?;
    let policy = NodePolicy::from_yaml(&policy_text)
        .with_context(|| format!("node policy {}", args.policy.display()))?;
    let kubelet_root = args
        .kubelet_root
        .to_str()
        .context("--kubelet-root is not valid UTF-8")?
        .to_owned();
    let logs = PlatformLogs::resolve(
        &args.tpm.tcti,
        args.logs.boot_log.clone(),
        args.logs.ima_log.clone(),
    )?;
    // The NV index is read once, before the measurer owns the TPM.
    let mut tpm = match args.logs.ak_certificate_nv {
        Some(_) => Some(Tpm::open(&args.tpm.tcti, args.tpm.ak_handle)?),
        None => None,
    };
    let logs = with_ak_certificate(logs, &args.logs, tpm.as_mut())?;
    drop(tpm);
    let (boot, ima) = logs.paths();
    tracing::info!(boot_log = ?boot, ima_log = ?ima, "platform logs served with quotes");
    let config = MeasurerConfig {
        logs,
        tcti: args.tpm.tcti.clone(),
        ak_handle: args.tpm.ak_handle,
        state_dir: args.state_dir.clone(),
        workload_pcr: args.pcr,
        ..MeasurerConfig::new(args.tpm.tcti.clone(), policy_text)
    };
    tracing::info!(tcti = %config.tcti, pcr = config.workload_pcr, state = %config.state_dir.display(), "opening the TPM and the node log");
    let measurer = tokio::task::spawn_blocking(move || Measurer::start(&config).map_err(Box::new))
        .await
        .context("TPM worker start panicked")?
        .context("cannot open the TPM and the node log")?;
    metrics.watch_node_log(measurer.log_size());
    let agent_dir = args
        .agent_socket
        .parent()
        .and_then(|d| d.to_str())
        .context("--agent-socket must be a UTF-8 path in a directory")?
        .to_owned();
    let gate = Gate::new(policy, kubelet_root, agent_dir, measurer.clone())
        .await
        .context("cannot read the node log")?;
    tracing::info!(policy = %args.policy.display(), "the gate is active");

    let agent_listener = AgentServer::bind(&args.agent_socket).with_context(|| {
        format!(
            "cannot listen on --agent-socket {}",
            args.agent_socket.display()
        )
    })?;
    tracing::info!(socket = %args.agent_socket.display(), "serving the agent socket");
    let agent = tokio::spawn(
        AgentServer::new(Arc::new(gate.clone())).run(agent_listener, stopped(stop_rx.clone())),
    );

    let cri_listener = aver_node::unix::bind(&args.listen, CRI_SOCKET_MODE)
        .with_context(|| format!("cannot listen on --listen {}", args.listen.display()))?;
    let upstream = Upstream::connect_lazy(&args.runtime_endpoint);
    let proxy = CriProxy::new(gate, upstream, metrics);
    tracing::info!(
        socket = %args.listen.display(),
        upstream = %args.runtime_endpoint.display(),
        "serving the CRI"
    );
    readiness.set(true);
    let served = aver_node::cri::serve(cri_listener, proxy, stopped(stop_rx)).await;
    let _ = agent.await;
    measurer.stop().await;
    for socket in [&args.listen, &args.agent_socket] {
        let _ = std::fs::remove_file(socket);
    }
    served.context("CRI server")?;
    Ok(())
}

/// Completes once the shutdown signal was seen.
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// One quote of the platform PCRs with the logs that explain them, as the
/// agent socket would answer it (with an empty node log: this command keeps
/// none).
fn quote(args: QuoteArgs) -> anyhow::Result<()> {
    let logs = PlatformLogs::resolve(
        &args.tpm.tcti,
        args.logs.boot_log.clone(),
        args.logs.ima_log.clone(),
    )?;
    let mut tpm = Tpm::open(&args.tpm.tcti, args.tpm.ak_handle)?;
    let logs = with_ak_certificate(logs, &args.logs, Some(&mut tpm))?;
    let mut pcrs = DEFAULT_BOOT_PCRS.to_vec();
    pcrs.push(args.pcr);
    let boot_log = logs.read_boot()?;
    let quoted = tpm
        .quote_with_values(&pcrs, &args.qualifying_data)
        .context("quote failed")?;
    let ima_log = logs.read_ima()?;
    let response = QuoteResponse {
        pcrs: quoted.pcr_values(),
        attest: Base64Bytes(quoted.attest),
        signature: Base64Bytes(quoted.signature),
        ak_public: Base64Bytes(tpm.ak_public_tpmt()),
        node_log: Vec::new(),
        boot_log,
        ima_log,
        ak_certificate: logs.ak_certificate(),
        ak_chain: logs.ak_chain(),
    };
    println!("{}", serde_json::to_string(&response)?);
    Ok(())
}

/// `logs` with the AK certificate of `--ak-certificate-nv` (read from
/// `tpm`) or `--ak-certificate`, and the intermediates of `--ak-chain`.
fn with_ak_certificate(
    logs: PlatformLogs,
    args: &PlatformLogArgs,
    tpm: Option<&mut Tpm>,
) -> anyhow::Result<PlatformLogs> {
    let certificate = match (args.ak_certificate_nv, &args.ak_certificate, tpm) {
        (Some(index), _, Some(tpm)) => {
            let contents = aver_tpm::endorsement::read_nv(tpm, index).with_context(|| {
                format!("cannot read the AK certificate NV index 0x{index:08x}")
            })?;
            let der = aver_verifier::ek::chain::strip_nv_padding_of(&contents, "AK certificate")
                .with_context(|| format!("NV index 0x{index:08x}"))?;
            der.to_vec()
        }
        (None, Some(path), _) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read --ak-certificate {}", path.display()))?;
            aver_verifier::ek::chain::strip_nv_padding_of(&bytes, "AK certificate")
                .with_context(|| format!("--ak-certificate {}", path.display()))?
                .to_vec()
        }
        _ => {
            if args.ak_chain.is_some() {
                anyhow::bail!("--ak-chain needs --ak-certificate-nv or --ak-certificate");
            }
            return Ok(logs);
        }
    };
    let chain = match &args.ak_chain {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --ak-chain {}", path.display()))?;
            aver_verifier::ek::chain::ca_certificates_from_pem(&text, "--ak-chain")?
        }
        None => Vec::new(),
    };
    Ok(logs.with_ak_certificate(certificate, chain))
}

fn ak(args: AkArgs) -> anyhow::Result<()> {
    let tpm = Tpm::open(&args.tpm.tcti, args.tpm.ak_handle)?;
    println!("{}", hex::encode(tpm.ak_name()));
    Ok(())
}

/// The `trust:` entries that pin this node's TPM, read from the EK
/// certificates in its NV indices.
fn enroll(args: AkArgs) -> anyhow::Result<()> {
    let mut tpm = Tpm::open(&args.tpm.tcti, args.tpm.ak_handle)?;
    let ak_name = hex::encode(tpm.ak_name());
    let certificates = aver_tpm::endorsement::read_certificates(&mut tpm)?;
    if certificates.is_empty() {
        anyhow::bail!(
            "this TPM has no EK certificate (NV 0x01c00002 for RSA 2048, 0x01c0000a for ECC P-256), so it cannot be pinned in trust.ekPins; trust its attestation key by name instead: akNames: [\"{ak_name}\"]"
        );
    }
    let yaml = aver_verifier::ek::pin::enrolment_yaml(&ak_name, &certificates)
        .map_err(|reason| anyhow::anyhow!("cannot pin this TPM: {reason}"))?;
    print!("{yaml}");
    Ok(())
}
