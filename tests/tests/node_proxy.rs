//! The `aver-node` CRI proxy in front of a real containerd: with hooks that
//! allow everything it is invisible to the kubelet (played by the test's
//! CRI client); with hooks that refuse, the refusal reaches the client as
//! the hook wrote it and nothing is left in the runtime, including when the
//! refusal comes after the runtime created the sandbox or container.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use aver_node::cri::{self, AccessKind, AllowAll, CriProxy, Hooks, ImageLookup, Upstream};
use aver_node::metrics::Metrics;
use aver_tests::containerd::{ContainerSpec, Containerd, CriClient, BUSYBOX_IMAGE};
use aver_tests::require_containerd;
use k8s_cri::v1 as api;
use tokio::sync::oneshot;
use tonic::Status;

const PATIENCE: Duration = Duration::from_secs(30);

/// A proxy serving on a socket in `dir`; stops when dropped.
struct Proxy<H: Hooks> {
    proxy: CriProxy<H>,
    socket: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl<H: Hooks> Proxy<H> {
    async fn start(hooks: H, containerd: &Containerd, dir: &Path) -> Self {
        let socket = dir.join("aver-node").join("cri.sock");
        let listener = aver_node::unix::bind(&socket, 0o600).unwrap();
        let proxy = CriProxy::new(
            hooks,
            Upstream::connect_lazy(containerd.socket_path()),
            Metrics::new(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn({
            let proxy = proxy.clone();
            async move {
                cri::serve(listener, proxy, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            }
        });
        Self {
            proxy,
            socket,
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// A client on the proxy, configured as the fixture's own client is
    /// (cgroup parent and log directory of this containerd).
    async fn client(&self, containerd: &Containerd) -> CriClient {
        CriClient::connect(&self.socket)
            .await
            .unwrap()
            .with_cgroup_parent(containerd.cgroup_parent())
            .with_log_root(containerd.dir().join("pods"))
    }

    fn metrics(&self) -> &Metrics {
        self.proxy.metrics()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.unwrap();
        }
    }
}

async fn start_containerd(dir: &Path) -> Containerd {
    let path = dir.join("containerd");
    std::fs::create_dir_all(&path).unwrap();
    tokio::task::spawn_blocking(move || Containerd::start(&path).unwrap())
        .await
        .unwrap()
}

fn error_text(error: &anyhow::Error) -> String {
    format!("{error:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_and_container_run_through_the_allow_all_proxy() {
    require_containerd!();
    let dir = tempfile::Builder::new()
        .prefix("aver-node-proxy-")
        .tempdir()
        .unwrap();
    let containerd = start_containerd(dir.path()).await;
    let proxy = Proxy::start(AllowAll, &containerd, dir.path()).await;
    let mut cri = proxy.client(&containerd).await;
    let mut direct = containerd.cri().await.unwrap();

    // Answers pass through unchanged.
    assert_eq!(
        cri.version().await.unwrap(),
        direct.version().await.unwrap()
    );
    let image = cri.image_status(BUSYBOX_IMAGE).await.unwrap().unwrap();
    assert_eq!(
        Some(&image),
        direct.image_status(BUSYBOX_IMAGE).await.unwrap().as_ref()
    );
    assert!(cri
        .list_images()
        .await
        .unwrap()
        .iter()
        .any(|i| i.id == image.id));

    // The runtime's event stream is forwarded as a stream, or its error
    // (containerd before 1.7 does not implement it) passed through as it is.
    let events = cri
        .runtime()
        .get_container_events(api::GetEventsRequest {})
        .await;
    let direct_events = direct
        .runtime()
        .get_container_events(api::GetEventsRequest {})
        .await;
    let mut events = match (events, direct_events) {
        (Ok(events), Ok(_)) => Some(events.into_inner()),
        (Err(via_proxy), Err(upstream)) => {
            assert_eq!(via_proxy.code(), upstream.code());
            assert_eq!(via_proxy.message(), upstream.message());
            None
        }
        (via_proxy, upstream) => panic!(
            "proxy and runtime disagree on GetContainerEvents: {:?} vs {:?}",
            via_proxy.err(),
            upstream.err()
        ),
    };

    let pod = cri
        .run_pod("default", "through-proxy", "uid-through-proxy", &[])
        .await
        .unwrap();
    let spec = ContainerSpec::new("sleeper", BUSYBOX_IMAGE)
        .command(["/bin/sh", "-c"])
        .args(["echo started; exec sleep 3600"]);
    let container = cri.create_container(&pod, spec).await.unwrap();
    cri.start_container(&container).await.unwrap();
    let out = cri
        .exec_sync(
            &container,
            &["/bin/sh", "-c", "echo exec through the proxy"],
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "exec through the proxy\n");
    assert_eq!(out.exit_code, 0);

    // What the proxy created is what the runtime has.
    let pods = direct.list_pods().await.unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, pod.id);
    let containers = direct.list_containers().await.unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].id, container);

    if let Some(events) = events.as_mut() {
        let event = tokio::time::timeout(PATIENCE, events.message())
            .await
            .expect("a container event within the patience")
            .unwrap()
            .expect("the stream is open");
        assert!(!event.container_id.is_empty(), "{event:?}");
    }

    // Upstream errors come back as the runtime wrote them.
    let missing = "0".repeat(64);
    let via_proxy = cri
        .runtime()
        .container_status(api::ContainerStatusRequest {
            container_id: missing.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    let upstream = direct
        .runtime()
        .container_status(api::ContainerStatusRequest {
            container_id: missing,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(via_proxy.code(), upstream.code());
    assert_eq!(via_proxy.message(), upstream.message());

    cri.stop_container(&container, Duration::from_secs(1))
        .await
        .unwrap();
    cri.remove_container(&container).await.unwrap();
    cri.stop_pod(&pod.id).await.unwrap();
    cri.remove_pod(&pod.id).await.unwrap();
    assert!(direct.list_pods().await.unwrap().is_empty());

    for call in [
        "Version",
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "ExecSync",
        "RemovePodSandbox",
    ] {
        assert!(
            proxy.metrics().cri_requests(call) >= 1,
            "{call} not counted"
        );
    }
    assert_eq!(proxy.metrics().refusals("RunPodSandbox"), 0);
    let text = proxy.metrics().encode();
    assert!(
        text.contains("aver_node_cri_requests_total{call=\"ImageStatus\"}"),
        "{text}"
    );

    drop(cri);
    proxy.stop().await;
    tokio::task::spawn_blocking(move || drop(containerd))
        .await
        .unwrap();
}

/// Refuses by name, before or after creation, and pins images to their IDs
/// as the gate does; records what the post-creation hooks saw.
#[derive(Default)]
struct Picky {
    created_sandboxes: Mutex<Vec<String>>,
    created_containers: Mutex<Vec<(String, String)>>,
}

fn pod_name(req: &api::RunPodSandboxRequest) -> String {
    req.config
        .as_ref()
        .and_then(|c| c.metadata.as_ref())
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Hooks for Picky {
    /// The container name and the image ID it was pinned to.
    type Ticket = (String, String);

    async fn admit_sandbox(&self, req: &api::RunPodSandboxRequest) -> Result<(), Status> {
        match pod_name(req).as_str() {
            "forbidden" => Err(Status::permission_denied(
                "pod default/forbidden: not allowed by the node policy",
            )),
            _ => Ok(()),
        }
    }

    async fn sandbox_created(
        &self,
        req: &api::RunPodSandboxRequest,
        sandbox_id: &str,
    ) -> Result<(), Status> {
        self.created_sandboxes
            .lock()
            .unwrap()
            .push(sandbox_id.to_owned());
        match pod_name(req).as_str() {
            "late" => Err(Status::unavailable(
                "pod default/late: cannot record it in the node log",
            )),
            _ => Ok(()),
        }
    }

    async fn admit_container(
        &self,
        req: &mut api::CreateContainerRequest,
        images: &dyn ImageLookup,
    ) -> Result<Self::Ticket, Status> {
        let config = req
            .config
            .as_mut()
            .ok_or_else(|| Status::invalid_argument("no container config"))?;
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        if name == "debugger" {
            return Err(Status::permission_denied(
                "container debugger in pod default/picky: not an allowed container",
            ));
        }
        let spec = config
            .image
            .as_mut()
            .ok_or_else(|| Status::invalid_argument("no image"))?;
        let image = images.image_status(spec).await?.ok_or_else(|| {
            Status::failed_precondition(format!("image {} not present", spec.image))
        })?;
        spec.image = image.id.clone();
        Ok((name, image.id))
    }

    async fn container_created(
        &self,
        (name, image_id): Self::Ticket,
        container_id: &str,
    ) -> Result<(), Status> {
        self.created_containers
            .lock()
            .unwrap()
            .push((container_id.to_owned(), image_id));
        if name == "late" {
            return Err(Status::unavailable(
                "container late: cannot record it in the node log",
            ));
        }
        Ok(())
    }

    async fn admit_start(&self, _: &str) -> Result<(), Status> {
        Ok(())
    }

    async fn admit_exec(&self, kind: AccessKind, container_id: &str) -> Result<(), Status> {
        Err(Status::permission_denied(format!(
            "{kind} into container {container_id}: confidential pods allow no access"
        )))
    }

    async fn admit_port_forward(&self, sandbox_id: &str) -> Result<(), Status> {
        Err(Status::permission_denied(format!(
            "PortForward into sandbox {sandbox_id}: confidential pods allow no access"
        )))
    }

    async fn admit_checkpoint(&self, container_id: &str) -> Result<(), Status> {
        Err(Status::permission_denied(format!(
            "CheckpointContainer {container_id}: would write a confidential container's memory to disk"
        )))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_client_and_leave_nothing_in_the_runtime() {
    require_containerd!();
    let dir = tempfile::Builder::new()
        .prefix("aver-node-proxy-")
        .tempdir()
        .unwrap();
    let containerd = start_containerd(dir.path()).await;
    let proxy = Proxy::start(Picky::default(), &containerd, dir.path()).await;
    let mut cri = proxy.client(&containerd).await;
    let mut direct = containerd.cri().await.unwrap();

    // Refused before the runtime: nothing was created.
    let config = cri.pod_config("default", "forbidden", "uid-forbidden", &[]);
    let status = cri
        .runtime()
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "pod default/forbidden: not allowed by the node policy"
    );
    assert!(direct.list_pods().await.unwrap().is_empty());
    assert!(proxy
        .proxy
        .hooks()
        .created_sandboxes
        .lock()
        .unwrap()
        .is_empty());

    // Refused after the runtime created it: stopped and removed again.
    let error = cri
        .run_pod("default", "late", "uid-late", &[])
        .await
        .unwrap_err();
    assert!(
        error_text(&error).contains("pod default/late: cannot record it in the node log"),
        "{error:#}"
    );
    let late = proxy
        .proxy
        .hooks()
        .created_sandboxes
        .lock()
        .unwrap()
        .clone();
    assert_eq!(late.len(), 1, "the runtime created the sandbox");
    assert!(
        direct.list_pods().await.unwrap().is_empty(),
        "the refused sandbox {} is still there",
        late[0]
    );

    // An admitted pod; a container the hook refuses is never created.
    let pod = cri
        .run_pod("default", "picky", "uid-picky", &[])
        .await
        .unwrap();
    let debugger = ContainerSpec::new("debugger", BUSYBOX_IMAGE).command(["sleep", "3600"]);
    let error = cri.create_container(&pod, debugger).await.unwrap_err();
    assert!(
        error_text(&error)
            .contains("container debugger in pod default/picky: not an allowed container"),
        "{error:#}"
    );
    assert!(direct.list_containers().await.unwrap().is_empty());

    // A container refused after creation is removed again.
    let late = ContainerSpec::new("late", BUSYBOX_IMAGE).command(["sleep", "3600"]);
    let error = cri.create_container(&pod, late).await.unwrap_err();
    assert!(
        error_text(&error).contains("container late: cannot record it in the node log"),
        "{error:#}"
    );
    assert!(direct.list_containers().await.unwrap().is_empty());

    // An admitted container runs the image ID the hook pinned it to.
    let sleeper = ContainerSpec::new("sleeper", BUSYBOX_IMAGE).command(["sleep", "3600"]);
    let container = cri.create_container(&pod, sleeper).await.unwrap();
    cri.start_container(&container).await.unwrap();
    let busybox_id = containerd.image_id(BUSYBOX_IMAGE).unwrap();
    let created = proxy
        .proxy
        .hooks()
        .created_containers
        .lock()
        .unwrap()
        .clone();
    assert_eq!(
        created.last(),
        Some(&(container.clone(), busybox_id.clone()))
    );
    let listed = direct.list_containers().await.unwrap();
    let record = listed.iter().find(|c| c.id == container).unwrap();
    assert_eq!(
        record.image.as_ref().map(|i| i.image.as_str()),
        Some(busybox_id.as_str()),
        "{record:?}"
    );

    // No way in: exec, attach, port-forward and checkpoint are refused.
    let error = cri
        .exec_sync(&container, &["cat", "/etc/hostname"], PATIENCE)
        .await
        .unwrap_err();
    assert!(
        error_text(&error).contains(&format!(
            "ExecSync into container {container}: confidential pods allow no access"
        )),
        "{error:#}"
    );
    let exec = cri
        .runtime()
        .exec(api::ExecRequest {
            container_id: container.clone(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(exec.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        exec.message(),
        format!("Exec into container {container}: confidential pods allow no access")
    );
    let attach = cri
        .runtime()
        .attach(api::AttachRequest {
            container_id: container.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(attach.code(), tonic::Code::PermissionDenied);
    let forward = cri
        .runtime()
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(forward.code(), tonic::Code::PermissionDenied);
    assert!(forward.message().contains(&pod.id), "{forward:?}");
    let checkpoint = cri
        .runtime()
        .checkpoint_container(api::CheckpointContainerRequest {
            container_id: container.clone(),
            location: dir.path().join("checkpoint.tar").display().to_string(),
            timeout: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(checkpoint.code(), tonic::Code::PermissionDenied);
    assert!(!dir.path().join("checkpoint.tar").exists());

    let metrics = proxy.metrics();
    assert_eq!(metrics.refusals("RunPodSandbox"), 2);
    assert_eq!(metrics.refusals("CreateContainer"), 2);
    for call in [
        "ExecSync",
        "Exec",
        "Attach",
        "PortForward",
        "CheckpointContainer",
    ] {
        assert_eq!(metrics.refusals(call), 1, "{call}");
    }
    assert_eq!(metrics.refusals("StartContainer"), 0);

    cri.remove_all_pods().await.unwrap();
    drop(cri);
    proxy.stop().await;
    tokio::task::spawn_blocking(move || drop(containerd))
        .await
        .unwrap();
}
