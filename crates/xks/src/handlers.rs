//! The request path, top to bottom, in the order of contract section 7.4:
//! route (404/405) -> SigV4 (401) -> content type (400) here, then in [`crate::api`], one file
//! per operation: JSON (400) -> key lookup (404) -> key state (400) -> grants (403) -> sizes
//! (501) -> key usage and crypto (400/500).
//!
//! [`handle`] is synchronous and takes the whole body, so it can be benchmarked in-process. It
//! loads the key-store snapshot once, never locks, and fills one audit record that it hands to
//! the audit writer at the end.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::api;
use super::crypto;
use super::error::XksError;
use super::health::Health;
use super::router::{self, Api, Routed};
use super::sigv4;
use keyward_audit::{AuditLog, Field, XksRecord};
use keyward_keystore::SharedView;

/// Size limits above the spec minimums (above them: 501 `UnsupportedOperationException`), and
/// the listener's resource limits (over them: 429 `ThrottlingException`, which KMS retries).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Decoded plaintext (encrypt) and ciphertext (decrypt). Spec minimum 4300.
    pub max_data: usize,
    /// Decoded AAD. Spec minimum 8192; at most 65535 because of the u16 length prefix.
    pub max_aad: usize,
    /// Raw request body bytes read and kept before SigV4 is checked (the pre-authentication
    /// cap); larger bodies are refused with 501 without being buffered. Default:
    /// [`pre_auth_body_cap`] of the two limits above.
    pub max_body: usize,
    /// How long a connection may go without starting a request once it has served one (idle
    /// keep-alive, or the next request's headers arriving too slowly) before it is shut down;
    /// whole seconds, at least 1.
    pub conn_idle: std::time::Duration,
    /// How long a new connection may take to send its first request's headers (after the TLS
    /// handshake); also the idle limit for every connection while the listener is above 3/4 of
    /// `max_connections`. Capped at `conn_idle`.
    pub header_timeout: std::time::Duration,
    /// How long a request may take from its headers to its answer (the body arriving, mostly);
    /// past it the connection is dropped.
    pub request_timeout: std::time::Duration,
    /// Connections served at once. Default: [`keyward_secret::FdBudget`]'s XKS share.
    pub max_connections: usize,
    /// Connections past `max_connections` that are still accepted, only to be answered
    /// 429 `ThrottlingException` within a short deadline; beyond these they are closed at once.
    pub max_overflow: usize,
    /// Requests in flight (headers read, answer not yet produced) across all connections.
    pub max_in_flight: usize,
    /// Bytes of request bodies larger than [`SMALL_BODY`] that may be buffered at once, before
    /// authentication, across all connections. Small bodies (every request KMS sends at the
    /// spec minimums) never count against it.
    pub body_budget: usize,
}

/// Bodies up to this size are never throttled by [`Limits::body_budget`].
pub(crate) const SMALL_BODY: usize = 16 * 1024;

/// Room for everything in a request besides the two Base64 payloads: `requestMetadata` (ARNs
/// of up to 2048 characters each: `awsPrincipalArn`, `kmsKeyArn`; `kmsRequestId`,
/// `kmsOperation`, `kmsViaService`, `awsSourceVpc(e)`, and the fields KMS may add later per the
/// spec's Appendix B), the IV (24), tag (24), metadata (28) and algorithm fields, field names,
/// JSON punctuation and whitespace.
pub(crate) const METADATA_ALLOWANCE: usize = 16 * 1024;

/// The largest legal request body for these limits, rounded up to 16 KiB. The largest request
/// is an Encrypt (or Decrypt) with both payloads at their maximum: Base64 of `max_data` bytes
/// (plaintext or ciphertext) plus Base64 of `max_aad` bytes (AAD), plus
/// [`METADATA_ALLOWANCE`]. With the defaults (64 KiB data, 65535 AAD):
/// 87384 + 87380 + 16384 = 191148 bytes, rounded up to 192 KiB. (KMS sends Base64 unescaped; a client
/// that escaped every `/` as `\/` could exceed this and is refused with 501.)
pub(crate) fn pre_auth_body_cap(max_data: usize, max_aad: usize) -> usize {
    let b64 = |n: usize| n.div_ceil(3) * 4;
    let raw = b64(max_data) + b64(max_aad) + METADATA_ALLOWANCE;
    raw.div_ceil(16 * 1024) * 16 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        let fds = keyward_secret::FdBudget::current();
        let max_data = 64 * 1024;
        let max_aad = crypto::MAX_AAD;
        Self {
            max_data,
            max_aad,
            max_body: pre_auth_body_cap(max_data, max_aad),
            conn_idle: std::time::Duration::from_secs(60),
            header_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(10),
            max_connections: fds.xks,
            max_overflow: fds.xks_overflow,
            max_in_flight: 8192,
            body_budget: 64 * 1024 * 1024,
        }
    }
}

