//! The integration tests of keyward-xks, one binary with a module per area (as rustls does):
//! they link this crate and what it depends on, not the whole workspace.

use std::path::PathBuf;

mod xks_api;
// keyward-integration-tests' helpers, by path (`pub` as in that library): that crate depends on this one, so a
// dev-dependency back would link keyward-xks twice.
#[path = "../../../integration-tests/src/tools.rs"]
pub mod tools;
#[path = "../../../integration-tests/src/xks_common.rs"]
pub mod xks_common;

/// The repository root (test data, policies and scripts live there).
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
