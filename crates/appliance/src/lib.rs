//! The appliance: the boot pipeline `attest → release → unseal → serve` in one process, with
//! sd_notify and phase logging.
//!
//! [`MasterKeySource`] (from `keyward-keystore`) is the seam between where the master key comes
//! from (a key file, or the attested release of [`release_source`]) and everything after it.
//!
//! [`boot`] runs the phases up to bound listeners and returns a [`Running`] appliance;
//! [`Running::serve_until`] serves until a shutdown signal, then stops accepting, drains and
//! flushes the audit log. `keyward serve` and `keyward demo` both go through here.

// The binary's subcommands, their arguments and their runs, as main.rs names them:
// `keyward serve` (`cli::ServeArgs`, `cli::serve`) and `keyward store` (`restore::Args`).
pub mod cli;
pub mod restore;

mod fleet;
mod masterkey;
mod metrics;
mod notify;
mod release;
mod schedule;
mod storage;
mod tls;

use std::net::SocketAddr;

// Where the master key comes from: a key file, or the attested release from the configuration.
pub use keyward_keystore::{MasterKeyError, MasterKeySource};
pub use masterkey::FileMasterKey;
pub use release::{build_attesters, release_source};
// sd_notify: readiness, status lines and the watchdog.
pub use notify::Notifier;
// The configured key store backend, opened as `serve` opens it (the fleet tools fill one).
pub use storage::{open as open_storage, Opened};
// The TLS certificate chain check `serve` and the admin API apply to an uploaded chain.
pub use tls::check_chain;

/// Errors during boot. Each variant names the step that failed and keeps what caused it as its
/// `source()`: the CLI prints the whole chain once (`keyward: key store: ...: No such file`).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("memory")]
    Memory(#[from] keyward_secret::SecretError),
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    #[error("key store")]
    Keystore(#[from] keyward_keystore::KeystoreError),
    #[error("audit log")]
    Audit(#[source] keyward_audit::AuditError),
    /// A boot step run on the blocking pool panicked or was cancelled.
    #[error("{0} task")]
    Task(&'static str, #[source] tokio::task::JoinError),
    #[error("cannot read {}", .0.display())]
    Read(std::path::PathBuf, #[source] std::io::Error),
    #[error("XKS listener")]
    Xks(#[from] keyward_xks::ServerError),
    #[error("XKS TLS certificate {}: {why}", path.display())]
    XksCertificate {
        path: std::path::PathBuf,
        #[source]
        why: keyward_attest::live::PemSpkiError,
    },
    #[error("attestation listener {0}")]
    Attestation(SocketAddr, #[source] std::io::Error),
    #[error("signal handler")]
    Signal(#[source] std::io::Error),
    #[error("admin listener")]
    Admin(#[from] keyward_admin::ServerError),
    #[error("pins: {0}")]
    Pins(#[from] AdminCaError),
    #[error("clock: {0}")]
    Clock(String),
    /// The FIPS build found AWS-LC not in FIPS mode (its power-on self tests failed, or the
    /// module is not the validated one): it refuses to serve rather than serve unvalidated.
    #[error("this is the FIPS build, but AWS-LC's FIPS module is not in FIPS mode")]
    NotFips,
    #[error("appliance TLS identity")]
    Tls(#[from] tls::TlsIdError),
}

/// Why the operator CA file was refused at boot (it must be the one the `admin_ca_sha256` pin
/// names: the pin is attested, the file is on the untrusted data volume).
#[derive(Debug, thiserror::Error)]
pub enum AdminCaError {
    #[error("admin CA {}: {source}", path.display())]
    Load {
        path: std::path::PathBuf,
        #[source]
        source: keyward_admin::TlsError,
    },
    #[error("admin CA {}: holds {count} certificates; the admin_ca_sha256 pin names exactly one", path.display())]
    Count {
        path: std::path::PathBuf,
        count: usize,
    },
    #[error("admin CA {}: its SHA-256 is {got}, not the admin_ca_sha256 pin {pin}: refusing to start", path.display())]
    Mismatch {
        path: std::path::PathBuf,
        got: String,
        pin: String,
    },
}

/// Addresses the appliance serves on, once bound.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub xks: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Log a boot phase on the log (and so on stderr) as `phase=NAME`.
pub fn phase(name: &'static str, what: &str) {
    tracing::info!(phase = %name, "{what}");
}

pub use run::{boot, Running};

mod run;
