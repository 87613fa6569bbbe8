//! Reverse proxy to the OpenAI-compatible inference engine. Bodies stream
//! through in both directions (SSE and chunked answers arrive as the engine
//! produces them) and are never logged.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::body::{self, BoxBody, BoxError};

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Why the upstream URL is unusable.
#[derive(Debug, thiserror::Error)]
#[error("upstream {0:?} must be an http:// URL with host and port, e.g. http://127.0.0.1:8000")]
pub struct BadUpstream(pub String);

/// Forwards requests to one upstream.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, BoxBody>,
    scheme_authority: String,
    authority: String,
    max_request_bytes: usize,
    timeout: Duration,
}

impl Proxy {
    /// The `host:port` of an `http://` upstream URL.
    pub fn check_upstream(upstream: &str) -> Result<String, BadUpstream> {
        let uri: Uri = upstream
            .parse()
            .map_err(|_| BadUpstream(upstream.to_owned()))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(a)) if a.port_u16().is_some() => Ok(a.as_str().to_owned()),
            _ => Err(BadUpstream(upstream.to_owned())),
        }
    }

    pub fn new(
        upstream: &str,
        max_request_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, BadUpstream> {
        let authority = Self::check_upstream(upstream)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            client,
            scheme_authority: format!("http://{authority}"),
            authority,
            max_request_bytes,
            timeout,
        })
    }

    /// `host:port` of the upstream, for readiness checks.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Forwards one request; failures become 413, 502 or 504 responses.
    pub async fn forward(&self, request: Request<Incoming>) -> Response<BoxBody> {
        let (mut parts, incoming) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_request_bytes as u64) {
            // Read (and drop) what the client is sending before answering:
            // a connection closed under a client still writing is reset,
            // and the client sees a write error instead of the 413.
            discard(incoming).await;
            return too_large(self.max_request_bytes);
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = match format!("{}{path}", self.scheme_authority).parse() {
            Ok(uri) => uri,
            Err(_) => return body::error(StatusCode::BAD_REQUEST, "invalid request path"),
        };
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(host) = self.authority.parse() {
            parts.headers.insert(header::HOST, host);
        }
        let limited = Limited::new(incoming, self.max_request_bytes)
            .map_err(BoxError::from)
            .boxed_unsync();
        let upstream = Request::from_parts(parts, limited);

        match tokio::time::timeout(self.timeout, self.client.request(upstream)).await {
            Err(_) => body::error(
                StatusCode::GATEWAY_TIMEOUT,
                "the inference engine did not answer in time",
            ),
            Ok(Err(e)) if exceeded_limit(&e) => too_large(self.max_request_bytes),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upstream request failed");
                body::error(
                    StatusCode::BAD_GATEWAY,
                    "the inference engine is unreachable or failed",
                )
            }
            Ok(Ok(response)) => {
                let (mut parts, incoming) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, incoming.map_err(BoxError::from).boxed_unsync())
            }
        }
    }
}

/// At most this much of a refused body is read before the 413 is sent.
const DISCARD_BYTES: u64 = 64 * 1024 * 1024;
/// And for at most this long.
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads and drops a refused request body, bounded in bytes and time;
/// nothing of it goes anywhere.
async fn discard(mut incoming: Incoming) {
    let mut read = 0u64;
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        while let Some(Ok(frame)) = incoming.frame().await {
            if let Some(data) = frame.data_ref() {
                read += data.len() as u64;
                if read > DISCARD_BYTES {
                    break;
                }
            }
        }
    })
    .await;
}

fn too_large(limit: usize) -> Response<BoxBody> {
    body::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body exceeds the {limit}-byte limit"),
    )
}

fn exceeded_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}
