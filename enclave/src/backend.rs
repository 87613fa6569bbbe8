//! Where quotes come from: the seam between the batcher, which groups
//! challenges under one qualifying-data value, and whatever signs it.
//!
//! - [`LocalTpm`] (`--tcti`, legacy): the enclave's own TPM on a dedicated
//!   thread, quoting over the enclave's launch sequence (evidence v1);
//! - [`NodeAgentQuoter`] (`--node-agent`): `aver-node` over its agent
//!   socket, quoting over the node log (evidence v2).
//!
//! Either way the batcher asks for one quote at a time and awaits it, so
//! challenges that arrive meanwhile queue up and share the next quote.

use aver_verifier::ek::ActivationRequest;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::endorsement::ActivateError;
use crate::evidence::QuotedState;
use crate::launch::Enclave;
use crate::node_agent::NodeAgentQuoter;

/// Turns a qualifying-data value (a batch's Merkle root) into a quote, the
/// quoted PCRs, the AK public area and the log that explains them.
pub enum QuoteBackend {
    /// The enclave's own TPM.
    LocalTpm(LocalTpm),
    /// aver-node, the only TPM user on a hardened node.
    NodeAgent(NodeAgentQuoter),
}

impl QuoteBackend {
    /// One quote over `qualifying`; the error is one line, said to every
    /// challenge of the batch.
    pub async fn quote(&self, qualifying: [u8; 32]) -> Result<QuotedState, String> {
        match self {
            Self::LocalTpm(tpm) => tpm
                .quote(qualifying)
                .await
                .map_err(|e| format!("TPM quote failed: {e}")),
            Self::NodeAgent(agent) => agent
                .quote(qualifying)
                .await
                .map_err(|e| format!("aver-node quote failed: {e}")),
        }
    }

    /// Why evidence cannot be produced right now, if it cannot: `/readyz`
    /// fails while this is `Some`.
    pub async fn unavailable(&self) -> Option<String> {
        match self {
            // The TPM was opened at launch and the worker owns it; a TPM
            // failure shows in the quote.
            Self::LocalTpm(_) => None,
            // Quotes need the agent: unreachable means no evidence.
            Self::NodeAgent(agent) => agent.reachable().await.err(),
        }
    }
}

/// Handle to the thread that owns the launched enclave and its TPM; only
/// that thread touches the TPM, so commands never interleave. Cheap to
/// clone.
///
/// Quotes go first. The thread takes a quote whenever one waits, and an
/// activation only when no challenge waits in the batcher either (the
/// batcher submits one quote at a time, so challenges that arrived while
/// a quote was signed are the next quote) — except that every
/// [`QUOTES_PER_ACTIVATION`]th turn goes to a waiting activation, so that
/// steady evidence traffic cannot starve activations for ever. A quote
/// therefore waits for at most one activation; bounding how many
/// activations may wait is the server's admission control.
#[derive(Clone)]
pub struct LocalTpm {
    quotes: std::sync::mpsc::Sender<QuoteJob>,
    activations: std::sync::mpsc::Sender<ActivateJob>,
    doorbell: std::sync::mpsc::Sender<()>,
    demand: Arc<AtomicUsize>,
}

/// Quotes in a row after which a waiting activation gets its turn.
pub const QUOTES_PER_ACTIVATION: u32 = 4;

type QuoteJob = ([u8; 32], oneshot::Sender<Result<QuotedState, String>>);
type ActivateJob = (
    Box<ActivationRequest>,
    oneshot::Sender<Result<Vec<u8>, ActivateError>>,
    OwnedSemaphorePermit,
);

impl LocalTpm {
    /// Moves the enclave (and with it the TPM) to a dedicated thread.
    pub fn start(enclave: Enclave) -> std::io::Result<Self> {
        let (quotes, quote_rx) = std::sync::mpsc::channel();
        let (activations, activation_rx) = std::sync::mpsc::channel();
        let (doorbell, doorbell_rx) = std::sync::mpsc::channel();
        let demand = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            doorbell: doorbell_rx,
            quotes: quote_rx,
            activations: activation_rx,
            demand: demand.clone(),
        };
        std::thread::Builder::new()
            .name("aver-tpm".into())
            .spawn(move || worker.run(enclave))?;
        Ok(Self {
            quotes,
            activations,
            doorbell,
            demand,
        })
    }

    /// The count of challenges waiting for a quote, kept by the batcher:
    /// while it is not zero, a quote is coming and activations wait.
    pub fn demand(&self) -> Arc<AtomicUsize> {
        self.demand.clone()
    }

    /// One quote over `qualifying` with the enclave's launch log.
    pub async fn quote(&self, qualifying: [u8; 32]) -> Result<QuotedState, String> {
        let (reply, answer) = oneshot::channel();
        if self.quotes.send((qualifying, reply)).is_err() || self.doorbell.send(()).is_err() {
            return Err(STOPPED.to_owned());
        }
        answer.await.map_err(|_| STOPPED.to_owned())?
    }

    /// TPM2_ActivateCredential of a verifier's credential, on the TPM
    /// thread, after any quote that is waiting. `place` is the caller's
    /// place in the activation queue; it is released when the TPM is done,
    /// even if the caller stopped waiting.
    pub async fn activate(
        &self,
        request: ActivationRequest,
        place: OwnedSemaphorePermit,
    ) -> Result<Vec<u8>, ActivateError> {
        let (reply, answer) = oneshot::channel();
        if self
            .activations
            .send((Box::new(request), reply, place))
            .is_err()
            || self.doorbell.send(()).is_err()
        {
            return Err(ActivateError::WorkerStopped);
        }
        answer.await.map_err(|_| ActivateError::WorkerStopped)?
    }
}

const STOPPED: &str = "the TPM worker has stopped";

/// The TPM thread's end of the queues.
struct Worker {
    /// Rung after each job is queued; a wake-up, not a count.
    doorbell: std::sync::mpsc::Receiver<()>,
    quotes: std::sync::mpsc::Receiver<QuoteJob>,
    activations: std::sync::mpsc::Receiver<ActivateJob>,
    demand: Arc<AtomicUsize>,
}

/// How long the thread waits for a quote the batcher is about to submit.
const QUOTE_COMING: Duration = Duration::from_millis(5);

impl Worker {
    fn run(self, mut enclave: Enclave) {
        let mut quotes_in_a_row = 0u32;
        loop {
            if let Ok((qualifying, reply)) = self.quotes.try_recv() {
                let result = enclave.quote(&qualifying).map_err(|e| e.to_string());
                let _ = reply.send(result);
                quotes_in_a_row = quotes_in_a_row.saturating_add(1);
                continue;
            }
            let quote_coming = self.demand.load(Ordering::Acquire) > 0;
            if !quote_coming || quotes_in_a_row >= QUOTES_PER_ACTIVATION {
                if let Ok((request, reply, place)) = self.activations.try_recv() {
                    let _ = reply.send(enclave.activate(&request));
                    drop(place);
                    quotes_in_a_row = 0;
                    continue;
                }
            }
            let woken = if quote_coming {
                match self.doorbell.recv_timeout(QUOTE_COMING) {
                    Err(RecvTimeoutError::Disconnected) => Err(()),
                    Ok(()) | Err(RecvTimeoutError::Timeout) => Ok(()),
                }
            } else {
                self.doorbell.recv().map_err(|_| ())
            };
            if woken.is_err() {
                return; // every handle is gone
            }
        }
    }
}
