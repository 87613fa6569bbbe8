//! The attested client: no request byte leaves before the server's TLS key
//! is proven to live in a measured enclave on a trusted TPM
//! (docs/architecture.md#channel-binding).
//!
//! 1. Open TLS to the endpoint, accepting its self-signed certificate
//!    provisionally and noting the key's SPKI digest.
//! 2. On that same connection, `GET /.well-known/aver/evidence?nonce=…` with
//!    a fresh random nonce.
//! 3. Verify the evidence against the policy, bound to (nonce, SPKI). An
//!    AK the policy trusts only through `trust.ekRoots` is first activated
//!    on the same connection (`/.well-known/aver/activate`), once per TPM.
//! 4. Only then send the caller's request, on the same connection, and pin
//!    the SPKI so later connections skip step 2 until the policy's
//!    `maxEvidenceAge` has passed.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

mod activation;
mod connection;
mod error;
mod pins;
pub mod tls;

pub use activation::ActivationMode;
pub use connection::{AttestedConnection, BodyError, Endpoint};
pub use error::ClientError;
pub use pins::{Pin, PinStore};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aver_crds::AttestationPolicy;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use aver_verifier::clock::ClockHistory;
use aver_verifier::ek::ActivationCache;
use aver_verifier::report::VerifiedReport;
use aver_verifier::ValidatedPolicy;

pub use aver_crds::protocol::{ACTIVATE_PATH, EVIDENCE_PATH};

/// An HTTP client that attests every endpoint before use. Cheap to clone;
/// clones share pins and the TPM clock history.
#[derive(Clone)]
pub struct AttestedClient {
    policy: Arc<ValidatedPolicy>,
    max_age: Duration,
    pins: PinStore,
    clocks: Arc<Mutex<ClockHistory>>,
    activations: ActivationCache,
    connect_timeout: Duration,
}

impl AttestedClient {
    /// A client that verifies against `policy` (validated here, so a client
    /// with an unenforceable policy cannot exist).
    pub fn new(policy: AttestationPolicy) -> Result<Self, ClientError> {
        Ok(Self::with_policy(ValidatedPolicy::new(policy)?))
    }

    /// A client that verifies against an already validated policy.
    pub fn with_policy(policy: ValidatedPolicy) -> Self {
        let max_age = policy.max_evidence_age();
        Self {
            policy: Arc::new(policy),
            max_age,
            pins: PinStore::default(),
            clocks: Arc::new(Mutex::new(ClockHistory::new())),
            activations: ActivationCache::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Bounds the TCP connect and the TLS handshake, each (10 seconds unless
    /// set); the evidence exchange is not bounded by it.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The policy every endpoint is verified against.
    pub fn policy(&self) -> &ValidatedPolicy {
        &self.policy
    }

    /// Keys this client attested, each trusted for the policy's
    /// `maxEvidenceAge`; shared by clones, reused by [`Self::connect`].
    pub fn pins(&self) -> &PinStore {
        &self.pins
    }

    /// Activated AKs, one per TPM seen (docs/architecture.md#platform-identity),
    /// shared by clones.
    pub fn activations(&self) -> &ActivationCache {
        &self.activations
    }

    /// Opens a fresh connection and attests it, whatever is pinned, and pins
    /// the verified key. This is what `aver verify` and the controller do.
    /// An AK not in `trust.akNames` is activated against `trust.ekRoots`
    /// once per TPM; later attestations reuse the cached proof.
    pub async fn attest(&self, endpoint: &Endpoint) -> Result<AttestedConnection, ClientError> {
        self.attest_with(endpoint, ActivationMode::IfNeeded(&self.activations))
            .await
    }

    /// [`Self::attest`], activating the AK afresh whatever is cached or
    /// listed (`aver verify --activate`); the policy must have
    /// `trust.ekRoots`.
    pub async fn attest_activating(
        &self,
        endpoint: &Endpoint,
    ) -> Result<AttestedConnection, ClientError> {
        self.attest_with(endpoint, ActivationMode::Always(&self.activations))
            .await
    }

    async fn attest_with(
        &self,
        endpoint: &Endpoint,
        mode: ActivationMode<'_>,
    ) -> Result<AttestedConnection, ClientError> {
        let connection =
            AttestedConnection::attest_with(endpoint, &self.policy, self.connect_timeout, mode)
                .await?;
        if let Some(report) = connection.report() {
            self.observe_clock(report)?;
            self.pins.insert(
                endpoint.authority(),
                Pin::new(
                    report.spki_sha256(),
                    connection.certificate_der().to_vec(),
                    self.max_age,
                ),
            );
        }
        Ok(connection)
    }

    /// A connection to `endpoint` whose key is attested: pinned if a
    /// fresh-enough pin exists, freshly attested otherwise.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<AttestedConnection, ClientError> {
        match self.pins.get_fresh(&endpoint.authority()) {
            Some(pin) => {
                AttestedConnection::pinned(endpoint, vec![pin.spki_sha256], self.connect_timeout)
                    .await
            }
            None => self.attest(endpoint).await,
        }
    }

    /// Sends `request` (absolute `https://` URI) to an attested endpoint and
    /// returns the streaming response: the shape of a hyper client call.
    pub async fn request(
        &self,
        request: Request<http_body_util::Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let endpoint = Endpoint::from_uri(request.uri())?;
        let mut connection = self.connect(&endpoint).await?;
        connection.send(request).await
    }

    fn observe_clock(&self, report: &VerifiedReport) -> Result<(), ClientError> {
        let mut clocks = self
            .clocks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clocks.observe(report).map_err(ClientError::Verify)
    }
}
