//! One TLS connection to an enclave, attested or pinned.

use std::sync::Arc;
use std::time::Duration;

use aver_crds::Sha256Digest;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::activation::{self, ActivationMode, Exchange};
use crate::error::ClientError;
use crate::tls::{self, KeyAcceptance};
use crate::EVIDENCE_PATH;
use aver_verifier::binding::spki_sha256;
use aver_verifier::binding::Nonce;
use aver_verifier::ek::{
    ActivatedAk, ActivationCache, ActivationError, ActivationOffer, TrustAnchors,
};
use aver_verifier::evidence::{Evidence, MAX_EVIDENCE_BYTES};
use aver_verifier::report::VerifiedReport;
use aver_verifier::verify::{verify_activated, Challenge};
use aver_verifier::ValidatedPolicy;

/// Where an enclave listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// DNS name or IP address (IPv6 without brackets); also the TLS server
    /// name.
    pub host: String,
    /// TCP port of the enclave's TLS listener.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint from its parts, for callers that do not start from a URL.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    /// From an `https://host:port/...` URL (port defaults to 443).
    pub fn from_url(url: &str) -> Result<Self, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| ClientError::BadEndpoint(url.to_owned()))?;
        Self::from_uri(&uri)
    }

    /// [`Self::from_url`] for an already parsed URI, such as a request's;
    /// anything but `https` is a [`ClientError::BadEndpoint`].
    pub fn from_uri(uri: &Uri) -> Result<Self, ClientError> {
        let bad = || ClientError::BadEndpoint(uri.to_string());
        if uri.scheme_str() != Some("https") {
            return Err(bad());
        }
        let host = uri.host().ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Self::new(host, uri.port_u16().unwrap_or(443)))
    }

    /// `host:port`, with IPv6 hosts bracketed.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Error type of request bodies [`AttestedConnection::send`] accepts.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What goes over the wire: any body, so that a caller (a proxy) can stream
/// a request body instead of buffering it.
type WireBody = UnsyncBoxBody<Bytes, BodyError>;

/// An open TLS connection whose server key has been attested (or matches a
/// pin from an earlier attestation). Requests go over this very connection.
pub struct AttestedConnection {
    endpoint: Endpoint,
    sender: SendRequest<WireBody>,
    certificate_der: Vec<u8>,
    spki_sha256: Sha256Digest,
    report: Option<VerifiedReport>,
}

impl std::fmt::Debug for AttestedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestedConnection")
            .field("endpoint", &self.endpoint)
            .field("spki_sha256", &self.spki_sha256)
            .field("attested_now", &self.report.is_some())
            .finish()
    }
}

impl AttestedConnection {
    /// Connects, fetches evidence over the new connection with a fresh
    /// nonce, and verifies it against `policy` bound to this connection's key.
    ///
    /// An AK that `trust.akNames` does not list is activated on this
    /// connection when the policy has `trust.ekRoots` (the proof is not
    /// kept: use [`Self::attest_with`] with a shared cache to activate each
    /// TPM once).
    pub async fn attest(
        endpoint: &Endpoint,
        policy: &ValidatedPolicy,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let cache = ActivationCache::default();
        Self::attest_with(endpoint, policy, timeout, ActivationMode::IfNeeded(&cache)).await
    }

    /// [`Self::attest`], with credential activation of the AK as `mode`
    /// says: the evidence is fetched first, then (if needed) the AK is
    /// activated over this same connection, then the evidence is verified
    /// with the activation proof.
    pub async fn attest_with(
        endpoint: &Endpoint,
        policy: &ValidatedPolicy,
        timeout: Duration,
        mode: ActivationMode<'_>,
    ) -> Result<Self, ClientError> {
        let mut connection = Self::open(endpoint, KeyAcceptance::ToBeAttested, timeout).await?;
        let nonce = Nonce::random();
        let evidence = connection.fetch_evidence(&nonce).await?;
        let challenge = Challenge {
            nonce,
            spki_sha256: connection.spki_sha256,
        };
        let activated =
            activation::activation_for(&mut connection, &evidence, policy, mode).await?;
        let report = verify_activated(&evidence, &challenge, policy, activated.as_ref())?;
        tracing::debug!(endpoint = %endpoint.authority(), spki = %report.spki_sha256(), "endpoint attested");
        connection.report = Some(report);
        Ok(connection)
    }

    /// Attests this connection again with a fresh nonce, without a new
    /// handshake: what a long-lived client (or the controller) does when the
    /// previous evidence reaches its maximum age.
    pub async fn reattest(
        &mut self,
        policy: &ValidatedPolicy,
    ) -> Result<&VerifiedReport, ClientError> {
        let nonce = Nonce::random();
        let evidence = self.fetch_evidence(&nonce).await?;
        let challenge = Challenge {
            nonce,
            spki_sha256: self.spki_sha256,
        };
        // The AK cannot change on a live connection's enclave; its
        // activation proof (if that is how it was trusted) still holds.
        let activated = self.report.as_ref().and_then(|r| r.activation().cloned());
        let report = verify_activated(&evidence, &challenge, policy, activated.as_ref())?;
        Ok(self.report.insert(report))
    }

