//! The XKS Proxy API request path: route, SigV4, JSON, grants, AES-256-GCM, health.
//!
//! Read in the order of a request: [`router`] (method and path), [`sigv4`] (authentication),
//! [`model`] (JSON in and out), [`error`] (every XKS error and its status), [`grants`]
//! (secondary authorization), [`crypto`] (AES-256-GCM, AAD and metadata layout, CDIV),
//! [`health`] (the deep health check), [`handlers`] (route, SigV4 and content type, then one
//! file per API in `api/`: `encrypt.rs`, `decrypt.rs`, `metadata.rs`, `health.rs`, each parse ->
//! authorize -> apply in the contract's order of checks) and [`server`] (TLS, HTTP, mTLS, the listener) with [`watchdog`] (connection deadlines) and [`clock`] (coarse clocks).
//!
//! Keys and credentials come only from the key store's view ([`keyward_keystore::StoreView`]);
//! this crate never reaches `attest`, `verify`, `krp`, `krs`, `agent` or `hsm` (`scripts/check-deps.sh`).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod api;
pub mod clock;
pub mod crypto;
pub mod error;
pub mod grants;
pub mod handlers;
pub mod health;
pub mod model;
pub mod router;
pub mod server;
pub mod sigv4;
pub mod watchdog;

pub use handlers::Limits;
pub use health::{InMemoryStore, Peer, Status as HealthStatus, StoreProbe};
pub use server::{CertHandle, ClientAuth, ServerError, TlsSettings, XksServer, XksSettings};
