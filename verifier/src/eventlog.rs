//! The workload event log: what `aver-enclave` extended into the workload PCR.
//!
//! Each launch of the enclave appends one *launch sequence* of five typed
//! events, in this order: launch start, engine, model, serving config, TLS
//! SPKI. The log survives process restarts (PCRs do too), so a log may hold
//! several sequences; only the latest describes the running server. Anything
//! that is not part of a complete sequence makes the log unusable: the
//! verifier fails closed rather than guess what a stray extend meant.

use aver_crds::Sha256Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain separator hashed into every event digest, so that a value extended
/// by aver can never be confused with one extended by another tool.
pub const EVENT_DOMAIN: &[u8] = b"aver-event-v1";

/// A typed workload event. The PCR is extended with [`WorkloadEvent::digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum WorkloadEvent {
    /// Opens a launch sequence. The enclave's own version and binary digest are
    /// informational: a process cannot vouch for itself, its identity comes
    /// from the boot chain that started it.
    LaunchStart {
        enclave_version: String,
        enclave_digest: Sha256Digest,
    },
    /// Digest of the inference engine image.
    Engine { digest: Sha256Digest },
    /// Digest of the model files (see [`crate::measurement::model_digest`]).
    Model { digest: Sha256Digest },
    /// Digest of the serving configuration file.
    ServingConfig { digest: Sha256Digest },
    /// SHA-256 of the DER SubjectPublicKeyInfo of the enclave's TLS key.
    TlsSpki { digest: Sha256Digest },
}

/// Position of each event kind within a launch sequence.
const SEQUENCE: [EventKind; 5] = [
    EventKind::LaunchStart,
    EventKind::Engine,
    EventKind::Model,
    EventKind::ServingConfig,
    EventKind::TlsSpki,
];

/// Number of events in one launch sequence.
pub const LAUNCH_SEQUENCE_LEN: usize = SEQUENCE.len();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    LaunchStart,
    Engine,
    Model,
    ServingConfig,
    TlsSpki,
}

impl EventKind {
    fn tag(self) -> u8 {
        match self {
            Self::LaunchStart => 1,
            Self::Engine => 2,
            Self::Model => 3,
            Self::ServingConfig => 4,
            Self::TlsSpki => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::LaunchStart => "launch-start",
            Self::Engine => "engine",
            Self::Model => "model",
            Self::ServingConfig => "serving-config",
            Self::TlsSpki => "tls-spki",
        }
    }
}

impl WorkloadEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::LaunchStart { .. } => EventKind::LaunchStart,
            Self::Engine { .. } => EventKind::Engine,
            Self::Model { .. } => EventKind::Model,
            Self::ServingConfig { .. } => EventKind::ServingConfig,
            Self::TlsSpki { .. } => EventKind::TlsSpki,
        }
    }

    /// The value extended into the PCR: `SHA-256(EVENT_DOMAIN || 0x00 || tag ||
    /// payload)`, with a length prefix on variable-length payload parts so
    /// that no two different events encode to the same bytes.
    pub fn digest(&self) -> Sha256Digest {
        let mut h = Sha256::new();
        h.update(EVENT_DOMAIN);
        h.update([0u8, self.kind().tag()]);
        match self {
            Self::LaunchStart {
                enclave_version,
                enclave_digest,
            } => {
                h.update(enclave_digest.as_bytes());
                h.update((enclave_version.len() as u64).to_be_bytes());
                h.update(enclave_version.as_bytes());
            }
            Self::Engine { digest }
            | Self::Model { digest }
            | Self::ServingConfig { digest }
            | Self::TlsSpki { digest } => h.update(digest.as_bytes()),
        }
        Sha256Digest(h.finalize().into())
    }
}

/// One entry of the log as served in evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogEntry {
    /// PCR the event was extended into.
    pub pcr: u8,
    pub event: WorkloadEvent,
}

/// The measurements of one complete launch of the enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchMeasurements {
    pub enclave_version: String,
    pub enclave_digest: Sha256Digest,
    pub engine: Sha256Digest,
    pub model: Sha256Digest,
    pub serving_config: Sha256Digest,
    pub tls_spki: Sha256Digest,
}

