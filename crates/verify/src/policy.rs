//! The verification policy: a versioned, declarative document (TOML, or JSON when the bytes
//! start with `{`) that says what evidence is acceptable. Its digest (SHA-384 of the exact
//! bytes) goes into every verdict, so a verdict always names the rules it was judged under.
//!
//! Every field is documented in `attestation/policy.md`; examples live in
//! `attestation/policies/`. Unknown fields are refused (a typo must not silently weaken a
//! policy). The `tpm` and `nitro` sections are kept as raw values here and read by the TPM and
//! NitroTPM verifiers with [`Policy::section`], which lets those verifiers own their types.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

/// The built-in default policy (used when none is given). Its text is shipped in the
/// repository, so its digest is reproducible by anyone.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../../attestation/policies/default.toml");

/// The only policy format this verifier understands.
pub(crate) const POLICY_FORMAT: u32 = 1;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid UTF-8")]
    NotUtf8,
    #[error("policy does not parse: {0}")]
    Json(#[source] serde_json::Error),
    #[error("policy does not parse: {0}")]
    Toml(#[source] toml::de::Error),
    #[error("policy format {0} is not supported (this verifier knows format {POLICY_FORMAT})")]
    Format(u32),
    #[error("policy field {field}: {reason}")]
    Field { field: String, reason: String },
    #[error(
        "policy field {field}: {reason}: this policy would accept evidence no one measured \
         (to accept that anyway, set allow_unmeasured = \"{UNMEASURED_CONSENT}\" at the top)"
    )]
    Unmeasured { field: String, reason: String },
}

/// The exact value of `allow_unmeasured` that lets a policy accept evidence no reference value
/// pins (an empty `required_evidence`, SNP without measurements, NitroTPM without PCRs, a TPM
/// quote without allowed PCR values). Any other value is refused.
pub(crate) const UNMEASURED_CONSENT: &str = "I understand this accepts evidence no one measured";

/// Kinds of evidence a policy can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvidenceKind {
    Snp,
    Tpm,
    Nitro,
}

/// A parsed policy plus the digest of the bytes it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Policy language version; must be 1.
    pub format: u32,
    /// Monotonic policy version chosen by its author (the KRS refuses to go backwards).
    #[serde(default)]
    pub policy_version: u64,
    /// Free text shown in verdicts.
    #[serde(default)]
    pub name: String,
    /// Evidence that must be present in a bundle. Default: `["snp"]`.
    #[serde(default = "default_required")]
    pub required_evidence: Vec<EvidenceKind>,
    /// The loud opt-out of [`Policy::check_measured`]: must be exactly [`UNMEASURED_CONSENT`].
    /// Without it, the KRS, `krs policy sign|check` and `keyward verify --policy` refuse a
    /// policy whose required evidence no reference value pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unmeasured: Option<String>,
    /// SEV-SNP rules.
    #[serde(default)]
    pub snp: SnpPolicy,
    /// TPM rules, interpreted by `verify::tpm` (raw here, see [`Policy::section`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<serde_json::Value>,
    /// NitroTPM rules, interpreted by `verify::nitro` (raw here, see [`Policy::section`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nitro: Option<serde_json::Value>,
    #[serde(skip)]
    digest: String,
    #[serde(skip)]
    widened: Vec<String>,
    #[serde(skip)]
    builtin: bool,
}

fn default_required() -> Vec<EvidenceKind> {
    vec![EvidenceKind::Snp]
}

/// Which VEK may sign a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignerKind {
    Vcek,
    Vlek,
}

/// AMD EPYC generations this verifier knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    Milan,
    Genoa,
    Turin,
}

impl Product {
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];
    /// AMD's name, as used in certificate common names (`SEV-Milan`, `ARK-Genoa`, ...).
    pub fn amd_name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }
}

/// A root key (ARK) trusted by fingerprint, beyond or instead of AMD's built-in ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedRoot {
    /// Shown in verdicts.
    pub name: String,
    /// SHA-256 (hex) of the root certificate's DER.
    pub sha256: String,
    /// The certificate itself (PEM), optional when the evidence carries it.
    #[serde(default)]
    pub pem: Option<String>,
}

/// Minimum TCB, per component. Components not named are not constrained.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbMinimum {
    /// Turin only: the FMC (first mutable code) SPL. Ignored on Milan and Genoa.
    pub fmc: Option<u8>,
    pub bootloader: Option<u8>,
    pub tee: Option<u8>,
    pub snp: Option<u8>,
    pub microcode: Option<u8>,
}

