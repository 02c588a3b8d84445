//! The integration tests of keyward-xks, one binary with a module per area (as rustls does):
//! they link this crate and what it depends on, not the whole workspace.

use std::path::PathBuf;

mod xks_api;
#[path = "../../../../tests/it/xks_common.rs"]
mod xks_common;

/// The repository root (test data, policies and scripts live there).
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
