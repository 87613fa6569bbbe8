//! Nonce batching (docs/architecture.md#evidence-flow): a TPM signs a few tens of quotes a second,
//! so evidence requests that arrive within a short window share one quote
//! whose qualifying data is the Merkle root over their (nonce, SPKI) leaves.
//! Each response carries its inclusion proof. A request alone is the
//! one-leaf tree: its qualifying data is exactly the unbatched formula.
//!
//! One quote is in flight at a time; what signs it is the
//! [`QuoteBackend`] (the enclave's own TPM, or aver-node).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aver_crds::Sha256Digest;
use aver_verifier::binding::{leaf, MerkleTree, Nonce};
use aver_verifier::Evidence;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::{LocalTpm, QuoteBackend};
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

/// Counters, exported as metrics (registered in the server's registry:
/// every clone counts into the same value) and read by tests.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub quotes: Counter,
    pub challenges: Counter,
    pub failures: Counter,
}

/// Why no evidence was produced for a challenge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The backend's one-line reason (it names the TPM or aver-node).
    #[error("{0}")]
    Quote(String),
    #[error("the evidence batcher has stopped")]
    Stopped,
    /// More challenges wait than the next few quotes can answer: said at
    /// once (503) instead of making the caller wait without bound.
    #[error("too many evidence requests are waiting for the TPM; retry shortly")]
    Busy,
}

struct Pending {
    nonce: Nonce,
    arrived: Instant,
    reply: oneshot::Sender<Result<Evidence, BatchError>>,
}

/// Handle through which request handlers ask for evidence. Cheap to clone.
#[derive(Clone)]
pub struct QuoteBatcher {
    tx: mpsc::Sender<Pending>,
    backend: Arc<QuoteBackend>,
    stats: Arc<BatchStats>,
    /// Challenges queued or being quoted; the local TPM's worker reads it
    /// to give quotes precedence over credential activations.
    demand: Arc<AtomicUsize>,
}

impl QuoteBatcher {
    /// Moves the enclave (and with it the TPM) to a dedicated worker thread
    /// and starts the batching task on the current tokio runtime.
    pub fn start(enclave: Enclave, config: BatchConfig) -> std::io::Result<Self> {
        let spki = enclave.tls_key().spki_sha256();
        let backend = QuoteBackend::LocalTpm(LocalTpm::start(enclave)?);
        Ok(Self::with_backend(backend, spki, config))
    }

    /// Starts the batching task on the current tokio runtime, quoting
    /// through `backend` for challenges bound to the TLS key `spki`.
    pub fn with_backend(backend: QuoteBackend, spki: Sha256Digest, config: BatchConfig) -> Self {
        let stats = Arc::new(BatchStats::default());
        let demand = match &backend {
            QuoteBackend::LocalTpm(tpm) => tpm.demand(),
            QuoteBackend::NodeAgent(_) => Arc::new(AtomicUsize::new(0)),
        };
        let backend = Arc::new(backend);
        // Room for four batches behind the one being signed: beyond that a
        // challenge would wait five quotes or more, and is told 503.
        let (tx, rx) = mpsc::channel(config.max_batch.max(1).saturating_mul(4));
        tokio::spawn(collect_batches(
            rx,
            backend.clone(),
            spki,
            config,
            stats.clone(),
            demand.clone(),
        ));
        Self {
            tx,
            backend,
            stats,
            demand,
        }
    }

    /// Evidence answering `nonce`, bound to the enclave's TLS key.
    pub async fn evidence(&self, nonce: Nonce) -> Result<Evidence, BatchError> {
        let (reply, answer) = oneshot::channel();
        // Counted before it is queued, so that the count is never below
        // what waits; the collector subtracts once the batch is answered.
        self.demand.fetch_add(1, Ordering::AcqRel);
        self.tx
            .try_send(Pending {
                nonce,
                arrived: Instant::now(),
                reply,
            })
            .map_err(|e| {
                self.demand.fetch_sub(1, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => BatchError::Busy,
                    mpsc::error::TrySendError::Closed(_) => BatchError::Stopped,
                }
            })?;
        answer.await.map_err(|_| BatchError::Stopped)?
    }

    /// What quotes are taken with.
    pub fn backend(&self) -> &QuoteBackend {
        &self.backend
    }

    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

async fn collect_batches(
    mut rx: mpsc::Receiver<Pending>,
    backend: Arc<QuoteBackend>,
    spki: Sha256Digest,
    config: BatchConfig,
    stats: Arc<BatchStats>,
    demand: Arc<AtomicUsize>,
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
            demand.fetch_sub(batch.len(), Ordering::AcqRel);
            continue;
        };
        // Awaited before the next batch is collected: whatever queues
        // meanwhile goes under the next quote (group commit).
        let quoted = backend.quote(tree.root()).await.map_err(BatchError::Quote);
        demand.fetch_sub(batch.len(), Ordering::AcqRel);
        stats.challenges.inc_by(batch.len() as u64);
        match quoted {
            Ok(state) => {
                stats.quotes.inc();
                let single = batch.len() == 1;
                for (i, pending) in batch.into_iter().enumerate() {
                    let proof = if single { None } else { tree.proof(i) };
                    let evidence = state.for_challenge(pending.nonce, spki, proof);
                    let _ = pending.reply.send(Ok(evidence));
                }
            }
            Err(error) => {
                stats.failures.inc();
                tracing::error!(%error, challenges = batch.len(), "no evidence for this batch");
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
