//! The verdict: every check listed as passed, failed or skipped, with a reason, plus the policy
//! digest it was judged under. Printed as JSON for machines and as a table for people.
//!
//! CONTRACT: all verifiers (SNP, TPM, NitroTPM) append [`Check`]s to one [`Verdict`].

use serde::{Deserialize, Serialize};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    Skipped,
}

/// One named check with its outcome and a short, human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Stable machine name, e.g. `snp.signature`, `snp.debug`, `tpm.pcr_digest`.
    pub name: String,
    pub status: Status,
    pub detail: String,
}

/// The result of verifying one evidence bundle under one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// SHA-384 (hex) of the policy bytes in force.
    pub policy_digest: String,
    /// RFC 3339 verification time.
    pub verified_at: String,
    pub checks: Vec<Check>,
    /// Non-fatal observations (e.g. "no measurement required by policy").
    pub warnings: Vec<String>,
}

impl Verdict {
    pub fn push(&mut self, name: &str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            status,
            detail: detail.into(),
        });
    }
    pub fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Passed, detail)
    }
    pub fn fail(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Failed, detail)
    }
    pub fn skip(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Skipped, detail)
    }
    /// True when no check failed (skipped checks and warnings do not count).
    pub fn ok(&self) -> bool {
        !self.checks.iter().any(|c| c.status == Status::Failed)
    }
    /// The first failed check, if any.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.status == Status::Failed)
    }
}
