//! `aver-controller`: reconciles `ConfidentialModel` resources.
//!
//! Placeholder until the operator lands: it parses its flags so packaging and
//! `--help` work, and refuses to run rather than pretend to reconcile.

use clap::Parser;

/// Kubernetes operator for confidential models (not yet implemented).
#[derive(Parser, Debug)]
#[command(name = "aver-controller", version, about)]
struct Args {
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "AVER_NAMESPACE")]
    namespace: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("aver-controller: the operator is not implemented in this release")
}
