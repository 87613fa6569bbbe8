//! A TLS-terminating relay with its own key: every byte is passed on to
//! the enclave behind it, evidence requests included, so only the channel
//! binding can catch it. Used by the attested-TLS, proxy and SDK tests.

use std::net::SocketAddr;
use std::sync::Arc;

use aver_client::tls::danger::to_be_attested_client_config;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

/// Starts a relay on a free loopback port in front of `target` (a local
/// enclave's port) and returns its port.
pub async fn start_mitm(target: u16) -> anyhow::Result<u16> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.self_signed(&key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(to_be_attested_client_config()));
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let port = listener.local_addr()?.port();
    let name = ServerName::try_from("localhost")?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, connector, name) = (acceptor.clone(), connector.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(mut client_side) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let Ok(mut enclave_side) = connector.connect(name, upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client_side, &mut enclave_side).await;
            });
        }
    });
    Ok(port)
}
