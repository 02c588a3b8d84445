//! SEV-SNP report verification, fail-closed: every check is its own named [`Check`] in the
//! verdict, and every check that can run on the input runs (so an auditor sees all problems
//! at once), but any failure fails the verdict.
//!
//! Order (after `docs/key-release.md` section 8.3): parse, signer (KEY_INFO), product (VEK
//! issuer, cross-checked with CPUID on v3+), chain ARK -> ASK/ASVK -> VEK (pinned ARK, RSA-PSS
//! SHA-384 salt 48, validity at the verification time), CRLs, VEK extensions (TCB, hwID, CSP
//! id), the report signature over the raw bytes, REPORT_DATA, the non-negotiable guest-policy
//! checks, then the policy's rules.
//!
//! [`Check`]: crate::verdict::Check

pub(crate) mod cert;
pub(crate) mod report;
pub(crate) mod revocation;
pub(crate) mod roots;

// The VEK chain's certificates and CRLs, and the AMD OIDs they carry.
pub use cert::{
    amd_oid, fmt_time, split_cert_input, split_crl_input, Cert, CertError, Crl, PublicKey,
};
// The attestation report and its TCB version.
pub use report::{Report, Tcb};
// Revocation and the pinned AMD roots.
pub use revocation::{check_crl_signature, CrlFacts};
pub use roots::is_amd_ark;

use p384::ecdsa::signature::Verifier;
use subtle::ConstantTimeEq;

use crate::policy::{Policy, Product, SignerKind, TcbMinimum};
use crate::verdict::Verdict;
use crate::Expectations;
use keyward_evidence::SnpEvidence;

use report::{platform_bits, policy_bits, SigningKey};

/// Verify one SNP report with its certificates, appending `snp.*` checks to `v`.
pub fn verify(ev: &SnpEvidence, policy: &Policy, expect: &Expectations, at: u64, v: &mut Verdict) {
    let sp = &policy.snp;

    // --- parse -------------------------------------------------------------------------
    let r = match Report::parse(&ev.report) {
        Ok(r) => r,
        Err(e) => {
            v.fail("snp.report", e.to_string());
            return;
        }
    };
    v.pass(
        "snp.report",
        format!("{} bytes, version {}", ev.report.len(), r.version()),
    );
    if sp.report_versions.contains(&r.version()) {
        v.pass(
            "snp.version",
            format!("version {} accepted by policy", r.version()),
        );
    } else {
        v.fail(
            "snp.version",
            format!(
                "version {} not in policy {:?}",
                r.version(),
                sp.report_versions
            ),
        );
    }
    if r.sig_algo() == 1 {
        v.pass("snp.sig_algo", "1 (ECDSA P-384 with SHA-384)");
    } else {
        v.fail(
            "snp.sig_algo",
            format!("{} (only 1, ECDSA P-384/SHA-384, is defined)", r.sig_algo()),
        );
    }

    // --- signer ------------------------------------------------------------------------
    let signer = match (r.signing_key(), r.mask_chip_key()) {
        (_, true) => {
            v.fail(
                "snp.signer",
                "KEY_INFO.MASK_CHIP_KEY set: the report is not signed",
            );
            None
        }
        (SigningKey::Vcek, _) => Some(SignerKind::Vcek),
        (SigningKey::Vlek, _) => Some(SignerKind::Vlek),
        (SigningKey::None, _) => {
            v.fail("snp.signer", "KEY_INFO.SIGNING_KEY = 7: no signing key");
            None
        }
        (SigningKey::Reserved(n), _) => {
            v.fail(
                "snp.signer",
                format!("KEY_INFO.SIGNING_KEY = {n} is reserved"),
            );
            None
        }
    };
    if let Some(s) = signer {
        if sp.signers.contains(&s) {
            v.pass("snp.signer", format!("{} (KEY_INFO)", signer_name(s)));
        } else {
            v.fail(
                "snp.signer",
                format!("{} not accepted by policy", signer_name(s)),
            );
        }
    }

    // --- certificates ------------------------------------------------------------------
    let mut given = Vec::new();
    for (i, der) in ev.certs.iter().enumerate() {
        match Cert::from_der(der) {
            Ok(c) => given.push(c),
            Err(e) => v
                .warnings
                .push(format!("given certificate #{i} ignored: {e}")),
        }
    }
    let vek = pick_vek(&given, signer, &r);
    let Some(vek) = vek else {
        v.fail(
            "snp.chain.vek",
            format!(
                "no {} certificate (EC P-384, CN=SEV-VCEK/SEV-VLEK) among the {} given",
                signer.map(signer_name).unwrap_or("VCEK/VLEK"),
                ev.certs.len()
            ),
        );
        // Without the VEK nothing below the chain can be checked except the report's own fields.
        let product = r.cpuid_product();
        report_field_checks(&r, product, policy, expect, v);
        return;
    };

    // --- product -------------------------------------------------------------------------
    let product = product_check(&r, &vek, signer, policy, v);

    // --- chain -------------------------------------------------------------------------
    let first = v.checks.len();
    let chain = build_chain(&given, &vek, signer, product, policy, at, v);
    // Report the chain top-down (root, intermediate, VEK), whatever order it was built in.
    if let Some(chain_checks) = v.checks.get_mut(first..) {
        chain_checks.sort_by_key(|c| match c.name.as_str() {
            "snp.chain.ark" => 0,
            "snp.chain.intermediate" => 1,
            _ => 2,
        });
    }

    // --- CRLs --------------------------------------------------------------------------
    crl_check(&expect.crls, chain.as_ref(), &vek, policy, at, v);

    // --- VEK extensions ----------------------------------------------------------------
    let tcb_product = product.or_else(|| r.cpuid_product());
    match tcb_product {
        Some(p) => vek_tcb_check(&r, &vek, p, v),
        None => v.fail(
            "snp.vek_tcb",
            "product unknown: cannot decode REPORTED_TCB to compare with the VEK",
        ),
    }
    hwid_check(&r, &vek, signer, tcb_product, v);
    csp_check(&vek, signer, policy, v);

    // --- signature ---------------------------------------------------------------------
    signature_check(&r, &vek, v);

    // --- the report's own fields --------------------------------------------------------
    report_field_checks(&r, tcb_product, policy, expect, v);
}

