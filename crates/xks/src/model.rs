//! Step 3 of a request: the JSON request bodies (borrowing from the body bytes) and the response
//! writers (contract sections 3 and 4).
//!
//! Unknown fields are ignored (KMS adds fields over time: never `deny_unknown_fields`), any
//! `kmsOperation` value is accepted and `kmsRequestId` is never validated. Required fields are
//! `Option`s checked by hand so the `ValidationException` names the missing field. Strings are
//! `Cow` so JSON escapes still parse while the common case borrows.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};

use super::error::XksError;

/// Strict standard Base64: `+/`, `=` padding required, no whitespace, canonical trailing bits.
/// The request path uses [`B64_FAST`]; this engine is the reference it is tested against.
#[cfg(test)]
pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The same strict rules through `base64-simd` (SSSE3/AVX2 chosen at run time): Base64 was the
/// largest user-space item in the request profile after SHA-256. The crate was already built
/// for the bench client's signer, so it adds no build time.
const B64_FAST: base64_simd::Base64 = base64_simd::STANDARD;

/// The longest ARN the spec makes us accept (we accept it and longer: no check needed, but
/// ARNs longer than this are refused as invalid input).
pub(crate) const MAX_ARN: usize = 2048;

/// An optional JSON string that borrows from the body when it has no escapes. serde's own
/// `Deserialize` for `Cow<str>` always allocates: only a field of type exactly `Cow<str>` marked
/// `borrow` borrows, so the `Option` around it needs this (it saved seven allocations and copies
/// per encrypt).
fn opt_str<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// `requestMetadata`, common to all four APIs.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RequestMetadata<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub aws_principal_arn: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub aws_source_vpc: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub aws_source_vpce: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub kms_key_arn: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub kms_operation: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub kms_request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub kms_via_service: Option<Cow<'a, str>>,
}

impl RequestMetadata<'_> {
    /// The checks common to every API: `kmsRequestId` and `kmsOperation` present (not
    /// validated beyond that), ARNs within bounds.
    pub(crate) fn check_common(&self) -> Result<(), XksError> {
        if self.kms_request_id.is_none() {
            return Err(XksError::Validation(
                "requestMetadata.kmsRequestId is required".into(),
            ));
        }
        if self.kms_operation.is_none() {
            return Err(XksError::Validation(
                "requestMetadata.kmsOperation is required".into(),
            ));
        }
        for a in [&self.aws_principal_arn, &self.kms_key_arn]
            .into_iter()
            .flatten()
        {
            if a.len() > MAX_ARN {
                return Err(XksError::Validation(
                    "an ARN is longer than 2048 characters".into(),
                ));
            }
        }
        Ok(())
    }

    /// Key APIs also need `awsPrincipalArn`.
    pub(crate) fn principal(&self) -> Result<&str, XksError> {
        self.aws_principal_arn.as_deref().ok_or_else(|| {
            XksError::Validation("requestMetadata.awsPrincipalArn is required".into())
        })
    }
}

/// GetKeyMetadata and GetHealthStatus bodies.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetadataRequest<'a> {
    #[serde(borrow, default)]
    pub request_metadata: Option<RequestMetadata<'a>>,
}

/// Encrypt body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EncryptRequest<'a> {
    #[serde(borrow, default)]
    pub request_metadata: Option<RequestMetadata<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub plaintext: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub encryption_algorithm: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub additional_authenticated_data: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub ciphertext_data_integrity_value_algorithm: Option<Cow<'a, str>>,
}

/// Decrypt body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DecryptRequest<'a> {
    #[serde(borrow, default)]
    pub request_metadata: Option<RequestMetadata<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub ciphertext: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub ciphertext_metadata: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub encryption_algorithm: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub additional_authenticated_data: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub initialization_vector: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub authentication_tag: Option<Cow<'a, str>>,
}

/// Parse a body; any JSON error is a `ValidationException` that does not echo the body.
pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, XksError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = match e.classify() {
            serde_json::error::Category::Data => "request body has a field of the wrong type",
            serde_json::error::Category::Eof => "request body is truncated JSON",
            _ => "request body is not valid JSON",
        };
        XksError::Validation(msg.into())
    })
}

/// The metadata that every request must carry.
pub(crate) fn require_metadata<'r, 'a>(
    md: &'r Option<RequestMetadata<'a>>,
) -> Result<&'r RequestMetadata<'a>, XksError> {
    let md = md
        .as_ref()
        .ok_or_else(|| XksError::Validation("requestMetadata is required".into()))?;
    md.check_common()?;
    Ok(md)
}

