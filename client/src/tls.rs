//! rustls configuration for attested connections.
//!
//! No CA vouches for an enclave's self-signed certificate, and none needs to:
//! trust comes from TPM evidence bound to the certificate's key. The
//! handshake still proves possession of that key (TLS 1.3 signatures are
//! verified as usual), so evidence bound to the key binds the connection.
//!
//! Accepting any server key is possible only by naming the danger
//! ([`danger::to_be_attested_client_config`]); the setting itself is private:
//! ```compile_fail,E0603
//! let _ = aver_client::tls::KeyAcceptance::ToBeAttested;
//! ```

use std::sync::Arc;

use aver_crds::Sha256Digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use aver_verifier::binding::spki_sha256;

/// Which server keys a connection accepts.
#[derive(Debug, Clone)]
pub(crate) enum KeyAcceptance {
    /// Any key: the connection is about to be attested, and nothing is sent
    /// on it but the evidence request until the evidence verifies.
    ToBeAttested,
    /// Only a key whose SPKI was attested earlier and is still pinned.
    Pinned(Vec<Sha256Digest>),
}

#[derive(Debug)]
struct EvidenceBoundVerifier {
    provider: Arc<CryptoProvider>,
    accept: KeyAcceptance,
}

impl ServerCertVerifier for EvidenceBoundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.accept {
            KeyAcceptance::ToBeAttested => Ok(ServerCertVerified::assertion()),
            KeyAcceptance::Pinned(pins) => {
                let spki = spki_sha256(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
                })?;
                if pins.contains(&spki) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure,
                    ))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config offers TLS 1.3 only; a TLS 1.2 signature is never valid here.
        Err(rustls::Error::General(
            "TLS 1.2 is not accepted for attested connections".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3-only client configuration that accepts only server keys whose
/// SPKI SHA-256 is in `pins` (keys attested earlier). Usable directly with
/// `tokio-rustls`, or handed to `reqwest` (`use_preconfigured_tls`) so
/// existing HTTP code talks only to attested keys.
pub fn client_config(pins: Vec<Sha256Digest>) -> ClientConfig {
    config(KeyAcceptance::Pinned(pins))
}

/// What skips the certificate check, for code that attests the connection
/// itself afterwards.
pub mod danger {
    use rustls::ClientConfig;

    /// A TLS 1.3-only client configuration that accepts **any** server key.
    ///
    /// Nothing on such a connection is trustworthy until evidence bound to
    /// the key it got has verified: send the evidence request and nothing
    /// else (no prompt, no credential) before that. [`crate`]
    /// attests this way; everything else wants [`super::client_config`].
    pub fn to_be_attested_client_config() -> ClientConfig {
        super::config(super::KeyAcceptance::ToBeAttested)
    }
}

pub(crate) fn config(accept: KeyAcceptance) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(EvidenceBoundVerifier {
        provider: provider.clone(),
        accept,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
