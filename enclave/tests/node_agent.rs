//! `aver-enclave serve --node-agent` against the agent socket server of the
//! `aver-node` crate, with a test agent whose TPM is a real swtpm: the
//! enclave registers its key (recorded as a `tls-key` event in PCR 15),
//! and a verifier attests it over TLS with a policy naming the pod's
//! containers (`allowed.pod`).
//!
//! The real `aver-node` learns the pod and its containers from containerd
//! at the CRI; here the test agent extends the events a gate would have
//! recorded for one confidential pod, so the enclave process itself runs
//! outside any container (the agent records which PID called).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aver_client::{AttestedClient, AttestedConnection, Endpoint};
use aver_crds::{AttestationPolicy, Sha256Digest};
use aver_enclave::tpm::DEFAULT_AK_HANDLE;
use aver_enclave::Tpm;
use aver_node::agent::protocol::{QuoteResponse, TlsKeyRequest};
use aver_node::agent::{Agent, AgentError, AgentServer, Caller};
use aver_node_log::{ContainerSpec, ImageIdentity, NodeEvent, NodeLogEntry, PodRef, SandboxInfo};
use aver_tests::require_swtpm;
use aver_tests::stub_upstream::StubUpstream;
use aver_tests::Swtpm;
use aver_verifier::evidence::{Base64Bytes, PcrValue};
use aver_verifier::measurement::model_digest;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::oneshot;

const BIN: &str = env!("CARGO_BIN_EXE_aver-enclave");
/// Guard against a hang turning into a stuck CI job; not a performance bound.
const PATIENCE: Duration = Duration::from_secs(30);

const WORKLOAD_PCR: u8 = 15;
const QUOTE_PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, WORKLOAD_PCR];
const NODE_POLICY: &str = "version: 1\n";
const SANDBOX: &str = "sandbox-llama-0";
const ENCLAVE_CONTAINER: &str = "container-enclave";
const ENGINE_CONTAINER: &str = "container-engine";
const ENCLAVE_IMAGE: Sha256Digest = Sha256Digest([0xe1; 32]);
const ENGINE_IMAGE: Sha256Digest = Sha256Digest([0xe2; 32]);

fn spec(args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..ContainerSpec::default()
    }
}

fn enclave_spec() -> ContainerSpec {
    spec(&["serve", "--node-agent", "/run/aver-node/agent.sock"])
}

fn engine_spec() -> ContainerSpec {
    spec(&["--model", "/models"])
}

/// What the test agent keeps: its TPM, the node log and who registered.
struct NodeState {
    tpm: Tpm,
    log: Vec<NodeLogEntry>,
    registrations: Vec<(Caller, TlsKeyRequest)>,
    quotes: usize,
}

impl NodeState {
    /// Extends the event into the workload PCR, then logs it.
    fn record(&mut self, event: NodeEvent) {
        self.tpm
            .extend(WORKLOAD_PCR, event.digest().as_bytes())
            .expect("extend the workload PCR");
        self.log.push(NodeLogEntry {
            pcr: WORKLOAD_PCR,
            event,
        });
    }
}

/// An agent on a real TPM: the node log of one confidential pod whose
/// sandbox and containers were measured before the enclave started.
struct TpmAgent {
    state: Mutex<NodeState>,
    /// Answers every registration with this refusal, when set.
    refusal: Option<String>,
}

impl TpmAgent {
    fn on(tpm: &Swtpm) -> Self {
        let tpm = Tpm::open(&tpm.tcti(), DEFAULT_AK_HANDLE).expect("the test TPM opens");
        let mut state = NodeState {
            tpm,
            log: Vec::new(),
            registrations: Vec::new(),
            quotes: 0,
        };
        state.record(NodeEvent::AgentStart {
            agent_version: "test".into(),
            policy: NODE_POLICY.into(),
        });
        state.record(NodeEvent::PodSandbox {
            sandbox_id: SANDBOX.into(),
            sandbox: SandboxInfo {
                pod: PodRef {
                    namespace: "ml".into(),
                    name: "llama-0".into(),
                    uid: "0b1c6f5e-0000-4000-8000-000000000001".into(),
                },
                confidential_model: Some("llama".into()),
                host_network: false,
                host_pid: false,
                host_ipc: false,
                privileged: false,
            },
        });
        for (id, name, image, spec) in [
            (ENCLAVE_CONTAINER, "enclave", ENCLAVE_IMAGE, enclave_spec()),
            (ENGINE_CONTAINER, "engine", ENGINE_IMAGE, engine_spec()),
        ] {
            state.record(NodeEvent::Container {
                sandbox_id: SANDBOX.into(),
                container_id: id.into(),
                name: name.into(),
                attempt: 0,
                image: ImageIdentity {
                    reference: format!("registry.test/{name}:1"),
                    id: image,
                    repo_digests: Vec::new(),
                },
                spec,
            });
        }
        Self {
            state: Mutex::new(state),
            refusal: None,
        }
    }

