//! The deployments a KRS serves (`[[deployment]]` in its configuration) and the check in Hello
//! that the appliance's pins are one of them.
//!
//! The pins (KRS URL, both KRS key pins, the operator CA) come from EC2 user data, which the
//! host writes. The KRS's own key pins only show that the appliance talks to this KRS; the
//! operator CA says who will administer the released keys. A Hello whose pins match no
//! configured deployment is denied (`PinMismatch`) before any session, HSM or log work, so the
//! genuine image booted with the host's own operator CA gets nothing.

use sha2::{Digest, Sha384};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, DeploymentConfig};
use keyward_krp::messages::Pins;

/// A checked `[[deployment]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub name: String,
    /// SHA-384 of the canonical CBOR pins (the `pins_digest` in T).
    pub pins_sha384: Option<[u8; 48]>,
    /// SHA-256 of the operator CA certificate (DER).
    pub admin_ca_sha256: Option<[u8; 32]>,
}

fn hex_n<const N: usize>(dep: &str, field: &str, s: &str) -> Result<[u8; N], ConfigError> {
    let v = hex::decode(s.trim())
        .map_err(|_| ConfigError::Invalid(format!("[[deployment]] {dep:?}: {field} is not hex")))?;
    v.try_into().map_err(|_| {
        ConfigError::Invalid(format!(
            "[[deployment]] {dep:?}: {field} must be {N} bytes ({} hex digits)",
            2 * N
        ))
    })
}

/// Check the configured deployments: at least one; each with a valid name (letters, digits,
/// `.`, `_`, `-`; at most 64), unique, and at least one of `pins_sha384` / `admin_ca_sha256`.
pub(crate) fn parse(cfgs: &[DeploymentConfig]) -> Result<Vec<Deployment>, ConfigError> {
    if cfgs.is_empty() {
        return Err(ConfigError::Invalid(
            "no [[deployment]]: the KRS releases only to appliances whose pins name a configured \
             deployment; add one (`keyward krs pins --config FILE --admin-ca CA.pem --url URL` \
             prints the block)"
                .into(),
        ));
    }
    let mut out: Vec<Deployment> = Vec::with_capacity(cfgs.len());
    for c in cfgs {
        let name = c.name.trim();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(ConfigError::Invalid(format!(
                "[[deployment]] name {:?}: 1 to 64 letters, digits, '.', '_' or '-'",
                c.name
            )));
        }
        if out.iter().any(|d| d.name == name) {
            return Err(ConfigError::Invalid(format!(
                "[[deployment]] name {name:?} appears twice"
            )));
        }
        let pins_sha384 = c
            .pins_sha384
            .as_deref()
            .map(|s| hex_n::<48>(name, "pins_sha384", s))
            .transpose()?;
        let admin_ca_sha256 = c
            .admin_ca_sha256
            .as_deref()
            .map(|s| hex_n::<32>(name, "admin_ca_sha256", s))
            .transpose()?;
        if pins_sha384.is_none() && admin_ca_sha256.is_none() {
            return Err(ConfigError::Invalid(format!(
                "[[deployment]] {name:?}: set pins_sha384 or admin_ca_sha256"
            )));
        }
        out.push(Deployment {
            name: name.to_string(),
            pins_sha384,
            admin_ca_sha256,
        });
    }
    Ok(out)
}

/// SHA-384 of the canonical CBOR pins (the same value as `transcript::pins_digest`).
pub fn pins_sha384(pins: &Pins) -> Option<[u8; 48]> {
    keyward_krp::cbor::to_canonical(pins)
        .ok()
        .map(|b| Sha384::digest(b).into())
}

