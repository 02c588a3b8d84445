//! Operator roles on the admin API (`viewer`, `admin`): part of the configuration model because
//! `[admin] unclaimed_role` names one; what each role may do is the admin API's business
//! (`keyward_admin::role`).

/// The SAN URI prefix of a role claim.
pub const ROLE_URI_PREFIX: &str = "keyward:role:";

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read-only, no secrets.
    Viewer,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    /// `viewer` or `admin`.
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role `{other}`: use viewer or admin")),
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
