//! The integration tests of keyward-verify, one binary with a module per area (as rustls does):
//! they link this crate and what it depends on, not the whole workspace.

use std::path::PathBuf;

mod nitro_doc;
mod verify_policy;
mod verify_sev_crosscheck;
mod verify_snp_simulated;
mod verify_snp_vectors;
mod verify_testsign;

/// The repository root (test data, policies and scripts live there).
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