fn signer_name(s: SignerKind) -> &'static str {
    match s {
        SignerKind::Vcek => "VCEK",
        SignerKind::Vlek => "VLEK",
    }
}

/// The endorsement key certificate: an EC P-384 certificate among the given ones, preferring
/// the CN that matches the signer, then the one whose key verifies the report.
fn pick_vek(given: &[Cert], signer: Option<SignerKind>, r: &Report<'_>) -> Option<Cert> {
    let ec: Vec<&Cert> = given
        .iter()
        .filter(|c| matches!(c.public_key(), Ok(PublicKey::P384(_))))
        .collect();
    let want_cn = signer.map(|s| match s {
        SignerKind::Vcek => "SEV-VCEK",
        SignerKind::Vlek => "SEV-VLEK",
    });
    let by_cn: Vec<&Cert> = ec
        .iter()
        .copied()
        .filter(|c| Some(c.subject_cn().as_str()) == want_cn)
        .collect();
    let pool = if by_cn.is_empty() { ec } else { by_cn };
    pool.iter()
        .find(|c| report_signature(r, c).is_ok())
        .or_else(|| pool.first())
        .map(|c| (*c).clone())
}

/// Product from the VEK's issuer CN (`SEV-Milan`, `SEV-VLEK-Genoa`, ...), cross-checked with
/// CPUID (v3+) and the VEK's product-name extension, and against the policy's product list.
fn product_check(
    r: &Report<'_>,
    vek: &Cert,
    signer: Option<SignerKind>,
    policy: &Policy,
    v: &mut Verdict,
) -> Option<Product> {
    let issuer = vek.issuer_cn();
    let (product, is_vlek_issuer) = match Product::ALL.iter().find_map(|p| {
        let n = p.amd_name();
        if issuer == format!("SEV-{n}") {
            Some((*p, false))
        } else if issuer == format!("SEV-VLEK-{n}") {
            Some((*p, true))
        } else {
            None
        }
    }) {
        Some(x) => x,
        None => {
            v.fail(
                "snp.product",
                format!("VEK issuer CN={issuer:?} names no known product"),
            );
            return None;
        }
    };
    let mut problems = Vec::new();
    match signer {
        Some(SignerKind::Vcek) if is_vlek_issuer => {
            problems.push("KEY_INFO says VCEK but the VEK was issued by an ASVK".to_string())
        }
        Some(SignerKind::Vlek) if !is_vlek_issuer => {
            problems.push("KEY_INFO says VLEK but the VEK was issued by an ASK".to_string())
        }
        _ => {}
    }
    let cpuid_note = match (r.cpuid(), r.cpuid_product()) {
        (None, _) => "v2 report: no CPUID fields".to_string(),
        (Some((f, m, s)), Some(p)) if p == product => {
            format!("CPUID family {f:#x} model {m:#x} stepping {s:#x} agrees")
        }
        (Some((f, m, _)), other) => {
            problems.push(format!(
                "CPUID family {f:#x} model {m:#x} is {}, not {}",
                other.map(|p| p.amd_name()).unwrap_or("an unknown CPU"),
                product.amd_name()
            ));
            String::new()
        }
    };
    match vek.ia5(&amd_oid::PRODUCT_NAME) {
        Ok(Some(name)) if !name.starts_with(product.amd_name()) => problems.push(format!(
            "VEK product-name extension {name:?} is not {}",
            product.amd_name()
        )),
        Err(e) => problems.push(e.to_string()),
        _ => {}
    }
    if !policy.snp.products.contains(&product) {
        problems.push(format!("{} not accepted by policy", product.amd_name()));
    }
    if problems.is_empty() {
        v.pass(
            "snp.product",
            format!(
                "{} (from VEK issuer CN={issuer}; {cpuid_note})",
                product.amd_name()
            ),
        );
        Some(product)
    } else {
        v.fail("snp.product", problems.join("; "));
        // Still usable to decode the TCB when the issuer names it.
        Some(product)
    }
}

