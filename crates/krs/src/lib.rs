//! keyward-krs: the key-release service in front of the customer's HSM (docs/key-release.md).
//!
//! Request path: `keyward_krp::tls` accepts, `keyward_krp::wire` reads a frame,
//! [`Service`] handles a `Hello` (pins judged against the configured deployments,
//! a session created, `Challenge` returned) or an `Evidence` (session consumed, T recomputed,
//! evidence appraised by the shared verifier ([`Appraiser`]), the HSM wraps, the receipt is
//! signed, the hash-chained release log appended and fsynced) and answers `Release` or `Deny`.
//! The limits bound the work anyone may cause before authenticating; the heads keep each
//! deployment's key-store head; `embedded` (feature `embedded`) runs a KRS on SoftHSM for the
//! demo and tests.

mod appraiser;
mod cli;
mod config;
mod crl;
mod crl_fetch;
mod deployment;
mod heads;
mod heads_cli;
mod limits;
mod log;
mod metrics;
mod mk_cli;
mod policy;
mod service;
mod session;
mod softkeys;
mod state_lock;

// A namespace of its own: the KRS `keyward demo` and the tests run (feature `embedded`: it
// trusts the test AMD root), never the `krs` binary build.
#[cfg(feature = "embedded")]
pub mod embedded;

// The `keyward krs` subcommand (init, serve, status, heads, mk, log verify, ...).
pub use cli::{run, Args};

// The service itself and the appraisal seam it judges evidence through.
pub use service::{Appraiser, Service};

// The software key backend (the demo's and the fault tests' stand-in for the HSM).
pub use softkeys::SoftKeys;

// What an operator or a test checks offline: the release log, a signed policy, a deployment's
// pins digest, the status line.
pub use deployment::pins_sha384;
pub use limits::Status;
pub use log::verify_file as verify_release_log;
pub use policy::sign as sign_policy;
