//! The attested-TLS measurements with a TPM as slow as a hardware one:
//! swtpm behind a [`SlowTpm`] relay. Every figure is compared with a peer
//! measured in the same run: the attested connect with a plain TLS connect,
//! evidence latency under an activation flood with evidence latency without
//! it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aver_client::tls::client_config;
use aver_client::{AttestedConnection, ClientError, Endpoint, ACTIVATE_PATH};
use aver_crds::Sha256Digest;
use aver_enclave::tpm::DEFAULT_AK_HANDLE;
use aver_enclave::Tpm;
use aver_tests::ek_ca::TestCa;
use aver_tests::node::{listening_url, TestNode};
use aver_tests::slow_tpm::{TPM2_CC_ACTIVATE_CREDENTIAL, TPM2_CC_CREATE_PRIMARY, TPM2_CC_QUOTE};
use aver_tests::stub_upstream::StubUpstream;
use aver_tests::{Delays, SlowTpm, Swtpm};
use aver_verifier::ek::{ActivationRequest, EkKind, ACTIVATION_VERSION};
use aver_verifier::evidence::Base64Bytes;
use aver_verifier::AttestationPolicy;
use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{median, ms, percentile, Options, TIMEOUT};

/// How long an evidence request or a flood request may take before the
/// client gives up on it (and counts it as a timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an evidence client waits after a failed or refused request.
const BACKOFF: Duration = Duration::from_millis(50);
/// Clients fetching evidence in the latency phases, as in the fast bench.
const EVIDENCE_CLIENTS: usize = 64;

pub async fn run(options: &Options) -> anyhow::Result<()> {
    let quote_delay = Duration::from_millis(options.quote_delay_ms.unwrap_or(150));
    println!(
        "# attested TLS bench with a slow TPM (loopback, swtpm behind SlowTpm: \
         Quote +{} ms, 2 worker threads)\n",
        quote_delay.as_millis()
    );
    let stub = StubUpstream::start().await?;

    let quote = quote_latency(quote_delay)?;
    println!(
        "one TPM quote + PCR read through the slow TPM, median of 20: **{quote:.1} ms** \
         (the quote time below)\n"
    );

    // An enclave whose quotes take `quote_delay`.
    let node = TestNode::start()?;
    let policy = node.policy()?;
    let tpm = SlowTpm::start(&node.tpm, Delays::quote(quote_delay))?;
    let enclave = Enclave::serve(&node, &tpm, &stub.url(), &[])?;
    let endpoint = Endpoint::from_url(&enclave.url)?;
    connect(&endpoint, &policy, quote).await?;

    println!("## fresh attestations/s with batching (each answer verified, 5 s per row)\n");
    println!("| clients | attestations/s | failed | quotes | answers per quote |");
    println!("| --- | --- | --- | --- | --- |");
    for clients in [64, 256, 768] {
        let label = clients.to_string();
        attestations(&enclave, &policy, &tpm, clients, &label).await?;
    }
    drop(enclave);
    let single_node = TestNode::start()?;
    let single_policy = single_node.policy()?;
    let single_tpm = SlowTpm::start(&single_node.tpm, Delays::quote(quote_delay))?;
    let single = Enclave::serve(
        &single_node,
        &single_tpm,
        &stub.url(),
        &["--max-batch", "1"],
    )?;
    let label = "16, one quote per request (`--max-batch 1`)";
    attestations(&single, &single_policy, &single_tpm, 16, label).await?;
    println!();
    drop(single);

    flood(options, &stub, quote_delay).await
}

/// One TPM2_Quote (+ PCR read, as the enclave does) through a slow TPM.
fn quote_latency(delay: Duration) -> anyhow::Result<f64> {
    let swtpm = Swtpm::start()?;
    let slow = SlowTpm::start(&swtpm, Delays::quote(delay))?;
    let mut handle = Tpm::open(&slow.tcti(), DEFAULT_AK_HANDLE)?;
    let pcrs: Vec<u8> = (0..8).chain([15]).collect();
    // The first quote with a new AK is answered TPM_RC_RETRY by swtpm.
    handle.quote(&pcrs, &[0xff; 32])?;
    let mut samples = Vec::new();
    for i in 0..20u8 {
        let t = Instant::now();
        handle.quote(&pcrs, &[i; 32])?;
        handle.read_pcrs(&pcrs)?;
        samples.push(ms(t.elapsed()));
    }
    Ok(median(&mut samples))
}

