//! The workload event log as the enclave keeps it between its own restarts.
//!
//! PCRs survive a restart of the process but not of the machine, so the log
//! lives in a state directory and is reconciled with the workload PCR on
//! every start: a PCR in reset state (all zeros) means the TPM was reset
//! (reboot), so the stored log is stale and a new one begins; otherwise the
//! stored log still describes the PCR and is kept, so the new launch is
//! appended after the earlier ones.
//!
//! Every event is written to disk (atomically, fsynced) *before* the PCR is
//! extended with it. A crash therefore leaves at worst one logged event that
//! never reached the PCR, which the next start recognises and drops; it can
//! never leave an extend that no log records, which would make the PCR
//! unexplainable until the next reboot.
//!
//! The log is bounded: a PCR cannot be compacted (every extend since the
//! TPM reset must stay in the log for the replay to match), and every
//! verifier fetches the whole log with every attestation, so an enclave that
//! restarts without end (a crash loop) would grow it without end, towards
//! the verifier's evidence size limit. At most `max_launches` launches are
//! recorded per boot ([`DEFAULT_MAX_LAUNCHES`], `--max-launches`); the start
//! after that is refused before anything is written or extended
//! ([`LaunchLogError::LaunchLimit`]). [`LaunchStats`] reports how close the
//! log is to the bound.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use aver_crds::Sha256Digest;
use aver_tpm::state_dir::{self, replace, StateDirError};
use aver_verifier::eventlog::{replay, EventKind, LaunchMeasurements, LogEntry};
use serde::{Deserialize, Serialize};

use crate::tpm::{Tpm, TpmError};

/// Name of the log file inside the state directory.
pub const LOG_FILE: &str = "workload-event-log.json";
/// Name of the lock file that keeps two enclaves from sharing a state
/// directory (and so from interleaving their extends).
pub const LOCK_FILE: &str = "lock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/aver";
pub use aver_crds::policy::DEFAULT_WORKLOAD_PCR;

/// Default bound on the launches recorded per boot (per TPM reset).
///
/// One launch sequence (five events) adds 647 bytes to the compact JSON
/// evidence every verifier fetches with every attestation (and 922 bytes to
/// the pretty-printed stored log), so 1024 launches cost about 650 KiB of
/// evidence: a sixth of `aver_verifier::evidence::MAX_EVIDENCE_BYTES`
/// (4 MiB), next to the few KiB of a log with one launch. A pod in a crash
/// loop restarts at most every five minutes (the kubelet's back-off), 288
/// times a day, so the bound is reached after three and a half days of
/// crash looping, not within one night.
pub const DEFAULT_MAX_LAUNCHES: u32 = 1024;

/// How many launches the log holds since the TPM was last reset, and the
/// most it may hold: for the metrics `aver_enclave_launches` and
/// `aver_enclave_launch_limit`. A launch interrupted before all its events
/// were extended still counts (its events stay in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchStats {
    /// Launches recorded since the TPM reset, this one included.
    pub launches: u32,
    /// The most launches per boot (`--max-launches`); the start that would
    /// record one more is refused until the node reboots.
    pub limit: u32,
}

/// Format version of the stored log file.
const STORE_VERSION: u32 = 1;
const TEMP_FILE: &str = ".workload-event-log.json.tmp";

/// Which PCRs may hold the workload measurements: 11 to 15 start at zero on
/// every TPM reset and can only be extended, never reset, from software.
/// PCR 16 and 23 can be reset by anyone at locality 0 (so a log could be
/// forged to match them), and 17 to 22 belong to dynamic launch and do not
/// start at zero; 0 to 9 carry the boot measurements, 10 IMA's.
pub fn check_workload_pcr(pcr: u8) -> Result<(), LaunchLogError> {
    if aver_crds::policy::WORKLOAD_PCRS.contains(&pcr) {
        Ok(())
    } else {
        Err(LaunchLogError::UnsuitablePcr(pcr))
    }
}