/// The deployment whose every configured digest matches `pins` (compared in constant time,
/// every deployment tried). `Err` is the logged detail naming what was presented.
pub(crate) fn find<'a>(
    deployments: &'a [Deployment],
    pins: &Pins,
) -> Result<&'a Deployment, String> {
    let pd = pins_sha384(pins).unwrap_or([0u8; 48]);
    let mut found: Option<&Deployment> = None;
    for d in deployments {
        let pd_ok = d
            .pins_sha384
            .map(|want| bool::from(want.ct_eq(&pd)))
            .unwrap_or(true);
        let ca_ok = d
            .admin_ca_sha256
            .map(|want| bool::from(pins.admin_ca_sha256.as_slice().ct_eq(&want[..])))
            .unwrap_or(true);
        if pd_ok && ca_ok && found.is_none() {
            found = Some(d);
        }
    }
    found.ok_or_else(|| {
        let ca = if pins.admin_ca_sha256.is_empty() {
            "none".to_string()
        } else {
            hex::encode(&pins.admin_ca_sha256)
        };
        let names: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
        format!(
            "pins match no [[deployment]]: pins_sha384 {}, admin_ca_sha256 {ca}, krs_url {:?} (configured: {})",
            hex::encode(pd),
            pins.krs_url.chars().take(128).collect::<String>(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )
    })
}

/// The `[[deployment]]` block for `keyward krs pins`: `admin_ca_sha256` always, and
/// `pins_sha384` when the appliance's `krs_url` is known (`pins` given).
pub(crate) fn block(name: &str, admin_ca_sha256: &[u8; 32], pins: Option<&Pins>) -> String {
    let mut s = format!("[[deployment]]\nname = \"{name}\"\n");
    if let Some(p) = pins.and_then(pins_sha384) {
        s.push_str(&format!("pins_sha384 = \"{}\"\n", hex::encode(p)));
    }
    s.push_str(&format!(
        "admin_ca_sha256 = \"{}\"\n",
        hex::encode(admin_ca_sha256)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(ca: u8) -> Pins {
        Pins {
            krs_url: "krs.example:7443".into(),
            krs_tls_spki_sha256: vec![1; 32],
            receipt_spki_sha256: vec![2; 32],
            admin_ca_sha256: vec![ca; 32],
        }
    }

    fn cfg(name: &str, pd: Option<String>, ca: Option<String>) -> DeploymentConfig {
        DeploymentConfig {
            name: name.into(),
            pins_sha384: pd,
            admin_ca_sha256: ca,
        }
    }

    #[test]
    fn parse_refuses_missing_and_bad_entries() {
        let e = parse(&[]).unwrap_err().to_string();
        assert!(e.contains("[[deployment]]"), "{e}");
        assert!(parse(&[cfg("a", None, None)]).is_err());
        assert!(parse(&[cfg("a", None, Some("ab".repeat(31)))]).is_err());
        assert!(parse(&[cfg("a", Some("ab".repeat(32)), None)]).is_err());
        assert!(parse(&[cfg("a b", None, Some("ab".repeat(32)))]).is_err());
        let two = [
            cfg("a", None, Some("ab".repeat(32))),
            cfg("a", None, Some("cd".repeat(32))),
        ];
        assert!(parse(&two).unwrap_err().to_string().contains("twice"));
        let ok = parse(&[cfg("a", Some("ab".repeat(48)), Some("cd".repeat(32)))]).unwrap();
        assert_eq!(ok[0].admin_ca_sha256, Some([0xcd; 32]));
    }

    #[test]
    fn find_matches_every_configured_digest() {
        let victim = pins(3);
        let pd = hex::encode(pins_sha384(&victim).unwrap());
        let deps = parse(&[
            cfg("by-ca", None, Some(hex::encode([3u8; 32]))),
            cfg("by-digest", Some(pd.clone()), None),
        ])
        .unwrap();
        assert_eq!(find(&deps, &victim).unwrap().name, "by-ca");
        // The attack: the victim's KRS pins with the host's own operator CA.
        let attacker = pins(9);
        let e = find(&deps, &attacker).unwrap_err();
        assert!(e.contains(&hex::encode([9u8; 32])), "{e}");
        // Whole-digest deployments also catch a changed URL with the right CA.
        let deps = parse(&[cfg("d", Some(pd), Some(hex::encode([3u8; 32])))]).unwrap();
        let mut moved = victim.clone();
        moved.krs_url = "elsewhere:1".into();
        assert!(find(&deps, &moved).is_err());
        assert!(find(&deps, &victim).is_ok());
        // An empty operator CA never matches an admin_ca_sha256 deployment.
        let deps = parse(&[cfg("c", None, Some(hex::encode([0u8; 32])))]).unwrap();
        let mut none = victim;
        none.admin_ca_sha256 = vec![];
        assert!(find(&deps, &none).is_err());
    }
}
