//! The simulated kubelets' watch loop and pod lifecycle: start a bound
//! pod's processes, report its status, stop them and remove the pod when it
//! is deleted.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use aver_verifier::binding::spki_sha256;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::ResourceExt as _;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::pod_spec::plan;
use super::probe::wait_listening_and_ready;
use super::{PodRecord, Shared, SimNode, ENCLAVE_CONTAINER, STOP_GRACE};
use crate::stub_upstream::StubUpstream;

/// The watch loop: one "kubelet" for every simulated node.
#[derive(Clone)]
pub(super) struct Kubelet {
    pub(super) client: kube::Client,
    pub(super) nodes: Vec<Arc<SimNode>>,
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Kubelet {
    pub(super) async fn run(self) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut seen = HashSet::new();
        let mut stream = watcher(pods).boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => seen.clear(),
                Ok(Event::InitApply(pod)) => {
                    if let Some(uid) = pod.uid() {
                        seen.insert(uid);
                    }
                    self.observe(pod);
                }
                Ok(Event::InitDone) => self.forget_unseen(&seen),
                Ok(Event::Apply(pod)) => self.observe(pod),
                Ok(Event::Delete(pod)) => {
                    if let Some(uid) = pod.uid() {
                        self.stop(&uid);
                    }
                }
                // The apiserver went away, or the watch expired: the
                // watcher re-lists with backoff; pods keep running, as
                // they do when a kubelet loses its apiserver.
                Err(e) => tracing_line(&format!("pod watch: {e}")),
            }
        }
    }

    fn node_of(&self, pod: &Pod) -> Option<Arc<SimNode>> {
        let name = pod.spec.as_ref()?.node_name.as_deref()?;
        self.nodes.iter().find(|n| n.name == name).cloned()
    }

    fn observe(&self, pod: Pod) {
        let Some(node) = self.node_of(&pod) else {
            return;
        };
        let Some(uid) = pod.uid() else { return };
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if pod.metadata.deletion_timestamp.is_some() {
            if shared.finalizing.insert(uid.clone()) {
                let stop = shared.runtimes.remove(&uid);
                drop(shared);
                self.spawn(self.clone().finalize(pod, stop));
            }
            return;
        }
        let terminal = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if terminal || shared.runtimes.contains_key(&uid) {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        shared.runtimes.insert(uid, stop_tx);
        drop(shared);
        self.spawn(self.clone().run_pod(node, pod, stop_rx));
    }

    fn spawn(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(future);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    fn stop(&self, uid: &str) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stop) = shared.runtimes.remove(uid) {
            let _ = stop.send(true);
        }
    }

    /// After a re-list: pods that no longer exist are stopped.
    fn forget_unseen(&self, seen: &HashSet<String>) {
        let gone: Vec<String> = {
            let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared
                .runtimes
                .keys()
                .filter(|uid| !seen.contains(*uid))
                .cloned()
                .collect()
        };
        for uid in gone {
            self.stop(&uid);
        }
    }

    /// Graceful deletion: stop the processes, then remove the pod.
    async fn finalize(self, pod: Pod, stop: Option<watch::Sender<bool>>) {
        if let Some(stop) = stop {
            let _ = stop.send(true);
            // The runtime task marks the record not running once its
            // processes are gone.
            stop.closed().await;
        }
        let (Some(namespace), Some(uid)) = (pod.namespace(), pod.uid()) else {
            return;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        // Retried: the apiserver may be restarting.
        for _ in 0..60 {
            match pods.delete(&pod.name_any(), &params).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => tracing_line(&format!("finalizing {}: {e}", pod.name_any())),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs a pod until told to stop: its engine and enclave, restarting the
    /// enclave when it exits, and its status as a kubelet reports it.
    async fn run_pod(self, node: Arc<SimNode>, pod: Pod, mut stop: watch::Receiver<bool>) {
        let name = pod.name_any();
        let namespace = pod.namespace().unwrap_or_default();
        let uid = pod.uid().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let ip = match node.allocate_pod_ip() {
            Ok(ip) => ip,
            Err(e) => return self.problem(&pods, &name, &e).await,
        };
        let plan = match plan(&node, &pod, ip) {
            Ok(plan) => plan,
            Err(e) => return self.problem(&pods, &name, &e).await,
        };
        self.record(PodRecord {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            node: node.name.clone(),
            ip,
            certificate_der: None,
            spki_sha256: None,
            running: true,
        });
        let _engine = match StubUpstream::start_on(plan.engine).await {
            Ok(stub) => stub,
            Err(e) => {
                let e = anyhow::anyhow!("engine on {}: {e}", plan.engine);
                return self.problem(&pods, &name, &e).await;
            }
        };
        let log = pod_log(&node, &namespace, &name);
        let started = jiff::Timestamp::now();
        let mut restarts = 0u32;
        loop {
            let mut child = match plan.spawn(&log) {
                Ok(child) => child,
                Err(e) => return self.problem(&pods, &name, &e).await,
            };
            let _ =
                patch_pod_status(&pods, &name, &status(&node, ip, started, false, restarts)).await;
            let ready = tokio::select! {
                ready = wait_listening_and_ready(&mut child, &plan) => ready,
                _ = stop.wait_for(|s| *s) => Err(anyhow::anyhow!("stopped")),
            };
            match ready {
                Ok(cert) => {
                    self.observe_certificate(&uid, cert);
                    let _ =
                        patch_pod_status(&pods, &name, &status(&node, ip, started, true, restarts))
                            .await;
                }
                Err(e) => tracing_line(&format!("pod {name}: {e:#}")),
            }
            let exit = tokio::select! {
                _ = stop.wait_for(|s| *s) => None,
                exit = child.wait() => Some(exit),
            };
            let Some(exit) = exit else {
                stop_process(&mut child).await;
                break;
            };
            tracing_line(&format!(
                "pod {name}: enclave exited ({exit:?}); restarting"
            ));
            restarts += 1;
            let _ =
                patch_pod_status(&pods, &name, &status(&node, ip, started, false, restarts)).await;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = shared.pods.get_mut(&uid) {
            record.running = false;
        }
    }

    fn record(&self, record: PodRecord) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.pods.insert(record.uid.clone(), record);
    }

    fn observe_certificate(&self, uid: &str, der: Vec<u8>) {
        let spki = spki_sha256(&der).ok();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(spki) = spki {
            shared.served.insert(spki);
        }
        if let Some(record) = shared.pods.get_mut(uid) {
            record.certificate_der = Some(der);
            record.spki_sha256 = spki;
        }
    }

    /// A pod that cannot run here: reported in its status (as a kubelet
    /// reports a container that cannot be created) and kept for the test.
    async fn problem(&self, pods: &Api<Pod>, name: &str, error: &anyhow::Error) {
        let message = format!("{error:#}");
        tracing_line(&format!("pod {name}: {message}"));
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .push(format!("{name}: {message}"));
        let patch =
            json!({"status": {"phase": "Pending", "reason": "SimulatorError", "message": message}});
        let _ = patch_pod_status(pods, name, &patch).await;
    }
}

fn watcher(pods: Api<Pod>) -> impl futures_util::Stream<Item = Result<Event<Pod>, watcher::Error>> {
    watcher::watcher(pods, watcher::Config::default()).backoff(Steady)
}

/// Retry a broken watch every 500 ms: the simulator should notice a
/// restarted API server at once, so that test timings reflect the
/// controller, not the simulator's own backoff.
struct Steady;

impl Iterator for Steady {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(500))
    }
}

