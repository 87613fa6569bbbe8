//! The node measurement log that `aver-node` keeps in the workload PCR, and
//! everything needed to read it: the typed events, the canonical container
//! spec whose digest policies list, the node policy, and the replay that
//! turns a log into a [`NodeHistory`].
//!
//! One crate for producer and consumer: the gate on the node and the
//! verifier on the client run the same admission functions over the same
//! types, so they cannot disagree on what was allowed to run. It has no
//! TPM, CRI or network dependencies, so clients can use it anywhere.
//! `docs/node-measurement.md` describes the design.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod encoding;
pub mod event;
pub mod history;
pub mod policy;
pub mod spec;

pub use event::{extend, replay, NodeEvent, NodeLogEntry, MAX_NODE_LOG_EVENTS};
pub use history::{
    policy_digest, BoundPod, ContainerRecord, KeyRecord, NodeHistory, NodeLogError, PodMismatch,
    SandboxRecord,
};
pub use policy::{
    AccessKind, ImageIdentity, NodePolicy, NodePolicyError, PodRef, Refusal, SandboxInfo,
    CONFIDENTIAL_LABEL,
};
pub use spec::{ContainerSpec, MountSource};
