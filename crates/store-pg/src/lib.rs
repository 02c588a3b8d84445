//! The PostgreSQL key store: one store shared by a fleet of appliances, beside the file store
//! (`keyward_keystore::FileKeyStore`) that single appliances and `make run` keep using.
//!
//! The database holds exactly what the file store holds on disk: the header, the sealed and
//! chained records ([`keyward_keystore::SignedRecord`] JSON, verbatim) and the sealed
//! head. It never sees a secret in clear and is trusted for nothing but availability: every
//! record is verified by the registry when it is read, so a row changed or deleted in the
//! database is refused at open like a changed line on disk.
//!
//! * [`PgConfig`]: the connection settings (URL without a password, CA file, password file,
//!   timeouts); TLS is verified against the CA (verify-full), plain TCP only on loopback.
//! * [`PgKeyStore`]: the [`keyward_keystore::KeyStore`] implementation (`shared() == true`):
//!   appends are a compare-and-set on the head row under a primary key, in one transaction.
//! * [`migrate`]: the versioned schema, also run at every connect.
//! * [`PgFleetBoard`]: members' heartbeats ([`keyward_keystore::FleetBoard`]).
//! * [`SharedPgStore`], [`SharedPgBoard`]: the two on a thread of their own, callable and
//!   droppable from any context, an async task included (what the appliance uses).
//! * [`Watcher`]: LISTEN/NOTIFY (with a periodic poll as the fallback) to wake members when
//!   another one wrote.
//! * `local` (feature `local`): a throwaway server from the machine's own PostgreSQL binaries,
//!   for tests and `keyward demo --fleet`.
//!
//! Every call is blocking I/O. The registry makes them from `tokio::task::spawn_blocking`
//! threads: the `postgres` client drives its connection on a small current-thread runtime of
//! its own, which is allowed there (spawn_blocking threads are not inside the async runtime's
//! executor; the test `blocking_client_in_spawn_blocking` checks it). It must never be called
//! from an async task itself (tokio refuses a runtime inside a runtime).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod actor;
mod config;
mod fleet;
mod schema;
mod store;
mod watch;

// A namespace of its own: the throwaway test server (feature `local`), never the product's store.
#[cfg(feature = "local")]
pub mod local;

pub use actor::{SharedPgBoard, SharedPgStore};
pub use config::{PgConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};
pub use fleet::PgFleetBoard;
pub use schema::{migrate, MigrateReport, SCHEMA_VERSION};
pub use store::{PgKeyStore, NOTIFY_CHANNEL};
pub use watch::Watcher;

/// Test-only crash point: with `KEYWARD_TEST_CRASH_AT=<name>` the process aborts here (as a
/// `kill -9` would stop it). Compiled only into builds with the `test-hooks` feature (this
/// crate's own tests), never into the appliance.
#[cfg(feature = "test-hooks")]
pub(crate) fn crash_point(name: &str) {
    if std::env::var("KEYWARD_TEST_CRASH_AT").as_deref() == Ok(name) {
        eprintln!("KEYWARD_TEST_CRASH_AT={name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn crash_point(_: &str) {}
