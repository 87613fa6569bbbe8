//! llama.cpp's `llama-server` as the engine behind the enclave, with the
//! models `scripts/engine.sh` prepares (a generated chat model, the real
//! all-MiniLM-L6-v2 converted for embeddings). Used by `aver-llama-rig`
//! and the `llama` bench.
//!
//! The engine profile is the one docs/engines.md gives for llama.cpp:
//! `--host 127.0.0.1 --port P -m MODEL.gguf` (plus `--embeddings` for an
//! embedding model), so only the enclave next to it can reach it.

use std::fmt;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::node::{listening_url, TestNode};

/// How long llama-server gets to load a model and answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The chat model's file in its directory.
pub const CHAT_MODEL_FILE: &str = "aver-tiny-chat.gguf";
/// The embedding model's file in its directory.
pub const EMBED_MODEL_FILE: &str = "all-minilm-l6-v2.gguf";

/// Why the engine cannot be used.
#[derive(Debug)]
pub enum EngineError {
    /// `scripts/engine.sh` has not been run (or not to the end).
    NotBuilt(PathBuf),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotBuilt(path) => write!(
                f,
                "{} is missing: build the engine and models first (bash scripts/engine.sh)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for EngineError {}

/// Where `scripts/engine.sh` put the engine and the models.
#[derive(Clone, Debug)]
pub struct EngineArtifacts {
    pub server: PathBuf,
    pub chat_dir: PathBuf,
    pub embed_dir: PathBuf,
}

impl EngineArtifacts {
    /// From `AVER_LLAMA_SERVER`, `AVER_LLAMA_CHAT_DIR`,
    /// `AVER_LLAMA_EMBED_DIR`, else below `AVER_ENGINE_DIR`, else
    /// `target/engine` of this workspace.
    pub fn locate() -> Result<Self, EngineError> {
        let base = std::env::var_os("AVER_ENGINE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("target")
                    .join("engine")
            });
        let pick = |var: &str, default: PathBuf| {
            std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
        };
        let artifacts = Self {
            server: pick("AVER_LLAMA_SERVER", base.join("bin").join("llama-server")),
            chat_dir: pick("AVER_LLAMA_CHAT_DIR", base.join("models").join("chat")),
            embed_dir: pick("AVER_LLAMA_EMBED_DIR", base.join("models").join("embed")),
        };
        for path in [
            artifacts.server.clone(),
            artifacts.chat_dir.join(CHAT_MODEL_FILE),
            artifacts.embed_dir.join(EMBED_MODEL_FILE),
        ] {
            if !path.is_file() {
                return Err(EngineError::NotBuilt(path));
            }
        }
        Ok(artifacts)
    }
}

/// Which model a server loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    Chat,
    Embed,
}

impl Model {
    /// The model's directory (what the enclave measures).
    pub fn dir(self, artifacts: &EngineArtifacts) -> &Path {
        match self {
            Self::Chat => &artifacts.chat_dir,
            Self::Embed => &artifacts.embed_dir,
        }
    }

    fn file(self, artifacts: &EngineArtifacts) -> PathBuf {
        match self {
            Self::Chat => artifacts.chat_dir.join(CHAT_MODEL_FILE),
            Self::Embed => artifacts.embed_dir.join(EMBED_MODEL_FILE),
        }
    }

    /// The model's name in the API (`model` in requests and answers).
    pub fn alias(self) -> &'static str {
        match self {
            Self::Chat => "aver-tiny-chat",
            Self::Embed => "all-minilm-l6-v2",
        }
    }
}

/// The arguments of `llama-server` for `model` on 127.0.0.1:`port` (0: a
/// free port, which the server logs). `threads`: CPU threads for inference.
pub fn server_args(
    artifacts: &EngineArtifacts,
    model: Model,
    port: u16,
    threads: usize,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string().into(),
        "-m".into(),
        model.file(artifacts).into(),
        "--alias".into(),
        model.alias().into(),
        "--threads".into(),
        threads.to_string().into(),
        "--ctx-size".into(),
        "2048".into(),
        "--parallel".into(),
        "2".into(),
        "--no-webui".into(),
    ];
    if model == Model::Embed {
        args.push("--embeddings".into());
    }
    args
}

