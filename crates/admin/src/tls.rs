//! TLS for the admin API: PEM loading, the mutual-TLS server configuration (client certificates
//! must chain to the operator's CA) and the client configuration the CLI uses. rustls with the
//! `ring` provider throughout.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

pub(crate) use keyward_pki::SpkiPinVerifier;
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] keyward_pki::PemError),
    /// rustls refused a CA certificate of the file.
    #[error("{path}: no usable CA certificate")]
    BadCa {
        path: String,
        #[source]
        source: rustls::Error,
    },
    /// rustls refused part of the configuration (`what` names the step).
    #[error("TLS configuration: {what}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the operator CA.
    #[error("TLS configuration: client certificate verifier")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// The settings give no TLS identity (the message says what to set; no cause).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The `ring` crypto provider (never aws-lc: it doubles clean build times).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) use keyward_pki::{load_certs, load_key};

/// A root store holding the CA certificates in a PEM file.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|source| TlsError::BadCa {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(roots)
}

/// The operator CA the admin listener trusts for client certificates: the certificates read
/// ONCE from `[admin] client_ca_file` (on the untrusted data volume). The boot pipeline checks
/// these very bytes against the `admin_ca_sha256` pin and hands them to the listener, so a file
/// changed after the check is never used (no check-then-use gap).
#[derive(Clone, Debug)]
pub struct OperatorCa {
    certs: Vec<CertificateDer<'static>>,
    source: String,
}

impl OperatorCa {
    /// Read the PEM file once.
    pub fn load(path: &Path) -> Result<OperatorCa, TlsError> {
        Ok(OperatorCa {
            certs: load_certs(path)?,
            source: path.display().to_string(),
        })
    }

    /// The certificates (DER), in file order.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Where they were read from (for messages).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A root store of these certificates.
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &self.certs {
            roots.add(c.clone()).map_err(|source| TlsError::BadCa {
                path: self.source.clone(),
                source,
            })?;
        }
        Ok(roots)
    }
}

/// Where the admin listener's server certificate comes from.
pub(crate) enum ServerCert<'a> {
    /// A PEM chain and key file.
    Files { cert_chain: &'a Path, key: &'a Path },
    /// A resolver shared with another listener (the appliance-managed TLS identity).
    Resolver(Arc<dyn ResolvesServerCert>),
}