/// Why the launch log could not be loaded, stored or extended.
#[derive(Debug, thiserror::Error)]
pub enum LaunchLogError {
    #[error("PCR {0} cannot hold workload measurements: use one of PCRs 11 to 15 (never reset except by a TPM reset, and not explained by the boot log, 0-9, or IMA, 10)")]
    UnsuitablePcr(u8),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("state directory {0} is in use by another aver-enclave (its lock is held); give each enclave its own TPM and state directory")]
    Busy(PathBuf),
    #[error("stored event log {path} is unreadable ({reason}) while the workload PCR is not in reset state: the PCR cannot be explained until the TPM is reset, so the enclave refuses to start")]
    Corrupt { path: PathBuf, reason: String },
    #[error("stored event log {path} is for PCR {stored}, but the workload PCR is now {configured}: use a separate state directory per workload PCR")]
    OtherPcr {
        path: PathBuf,
        stored: u8,
        configured: u8,
    },
    #[error("the workload PCR already holds {launches} launches since the TPM was last reset, the most allowed (--max-launches {limit}): the enclave refuses to start, before extending anything, rather than grow the event log every verifier fetches towards the evidence size limit. A PCR cannot be compacted (every extend since the reset must stay in the log for the replay to match): reboot the node (a TPM reset starts a new log) or move the pod to another node, and find out why the enclave keeps restarting")]
    LaunchLimit { launches: u32, limit: u32 },
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

/// Reading and extending the workload PCR, shared with the node agent
/// through `aver-tpm`; re-exported so `aver_enclave::launch_log::WorkloadPcr`
/// keeps working.
pub use aver_tpm::WorkloadPcr;

/// The stored form: versioned, and naming its PCR so that a changed
/// `--workload-pcr` is noticed instead of replaying against the wrong PCR.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoredLog {
    version: u32,
    workload_pcr: u8,
    entries: Vec<LogEntry>,
}

/// The workload event log of this boot, loaded from and written to the state
/// directory, with the directory locked for as long as the value lives.
#[derive(Debug)]
pub struct LaunchLog {
    dir: PathBuf,
    workload_pcr: u8,
    entries: Vec<LogEntry>,
    /// Holds the exclusive lock on `dir/LOCK_FILE`; released on drop (or by
    /// the kernel when the process dies).
    _lock: File,
}

impl LaunchLog {
    /// Locks `state_dir` (creating it if needed), reads the workload PCR and
    /// reconciles the stored log with it (see the module documentation).
    pub fn open(
        state_dir: &Path,
        workload_pcr: u8,
        tpm: &mut impl WorkloadPcr,
    ) -> Result<Self, LaunchLogError> {
        check_workload_pcr(workload_pcr)?;
        fs::create_dir_all(state_dir).map_err(io_error("create", state_dir))?;
        let lock = lock(state_dir)?;
        // Read the PCR only once the lock is held, so that no other enclave
        // on this state directory extends it between the read and our
        // appends.
        let current = tpm.read(workload_pcr)?;
        let path = state_dir.join(LOG_FILE);
        let entries = reconcile(&path, workload_pcr, &current)?;
        Ok(Self {
            dir: state_dir.to_owned(),
            workload_pcr,
            entries,
            _lock: lock,
        })
    }

    /// All events since the TPM was last reset, oldest first.
    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    /// The PCR the events are extended into.
    pub fn workload_pcr(&self) -> u8 {
        self.workload_pcr
    }