/// Plain TLS connect vs attested connect, alternating; the overhead in
/// quote times.
async fn connect(
    endpoint: &Endpoint,
    policy: &AttestationPolicy,
    quote: f64,
) -> anyhow::Result<()> {
    let spki = AttestedConnection::attest(endpoint, &aver_tests::checked(policy), TIMEOUT)
        .await?
        .spki_sha256();
    let (mut plain, mut attested) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let t = Instant::now();
        let c = AttestedConnection::pinned(endpoint, vec![spki], TIMEOUT).await?;
        plain.push(ms(t.elapsed()));
        drop(c);
        let t = Instant::now();
        let c = AttestedConnection::attest(endpoint, &aver_tests::checked(policy), TIMEOUT).await?;
        attested.push(ms(t.elapsed()));
        drop(c);
    }
    let (p50, a50) = (median(&mut plain), median(&mut attested));
    let (p99, a99) = (
        percentile(&mut plain, 0.99),
        percentile(&mut attested, 0.99),
    );
    println!("## connect (30 each, alternating)\n");
    println!("| | p50 | max |\n| --- | --- | --- |");
    println!("| plain TLS 1.3 connect | {p50:.3} ms | {p99:.3} ms |");
    println!("| attested connect | {a50:.3} ms | {a99:.3} ms |");
    println!(
        "| overhead (attested - plain) | **{:.3} ms = {:.3} quote times** | |\n",
        a50 - p50,
        (a50 - p50) / quote
    );
    Ok(())
}

/// Opens `n` attested connections at once (their evidence is batched). An
/// enclave may refuse evidence requests beyond its capacity (503): those
/// clients try again, for up to a minute.
async fn open_clients(
    endpoint: &Endpoint,
    policy: &Arc<aver_verifier::ValidatedPolicy>,
    n: usize,
) -> anyhow::Result<Vec<AttestedConnection>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (endpoint, policy) = (endpoint.clone(), policy.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match AttestedConnection::attest(&endpoint, &policy, REQUEST_TIMEOUT).await {
                    Err(ClientError::EvidenceStatus { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    result => break result,
                }
            }
        }));
    }
    let mut connections = Vec::new();
    for t in tasks {
        connections.push(t.await??);
    }
    Ok(connections)
}