/// The verified chain.
struct Chain {
    ark: Cert,
    intermediate: Cert,
}

/// Build and check ARK -> intermediate -> VEK under the chain-building rules:
/// - if any intermediate (a non-self-issued RSA certificate) is given, the VEK's issuer must
///   be among them; the built-in intermediates are used only when none is given;
/// - every given ARK (a self-issued RSA certificate) must be pinned, and when ARKs are given,
///   the intermediate's issuer must be among them;
/// - other given certificates are ignored.
fn build_chain(
    given: &[Cert],
    vek: &Cert,
    signer: Option<SignerKind>,
    product: Option<Product>,
    policy: &Policy,
    at: u64,
    v: &mut Verdict,
) -> Option<Chain> {
    let sp = &policy.snp;
    let is_rsa = |c: &&Cert| matches!(c.public_key(), Ok(PublicKey::Rsa(_)));
    let given_int: Vec<&Cert> = given
        .iter()
        .filter(is_rsa)
        .filter(|c| !c.is_self_issued())
        .collect();
    let given_ark: Vec<&Cert> = given
        .iter()
        .filter(is_rsa)
        .filter(|c| c.is_self_issued())
        .collect();
    let builtin = roots::builtin();

    // Pinned roots: AMD's (when the policy trusts them) and the policy's own.
    let pinned = |c: &Cert| -> Option<String> {
        let fp = hex::encode(c.sha256());
        if sp.builtin_amd_roots {
            if let Some(p) = roots::is_amd_ark(&fp) {
                return Some(format!("AMD ARK-{}", p.amd_name()));
            }
        }
        sp.roots
            .iter()
            .find(|r| r.sha256.trim().eq_ignore_ascii_case(&fp))
            .map(|r| r.name.clone())
    };

    // --- intermediate --------------------------------------------------------------------
    let want = match signer {
        Some(SignerKind::Vlek) => "ASVK",
        _ => "ASK",
    };
    let intermediate: Option<Cert> = if !given_int.is_empty() {
        let cands: Vec<&&Cert> = given_int.iter().filter(|c| vek.issued_by_name(c)).collect();
        if cands.is_empty() {
            v.fail(
                "snp.chain.intermediate",
                format!(
                    "none of the given intermediates ({}) issued the VEK (issuer CN={}); \
                     the built-in {want} is not used when intermediates are given",
                    given_int
                        .iter()
                        .map(|c| format!("CN={}", c.subject_cn()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    vek.issuer_cn()
                ),
            );
            None
        } else {
            let pick = cands
                .iter()
                .find(|c| matches!(c.public_key(), Ok(PublicKey::Rsa(k)) if vek.verify_signed_by(&k).is_ok()))
                .or(cands.first())
                .map(|c| (**c).clone());
            pick
        }
    } else {
        let b = product.and_then(|p| builtin.iter().find(|s| s.product == p));
        let c = b.map(|s| match signer {
            Some(SignerKind::Vlek) => s.asvk.clone(),
            _ => s.ask.clone(),
        });
        match c {
            Some(c) if vek.issued_by_name(&c) => Some(c),
            _ => {
                v.fail(
                    "snp.chain.intermediate",
                    format!(
                        "no intermediate given and no built-in {want} named CN={}",
                        vek.issuer_cn()
                    ),
                );
                None
            }
        }
    };

    // --- VEK ------------------------------------------------------------------------------
    if let Some(int) = &intermediate {
        let mut problems = Vec::new();
        match int.public_key() {
            Ok(PublicKey::Rsa(k)) => {
                if let Err(e) = vek.verify_signed_by(&k) {
                    problems.push(format!("not signed by CN={}: {e}", int.subject_cn()));
                }
            }
            _ => problems.push("intermediate key is not RSA".into()),
        }
        if let Err(e) = vek.valid_at(at) {
            problems.push(e);
        }
        if problems.is_empty() {
            v.pass(
                "snp.chain.vek",
                format!(
                    "CN={} serial {} signed by CN={}, valid {}",
                    vek.subject_cn(),
                    vek.serial_hex(),
                    int.subject_cn(),
                    vek.validity_text()
                ),
            );
        } else {
            v.fail(
                "snp.chain.vek",
                format!("CN={}: {}", vek.subject_cn(), problems.join("; ")),
            );
        }
    } else {
        v.skip("snp.chain.vek", "no intermediate to check the VEK against");
    }

    // --- ARK ------------------------------------------------------------------------------
    // Every problem with the root goes into one `snp.chain.ark` check.
    let mut ark_problems: Vec<String> = given_ark
        .iter()
        .filter(|c| pinned(c).is_none())
        .map(|c| {
            format!(
                "given root CN={} sha256 {} is not pinned by the policy",
                c.subject_cn(),
                hex::encode(c.sha256())
            )
        })
        .collect();
    let Some(int) = intermediate else {
        if ark_problems.is_empty() {
            v.skip("snp.chain.ark", "no intermediate to check against a root");
        } else {
            v.fail("snp.chain.ark", ark_problems.join("; "));
        }
        return None;
    };
    // Candidate roots: the given ones, else the policy's PEMs and AMD's built-ins.
    let mut cands: Vec<Cert> = Vec::new();
    if !given_ark.is_empty() {
        cands.extend(given_ark.iter().map(|c| (*c).clone()));
    } else {
        for r in &sp.roots {
            if let Some(pem) = &r.pem {
                if let Ok(ders) = cert::split_cert_input(pem.as_bytes()) {
                    cands.extend(ders.iter().filter_map(|d| Cert::from_der(d).ok()));
                }
            }
        }
        if sp.builtin_amd_roots {
            cands.extend(builtin.iter().map(|s| s.ark.clone()));
        }
    }
    let named: Vec<&Cert> = cands.iter().filter(|a| int.issued_by_name(a)).collect();
    // Prefer a pinned root whose key verifies the intermediate.
    let verifies = |a: &Cert| matches!(a.public_key(), Ok(PublicKey::Rsa(k)) if int.verify_signed_by(&k).is_ok());
    let ark = named
        .iter()
        .find(|a| pinned(a).is_some() && verifies(a))
        .or_else(|| named.iter().find(|a| pinned(a).is_some()))
        .or_else(|| named.first())
        .map(|a| (*a).clone());
    let Some(ark) = ark else {
        v.fail(
            "snp.chain.intermediate",
            if given_ark.is_empty() {
                format!(
                    "{want} CN={}: no trusted root named CN={} is pinned",
                    int.subject_cn(),
                    int.issuer_cn()
                )
            } else {
                format!(
                    "{want} CN={}: none of the given roots is CN={} (wrong ARK)",
                    int.subject_cn(),
                    int.issuer_cn()
                )
            },
        );
        ark_problems.push(format!("no pinned root CN={}", int.issuer_cn()));
        v.fail("snp.chain.ark", ark_problems.join("; "));
        return None;
    };

    // ARK: pinned, self-signed, valid.
    let pin_name = pinned(&ark);
    if pin_name.is_none() && ark_problems.is_empty() {
        ark_problems.push(format!(
            "CN={} sha256 {} is not pinned",
            ark.subject_cn(),
            hex::encode(ark.sha256())
        ));
    }
    match ark.public_key() {
        Ok(PublicKey::Rsa(k)) => {
            if let Err(e) = ark.verify_signed_by(&k) {
                ark_problems.push(format!("self-signature: {e}"));
            }
        }
        _ => ark_problems.push("root key is not RSA".into()),
    }
    if let Err(e) = ark.valid_at(at) {
        ark_problems.push(e);
    }
    if ark_problems.is_empty() {
        v.pass(
            "snp.chain.ark",
            format!(
                "CN={} pinned as {:?} (sha256 {}), self-signed, valid {}",
                ark.subject_cn(),
                pin_name.unwrap_or_default(),
                hex::encode(ark.sha256()),
                ark.validity_text()
            ),
        );
    } else {
        v.fail("snp.chain.ark", ark_problems.join("; "));
    }

    // Intermediate: signed by the ARK, valid.
    let mut problems = Vec::new();
    match ark.public_key() {
        Ok(PublicKey::Rsa(k)) => {
            if let Err(e) = int.verify_signed_by(&k) {
                problems.push(format!("not signed by CN={}: {e}", ark.subject_cn()));
            }
        }
        _ => problems.push("root key is not RSA".into()),
    }
    if let Err(e) = int.valid_at(at) {
        problems.push(e);
    }
    if problems.is_empty() {
        v.pass(
            "snp.chain.intermediate",
            format!(
                "{want} CN={} serial {} signed by CN={}, valid {}",
                int.subject_cn(),
                int.serial_hex(),
                ark.subject_cn(),
                int.validity_text()
            ),
        );
    } else {
        v.fail(
            "snp.chain.intermediate",
            format!("{want} CN={}: {}", int.subject_cn(), problems.join("; ")),
        );
    }
    Some(Chain {
        ark,
        intermediate: int,
    })
}

/// CRLs from files: those issued under the chain's ARK name must carry the ARK's signature,
/// be fresh (nextUpdate + grace), and list neither the intermediate's nor the VEK's serial.
fn crl_check(
    crls: &[Vec<u8>],
    chain: Option<&Chain>,
    vek: &Cert,
    policy: &Policy,
    at: u64,
    v: &mut Verdict,
) {
    let rules = &policy.snp.crl;
    let Some(chain) = chain else {
        if crls.is_empty() && !rules.required {
            v.skip("snp.crl", "no CRL given");
        } else {
            v.fail("snp.crl", "no verified chain to check the CRL against");
        }
        return;
    };
    let ark_key = match chain.ark.public_key() {
        Ok(PublicKey::Rsa(k)) => k,
        _ => {
            v.fail("snp.crl", "root key is not RSA");
            return;
        }
    };
    let mut used = 0;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for (i, der) in crls.iter().enumerate() {
        let crl = match Crl::from_der(der) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("CRL #{i}: {e}"));
                continue;
            }
        };
        if !crl.issued_by_name(&chain.ark) {
            notes.push(format!(
                "CRL #{i} from CN={} ignored (not this chain's root)",
                crl.issuer_cn()
            ));
            continue;
        }
        used += 1;
        if let Err(e) = crl.verify_signed_by(&ark_key) {
            problems.push(format!(
                "CRL #{i} claims CN={} but is not signed by that ARK: {e}",
                crl.issuer_cn()
            ));
            continue;
        }
        match crl.next_update() {
            Some(nu) if at > nu.saturating_add(rules.grace_seconds) => problems.push(format!(
                "CRL #{i} is stale: nextUpdate {} (+{} s grace) is before {}",
                cert::fmt_time(nu),
                rules.grace_seconds,
                cert::fmt_time(at)
            )),
            None => problems.push(format!("CRL #{i} has no nextUpdate")),
            _ => {}
        }
        if crl.revokes(chain.intermediate.serial()) {
            problems.push(format!(
                "CRL #{i} revokes CN={} serial {}",
                chain.intermediate.subject_cn(),
                chain.intermediate.serial_hex()
            ));
        }
        if crl.revokes(vek.serial()) {
            problems.push(format!(
                "CRL #{i} revokes CN={} serial {}",
                vek.subject_cn(),
                vek.serial_hex()
            ));
        }
        notes.push(format!(
            "CRL #{i} by CN={} thisUpdate {}",
            crl.issuer_cn(),
            cert::fmt_time(crl.this_update())
        ));
    }
    if !problems.is_empty() {
        v.fail("snp.crl", problems.join("; "));
    } else if used == 0 {
        if rules.required {
            v.fail(
                "snp.crl",
                format!(
                    "policy requires a CRL from CN={} and none was given{}",
                    chain.ark.subject_cn(),
                    if notes.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", notes.join("; "))
                    }
                ),
            );
        } else {
            v.skip("snp.crl", "no CRL given for this chain's root");
            v.warnings
                .push("revocation not checked: no CRL given (policy does not require one)".into());
        }
    } else {
        v.pass("snp.crl", format!("not revoked; {}", notes.join("; ")));
    }
}

