//! One module per subcommand, plus the failure type they share.

pub mod cluster;
pub mod digest;
pub mod discover;
pub mod ek;
pub mod eventlog;
pub mod policy;
pub mod proxy;
pub mod request;
pub mod tpm;
pub mod verify;
pub mod verify_evidence;
pub mod verify_node;

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use aver_client::ClientError;
use aver_verifier::{ValidatedPolicy, VerifyError};

/// How a command failed: a rejected attestation (exit 1) is a different
/// outcome from input the command could not use (exit 2, as for clap's
/// usage errors), an HTTP error status (exit 3) and a network failure
/// (exit 4).
#[derive(Debug)]
pub enum Failure {
    Rejected(VerifyError),
    Input(anyhow::Error),
    /// The endpoint could not be attested for a reason other than its
    /// evidence (unreachable, TLS, HTTP): nothing was sent.
    Unattested(ClientError),
    /// The server answered with this error status (>= 400).
    HttpStatus(u16),
    /// `aver request`: the endpoint could not be reached (nothing was
    /// sent), or the connection broke during the exchange.
    Network(String),
    /// A check on TPM data made elsewhere failed; the message names it.
    Failed(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Rejected(_) | Self::Unattested(_) | Self::Failed(_) => ExitCode::from(1),
            Self::Input(_) => ExitCode::from(2),
            Self::HttpStatus(_) => ExitCode::from(3),
            Self::Network(_) => ExitCode::from(4),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(e) => write!(f, "verification failed ({}): {e}", e.reason()),
            // `{:#}` prints the whole context chain on one line.
            Self::Input(e) => write!(f, "error: {e:#}"),
            Self::Unattested(e) => write!(f, "not attested, nothing sent: {e}"),
            Self::HttpStatus(code) => write!(f, "server answered HTTP {code}"),
            Self::Failed(message) | Self::Network(message) => f.write_str(message),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Input(e)
    }
}

pub type CommandResult = Result<(), Failure>;

/// Reads and validates a policy file (its trust anchors parsed too), naming
/// the file in any error.
pub fn load_policy(path: &Path) -> anyhow::Result<ValidatedPolicy> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    ValidatedPolicy::from_yaml(&text).with_context(|| format!("policy {}", path.display()))
}

/// Reads a file that must exist, naming it in any error.
pub fn read_input(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Maps a client error to the failure the user sees: a verification
/// refusal keeps its reason label.
pub fn client_failure(error: ClientError) -> Failure {
    match error {
        ClientError::Verify(e) => Failure::Rejected(e),
        other => Failure::Unattested(other),
    }
}

/// A small runtime for one command's network I/O.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
