//! The integration tests of keyward-keystore, one binary with a module per area (as rustls does):
//! they link this crate and what it depends on, not the whole workspace.

use std::path::PathBuf;

mod faults;
mod keystore_approvals;
mod keystore_backup;
mod keystore_crash;
mod keystore_freshness;
mod keystore_import_keys;
mod keystore_registry;
mod keystore_reseal;
mod keystore_rotation;

/// The repository root (test data, policies and scripts live there).
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
