//! Shared set-up of the end-to-end tests: a real control plane with the
//! CRDs applied, a namespace, nodes (real kubelets with containerd and
//! aver-node, or the node simulator for enclave-measured pods), model files
//! on every node, and `aver-controller` processes; plus bounded waits that
//! fail with every log that could explain why.

// Each e2e test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aver_crds::confidential_model::{
    ConfidentialModel, ConfidentialModelSpec, ConfidentialModelStatus, EngineSpec,
    HostPathModelSource, Measurement, ModelSource, ModelSpec, PodSettings, PvcModelSource,
    ServiceSpec, TpmSpec,
};
use aver_crds::{AttestationPolicy, Sha256Digest};
use aver_tests::controlplane::{ControlPlane, ControllerProcess};
use aver_tests::kubelet::RealNodes;
use aver_tests::node::{policy_for, ENGINE};
use aver_tests::node_agent::{ENCLAVE_IMAGE as ENCLAVE_TAG, NODE_PCR, STUB_ENGINE_IMAGE};
use aver_tests::node_sim::{NodeSim, SimConfig};
use aver_verifier::measurement::model_digest;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt as _;
use serde_json::json;

/// Re-attestation interval of the tests' policies (the CRD's minimum).
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Time on top of an interval for an attestation to run and the status
/// write to land (the controller coalesces writes per 100 ms).
pub const GRACE: Duration = Duration::from_secs(5);
/// Bound on "3 replicas verified" from the resource's creation (issue: 60 s).
pub const CONVERGE: Duration = Duration::from_secs(60);
/// Engine image, pinned to the digest every simulated node measures.
pub const ENGINE_IMAGE: &str = "registry.invalid/stub-engine@sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// The address of the `default/kubernetes` Service in the fixture (the
/// first address of its `--service-cluster-ip-range`).
pub const KUBERNETES_SERVICE: &str = "10.96.0.1:443";

/// What runs the pods.
pub enum Nodes {
    /// Real kubelets with containerd (and aver-node on TPM nodes): pods are
    /// node-measured, from the images the project builds.
    Real(Arc<RealNodes>),
    /// The node simulator: enclave-measured pods with the TPM reached over
    /// a TCTI. Kept for `measurement: enclave`, which needs a TPM device in
    /// the pod (this machine has no TPM device, and swtpm's CUSE device
    /// needs a kernel module it lacks).
    Sim(Arc<NodeSim>),
}

/// A cluster for one test.
///
/// Fields drop in order: controllers, then the nodes, then the control
/// plane.
pub struct Cluster {
    pub controllers: Vec<ControllerProcess>,
    pub nodes: Nodes,
    pub client: kube::Client,
    pub cp: ControlPlane,
    pub namespace: String,
    /// Controller logs and client files.
    pub work: tempfile::TempDir,
}

impl Cluster {
    /// Control plane, CRDs applied with kubectl, a namespace whose default
    /// ServiceAccount exists, and `tpm_nodes` + `plain_nodes` simulated nodes.
    pub async fn start(name: &str, tpm_nodes: usize, plain_nodes: usize) -> Self {
        Self::start_with(name, tpm_nodes, plain_nodes, &[]).await
    }

    /// Like [`Self::start`] with real kubelets: `tpm_nodes` hardened nodes
    /// (swtpm, containerd, aver-node) and `plain_nodes` plain ones, and a
    /// model namespace that enforces PodSecurity `level`.
    pub async fn start_real(
        name: &str,
        tpm_nodes: usize,
        plain_nodes: usize,
        up_flags: &[&str],
        level: &str,
    ) -> Self {
        Self::start_nodes(name, tpm_nodes, plain_nodes, up_flags, Some(level)).await
    }

    pub async fn start_with(
        name: &str,
        tpm_nodes: usize,
        plain_nodes: usize,
        up_flags: &[&str],
    ) -> Self {
        Self::start_nodes(name, tpm_nodes, plain_nodes, up_flags, None).await
    }

