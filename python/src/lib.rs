//! `aver._native`: the Rust verifier and proxy behind the `aver` Python
//! package. Python code uses the wrappers in `aver/` (which resolve policy
//! paths and build the httpx clients); this module does the work:
//!
//! - [`verify`]: attest one endpoint with `aver_client` (fresh
//!   nonce, evidence bound to the TLS connection) and return a [`Report`];
//! - [`Proxy`]: an `aver_proxy::Proxy` on a private unix socket, served by
//!   its own background tokio runtime until closed.
//!
//! Every failure is raised as one of the exceptions of `aver.errors`
//! (`AttestationError`, `PolicyError`, `ConnectError`, `AverError`), with
//! the verifier's reason label (`VerifyError::reason`,
//! `ClientError::reason`) as its `reason`. The GIL is released while
//! network and TPM evidence work runs.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aver_client::{AttestedClient, ClientError, Endpoint};
use aver_crds::AttestationPolicy;
use aver_proxy::{Listen, ProxyConfig, ProxyError, Upstream};
use aver_verifier::report::{MeasuredBy, VerifiedReport};
use aver_verifier::{ValidatedPolicy, VerifyError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// How long `close()` waits for requests in flight before it stops the
/// proxy's runtime regardless.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// An exception of `aver.errors` (`class_name(message, reason)`).
fn aver_error(py: Python<'_>, class_name: &str, reason: &str, message: &str) -> PyErr {
    let made = py
        .import("aver.errors")
        .and_then(|module| module.getattr(class_name))
        .and_then(|class| class.call1((message, reason)));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(e) => e,
    }
}

/// The Python exception class for a reason label, as the httpx transports
/// map the proxy's `x-aver-error` header (`aver/_httpx.py`): the same
/// failure raises the same exception on both paths.
fn class_for_reason(reason: &str) -> &'static str {
    match reason {
        "policy-invalid" => "PolicyError",
        "unreachable" => "ConnectError",
        "request" => "AverError",
        _ => "AttestationError",
    }
}

fn client_error(py: Python<'_>, error: &ClientError) -> PyErr {
    let reason = error.reason();
    aver_error(py, class_for_reason(reason), reason, &error.to_string())
}

fn proxy_error(py: Python<'_>, error: &ProxyError) -> PyErr {
    let message = error.to_string();
    match error {
        ProxyError::Policy(e) => aver_error(py, "PolicyError", e.reason(), &message),
        ProxyError::BadUpstream(_) => aver_error(py, "AverError", "request", &message),
        ProxyError::Cluster(_) => aver_error(py, "ConnectError", "cluster", &message),
        _ => aver_error(py, "AverError", "proxy", &message),
    }
}

fn policy_error(py: Python<'_>, message: &str) -> PyErr {
    aver_error(py, "PolicyError", "policy-invalid", message)
}

/// Parses and validates a policy (YAML or JSON text), its trust anchors
/// parsed too; `source` names it in errors (a file path, or "policy text").
fn parse_policy(py: Python<'_>, text: &str, source: &str) -> PyResult<ValidatedPolicy> {
    let policy = AttestationPolicy::from_yaml(text)
        .map_err(|e| policy_error(py, &format!("{source}: {e}")))?;
    ValidatedPolicy::new(policy).map_err(|e| {
        let message = match &e {
            VerifyError::Policy(inner) => format!("{source}: {inner}"),
            other => format!("{source}: {other}"),
        };
        policy_error(py, &message)
    })
}

fn seconds(py: Python<'_>, value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        aver_error(
            py,
            "AverError",
            "request",
            &format!("{what} must be a non-negative number of seconds, not {value}"),
        )
    })
}

fn runtime(py: Python<'_>, threads: Option<usize>) -> PyResult<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n).thread_name("aver-proxy");
            builder
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all().build().map_err(|e| {
        aver_error(
            py,
            "AverError",
            "runtime",
            &format!("cannot start the async runtime: {e}"),
        )
    })
}

