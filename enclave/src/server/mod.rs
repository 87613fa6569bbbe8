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

pub mod body;
pub mod proxy;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aver_verifier::binding::Nonce;
use aver_verifier::client::{ACTIVATE_PATH, EVIDENCE_PATH};
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
use crate::batcher::{BatchConfig, QuoteBatcher};
use crate::endorsement::ActivateError;
use crate::launch::Enclave;
use crate::node_agent::RegisteredEnclave;
use crate::tls_key::TlsKey;
use body::BoxBody;
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

#[derive(Default)]
struct Counters {
    evidence_requests: AtomicU64,
    evidence_failures: AtomicU64,
    proxied_requests: AtomicU64,
    activations: AtomicU64,
    activation_refusals: AtomicU64,
}

struct AppState {
    batcher: QuoteBatcher,
    activation: Activation,
    proxy: Proxy,
    counters: Counters,
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
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Listen {
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
        })
    }

    fn into_server(self, batcher: QuoteBatcher, activation: Activation) -> Server {
        Server {
            listener: self.listener,
            acceptor: self.acceptor,
            state: Arc::new(AppState {
                batcher,
                activation,
                proxy: self.proxy,
                counters: Counters::default(),
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
        let tpm = LocalTpm::start(enclave).map_err(ServeError::Worker)?;
        let batcher =
            QuoteBatcher::with_backend(QuoteBackend::LocalTpm(tpm.clone()), spki, config.batch);
        Ok(listening.into_server(batcher, Activation::LocalTpm { offer, tpm }))
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
        Ok(listening.into_server(batcher, Activation::NotHere(ACTIVATION_VIA_NODE)))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then lets open connections finish
    /// (bounded) before returning.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let state = self.state.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
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
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(&state, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        tracing::info!("shutting down: finishing open connections");
        if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 30 s; closing them");
        }
    }
}

async fn route(state: &AppState, request: Request<Incoming>) -> Response<BoxBody> {
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET, EVIDENCE_PATH) => evidence(state, request.uri().query()).await,
        (_, EVIDENCE_PATH) => body::error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (&Method::GET, ACTIVATE_PATH) => activation_offer(state),
        (&Method::POST, ACTIVATE_PATH) => activate(state, request).await,
        (_, ACTIVATE_PATH) => body::error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(state).await,
        (&Method::GET, "/metrics") => metrics(state),
        (_, p) if p.starts_with("/.well-known/aver/") => {
            body::error(StatusCode::NOT_FOUND, "no such aver endpoint")
        }
        _ => {
            state
                .counters
                .proxied_requests
                .fetch_add(1, Ordering::Relaxed);
            state.proxy.forward(request).await
        }
    }
}

async fn evidence(state: &AppState, query: Option<&str>) -> Response<BoxBody> {
    state
        .counters
        .evidence_requests
        .fetch_add(1, Ordering::Relaxed);
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
    match state.batcher.evidence(nonce).await {
        Ok(evidence) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(body::full(evidence.to_json_compact()))
            .unwrap_or_else(|_| body::error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed")),
        Err(e) => {
            state
                .counters
                .evidence_failures
                .fetch_add(1, Ordering::Relaxed);
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
/// can tell "not resident" from "TPM unavailable" (503).
async fn activate(state: &AppState, request: Request<Incoming>) -> Response<BoxBody> {
    let tpm = match &state.activation {
        Activation::LocalTpm { tpm, .. } => tpm,
        Activation::NotHere(reason) => return body::error(StatusCode::NOT_IMPLEMENTED, reason),
    };
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
    match tpm.activate(request).await {
        Ok(secret) => {
            state.counters.activations.fetch_add(1, Ordering::Relaxed);
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
            state
                .counters
                .activation_refusals
                .fetch_add(1, Ordering::Relaxed);
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
    let stats = state.batcher.stats();
    let c = &state.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let text_body = format!(
        "# HELP aver_enclave_evidence_requests_total Evidence requests received.\n\
         # TYPE aver_enclave_evidence_requests_total counter\n\
         aver_enclave_evidence_requests_total {}\n\
         # HELP aver_enclave_evidence_failures_total Evidence requests answered with an error.\n\
         # TYPE aver_enclave_evidence_failures_total counter\n\
         aver_enclave_evidence_failures_total {}\n\
         # HELP aver_enclave_quotes_total TPM quotes signed (one per batch of challenges).\n\
         # TYPE aver_enclave_quotes_total counter\n\
         aver_enclave_quotes_total {}\n\
         # HELP aver_enclave_challenges_total Challenges answered by those quotes.\n\
         # TYPE aver_enclave_challenges_total counter\n\
         aver_enclave_challenges_total {}\n\
         # HELP aver_enclave_proxied_requests_total Requests forwarded to the inference engine.\n\
         # TYPE aver_enclave_proxied_requests_total counter\n\
         aver_enclave_proxied_requests_total {}\n\
         # HELP aver_enclave_activations_total Credentials the TPM activated for verifiers.\n\
         # TYPE aver_enclave_activations_total counter\n\
         aver_enclave_activations_total {}\n\
         # HELP aver_enclave_activation_refusals_total Credentials the TPM refused to activate.\n\
         # TYPE aver_enclave_activation_refusals_total counter\n\
         aver_enclave_activation_refusals_total {}\n",
        load(&c.evidence_requests),
        load(&c.evidence_failures),
        load(&stats.quotes),
        load(&stats.challenges),
        load(&c.proxied_requests),
        load(&c.activations),
        load(&c.activation_refusals),
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(body::full(text_body))
        .unwrap_or_else(|_| body::error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"))
}

fn text(status: StatusCode, message: &'static str) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body::full(message))
        .unwrap_or_else(|_| Response::new(body::full("")))
}
