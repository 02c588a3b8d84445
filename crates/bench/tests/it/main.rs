//! The integration tests of keyward-bench, one binary with a module per area (as rustls does):
//! they link this crate and what it depends on, not the whole workspace.

use std::path::PathBuf;

mod bench_settings;

/// The repository root (test data, policies and scripts live there).
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
