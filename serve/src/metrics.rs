//! The plain-HTTP metrics and health server.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aver_crds::protocol::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Accepting;

/// Content type of [`encode`]'s output (OpenMetrics text, which Prometheus
/// negotiates and parses).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most connections the metrics server keeps open at once; further ones
/// wait in the listen backlog. Scrapers and probes use one or two.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers (also the idle
/// timeout of a keep-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long answers in flight may take after shutdown is signalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `registry` in the OpenMetrics text format, `# EOF` line included.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// What `/metrics` serves: a registry, or a binary's metrics that refresh a
/// gauge or two from elsewhere before they are encoded.
pub trait Scrape: Send + Sync + 'static {
    /// The metrics in the OpenMetrics text format ([`encode`]).
    fn scrape(&self) -> String;
}

impl Scrape for Registry {
    fn scrape(&self) -> String {
        encode(self)
    }
}

/// Whether `/readyz` answers 200 (ready) or 503. Cheap to clone; every
/// clone sets and reads the same flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A flag starting at `ready`.
    pub fn new(ready: bool) -> Self {
        Self(Arc::new(AtomicBool::new(ready)))
    }

    /// Flips `/readyz` for every clone, from the next probe on.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// What `/readyz` answers now: `true` for 200, `false` for 503.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves `GET` [`METRICS_PATH`] (the metrics), [`HEALTHZ_PATH`] (200 while
/// the process serves) and [`READYZ_PATH`] (the [`Readiness`] flag) over
/// plain HTTP/1.1; everything else is 404.
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Arc<dyn Scrape>,
    readiness: Readiness,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("listener", &self.listener)
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        metrics: Arc<dyn Scrape>,
        readiness: Readiness,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::on(listener, metrics, readiness))
    }

    /// Serves on an already bound listener.
    pub fn on(listener: TcpListener, metrics: Arc<dyn Scrape>, readiness: Readiness) -> Self {
        Self {
            listener,
            metrics,
            readiness,
        }
    }

    /// The bound address, which tells the port after binding port 0.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// answers in flight finish (for a few seconds at most).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            metrics,
            readiness,
        } = self;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving {METRICS_PATH}, {HEALTHZ_PATH} and {READYZ_PATH}");
        }
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut accepting = Accepting::new("metrics listener");
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break, // never closed
                },
                () = &mut shutdown => break,
            };
            let (stream, _) = tokio::select! {
                accepted = accepting.next(|| listener.accept()) => accepted,
                () = &mut shutdown => break,
            };
            let metrics = Arc::clone(&metrics);
            let readiness = readiness.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = respond(&request, metrics.as_ref(), &readiness);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "metrics connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("metrics connections still open after the drain timeout");
        }
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &dyn Scrape,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, METRICS_PATH | HEALTHZ_PATH | READYZ_PATH) {
        return text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    if request.method() != Method::GET {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        METRICS_PATH => text(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, metrics.scrape()),
        READYZ_PATH if !readiness.is_ready() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        _ => text(StatusCode::OK, "text/plain", "ok\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn request(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    struct Running {
        addr: SocketAddr,
        readiness: Readiness,
        stop: tokio::sync::watch::Sender<bool>,
        server: tokio::task::JoinHandle<()>,
    }

    async fn start(registry: Registry) -> Running {
        let readiness = Readiness::new(false);
        let server = MetricsServer::bind(
            "127.0.0.1:0".parse().expect("address"),
            Arc::new(registry),
            readiness.clone(),
        )
        .await
        .expect("binds");
        let addr = server.local_addr().expect("bound");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(server.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        Running {
            addr,
            readiness,
            stop,
            server,
        }
    }

    #[tokio::test]
    async fn serves_the_registered_metrics() {
        let mut registry = Registry::with_prefix("aver_test");
        let requests = Counter::<u64>::default();
        registry.register("requests", "Requests seen", requests.clone());
        requests.inc_by(3);
        let running = start(registry).await;
        let answer = request(running.addr, "GET", METRICS_PATH).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{answer}"
        );
        assert!(
            answer.contains("# HELP aver_test_requests Requests seen.\n"),
            "{answer}"
        );
        assert!(
            answer.contains("\naver_test_requests_total 3\n"),
            "{answer}"
        );
        assert!(answer.ends_with("# EOF\n"), "{answer}");
        let answer = request(running.addr, "GET", HEALTHZ_PATH).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let running = start(Registry::default()).await;
        for path in ["/", "/metrics/", "/nope"] {
            let answer = request(running.addr, "GET", path).await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
        }
        let answer = request(running.addr, "POST", METRICS_PATH).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert!(answer.contains("allow: GET"), "{answer}");
    }

    #[tokio::test]
    async fn readiness_flips_readyz() {
        let running = start(Registry::default()).await;
        let answer = request(running.addr, "GET", READYZ_PATH).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        running.readiness.set(true);
        let answer = request(running.addr, "GET", READYZ_PATH).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        running.readiness.set(false);
        let answer = request(running.addr, "GET", READYZ_PATH).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    }

    #[tokio::test]
    async fn shuts_down_when_told() {
        let running = start(Registry::default()).await;
        // An idle keep-alive connection does not hold the shutdown up.
        let mut idle = tokio::net::TcpStream::connect(running.addr)
            .await
            .expect("connect");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buffer = [0u8; 512];
        let read = idle.read(&mut buffer).await.expect("answer");
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
        running.stop.send(true).expect("server listens");
        tokio::time::timeout(Duration::from_secs(2), running.server)
            .await
            .expect("stops well within the drain timeout")
            .expect("does not panic");
        assert!(tokio::net::TcpStream::connect(running.addr).await.is_err());
    }
}
