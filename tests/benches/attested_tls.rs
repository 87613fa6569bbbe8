//! Attested TLS on loopback, measured as ratios within one run (the machine
//! is shared and noisy): attested vs plain TLS connect, proxied vs direct
//! requests to the stub engine, and fresh attestations per second with and
//! without nonce batching.
//!
//! `cargo bench -p aver-tests --bench attested_tls` (needs swtpm; build the
//! binaries first: `cargo build --release --bins`). Under a minute.
//!
//! With a TPM as slow as a hardware one (about 2 minutes):
//!
//! `cargo bench -p aver-tests --bench attested_tls -- --quote-delay-ms 150`
//!
//! (or `AVER_BENCH_QUOTE_DELAY_MS=150`) runs, instead of the figures above,
//! the same measurements with swtpm behind a `SlowTpm` relay that holds
//! every TPM2_Quote for that long: the attested-connect overhead in quote
//! times, fresh attestations/s with batching for 64 to 768 clients, and
//! evidence latency with and without a flood of credential activations
//! (junk credentials, one source address per flooder), for which
//! TPM2_CreatePrimary and TPM2_ActivateCredential are slowed too. Further
//! options, each also an environment variable:
//!
//! - `--create-primary-ms N` (`AVER_BENCH_CREATE_PRIMARY_MS`, default 1000:
//!   an RSA-2048 EK on a discrete TPM);
//! - `--activate-credential-ms N` (`AVER_BENCH_ACTIVATE_CREDENTIAL_MS`,
//!   default 100);
//! - `--flooders N` (`AVER_BENCH_FLOODERS`, default 256);
//! - `--phase-secs N` (`AVER_BENCH_PHASE_SECS`, default 10): length of each
//!   evidence-latency phase (without, then with the flood).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aver_client::{AttestedConnection, Endpoint};
use aver_enclave::Tpm;
use aver_tests::node::{EnclaveProcess, TestNode};
use aver_tests::stub_upstream::StubUpstream;
use aver_tests::Swtpm;
use aver_verifier::AttestationPolicy;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The slow-TPM measurements (`--quote-delay-ms`).
#[path = "attested_tls/slow.rs"]
mod slow;

fn main() -> anyhow::Result<()> {
    if !aver_tests::swtpm_available() {
        println!("attested_tls bench skipped: swtpm is not installed");
        return Ok(());
    }
    let options = Options::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match options.quote_delay_ms {
        Some(_) => runtime.block_on(slow::run(&options)),
        None => runtime.block_on(run()),
    }
}

/// Command-line options (after `cargo bench ... --`), or their environment
/// variables.
struct Options {
    /// `Some`: run the slow-TPM measurements with this quote delay.
    quote_delay_ms: Option<u64>,
    create_primary_ms: u64,
    activate_credential_ms: u64,
    flooders: usize,
    phase_secs: u64,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let env = |name: &str| -> anyhow::Result<Option<u64>> {
            std::env::var(name)
                .ok()
                .map(|v| v.parse().with_context(|| format!("{name}={v}")))
                .transpose()
        };
        let mut options = Self {
            quote_delay_ms: env("AVER_BENCH_QUOTE_DELAY_MS")?,
            create_primary_ms: env("AVER_BENCH_CREATE_PRIMARY_MS")?.unwrap_or(1000),
            activate_credential_ms: env("AVER_BENCH_ACTIVATE_CREDENTIAL_MS")?.unwrap_or(100),
            flooders: env("AVER_BENCH_FLOODERS")?.unwrap_or(256) as usize,
            phase_secs: env("AVER_BENCH_PHASE_SECS")?.unwrap_or(10),
        };
        // cargo passes `--bench` (and a filter, if given): ignored.
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || -> anyhow::Result<u64> {
                let v = args
                    .next()
                    .with_context(|| format!("{arg} needs a value"))?;
                v.parse().with_context(|| format!("{arg} {v}"))
            };
            match arg.as_str() {
                "--quote-delay-ms" => options.quote_delay_ms = Some(value()?),
                "--create-primary-ms" => options.create_primary_ms = value()?,
                "--activate-credential-ms" => options.activate_credential_ms = value()?,
                "--flooders" => options.flooders = value()? as usize,
                "--phase-secs" => options.phase_secs = value()?,
                _ => {}
            }
        }
        Ok(options)
    }
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run() -> anyhow::Result<()> {
    let node = TestNode::start()?;
    let stub = StubUpstream::start().await?;
    let policy = node.policy()?;
    let batched = node.serve(&stub.url(), &[])?;
    let endpoint = Endpoint::from_url(&batched.url)?;
    println!("# attested TLS bench (loopback, swtpm, 2 worker threads)\n");

    connect(&endpoint, &policy).await?;
    quote_latency()?;
    proxy(&stub, &endpoint, &policy).await?;

    // A second enclave on another TPM, with batching disabled.
    let single_node = TestNode::start()?;
    let single = single_node.serve(&stub.url(), &["--max-batch", "1"])?;
    attestations(
        &batched,
        &policy,
        "batching (default: no window, group commit)",
    )
    .await?;
    attestations(
        &single,
        &single_node.policy()?,
        "one quote per request (--max-batch 1)",
    )
    .await?;
    Ok(())
}

