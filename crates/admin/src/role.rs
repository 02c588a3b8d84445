//! Operator roles on the admin API, read from the client certificate the operator CA issued,
//! and the one decision table of what each request needs ([`policy`]).
//!
//! The claim is a SubjectAltName URI `keyward:role:<name>` (the operator CA sets it when it
//! signs; `keyward admin cert issue --role`, or openssl's
//! `-addext subjectAltName=URI:keyward:role:security`). A SAN URI was chosen over an OU because
//! it is a single, typed value the CA must put there on purpose, and it cannot be confused with a
//! department name in a DN. A certificate may carry several role URIs: it gets the union of
//! them; one URI naming a role this version does not know refuses the certificate everything.
//!
//! - `viewer`: read-only, no secrets: `stores list`, `fleet`, `keys list`, `creds list` (ids
//!   only), `tls show`, `approvals list`, and `GET /metrics` (which every known role may read).
//! - `operator`: day-to-day key management: `keys create|import|grant|revoke|rotate|enable|
//!   disable|cancel-destroy`, `stores create`.
//! - `security`: credentials and secrets (`creds add|remove`, `kms-config`), `keys
//!   schedule-destroy|export`, `tls csr|install`, `stores remove`, `backup`.
//! - `admin` (deprecated): operator and security together, for certificates issued before the
//!   split.
//!
//! Destructive or secret-revealing requests (`keys schedule-destroy`, `keys export`,
//! `kms-config`, `stores remove`) also need M-of-N approval ([`Policy::approval`], see `crate::approval`).
//!
//! A certificate with no role claim gets `[admin] unclaimed_role` (default `admin`, so operator
//! certificates issued before roles existed keep working; set `unclaimed_role = "viewer"` once
//! every admin certificate carries its claim).

use rustls::pki_types::CertificateDer;

use super::proto::Request;

pub(crate) use keyward_config::{Role, ROLE_URI_PREFIX};

/// A set of roles (what a certificate's claims add up to). `admin` is kept as operator and
/// security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    pub viewer: bool,
    pub operator: bool,
    pub security: bool,
}

impl Roles {
    /// The roles `role` gives.
    pub fn of(role: Role) -> Roles {
        match role {
            Role::Viewer => Roles {
                viewer: true,
                ..Roles::default()
            },
            Role::Operator => Roles {
                operator: true,
                ..Roles::default()
            },
            Role::Security => Roles {
                security: true,
                ..Roles::default()
            },
            Role::Admin => Roles {
                operator: true,
                security: true,
                viewer: false,
            },
        }
    }

    /// Both sets.
    pub fn union(self, o: Roles) -> Roles {
        Roles {
            viewer: self.viewer || o.viewer,
            operator: self.operator || o.operator,
            security: self.security || o.security,
        }
    }

    /// Whether these roles satisfy `need`.
    pub fn satisfy(self, need: Need) -> bool {
        match need {
            Need::Any => self.viewer || self.operator || self.security,
            Need::Operator => self.operator,
            Need::Security => self.security,
        }
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = Vec::new();
        if self.viewer {
            v.push("viewer");
        }
        if self.operator {
            v.push("operator");
        }
        if self.security {
            v.push("security");
        }
        if v.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&v.join("+"))
        }
    }
}

/// The role a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any known role (reads without secrets).
    Any,
    Operator,
    Security,
}

impl Need {
    /// The role to name in a refusal (and the role an approver needs).
    pub fn role(self) -> Role {
        match self {
            Need::Any => Role::Viewer,
            Need::Operator => Role::Operator,
            Need::Security => Role::Security,
        }
    }
}

/// What a request needs: a role, and whether M-of-N approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub need: Need,
    /// Destructive or secret-revealing: needs an approval by other operators.
    pub approval: bool,
}

/// The decision table: what each admin request needs. One place; a unit test per request.
pub(crate) fn policy(req: &Request) -> Policy {
    use Request as R;
    let (need, approval) = match req {
        R::StoresList
        | R::Fleet
        | R::KeysList { .. }
        | R::CredsList { .. }
        | R::TlsShow
        | R::ApprovalsList
        | R::MkStatus => (Need::Any, false),
        R::StoresCreate { .. }
        | R::KeysCreate { .. }
        | R::KeysImport { .. }
        | R::KeysImportParams { .. }
        | R::KeysImportWrapped { .. }
        | R::KeysEnable { .. }
        | R::KeysDisable { .. }
        | R::KeysRotate { .. }
        | R::KeysRotation { .. }
        | R::KeysCancelDestroy { .. }
        | R::KeysGrant { .. }
        | R::KeysRevoke { .. } => (Need::Operator, false),
        R::CredsAdd { .. }
        | R::CredsRemove { .. }
        | R::TlsCsr { .. }
        | R::TlsInstall { .. }
        | R::Backup
        | R::BackupRewrap { .. }
        | R::MkReseal => (Need::Security, false),
        R::KeysScheduleDestroy { .. }
        | R::KeysExport { .. }
        | R::KmsConfig { .. }
        | R::StoresRemove { .. } => (Need::Security, true),
        // Approving or denying needs the role of the request it decides; checked against the
        // filed request (any known role gets that far).
        R::ApprovalsApprove { .. } | R::ApprovalsDeny { .. } => (Need::Any, false),
    };
    Policy { need, approval }
}