/// What a verification established about an endpoint: the measurements the
/// TPM quote vouches for, bound to the TLS key the endpoint presented.
#[pyclass(frozen, module = "aver._native", name = "Report")]
struct Report {
    /// `host:port` of the attested endpoint.
    #[pyo3(get)]
    endpoint: String,
    /// When verification completed (RFC 3339, UTC).
    #[pyo3(get)]
    verified_at: String,
    /// Seconds between sending the fresh nonce and accepting the evidence
    /// that answered it: an upper bound on the quote's age.
    #[pyo3(get)]
    evidence_age: f64,
    /// The policy's `maxEvidenceAge` in seconds: how long a client may rely
    /// on this verification before attesting again.
    #[pyo3(get)]
    max_evidence_age: f64,
    /// TPM name of the attestation key that signed the quote.
    #[pyo3(get)]
    ak_name: String,
    /// SHA-256 of the TLS key (SubjectPublicKeyInfo) the evidence is bound to.
    #[pyo3(get)]
    spki_sha256: String,
    /// Model digest the enclave measured.
    #[pyo3(get)]
    model_digest: String,
    /// Engine image digest (enclave-measured evidence; node-measured
    /// evidence names every container's image in `containers`).
    #[pyo3(get)]
    engine_digest: Option<String>,
    /// Serving configuration digest (enclave-measured evidence).
    #[pyo3(get)]
    serving_config_digest: Option<String>,
    /// `"node"` (aver-node measured the pod) or `"enclave"`.
    #[pyo3(get)]
    measured_by: String,
    /// The attested pod, `namespace/name` (node-measured evidence).
    #[pyo3(get)]
    pod: Option<String>,
    /// Container name to image digest (node-measured evidence).
    #[pyo3(get)]
    containers: BTreeMap<String, String>,
    /// Boot PCR index to the value checked against the policy.
    #[pyo3(get)]
    boot_pcrs: BTreeMap<u8, String>,
    /// The workload PCR whose log was replayed.
    #[pyo3(get)]
    workload_pcr: u8,
    /// Its quoted value.
    #[pyo3(get)]
    workload_pcr_value: String,
    /// The nonce the quote answered (hex).
    #[pyo3(get)]
    nonce: String,
    /// Evidence format version.
    #[pyo3(get)]
    evidence_version: u32,
    /// Enclave launches (or TLS key registrations) since the TPM's boot.
    #[pyo3(get)]
    launches_since_boot: usize,
    /// SHA-1 was relied on, accepted only by `trust.allowSha1`.
    #[pyo3(get)]
    weak_hash: bool,
    /// The complete report as JSON (what `aver verify --json` prints).
    json: String,
}

impl Report {
    fn new(
        endpoint: &Endpoint,
        report: &VerifiedReport,
        evidence_age: Duration,
        max_evidence_age: Duration,
    ) -> Self {
        let verified_at = jiff::Timestamp::now().to_string();
        let (measured_by, pod, containers) = match &report.measured_by() {
            MeasuredBy::Node {
                pod, containers, ..
            } => (
                "node",
                Some(pod.clone()),
                containers
                    .iter()
                    .map(|c| (c.name.clone(), c.image.clone()))
                    .collect(),
            ),
            MeasuredBy::Enclave { .. } => ("enclave", None, BTreeMap::new()),
            _ => ("unknown", None, BTreeMap::new()),
        };
        let json = serde_json::json!({
            "endpoint": endpoint.authority(),
            "verifiedAt": verified_at,
            "evidenceAgeSeconds": evidence_age.as_secs_f64(),
            "maxEvidenceAgeSeconds": max_evidence_age.as_secs_f64(),
            "report": report,
        })
        .to_string();
        Self {
            endpoint: endpoint.authority(),
            verified_at,
            evidence_age: evidence_age.as_secs_f64(),
            max_evidence_age: max_evidence_age.as_secs_f64(),
            ak_name: report.ak_name().to_owned(),
            spki_sha256: report.spki_sha256().to_string(),
            model_digest: report.launch().model().to_string(),
            engine_digest: report.launch().engine().map(|d| d.to_string()),
            serving_config_digest: report.launch().serving_config().map(|d| d.to_string()),
            measured_by: measured_by.to_owned(),
            pod,
            containers,
            boot_pcrs: report
                .boot_pcrs()
                .iter()
                .map(|p| (p.pcr, p.value.to_string()))
                .collect(),
            workload_pcr: report.workload_pcr().pcr,
            workload_pcr_value: report.workload_pcr().value.to_string(),
            nonce: report.nonce().to_hex(),
            evidence_version: report.evidence_version(),
            launches_since_boot: report.launches_since_boot(),
            weak_hash: report.weak_hash(),
            json,
        }
    }
}

