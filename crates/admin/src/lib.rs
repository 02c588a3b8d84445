//! The mutual-TLS admin API and its client: key, grant and credential management for operators
//! who have no shell on the appliance. JSON over HTTPS on its own listener (never the XKS port);
//! every client certificate must chain to the operator's CA (read once at boot, [`tls::OperatorCa`])
//! and carries roles ([`role`]: viewer, operator, security; destructive or secret-revealing
//! requests also need M-of-N [`approval`]). The operator's first contact, `keyward admin
//! trust` (pin the appliance's TLS key only after live attestation bound to it verifies), runs
//! in the binary beside `keyward verify`: this crate does not link the verifier.

#[cfg(feature = "acme")]
pub mod acme;
pub mod approval;
pub mod cli;
pub mod client;
pub mod export;
pub mod import;
pub mod ops;
pub mod pki;
pub mod proto;
pub mod role;
pub mod server;
pub mod tls;
