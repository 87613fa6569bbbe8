//! What the enclave measures about the workload it fronts, reduced to the
//! digests of one launch sequence. The reductions themselves live in
//! `aver_verifier::measurement`, so that the digests a policy author computes
//! with the `aver` CLI are, by construction, the ones measured here.

use std::path::{Path, PathBuf};

use aver_crds::Sha256Digest;
use aver_verifier::eventlog::LaunchMeasurements;
use aver_verifier::measurement::{self, file_digest, model_digest};

/// SHA-256 of the empty string: the serving-config digest when the engine
/// runs without a configuration file, so that "no config" is a definite,
/// policy-checkable value rather than a missing event.
pub const EMPTY_SHA256: Sha256Digest = Sha256Digest([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

/// The workload inputs named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInputs {
    /// Digest of the inference engine image, as the orchestrator pinned it.
    pub engine_digest: Sha256Digest,
    /// Directory holding the model files.
    pub model_dir: PathBuf,
    /// Serving configuration file, if the engine has one.
    pub serving_config: Option<PathBuf>,
}

/// Why the workload could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("cannot measure the model: {0}")]
    Model(#[source] measurement::MeasureError),
    #[error("cannot measure the serving config: {0}")]
    ServingConfig(#[source] measurement::MeasureError),
    #[error("cannot measure the enclave's own executable: {0}")]
    Enclave(#[source] measurement::MeasureError),
    #[error("cannot locate the enclave's own executable: {0}")]
    CurrentExe(#[source] std::io::Error),
}

/// Measures everything one launch sequence records. `tls_spki` is the
/// SHA-256 of the TLS key's SubjectPublicKeyInfo, which the caller holds.
pub fn measure_launch(
    inputs: &WorkloadInputs,
    tls_spki: Sha256Digest,
) -> Result<LaunchMeasurements, MeasureError> {
    Ok(LaunchMeasurements {
        enclave_version: env!("CARGO_PKG_VERSION").to_owned(),
        // The inputs an operator names come first, so that a wrong path
        // fails before the enclave hashes its own executable.
        serving_config: serving_config_digest(inputs.serving_config.as_deref())?,
        model: model_digest(&inputs.model_dir).map_err(MeasureError::Model)?,
        enclave_digest: enclave_digest()?,
        engine: inputs.engine_digest,
        tls_spki,
    })
}

/// SHA-256 of the running executable. Informational only (a process cannot
/// vouch for itself), but it lets an operator tell which build is running.
pub fn enclave_digest() -> Result<Sha256Digest, MeasureError> {
    let exe = std::env::current_exe().map_err(MeasureError::CurrentExe)?;
    file_digest(&exe).map_err(MeasureError::Enclave)
}

/// SHA-256 of the serving configuration file, or [`EMPTY_SHA256`] without one.
pub fn serving_config_digest(path: Option<&Path>) -> Result<Sha256Digest, MeasureError> {
    match path {
        Some(path) => file_digest(path).map_err(MeasureError::ServingConfig),
        None => Ok(EMPTY_SHA256),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn empty_constant_is_sha256_of_nothing() {
        assert_eq!(EMPTY_SHA256.0, <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn launch_uses_the_shared_reductions() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("weights.bin"), b"weights").unwrap();
        let config = dir.path().join("serving.yaml");
        std::fs::write(&config, b"max_tokens: 5").unwrap();

        let mut inputs = WorkloadInputs {
            engine_digest: Sha256Digest([7; 32]),
            model_dir: model.clone(),
            serving_config: Some(config.clone()),
        };
        let m = measure_launch(&inputs, Sha256Digest([9; 32])).unwrap();
        assert_eq!(m.engine, Sha256Digest([7; 32]));
        assert_eq!(m.model, model_digest(&model).unwrap());
        assert_eq!(m.serving_config, file_digest(&config).unwrap());
        assert_eq!(m.tls_spki, Sha256Digest([9; 32]));
        assert_eq!(m.enclave_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            m.enclave_digest,
            file_digest(&std::env::current_exe().unwrap()).unwrap()
        );

        assert_eq!(serving_config_digest(None).unwrap(), EMPTY_SHA256);

        inputs.model_dir = dir.path().join("absent");
        assert!(matches!(
            measure_launch(&inputs, Sha256Digest([9; 32])),
            Err(MeasureError::Model(_))
        ));
    }
}
