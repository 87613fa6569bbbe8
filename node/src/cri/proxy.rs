//! The CRI `RuntimeService` and `ImageService` that forward to the upstream
//! runtime, with [`Hooks`] on the calls the gate decides.
//!
//! Requests go upstream with the kubelet's metadata (including its
//! `grpc-timeout`, so the kubelet's deadlines hold for the runtime too);
//! responses and upstream errors come back exactly as the runtime sent
//! them. Only a hook's refusal is the proxy's own answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Extensions, Request, Response, Status};

use super::hooks::{AccessKind, Hooks};
use super::upstream::Upstream;
use crate::metrics::Metrics;

/// How long undoing a sandbox or container the gate refused after creation
/// may take, per runtime call.
const UNDO_TIMEOUT: Duration = Duration::from_secs(60);

/// The proxy: one instance serves both CRI services. Cheap to clone.
pub struct CriProxy<H: Hooks> {
    inner: Arc<Inner<H>>,
}

impl<H: Hooks> Clone for CriProxy<H> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<H: Hooks> std::fmt::Debug for CriProxy<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriProxy")
            .field("upstream", &self.inner.upstream.socket())
            .finish_non_exhaustive()
    }
}

struct Inner<H> {
    hooks: H,
    upstream: Upstream,
    metrics: Metrics,
}

impl<H: Hooks> CriProxy<H> {
    /// A proxy to `upstream` that asks `hooks` and counts into `metrics`.
    pub fn new(hooks: H, upstream: Upstream, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                hooks,
                upstream,
                metrics,
            }),
        }
    }

    /// The hooks, e.g. for a test to inspect what they recorded.
    pub fn hooks(&self) -> &H {
        &self.inner.hooks
    }

    /// The metrics this proxy counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// The kubelet's request as it goes upstream: its metadata and message.
/// Server-side extensions (the connection's peer) are not the upstream's
/// business and are dropped.
fn upstream_request<T>(request: Request<T>) -> Request<T> {
    let (metadata, _, message) = request.into_parts();
    Request::from_parts(metadata, Extensions::default(), message)
}

/// Runs a gated sequence (admit, forward, record or undo) on its own task,
/// so that a kubelet giving up on the call (which drops the handler) cannot
/// stop it halfway, between the runtime creating something and the gate
/// recording or undoing it.
async fn to_completion<T: Send + 'static>(
    call: &'static str,
    sequence: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(sequence).await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(call, %error, "gated CRI call did not complete");
            Err(Status::internal(format!(
                "aver-node: {call} did not complete"
            )))
        }
    }
}

/// `namespace/name` of a sandbox request, for logs.
fn pod_name(request: &cri::RunPodSandboxRequest) -> String {
    match request
        .config
        .as_ref()
        .and_then(|config| config.metadata.as_ref())
    {
        Some(meta) => format!("{}/{}", meta.namespace, meta.name),
        None => "(no metadata)".to_owned(),
    }
}

/// Container name of a create request, for logs.
fn container_name(request: &cri::CreateContainerRequest) -> String {
    request
        .config
        .as_ref()
        .and_then(|config| config.metadata.as_ref())
        .map_or_else(|| "(no metadata)".to_owned(), |meta| meta.name.clone())
}

impl<H: Hooks> Inner<H> {
    /// Logs and counts a refusal and returns its status for the kubelet.
    fn refused(&self, call: &'static str, subject: &str, status: Status) -> Status {
        self.metrics.refusal(call);
        tracing::warn!(
            call,
            subject,
            code = ?status.code(),
            reason = status.message(),
            "refused"
        );
        status
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        const CALL: &str = "RunPodSandbox";
        let subject = format!("pod {}", pod_name(request.get_ref()));
        if let Err(status) = self.hooks.admit_sandbox(request.get_ref()).await {
            return Err(self.refused(CALL, &subject, status));
        }
        let (metadata, _, message) = request.into_parts();
        let mut runtime = self.upstream.runtime.clone();
        let response = runtime
            .run_pod_sandbox(Request::from_parts(
                metadata,
                Extensions::default(),
                message.clone(),
            ))
            .await?;
        let sandbox_id = response.get_ref().pod_sandbox_id.clone();
        if let Err(status) = self.hooks.sandbox_created(&message, &sandbox_id).await {
            let status = self.refused(CALL, &subject, status);
            self.undo_sandbox(&sandbox_id).await;
            return Err(status);
        }
        Ok(response)
    }

