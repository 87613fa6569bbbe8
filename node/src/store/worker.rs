//! The one thread that talks to the TPM, and the async handle to it.
//!
//! [`Measurer`] owns the [`Tpm`] and the [`NodeLogStore`] on a dedicated
//! thread (like the enclave's quote batcher), so extends and quotes never
//! interleave: events are recorded one at a time in the order they were
//! sent, and a quote takes its snapshot of the log on the same thread, right
//! before quoting, so the log it returns is exactly what the quoted workload
//! PCR holds.
//!
//! Quote requests are not batched here: the enclave batches its own
//! verifiers' nonces and sends one qualifying-data per quote.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aver_crds::Sha256Digest;
use aver_node_log::{NodeEvent, NodeLogEntry};
use aver_tpm::tpm::{DEFAULT_AK_HANDLE, PCR_COUNT};
use aver_tpm::{QuoteError, Tpm, TpmError};
use aver_verifier::evidence::Base64Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::platform_logs::PlatformLogs;

use super::log::{NodeLogStore, StoreError, DEFAULT_STATE_DIR, DEFAULT_WORKLOAD_PCR};

/// PCRs quoted besides the workload PCR unless configured otherwise: the
/// boot chain the firmware event log explains (0–9) and IMA's PCR (10).
pub const DEFAULT_BOOT_PCRS: [u8; 11] = aver_crds::boot_policy::PLATFORM_PCRS;

/// Requests queued for the TPM thread before senders wait.
const QUEUE: usize = 256;

/// What the [`Measurer`] is started with.
#[derive(Debug, Clone)]
pub struct MeasurerConfig {
    /// TPM to open (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`).
    pub tcti: String,
    /// Persistent handle of the attestation key.
    pub ak_handle: u32,
    /// Directory holding the node log across restarts.
    pub state_dir: PathBuf,
    /// PCR the node log is extended into (11 to 15).
    pub workload_pcr: u8,
    /// PCRs quoted together with the workload PCR (which is always quoted).
    pub quote_pcrs: Vec<u8>,
    /// The node policy file, verbatim: recorded in `agent-start`.
    pub policy: String,
    /// The firmware event log and IMA list served with every quote.
    pub logs: PlatformLogs,
}

impl MeasurerConfig {
    /// The defaults (AK at [`DEFAULT_AK_HANDLE`], state in
    /// [`DEFAULT_STATE_DIR`], PCR 13, PCRs 0-10 quoted) for `tcti` and
    /// the node policy text `policy`.
    pub fn new(tcti: impl Into<String>, policy: impl Into<String>) -> Self {
        Self {
            tcti: tcti.into(),
            ak_handle: DEFAULT_AK_HANDLE,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            workload_pcr: DEFAULT_WORKLOAD_PCR,
            quote_pcrs: DEFAULT_BOOT_PCRS.to_vec(),
            policy: policy.into(),
            logs: PlatformLogs::none(),
        }
    }
}

/// A quote of the node's PCRs with the node log it covers and the platform
/// logs: what the agent socket answers `POST /v1/quote` with.
pub use aver_verifier::evidence::NodeQuote;

enum Job {
    Record(Box<NodeEvent>, oneshot::Sender<Result<(), StoreError>>),
    Quote([u8; 32], oneshot::Sender<Result<NodeQuote, StoreError>>),
    Entries(oneshot::Sender<Vec<NodeLogEntry>>),
    Stop(oneshot::Sender<()>),
}

/// Handle to the TPM thread. Cheap to clone; the thread ends when every
/// handle is dropped or [`Measurer::stop`] is called.
#[derive(Debug, Clone)]
pub struct Measurer {
    jobs: mpsc::Sender<Job>,
    workload_pcr: u8,
    quote_pcrs: Arc<[u8]>,
    log_size: NodeLogSize,
}

/// How many events the node log holds, kept current by the TPM thread and
/// read without asking it (for the `aver_node_log_events` gauge). Cheap to
/// clone; holding one does not keep the TPM thread alive.
#[derive(Debug, Clone, Default)]
pub struct NodeLogSize(Arc<AtomicUsize>);

impl NodeLogSize {
    /// Events in the node log, at most
    /// [`aver_node_log::MAX_NODE_LOG_EVENTS`].
    pub fn events(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, events: usize) {
        self.0.store(events, Ordering::Relaxed);
    }
}

impl Measurer {
    /// Opens the TPM, opens the node log (reconciling it with the workload
    /// PCR and recording `agent-start`) and moves both to the TPM thread.
    ///
    /// Blocks on the TPM and the disk: call it before serving, or through
    /// `spawn_blocking`. The handle itself needs no runtime to be created.
    pub fn start(config: &MeasurerConfig) -> Result<Self, StoreError> {
        let tpm = Tpm::open(&config.tcti, config.ak_handle)?;
        Self::with_tpm(tpm, config)
    }