/// VEK TCB extensions (bl, tee, snp, ucode; fmc on Turin) equal REPORTED_TCB.
fn vek_tcb_check(r: &Report<'_>, vek: &Cert, product: Product, v: &mut Verdict) {
    let reported = Tcb::decode(r.reported_tcb_raw(), product);
    let mut fields = vec![
        ("bl", amd_oid::BL_SPL, reported.bootloader),
        ("tee", amd_oid::TEE_SPL, reported.tee),
        ("snp", amd_oid::SNP_SPL, reported.snp),
        ("ucode", amd_oid::UCODE_SPL, reported.microcode),
    ];
    if let Some(fmc) = reported.fmc {
        fields.insert(0, ("fmc", amd_oid::FMC_SPL, fmc));
    }
    let mut problems = Vec::new();
    for (name, oid, want) in fields {
        match vek.spl(&oid) {
            Ok(Some(got)) if got == want => {}
            Ok(Some(got)) => problems.push(format!("{name}: VEK {got}, REPORTED_TCB {want}")),
            Ok(None) => problems.push(format!("{name}: VEK has no {oid} extension")),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        v.pass(
            "snp.vek_tcb",
            format!("VEK extensions equal REPORTED_TCB ({reported})"),
        );
    } else {
        v.fail("snp.vek_tcb", problems.join("; "));
    }
}

/// VCEK hwID equals CHIP_ID (Turin: its first 8 bytes).
fn hwid_check(
    r: &Report<'_>,
    vek: &Cert,
    signer: Option<SignerKind>,
    product: Option<Product>,
    v: &mut Verdict,
) {
    if signer != Some(SignerKind::Vcek) {
        v.skip("snp.hwid", "not a VCEK: a VLEK carries no hwID");
        return;
    }
    let chip = r.chip_id();
    let want: &[u8] = if product == Some(Product::Turin) {
        head8(&chip)
    } else {
        chip.as_slice()
    };
    match vek.hw_id() {
        Ok(Some(hw)) if hw.as_slice() == want => v.pass(
            "snp.hwid",
            format!("VCEK hwID equals CHIP_ID ({} bytes)", want.len()),
        ),
        Ok(Some(hw)) => v.fail(
            "snp.hwid",
            format!(
                "VCEK hwID {}.. differs from CHIP_ID {}..{}",
                hex::encode(head8(&hw)),
                hex::encode(head8(want)),
                if chip.iter().all(|b| *b == 0) {
                    " (CHIP_ID masked to zero)"
                } else {
                    ""
                }
            ),
        ),
        Ok(None) => v.fail("snp.hwid", "VCEK has no hwID extension"),
        Err(e) => v.fail("snp.hwid", e.to_string()),
    }
}

/// VLEK CSP id (IA5String) is in the policy's list.
fn csp_check(vek: &Cert, signer: Option<SignerKind>, policy: &Policy, v: &mut Verdict) {
    if signer != Some(SignerKind::Vlek) {
        v.skip("snp.csp_id", "not a VLEK");
        return;
    }
    match vek.ia5(&amd_oid::CSP_ID) {
        Ok(Some(id)) if policy.snp.allowed_csp_ids.iter().any(|a| a == &id) => {
            v.pass("snp.csp_id", format!("{id:?} allowed by policy"))
        }
        Ok(Some(id)) => v.fail(
            "snp.csp_id",
            format!(
                "{id:?} not in the policy's allowed CSP ids {:?} (use a policy or --allow-csp)",
                policy.snp.allowed_csp_ids
            ),
        ),
        Ok(None) => v.fail("snp.csp_id", "VLEK has no CSP-id extension"),
        Err(e) => v.fail("snp.csp_id", e.to_string()),
    }
}

fn report_signature(r: &Report<'_>, vek: &Cert) -> Result<(), String> {
    let PublicKey::P384(key) = vek.public_key().map_err(|e| e.to_string())? else {
        return Err("VEK key is not EC P-384".into());
    };
    let (rl, sl) = (r.signature_r(), r.signature_s());
    // Little-endian, 72 bytes each: the low 48 are the scalar, the rest must be zero.
    let (r48, r_hi) = rl.split_at(48);
    let (s48, s_hi) = sl.split_at(48);
    if r_hi.iter().chain(s_hi).any(|b| *b != 0) {
        return Err("signature R or S has non-zero bytes above the 48 used by P-384".into());
    }
    let mut rb = [0u8; 48];
    let mut sb = [0u8; 48];
    for (d, s) in rb.iter_mut().zip(r48.iter().rev()) {
        *d = *s;
    }
    for (d, s) in sb.iter_mut().zip(s48.iter().rev()) {
        *d = *s;
    }
    let sig = p384::ecdsa::Signature::from_scalars(rb, sb)
        .map_err(|_| "signature R or S is not a valid P-384 scalar".to_string())?;
    key.verify(r.signed_bytes(), &sig)
        .map_err(|_| "ECDSA P-384/SHA-384 signature over bytes 0x000-0x29F does not verify".into())
}

fn signature_check(r: &Report<'_>, vek: &Cert, v: &mut Verdict) {
    match report_signature(r, vek) {
        Ok(()) => v.pass(
            "snp.signature",
            format!(
                "ECDSA P-384/SHA-384 over the raw bytes 0x000-0x29F verifies under CN={}",
                vek.subject_cn()
            ),
        ),
        Err(e) => v.fail("snp.signature", e),
    }
}

/// Checks on the report's own fields: REPORT_DATA, the non-negotiable guest-policy bits, VMPL,
/// and the policy's rules (measurement, TCB minimums, guest SVN, platform info, host data).
fn report_field_checks(
    r: &Report<'_>,
    product: Option<Product>,
    policy: &Policy,
    expect: &Expectations,
    v: &mut Verdict,
) {
    let sp = &policy.snp;

    // REPORT_DATA (constant time).
    let expected: Option<Vec<u8>> = match (&expect.report_data, &sp.report_data) {
        (Some(e), _) => Some(e.to_vec()),
        (None, Some(h)) => crate::policy::check_hex(h, 64).ok(),
        (None, None) => None,
    };
    match expected {
        Some(e) if bool::from(e.as_slice().ct_eq(r.report_data().as_slice())) => v.pass(
            "snp.report_data",
            format!("equals the expected value ({}…)", hex::encode(head8(&e))),
        ),
        Some(e) => v.fail(
            "snp.report_data",
            format!(
                "REPORT_DATA {}… differs from the expected {}…",
                hex::encode(head8(&r.report_data())),
                hex::encode(head8(&e))
            ),
        ),
        None => {
            v.skip("snp.report_data", "no expected REPORT_DATA given");
            v.warnings.push(format!(
                "REPORT_DATA not checked (no expected value); it is {}",
                hex::encode(r.report_data())
            ));
        }
    }

    // Non-negotiable, whatever the policy says.
    let pol = r.policy();
    if pol & policy_bits::DEBUG != 0 {
        v.fail(
            "snp.debug",
            format!("guest POLICY {pol:#x} allows DEBUG: the hypervisor can read guest memory"),
        );
    } else {
        v.pass("snp.debug", format!("DEBUG off (POLICY {pol:#x})"));
    }
    if pol & policy_bits::MIGRATE_MA != 0 {
        v.fail(
            "snp.migrate_ma",
            "guest POLICY allows a migration agent (MIGRATE_MA)",
        );
    } else {
        v.pass("snp.migrate_ma", "MIGRATE_MA off");
    }
    let mut bad = Vec::new();
    if pol & policy_bits::RESERVED_MUST_BE_ONE == 0 {
        bad.push("bit 17 (reserved, must be 1) is 0".to_string());
    }
    if pol & policy_bits::UNKNOWN_MASK != 0 {
        bad.push(format!(
            "bits {:#x} are undefined in the ABI this verifier knows",
            pol & policy_bits::UNKNOWN_MASK
        ));
    }
    if bad.is_empty() {
        v.pass("snp.policy_bits", "bit 17 set, no unknown bits");
    } else {
        v.fail("snp.policy_bits", bad.join("; "));
    }

    // VMPL.
    let vmpl = r.vmpl();
    if sp.allowed_vmpls.contains(&vmpl) {
        if vmpl == 0 {
            v.pass("snp.vmpl", "VMPL 0");
        } else {
            v.pass(
                "snp.vmpl",
                format!(
                    "VMPL {vmpl}, allowed by the policy (an SVSM or paravisor runs at VMPL 0 \
                     and is trusted as part of the guest)"
                ),
            );
        }
    } else {
        v.fail(
            "snp.vmpl",
            format!(
                "VMPL {vmpl} not allowed (policy allows {:?}; use a policy or --allow-vmpl)",
                sp.allowed_vmpls
            ),
        );
    }

    // Guest policy rules from the policy.
    let g = &sp.guest_policy;
    let mut gp = Vec::new();
    for (name, bit, want) in [
        ("SMT", policy_bits::SMT, g.smt),
        ("SINGLE_SOCKET", policy_bits::SINGLE_SOCKET, g.single_socket),
        ("CXL_ALLOW", policy_bits::CXL_ALLOW, g.cxl_allow),
        (
            "MEM_AES_256_XTS",
            policy_bits::MEM_AES_256_XTS,
            g.mem_aes_256_xts,
        ),
        ("RAPL_DIS", policy_bits::RAPL_DIS, g.rapl_dis),
        (
            "CIPHERTEXT_HIDING",
            policy_bits::CIPHERTEXT_HIDING,
            g.ciphertext_hiding,
        ),
        (
            "PAGE_SWAP_DISABLE",
            policy_bits::PAGE_SWAP_DISABLE,
            g.page_swap_disable,
        ),
    ] {
        if let Some(w) = want {
            if (pol & bit != 0) != w {
                gp.push(format!(
                    "POLICY.{name} is {}, policy requires {w}",
                    pol & bit != 0
                ));
            }
        }
    }
    let (abi_major, abi_minor) = (((pol >> 8) & 0xFF) as u8, (pol & 0xFF) as u8);
    if let Some(m) = g.min_abi_major {
        let mn = g.min_abi_minor.unwrap_or(0);
        if (abi_major, abi_minor) < (m, mn) {
            gp.push(format!("guest ABI {abi_major}.{abi_minor} below {m}.{mn}"));
        }
    }
    if gp.is_empty() {
        v.pass(
            "snp.guest_policy",
            format!(
                "POLICY {pol:#x}: SMT {}, SINGLE_SOCKET {}, ABI {abi_major}.{abi_minor}, bits 21-25 {:#x}",
                pol & policy_bits::SMT != 0,
                pol & policy_bits::SINGLE_SOCKET != 0,
                (pol >> 21) & 0x1F
            ),
        );
    } else {
        v.fail("snp.guest_policy", gp.join("; "));
    }

    // Measurement.
    let m = r.measurement();
    if sp.measurements.is_empty() {
        v.skip("snp.measurement", "policy lists no measurement");
        v.warnings.push(format!(
            "launch measurement not checked (policy lists none); it is {}",
            hex::encode(m)
        ));
    } else if sp
        .measurements
        .iter()
        .any(|a| hex::decode(a.trim()).ok().as_deref() == Some(&m[..]))
    {
        v.pass("snp.measurement", format!("{} allowed", hex::encode(m)));
    } else {
        v.fail(
            "snp.measurement",
            format!(
                "{} is not one of the {} allowed",
                hex::encode(m),
                sp.measurements.len()
            ),
        );
    }

    // TCB minimums.
    let tcbs = [
        (
            "snp.reported_tcb",
            "REPORTED_TCB",
            r.reported_tcb_raw(),
            &sp.min_reported_tcb,
        ),
        (
            "snp.committed_tcb",
            "COMMITTED_TCB",
            r.committed_tcb_raw(),
            &sp.min_committed_tcb,
        ),
        (
            "snp.launch_tcb",
            "LAUNCH_TCB",
            r.launch_tcb_raw(),
            &sp.min_launch_tcb,
        ),
    ];
    for (check, field, raw, min) in tcbs {
        match (min, product) {
            (None, _) => {
                v.skip(check, "policy sets no minimum");
                if check == "snp.reported_tcb" {
                    v.warnings
                        .push("TCB not checked (policy sets no minimum REPORTED_TCB)".into());
                }
            }
            (Some(_), None) => v.fail(check, "product unknown: cannot decode the TCB"),
            (Some(min), Some(p)) => {
                let t = Tcb::decode(raw, p);
                let low = tcb_below(&t, min);
                if low.is_empty() {
                    v.pass(check, format!("{field} {t} meets the minimum"));
                } else {
                    v.fail(
                        check,
                        format!("{field} {t} below the minimum: {}", low.join(", ")),
                    );
                }
            }
        }
    }

    // Guest SVN.
    match sp.min_guest_svn {
        None => v.skip("snp.guest_svn", "policy sets no minimum"),
        Some(min) if r.guest_svn() >= min => {
            v.pass("snp.guest_svn", format!("{} >= {min}", r.guest_svn()))
        }
        Some(min) => v.fail("snp.guest_svn", format!("{} < {min}", r.guest_svn())),
    }

    // Platform info.
    let pi = r.platform_info();
    let pr = &sp.platform;
    let mut pp = Vec::new();
    for (name, bit, want) in [
        ("SMT_EN", platform_bits::SMT_EN, pr.smt_enabled),
        ("TSME_EN", platform_bits::TSME_EN, pr.tsme_enabled),
        ("ECC_EN", platform_bits::ECC_EN, pr.ecc_enabled),
        ("RAPL_DIS", platform_bits::RAPL_DIS, pr.rapl_disabled),
        (
            "CIPHERTEXT_HIDING_EN",
            platform_bits::CIPHERTEXT_HIDING_EN,
            pr.ciphertext_hiding_enabled,
        ),
        (
            "ALIAS_CHECK_COMPLETE",
            platform_bits::ALIAS_CHECK_COMPLETE,
            pr.alias_check_complete,
        ),
    ] {
        if let Some(w) = want {
            if (pi & bit != 0) != w {
                pp.push(format!(
                    "PLATFORM_INFO.{name} is {}, policy requires {w}",
                    pi & bit != 0
                ));
            }
        }
    }
    if pp.is_empty() {
        v.pass(
            "snp.platform_info",
            format!("PLATFORM_INFO {pi:#x} meets the policy"),
        );
    } else {
        v.fail("snp.platform_info", pp.join("; "));
    }

    id_key_checks(r, policy, v);

    // Host data.
    if sp.host_data.is_empty() {
        v.skip("snp.host_data", "policy lists no HOST_DATA");
    } else if sp
        .host_data
        .iter()
        .any(|h| hex::decode(h.trim()).ok().as_deref() == Some(&r.host_data()[..]))
    {
        v.pass("snp.host_data", "HOST_DATA allowed");
    } else {
        v.fail(
            "snp.host_data",
            format!("HOST_DATA {} not allowed", hex::encode(r.host_data())),
        );
    }
}

/// ID-block keys: the ID key (and, with AUTHOR_KEY_EN, the author key) in the policy's lists.
fn id_key_checks(r: &Report<'_>, policy: &Policy, v: &mut Verdict) {
    let sp = &policy.snp;
    let listed = |list: &[String], d: &[u8; 48]| {
        list.iter()
            .any(|h| hex::decode(h.trim()).ok().as_deref() == Some(&d[..]))
    };
    if sp.id_key_digests.is_empty() {
        v.skip("snp.id_key", "policy lists no ID key");
    } else if listed(&sp.id_key_digests, &r.id_key_digest()) {
        v.pass(
            "snp.id_key",
            format!("ID key {} allowed", hex::encode(r.id_key_digest())),
        );
    } else {
        v.fail(
            "snp.id_key",
            format!(
                "ID key digest {} not allowed",
                hex::encode(r.id_key_digest())
            ),
        );
    }
    if sp.author_key_digests.is_empty() {
        v.skip("snp.author_key", "policy lists no author key");
    } else if !r.author_key_en() {
        v.fail(
            "snp.author_key",
            "policy lists author keys but AUTHOR_KEY_EN is 0",
        );
    } else if listed(&sp.author_key_digests, &r.author_key_digest()) {
        v.pass("snp.author_key", "author key allowed");
    } else {
        v.fail(
            "snp.author_key",
            format!(
                "author key digest {} not allowed",
                hex::encode(r.author_key_digest())
            ),
        );
    }
}

fn tcb_below(t: &Tcb, min: &TcbMinimum) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |name: &str, got: Option<u8>, want: Option<u8>| {
        if let (Some(g), Some(w)) = (got, want) {
            if g < w {
                out.push(format!("{name} {g} < {w}"));
            }
        }
    };
    cmp("fmc", t.fmc, min.fmc);
    cmp("bl", Some(t.bootloader), min.bootloader);
    cmp("tee", Some(t.tee), min.tee);
    cmp("snp", Some(t.snp), min.snp);
    cmp("ucode", Some(t.microcode), min.microcode);
    out
}

/// The first 8 bytes (or fewer) of a value, for messages.
fn head8(b: &[u8]) -> &[u8] {
    b.get(..8).unwrap_or(b)
}
