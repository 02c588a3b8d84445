//! Operator roles on the admin API, read from the client certificate the operator CA issued.
//!
//! The claim is a SubjectAltName URI `keyward:role:viewer` or `keyward:role:admin` (the operator
//! CA sets it when it signs; `keyward admin cert issue --role`, or openssl's
//! `-addext subjectAltName=URI:keyward:role:viewer`). A SAN URI was chosen over an OU because it
//! is a single, typed value the CA must put there on purpose, and it cannot be confused with a
//! department name in a DN.
//!
//! - `viewer`: read-only: `stores list`, `keys list`, `creds list` (ids only), `tls show`,
//!   and `GET /metrics` (which every known role may read).
//! - `admin`: everything, including every write, `tls csr|install` and the secret-revealing
//!   `kms-config`.
//!
//! A certificate with no role claim gets `[admin] unclaimed_role` (default `admin`, so operator
//! certificates issued before roles existed keep working; set `unclaimed_role = "viewer"` once
//! every admin certificate carries its claim). A certificate claiming a role this version does
//! not know is refused every request; one that claims both roles is a viewer (least privilege).

use rustls::pki_types::CertificateDer;

use super::proto::Request;

pub use keyward_config::role::{Role, ROLE_URI_PREFIX};

/// Whether `role` may make `req`. Viewers get the lists and `tls show`: nothing that
/// changes state, signs with the appliance key or discloses a secret.
pub fn allows(role: Role, req: &Request) -> bool {
    match role {
        Role::Admin => true,
        Role::Viewer => matches!(
            req,
            Request::StoresList
                | Request::Fleet
                | Request::KeysList { .. }
                | Request::CredsList { .. }
                | Request::TlsShow
                | Request::MkStatus
        ),
    }
}

/// What a certificate claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No `keyward:role:` URI.
    None,
    Role(Role),
    /// A `keyward:role:` URI naming no known role.
    Unknown(String),
}

/// The role claim of a DER certificate (its SubjectAltName URIs). A certificate that does not
/// parse claims nothing (rustls has verified it already; this only reads the extension).
pub fn claim_of(cert: &CertificateDer<'_>) -> Claim {
    use der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let Ok(c) = x509_cert::Certificate::from_der(cert.as_ref()) else {
        return Claim::None;
    };
    let Ok(Some((_, san))) = c.tbs_certificate.get::<SubjectAltName>() else {
        return Claim::None;
    };
    let mut found = Claim::None;
    for name in san.0 {
        let GeneralName::UniformResourceIdentifier(uri) = name else {
            continue;
        };
        let Some(r) = uri.as_str().strip_prefix(ROLE_URI_PREFIX) else {
            continue;
        };
        let this = match Role::parse(r) {
            Ok(role) => Claim::Role(role),
            Err(_) => return Claim::Unknown(uri.as_str().to_string()),
        };
        found = match (found, this) {
            (Claim::Role(Role::Viewer), _) | (_, Claim::Role(Role::Viewer)) => {
                Claim::Role(Role::Viewer)
            }
            (_, this) => this,
        };
    }
    found
}

/// The role a claim gives, with `unclaimed` for a certificate without a claim.
pub fn resolve(claim: &Claim, unclaimed: Role) -> Result<Role, String> {
    match claim {
        Claim::None => Ok(unclaimed),
        Claim::Role(r) => Ok(*r),
        Claim::Unknown(uri) => Err(format!(
            "the client certificate claims an unknown role ({uri}); known: {ROLE_URI_PREFIX}viewer, {ROLE_URI_PREFIX}admin"
        )),
    }
}

/// The verified operator behind an admin request: the certificate's subject (the actor in the
/// audit log) and its role (or why it has none).
#[derive(Debug, Clone)]
pub struct Operator {
    pub subject: String,
    pub role: Result<Role, String>,
}

impl Operator {
    /// An operator with `role` (tests and in-process callers).
    pub fn new(subject: &str, role: Role) -> Operator {
        Operator {
            subject: subject.to_string(),
            role: Ok(role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    fn der(pem: &str) -> CertificateDer<'static> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn claims_from_certificates() {
        let ca = Ca::new("ops").unwrap();
        let plain = ca.client("old", 1).unwrap();
        assert_eq!(claim_of(&der(&plain.cert_pem)), Claim::None);
        let v = ca.client_with_role("v", 1, Some(Role::Viewer)).unwrap();
        assert_eq!(claim_of(&der(&v.cert_pem)), Claim::Role(Role::Viewer));
        let a = ca.client_with_role("a", 1, Some(Role::Admin)).unwrap();
        assert_eq!(claim_of(&der(&a.cert_pem)), Claim::Role(Role::Admin));
        assert_eq!(resolve(&Claim::None, Role::Viewer), Ok(Role::Viewer));
        assert_eq!(resolve(&Claim::None, Role::Admin), Ok(Role::Admin));
        assert!(resolve(&Claim::Unknown("keyward:role:root".into()), Role::Admin).is_err());
    }

    #[test]
    fn viewer_reads_only() {
        assert!(allows(Role::Viewer, &Request::StoresList));
        assert!(allows(Role::Viewer, &Request::KeysList { store: None }));
        assert!(allows(Role::Viewer, &Request::CredsList { store: None }));
        assert!(allows(Role::Viewer, &Request::TlsShow));
        let kms = Request::KmsConfig {
            store: None,
            access_key_id: None,
        };
        assert!(!allows(Role::Viewer, &kms));
        assert!(allows(Role::Admin, &kms));
        assert!(!allows(
            Role::Viewer,
            &Request::KeysDisable {
                store: None,
                id: "k".into()
            }
        ));
        assert!(!allows(
            Role::Viewer,
            &Request::TlsCsr {
                dns_names: vec![],
                new_key: false
            }
        ));
        // Every write is refused to a viewer.
        let writes: Vec<Request> = serde_json::from_str(
            r#"[{"op":"stores_create","name":"a","region":"r"},{"op":"stores_remove","name":"a"},
                {"op":"tls_install","chain_pem":""},{"op":"keys_create","store":null,"id":"k","usage":"encrypt_decrypt"},
                {"op":"keys_enable","store":null,"id":"k"},{"op":"creds_add","store":null,"access_key_id":null,"secret_access_key":null},
                {"op":"creds_remove","store":null,"access_key_id":"A"}]"#,
        )
        .unwrap();
        for w in &writes {
            assert!(w.is_change(), "{w:?}");
            assert!(!allows(Role::Viewer, w), "{w:?}");
        }
    }
}