#[pymethods]
impl Report {
    /// The complete report as plain data (JSON types): `endpoint`,
    /// `verifiedAt`, `evidenceAgeSeconds`, `maxEvidenceAgeSeconds` and
    /// `report`, the verifier's report as `aver verify --json` prints it.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        py.import("json")?
            .call_method1("loads", (&self.json,))?
            .cast_into::<PyDict>()
            .map_err(Into::into)
    }

    /// The same document as a JSON string.
    fn to_json(&self) -> String {
        self.json.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Report(endpoint={:?}, model_digest={:?}, ak_name={:?}, spki_sha256={:?})",
            self.endpoint, self.model_digest, self.ak_name, self.spki_sha256
        )
    }
}

/// Attests `url` (`https://host:port`) against a policy given as YAML or
/// JSON text (`source` names it in errors), on a fresh TLS connection with
/// a fresh nonce. Sends nothing but the evidence request.
#[pyfunction]
#[pyo3(signature = (url, policy_text, *, source = "policy text", connect_timeout = 10.0))]
fn verify(
    py: Python<'_>,
    url: &str,
    policy_text: &str,
    source: &str,
    connect_timeout: f64,
) -> PyResult<Report> {
    let policy = parse_policy(py, policy_text, source)?;
    let timeout = seconds(py, connect_timeout, "connect_timeout")?;
    let endpoint = Endpoint::from_url(url).map_err(|e| client_error(py, &e))?;
    let client = AttestedClient::with_policy(policy).with_connect_timeout(timeout);
    let max_age = client.policy().max_evidence_age();
    let runtime = runtime(py, None)?;
    let target = endpoint.clone();
    let outcome = py.detach(move || {
        let started = Instant::now();
        runtime.block_on(async move {
            let connection = client.attest(&target).await?;
            Ok::<_, ClientError>((connection.report().cloned(), started.elapsed()))
        })
    });
    match outcome {
        Ok((Some(report), age)) => Ok(Report::new(&endpoint, &report, age, max_age)),
        Ok((None, _)) => Err(aver_error(
            py,
            "AttestationError",
            "evidence-fetch",
            "attestation produced no report",
        )),
        Err(e) => Err(client_error(py, &e)),
    }
}

