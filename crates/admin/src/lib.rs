//! The mutual-TLS admin API and its client: key, grant and credential management for operators
//! who have no shell on the appliance. JSON over HTTPS on its own listener (never the XKS port);
//! every client certificate must chain to the operator's CA (read once at boot, [`OperatorCa`])
//! and carries roles (viewer, operator, security; destructive or secret-revealing
//! requests also need M-of-N approval). The operator's first contact, `keyward admin
//! trust` (pin the appliance's TLS key only after live attestation bound to it verifies), runs
//! in the binary beside `keyward verify`: this crate does not link the verifier.

#[cfg(feature = "acme")]
mod acme;
mod approval;
mod cli;
mod client;
mod export;
mod import;
mod ops;
mod pki;
// The admin API's wire format (every request and answer body): a namespace of message types.
pub mod proto;
mod role;
mod server;
mod tls;

// `keyward admin ...` in the binary: its arguments, the store subcommands the appliance runs
// itself, and what `keyward admin trust` is handed.
pub use cli::{run, Args, StoreCommand, TrustRequest};

// The listener the appliance serves, and what it asks of the appliance (keys, fleet, TLS,
// metrics).
pub use ops::{FleetAdmin, MetricsSource, RegistryBackend, TlsAdmin};
pub use server::{AdminError, AdminServer, ServerError};
pub use tls::{OperatorCa, ServerTrust, TlsError};

// The client side: an operator's profile and the admin URL it names.
pub use client::{parse_url, Profile};

// The operator CA and certificates the demo and the fleet kit issue.
pub use pki::{write_file, Ca};