impl kube::runtime::utils::Backoff for Steady {
    fn reset(&mut self) {}
}

/// Diagnostics of the simulator, on the test's stderr (shown for failed tests).
fn tracing_line(message: &str) {
    eprintln!("node-sim: {message}");
}

fn pod_log(node: &SimNode, namespace: &str, name: &str) -> PathBuf {
    node.host_path(&format!(
        "/var/log/pods/{namespace}_{name}/{ENCLAVE_CONTAINER}.log"
    ))
}

/// The pod status a kubelet reports.
fn status(
    node: &SimNode,
    ip: Ipv4Addr,
    started: jiff::Timestamp,
    ready: bool,
    restarts: u32,
) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let ready_text = if ready { "True" } else { "False" };
    let condition = |type_: &str, status: &str| json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    json!({"status": {
        "phase": "Running",
        "hostIP": node.ip.to_string(),
        "hostIPs": [{"ip": node.ip.to_string()}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": started.to_string(),
        "conditions": [
            condition("PodScheduled", "True"),
            condition("Initialized", "True"),
            condition("ContainersReady", ready_text),
            condition("Ready", ready_text),
        ],
        "containerStatuses": [{
            "name": ENCLAVE_CONTAINER,
            "ready": ready,
            "started": true,
            "restartCount": restarts,
            "image": "aver-enclave",
            "imageID": "",
            "state": {"running": {"startedAt": now}},
        }],
    }})
}

async fn patch_pod_status(
    pods: &Api<Pod>,
    name: &str,
    patch: &serde_json::Value,
) -> anyhow::Result<()> {
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("cannot patch the status of pod {name}"))?;
    Ok(())
}

/// SIGTERM, then SIGKILL after the grace period.
async fn stop_process(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = crate::process::signal(pid, crate::process::Signal::Term);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
