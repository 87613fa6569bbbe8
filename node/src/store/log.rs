//! The node log of this boot, persisted in the state directory.
//!
//! PCRs survive a restart of `aver-node` but not a reboot, so the log lives
//! in the state directory (`--state-dir`, default [`DEFAULT_STATE_DIR`]) and
//! is reconciled with the workload PCR on every start:
//!
//! - the PCR is all zeros: the TPM was reset (reboot). The stored log is
//!   stale; it is moved aside to [`PREVIOUS_LOG_FILE`] (one is kept) and a
//!   new log starts;
//! - the committed events replay to the PCR: the log continues;
//! - the committed events plus the pending one replay to the PCR: the agent
//!   stopped after extending and before committing; the pending event is
//!   committed. (Committed events alone matching while an event is pending
//!   means it stopped before extending; the pending event never happened
//!   and is dropped);
//! - anything else: something outside `aver-node` extended the PCR, or the
//!   log was lost or damaged. The PCR can no longer be explained until the
//!   node reboots, so `aver-node` refuses to start.
//!
//! Then every start appends an `agent-start` event with the node policy in
//! force.
//!
//! Write-ahead: every event is first written to the log file as *pending*
//! (atomically: a temporary file, fsynced, renamed over the log, directory
//! fsynced), then extended into the PCR, then written again as committed. A
//! crash at any point leaves a log that is either exact or one pending event
//! ahead of the PCR, never an extend that no log records.
//!
//! The log is bounded: at [`MAX_NODE_LOG_EVENTS`] events it refuses every
//! further event ([`StoreError::Full`]), so new sandboxes and containers are
//! refused until the node reboots. That fails closed: nothing runs that the
//! log does not show, and no history is dropped to make room. One event's
//! JSON is bounded by [`MAX_EVENT_JSON_BYTES`]. The whole file is rewritten
//! for each write, which is cheap for the few-kilobyte events the gate
//! records and bounded by these two limits.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use aver_crds::policy::WORKLOAD_PCRS;
use aver_crds::Sha256Digest;
use aver_node_log::{extend, replay, NodeEvent, NodeLogEntry, MAX_NODE_LOG_EVENTS};
use aver_tpm::pcrs::{QuoteError, WorkloadPcr};
use aver_tpm::state_dir::{self, replace, StateDirError};
use aver_tpm::TpmError;
use serde::{Deserialize, Serialize};

pub use aver_crds::policy::DEFAULT_WORKLOAD_PCR;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/aver-node";
/// Name of the log file inside the state directory.
pub const LOG_FILE: &str = "node-log.json";
/// Where the log of the previous boot is kept after a TPM reset (only the
/// latest one; an older one is replaced).
pub const PREVIOUS_LOG_FILE: &str = "node-log.previous.json";
/// Name of the lock file that keeps two agents from sharing a state
/// directory (and so from interleaving their extends).
pub const LOCK_FILE: &str = "lock";
/// Largest JSON encoding of one log entry. The gate's events are a few
/// kilobytes; the largest is `agent-start`, which carries the node policy
/// file verbatim.
pub const MAX_EVENT_JSON_BYTES: usize = 64 * 1024;
/// The version recorded in `agent-start`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Format version of the stored log file.
const STORE_VERSION: u32 = 1;
const TEMP_FILE: &str = ".node-log.json.tmp";