    /// Trust on first use: fetches evidence for a fresh nonce over a new
    /// connection *without* a policy, and checks only that it answers this
    /// nonce and is bound to this connection's key. For `aver policy init
    /// --from`, which derives a policy from it; nothing else may use the
    /// result as verified.
    pub async fn capture_unverified(
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<Evidence, ClientError> {
        let mut connection = Self::open(endpoint, KeyAcceptance::ToBeAttested, timeout).await?;
        let nonce = Nonce::random();
        let evidence = connection.fetch_evidence(&nonce).await?;
        if evidence.nonce != nonce {
            return Err(aver_verifier::VerifyError::NonceMismatch {
                found: evidence.nonce.to_hex(),
            }
            .into());
        }
        if evidence.spki_sha256 != connection.spki_sha256 {
            return Err(aver_verifier::VerifyError::SpkiMismatch {
                expected: connection.spki_sha256,
                found: evidence.spki_sha256,
            }
            .into());
        }
        Ok(evidence)
    }

    /// Connects to an endpoint whose key was attested before; the handshake
    /// fails unless the server presents one of `pins`.
    pub async fn pinned(
        endpoint: &Endpoint,
        pins: Vec<Sha256Digest>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::open(endpoint, KeyAcceptance::Pinned(pins), timeout).await
    }

    async fn open(
        endpoint: &Endpoint,
        accept: KeyAcceptance,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let authority = endpoint.authority();
        let tcp = tokio::time::timeout(
            timeout,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| ClientError::ConnectTimeout(authority.clone()))?
        .map_err(|source| ClientError::Connect {
            endpoint: authority.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(endpoint.host.clone())
            .map_err(|_| ClientError::BadEndpoint(authority.clone()))?;
        let connector = TlsConnector::from(Arc::new(tls::config(accept)));
        let tls = tokio::time::timeout(timeout, connector.connect(server_name, tcp))
            .await
            .map_err(|_| ClientError::ConnectTimeout(authority.clone()))?
            .map_err(|source| ClientError::Tls {
                endpoint: authority.clone(),
                source,
            })?;
        let certificate_der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| ClientError::Certificate {
                endpoint: authority.clone(),
                reason: "no certificate".into(),
            })?;
        let spki_sha256 = spki_sha256(&certificate_der).map_err(|e| ClientError::Certificate {
            endpoint: authority.clone(),
            reason: e.to_string(),
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| ClientError::Http {
                endpoint: authority.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "attested connection closed");
            }
        });
        Ok(Self {
            endpoint: endpoint.clone(),
            sender,
            certificate_der,
            spki_sha256,
            report: None,
        })
    }

    async fn fetch_evidence(&mut self, nonce: &Nonce) -> Result<Evidence, ClientError> {
        let authority = self.endpoint.authority();
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("{EVIDENCE_PATH}?nonce={}", nonce.to_hex()))
            .header(header::HOST, &authority)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let response = self.send_raw(request).await?;
        if response.status() != StatusCode::OK {
            return Err(ClientError::EvidenceStatus {
                endpoint: authority,
                status: response.status(),
            });
        }
        let body = Limited::new(response.into_body(), MAX_EVIDENCE_BYTES)
            .collect()
            .await
            .map_err(|_| ClientError::EvidenceTooLarge {
                endpoint: authority.clone(),
                limit: MAX_EVIDENCE_BYTES,
            })?
            .to_bytes();
        Evidence::from_json(&body).map_err(|e| ClientError::Verify(e.into()))
    }

    /// Sends a request on this connection. An absolute URI is reduced to its
    /// path and query (the connection already fixes the server), and `Host`
    /// is set when missing. The body may be any [`hyper::body::Body`]
    /// (`Full<Bytes>`, or a streamed one): it is polled only as hyper
    /// writes it out.
    pub async fn send<B>(
        &mut self,
        mut request: Request<B>,
    ) -> Result<Response<Incoming>, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        *request.uri_mut() = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::Request(e.to_string()))?;
        if !request.headers().contains_key(header::HOST) {
            let host = self.endpoint.authority().parse().map_err(
                |e: http::header::InvalidHeaderValue| ClientError::Request(e.to_string()),
            )?;
            request.headers_mut().insert(header::HOST, host);
        }
        self.send_wire(request.map(|b| b.map_err(Into::into).boxed_unsync()))
            .await
    }

    /// Activates the enclave's AK against the EK roots `roots` (a PEM
    /// bundle, the policy's `trust.ekRoots`), on this connection.
    pub async fn activate(&mut self, roots: &str) -> Result<ActivatedAk, ClientError> {
        let anchors = TrustAnchors::from_pem(roots)
            .map_err(|e| aver_verifier::VerifyError::from(ActivationError::BadRoots(e)))?;
        activation::activate(self, anchors).await
    }

    /// The enclave's activation offer (`GET /.well-known/aver/activate`).
    pub async fn activation_offer(&mut self) -> Result<ActivationOffer, ClientError> {
        activation::activation_offer(self).await
    }

    /// True once the connection can carry no more requests (the server
    /// closed it, or it failed): a pool drops such a connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    async fn send_wire(
        &mut self,
        request: Request<WireBody>,
    ) -> Result<Response<Incoming>, ClientError> {
        let endpoint = self.endpoint.authority();
        self.sender
            .ready()
            .await
            .map_err(|source| ClientError::Http {
                endpoint: endpoint.clone(),
                source,
            })?;
        self.sender
            .send_request(request)
            .await
            .map_err(|source| ClientError::Http { endpoint, source })
    }

    /// The verification report, when this connection was attested (not pinned).
    pub fn report(&self) -> Option<&VerifiedReport> {
        self.report.as_ref()
    }

    /// The server's leaf certificate (DER), kept so that callers can pin or
    /// hand on exactly the key that was attested.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// SHA-256 of the server's SubjectPublicKeyInfo: what evidence is bound
    /// to and what a pin names.
    pub fn spki_sha256(&self) -> Sha256Digest {
        self.spki_sha256
    }

    /// Where this connection goes; its authority is what pins are keyed by.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Exchange for AttestedConnection {
    fn authority(&self) -> String {
        self.endpoint.authority()
    }

    async fn send_raw(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.send_wire(request.map(|b| b.map_err(|never| match never {}).boxed_unsync()))
            .await
    }
}
