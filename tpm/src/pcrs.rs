//! PCRs as aver's measuring programs use them: the workload PCR that a log
//! is extended into ([`WorkloadPcr`]), and quotes paired with the PCR values
//! they signed ([`Tpm::quote_with_values`]).
//!
//! Both the enclave (its launch log) and the node agent (its node log) go
//! through these, so the read-back and consistency checks of a quote are
//! one piece of code.

use aver_verifier::evidence::PcrValue;
use aver_verifier::Sha256Digest;

use crate::tpm::{parse_quote, pcr_digest, Tpm, TpmError};

/// How often a quote is retaken when a PCR moved between the quote and the
/// read-back. Only an extend racing with the quote causes that, so a second
/// attempt practically always succeeds; the bound keeps a PCR that is being
/// extended in a loop from holding the request forever.
pub const QUOTE_ATTEMPTS: usize = 3;

/// Reading and extending the workload PCR: all a measurement log needs from
/// a TPM, so that a log can be exercised without one.
pub trait WorkloadPcr {
    /// Current SHA-256 value of `pcr`.
    fn read(&mut self, pcr: u8) -> Result<Sha256Digest, TpmError>;
    /// Extends `pcr` in the SHA-256 bank.
    fn extend(&mut self, pcr: u8, digest: &Sha256Digest) -> Result<(), TpmError>;
}

impl WorkloadPcr for Tpm {
    fn read(&mut self, pcr: u8) -> Result<Sha256Digest, TpmError> {
        let values = self.read_pcrs(&[pcr])?;
        match values.as_slice() {
            [(read, value)] if *read == pcr => Ok(Sha256Digest(*value)),
            _ => Err(TpmError::UnexpectedResponse {
                command: "PCR_Read",
                reason: format!("asked for PCR {pcr}, got {} values", values.len()),
            }),
        }
    }

    fn extend(&mut self, pcr: u8, digest: &Sha256Digest) -> Result<(), TpmError> {
        Tpm::extend(self, pcr, digest.as_bytes())
    }
}

/// A quote together with the values of the PCRs it covers, checked to be
/// the values it signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrQuote {
    /// Marshalled `TPMS_ATTEST`.
    pub attest: Vec<u8>,
    /// Marshalled `TPMT_SIGNATURE` over `attest`.
    pub signature: Vec<u8>,
    /// SHA-256 values of the quoted PCRs, ascending, without duplicates.
    pub pcrs: Vec<(u8, [u8; 32])>,
}

impl PcrQuote {
    /// The quoted values as evidence lists them.
    pub fn pcr_values(&self) -> Vec<PcrValue> {
        self.pcrs
            .iter()
            .map(|&(pcr, value)| PcrValue {
                pcr,
                value: Sha256Digest(value),
            })
            .collect()
    }
}

/// Why no consistent quote was produced.
#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    /// Quoting or reading back the PCRs failed in the TPM itself.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The quote's extraData, PCR selection or pcrDigest disagree with the
    /// request or the values read back; the quote is never retaken for this.
    #[error("the quote does not match what was asked for: {0}")]
    Mismatch(String),
    /// Every one of the [`QUOTE_ATTEMPTS`] quotes was overtaken by an extend.
    #[error("the quoted PCRs kept changing between the quote and reading them back ({QUOTE_ATTEMPTS} attempts)")]
    PcrsChanging,
}

impl Tpm {
    /// Quotes `pcrs` with `qualifying` as qualifying data and reads their
    /// values back.
    ///
    /// The values are checked against the quote's pcrDigest, so a quote is
    /// never paired with values it did not sign; the quote's extraData and
    /// PCR selection are checked against what was asked for. A PCR extended
    /// between the quote and the read-back makes the quote be retaken (at
    /// most [`QUOTE_ATTEMPTS`] times).
    pub fn quote_with_values(
        &mut self,
        pcrs: &[u8],
        qualifying: &[u8; 32],
    ) -> Result<PcrQuote, QuoteError> {
        let mut wanted = pcrs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();

        for attempt in 1..=QUOTE_ATTEMPTS {
            let (attest, signature) = self.quote(&wanted, qualifying)?;
            let values = self.read_pcrs(&wanted)?;
            let quoted = parse_quote(&attest)?;
            if quoted.extra_data != qualifying {
                return Err(QuoteError::Mismatch(
                    "the quote's extraData is not the qualifying data sent".into(),
                ));
            }
            if quoted.pcrs != wanted {
                return Err(QuoteError::Mismatch(format!(
                    "the quote covers PCRs {:?}, asked for {:?}",
                    quoted.pcrs, wanted
                )));
            }
            let read: Vec<u8> = values.iter().map(|(pcr, _)| *pcr).collect();
            if read != wanted {
                return Err(QuoteError::Mismatch(format!(
                    "read back PCRs {read:?}, quoted {wanted:?}"
                )));
            }
            if quoted.pcr_digest != pcr_digest(&values) {
                tracing::debug!(
                    attempt,
                    "a quoted PCR changed before it was read back; quoting again"
                );
                continue;
            }
            return Ok(PcrQuote {
                attest,
                signature,
                pcrs: values,
            });
        }
        Err(QuoteError::PcrsChanging)
    }
}
