//! What the XKS and key-store targets run against: an in-memory key view with one store
//! (`/keyward`, us-east-1), one SigV4 credential with a known secret and one enabled key
//! (`key-1`) granted to everyone; an audit log into a temporary file; and the SigV4 re-signing
//! of an input with that secret.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use keyward_keystore::{
    Credential, Grant, GrantOps, KeyStatus, KeyUsage, LiveKey, Snapshot, StoreView,
};
use keyward_secret::{Key32, MemoryPolicy};
use keyward_xks::{Ctx, Limits};

pub(crate) const AK: &str = "AKIAKEYWARDFUZZTESTAA";
pub(crate) const SK: &str = "FuzzSecretKeyFuzzSecretKeyFuzzSecretKey0";
pub(crate) const REGION: &str = "us-east-1";

/// Locked memory is not needed to find panics; allow it unlocked.
pub(crate) fn init_memory() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = keyward_secret::init(MemoryPolicy {
            allow_unlocked: true,
        });
    });
}

struct Fixture {
    ctx: Ctx,
    _dir: tempfile::TempDir,
}

/// The handler context, made once per process.
pub(crate) fn ctx() -> &'static Ctx {
    static F: OnceLock<Fixture> = OnceLock::new();
    &F.get_or_init(|| {
        init_memory();
        // Without these the target cannot run at all: failing loudly here is right.
        #[allow(clippy::expect_used)]
        let dir = tempfile::tempdir().expect("a temporary directory");
        #[allow(clippy::expect_used)]
        let kek = Key32::from_bytes(&[7u8; 32]).expect("a key");
        let all = GrantOps {
            encrypt: true,
            decrypt: true,
            metadata: true,
        };
        let key = LiveKey {
            id: "key-1".into(),
            version: 1,
            usage: KeyUsage::EncryptDecrypt,
            status: KeyStatus::Enabled,
            grants: vec![Grant {
                principal: "*".into(),
                ops: all,
                via_service: None,
                source_vpc: None,
                source_vpce: None,
            }],
            kek,
            version_created: 0,
            older: Vec::new(),
            rotate_every_secs: None,
            destroy_at: None,
            status_before_destroy: None,
        };
        let store = StoreView {
            name: "fuzz".into(),
            uri_prefix: "/keyward".into(),
            region: REGION.into(),
            services: vec!["kms-xks-proxy".into()],
            credentials: vec![Arc::new(Credential {
                access_key_id: AK.into(),
                secret_access_key: SK.to_string().into(),
            })],
            keys: HashMap::from([("key-1".to_string(), Arc::new(key))]),
            destroyed: HashMap::new(),
        };
        let view = Arc::new(ArcSwap::from_pointee(Snapshot {
            stores: HashMap::from([("fuzz".to_string(), Arc::new(store))]),
        }));
        #[allow(clippy::expect_used)]
        let audit = keyward_audit::AuditLog::start(keyward_audit::AuditSink::File(
            dir.path().join("audit.log"),
        ))
        .expect("the audit log");
        #[allow(clippy::expect_used)]
        let health = keyward_xks::Health::new(Arc::new(keyward_xks::InMemoryStore), "fuzz".into())
            .expect("health");
        Fixture {
            ctx: Ctx {
                view,
                health,
                audit,
                limits: Limits::default(),
            },
            _dir: dir,
        }
    })
    .ctx
}

/// `headers` with a fresh SigV4 signature (service `kms-xks-proxy`, the fixture credential,
/// now) over `method`, `target`, the `host` and `content-type` headers and `body`; `None` when
/// the input cannot be signed at all (no host, a target the signer refuses).
pub(crate) fn resign(
    method: &http::Method,
    target: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Option<http::HeaderMap> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    // The signer (aws-sigv4, test tooling here, never in the appliance) panics on a request
    // target that is not origin-form ("adding query should not invalidate URI"; the first
    // fuzz run found it with `POST a HTTP/1.1`): only such targets are re-signed.
    if !target.starts_with('/') || target.parse::<http::Uri>().is_err() {
        return None;
    }
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    let ctype = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let identity: aws_smithy_runtime_api::client::identity::Identity =
        aws_credential_types::Credentials::new(AK, SK, None, None, "keyward-fuzz").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("kms-xks-proxy")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .ok()?
        .into();
    let list = [("host", host), ("content-type", ctype)];
    let signable = SignableRequest::new(
        method.as_str(),
        target,
        list.into_iter(),
        SignableBody::Bytes(body),
    )
    .ok()?;
    let (instructions, _) = sign(signable, &params).ok()?.into_parts();
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(target)
        .body(())
        .ok()?;
    *req.headers_mut() = headers.clone();
    req.headers_mut().remove(http::header::AUTHORIZATION);
    req.headers_mut().remove("x-amz-date");
    instructions.apply_to_request_http1x(&mut req);
    Some(req.headers().clone())
}

/// The DER SubjectPublicKeyInfo `tls_chain` checks chains against: a fixed P-256 key.
pub(crate) fn tls_spki() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| {
        use p256::pkcs8::EncodePublicKey;
        p256::SecretKey::from_bytes(&[0x11u8; 32].into())
            .ok()
            .and_then(|k| k.public_key().to_public_key_der().ok())
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default()
    })
}