/// `encryptionAlgorithm` must be `AES_GCM`.
pub(crate) fn require_aes_gcm(alg: &Option<Cow<'_, str>>) -> Result<(), XksError> {
    match alg.as_deref() {
        Some("AES_GCM") => Ok(()),
        None => Err(XksError::Validation(
            "encryptionAlgorithm is required".into(),
        )),
        Some(_) => Err(XksError::Validation(
            "encryptionAlgorithm must be AES_GCM".into(),
        )),
    }
}

/// Decode strict standard Base64 into `out` (appending). On invalid input `out` keeps its
/// length, and whatever a partial decode wrote past it is zeroed (the buffers are reused for
/// plaintext).
pub(crate) fn decode_into(
    field: &'static str,
    b64: &str,
    out: &mut Vec<u8>,
) -> Result<(), XksError> {
    B64_FAST.decode_append(b64.as_bytes(), out).map_err(|_| {
        out.spare_capacity_mut().iter_mut().for_each(|b| {
            b.write(0);
        });
        XksError::Validation(Cow::Owned(format!("{field} is not valid standard Base64")))
    })
}

/// The most a short field ([`decode_small`]) may decode to.
pub(crate) const SMALL: usize = 24;

/// Decode a short strict-Base64 field (IV, tag, `ciphertextMetadata`) into a stack buffer;
/// returns it and the decoded length. Callers bound the input's length first; a longer one is
/// refused like any invalid Base64.
pub(crate) fn decode_small(
    field: &'static str,
    b64: &str,
) -> Result<([u8; SMALL], usize), XksError> {
    let invalid =
        || XksError::Validation(Cow::Owned(format!("{field} is not valid standard Base64")));
    let mut out = [0u8; SMALL];
    let n = B64_FAST
        .decoded_length(b64.as_bytes())
        .map_err(|_| invalid())?;
    let dst = out.get_mut(..n).ok_or_else(invalid)?;
    let n = B64_FAST
        .decode(b64.as_bytes(), base64_simd::Out::from_slice(dst))
        .map_err(|_| invalid())?
        .len();
    Ok((out, n))
}

/// The exact length of a JSON object of `"name":"<base64>"` fields, given each name and the
/// length of the bytes it encodes: sizing the answer exactly lets it become the response body
/// without another allocation.
pub(crate) fn b64_object_len(fields: &[(&str, usize)]) -> usize {
    let inner: usize = fields
        .iter()
        .map(|(name, n)| name.len() + 5 + base64::encoded_len(*n, true).unwrap_or(0))
        .sum();
    2 + inner + fields.len().saturating_sub(1)
}

/// GetKeyMetadata response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetadataResponse {
    pub key_spec: &'static str,
    pub key_usage: &'static [&'static str],
    pub key_status: &'static str,
}

/// GetHealthStatus response.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HealthResponse {
    pub xks_proxy_fleet_size: u32,
    pub xks_proxy_vendor: &'static str,
    pub xks_proxy_model: String,
    pub ekm_vendor: &'static str,
    pub ekm_fleet_details: Vec<EkmDetail>,
}

/// One key-manager instance in a health answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EkmDetail {
    pub id: String,
    pub model: String,
    pub health_status: &'static str,
}