/// The admin server: TLS 1.2/1.3, a client certificate from the operator CA is mandatory; the
/// server certificate from files or a shared resolver, and the operator CA as already read (and
/// checked) by the caller.
pub(crate) fn server_config_with(
    cert: ServerCert<'_>,
    client_ca: &OperatorCa,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(client_ca.roots()?);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(TlsError::ClientVerifier)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?
        .with_client_cert_verifier(verifier);
    let mut cfg = match cert {
        ServerCert::Files { cert_chain, key } => builder
            .with_single_cert(load_certs(cert_chain)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls {
                what: "server certificate and key",
                source,
            })?,
        ServerCert::Resolver(r) => builder.with_cert_resolver(r),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// How the admin client authenticates the server.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// The server's chain must lead to a CA in this PEM file (and name the host).
    Ca(std::path::PathBuf),
    /// The server's leaf must hold exactly the public key with this SPKI SHA-256 (the
    /// appliance-managed key, read from the appliance's console or `tls show`); names and
    /// issuers are not checked.
    SpkiSha256([u8; 32]),
}

/// The admin client with either trust: a CA or an SPKI pin. Presents `cert`/`key`.
pub(crate) fn client_config_with(
    trust: &ServerTrust,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?;
    let builder = match trust {
        ServerTrust::Ca(ca) => builder.with_root_certificates(load_roots(ca)?),
        ServerTrust::SpkiSha256(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpkiPinVerifier::new(*pin, provider()))),
    };
    let mut cfg = builder
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|source| TlsError::Rustls {
            what: "client certificate and key",
            source,
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Parse a 64-hex-digit SHA-256 (case-insensitive, `:` separators allowed).
pub(crate) fn parse_sha256_hex(s: &str) -> Result<[u8; 32], String> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(clean.trim(), &mut out)
        .map_err(|_| "server_spki_sha256 must be 64 hex digits (a SHA-256)".to_string())?;
    Ok(out)
}

/// The subject of a DER certificate as an RFC 4514 string (`CN=ops-admin,O=...`).
pub(crate) fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    use der::Decode;
    let c = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    Some(c.tbs_certificate.subject.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{write_file, Ca, Issued};
    use rustls::pki_types::ServerName;

    #[test]
    fn a_ca_certificate_rustls_refuses_keeps_the_rustls_error() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        write_file(&path, pem.as_bytes(), false).unwrap();
        let e = OperatorCa::load(&path).unwrap().roots().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: no usable CA certificate", path.display())
        );
        let src = e.source().and_then(|s| s.downcast_ref::<rustls::Error>());
        assert!(
            matches!(src, Some(rustls::Error::InvalidCertificate(_))),
            "{e:?}"
        );
    }

    fn der_of(pem: &str) -> CertificateDer<'static> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    /// Serves `chain` but signs the handshake with `key` (which may not match).
    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);
    impl ResolvesServerCert for Fixed {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// A TLS handshake over an in-memory pipe: the server presents `cert`'s certificate and
    /// signs with `signing`'s key; the client trusts `trust`. Whether the client got through.
    fn handshake(cert: &Issued, signing: &Issued, ca: &Ca, trust: ServerTrust) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let client = ca.client("op", 1).unwrap();
        write_file(&d.join("c.pem"), client.cert_pem.as_bytes(), false).unwrap();
        write_file(&d.join("c.key"), client.key_pem.as_bytes(), true).unwrap();
        write_file(&d.join("ca.pem"), ca.cert_pem().as_bytes(), false).unwrap();
        let key = rustls_pemfile::private_key(&mut signing.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
        let ck = rustls::sign::CertifiedKey::new(vec![der_of(&cert.cert_pem)], signer);
        let scfg = server_config_with(
            ServerCert::Resolver(Arc::new(Fixed(Arc::new(ck)))),
            &OperatorCa::load(&d.join("ca.pem")).unwrap(),
        )
        .unwrap();
        let ccfg = client_config_with(&trust, &d.join("c.pem"), &d.join("c.key")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(async move {
                let _ = tokio_rustls::TlsAcceptor::from(scfg).accept(a).await;
            });
            let name = ServerName::try_from("appliance.invalid").unwrap();
            let ok = match tokio_rustls::TlsConnector::from(ccfg)
                .connect(name, b)
                .await
            {
                // TLS 1.3: the client finishes first; a server that refused the client's
                // certificate would close here, so write and read once to be sure.
                Ok(mut s) => {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    s.write_all(b"x").await.is_ok() && {
                        let mut b = [0u8; 1];
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_millis(200),
                            s.read(&mut b),
                        )
                        .await;
                        true
                    }
                }
                Err(_) => false,
            };
            let _ = server.await;
            ok
        })
    }

    #[test]
    fn spki_pin_accepts_exactly_the_pinned_key() {
        let ca = Ca::new("ops CA").unwrap();
        // A certificate for another name than the client dials: a CA check refuses it, the
        // pin (which checks the key only) accepts it.
        let server = ca.server(&["elsewhere.example"], 1).unwrap();
        let pin = keyward_pki::spki_sha256(der_of(&server.cert_pem).as_ref()).unwrap();
        let ca_path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_path.path(), ca.cert_pem()).unwrap();
        assert!(!handshake(
            &server,
            &server,
            &ca,
            ServerTrust::Ca(ca_path.path().to_path_buf())
        ));
        assert!(handshake(
            &server,
            &server,
            &ca,
            ServerTrust::SpkiSha256(pin)
        ));
        let mut wrong = pin;
        wrong[0] ^= 1;
        assert!(!handshake(
            &server,
            &server,
            &ca,
            ServerTrust::SpkiSha256(wrong)
        ));
        // The pinned certificate presented by a server without its private key (another key
        // signs the handshake): refused, the pin alone is not enough.
        let impostor = ca.server(&["elsewhere.example"], 1).unwrap();
        assert!(!handshake(
            &server,
            &impostor,
            &ca,
            ServerTrust::SpkiSha256(pin)
        ));
    }

    #[test]
    fn sha256_hex_parsing() {
        let h = "ab".repeat(32);
        assert_eq!(parse_sha256_hex(&h).unwrap(), [0xab; 32]);
        assert_eq!(parse_sha256_hex(&h.to_uppercase()).unwrap(), [0xab; 32]);
        assert!(parse_sha256_hex("abcd").is_err());
        assert!(parse_sha256_hex(&"zz".repeat(32)).is_err());
    }
}