    /// Path of the stored log.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Launches the log records since the TPM was last reset: its
    /// `launch-start` events, so a launch interrupted part-way counts too.
    pub fn launches(&self) -> u32 {
        let count = self
            .entries
            .iter()
            .filter(|entry| entry.event.kind() == EventKind::LaunchStart)
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Appends one launch sequence: for each event, store the log with the
    /// event, then extend the PCR with its digest.
    ///
    /// Refused with [`LaunchLogError::LaunchLimit`], before anything is
    /// stored or extended, when the log already holds `max_launches`
    /// launches. The count was read with the state directory locked, and the
    /// lock is held until this value is dropped, so no other enclave can
    /// append between the check and the append.
    pub fn append_launch(
        &mut self,
        measurements: &LaunchMeasurements,
        max_launches: u32,
        tpm: &mut impl WorkloadPcr,
    ) -> Result<(), LaunchLogError> {
        let launches = self.launches();
        if launches >= max_launches {
            return Err(LaunchLogError::LaunchLimit {
                launches,
                limit: max_launches,
            });
        }
        for event in measurements.events() {
            let digest = event.digest();
            self.entries.push(LogEntry {
                pcr: self.workload_pcr,
                event,
            });
            if let Err(e) = self.store() {
                // Nothing was extended: the event never happened.
                self.entries.pop();
                return Err(e);
            }
            // If this fails, the stored log is at most one event ahead of the
            // PCR, which the next start detects and repairs.
            tpm.extend(self.workload_pcr, &digest)?;
        }
        Ok(())
    }

    /// Writes the log to a temporary file, fsyncs it, renames it over the
    /// log and fsyncs the directory, so the file on disk is always either
    /// the old or the new log, never a torn mix.
    fn store(&self) -> Result<(), LaunchLogError> {
        let stored = StoredLog {
            version: STORE_VERSION,
            workload_pcr: self.workload_pcr,
            entries: self.entries.clone(),
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| LaunchLogError::Io {
            action: "serialise",
            path: self.path(),
            source: io::Error::other(e),
        })?;
        replace(&self.dir, LOG_FILE, TEMP_FILE, &json).map_err(LaunchLogError::from)
    }
}

/// Opens the state directory, measures a launch into the workload PCR and
/// returns the log (still locked) that now ends with it. Refused, with
/// nothing stored or extended, when the log already holds `max_launches`
/// launches of this boot ([`LaunchLogError::LaunchLimit`]).
pub fn record_launch(
    tpm: &mut Tpm,
    state_dir: &Path,
    workload_pcr: u8,
    max_launches: u32,
    measurements: &LaunchMeasurements,
) -> Result<LaunchLog, LaunchLogError> {
    let mut log = LaunchLog::open(state_dir, workload_pcr, tpm)?;
    let before = log.entries().len();
    log.append_launch(measurements, max_launches, tpm)?;
    let launches = log.launches();
    let now = WorkloadPcr::read(tpm, workload_pcr)?;
    if replay(log.entries()) == now {
        tracing::info!(
            pcr = workload_pcr,
            previous_events = before,
            events = log.entries().len(),
            launches,
            max_launches,
            value = %now,
            "launch measured into the workload PCR"
        );
    } else {
        tracing::warn!(
            pcr = workload_pcr,
            value = %now,
            "launch measured, but the workload PCR does not match the log: something else extends it, and verifiers will reject this enclave's evidence"
        );
    }
    // Said while there is still time to reboot the node on one's own terms.
    if launches >= max_launches - max_launches / 10 {
        tracing::warn!(
            launches,
            max_launches,
            "the enclave has started {launches} times since the TPM was last reset; at {max_launches} (--max-launches) it refuses to start until the node reboots"
        );
    }
    Ok(log)
}

fn lock(state_dir: &Path) -> Result<File, LaunchLogError> {
    state_dir::lock(state_dir, LOCK_FILE).map_err(LaunchLogError::from)
}

impl From<StateDirError> for LaunchLogError {
    fn from(e: StateDirError) -> Self {
        match e {
            StateDirError::Busy(dir) => LaunchLogError::Busy(dir),
            StateDirError::Io {
                action,
                path,
                source,
            } => LaunchLogError::Io {
                action,
                path,
                source,
            },
        }
    }
}

/// Decides which stored events still describe the workload PCR.
fn reconcile(
    path: &Path,
    workload_pcr: u8,
    current: &Sha256Digest,
) -> Result<Vec<LogEntry>, LaunchLogError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(LaunchLogError::Io {
                action: "read",
                path: path.to_owned(),
                source: e,
            })
        }
    };
    let parsed = bytes.as_deref().map(parse_stored);

    if *current == Sha256Digest([0; 32]) {
        match parsed {
            Some(Ok(stored)) if !stored.entries.is_empty() => tracing::info!(
                pcr = workload_pcr,
                stale_events = stored.entries.len(),
                "the workload PCR is in reset state (the TPM was reset): starting a new event log"
            ),
            Some(Err(reason)) => tracing::info!(
                pcr = workload_pcr,
                %reason,
                "the workload PCR is in reset state: discarding an unreadable stale event log"
            ),
            _ => {}
        }
        return Ok(Vec::new());
    }

    let Some(parsed) = parsed else {
        tracing::warn!(
            pcr = workload_pcr,
            value = %current,
            path = %path.display(),
            "the workload PCR has been extended but there is no stored event log (lost state directory, or another program extended it): verifiers will reject this enclave's evidence until the TPM is reset"
        );
        return Ok(Vec::new());
    };
    let stored = parsed.map_err(|reason| LaunchLogError::Corrupt {
        path: path.to_owned(),
        reason,
    })?;
    if stored.workload_pcr != workload_pcr {
        return Err(LaunchLogError::OtherPcr {
            path: path.to_owned(),
            stored: stored.workload_pcr,
            configured: workload_pcr,
        });
    }
    let mut entries = stored.entries;
    if replay(&entries) == *current {
        tracing::info!(
            pcr = workload_pcr,
            events = entries.len(),
            "stored event log matches the workload PCR"
        );
        return Ok(entries);
    }
    if let Some((_, logged)) = entries.split_last() {
        if replay(logged) == *current {
            tracing::warn!(
                pcr = workload_pcr,
                "the last stored event was never extended (an earlier launch was interrupted): dropping it; the log now ends with an incomplete launch, which verifiers reject until the TPM is reset"
            );
            entries.pop();
            return Ok(entries);
        }
    }
    tracing::warn!(
        pcr = workload_pcr,
        value = %current,
        replayed = %replay(&entries),
        "stored event log does not replay to the workload PCR (something else extended it): keeping it; verifiers will reject this enclave's evidence until the TPM is reset"
    );
    Ok(entries)
}

