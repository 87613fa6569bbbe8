//! The pod of a `ConfidentialModel`, rendered in one place for everyone
//! who needs it: the controller applies it, and clients (`aver policy
//! from-model`) compute from it the container specs `aver-node` will
//! measure, so that a client's policy follows from the resource it reviewed
//! rather than from anything the server reports.
//!
//! - [`render`]: the Deployment, pod and Service (pure functions);
//! - [`expected`]: the kubelet's conversion of a container to what the
//!   runtime receives, as the canonical spec of `aver-node-log`;
//! - [`policy`]: the attestation policy of a node-measured model.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

pub mod expected;
pub mod policy;
pub mod render;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use expected::{
    expected_pod, ExpectedContainer, ExpectedError, ExpectedPod, ImageUser, KubeletParams,
};
pub use policy::model_policy;
pub use render::{WorkloadConfig, WorkloadError};