/// Rules on the guest policy bits the report carries. `None` = any value (reported only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestPolicyRules {
    /// Required value of POLICY.SMT (SMT allowed).
    pub smt: Option<bool>,
    /// Required value of POLICY.SINGLE_SOCKET.
    pub single_socket: Option<bool>,
    /// Required value of POLICY.CXL_ALLOW (bit 21).
    pub cxl_allow: Option<bool>,
    /// Required value of POLICY.MEM_AES_256_XTS (bit 22).
    pub mem_aes_256_xts: Option<bool>,
    /// Required value of POLICY.RAPL_DIS (bit 23).
    pub rapl_dis: Option<bool>,
    /// Required value of POLICY.CIPHERTEXT_HIDING (bit 24).
    pub ciphertext_hiding: Option<bool>,
    /// Required value of POLICY.PAGE_SWAP_DISABLE (bit 25).
    pub page_swap_disable: Option<bool>,
    /// Minimum guest-policy ABI (major, minor) the guest was launched with.
    pub min_abi_major: Option<u8>,
    pub min_abi_minor: Option<u8>,
}

/// Rules on PLATFORM_INFO. `None` = any value (reported only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformRules {
    pub smt_enabled: Option<bool>,
    pub tsme_enabled: Option<bool>,
    pub ecc_enabled: Option<bool>,
    pub rapl_disabled: Option<bool>,
    pub ciphertext_hiding_enabled: Option<bool>,
    pub alias_check_complete: Option<bool>,
}

/// Certificate revocation list handling.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlRules {
    /// Fail when no CRL from the chain's ARK is given.
    #[serde(default)]
    pub required: bool,
    /// Seconds a CRL stays acceptable after its nextUpdate.
    #[serde(default)]
    pub grace_seconds: u64,
}

/// SEV-SNP rules. The checks that no policy can switch off (DEBUG, MIGRATE_MA, signature,
/// chain, ...) are not here: they are in code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPolicy {
    /// Accepted report versions. Default 2..=5 (the ones this parser knows).
    #[serde(default = "default_versions")]
    pub report_versions: Vec<u32>,
    /// Trust AMD's ARKs for Milan, Genoa and Turin (pinned by fingerprint in the code).
    #[serde(default = "yes")]
    pub builtin_amd_roots: bool,
    /// Further roots, each pinned by SHA-256 fingerprint.
    #[serde(default)]
    pub roots: Vec<PinnedRoot>,
    /// Accepted endorsement keys. Default both.
    #[serde(default = "default_signers")]
    pub signers: Vec<SignerKind>,
    /// Accepted products. Default all.
    #[serde(default = "default_products")]
    pub products: Vec<Product>,
    /// Accepted VMPLs. Default `[0]`.
    #[serde(default = "default_vmpls")]
    pub allowed_vmpls: Vec<u32>,
    /// Accepted VLEK CSP ids (e.g. `CN=cc-us-east-2.amazonaws.com`). Default none.
    #[serde(default)]
    pub allowed_csp_ids: Vec<String>,
    /// Accepted launch measurements (hex, 48 bytes). Empty = not checked (a warning).
    #[serde(default)]
    pub measurements: Vec<String>,
    /// Fixed expected REPORT_DATA (hex, 64 bytes), for auditors checking a known value. The
    /// caller's expected value (the KRS transcript binding) takes precedence.
    #[serde(default)]
    pub report_data: Option<String>,
    /// Accepted HOST_DATA values (hex, 32 bytes). Empty = not checked.
    #[serde(default)]
    pub host_data: Vec<String>,
    /// Accepted ID_KEY_DIGESTs (hex, 48 bytes): the key that signed the guest's ID block.
    /// Empty = not checked. Not settable on EC2.
    #[serde(default)]
    pub id_key_digests: Vec<String>,
    /// Accepted AUTHOR_KEY_DIGESTs (hex, 48 bytes); requires AUTHOR_KEY_EN. Empty = not checked.
    #[serde(default)]
    pub author_key_digests: Vec<String>,
    /// Minimum REPORTED_TCB (the TCB the VEK endorses).
    #[serde(default)]
    pub min_reported_tcb: Option<TcbMinimum>,
    /// Minimum COMMITTED_TCB (guards against a host-lowered reported TCB).
    #[serde(default)]
    pub min_committed_tcb: Option<TcbMinimum>,
    /// Minimum LAUNCH_TCB.
    #[serde(default)]
    pub min_launch_tcb: Option<TcbMinimum>,
    /// Minimum GUEST_SVN.
    #[serde(default)]
    pub min_guest_svn: Option<u32>,
    #[serde(default)]
    pub guest_policy: GuestPolicyRules,
    #[serde(default)]
    pub platform: PlatformRules,
    #[serde(default)]
    pub crl: CrlRules,
}

