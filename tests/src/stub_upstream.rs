//! A small real HTTP server with the OpenAI chat-completions shape, standing
//! in for the inference engine behind `aver-enclave`. It counts what reaches
//! it, so tests can prove that nothing was sent before attestation, and it
//! can hold back the end of a streamed answer until the test releases it, so
//! incremental delivery is shown by order of events rather than by timing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{oneshot, Notify};

/// What the stub has seen.
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
}

struct Shared {
    counters: Arc<Counters>,
    /// Simulated generation time before a non-streamed answer.
    delay: std::time::Duration,
    /// Released by the test to let a streamed answer finish.
    release: Arc<Notify>,
}

/// A running stub; stops when dropped.
pub struct StubUpstream {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    release: Arc<Notify>,
    _stop: oneshot::Sender<()>,
}

/// Number of content chunks a streamed answer has before the held-back last one.
pub const STREAM_CHUNKS_BEFORE_GATE: usize = 3;

impl StubUpstream {
    /// Starts the stub on a free loopback port in the current tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with_delay(std::time::Duration::ZERO).await
    }

    /// Like [`Self::start`], answering non-streamed chats after `delay`, as an
    /// engine does after generating (for throughput measurements in which
    /// the engine, not the proxy, should be the bottleneck).
    pub async fn start_with_delay(delay: std::time::Duration) -> std::io::Result<Self> {
        Self::start_on_with_delay(SocketAddr::from(([127, 0, 0, 1], 0)), delay).await
    }

    /// Like [`Self::start`], on a given address (the node simulator puts
    /// each pod's engine on the pod's own loopback address).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_on_with_delay(addr, std::time::Duration::ZERO).await
    }

    async fn start_on_with_delay(
        addr: SocketAddr,
        delay: std::time::Duration,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let release = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            counters: counters.clone(),
            release: release.clone(),
            delay,
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/health", get(|| async { "ok" }))
            .with_state(shared);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            counters,
            release,
            _stop: stop,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets the streamed answer in progress produce its last chunk.
    pub fn release_stream(&self) {
        self.release.notify_one();
    }

    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn body_bytes(&self) -> u64 {
        self.counters.body_bytes.load(Ordering::SeqCst)
    }
}

async fn models() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"object":"list","data":[{"id":"stub-model","object":"model"}]}"#,
    )
}

async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    shared
        .counters
        .body_bytes
        .fetch_add(body.len() as u64, Ordering::SeqCst);
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "request body is not JSON").into_response();
    };
    let prompt = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    if request["stream"].as_bool() == Some(true) {
        stream_answer(shared.release.clone(), prompt)
    } else {
        if !shared.delay.is_zero() {
            tokio::time::sleep(shared.delay).await;
        }
        let answer = serde_json::json!({
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": "stub-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": format!("echo: {prompt}")}}],
        });
        (
            [(header::CONTENT_TYPE, "application/json")],
            answer.to_string(),
        )
            .into_response()
    }
}

fn chunk(content: &str) -> Bytes {
    let event = serde_json::json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}}],
    });
    Bytes::from(format!("data: {event}\n\n"))
}

/// Server-sent events: a few chunks at once, then the last chunk and
/// `[DONE]` only after the test releases the gate.
fn stream_answer(release: Arc<Notify>, prompt: String) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        for i in 0..STREAM_CHUNKS_BEFORE_GATE {
            if tx.send(Ok(chunk(&format!("part{i} ")))).await.is_err() {
                return;
            }
        }
        release.notified().await;
        let _ = tx.send(Ok(chunk(&format!("last: {prompt}")))).await;
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
