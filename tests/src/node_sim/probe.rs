//! The kubelet-style readiness check of a simulated pod: the enclave says
//! it listens, then its HTTPS readiness probe passes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use aver_client::tls::danger::to_be_attested_client_config;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::pod_spec::Plan;
use super::START_PATIENCE;

/// Waits for the enclave's "listening on" line, then for its readiness
/// probe to pass; returns the certificate it served.
pub(super) async fn wait_listening_and_ready(
    child: &mut tokio::process::Child,
    plan: &Plan,
) -> anyhow::Result<Vec<u8>> {
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(START_PATIENCE, lines.next_line())
        .await
        .context("aver-enclave did not start listening in time")??
        .context(
            "aver-enclave exited before listening (see its log under the node's /var/log/pods)",
        )?;
    if !line.starts_with("listening on ") {
        bail!("aver-enclave printed {line:?} instead of its address");
    }
    // Keep draining stdout so the process never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (addr, path) = match &plan.probe {
        Some(probe) => probe.clone(),
        None => bail!("the enclave container has no readiness probe"),
    };
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    loop {
        match probe_https(addr, &path).await {
            Ok((200..=399, cert)) => return Ok(cert),
            Ok((status, _)) if tokio::time::Instant::now() >= deadline => {
                bail!("readiness probe https://{addr}{path} answered {status}")
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("readiness probe https://{addr}{path}")))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One HTTPS GET without certificate checks (what a kubelet's probe does);
/// the status and the server's certificate.
async fn probe_https(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(to_be_attested_client_config()));
    let tls = tokio::time::timeout(
        Duration::from_secs(2),
        connector.connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .context("no certificate")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(2), sender.send_request(request))
        .await
        .context("probe timed out")??;
    Ok((response.status().as_u16(), cert))
}