fn yes() -> bool {
    true
}
fn default_versions() -> Vec<u32> {
    vec![2, 3, 4, 5]
}
fn default_signers() -> Vec<SignerKind> {
    vec![SignerKind::Vcek, SignerKind::Vlek]
}
fn default_products() -> Vec<Product> {
    Product::ALL.to_vec()
}
fn default_vmpls() -> Vec<u32> {
    vec![0]
}

impl Default for SnpPolicy {
    fn default() -> Self {
        SnpPolicy {
            report_versions: default_versions(),
            builtin_amd_roots: true,
            roots: Vec::new(),
            signers: default_signers(),
            products: default_products(),
            allowed_vmpls: default_vmpls(),
            allowed_csp_ids: Vec::new(),
            measurements: Vec::new(),
            report_data: None,
            host_data: Vec::new(),
            id_key_digests: Vec::new(),
            author_key_digests: Vec::new(),
            min_reported_tcb: None,
            min_committed_tcb: None,
            min_launch_tcb: None,
            min_guest_svn: None,
            guest_policy: GuestPolicyRules::default(),
            platform: PlatformRules::default(),
            crl: CrlRules::default(),
        }
    }
}

impl Policy {
    /// Parse a policy from its exact bytes (TOML, or JSON when the first non-blank byte is
    /// `{`), validate every field, and remember the SHA-384 digest of those bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Policy, PolicyError> {
        let text = std::str::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8)?;
        let mut policy: Policy = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(PolicyError::Json)?
        } else {
            toml::from_str(text).map_err(PolicyError::Toml)?
        };
        if policy.format != POLICY_FORMAT {
            return Err(PolicyError::Format(policy.format));
        }
        policy.validate()?;
        policy.digest = hex::encode(Sha384::digest(bytes));
        Ok(policy)
    }

    /// The built-in default policy: report versions 2-5, AMD's roots, every non-negotiable
    /// check, VMPL 0, no CSP id, and no measurement, TCB, REPORT_DATA or CRL requirement (each
    /// reported as a warning when it applies).
    pub fn builtin_default() -> Policy {
        // The text is part of the binary and covered by the `default_policy_parses` test, so a
        // failure here is a build defect, not input; fall back to the equivalent struct anyway.
        let mut p = Policy::from_bytes(DEFAULT_POLICY_TOML.as_bytes()).unwrap_or_else(|_| Policy {
            format: POLICY_FORMAT,
            policy_version: 0,
            name: "built-in default".into(),
            required_evidence: default_required(),
            allow_unmeasured: None,
            snp: SnpPolicy::default(),
            tpm: None,
            nitro: None,
            digest: hex::encode(Sha384::digest(DEFAULT_POLICY_TOML.as_bytes())),
            widened: Vec::new(),
            builtin: true,
        });
        p.builtin = true;
        p
    }

    /// SHA-384 (hex) of the policy bytes. Each command-line widening replaces it with
    /// SHA-384(previous hex digest || "\n# widened: " || what) (see `attestation/policy.md`).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// True for [`Policy::builtin_default`].
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// Widenings applied after loading (shown in every verdict).
    pub fn widenings(&self) -> &[String] {
        &self.widened
    }

    /// Allow one more VMPL (e.g. `--allow-vmpl 1` for an SVSM guest).
    pub fn allow_vmpl(&mut self, vmpl: u32) {
        if !self.snp.allowed_vmpls.contains(&vmpl) {
            self.snp.allowed_vmpls.push(vmpl);
        }
        self.widen(format!("allowed_vmpls += {vmpl}"));
    }

    /// Allow one more VLEK CSP id (e.g. `--allow-csp CN=cc-us-east-2.amazonaws.com`).
    pub fn allow_csp(&mut self, csp: &str) {
        if !self.snp.allowed_csp_ids.iter().any(|c| c == csp) {
            self.snp.allowed_csp_ids.push(csp.to_string());
        }
        self.widen(format!("allowed_csp_ids += {csp:?}"));
    }

    /// Pin the SNP launch measurements to those of a reference-value file (`keyward verify
    /// --reference-values`): a policy without measurements takes `measurements`; a policy
    /// with its own list keeps only those also in `measurements` (never more than either
    /// allows; an empty intersection makes the measurement check fail). Recorded like a
    /// widening, so the verdict's policy digest names the file (`source`, its SHA-256).
    pub fn pin_snp_measurements(&mut self, measurements: &[String], source: &str) {
        let refs: Vec<String> = measurements.iter().map(|m| m.to_lowercase()).collect();
        if self.snp.measurements.is_empty() {
            self.snp.measurements = refs;
        } else {
            self.snp
                .measurements
                .retain(|m| refs.contains(&m.to_lowercase()));
        }
        self.widen(format!(
            "snp.measurements pinned to reference values {source}"
        ));
    }

    fn widen(&mut self, what: String) {
        // Chained so that a widened policy never shows the digest of the file alone.
        let mut h = Sha384::new();
        h.update(self.digest.as_bytes());
        h.update(b"\n# widened: ");
        h.update(what.as_bytes());
        self.digest = hex::encode(h.finalize());
        self.widened.push(what);
    }

    /// Read a verifier-specific section (`"tpm"` or `"nitro"`) into that verifier's own type.
    /// `Ok(None)` when the section is absent.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, PolicyError> {
        let raw = match name {
            "tpm" => &self.tpm,
            "nitro" => &self.nitro,
            other => {
                return Err(PolicyError::Field {
                    field: other.into(),
                    reason: "no such section".into(),
                })
            }
        };
        match raw {
            None => Ok(None),
            Some(v) => {
                serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|e| PolicyError::Field {
                        field: name.into(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// The fields that leave required evidence unpinned by any reference value, each as
    /// (field, reason). Empty for a policy that measures everything it requires.
    pub fn unmeasured(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.required_evidence.is_empty() {
            out.push((
                "required_evidence".to_string(),
                "is empty, so an empty evidence bundle passes".to_string(),
            ));
        }
        let raw_list_empty = |v: &Option<serde_json::Value>, key: &str| -> Option<bool> {
            v.as_ref().map(|v| {
                v.get(key)
                    .and_then(|l| l.as_array())
                    .is_none_or(|l| l.is_empty())
            })
        };
        for kind in &self.required_evidence {
            match kind {
                EvidenceKind::Snp => {
                    let s = &self.snp;
                    if s.measurements.is_empty()
                        && s.id_key_digests.is_empty()
                        && s.author_key_digests.is_empty()
                    {
                        out.push((
                            "snp.measurements".to_string(),
                            "is empty (and no snp.id_key_digests), while required_evidence \
                             includes snp: any launched image passes"
                                .to_string(),
                        ));
                    }
                }
                EvidenceKind::Nitro => match raw_list_empty(&self.nitro, "pcrs") {
                    None => out.push((
                        "nitro".to_string(),
                        "section is missing, while required_evidence includes nitro: any \
                         booted image passes"
                            .to_string(),
                    )),
                    Some(true) => out.push((
                        "nitro.pcrs".to_string(),
                        "is empty, while required_evidence includes nitro: any booted image \
                         passes"
                            .to_string(),
                    )),
                    Some(false) => {}
                },
                EvidenceKind::Tpm => match raw_list_empty(&self.tpm, "allowed") {
                    None => out.push((
                        "tpm".to_string(),
                        "section is missing, while required_evidence includes tpm".to_string(),
                    )),
                    Some(true) => out.push((
                        "tpm.allowed".to_string(),
                        "is empty, while required_evidence includes tpm: no PCR is compared \
                         with a reference value, so any boot chain passes"
                            .to_string(),
                    )),
                    Some(false) => {}
                },
            }
        }
        out
    }

    /// Whether the policy carries the exact `allow_unmeasured` consent.
    pub fn allows_unmeasured(&self) -> bool {
        self.allow_unmeasured.as_deref() == Some(UNMEASURED_CONSENT)
    }

    /// Refuse a policy that would accept evidence no one measured (see [`Policy::unmeasured`]),
    /// unless it sets `allow_unmeasured` to [`UNMEASURED_CONSENT`]. The error names the first
    /// such field. Called by the KRS at start, `krs policy sign|check` and `keyward verify
    /// --policy`; the built-in default policy of `keyward verify` is exempt (its verdicts say
    /// that no measurement was required).
    pub fn check_measured(&self) -> Result<(), PolicyError> {
        if self.allows_unmeasured() {
            return Ok(());
        }
        match self.unmeasured().into_iter().next() {
            None => Ok(()),
            Some((field, reason)) => Err(PolicyError::Unmeasured { field, reason }),
        }
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if let Some(c) = &self.allow_unmeasured {
            if c != UNMEASURED_CONSENT {
                return Err(PolicyError::Field {
                    field: "allow_unmeasured".into(),
                    reason: format!("must be exactly {UNMEASURED_CONSENT:?} (or absent)"),
                });
            }
        }
        let s = &self.snp;
        let bad = |field: &str, reason: String| PolicyError::Field {
            field: format!("snp.{field}"),
            reason,
        };
        for v in &s.report_versions {
            if !(2..=5).contains(v) {
                return Err(bad(
                    "report_versions",
                    format!("{v} is not a version this verifier parses (2-5)"),
                ));
            }
        }
        for (i, m) in s.measurements.iter().enumerate() {
            check_hex(m, 48).map_err(|r| bad(&format!("measurements[{i}]"), r))?;
        }
        for (i, m) in s.host_data.iter().enumerate() {
            check_hex(m, 32).map_err(|r| bad(&format!("host_data[{i}]"), r))?;
        }
        for (i, m) in s.id_key_digests.iter().enumerate() {
            check_hex(m, 48).map_err(|r| bad(&format!("id_key_digests[{i}]"), r))?;
        }
        for (i, m) in s.author_key_digests.iter().enumerate() {
            check_hex(m, 48).map_err(|r| bad(&format!("author_key_digests[{i}]"), r))?;
        }
        if let Some(rd) = &s.report_data {
            check_hex(rd, 64).map_err(|r| bad("report_data", r))?;
        }
        for (i, r) in s.roots.iter().enumerate() {
            check_hex(&r.sha256, 32).map_err(|e| bad(&format!("roots[{i}].sha256"), e))?;
        }
        if !s.builtin_amd_roots && s.roots.is_empty() {
            return Err(bad(
                "roots",
                "no trusted root: builtin_amd_roots = false and no [[snp.roots]]".into(),
            ));
        }
        Ok(())
    }
}

/// Decode `hex` that must be exactly `len` bytes.
pub fn check_hex(s: &str, len: usize) -> Result<Vec<u8>, String> {
    let b = hex::decode(s.trim()).map_err(|e| format!("not hex: {e}"))?;
    if b.len() != len {
        return Err(format!("{} bytes, expected {len}", b.len()));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_parses() {
        let p = Policy::from_bytes(DEFAULT_POLICY_TOML.as_bytes()).unwrap();
        assert_eq!(p.snp.allowed_vmpls, vec![0]);
        assert!(p.snp.allowed_csp_ids.is_empty());
        assert!(p.snp.measurements.is_empty());
        assert!(p.snp.builtin_amd_roots);
        assert_eq!(p.snp.report_versions, vec![2, 3, 4, 5]);
        assert!(!p.snp.crl.required);
        assert_eq!(p.digest().len(), 96);
        assert!(Policy::builtin_default().is_builtin());
    }

    #[test]
    fn digest_is_of_exact_bytes_and_widening_changes_it() {
        let a = Policy::from_bytes(b"format = 1\n").unwrap();
        let b = Policy::from_bytes(b"format = 1\n\n").unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), hex::encode(Sha384::digest(b"format = 1\n")));
        let mut w = a.clone();
        w.allow_vmpl(1);
        assert_ne!(w.digest(), a.digest());
        assert_eq!(w.widenings().len(), 1);
    }

    #[test]
    fn json_and_unknown_fields() {
        let p = Policy::from_bytes(br#"{"format":1,"snp":{"allowed_vmpls":[0,1]}}"#).unwrap();
        assert_eq!(p.snp.allowed_vmpls, vec![0, 1]);
        assert!(Policy::from_bytes(b"format = 1\n[snp]\nallowed_vmpl = [1]\n").is_err());
        assert!(Policy::from_bytes(b"format = 2\n").is_err());
        assert!(Policy::from_bytes(b"format = 1\n[snp]\nmeasurements = [\"00\"]\n").is_err());
        assert!(Policy::from_bytes(b"format = 1\n[snp]\nreport_versions = [1]\n").is_err());
    }

    #[test]
    fn unmeasured_policies_are_refused_naming_the_field_unless_opted_out() {
        let m = format!("\"{}\"", "ab".repeat(48));
        let field = |text: &str| match Policy::from_bytes(text.as_bytes())
            .unwrap()
            .check_measured()
        {
            Err(PolicyError::Unmeasured { field, .. }) => Some(field),
            Err(e) => panic!("{e}"),
            Ok(()) => None,
        };
        assert_eq!(field("format = 1\n").as_deref(), Some("snp.measurements"));
        assert_eq!(
            field(&format!(
                "format = 1\nrequired_evidence = []\n[snp]\nmeasurements = [{m}]\n"
            ))
            .as_deref(),
            Some("required_evidence")
        );
        assert_eq!(
            field(&format!("format = 1\n[snp]\nmeasurements = [{m}]\n")),
            None
        );
        assert_eq!(
            field(&format!("format = 1\n[snp]\nid_key_digests = [{m}]\n")),
            None
        );
        let nitro = format!(
            "format = 1\nrequired_evidence = [\"snp\", \"nitro\"]\n[snp]\nmeasurements = [{m}]\n"
        );
        assert_eq!(field(&nitro).as_deref(), Some("nitro"));
        assert_eq!(
            field(&format!("{nitro}[nitro]\nmax_age = \"5m\"\n")).as_deref(),
            Some("nitro.pcrs")
        );
        assert_eq!(
            field(&format!(
                "{nitro}[nitro]\npcrs = [{{ pcr = 4, values = [{m}] }}]\n"
            )),
            None
        );
        let tpm = "format = 1\nrequired_evidence = [\"tpm\"]\n";
        assert_eq!(field(tpm).as_deref(), Some("tpm"));
        assert_eq!(
            field(&format!("{tpm}[tpm]\nregistered_aks = []\npcrs = [4]\n")).as_deref(),
            Some("tpm.allowed")
        );
        // The opt-out: exact text only; the error message tells how.
        let e = Policy::from_bytes(b"format = 1\n")
            .unwrap()
            .check_measured()
            .unwrap_err();
        assert!(e.to_string().contains(UNMEASURED_CONSENT), "{e}");
        let ok = format!(
            "format = 1\nrequired_evidence = []\nallow_unmeasured = \"{UNMEASURED_CONSENT}\"\n"
        );
        let p = Policy::from_bytes(ok.as_bytes()).unwrap();
        assert!(p.check_measured().is_ok() && p.allows_unmeasured());
        assert!(matches!(
            Policy::from_bytes(b"format = 1\nallow_unmeasured = \"yes\"\n"),
            Err(PolicyError::Field { field, .. }) if field == "allow_unmeasured"
        ));
        // Verdicts under the opt-out say so.
        let v = crate::verify_bundle(
            &crate::EvidenceBundle::default(),
            &p,
            &crate::Expectations::default(),
            std::time::SystemTime::now(),
        );
        assert!(
            v.warnings.iter().any(|w| w.contains("allow_unmeasured")),
            "{:?}",
            v.warnings
        );
    }

    #[test]
    fn shipped_example_policies_measure_what_they_require() {
        for text in [
            include_str!("../../../attestation/policies/aws-ec2-snp-nitrotpm.toml"),
            include_str!("../../../attestation/policies/bare-metal-snp.toml"),
            include_str!("../../../attestation/policies/tpm-only.toml"),
        ] {
            let p = Policy::from_bytes(text.as_bytes()).unwrap();
            p.check_measured().unwrap();
            assert!(!p.allows_unmeasured());
        }
        // The built-in default (chain-only) is not a policy to sign for a KRS.
        assert!(Policy::builtin_default().check_measured().is_err());
    }

    #[test]
    fn sections_are_typed_by_their_readers() {
        #[derive(Deserialize)]
        struct T {
            pcrs: Vec<u8>,
        }
        let p = Policy::from_bytes(b"format = 1\n[tpm]\npcrs = [4, 7]\n").unwrap();
        let t: T = p.section("tpm").unwrap().unwrap();
        assert_eq!(t.pcrs, vec![4, 7]);
        assert!(p.section::<T>("nitro").unwrap().is_none());
    }
}
