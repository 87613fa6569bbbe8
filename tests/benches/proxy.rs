//! `aver proxy` against the other ways to reach the engine, in one run (the
//! machine is shared and noisy: compare within a run, as ratios):
//!
//! - `direct`: plain HTTP to the stub engine, no enclave;
//! - `tls`: plain TLS to the enclave accepting its certificate, no
//!   attestation (hyper over tokio-rustls);
//! - `attested`: the Rust `AttestedClient`, one attested connection per
//!   client reused for every request;
//! - `proxy`: plain HTTP to `aver proxy` on loopback, which forwards over its
//!   pool of attested connections.
//!
//! For each: requests/s and p50/p99 latency of non-streamed chat
//! completions with `--clients` concurrent keep-alive connections, and the
//! time to the first byte of a streamed answer (sequential).
//!
//! `cargo build --release --bins && cargo bench -p aver-tests --bench proxy`
//! (needs swtpm). Options (each also an environment variable):
//! `--clients N` (`AVER_BENCH_CLIENTS`, default 4), `--secs N`
//! (`AVER_BENCH_SECS`, default 3: length of each throughput phase),
//! `--rounds N` (`AVER_BENCH_ROUNDS`, default 3: the modes are interleaved
//! and the median round reported), `--streams N` (`AVER_BENCH_STREAMS`,
//! default 50 streamed requests per mode and round).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aver_client::tls::danger::to_be_attested_client_config;
use aver_client::{AttestedClient, AttestedConnection, Endpoint};
use aver_tests::node::TestNode;
use aver_tests::stub_upstream::StubUpstream;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    Tls,
    Attested,
    Proxy,
}

const MODES: [Mode; 4] = [Mode::Direct, Mode::Tls, Mode::Attested, Mode::Proxy];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct to the stub",
            Self::Tls => "plain TLS to the enclave (no attestation)",
            Self::Attested => "AttestedClient (attested connection reused)",
            Self::Proxy => "aver proxy (plain HTTP on loopback)",
        }
    }
}

struct Options {
    clients: usize,
    secs: u64,
    rounds: usize,
    streams: usize,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            clients: env_or("AVER_BENCH_CLIENTS", 4)?,
            secs: env_or("AVER_BENCH_SECS", 3)?,
            rounds: env_or("AVER_BENCH_ROUNDS", 3)?,
            streams: env_or("AVER_BENCH_STREAMS", 50)?,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || -> anyhow::Result<usize> {
                args.next()
                    .with_context(|| format!("{arg} needs a value"))?
                    .parse()
                    .with_context(|| format!("{arg} needs a number"))
            };
            match arg.as_str() {
                "--clients" => options.clients = value()?,
                "--secs" => options.secs = value()? as u64,
                "--rounds" => options.rounds = value()?,
                "--streams" => options.streams = value()?,
                // cargo bench passes --bench; anything else is ignored.
                _ => {}
            }
        }
        Ok(options)
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    if !aver_tests::swtpm_available() {
        println!("proxy bench skipped: swtpm is not installed");
        return Ok(());
    }
    let options = Options::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

struct Targets {
    stub: StubUpstream,
    enclave_port: u16,
    proxy_port: u16,
    client: AttestedClient,
}

async fn run(options: Options) -> anyhow::Result<()> {
    let node = TestNode::start()?;
    let stub = StubUpstream::start().await?;
    let enclave = node.serve(&stub.url(), &[])?;
    let policy = node.policy()?;
    let dir = tempfile::tempdir()?;
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy.to_yaml())?;
    let mut proxy = tokio::process::Command::new(aver_tests::cargo_bin("aver"))
        .arg("proxy")
        .arg("--policy")
        .arg(&policy_path)
        .args(["--upstream", &enclave.url, "--listen", "127.0.0.1:0"])
        .env("AVER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("aver proxy starts (cargo build --release --bins first)")?;
    let mut line = String::new();
    BufReader::new(proxy.stdout.take().context("stdout")?)
        .read_line(&mut line)
        .await?;
    let proxy_port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("aver proxy did not start: {line:?}"))?;
    let targets = Arc::new(Targets {
        stub,
        enclave_port: enclave.port,
        proxy_port,
        client: AttestedClient::new(policy)?,
    });
    println!(
        "aver proxy bench: {} clients, {} s per phase, {} rounds, {} streams per mode and round",
        options.clients, options.secs, options.rounds, options.streams
    );

    // Warm up every path (the proxy's pool, the TLS session caches).
    for mode in MODES {
        let mut c = connect(&targets, mode).await?;
        for _ in 0..20 {
            exchange(&mut c, false).await?;
        }
    }

    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut p50: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut ttfb: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut chunk: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for round in 0..options.rounds {
        for (i, mode) in MODES.into_iter().enumerate() {
            let (r, mut latencies) = throughput(&targets, mode, &options).await?;
            rps[i].push(r);
            p50[i].push(percentile(&mut latencies, 0.50));
            p99[i].push(percentile(&mut latencies, 0.99));
            let (mut t, mut c) = first_bytes(&targets, mode, options.streams).await?;
            ttfb[i].push(percentile(&mut t, 0.50));
            chunk[i].push(percentile(&mut c, 0.50));
            eprintln!(
                "round {round}: {:<46} {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  ttfb p50 {:>6.3} ms  first chunk p50 {:>6.3} ms",
                mode.name(),
                r,
                p50[i][round],
                p99[i][round],
                ttfb[i][round],
                chunk[i][round]
            );
        }
    }

    println!();
    println!("Medians over {} rounds:", options.rounds);
    println!();
    println!(
        "| path | requests/s | p50 ms | p99 ms | stream TTFB p50 ms | stream first chunk p50 ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut medians = Vec::new();
    for (i, mode) in MODES.into_iter().enumerate() {
        let m = (
            median(&mut rps[i]),
            median(&mut p50[i]),
            median(&mut p99[i]),
            median(&mut ttfb[i]),
            median(&mut chunk[i]),
        );
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} |",
            mode.name(),
            m.0,
            m.1,
            m.2,
            m.3,
            m.4
        );
        medians.push(m);
    }
    let (direct, tls, attested, proxied) = (medians[0], medians[1], medians[2], medians[3]);
    println!();
    println!(
        "proxy vs AttestedClient: {:.2}x the requests/s, {:.2}x the p50 latency, {:.2}x the TTFB",
        proxied.0 / attested.0,
        proxied.1 / attested.1,
        proxied.3 / attested.3
    );
    println!(
        "AttestedClient vs plain TLS (attestation cost on a reused connection): {:.2}x the requests/s, {:.2}x the p50",
        attested.0 / tls.0,
        attested.1 / tls.1
    );
    println!(
        "proxy vs direct to the stub: {:.2}x the requests/s, {:.2}x the p50",
        proxied.0 / direct.0,
        proxied.1 / direct.1
    );
    println!(
        "engine requests served: {} (proxy process still up: {})",
        targets.stub.requests(),
        proxy.try_wait()?.is_none()
    );
    drop(enclave);
    Ok(())
}

