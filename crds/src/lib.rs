//! API types of aver, defined once and shared by every part that speaks them.
//!
//! The attestation policy lives here (not in the verifier) because the same
//! schema is embedded in the `ConfidentialModel` resource and read from client
//! policy files: one definition keeps the operator and zero-trust clients from
//! drifting apart on what "verified" means.
//!
//! The Kubernetes resource ([`ConfidentialModel`] and its status types) sits
//! behind the `resource` feature (on by default for this crate, off in the
//! workspace dependency) so that policy-only users do not compile the
//! Kubernetes API types.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

pub mod ak_name;
pub mod boot_policy;
pub mod digest;
pub mod policy;
pub mod protocol;

#[cfg(feature = "resource")]
pub mod confidential_model;
#[cfg(feature = "resource")]
pub mod crd;

pub use ak_name::{AkName, AkNameError};
pub use boot_policy::{AllowedFile, BootPolicy, RuntimePolicy, SecureBoot};
pub use digest::{DigestParseError, Sha256Digest};
pub use policy::{
    AllowedContainer, AllowedPod, AllowedWorkload, AttestationPolicy, PolicyError, ReferencePcr,
    TrustRoots,
};

#[cfg(feature = "resource")]
pub use confidential_model::{
    AkActivation, BootPolicyResult, ConfidentialModel, ConfidentialModelSpec,
    ConfidentialModelStatus, EndpointMeasurements, EngineSpec, HostPathModelSource,
    ImageModelSource, Measurement, ModelSource, ModelSpec, ModelVolume, ModelVolumeType,
    PodSettings, PvcModelSource, ServiceSpec, TpmDevice, TpmSpec, VerifiedEndpoint,
};
