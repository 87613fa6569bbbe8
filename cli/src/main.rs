//! `aver`: the client side of aver. Verifies evidence before anything is
//! sent, and derives policies and reference digests.
#![forbid(unsafe_code)]
// Doc comments in this crate are clap's --help text ("sha256:<hex>"), not
// rendered Markdown.
#![allow(rustdoc::invalid_html_tags)]

mod commands;

use std::process::ExitCode;

use aver_logging::LogFormat;
use clap::{Parser, Subcommand};

/// Verify that an LLM endpoint runs the expected code on a genuine TPM-backed
/// node before any prompt leaves this machine.
#[derive(Parser, Debug)]
#[command(name = "aver", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr. AVER_LOG sets the filter (e.g. AVER_LOG=debug;
    /// RUST_LOG is read when it is unset).
    #[arg(long, global = true, env = "AVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attest a live endpoint against a policy and print the report.
    Verify(commands::verify::Args),
    /// Send an HTTP request to an endpoint only after attesting it; the
    /// answer streams to stdout.
    Request(commands::request::Args),
    /// Serve plain HTTP on loopback (or a unix socket) and forward each
    /// request to an attested enclave, so that unmodified clients (OpenAI
    /// SDKs, curl) get attested TLS.
    Proxy(commands::proxy::Args),
    /// List the endpoints a ConfidentialModel's controller has verified.
    Discover(commands::discover::Args),
    /// Verify a saved evidence document offline against a policy.
    VerifyEvidence(commands::verify_evidence::Args),
    /// Verify a node's AK, boot chain and runtime from one `aver-node
    /// quote`, before it runs workloads.
    VerifyNode(commands::verify_node::Args),
    /// Create policies.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// Compute reference digests for a policy.
    #[command(subcommand)]
    Digest(commands::digest::DigestCommand),
    /// Read a node's firmware event log and IMA measurement list.
    #[command(subcommand)]
    Eventlog(commands::eventlog::EventlogCommand),
    /// Check TPM structures made by tpm2-tools (quotes).
    #[command(subcommand)]
    Tpm(commands::tpm::TpmCommand),
    /// Check EK certificates against manufacturer roots.
    #[command(subcommand)]
    Ek(commands::ek::EkCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The proxy is a long-running service: its progress lines (attested
    // connections, refusals) are worth seeing by default.
    let default_filter = match cli.command {
        Command::Proxy(_) => "warn,aver_proxy=info,aver::commands::proxy=info",
        _ => "warn",
    };
    aver_logging::init(cli.log_format, default_filter);
    let result = match cli.command {
        Command::Verify(args) => commands::verify::run(args),
        Command::Request(args) => commands::request::run(args),
        Command::Proxy(args) => commands::proxy::run(args),
        Command::Discover(args) => commands::discover::run(args),
        Command::VerifyEvidence(args) => commands::verify_evidence::run(args),
        Command::VerifyNode(args) => commands::verify_node::run(args),
        Command::Policy(cmd) => commands::policy::run(cmd),
        Command::Digest(cmd) => commands::digest::run(cmd),
        Command::Eventlog(cmd) => commands::eventlog::run(cmd),
        Command::Tpm(cmd) => commands::tpm::run(cmd),
        Command::Ek(cmd) => commands::ek::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("aver: {failure}");
            failure.exit_code()
        }
    }
}
