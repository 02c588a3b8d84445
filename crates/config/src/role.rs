//! Operator roles on the admin API (`viewer`, `operator`, `security`, and the deprecated
//! `admin` = operator + security): part of the configuration model because `[admin]
//! unclaimed_role` names one; what each role may do is the admin API's business
//! (`keyward_admin`'s role checks).

/// The SAN URI prefix of a role claim.
pub const ROLE_URI_PREFIX: &str = "keyward:role:";

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Read-only, no secrets: lists, fleet, `tls show`, metrics.
    Viewer,
    /// Day-to-day key management: create, import, grant, rotate, enable/disable,
    /// cancel-destroy, stores create.
    Operator,
    /// Credentials and secrets, destruction, TLS, backups, stores remove.
    Security,
    /// Deprecated: operator and security together (certificates from before the split).
    Admin,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Security, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Security => "security",
            Role::Admin => "admin",
        }
    }

    /// `viewer`, `operator`, `security` or `admin` (deprecated).
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "security" => Ok(Role::Security),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: use viewer, operator, security or admin (deprecated: \
                 operator and security)"
            )),
        }
    }

    /// The SAN URI that claims this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_parses_back() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
            assert!(r.uri().starts_with(ROLE_URI_PREFIX));
        }
        assert!(Role::parse("root").is_err());
    }
}