/// Plain TLS connect (handshake, certificate check) vs attested connect
/// (handshake, evidence for a fresh nonce on the same connection, verify).
async fn connect(endpoint: &Endpoint, policy: &AttestationPolicy) -> anyhow::Result<()> {
    let spki = AttestedConnection::attest(endpoint, &aver_tests::checked(policy), TIMEOUT)
        .await?
        .spki_sha256();
    let (mut plain, mut attested) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        let c = AttestedConnection::pinned(endpoint, vec![spki], TIMEOUT).await?;
        plain.push(ms(t.elapsed()));
        drop(c);
        let t = Instant::now();
        let c = AttestedConnection::attest(endpoint, &aver_tests::checked(policy), TIMEOUT).await?;
        attested.push(ms(t.elapsed()));
        drop(c);
    }
    let (p, a) = (median(&mut plain), median(&mut attested));
    println!("## connect (200 each, alternating)\n");
    println!("| | median |\n| --- | --- |");
    println!("| plain TLS 1.3 connect | {p:.3} ms |");
    println!("| attested connect | {a:.3} ms |");
    println!("| ratio attested / plain | {:.2}x |", a / p);
    println!("| overhead | {:.3} ms |\n", a - p);
    Ok(())
}

/// One TPM2_Quote on swtpm, the floor of an attested connect.
fn quote_latency() -> anyhow::Result<()> {
    let tpm = Swtpm::start()?;
    let mut handle = Tpm::open(&tpm.tcti(), aver_enclave::tpm::DEFAULT_AK_HANDLE)?;
    let pcrs: Vec<u8> = (0..8).chain([15]).collect();
    let mut samples = Vec::new();
    for i in 0..100u8 {
        let t = Instant::now();
        handle.quote(&pcrs, &[i; 32])?;
        handle.read_pcrs(&pcrs)?;
        samples.push(ms(t.elapsed()));
    }
    println!(
        "| one TPM quote + PCR read (swtpm) | {:.3} ms |\n",
        median(&mut samples)
    );
    Ok(())
}

fn chat() -> Request<Full<Bytes>> {
    let body = r#"{"model":"stub-model","messages":[{"role":"user","content":"hello"}]}"#;
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("host", "stub")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static request")
}

