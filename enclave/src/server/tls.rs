//! The enclave's TLS endpoint: a self-signed certificate over the in-memory
//! key. No CA is involved because clients trust the key through evidence,
//! not through a certificate chain.

use std::sync::Arc;

use rcgen::CertificateParams;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
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
///
/// Neither rcgen nor rustls receives the private key: both sign through
/// `key`, whose scalar stays in its locked page (see [`crate::tls_key`]).
pub fn server_config(
    key: &TlsKey,
    names: &[String],
) -> Result<(Arc<ServerConfig>, CertificateDer<'static>), ServerTlsError> {
    let params = CertificateParams::new(names.to_vec())?;
    let cert_der = key.self_signed(&params)?.der().clone();
    let certified = CertifiedKey::new(vec![cert_der.clone()], key.rustls_signing_key());
    // What `with_single_cert` checks: the certificate is the signer's.
    certified.keys_match()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert_der))
}