/// Everything a request needs, shared by all connections.
pub struct Ctx {
    pub view: SharedView,
    pub health: Arc<Health>,
    pub audit: AuditLog,
    pub limits: Limits,
}

/// One HTTP request as the handler sees it.
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// `:authority` under HTTP/2.
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

/// The answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    /// `application/json`, or `text/plain` for `/ping`.
    pub json: bool,
    /// Add `Allow: POST` (405 answers).
    pub allow_post: bool,
}

impl Reply {
    pub(crate) fn ok(body: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            json: true,
            allow_post: false,
        }
    }
    /// The answer for an error.
    pub(crate) fn error(e: &XksError) -> Self {
        Self {
            status: e.status(),
            body: e.to_json().into(),
            json: true,
            allow_post: matches!(e, XksError::MethodNotAllowed(_)),
        }
    }
}

/// Handle one request and write its audit record.
pub fn handle(ctx: &Ctx, req: &Request<'_>, started: Instant) -> Reply {
    let routed = router::route(req.path, req.query);
    if let Routed::Ping = routed {
        return if req.method == Method::GET || req.method == Method::HEAD {
            Reply {
                status: 200,
                body: Bytes::from_static(b"up\n"),
                json: false,
                allow_post: false,
            }
        } else {
            Reply::error(&XksError::MethodNotAllowed("use GET for /ping"))
        };
    }
    let mut rec = XksRecord::at(started);
    let reply = match dispatch(ctx, req, routed, &mut rec) {
        Ok(r) => {
            rec.finish(r.status, None, started.elapsed());
            r
        }
        Err(e) => {
            rec.finish(e.status(), Some(e.name()), started.elapsed());
            Reply::error(&e)
        }
    };
    ctx.audit.xks(rec);
    reply
}

/// The answer for a body larger than [`Limits::max_body`] (no authentication was possible).
pub(crate) fn oversized(ctx: &Ctx, req_path: &str, started: Instant) -> Reply {
    let mut rec = XksRecord::at(started);
    if let Routed::Xks(r) = router::route(req_path, None) {
        rec.set_operation(r.api.as_str());
        rec.set(Field::UriPrefix, r.prefix);
        if let Some(id) = r.key_id {
            rec.set(Field::KeyId, id);
        }
    }
    let e = XksError::UnsupportedOperation(Cow::Owned(format!(
        "request body larger than {} bytes",
        ctx.limits.max_body
    )));
    rec.finish(e.status(), Some(e.name()), started.elapsed());
    ctx.audit.xks(rec);
    Reply::error(&e)
}

