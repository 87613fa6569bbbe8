//! `aver digest`: the reference digests a policy lists, computed exactly as
//! aver-enclave measures them.

use std::path::PathBuf;

use aver_verifier::measurement::{file_digest, model_digest};

use super::CommandResult;

#[derive(clap::Subcommand, Debug)]
pub enum DigestCommand {
    /// Digest of a model directory (every file, canonical order).
    Model {
        /// Directory holding the model files.
        dir: PathBuf,
    },
    /// SHA-256 of one file (e.g. a serving configuration).
    File {
        /// File to hash.
        path: PathBuf,
    },
}

pub fn run(cmd: DigestCommand) -> CommandResult {
    let digest = match cmd {
        DigestCommand::Model { dir } => model_digest(&dir).map_err(anyhow::Error::from)?,
        DigestCommand::File { path } => file_digest(&path).map_err(anyhow::Error::from)?,
    };
    println!("{digest}");
    Ok(())
}
