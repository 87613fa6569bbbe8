//! The wire and command-line contract between the controller, the enclave
//! and clients, written once: the controller renders pods that call the
//! enclave with these flags and probe these paths, and clients fetch these
//! paths. A rename here moves every side together; a rename on one side only
//! would otherwise ship pods that fail to start or clients that 404.

/// Evidence endpoint every enclave serves (`GET ?nonce=<64 hex>`).
pub const EVIDENCE_PATH: &str = "/.well-known/aver/evidence";

/// Credential activation endpoint (GET: the offer, POST: the activation).
pub const ACTIVATE_PATH: &str = "/.well-known/aver/activate";

/// Prefix of every aver-defined endpoint; anything else is proxied upstream.
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/aver/";

/// Liveness: the process serves. Never depends on the TPM or the engine.
pub const HEALTHZ_PATH: &str = "/healthz";

/// Readiness: the enclave can produce evidence and the engine answers.
pub const READYZ_PATH: &str = "/readyz";

/// Prometheus metrics, served by the enclave and the controller.
pub const METRICS_PATH: &str = "/metrics";

/// Port the enclave's TLS listener binds in rendered pods.
pub const ENCLAVE_PORT: u16 = 8443;

/// Long flag names of `aver-enclave serve` that the controller renders.
/// Without the leading `--`, as clap's `long = …` takes them; render with
/// [`flag`].
pub mod enclave_flags {
    /// Address the enclave's TLS listener binds (see [`ENCLAVE_PORT`](super::ENCLAVE_PORT)).
    pub const LISTEN: &str = "listen";
    /// URL of the OpenAI-compatible inference engine requests are proxied to.
    pub const UPSTREAM: &str = "upstream";
    /// Unix socket of aver-node; with it the enclave opens no TPM and serves
    /// node-measured evidence (v2).
    pub const NODE_AGENT: &str = "node-agent";
    /// Directory of the model files the enclave measures.
    pub const MODEL_DIR: &str = "model-dir";
    /// TPM to use in local TPM mode: `device:<path>` or `swtpm:host=…,port=…`.
    pub const TCTI: &str = "tcti";
    /// Digest of the inference engine image (`sha256:<64 hex>`); in `serve`,
    /// local TPM mode only.
    pub const ENGINE_DIGEST: &str = "engine-digest";
    /// Directory holding the workload event log across restarts.
    pub const STATE_DIR: &str = "state-dir";
    /// PCR the launch is measured into (11 to 15).
    pub const WORKLOAD_PCR: &str = "workload-pcr";
    /// PCRs every quote covers, e.g. `0-7,15`.
    pub const QUOTE_PCRS: &str = "quote-pcrs";
    /// Serving configuration file the enclave measures (absent: the SHA-256 of
    /// the empty string).
    pub const SERVING_CONFIG: &str = "serving-config";
    /// Seconds open requests may run on after SIGTERM; keep the pod's
    /// terminationGracePeriodSeconds above it.
    pub const DRAIN_TIMEOUT_SECS: &str = "drain-timeout-secs";
}

/// `name` as a command-line argument: `--name`.
pub fn flag(name: &str) -> String {
    format!("--{name}")
}
