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
use tokio::sync::oneshot;

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

/// Work for the TPM thread: a quote over a batch's root, or a credential
/// activation (rare, so it simply queues between quotes).
enum TpmJob {
    Quote([u8; 32], oneshot::Sender<Result<QuotedState, String>>),
    Activate(
        Box<ActivationRequest>,
        oneshot::Sender<Result<Vec<u8>, ActivateError>>,
    ),
}

/// Handle to the thread that owns the launched enclave and its TPM; only
/// that thread touches the TPM, so commands never interleave. Cheap to
/// clone.
#[derive(Clone)]
pub struct LocalTpm {
    jobs: std::sync::mpsc::Sender<TpmJob>,
}

impl LocalTpm {
    /// Moves the enclave (and with it the TPM) to a dedicated thread.
    pub fn start(enclave: Enclave) -> std::io::Result<Self> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<TpmJob>();
        std::thread::Builder::new()
            .name("aver-tpm".into())
            .spawn(move || tpm_worker(enclave, job_rx))?;
        Ok(Self { jobs })
    }

    /// One quote over `qualifying` with the enclave's launch log.
    pub async fn quote(&self, qualifying: [u8; 32]) -> Result<QuotedState, String> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(TpmJob::Quote(qualifying, reply))
            .map_err(|_| STOPPED.to_owned())?;
        answer.await.map_err(|_| STOPPED.to_owned())?
    }

    /// TPM2_ActivateCredential of a verifier's credential, on the TPM thread.
    pub async fn activate(&self, request: ActivationRequest) -> Result<Vec<u8>, ActivateError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(TpmJob::Activate(Box::new(request), reply))
            .map_err(|_| ActivateError::WorkerStopped)?;
        answer.await.map_err(|_| ActivateError::WorkerStopped)?
    }
}

const STOPPED: &str = "the TPM worker has stopped";

fn tpm_worker(mut enclave: Enclave, jobs: std::sync::mpsc::Receiver<TpmJob>) {
    while let Ok(job) = jobs.recv() {
        match job {
            TpmJob::Quote(qualifying, reply) => {
                let result = enclave.quote(&qualifying).map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            TpmJob::Activate(request, reply) => {
                let _ = reply.send(enclave.activate(&request));
            }
        }
    }
}