fn dispatch(
    ctx: &Ctx,
    req: &Request<'_>,
    routed: Routed<'_>,
    rec: &mut XksRecord,
) -> Result<Reply, XksError> {
    // 1. Route: 404 for unknown paths and prefixes, 405 for a non-POST, before authentication.
    let route = match routed {
        Routed::Xks(r) => r,
        Routed::NotFound(m) => return Err(XksError::InvalidUriPath(m)),
        Routed::Ping => return Err(XksError::InvalidUriPath("not an XKS API path")),
    };
    rec.set_operation(route.api.as_str());
    rec.set(Field::UriPrefix, route.prefix);
    if let Some(id) = route.key_id {
        rec.set(Field::KeyId, id);
    }
    let snap = ctx.view.load();
    let store = snap
        .store_by_prefix(route.prefix)
        .ok_or(XksError::InvalidUriPath("unknown URI path prefix"))?;
    if req.method != Method::POST {
        return Err(XksError::MethodNotAllowed("XKS APIs accept POST only"));
    }

    // 2. SigV4.
    let now = super::clock::unix_secs();
    let signed = sigv4::SignedRequest {
        method: req.method.as_str(),
        path: req.path,
        canonical_query: "",
        headers: req.headers,
        authority: req.authority,
        body: req.body,
    };
    let policy = sigv4::Policy {
        region: &store.region,
        services: &store.services,
        now_unix: now,
        xks_key_id_format: true,
    };
    let cred = sigv4::verify(
        &signed,
        |ak| sigv4::find_credential(&store.credentials, ak),
        &policy,
    )
    .map_err(|e| XksError::AuthenticationFailed(e.0))?;
    rec.set(Field::AccessKeyId, &cred.access_key_id);

    // 3. Content type; then each API parses its JSON body and goes on in its own file.
    check_content_type(req.headers)?;
    let key_id = route.key_id.unwrap_or_default();
    // 4. An operation is answered only while its audit line can reach the disk: while the
    // audit log's writes fail its lines wait in memory and the operations are refused (the
    // health check still answers, DEGRADED). The refusal's own line waits with them.
    if route.api != Api::Health && ctx.audit.failing() {
        return Err(XksError::Internal(
            "the audit log cannot be written; the operation was not performed",
        ));
    }
    match route.api {
        Api::Health => api::health::handle(ctx, req.body, rec),
        Api::Metadata => api::metadata::handle(store, key_id, req.body, rec),
        Api::Encrypt => api::encrypt::handle(ctx, store, key_id, req.body, rec),
        Api::Decrypt => api::decrypt::handle(ctx, store, key_id, req.body, rec),
    }
}

