//! `aver-enclave serve` under load and abuse, on real swtpm behind a relay
//! that makes it as slow as a hardware TPM: activation floods are refused
//! and wait behind quotes, evidence beyond capacity is refused at once, the
//! EK is derived once, accept does not spin without file descriptors,
//! dribbled requests are cut off, connections are bounded, streams
//! outlive the idle timeout, and a stopping enclave drains open streams for
//! `--drain-timeout-secs`, no longer. Every assertion is on behaviour (statuses,
//! order of events, command counts), none on how long something took.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use aver_client::tls::danger::to_be_attested_client_config;
use aver_client::{AttestedClient, AttestedConnection, Endpoint};
use aver_tests::node::{listening_url, TestNode};
use aver_tests::slow_tpm::{TPM2_CC_ACTIVATE_CREDENTIAL, TPM2_CC_CREATE_PRIMARY};
use aver_tests::stub_upstream::{StubUpstream, STREAM_CHUNKS_BEFORE_GATE};
use aver_tests::{cargo_bin, require_swtpm, Delays, SlowTpm};
use aver_verifier::binding::Nonce;
use aver_verifier::ek::{ActivationRequest, EkKind, ACTIVATION_VERSION};
use aver_verifier::evidence::Base64Bytes;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Guard against a hang turning into a stuck CI job; not a performance bound.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `aver-enclave serve` whose stderr is collected.
struct Enclave {
    child: Child,
    port: u16,
    url: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Enclave {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Enclave {
    fn stderr_lines_containing(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// `aver-enclave serve` on `node`'s state and model, through `tcti`, with
/// `extra` flags; `nofile` caps its open files (through prlimit).
fn serve(
    node: &TestNode,
    tcti: &str,
    upstream: &str,
    extra: &[&str],
    nofile: Option<u32>,
) -> anyhow::Result<Enclave> {
    let enclave = cargo_bin("aver-enclave");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(enclave);
            c
        }
        None => Command::new(enclave),
    };
    cmd.args(node.enclave_args("serve", tcti))
        .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("AVER_LOG_FORMAT", "text")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("aver-enclave serve starts")?;
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let pipe = child.stderr.take().context("stderr is piped")?;
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("enclave: {line}");
            sink.lock().unwrap().push(line);
        }
    });
    let (url, port) = listening_url(&mut child)?;
    Ok(Enclave {
        child,
        port,
        url,
        stderr,
    })
}

/// A TLS connection to the enclave that accepts its certificate without
/// attesting (what an attacker, or a load generator, opens).
async fn raw_tls(port: u16) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(to_be_attested_client_config()));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    Ok(connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// One request on a fresh unattested connection: status, Retry-After, body.
async fn raw_request(
    port: u16,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, Option<String>, Bytes)> {
    let tls = raw_tls(port).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, retry_after, body))
}

async fn metrics(port: u16) -> String {
    let request = Request::get("/metrics")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = raw_request(port, request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body).into_owned()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// A well-formed activation request whose credential no TPM can open.
fn junk_activation() -> Request<Full<Bytes>> {
    let request = ActivationRequest {
        version: ACTIVATION_VERSION,
        kind: EkKind::Rsa2048,
        credential_blob: Base64Bytes(vec![0x5a; 68]),
        encrypted_secret: Base64Bytes(vec![0xa5; 256]),
    };
    Request::builder()
        .method(Method::POST)
        .uri("/.well-known/aver/activate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&request).unwrap(),
        )))
        .unwrap()
}

