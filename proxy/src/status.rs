//! The document `GET /aver/status` serves.

use serde::Serialize;

/// The proxy's view of its upstream.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `https://host:port`, or `cluster:NAMESPACE/NAME`.
    pub upstream: String,
    /// The policy's maxEvidenceAge, in seconds.
    pub max_evidence_age_seconds: f64,
    /// Evidence older than this is refreshed before the connection carries
    /// another request, in seconds.
    pub reattest_after_seconds: f64,
    /// One entry per upstream endpoint (a cluster upstream's current list).
    pub endpoints: Vec<EndpointStatus>,
    /// The most recent failure of any endpoint (or of reading the cluster).
    pub last_error: Option<LastError>,
}

/// One upstream endpoint: whether requests go there, and what its last
/// verified evidence showed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `https://host:port`.
    pub url: String,
    /// Pod and node, when the endpoint came from a ConfidentialModel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The node that pod runs on, likewise only for a ConfidentialModel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The last attestation succeeded, nothing failed since, and its
    /// evidence is younger than maxEvidenceAge.
    pub attested: bool,
    /// Requests are sent here (false for a while after a failure).
    pub in_rotation: bool,
    /// From the last verified evidence.
    pub measurements: Option<Measurements>,
    /// Age of the last verified evidence, in seconds.
    pub evidence_age_seconds: Option<f64>,
    /// When the last evidence was verified (RFC 3339).
    pub last_attested: Option<String>,
    /// The endpoint's connections, against its limit.
    pub pool: PoolStatus,
    /// Its most recent failure to connect or attest; kept after a later
    /// success (see `attested` for the current state).
    pub last_error: Option<LastError>,
}

/// What an endpoint's last verified evidence measured, for a user to
/// compare with what they expect to be served.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurements {
    /// `sha256:…` of the model files the enclave serves.
    pub model: String,
    /// `sha256:…` of the engine image, when the evidence names it.
    pub engine: Option<String>,
    /// Name of the TPM attestation key that signed the quote.
    pub ak_name: String,
    /// `sha256:…` of the enclave's TLS key (SubjectPublicKeyInfo).
    pub tls_spki: String,
    /// Enclave launches on the node since it booted, as the verified log
    /// counts them.
    pub launches_since_boot: usize,
}

/// An endpoint's connection pool, to tell a saturated endpoint from a
/// failing one.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Attested connections waiting for a request.
    pub idle: usize,
    /// Connections leased to a request, including ones still being
    /// connected and attested for it.
    pub busy: usize,
    /// The endpoint's limit,
    /// [`ProxyConfig::max_connections_per_endpoint`](crate::ProxyConfig::max_connections_per_endpoint);
    /// `busy` never exceeds it.
    pub max: usize,
}

/// A failure, as an operator needs it to find the cause.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// The `x-aver-error` label.
    pub reason: String,
    /// The error, on one line.
    pub message: String,
    /// When it happened (RFC 3339).
    pub at: String,
    /// The endpoint that failed; absent when no endpoint was involved
    /// (reading the cluster, or no endpoint known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl ProxyStatus {
    /// The pretty-printed body `GET /aver/status` serves; `{}` should it ever
    /// fail to serialize.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }
}
