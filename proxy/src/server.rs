//! The listener, request routing and forwarding.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use aver_client::{AttestedClient, Endpoint};
use aver_serve::{json_error, Accepting, OPENMETRICS_CONTENT_TYPE};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};

use crate::config::{default_reattest_after, Listen, ProxyConfig, Upstream};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::pool::{last_error, one_line, EndpointState, Lease, Settings};
use crate::status::{LastError, ProxyStatus};
use crate::{ENDPOINT_HEADER, ERROR_HEADER, ERROR_TYPE, METRICS_PATH, STATUS_PATH};

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Where the proxy listens, once bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    /// The bound address, with the real port when port 0 was asked for.
    Tcp(SocketAddr),
    /// The socket's path, as configured.
    Unix(PathBuf),
}

impl LocalAddr {
    /// The TCP address, if any.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(addr) => Some(*addr),
            Self::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for LocalAddr {
    /// `http://127.0.0.1:8080` or `unix:/path/to/socket`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "http://{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A bound proxy. Cheap to clone: clones share the listener, pools and
/// status, so one can [`Self::run`] while another reads [`Self::status`].
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    listener: Arc<Mutex<Option<Listener>>>,
    local: LocalAddr,
}

#[cfg(feature = "cluster")]
struct ClusterSource {
    name: String,
    namespace: String,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
}

struct Inner {
    settings: Settings,
    upstream: String,
    /// Prefix of every forwarded path (from an `Upstream::Url` with a path).
    base_path: String,
    endpoints: RwLock<Vec<Arc<EndpointState>>>,
    next: AtomicUsize,
    metrics: Metrics,
    last_error: Mutex<Option<LastError>>,
    #[cfg(feature = "cluster")]
    cluster: Option<ClusterSource>,
    #[cfg(feature = "cluster")]
    endpoint_refresh: Duration,
}

impl Proxy {
    /// Validates the policy, resolves the upstream (reading the cluster for
    /// `Upstream::Cluster`, with the `cluster` feature) and binds the
    /// listener. Nothing is attested yet: each upstream connection is,
    /// before its first request.
    pub async fn bind(config: ProxyConfig) -> Result<Self, ProxyError> {
        let client = AttestedClient::new(config.policy.clone())
            .map_err(ProxyError::Policy)?
            .with_connect_timeout(config.connect_timeout);
        let max_age = client.policy().max_evidence_age();
        let reattest_after = config
            .reattest_after
            .unwrap_or_else(|| default_reattest_after(max_age))
            .min(max_age);
        let settings = Settings {
            policy: client.policy().clone(),
            client,
            max_age,
            reattest_after,
            idle_timeout: config.idle_timeout,
            retry_after: config.retry_after,
            // Connect + handshake, then the evidence exchange (and an AK
            // activation, the first time).
            attest_timeout: config.connect_timeout * 3,
            max_per_endpoint: config.max_connections_per_endpoint,
        };
        let (upstream, base_path, endpoints) = match &config.upstream {
            Upstream::Url(url) => {
                let endpoint =
                    Endpoint::from_url(url).map_err(|_| ProxyError::BadUpstream(url.clone()))?;
                let uri: http::Uri = url
                    .parse()
                    .map_err(|_| ProxyError::BadUpstream(url.clone()))?;
                if uri.query().is_some() {
                    return Err(ProxyError::BadUpstream(url.clone()));
                }
                let base = uri.path().trim_end_matches('/').to_owned();
                let state = EndpointState::new(endpoint, settings.max_per_endpoint, None, None);
                (url.clone(), base, vec![Arc::new(state)])
            }
            #[cfg(feature = "cluster")]
            Upstream::Cluster { name, namespace } => {
                let model = crate::cluster::fetch(
                    name,
                    namespace,
                    config.kubeconfig.as_deref(),
                    config.kube_context.as_deref(),
                )
                .await
                .map_err(|e| ProxyError::Cluster(e.to_string()))?;
                let published = crate::cluster::endpoints(&model)
                    .map_err(|e| ProxyError::Cluster(e.to_string()))?;
                let states = cluster_states(&published, &[], settings.max_per_endpoint);
                (format!("cluster:{namespace}/{name}"), String::new(), states)
            }
        };
        let (listener, local) = bind_listener(&config).await?;
        let inner = Inner {
            settings,
            upstream,
            base_path,
            endpoints: RwLock::new(endpoints),
            next: AtomicUsize::new(0),
            metrics: Metrics::new(),
            last_error: Mutex::new(None),
            #[cfg(feature = "cluster")]
            cluster: match &config.upstream {
                Upstream::Cluster { name, namespace } => Some(ClusterSource {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    kubeconfig: config.kubeconfig.clone(),
                    context: config.kube_context.clone(),
                }),
                Upstream::Url(_) => None,
            },
            #[cfg(feature = "cluster")]
            endpoint_refresh: config.endpoint_refresh,
        };
        Ok(Self {
            inner: Arc::new(inner),
            listener: Arc::new(Mutex::new(Some(listener))),
            local,
        })
    }

    /// The bound TCP address (the real port when bound to port 0) or unix
    /// socket path.
    pub fn local_addr(&self) -> LocalAddr {
        self.local.clone()
    }

