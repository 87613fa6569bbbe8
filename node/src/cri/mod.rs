//! The CRI proxy: `aver-node` serves the CRI v1 `RuntimeService` and
//! `ImageService` to the kubelet and forwards every call to containerd.
//!
//! The CRI is the one point that sees everything the kubelet asks of the
//! runtime (including `Exec`, `Attach` and `PortForward`, which NRI plugins
//! and OCI hooks never see) before the runtime acts, so a refusal leaves
//! nothing half-done (docs/node-measurement.md). What is admitted is decided
//! by [`Hooks`]; this module only forwards, calls the hooks at the right
//! moments, undoes what a late refusal leaves behind, and logs and counts
//! refusals.

pub mod hooks;
pub mod proxy;
pub mod server;
pub mod upstream;

pub use hooks::{AccessKind, AllowAll, Hooks, ImageLookup};
pub use proxy::CriProxy;
pub use server::{serve, ServeError};
pub use upstream::Upstream;
