//! Building the evidence document (format v1, see
//! `aver_verifier::evidence`) that answers one verifier's nonce.

use aver_crds::Sha256Digest;
use aver_verifier::binding::{qualifying_data, MerkleProof, Nonce};
use aver_verifier::eventlog::LogEntry;
use aver_verifier::evidence::{Base64Bytes, PcrValue, Quote};
use aver_verifier::{Evidence, EVIDENCE_VERSION};

use crate::tpm::{parse_quote, pcr_digest, Tpm, TpmError};

/// How often a quote is retaken when a PCR moved between the quote and the
/// read-back. Only an extend racing with the quote causes that, so a second
/// attempt practically always succeeds; the bound keeps a PCR that is being
/// extended in a loop from holding the request forever.
const ATTEMPTS: usize = 3;

/// Why no evidence could be produced.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error("the quote does not match what was asked for: {0}")]
    QuoteMismatch(String),
    #[error("the quoted PCRs kept changing between the quote and reading them back ({ATTEMPTS} attempts)")]
    PcrsChanging,
}

/// Quotes `quote_pcrs` with qualifying data binding `nonce` to the TLS key
/// `spki` (DESIGN §3.1, §3.2) and packages the quote with the PCR values,
/// the AK public area and the workload event log.
pub fn collect(
    tpm: &mut Tpm,
    log: &[LogEntry],
    quote_pcrs: &[u8],
    nonce: &Nonce,
    spki: &Sha256Digest,
) -> Result<Evidence, CollectError> {
    // An unbatched challenge always has qualifying data; `None` only arises
    // from a malformed Merkle proof.
    let qualifying = qualifying_data(nonce, spki, None)
        .ok_or_else(|| CollectError::QuoteMismatch("no qualifying data for the nonce".into()))?;
    Ok(quote(tpm, log, quote_pcrs, &qualifying)?.for_challenge(*nonce, *spki, None))
}

/// One TPM quote and everything that goes with it, shared by every
/// challenge whose leaf is under the quoted qualifying data.
#[derive(Debug, Clone)]
pub struct QuotedState {
    quote: Quote,
    pcrs: Vec<PcrValue>,
    ak_public: Base64Bytes,
    event_log: Vec<LogEntry>,
}

impl QuotedState {
    /// The evidence document for one challenge under this quote.
    pub fn for_challenge(
        &self,
        nonce: Nonce,
        spki: Sha256Digest,
        batch: Option<MerkleProof>,
    ) -> Evidence {
        Evidence {
            version: EVIDENCE_VERSION,
            nonce,
            spki_sha256: spki,
            quote: self.quote.clone(),
            pcrs: self.pcrs.clone(),
            ak_public: self.ak_public.clone(),
            event_log: self.event_log.clone(),
            batch,
        }
    }
}

/// Quotes `quote_pcrs` with `qualifying` as qualifying data (a single
/// challenge's leaf or a batch's Merkle root).
///
/// PCR values are read right after the quote and are checked against the
/// quote's pcrDigest, so the document never pairs a quote with values it
/// did not sign.
pub fn quote(
    tpm: &mut Tpm,
    log: &[LogEntry],
    quote_pcrs: &[u8],
    qualifying: &[u8; 32],
) -> Result<QuotedState, CollectError> {
    let mut wanted = quote_pcrs.to_vec();
    wanted.sort_unstable();
    wanted.dedup();

    for attempt in 1..=ATTEMPTS {
        let (attest, signature) = tpm.quote(&wanted, qualifying)?;
        let values = tpm.read_pcrs(&wanted)?;
        let quoted = parse_quote(&attest)?;
        if quoted.extra_data != qualifying {
            return Err(CollectError::QuoteMismatch(
                "the quote's extraData is not the qualifying data sent".into(),
            ));
        }
        if quoted.pcrs != wanted {
            return Err(CollectError::QuoteMismatch(format!(
                "the quote covers PCRs {:?}, asked for {:?}",
                quoted.pcrs, wanted
            )));
        }
        let read: Vec<u8> = values.iter().map(|(pcr, _)| *pcr).collect();
        if read != wanted {
            return Err(CollectError::QuoteMismatch(format!(
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
        return Ok(QuotedState {
            quote: Quote {
                attest: Base64Bytes(attest),
                signature: Base64Bytes(signature),
            },
            pcrs: values
                .into_iter()
                .map(|(pcr, value)| PcrValue {
                    pcr,
                    value: Sha256Digest(value),
                })
                .collect(),
            ak_public: Base64Bytes(tpm.ak_public_tpmt()),
            event_log: log.to_vec(),
        });
    }
    Err(CollectError::PcrsChanging)
}
