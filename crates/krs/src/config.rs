//! Configuration of the key-release service (`keyward krs ... --config FILE`, TOML). The boot
//! agent's side (`[master_key.release]`) is the appliance's configuration: `keyward_config::release`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use keyward_hsm::HsmConfig;

/// Errors reading configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("config {0}")]
    Io(String, #[source] std::io::Error),
    #[error("config {0}")]
    Parse(String, #[source] toml::de::Error),
    /// A setting is wrong (the message names it; no cause).
    #[error("config: {0}")]
    Invalid(String),
}

/// How the KRS wraps the master key for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WrapChoice {
    /// In the HSM when it has the mechanisms, HPKE fallback otherwise.
    #[default]
    Auto,
    /// In the HSM only; refuse to start otherwise.
    Hsm,
    /// Always the HPKE fallback (for HSMs that cannot wrap to an external key; and tests).
    Hpke,
}

/// `keyward krs` configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KrsConfig {
    /// Listen address, e.g. `0.0.0.0:7443` (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Holds `tls.crt`, `tls.key`, `release.log`(+`.head`), `policy.version`,
    /// `receipt.pub.pem`, `heads.json`.
    pub state_dir: PathBuf,
    /// The signed policy file (`keyward krs policy sign`).
    pub policy_file: PathBuf,
    /// The policy-admin P-384 public key (PEM SPKI).
    pub admin_public_key: PathBuf,
    /// Session lifetime in seconds (default 60).
    #[serde(default = "default_ttl")]
    pub session_ttl_secs: u64,
    #[serde(default)]
    pub wrap: WrapChoice,
    /// DNS names / IPs for the self-signed TLS certificate made by `krs init`.
    #[serde(default = "default_names")]
    pub tls_names: Vec<String>,
    pub hsm: HsmConfig,
    /// The deployments this KRS serves (`[[deployment]]`): a Hello whose pins match none of
    /// them is denied before any HSM work.
    #[serde(default, rename = "deployment")]
    pub deployments: Vec<DeploymentConfig>,
    /// AMD CRL files (DER or PEM) handed to the verifier with every appraisal.
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
    /// Bounds on unauthenticated work (`[limits]`: connections, deadlines, sessions).
    #[serde(default)]
    pub limits: crate::limits::Limits,
    /// `GET /metrics` (OpenMetrics, plain HTTP) on this loopback address, e.g.
    /// `127.0.0.1:9466`; off when absent. See [`crate::metrics`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Key memory of the KRS process (`[memory] allow_unlocked = true`: development only).
    #[serde(default)]
    pub memory: keyward_secret::MemoryPolicy,
}

/// One deployment (a customer's appliance or fleet): the pins its appliances were launched
/// with. At least one of the two digests must be set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeploymentConfig {
    /// A name for logs and for the store heads this KRS keeps per deployment.
    pub name: String,
    /// SHA-384 (hex) of the canonical CBOR pins (the `pins_digest` in T): covers the KRS URL,
    /// both KRS key pins and the operator CA.
    #[serde(default)]
    pub pins_sha384: Option<String>,
    /// SHA-256 (hex) of the operator CA certificate (DER), when the whole digest is not given.
    #[serde(default)]
    pub admin_ca_sha256: Option<String>,
}

fn default_ttl() -> u64 {
    60
}
fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

impl KrsConfig {
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Io(path.display().to_string(), e))?;
        let c: Self =
            toml::from_str(&s).map_err(|e| ConfigError::Parse(path.display().to_string(), e))?;
        if c.session_ttl_secs == 0 || c.session_ttl_secs > 3600 {
            return Err(ConfigError::Invalid(
                "session_ttl_secs must be 1..=3600".into(),
            ));
        }
        c.limits.check().map_err(ConfigError::Invalid)?;
        Ok(c)
    }
    pub(crate) fn tls_cert(&self) -> PathBuf {
        self.state_dir.join("tls.crt")
    }
    pub(crate) fn tls_key(&self) -> PathBuf {
        self.state_dir.join("tls.key")
    }
    pub(crate) fn log_file(&self) -> PathBuf {
        self.state_dir.join("release.log")
    }
    pub(crate) fn version_file(&self) -> PathBuf {
        self.state_dir.join("policy.version")
    }
    pub(crate) fn receipt_pub(&self) -> PathBuf {
        self.state_dir.join("receipt.pub.pem")
    }
    /// Store heads and registered boot keys per deployment.
    pub(crate) fn heads_file(&self) -> PathBuf {
        self.state_dir.join("heads.json")
    }
}
