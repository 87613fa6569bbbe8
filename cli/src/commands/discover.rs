//! `aver discover NAME`: the endpoints a ConfidentialModel's controller has
//! verified, with the keys a client can pin.

use super::cluster::{endpoints, fetch, ClusterArgs};
use super::CommandResult;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Name of the ConfidentialModel.
    pub name: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the endpoints as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> CommandResult {
    let model = super::runtime()?.block_on(fetch(&args.name, &args.cluster))?;
    let endpoints = endpoints(&model)?;
    if args.json {
        let json = serde_json::to_string_pretty(&endpoints).map_err(anyhow::Error::from)?;
        println!("{json}");
        return Ok(());
    }
    println!(
        "{:<28} {:<16} {:<22} {:<73} LAST ATTESTED",
        "POD", "NODE", "ADDRESS", "PINNED SPKI"
    );
    for e in &endpoints {
        println!(
            "{:<28} {:<16} {:<22} {:<73} {}",
            e.pod,
            e.node,
            format!("{}:{}", e.address, e.port),
            e.spki_sha256.to_string(),
            e.last_attested.0
        );
    }
    eprintln!(
        "note: these keys were verified by the controller; `aver request --from-cluster {} --policy P` verifies them yourself",
        args.name
    );
    Ok(())
}