    fn ak_name(&self) -> String {
        hex::encode(self.state.lock().unwrap().tpm.ak_name())
    }

    fn registrations(&self) -> Vec<(Caller, TlsKeyRequest)> {
        self.state.lock().unwrap().registrations.clone()
    }

    fn quotes(&self) -> usize {
        self.state.lock().unwrap().quotes
    }
}

#[async_trait::async_trait]
impl Agent for TpmAgent {
    async fn register_tls_key(&self, caller: Caller, req: TlsKeyRequest) -> Result<(), AgentError> {
        if let Some(refusal) = &self.refusal {
            return Err(AgentError::Forbidden(refusal.clone()));
        }
        let mut state = self.state.lock().unwrap();
        if !state.registrations.is_empty() {
            return Err(AgentError::Forbidden(
                "this container already registered its TLS key".into(),
            ));
        }
        state.record(NodeEvent::TlsKey {
            sandbox_id: SANDBOX.into(),
            container_id: ENCLAVE_CONTAINER.into(),
            spki_sha256: req.spki_sha256,
            model_digest: req.model_digest,
        });
        state.registrations.push((caller, req));
        Ok(())
    }

    async fn quote(
        &self,
        _caller: Caller,
        qualifying: [u8; 32],
    ) -> Result<QuoteResponse, AgentError> {
        let mut state = self.state.lock().unwrap();
        let quoted = state
            .tpm
            .quote_with_values(&QUOTE_PCRS, &qualifying)
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        state.quotes += 1;
        Ok(QuoteResponse {
            attest: Base64Bytes(quoted.attest),
            signature: Base64Bytes(quoted.signature),
            pcrs: quoted
                .pcrs
                .into_iter()
                .map(|(pcr, value)| PcrValue {
                    pcr,
                    value: Sha256Digest(value),
                })
                .collect(),
            ak_public: Base64Bytes(state.tpm.ak_public_tpmt()),
            node_log: state.log.clone(),
            boot_log: None,
            ima_log: None,
            ak_certificate: None,
            ak_chain: Vec::new(),
        })
    }
}