/// Whether `roles` may make `req` (approval aside).
#[cfg(test)]
pub(crate) fn allows(roles: Roles, req: &Request) -> bool {
    roles.satisfy(policy(req).need)
}

/// What a certificate claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// No `keyward:role:` URI.
    None,
    /// One or more known roles (their union).
    Roles(Roles),
    /// A `keyward:role:` URI naming no known role.
    Unknown(String),
}

/// The role claim of a DER certificate (its SubjectAltName URIs). A certificate that does not
/// parse claims nothing (rustls has verified it already; this only reads the extension).
pub(crate) fn claim_of(cert: &CertificateDer<'_>) -> Claim {
    use der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let Ok(c) = x509_cert::Certificate::from_der(cert.as_ref()) else {
        return Claim::None;
    };
    let Ok(Some((_, san))) = c.tbs_certificate.get::<SubjectAltName>() else {
        return Claim::None;
    };
    let mut found: Option<Roles> = None;
    for name in san.0 {
        let GeneralName::UniformResourceIdentifier(uri) = name else {
            continue;
        };
        let Some(r) = uri.as_str().strip_prefix(ROLE_URI_PREFIX) else {
            continue;
        };
        match Role::parse(r) {
            Ok(role) => found = Some(found.unwrap_or_default().union(Roles::of(role))),
            Err(_) => return Claim::Unknown(uri.as_str().to_string()),
        }
    }
    found.map_or(Claim::None, Claim::Roles)
}

/// The roles a claim gives, with `unclaimed` for a certificate without a claim.
pub(crate) fn resolve(claim: &Claim, unclaimed: Role) -> Result<Roles, String> {
    match claim {
        Claim::None => Ok(Roles::of(unclaimed)),
        Claim::Roles(r) => Ok(*r),
        Claim::Unknown(uri) => Err(format!(
            "the client certificate claims an unknown role ({uri}); known: {}",
            Role::ALL.map(|r| r.uri()).join(", ")
        )),
    }
}

/// The verified operator behind an admin request: the certificate's subject (the actor in the
/// audit log), the SHA-256 of its SubjectPublicKeyInfo (the identity dual control compares),
/// and its roles (or why it has none).
#[derive(Debug, Clone)]
pub struct Operator {
    pub subject: String,
    /// Hex SHA-256 of the client leaf's SPKI.
    pub spki_sha256: String,
    pub role: Result<Roles, String>,
}

