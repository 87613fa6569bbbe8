//! The points where the gate sees a CRI call before (and after) the runtime
//! acts on it.
//!
//! The proxy ([`super::CriProxy`]) forwards every call; for the few calls
//! that change what runs on the node or open a way into a container, it asks
//! a [`Hooks`] implementation first. A hook that returns `Err` refuses the
//! call: the status goes back to the kubelet as it is (the gate uses
//! `PermissionDenied` with one line naming what was refused and why) and, for
//! the `*_created` hooks, the proxy first undoes what the runtime created, so
//! that nothing unmeasured is left behind.

use k8s_cri::v1::{CreateContainerRequest, Image, ImageSpec, RunPodSandboxRequest};
use tonic::Status;

/// A way into a running container, as the kubelet asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// `Exec`: an interactive command (e.g. `kubectl exec`).
    Exec,
    /// `ExecSync`: a command whose output is returned at once (exec probes).
    ExecSync,
    /// `Attach`: the container's own stdin/stdout (e.g. `kubectl attach`).
    Attach,
}

impl AccessKind {
    /// The CRI method name, as in logs, metrics and refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Exec => "Exec",
            AccessKind::ExecSync => "ExecSync",
            AccessKind::Attach => "Attach",
        }
    }
}

impl std::fmt::Display for AccessKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The runtime's view of images, for hooks that must know what an image
/// reference resolves to *on this node* (its image ID and repo digests)
/// rather than trust the reference in the request.
///
/// The proxy implements it with the upstream `ImageService.ImageStatus`.
#[async_trait::async_trait]
pub trait ImageLookup: Send + Sync {
    /// The runtime's record of `image`, or `None` if the runtime does not
    /// have it (not pulled, or removed). Upstream errors are returned as
    /// they are.
    async fn image_status(&self, image: &ImageSpec) -> Result<Option<Image>, Status>;
}

/// What the gate decides, call by call.
///
/// Every method is awaited on the CRI call's own task, before (or right
/// after) the runtime acts; a slow hook delays that call only.
#[async_trait::async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// What [`Hooks::admit_container`] hands to [`Hooks::container_created`]
    /// for the same call (e.g. the canonical spec it admitted). If the
    /// runtime fails to create the container the ticket is dropped without
    /// `container_created` being called.
    type Ticket: Send + 'static;

    /// Before `RunPodSandbox` is forwarded; `Err` refuses it and nothing
    /// reaches the runtime.
    async fn admit_sandbox(&self, req: &RunPodSandboxRequest) -> Result<(), Status>;

    /// After the runtime created the sandbox `sandbox_id`, before the kubelet
    /// learns its ID. `Err` makes the proxy stop and remove the sandbox and
    /// fail the call with this status.
    async fn sandbox_created(
        &self,
        req: &RunPodSandboxRequest,
        sandbox_id: &str,
    ) -> Result<(), Status>;

    /// Before `CreateContainer` is forwarded. May rewrite the request (the
    /// gate pins the image to the ID `images` resolves it to, so a tag moved
    /// in between cannot change what starts). `Err` refuses it and nothing
    /// reaches the runtime.
    async fn admit_container(
        &self,
        req: &mut CreateContainerRequest,
        images: &dyn ImageLookup,
    ) -> Result<Self::Ticket, Status>;

    /// After the runtime created container `container_id`, before the
    /// kubelet learns its ID (so it cannot be started before this returns).
    /// `Err` makes the proxy remove the container and fail the call with
    /// this status.
    async fn container_created(
        &self,
        ticket: Self::Ticket,
        container_id: &str,
    ) -> Result<(), Status>;

    /// Before `StartContainer` is forwarded; `Err` refuses it.
    async fn admit_start(&self, container_id: &str) -> Result<(), Status>;

    /// Before `Exec`, `ExecSync` or `Attach` is forwarded; `Err` refuses it.
    async fn admit_exec(&self, kind: AccessKind, container_id: &str) -> Result<(), Status>;

    /// Before `PortForward` is forwarded; `Err` refuses it.
    async fn admit_port_forward(&self, sandbox_id: &str) -> Result<(), Status>;

    /// Before `CheckpointContainer` is forwarded; `Err` refuses it. A
    /// checkpoint is a dump of the container's memory to the node's disk,
    /// which for a confidential container is its prompts and keys.
    async fn admit_checkpoint(&self, container_id: &str) -> Result<(), Status>;
}

/// Hooks that admit everything: the proxy is then a plain pass-through.
/// For tests, and for running `aver-node` before the gate is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait::async_trait]
impl Hooks for AllowAll {
    type Ticket = ();

    async fn admit_sandbox(&self, _: &RunPodSandboxRequest) -> Result<(), Status> {
        Ok(())
    }

    async fn sandbox_created(&self, _: &RunPodSandboxRequest, _: &str) -> Result<(), Status> {
        Ok(())
    }

    async fn admit_container(
        &self,
        _: &mut CreateContainerRequest,
        _: &dyn ImageLookup,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn container_created(&self, _: (), _: &str) -> Result<(), Status> {
        Ok(())
    }

    async fn admit_start(&self, _: &str) -> Result<(), Status> {
        Ok(())
    }

    async fn admit_exec(&self, _: AccessKind, _: &str) -> Result<(), Status> {
        Ok(())
    }

    async fn admit_port_forward(&self, _: &str) -> Result<(), Status> {
        Ok(())
    }

    async fn admit_checkpoint(&self, _: &str) -> Result<(), Status> {
        Ok(())
    }
}