    /// Stops and removes a sandbox the gate refused after the runtime
    /// created it. Failures are logged: the call fails either way, and the
    /// kubelet's garbage collection removes sandboxes it does not know.
    async fn undo_sandbox(&self, sandbox_id: &str) {
        let mut runtime = self.upstream.runtime.clone();
        let stop = cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
        };
        match tokio::time::timeout(UNDO_TIMEOUT, runtime.stop_pod_sandbox(stop)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::error!(sandbox_id, error = %status.message(), "cannot stop refused sandbox")
            }
            Err(_) => tracing::error!(sandbox_id, "stopping refused sandbox timed out"),
        }
        let remove = cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
        };
        match tokio::time::timeout(UNDO_TIMEOUT, runtime.remove_pod_sandbox(remove)).await {
            Ok(Ok(_)) => tracing::info!(sandbox_id, "refused sandbox removed"),
            Ok(Err(status)) => {
                tracing::error!(sandbox_id, error = %status.message(), "cannot remove refused sandbox")
            }
            Err(_) => tracing::error!(sandbox_id, "removing refused sandbox timed out"),
        }
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        const CALL: &str = "CreateContainer";
        let (metadata, _, mut message) = request.into_parts();
        let subject = format!(
            "container {} in sandbox {}",
            container_name(&message),
            message.pod_sandbox_id
        );
        let ticket = match self
            .hooks
            .admit_container(&mut message, &self.upstream)
            .await
        {
            Ok(ticket) => ticket,
            Err(status) => return Err(self.refused(CALL, &subject, status)),
        };
        let mut runtime = self.upstream.runtime.clone();
        let response = runtime
            .create_container(Request::from_parts(
                metadata,
                Extensions::default(),
                message,
            ))
            .await?;
        let container_id = response.get_ref().container_id.clone();
        if let Err(status) = self.hooks.container_created(ticket, &container_id).await {
            let status = self.refused(CALL, &subject, status);
            self.undo_container(&container_id).await;
            return Err(status);
        }
        Ok(response)
    }

    /// Removes a container the gate refused after the runtime created it
    /// (it was never started). Failures are logged, as for sandboxes.
    async fn undo_container(&self, container_id: &str) {
        let mut runtime = self.upstream.runtime.clone();
        let remove = cri::RemoveContainerRequest {
            container_id: container_id.to_owned(),
        };
        match tokio::time::timeout(UNDO_TIMEOUT, runtime.remove_container(remove)).await {
            Ok(Ok(_)) => tracing::info!(container_id, "refused container removed"),
            Ok(Err(status)) => {
                tracing::error!(container_id, error = %status.message(), "cannot remove refused container")
            }
            Err(_) => tracing::error!(container_id, "removing refused container timed out"),
        }
    }
}

/// Implements the forwarding of every RPC listed as `forward`, and adds the
/// hand-written (gated) methods given after them, in one `async_trait` impl.
macro_rules! forwarding_impl {
    (
        impl $service:ident via $client:ident {
            forward { $($method:ident($call:literal, $req:ident) -> $resp:ident;)* }
            $($gated:tt)*
        }
    ) => {
        #[async_trait::async_trait]
        impl<H: Hooks> $service for CriProxy<H> {
            $(
                async fn $method(
                    &self,
                    request: Request<cri::$req>,
                ) -> Result<Response<cri::$resp>, Status> {
                    self.inner.metrics.cri_request($call);
                    let mut client = self.inner.upstream.$client.clone();
                    client.$method(upstream_request(request)).await
                }
            )*
            $($gated)*
        }
    };
}

