//! `[master_key] source = "release"`: the settings of the attested key release.
//!
//! SEAM for the release helper: this file defines [`ReleaseConfig`] and parses its keys from the
//! `[master_key]` section (or a sub-table such as `[master_key.release]`) through the same
//! [`Section`] walker, so every unknown or malformed key is reported with its path. Until the
//! boot agent lands, the raw table is kept and `source = "release"` is reported as unavailable.

use super::reader::{Problems, Section};

/// Settings of the boot agent (KRS URL, pins, attesters). Placeholder: the raw sub-table.
#[derive(Debug, Clone)]
pub struct ReleaseConfig {
    pub table: toml::Table,
}

/// Parse the release settings from the `[master_key]` section.
pub fn parse(s: &mut Section, p: &mut Problems) -> Option<ReleaseConfig> {
    // Mark the sub-table as read so it is not also reported as an unknown key.
    let _raw = s.raw("release");
    p.invalid(
        s.key_path("source"),
        "source = \"release\" is not available in this build yet; use source = \"file\"",
    );
    None
}
