//! Live attested endpoints in front of a real inference engine, for the
//! tests outside Rust (`tests/python/test_llama_engine.py`): llama.cpp's
//! `llama-server` (built by `scripts/engine.sh`) serving the generated chat
//! model and, in a second server, the all-MiniLM-L6-v2 embedding model,
//! both on 127.0.0.1 only; each behind its own `aver-enclave serve` on its
//! own swtpm, measuring that model's directory. The enclaves listen on all
//! addresses, as in a pod.
//!
//! Between the chat enclave and its engine sits a byte-counting TCP relay
//! (loopback too), so a test can show what reached the engine.
//!
//! Prints one JSON line on stdout once everything is up:
//!
//! ```json
//! {"chatUrl": "https://127.0.0.1:P", "chatPort": P, "chatPolicy": "/tmp/…/chat.yaml",
//!  "chatModelDigest": "sha256:…", "chatEnginePort": E,
//!  "embedUrl": "https://127.0.0.1:Q", "embedPort": Q, "embedPolicy": "/tmp/…/embed.yaml",
//!  "embedModelDigest": "sha256:…", "embedEnginePort": F,
//!  "maxRequestBytes": N, "controlUrl": "http://127.0.0.1:C"}
//! ```
//!
//! The control URL serves `GET /counters`: `{"chatEngineBytes": N}`, the
//! bytes the chat enclave sent to its engine. Runs until its standard input
//! closes or it is interrupted. Exits 2 when swtpm or the engine is missing
//! (the message says which), 1 on any other failure.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use aver_tests::llama::{serve_model, CountingRelay, EngineArtifacts, LlamaServer, Model};
use aver_tests::node::{policy_for, TestNode};
use aver_tests::swtpm_available;
use aver_verifier::measurement::model_digest;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

/// Inference threads per engine: one, so that a busy machine slows the
/// tests down rather than stalling them.
const ENGINE_THREADS: usize = 1;
/// The enclave's request-size limit here (its default, stated explicitly).
const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    if !swtpm_available() {
        eprintln!("aver-llama-rig: swtpm is not installed (apt-get install swtpm swtpm-tools)");
        return ExitCode::from(2);
    }
    let artifacts = match EngineArtifacts::locate() {
        Ok(artifacts) => artifacts,
        Err(e) => {
            eprintln!("aver-llama-rig: {e}");
            return ExitCode::from(2);
        }
    };
    match run(artifacts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aver-llama-rig: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(artifacts: EngineArtifacts) -> anyhow::Result<()> {
    let chat_artifacts = artifacts.clone();
    let (chat_node, chat_engine) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            TestNode::start()?,
            LlamaServer::start(&chat_artifacts, Model::Chat, ENGINE_THREADS)?,
        ))
    })
    .await?
    .context("swtpm and llama-server (chat)")?;
    let embed_artifacts = artifacts.clone();
    let (embed_node, embed_engine) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            TestNode::start()?,
            LlamaServer::start(&embed_artifacts, Model::Embed, ENGINE_THREADS)?,
        ))
    })
    .await?
    .context("swtpm and llama-server (embeddings)")?;
    let relay = Arc::new(CountingRelay::start(chat_engine.addr).await?);

    let limit = MAX_REQUEST_BYTES.to_string();
    let extra = ["--max-request-bytes", limit.as_str()];
    let chat = serve_model(
        &chat_node,
        &artifacts.chat_dir,
        "0.0.0.0:0",
        &relay.url(),
        &extra,
    )
    .context("aver-enclave serve (chat)")?;
    let embed = serve_model(
        &embed_node,
        &artifacts.embed_dir,
        "0.0.0.0:0",
        &embed_engine.url(),
        &extra,
    )
    .context("aver-enclave serve (embeddings)")?;

    let dir = tempfile::Builder::new()
        .prefix("aver-llama-rig-")
        .tempdir()?;
    // Policies from independent knowledge: each TPM's AK, each model
    // directory's digest computed here.
    let chat_model = model_digest(&artifacts.chat_dir)?;
    let embed_model = model_digest(&artifacts.embed_dir)?;
    let chat_policy = dir.path().join("chat.yaml");
    std::fs::write(
        &chat_policy,
        policy_for(&[chat_node.ak_name()?], chat_model).to_yaml(),
    )?;
    let embed_policy = dir.path().join("embed.yaml");
    std::fs::write(
        &embed_policy,
        policy_for(&[embed_node.ak_name()?], embed_model).to_yaml(),
    )?;

    let control = TcpListener::bind("127.0.0.1:0").await?;
    let control_addr = control.local_addr()?;
    let app = Router::new()
        .route("/counters", get(counters))
        .with_state(relay.clone());
    tokio::spawn(async move {
        let _ = axum::serve(control, app).await;
    });

    let ready = serde_json::json!({
        "chatUrl": chat.url,
        "chatPort": chat.port,
        "chatPolicy": chat_policy,
        "chatModelDigest": chat_model.to_string(),
        "chatEnginePort": chat_engine.addr.port(),
        "embedUrl": embed.url,
        "embedPort": embed.port,
        "embedPolicy": embed_policy,
        "embedModelDigest": embed_model.to_string(),
        "embedEnginePort": embed_engine.addr.port(),
        "maxRequestBytes": MAX_REQUEST_BYTES,
        "controlUrl": format!("http://{control_addr}"),
    });
    println!("{ready}");

    // Until the test closes stdin (or dies, which closes it too).
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
    drop((
        chat,
        embed,
        chat_engine,
        embed_engine,
        chat_node,
        embed_node,
    ));
    Ok(())
}

async fn counters(State(relay): State<Arc<CountingRelay>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "chatEngineBytes": relay.bytes_to_engine() }))
}