/// Fresh attestations per second: `clients` keep-alive connections each
/// fetch evidence for a new nonce and verify it, for 5 s.
async fn attestations(
    enclave: &Enclave,
    policy: &AttestationPolicy,
    tpm: &SlowTpm,
    clients: usize,
    label: &str,
) -> anyhow::Result<()> {
    let length = Duration::from_secs(5);
    let endpoint = Endpoint::from_url(&enclave.url)?;
    let policy = Arc::new(aver_tests::checked(policy));
    let connections = open_clients(&endpoint, &policy, clients).await?;
    let (count, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let quotes_before = tpm.count(TPM2_CC_QUOTE);
    let deadline = Instant::now() + length;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut connection in connections {
        let (count, failed, policy) = (count.clone(), failed.clone(), policy.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match tokio::time::timeout(REQUEST_TIMEOUT, connection.reattest(&policy)).await {
                    Ok(Ok(_)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        // Refused (503 beyond capacity) or failed: back
                        // off as a client should, instead of spinning.
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let quotes = tpm.count(TPM2_CC_QUOTE) - quotes_before;
    let answered = count.load(Ordering::Relaxed);
    println!(
        "| {label} | **{:.0}/s** | {} | {quotes} | {:.1} |",
        answered as f64 / elapsed,
        failed.load(Ordering::Relaxed),
        answered as f64 / quotes.max(1) as f64
    );
    Ok(())
}

/// Evidence latency without, then with, a flood of credential activations
/// carrying junk credentials, on an enclave whose TPM is slow for quotes,
/// EK creation and activation alike.
async fn flood(options: &Options, stub: &StubUpstream, quote: Duration) -> anyhow::Result<()> {
    let delays = Delays {
        quote,
        create_primary: Duration::from_millis(options.create_primary_ms),
        activate_credential: Duration::from_millis(options.activate_credential_ms),
        ..Delays::default()
    };
    let phase = Duration::from_secs(options.phase_secs);
    println!(
        "## evidence latency under an activation flood (Quote +{} ms, CreatePrimary +{} ms, \
         ActivateCredential +{} ms; {EVIDENCE_CLIENTS} evidence clients on keep-alive \
         connections, a fresh nonce per request, each answer verified; {} flooders, each from \
         its own loopback address, POSTing junk RSA-2048 credentials back to back; {} s per \
         phase)\n",
        delays.quote.as_millis(),
        delays.create_primary.as_millis(),
        delays.activate_credential.as_millis(),
        options.flooders,
        phase.as_secs()
    );
    // A TPM manufactured with an EK certificate, as hardware TPMs are, so
    // the enclave serves an activation offer.
    let ca = TestCa::new("aver slow-TPM bench EK CA")?;
    let node = TestNode::with_tpm(Swtpm::start_with_ek_cert(&ca)?)?;
    let policy = Arc::new(aver_tests::checked(&node.policy()?));
    let tpm = SlowTpm::start(&node.tpm, delays)?;
    let started = Instant::now();
    let enclave = Enclave::serve(&node, &tpm, &stub.url(), &[])?;
    println!(
        "enclave start through the slow TPM: {:.2} s ({} CreatePrimary)\n",
        started.elapsed().as_secs_f64(),
        tpm.count(TPM2_CC_CREATE_PRIMARY)
    );
    let endpoint = Endpoint::from_url(&enclave.url)?;
    let mut clients = open_clients(&endpoint, &policy, EVIDENCE_CLIENTS).await?;
    let spki = clients[0].spki_sha256();

    let quiet;
    (quiet, clients) = evidence_phase(clients, &endpoint, spki, &policy, &tpm, phase).await?;

    let before = (
        tpm.count(TPM2_CC_CREATE_PRIMARY),
        tpm.count(TPM2_CC_ACTIVATE_CREDENTIAL),
    );
    let flood = Flood::start(&enclave, spki, options.flooders)?;
    // Let the flood fill whatever queue it can before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (flooded, _clients) =
        evidence_phase(clients, &endpoint, spki, &policy, &tpm, phase).await?;
    let (answers, flood_secs) = flood.stop().await;
    let during = (
        tpm.count(TPM2_CC_CREATE_PRIMARY) - before.0,
        tpm.count(TPM2_CC_ACTIVATE_CREDENTIAL) - before.1,
    );

    println!("| evidence | p50 | p99 | answered | failed | quotes | answers/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (label, phase) in [("without flood", &quiet), ("during the flood", &flooded)] {
        phase.row(label);
    }
    let (mut q, mut f) = (quiet.latencies.clone(), flooded.latencies.clone());
    let (q50, q99) = (median(&mut q), percentile(&mut q, 0.99));
    let (f50, f99) = (median(&mut f), percentile(&mut f, 0.99));
    println!(
        "| ratio flood / without | {:.2}x | {:.2}x | | | | |\n",
        f50 / q50,
        f99 / q99
    );
    for (label, phase) in [("without flood", &quiet), ("during the flood", &flooded)] {
        if !phase.failures.is_empty() {
            println!("evidence failures {label}: {:?}\n", phase.failures);
        }
    }
    let total: u64 = answers.values().sum();
    println!(
        "flood answers ({total} in {flood_secs:.1} s, {:.0}/s), by status:\n",
        total as f64 / flood_secs
    );
    println!("| answer | count |\n| --- | --- |");
    for (answer, count) in &answers {
        println!("| {answer} | {count} |");
    }
    println!(
        "\nTPM commands run during the flood: {} CreatePrimary, {} ActivateCredential\n",
        during.0, during.1
    );
    Ok(())
}

/// Latencies (ms, failures included at the time they took) and failures
/// of one evidence phase.
struct Phase {
    latencies: Vec<f64>,
    answered: u64,
    failures: BTreeMap<String, u64>,
    quotes: u64,
    secs: f64,
}

impl Phase {
    fn row(&self, label: &str) {
        let mut l = self.latencies.clone();
        if l.is_empty() {
            println!(
                "| {label} | - | - | 0 | {:?} | {} | 0 |",
                self.failures, self.quotes
            );
            return;
        }
        println!(
            "| {label} | **{:.1} ms** | **{:.1} ms** | {} | {} | {} | {:.0} |",
            median(&mut l),
            percentile(&mut l, 0.99),
            self.answered,
            self.failures.values().sum::<u64>(),
            self.quotes,
            self.answered as f64 / self.secs
        );
    }
}

/// Each client fetches and verifies evidence for fresh nonces, back to
/// back, for `length`; a connection that failed is replaced by a pinned
/// one (no attestation needed to reconnect).
async fn evidence_phase(
    clients: Vec<AttestedConnection>,
    endpoint: &Endpoint,
    spki: Sha256Digest,
    policy: &Arc<aver_verifier::ValidatedPolicy>,
    tpm: &SlowTpm,
    length: Duration,
) -> anyhow::Result<(Phase, Vec<AttestedConnection>)> {
    let quotes_before = tpm.count(TPM2_CC_QUOTE);
    let deadline = Instant::now() + length;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut connection in clients {
        let (endpoint, policy) = (endpoint.clone(), policy.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            let mut answered = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let result =
                    tokio::time::timeout(REQUEST_TIMEOUT, connection.reattest(&policy)).await;
                latencies.push(ms(t.elapsed()));
                let failure = match result {
                    Ok(Ok(_)) => {
                        answered += 1;
                        continue;
                    }
                    Ok(Err(ClientError::EvidenceStatus { status, .. })) => status.to_string(),
                    Ok(Err(e)) => format!("client error: {}", e.reason()),
                    Err(_) => format!("no answer in {} s", REQUEST_TIMEOUT.as_secs()),
                };
                failures.push(failure);
                tokio::time::sleep(BACKOFF).await;
                // The connection may be unusable (a request cut short).
                if let Ok(c) = AttestedConnection::pinned(&endpoint, vec![spki], TIMEOUT).await {
                    connection = c;
                }
            }
            (connection, latencies, answered, failures)
        }));
    }
    let mut phase = Phase {
        latencies: Vec::new(),
        answered: 0,
        failures: BTreeMap::new(),
        quotes: 0,
        secs: 0.0,
    };
    let mut connections = Vec::new();
    for t in tasks {
        let (connection, latencies, answered, failures) = t.await?;
        connections.push(connection);
        phase.latencies.extend(latencies);
        phase.answered += answered;
        for f in failures {
            *phase.failures.entry(f).or_insert(0) += 1;
        }
    }
    phase.secs = start.elapsed().as_secs_f64();
    phase.quotes = tpm.count(TPM2_CC_QUOTE) - quotes_before;
    Ok((phase, connections))
}

/// Flooders POSTing junk activation requests back to back, each on its
/// own keep-alive TLS connection from its own loopback address (a
/// distributed flood: a per-address limit alone does not stop it).
struct Flood {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<BTreeMap<String, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Flood {
    fn start(enclave: &Enclave, spki: Sha256Digest, flooders: usize) -> anyhow::Result<Self> {
        let body = Bytes::from(serde_json::to_vec(&junk_activation())?);
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(BTreeMap::new()));
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, enclave.port));
        let connector = TlsConnector::from(Arc::new(client_config(vec![spki])));
        let mut tasks = Vec::new();
        for i in 0..flooders {
            let source = Ipv4Addr::new(127, 1 + (i / 250) as u8, 0, (i % 250) as u8 + 1);
            let flooder = Flooder {
                source,
                target,
                connector: connector.clone(),
                body: body.clone(),
                stop: stop.clone(),
                answers: answers.clone(),
            };
            tasks.push(tokio::spawn(flooder.run()));
        }
        Ok(Self {
            stop,
            answers,
            tasks,
            started: Instant::now(),
        })
    }

    /// Stops the flooders (requests in flight are abandoned) and returns
    /// the answers by status and how long the flood ran.
    async fn stop(self) -> (BTreeMap<String, u64>, f64) {
        self.stop.store(true, Ordering::SeqCst);
        let secs = self.started.elapsed().as_secs_f64();
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let answers = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (answers, secs)
    }
}

