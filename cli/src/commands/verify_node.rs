//! `aver verify-node`: a node's platform alone — its AK, boot chain and
//! what ran since boot — from one `aver-node quote`, before it runs
//! workloads.

use std::path::PathBuf;

use anyhow::Context as _;
use aver_verifier::evidence::NodeQuote;
use aver_verifier::{verify_node, Nonce, Sha256Digest};

use super::{load_policy, read_input, CommandResult, Failure};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The output of `aver-node quote --qualifying-data NONCE` (JSON).
    pub file: PathBuf,
    /// Attestation policy (YAML or JSON): its trust roots, reference PCRs
    /// and `boot`/`runtime` rules are applied; `allowed` is not used.
    #[arg(long, env = "AVER_POLICY")]
    pub policy: PathBuf,
    /// The nonce given to `aver-node quote` (64 hex characters); choose a
    /// fresh random one per check.
    #[arg(long)]
    pub nonce: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> CommandResult {
    let policy = load_policy(&args.policy)?;
    let nonce = Nonce::from_hex(&args.nonce).context("--nonce")?;
    let bytes = read_input(&args.file, "node quote")?;
    let quote: NodeQuote = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not an aver-node quote", args.file.display()))?;
    let evidence = quote.into_evidence(nonce, Sha256Digest([0; 32]), None);
    let report = verify_node(&evidence, &nonce, &policy).map_err(Failure::Rejected)?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("cannot encode report")?;
        println!("{json}");
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