forwarding_impl! {
    impl RuntimeService via runtime {
        forward {
            version("Version", VersionRequest) -> VersionResponse;
            stop_pod_sandbox("StopPodSandbox", StopPodSandboxRequest) -> StopPodSandboxResponse;
            remove_pod_sandbox("RemovePodSandbox", RemovePodSandboxRequest) -> RemovePodSandboxResponse;
            pod_sandbox_status("PodSandboxStatus", PodSandboxStatusRequest) -> PodSandboxStatusResponse;
            list_pod_sandbox("ListPodSandbox", ListPodSandboxRequest) -> ListPodSandboxResponse;
            stop_container("StopContainer", StopContainerRequest) -> StopContainerResponse;
            remove_container("RemoveContainer", RemoveContainerRequest) -> RemoveContainerResponse;
            list_containers("ListContainers", ListContainersRequest) -> ListContainersResponse;
            container_status("ContainerStatus", ContainerStatusRequest) -> ContainerStatusResponse;
            update_container_resources("UpdateContainerResources", UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
            reopen_container_log("ReopenContainerLog", ReopenContainerLogRequest) -> ReopenContainerLogResponse;
            container_stats("ContainerStats", ContainerStatsRequest) -> ContainerStatsResponse;
            list_container_stats("ListContainerStats", ListContainerStatsRequest) -> ListContainerStatsResponse;
            pod_sandbox_stats("PodSandboxStats", PodSandboxStatsRequest) -> PodSandboxStatsResponse;
            list_pod_sandbox_stats("ListPodSandboxStats", ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
            update_runtime_config("UpdateRuntimeConfig", UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
            status("Status", StatusRequest) -> StatusResponse;
            list_metric_descriptors("ListMetricDescriptors", ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
            list_pod_sandbox_metrics("ListPodSandboxMetrics", ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
            runtime_config("RuntimeConfig", RuntimeConfigRequest) -> RuntimeConfigResponse;
        }

        async fn run_pod_sandbox(
            &self,
            request: Request<cri::RunPodSandboxRequest>,
        ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
            const CALL: &str = "RunPodSandbox";
            self.inner.metrics.cri_request(CALL);
            let inner = Arc::clone(&self.inner);
            to_completion(CALL, async move { inner.run_pod_sandbox(request).await }).await
        }

        async fn create_container(
            &self,
            request: Request<cri::CreateContainerRequest>,
        ) -> Result<Response<cri::CreateContainerResponse>, Status> {
            const CALL: &str = "CreateContainer";
            self.inner.metrics.cri_request(CALL);
            let inner = Arc::clone(&self.inner);
            to_completion(CALL, async move { inner.create_container(request).await }).await
        }

        async fn start_container(
            &self,
            request: Request<cri::StartContainerRequest>,
        ) -> Result<Response<cri::StartContainerResponse>, Status> {
            const CALL: &str = "StartContainer";
            self.inner.metrics.cri_request(CALL);
            let id = &request.get_ref().container_id;
            if let Err(status) = self.inner.hooks.admit_start(id).await {
                return Err(self.inner.refused(CALL, &format!("container {id}"), status));
            }
            let mut client = self.inner.upstream.runtime.clone();
            client.start_container(upstream_request(request)).await
        }

        async fn exec_sync(
            &self,
            request: Request<cri::ExecSyncRequest>,
        ) -> Result<Response<cri::ExecSyncResponse>, Status> {
            let kind = AccessKind::ExecSync;
            self.inner.metrics.cri_request(kind.as_str());
            let id = &request.get_ref().container_id;
            if let Err(status) = self.inner.hooks.admit_exec(kind, id).await {
                return Err(self.inner.refused(kind.as_str(), &format!("container {id}"), status));
            }
            let mut client = self.inner.upstream.runtime.clone();
            client.exec_sync(upstream_request(request)).await
        }

        async fn exec(
            &self,
            request: Request<cri::ExecRequest>,
        ) -> Result<Response<cri::ExecResponse>, Status> {
            let kind = AccessKind::Exec;
            self.inner.metrics.cri_request(kind.as_str());
            let id = &request.get_ref().container_id;
            if let Err(status) = self.inner.hooks.admit_exec(kind, id).await {
                return Err(self.inner.refused(kind.as_str(), &format!("container {id}"), status));
            }
            let mut client = self.inner.upstream.runtime.clone();
            client.exec(upstream_request(request)).await
        }

        async fn attach(
            &self,
            request: Request<cri::AttachRequest>,
        ) -> Result<Response<cri::AttachResponse>, Status> {
            let kind = AccessKind::Attach;
            self.inner.metrics.cri_request(kind.as_str());
            let id = &request.get_ref().container_id;
            if let Err(status) = self.inner.hooks.admit_exec(kind, id).await {
                return Err(self.inner.refused(kind.as_str(), &format!("container {id}"), status));
            }
            let mut client = self.inner.upstream.runtime.clone();
            client.attach(upstream_request(request)).await
        }

        async fn port_forward(
            &self,
            request: Request<cri::PortForwardRequest>,
        ) -> Result<Response<cri::PortForwardResponse>, Status> {
            const CALL: &str = "PortForward";
            self.inner.metrics.cri_request(CALL);
            let id = &request.get_ref().pod_sandbox_id;
            if let Err(status) = self.inner.hooks.admit_port_forward(id).await {
                return Err(self.inner.refused(CALL, &format!("sandbox {id}"), status));
            }
            let mut client = self.inner.upstream.runtime.clone();
            client.port_forward(upstream_request(request)).await
        }

        async fn checkpoint_container(
            &self,
            request: Request<cri::CheckpointContainerRequest>,
        ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
            const CALL: &str = "CheckpointContainer";
            self.inner.metrics.cri_request(CALL);
            let id = &request.get_ref().container_id;
            if let Err(status) = self.inner.hooks.admit_checkpoint(id).await {
                return Err(self.inner.refused(CALL, &format!("container {id}"), status));
            }
            let mut client = self.inner.upstream.runtime.clone();
            client.checkpoint_container(upstream_request(request)).await
        }

        type GetContainerEventsStream = tonic::Streaming<cri::ContainerEventResponse>;

        /// The runtime's event stream, passed through as it arrives.
        async fn get_container_events(
            &self,
            request: Request<cri::GetEventsRequest>,
        ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
            self.inner.metrics.cri_request("GetContainerEvents");
            let mut client = self.inner.upstream.runtime.clone();
            client.get_container_events(upstream_request(request)).await
        }
    }
}

forwarding_impl! {
    impl ImageService via images {
        forward {
            list_images("ListImages", ListImagesRequest) -> ListImagesResponse;
            image_status("ImageStatus", ImageStatusRequest) -> ImageStatusResponse;
            pull_image("PullImage", PullImageRequest) -> PullImageResponse;
            remove_image("RemoveImage", RemoveImageRequest) -> RemoveImageResponse;
            image_fs_info("ImageFsInfo", ImageFsInfoRequest) -> ImageFsInfoResponse;
        }
    }
}
