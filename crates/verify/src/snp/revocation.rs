//! AMD CRLs outside an appraisal: which pinned ARK signed a CRL, and the facts an operator
//! needs (issuer, thisUpdate, nextUpdate, revoked serials). Used by the KRS to report the
//! age of its CRLs and by `keyward krs crl fetch` before it replaces a CRL file. The
//! per-appraisal revocation check itself is `snp::crl_check`.

use crate::policy::Policy;

use super::cert::{self, Cert, Crl, PublicKey};
use super::roots;

/// The ARKs a policy trusts: AMD's built-in ones (when `builtin_amd_roots`) and the policy's
/// `[[snp.roots]]` that carry a PEM hashing to their pin. Each with the name shown in logs.
pub(crate) fn pinned_arks(policy: &Policy) -> Vec<(String, Cert)> {
    let sp = &policy.snp;
    let mut out = Vec::new();
    if sp.builtin_amd_roots {
        for s in roots::builtin() {
            out.push((format!("AMD ARK-{}", s.product.amd_name()), s.ark.clone()));
        }
    }
    for r in &sp.roots {
        let Some(pem) = &r.pem else { continue };
        let Ok(ders) = cert::split_cert_input(pem.as_bytes()) else {
            continue;
        };
        for c in ders.iter().filter_map(|d| Cert::from_der(d).ok()) {
            if hex::encode(c.sha256()).eq_ignore_ascii_case(r.sha256.trim()) {
                out.push((r.name.clone(), c));
            }
        }
    }
    out
}

/// What a CRL says, once its signature by a pinned ARK has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFacts {
    /// The issuer's common name (`ARK-Milan`, ...).
    pub issuer_cn: String,
    /// The pinned root's name (`AMD ARK-Milan`, or the policy's `[[snp.roots]] name`).
    pub root: String,
    pub this_update: u64,
    pub next_update: Option<u64>,
    /// Number of revoked serials listed.
    pub revoked: usize,
}

/// Parse `der` and check its RSA-PSS signature by the pinned ARK it names. `Err` says why not.
pub fn check_crl_signature(der: &[u8], policy: &Policy) -> Result<CrlFacts, String> {
    let crl = Crl::from_der(der).map_err(|e| e.to_string())?;
    let arks = pinned_arks(policy);
    let named: Vec<&(String, Cert)> = arks.iter().filter(|(_, a)| crl.issued_by_name(a)).collect();
    if named.is_empty() {
        return Err(format!(
            "issuer CN={} is none of the pinned roots ({})",
            crl.issuer_cn(),
            arks.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut last = String::new();
    for (name, ark) in named {
        let key = match ark.public_key() {
            Ok(PublicKey::Rsa(k)) => k,
            _ => {
                last = format!("{name}: root key is not RSA");
                continue;
            }
        };
        match crl.verify_signed_by(&key) {
            Ok(()) => {
                return Ok(CrlFacts {
                    issuer_cn: crl.issuer_cn(),
                    root: name.clone(),
                    this_update: crl.this_update(),
                    next_update: crl.next_update(),
                    revoked: crl.tbs().revoked_certificates.as_ref().map_or(0, Vec::len),
                })
            }
            Err(e) => last = format!("not signed by {name}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsign::{test_root_policy_toml, CrlSpec, TestCa};
    use std::time::{Duration, SystemTime};

    #[test]
    fn crl_signed_by_the_pinned_test_ark_only() {
        let ca = TestCa::load().unwrap();
        let now = SystemTime::now();
        let spec = CrlSpec {
            revoked: vec![vec![0]],
            this_update: now - Duration::from_secs(60),
            next_update: now + Duration::from_secs(3600),
        };
        let good = ca.crl(&spec, None).unwrap();
        let forged = ca.crl(&spec, Some(ca.ask_key())).unwrap();
        let with_root =
            Policy::from_bytes(format!("format = 1\n{}", test_root_policy_toml()).as_bytes())
                .unwrap();
        let facts = check_crl_signature(&good, &with_root).unwrap();
        assert_eq!(facts.revoked, 1);
        assert!(facts.issuer_cn.contains("TEST"));
        assert!(facts.next_update.is_some());
        let e = check_crl_signature(&forged, &with_root).unwrap_err();
        assert!(e.contains("not signed"), "{e}");
        // The default policy pins AMD's roots only: the test ARK's CRL is refused.
        let e = check_crl_signature(&good, &Policy::builtin_default()).unwrap_err();
        assert!(e.contains("none of the pinned roots"), "{e}");
        assert!(check_crl_signature(b"junk", &with_root).is_err());
    }
}