/// One keep-alive client connection for `mode`.
enum Conn {
    Plain(SendRequest<Full<Bytes>>, String),
    Attested(Box<AttestedConnection>),
}

async fn connect(targets: &Targets, mode: Mode) -> anyhow::Result<Conn> {
    async fn plain<I>(io: I, host: String) -> anyhow::Result<Conn>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(Conn::Plain(sender, host))
    }
    match mode {
        Mode::Direct => {
            let tcp = TcpStream::connect(targets.stub.addr).await?;
            tcp.set_nodelay(true)?;
            plain(tcp, targets.stub.addr.to_string()).await
        }
        Mode::Proxy => {
            let tcp = TcpStream::connect(("127.0.0.1", targets.proxy_port)).await?;
            tcp.set_nodelay(true)?;
            plain(tcp, format!("127.0.0.1:{}", targets.proxy_port)).await
        }
        Mode::Tls => {
            let tcp = TcpStream::connect(("127.0.0.1", targets.enclave_port)).await?;
            tcp.set_nodelay(true)?;
            // Accepts whatever key the server presents: TLS without the
            // attestation step.
            let connector =
                tokio_rustls::TlsConnector::from(Arc::new(to_be_attested_client_config()));
            let tls = connector
                .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
                .await?;
            plain(tls, format!("127.0.0.1:{}", targets.enclave_port)).await
        }
        Mode::Attested => {
            let endpoint = Endpoint::new("127.0.0.1", targets.enclave_port);
            Ok(Conn::Attested(Box::new(
                targets.client.attest(&endpoint).await?,
            )))
        }
    }
}

fn chat(stream: bool) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "stub-model",
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    });
    Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request")
}

async fn send(
    conn: &mut Conn,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<http::Response<Incoming>> {
    Ok(match conn {
        Conn::Plain(sender, host) => {
            let mut request = request;
            request.headers_mut().insert("host", host.parse()?);
            sender.ready().await?;
            sender.send_request(request).await?
        }
        Conn::Attested(connection) => connection.send(request).await?,
    })
}

/// One non-streamed chat completion, read to the end.
async fn exchange(conn: &mut Conn, stream: bool) -> anyhow::Result<()> {
    let response = send(conn, chat(stream)).await?;
    anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
    response.into_body().collect().await?;
    Ok(())
}

/// `clients` connections, each sending back to back for `secs`: requests/s
/// and every request's latency in ms.
async fn throughput(
    targets: &Arc<Targets>,
    mode: Mode,
    options: &Options,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let deadline = Instant::now() + Duration::from_secs(options.secs);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..options.clients {
        let targets = targets.clone();
        tasks.spawn(async move {
            let mut conn = connect(&targets, mode).await?;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                exchange(&mut conn, false).await?;
                latencies.push(ms(t.elapsed()));
            }
            anyhow::Ok(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    let rps = all.len() as f64 / start.elapsed().as_secs_f64();
    Ok((rps, all))
}

/// Sequential streamed requests: time to the answer's first byte (its
/// status line and headers) and to its first data frame, in ms. The stub
/// holds the last chunk back; it is released once the first chunk is in.
///
/// The stub (axum, Nagle on) writes the headers and the first chunk
/// separately, so the first chunk waits for the delayed ACK of the headers
/// (about 40 ms on Linux) on every path alike: the chunk figure shows that
/// nothing is buffered on the way, the header figure shows the per-hop cost.
async fn first_bytes(
    targets: &Targets,
    mode: Mode,
    n: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut conn = connect(targets, mode).await?;
    let mut headers = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let response = send(&mut conn, chat(true)).await?;
        headers.push(ms(t.elapsed()));
        let mut body = response.into_body();
        loop {
            let frame = body.frame().await.context("stream ended early")??;
            if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                break;
            }
        }
        out.push(ms(t.elapsed()));
        targets.stub.release_stream();
        body.collect().await?;
    }
    Ok((headers, out))
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let index = ((v.len() - 1) as f64 * p).round() as usize;
    v[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
