//! Building the evidence document (see `aver_verifier::evidence`) that
//! answers one verifier's nonce: format v1 from a quote of the enclave's own
//! TPM ([`quote`]), whose log is the enclave's launch sequence; format v2
//! from a quote by aver-node (`crate::node_agent`), whose log is the node
//! log.

use aver_crds::Sha256Digest;
use aver_node_log::NodeLogEntry;
use aver_verifier::binding::{qualifying_data, MerkleProof, Nonce};
use aver_verifier::eventlog::LogEntry;
use aver_verifier::evidence::{Base64Bytes, PcrValue, Quote};
use aver_verifier::{Evidence, EVIDENCE_VERSION_ENCLAVE, EVIDENCE_VERSION_NODE};

use aver_tpm::pcrs::{QuoteError, QUOTE_ATTEMPTS};

use crate::tpm::{Tpm, TpmError};

/// Why no evidence could be produced.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error("the quote does not match what was asked for: {0}")]
    QuoteMismatch(String),
    #[error("the quoted PCRs kept changing between the quote and reading them back ({QUOTE_ATTEMPTS} attempts)")]
    PcrsChanging,
}

/// Quotes `quote_pcrs` with qualifying data binding `nonce` to the TLS key
/// `spki` (docs/architecture.md, "Freshness", "Channel binding") and packages the quote with the PCR values,
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
    pub(crate) quote: Quote,
    pub(crate) pcrs: Vec<PcrValue>,
    pub(crate) ak_public: Base64Bytes,
    pub(crate) log: QuotedLog,
    pub(crate) boot_log: Option<Base64Bytes>,
    pub(crate) ima_log: Option<Base64Bytes>,
    /// The node's AK certificate and its intermediates (node mode).
    pub(crate) ak_certificate: Option<Base64Bytes>,
    pub(crate) ak_chain: Vec<Base64Bytes>,
}

/// The log that explains the quoted workload PCR, which also decides the
/// evidence version.
#[derive(Debug, Clone)]
pub enum QuotedLog {
    /// The enclave's own launch sequence (local TPM): evidence v1.
    Launch(Vec<LogEntry>),
    /// aver-node's log of everything the node ran (`--node-agent`):
    /// evidence v2.
    Node(Vec<NodeLogEntry>),
}

impl QuotedState {
    /// The evidence document for one challenge under this quote.
    pub fn for_challenge(
        &self,
        nonce: Nonce,
        spki: Sha256Digest,
        batch: Option<MerkleProof>,
    ) -> Evidence {
        match &self.log {
            QuotedLog::Launch(event_log) => Evidence {
                version: EVIDENCE_VERSION_ENCLAVE,
                nonce,
                spki_sha256: spki,
                quote: self.quote.clone(),
                pcrs: self.pcrs.clone(),
                ak_public: self.ak_public.clone(),
                event_log: event_log.clone(),
                node_log: Vec::new(),
                boot_log: self.boot_log.clone(),
                ima_log: self.ima_log.clone(),
                batch,
                ak_certificate: self.ak_certificate.clone(),
                ak_chain: self.ak_chain.clone(),
            },
            QuotedLog::Node(node_log) => Evidence {
                version: EVIDENCE_VERSION_NODE,
                nonce,
                spki_sha256: spki,
                quote: self.quote.clone(),
                pcrs: self.pcrs.clone(),
                ak_public: self.ak_public.clone(),
                event_log: Vec::new(),
                node_log: node_log.clone(),
                boot_log: self.boot_log.clone(),
                ima_log: self.ima_log.clone(),
                batch,
                ak_certificate: self.ak_certificate.clone(),
                ak_chain: self.ak_chain.clone(),
            },
        }
    }
}

/// Quotes `quote_pcrs` with `qualifying` as qualifying data (a single
/// challenge's leaf or a batch's Merkle root).
///
/// PCR values are read right after the quote and are checked against the
/// quote's pcrDigest ([`Tpm::quote_with_values`]), so the document never
/// pairs a quote with values it did not sign.
pub fn quote(
    tpm: &mut Tpm,
    log: &[LogEntry],
    quote_pcrs: &[u8],
    qualifying: &[u8; 32],
) -> Result<QuotedState, CollectError> {
    let quoted = tpm
        .quote_with_values(quote_pcrs, qualifying)
        .map_err(|e| match e {
            QuoteError::Tpm(e) => CollectError::Tpm(e),
            QuoteError::Mismatch(reason) => CollectError::QuoteMismatch(reason),
            QuoteError::PcrsChanging => CollectError::PcrsChanging,
        })?;
    let pcrs = quoted.pcr_values();
    Ok(QuotedState {
        quote: Quote {
            attest: Base64Bytes(quoted.attest),
            signature: Base64Bytes(quoted.signature),
        },
        pcrs,
        ak_public: Base64Bytes(tpm.ak_public_tpmt()),
        log: QuotedLog::Launch(log.to_vec()),
        // The enclave mode reads no platform logs: aver-node does.
        boot_log: None,
        ima_log: None,
        ak_certificate: None,
        ak_chain: Vec::new(),
    })
}
