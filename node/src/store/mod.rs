//! The node log of this boot and the one thread that owns the TPM.
//!
//! [`NodeLogStore`] keeps the log in the state directory with a write-ahead
//! protocol, so that the log on disk always explains the workload PCR (or
//! is one pending event ahead of it, which the next start resolves).
//! [`Measurer`] moves the TPM and the store onto a dedicated thread and
//! gives the gate and the agent socket an async handle: events are recorded
//! one at a time, in order, and a quote is taken together with the log it
//! covers. See `docs/node-measurement.md`, "The node log".

pub mod log;
pub mod worker;

pub use log::{
    NodeLogStore, StoreError, DEFAULT_STATE_DIR, DEFAULT_WORKLOAD_PCR, LOCK_FILE, LOG_FILE,
    MAX_EVENT_JSON_BYTES, PREVIOUS_LOG_FILE,
};
pub use worker::{Measurer, MeasurerConfig, NodeQuote, DEFAULT_BOOT_PCRS};
