//! The agent socket in process: the server on a temporary unix socket, the
//! enclave's client calling it, and a test agent recording who called. The
//! peer is this test process, so the kernel's word for the caller is
//! `std::process::id()`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aver_crds::Sha256Digest;
use aver_node::agent::protocol::{QuoteResponse, TlsKeyRequest, MAX_REQUEST_BYTES};
use aver_node::agent::{
    container_id_from_cgroup, Agent, AgentClient, AgentError, AgentServer, Caller, ClientError,
};
use aver_verifier::evidence::{Base64Bytes, PcrValue};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

/// Records every call; refuses a second TLS key, like the real agent.
#[derive(Default)]
struct TestAgent {
    keys: Mutex<Vec<(Caller, TlsKeyRequest)>>,
    quotes: Mutex<Vec<(Caller, [u8; 32])>>,
}

#[async_trait::async_trait]
impl Agent for TestAgent {
    async fn register_tls_key(&self, caller: Caller, req: TlsKeyRequest) -> Result<(), AgentError> {
        let mut keys = self.keys.lock().unwrap();
        if !keys.is_empty() {
            return Err(AgentError::Forbidden(
                "this container already registered its TLS key".into(),
            ));
        }
        keys.push((caller, req));
        Ok(())
    }

    async fn quote(
        &self,
        caller: Caller,
        qualifying: [u8; 32],
    ) -> Result<QuoteResponse, AgentError> {
        if qualifying == [0xee; 32] {
            return Err(AgentError::Internal(
                "TPM2_Quote failed: the test said so".into(),
            ));
        }
        self.quotes.lock().unwrap().push((caller, qualifying));
        Ok(QuoteResponse {
            attest: Base64Bytes(qualifying.to_vec()),
            signature: Base64Bytes(vec![0x5e; 72]),
            pcrs: vec![PcrValue {
                pcr: 15,
                value: Sha256Digest([0x15; 32]),
            }],
            ak_public: Base64Bytes(vec![0xa4; 90]),
            node_log: vec![aver_node_log::NodeLogEntry {
                pcr: 15,
                event: aver_node_log::NodeEvent::AgentStart {
                    agent_version: "test".into(),
                    policy: "version: 1\n".into(),
                },
            }],
            boot_log: None,
            ima_log: None,
            ak_certificate: None,
            ak_chain: Vec::new(),
        })
    }
}

/// A running agent socket; stops when dropped.
struct Running {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    agent: Arc<TestAgent>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    // The directory is what gets mounted into pods.
    let socket = dir.path().join("aver-node").join("agent.sock");
    let listener = AgentServer::bind(&socket).unwrap();
    let agent = Arc::new(TestAgent::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = AgentServer::new(agent.clone());
    tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
    Running {
        _dir: dir,
        socket,
        agent,
        stop: Some(stop),
    }
}

/// What the server should find for this process.
fn own_container_id() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    container_id_from_cgroup(&text)
}

fn key_request() -> TlsKeyRequest {
    TlsKeyRequest {
        spki_sha256: Sha256Digest([0x11; 32]),
        model_digest: Sha256Digest([0x22; 32]),
    }
}

/// A raw HTTP/1.1 exchange, for what the client never sends.
async fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: aver-node\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error_of(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body {body:?} is not JSON: {e}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {body}"))
        .to_owned()
}

#[tokio::test]
async fn the_socket_is_open_to_every_user() {
    let running = start();
    let mode = std::fs::metadata(&running.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
}

#[tokio::test]
async fn a_tls_key_registration_reaches_the_agent_as_the_calling_process() {
    let running = start();
    let client = AgentClient::new(&running.socket);
    client.register_tls_key(&key_request()).await.unwrap();

    let keys = running.agent.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 1);
    let (caller, request) = &keys[0];
    assert_eq!(caller.pid, std::process::id());
    assert_eq!(caller.container_id, own_container_id());
    assert_eq!(request, &key_request());
}

