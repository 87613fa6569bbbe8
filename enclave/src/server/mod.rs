//! `aver-enclave serve`: the TLS endpoint clients attest and talk to.
//!
//! Routes on the one TLS 1.3 listener:
//! - `GET /.well-known/aver/evidence?nonce=<64 hex>`: evidence bound to this
//!   server's (only) certificate key, batched with concurrent challenges;
//! - `GET /.well-known/aver/activate`: the AK public area and the TPM's EK
//!   certificates; `POST` the same path with a credential made for them to
//!   have the TPM activate it (`aver_verifier::ek::activation`). Local TPM
//!   mode only: with `--node-agent` the enclave has no TPM and answers 501;
//! - `GET /healthz`: the process is alive;
//! - `GET /readyz`: measurement is done (always, once serving), evidence can
//!   be produced (with `--node-agent`: aver-node is reachable) and the
//!   inference engine accepts connections;
//! - `GET /metrics`: Prometheus counters;
//! - everything else: reverse-proxied to the inference engine.
//!
//! What clients may make the server do is bounded ([`limits`]): open
//! connections, idle time, whole-request deadlines on the aver endpoints,
//! and credential activations (429 when over their share), which queue
//! behind quotes on the TPM thread. Evidence requests beyond what the next
//! few quotes can answer get 503 at once.

pub mod body;
pub mod limits;
mod metrics;
pub mod proxy;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aver_crds::protocol::{
    ACTIVATE_PATH, EVIDENCE_PATH, HEALTHZ_PATH, METRICS_PATH, READYZ_PATH, WELL_KNOWN_PREFIX,
};
use aver_verifier::binding::Nonce;
use aver_verifier::ek::activation::MAX_ACTIVATION_BYTES;
use aver_verifier::ek::{ActivationRequest, ActivationResponse, ACTIVATION_VERSION};
use aver_verifier::evidence::Base64Bytes;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::backend::{LocalTpm, QuoteBackend};
use crate::batcher::{BatchConfig, BatchError, QuoteBatcher};
use crate::endorsement::ActivateError;
use crate::launch::Enclave;
use crate::node_agent::RegisteredEnclave;
use crate::tls_key::TlsKey;
use aver_serve::Accepting;
use body::BoxBody;
use limits::{ActivationGate, Limits};
use metrics::EnclaveMetrics;
use prometheus_client::metrics::gauge::Gauge;
use proxy::Proxy;

/// Settings of the server, beyond the launch.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub upstream: String,
    pub max_request_bytes: usize,
    pub upstream_timeout: Duration,
    pub batch: BatchConfig,
    /// DNS names (or IPs) written into the self-signed certificate.
    pub certificate_names: Vec<String>,
    /// Bounds on connections, deadlines and credential activations.
    pub limits: Limits,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::ServerTlsError),
    #[error(transparent)]
    Upstream(#[from] proxy::BadUpstream),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the TPM worker: {0}")]
    Worker(std::io::Error),
}

struct AppState {
    batcher: QuoteBatcher,
    activation: Activation,
    gate: ActivationGate,
    proxy: Proxy,
    limits: Limits,
    /// Counters and gauges, served at `/metrics`; in local TPM mode they
    /// include the launch log's size and bound (with `--node-agent`,
    /// aver-node keeps the node log and its own gauge).
    metrics: EnclaveMetrics,
}

/// What the activation endpoint says in node-agent mode.
pub const ACTIVATION_VIA_NODE: &str =
    "credential activation goes through aver-node; not available yet";

/// Whether this enclave can activate credentials for verifiers.
enum Activation {
    /// With its own TPM: the offer as served (JSON), or why it is
    /// unavailable, and the TPM thread that activates.
    LocalTpm {
        offer: Result<Bytes, String>,
        tpm: LocalTpm,
    },
    /// Not here: the enclave has no TPM; the AK belongs to aver-node.
    NotHere(&'static str),
}

/// Binds `addr`. The IPv6 wildcard (`[::]`, the default) takes IPv4 too
/// (dual stack, whatever the host's `bindv6only`), so one listen address
/// serves IPv4-only, dual-stack and IPv6-only clusters; on a kernel without
/// IPv6 it falls back to `0.0.0.0`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let dual_stack = matches!(addr, SocketAddr::V6(v6) if v6.ip().is_unspecified());
    let bind = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if addr.is_ipv6() {
            socket.set_only_v6(!dual_stack)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    match bind(addr) {
        Err(e) if dual_stack && no_ipv6(&e) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::info!(error = %e, fallback = %v4, "no IPv6 on this host: listening on IPv4 only");
            bind(v4)
        }
        other => other,
    }
}