impl Operator {
    /// An operator with `role` (tests and in-process callers); the identity is derived from
    /// the subject.
    pub fn new(subject: &str, role: Role) -> Operator {
        use sha2::Digest;
        Operator {
            subject: subject.to_string(),
            spki_sha256: hex::encode(sha2::Sha256::digest(subject.as_bytes())),
            role: Ok(Roles::of(role)),
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
        for role in Role::ALL {
            let c = ca.client_with_role("c", 1, Some(role)).unwrap();
            assert_eq!(
                claim_of(&der(&c.cert_pem)),
                Claim::Roles(Roles::of(role)),
                "{role}"
            );
        }
        let both = ca
            .client_with_roles("b", 1, &[Role::Operator, Role::Viewer])
            .unwrap();
        assert_eq!(
            claim_of(&der(&both.cert_pem)),
            Claim::Roles(Roles {
                viewer: true,
                operator: true,
                security: false
            })
        );
        assert_eq!(
            resolve(&Claim::None, Role::Viewer),
            Ok(Roles::of(Role::Viewer))
        );
        assert_eq!(
            resolve(&Claim::None, Role::Admin),
            Ok(Roles::of(Role::Operator).union(Roles::of(Role::Security)))
        );
        assert!(resolve(&Claim::Unknown("keyward:role:root".into()), Role::Admin).is_err());
    }

    fn req(json: &str) -> Request {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn check(json: &str, need: Need, approval: bool) {
        let r = req(json);
        assert_eq!(policy(&r), Policy { need, approval }, "{json}");
        // Exactly the roles that satisfy the need are allowed.
        for role in Role::ALL {
            let roles = Roles::of(role);
            let want = match need {
                Need::Any => true,
                Need::Operator => matches!(role, Role::Operator | Role::Admin),
                Need::Security => matches!(role, Role::Security | Role::Admin),
            };
            assert_eq!(allows(roles, &r), want, "{role} {json}");
        }
        assert!(!allows(Roles::default(), &r), "no role at all: {json}");
    }

    #[test]
    fn policy_stores_list() {
        check(r#"{"op":"stores_list"}"#, Need::Any, false);
    }
    #[test]
    fn policy_fleet() {
        check(r#"{"op":"fleet"}"#, Need::Any, false);
    }
    #[test]
    fn policy_keys_list() {
        check(r#"{"op":"keys_list","store":null}"#, Need::Any, false);
    }
    #[test]
    fn policy_creds_list() {
        check(r#"{"op":"creds_list","store":null}"#, Need::Any, false);
    }
    #[test]
    fn policy_tls_show() {
        check(r#"{"op":"tls_show"}"#, Need::Any, false);
    }
    #[test]
    fn policy_approvals_list() {
        check(r#"{"op":"approvals_list"}"#, Need::Any, false);
    }
    #[test]
    fn policy_approvals_approve_and_deny() {
        // The role of the filed request is checked against it (crate::approval).
        check(r#"{"op":"approvals_approve","id":"x"}"#, Need::Any, false);
        check(r#"{"op":"approvals_deny","id":"x"}"#, Need::Any, false);
    }
    #[test]
    fn policy_stores_create() {
        check(
            r#"{"op":"stores_create","name":"a","region":"r"}"#,
            Need::Operator,
            false,
        );
    }
    #[test]
    fn policy_keys_create() {
        check(
            r#"{"op":"keys_create","store":null,"id":"k","usage":"encrypt_decrypt"}"#,
            Need::Operator,
            false,
        );
    }
    #[test]
    fn policy_keys_import() {
        check(
            r#"{"op":"keys_import","store":null,"id":"k","usage":"encrypt_decrypt","key_b64":"x"}"#,
            Need::Operator,
            false,
        );
    }
    #[test]
    fn policy_keys_enable() {
        check(
            r#"{"op":"keys_enable","store":null,"id":"k"}"#,
            Need::Operator,
            false,
        );
    }
    #[test]
    fn policy_keys_disable() {
        check(
            r#"{"op":"keys_disable","store":null,"id":"k"}"#,
            Need::Operator,
            false,
        );
    }
    #[test]
    fn policy_keys_rotate() {
        check(
            r#"{"op":"keys_rotate","store":null,"id":"k"}"#,
            Need::Operator,
            false,
        );
        check(
            r#"{"op":"keys_rotation","store":null,"id":"k","every_secs":86400}"#,
            Need::Operator,
            false,
        );
    }
    #[test]
    fn policy_keys_cancel_destroy() {
        check(
            r#"{"op":"keys_cancel_destroy","store":null,"id":"k"}"#,
            Need::Operator,
            false,
        );
    }
    #[test]
    fn policy_keys_grant_and_revoke() {
        check(
            r#"{"op":"keys_grant","store":null,"id":"k","grant":{"principal":"*","ops":{"encrypt":true,"decrypt":false,"metadata":false}}}"#,
            Need::Operator,
            false,
        );
        check(
            r#"{"op":"keys_revoke","store":null,"id":"k","principal":"*","ops":null,"via_service":null,"source_vpc":null,"source_vpce":null}"#,
            Need::Operator,
            false,
        );
    }
    #[test]
    fn policy_creds_add_and_remove() {
        check(
            r#"{"op":"creds_add","store":null,"access_key_id":null,"secret_access_key":null}"#,
            Need::Security,
            false,
        );
        check(
            r#"{"op":"creds_remove","store":null,"access_key_id":"A"}"#,
            Need::Security,
            false,
        );
    }
    #[test]
    fn policy_tls_csr_and_install() {
        check(
            r#"{"op":"tls_csr","dns_names":["a"]}"#,
            Need::Security,
            false,
        );
        check(
            r#"{"op":"tls_install","chain_pem":""}"#,
            Need::Security,
            false,
        );
    }
    #[test]
    fn policy_backup() {
        check(r#"{"op":"backup"}"#, Need::Security, false);
        check(r#"{"op":"backup_rewrap","file":""}"#, Need::Security, false);
    }
    #[test]
    fn policy_schedule_destroy_needs_approval() {
        check(
            r#"{"op":"keys_schedule_destroy","store":null,"id":"k","days":7}"#,
            Need::Security,
            true,
        );
    }
    #[test]
    fn policy_keys_export_needs_approval() {
        check(
            r#"{"op":"keys_export","store":null,"id":"k","wrapping_algorithm":"RSAES_OAEP_SHA_256","wrapping_public_key_der_b64":"AA=="}"#,
            Need::Security,
            true,
        );
    }
    #[test]
    fn policy_kms_config_needs_approval() {
        check(
            r#"{"op":"kms_config","store":null,"access_key_id":null}"#,
            Need::Security,
            true,
        );
    }
    #[test]
    fn policy_stores_remove_needs_approval() {
        check(r#"{"op":"stores_remove","name":"a"}"#, Need::Security, true);
    }
}