impl LaunchMeasurements {
    /// The events that record this launch, in sequence order.
    pub fn events(&self) -> [WorkloadEvent; LAUNCH_SEQUENCE_LEN] {
        [
            WorkloadEvent::LaunchStart {
                enclave_version: self.enclave_version.clone(),
                enclave_digest: self.enclave_digest,
            },
            WorkloadEvent::Engine {
                digest: self.engine,
            },
            WorkloadEvent::Model { digest: self.model },
            WorkloadEvent::ServingConfig {
                digest: self.serving_config,
            },
            WorkloadEvent::TlsSpki {
                digest: self.tls_spki,
            },
        ]
    }
}

/// Why an event log cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventLogError {
    #[error("event log is empty: the enclave never measured a workload into PCR {0}")]
    Empty(u8),
    #[error("event log entry {index} is for PCR {found}, but the workload PCR is {expected}")]
    WrongPcr {
        index: usize,
        found: u8,
        expected: u8,
    },
    #[error(
        "event log entry {index} ({found}) is outside a launch sequence: expected {expected} there"
    )]
    OutsideLaunchSequence {
        index: usize,
        found: &'static str,
        expected: &'static str,
    },
    #[error("event log ends with an incomplete launch sequence ({present} of {LAUNCH_SEQUENCE_LEN} events)")]
    IncompleteLaunch { present: usize },
    #[error("event log replays to {replayed} but the quoted PCR {pcr} is {quoted}: the PCR was extended by something not in the log, or the log was edited")]
    ReplayMismatch {
        pcr: u8,
        replayed: Sha256Digest,
        quoted: Sha256Digest,
    },
}

/// Extends a SHA-256 PCR value the way the TPM does (one definition, shared
/// with the node log).
pub use aver_node_log::extend;

/// Replays `entries` from a reset PCR (all zeros).
pub fn replay<'a>(entries: impl IntoIterator<Item = &'a LogEntry>) -> Sha256Digest {
    entries
        .into_iter()
        .fold(Sha256Digest([0; 32]), |pcr, entry| {
            extend(&pcr, &entry.event.digest())
        })
}

/// Checks that the log consists only of complete launch sequences on the
/// workload PCR and replays exactly to `quoted`, and returns the latest
/// launch (the one the running server made).
///
/// Structure is checked before replay so that an added or removed event is
/// reported as such, not only as a replay mismatch.
pub fn latest_launch(
    entries: &[LogEntry],
    workload_pcr: u8,
    quoted: &Sha256Digest,
) -> Result<LaunchMeasurements, EventLogError> {
    if entries.is_empty() {
        return Err(EventLogError::Empty(workload_pcr));
    }
    for (index, entry) in entries.iter().enumerate() {
        if entry.pcr != workload_pcr {
            return Err(EventLogError::WrongPcr {
                index,
                found: entry.pcr,
                expected: workload_pcr,
            });
        }
        let expected = SEQUENCE[index % LAUNCH_SEQUENCE_LEN];
        if entry.event.kind() != expected {
            return Err(EventLogError::OutsideLaunchSequence {
                index,
                found: entry.event.kind().name(),
                expected: expected.name(),
            });
        }
    }
    let tail = entries.len() % LAUNCH_SEQUENCE_LEN;
    if tail != 0 {
        return Err(EventLogError::IncompleteLaunch { present: tail });
    }
    let replayed = replay(entries);
    if replayed != *quoted {
        return Err(EventLogError::ReplayMismatch {
            pcr: workload_pcr,
            replayed,
            quoted: *quoted,
        });
    }
    let last = &entries[entries.len() - LAUNCH_SEQUENCE_LEN..];
    Ok(measurements_of(last))
}