/// A running `llama-server` on loopback; killed and reaped on drop.
pub struct LlamaServer {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: SocketAddr,
    /// The server's log (stderr), for failure messages.
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl LlamaServer {
    /// Starts the server for `model` on a free loopback port with
    /// `threads` inference threads and waits until `/health` answers 200
    /// (model loaded). One thread is the robust choice on a shared machine:
    /// llama.cpp's threads wait for each other at every step, so each one
    /// that is preempted stalls the rest.
    pub fn start(
        artifacts: &EngineArtifacts,
        model: Model,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let log_dir = tempfile::Builder::new().prefix("aver-llama-").tempdir()?;
        let log = log_dir.path().join("llama-server.log");
        let mut child = Command::new(&artifacts.server)
            .args(server_args(artifacts, model, 0, threads))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{} starts", artifacts.server.display()))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        // Drains stderr into the log for the server's whole life, and hands
        // over the address it listens on.
        std::thread::spawn(move || {
            let Ok(mut file) = std::fs::File::create(&log_path) else {
                return;
            };
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Some((_, addr)) = line.split_once("listening on http://") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _log_dir: log_dir,
        };
        let addr = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => bail!(
                "llama-server did not start listening: {}",
                server.log_tail()
            ),
        };
        server.addr = addr
            .parse()
            .with_context(|| format!("llama-server listens on {addr:?}"))?;
        server.wait_healthy()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("llama-server exited ({status}): {}", self.log_tail());
            }
            if health(self.addr).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("llama-server not healthy in time: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /health` answered 200.
fn health(addr: SocketAddr) -> std::io::Result<bool> {
    use std::io::Read as _;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head)?;
    Ok(&head[9..12] == b"200")
}

/// `aver-enclave serve` on `node`'s TPM measuring `model_dir` (instead of
/// the node's own tiny model), listening on `listen`, in front of
/// `upstream`. The URL it returns names 127.0.0.1 even when it listens on
/// all addresses.
pub fn serve_model(
    node: &TestNode,
    model_dir: &Path,
    listen: &str,
    upstream: &str,
    extra: &[&str],
) -> anyhow::Result<Enclave> {
    let mut args = node.enclave_args("serve", &node.tpm.tcti());
    let at = args
        .iter()
        .position(|a| a == "--model-dir")
        .context("the enclave's arguments name a model directory")?;
    args[at + 1] = model_dir.into();
    let mut child = Command::new(crate::cargo_bin("aver-enclave"))
        .args(args)
        .args(["--listen", listen, "--upstream", upstream])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("aver-enclave serve starts")?;
    let (_, port) = listening_url(&mut child)?;
    Ok(Enclave {
        child,
        url: format!("https://127.0.0.1:{port}"),
        port,
    })
}

/// A running `aver-enclave serve` from [`serve_model`]; killed when dropped.
pub struct Enclave {
    child: Child,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
}

impl Drop for Enclave {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay on loopback that counts the bytes clients send through it:
/// put between the enclave and the engine, it shows what reached the
/// engine.
pub struct CountingRelay {
    pub addr: SocketAddr,
    sent: Arc<AtomicU64>,
}

impl CountingRelay {
    /// Starts the relay in front of `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(engine) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = engine.set_nodelay(true);
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut engine_read, mut engine_write) = engine.into_split();
                    let upload = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = client_read.read(&mut buf).await?;
                            if n == 0 {
                                return engine_write.shutdown().await;
                            }
                            engine_write.write_all(&buf[..n]).await?;
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    };
                    // When the engine closes (llama-server ends idle
                    // keep-alive connections after a few seconds), so does
                    // the relay, so that the enclave's pool drops the
                    // connection instead of sending into a dead one.
                    let download = async move {
                        let copied = tokio::io::copy(&mut engine_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                        copied
                    };
                    let _ = tokio::join!(upload, download);
                });
            }
        });
        Ok(Self { addr, sent })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes sent towards the engine so far.
    pub fn bytes_to_engine(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}