    async fn start_nodes(
        name: &str,
        tpm_nodes: usize,
        plain_nodes: usize,
        up_flags: &[&str],
        real: Option<&str>,
    ) -> Self {
        let started = Instant::now();
        let cp = ControlPlane::start_with(up_flags).expect("control plane starts");
        eprintln!(
            "e2e {name}: control plane ready in {:.1} s (fixture's own count {:.1} s)",
            started.elapsed().as_secs_f64(),
            cp.start_seconds
        );
        let client = cp.client().await.expect("client");
        apply_crds(&cp);
        let namespace = format!("e2e-{name}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut labels = serde_json::Map::new();
        if let Some(level) = real {
            labels.insert("pod-security.kubernetes.io/enforce".into(), level.into());
            labels.insert(
                "pod-security.kubernetes.io/enforce-version".into(),
                "v1.34".into(),
            );
        }
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace, "labels": labels}}))
                    .unwrap(),
            )
            .await
            .expect("namespace created");
        let nodes = match real {
            Some(_) => {
                let started = Instant::now();
                let nodes = RealNodes::start(&cp, &client, name, tpm_nodes, plain_nodes)
                    .await
                    .expect("real nodes start");
                eprintln!(
                    "e2e {name}: {} kubelets Ready in {:.1} s",
                    nodes.nodes.len(),
                    started.elapsed().as_secs_f64()
                );
                Nodes::Real(Arc::new(nodes))
            }
            None => Nodes::Sim(Arc::new(
                NodeSim::start(
                    client.clone(),
                    SimConfig {
                        prefix: name.to_owned(),
                        tpm_nodes,
                        plain_nodes,
                    },
                )
                .await
                .expect("node simulator starts"),
            )),
        };
        let cluster = Self {
            cp,
            client,
            nodes,
            namespace,
            work: tempfile::Builder::new()
                .prefix("aver-e2e-")
                .tempdir()
                .unwrap(),
            controllers: Vec::new(),
        };
        // No pod is admitted before the namespace's default ServiceAccount
        // exists (the fixture's controller manager makes it).
        let accounts: Api<ServiceAccount> =
            Api::namespaced(cluster.client.clone(), &cluster.namespace);
        cluster
            .wait_for(
                "default ServiceAccount",
                Duration::from_secs(30),
                || async { accounts.get_opt("default").await.ok().flatten() },
            )
            .await;
        cluster
    }

    /// The simulator (panics for a cluster of real nodes).
    pub fn sim(&self) -> &Arc<NodeSim> {
        match &self.nodes {
            Nodes::Sim(sim) => sim,
            Nodes::Real(_) => panic!("this test runs on real nodes"),
        }
    }

    /// The real nodes (panics for a simulated cluster).
    pub fn real(&self) -> &Arc<RealNodes> {
        match &self.nodes {
            Nodes::Real(real) => real,
            Nodes::Sim(_) => panic!("this test runs on simulated nodes"),
        }
    }

    /// Where a model directory named `dir` (e.g. `/models/llama-v1`) is on
    /// the nodes: the `hostPath` a resource names.
    pub fn host_path(&self, dir: &str) -> String {
        match &self.nodes {
            Nodes::Sim(_) => dir.to_owned(),
            Nodes::Real(real) => format!("{}{dir}", real.models_dir().display()),
        }
    }

    /// Extends the workload PCR of `node`'s TPM behind its back.
    pub fn tamper(&self, node: &str) {
        match &self.nodes {
            Nodes::Sim(sim) => sim
                .node(node)
                .expect("simulated node")
                .extend_pcr(aver_crds::policy::DEFAULT_WORKLOAD_PCR)
                .expect("extend the workload PCR"),
            Nodes::Real(real) => real
                .node(node)
                .and_then(|n| n.agent())
                .expect("a TPM node")
                .extend_pcr(NODE_PCR, [0x66; 32])
                .expect("extend the node PCR"),
        }
    }

    /// The enclave image the controller renders: the image the nodes run,
    /// by manifest digest, or a placeholder the simulator ignores.
    fn enclave_image(&self) -> String {
        match &self.nodes {
            Nodes::Sim(_) => aver_tests::controlplane::ENCLAVE_IMAGE.to_owned(),
            Nodes::Real(real) => real.image_by_digest(ENCLAVE_TAG),
        }
    }

    /// Starts a controller watching this test's namespace.
    pub fn start_controller(&mut self, identity: &str, extra: &[&str]) -> usize {
        // The models' files are in host directories below /models.
        let allowed = self.host_path("/models");
        let enclave = self.enclave_image();
        let mut flags = vec![
            "--attest-timeout",
            "5s",
            "--allowed-model-host-paths",
            &allowed,
            "--enclave-image",
            &enclave,
            "--kubernetes-service",
            KUBERNETES_SERVICE,
        ];
        flags.extend_from_slice(extra);
        let controller = ControllerProcess::start(
            &self.cp,
            &self.namespace,
            identity,
            self.work.path(),
            &flags,
        )
        .expect("aver-controller starts");
        self.controllers.push(controller);
        self.controllers.len() - 1
    }

    pub fn models(&self) -> Api<ConfidentialModel> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Writes a model's files below `host_dir` on every node, as a real
    /// cluster's provisioning would, and returns its digest, computed here.
    ///
    /// On real nodes the resource reaches the files through a claim (see
    /// [`Self::claim_name`]), bound to a hostPath PersistentVolume of that
    /// directory: every node sees the same filesystem, so the replicas can
    /// land on distinct nodes (a local volume would pin them to one), and
    /// the pods have no hostPath volume, as PodSecurity `restricted` wants.
    pub async fn write_model(&self, host_dir: &str, weights: &[u8]) -> Sha256Digest {
        match &self.nodes {
            Nodes::Sim(sim) => {
                sim.write_on_every_node(host_dir, "weights.bin", weights)
                    .unwrap();
                sim.write_on_every_node(host_dir, "tokenizer.json", b"{\"vocab\":[]}")
                    .unwrap();
                model_digest(&sim.nodes[0].host_path(host_dir)).unwrap()
            }
            Nodes::Real(_) => {
                // One filesystem for every node, readable by the pods' user.
                let dir = PathBuf::from(self.host_path(host_dir));
                std::fs::create_dir_all(&dir).unwrap();
                for d in dir.ancestors().take(2) {
                    std::fs::set_permissions(
                        d,
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    )
                    .unwrap();
                }
                std::fs::write(dir.join("weights.bin"), weights).unwrap();
                std::fs::write(dir.join("tokenizer.json"), b"{\"vocab\":[]}").unwrap();
                self.provision_claim(host_dir).await;
                model_digest(&dir).unwrap()
            }
        }
    }

    /// The claim a resource names for the model files at `host_dir` on
    /// real nodes (`/models/llama-v1` → `models-llama-v1`).
    pub fn claim_name(&self, host_dir: &str) -> String {
        host_dir.trim_matches('/').replace('/', "-")
    }

    /// A hostPath PersistentVolume of `host_dir` and a claim bound to it
    /// in both directions, as an administrator provisions static volumes.
    async fn provision_claim(&self, host_dir: &str) {
        let claim = self.claim_name(host_dir);
        let volume = format!("{}-{claim}", self.namespace);
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": self.host_path(host_dir), "type": "Directory"},
                "claimRef": {"namespace": self.namespace, "name": claim},
            },
        }))
        .unwrap();
        volumes
            .create(&PostParams::default(), &pv)
            .await
            .expect("PersistentVolume created");
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }))
        .unwrap();
        claims
            .create(&PostParams::default(), &pvc)
            .await
            .expect("PersistentVolumeClaim created");
    }

    /// A policy trusting every TPM node's AK, allowing `models` (and, on
    /// real nodes, their node policy).
    pub fn policy(&self, models: &[Sha256Digest]) -> AttestationPolicy {
        let ak_names = match &self.nodes {
            Nodes::Sim(sim) => sim.ak_names().expect("AK names"),
            Nodes::Real(real) => real.ak_names(),
        };
        let mut policy = policy_for(&ak_names, models[0]);
        if let Nodes::Real(real) = &self.nodes {
            policy.workload_pcr = NODE_PCR;
            policy.allowed.engine_digests = vec![real.manifest_digest(STUB_ENGINE_IMAGE)];
            // No allowed.nodePolicies: the CRD accepts it only beside
            // allowed.pod, which the controller derives.
        }
        policy.allowed.model_digests = models.to_vec();
        policy.interval = format!("{}s", INTERVAL.as_secs());
        policy.max_evidence_age = "1m".into();
        policy
    }

    /// A ConfidentialModel serving the model at `host_dir` on the nodes.
    pub fn model(
        &self,
        name: &str,
        replicas: i32,
        host_dir: &str,
        digest: Sha256Digest,
        policy: AttestationPolicy,
    ) -> ConfidentialModel {
        let (engine, engine_digest, args, measurement) = match &self.nodes {
            // The node simulator runs the enclave with the node's swtpm:
            // the legacy, enclave-measured path.
            Nodes::Sim(_) => (
                ENGINE_IMAGE.to_owned(),
                Sha256Digest::parse(ENGINE).unwrap(),
                Vec::new(),
                Measurement::Enclave,
            ),
            Nodes::Real(real) => (
                real.image_by_digest(STUB_ENGINE_IMAGE),
                real.manifest_digest(STUB_ENGINE_IMAGE),
                vec!["127.0.0.1:8000".to_owned()],
                Measurement::Node,
            ),
        };
        let mut cm = ConfidentialModel::new(
            name,
            ConfidentialModelSpec {
                model: ModelSpec {
                    source: match &self.nodes {
                        Nodes::Sim(_) => ModelSource {
                            persistent_volume_claim: None,
                            image: None,
                            host_path: Some(HostPathModelSource {
                                path: self.host_path(host_dir),
                            }),
                        },
                        Nodes::Real(_) => ModelSource {
                            persistent_volume_claim: Some(PvcModelSource {
                                claim_name: self.claim_name(host_dir),
                                sub_path: None,
                            }),
                            image: None,
                            host_path: None,
                        },
                    },
                    digest,
                },
                engine: EngineSpec {
                    image: engine,
                    digest: engine_digest,
                    port: 8000,
                    args,
                    env: Vec::new(),
                    resources: None,
                    run_as_user: None,
                },
                replicas,
                measurement,
                tpm: TpmSpec::default(),
                attestation: policy,
                service: ServiceSpec::default(),
                // A short drain keeps rollouts fast: the old pod's node is
                // free for the next one sooner.
                pod: PodSettings {
                    drain_seconds: Some(3),
                    ..PodSettings::default()
                },
            },
        );
        cm.metadata.namespace = Some(self.namespace.clone());
        cm
    }

    /// A client's policy file for the resource `cm` as it reviewed it: on
    /// real nodes (node-measured) what `aver policy from-model` derives, on
    /// the simulator its `spec.attestation` as written.
    pub fn client_policy_file(&self, name: &str, cm: &ConfidentialModel) -> PathBuf {
        if let Nodes::Sim(_) = &self.nodes {
            return self.policy_file(name, &cm.spec.attestation);
        }
        let model = self.work.path().join(format!("{name}.model.json"));
        std::fs::write(&model, serde_json::to_vec_pretty(cm).unwrap()).unwrap();
        let out = self.work.path().join(name);
        let _ = std::fs::remove_file(&out);
        let (ok, _, err) = run(self
            .aver()
            .args(["policy", "from-model"])
            .arg(&model)
            .args(["--enclave-image", &self.enclave_image()])
            .args(["--kubernetes-service", KUBERNETES_SERVICE])
            .arg("--out")
            .arg(&out));
        assert!(ok, "aver policy from-model failed: {err}");
        out
    }

    /// Whether a container of pod `pod` still runs on some node.
    pub async fn pod_running(&self, pod: &str) -> bool {
        match &self.nodes {
            Nodes::Sim(sim) => sim.pods().get(pod).is_some_and(|p| p.running),
            Nodes::Real(real) => {
                for node in &real.nodes {
                    let Ok(mut cri) = node.containerd().cri().await else {
                        continue;
                    };
                    let running = cri
                        .list_containers()
                        .await
                        .unwrap_or_default()
                        .iter()
                        .any(|c| {
                            c.state == k8s_cri::v1::ContainerState::ContainerRunning as i32
                                && c.labels.get("io.kubernetes.pod.name").map(String::as_str)
                                    == Some(pod)
                        });
                    if running {
                        return true;
                    }
                }
                false
            }
        }
    }

    /// Runs `script` with busybox's `sh` in a pod of its own on `node`
    /// (a plain node: TPM nodes admit only confidential pods) and returns
    /// what it printed, read through the kubelet.
    pub async fn run_probe_pod(&self, name: &str, node: &str, script: &str) -> String {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                // What PodSecurity `restricted` asks of every pod.
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65534,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [{
                    "name": "probe",
                    "image": aver_tests::containerd::BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }],
            },
        }))
        .unwrap();
        let pods = self.pods();
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("probe pod created");
        self.wait_for(
            &format!("probe pod {name} finished"),
            Duration::from_secs(60),
            || async {
                let phase = pods.get(name).await.ok()?.status?.phase?;
                matches!(phase.as_str(), "Succeeded" | "Failed").then_some(())
            },
        )
        .await;
        pods.logs(name, &Default::default())
            .await
            .expect("probe pod logs")
    }

    /// `kubectl apply -f` of `object`, written as JSON into the work
    /// directory, as a platform team applies a manifest.
    pub fn kubectl_apply(&self, file: &str, object: &serde_json::Value) {
        let path = self.work.path().join(file);
        std::fs::write(&path, serde_json::to_vec_pretty(object).unwrap()).unwrap();
        let (ok, out, err) = run(self.cp.kubectl().arg("apply").arg("-f").arg(&path));
        assert!(ok, "kubectl apply -f {file}: {out}{err}");
    }

    /// The peer of the real-node benchmark: the engine image alone as a
    /// plain Deployment of `replicas` pods on the plain nodes (TPM nodes
    /// admit only confidential pods), no enclave and no attestation, with
    /// a TCP readiness probe. Returns the seconds from `kubectl apply` to
    /// the first and to the last Ready pod, then deletes it and waits for
    /// its pods to be gone.
    pub async fn plain_engine_rollout(&self, replicas: i32) -> (f64, f64) {
        const NAME: &str = "plain-engine";
        let Nodes::Real(real) = &self.nodes else {
            panic!("the plain peer runs on real nodes only");
        };
        let labels = json!({"app": NAME});
        let deployment = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": self.namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [
                                {"key": aver_tests::kubelet::TPM_LABEL.0, "operator": "DoesNotExist"},
                            ]}],
                        }}},
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "engine",
                            "image": real.image_by_digest(STUB_ENGINE_IMAGE),
                            "imagePullPolicy": "Never",
                            "args": ["0.0.0.0:8000"],
                            "ports": [{"containerPort": 8000}],
                            "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 5},
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }],
                    },
                },
            },
        });
        let applied = Instant::now();
        self.kubectl_apply("plain-engine.json", &deployment);
        let pods = self.pods();
        let selector = ListParams::default().labels(&format!("app={NAME}"));
        let ready = |want: usize| {
            let (pods, selector) = (pods.clone(), selector.clone());
            async move {
                let list = pods.list(&selector).await.ok()?;
                let n = list
                    .items
                    .iter()
                    .filter(|pod| {
                        pod.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count();
                (n >= want).then_some(())
            }
        };
        let timeout = Duration::from_secs(120);
        self.wait_for("a Ready plain engine pod", timeout, || ready(1))
            .await;
        let first = applied.elapsed().as_secs_f64();
        let all = usize::try_from(replicas).unwrap();
        self.wait_for("every plain engine pod Ready", timeout, || ready(all))
            .await;
        let last = applied.elapsed().as_secs_f64();
        let (ok, out, err) = run(self.cp.kubectl().args([
            "delete",
            "deployment",
            NAME,
            "--namespace",
            &self.namespace,
            "--wait=true",
        ]));
        assert!(ok, "kubectl delete deployment {NAME}: {out}{err}");
        self.wait_for("the plain engine pods gone", timeout, || async {
            pods.list(&selector)
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        })
        .await;
        (first, last)
    }

    /// Writes a policy file for `aver --policy`.
    pub fn policy_file(&self, name: &str, policy: &AttestationPolicy) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(policy).unwrap()).unwrap();
        path
    }

    /// The resource's status (empty if none yet).
    pub async fn status(&self, name: &str) -> ConfidentialModelStatus {
        self.models()
            .get(name)
            .await
            .ok()
            .and_then(|cm| cm.status)
            .unwrap_or_default()
    }

    /// Polls `check` every 250 ms until it returns `Some`, or fails the
    /// test after `timeout` with every log that could explain why.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(value) = check().await {
                eprintln!("e2e: {what} after {:.1} s", start.elapsed().as_secs_f64());
                return value;
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until status lists exactly `n` endpoints, all checked by
    /// [`Self::check_endpoints`], with Ready true and the current generation
    /// observed; returns that status.
    pub async fn wait_verified(
        &self,
        name: &str,
        n: usize,
        timeout: Duration,
        also: impl Fn(&ConfidentialModelStatus) -> bool,
    ) -> ConfidentialModelStatus {
        self.wait_for(
            &format!("{n} verified endpoints of {name}"),
            timeout,
            || async {
                let cm = self.models().get(name).await.ok()?;
                let status = cm.status.clone()?;
                let ready = status
                    .condition("Ready")
                    .is_some_and(|c| c.status == "True");
                (status.endpoints.len() == n
                    && ready
                    && status.observed_generation == cm.metadata.generation
                    && self.check_endpoints(&status).await.is_empty()
                    && also(&status))
                .then_some(status)
            },
        )
        .await
    }

    /// What is wrong with the published endpoints, compared with what the
    /// nodes really run: each must be a running pod's enclave, at its
    /// address and the attested port, with the certificate that enclave
    /// serves (simulator) or the key it registered with its node's
    /// aver-node (real nodes).
    pub async fn check_endpoints(&self, status: &ConfidentialModelStatus) -> Vec<String> {
        match &self.nodes {
            Nodes::Sim(sim) => sim_endpoint_problems(sim, status),
            Nodes::Real(real) => self.real_endpoint_problems(real, status).await,
        }
    }

    async fn real_endpoint_problems(
        &self,
        real: &RealNodes,
        status: &ConfidentialModelStatus,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for endpoint in &status.endpoints {
            let Ok(pod) = self.pods().get(&endpoint.pod).await else {
                problems.push(format!("{}: no such pod", endpoint.pod));
                continue;
            };
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if ip.as_deref() != Some(endpoint.address.as_str()) || endpoint.port != 8443 {
                problems.push(format!(
                    "{}: published {}:{}, runs at {ip:?}:8443",
                    endpoint.pod, endpoint.address, endpoint.port
                ));
            }
            if node.as_deref() != Some(endpoint.node.as_str()) {
                problems.push(format!(
                    "{}: node {} != {node:?}",
                    endpoint.pod, endpoint.node
                ));
            }
            if !real.served(&endpoint.spki_sha256) {
                problems.push(format!(
                    "{}: key {} was never registered with a node agent",
                    endpoint.pod, endpoint.spki_sha256
                ));
            }
            if let Some(cert) = served_certificate(&endpoint.address, endpoint.port).await {
                if cert != pem_to_der(&endpoint.certificate_pem) {
                    problems.push(format!(
                        "{}: certificate differs from the one the enclave serves",
                        endpoint.pod
                    ));
                }
            }
        }
        problems
    }

    /// Marks a node unschedulable, as an operator does with a node that
    /// failed attestation.
    pub async fn cordon(&self, node: &str) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await
            .expect("cordon");
    }

    /// Notes of the Events with `reason` about the resource `name`.
    pub async fn events(&self, name: &str, reason: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        events
            .list(&ListParams::default())
            .await
            .map(|list| {
                list.items
                    .into_iter()
                    .filter(|e| {
                        e.reason.as_deref() == Some(reason)
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    })
                    .map(|e| e.note.unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Names of the resource's pods that exist now, with their nodes.
    pub async fn pod_nodes(&self, model: &str) -> BTreeMap<String, String> {
        self.pods()
            .list(&ListParams::default().labels(&format!("aver.dev/model={model}")))
            .await
            .map(|list| {
                list.items
                    .into_iter()
                    .map(|p| {
                        let node = p
                            .spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_default();
                        (p.name_any(), node)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs the `aver` CLI with this cluster's kubeconfig.
    pub fn aver(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(aver_tests::cargo_bin("aver"));
        cmd.arg("--log-format")
            .arg("text")
            .env("KUBECONFIG", self.cp.kubeconfig())
            .env_remove("AVER_POLICY")
            .env_remove("AVER_NAMESPACE");
        cmd
    }

    /// Watches the resource for the rest of the test and records every
    /// published status that breaks an invariant: an endpoint that is not
    /// the key a simulated enclave really serves, or whatever `extra`
    /// reports.
    pub fn monitor(
        &self,
        name: &str,
        extra: impl Fn(&ConfidentialModel) -> Vec<String> + Send + Sync + 'static,
    ) -> Monitor {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(0usize));
        let served: Arc<dyn Fn(&Sha256Digest) -> bool + Send + Sync> = match &self.nodes {
            Nodes::Sim(sim) => {
                let sim = sim.clone();
                Arc::new(move |spki| sim.served(spki))
            }
            Nodes::Real(real) => {
                let real = real.clone();
                Arc::new(move |spki| real.served(spki))
            }
        };
        let models = self.models();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let (v, s) = (violations.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(models, config).boxed();
            while let Some(event) = stream.next().await {
                let cm = match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
                    _ => continue,
                };
                let mut problems = extra(&cm);
                let Some(status) = cm.status else { continue };
                *s.lock().unwrap() += 1;
                for endpoint in &status.endpoints {
                    if !served(&endpoint.spki_sha256) {
                        problems.push(format!(
                            "{} published with key {} that no enclave served",
                            endpoint.pod, endpoint.spki_sha256
                        ));
                    }
                }
                if !problems.is_empty() {
                    v.lock().unwrap().extend(problems);
                }
            }
        });
        Monitor {
            task,
            violations,
            seen,
        }
    }

    /// Everything that could explain a failure.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for controller in &self.controllers {
            out.push_str(&controller.log_tail(60));
        }
        out.push_str(&self.cp.logs(15));
        for what in [
            &[
                "get",
                "nodes,pods,replicasets,deployments",
                "-A",
                "-o",
                "wide",
            ][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} taints={.spec.taints} addresses={.status.addresses}{\"\\n\"}{end}",
            ][..],
        ] {
            if let Ok(output) = self.cp.kubectl().args(what).output() {
                out.push_str(&format!(
                    "\n--- kubectl {}\n{}{}",
                    what.join(" "),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
        match &self.nodes {
            Nodes::Sim(sim) => {
                for problem in sim.problems() {
                    out.push_str(&format!("\nnode simulator: {problem}"));
                }
                for (name, pod) in sim.pods() {
                    out.push_str(&format!(
                        "\nsimulated pod {name} on {} at {} running={} spki={:?}",
                        pod.node, pod.ip, pod.running, pod.spki_sha256
                    ));
                }
            }
            Nodes::Real(real) => {
                // What the containers said, through the kubelets.
                for previous in ["--previous=false", "--previous=true"] {
                    if let Ok(output) = self
                        .cp
                        .kubectl()
                        .args(["logs", "-n", &self.namespace, "-l", "aver.dev/model"])
                        .args(["--all-containers", "--prefix", "--tail=15", previous])
                        .output()
                    {
                        out.push_str(&format!(
                            "\n--- container logs ({previous})\n{}{}",
                            String::from_utf8_lossy(&output.stdout),
                            String::from_utf8_lossy(&output.stderr)
                        ));
                    }
                }
                out.push_str(&real.diagnostics());
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== e2e diagnostics ====\n{}", self.diagnostics());
        }
    }
}

/// Records invariant violations of published statuses; see [`Cluster::monitor`].
pub struct Monitor {
    task: tokio::task::JoinHandle<()>,
    violations: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<usize>>,
}

impl Monitor {
    /// Stops watching; panics listing every violation seen.
    pub fn finish(self) -> usize {
        self.task.abort();
        let violations = self.violations.lock().unwrap().clone();
        assert!(
            violations.is_empty(),
            "published statuses broke invariants:\n{}",
            violations.join("\n")
        );
        *self.seen.lock().unwrap()
    }
}

/// `kubectl apply` of the CRDs in crds/, then wait until established: the
/// API server accepted the structural schema and compiled its CEL rules.
pub fn apply_crds(cp: &ControlPlane) {
    let crd = aver_tests::controlplane::repo_root().join("crds/confidentialmodel.yaml");
    let output = cp
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&crd)
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl apply of {} failed: {}",
        crd.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let output = cp
        .kubectl()
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/confidentialmodels.aver.dev",
        ])
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "CRD not established: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// DER of the first certificate of a PEM text.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap_or_default()
}

/// Runs a command and returns (success, stdout, stderr).
pub fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let output = cmd.output().expect("command runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn sim_endpoint_problems(sim: &NodeSim, status: &ConfidentialModelStatus) -> Vec<String> {
    let pods = sim.pods();
    let mut problems = Vec::new();
    for endpoint in &status.endpoints {
        let Some(pod) = pods.get(&endpoint.pod) else {
            problems.push(format!("{}: no such pod ran", endpoint.pod));
            continue;
        };
        let real = pod.certificate_der.clone().unwrap_or_default();
        let published = pem_to_der(&endpoint.certificate_pem);
        if published != real {
            problems.push(format!(
                "{}: certificate differs from the enclave's",
                endpoint.pod
            ));
        }
        if Some(endpoint.spki_sha256) != pod.spki_sha256 {
            problems.push(format!("{}: SPKI differs from the enclave's", endpoint.pod));
        }
        if endpoint.address != pod.ip.to_string() || endpoint.port != 8443 {
            problems.push(format!(
                "{}: published {}:{}, runs at {}:8443",
                endpoint.pod, endpoint.address, endpoint.port, pod.ip
            ));
        }
        if endpoint.node != pod.node {
            problems.push(format!(
                "{}: node {} != {}",
                endpoint.pod, endpoint.node, pod.node
            ));
        }
    }
    problems
}

/// The leaf certificate (DER) an address serves over TLS, read without
/// verifying anything; `None` if nothing answers.
pub async fn served_certificate(address: &str, port: i32) -> Option<Vec<u8>> {
    aver_tests::node::served_certificate(&format!("{address}:{port}")).await
}