    /// What `GET /aver/status` serves.
    pub fn status(&self) -> ProxyStatus {
        self.inner.status()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// requests in flight finish (for at most 10 s) and returns. Runs once.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(ProxyError::AlreadyRunning)?;
        let mut background = tokio::task::JoinSet::new();
        background.spawn(maintain(self.inner.clone()));
        #[cfg(feature = "cluster")]
        if self.inner.cluster.is_some() {
            background.spawn(refresh_cluster(self.inner.clone()));
        }
        let graceful = GracefulShutdown::new();
        let mut accepting = Accepting::new("proxy listener");
        tokio::pin!(shutdown);
        loop {
            let io = tokio::select! {
                () = &mut shutdown => break,
                accepted = accepting.next(|| accept(&listener)) => accepted,
            };
            let inner = self.inner.clone();
            let service = service_fn(move |request| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(inner.handle(request).await) }
            });
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "client connection ended");
                }
            });
        }
        tracing::info!("shutting down");
        drop(listener);
        background.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
        if let LocalAddr::Unix(path) = &self.local {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

enum Io {
    Tcp(TokioIo<tokio::net::TcpStream>),
    Unix(TokioIo<tokio::net::UnixStream>),
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Self::Unix(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Self::Unix(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_flush(cx),
            Self::Unix(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Self::Unix(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

async fn accept(listener: &Listener) -> std::io::Result<Io> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, _) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok(Io::Tcp(TokioIo::new(stream)))
        }
        Listener::Unix(l) => {
            let (stream, _) = l.accept().await?;
            Ok(Io::Unix(TokioIo::new(stream)))
        }
    }
}

async fn bind_listener(config: &ProxyConfig) -> Result<(Listener, LocalAddr), ProxyError> {
    match &config.listen {
        Listen::Tcp(addr) => {
            if !addr.ip().is_loopback() && !config.allow_remote {
                return Err(ProxyError::RemoteListen(*addr));
            }
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| ProxyError::Bind {
                addr: addr.to_string(),
                source,
            })?;
            Ok((Listener::Tcp(listener), LocalAddr::Tcp(local)))
        }
        Listen::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
            let bind_error = |source| ProxyError::Bind {
                addr: format!("unix:{}", path.display()),
                source,
            };
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(ProxyError::NotASocket(path.clone()));
                }
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(bind_error(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process is listening on this socket",
                    )));
                }
                std::fs::remove_file(path).map_err(bind_error)?;
            }
            let listener = UnixListener::bind(path).map_err(bind_error)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.unix_mode))
                .map_err(bind_error)?;
            Ok((Listener::Unix(listener), LocalAddr::Unix(path.clone())))
        }
    }
}

#[cfg(feature = "cluster")]
fn cluster_states(
    published: &[aver_crds::confidential_model::VerifiedEndpoint],
    current: &[Arc<EndpointState>],
    max_per_endpoint: usize,
) -> Vec<Arc<EndpointState>> {
    published
        .iter()
        .filter_map(|e| {
            let url = crate::cluster::endpoint_url(e);
            if let Some(existing) = current.iter().find(|s| s.url == url) {
                return Some(existing.clone());
            }
            let endpoint = Endpoint::from_url(&url).ok()?;
            Some(Arc::new(EndpointState::new(
                endpoint,
                max_per_endpoint,
                Some(e.pod.clone()),
                Some(e.node.clone()),
            )))
        })
        .collect()
}

/// Reads the ConfidentialModel's endpoints again every
/// `endpoint_refresh`; on failure the current list stays.
#[cfg(feature = "cluster")]
async fn refresh_cluster(inner: Arc<Inner>) {
    let Some(source) = inner.cluster.as_ref() else {
        return;
    };
    let mut tick = tokio::time::interval(inner.endpoint_refresh.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let fetched = crate::cluster::fetch(
            &source.name,
            &source.namespace,
            source.kubeconfig.as_deref(),
            source.context.as_deref(),
        )
        .await;
        match fetched {
            Ok(model) => {
                let published = model
                    .status
                    .as_ref()
                    .map(|s| s.endpoints.clone())
                    .unwrap_or_default();
                let mut endpoints = inner.endpoints.write().unwrap_or_else(|p| p.into_inner());
                let updated =
                    cluster_states(&published, &endpoints, inner.settings.max_per_endpoint);
                if updated.len() != endpoints.len() {
                    tracing::info!(endpoints = updated.len(), "upstream endpoint list changed");
                }
                *endpoints = updated;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh the endpoint list; keeping the current one");
                inner.record_error(last_error("cluster", &e.to_string(), None));
            }
        }
    }
}

/// Closes stale idle connections and refreshes due evidence, every so often.
async fn maintain(inner: Arc<Inner>) {
    let every = (inner.settings.reattest_after / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for endpoint in inner.snapshot() {
            endpoint.maintain(&inner.settings, &inner.metrics).await;
        }
    }
}