/// The errors of a kernel or network namespace without IPv6.
fn no_ipv6(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::AFNOSUPPORT | Errno::ADDRNOTAVAIL | Errno::PROTONOSUPPORT)
    )
}

/// A server that is bound and ready to accept.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<AppState>,
}

/// The listener and TLS identity, before the quote backend is attached.
struct Listening {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    proxy: Proxy,
    limits: Limits,
}

impl Listening {
    /// Builds the TLS identity from `key` and binds the listener.
    async fn bind(key: &TlsKey, config: &ServeConfig) -> Result<Self, ServeError> {
        let (tls_config, cert_der) = tls::server_config(key, &config.certificate_names)?;
        let proxy = Proxy::new(
            &config.upstream,
            config.max_request_bytes,
            config.upstream_timeout,
        )?;
        let listener = listen(config.listen).map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
        tracing::info!(
            spki = %key.spki_sha256(),
            certificate_sha256 = %hex::encode(Sha256::digest(cert_der.as_ref())),
            "TLS identity ready"
        );
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(tls_config),
            proxy,
            limits: config.limits.clone(),
        })
    }

    fn into_server(
        self,
        batcher: QuoteBatcher,
        activation: Activation,
        launches: Option<crate::launch_log::LaunchStats>,
    ) -> Server {
        let metrics = EnclaveMetrics::new(batcher.stats(), self.limits.max_connections, launches);
        Server {
            listener: self.listener,
            acceptor: self.acceptor,
            state: Arc::new(AppState {
                batcher,
                activation,
                gate: ActivationGate::new(&self.limits),
                proxy: self.proxy,
                limits: self.limits,
                metrics,
            }),
        }
    }
}

impl Server {
    /// Builds the TLS identity from the launched enclave's key, binds the
    /// listener and moves the enclave to the TPM worker.
    pub async fn bind(enclave: Enclave, config: &ServeConfig) -> Result<Self, ServeError> {
        Self::bind_with_ek_chain(enclave, config, Vec::new()).await
    }

    /// [`Self::bind`], serving `ek_chain` (intermediate CA certificates of
    /// the TPM's EK certificate, DER) in the activation offer so that
    /// verifiers can build the path to their manufacturer roots.
    pub async fn bind_with_ek_chain(
        enclave: Enclave,
        config: &ServeConfig,
        ek_chain: Vec<Vec<u8>>,
    ) -> Result<Self, ServeError> {
        let listening = Listening::bind(enclave.tls_key(), config).await?;
        let mut enclave = enclave;
        let offer = match enclave.activation_offer(ek_chain) {
            Ok(offer) => {
                tracing::info!(
                    ek_certificates = offer.endorsement_keys.len(),
                    "activation offer ready"
                );
                Ok(Bytes::from(serde_json::to_vec(&offer).unwrap_or_default()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the EK certificates: activation unavailable");
                Err(e.to_string())
            }
        };
        let spki = enclave.tls_key().spki_sha256();
        let launches = enclave.launch_stats();
        let tpm = LocalTpm::start(enclave).map_err(ServeError::Worker)?;
        let batcher =
            QuoteBatcher::with_backend(QuoteBackend::LocalTpm(tpm.clone()), spki, config.batch);
        Ok(listening.into_server(batcher, Activation::LocalTpm { offer, tpm }, Some(launches)))
    }

    /// Serves evidence from aver-node for an enclave that registered its
    /// key there (`--node-agent`). Credential activation needs the TPM,
    /// which belongs to aver-node: the activation endpoint answers 501.
    pub async fn bind_node_agent(
        enclave: RegisteredEnclave,
        config: &ServeConfig,
    ) -> Result<Self, ServeError> {
        let listening = Listening::bind(enclave.tls_key(), config).await?;
        let spki = enclave.tls_key().spki_sha256();
        let batcher = QuoteBatcher::with_backend(
            QuoteBackend::NodeAgent(enclave.quoter()),
            spki,
            config.batch,
        );
        Ok(listening.into_server(batcher, Activation::NotHere(ACTIVATION_VIA_NODE), None))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then lets open connections finish
    /// (bounded) before returning.
    ///
    /// At most `limits.max_connections` connections are open: the next one
    /// is accepted when one closes (until then it waits in the kernel's
    /// backlog). Accept errors from running out of descriptors back off.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.state.limits.max_connections.max(1),
        ));
        let mut accepting =
            Accepting::new("TLS listener").count_errors(self.state.metrics.accept_errors.clone());
        let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break, // never closed
                },
                _ = housekeeping.tick() => {
                    self.state.gate.forget_idle_peers();
                    continue;
                }
                () = &mut shutdown => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = accepting.next(|| self.listener.accept()) => accepted,
                () = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let state = self.state.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let open = OpenConnection::new(&state.metrics.connections_open, slot);
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let service_state = state.clone();
                let service = service_fn(move |request| {
                    let state = service_state.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(route(&state, peer.ip(), request).await)
                    }
                });
                // hyper's header timer also runs while a keep-alive
                // connection waits for its next request: it is the idle
                // timeout. It does not run while a response streams.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(state.limits.idle_timeout)
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(open);
            });
        }
        // Closed before the drain: a new connection is refused at once (and
        // a client retries another endpoint) instead of waiting in the
        // backlog of a server that no longer accepts.
        let Self {
            listener, state, ..
        } = self;
        drop(listener);
        let drain = state.limits.drain_timeout;
        tracing::info!(drain_timeout = ?drain, "shutting down: finishing open requests");
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(drain_timeout = ?drain, "requests still open after the drain timeout; closing them");
        }
    }
}