fn measurements_of(sequence: &[LogEntry]) -> LaunchMeasurements {
    let mut m = LaunchMeasurements {
        enclave_version: String::new(),
        enclave_digest: Sha256Digest([0; 32]),
        engine: Sha256Digest([0; 32]),
        model: Sha256Digest([0; 32]),
        serving_config: Sha256Digest([0; 32]),
        tls_spki: Sha256Digest([0; 32]),
    };
    for entry in sequence {
        match &entry.event {
            WorkloadEvent::LaunchStart {
                enclave_version,
                enclave_digest,
            } => {
                m.enclave_version.clone_from(enclave_version);
                m.enclave_digest = *enclave_digest;
            }
            WorkloadEvent::Engine { digest } => m.engine = *digest,
            WorkloadEvent::Model { digest } => m.model = *digest,
            WorkloadEvent::ServingConfig { digest } => m.serving_config = *digest,
            WorkloadEvent::TlsSpki { digest } => m.tls_spki = *digest,
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(seed: u8) -> LaunchMeasurements {
        LaunchMeasurements {
            enclave_version: format!("0.1.{seed}"),
            enclave_digest: Sha256Digest([seed; 32]),
            engine: Sha256Digest([seed.wrapping_add(1); 32]),
            model: Sha256Digest([seed.wrapping_add(2); 32]),
            serving_config: Sha256Digest([seed.wrapping_add(3); 32]),
            tls_spki: Sha256Digest([seed.wrapping_add(4); 32]),
        }
    }

    fn log_of(launches: &[LaunchMeasurements]) -> Vec<LogEntry> {
        launches
            .iter()
            .flat_map(|l| l.events())
            .map(|event| LogEntry { pcr: 15, event })
            .collect()
    }

    #[test]
    fn latest_of_several_launches_is_returned() {
        let log = log_of(&[launch(1), launch(7)]);
        let quoted = replay(&log);
        assert_eq!(latest_launch(&log, 15, &quoted), Ok(launch(7)));
    }

    #[test]
    fn every_event_kind_digests_differently() {
        let d = Sha256Digest([9; 32]);
        let digests: std::collections::BTreeSet<_> = [
            WorkloadEvent::Engine { digest: d },
            WorkloadEvent::Model { digest: d },
            WorkloadEvent::ServingConfig { digest: d },
            WorkloadEvent::TlsSpki { digest: d },
        ]
        .iter()
        .map(WorkloadEvent::digest)
        .collect();
        assert_eq!(digests.len(), 4);
    }

    #[test]
    fn structural_tampering_is_named() {
        let log = log_of(&[launch(1)]);
        let quoted = replay(&log);

        let mut removed = log.clone();
        removed.remove(2);
        assert!(matches!(
            latest_launch(&removed, 15, &quoted),
            Err(EventLogError::OutsideLaunchSequence { index: 2, .. })
        ));

        let truncated = &log[..4];
        assert_eq!(
            latest_launch(truncated, 15, &quoted),
            Err(EventLogError::IncompleteLaunch { present: 4 })
        );

        let mut added = log.clone();
        added.push(log[1].clone());
        assert!(matches!(
            latest_launch(&added, 15, &quoted),
            Err(EventLogError::OutsideLaunchSequence { index: 5, .. })
        ));

        let mut other_pcr = log.clone();
        other_pcr[3].pcr = 16;
        assert!(matches!(
            latest_launch(&other_pcr, 15, &quoted),
            Err(EventLogError::WrongPcr { index: 3, .. })
        ));

        assert_eq!(
            latest_launch(&[], 15, &quoted),
            Err(EventLogError::Empty(15))
        );
    }

    #[test]
    fn edited_event_or_foreign_extend_fails_replay() {
        let log = log_of(&[launch(1)]);
        let quoted = replay(&log);

        let mut edited = log.clone();
        edited[2].event = WorkloadEvent::Model {
            digest: Sha256Digest([0xee; 32]),
        };
        assert!(matches!(
            latest_launch(&edited, 15, &quoted),
            Err(EventLogError::ReplayMismatch { .. })
        ));

        let foreign = extend(&quoted, &Sha256Digest([0x42; 32]));
        assert!(matches!(
            latest_launch(&log, 15, &foreign),
            Err(EventLogError::ReplayMismatch { .. })
        ));
    }

    #[test]
    fn event_json_is_tagged_and_strict() {
        let json = serde_json::to_string(&LogEntry {
            pcr: 15,
            event: WorkloadEvent::TlsSpki {
                digest: Sha256Digest([1; 32]),
            },
        })
        .unwrap();
        assert!(json.contains("\"type\":\"tls-spki\""), "{json}");
        let unknown = json.replace("tls-spki", "kernel-module");
        assert!(serde_json::from_str::<LogEntry>(&unknown).is_err());
    }
}
