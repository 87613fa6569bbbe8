//! The HTTP/1.1 server on the agent socket.
//!
//! Each connection is identified once, when it is accepted (`SO_PEERCRED`
//! gives the PID of the process that connected, `/proc/<pid>/cgroup` its
//! container), and every request on it is made as that [`Caller`].

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aver_serve::Accepting;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};

use super::cgroup::container_id_from_cgroup;
use super::protocol::{
    ErrorBody, QuoteRequest, TlsKeyRequest, MAX_REQUEST_BYTES, QUOTE_PATH, TLS_KEY_PATH,
};
use super::{Agent, AgentError, Caller};

/// Permissions of the agent socket: any user may connect (the enclave runs
/// as non-root), since callers are identified by the kernel, not by who may
/// open the socket.
pub const SOCKET_MODE: u32 = 0o666;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent socket server: an [`Agent`] and where to look callers up.
pub struct AgentServer {
    agent: Arc<dyn Agent>,
    proc_root: PathBuf,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("proc_root", &self.proc_root)
            .finish_non_exhaustive()
    }
}

impl AgentServer {
    /// A server for `agent`, identifying callers through `/proc`.
    pub fn new(agent: Arc<dyn Agent>) -> Self {
        Self {
            agent,
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// Looks callers up under another procfs mount (e.g. the host's `/proc`
    /// mounted into a container at `/host/proc`).
    pub fn with_proc_root(mut self, proc_root: impl Into<PathBuf>) -> Self {
        self.proc_root = proc_root.into();
        self
    }

    /// Binds the agent socket at `path` (mode [`SOCKET_MODE`]).
    pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
        crate::unix::bind(path, SOCKET_MODE)
    }

    /// Serves connections from `listener` until `shutdown` completes, then
    /// lets requests in flight finish.
    pub async fn run(self, listener: UnixListener, shutdown: impl Future<Output = ()>) {
        let server = Arc::new(self);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut accepting = Accepting::new("agent socket");
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = accepting.next(|| listener.accept()) => accepted,
                () = &mut shutdown => break,
            };
            let this = Arc::clone(&server);
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let Some(caller) = this.identify(&stream).await else {
                    return;
                };
                let handler = Arc::clone(&this);
                let service = service_fn(move |request: Request<Incoming>| {
                    let handler = Arc::clone(&handler);
                    let caller = caller.clone();
                    async move { Ok::<_, Infallible>(handler.handle(request, caller).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = watcher.watch(connection).await {
                    tracing::debug!(%error, "agent socket: connection ended with an error");
                }
            });
        }
        graceful.shutdown().await;
    }

    /// The caller on `stream`, or `None` (and the connection is dropped) if
    /// the kernel does not say who it is.
    async fn identify(&self, stream: &UnixStream) -> Option<Caller> {
        let pid = match stream.peer_cred().map(|cred| cred.pid()) {
            Ok(Some(pid)) if pid > 0 => pid.unsigned_abs(),
            Ok(_) => {
                tracing::warn!(
                    "agent socket: peer has no PID (another PID namespace?); connection dropped"
                );
                return None;
            }
            Err(error) => {
                tracing::warn!(%error, "agent socket: SO_PEERCRED failed; connection dropped");
                return None;
            }
        };
        let cgroup_path = self.proc_root.join(pid.to_string()).join("cgroup");
        let container_id = match tokio::fs::read_to_string(&cgroup_path).await {
            Ok(text) => container_id_from_cgroup(&text),
            Err(error) => {
                tracing::debug!(pid, %error, "agent socket: cannot read the caller's cgroup");
                None
            }
        };
        tracing::debug!(
            pid,
            container_id = container_id.as_deref(),
            "agent socket: connection"
        );
        Some(Caller { pid, container_id })
    }

    async fn handle(&self, request: Request<Incoming>, caller: Caller) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let result = match (request.method(), path.as_str()) {
            (&Method::POST, TLS_KEY_PATH) => match read_json::<TlsKeyRequest>(request).await {
                Ok(body) => self
                    .agent
                    .register_tls_key(caller.clone(), body)
                    .await
                    .map(|()| empty(StatusCode::NO_CONTENT))
                    .map_err(Refusal::from),
                Err(refusal) => Err(refusal),
            },
            (&Method::POST, QUOTE_PATH) => match read_json::<QuoteRequest>(request).await {
                Ok(body) => self
                    .agent
                    .quote(caller.clone(), body.qualifying_data.0)
                    .await
                    .map(|quote| json(StatusCode::OK, &quote))
                    .map_err(Refusal::from),
                Err(refusal) => Err(refusal),
            },
            (_, TLS_KEY_PATH | QUOTE_PATH) => Err(Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: format!("{path} takes POST"),
            }),
            _ => Err(Refusal {
                status: StatusCode::NOT_FOUND,
                message: format!("no such endpoint {path}"),
            }),
        };
        match result {
            Ok(response) => response,
            Err(refusal) => {
                if refusal.status.is_server_error() {
                    tracing::error!(
                        path,
                        pid = caller.pid,
                        container_id = caller.container_id.as_deref(),
                        status = refusal.status.as_u16(),
                        error = refusal.message,
                        "agent request failed"
                    );
                } else {
                    tracing::warn!(
                        path,
                        pid = caller.pid,
                        container_id = caller.container_id.as_deref(),
                        status = refusal.status.as_u16(),
                        error = refusal.message,
                        "agent request refused"
                    );
                }
                let mut response = json(
                    refusal.status,
                    &ErrorBody {
                        error: refusal.message,
                    },
                );
                if refusal.status == StatusCode::METHOD_NOT_ALLOWED {
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST"));
                }
                response
            }
        }
    }
}

/// Serves `agent` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    agent: Arc<dyn Agent>,
    shutdown: impl Future<Output = ()>,
) {
    AgentServer::new(agent).run(listener, shutdown).await;
}

/// An error answer: status and one line.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl From<AgentError> for Refusal {
    fn from(error: AgentError) -> Self {
        Self {
            status: error.status(),
            message: error.to_string(),
        }
    }
}

/// The body parsed as `T`, at most [`MAX_REQUEST_BYTES`] of it.
async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, Refusal> {
    let too_large = || Refusal {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body exceeds {MAX_REQUEST_BYTES} bytes"),
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_REQUEST_BYTES as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return Err(too_large()),
        Err(error) => {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                message: format!("cannot read the request body: {error}"),
            })
        }
    };
    serde_json::from_slice(&body).map_err(|error| Refusal {
        status: StatusCode::BAD_REQUEST,
        message: format!("invalid request body: {error}"),
    })
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode an agent response");
            empty(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
