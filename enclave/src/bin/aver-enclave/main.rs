//! The `aver-enclave` binary: parses settings, sets up logging and runs one
//! subcommand, reporting failure as one line on stderr and a non-zero exit.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
mod cli;
#[cfg(test)]
mod rendered_args;

use aver_enclave::server::{ServeConfig, Server};
use aver_enclave::{Enclave, RegisteredEnclave, Tpm};
use clap::Parser as _;
use cli::{AkArgs, Cli, Command, EvidenceArgs, ServeArgs, ServeMode};

fn main() -> ExitCode {
    // Before anything else, in particular before the TLS key exists: every
    // subcommand that launches an enclave holds the key.
    if let Err(error) = aver_enclave::hardening::make_non_dumpable() {
        eprintln!("aver-enclave: error: refusing to start: {error}");
        return ExitCode::FAILURE;
    }
    // Before any thread exists: it sets TSS2_LOG in the environment.
    aver_logging::quiet_tss_logging();
    let cli = Cli::parse();
    aver_logging::init(cli.log_format, aver_logging::TPM_DEFAULT_FILTER);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "aver-enclave: error: {}",
                aver_logging::error_line(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args),
        Command::Evidence(args) => evidence(args),
        Command::Ak(args) => ak(args),
    }
}

fn evidence(args: EvidenceArgs) -> anyhow::Result<()> {
    let mut enclave = Enclave::launch(&args.to_config())?;
    let evidence = enclave.evidence(&args.nonce)?;
    std::fs::write(&args.out, evidence.to_json())
        .with_context(|| format!("cannot write evidence to {}", args.out.display()))?;
    tracing::info!(out = %args.out.display(), "evidence written");
    println!("{}", enclave.tls_key().spki_sha256());
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.to_serve_config();
    match args.mode() {
        ServeMode::LocalTpm(launch) => {
            let ek_chain = match &args.ek_chain {
                Some(path) => {
                    let pem = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read --ek-chain {}", path.display()))?;
                    aver_verifier::ek::chain::ca_certificates_from_pem(&pem, "--ek-chain")
                        .with_context(|| format!("--ek-chain {}", path.display()))?
                }
                None => Vec::new(),
            };
            // Measurement (hashing the model) happens before the runtime
            // starts, so nothing is served until the launch is recorded in
            // the TPM.
            let enclave = Enclave::launch(&launch)?;
            runtime()?.block_on(async {
                let server = Server::bind_with_ek_chain(enclave, &config, ek_chain).await?;
                run_server(server, &config).await
            })
        }
        ServeMode::NodeAgent(agent) => runtime()?.block_on(async {
            // Nothing is served until aver-node has recorded the key.
            let enclave = RegisteredEnclave::register(&agent).await?;
            let server = Server::bind_node_agent(enclave, &config).await?;
            run_server(server, &config).await
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run_server(server: Server, config: &ServeConfig) -> anyhow::Result<()> {
    let addr = server.local_addr().context("listener has no address")?;
    tracing::info!(%addr, upstream = %config.upstream, "serving attested TLS");
    // One line on stdout, for scripts and tests that bound port 0.
    println!("listening on https://{addr}");
    server.run(shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM (what Kubernetes sends before SIGKILL).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
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
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn ak(args: AkArgs) -> anyhow::Result<()> {
    let mut tpm = Tpm::open(&args.tpm.tcti, args.tpm.ak_handle)?;
    let ak_name = hex::encode(tpm.ak_name());
    if !args.pins {
        println!("{ak_name}");
        return Ok(());
    }
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
