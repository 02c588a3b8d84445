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

impl Verdict {
    /// Process exit code for this verdict: 0 when no check failed, 1 otherwise. (2, for usage
    /// errors and unreadable input, is the CLI's.)
    pub fn exit_code(&self) -> u8 {
        if self.ok() {
            0
        } else {
            1
        }
    }

    /// Pretty JSON for machines.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and enums cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// A readable table for people: one line per check, then warnings and the outcome.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let width = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = String::new();
        let _ = writeln!(out, "policy   sha384:{}", self.policy_digest);
        let _ = writeln!(out, "time     {}", self.verified_at);
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<6}  {:<width$}  detail", "result", "check");
        for c in &self.checks {
            let tag = match c.status {
                Status::Passed => "PASS",
                Status::Failed => "FAIL",
                Status::Skipped => "skip",
            };
            let _ = writeln!(out, "{tag:<6}  {:<width$}  {}", c.name, c.detail);
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out);
            for w in &self.warnings {
                let _ = writeln!(out, "warning: {w}");
            }
        }
        let _ = writeln!(out);
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Failed)
            .count();
        if failed == 0 {
            let _ = writeln!(
                out,
                "VERIFIED: no check failed ({} passed, {} skipped)",
                self.checks
                    .iter()
                    .filter(|c| c.status == Status::Passed)
                    .count(),
                self.checks
                    .iter()
                    .filter(|c| c.status == Status::Skipped)
                    .count()
            );
        } else {
            let _ = writeln!(out, "REFUSED: {failed} check(s) failed");
        }
        out
    }

    /// The check named `name`, if present (the last one when repeated).
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().rev().find(|c| c.name == name)
    }
}
