//! TLS 1.3 for KRP/1 (rustls, ring provider). The KRS presents a self-generated certificate;
//! the agent does not use Web PKI at all: it accepts exactly the certificate whose
//! SubjectPublicKeyInfo hashes (SHA-256) to its pin, and checks the handshake signature with
//! that key.

use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};

use keyward_pki::SpkiPinVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] keyward_pki::PemError),
    /// rcgen could not make the self-signed certificate.
    #[error("TLS setup: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration (protocol versions, certificate and key).
    #[error("TLS setup: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A new self-signed P-384 certificate for the KRS: (cert PEM, key PEM, SPKI SHA-256).
pub fn generate_cert(names: Vec<String>) -> Result<(String, String, [u8; 32]), TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
    let params = rcgen::CertificateParams::new(names)?;
    let cert = params.self_signed(&key)?;
    let pin = Sha256::digest(key.public_key_der()).into();
    Ok((cert.pem(), key.serialize_pem(), pin))
}

/// Server configuration: TLS 1.3 only, no client authentication.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// Client configuration pinned to one SPKI hash, TLS 1.3 only.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpkiPinVerifier::tls13_only(pin, provider)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
