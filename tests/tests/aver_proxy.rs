//! `aver proxy` end to end: real swtpm, real `aver-enclave serve`, the stub
//! engine, and the real `aver proxy` binary in front, spoken to in plain
//! HTTP as an unmodified SDK would. Nothing reaches the engine unless the
//! proxy's upstream connection was attested.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aver_client::AttestedClient;
use aver_tests::node::TestNode;
use aver_tests::require_swtpm;
use aver_tests::stub_upstream::{StubUpstream, STREAM_CHUNKS_BEFORE_GATE};
use aver_verifier::{AttestationPolicy, Sha256Digest};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// Guard against a hang turning into a stuck CI job; not a performance bound.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `aver proxy`; killed when dropped.
struct ProxyProcess {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT` or `unix:/path`.
    listening: String,
    _policy_dir: tempfile::TempDir,
}

impl ProxyProcess {
    fn port(&self) -> u16 {
        self.listening
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a TCP listening line has a port")
    }
}

fn write_policy(policy: &AttestationPolicy) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy.to_yaml()).unwrap();
    (dir, path)
}

fn proxy_command(policy: &Path, upstream: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(aver_tests::cargo_bin("aver"));
    cmd.arg("proxy")
        .arg("--policy")
        .arg(policy)
        .args(["--upstream", upstream])
        .env("AVER_LOG", "info")
        .kill_on_drop(true);
    cmd
}

/// Starts `aver proxy` with `listen_args` and waits for its first stdout
/// line, `listening on …`.
async fn start_proxy(
    policy: &AttestationPolicy,
    upstream: &str,
    listen_args: &[&str],
) -> ProxyProcess {
    let (dir, path) = write_policy(policy);
    let mut child = proxy_command(&path, upstream)
        .args(listen_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("aver proxy starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("first line within patience")
        .unwrap();
    let listening = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("aver proxy did not start (first line {line:?})"))
        .to_owned();
    ProxyProcess {
        child,
        listening,
        _policy_dir: dir,
    }
}

async fn tcp_proxy(policy: &AttestationPolicy, upstream: &str) -> ProxyProcess {
    start_proxy(policy, upstream, &["--listen", "127.0.0.1:0"]).await
}

/// One plain HTTP/1.1 request to the proxy, over TCP or a unix socket.
async fn send(proxy: &ProxyProcess, request: Request<Full<Bytes>>) -> http::Response<Incoming> {
    let exchange = async {
        let mut sender = match proxy.listening.strip_prefix("unix:") {
            Some(path) => {
                let io = TokioIo::new(UnixStream::connect(path).await.unwrap());
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                sender
            }
            None => {
                let io = TokioIo::new(
                    TcpStream::connect(("127.0.0.1", proxy.port()))
                        .await
                        .unwrap(),
                );
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                sender
            }
        };
        sender.send_request(request).await.unwrap()
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("answer within patience")
}

fn chat(stream: bool, prompt: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "stub-model",
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    });
    Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn body_text(response: http::Response<Incoming>) -> String {
    let bytes = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body within patience")
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn status_json(proxy: &ProxyProcess) -> serde_json::Value {
    let response = send(proxy, get("/aver/status")).await;
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_str(&body_text(response).await).unwrap()
}

/// A metric's value (the first series whose name and labels start with
/// `name`) in a Prometheus text page.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name || series.starts_with(&format!("{name}{{")))
            .then(|| value.trim().parse().ok())?
    })
}

/// The enclave's own counter, read over an attested connection.
async fn enclave_metric(observer: &AttestedClient, url: &str, name: &str) -> u64 {
    let request = Request::get(format!("{url}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let text = body_text(observer.request(request).await.unwrap()).await;
    metric_value(&text, name).unwrap_or_else(|| panic!("metric {name} missing in:\n{text}")) as u64
}

struct Rig {
    node: TestNode,
    stub: StubUpstream,
    enclave: aver_tests::node::EnclaveProcess,
}

async fn rig() -> Rig {
    let node = TestNode::start().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let enclave = node.serve(&stub.url(), &[]).unwrap();
    Rig {
        node,
        stub,
        enclave,
    }
}

/// Checks a refusal: 502, the reason in `x-aver-error` and in the OpenAI
/// error shape.
async fn assert_refused(response: http::Response<Incoming>, reason: &str) {
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(response.headers()["x-aver-error"].to_str().unwrap(), reason);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["type"], "aver_attestation_error", "{body}");
    assert_eq!(body["error"]["code"], reason, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.is_empty() && !message.contains('\n'), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_status_and_metrics_through_the_proxy() {
    require_swtpm!();
    let rig = rig().await;
    let policy = rig.node.policy().unwrap();
    let proxy = tcp_proxy(&policy, &rig.enclave.url).await;
    assert!(
        proxy.listening.starts_with("http://127.0.0.1:"),
        "{}",
        proxy.listening
    );

    let response = send(&proxy, chat(false, "hello")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-aver-endpoint"].to_str().unwrap(),
        format!("127.0.0.1:{}", rig.enclave.port)
    );
    let answer: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hello");
    assert_eq!(rig.stub.requests(), 1);

    // A second request reuses the pooled, attested connection.
    let response = send(&proxy, chat(false, "again")).await;
    assert!(body_text(response).await.contains("echo: again"));
    assert_eq!(rig.stub.requests(), 2);

    let status = status_json(&proxy).await;
    let endpoints = status["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{status}");
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["url"], rig.enclave.url.as_str(), "{status}");
    assert_eq!(endpoint["attested"], true, "{status}");
    assert_eq!(endpoint["inRotation"], true, "{status}");
    let model = aver_verifier::measurement::model_digest(rig.node.model.path()).unwrap();
    assert_eq!(
        endpoint["measurements"]["model"],
        model.to_string(),
        "{status}"
    );
    assert_eq!(
        endpoint["measurements"]["engine"],
        aver_tests::node::ENGINE,
        "{status}"
    );
    assert_eq!(
        endpoint["measurements"]["akName"],
        rig.node.ak_name().unwrap(),
        "{status}"
    );
    assert!(
        endpoint["evidenceAgeSeconds"].as_f64().is_some(),
        "{status}"
    );
    assert!(endpoint["lastError"].is_null(), "{status}");

    let response = send(&proxy, get("/aver/metrics")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    assert_eq!(
        metric_value(&text, "aver_proxy_requests_total{outcome=\"forwarded\"}"),
        Some(2.0),
        "{text}"
    );
    assert!(
        metric_value(&text, "aver_proxy_attestations_total{kind=\"connect\"}") >= Some(1.0),
        "{text}"
    );
    assert!(text.contains("aver_proxy_pool_connections"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_passes_through_chunk_by_chunk() {
    require_swtpm!();
    let rig = rig().await;
    let proxy = tcp_proxy(&rig.node.policy().unwrap(), &rig.enclave.url).await;

    let response = send(&proxy, chat(true, "hello")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    // The stub holds back its last chunk until released: seeing the first
    // chunks now proves they were not buffered behind it.
    let mut seen = String::new();
    while !seen.contains(&format!("part{}", STREAM_CHUNKS_BEFORE_GATE - 1)) {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("a chunk before the release")
            .expect("the stream goes on")
            .unwrap();
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert!(seen.contains("part0"), "{seen}");
    assert!(!seen.contains("last: hello"), "{seen}");
    rig.stub.release_stream();
    let rest = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("last: hello") && rest.contains("[DONE]"),
        "{rest}"
    );

    // The connection went back to the pool and carries the next request.
    let response = send(&proxy, chat(false, "next")).await;
    assert!(body_text(response).await.contains("echo: next"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_mismatch_is_a_502_and_nothing_reaches_the_engine() {
    require_swtpm!();
    let rig = rig().await;
    let mut policy = rig.node.policy().unwrap();
    policy.allowed.model_digests = vec![Sha256Digest([0x42; 32])];
    let proxy = tcp_proxy(&policy, &rig.enclave.url).await;

    let response = send(&proxy, chat(false, "secret prompt")).await;
    assert_refused(response, "model").await;
    let response = send(&proxy, chat(true, "secret prompt")).await;
    assert_refused(response, "model").await;
    assert_eq!(rig.stub.requests(), 0);
    assert_eq!(rig.stub.body_bytes(), 0);

    let status = status_json(&proxy).await;
    let endpoint = &status["endpoints"][0];
    assert_eq!(endpoint["attested"], false, "{status}");
    assert_eq!(endpoint["lastError"]["reason"], "model", "{status}");
    assert_eq!(status["lastError"]["reason"], "model", "{status}");
    let text = body_text(send(&proxy, get("/aver/metrics")).await).await;
    assert!(
        metric_value(
            &text,
            "aver_proxy_attestation_failures_total{reason=\"model\"}"
        ) >= Some(2.0),
        "{text}"
    );
}

async fn start_mitm(target: u16) -> u16 {
    aver_tests::mitm::start_mitm(target).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mitm_relay_is_refused() {
    require_swtpm!();
    let rig = rig().await;
    let mitm = start_mitm(rig.enclave.port).await;
    let proxy = tcp_proxy(
        &rig.node.policy().unwrap(),
        &format!("https://127.0.0.1:{mitm}"),
    )
    .await;

    let response = send(&proxy, chat(false, "secret prompt")).await;
    assert_refused(response, "channel-binding").await;
    assert_eq!(rig.stub.requests(), 0, "nothing may pass a MITM");
    assert_eq!(rig.stub.body_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_is_refreshed_before_max_evidence_age() {
    require_swtpm!();
    let rig = rig().await;
    let mut policy = rig.node.policy().unwrap();
    policy.max_evidence_age = "2s".into();
    let proxy = tcp_proxy(&policy, &rig.enclave.url).await;
    let observer = AttestedClient::new(rig.node.policy().unwrap()).unwrap();

    let response = send(&proxy, chat(false, "first")).await;
    assert!(body_text(response).await.contains("echo: first"));
    let challenges_before =
        enclave_metric(&observer, &rig.enclave.url, "aver_enclave_challenges_total").await;
    // Requests spanning more than maxEvidenceAge (the sleeps are what the
    // test is about, not a bound on anything).
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let response = send(&proxy, chat(false, &format!("later {i}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(body_text(response)
            .await
            .contains(&format!("echo: later {i}")));
    }
    assert_eq!(rig.stub.requests(), 4);
    let challenges_after =
        enclave_metric(&observer, &rig.enclave.url, "aver_enclave_challenges_total").await;
    assert!(
        challenges_after >= challenges_before + 2,
        "evidence was not refreshed: {challenges_before} -> {challenges_after} challenges"
    );
    let text = body_text(send(&proxy, get("/aver/metrics")).await).await;
    assert!(
        metric_value(&text, "aver_proxy_attestations_total{kind=\"refresh\"}") >= Some(1.0),
        "{text}"
    );
    let status = status_json(&proxy).await;
    let endpoint = &status["endpoints"][0];
    assert_eq!(endpoint["attested"], true, "{status}");
    assert!(
        endpoint["evidenceAgeSeconds"].as_f64().unwrap() < 2.0,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_listener_works() {
    require_swtpm!();
    let rig = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("aver.sock");
    let proxy = start_proxy(
        &rig.node.policy().unwrap(),
        &rig.enclave.url,
        &["--unix", socket.to_str().unwrap()],
    )
    .await;
    assert_eq!(proxy.listening, format!("unix:{}", socket.display()));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only the owner may connect");

    let response = send(&proxy, chat(false, "over a socket")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(body_text(response).await.contains("echo: over a socket"));
    assert_eq!(rig.stub.requests(), 1);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listen_needs_allow_remote() {
    // No TPM involved: the listener is checked before anything else runs.
    let policy =
        aver_tests::node::policy_for(&[format!("000b{}", "00".repeat(32))], Sha256Digest([1; 32]));
    let (_dir, path) = write_policy(&policy);
    let output = proxy_command(&path, "https://127.0.0.1:9")
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    assert!(output.stdout.is_empty());

    // With --allow-remote it listens.
    let proxy = start_proxy(
        &policy,
        "https://127.0.0.1:9",
        &["--listen", "0.0.0.0:0", "--allow-remote"],
    )
    .await;
    assert!(
        proxy.listening.starts_with("http://0.0.0.0:"),
        "{}",
        proxy.listening
    );
    // Nothing listens on port 9: refused as unreachable, still JSON.
    let response = send(&proxy, chat(false, "hello")).await;
    assert_refused(response, "unreachable").await;
    drop(proxy.child);
}
