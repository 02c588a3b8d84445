//! Input rules for the admin API, from the XKS contract: key ids, SigV4 credentials, URI
//! prefixes, store names, regions and service names. Each check says why a value is refused.

use super::KeystoreError;

/// Longest URI prefix: `XksProxyUriPath` (prefix + `/kms/xks/v1`) is at most 128 characters.
pub const MAX_URI_PREFIX: usize = 128 - "/kms/xks/v1".len();

/// External key id: 1–128 characters of `[A-Za-z0-9._-]`, not `.` or `..` (they would become
/// dot-segments in the request path).
pub fn key_id(id: &str) -> Result<(), KeystoreError> {
    const WHAT: &str = "key id";
    if id.is_empty() {
        return Err(KeystoreError::invalid(
            WHAT,
            "it is empty (1-128 characters needed)",
        ));
    }
    if id.len() > 128 {
        return Err(KeystoreError::invalid(
            WHAT,
            format!("it has {} characters (at most 128)", id.len()),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(KeystoreError::invalid(
            WHAT,
            format!("character {c:?} is not allowed (only A-Z a-z 0-9 . _ -)"),
        ));
    }
    if id == "." || id == ".." {
        return Err(KeystoreError::invalid(
            WHAT,
            format!("{id:?} would be a dot-segment in the request path"),
        ));
    }
    Ok(())
}

/// Key store name: 1–64 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn store_name(name: &str) -> Result<(), KeystoreError> {
    const WHAT: &str = "key store name";
    if name.is_empty() || name.len() > 64 {
        return Err(KeystoreError::invalid(WHAT, "1-64 characters needed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(KeystoreError::invalid(
            WHAT,
            format!("character {c:?} is not allowed (only A-Z a-z 0-9 . _ -)"),
        ));
    }
    if name == "." || name == ".." {
        return Err(KeystoreError::invalid(WHAT, "`.` and `..` are not names"));
    }
    Ok(())
}

/// SigV4 access key id as KMS accepts it: 20–30 characters of `A-Z2-7`.
pub fn access_key_id(id: &str) -> Result<(), KeystoreError> {
    const WHAT: &str = "access key id";
    let n = id.chars().count();
    if !(20..=30).contains(&n) {
        return Err(KeystoreError::invalid(
            WHAT,
            format!("it has {n} characters; AWS KMS requires 20-30"),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_uppercase() || ('2'..='7').contains(c)))
    {
        return Err(KeystoreError::invalid(
            WHAT,
            format!("character {c:?} is not allowed; AWS KMS requires A-Z and 2-7 only"),
        ));
    }
    Ok(())
}

/// SigV4 secret as KMS accepts it: 43–64 characters of `[A-Za-z0-9/+=]`. The message never
/// contains the secret or any of its characters.
pub fn secret_access_key(secret: &str) -> Result<(), KeystoreError> {
    const WHAT: &str = "secret access key";
    let n = secret.chars().count();
    if !(43..=64).contains(&n) {
        return Err(KeystoreError::invalid(
            WHAT,
            format!("it has {n} characters; AWS KMS requires 43-64"),
        ));
    }
    if !secret
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '+' | '='))
    {
        return Err(KeystoreError::invalid(
            WHAT,
            "it contains a character outside A-Z a-z 0-9 / + =",
        ));
    }
    Ok(())
}

/// The least a secret must be to be installed at all when it fails [`secret_access_key`] (a
/// configuration file's credential KMS would refuse, installed with a warning): 16-128
/// characters, none of them whitespace or control characters. The message never contains it.
pub fn secret_access_key_usable(secret: &str) -> Result<(), KeystoreError> {
    const WHAT: &str = "secret access key";
    let n = secret.chars().count();
    if !(16..=128).contains(&n) {
        return Err(KeystoreError::invalid(
            WHAT,
            format!(
                "it has {n} characters; even outside AWS KMS at least 16 (at most 128) are needed"
            ),
        ));
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeystoreError::invalid(
            WHAT,
            "it contains whitespace or a control character",
        ));
    }
    Ok(())
}