/// Why the node log could not be opened, stored or extended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("PCR {0} cannot hold the node log: use one of PCRs 11 to 15 (never reset except by a TPM reset, and not explained by the boot log, 0-9, or IMA, 10)")]
    UnsuitablePcr(u8),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("state directory {0} is in use by another aver-node (its lock is held): run one agent per node and state directory")]
    Busy(PathBuf),
    #[error("node log {path} is unreadable ({reason}) while PCR {pcr} is not in reset state: the PCR cannot be explained, so aver-node refuses to start until the node reboots")]
    Corrupt {
        path: PathBuf,
        pcr: u8,
        reason: String,
    },
    #[error("node log {path} is for PCR {stored}, but the workload PCR is now {configured}: use the PCR the log was started with, or a separate state directory per PCR")]
    OtherPcr {
        path: PathBuf,
        stored: u8,
        configured: u8,
    },
    #[error("PCR {pcr} is {value} but there is no node log at {path}: the state directory was lost, or something outside aver-node extended PCR {pcr}; aver-node refuses to start until the node reboots")]
    NoLog {
        path: PathBuf,
        pcr: u8,
        value: Sha256Digest,
    },
    #[error("PCR {pcr} is {value} but the node log {path} replays to {replayed}{}: something outside aver-node extended PCR {pcr}; aver-node refuses to start until the node reboots", pending_note(.with_pending))]
    Foreign {
        path: PathBuf,
        pcr: u8,
        value: Sha256Digest,
        replayed: Sha256Digest,
        /// What the log replays to with its pending event, if it had one.
        with_pending: Option<Sha256Digest>,
    },
    #[error(transparent)]
    PlatformLog(#[from] crate::platform_logs::PlatformLogError),
    #[error("the node log is full ({max} events since boot): aver-node records nothing more, so it refuses new sandboxes and containers until the node reboots")]
    Full { max: usize },
    #[error("{kind} event is {bytes} bytes of JSON, more than the {MAX_EVENT_JSON_BYTES} bytes one node log event may take")]
    EventTooLarge { kind: &'static str, bytes: usize },
    #[error("the node log no longer explains PCR {pcr} ({reason}): aver-node records nothing more until it is restarted")]
    Unsynced { pcr: u8, reason: String },
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Quote(#[from] QuoteError),
    #[error("cannot start the TPM thread: {0}")]
    Thread(io::Error),
    #[error("the TPM worker of aver-node has stopped")]
    Stopped,
}

fn pending_note(with_pending: &Option<Sha256Digest>) -> String {
    match with_pending {
        Some(value) => format!(" ({value} with its pending event)"),
        None => String::new(),
    }
}

/// The stored form: versioned, and naming its PCR so that a changed
/// `--workload-pcr` is noticed instead of replaying against the wrong PCR.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoredLog {
    version: u32,
    workload_pcr: u8,
    entries: Vec<NodeLogEntry>,
    /// Written before its extend, and replaced by the committed form after.
    #[serde(default)]
    pending: Option<NodeLogEntry>,
}

/// [`StoredLog`] as it is written, borrowing the entries.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StoredLogRef<'a> {
    version: u32,
    workload_pcr: u8,
    entries: &'a [NodeLogEntry],
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<&'a NodeLogEntry>,
}

/// The node log of this boot, loaded from and written to the state
/// directory, with the directory locked for as long as the value lives.
#[derive(Debug)]
pub struct NodeLogStore {
    dir: PathBuf,
    workload_pcr: u8,
    entries: Vec<NodeLogEntry>,
    /// What `entries` replay to, kept up to date so appends need no replay.
    value: Sha256Digest,
    /// Set when an extend failed and the PCR could not be shown to be
    /// either before or after it: from then on nothing is appended.
    unsynced: Option<String>,
    /// Holds the exclusive lock on `dir/LOCK_FILE`; released on drop (or by
    /// the kernel when the process dies).
    _lock: File,
}

impl NodeLogStore {
    /// Locks `state_dir` (creating it if needed), reconciles the stored log
    /// with the workload PCR (see the module documentation), and appends an
    /// `agent-start` event carrying `policy`, the node policy file verbatim.
    pub fn open(
        state_dir: &Path,
        workload_pcr: u8,
        policy: &str,
        pcr: &mut impl WorkloadPcr,
    ) -> Result<Self, StoreError> {
        let mut store = Self::recover(state_dir, workload_pcr, pcr)?;
        store.append(
            NodeEvent::AgentStart {
                agent_version: AGENT_VERSION.to_owned(),
                policy: policy.to_owned(),
            },
            pcr,
        )?;
        tracing::info!(
            pcr = workload_pcr,
            events = store.entries.len(),
            value = %store.value,
            path = %store.path().display(),
            "node log open"
        );
        Ok(store)
    }

    /// Locks the state directory and loads the log that explains the PCR,
    /// without recording a start.
    fn recover(
        state_dir: &Path,
        workload_pcr: u8,
        pcr: &mut impl WorkloadPcr,
    ) -> Result<Self, StoreError> {
        if !WORKLOAD_PCRS.contains(&workload_pcr) {
            return Err(StoreError::UnsuitablePcr(workload_pcr));
        }
        fs::create_dir_all(state_dir).map_err(io_error("create", state_dir))?;
        let lock = lock(state_dir)?;
        // Read the PCR only once the lock is held, so that no other agent on
        // this state directory extends it between the read and our appends.
        let current = pcr.read(workload_pcr)?;
        let mut store = Self {
            dir: state_dir.to_owned(),
            workload_pcr,
            entries: Vec::new(),
            value: Sha256Digest([0; 32]),
            unsynced: None,
            _lock: lock,
        };
        if store.reconcile(&current)? {
            store.write(None)?;
        }
        Ok(store)
    }

