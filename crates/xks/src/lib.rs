//! The XKS Proxy API request path: route, SigV4, JSON, grants, AES-256-GCM, health.
//!
//! Read in the order of a request: `router` (method and path), [`sigv4`] (authentication),
//! `model` (JSON in and out), `error` (every XKS error and its status), `grants`
//! (secondary authorization), `crypto` (AES-256-GCM, AAD and metadata layout, CDIV),
//! `health` (the deep health check), `handlers` (route, SigV4 and content type, then one
//! file per API in `api/`: `encrypt.rs`, `decrypt.rs`, `metadata.rs`, `health.rs`, each parse ->
//! authorize -> apply in the contract's order of checks) and `server` (TLS, HTTP, mTLS, the listener) with `watchdog` (connection deadlines) and `clock` (coarse clocks).
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
mod clock;
mod crypto;
mod error;
mod grants;
mod handlers;
mod health;
mod model;
mod router;
mod server;
// SigV4 on its own (benches time `sigv4::verify`): a namespace of its request, policy and check.
pub mod sigv4;
mod watchdog;

// The listener: settings, TLS, client authentication, the hot-swappable certificate.
pub use server::{CertHandle, ClientAuth, ServerError, TlsSettings, XksServer, XksSettings};

// The request path without the listener (fuzzers, benches): context, one request, its answer.
pub use handlers::{handle, Ctx, Limits, Reply, Request};
pub use router::route;

// The deep health check and the fleet's view of the stores.
pub use health::{Health, InMemoryStore, Peer, Status as HealthStatus, StoreProbe};