/// A well-formed activation request whose credential no TPM can open:
/// an RSA-2048 "encrypted secret" that is not one, and a credential blob
/// of the right shape (a 32-byte integrity HMAC, then the encrypted
/// identity) with junk in it.
fn junk_activation() -> ActivationRequest {
    let mut blob = vec![0x00, 0x20];
    blob.extend([0xab; 32]);
    blob.extend([0xcd; 34]);
    ActivationRequest {
        version: ACTIVATION_VERSION,
        kind: EkKind::Rsa2048,
        credential_blob: Base64Bytes(blob),
        encrypted_secret: Base64Bytes(vec![0x5a; 256]),
    }
}

/// A flood answer's status, with the reason of a 429 (the enclave's
/// message names it).
fn answer_label(status: http::StatusCode, body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body);
    let reason = if status != http::StatusCode::TOO_MANY_REQUESTS {
        ""
    } else if body.contains("from this address") {
        " (per-address rate)"
    } else if body.contains("busy") {
        " (activation queue full)"
    } else {
        ""
    };
    format!("{status}{reason}")
}

struct Flooder {
    source: Ipv4Addr,
    target: SocketAddr,
    connector: TlsConnector,
    body: Bytes,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Flooder {
    fn record(&self, answer: impl Into<String>) {
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        *self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(answer.into())
            .or_insert(0) += 1;
    }

    async fn connect(
        &self,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((self.source, 0)))?;
        let tcp = tokio::time::timeout(TIMEOUT, socket.connect(self.target))
            .await
            .context("connect timed out")??;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.target.ip().to_string())?;
        let tls = tokio::time::timeout(TIMEOUT, self.connector.connect(name, tcp))
            .await
            .context("TLS handshake timed out")??;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn run(self) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut sender = match self.connect().await {
                Ok(sender) => sender,
                Err(_) => {
                    self.record("connect failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while !self.stop.load(Ordering::Relaxed) {
                let request = Request::post(ACTIVATE_PATH)
                    .header(header::HOST, "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(self.body.clone()))
                    .expect("static request");
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(answer_label(status, &body))
                })
                .await;
                match answer {
                    Ok(Ok(label)) => self.record(label),
                    Ok(Err(_)) => {
                        self.record("connection closed or failed");
                        break;
                    }
                    Err(_) => {
                        self.record(format!("no answer in {} s", REQUEST_TIMEOUT.as_secs()));
                        break;
                    }
                }
            }
        }
    }
}

/// `aver-enclave serve` on a node whose TPM is reached through `tpm`;
/// killed when dropped.
struct Enclave {
    child: Child,
    url: String,
    port: u16,
    /// The enclave's stderr (a flood makes it log a lot).
    _log: tempfile::NamedTempFile,
}

impl Enclave {
    fn serve(
        node: &TestNode,
        tpm: &SlowTpm,
        upstream: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log = tempfile::NamedTempFile::new()?;
        let mut child = node
            .enclave_command_through("serve", &tpm.tcti())
            .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log.reopen()?)
            .spawn()
            .context("aver-enclave serve starts")?;
        let (url, port) = listening_url(&mut child).map_err(|e| {
            let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
            anyhow::anyhow!("{e}: {stderr}")
        })?;
        Ok(Self {
            child,
            url,
            port,
            _log: log,
        })
    }
}

impl Drop for Enclave {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