    /// All events since the TPM was last reset, oldest first.
    pub fn entries(&self) -> &[NodeLogEntry] {
        &self.entries
    }

    /// The PCR the events are extended into.
    pub fn workload_pcr(&self) -> u8 {
        self.workload_pcr
    }

    /// What the log replays to: the value of the workload PCR as long as
    /// nothing else extends it.
    pub fn replayed(&self) -> Sha256Digest {
        self.value
    }

    /// Path of the stored log.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Records one event: writes it as pending, extends the workload PCR
    /// with its digest, then commits it.
    ///
    /// Refused before anything is written or extended when the log is full
    /// ([`StoreError::Full`]: the node must be rebooted) or the event is too
    /// large ([`StoreError::EventTooLarge`]). An error means the event is not
    /// in the log and not in the PCR, except [`StoreError::Unsynced`]
    /// situations, after which nothing more is recorded.
    pub fn append(
        &mut self,
        event: NodeEvent,
        pcr: &mut impl WorkloadPcr,
    ) -> Result<(), StoreError> {
        if let Some(reason) = &self.unsynced {
            return Err(StoreError::Unsynced {
                pcr: self.workload_pcr,
                reason: reason.clone(),
            });
        }
        if self.entries.len() >= MAX_NODE_LOG_EVENTS {
            return Err(StoreError::Full {
                max: MAX_NODE_LOG_EVENTS,
            });
        }
        let entry = NodeLogEntry {
            pcr: self.workload_pcr,
            event,
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| StoreError::Io {
                action: "serialise an event for",
                path: self.path(),
                source: io::Error::other(e),
            })?
            .len();
        if bytes > MAX_EVENT_JSON_BYTES {
            return Err(StoreError::EventTooLarge {
                kind: entry.event.kind(),
                bytes,
            });
        }
        let digest = entry.event.digest();
        let after = extend(&self.value, &digest);

        // Nothing is extended if this fails: the event never happened.
        self.write(Some(&entry))?;

        if let Err(error) = pcr.extend(self.workload_pcr, &digest) {
            // The command may or may not have reached the TPM: look.
            match pcr.read(self.workload_pcr) {
                Ok(now) if now == self.value => {
                    if let Err(e) = self.write(None) {
                        // Harmless: a pending event the PCR does not have is
                        // dropped by the next start, or replaced by the next
                        // append.
                        tracing::warn!(error = %e, "could not drop the pending event of a failed extend");
                    }
                    return Err(error.into());
                }
                Ok(now) if now == after => {
                    tracing::warn!(
                        %error,
                        pcr = self.workload_pcr,
                        "the extend reported an error but the PCR holds the event: committing it"
                    );
                }
                Ok(now) => {
                    self.unsynced = Some(format!(
                        "after a failed extend ({error}) the PCR is {now}, neither {} nor {after}",
                        self.value
                    ));
                    return Err(error.into());
                }
                Err(read_error) => {
                    self.unsynced = Some(format!(
                        "an extend failed ({error}) and the PCR could not be read back ({read_error})"
                    ));
                    return Err(error.into());
                }
            }
        }

        self.entries.push(entry);
        self.value = after;
        if let Err(error) = self.write(None) {
            // The event is in the PCR and in the log on disk, as pending:
            // the next start commits it, and the next append writes it as
            // committed. Refusing now would report an event as not recorded
            // that the PCR holds.
            tracing::warn!(%error, "the event is extended, but committing it on disk failed; it stays pending on disk until the next write or start");
        }
        Ok(())
    }

    /// Decides which stored events describe the PCR's `current` value and
    /// loads them; returns whether the file must be rewritten (a pending
    /// event to drop or commit).
    fn reconcile(&mut self, current: &Sha256Digest) -> Result<bool, StoreError> {
        let path = self.path();
        let pcr = self.workload_pcr;
        let bytes = match fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };

