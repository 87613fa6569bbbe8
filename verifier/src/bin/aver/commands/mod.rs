//! One module per subcommand, plus the failure type they share.

pub mod digest;
pub mod policy;
pub mod verify_evidence;

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use aver_verifier::{AttestationPolicy, VerifyError};

/// How a command failed: a rejected attestation (exit 1) is a different
/// outcome from input the command could not use (exit 2).
#[derive(Debug)]
pub enum Failure {
    Rejected(VerifyError),
    Input(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Rejected(_) => ExitCode::from(1),
            Self::Input(_) => ExitCode::from(2),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(e) => write!(f, "verification failed ({}): {e}", e.reason()),
            // `{:#}` prints the whole context chain on one line.
            Self::Input(e) => write!(f, "error: {e:#}"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Input(e)
    }
}

pub type CommandResult = Result<(), Failure>;

/// Reads and validates a policy file, naming the file in any error.
pub fn load_policy(path: &Path) -> anyhow::Result<AttestationPolicy> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    AttestationPolicy::from_yaml(&text).with_context(|| format!("policy {}", path.display()))
}

/// Reads a file that must exist, naming it in any error.
pub fn read_input(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}