/// One open connection: counted in the gauge and holding its slot until
/// it closes.
struct OpenConnection<'a> {
    gauge: &'a Gauge,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<'a> OpenConnection<'a> {
    fn new(gauge: &'a Gauge, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        gauge.inc();
        Self { gauge, _slot: slot }
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

async fn route(state: &AppState, peer: IpAddr, request: Request<Incoming>) -> Response<BoxBody> {
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET, EVIDENCE_PATH) => evidence(state, request.uri().query()).await,
        (_, EVIDENCE_PATH) => body::error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (&Method::GET, ACTIVATE_PATH) => activation_offer(state),
        (&Method::POST, ACTIVATE_PATH) => activate(state, peer, request).await,
        (_, ACTIVATE_PATH) => body::error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"),
        (&Method::GET, HEALTHZ_PATH) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, READYZ_PATH) => readyz(state).await,
        (&Method::GET, METRICS_PATH) => metrics(state),
        (_, p) if p.starts_with(WELL_KNOWN_PREFIX) => {
            body::error(StatusCode::NOT_FOUND, "no such aver endpoint")
        }
        _ => {
            state.metrics.proxied_requests.inc();
            state.proxy.forward(request).await
        }
    }
}

async fn evidence(state: &AppState, query: Option<&str>) -> Response<BoxBody> {
    state.metrics.evidence_requests.inc();
    let nonce = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("nonce="))
        .map(Nonce::from_hex);
    let nonce = match nonce {
        Some(Ok(nonce)) => nonce,
        Some(Err(e)) => return body::error(StatusCode::BAD_REQUEST, &e.to_string()),
        None => {
            return body::error(
                StatusCode::BAD_REQUEST,
                "missing nonce: GET /.well-known/aver/evidence?nonce=<64 hex>",
            )
        }
    };
    let deadline = state.limits.request_deadline;
    let produced = match tokio::time::timeout(deadline, state.batcher.evidence(nonce)).await {
        Ok(produced) => produced,
        Err(_) => {
            state.metrics.deadlines_exceeded.inc();
            return body::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no evidence within {deadline:?}: the TPM is slow or busy"),
                1,
            );
        }
    };
    match produced {
        Ok(evidence) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(body::full(evidence.to_json_compact()))
            .unwrap_or_else(|_| body::error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed")),
        Err(e @ BatchError::Busy) => {
            state.metrics.evidence_busy.inc();
            body::retry_later(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), 1)
        }
        Err(e) => {
            state.metrics.evidence_failures.inc();
            body::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

fn activation_offer(state: &AppState) -> Response<BoxBody> {
    match &state.activation {
        Activation::LocalTpm {
            offer: Ok(json), ..
        } => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(body::full(json.clone()))
            .unwrap_or_else(|_| body::error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed")),
        Activation::LocalTpm {
            offer: Err(reason), ..
        } => body::error(StatusCode::SERVICE_UNAVAILABLE, reason),
        Activation::NotHere(reason) => body::error(StatusCode::NOT_IMPLEMENTED, reason),
    }
}

/// TPM2_ActivateCredential for a verifier. A refusal by the TPM (the
/// credential is not for this TPM's EK and AK) is 422, so that a verifier
/// can tell "not resident" from "TPM unavailable" (503). Over its share
/// (per peer, or the queue is full) a request gets 429 before its body is
/// read; the whole request has `limits.request_deadline`.
async fn activate(state: &AppState, peer: IpAddr, request: Request<Incoming>) -> Response<BoxBody> {
    let tpm = match &state.activation {
        Activation::LocalTpm { tpm, .. } => tpm,
        Activation::NotHere(reason) => return body::error(StatusCode::NOT_IMPLEMENTED, reason),
    };
    let place = match state.gate.admit(peer) {
        Ok(place) => place,
        Err(refused) => {
            let counter = match refused {
                limits::Refused::PeerRate { .. } => &state.metrics.activations_limited_peer,
                limits::Refused::QueueFull { .. } => &state.metrics.activations_limited_queue,
            };
            counter.inc();
            tracing::debug!(%peer, reason = refused.reason(), "credential activation not admitted");
            return body::retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                &refused.to_string(),
                refused.retry_after_secs(),
            );
        }
    };
    let deadline = state.limits.request_deadline;
    let work = async {
        let body = match Limited::new(request.into_body(), MAX_ACTIVATION_BYTES)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return body::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "activation request too large or cut short",
                )
            }
        };
        let request = match ActivationRequest::from_json(&body) {
            Ok(request) => request,
            Err(e) => return body::error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let kind = request.kind;
        activation_answer(state, kind, tpm.activate(request, place).await)
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(response) => response,
        Err(_) => {
            state.metrics.deadlines_exceeded.inc();
            tracing::debug!(%peer, "credential activation request exceeded its deadline");
            body::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the activation request did not complete within {deadline:?}"),
            )
        }
    }
}