        if *current == Sha256Digest([0; 32]) {
            if let Some(bytes) = bytes {
                let stale = match parse_stored(&bytes) {
                    Ok(stored) => format!("{} events", stored.entries.len()),
                    Err(reason) => format!("unreadable: {reason}"),
                };
                let previous = self.dir.join(PREVIOUS_LOG_FILE);
                fs::rename(&path, &previous).map_err(io_error("move aside", &path))?;
                state_dir::sync_dir(&self.dir)?;
                tracing::info!(
                    pcr,
                    stale = %stale,
                    previous = %previous.display(),
                    "the workload PCR is in reset state (the TPM was reset): the old node log is kept aside and a new one starts"
                );
            }
            return Ok(false);
        }

        let Some(bytes) = bytes else {
            return Err(StoreError::NoLog {
                path,
                pcr,
                value: *current,
            });
        };
        let stored = parse_stored(&bytes).map_err(|reason| StoreError::Corrupt {
            path: path.clone(),
            pcr,
            reason,
        })?;
        if stored.workload_pcr != pcr {
            return Err(StoreError::OtherPcr {
                path,
                stored: stored.workload_pcr,
                configured: pcr,
            });
        }
        let replayed = replay(&stored.entries);
        let with_pending = stored
            .pending
            .as_ref()
            .map(|p| extend(&replayed, &p.event.digest()));
        self.entries = stored.entries;
        self.value = replayed;
        if replayed == *current {
            if let Some(pending) = stored.pending {
                tracing::warn!(
                    pcr,
                    event = pending.event.kind(),
                    "the pending event was never extended (the agent stopped before extending it): dropping it"
                );
                return Ok(true);
            }
            return Ok(false);
        }
        if let (Some(pending), Some(value)) = (stored.pending, with_pending) {
            if value == *current {
                tracing::info!(
                    pcr,
                    event = pending.event.kind(),
                    "the pending event was extended before the agent stopped: committing it"
                );
                self.entries.push(pending);
                self.value = value;
                return Ok(true);
            }
        }
        Err(StoreError::Foreign {
            path,
            pcr,
            value: *current,
            replayed,
            with_pending,
        })
    }

    /// Writes the log (and `pending`, if any) to a temporary file, fsyncs
    /// it, renames it over the log and fsyncs the directory, so the file on
    /// disk is always either the old or the new log, never a torn mix.
    fn write(&self, pending: Option<&NodeLogEntry>) -> Result<(), StoreError> {
        let stored = StoredLogRef {
            version: STORE_VERSION,
            workload_pcr: self.workload_pcr,
            entries: &self.entries,
            pending,
        };
        let path = self.path();
        let json = serde_json::to_vec(&stored).map_err(|e| StoreError::Io {
            action: "serialise",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        replace(&self.dir, LOG_FILE, TEMP_FILE, &json).map_err(StoreError::from)
    }
}

fn lock(state_dir: &Path) -> Result<File, StoreError> {
    state_dir::lock(state_dir, LOCK_FILE).map_err(StoreError::from)
}

impl From<StateDirError> for StoreError {
    fn from(e: StateDirError) -> Self {
        match e {
            StateDirError::Busy(dir) => StoreError::Busy(dir),
            StateDirError::Io {
                action,
                path,
                source,
            } => StoreError::Io {
                action,
                path,
                source,
            },
        }
    }
}

fn parse_stored(bytes: &[u8]) -> Result<StoredLog, String> {
    let stored: StoredLog = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if stored.version != STORE_VERSION {
        return Err(format!(
            "format version {} (this aver-node writes version {STORE_VERSION})",
            stored.version
        ));
    }
    let stray = stored
        .entries
        .iter()
        .chain(&stored.pending)
        .find(|e| e.pcr != stored.workload_pcr);
    if let Some(entry) = stray {
        return Err(format!(
            "a {} event names PCR {}, the log is for PCR {}",
            entry.event.kind(),
            entry.pcr,
            stored.workload_pcr
        ));
    }
    Ok(stored)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use aver_node_log::AccessKind;

    use super::*;

    const PCR: u8 = 15;
    const POLICY: &str = "version: 1\n";

    /// Where a fake extend stops the agent.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Crash {
        /// Before the command reaches the TPM.
        BeforeExtend,
        /// After the TPM extended, before the agent hears back.
        AfterExtend,
    }

    /// An in-memory PCR bank that also checks write-ahead: when an event is
    /// extended, the log on disk must already hold it as pending.
    struct FakePcrs {
        values: [Sha256Digest; 24],
        state_dir: Option<PathBuf>,
        crash: Option<Crash>,
        /// Fail the next extend with an error, after extending if `true`.
        fail: Option<bool>,
        extends: usize,
    }

    impl FakePcrs {
        fn new() -> Self {
            Self {
                values: [Sha256Digest([0; 32]); 24],
                state_dir: None,
                crash: None,
                fail: None,
                extends: 0,
            }
        }

        fn watching(dir: &Path) -> Self {
            Self {
                state_dir: Some(dir.to_owned()),
                ..Self::new()
            }
        }
    }

    impl WorkloadPcr for FakePcrs {
        fn read(&mut self, pcr: u8) -> Result<Sha256Digest, TpmError> {
            Ok(self.values[usize::from(pcr)])
        }

        fn extend(&mut self, pcr: u8, digest: &Sha256Digest) -> Result<(), TpmError> {
            if let Some(dir) = &self.state_dir {
                let stored = parse_stored(&fs::read(dir.join(LOG_FILE)).unwrap()).unwrap();
                let pending = stored
                    .pending
                    .expect("event written as pending before extend");
                assert_eq!(pending.event.digest(), *digest, "write-ahead violated");
            }
            if self.crash == Some(Crash::BeforeExtend) {
                panic!("agent killed before extending");
            }
            let fail = self.fail.take();
            if fail != Some(false) {
                self.extends += 1;
                let slot = &mut self.values[usize::from(pcr)];
                *slot = extend(slot, digest);
            }
            if self.crash == Some(Crash::AfterExtend) {
                panic!("agent killed after extending");
            }
            match fail {
                Some(_) => Err(TpmError::BadPcr(pcr)),
                None => Ok(()),
            }
        }
    }

    fn access(n: u32) -> NodeEvent {
        NodeEvent::Access {
            sandbox_id: format!("sandbox-{n}"),
            container_id: Some(format!("container-{n}")),
            kind: AccessKind::Exec,
        }
    }

    fn agent_start() -> NodeEvent {
        NodeEvent::AgentStart {
            agent_version: AGENT_VERSION.into(),
            policy: POLICY.into(),
        }
    }

    fn events(store: &NodeLogStore) -> Vec<NodeEvent> {
        store.entries().iter().map(|e| e.event.clone()).collect()
    }

    fn stored(dir: &Path) -> StoredLog {
        parse_stored(&fs::read(dir.join(LOG_FILE)).unwrap()).unwrap()
    }

    #[test]
    fn a_fresh_log_starts_with_agent_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::watching(dir.path());
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        assert_eq!(events(&store), vec![agent_start()]);
        store.append(access(1), &mut pcrs).unwrap();
        assert_eq!(events(&store), vec![agent_start(), access(1)]);
        assert_eq!(replay(store.entries()), pcrs.values[15]);
        assert_eq!(store.replayed(), pcrs.values[15]);
        assert!(store.entries().iter().all(|e| e.pcr == PCR));
        // Only the workload PCR moved.
        assert!(pcrs
            .values
            .iter()
            .enumerate()
            .all(|(i, v)| i == 15 || *v == Sha256Digest([0; 32])));
        // On disk: committed, nothing pending, no temporary file left.
        let on_disk = stored(dir.path());
        assert_eq!(on_disk.entries, store.entries());
        assert!(on_disk.pending.is_none());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![LOCK_FILE.to_owned(), LOG_FILE.to_owned()]);
    }

    #[test]
    fn a_restart_continues_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::watching(dir.path());
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        store.append(access(1), &mut pcrs).unwrap();
        drop(store);

        let store = NodeLogStore::open(dir.path(), PCR, "version: 1\n# v2\n", &mut pcrs).unwrap();
        let restarted = NodeEvent::AgentStart {
            agent_version: AGENT_VERSION.into(),
            policy: "version: 1\n# v2\n".into(),
        };
        assert_eq!(events(&store), vec![agent_start(), access(1), restarted]);
        assert_eq!(replay(store.entries()), pcrs.values[15]);
    }

    #[test]
    fn a_crash_after_the_extend_commits_the_pending_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::watching(dir.path());
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        pcrs.crash = Some(Crash::AfterExtend);
        let crashed = catch_unwind(AssertUnwindSafe(|| store.append(access(1), &mut pcrs)));
        assert!(crashed.is_err());
        drop(store);
        assert_eq!(stored(dir.path()).pending.unwrap().event, access(1));

        pcrs.crash = None;
        let store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        assert_eq!(
            events(&store),
            vec![agent_start(), access(1), agent_start()]
        );
        assert_eq!(replay(store.entries()), pcrs.values[15]);
        assert!(stored(dir.path()).pending.is_none());
    }

    #[test]
    fn a_crash_between_write_and_extend_drops_the_pending_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::watching(dir.path());
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        pcrs.crash = Some(Crash::BeforeExtend);
        let crashed = catch_unwind(AssertUnwindSafe(|| store.append(access(1), &mut pcrs)));
        assert!(crashed.is_err());
        drop(store);
        assert_eq!(stored(dir.path()).pending.unwrap().event, access(1));

        pcrs.crash = None;
        let store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        assert_eq!(events(&store), vec![agent_start(), agent_start()]);
        assert_eq!(replay(store.entries()), pcrs.values[15]);
    }

    #[test]
    fn a_failed_write_extends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::watching(dir.path());
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        let before = pcrs.values[15];
        // The temporary file cannot be created: the write fails before the
        // log on disk changes.
        fs::create_dir(dir.path().join(TEMP_FILE)).unwrap();
        assert!(matches!(
            store.append(access(1), &mut pcrs),
            Err(StoreError::Io {
                action: "create",
                ..
            })
        ));
        assert_eq!(pcrs.values[15], before);
        assert_eq!(events(&store), vec![agent_start()]);
        fs::remove_dir(dir.path().join(TEMP_FILE)).unwrap();
        // The same store carries on, and a restart finds a consistent log.
        store.append(access(2), &mut pcrs).unwrap();
        drop(store);
        let store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        assert_eq!(
            events(&store),
            vec![agent_start(), access(2), agent_start()]
        );
    }

    #[test]
    fn a_failed_extend_is_resolved_by_reading_the_pcr() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::watching(dir.path());
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();

        // The TPM did not extend: the event is not recorded.
        pcrs.fail = Some(false);
        assert!(matches!(
            store.append(access(1), &mut pcrs),
            Err(StoreError::Tpm(_))
        ));
        assert_eq!(events(&store), vec![agent_start()]);
        assert!(stored(dir.path()).pending.is_none());

        // The TPM extended but the answer was lost: the event is recorded.
        pcrs.fail = Some(true);
        store.append(access(2), &mut pcrs).unwrap();
        assert_eq!(events(&store), vec![agent_start(), access(2)]);
        assert_eq!(replay(store.entries()), pcrs.values[15]);

        // The PCR is neither: nothing more is recorded.
        pcrs.values[15] = extend(&pcrs.values[15], &Sha256Digest([0x66; 32]));
        pcrs.fail = Some(false);
        assert!(store.append(access(3), &mut pcrs).is_err());
        assert!(matches!(
            store.append(access(4), &mut pcrs),
            Err(StoreError::Unsynced { pcr: 15, .. })
        ));
    }

    #[test]
    fn a_foreign_extend_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        let store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        let replayed = store.replayed();
        drop(store);
        pcrs.values[15] = extend(&pcrs.values[15], &Sha256Digest([0x66; 32]));
        let error = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, StoreError::Foreign { pcr: 15, value, replayed: r, with_pending: None, .. }
                if *value == pcrs.values[15] && *r == replayed),
            "{error:?}"
        );
        assert!(message.contains("something outside aver-node extended PCR 15"));
        assert!(message.contains(&pcrs.values[15].to_string()));
        assert!(message.contains(&replayed.to_string()));
        // Nothing was changed on the way.
        assert_eq!(stored(dir.path()).entries.len(), 1);
    }

    #[test]
    fn an_extended_pcr_without_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        pcrs.values[15] = Sha256Digest([0x66; 32]);
        assert!(matches!(
            NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs),
            Err(StoreError::NoLog { pcr: 15, .. })
        ));
        fs::write(dir.path().join(LOG_FILE), b"{not json").unwrap();
        assert!(matches!(
            NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs),
            Err(StoreError::Corrupt { pcr: 15, .. })
        ));
    }

    #[test]
    fn a_tpm_reset_moves_the_old_log_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        store.append(access(1), &mut pcrs).unwrap();
        let first_boot = store.entries().to_vec();
        drop(store);

        let mut rebooted = FakePcrs::new();
        let store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut rebooted).unwrap();
        assert_eq!(events(&store), vec![agent_start()]);
        assert_eq!(replay(store.entries()), rebooted.values[15]);
        let previous = fs::read(dir.path().join(PREVIOUS_LOG_FILE)).unwrap();
        assert_eq!(parse_stored(&previous).unwrap().entries, first_boot);
        drop(store);

        // Only the latest previous log is kept; an unreadable stale log is
        // moved aside as well.
        fs::write(dir.path().join(LOG_FILE), b"{not json").unwrap();
        let store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut FakePcrs::new()).unwrap();
        assert_eq!(events(&store), vec![agent_start()]);
        assert_eq!(
            fs::read(dir.path().join(PREVIOUS_LOG_FILE)).unwrap(),
            b"{not json"
        );
    }

    /// Writes a committed log of `n` events and sets the PCR to match.
    fn prefill(dir: &Path, pcrs: &mut FakePcrs, n: usize) -> Vec<NodeLogEntry> {
        let entries: Vec<_> = (0..n)
            .map(|i| NodeLogEntry {
                pcr: PCR,
                event: access(i as u32),
            })
            .collect();
        let json = serde_json::to_vec(&StoredLogRef {
            version: STORE_VERSION,
            workload_pcr: PCR,
            entries: &entries,
            pending: None,
        })
        .unwrap();
        fs::write(dir.join(LOG_FILE), json).unwrap();
        pcrs.values[15] = replay(&entries);
        entries
    }

    #[test]
    fn a_full_log_refuses_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        prefill(dir.path(), &mut pcrs, MAX_NODE_LOG_EVENTS - 2);
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        store.append(access(1), &mut pcrs).unwrap();
        assert_eq!(store.entries().len(), MAX_NODE_LOG_EVENTS);
        let before = pcrs.values[15];
        let error = store.append(access(2), &mut pcrs).unwrap_err();
        assert!(matches!(
            error,
            StoreError::Full {
                max: MAX_NODE_LOG_EVENTS
            }
        ));
        assert!(error.to_string().contains("until the node reboots"));
        assert_eq!(pcrs.values[15], before);
        drop(store);
        // A full log cannot record the agent's start either: it refuses to
        // run rather than run unrecorded.
        assert!(matches!(
            NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs),
            Err(StoreError::Full { .. })
        ));
    }

    #[test]
    fn an_oversized_event_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        let mut store = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        let before = pcrs.values[15];
        let huge = NodeEvent::Access {
            sandbox_id: "s".repeat(MAX_EVENT_JSON_BYTES),
            container_id: None,
            kind: AccessKind::Attach,
        };
        assert!(matches!(
            store.append(huge, &mut pcrs),
            Err(StoreError::EventTooLarge { kind: "access", bytes }) if bytes > MAX_EVENT_JSON_BYTES
        ));
        assert_eq!(pcrs.values[15], before);
        assert_eq!(store.entries().len(), 1);
        // A policy too large to record keeps the agent from starting.
        drop(store);
        let policy = "#".repeat(MAX_EVENT_JSON_BYTES);
        assert!(matches!(
            NodeLogStore::open(dir.path(), PCR, &policy, &mut pcrs),
            Err(StoreError::EventTooLarge {
                kind: "agent-start",
                ..
            })
        ));
    }

    #[test]
    fn the_state_dir_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        let held = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap();
        let extends = pcrs.extends;
        let error = NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap_err();
        assert!(matches!(error, StoreError::Busy(_)), "{error:?}");
        assert_eq!(pcrs.extends, extends, "the refused store extended");
        drop(held);
        assert!(NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).is_ok());
    }

    #[test]
    fn another_pcr_and_unsuitable_pcrs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        drop(NodeLogStore::open(dir.path(), PCR, POLICY, &mut pcrs).unwrap());
        pcrs.values[14] = pcrs.values[15];
        assert!(matches!(
            NodeLogStore::open(dir.path(), 14, POLICY, &mut pcrs),
            Err(StoreError::OtherPcr {
                stored: 15,
                configured: 14,
                ..
            })
        ));
        for pcr in [0, 7, 16, 23, 24] {
            assert!(matches!(
                NodeLogStore::open(dir.path(), pcr, POLICY, &mut pcrs),
                Err(StoreError::UnsuitablePcr(p)) if p == pcr
            ));
        }
    }
}
