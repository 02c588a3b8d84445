//! keyward-krs: the key-release service in front of the customer's HSM (docs/key-release.md).
//!
//! Request path: `keyward_krp::tls` accepts, `keyward_krp::wire` reads a frame,
//! [`service::Service`] handles a `Hello` (pins judged against the configured [`deployment`]s,
//! a [`session`] created, `Challenge` returned) or an `Evidence` (session consumed, T recomputed,
//! evidence appraised by the shared verifier ([`appraiser`]), the HSM wraps, the receipt is
//! signed, the hash-chained [`log`] appended and fsynced) and answers `Release` or `Deny`.
//! [`limits`] bounds the work anyone may cause before authenticating; [`heads`] keeps each
//! deployment's key-store head; [`embedded`] runs a KRS on SoftHSM for the demo and tests.

pub mod appraiser;
pub mod cli;
pub mod config;
pub mod crl;
pub mod crl_fetch;
pub mod deployment;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod heads;
pub mod heads_cli;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod mk_cli;
pub mod policy;
pub mod service;
pub mod session;
pub mod softkeys;
pub mod state_lock;

pub use service::{Appraiser, Service};
