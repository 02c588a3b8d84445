//! The verifier library: pure functions from evidence bytes, a policy and a verification time
//! to a [`Verdict`]. Used by the key-release service and by `keyward verify` alike.
//!
//! It depends on nothing of ours but `keyward-evidence` (the bundle it judges) and never touches
//! the network (no tokio, no sockets: `make test` checks it with `cargo tree`): the CLI fetches,
//! this library judges. The test signer (a test ARK/ASK/VCEK for the cases no real vector
//! covers) is behind the `test-signer` feature, so an auditor's build and the appliance image
//! hold no test private key.
//!
//! Entry point: [`verify_bundle`]. The key-release service calls it with the policy it holds,
//! the binding it expects (in [`Expectations`]) and the current time; an auditor's
//! `keyward verify` calls it with a saved bundle and, optionally, a past time.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod policy;
mod signed;
mod verdict;

// Namespaces callers use as such: one per kind of evidence, with its parsers and its policy
// section (`snp::Report`, `tpm::TpmPolicy`, `nitro::parse_cose`); the reference-values file
// format (many record types, `refvalues::ReferenceValues`); and the test signer, behind the
// `test-signer` feature so no release build holds its keys.
pub mod nitro;
pub mod refvalues;
pub mod snp;
#[cfg(any(test, feature = "test-signer"))]
pub mod testsign;
pub mod tpm;

use std::time::{SystemTime, UNIX_EPOCH};

// What is judged, and the verdict.
pub use keyward_evidence::EvidenceBundle;
pub use verdict::{Check, Status, Verdict};
// The policy and its parts.
pub use policy::{
    check_hex, EvidenceKind, Policy, PolicyError, Product, SignerKind, DEFAULT_POLICY_TOML,
};
// Detached minisign signatures on the release's published files.
pub use signed::{parse_public_key, verify_detached, SignatureError};

/// What the verifier expects the evidence to be bound to, plus inputs that are not evidence
/// (CRLs). Every field is optional: a missing expectation is a skipped check and a warning.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// SNP REPORT_DATA (64 bytes), compared in constant time. Overrides the policy's
    /// `snp.report_data`.
    pub report_data: Option<[u8; 64]>,
    /// TPM quote qualifying data (`extraData`).
    pub qualifying_data: Option<Vec<u8>>,
    /// NitroTPM document `nonce`.
    pub nonce: Option<Vec<u8>>,
    /// NitroTPM document `public_key` (DER SPKI).
    pub public_key: Option<Vec<u8>>,
    /// NitroTPM document `user_data`.
    pub user_data: Option<Vec<u8>>,
    /// AMD CRLs (DER), e.g. from `/vcek/v1/{product}/crl`, fetched or cached by the caller.
    pub crls: Vec<Vec<u8>>,
}

/// Verify a whole evidence bundle under `policy` at time `at`. Never panics on any input;
/// check [`Verdict::ok`] (no check failed) before trusting anything.
pub fn verify_bundle(
    bundle: &EvidenceBundle,
    policy: &Policy,
    expect: &Expectations,
    at: SystemTime,
) -> Verdict {
    let at_secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut v = Verdict {
        policy_digest: policy.digest().to_string(),
        verified_at: snp::cert::fmt_time(at_secs),
        checks: Vec::new(),
        warnings: Vec::new(),
    };
    if policy.is_builtin() {
        v.warnings.push(
            "judged under the built-in default policy (no measurement, TCB, REPORT_DATA or \
             CRL requirement)"
                .into(),
        );
    }
    if policy.allows_unmeasured() {
        for (field, reason) in policy.unmeasured() {
            v.warnings.push(format!(
                "policy sets allow_unmeasured: {field} {reason} (evidence no one measured is \
                 accepted)"
            ));
        }
    }
    for w in policy.widenings() {
        v.warnings
            .push(format!("policy widened on the command line: {w}"));
    }

    // Bundle format (0 is accepted as the default of an unversioned producer).
    if bundle.version > 1 {
        v.fail(
            "bundle.version",
            format!(
                "bundle version {} is newer than this verifier (1)",
                bundle.version
            ),
        );
    }
    let present = |k: EvidenceKind| match k {
        EvidenceKind::Snp => bundle.snp.is_some(),
        EvidenceKind::Tpm => bundle.tpm.is_some(),
        EvidenceKind::Nitro => bundle.nitro.is_some(),
    };
    let missing: Vec<String> = policy
        .required_evidence
        .iter()
        .filter(|k| !present(**k))
        .map(|k| format!("{k:?}").to_lowercase())
        .collect();
    if missing.is_empty() {
        v.pass(
            "bundle.required_evidence",
            format!(
                "present: {}",
                policy
                    .required_evidence
                    .iter()
                    .map(|k| format!("{k:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    } else {
        v.fail(
            "bundle.required_evidence",
            format!("policy requires {} evidence, absent", missing.join(", ")),
        );
    }

    if let Some(s) = &bundle.snp {
        // The bundle's own `report_data` is informational; say so when it disagrees with the
        // report (the checks use the caller's expectation, never this field).
        if let Some(rd) = &bundle.report_data {
            if let Ok(r) = snp::report::Report::parse(&s.report) {
                if rd.as_slice() != r.report_data().as_slice() {
                    v.warnings.push(
                        "the bundle's report_data field differs from the SNP report's REPORT_DATA \
                         (the field is informational and was not used)"
                            .into(),
                    );
                }
            }
        }
        snp::verify(s, policy, expect, at_secs, &mut v);
    }
    if let Some(t) = &bundle.tpm {
        tpm::verify(t, policy, expect, at_secs, &mut v);
    }
    if let Some(n) = &bundle.nitro {
        nitro::verify(n, policy, expect, at_secs, &mut v);
    }
    v
}

/// Convenience for the `--report` mode and for tests: one raw SNP report plus certificates.
pub fn verify_snp_report(
    report: &[u8],
    certs: &[Vec<u8>],
    policy: &Policy,
    expect: &Expectations,
    at: SystemTime,
) -> Verdict {
    let bundle = EvidenceBundle {
        version: 1,
        report_data: None,
        snp: Some(keyward_evidence::SnpEvidence {
            report: report.to_vec(),
            certs: certs.to_vec(),
        }),
        tpm: None,
        nitro: None,
        audit_key: None,
    };
    verify_bundle(&bundle, policy, expect, at)
}
