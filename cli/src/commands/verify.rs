//! `aver verify URL`: attest a live endpoint and print what was proven.

use std::time::Duration;

use aver_client::{AttestedClient, Endpoint};

use super::{client_failure, load_policy, CommandResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Endpoint to attest, e.g. https://10.0.0.7:8443
    pub url: String,
    /// Attestation policy (YAML or JSON).
    #[arg(long, env = "AVER_POLICY")]
    pub policy: std::path::PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the connection and TLS handshake.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Prove the attestation key is resident in a genuine TPM now: validate
    /// the TPM's EK certificate chain against the policy's trust.ekRoots
    /// and have the TPM activate a credential made for it, even if the key
    /// is also listed in trust.akNames.
    #[arg(long)]
    pub activate: bool,
}

pub fn run(args: Args) -> CommandResult {
    let policy = load_policy(&args.policy)?;
    let endpoint = Endpoint::from_url(&args.url).map_err(anyhow::Error::from)?;
    let client = AttestedClient::with_policy(policy)
        .with_connect_timeout(Duration::from_secs(args.connect_timeout));
    let runtime = super::runtime()?;
    let attestation = if args.activate {
        if client.policy().trust.ek_roots.is_none() {
            return Err(anyhow::anyhow!(
                "--activate needs trust.ekRoots (the TPM manufacturer CA certificates) in the policy"
            )
            .into());
        }
        runtime.block_on(client.attest_activating(&endpoint))
    } else {
        runtime.block_on(client.attest(&endpoint))
    };
    let connection = attestation.map_err(client_failure)?;
    let Some(report) = connection.report() else {
        return Err(anyhow::anyhow!("attestation produced no report").into());
    };
    let max_age = client.policy().max_evidence_age();
    if args.json {
        let json = serde_json::json!({
            "endpoint": endpoint.authority(),
            "verifiedAt": jiff::Timestamp::now().to_string(),
            "pinnedForSeconds": max_age.as_secs(),
            "report": report,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&json).map_err(anyhow::Error::from)?
        );
    } else {
        println!("endpoint {}", endpoint.authority());
        print!("{}", report.to_text());
        println!(
            "  evidence age      fresh (nonce sent now); pinned for {}s (maxEvidenceAge)",
            max_age.as_secs()
        );
    }
    Ok(())
}
