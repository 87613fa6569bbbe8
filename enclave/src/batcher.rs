//! Nonce batching (DESIGN §4): a TPM signs a few tens of quotes a second,
//! so evidence requests that arrive within a short window share one quote
//! whose qualifying data is the Merkle root over their (nonce, SPKI) leaves.
//! Each response carries its inclusion proof. A request alone is the
//! one-leaf tree: its qualifying data is exactly the unbatched formula.
//!
//! Only the worker thread touches the TPM, so quotes never interleave.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aver_crds::Sha256Digest;
use aver_verifier::binding::{leaf, MerkleTree, Nonce};
use aver_verifier::ek::ActivationRequest;
use aver_verifier::Evidence;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::endorsement::ActivateError;
use crate::evidence::QuotedState;
use crate::launch::Enclave;

/// How challenges are grouped. By default there is no window at all:
/// batching happens by itself (group commit), because challenges that
/// arrive while a quote is being signed queue up and all go under the next
/// quote. A lone client then pays one quote and nothing more. A window
/// makes near-simultaneous arrivals wait for each other; tokio's timer has
/// millisecond granularity, so a 1 ms window costs up to 2 ms.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// How long the first challenge of a batch waits for others.
    pub window: Duration,
    /// Most challenges under one quote (1 disables batching).
    pub max_batch: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            window: Duration::ZERO,
            max_batch: 1024,
        }
    }
}

/// Counters, exported as metrics and read by tests.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub quotes: AtomicU64,
    pub challenges: AtomicU64,
    pub failures: AtomicU64,
}

/// Why no evidence was produced for a challenge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("TPM quote failed: {0}")]
    Quote(String),
    #[error("the TPM worker has stopped")]
    Stopped,
}

struct Pending {
    nonce: Nonce,
    arrived: Instant,
    reply: oneshot::Sender<Result<Evidence, BatchError>>,
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

/// Handle through which request handlers ask for evidence. Cheap to clone.
#[derive(Clone)]
pub struct QuoteBatcher {
    tx: mpsc::Sender<Pending>,
    jobs: std::sync::mpsc::Sender<TpmJob>,
    stats: Arc<BatchStats>,
}

impl QuoteBatcher {
    /// Moves the enclave (and with it the TPM) to a dedicated worker thread
    /// and starts the batching task on the current tokio runtime.
    pub fn start(enclave: Enclave, config: BatchConfig) -> std::io::Result<Self> {
        let spki = enclave.tls_key().spki_sha256();
        let stats = Arc::new(BatchStats::default());
        let (job_tx, job_rx) = std::sync::mpsc::channel::<TpmJob>();
        std::thread::Builder::new()
            .name("aver-tpm".into())
            .spawn(move || tpm_worker(enclave, job_rx))?;
        let (tx, rx) = mpsc::channel(config.max_batch.max(1).saturating_mul(4));
        tokio::spawn(collect_batches(
            rx,
            job_tx.clone(),
            spki,
            config,
            stats.clone(),
        ));
        Ok(Self {
            tx,
            jobs: job_tx,
            stats,
        })
    }

    /// Evidence answering `nonce`, bound to the enclave's TLS key.
    pub async fn evidence(&self, nonce: Nonce) -> Result<Evidence, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                nonce,
                arrived: Instant::now(),
                reply,
            })
            .await
            .map_err(|_| BatchError::Stopped)?;
        answer.await.map_err(|_| BatchError::Stopped)?
    }

    /// Activates a verifier's credential on the TPM thread.
    pub async fn activate(&self, request: ActivationRequest) -> Result<Vec<u8>, ActivateError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(TpmJob::Activate(Box::new(request), reply))
            .map_err(|_| ActivateError::WorkerStopped)?;
        answer.await.map_err(|_| ActivateError::WorkerStopped)?
    }

    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

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

async fn collect_batches(
    mut rx: mpsc::Receiver<Pending>,
    jobs: std::sync::mpsc::Sender<TpmJob>,
    spki: Sha256Digest,
    config: BatchConfig,
    stats: Arc<BatchStats>,
) {
    let max = config.max_batch.max(1);
    while let Some(first) = rx.recv().await {
        // The window runs from the first challenge's arrival: challenges that
        // queued while the previous quote was signed do not wait again.
        let deadline = first.arrived + config.window;
        let mut batch = vec![first];
        // Everything already queued joins without waiting.
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Then wait out what is left of the window, if anything (the timer
        // has millisecond granularity, so an elapsed window never sleeps).
        if Instant::now() < deadline {
            while batch.len() < max {
                tokio::select! {
                    biased;
                    next = rx.recv() => match next {
                        Some(p) => batch.push(p),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        let leaves = batch.iter().map(|p| leaf(&p.nonce, &spki)).collect();
        let Some(tree) = MerkleTree::new(leaves) else {
            continue;
        };
        let (reply, answer) = oneshot::channel();
        let quoted = if jobs.send(TpmJob::Quote(tree.root(), reply)).is_err() {
            Err(BatchError::Stopped)
        } else {
            match answer.await {
                Ok(Ok(state)) => Ok(state),
                Ok(Err(message)) => Err(BatchError::Quote(message)),
                Err(_) => Err(BatchError::Stopped),
            }
        };
        stats
            .challenges
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match quoted {
            Ok(state) => {
                stats.quotes.fetch_add(1, Ordering::Relaxed);
                let single = batch.len() == 1;
                for (i, pending) in batch.into_iter().enumerate() {
                    let proof = if single { None } else { tree.proof(i) };
                    let evidence = state.for_challenge(pending.nonce, spki, proof);
                    let _ = pending.reply.send(Ok(evidence));
                }
            }
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, challenges = batch.len(), "no evidence for this batch");
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