impl Inner {
    fn snapshot(&self) -> Vec<Arc<EndpointState>> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record_error(&self, error: LastError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Endpoints in the order to try: round robin over those in rotation,
    /// then those out of it (better than refusing outright).
    fn candidates(&self) -> Vec<Arc<EndpointState>> {
        let all = self.snapshot();
        if all.is_empty() {
            return all;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
        let rotated = all[start..].iter().chain(all[..start].iter()).cloned();
        let (mut ok, down): (Vec<_>, Vec<_>) =
            rotated.partition(|e| e.in_rotation(self.settings.retry_after));
        ok.extend(down);
        ok
    }

    fn status(&self) -> ProxyStatus {
        ProxyStatus {
            upstream: self.upstream.clone(),
            max_evidence_age_seconds: self.settings.max_age.as_secs_f64(),
            reattest_after_seconds: self.settings.reattest_after.as_secs_f64(),
            endpoints: self
                .snapshot()
                .iter()
                .map(|e| e.status(&self.settings))
                .collect(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    fn metrics_text(&self) -> String {
        let endpoints = self.snapshot();
        self.metrics.pool.clear();
        let mut in_rotation = 0;
        for e in &endpoints {
            let authority = e.endpoint.authority();
            for (state, n) in [("idle", e.idle_count()), ("busy", e.busy_count())] {
                self.metrics
                    .pool
                    .get_or_create(&crate::metrics::PoolLabel {
                        endpoint: authority.clone(),
                        state,
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            if e.in_rotation(self.settings.retry_after) {
                in_rotation += 1;
            }
        }
        self.metrics.endpoints_in_rotation.set(in_rotation);
        self.metrics
            .endpoints_total
            .set(i64::try_from(endpoints.len()).unwrap_or(i64::MAX));
        self.metrics.encode()
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, STATUS_PATH) => {
                let mut body = self.status().to_json();
                body.push('\n');
                full_response(StatusCode::OK, "application/json", body)
            }
            (&Method::GET, METRICS_PATH) => full_response(
                StatusCode::OK,
                OPENMETRICS_CONTENT_TYPE,
                self.metrics_text(),
            ),
            _ => self.forward(request).await,
        }
    }

    /// Attest first (a pooled connection, or a new one), then send. The
    /// request body is not touched until an attested connection is in
    /// hand, so a failed endpoint can be skipped for the next one.
    async fn forward(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let candidates = self.candidates();
        if candidates.is_empty() {
            self.metrics.request("refused");
            let error = last_error("no-endpoints", "no upstream endpoint is known", None);
            self.record_error(error.clone());
            return refusal(&error.reason, &error.message);
        }
        let mut refused = None;
        for endpoint in candidates {
            match endpoint.checkout(&self.settings, &self.metrics).await {
                Ok(lease) => return self.send(lease, request).await,
                Err(e) => {
                    if let Some(error) = endpoint.last_error() {
                        self.record_error(error);
                    }
                    refused = Some(e);
                }
            }
        }
        self.metrics.request("refused");
        let error = refused.expect("at least one endpoint was tried");
        refusal(
            error.reason(),
            &format!("not attested, nothing sent: {error}"),
        )
    }

    async fn send(&self, mut lease: Lease, request: Request<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let path = format!("{}{path}", self.base_path);
        parts.uri = match path.parse() {
            Ok(uri) => uri,
            Err(_) => {
                self.metrics.request("refused");
                return refusal("request", &format!("invalid request path {path:?}"));
            }
        };
        strip_hop_by_hop(&mut parts.headers);
        let authority = lease.endpoint().endpoint.authority();
        if let Ok(host) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, host);
        }
        let outgoing = Request::from_parts(parts, body);
        match lease.connection().send(outgoing).await {
            Ok(response) => {
                self.metrics.request("forwarded");
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if let Ok(value) = HeaderValue::from_str(&authority) {
                    parts.headers.insert(ENDPOINT_HEADER, value);
                }
                Response::from_parts(parts, PooledBody::new(body, lease).boxed_unsync())
            }
            Err(e) => {
                // The connection was attested; the exchange itself broke.
                self.metrics.request("failed");
                tracing::warn!(endpoint = %authority, error = %e, "forwarding failed");
                let error = last_error("upstream", &e.to_string(), Some(&lease.endpoint().url));
                self.record_error(error.clone());
                refusal("upstream", &error.message)
            }
        }
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn full_response(status: StatusCode, content_type: &str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// 502 in the OpenAI error shape, with the reason in `x-aver-error`.
fn refusal(reason: &str, message: &str) -> Response<ProxyBody> {
    let mut response = json_error(
        StatusCode::BAD_GATEWAY,
        ERROR_TYPE,
        Some(reason),
        &one_line(message),
    )
    .map(|body| body.map_err(|never| match never {}).boxed_unsync());
    if let Ok(value) = HeaderValue::from_str(reason) {
        response.headers_mut().insert(ERROR_HEADER, value);
    }
    response
}

/// An answer streamed through frame by frame; at its end the connection
/// goes back to the pool. Dropped before its end (the client went away),
/// the connection is closed with it.
struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    fn new(inner: Incoming, lease: Lease) -> Self {
        let mut body = Self {
            inner,
            lease: Some(lease),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => drop(this.lease.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
