//! The integration tests of keyward-xks, one binary with a module per area (as rustls does):
//! they link this crate and what it depends on, not the whole workspace.

// TODO(issue 13): the helpers (and the root tests/it files included by path) are `pub`; make
// them `pub(crate)` (this crate is another branch's while the workspace turns unreachable_pub on).
#![allow(unreachable_pub)]

use std::path::PathBuf;

mod xks_api;
// keyward-integration-tests' helpers, by path: that crate depends on this one, so a
// dev-dependency back would link keyward-xks twice.
#[path = "../../../integration-tests/src/tools.rs"]
pub mod tools;
#[path = "../../../integration-tests/src/xks_common.rs"]
mod xks_common;

/// The repository root (test data, policies and scripts live there).
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
