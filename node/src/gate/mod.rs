//! The gate: the node policy applied at the CRI, and every admitted sandbox,
//! container and access recorded in the node log before the kubelet can use
//! it. See `docs/node-measurement.md`.

mod agent;
pub mod cri_spec;
mod registry;

use std::sync::{Arc, Mutex};

use k8s_cri::v1::{CreateContainerRequest, ImageSpec, RunPodSandboxRequest};
use tonic::Status;

use aver_crds::Sha256Digest;
use aver_node_log::{
    AccessKind as LogAccess, ContainerSpec, ImageIdentity, NodeEvent, NodePolicy, Refusal,
    SandboxInfo,
};

use crate::cri::hooks::{AccessKind, Hooks, ImageLookup};
use crate::store::Measurer;
use registry::Registry;

pub use cri_spec::Unmeasurable;

/// The measuring gate in front of the runtime. Cheap to clone: the CRI
/// proxy and the agent socket share one.
#[derive(Clone)]
pub struct Gate {
    policy: Arc<NodePolicy>,
    kubelet_root: Arc<str>,
    /// The agent socket's directory on the node, which the gate mounts into
    /// key holders (so that pods need no host path volume for it).
    agent_dir: Arc<str>,
    measurer: Measurer,
    registry: Arc<Mutex<Registry>>,
    /// Serialises key registrations, so that two concurrent requests from
    /// one container cannot both pass the once-only check.
    keys: Arc<tokio::sync::Mutex<()>>,
    /// Containers with a quote in flight: one each, so that no container
    /// can queue TPM work for the others to wait behind (the enclave's
    /// batcher never needs more than one).
    quoting: agent::OnePerKey,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("kubelet_root", &self.kubelet_root)
            .field("agent_dir", &self.agent_dir)
            .finish_non_exhaustive()
    }
}

/// What `admit_container` hands to `container_created`.
#[derive(Debug)]
pub struct Admitted {
    sandbox_id: String,
    name: String,
    attempt: u32,
    image: ImageIdentity,
    spec: ContainerSpec,
}

fn refused(r: Refusal) -> Status {
    tracing::warn!(reason = r.label, "refused: {r}");
    Status::permission_denied(format!("aver-node: {r}"))
}

fn unmeasurable(u: Unmeasurable) -> Status {
    tracing::warn!("refused: {u}");
    Status::permission_denied(format!("aver-node: {u}"))
}

fn not_recorded(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!("could not record {what} in the node log: {e}");
    Status::unavailable(format!(
        "aver-node: could not record {what} in the node log: {e}"
    ))
}

impl Gate {
    /// A gate over `measurer`'s log; the registry of what already runs is
    /// rebuilt from that log.
    pub async fn new(
        policy: NodePolicy,
        kubelet_root: String,
        agent_dir: String,
        measurer: Measurer,
    ) -> Result<Self, crate::store::StoreError> {
        let entries = measurer.entries().await?;
        Ok(Self {
            policy: Arc::new(policy),
            kubelet_root: kubelet_root.into(),
            agent_dir: agent_dir.into(),
            registry: Arc::new(Mutex::new(Registry::from_log(&entries))),
            measurer,
            keys: Arc::new(tokio::sync::Mutex::new(())),
            quoting: agent::OnePerKey::default(),
        })
    }

