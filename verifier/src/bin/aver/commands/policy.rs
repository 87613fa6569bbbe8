//! `aver policy`: writing policies.

use std::path::PathBuf;

use anyhow::Context as _;
use std::time::Duration;

use aver_verifier::client::{AttestedConnection, Endpoint};
use aver_verifier::policy_init::policy_from_evidence;
use aver_verifier::{Evidence, VerifyError};

use super::{read_input, CommandResult, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Write a policy that accepts exactly what a known-good evidence shows
    /// (trust on first use: only as good as the machine you captured it from).
    Init(InitArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_evidence", "from"])))]
pub struct InitArgs {
    /// Known-good evidence document to take reference values from.
    #[arg(long = "from-evidence")]
    pub from_evidence: Option<PathBuf>,
    /// Known-good live endpoint (https://HOST:PORT) to capture evidence from.
    #[arg(long)]
    pub from: Option<String>,
    /// Workload PCR the enclave extends.
    #[arg(long, default_value_t = aver_crds::policy::DEFAULT_WORKLOAD_PCR)]
    pub workload_pcr: u8,
    /// Write the policy here instead of stdout (refuses to overwrite).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

pub fn run(cmd: PolicyCommand) -> CommandResult {
    match cmd {
        PolicyCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> CommandResult {
    let (evidence, source) = match (&args.from_evidence, &args.from) {
        (Some(path), _) => {
            let bytes = read_input(path, "evidence")?;
            let evidence =
                Evidence::from_json(&bytes).map_err(|e| Failure::Rejected(VerifyError::from(e)))?;
            (evidence, path.display().to_string())
        }
        (None, Some(url)) => {
            let endpoint = Endpoint::from_url(url).map_err(anyhow::Error::from)?;
            let capture =
                AttestedConnection::capture_unverified(&endpoint, Duration::from_secs(10));
            let evidence = super::runtime()?
                .block_on(capture)
                .map_err(super::client_failure)?;
            (evidence, url.clone())
        }
        (None, None) => {
            return Err(anyhow::anyhow!("give --from-evidence FILE or --from URL").into())
        }
    };
    let policy =
        policy_from_evidence(&evidence, Some(args.workload_pcr)).map_err(Failure::Rejected)?;
    eprintln!(
        "WARNING: this policy trusts whatever produced {source} (trust on first use).\n\
         WARNING: check the AK, boot PCRs and workload digests against values you obtained independently before relying on it."
    );
    let yaml = format!(
        "# aver attestation policy, captured from {source} (trust on first use)\n{}",
        policy.to_yaml()
    );
    match args.out {
        Some(path) => {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(yaml.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => print!("{yaml}"),
    }
    Ok(())
}
