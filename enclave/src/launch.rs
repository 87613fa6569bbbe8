//! One start of the enclave, in the order docs/architecture.md#code-identity requires: create the
//! TLS key, measure the workload, record the launch in the workload PCR —
//! all before anything is served.

use std::path::PathBuf;

use aver_verifier::binding::Nonce;
use aver_verifier::ek::{ActivationOffer, ActivationRequest};
use aver_verifier::eventlog::LaunchMeasurements;
use aver_verifier::Evidence;

use crate::endorsement::{self, ActivateError};
use crate::evidence::{collect, quote, CollectError, QuotedState};
use crate::launch_log::{
    check_workload_pcr, record_launch, LaunchLog, LaunchLogError, LaunchStats,
};
use crate::measure::{measure_launch, MeasureError, WorkloadInputs};
use crate::tls_key::{TlsKey, TlsKeyError};
use crate::tpm::{Tpm, TpmError};

/// Everything a launch needs, however it was configured (flags, env).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// TCTI of the TPM, e.g. `device:/dev/tpmrm0`.
    pub tcti: String,
    /// Persistent handle of the attestation key.
    pub ak_handle: u32,
    /// Where the event log is kept between restarts.
    pub state_dir: PathBuf,
    /// PCR the launch is measured into (11..=15).
    pub workload_pcr: u8,
    /// PCRs every quote covers; must include `workload_pcr`.
    pub quote_pcrs: Vec<u8>,
    /// Most launches recorded per boot (TPM reset); the start after that is
    /// refused with nothing extended ([`LaunchLogError::LaunchLimit`]).
    /// [`crate::launch_log::DEFAULT_MAX_LAUNCHES`] unless configured.
    pub max_launches: u32,
    /// What is measured.
    pub workload: WorkloadInputs,
}

/// Why the enclave could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the quoted PCRs {quote_pcrs:?} do not include the workload PCR {workload_pcr}: evidence without it proves nothing about the workload")]
    WorkloadPcrNotQuoted {
        workload_pcr: u8,
        quote_pcrs: Vec<u8>,
    },
    #[error(transparent)]
    TlsKey(#[from] TlsKeyError),
    #[error(transparent)]
    Measure(#[from] MeasureError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Log(#[from] LaunchLogError),
}

/// A started enclave: its TPM, its measured launch and its TLS key.
#[derive(Debug)]
pub struct Enclave {
    tpm: Tpm,
    log: LaunchLog,
    tls_key: TlsKey,
    measurements: LaunchMeasurements,
    quote_pcrs: Vec<u8>,
    max_launches: u32,
}

impl Enclave {
    /// Generates the TLS key, measures the workload and appends the launch
    /// to the workload PCR and its log. The workload is measured before the
    /// TPM is opened, so hashing a large model neither holds the TPM nor
    /// the state directory's lock.
    ///
    /// When the log already holds `config.max_launches` launches of this
    /// boot, fails with [`LaunchLogError::LaunchLimit`] (inside
    /// [`LaunchError::Log`]) before anything is stored or extended.
    pub fn launch(config: &LaunchConfig) -> Result<Self, LaunchError> {
        check_workload_pcr(config.workload_pcr)?;
        if !config.quote_pcrs.contains(&config.workload_pcr) {
            return Err(LaunchError::WorkloadPcrNotQuoted {
                workload_pcr: config.workload_pcr,
                quote_pcrs: config.quote_pcrs.clone(),
            });
        }
        let tls_key = TlsKey::generate()?;
        let measurements = measure_launch(&config.workload, tls_key.spki_sha256())?;
        tracing::info!(
            engine = %measurements.engine,
            model = %measurements.model,
            serving_config = %measurements.serving_config,
            tls_spki = %measurements.tls_spki,
            "workload measured"
        );
        let mut tpm = Tpm::open(&config.tcti, config.ak_handle)?;
        let log = record_launch(
            &mut tpm,
            &config.state_dir,
            config.workload_pcr,
            config.max_launches,
            &measurements,
        )?;
        Ok(Self {
            tpm,
            log,
            tls_key,
            measurements,
            quote_pcrs: config.quote_pcrs.clone(),
            max_launches: config.max_launches,
        })
    }

    /// Evidence answering `nonce`, bound to this enclave's TLS key.
    pub fn evidence(&mut self, nonce: &Nonce) -> Result<Evidence, CollectError> {
        let spki = self.tls_key.spki_sha256();
        collect(
            &mut self.tpm,
            self.log.entries(),
            &self.quote_pcrs,
            nonce,
            &spki,
        )
    }

    /// One quote over `qualifying` (a batch's Merkle root), to be turned into
    /// evidence for each challenge of the batch.
    pub fn quote(&mut self, qualifying: &[u8; 32]) -> Result<QuotedState, CollectError> {
        quote(
            &mut self.tpm,
            self.log.entries(),
            &self.quote_pcrs,
            qualifying,
        )
    }

    /// What a verifier activates the AK against (docs/architecture.md#platform-identity): the AK
    /// public area and the EK certificates in the TPM's NV, with
    /// `ek_chain` (intermediate CA certificates, DER) to help build the path.
    pub fn activation_offer(
        &mut self,
        ek_chain: Vec<Vec<u8>>,
    ) -> Result<ActivationOffer, TpmError> {
        let certificates = endorsement::read_certificates(&mut self.tpm)?;
        Ok(endorsement::offer(
            self.tpm.ak_public_tpmt(),
            certificates,
            ek_chain,
        ))
    }

    /// TPM2_ActivateCredential of a verifier's credential for this AK.
    pub fn activate(&mut self, request: &ActivationRequest) -> Result<Vec<u8>, ActivateError> {
        endorsement::activate(&mut self.tpm, request)
    }

    /// The in-memory TLS key whose SPKI the launch recorded.
    pub fn tls_key(&self) -> &TlsKey {
        &self.tls_key
    }

    /// What this launch measured.
    pub fn measurements(&self) -> &LaunchMeasurements {
        &self.measurements
    }

    /// The AK's TPMT_PUBLIC, as the evidence carries it (for checking what
    /// the evidence names against the TPM the enclave holds).
    pub fn ak_public(&self) -> Vec<u8> {
        self.tpm.ak_public_tpmt()
    }

    /// The workload event log since the last TPM reset.
    pub fn log(&self) -> &LaunchLog {
        &self.log
    }

    /// Launches recorded since the TPM was last reset (this one included)
    /// and the most allowed, for the metrics `aver_enclave_launches` and
    /// `aver_enclave_launch_limit`. Fixed for the life of this value: the
    /// state directory stays locked, so no other enclave adds a launch.
    pub fn launch_stats(&self) -> LaunchStats {
        LaunchStats {
            launches: self.log.launches(),
            limit: self.max_launches,
        }
    }
}