    /// The TPM worker and node log the gate records into.
    pub fn measurer(&self) -> &Measurer {
        &self.measurer
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn record(&self, what: &str, event: NodeEvent) -> Result<(), Status> {
        self.measurer
            .record(event.clone())
            .await
            .map_err(|e| not_recorded(what, e))?;
        self.registry().apply(&event);
        Ok(())
    }

    /// The measured container `container_id` and its sandbox, if the gate
    /// admitted it.
    fn lookup(&self, container_id: &str) -> Option<(String, String, ImageIdentity, SandboxInfo)> {
        let registry = self.registry();
        let (c, s) = registry.container(container_id)?;
        Some((
            c.sandbox_id.clone(),
            c.name.clone(),
            c.image.clone(),
            s.clone(),
        ))
    }

    /// Whether `container_id` is the key holder of a confidential pod, and
    /// whether it already registered a key.
    pub fn key_holder(&self, container_id: &str) -> Result<(String, bool), String> {
        let registry = self.registry();
        let Some((c, s)) = registry.container(container_id) else {
            return Err(format!(
                "container {container_id} was not started through aver-node"
            ));
        };
        if s.confidential_model.is_none() || c.name != self.policy.confidential.key_holder {
            return Err(format!(
                "container {} of pod {} is not the {} container of a confidential model pod",
                c.name, s.pod, self.policy.confidential.key_holder
            ));
        }
        Ok((c.sandbox_id.clone(), registry.has_key(container_id)))
    }

    /// Records that `container_id` (the key holder) holds `spki` and
    /// measured `model`; once per container.
    pub async fn register_key(
        &self,
        container_id: &str,
        spki: Sha256Digest,
        model: Sha256Digest,
    ) -> Result<(), String> {
        let _one_at_a_time = self.keys.lock().await;
        let (sandbox_id, registered) = self.key_holder(container_id)?;
        if registered {
            return Err(format!(
                "container {container_id} already registered a TLS key; a new key needs a new container"
            ));
        }
        self.record(
            "the TLS key",
            NodeEvent::TlsKey {
                sandbox_id,
                container_id: container_id.to_owned(),
                spki_sha256: spki,
                model_digest: model,
            },
        )
        .await
        .map_err(|s| s.message().to_owned())
    }

    async fn access(
        &self,
        kind: LogAccess,
        sandbox_id: &str,
        container_id: Option<&str>,
    ) -> Result<(), Status> {
        let (sandbox, container) = match container_id {
            Some(id) => {
                let Some((sandbox_id, name, image, sandbox)) = self.lookup(id) else {
                    return Err(Status::permission_denied(format!(
                        "aver-node: {} into container {id}: it was not started through aver-node",
                        kind.name()
                    )));
                };
                (sandbox, Some((sandbox_id, name, image)))
            }
            None => {
                let Some(sandbox) = self.registry().sandbox(sandbox_id).cloned() else {
                    return Err(Status::permission_denied(format!(
                        "aver-node: {} into sandbox {sandbox_id}: it was not created through aver-node",
                        kind.name()
                    )));
                };
                (sandbox, None)
            }
        };
        self.policy
            .admit_access(
                &sandbox,
                container.as_ref().map(|(_, n, i)| (n.as_str(), i)),
                kind,
            )
            .map_err(refused)?;
        // Exec probes run ExecSync every few seconds; they are allowed only
        // into system pods and not recorded (confidential pods never allow it).
        if kind == LogAccess::ExecSync {
            return Ok(());
        }
        let sandbox_id = container
            .as_ref()
            .map_or_else(|| sandbox_id.to_owned(), |(s, _, _)| s.clone());
        self.record(
            "an access",
            NodeEvent::Access {
                sandbox_id,
                container_id: container_id.map(str::to_owned),
                kind,
            },
        )
        .await
    }
}

/// Resolves the requested image through the runtime itself.
async fn resolve_image(
    spec: &ImageSpec,
    images: &dyn ImageLookup,
    container: &str,
) -> Result<ImageIdentity, Status> {
    let image = images.image_status(spec).await?.ok_or_else(|| {
        Status::not_found(format!(
            "aver-node: image {} of container {container} is not present on the node",
            spec.image
        ))
    })?;
    let id = Sha256Digest::parse(&image.id).map_err(|_| {
        Status::permission_denied(format!(
            "aver-node: image {} of container {container} has ID {:?}, not a sha256 content digest",
            spec.image, image.id
        ))
    })?;
    let mut repo_digests = image.repo_digests;
    repo_digests.sort();
    Ok(ImageIdentity {
        reference: spec.image.clone(),
        id,
        repo_digests,
    })
}

#[async_trait::async_trait]
impl Hooks for Gate {
    type Ticket = Admitted;