/// A keep-alive HTTP/1.1 connection straight to the stub.
async fn direct_sender(
    stub: &StubUpstream,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(stub.addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

enum Path {
    Direct(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Proxied(Box<AttestedConnection>),
}

impl Path {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = match self {
            Self::Direct(sender) => {
                sender.ready().await?;
                sender.send_request(chat()).await?
            }
            Self::Proxied(connection) => connection.send(chat()).await?,
        };
        anyhow::ensure!(
            response.status().is_success(),
            "status {}",
            response.status()
        );
        response.into_body().collect().await?;
        Ok(())
    }
}

/// Request latency and throughput, direct to the stub vs through the
/// enclave (TLS + proxy), on keep-alive connections.
async fn proxy(
    stub: &StubUpstream,
    endpoint: &Endpoint,
    policy: &AttestationPolicy,
) -> anyhow::Result<()> {
    let mut direct = Path::Direct(direct_sender(stub).await?);
    let mut proxied = Path::Proxied(Box::new(
        AttestedConnection::attest(endpoint, &aver_tests::checked(policy), TIMEOUT).await?,
    ));
    for _ in 0..200 {
        direct.call().await?;
        proxied.call().await?;
    }
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        for (path, out) in [(&mut direct, &mut d), (&mut proxied, &mut p)] {
            for _ in 0..100 {
                let t = Instant::now();
                path.call().await?;
                out.push(ms(t.elapsed()));
            }
        }
    }
    let (d50, d99) = (median(&mut d), percentile(&mut d, 0.99));
    let (p50, p99) = (median(&mut p), percentile(&mut p, 0.99));
    println!("## request latency, sequential, keep-alive (2,000 each, interleaved blocks)\n");
    println!("| | p50 | p99 |\n| --- | --- | --- |");
    println!("| direct to stub (plain HTTP) | {d50:.3} ms | {d99:.3} ms |");
    println!("| through enclave (TLS + proxy) | {p50:.3} ms | {p99:.3} ms |");
    println!("| overhead | {:.3} ms | {:.3} ms |\n", p50 - d50, p99 - d99);

    throughput(
        stub,
        endpoint,
        policy,
        "stub answers at once (CPU-bound: client, proxy and stub share 2 cores)",
    )
    .await?;
    let slow = StubUpstream::start_with_delay(Duration::from_millis(5)).await?;
    let node = TestNode::start()?;
    let enclave = node.serve(&slow.url(), &[])?;
    let slow_endpoint = Endpoint::from_url(&enclave.url)?;
    throughput(
        &slow,
        &slow_endpoint,
        &node.policy()?,
        "stub takes 5 ms per answer, like an engine generating",
    )
    .await
}

async fn throughput(
    stub: &StubUpstream,
    endpoint: &Endpoint,
    policy: &AttestationPolicy,
    label: &str,
) -> anyhow::Result<()> {
    println!("## throughput, 8 keep-alive connections, 3 s each: {label}\n");
    println!("| | requests/s |\n| --- | --- |");
    let mut rates = Vec::new();
    for proxied in [false, true] {
        let count = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut path = if proxied {
                Path::Proxied(Box::new(
                    AttestedConnection::attest(endpoint, &aver_tests::checked(policy), TIMEOUT)
                        .await?,
                ))
            } else {
                Path::Direct(direct_sender(stub).await?)
            };
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    if path.call().await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let start = Instant::now();
        for t in tasks {
            t.await?;
        }
        let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        rates.push(rate);
        let label = if proxied {
            "through enclave"
        } else {
            "direct to stub"
        };
        println!("| {label} | {rate:.0} |");
    }
    println!(
        "| ratio through / direct | {:.1} % |\n",
        100.0 * rates[1] / rates[0]
    );
    Ok(())
}

/// Fresh attestations per second: 64 clients on keep-alive TLS connections
/// each fetch evidence for a new nonce and verify it, for 3 s.
async fn attestations(
    enclave: &EnclaveProcess,
    policy: &AttestationPolicy,
    label: &str,
) -> anyhow::Result<()> {
    let endpoint = Endpoint::from_url(&enclave.url)?;
    let count = Arc::new(AtomicU64::new(0));
    let policy = Arc::new(aver_tests::checked(policy));
    let mut connections = Vec::new();
    for _ in 0..64 {
        connections.push(AttestedConnection::attest(&endpoint, &policy, TIMEOUT).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut connection in connections {
        let (count, policy) = (count.clone(), policy.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if connection.reattest(&policy).await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("## fresh attestations/s, {label}: **{rate:.0}/s** (64 clients, verified)\n");
    Ok(())
}