#[tokio::test]
async fn agent_refusals_reach_the_client_with_their_status_and_line() {
    let running = start();
    let client = AgentClient::new(&running.socket);
    client.register_tls_key(&key_request()).await.unwrap();
    let error = client.register_tls_key(&key_request()).await.unwrap_err();
    match &error {
        ClientError::Refused {
            status, message, ..
        } => {
            assert_eq!(status.as_u16(), 403);
            assert_eq!(message, "this container already registered its TLS key");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(error.to_string().contains("already registered"), "{error}");

    let error = client.quote([0xee; 32]).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Refused { status, message, .. }
            if status.as_u16() == 500 && message.contains("TPM2_Quote failed")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_quote_round_trips_with_its_qualifying_data() {
    let running = start();
    let client = AgentClient::new(&running.socket);
    let quote = client.quote([0x42; 32]).await.unwrap();
    assert_eq!(quote.attest.0, vec![0x42; 32]);
    assert_eq!(quote.pcrs[0].pcr, 15);
    assert_eq!(quote.node_log[0].event.kind(), "agent-start");

    let quotes = running.agent.quotes.lock().unwrap().clone();
    assert_eq!(quotes.len(), 1);
    assert_eq!(quotes[0].0.pid, std::process::id());
    assert_eq!(quotes[0].1, [0x42; 32]);
}

#[tokio::test]
async fn many_callers_at_once_are_each_identified() {
    let running = start();
    let client = AgentClient::new(&running.socket);
    let calls = (0..32u8).map(|i| {
        let client = client.clone();
        async move { client.quote([i; 32]).await }
    });
    for result in futures_join_all(calls).await {
        result.unwrap();
    }
    let quotes = running.agent.quotes.lock().unwrap().clone();
    assert_eq!(quotes.len(), 32);
    assert!(quotes.iter().all(|(c, _)| c.pid == std::process::id()));
}

/// Awaits every future (a few lines instead of a dependency).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn malformed_requests_are_typed_json_errors() {
    let running = start();
    let spki = Sha256Digest([0x11; 32]);

    let (status, body) = raw(&running.socket, &post("/v1/quote", "{not json")).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).starts_with("invalid request body"),
        "{body}"
    );

    let unknown = format!(r#"{{"spkiSha256":"{spki}","modelDigest":"{spki}","extra":true}}"#);
    let (status, body) = raw(&running.socket, &post("/v1/tls-key", &unknown)).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("extra"), "{body}");

    let (status, body) = raw(
        &running.socket,
        &post("/v1/quote", r#"{"qualifyingData":"abcd"}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("64 hex"), "{body}");

    let (status, body) = raw(&running.socket, &post("/v1/evidence", "{}")).await;
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("/v1/evidence"), "{body}");

    let (status, body) = raw(
        &running.socket,
        b"GET /v1/quote HTTP/1.1\r\nHost: aver-node\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert!(error_of(&body).contains("POST"), "{body}");

    assert!(running.agent.keys.lock().unwrap().is_empty());
    assert!(running.agent.quotes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_parsing() {
    let running = start();
    let big = format!(
        r#"{{"qualifyingData":"{}"}}"#,
        "0".repeat(MAX_REQUEST_BYTES + 1)
    );
    let (status, body) = raw(&running.socket, &post("/v1/quote", &big)).await;
    assert_eq!(status, 413);
    assert!(error_of(&body).contains("exceeds"), "{body}");

    // Without a Content-Length (chunked), the limit applies while reading.
    let chunk = "0".repeat(MAX_REQUEST_BYTES + 1);
    let chunked = format!(
        "POST /v1/quote HTTP/1.1\r\nHost: aver-node\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (status, body) = raw(&running.socket, chunked.as_bytes()).await;
    assert_eq!(status, 413);
    assert!(error_of(&body).contains("exceeds"), "{body}");
    assert!(running.agent.quotes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_absent_agent_is_a_connect_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let error = AgentClient::new(&socket).quote([0; 32]).await.unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&socket.display().to_string()),
        "{error}"
    );
}
