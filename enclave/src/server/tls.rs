//! The enclave's TLS endpoint: a self-signed certificate over the in-memory
//! key. No CA is involved because clients trust the key through evidence,
//! not through a certificate chain.

use std::sync::Arc;

use rcgen::CertificateParams;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

use crate::tls_key::TlsKey;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("cannot build the enclave certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot configure TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS 1.3-only server configuration whose certificate carries `key`.
/// Returns the certificate DER as well, for logging its digest.
pub fn server_config(
    key: &TlsKey,
    names: &[String],
) -> Result<(Arc<ServerConfig>, CertificateDer<'static>), ServerTlsError> {
    let params = CertificateParams::new(names.to_vec())?;
    let cert = params.self_signed(key.key_pair())?;
    let cert_der = cert.der().clone();
    // The PKCS#8 copy handed to rustls stays in this process's memory.
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_pair().serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], private)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert_der))
}
