//! Trust by key, not by name: the SHA-256 of a certificate's SubjectPublicKeyInfo, and a rustls
//! client verifier that accepts exactly the server key with a pinned hash.
//!
//! Used where the peer's key is known ahead and no Web PKI is involved: the agent's KRP/1
//! connection to the KRS (pinned in the user data and PCR 15), and the admin client before the
//! appliance's own TLS key has a CA-issued chain (pinned to the hash the appliance logs and
//! attests). The live attestation binds the same hash of the XKS key.
//! Hand-written because rustls has no SPKI-pinning verifier; the handshake signature checks
//! are the provider's own, so only the holder of the pinned private key gets through.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a certificate's SPKI could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum SpkiError {
    /// The certificate is not DER X.509.
    #[error("certificate: {0}")]
    Certificate(#[source] der::Error),
    /// Its SubjectPublicKeyInfo does not encode back to DER.
    #[error("SPKI: {0}")]
    Spki(#[source] der::Error),
}

/// SHA-256 of the DER SubjectPublicKeyInfo inside a DER certificate.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], SpkiError> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(SpkiError::Certificate)?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(SpkiError::Spki)?;
    Ok(Sha256::digest(spki).into())
}

/// Accepts exactly a server leaf whose SPKI SHA-256 is the pin (compared in constant time) and
/// verifies the handshake signature with that key.
#[derive(Debug)]
pub struct SpkiPinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    tls12: bool,
}

impl SpkiPinVerifier {
    /// A verifier for TLS 1.2 and 1.3 handshakes.
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        SpkiPinVerifier {
            pin,
            provider,
            tls12: true,
        }
    }

    /// A verifier that refuses a TLS 1.2 handshake signature even if a client configuration
    /// ever offered TLS 1.2 (KRP/1 is TLS 1.3 only).
    pub fn tls13_only(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        SpkiPinVerifier {
            pin,
            provider,
            tls12: false,
        }
    }
}

impl ServerCertVerifier for SpkiPinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match spki_sha256(end_entity) {
            Ok(h) if bool::from(h.ct_eq(&self.pin)) => Ok(ServerCertVerified::assertion()),
            Ok(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            Err(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.tls12 {
            return Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ));
        }
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> (CertificateDer<'static>, [u8; 32]) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["pin.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // rcgen's own SPKI encoding of the key: an independent source for the hash
        let want: [u8; 32] = Sha256::digest(key.public_key_der()).into();
        (cert.der().clone(), want)
    }

    #[test]
    fn a_bad_certificate_keeps_the_der_error_as_its_source() {
        let (cert, want) = cert();
        assert_eq!(spki_sha256(cert.as_ref()).unwrap(), want);
        let e = spki_sha256(&cert.as_ref()[..cert.as_ref().len() / 2]).unwrap_err();
        assert!(matches!(e, SpkiError::Certificate(_)), "{e}");
        let source = std::error::Error::source(&e).expect("the DER error is the source");
        assert!(source.downcast_ref::<der::Error>().is_some(), "{source}");
        assert!(e.to_string().starts_with("certificate: "), "{e}");
    }

    #[test]
    fn hashes_the_spki_and_accepts_only_the_pinned_key() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (a, a_pin) = cert();
        let (b, _) = cert();
        assert_eq!(spki_sha256(a.as_ref()).unwrap(), a_pin);
        assert!(spki_sha256(b"not a certificate").is_err());
        let v = SpkiPinVerifier::new(a_pin, provider.clone());
        let name = ServerName::try_from("anything.invalid").unwrap();
        assert!(v
            .verify_server_cert(&a, &[], &name, &[], UnixTime::now())
            .is_ok());
        assert!(v
            .verify_server_cert(&b, &[], &name, &[], UnixTime::now())
            .is_err());
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(v
            .verify_server_cert(&garbage, &[], &name, &[], UnixTime::now())
            .is_err());
        // the TLS 1.3-only form pins the same way
        let v13 = SpkiPinVerifier::tls13_only(a_pin, provider);
        assert!(v13
            .verify_server_cert(&a, &[], &name, &[], UnixTime::now())
            .is_ok());
        assert!(v13
            .verify_server_cert(&b, &[], &name, &[], UnixTime::now())
            .is_err());
    }
}