    async fn admit_sandbox(&self, req: &RunPodSandboxRequest) -> Result<(), Status> {
        let config = req.config.as_ref().ok_or_else(|| {
            Status::invalid_argument("aver-node: RunPodSandbox without a sandbox config")
        })?;
        let info = cri_spec::sandbox_info(config).map_err(unmeasurable)?;
        self.policy.admit_sandbox(&info).map_err(refused)
    }

    async fn sandbox_created(
        &self,
        req: &RunPodSandboxRequest,
        sandbox_id: &str,
    ) -> Result<(), Status> {
        let config = req.config.as_ref().ok_or_else(|| {
            Status::invalid_argument("aver-node: RunPodSandbox without a sandbox config")
        })?;
        let sandbox = cri_spec::sandbox_info(config).map_err(unmeasurable)?;
        self.record(
            "the pod sandbox",
            NodeEvent::PodSandbox {
                sandbox_id: sandbox_id.to_owned(),
                sandbox,
            },
        )
        .await
    }

    async fn admit_container(
        &self,
        req: &mut CreateContainerRequest,
        images: &dyn ImageLookup,
    ) -> Result<Admitted, Status> {
        let sandbox_id = req.pod_sandbox_id.clone();
        let sandbox = self.registry().sandbox(&sandbox_id).cloned().ok_or_else(|| {
            Status::permission_denied(format!(
                "aver-node: sandbox {sandbox_id} was not created through aver-node; its containers cannot be measured"
            ))
        })?;
        let config = req.config.as_mut().ok_or_else(|| {
            Status::invalid_argument("aver-node: CreateContainer without a container config")
        })?;
        let (name, attempt) = config
            .metadata
            .as_ref()
            .map(|m| (m.name.clone(), m.attempt))
            .ok_or_else(|| {
                Status::invalid_argument("aver-node: CreateContainer without container metadata")
            })?;
        let requested = config.image.clone().ok_or_else(|| {
            Status::invalid_argument(format!("aver-node: container {name} names no image"))
        })?;
        let image = resolve_image(&requested, images, &name).await?;
        // Pin the request to what was resolved and measured.
        if let Some(spec) = config.image.as_mut() {
            spec.image = image.id.to_string();
        }
        let mut spec =
            cri_spec::container_spec(config, &self.kubelet_root).map_err(unmeasurable)?;
        if sandbox.confidential_model.is_some() && name == self.policy.confidential.key_holder {
            cri_spec::mount_node_agent(config, &mut spec, &self.agent_dir).map_err(unmeasurable)?;
        }
        self.policy
            .admit_container(&sandbox, &name, &image, &spec)
            .map_err(refused)?;
        Ok(Admitted {
            sandbox_id,
            name,
            attempt,
            image,
            spec,
        })
    }

    async fn container_created(&self, a: Admitted, container_id: &str) -> Result<(), Status> {
        self.record(
            "the container",
            NodeEvent::Container {
                sandbox_id: a.sandbox_id,
                container_id: container_id.to_owned(),
                name: a.name,
                attempt: a.attempt,
                image: a.image,
                spec: a.spec,
            },
        )
        .await
    }

    async fn admit_start(&self, container_id: &str) -> Result<(), Status> {
        if self.lookup(container_id).is_some() {
            Ok(())
        } else {
            tracing::warn!(container_id, "refused: start of an unmeasured container");
            Err(Status::permission_denied(format!(
                "aver-node: container {container_id} was not created through aver-node and is not in the node log"
            )))
        }
    }

    async fn admit_exec(&self, kind: AccessKind, container_id: &str) -> Result<(), Status> {
        let kind = match kind {
            AccessKind::Exec => LogAccess::Exec,
            AccessKind::ExecSync => LogAccess::ExecSync,
            AccessKind::Attach => LogAccess::Attach,
        };
        self.access(kind, "", Some(container_id)).await
    }

    async fn admit_port_forward(&self, sandbox_id: &str) -> Result<(), Status> {
        self.access(LogAccess::PortForward, sandbox_id, None).await
    }

    async fn admit_checkpoint(&self, container_id: &str) -> Result<(), Status> {
        // A checkpoint dumps memory to the node's disk: treated like an exec.
        self.access(LogAccess::Exec, "", Some(container_id)).await
    }
}
