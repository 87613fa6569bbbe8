//! `aver verify-evidence`: the offline check of a saved evidence document.

use std::path::PathBuf;

use anyhow::Context as _;
use aver_verifier::{verify, Challenge, Evidence, Nonce, Sha256Digest, VerifyError};

use super::{load_policy, read_input, CommandResult, Failure};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Evidence document (JSON) as served by aver-enclave.
    pub file: PathBuf,
    /// Attestation policy (YAML or JSON).
    #[arg(long, env = "AVER_POLICY")]
    pub policy: PathBuf,
    /// The nonce the evidence must answer (64 hex characters).
    #[arg(long)]
    pub nonce: String,
    /// SHA-256 of the server's TLS SubjectPublicKeyInfo (sha256:<hex>).
    #[arg(long)]
    pub spki: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> CommandResult {
    let policy = load_policy(&args.policy)?;
    let nonce = Nonce::from_hex(&args.nonce).context("--nonce")?;
    let spki = Sha256Digest::parse(&args.spki).context("--spki")?;
    let bytes = read_input(&args.file, "evidence")?;
    let evidence =
        Evidence::from_json(&bytes).map_err(|e| Failure::Rejected(VerifyError::from(e)))?;
    let challenge = Challenge {
        nonce,
        spki_sha256: spki,
    };
    let report = verify(&evidence, &challenge, &policy).map_err(Failure::Rejected)?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("cannot encode report")?;
        println!("{json}");
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
