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
    pub endpoints: Vec<EndpointStatus>,
    /// The most recent failure of any endpoint (or of reading the cluster).
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `https://host:port`.
    pub url: String,
    /// Pod and node, when the endpoint came from a ConfidentialModel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
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
    pub pool: PoolStatus,
    pub last_error: Option<LastError>,
}

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
    pub launches_since_boot: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub idle: usize,
    pub busy: usize,
    pub max: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// The `x-aver-error` label.
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl ProxyStatus {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }
}
