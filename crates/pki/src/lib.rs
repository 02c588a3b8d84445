//! keyward-pki: the certificate plumbing every TLS endpoint shares. [`tlspin`] trusts a peer by
//! the SHA-256 of its SubjectPublicKeyInfo (KRP/1, the admin client's first contact, the live
//! attestation binding); [`pem`] reads certificate chains and private keys from PEM files, the
//! key bytes wiped after parsing. One copy of each, so the KRS, the agent and the admin API
//! cannot drift apart again.

pub mod pem;
pub mod tlspin;

pub use pem::{load_certs, load_key, PemError};
pub use tlspin::{spki_sha256, SpkiError, SpkiPinVerifier};