fn evidence_request() -> Request<Full<Bytes>> {
    Request::get(format!(
        "/.well-known/aver/evidence?nonce={}",
        Nonce::random().to_hex()
    ))
    .header("host", "localhost")
    .body(Full::new(Bytes::new()))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_flood_is_refused_and_waits_behind_quotes() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let policy = Arc::new(aver_tests::checked(&node.policy().unwrap()));
    let slow = SlowTpm::start(
        &node.tpm,
        Delays {
            quote: Duration::from_millis(100),
            create_primary: Duration::from_millis(500),
            activate_credential: Duration::from_millis(1500),
            ..Delays::default()
        },
    )
    .unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let enclave = serve(
        &node,
        &slow.tcti(),
        &stub.url(),
        &[
            "--activation-queue",
            "2",
            "--activations-per-peer-per-minute",
            "1000",
            "--request-deadline-secs",
            "60",
        ],
        None,
    )
    .unwrap();

    // The EK is derived once, by the first activation, not per request.
    let primaries = slow.count(TPM2_CC_CREATE_PRIMARY);
    for _ in 0..2 {
        let (status, _, body) = raw_request(enclave.port, junk_activation()).await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "the TPM refuses a junk credential: {}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(
        slow.count(TPM2_CC_CREATE_PRIMARY) - primaries,
        1,
        "two activations, one CreatePrimary"
    );
    let activations_before = slow.count(TPM2_CC_ACTIVATE_CREDENTIAL);

    // 40 activation requests at once: two are admitted, the rest told 429.
    let started = Instant::now();
    let port = enclave.port;
    let flood: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let outcome = raw_request(port, junk_activation()).await;
                (outcome, Instant::now())
            })
        })
        .collect();
    // Let the flood reach the enclave and fill the activation queue.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile clients attest: their quote goes before the queued
    // activation.
    let endpoint = Endpoint::from_url(&enclave.url).unwrap();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (endpoint, policy) = (endpoint.clone(), policy.clone());
            tokio::spawn(async move {
                let attested = AttestedConnection::attest(&endpoint, &policy, PATIENCE).await;
                (attested.map(|_| ()), Instant::now())
            })
        })
        .collect();
    let mut attested_at = Vec::new();
    for client in clients {
        let (outcome, at) = tokio::time::timeout(PATIENCE, client)
            .await
            .unwrap()
            .unwrap();
        outcome.expect("a client attests during the flood");
        attested_at.push(at);
    }
    let mut refused = 0;
    let mut activated_at = Vec::new();
    for task in flood {
        let (outcome, at) = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        let (status, retry_after, body) = outcome.unwrap();
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let secs: u64 = retry_after
                    .expect("429 carries Retry-After")
                    .parse()
                    .unwrap();
                assert!(secs >= 1);
            }
            StatusCode::UNPROCESSABLE_ENTITY => activated_at.push(at),
            other => panic!(
                "unexpected answer to the flood: {other} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    eprintln!(
        "flood: {refused} of 40 refused with 429, {} ran on the TPM; {:.1} s in all",
        activated_at.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        refused >= 30,
        "only {refused} of 40 were refused: the activation queue is not bounded"
    );
    assert_eq!(
        slow.count(TPM2_CC_ACTIVATE_CREDENTIAL) - activations_before,
        activated_at.len() as u64,
        "every admitted request, and no refused one, reached the TPM"
    );
    assert_eq!(
        slow.count(TPM2_CC_CREATE_PRIMARY) - primaries,
        1,
        "the flood derived no EK"
    );
    let metrics = metrics(enclave.port).await;
    assert_eq!(
        metric(&metrics, "aver_enclave_activations_limited_queue_total")
            + metric(&metrics, "aver_enclave_activations_limited_peer_total"),
        refused,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "aver_enclave_launches"), 1, "{metrics}");
    // Order, not time: the last admitted activation finished after every
    // client that asked for evidence meanwhile had its answer.
    activated_at.sort();
    let last_activation = *activated_at.last().expect("some activations ran");
    assert!(
        attested_at.iter().all(|at| *at < last_activation),
        "evidence waited behind queued activations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_beyond_capacity_is_refused_at_once_with_503() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let slow = SlowTpm::start(&node.tpm, Delays::quote(Duration::from_millis(300))).unwrap();
    let stub = StubUpstream::start().await.unwrap();
    // One challenge per quote: room for four waiting behind the one signed.
    let enclave = serve(
        &node,
        &slow.tcti(),
        &stub.url(),
        &["--max-batch", "1"],
        None,
    )
    .unwrap();
    let port = enclave.port;
    let tasks: Vec<_> = (0..30)
        .map(|_| tokio::spawn(async move { raw_request(port, evidence_request()).await }))
        .collect();
    let (mut served, mut busy) = (0, 0);
    for task in tasks {
        let (status, retry_after, body) = tokio::time::timeout(PATIENCE, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match status {
            StatusCode::OK => served += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(retry_after.as_deref(), Some("1"));
                let text = String::from_utf8_lossy(&body);
                assert!(text.contains("too many evidence requests"), "{text}");
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    eprintln!("30 challenges, one per quote: {served} served, {busy} told 503");
    assert!(served >= 5, "{served} served");
    assert!(
        busy >= 10,
        "{busy} refused: the evidence queue is not bounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_when_out_of_file_descriptors() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let policy = node.policy().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let tcti = node.tpm.tcti();
    let enclave = serve(
        &node,
        &tcti,
        &stub.url(),
        &["--max-connections", "1000"],
        Some(48),
    )
    .unwrap();
    // More idle connections than the enclave has descriptors for, held
    // for a few seconds: the accept loop must wait, not spin.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(
            TcpStream::connect(("127.0.0.1", enclave.port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logged = enclave.stderr_lines_containing("accept failed");
    eprintln!("out of descriptors for 3 s: {logged} accept-failure log lines");
    assert!(logged >= 1, "the exhaustion is reported");
    assert!(
        logged <= 5,
        "{logged} log lines in 3 s: the accept loop spins on EMFILE"
    );
    // Once the connections close, the enclave serves again.
    drop(held);
    let endpoint = Endpoint::from_url(&enclave.url).unwrap();
    AttestedConnection::attest(&endpoint, &aver_tests::checked(&policy), PATIENCE)
        .await
        .expect("serving again after the descriptors are back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_requests_are_cut_off() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let tcti = node.tpm.tcti();
    let enclave = serve(
        &node,
        &tcti,
        &stub.url(),
        &["--request-deadline-secs", "2", "--idle-timeout-secs", "2"],
        None,
    )
    .unwrap();

    // A body sent one byte every 100 ms: the activation deadline answers
    // 408 long before the 2,000 promised bytes would arrive (200 s).
    let mut tls = raw_tls(enclave.port).await.unwrap();
    tls.write_all(
        b"POST /.well-known/aver/activate HTTP/1.1\r\nhost: localhost\r\n\
          content-type: application/json\r\ncontent-length: 2000\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = dribble_until_answered(&mut tls, 100).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a dribbled body is cut off with 408: {answer:?}"
    );

    // Headers sent one byte every 300 ms: the connection is closed.
    let mut tls = raw_tls(enclave.port).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let answer = dribble_until_answered(&mut tls, 300).await;
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "dribbled headers are not served: {answer:?}"
    );
}

/// Writes one byte of an endless header every `every_ms` until the server
/// answers or closes; returns what it said (empty if it just closed).
/// Panics after [`PATIENCE`].
async fn dribble_until_answered(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    every_ms: u64,
) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        assert!(Instant::now() < deadline, "the server never cut it off");
        tokio::select! {
            read = tls.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            },
            () = tokio::time::sleep(Duration::from_millis(every_ms)) => {
                if tls.write_all(b"x").await.is_err() || tls.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let tcti = node.tpm.tcti();
    let enclave = serve(&node, &tcti, &stub.url(), &["--max-connections", "3"], None).unwrap();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(raw_tls(enclave.port).await.unwrap());
    }
    // A fourth handshake is not answered while three are open…
    let waiting = tokio::time::timeout(Duration::from_secs(2), raw_tls(enclave.port)).await;
    assert!(
        waiting.is_err(),
        "a fourth connection was served beyond --max-connections 3"
    );
    // …and is as soon as one closes.
    drop(open.pop());
    tokio::time::timeout(PATIENCE, raw_tls(enclave.port))
        .await
        .expect("a freed slot admits the next connection")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_the_idle_timeout() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let policy = node.policy().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let tcti = node.tpm.tcti();
    let enclave = serve(
        &node,
        &tcti,
        &stub.url(),
        &["--idle-timeout-secs", "1"],
        None,
    )
    .unwrap();
    let client = AttestedClient::new(policy).unwrap();
    let body = open_stream(&client, &enclave).await;
    // The engine "thinks" for three idle timeouts before the last chunk.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stub.release_stream();
    let rest = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .unwrap()
        .expect("the stream was not cut by the idle timeout")
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("[DONE]"), "{rest}");
}

/// A streamed chat completion through `enclave`, read until the stub holds
/// back its last chunk.
async fn open_stream(client: &AttestedClient, enclave: &Enclave) -> hyper::body::Incoming {
    let body = serde_json::json!({
        "model": "stub-model",
        "stream": true,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let request = Request::post(format!("{}/v1/chat/completions", enclave.url))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = String::new();
    while seen.matches("data:").count() < STREAM_CHUNKS_BEFORE_GATE {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }
    body
}

/// Waits (bounded) for the enclave process to exit; its exit status.
fn wait_exit(enclave: &mut Enclave) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = enclave.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the enclave did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_enclave_drains_open_streams_for_its_drain_timeout() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let policy = node.policy().unwrap();
    let tcti = node.tpm.tcti();
    for (drain, release_after, completes) in [("60", 3, true), ("1", 3, false)] {
        let stub = StubUpstream::start().await.unwrap();
        let mut enclave = serve(
            &node,
            &tcti,
            &stub.url(),
            &["--drain-timeout-secs", drain],
            None,
        )
        .unwrap();
        let client = AttestedClient::new(policy.clone()).unwrap();
        let body = open_stream(&client, &enclave).await;
        aver_tests::process::signal(enclave.child.id(), aver_tests::process::Signal::Term).unwrap();
        // Stopping: no new connections, while the open stream goes on.
        let refused = tokio::time::timeout(PATIENCE, async {
            while raw_tls(enclave.port).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "new connections are still accepted");
        tokio::time::sleep(Duration::from_secs(release_after)).await;
        stub.release_stream();
        let rest = tokio::time::timeout(PATIENCE, body.collect())
            .await
            .unwrap();
        let done = rest
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).contains("[DONE]"))
            .unwrap_or(false);
        assert_eq!(
            done, completes,
            "--drain-timeout-secs {drain}: the engine answered after {release_after} s"
        );
        let status = wait_exit(&mut enclave);
        assert!(
            status.success(),
            "a drained enclave exits cleanly: {status}"
        );
        if !completes {
            assert_eq!(
                enclave.stderr_lines_containing("still open after the drain timeout"),
                1
            );
        }
    }
}