fn activation_answer(
    state: &AppState,
    kind: aver_verifier::ek::EkKind,
    result: Result<Vec<u8>, ActivateError>,
) -> Response<BoxBody> {
    match result {
        Ok(secret) => {
            state.metrics.activations.inc();
            tracing::info!(ek = %kind, "credential activated");
            let response = ActivationResponse {
                version: ACTIVATION_VERSION,
                credential: Base64Bytes(secret),
            };
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-store")
                .body(body::full(
                    serde_json::to_vec(&response).unwrap_or_default(),
                ))
                .unwrap_or_else(|_| {
                    body::error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed")
                })
        }
        Err(e @ ActivateError::Refused(_)) => {
            state.metrics.activation_refusals.inc();
            tracing::warn!(ek = %kind, error = %e, "credential activation refused");
            body::error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())
        }
        Err(e @ (ActivateError::UnsupportedVersion(_) | ActivateError::TooLarge(_))) => {
            body::error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e) => {
            tracing::error!(ek = %kind, error = %e, "credential activation failed");
            body::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

async fn readyz(state: &AppState) -> Response<BoxBody> {
    if let Some(reason) = state.batcher.backend().unavailable().await {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body::full(format!("{reason}\n")))
            .unwrap_or_else(|_| Response::new(body::full("")));
    }
    let probe = tokio::net::TcpStream::connect(state.proxy.authority());
    match tokio::time::timeout(Duration::from_secs(1), probe).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ready\n"),
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "inference engine not reachable\n",
        ),
    }
}

fn metrics(state: &AppState) -> Response<BoxBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, aver_serve::OPENMETRICS_CONTENT_TYPE)
        .body(body::full(state.metrics.encode()))
        .unwrap_or_else(|_| body::error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"))
}

fn text(status: StatusCode, message: &'static str) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body::full(message))
        .unwrap_or_else(|_| Response::new(body::full("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ipv6_wildcard_takes_ipv4_and_ipv6_connections() {
        let listener = listen("[::]:0".parse().expect("address")).expect("listens");
        let port = listener.local_addr().expect("bound").port();
        for client in ["127.0.0.1", "::1"] {
            let ip: IpAddr = client.parse().expect("ip");
            let connect = tokio::net::TcpStream::connect((ip, port));
            let (connected, accepted) = tokio::join!(connect, listener.accept());
            connected.unwrap_or_else(|e| panic!("{client}: {e}"));
            let (_, peer) = accepted.expect("accepted");
            // An IPv4 client arrives as an IPv4-mapped IPv6 address.
            assert_eq!(peer.ip().to_canonical(), ip, "{client}");
        }
    }

    #[tokio::test]
    async fn an_explicit_address_is_bound_as_given() {
        let listener = listen("127.0.0.1:0".parse().expect("address")).expect("listens");
        assert!(listener.local_addr().expect("bound").is_ipv4());
        let v6 = listen("[::1]:0".parse().expect("address")).expect("listens");
        let port = v6.local_addr().expect("bound").port();
        // IPv6 only: an IPv4 client is refused.
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());
    }

    #[test]
    fn missing_ipv6_is_recognised() {
        use rustix::io::Errno;
        for errno in [Errno::AFNOSUPPORT, Errno::ADDRNOTAVAIL] {
            assert!(no_ipv6(&std::io::Error::from_raw_os_error(
                errno.raw_os_error()
            )));
        }
        assert!(!no_ipv6(&std::io::Error::from_raw_os_error(
            Errno::ADDRINUSE.raw_os_error()
        )));
    }
}
