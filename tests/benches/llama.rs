//! A real engine behind the enclave: llama.cpp's `llama-server` with the
//! generated chat model (`scripts/engine.sh`), streamed chat completions
//! direct to the engine (plain HTTP on loopback) and through the enclave
//! (the Rust `AttestedClient`: TLS, fresh attestation of the connection,
//! then the request), in the same run, interleaved.
//!
//! For each request: the time to the first token (from sending the request
//! to the first SSE chunk with content) and the decode rate (tokens after
//! the first, over the time from the first to the last). Each round opens a
//! new connection per path (for the enclave: a new attestation, whose cost
//! is reported apart) and sends `--requests` streamed requests on it, each
//! for `--tokens` tokens. Medians over all requests.
//!
//! `bash scripts/engine.sh && cargo build --release --bins && cargo bench -p
//! aver-tests --bench llama` (needs swtpm). Options (each also an
//! environment variable): `--rounds N` (`AVER_BENCH_ROUNDS`, default 5),
//! `--requests N` (`AVER_BENCH_REQUESTS`, default 10 per path and round),
//! `--tokens N` (`AVER_BENCH_TOKENS`, default 128), `--threads N`
//! (`AVER_BENCH_THREADS`, default 1: llama-server's inference threads; one
//! is the stable choice on a shared machine).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aver_client::{AttestedClient, AttestedConnection, Endpoint};
use aver_tests::llama::{serve_model, EngineArtifacts, LlamaServer, Model};
use aver_tests::node::{policy_for, TestNode};
use aver_verifier::measurement::model_digest;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

struct Options {
    rounds: usize,
    requests: usize,
    tokens: usize,
    threads: usize,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            rounds: env_or("AVER_BENCH_ROUNDS", 5)?,
            requests: env_or("AVER_BENCH_REQUESTS", 10)?,
            tokens: env_or("AVER_BENCH_TOKENS", 128)?,
            threads: env_or("AVER_BENCH_THREADS", 1)?,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> anyhow::Result<usize> {
                args.next()
                    .with_context(|| format!("{name} needs a value"))?
                    .parse()
                    .with_context(|| format!("{name} takes a number"))
            };
            match arg.as_str() {
                "--rounds" => options.rounds = value("--rounds")?,
                "--requests" => options.requests = value("--requests")?,
                "--tokens" => options.tokens = value("--tokens")?,
                "--threads" => options.threads = value("--threads")?,
                // cargo bench passes --bench.
                _ => {}
            }
        }
        anyhow::ensure!(
            options.rounds > 0 && options.requests > 0 && options.tokens > 1 && options.threads > 0,
            "rounds, requests and threads must be > 0, tokens > 1"
        );
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
        println!("llama bench skipped: swtpm is not installed");
        return Ok(());
    }
    let artifacts = match EngineArtifacts::locate() {
        Ok(artifacts) => artifacts,
        Err(e) => {
            println!("llama bench skipped: {e}");
            return Ok(());
        }
    };
    let options = Options::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(artifacts, options))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Enclave,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct to llama-server (plain HTTP, loopback)",
            Self::Enclave => "through the enclave (AttestedClient, attested TLS)",
        }
    }
}

enum Conn {
    /// llama-server ends the connection after each streamed answer, so
    /// each request opens a new one (a loopback TCP connect, well under a
    /// millisecond, inside the measured time).
    Plain(SendRequest<Full<Bytes>>, std::net::SocketAddr),
    Attested(Box<AttestedConnection>),
}

#[derive(Default)]
struct Samples {
    ttft_ms: Vec<f64>,
    tokens_per_s: Vec<f64>,
    total_ms: Vec<f64>,
}

