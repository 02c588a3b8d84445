//! `[master_key] source = "release"`: the settings of the attested key release, in the
//! `[master_key.release]` sub-table. Parsed through the same [`Section`] walker as the rest of
//! the configuration, so every unknown or malformed key is reported with its path.
//!
//! ```toml
//! [master_key]
//! source = "release"
//! [master_key.release]
//! krs_url = "krs.example.com:7443"
//! krs_fallback_urls = ["krs-b.example.com:7443"]   # optional: the same KRS, other instances
//! krs_tls_spki_sha256 = "<64 hex>"    # printed by `keyward krs init`
//! receipt_spki_sha256 = "<64 hex>"    # printed by `keyward krs init`
//! admin_ca_sha256 = "<64 hex>"        # optional
//! attesters = ["snp", "nitrotpm"]     # or "tpm"; "simulated-snp" only for tests/demo
//! tpm_tcti = "device:/dev/tpmrm0"     # optional, for "tpm"/"nitrotpm"
//! timeout_secs = 10
//! retry_initial_ms = 1000
//! retry_max_secs = 60
//! policy_deny_retry_secs = 300
//! max_attempts = 0                    # 0 = keep trying
//! ```

use super::reader::{Problems, Section};
use serde::{Deserialize, Serialize};

/// Known attester names.
pub(crate) const ATTESTERS: &[&str] = &["snp", "tpm", "nitrotpm", "simulated-snp"];

/// Settings of the boot agent.
#[derive(Debug, Clone)]
pub struct ReleaseConfig {
    pub agent: AgentConfig,
    /// TCTI for the `tpm` / `nitrotpm` attesters (default `device:/dev/tpmrm0`).
    pub tpm_tcti: Option<String>,
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    pub policy_deny_retry_secs: u64,
    /// 0 = keep trying.
    pub max_attempts: u32,
}

/// Parse the release settings from the `[master_key]` section.
pub(crate) fn parse(s: &mut Section, p: &mut Problems) -> Option<ReleaseConfig> {
    let Some(mut r) = s.table("release", p) else {
        p.invalid(
            s.key_path("release"),
            "source = \"release\" needs a [master_key.release] table (krs_url and pins)",
        );
        return None;
    };
    let krs_url = r.required_string("krs_url", p);
    let krs_fallback_urls = r.string_list("krs_fallback_urls", p).unwrap_or_default();
    for (i, u) in krs_fallback_urls.iter().enumerate() {
        let hp = u.strip_prefix("krs://").unwrap_or(u);
        if hp
            .rsplit_once(':')
            .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
        {
            p.invalid(
                format!("{}[{i}]", r.key_path("krs_fallback_urls")),
                format!("`{u}` is not host:port"),
            );
        }
    }
    let mut pin = |r: &mut Section, key: &str, required: bool| -> Option<String> {
        let v = if required {
            r.required_string(key, p)
        } else {
            r.string(key, p)
        }?;
        match parse_pin(key, &v) {
            Ok(_) => Some(v),
            Err(e) => {
                p.invalid(r.key_path(key), e.to_string());
                None
            }
        }
    };
    let tls = pin(&mut r, "krs_tls_spki_sha256", true);
    let receipt = pin(&mut r, "receipt_spki_sha256", true);
    let admin = pin(&mut r, "admin_ca_sha256", false);
    let attesters = r.string_list("attesters", p).unwrap_or_default();
    if attesters.is_empty() {
        p.invalid(
            r.key_path("attesters"),
            "name at least one attester: \"snp\", \"tpm\", \"nitrotpm\" (or \"simulated-snp\" for tests)",
        );
    }
    for (i, a) in attesters.iter().enumerate() {
        if !ATTESTERS.contains(&a.as_str()) {
            p.invalid(
                format!("{}[{i}]", r.key_path("attesters")),
                format!("unknown attester `{a}`: use one of {ATTESTERS:?}"),
            );
        }
    }
    if attesters.iter().any(|a| a == "simulated-snp") {
        p.warn(
            r.key_path("attesters"),
            "simulated-snp proves nothing: for tests and the demo only",
        );
    }
    let platform = r.string("platform", p);
    let tpm_tcti = r.string("tpm_tcti", p);
    let mut int = |r: &mut Section, key: &str, default: u64, max: u64| -> u64 {
        match r.integer(key, p) {
            None => default,
            Some(v) if v >= 0 && (v as u64) <= max => v as u64,
            Some(_) => {
                p.invalid(r.key_path(key), format!("must be 0..={max}"));
                default
            }
        }
    };
    let timeout_secs = int(&mut r, "timeout_secs", 10, 600).max(1);
    let retry_initial_ms = int(&mut r, "retry_initial_ms", 1000, 600_000).max(1);
    let retry_max_secs = int(&mut r, "retry_max_secs", 60, 86_400).max(1);
    let policy_deny_retry_secs = int(&mut r, "policy_deny_retry_secs", 300, 86_400).max(1);
    let max_attempts = int(&mut r, "max_attempts", 0, 1_000_000) as u32;
    r.finish(p);
    Some(ReleaseConfig {
        agent: AgentConfig {
            krs_url: krs_url?,
            krs_fallback_urls,
            krs_tls_spki_sha256: tls?,
            receipt_spki_sha256: receipt?,
            admin_ca_sha256: admin.unwrap_or_default(),
            attesters,
            platform,
            timeout_secs,
        },
        tpm_tcti,
        retry_initial_ms,
        retry_max_secs,
        policy_deny_retry_secs,
        max_attempts,
    })
}

/// What the agent needs to reach and trust the KRS. Hex pins are SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `host:port` of the KRS (a `krs://` prefix is accepted). This is the name the pins
    /// carry (and the KRS's deployment judges).
    pub krs_url: String,
    /// Other `host:port` addresses of the same key-release service (instances with the same
    /// TLS and receipt keys, in front of the same HSM), tried in order when `krs_url` cannot
    /// be reached. A KRS that answers (releases or denies) is never passed over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub krs_fallback_urls: Vec<String>,
    /// SHA-256 (hex) of the KRS TLS certificate's SPKI.
    pub krs_tls_spki_sha256: String,
    /// SHA-256 (hex) of the KRS receipt key's SPKI.
    pub receipt_spki_sha256: String,
    /// SHA-256 (hex) of the admin API client CA certificate (informational for the KRS; part
    /// of the pins digest in T).
    #[serde(default)]
    pub admin_ca_sha256: String,
    /// Attesters to gather evidence from, in order: `snp`, `tpm`, `nitrotpm`,
    /// `simulated-snp` (the last only when named explicitly).
    #[serde(default)]
    pub attesters: Vec<String>,
    /// The platform string sent in Hello (default: derived from the attesters).
    #[serde(default)]
    pub platform: Option<String>,
    /// Connect/read timeout per attempt, seconds (default 10).
    #[serde(default = "default_io_timeout")]
    pub timeout_secs: u64,
}

fn default_io_timeout() -> u64 {
    10
}

/// A pin that is not 32 bytes of hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("{0}: not hex")]
    NotHex(String),
    #[error("{0}: must be 32 bytes (64 hex digits)")]
    Length(String),
}

/// Parse a 32-byte hex pin; `name` is the key it came from, for the message.
pub fn parse_pin(name: &str, hex_str: &str) -> Result<[u8; 32], PinError> {
    let v = hex::decode(hex_str.trim()).map_err(|_| PinError::NotHex(name.to_string()))?;
    v.try_into().map_err(|_| PinError::Length(name.to_string()))
}
