//! A live attested endpoint for tests outside Rust (the Python SDK's pytest
//! suite, `tests/python/`): swtpm, the stub engine
//! ([`aver_tests::stub_upstream`]), a real `aver-enclave serve` in front of
//! it, and a TLS-terminating relay with its own key in front of the enclave
//! (a MITM, which a client must refuse).
//!
//! Prints one JSON line on stdout once everything is up:
//!
//! ```json
//! {"enclaveUrl": "https://127.0.0.1:P", "mitmUrl": "https://127.0.0.1:M",
//!  "policy": "/tmp/…/policy.yaml", "mismatchPolicy": "/tmp/…/mismatch.yaml",
//!  "controlUrl": "http://127.0.0.1:C", "modelDigest": "sha256:…",
//!  "engineDigest": "sha256:…", "akName": "000b…", "stubUrl": "http://127.0.0.1:S"}
//! ```
//!
//! `policy` matches the endpoint; `mismatchPolicy` allows another model
//! digest only. The control URL serves `GET /counters` (the stub's
//! `{"requests": N, "bodyBytes": N}`) and `POST /release` (lets the streamed
//! answer in progress send its held-back last chunk). Runs until its
//! standard input closes or it is interrupted, then stops everything.
//! Exits 2 when swtpm is missing. Needs `aver-enclave` built next to it
//! (`cargo build --workspace --bins`).
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use aver_tests::node::{TestNode, ENGINE};
use aver_tests::stub_upstream::StubUpstream;
use aver_tests::swtpm_available;
use aver_verifier::Sha256Digest;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    if !swtpm_available() {
        eprintln!("aver-test-rig: swtpm is not installed (apt-get install swtpm swtpm-tools)");
        return ExitCode::from(2);
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aver-test-rig: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let node = tokio::task::spawn_blocking(TestNode::start)
        .await?
        .context("swtpm and the enclave's state")?;
    let stub = Arc::new(StubUpstream::start().await.context("the stub engine")?);
    let enclave = node.serve(&stub.url(), &[]).context("aver-enclave serve")?;
    let mitm = aver_tests::mitm::start_mitm(enclave.port).await?;

    let dir = tempfile::Builder::new()
        .prefix("aver-test-rig-")
        .tempdir()?;
    let policy = node.policy()?;
    let model = policy.allowed.model_digests[0];
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy.to_yaml())?;
    let mut mismatch = policy.clone();
    mismatch.allowed.model_digests = vec![Sha256Digest([0x42; 32])];
    let mismatch_path = dir.path().join("mismatch.yaml");
    std::fs::write(&mismatch_path, mismatch.to_yaml())?;

    let control = TcpListener::bind("127.0.0.1:0").await?;
    let control_addr = control.local_addr()?;
    let app = Router::new()
        .route("/counters", get(counters))
        .route("/release", post(release))
        .with_state(stub.clone());
    tokio::spawn(async move {
        let _ = axum::serve(control, app).await;
    });

    let ready = serde_json::json!({
        "enclaveUrl": enclave.url,
        "mitmUrl": format!("https://127.0.0.1:{mitm}"),
        "stubUrl": stub.url(),
        "policy": policy_path,
        "mismatchPolicy": mismatch_path,
        "controlUrl": format!("http://{control_addr}"),
        "modelDigest": model.to_string(),
        "engineDigest": ENGINE,
        "akName": policy.trust.ak_names[0],
    });
    println!("{ready}");

    // Until the test closes stdin (or dies, which closes it too).
    // A plain thread: the workspace's tokio has no `io-std`.
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while stdin.read(&mut sink).is_ok_and(|n| n > 0) {}
        let _ = closed.send(());
    });
    tokio::select! {
        _ = stdin_closed => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // The enclave and swtpm are killed and reaped on drop.
    drop(enclave);
    drop(node);
    Ok(())
}

async fn counters(State(stub): State<Arc<StubUpstream>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "requests": stub.requests(),
        "bodyBytes": stub.body_bytes(),
    }))
}

async fn release(State(stub): State<Arc<StubUpstream>>) -> &'static str {
    stub.release_stream();
    "released"
}
