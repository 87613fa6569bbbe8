//! `aver policy`: writing policies.

use std::path::PathBuf;

use anyhow::Context as _;
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
pub struct InitArgs {
    /// Known-good evidence document to take reference values from.
    #[arg(long = "from-evidence")]
    pub from_evidence: PathBuf,
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
    let bytes = read_input(&args.from_evidence, "evidence")?;
    let evidence =
        Evidence::from_json(&bytes).map_err(|e| Failure::Rejected(VerifyError::from(e)))?;
    let policy =
        policy_from_evidence(&evidence, Some(args.workload_pcr)).map_err(Failure::Rejected)?;
    eprintln!(
        "WARNING: this policy trusts whatever produced {} (trust on first use).\n\
         WARNING: check the AK, boot PCRs and workload digests against values you obtained independently before relying on it.",
        args.from_evidence.display()
    );
    let yaml = format!(
        "# aver attestation policy, captured from {} (trust on first use)\n{}",
        args.from_evidence.display(),
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