/// Append `"name":"<base64 of bytes>"` to a JSON object being written (no escaping is needed:
/// Base64 has none of `"` or `\`).
pub(crate) fn write_b64_field(out: &mut Vec<u8>, first: bool, name: &str, bytes: &[u8]) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    B64_FAST.encode_append(bytes, out);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn ignores_unknown_fields_and_accepts_any_operation() {
        let body = br#"{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::1:role\/x","kmsOperation":"SomethingNew","kmsRequestId":"not-a-uuid","futureField":{"a":[1,2]}},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","newTopLevel":true}"#;
        let r: EncryptRequest = parse(body).unwrap();
        let md = require_metadata(&r.request_metadata).unwrap();
        assert_eq!(md.principal().unwrap(), "arn:aws:iam::1:role/x");
        assert_eq!(md.kms_operation.as_deref(), Some("SomethingNew"));
    }

    /// The fast engine accepts exactly what the reference engine accepts, decodes to the same
    /// bytes and encodes the same text: random bytes of every length up to 100, and random
    /// strings over an alphabet with Base64's characters, padding, whitespace and others.
    #[test]
    fn fast_base64_agrees_with_the_reference() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in 0..100 {
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let want = B64.encode(&bytes);
            let mut out = Vec::new();
            write_b64_field(&mut out, true, "f", &bytes);
            assert_eq!(out, format!("\"f\":\"{want}\"").into_bytes());
            let mut back = vec![0xAA];
            decode_into("f", &want, &mut back).unwrap();
            assert_eq!(&back[1..], &bytes[..]);
        }
        let alphabet = b"AQgw+/=Az09 \n-_.";
        let mut accepted = 0;
        for i in 0..20_000 {
            let text: String = if i % 2 == 0 {
                // A valid encoding with one character replaced (sometimes by itself).
                let bytes: Vec<u8> = (0..next() % 20).map(|_| next() as u8).collect();
                let mut t = B64.encode(&bytes).into_bytes();
                if !t.is_empty() {
                    let at = (next() % t.len() as u64) as usize;
                    t[at] = alphabet[(next() % alphabet.len() as u64) as usize];
                }
                String::from_utf8(t).unwrap()
            } else {
                let len = (next() % 14) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                    .collect()
            };
            accepted += usize::from(B64.decode(&text).is_ok());
            let reference = B64.decode(&text);
            let mut fast = Vec::new();
            let got = decode_into("f", &text, &mut fast);
            match &reference {
                Ok(v) => assert_eq!(got.as_ref().map(|_| &fast), Ok(v), "case {i}: {text:?}"),
                Err(_) => assert!(got.is_err() && fast.is_empty(), "case {i}: {text:?}"),
            }
            let small = decode_small("f", &text);
            match &reference {
                Ok(v) if v.len() <= SMALL => {
                    let (buf, n) = small.expect("accepted by the reference");
                    assert_eq!(&buf[..n], &v[..], "case {i}: {text:?}");
                }
                _ => assert!(small.is_err(), "case {i}: {text:?}"),
            }
        }
        // Both branches were exercised.
        assert!((1000..19_000).contains(&accepted), "{accepted}");
    }

    #[test]
    fn strings_borrow_from_the_body_unless_escaped() {
        let body = br#"{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::1:role\/x","kmsOperation":"Encrypt","kmsRequestId":"r1"},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":null}"#;
        let r: EncryptRequest = parse(body).unwrap();
        let md = r.request_metadata.as_ref().unwrap();
        assert!(matches!(md.kms_request_id, Some(Cow::Borrowed("r1"))));
        assert!(matches!(md.kms_operation, Some(Cow::Borrowed("Encrypt"))));
        assert!(matches!(r.plaintext, Some(Cow::Borrowed("SGVsbG8="))));
        // An escape needs an owned copy, with the escape resolved.
        assert!(
            matches!(&md.aws_principal_arn, Some(Cow::Owned(s)) if s == "arn:aws:iam::1:role/x")
        );
        // null and absent are both None; a number is a type error.
        assert!(r.additional_authenticated_data.is_none() && md.kms_via_service.is_none());
        assert!(parse::<EncryptRequest>(br#"{"plaintext":5}"#).is_err());
    }

    #[test]
    fn missing_fields_are_validation_errors() {
        let r: EncryptRequest = parse(br#"{"plaintext":"AA=="}"#).unwrap();
        assert!(matches!(
            require_metadata(&r.request_metadata),
            Err(XksError::Validation(_))
        ));
        let r: MetadataRequest = parse(br#"{"requestMetadata":{}}"#).unwrap();
        assert!(require_metadata(&r.request_metadata).is_err());
        assert!(parse::<MetadataRequest>(b"{").is_err());
        assert!(parse::<MetadataRequest>(br#"{"requestMetadata":5}"#).is_err());
        assert!(require_aes_gcm(&Some("AES_CBC".into())).is_err());
    }

    #[test]
    fn base64_is_strict() {
        let mut v = Vec::new();
        assert!(decode_into("x", "SGVsbG8=", &mut v).is_ok());
        for bad in [
            "SGVsbG8",
            "SGVs bG8=",
            "SGVsbG8=\n",
            "-_-_",
            "SGVsbG9=",
            "SGVsbG8==",
        ] {
            assert!(decode_into("x", bad, &mut Vec::new()).is_err(), "{bad}");
        }
        let mut out = b"{".to_vec();
        write_b64_field(&mut out, true, "a", b"Hello");
        out.push(b'}');
        assert_eq!(out, br#"{"a":"SGVsbG8="}"#);
        assert_eq!(b64_object_len(&[("a", 5)]), out.len());
        let mut two = b"{".to_vec();
        write_b64_field(&mut two, true, "name", &[7; 33]);
        write_b64_field(&mut two, false, "iv", &[]);
        two.push(b'}');
        assert_eq!(b64_object_len(&[("name", 33), ("iv", 0)]), two.len());

        let (buf, n) = decode_small("x", "AAECAwQFBgcICQoL").unwrap();
        assert_eq!(&buf[..n], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert!(decode_small("x", "AAEC AwQ=").is_err());
        // Longer than the stack buffer: refused, not truncated.
        assert!(decode_small("x", &"A".repeat(40)).is_err());
    }
}
