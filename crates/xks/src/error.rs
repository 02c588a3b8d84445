//! Every XKS error the proxy can answer with: its `errorName`, its exact HTTP status and the JSON
//! body `{"errorName": ..., "errorMessage": ...}` (contract section 7).
//!
//! Messages are short, printable ASCII (< 512 characters) and never carry secrets, plaintext or
//! key material: KMS records them in the customer's CloudWatch Logs.

use std::borrow::Cow;

/// One XKS error. The payload is the `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum XksError {
    /// 400: an input is invalid (bad JSON, missing field, bad Base64, wrong enum value).
    #[error("ValidationException: {0}")]
    Validation(Cow<'static, str>),
    /// 400: the external key is disabled.
    #[error("InvalidStateException: {0}")]
    InvalidState(&'static str),
    /// 400: ciphertext, IV, AAD, metadata or tag do not authenticate.
    #[error("InvalidCiphertextException: {0}")]
    InvalidCiphertext(&'static str),
    /// 400: the key does not allow this operation.
    #[error("InvalidKeyUsageException: {0}")]
    InvalidKeyUsage(&'static str),
    /// 401: SigV4 failed (missing or garbled header, unknown key, bad signature, skew).
    #[error("AuthenticationFailedException: {0}")]
    AuthenticationFailed(&'static str),
    /// 403: no grant allows this principal and operation.
    #[error("AccessDeniedException: {0}")]
    AccessDenied(&'static str),
    /// 404: no such external key.
    #[error("KeyNotFoundException: {0}")]
    KeyNotFound(&'static str),
    /// 404: unknown prefix or malformed path.
    #[error("InvalidUriPathException: {0}")]
    InvalidUriPath(&'static str),
    /// 405 (not an XKS error name; see [`XksError::name`]): a non-POST method on an API path.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// 429: overloaded.
    #[error("ThrottlingException: {0}")]
    Throttling(&'static str),
    /// 501: a parameter is larger than we support, or an operation is not implemented.
    #[error("UnsupportedOperationException: {0}")]
    UnsupportedOperation(Cow<'static, str>),
    /// 503: a backend timed out.
    // Reserved by the contract (docs/xks-api.md: no remote backend on the request path yet).
    #[allow(dead_code)]
    #[error("DependencyTimeoutException: {0}")]
    DependencyTimeout(&'static str),
    /// 500: internal failure.
    #[error("InternalException: {0}")]
    Internal(&'static str),
}

impl XksError {
    /// The `errorName` on the wire. A 405 has no XKS name in the spec; we send
    /// `UnsupportedOperationException` in its body so that the body is still a valid XKS error.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            XksError::Validation(_) => "ValidationException",
            XksError::InvalidState(_) => "InvalidStateException",
            XksError::InvalidCiphertext(_) => "InvalidCiphertextException",
            XksError::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            XksError::AuthenticationFailed(_) => "AuthenticationFailedException",
            XksError::AccessDenied(_) => "AccessDeniedException",
            XksError::KeyNotFound(_) => "KeyNotFoundException",
            XksError::InvalidUriPath(_) => "InvalidUriPathException",
            XksError::MethodNotAllowed(_) => "UnsupportedOperationException",
            XksError::Throttling(_) => "ThrottlingException",
            XksError::UnsupportedOperation(_) => "UnsupportedOperationException",
            XksError::DependencyTimeout(_) => "DependencyTimeoutException",
            XksError::Internal(_) => "InternalException",
        }
    }

    /// The exact HTTP status the spec gives this error.
    pub(crate) fn status(&self) -> u16 {
        match self {
            XksError::Validation(_)
            | XksError::InvalidState(_)
            | XksError::InvalidCiphertext(_)
            | XksError::InvalidKeyUsage(_) => 400,
            XksError::AuthenticationFailed(_) => 401,
            XksError::AccessDenied(_) => 403,
            XksError::KeyNotFound(_) | XksError::InvalidUriPath(_) => 404,
            XksError::MethodNotAllowed(_) => 405,
            XksError::Throttling(_) => 429,
            XksError::Internal(_) => 500,
            XksError::UnsupportedOperation(_) => 501,
            XksError::DependencyTimeout(_) => 503,
        }
    }

    /// The `errorMessage`.
    pub(crate) fn message(&self) -> &str {
        match self {
            XksError::Validation(m) | XksError::UnsupportedOperation(m) => m,
            XksError::InvalidState(m)
            | XksError::InvalidCiphertext(m)
            | XksError::InvalidKeyUsage(m)
            | XksError::AuthenticationFailed(m)
            | XksError::AccessDenied(m)
            | XksError::KeyNotFound(m)
            | XksError::InvalidUriPath(m)
            | XksError::MethodNotAllowed(m)
            | XksError::Throttling(m)
            | XksError::DependencyTimeout(m)
            | XksError::Internal(m) => m,
        }
    }

    /// The JSON body. The message is cut to printable ASCII below 512 characters, and escaped.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"{\"errorName\":\"");
        out.extend_from_slice(self.name().as_bytes());
        out.extend_from_slice(b"\",\"errorMessage\":\"");
        for &b in self.message().as_bytes().iter().take(500) {
            // Printable ASCII only; anything else becomes '?'.
            let b = if (0x20..=0x7e).contains(&b) { b } else { b'?' };
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.extend_from_slice(b"\"}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_spec_status() {
        let table: Vec<(XksError, &str, u16)> = vec![
            (XksError::Validation("x".into()), "ValidationException", 400),
            (XksError::InvalidState("x"), "InvalidStateException", 400),
            (
                XksError::InvalidCiphertext("x"),
                "InvalidCiphertextException",
                400,
            ),
            (
                XksError::InvalidKeyUsage("x"),
                "InvalidKeyUsageException",
                400,
            ),
            (
                XksError::AuthenticationFailed("x"),
                "AuthenticationFailedException",
                401,
            ),
            (XksError::AccessDenied("x"), "AccessDeniedException", 403),
            (XksError::KeyNotFound("x"), "KeyNotFoundException", 404),
            (
                XksError::InvalidUriPath("x"),
                "InvalidUriPathException",
                404,
            ),
            (XksError::Throttling("x"), "ThrottlingException", 429),
            (XksError::Internal("x"), "InternalException", 500),
            (
                XksError::UnsupportedOperation("x".into()),
                "UnsupportedOperationException",
                501,
            ),
            (
                XksError::DependencyTimeout("x"),
                "DependencyTimeoutException",
                503,
            ),
        ];
        for (e, name, status) in table {
            assert_eq!(e.name(), name);
            assert_eq!(e.status(), status, "{name}");
            let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(v["errorName"], name);
        }
    }

    #[test]
    fn messages_are_short_printable_and_escaped() {
        let long = "a\"b\\c\u{7f}\n".repeat(200);
        let e = XksError::Validation(long.into());
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        let m = v["errorMessage"].as_str().unwrap();
        assert!(m.len() < 512);
        assert!(m.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    }
}