/// URI prefix before `/kms/xks/v1`: empty, or `/` followed by `[a-zA-Z0-9/_-]`, no empty
/// segment, no trailing `/`, and at most [`MAX_URI_PREFIX`] characters (so that
/// `XksProxyUriPath` stays within 128).
pub fn uri_prefix(p: &str) -> Result<(), KeystoreError> {
    const WHAT: &str = "uri prefix";
    if p.is_empty() {
        return Ok(());
    }
    if !p.starts_with('/') {
        return Err(KeystoreError::invalid(
            WHAT,
            "it must be empty or start with `/`",
        ));
    }
    if p.len() > MAX_URI_PREFIX {
        return Err(KeystoreError::invalid(
            WHAT,
            format!(
                "it has {} characters; at most {MAX_URI_PREFIX} so that XksProxyUriPath \
                 (prefix + /kms/xks/v1) stays within 128",
                p.len()
            ),
        ));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-')))
    {
        return Err(KeystoreError::invalid(
            WHAT,
            format!("character {c:?} is not allowed (only a-z A-Z 0-9 / _ -)"),
        ));
    }
    if p.ends_with('/') || p.contains("//") {
        return Err(KeystoreError::invalid(
            WHAT,
            "it has an empty path segment (`//` or a trailing `/`)",
        ));
    }
    Ok(())
}

/// AWS region name: 1–32 characters of `[a-z0-9-]`, e.g. `us-east-1`.
pub fn region(r: &str) -> Result<(), KeystoreError> {
    if r.is_empty()
        || r.len() > 32
        || !r
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(KeystoreError::invalid(
            "region",
            "1-32 characters of a-z 0-9 - needed, e.g. us-east-1",
        ));
    }
    Ok(())
}

/// SigV4 service name accepted in the credential scope: 1–64 characters of `[a-z0-9-]`.
pub fn service(s: &str) -> Result<(), KeystoreError> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(KeystoreError::invalid(
            "service name",
            "1-64 characters of a-z 0-9 - needed, e.g. kms-xks-proxy",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(r: Result<(), KeystoreError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn key_ids() {
        assert!(key_id("a").is_ok());
        assert!(key_id("Key_1.v-2").is_ok());
        assert!(key_id(&"x".repeat(128)).is_ok());
        assert!(why(key_id("")).contains("empty"));
        assert!(why(key_id(&"x".repeat(129))).contains("129"));
        assert!(why(key_id("a/b")).contains("'/'"));
        assert!(why(key_id("é")).contains("not allowed"));
        assert!(why(key_id(".")).contains("dot-segment"));
        assert!(why(key_id("..")).contains("dot-segment"));
        assert!(key_id("...").is_ok());
    }

    #[test]
    fn access_key_ids() {
        assert!(access_key_id("AKIAIOSFODNN7EXAMPLE").is_ok()); // 20
        assert!(access_key_id(&"A".repeat(30)).is_ok());
        assert!(why(access_key_id(&"A".repeat(19))).contains("19"));
        assert!(why(access_key_id(&"A".repeat(31))).contains("31"));
        assert!(why(access_key_id("AKIAIOSFODNN1EXAMPLE")).contains("'1'"));
        assert!(why(access_key_id("akiaiosfodnn7example")).contains("not allowed"));
    }

    #[test]
    fn secrets() {
        let s43 = "a".repeat(43);
        assert!(secret_access_key(&s43).is_ok());
        assert!(secret_access_key(&"A/+=".repeat(16)).is_ok()); // 64
        let e = why(secret_access_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ));
        assert!(e.contains("40") && e.contains("43-64"), "{e}");
        assert!(!e.contains("wJalr"));
        assert!(why(secret_access_key(&"a".repeat(65))).contains("65"));
        let bad = format!("{}!", "a".repeat(43));
        let e = why(secret_access_key(&bad));
        assert!(e.contains("outside") && !e.contains('!'), "{e}");
    }

    #[test]
    fn secrets_kms_refuses_but_keyward_can_use() {
        // The earlier docs' sample: KMS refuses it, keyward can install it (with a warning).
        assert!(secret_access_key_usable("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").is_ok());
        assert!(secret_access_key_usable(&"a".repeat(16)).is_ok());
        assert!(secret_access_key_usable(&"a".repeat(128)).is_ok());
        assert!(why(secret_access_key_usable(&"a".repeat(15))).contains("15"));
        assert!(why(secret_access_key_usable(&"a".repeat(129))).contains("129"));
        let e = why(secret_access_key_usable("hunter2 hunter2 hunter2"));
        assert!(e.contains("whitespace") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn prefixes() {
        assert!(uri_prefix("").is_ok());
        assert!(uri_prefix("/keyward").is_ok());
        assert!(uri_prefix("/a/b_c-d/E9").is_ok());
        assert!(uri_prefix(&format!("/{}", "a".repeat(MAX_URI_PREFIX - 1))).is_ok());
        assert!(why(uri_prefix(&format!("/{}", "a".repeat(MAX_URI_PREFIX)))).contains("128"));
        assert!(why(uri_prefix("keyward")).contains("start with"));
        assert!(why(uri_prefix("/")).contains("empty path segment"));
        assert!(why(uri_prefix("/a//b")).contains("empty path segment"));
        assert!(why(uri_prefix("/a/")).contains("empty path segment"));
        assert!(why(uri_prefix("/a.b")).contains("'.'"));
    }

    #[test]
    fn regions_services_names() {
        assert!(region("us-east-1").is_ok());
        assert!(region("US").is_err());
        assert!(service("kms-xks-proxy").is_ok());
        assert!(service("xks kms").is_err());
        assert!(store_name("default").is_ok());
        assert!(store_name("..").is_err());
        assert!(store_name("a b").is_err());
    }
}
