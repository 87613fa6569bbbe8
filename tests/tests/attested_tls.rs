//! Attested TLS end to end (docs/architecture.md, "Channel binding" and
//! "Evidence flow"): real swtpm, real
//! `aver-enclave serve`, a real HTTP stub engine, and the attested client.
//! A request reaches the engine only after the TLS key it travels over is
//! proven to be the measured enclave's.

use std::sync::Arc;
use std::time::Duration;

use aver_client::{AttestedClient, AttestedConnection, ClientError, Endpoint};
use aver_tests::node::{policy_for, TestNode};
use aver_tests::require_swtpm;
use aver_tests::stub_upstream::{StubUpstream, STREAM_CHUNKS_BEFORE_GATE};
use aver_verifier::error::VerifyError;
use aver_verifier::Sha256Digest;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};

/// Guard against a hang turning into a stuck CI job; not a performance bound.
const PATIENCE: Duration = Duration::from_secs(30);

fn chat(url: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "stub-model",
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    });
    Request::builder()
        .method(Method::POST)
        .uri(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn body_text(response: http::Response<hyper::body::Incoming>) -> String {
    let bytes = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body within patience")
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

struct Rig {
    node: TestNode,
    stub: StubUpstream,
    enclave: aver_tests::node::EnclaveProcess,
}

async fn rig(extra: &[&str]) -> Rig {
    let node = TestNode::start().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let enclave = node.serve(&stub.url(), extra).unwrap();
    Rig {
        node,
        stub,
        enclave,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_request_reaches_the_engine_and_pins_the_key() {
    require_swtpm!();
    let rig = rig(&[]).await;
    let client = AttestedClient::new(rig.node.policy().unwrap()).unwrap();

    let response = client.request(chat(&rig.enclave.url, false)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(body_text(response).await.contains("echo: hello"));
    assert_eq!(rig.stub.requests(), 1);
    assert_eq!(client.pins().len(), 1);

    // A second request uses the pin: no new evidence, same key.
    let endpoint = Endpoint::from_url(&rig.enclave.url).unwrap();
    let pinned = client.connect(&endpoint).await.unwrap();
    assert!(
        pinned.report().is_none(),
        "pinned connections skip evidence"
    );
    let response = client.request(chat(&rig.enclave.url, false)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(rig.stub.requests(), 2);
    drop(pinned);

    // A restarted enclave has a new in-memory key: the pin refuses it.
    let mut enclave = rig.enclave;
    let old_port = enclave.port;
    enclave.stop();
    let _restarted = rig
        .node
        .serve_on(&format!("127.0.0.1:{old_port}"), &rig.stub.url(), &[])
        .unwrap();
    let err = client.connect(&endpoint).await.unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    // Attesting afresh accepts the new key (same TPM, new launch).
    let fresh = client.attest(&endpoint).await.unwrap();
    assert_eq!(fresh.report().unwrap().launches_since_boot(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_mismatch_sends_zero_request_bytes_upstream() {
    require_swtpm!();
    let rig = rig(&[]).await;
    let mut policy = rig.node.policy().unwrap();
    policy.allowed.model_digests = vec![Sha256Digest([0x42; 32])];
    let client = AttestedClient::new(policy).unwrap();

    let err = client
        .request(chat(&rig.enclave.url, false))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Verify(VerifyError::ModelNotAllowed(_))),
        "{err}"
    );
    assert_eq!(rig.stub.requests(), 0);
    assert_eq!(rig.stub.body_bytes(), 0);

    // The CLI too: exit 1, one line naming the reason, nothing upstream.
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, client.policy().to_yaml()).unwrap();
    let output = tokio::process::Command::new(aver_tests::cargo_bin("aver"))
        .arg("request")
        .arg(format!("{}/v1/chat/completions", rig.enclave.url))
        .arg("--policy")
        .arg(&policy_path)
        .args([
            "-d",
            r#"{"messages":[{"role":"user","content":"secret prompt"}]}"#,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model digest"), "{stderr}");
    assert_eq!(rig.stub.body_bytes(), 0);
}

async fn start_mitm(target: u16) -> u16 {
    aver_tests::mitm::start_mitm(target).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mitm_relaying_evidence_is_rejected() {
    require_swtpm!();
    let rig = rig(&[]).await;
    let mitm = start_mitm(rig.enclave.port).await;
    let client = AttestedClient::new(rig.node.policy().unwrap()).unwrap();

    let url = format!("https://127.0.0.1:{mitm}");
    let err = client.request(chat(&url, false)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Verify(VerifyError::SpkiMismatch { .. })),
        "{err}"
    );
    assert_eq!(rig.stub.requests(), 0, "nothing may pass a MITM");
    assert!(client.pins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_of_one_enclave_cannot_vouch_for_another() {
    require_swtpm!();
    let a = rig(&[]).await;
    let b = rig(&[]).await;
    let both = policy_for(
        &[a.node.ak_name().unwrap(), b.node.ak_name().unwrap()],
        aver_verifier::measurement::model_digest(a.node.model.path()).unwrap(),
    );
    let client = AttestedClient::new(both.clone()).unwrap();
    // Both are genuine on their own.
    for url in [&a.enclave.url, &b.enclave.url] {
        client
            .attest(&Endpoint::from_url(url).unwrap())
            .await
            .unwrap();
    }
    // B's evidence, fetched live for a fresh nonce, presented for A's key.
    let to_a = AttestedConnection::pinned(
        &Endpoint::from_url(&a.enclave.url).unwrap(),
        vec![
            client
                .pins()
                .get_fresh(&format!("127.0.0.1:{}", a.enclave.port))
                .unwrap()
                .spki_sha256,
        ],
        PATIENCE,
    )
    .await
    .unwrap();
    let from_b = AttestedConnection::capture_unverified(
        &Endpoint::from_url(&b.enclave.url).unwrap(),
        PATIENCE,
    )
    .await
    .unwrap();
    let challenge = aver_verifier::Challenge {
        nonce: from_b.nonce,
        spki_sha256: to_a.spki_sha256(),
    };
    assert!(matches!(
        aver_verifier::verify(&from_b, &challenge, &aver_tests::checked(&both)),
        Err(VerifyError::SpkiMismatch { .. })
    ));
    let mut relabelled = from_b.clone();
    relabelled.spki_sha256 = to_a.spki_sha256();
    assert_eq!(
        aver_verifier::verify(&relabelled, &challenge, &aver_tests::checked(&both)),
        Err(VerifyError::QualifyingDataMismatch)
    );
    // Through a relay terminating in front of B while the client means A.
    let relay = start_mitm(b.enclave.port).await;
    let err = client
        .attest(&Endpoint::new("127.0.0.1", relay))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Verify(VerifyError::SpkiMismatch { .. })),
        "{err}"
    );
    assert_eq!(a.stub.requests() + b.stub.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answer_arrives_before_it_is_finished() {
    require_swtpm!();
    let rig = rig(&[]).await;
    let client = AttestedClient::new(rig.node.policy().unwrap()).unwrap();
    let response = client.request(chat(&rig.enclave.url, true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    // The engine holds back its last chunk until released: everything seen
    // before the release went through the proxy while the answer was open.
    let mut seen = String::new();
    while !seen.contains(&format!("part{}", STREAM_CHUNKS_BEFORE_GATE - 1)) {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("early chunks arrive while the engine still holds the last one")
            .expect("stream open")
            .unwrap();
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert!(!seen.contains("[DONE]"));
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
}

async fn metric(client: &AttestedClient, url: &str, name: &str) -> u64 {
    let request = Request::get(format!("{url}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let text = body_text(client.request(request).await.unwrap()).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_clients_share_few_quotes() {
    require_swtpm!();
    let rig = rig(&[]).await;
    let policy = Arc::new(aver_tests::checked(&rig.node.policy().unwrap()));
    let endpoint = Endpoint::from_url(&rig.enclave.url).unwrap();
    let spki = AttestedConnection::attest(&endpoint, &policy, PATIENCE)
        .await
        .unwrap()
        .spki_sha256();
    // 100 clients with their connections open, then all challenge at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut connection = AttestedConnection::pinned(&endpoint, vec![spki], PATIENCE)
            .await
            .unwrap();
        let (barrier, policy) = (barrier.clone(), policy.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            connection.reattest(&policy).await.map(|r| r.batched())
        }));
    }
    let mut batched = 0;
    for task in tasks {
        let outcome = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        if outcome.expect("every client verifies") {
            batched += 1;
        }
    }
    let observer = AttestedClient::with_policy((*policy).clone());
    let quotes = metric(&observer, &rig.enclave.url, "aver_enclave_quotes_total").await;
    let challenges = metric(&observer, &rig.enclave.url, "aver_enclave_challenges_total").await;
    assert_eq!(
        challenges, 102,
        "every client (and the first and last) was answered"
    );
    assert!(
        quotes <= 34,
        "{quotes} quotes for 102 challenges: batching did not share quotes"
    );
    assert!(batched > 0, "some evidence carried a Merkle proof");
    eprintln!("100 concurrent clients: {quotes} TPM quotes, {batched} batched answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_proxy_errors() {
    require_swtpm!();
    let rig = rig(&["--max-request-bytes", "1024"]).await;
    let client = AttestedClient::new(rig.node.policy().unwrap()).unwrap();
    let url = rig.enclave.url.clone();
    let get = |path: &str| {
        Request::get(format!("{url}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        client.request(get("/healthz")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        client.request(get("/readyz")).await.unwrap().status(),
        StatusCode::OK
    );
    let bad_nonce = client
        .request(get("/.well-known/aver/evidence?nonce=xyz"))
        .await
        .unwrap();
    assert_eq!(bad_nonce.status(), StatusCode::BAD_REQUEST);

    let big = Request::post(format!("{}/v1/chat/completions", rig.enclave.url))
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .unwrap();
    assert_eq!(
        client.request(big).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(rig.stub.requests(), 0);

    let Rig {
        node,
        stub,
        enclave,
    } = rig;
    drop(stub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        client.request(get("/readyz")).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let down = client.request(chat(&enclave.url, false)).await.unwrap();
    assert_eq!(down.status(), StatusCode::BAD_GATEWAY);
    drop(node);
}