/// A running proxy: its runtime, how to stop it, and its socket directory.
struct Running {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ProxyError>>,
    /// Removed (with the socket) when dropped.
    _dir: tempfile::TempDir,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (up to
    /// [`CLOSE_GRACE`]), then stops the runtime.
    fn stop(self) -> Option<ProxyError> {
        let Running {
            runtime,
            stop,
            task,
            _dir,
        } = self;
        let _ = stop.send(());
        let outcome = runtime.block_on(async { tokio::time::timeout(CLOSE_GRACE, task).await });
        runtime.shutdown_timeout(Duration::from_secs(1));
        match outcome {
            Ok(Ok(Err(e))) => Some(e),
            _ => None,
        }
    }
}

/// An `aver_proxy::Proxy` on a unix socket in a private temporary directory
/// (mode 0700; the socket itself 0600), running on a background tokio
/// runtime until `close()`. Plain HTTP/1.1 on the socket; every request
/// goes only over a TLS connection attested against the policy.
#[pyclass(frozen, module = "aver._native", name = "Proxy")]
struct Proxy {
    socket_path: PathBuf,
    upstream: String,
    running: Mutex<Option<Running>>,
}

#[pymethods]
impl Proxy {
    /// Starts a proxy to `endpoint` (`https://host:port`) or to the verified
    /// endpoints of the ConfidentialModel `cluster = (name, namespace)`.
    #[new]
    #[pyo3(signature = (policy_text, *, source = "policy text", endpoint = None, cluster = None, connect_timeout = 10.0, kubeconfig = None, kube_context = None, threads = 2))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        policy_text: &str,
        source: &str,
        endpoint: Option<String>,
        cluster: Option<(String, String)>,
        connect_timeout: f64,
        kubeconfig: Option<PathBuf>,
        kube_context: Option<String>,
        threads: usize,
    ) -> PyResult<Self> {
        let policy = parse_policy(py, policy_text, source)?.into_policy();
        let timeout = seconds(py, connect_timeout, "connect_timeout")?;
        let (upstream, described) = match (endpoint, cluster) {
            (Some(url), None) => (Upstream::Url(url.clone()), url),
            #[cfg(feature = "cluster")]
            (None, Some((name, namespace))) => (
                Upstream::Cluster {
                    name: name.clone(),
                    namespace: namespace.clone(),
                },
                format!("ConfidentialModel {namespace}/{name}"),
            ),
            #[cfg(not(feature = "cluster"))]
            (None, Some(_)) => {
                return Err(aver_error(
                    py,
                    "AverError",
                    "request",
                    "this build of aver has no cluster support (the `cluster` feature)",
                ))
            }
            _ => {
                return Err(aver_error(
                    py,
                    "AverError",
                    "request",
                    "give exactly one of endpoint= or cluster=(name, namespace)",
                ))
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("aver-")
            .tempdir()
            .and_then(|dir| {
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
                Ok(dir)
            })
            .map_err(|e| {
                aver_error(
                    py,
                    "AverError",
                    "proxy",
                    &format!("cannot create a private directory for the proxy socket: {e}"),
                )
            })?;
        let socket_path = dir.path().join("proxy.sock");
        let config = ProxyConfig::new(policy, upstream, Listen::Unix(socket_path.clone()))
            .with_connect_timeout(timeout);
        #[cfg(feature = "cluster")]
        let config = config.with_kubeconfig(kubeconfig, kube_context);
        #[cfg(not(feature = "cluster"))]
        let _ = (kubeconfig, kube_context);
        let runtime = runtime(py, Some(threads.max(1)))?;
        let bound = py.detach(|| runtime.block_on(aver_proxy::Proxy::bind(config)));
        let proxy = bound.map_err(|e| proxy_error(py, &e))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            proxy
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            socket_path,
            upstream: described,
            running: Mutex::new(Some(Running {
                runtime,
                stop,
                task,
                _dir: dir,
            })),
        })
    }

    /// Path of the proxy's unix socket.
    #[getter]
    fn socket_path(&self) -> String {
        self.socket_path.display().to_string()
    }

    /// The upstream: the endpoint URL, or the ConfidentialModel.
    #[getter]
    fn upstream(&self) -> String {
        self.upstream.clone()
    }

    /// Whether `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.lock().is_none()
    }

    /// Stops the proxy (requests in flight get a few seconds to finish),
    /// its runtime, and removes the socket and its directory. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let Some(running) = self.lock().take() else {
            return Ok(());
        };
        match py.detach(move || running.stop()) {
            Some(e) => Err(proxy_error(py, &e)),
            None => Ok(()),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Proxy(upstream={:?}, socket_path={:?}, closed={})",
            self.upstream,
            self.socket_path.display().to_string(),
            self.closed()
        )
    }
}

impl Proxy {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(running) = self.lock().take() {
            let _ = running.stop();
        }
    }
}

/// The native module of the `aver` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_class::<Report>()?;
    m.add_class::<Proxy>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