async fn run(artifacts: EngineArtifacts, options: Options) -> anyhow::Result<()> {
    let node = TestNode::start()?;
    let engine = LlamaServer::start(&artifacts, Model::Chat, options.threads)?;
    let enclave = serve_model(
        &node,
        &artifacts.chat_dir,
        "127.0.0.1:0",
        &engine.url(),
        &[],
    )?;
    let policy = policy_for(&[node.ak_name()?], model_digest(&artifacts.chat_dir)?);
    let client = AttestedClient::new(policy)?;
    let endpoint = Endpoint::new("127.0.0.1", enclave.port);
    println!(
        "llama bench: {} rounds x {} streamed requests of {} tokens per path; llama-server {} threads",
        options.rounds,
        options.requests,
        options.tokens,
        options.threads
    );

    // Warm-up: the model's first decode, both paths.
    for path in [Path::Direct, Path::Enclave] {
        let mut conn = connect(path, &engine, &client, &endpoint)
            .await
            .with_context(|| format!("connect: {}", path.name()))?;
        stream(&mut conn, options.tokens)
            .await
            .with_context(|| format!("warm-up: {}", path.name()))?;
    }

    let mut samples = [Samples::default(), Samples::default()];
    let mut attest_ms = Vec::new();
    let mut upstream_502 = 0usize;
    for round in 0..options.rounds {
        for (i, path) in [Path::Direct, Path::Enclave].into_iter().enumerate() {
            let t = Instant::now();
            let mut conn = connect(path, &engine, &client, &endpoint).await?;
            if path == Path::Enclave {
                attest_ms.push(ms(t.elapsed()));
            }
            for _ in 0..options.requests {
                let (ttft, rate, total) = match stream(&mut conn, options.tokens).await {
                    // The enclave answers 502 when it forwarded on a pooled
                    // connection llama-server had just closed (after the
                    // previous stream): counted, and the request sent again.
                    Err(e) if path == Path::Enclave && e.to_string().contains("502") => {
                        upstream_502 += 1;
                        stream(&mut conn, options.tokens).await?
                    }
                    other => other?,
                };
                samples[i].ttft_ms.push(ms(ttft));
                samples[i].tokens_per_s.push(rate);
                samples[i].total_ms.push(ms(total));
            }
            eprintln!(
                "round {round}: {:<52} ttft p50 {:>7.2} ms  {:>7.0} tokens/s",
                path.name(),
                median(&mut samples[i].ttft_ms.clone()),
                median(&mut samples[i].tokens_per_s.clone()),
            );
        }
    }

    let n = options.rounds * options.requests;
    println!();
    println!(
        "Medians over {n} streamed requests per path ({} tokens each):",
        options.tokens
    );
    println!();
    println!("| path | time to first token ms | decode tokens/s | whole stream ms |");
    println!("| --- | --- | --- | --- |");
    let mut medians = Vec::new();
    for (i, path) in [Path::Direct, Path::Enclave].into_iter().enumerate() {
        let m = (
            median(&mut samples[i].ttft_ms),
            median(&mut samples[i].tokens_per_s),
            median(&mut samples[i].total_ms),
        );
        println!("| {} | {:.2} | {:.0} | {:.1} |", path.name(), m.0, m.1, m.2);
        medians.push(m);
    }
    println!();
    println!(
        "enclave vs direct: {:+.2} ms to the first token ({:.2}x), {:.2}x the decode rate, {:.2}x the whole stream",
        medians[1].0 - medians[0].0,
        medians[1].0 / medians[0].0,
        medians[1].1 / medians[0].1,
        medians[1].2 / medians[0].2,
    );
    println!(
        "attested connect (TLS + evidence for a fresh nonce + verification), once per connection: p50 {:.1} ms over {} connections",
        median(&mut attest_ms),
        options.rounds
    );
    println!(
        "enclave answers 502 (a pooled engine connection closed under it), sent again: {upstream_502} of {n}"
    );
    drop(enclave);
    Ok(())
}

async fn connect(
    path: Path,
    engine: &LlamaServer,
    client: &AttestedClient,
    endpoint: &Endpoint,
) -> anyhow::Result<Conn> {
    match path {
        Path::Direct => Ok(Conn::Plain(plain(engine.addr).await?, engine.addr)),
        Path::Enclave => Ok(Conn::Attested(Box::new(client.attest(endpoint).await?))),
    }
}

async fn plain(addr: std::net::SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("direct connection to llama-server: {e}");
        }
    });
    Ok(sender)
}

fn chat(tokens: usize) -> anyhow::Result<Request<Full<Bytes>>> {
    let body = serde_json::json!({
        "model": "aver-tiny-chat",
        "stream": true,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "hello, attested world"}],
    });
    Ok(Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?)
}

async fn send(
    conn: &mut Conn,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<http::Response<Incoming>> {
    Ok(match conn {
        Conn::Plain(sender, addr) => {
            // llama-server ends the connection after each streamed
            // answer (while announcing keep-alive): a new one per request.
            *sender = plain(*addr).await?;
            sender.ready().await?;
            sender.send_request(request).await?
        }
        Conn::Attested(connection) => connection.send(request).await?,
    })
}

/// One streamed completion: time to the first content chunk, decode
/// tokens/s after it, and the whole stream's time.
async fn stream(conn: &mut Conn, tokens: usize) -> anyhow::Result<(Duration, f64, Duration)> {
    let start = Instant::now();
    let response = send(conn, chat(tokens)?).await?;
    anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
    let mut body = response.into_body();
    let mut pending = Vec::new();
    let mut first = None;
    let mut last = start;
    let mut count = 0usize;
    while let Some(frame) = body.frame().await {
        let Some(data) = frame?.into_data().ok() else {
            continue;
        };
        pending.extend_from_slice(&data);
        // Complete SSE events end with a blank line.
        while let Some(end) = find(&pending, b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let Some(json) = event.strip_prefix(b"data: ") else {
                continue;
            };
            if json.starts_with(b"[DONE]") {
                continue;
            }
            let chunk: serde_json::Value = serde_json::from_slice(json)?;
            let has_content = chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty());
            if has_content {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                count += 1;
            }
        }
    }
    let first = first.context("the stream had no content")?;
    anyhow::ensure!(
        count == tokens,
        "{count} content chunks for {tokens} tokens"
    );
    let decode = last.duration_since(first).as_secs_f64();
    let rate = if decode > 0.0 {
        (count - 1) as f64 / decode
    } else {
        f64::NAN
    };
    Ok((first.duration_since(start), rate, start.elapsed()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