fn parse_stored(bytes: &[u8]) -> Result<StoredLog, String> {
    let stored: StoredLog = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if stored.version != STORE_VERSION {
        return Err(format!(
            "format version {} (this enclave writes version {STORE_VERSION})",
            stored.version
        ));
    }
    Ok(stored)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LaunchLogError {
    let path = path.to_owned();
    move |source| LaunchLogError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aver_verifier::eventlog::{extend, latest_launch, LAUNCH_SEQUENCE_LEN};

    /// An in-memory PCR bank that also checks write-ahead: when an event is
    /// extended, the log on disk must already end with it.
    struct FakePcrs {
        values: [Sha256Digest; 24],
        log_path: Option<PathBuf>,
        fail_extend_at: Option<usize>,
        extends: usize,
    }

    impl FakePcrs {
        fn new() -> Self {
            Self {
                values: [Sha256Digest([0; 32]); 24],
                log_path: None,
                fail_extend_at: None,
                extends: 0,
            }
        }
    }

    impl WorkloadPcr for FakePcrs {
        fn read(&mut self, pcr: u8) -> Result<Sha256Digest, TpmError> {
            Ok(self.values[usize::from(pcr)])
        }

        fn extend(&mut self, pcr: u8, digest: &Sha256Digest) -> Result<(), TpmError> {
            if self.fail_extend_at == Some(self.extends) {
                return Err(TpmError::BadPcr(pcr));
            }
            if let Some(path) = &self.log_path {
                let stored = parse_stored(&fs::read(path).unwrap()).unwrap();
                let last = stored.entries.last().expect("log written before extend");
                assert_eq!(last.event.digest(), *digest, "write-ahead violated");
            }
            self.extends += 1;
            let slot = &mut self.values[usize::from(pcr)];
            *slot = extend(slot, digest);
            Ok(())
        }
    }

    fn launch(seed: u8) -> LaunchMeasurements {
        LaunchMeasurements {
            enclave_version: "0.1.0".into(),
            enclave_digest: Sha256Digest([seed; 32]),
            engine: Sha256Digest([seed.wrapping_add(1); 32]),
            model: Sha256Digest([seed.wrapping_add(2); 32]),
            serving_config: Sha256Digest([seed.wrapping_add(3); 32]),
            tls_spki: Sha256Digest([seed.wrapping_add(4); 32]),
        }
    }

    fn launch_into(dir: &Path, pcrs: &mut FakePcrs, seed: u8) -> Vec<LogEntry> {
        let mut log = LaunchLog::open(dir, 15, pcrs).unwrap();
        pcrs.log_path = Some(log.path());
        log.append_launch(&launch(seed), DEFAULT_MAX_LAUNCHES, pcrs)
            .unwrap();
        log.entries().to_vec()
    }

    #[test]
    fn launches_append_and_replay_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        let first = launch_into(dir.path(), &mut pcrs, 1);
        assert_eq!(first.len(), LAUNCH_SEQUENCE_LEN);
        assert_eq!(replay(&first), pcrs.values[15]);

        let second = launch_into(dir.path(), &mut pcrs, 9);
        assert_eq!(second.len(), 2 * LAUNCH_SEQUENCE_LEN);
        assert_eq!(&second[..LAUNCH_SEQUENCE_LEN], first.as_slice());
        assert_eq!(latest_launch(&second, 15, &pcrs.values[15]), Ok(launch(9)));
        // Only the workload PCR moved.
        assert!(pcrs
            .values
            .iter()
            .enumerate()
            .all(|(i, v)| i == 15 || *v == Sha256Digest([0; 32])));
    }

    #[test]
    fn a_reset_pcr_discards_the_stored_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        launch_into(dir.path(), &mut pcrs, 1);
        let mut rebooted = FakePcrs::new();
        let log = launch_into(dir.path(), &mut rebooted, 2);
        assert_eq!(log.len(), LAUNCH_SEQUENCE_LEN);
        assert_eq!(latest_launch(&log, 15, &rebooted.values[15]), Ok(launch(2)));

        // Even an unreadable stale file is discarded after a reset.
        fs::write(dir.path().join(LOG_FILE), b"{not json").unwrap();
        let log = LaunchLog::open(dir.path(), 15, &mut FakePcrs::new()).unwrap();
        assert!(log.entries().is_empty());
    }

    #[test]
    fn a_log_that_does_not_replay_is_kept_so_verifiers_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        let first = launch_into(dir.path(), &mut pcrs, 1);
        // Someone else extends the workload PCR.
        pcrs.values[15] = extend(&pcrs.values[15], &Sha256Digest([0x66; 32]));
        let log = LaunchLog::open(dir.path(), 15, &mut pcrs).unwrap();
        assert_eq!(log.entries(), first.as_slice());
    }

    #[test]
    fn an_interrupted_launch_drops_only_the_unextended_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        pcrs.fail_extend_at = Some(2);
        let mut log = LaunchLog::open(dir.path(), 15, &mut pcrs).unwrap();
        assert!(log
            .append_launch(&launch(1), DEFAULT_MAX_LAUNCHES, &mut pcrs)
            .is_err());
        drop(log);
        pcrs.fail_extend_at = None;
        let log = LaunchLog::open(dir.path(), 15, &mut pcrs).unwrap();
        // Events 0 and 1 were extended; event 2 was logged but not extended.
        assert_eq!(log.entries().len(), 2);
        assert_eq!(replay(log.entries()), pcrs.values[15]);
    }

    #[test]
    fn a_corrupt_log_with_an_extended_pcr_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        launch_into(dir.path(), &mut pcrs, 1);
        fs::write(dir.path().join(LOG_FILE), b"[]").unwrap();
        assert!(matches!(
            LaunchLog::open(dir.path(), 15, &mut pcrs),
            Err(LaunchLogError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_log_for_another_pcr_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        launch_into(dir.path(), &mut pcrs, 1);
        pcrs.values[14] = pcrs.values[15];
        assert!(matches!(
            LaunchLog::open(dir.path(), 14, &mut pcrs),
            Err(LaunchLogError::OtherPcr {
                stored: 15,
                configured: 14,
                ..
            })
        ));
    }

    #[test]
    fn the_state_dir_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        let held = LaunchLog::open(dir.path(), 15, &mut pcrs).unwrap();
        assert!(matches!(
            LaunchLog::open(dir.path(), 15, &mut pcrs),
            Err(LaunchLogError::Busy(_))
        ));
        drop(held);
        assert!(LaunchLog::open(dir.path(), 15, &mut pcrs).is_ok());
    }

    #[test]
    fn resettable_and_boot_pcrs_are_refused() {
        for pcr in [0, 7, 8, 9, 10, 16, 17, 22, 23, 24] {
            assert!(matches!(
                check_workload_pcr(pcr),
                Err(LaunchLogError::UnsuitablePcr(_))
            ));
        }
        for pcr in 11..=15 {
            assert!(check_workload_pcr(pcr).is_ok());
        }
    }

    #[test]
    fn no_temporary_file_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        launch_into(dir.path(), &mut FakePcrs::new(), 1);
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![LOCK_FILE.to_owned(), LOG_FILE.to_owned()]);
    }

    /// Opens the log and appends one launch under `limit`, as a start of
    /// the enclave does; returns the launches counted after it.
    fn start(dir: &Path, pcrs: &mut FakePcrs, seed: u8, limit: u32) -> Result<u32, LaunchLogError> {
        let mut log = LaunchLog::open(dir, 15, pcrs)?;
        pcrs.log_path = Some(log.path());
        log.append_launch(&launch(seed), limit, pcrs)?;
        Ok(log.launches())
    }

    #[test]
    fn the_launch_limit_is_reached_exactly_at_max_launches() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        for n in 1..=3 {
            assert_eq!(start(dir.path(), &mut pcrs, n as u8, 3).unwrap(), n);
        }
        let error = start(dir.path(), &mut pcrs, 4, 3).unwrap_err();
        assert!(
            matches!(
                error,
                LaunchLogError::LaunchLimit {
                    launches: 3,
                    limit: 3
                }
            ),
            "{error}"
        );
        let text = error.to_string();
        for needed in [
            "--max-launches 3",
            "reboot the node",
            "another node",
            "compacted",
        ] {
            assert!(text.contains(needed), "{needed:?} missing from: {text}");
        }
        // A higher limit lets the next start through: the refusal changed
        // nothing that a later start depends on.
        assert_eq!(start(dir.path(), &mut pcrs, 4, 4).unwrap(), 4);
        let log = LaunchLog::open(dir.path(), 15, &mut pcrs).unwrap();
        assert_eq!(log.entries().len(), 4 * LAUNCH_SEQUENCE_LEN);
        assert_eq!(
            latest_launch(log.entries(), 15, &pcrs.values[15]),
            Ok(launch(4))
        );
    }

    #[test]
    fn a_refused_start_leaves_the_log_and_the_pcr_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        start(dir.path(), &mut pcrs, 1, 2).unwrap();
        start(dir.path(), &mut pcrs, 2, 2).unwrap();
        let path = dir.path().join(LOG_FILE);
        let stored = fs::read(&path).unwrap();
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        let pcr = pcrs.values;
        let extends = pcrs.extends;

        let mut log = LaunchLog::open(dir.path(), 15, &mut pcrs).unwrap();
        assert!(matches!(
            log.append_launch(&launch(3), 2, &mut pcrs),
            Err(LaunchLogError::LaunchLimit {
                launches: 2,
                limit: 2
            })
        ));
        assert_eq!(
            log.entries().len(),
            2 * LAUNCH_SEQUENCE_LEN,
            "nothing half-applied in memory"
        );
        assert_eq!(log.launches(), 2);
        drop(log);
        assert_eq!(
            fs::read(&path).unwrap(),
            stored,
            "the stored log is byte-identical"
        );
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), modified);
        assert_eq!(pcrs.values, pcr, "no PCR was extended");
        assert_eq!(pcrs.extends, extends);
        assert_eq!(
            latest_launch(&parse_stored(&stored).unwrap().entries, 15, &pcr[15]),
            Ok(launch(2))
        );
    }

    #[test]
    fn a_tpm_reset_starts_the_count_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        start(dir.path(), &mut pcrs, 1, 2).unwrap();
        start(dir.path(), &mut pcrs, 2, 2).unwrap();
        assert!(matches!(
            start(dir.path(), &mut pcrs, 3, 2),
            Err(LaunchLogError::LaunchLimit { .. })
        ));
        // Reboot: the PCR is all zeros again, the stale log is discarded.
        let mut rebooted = FakePcrs::new();
        assert_eq!(start(dir.path(), &mut rebooted, 3, 2).unwrap(), 1);
        let log = LaunchLog::open(dir.path(), 15, &mut rebooted).unwrap();
        assert_eq!(log.entries().len(), LAUNCH_SEQUENCE_LEN);
        assert_eq!(
            latest_launch(log.entries(), 15, &rebooted.values[15]),
            Ok(launch(3))
        );
        drop(log);
        assert_eq!(start(dir.path(), &mut rebooted, 4, 2).unwrap(), 2);
    }

    #[test]
    fn an_interrupted_launch_counts_towards_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut pcrs = FakePcrs::new();
        pcrs.fail_extend_at = Some(2);
        assert!(matches!(
            start(dir.path(), &mut pcrs, 1, 1),
            Err(LaunchLogError::Tpm(_))
        ));
        pcrs.fail_extend_at = None;
        // Its two extended events stay in the log for good.
        assert!(matches!(
            start(dir.path(), &mut pcrs, 2, 1),
            Err(LaunchLogError::LaunchLimit {
                launches: 1,
                limit: 1
            })
        ));
    }

    #[test]
    fn the_default_limit_keeps_the_log_well_under_the_evidence_limit() {
        use aver_verifier::evidence::MAX_EVIDENCE_BYTES;
        // A realistic launch: the version string this enclave writes.
        let mut measurements = launch(1);
        measurements.enclave_version = env!("CARGO_PKG_VERSION").into();
        let entries = |launches: usize| -> Vec<LogEntry> {
            (0..launches)
                .flat_map(|_| measurements.events())
                .map(|event| LogEntry { pcr: 15, event })
                .collect()
        };
        // Evidence carries the log as compact JSON, a `,` between entries.
        let wire = |launches: usize| serde_json::to_vec(&entries(launches)).unwrap().len();
        let per_launch = wire(2) - wire(1);
        let stored = |launches: usize| {
            serde_json::to_vec_pretty(&StoredLog {
                version: STORE_VERSION,
                workload_pcr: 15,
                entries: entries(launches),
            })
            .unwrap()
            .len()
        };
        let stored_per_launch = stored(2) - stored(1);
        let at_limit = wire(DEFAULT_MAX_LAUNCHES as usize);
        eprintln!(
            "one launch sequence: {per_launch} bytes of evidence, {stored_per_launch} bytes of stored log; {DEFAULT_MAX_LAUNCHES} launches: {at_limit} bytes of evidence"
        );
        assert!(at_limit <= MAX_EVIDENCE_BYTES / 6, "{at_limit} bytes");
        assert!(
            (600..700).contains(&per_launch),
            "{per_launch} bytes: update the doc of DEFAULT_MAX_LAUNCHES"
        );
    }
}