    /// As [`Measurer::start`], with a TPM the caller opened
    /// (`config.tcti` and `config.ak_handle` are not used).
    pub fn with_tpm(mut tpm: Tpm, config: &MeasurerConfig) -> Result<Self, StoreError> {
        let mut quote_pcrs = config.quote_pcrs.clone();
        quote_pcrs.push(config.workload_pcr);
        quote_pcrs.sort_unstable();
        quote_pcrs.dedup();
        // Refused before anything is recorded, not at the first quote.
        if let Some(&bad) = quote_pcrs.iter().find(|&&p| p >= PCR_COUNT) {
            return Err(TpmError::BadPcr(bad).into());
        }
        let store = NodeLogStore::open(
            &config.state_dir,
            config.workload_pcr,
            &config.policy,
            &mut tpm,
        )?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        let worker_pcrs = quote_pcrs.clone();
        let logs = config.logs.clone();
        let log_size = NodeLogSize::default();
        log_size.set(store.entries().len());
        let worker_size = log_size.clone();
        std::thread::Builder::new()
            .name("aver-node-tpm".into())
            .spawn(move || run(tpm, store, worker_pcrs, logs, worker_size, queue))
            .map_err(StoreError::Thread)?;
        Ok(Self {
            jobs,
            workload_pcr: config.workload_pcr,
            quote_pcrs: quote_pcrs.into(),
            log_size,
        })
    }

    /// Records `event`: written to the log as pending, extended into the
    /// workload PCR, committed. Events are recorded in the order of the
    /// calls, one at a time. On error the event is not in the log.
    pub async fn record(&self, event: NodeEvent) -> Result<(), StoreError> {
        self.ask(|reply| Job::Record(Box::new(event), reply))
            .await?
    }

    /// Quotes the workload PCR and the configured PCRs with `qualifying` as
    /// qualifying data, and returns the quote with the node log as of it.
    pub async fn quote(&self, qualifying: [u8; 32]) -> Result<NodeQuote, StoreError> {
        self.ask(|reply| Job::Quote(qualifying, reply)).await?
    }

    /// The node log as recorded so far.
    pub async fn entries(&self) -> Result<Vec<NodeLogEntry>, StoreError> {
        self.ask(Job::Entries).await
    }

    /// Stops the TPM thread once the requests queued before this one are
    /// done, and waits until it has released the TPM and the state
    /// directory's lock. Every later request fails with
    /// [`StoreError::Stopped`].
    pub async fn stop(&self) {
        let _ = self.ask(Job::Stop).await;
    }

    /// The size of the node log, kept current as events are recorded.
    pub fn log_size(&self) -> NodeLogSize {
        self.log_size.clone()
    }

    /// The PCR the node log is extended into.
    pub fn workload_pcr(&self) -> u8 {
        self.workload_pcr
    }

    /// The PCRs every quote covers, ascending (the workload PCR among them).
    pub fn quote_pcrs(&self) -> &[u8] {
        &self.quote_pcrs
    }

    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)
    }
}

fn run(
    mut tpm: Tpm,
    mut store: NodeLogStore,
    quote_pcrs: Vec<u8>,
    logs: PlatformLogs,
    log_size: NodeLogSize,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Record(event, reply) => {
                let kind = event.kind();
                let result = store.append(*event, &mut tpm);
                log_size.set(store.entries().len());
                if let Err(error) = &result {
                    tracing::error!(event = kind, %error, "event not recorded");
                }
                // A caller that went away still had its event recorded.
                let _ = reply.send(result);
            }
            Job::Quote(qualifying, reply) => {
                let result = quote(&mut tpm, &store, &quote_pcrs, &logs, &qualifying);
                if let Err(error) = &result {
                    tracing::error!(%error, "no quote");
                }
                let _ = reply.send(result);
            }
            Job::Entries(reply) => {
                let _ = reply.send(store.entries().to_vec());
            }
            Job::Stop(reply) => {
                drop(store);
                drop(tpm);
                let _ = reply.send(());
                return;
            }
        }
    }
}

/// Quotes on the TPM thread, with the log as it is at the quote: nothing is
/// extended between the snapshot and the quote, since only this thread
/// extends.
fn quote(
    tpm: &mut Tpm,
    store: &NodeLogStore,
    quote_pcrs: &[u8],
    logs: &PlatformLogs,
    qualifying: &[u8; 32],
) -> Result<NodeQuote, StoreError> {
    let node_log = store.entries().to_vec();
    let boot_log = logs.read_boot()?;
    let quoted = tpm.quote_with_values(quote_pcrs, qualifying)?;
    // After the quote: the list only grows, so a prefix explains PCR 10.
    let ima_log = logs.read_ima()?;
    let workload = store.workload_pcr();
    let value = quoted
        .pcrs
        .iter()
        .find(|(pcr, _)| *pcr == workload)
        .map(|(_, value)| Sha256Digest(*value))
        .ok_or_else(|| {
            QuoteError::Mismatch(format!("PCR {workload} is not among the quoted PCRs"))
        })?;
    if value != store.replayed() {
        // Served anyway: the verifier refuses it (the log does not replay to
        // the quoted PCR), so a node tampered with fails attestation, and its
        // pods are replaced, instead of looking unavailable.
        tracing::error!(
            pcr = workload,
            quoted = %value,
            replayed = %store.replayed(),
            "something outside aver-node extended the workload PCR: evidence from this node cannot verify until it reboots"
        );
    }
    let pcrs = quoted.pcr_values();
    Ok(NodeQuote {
        attest: Base64Bytes(quoted.attest),
        signature: Base64Bytes(quoted.signature),
        pcrs,
        ak_public: Base64Bytes(tpm.ak_public_tpmt()),
        node_log,
        boot_log,
        ima_log,
        ak_certificate: logs.ak_certificate(),
        ak_chain: logs.ak_chain(),
    })
}
