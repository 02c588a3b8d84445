//! keyward-pki: the certificate plumbing every TLS endpoint shares. [`SpkiPinVerifier`] trusts a
//! peer by the SHA-256 of its SubjectPublicKeyInfo ([`spki_sha256`]: KRP/1, the admin client's
//! first contact, the live attestation binding); [`load_certs`] and [`load_key`] read
//! certificate chains and private keys from PEM files, the
//! key bytes wiped after parsing. One copy of each, so the KRS, the agent and the admin API
//! cannot drift apart again.

mod pem;
mod tlspin;

// Reading PEM files: certificate chains and private keys.
pub use pem::{load_certs, load_key, PemError};
// Trust by key: the SPKI hash of a certificate and the rustls verifier that pins it.
pub use tlspin::{spki_sha256, SpkiError, SpkiPinVerifier};
