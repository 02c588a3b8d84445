//! Step 1 of a request: method and path to one of the four XKS APIs (or the liveness path).
//!
//! `{prefix}/kms/xks/v1/keys/{id}/metadata|encrypt|decrypt` and `{prefix}/kms/xks/v1/health`.
//! The router only splits the path; the handler looks the prefix up in the key-store view, then
//! answers 405 for a non-POST before any authentication (contract 7.4 step 1).

/// The XKS APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Metadata,
    Encrypt,
    Decrypt,
    Health,
}

impl Api {
    /// Name used in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Metadata => "GetKeyMetadata",
            Api::Encrypt => "Encrypt",
            Api::Decrypt => "Decrypt",
            Api::Health => "GetHealthStatus",
        }
    }
}

/// A request path that names an XKS API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// Everything before `/kms/xks/v1` (may be empty).
    pub prefix: &'a str,
    pub api: Api,
    /// The external key id (`None` for health).
    pub key_id: Option<&'a str>,
}

/// What the router makes of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed<'a> {
    /// `GET /ping`: unauthenticated liveness.
    Ping,
    /// One of the four XKS APIs (method not yet checked).
    Xks(Route<'a>),
    /// Anything else: 404 `InvalidUriPathException`.
    NotFound(&'static str),
}

/// The longest URI the spec allows.
pub(crate) const MAX_URI: usize = 256;
const BASE: &str = "/kms/xks/v1/";

/// Split `path` (and reject a query string: KMS sends none).
pub fn route<'a>(path: &'a str, query: Option<&str>) -> Routed<'a> {
    if path == "/ping" && query.is_none() {
        return Routed::Ping;
    }
    if path.len() + query.map_or(0, |q| q.len() + 1) > MAX_URI {
        return Routed::NotFound("URI longer than 256 characters");
    }
    if query.is_some() {
        return Routed::NotFound("XKS URIs take no query string");
    }
    // The first `/kms/xks/v1/` (BASE starts with '/': test only at slashes; `str::find` set
    // up a two-way searcher per request).
    let Some(at) = path.bytes().enumerate().position(|(i, b)| {
        b == b'/'
            && path
                .as_bytes()
                .get(i..)
                .is_some_and(|rest| rest.starts_with(BASE.as_bytes()))
    }) else {
        return Routed::NotFound("not an XKS API path");
    };
    let (prefix, rest) = (&path[..at], &path[at + BASE.len()..]);
    if !prefix_ok(prefix) {
        return Routed::NotFound("malformed URI path prefix");
    }
    if rest == "health" {
        return Routed::Xks(Route {
            prefix,
            api: Api::Health,
            key_id: None,
        });
    }
    let Some(rest) = rest.strip_prefix("keys/") else {
        return Routed::NotFound("unknown XKS API");
    };
    let Some(slash) = rest.bytes().position(|b| b == b'/') else {
        return Routed::NotFound("unknown XKS API");
    };
    let (id, op) = (&rest[..slash], &rest[slash + 1..]);
    let api = match op {
        "metadata" => Api::Metadata,
        "encrypt" => Api::Encrypt,
        "decrypt" => Api::Decrypt,
        _ => return Routed::NotFound("unknown XKS API"),
    };
    if !key_id_ok(id) {
        return Routed::NotFound("malformed external key id");
    }
    Routed::Xks(Route {
        prefix,
        api,
        key_id: Some(id),
    })
}

/// A key id: 1-128 characters of `A-Za-z0-9._-`, and not `.` or `..` (dot segments).
pub(crate) fn key_id_ok(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A prefix: empty, or `/` followed by `a-zA-Z0-9/_-`, without empty segments.
fn prefix_ok(p: &str) -> bool {
    p.is_empty()
        || (p.starts_with('/')
            && !p.as_bytes().windows(2).any(|w| w == b"//")
            && !p.ends_with('/')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_four_apis() {
        assert_eq!(
            route("/p/kms/xks/v1/keys/k-1.a_b/encrypt", None),
            Routed::Xks(Route {
                prefix: "/p",
                api: Api::Encrypt,
                key_id: Some("k-1.a_b")
            })
        );
        assert_eq!(
            route("/kms/xks/v1/health", None),
            Routed::Xks(Route {
                prefix: "",
                api: Api::Health,
                key_id: None
            })
        );
        assert!(
            matches!(route("/a/b/kms/xks/v1/keys/x/metadata", None), Routed::Xks(r) if r.api == Api::Metadata)
        );
        assert!(
            matches!(route("/a/kms/xks/v1/keys/x/decrypt", None), Routed::Xks(r) if r.api == Api::Decrypt)
        );
        assert_eq!(route("/ping", None), Routed::Ping);
    }

    #[test]
    fn refuses_bad_paths() {
        for p in [
            "/p/kms/xks/v1/keys/../encrypt",
            "/p/kms/xks/v1/keys/./encrypt",
            "/p/kms/xks/v1/keys//encrypt",
            "/p/kms/xks/v1/keys/a%20b/encrypt",
            "/p/kms/xks/v1/keys/k/sign",
            "/p/kms/xks/v1/keys/k/encrypt/",
            "/p/kms/xks/v2/keys/k/encrypt",
            "//kms/xks/v1/health",
            "/p/kms/xks/v1/healthz",
            "/",
        ] {
            assert!(matches!(route(p, None), Routed::NotFound(_)), "{p}");
        }
        let long = format!("/p/kms/xks/v1/keys/{}/encrypt", "a".repeat(129));
        assert!(matches!(route(&long, None), Routed::NotFound(_)));
        let id128 = "a".repeat(128);
        assert!(matches!(
            route(&format!("/p/kms/xks/v1/keys/{id128}/encrypt"), None),
            Routed::Xks(_)
        ));
        assert!(matches!(
            route("/kms/xks/v1/health", Some("a=b")),
            Routed::NotFound(_)
        ));
        let huge = format!("/{}/kms/xks/v1/health", "p".repeat(250));
        assert!(matches!(route(&huge, None), Routed::NotFound(_)));
    }
}