/// `Content-Type` must be `application/json` (parameters such as `charset` allowed). An absent
/// header is accepted (the body must still be JSON); any other type is refused, so a client
/// that sends `application/x-www-form-urlencoded` (curl without `-H`) learns its mistake.
fn check_content_type(h: &HeaderMap) -> Result<(), XksError> {
    let mut it = h.get_all(http::header::CONTENT_TYPE).iter();
    let Some(v) = it.next() else { return Ok(()) };
    let ok = it.next().is_none()
        && v.to_str().is_ok_and(|s| {
            s.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if ok {
        Ok(())
    } else {
        Err(XksError::Validation(
            "Content-Type must be application/json".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    //! Malformed input never panics and always gets a JSON XKS answer. Bodies are signed here
    //! with the verifier's own key derivation so that they reach the JSON and crypto steps (the
    //! signer's correctness is tested against independent signers elsewhere).

    use super::*;
    use arc_swap::ArcSwap;
    use hmac::{Hmac, Mac};
    use keyward_audit::AuditSink;
    use keyward_keystore::{Credential, Grant, KeyStatus, KeyUsage, LiveKey, Snapshot, StoreView};
    use keyward_secret::Key32;
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5MTIz";

    fn ctx() -> Ctx {
        let key = LiveKey {
            id: "k".into(),
            version: 1,
            usage: KeyUsage::EncryptDecrypt,
            status: KeyStatus::Enabled,
            grants: vec![Grant::open_to_all()],
            kek: Key32::from_bytes(&[9; 32]).unwrap(),
            version_created: 0,
            older: Vec::new(),
            rotate_every_secs: None,
            destroy_at: None,
            status_before_destroy: None,
        };
        let store = StoreView {
            name: "s".into(),
            uri_prefix: "/p".into(),
            region: "us-east-1".into(),
            services: vec!["kms-xks-proxy".into()],
            credentials: vec![Arc::new(Credential {
                access_key_id: AK.into(),
                secret_access_key: SK.to_owned().into(),
            })],
            keys: HashMap::from([("k".to_string(), Arc::new(key))]),
            destroyed: HashMap::new(),
        };
        let snap = Snapshot {
            stores: HashMap::from([("s".to_string(), Arc::new(store))]),
        };
        Ctx {
            view: Arc::new(ArcSwap::from_pointee(snap)),
            health: Health::new(Arc::new(super::super::health::InMemoryStore), "t".into()).unwrap(),
            audit: AuditLog::start(AuditSink::File(
                std::env::temp_dir().join(format!("kw-audit-{}.log", std::process::id())),
            ))
            .unwrap(),
            limits: Limits::default(),
        }
    }

    fn signed_headers(path: &str, body: &[u8]) -> HeaderMap {
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let amz = time::OffsetDateTime::now_utc().format(&fmt).unwrap();
        let creq = format!(
            "POST\n{path}\n\ncontent-type:application/json\nhost:h\nx-amz-date:{amz}\n\ncontent-type;host;x-amz-date\n{}",
            hex::encode(Sha256::digest(body))
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz}\n{}/us-east-1/kms-xks-proxy/aws4_request\n{}",
            &amz[..8],
            hex::encode(Sha256::digest(creq.as_bytes()))
        );
        let k = sigv4::derive_signing_key(SK, &amz[..8], "us-east-1", "kms-xks-proxy");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&k[..]).unwrap();
        mac.update(sts.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert("host", "h".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-amz-date", amz.parse().unwrap());
        h.insert(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential={AK}/{}/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={sig}", &amz[..8])
                .parse()
                .unwrap(),
        );
        h
    }

    fn call(ctx: &Ctx, path: &str, body: &[u8]) -> Reply {
        let headers = signed_headers(path, body);
        let req = Request {
            method: &Method::POST,
            path,
            query: None,
            headers: &headers,
            authority: None,
            body,
        };
        handle(ctx, &req, Instant::now())
    }

    #[test]
    fn a_valid_encrypt_then_decrypt_round_trips() {
        let ctx = ctx();
        let body = br#"{"requestMetadata":{"awsPrincipalArn":"a","kmsOperation":"Encrypt","kmsRequestId":"1"},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM"}"#;
        let r = call(&ctx, "/p/kms/xks/v1/keys/k/encrypt", body);
        assert_eq!(r.status, 200, "{:?}", r.body);
        let mut e: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        e["requestMetadata"] =
            serde_json::json!({"awsPrincipalArn":"a","kmsOperation":"Decrypt","kmsRequestId":"1"});
        e["encryptionAlgorithm"] = "AES_GCM".into();
        let r = call(
            &ctx,
            "/p/kms/xks/v1/keys/k/decrypt",
            e.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200);
        let d: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(d["plaintext"], "SGVsbG8=");
    }

    /// A sink that keeps the lines in memory, or fails with ENOSPC while `full` is set.
    struct FlakyDisk {
        lines: Arc<std::sync::Mutex<Vec<u8>>>,
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    impl std::io::Write for FlakyDisk {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.lines.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// While the audit log cannot be written, operations are refused (500, nothing done) and
    /// the health check says DEGRADED; once it can, they work again, and every request's line,
    /// the refused ones' too, is in the log.
    #[test]
    fn operations_are_refused_while_the_audit_log_cannot_be_written() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let full = Arc::new(AtomicBool::new(false));
        let disk = FlakyDisk {
            lines: lines.clone(),
            full: full.clone(),
        };
        let mut ctx = ctx();
        ctx.audit = AuditLog::start_on(Box::new(disk), None).unwrap();
        let enc = br#"{"requestMetadata":{"awsPrincipalArn":"a","kmsOperation":"Encrypt","kmsRequestId":"1"},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM"}"#;
        let health = br#"{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"2"}}"#;
        let health_status = |ctx: &Ctx| {
            let r = call(ctx, "/p/kms/xks/v1/health", health);
            assert_eq!(r.status, 200, "{:?}", r.body);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["ekmFleetDetails"][0]["healthStatus"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(call(&ctx, "/p/kms/xks/v1/keys/k/encrypt", enc).status, 200);
        assert_eq!(health_status(&ctx), "ACTIVE");

        full.store(true, Ordering::SeqCst);
        assert!(ctx.audit.flush().is_err());
        assert!(ctx.audit.failing());
        let r = call(&ctx, "/p/kms/xks/v1/keys/k/encrypt", enc);
        assert_eq!(r.status, 500);
        let e: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(e["errorName"], "InternalException");
        assert_eq!(health_status(&ctx), "DEGRADED");

        full.store(false, Ordering::SeqCst);
        let t = Instant::now();
        while ctx.audit.failing() {
            assert!(t.elapsed() < std::time::Duration::from_secs(5), "no retry");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(call(&ctx, "/p/kms/xks/v1/keys/k/encrypt", enc).status, 200);
        assert_eq!(health_status(&ctx), "ACTIVE");
        ctx.audit.shutdown().unwrap();
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        let statuses: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "xks")
            .map(|v| v["httpStatus"].as_u64().unwrap())
            .collect();
        assert_eq!(statuses, [200, 200, 500, 200, 200, 200]);
    }

    /// The pre-authentication cap fits the largest legal request at our limits (both payloads
    /// at their maximum, every metadata field present, ARNs at the spec's 2048 characters),
    /// and is far below the 2 MiB it replaced.
    #[test]
    fn the_pre_auth_cap_fits_the_largest_legal_request() {
        use base64::Engine as _;
        let l = Limits::default();
        assert_eq!(l.max_body, 192 * 1024);
        assert_eq!(pre_auth_body_cap(l.max_data, l.max_aad), l.max_body);
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![0xfbu8; n]);
        let arn = format!("arn:aws:iam::111122223333:role/{}", "r".repeat(2048 - 31));
        let md = serde_json::json!({
            "awsPrincipalArn": arn, "kmsKeyArn": arn, "kmsOperation": "GenerateDataKeyWithoutPlaintext",
            "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae", "kmsViaService": "dynamodb",
            "awsSourceVpc": "vpc-0123456789abcdef0", "awsSourceVpce": "vpce-0123456789abcdef0",
        });
        let encrypt = serde_json::json!({
            "requestMetadata": md, "plaintext": b64(l.max_data), "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": b64(l.max_aad),
            "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
        });
        let decrypt = serde_json::json!({
            "requestMetadata": md, "ciphertext": b64(l.max_data), "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": b64(l.max_aad), "ciphertextMetadata": b64(20),
            "initializationVector": b64(12), "authenticationTag": b64(16),
        });
        for body in [encrypt, decrypt] {
            let n = serde_json::to_vec_pretty(&body).unwrap().len();
            assert!(n <= l.max_body, "{n} > {}", l.max_body);
            // Room left for metadata fields KMS may add (spec Appendix B).
            assert!(l.max_body - n > 4096, "{n}");
        }
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as V;
        let leaf = prop_oneof![
            Just(V::Null),
            any::<bool>().prop_map(V::Bool),
            any::<i64>().prop_map(V::from),
            "[A-Za-z0-9+/=_ -]{0,40}".prop_map(V::String),
            Just(V::String("AES_GCM".into())),
            Just(V::String("SHA_256".into())),
            Just(V::String("AAAAAAAAAAAAAAAA".into())),
            Just(V::String("AAAAAAAAAAAAAAAAAAAAAA==".into())),
            Just(V::String("AQAAAAE=".into())),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::vec((field(), inner), 0..8)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("requestMetadata"),
            Just("awsPrincipalArn"),
            Just("kmsOperation"),
            Just("kmsRequestId"),
            Just("plaintext"),
            Just("ciphertext"),
            Just("encryptionAlgorithm"),
            Just("additionalAuthenticatedData"),
            Just("ciphertextMetadata"),
            Just("initializationVector"),
            Just("authenticationTag"),
            Just("ciphertextDataIntegrityValueAlgorithm"),
            Just("kmsViaService"),
            Just("other"),
        ]
        .prop_map(String::from)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn malformed_bodies_get_json_errors(v in value(), op in 0usize..4, raw in prop::collection::vec(any::<u8>(), 0..64)) {
            static CTX: std::sync::OnceLock<Ctx> = std::sync::OnceLock::new();
            let ctx = CTX.get_or_init(ctx);
            let path = ["/p/kms/xks/v1/keys/k/encrypt", "/p/kms/xks/v1/keys/k/decrypt", "/p/kms/xks/v1/keys/k/metadata", "/p/kms/xks/v1/health"][op];
            for body in [v.to_string().into_bytes(), raw] {
                let r = call(ctx, path, &body);
                let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                if r.status != 200 {
                    let name = j["errorName"].as_str().unwrap();
                    prop_assert!(matches!(r.status, 400 | 403 | 404 | 501), "{} {}", r.status, name);
                    prop_assert_ne!(r.status, 401, "signature must verify");
                }
            }
        }
    }
}