/// The agent socket server of `aver-node` around a test agent.
struct RunningAgent {
    agent: Arc<TpmAgent>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningAgent {
    fn start(socket: &Path, agent: TpmAgent) -> Self {
        let listener = AgentServer::bind(socket).expect("bind the agent socket");
        let agent = Arc::new(agent);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(AgentServer::new(agent.clone()).run(listener, async {
            let _ = stopped.await;
        }));
        Self {
            agent,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A running `aver-enclave serve --node-agent`; killed when dropped.
struct Enclave {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Enclave {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn enclave_command(socket: &Path, model: &Path, upstream: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--node-agent")
        .arg(socket)
        .arg("--model-dir")
        .arg(model)
        .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .env("RUST_LOG", "info")
        .env_remove("AVER_TCTI")
        .env_remove("AVER_ENGINE_DIGEST")
        .env_remove("AVER_STATE_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Starts the enclave; returns once it prints its listening line (which
/// it does only after the agent recorded its key).
fn start_enclave(socket: &Path, model: &Path, upstream: &str) -> Enclave {
    let mut child = enclave_command(socket, model, upstream)
        .spawn()
        .expect("aver-enclave starts");
    let stderr = Arc::new(Mutex::new(String::new()));
    let pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        panic!(
            "aver-enclave did not start (first line {line:?}):\n{}",
            stderr.lock().unwrap()
        );
    };
    Enclave {
        url: url.to_owned(),
        child,
        stderr,
    }
}

fn model_dir() -> tempfile::TempDir {
    let model = tempfile::tempdir().unwrap();
    std::fs::write(model.path().join("weights.bin"), b"tiny model weights").unwrap();
    std::fs::write(model.path().join("tokenizer.json"), b"{\"vocab\":[]}").unwrap();
    model
}

/// A policy written from independent knowledge: the AK read from the TPM,
/// the model digest computed here, the containers the test agent recorded
/// (as `aver policy` would derive them from the pod spec), swtpm's boot
/// PCRs (never extended, so zero).
fn policy(ak_name: &str, model: Sha256Digest) -> AttestationPolicy {
    let zero = Sha256Digest([0; 32]).to_string();
    serde_json::from_value(serde_json::json!({
        "referencePcrs": (0..8).map(|pcr| serde_json::json!({"pcr": pcr, "values": [zero]})).collect::<Vec<_>>(),
        "workloadPcr": WORKLOAD_PCR,
        "allowed": {
            "modelDigests": [model.to_string()],
            "pod": {
                "containers": [
                    {
                        "name": "enclave",
                        "imageDigests": [ENCLAVE_IMAGE.to_string()],
                        "specDigests": [enclave_spec().digest().to_string()],
                    },
                    {
                        "name": "engine",
                        "imageDigests": [ENGINE_IMAGE.to_string()],
                        "specDigests": [engine_spec().digest().to_string()],
                    },
                ],
            },
        },
        "trust": {"akNames": [ak_name]},
        "interval": "30s",
        "maxEvidenceAge": "5m",
    }))
    .expect("the policy parses")
}

fn get(url: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::GET)
        .uri(format!("{url}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn text(response: http::Response<hyper::body::Incoming>) -> String {
    let bytes = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body within patience")
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("aver-node").join("agent.sock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_mode_registers_the_key_and_serves_verifiable_v2_evidence() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let model = model_dir();
    let run_dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&run_dir);

    // The enclave starts before the agent socket exists, as a pod can
    // after an agent restart: it retries until the agent answers.
    let starting = {
        let (socket, model, upstream) = (socket.clone(), model.path().to_owned(), stub.url());
        tokio::task::spawn_blocking(move || start_enclave(&socket, &model, &upstream))
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut agent = RunningAgent::start(&socket, TpmAgent::on(&swtpm));
    let enclave = tokio::time::timeout(PATIENCE, starting)
        .await
        .expect("the enclave starts within patience")
        .unwrap();
    assert!(
        enclave.stderr.lock().unwrap().contains("retrying"),
        "the wait for the agent is logged:\n{}",
        enclave.stderr.lock().unwrap()
    );

    // The agent recorded the key of the process it identified, with the
    // model digest computed here independently.
    let registrations = agent.agent.registrations();
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    let (caller, request) = &registrations[0];
    assert_eq!(caller.pid, enclave.child.id());
    assert_eq!(request.model_digest, model_digest(model.path()).unwrap());

    // The evidence is v2: the agent's quote and node log, bound to the key.
    let endpoint = Endpoint::from_url(&enclave.url).unwrap();
    let evidence = AttestedConnection::capture_unverified(&endpoint, PATIENCE)
        .await
        .expect("evidence v2 parses");
    assert_eq!(evidence.version, 2);
    assert_eq!(evidence.spki_sha256, request.spki_sha256);
    assert!(evidence.event_log.is_empty());
    let pcr15 = evidence
        .pcrs
        .iter()
        .find(|p| p.pcr == WORKLOAD_PCR)
        .expect("PCR 15 is quoted");
    assert_eq!(aver_node_log::replay(&evidence.node_log), pcr15.value);
    assert!(matches!(
        evidence.node_log.last().map(|e| &e.event),
        Some(NodeEvent::TlsKey { spki_sha256, .. }) if *spki_sha256 == request.spki_sha256
    ));

    // A verifier with a policy naming the pod's containers attests the
    // endpoint and talks to the engine through it.
    let client = AttestedClient::new(policy(
        &agent.agent.ak_name(),
        model_digest(model.path()).unwrap(),
    ))
    .unwrap();
    let attested = client.attest(&endpoint).await.expect("attested");
    let report = attested.report().expect("a verified report");
    assert_eq!(report.spki_sha256(), request.spki_sha256);
    drop(attested);
    let chat = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/v1/chat/completions", enclave.url))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({
                "model": "stub-model",
                "messages": [{"role": "user", "content": "hello"}],
            })
            .to_string(),
        )))
        .unwrap();
    let response = client.request(chat).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(text(response).await.contains("echo: hello"));
    assert!(agent.agent.quotes() >= 2);

    // Credential activation needs the TPM, which is aver-node's.
    for method in [Method::GET, Method::POST] {
        let mut request = get(&enclave.url, "/.well-known/aver/activate");
        *request.method_mut() = method.clone();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED, "{method}");
        let body = text(response).await;
        assert!(
            body.contains("credential activation goes through aver-node"),
            "{body}"
        );
    }

    // Ready while the agent answers; not ready, and no evidence, without it.
    let response = client.request(get(&enclave.url, "/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    agent.stop().await;
    let response = client.request(get(&enclave.url, "/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = text(response).await;
    assert!(body.contains("aver-node is not reachable"), "{body}");
    let error = AttestedConnection::capture_unverified(&endpoint, PATIENCE)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("503"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_is_fatal_in_one_line() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let model = model_dir();
    let run_dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&run_dir);
    let mut agent = TpmAgent::on(&swtpm);
    agent.refusal = Some("process 4242 is not the enclave container of a confidential pod".into());
    let _agent = RunningAgent::start(&socket, agent);

    let output = tokio::task::spawn_blocking(move || {
        enclave_command(&socket, model.path(), "http://127.0.0.1:8000")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    });
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("the enclave exits within patience")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing is served");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("aver-enclave: error:"))
        .collect();
    assert_eq!(
        errors,
        ["aver-enclave: error: aver-node refused to register the TLS key: process 4242 is not the enclave container of a confidential pod"],
        "{stderr}"
    );
    // A refusal is an answer: it is not retried.
    assert!(!stderr.contains("retrying"), "{stderr}");
}
