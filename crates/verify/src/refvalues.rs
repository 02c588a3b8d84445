//! Reference values: what a keyward release is expected to measure as (SNP launch digests per
//! platform, firmware and vCPU count; NitroTPM PCRs 4/7/12; TPM PCRs and systemd phase words),
//! published by the reproducible image build and turned into policy fields.
//!
//! Format: `attestation/reference-values.md`, schema `attestation/reference-values.schema.json`.
//! This module parses and validates the file (strictly, like policies) and renders the policy
//! fragment an operator pastes into, or a tool merges into, a policy.

use serde::{Deserialize, Serialize};

use crate::policy::check_hex;

/// The only format this parser knows.
pub const FORMAT: &str = "keyward-reference-values/1";

/// Why a reference-value file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RefValuesError {
    #[error("reference values do not parse: {0}")]
    Syntax(#[source] serde_json::Error),
    #[error("reference-value format {0:?} is not {FORMAT:?}")]
    Format(String),
    #[error("reference values, {field}: {reason}")]
    Field { field: String, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    pub format: String,
    pub release: Release,
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub image: Option<Image>,
    #[serde(default)]
    pub snp: Option<SnpValues>,
    #[serde(default)]
    pub nitrotpm: Option<NitroValues>,
    #[serde(default)]
    pub tpm: Option<TpmValues>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub name: String,
    pub version: String,
    pub git_commit: String,
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub kind: String,
    pub sha256: String,
    #[serde(default)]
    pub sha384: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    #[serde(default)]
    pub kernel_cmdline: Option<String>,
    #[serde(default)]
    pub dm_verity_root_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpValues {
    pub launch: Vec<LaunchDigest>,
}

/// One expected SNP launch digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchDigest {
    /// `aws-ec2`, `qemu` or `bare-metal`.
    pub platform: String,
    pub firmware: String,
    #[serde(default)]
    pub firmware_sha256: Option<String>,
    pub vcpus: u32,
    pub measurement: String,
    #[serde(default)]
    pub tool: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NitroValues {
    pub pcr4: Vec<String>,
    #[serde(default)]
    pub pcr7: Vec<String>,
    pub pcr12: String,
    #[serde(default)]
    pub tool: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmValues {
    pub bank: String,
    pub pcrs: Vec<TpmPcr>,
    #[serde(default)]
    pub pcr11_phases: Vec<String>,
    #[serde(default)]
    pub tool: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmPcr {
    pub pcr: u8,
    pub values: Vec<String>,
}

impl ReferenceValues {
    /// Parse and validate (format, hex lengths, known enumerations).
    pub fn from_json(bytes: &[u8]) -> Result<ReferenceValues, RefValuesError> {
        let rv: ReferenceValues = serde_json::from_slice(bytes).map_err(RefValuesError::Syntax)?;
        if rv.format != FORMAT {
            return Err(RefValuesError::Format(rv.format));
        }
        rv.validate()?;
        Ok(rv)
    }

    fn validate(&self) -> Result<(), RefValuesError> {
        let field = |f: String, reason: String| RefValuesError::Field { field: f, reason };
        let hex =
            |f: String, s: &str, n: usize| check_hex(s, n).map(|_| ()).map_err(|r| field(f, r));
        hex("release.git_commit".into(), &self.release.git_commit, 20)?;
        for (i, a) in self.artifacts.iter().enumerate() {
            if !["uki", "rootfs", "disk", "ami", "other"].contains(&a.kind.as_str()) {
                return Err(field(format!("artifacts[{i}].kind"), a.kind.clone()));
            }
            hex(format!("artifacts[{i}].sha256"), &a.sha256, 32)?;
            if let Some(h) = &a.sha384 {
                hex(format!("artifacts[{i}].sha384"), h, 48)?;
            }
        }
        if let Some(s) = &self.snp {
            for (i, l) in s.launch.iter().enumerate() {
                if !["aws-ec2", "qemu", "bare-metal"].contains(&l.platform.as_str()) {
                    return Err(field(
                        format!("snp.launch[{i}].platform"),
                        l.platform.clone(),
                    ));
                }
                hex(format!("snp.launch[{i}].measurement"), &l.measurement, 48)?;
                if let Some(h) = &l.firmware_sha256 {
                    hex(format!("snp.launch[{i}].firmware_sha256"), h, 32)?;
                }
            }
        }
        if let Some(n) = &self.nitrotpm {
            for (i, v) in n.pcr4.iter().enumerate() {
                hex(format!("nitrotpm.pcr4[{i}]"), v, 48)?;
            }
            for (i, v) in n.pcr7.iter().enumerate() {
                hex(format!("nitrotpm.pcr7[{i}]"), v, 48)?;
            }
            hex("nitrotpm.pcr12".into(), &n.pcr12, 48)?;
        }
        if let Some(t) = &self.tpm {
            let n = match t.bank.as_str() {
                "sha256" => 32,
                "sha384" => 48,
                other => return Err(field("tpm.bank".into(), other.into())),
            };
            for p in &t.pcrs {
                if p.pcr > 23 {
                    return Err(field("tpm.pcrs".into(), format!("PCR {}", p.pcr)));
                }
                for v in &p.values {
                    hex(format!("tpm.pcrs[{}]", p.pcr), v, n)?;
                }
            }
        }
        Ok(())
    }

    /// SNP launch digests for one platform (e.g. `aws-ec2`), for `[snp] measurements`.
    pub fn measurements(&self, platform: &str) -> Vec<String> {
        self.snp
            .iter()
            .flat_map(|s| s.launch.iter())
            .filter(|l| l.platform == platform)
            .map(|l| l.measurement.to_lowercase())
            .collect()
    }

    /// The TOML policy lines these values determine: `measurements` for `[snp]` (the given
    /// platform), and `pcrs` for `[nitro]` (PCR 4 and 7). Paste them into a policy.
    pub fn policy_fragment(&self, platform: &str) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = format!(
            "# from reference values of {} {} ({})\n[snp]\nmeasurements = [{}]\n",
            self.release.name,
            self.release.version,
            self.release.git_commit,
            list(&self.measurements(platform))
        );
        if let Some(n) = &self.nitrotpm {
            out.push_str("\n[nitro]\npcrs = [\n");
            out.push_str(&format!("  {{ pcr = 4, values = [{}] }},\n", list(&n.pcr4)));
            if !n.pcr7.is_empty() {
                out.push_str(&format!("  {{ pcr = 7, values = [{}] }},\n", list(&n.pcr7)));
            }
            out.push_str("]\n");
        }
        out
    }
}
