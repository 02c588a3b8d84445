//! Integration tests for the XKS API: the server runs in-process on 127.0.0.1:0 with TLS from
//! rcgen-made certificates and a key-store view built here. Clients we did not write drive it:
//! `curl --aws-sigv4`, botocore's `SigV4Auth` (tests/python/xks_sign.py) and the `aws-sigv4`
//! crate (its headers handed to curl). Run with `cargo test --test xks_api`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use keyward_audit::{AuditLog, AuditSink};
use keyward_keystore::{
    Credential, Grant, GrantOps, KeyStatus, KeyUsage, LiveKey, SharedView, Snapshot, StoreView,
};
use keyward_secret::Key32;
use keyward_xks::{ClientAuth, InMemoryStore, Limits, TlsSettings, XksServer, XksSettings};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use xks_common::botocore_python;

use crate::xks_common;

const AK1: &str = "AKIAIOSFODNN7EXAMPLE";
const SK1: &str = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5MTIz";
const AK2: &str = "AKIA2ROTATEDKEYZZZZZ";
const SK2: &str = "c2Vjb25kLWNyZWRlbnRpYWwtZm9yLXJvdGF0aW9uLXRlc3Q=";
const PREFIX: &str = "/kw";
const REGION: &str = "us-east-1";
const KMS_CLIENT: &str = "cks.kms.us-east-1.amazonaws.com";

// ---------------------------------------------------------------- the key-store view

fn all_ops() -> GrantOps {
    GrantOps {
        encrypt: true,
        decrypt: true,
        metadata: true,
    }
}

fn grant(p: &str, ops: GrantOps) -> Grant {
    Grant {
        principal: p.into(),
        ops,
        via_service: None,
        source_vpc: None,
        source_vpce: None,
    }
}

fn key(
    id: &str,
    bytes: u8,
    usage: KeyUsage,
    status: KeyStatus,
    grants: Vec<Grant>,
) -> (String, Arc<LiveKey>) {
    let k = LiveKey {
        id: id.into(),
        version: 1,
        usage,
        status,
        grants,
        kek: Key32::from_bytes(&[bytes; 32]).unwrap(),
        version_created: 0,
        older: Vec::new(),
        rotate_every_secs: None,
        destroy_at: None,
        status_before_destroy: None,
    };
    (id.into(), Arc::new(k))
}

fn snapshot(creds: &[(&str, &str)]) -> Snapshot {
    use KeyStatus::*;
    use KeyUsage::*;
    let star = || vec![grant("*", all_ops())];
    let enc_only = GrantOps {
        encrypt: true,
        decrypt: false,
        metadata: false,
    };
    let md_only = GrantOps {
        encrypt: false,
        decrypt: false,
        metadata: true,
    };
    let mut via = grant("dynamodb.amazonaws.com", md_only);
    via.via_service = Some("dynamodb".into());
    let mut vpc = grant("arn:aws:iam::111122223333:role/vpc-only", all_ops());
    vpc.source_vpc = Some("vpc-0aaa".into());
    let keys: HashMap<_, _> = [
        key("k-both", 1, EncryptDecrypt, Enabled, star()),
        key("k-enc", 2, EncryptOnly, Enabled, star()),
        key("k-dec", 2, DecryptOnly, Enabled, star()),
        key("k-none", 3, None, Enabled, star()),
        key("k-off", 1, EncryptDecrypt, Disabled, star()),
        key("k-nogrant", 1, EncryptDecrypt, Enabled, vec![]),
        key(
            "k-grants",
            4,
            EncryptDecrypt,
            Enabled,
            vec![
                grant("arn:aws:iam::111122223333:role/exact", all_ops()),
                grant("arn:aws:iam::111122223333:role/app-*", enc_only),
                via,
                vpc,
            ],
        ),
    ]
    .into_iter()
    .collect();
    let store = StoreView {
        name: "default".into(),
        uri_prefix: PREFIX.into(),
        region: REGION.into(),
        services: vec!["kms-xks-proxy".into(), "xks-kms".into()],
        credentials: creds
            .iter()
            .map(|(a, s)| {
                Arc::new(Credential {
                    access_key_id: (*a).into(),
                    secret_access_key: (*s).to_owned().into(),
                })
            })
            .collect(),
        keys,
        destroyed: HashMap::from([("k-gone".to_string(), 1_700_000_000)]),
    };
    Snapshot {
        stores: [("default".to_string(), Arc::new(store))]
            .into_iter()
            .collect(),
    }
}

// ---------------------------------------------------------------- certificates

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A leaf signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, sans: &[&str], expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let c = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (c.pem(), key.serialize_pem())
}

// ---------------------------------------------------------------- the server fixture

struct Fixture {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    view: SharedView,
    audit: AuditLog,
    audit_path: PathBuf,
    dir: tempfile::TempDir,
    ca_path: PathBuf,
    cert: Option<keyward_xks::CertHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    counter: AtomicUsize,
}

impl Fixture {
    fn start(client_auth: Option<ClientAuth>) -> Self {
        Self::start_with(client_auth, Limits::default())
    }

    fn start_with(client_auth: Option<ClientAuth>, limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = ca("keyward test server CA");
        let (chain, key) = leaf(&server_ca, "localhost", &["localhost", "127.0.0.1"], false);
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, server_ca.cert.pem()).unwrap();
        let audit_path = dir.path().join("audit.log");
        let audit = AuditLog::start(AuditSink::File(audit_path.clone())).unwrap();
        let view: SharedView = Arc::new(ArcSwap::from_pointee(snapshot(&[(AK1, SK1)])));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let settings = XksSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some(TlsSettings {
                cert_chain_pem: chain.into_bytes(),
                key_pem: zeroize::Zeroizing::new(key.into_bytes()),
                client_auth,
            }),
            insecure_http: false,
            limits,
            instance_id: "test-1".into(),
        };
        let server = rt.block_on(XksServer::bind(settings)).unwrap();
        let addr = server.local_addr().unwrap();
        let cert = server.cert_handle();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (v, a) = (view.clone(), audit.clone());
        rt.spawn(async move {
            server
                .run(v, a, Arc::new(InMemoryStore), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Fixture {
            rt,
            addr,
            view,
            audit,
            audit_path,
            dir,
            ca_path,
            cert,
            stop: Some(tx),
            counter: AtomicUsize::new(0),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{}", self.addr.port(), path)
    }

    fn body_file(&self, body: &[u8]) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let p = self.dir.path().join(format!("body-{n}"));
        std::fs::write(&p, body).unwrap();
        p
    }

    /// Run curl against `path` with `args`; returns (status, body). Status 0 when curl failed.
    fn curl(&self, path: &str, body: Option<&[u8]>, args: &[&str]) -> (u16, String) {
        let mut c = xks_common::tools::curl();
        c.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&self.ca_path);
        c.args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            c.arg("--data-binary")
                .arg(format!("@{}", self.body_file(b).display()));
        }
        c.args(args).arg(self.url(path));
        let out = c.output().expect("curl must be installed");
        if std::env::var("KW_CURL_DEBUG").is_ok() {
            eprintln!("curl stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// POST `body` signed by curl with `ak`/`sk`.
    fn signed_as(&self, path: &str, body: &Value, ak: &str, sk: &str) -> (u16, Value) {
        let user = format!("{ak}:{sk}");
        let (s, b) = self.curl(
            path,
            Some(body.to_string().as_bytes()),
            &[
                "--aws-sigv4",
                "aws:amz:us-east-1:kms-xks-proxy",
                "--user",
                &user,
                "-H",
                "Content-Type: application/json",
            ],
        );
        (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    fn signed(&self, path: &str, body: &Value) -> (u16, Value) {
        self.signed_as(path, body, AK1, SK1)
    }

    fn api(&self, key: &str, op: &str) -> String {
        format!("{PREFIX}/kms/xks/v1/keys/{key}/{op}")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.audit.shutdown();
        let _ = &self.rt;
    }
}

fn md(principal: &str) -> Value {
    json!({"awsPrincipalArn": principal, "kmsOperation": "Encrypt", "kmsRequestId": "req-1"})
}

fn enc(principal: &str, pt: &[u8], aad: Option<&[u8]>, cdiv: bool) -> Value {
    let mut v = json!({"requestMetadata": md(principal), "plaintext": B64.encode(pt), "encryptionAlgorithm": "AES_GCM"});
    if let Some(a) = aad {
        v["additionalAuthenticatedData"] = B64.encode(a).into();
    }
    if cdiv {
        v["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256".into();
    }
    v
}

/// A decrypt body from an encrypt answer.
fn dec(principal: &str, e: &Value, aad: Option<&[u8]>) -> Value {
    let mut v = json!({
        "requestMetadata": md(principal),
        "ciphertext": e["ciphertext"], "ciphertextMetadata": e["ciphertextMetadata"],
        "initializationVector": e["initializationVector"], "authenticationTag": e["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
    });
    if let Some(a) = aad {
        v["additionalAuthenticatedData"] = B64.encode(a).into();
    }
    v
}

fn b64d(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap()).unwrap()
}

fn assert_err(got: (u16, Value), status: u16, name: &str, what: &str) {
    assert_eq!(got.0, status, "{what}: {:?}", got.1);
    assert_eq!(got.1["errorName"], name, "{what}");
    let m = got.1["errorMessage"].as_str().unwrap_or("");
    assert!(
        m.len() < 512 && m.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "{what}: message"
    );
}

// ---------------------------------------------------------------- tests

#[test]
fn curl_drives_every_endpoint() {
    let fx = Fixture::start(None);
    let (s, h) = fx.signed(
        &format!("{PREFIX}/kms/xks/v1/health"),
        &json!({"requestMetadata": {"kmsRequestId": "h-1", "kmsOperation": "KmsHealthCheck"}}),
    );
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");
    assert!(h["xksProxyFleetSize"].as_u64().unwrap() >= 1);
    assert!(h["xksProxyModel"]
        .as_str()
        .unwrap()
        .contains(env!("CARGO_PKG_VERSION")));

    let (s, m) = fx.signed(
        &fx.api("k-both", "metadata"),
        &json!({"requestMetadata": md("arn:aws:iam::1:user/a")}),
    );
    assert_eq!(s, 200);
    assert_eq!(
        m,
        json!({"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"})
    );

    // Unknown kmsOperation, non-UUID request id and unknown fields are all accepted.
    let pt = b"Hello World! this is a KMS blob";
    let aad = b"project=nile,department=marketing";
    let mut body = enc("arn:aws:iam::1:user/a", pt, Some(aad), true);
    body["requestMetadata"]["kmsOperation"] = "SomeFutureOperation".into();
    body["requestMetadata"]["kmsRequestId"] = "not a uuid".into();
    body["requestMetadata"]["kmsRecipientAttestationImageSha384"] = "abc".into();
    body["someNewTopLevelField"] = json!({"x": 1});
    let (s, e) = fx.signed(&fx.api("k-both", "encrypt"), &body);
    assert_eq!(s, 200, "{e}");
    let (ct, iv, tag, ctm) = (
        b64d(&e["ciphertext"]),
        b64d(&e["initializationVector"]),
        b64d(&e["authenticationTag"]),
        b64d(&e["ciphertextMetadata"]),
    );
    assert_eq!(ct.len(), pt.len());
    assert_ne!(&ct[..], &pt[..]);
    assert_eq!(iv.len(), 12);
    assert_eq!(tag.len(), 16);
    assert!(ctm.len() <= 20 && ctm[0] == 1);
    let want: Vec<u8> = Sha256::digest([&aad[..], &ctm, &iv, &ct, &tag].concat()).to_vec();
    assert_eq!(b64d(&e["ciphertextDataIntegrityValue"]), want);
    // Without the algorithm there is no CDIV.
    let (_, e2) = fx.signed(&fx.api("k-both", "encrypt"), &enc("p", pt, None, false));
    assert!(e2.get("ciphertextDataIntegrityValue").is_none());

    let (s, d) = fx.signed(
        &fx.api("k-both", "decrypt"),
        &dec("arn:aws:iam::1:user/a", &e, Some(aad)),
    );
    assert_eq!(s, 200, "{d}");
    assert_eq!(b64d(&d["plaintext"]), pt);
    let (s, d) = fx.signed(&fx.api("k-both", "decrypt"), &dec("p", &e2, None));
    assert_eq!((s, b64d(&d["plaintext"])), (200, pt.to_vec()));

    // Liveness: unauthenticated, says only "up".
    let (s, b) = fx.curl("/ping", None, &[]);
    assert_eq!((s, b.trim()), (200, "up"));
}

#[test]
fn every_reachable_error_name_has_its_status() {
    let fx = Fixture::start(None);
    let p = "arn:aws:iam::1:user/a";
    let good = enc(p, b"data", None, false);
    let health = format!("{PREFIX}/kms/xks/v1/health");

    // 404 InvalidUriPathException, even when the signature is valid for the wrong path.
    assert_err(
        fx.signed("/other/kms/xks/v1/health", &good),
        404,
        "InvalidUriPathException",
        "unknown prefix",
    );
    assert_err(
        fx.signed(&fx.api("k-both", "sign"), &good),
        404,
        "InvalidUriPathException",
        "unknown op",
    );
    assert_err(
        fx.signed(&format!("{PREFIX}/kms/xks/v1/keys/../encrypt"), &good),
        404,
        "InvalidUriPathException",
        "dot id",
    );
    // 405 before authentication.
    for (method, path) in [
        ("GET", health.clone()),
        ("PUT", fx.api("k-both", "encrypt")),
        ("GET", fx.api("k-both", "metadata")),
    ] {
        let (s, b) = fx.curl(&path, None, &["-X", method, "-D", "-"]);
        assert_eq!(s, 405, "{method} {path}: {b}");
        assert!(b.to_ascii_lowercase().contains("allow: post"), "{b}");
    }
    // 401 AuthenticationFailedException: unsigned, wrong secret, unknown key id.
    let (s, b) = fx.curl(
        &health,
        Some(b"{}"),
        &["-H", "Content-Type: application/json"],
    );
    assert_eq!(s, 401, "{b}");
    assert_err(
        fx.signed_as(&health, &good, AK1, SK2),
        401,
        "AuthenticationFailedException",
        "wrong secret",
    );
    assert_err(
        fx.signed_as(&health, &good, AK2, SK2),
        401,
        "AuthenticationFailedException",
        "unknown key id",
    );
    // 400 ValidationException.
    assert_err(
        fx.signed(
            &fx.api("k-both", "encrypt"),
            &json!({"plaintext": "AAAA", "encryptionAlgorithm": "AES_GCM"}),
        ),
        400,
        "ValidationException",
        "no metadata",
    );
    assert_err(
        fx.signed(&health, &json!({"requestMetadata": {}})),
        400,
        "ValidationException",
        "empty health metadata",
    );
    let mut bad = good.clone();
    bad["plaintext"] = "not base64!".into();
    assert_err(
        fx.signed(&fx.api("k-both", "encrypt"), &bad),
        400,
        "ValidationException",
        "bad base64",
    );
    let mut bad = good.clone();
    bad["plaintext"] = "-_8=".into();
    assert_err(
        fx.signed(&fx.api("k-both", "encrypt"), &bad),
        400,
        "ValidationException",
        "url-safe base64",
    );
    let mut bad = good.clone();
    bad["encryptionAlgorithm"] = "AES_CBC".into();
    assert_err(
        fx.signed(&fx.api("k-both", "encrypt"), &bad),
        400,
        "ValidationException",
        "algorithm",
    );
    let mut bad = good.clone();
    bad["ciphertextDataIntegrityValueAlgorithm"] = "MD5".into();
    assert_err(
        fx.signed(&fx.api("k-both", "encrypt"), &bad),
        400,
        "ValidationException",
        "cdiv algorithm",
    );
    // curl without -H sends (and signs) application/x-www-form-urlencoded: refused.
    let user = format!("{AK1}:{SK1}");
    let (s, b) = fx.curl(
        &fx.api("k-both", "encrypt"),
        Some(good.to_string().as_bytes()),
        &[
            "--aws-sigv4",
            "aws:amz:us-east-1:kms-xks-proxy",
            "--user",
            &user,
        ],
    );
    assert_eq!(s, 400, "{b}");
    assert!(
        b.contains("ValidationException") && b.contains("Content-Type"),
        "{b}"
    );
    let (s, b) = fx.curl(
        &fx.api("k-both", "encrypt"),
        Some(b"{not json"),
        &[
            "--aws-sigv4",
            "aws:amz:us-east-1:kms-xks-proxy",
            "--user",
            &user,
            "-H",
            "Content-Type: application/json",
        ],
    );
    assert!(s == 400 && b.contains("ValidationException"), "{b}");
    // 404 KeyNotFoundException.
    assert_err(
        fx.signed(
            &fx.api("no-such-key", "metadata"),
            &json!({"requestMetadata": md(p)}),
        ),
        404,
        "KeyNotFoundException",
        "no key",
    );
    // 400 InvalidStateException.
    assert_err(
        fx.signed(&fx.api("k-off", "encrypt"), &good),
        400,
        "InvalidStateException",
        "disabled",
    );
    // 403 AccessDeniedException.
    assert_err(
        fx.signed(&fx.api("k-nogrant", "encrypt"), &good),
        403,
        "AccessDeniedException",
        "no grant",
    );
    // 501 UnsupportedOperationException.
    assert_err(
        fx.signed(
            &fx.api("k-both", "encrypt"),
            &enc(p, &vec![0u8; 64 * 1024 + 1], None, false),
        ),
        501,
        "UnsupportedOperationException",
        "too big",
    );
    // 400 InvalidKeyUsageException.
    assert_err(
        fx.signed(&fx.api("k-none", "encrypt"), &good),
        400,
        "InvalidKeyUsageException",
        "usage none",
    );
    // 400 InvalidCiphertextException.
    let (_, e) = fx.signed(
        &fx.api("k-both", "encrypt"),
        &enc(p, b"secret data", Some(b"ctx"), false),
    );
    let mut t = dec(p, &e, Some(b"ctx"));
    let mut tag = b64d(&e["authenticationTag"]);
    tag[0] ^= 1;
    t["authenticationTag"] = B64.encode(&tag).into();
    assert_err(
        fx.signed(&fx.api("k-both", "decrypt"), &t),
        400,
        "InvalidCiphertextException",
        "tag",
    );
    assert_err(
        fx.signed(&fx.api("k-both", "decrypt"), &dec(p, &e, Some(b"ctY"))),
        400,
        "InvalidCiphertextException",
        "aad",
    );
    assert_err(
        fx.signed(&fx.api("k-both", "decrypt"), &dec(p, &e, None)),
        400,
        "InvalidCiphertextException",
        "no aad",
    );
    let mut t = dec(p, &e, Some(b"ctx"));
    t["ciphertextMetadata"] = B64.encode([1u8, 0, 0, 0, 2]).into();
    assert_err(
        fx.signed(&fx.api("k-both", "decrypt"), &t),
        400,
        "InvalidCiphertextException",
        "ctm",
    );
    assert_err(
        fx.signed(
            &fx.api("k-grants", "decrypt"),
            &dec("arn:aws:iam::111122223333:role/exact", &e, Some(b"ctx")),
        ),
        400,
        "InvalidCiphertextException",
        "other key",
    );
    // ThrottlingException (429), InternalException (500) and DependencyTimeoutException (503)
    // cannot be provoked through the API (no rate limit, no backend); their names and statuses
    // are tested in the unit tests of src/xks/error.rs.
}

#[test]
fn key_usage_variants_and_disabled_keys() {
    let fx = Fixture::start(None);
    let p = "arn:aws:iam::1:user/a";
    let meta = |k: &str| {
        fx.signed(&fx.api(k, "metadata"), &json!({"requestMetadata": md(p)}))
            .1
    };
    assert_eq!(meta("k-enc")["keyUsage"], json!(["ENCRYPT"]));
    assert_eq!(meta("k-dec")["keyUsage"], json!(["DECRYPT"]));
    assert_eq!(meta("k-none")["keyUsage"], json!([]));
    assert_eq!(meta("k-off")["keyStatus"], "DISABLED");
    assert_eq!(meta("k-off")["keySpec"], "AES_256");

    // Encrypt-only: encrypts, but not with a CDIV (that needs a verify-decrypt), never decrypts.
    let (s, e) = fx.signed(&fx.api("k-enc", "encrypt"), &enc(p, b"abc", None, false));
    assert_eq!(s, 200);
    assert_err(
        fx.signed(&fx.api("k-enc", "encrypt"), &enc(p, b"abc", None, true)),
        400,
        "InvalidKeyUsageException",
        "enc-only cdiv",
    );
    assert_err(
        fx.signed(&fx.api("k-enc", "decrypt"), &dec(p, &e, None)),
        400,
        "InvalidKeyUsageException",
        "enc-only decrypt",
    );
    // Decrypt-only (same KEK in this fixture): decrypts, never encrypts.
    let (s, d) = fx.signed(&fx.api("k-dec", "decrypt"), &dec(p, &e, None));
    assert_eq!((s, b64d(&d["plaintext"])), (200, b"abc".to_vec()));
    assert_err(
        fx.signed(&fx.api("k-dec", "encrypt"), &enc(p, b"abc", None, false)),
        400,
        "InvalidKeyUsageException",
        "dec-only encrypt",
    );
    assert_err(
        fx.signed(&fx.api("k-none", "decrypt"), &dec(p, &e, None)),
        400,
        "InvalidKeyUsageException",
        "none decrypt",
    );
    // Disabled: both refused with InvalidStateException.
    let (_, e) = fx.signed(&fx.api("k-both", "encrypt"), &enc(p, b"abc", None, false));
    assert_err(
        fx.signed(&fx.api("k-off", "decrypt"), &dec(p, &e, None)),
        400,
        "InvalidStateException",
        "disabled decrypt",
    );
}

#[test]
fn grants_allow_and_deny() {
    let fx = Fixture::start(None);
    let k = |op: &str| fx.api("k-grants", op);
    let exact = "arn:aws:iam::111122223333:role/exact";
    let m = |p: &str, extra: Value| {
        let mut v = json!({"requestMetadata": md(p)});
        for (a, b) in extra.as_object().unwrap() {
            v["requestMetadata"][a] = b.clone();
        }
        fx.signed(&k("metadata"), &v)
    };
    // Exact principal: all operations.
    assert_eq!(m(exact, json!({})).0, 200);
    let (s, e) = fx.signed(&k("encrypt"), &enc(exact, b"x", None, false));
    assert_eq!(s, 200);
    assert_eq!(fx.signed(&k("decrypt"), &dec(exact, &e, None)).0, 200);
    assert_eq!(m("arn:aws:iam::111122223333:role/exact2", json!({})).0, 403);
    // Glob: app-* may encrypt only.
    assert_eq!(
        fx.signed(
            &k("encrypt"),
            &enc("arn:aws:iam::111122223333:role/app-web", b"x", None, false)
        )
        .0,
        200
    );
    assert_eq!(
        fx.signed(
            &k("decrypt"),
            &dec("arn:aws:iam::111122223333:role/app-web", &e, None)
        )
        .0,
        403
    );
    assert_eq!(
        fx.signed(
            &k("encrypt"),
            &enc("arn:aws:iam::111122223333:role/db", b"x", None, false)
        )
        .0,
        403
    );
    assert_eq!(
        m("arn:aws:iam::111122223333:role/app-web", json!({})).0,
        403
    );
    // Via service narrows.
    assert_eq!(
        m(
            "dynamodb.amazonaws.com",
            json!({"kmsViaService": "dynamodb"})
        )
        .0,
        200
    );
    assert_eq!(
        m("dynamodb.amazonaws.com", json!({"kmsViaService": "ebs"})).0,
        403
    );
    assert_eq!(m("dynamodb.amazonaws.com", json!({})).0, 403);
    // Source VPC narrows.
    let v = "arn:aws:iam::111122223333:role/vpc-only";
    assert_eq!(m(v, json!({"awsSourceVpc": "vpc-0aaa"})).0, 200);
    assert_eq!(m(v, json!({"awsSourceVpc": "vpc-0bbb"})).0, 403);
    assert_eq!(m(v, json!({})).0, 403);
    // Wildcard grant on another key: anyone.
    assert_eq!(
        fx.signed(
            &fx.api("k-both", "metadata"),
            &json!({"requestMetadata": md("AWS Internal")})
        )
        .0,
        200
    );
    // ARNs up to 2048 characters are accepted (here through the wildcard grant).
    let long = format!("arn:aws:iam::111122223333:role/{}", "r".repeat(2048 - 31));
    assert_eq!(long.len(), 2048);
    let mut body = json!({"requestMetadata": md(&long)});
    body["requestMetadata"]["kmsKeyArn"] = format!(
        "arn:aws:kms:us-east-1:111122223333:key/{}",
        "k".repeat(2048 - 39)
    )
    .into();
    assert_eq!(fx.signed(&fx.api("k-both", "metadata"), &body).0, 200);
    // Health is never subject to grants.
    let (s, _) = fx.signed(
        &format!("{PREFIX}/kms/xks/v1/health"),
        &json!({"requestMetadata": {"kmsRequestId": "1", "kmsOperation": "X"}}),
    );
    assert_eq!(s, 200);
}

#[test]
fn credential_rotation_without_restart() {
    let fx = Fixture::start(None);
    let h = format!("{PREFIX}/kms/xks/v1/health");
    let body = json!({"requestMetadata": {"kmsRequestId": "1", "kmsOperation": "KmsHealthCheck"}});
    assert_eq!(fx.signed_as(&h, &body, AK1, SK1).0, 200);
    assert_eq!(fx.signed_as(&h, &body, AK2, SK2).0, 401);
    fx.view.store(Arc::new(snapshot(&[(AK1, SK1), (AK2, SK2)])));
    assert_eq!(fx.signed_as(&h, &body, AK1, SK1).0, 200);
    assert_eq!(fx.signed_as(&h, &body, AK2, SK2).0, 200);
    fx.view.store(Arc::new(snapshot(&[(AK2, SK2)])));
    assert_eq!(fx.signed_as(&h, &body, AK1, SK1).0, 401);
    assert_eq!(fx.signed_as(&h, &body, AK2, SK2).0, 200);
}

/// Key rotation as the request path sees it: after version 2 becomes current, what version 1
/// encrypted still decrypts, new ciphertexts name version 2 in `ciphertextMetadata`, and a
/// version the key no longer has is InvalidCiphertextException.
#[test]
fn rotated_keys_decrypt_every_version_and_encrypt_with_the_current() {
    use keyward_keystore::OlderKek;
    let fx = Fixture::start(None);
    let body = enc("arn:aws:iam::111122223333:role/x", b"before", None, false);
    let (s, old) = fx.signed(&fx.api("k-both", "encrypt"), &body);
    assert_eq!(s, 200, "{old}");
    assert_eq!(b64d(&old["ciphertextMetadata"]), [1, 0, 0, 0, 1]);

    // Rotate k-both: version 2 (another KEK) current, version 1 kept.
    let rotated = |keep_v1: bool| {
        let mut snap = snapshot(&[(AK1, SK1)]);
        let store = Arc::get_mut(snap.stores.get_mut("default").unwrap()).unwrap();
        let k = LiveKey {
            id: "k-both".into(),
            version: 2,
            usage: KeyUsage::EncryptDecrypt,
            status: KeyStatus::Enabled,
            grants: vec![grant("*", all_ops())],
            kek: Key32::from_bytes(&[0x77; 32]).unwrap(),
            version_created: 1,
            older: if keep_v1 {
                vec![OlderKek {
                    version: 1,
                    created: 0,
                    kek: Key32::from_bytes(&[1; 32]).unwrap(),
                }]
            } else {
                Vec::new()
            },
            rotate_every_secs: None,
            destroy_at: None,
            status_before_destroy: None,
        };
        store.keys.insert("k-both".into(), Arc::new(k));
        snap
    };
    fx.view.store(Arc::new(rotated(true)));
    let who = "arn:aws:iam::111122223333:role/x";
    let (s, pt) = fx.signed(&fx.api("k-both", "decrypt"), &dec(who, &old, None));
    assert_eq!(s, 200, "{pt}");
    assert_eq!(b64d(&pt["plaintext"]), b"before");
    let (s, new) = fx.signed(
        &fx.api("k-both", "encrypt"),
        &enc(who, b"after", None, false),
    );
    assert_eq!(s, 200, "{new}");
    assert_eq!(b64d(&new["ciphertextMetadata"]), [1, 0, 0, 0, 2]);
    let (s, pt) = fx.signed(&fx.api("k-both", "decrypt"), &dec(who, &new, None));
    assert_eq!((s, b64d(&pt["plaintext"])), (200, b"after".to_vec()));

    // Version 1 gone (a key that never had it): refused, not tried with the current KEK.
    fx.view.store(Arc::new(rotated(false)));
    assert_err(
        fx.signed(&fx.api("k-both", "decrypt"), &dec(who, &old, None)),
        400,
        "InvalidCiphertextException",
        "a version the key does not have",
    );
}

/// A destroyed key: every operation on it is KeyNotFoundException (404), saying it was
/// destroyed (not that it never existed).
#[test]
fn a_destroyed_key_is_not_found_and_says_so() {
    let fx = Fixture::start(None);
    let who = "arn:aws:iam::111122223333:role/x";
    let (s, v) = fx.signed(&fx.api("k-gone", "encrypt"), &enc(who, b"x", None, false));
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["errorName"], "KeyNotFoundException");
    assert!(
        v["errorMessage"]
            .as_str()
            .unwrap_or("")
            .contains("destroyed"),
        "{v}"
    );
    let (s, v) = fx.signed(
        &fx.api("k-never", "metadata"),
        &json!({"requestMetadata": md(who)}),
    );
    assert_eq!(s, 404, "{v}");
    assert!(
        !v["errorMessage"]
            .as_str()
            .unwrap_or("")
            .contains("destroyed"),
        "{v}"
    );
}

#[test]
fn spec_maximum_sizes_and_our_limits() {
    let fx = Fixture::start(None);
    let p = "p";
    let pt: Vec<u8> = (0..4300u32).map(|i| (i * 7) as u8).collect();
    let aad: Vec<u8> = (0..8192u32).map(|i| (i * 13) as u8).collect();
    let (s, e) = fx.signed(&fx.api("k-both", "encrypt"), &enc(p, &pt, Some(&aad), true));
    assert_eq!(s, 200, "{e}");
    let (s, d) = fx.signed(&fx.api("k-both", "decrypt"), &dec(p, &e, Some(&aad)));
    assert_eq!((s, b64d(&d["plaintext"])), (200, pt));
    // Our documented limits: 64 KiB data, 65535 AAD.
    assert_eq!(
        fx.signed(
            &fx.api("k-both", "encrypt"),
            &enc(p, &vec![1; 65536], Some(&vec![2; 65535]), false)
        )
        .0,
        200
    );
    assert_err(
        fx.signed(
            &fx.api("k-both", "encrypt"),
            &enc(p, b"x", Some(&vec![2; 65536]), false),
        ),
        501,
        "UnsupportedOperationException",
        "aad",
    );
    let mut big = dec(p, &e, Some(&aad));
    big["ciphertext"] = B64.encode(vec![0u8; 70_000]).into();
    assert_err(
        fx.signed(&fx.api("k-both", "decrypt"), &big),
        501,
        "UnsupportedOperationException",
        "ciphertext",
    );
    // A 3 MiB body is read and answered with JSON, not reset and not a bare 413.
    let huge = enc(p, &vec![0u8; 3 * 1024 * 1024], None, false);
    assert_err(
        fx.signed(&fx.api("k-both", "encrypt"), &huge),
        501,
        "UnsupportedOperationException",
        "huge body",
    );
}

/// Sign with the `aws-sigv4` crate at `time`; returns the headers to send.
fn aws_sigv4_headers(
    url: &str,
    host: &str,
    body: &[u8],
    region: &str,
    service: &str,
    time: SystemTime,
    with_content_type: bool,
) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = aws_credential_types::Credentials::new(AK1, SK1, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let mut headers = vec![("host", host)];
    if with_content_type {
        headers.push(("content-type", "application/json"));
    }
    let req =
        SignableRequest::new("POST", url, headers.into_iter(), SignableBody::Bytes(body)).unwrap();
    let (instructions, _sig) = sign(req, &params).unwrap().into_parts();
    let (h, _) = instructions.into_parts();
    h.into_iter()
        .map(|h| (h.name().to_string(), h.value().to_string()))
        .collect()
}

#[test]
fn sigv4_scope_skew_and_tampering() {
    let fx = Fixture::start(None);
    let path = format!("{PREFIX}/kms/xks/v1/health");
    let url = fx.url(&path);
    let host = format!("127.0.0.1:{}", fx.addr.port());
    let body = json!({"requestMetadata": {"kmsRequestId": "1", "kmsOperation": "KmsHealthCheck"}})
        .to_string();
    let send = |region: &str, service: &str, skew: i64, sent: &str| {
        let t = if skew >= 0 {
            SystemTime::now() + Duration::from_secs(skew as u64)
        } else {
            SystemTime::now() - Duration::from_secs((-skew) as u64)
        };
        let hs = aws_sigv4_headers(&url, &host, body.as_bytes(), region, service, t, true);
        let mut args: Vec<String> = vec!["-H".into(), "Content-Type: application/json".into()];
        for (k, v) in hs {
            args.push("-H".into());
            args.push(format!("{k}: {v}"));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fx.curl(&path, Some(sent.as_bytes()), &a).0
    };
    assert_eq!(send(REGION, "kms-xks-proxy", 0, &body), 200);
    assert_eq!(
        send(REGION, "xks-kms", 0, &body),
        200,
        "the store's configured extra service name"
    );
    assert_eq!(send("eu-west-1", "kms-xks-proxy", 0, &body), 401);
    assert_eq!(send(REGION, "kms", 0, &body), 401);
    assert_eq!(send(REGION, "kms-xks-proxy", 240, &body), 200);
    assert_eq!(send(REGION, "kms-xks-proxy", -240, &body), 200);
    assert_eq!(send(REGION, "kms-xks-proxy", 360, &body), 401);
    assert_eq!(send(REGION, "kms-xks-proxy", -360, &body), 401);
    let altered = body.replacen("{", "{ ", 1);
    assert_eq!(send(REGION, "kms-xks-proxy", 0, &altered), 401);
    // curl signing for the wrong region or service.
    let user = format!("{AK1}:{SK1}");
    for scope in ["aws:amz:eu-west-1:kms-xks-proxy", "aws:amz:us-east-1:kms"] {
        let (s, _) = fx.curl(
            &path,
            Some(body.as_bytes()),
            &[
                "--aws-sigv4",
                scope,
                "--user",
                &user,
                "-H",
                "Content-Type: application/json",
            ],
        );
        assert_eq!(s, 401, "{scope}");
    }
}

#[test]
fn mtls_requires_the_right_client_certificate() {
    let client_ca = ca("KMS client CA");
    let other_ca = ca("Other CA");
    let fx = Fixture::start(Some(ClientAuth {
        ca_pem: client_ca.cert.pem().into_bytes(),
        allowed_names: vec![KMS_CLIENT.into()],
    }));
    let write = |name: &str, (c, k): (String, String)| -> (PathBuf, PathBuf) {
        let cp = fx.dir.path().join(format!("{name}.crt"));
        let kp = fx.dir.path().join(format!("{name}.key"));
        std::fs::write(&cp, c).unwrap();
        std::fs::write(&kp, k).unwrap();
        (cp, kp)
    };
    let good_cn = write("good-cn", leaf(&client_ca, KMS_CLIENT, &[], false));
    let good_san = write(
        "good-san",
        leaf(&client_ca, "something else", &[KMS_CLIENT], false),
    );
    let expired = write("expired", leaf(&client_ca, KMS_CLIENT, &[KMS_CLIENT], true));
    let wrong_ca = write(
        "wrong-ca",
        leaf(&other_ca, KMS_CLIENT, &[KMS_CLIENT], false),
    );
    let wrong_name = write(
        "wrong-name",
        leaf(
            &client_ca,
            "cks.kms.evil.example.com",
            &["cks.kms.evil.example.com"],
            false,
        ),
    );
    let path = format!("{PREFIX}/kms/xks/v1/health");
    let body = json!({"requestMetadata": {"kmsRequestId": "1", "kmsOperation": "KmsHealthCheck"}})
        .to_string();
    let user = format!("{AK1}:{SK1}");
    let call = |cert: Option<&(PathBuf, PathBuf)>| {
        let mut args: Vec<String> = vec![
            "--aws-sigv4".into(),
            "aws:amz:us-east-1:kms-xks-proxy".into(),
            "--user".into(),
            user.clone(),
            "-H".into(),
            "Content-Type: application/json".into(),
        ];
        if let Some((c, k)) = cert {
            args.extend([
                "--cert".into(),
                c.display().to_string(),
                "--key".into(),
                k.display().to_string(),
            ]);
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fx.curl(&path, Some(body.as_bytes()), &a).0
    };
    assert_eq!(call(Some(&good_cn)), 200, "CN match");
    assert_eq!(call(Some(&good_san)), 200, "SAN match");
    assert_ne!(call(None), 200, "no client certificate");
    assert_ne!(call(Some(&expired)), 200, "expired");
    assert_ne!(call(Some(&wrong_ca)), 200, "wrong CA");
    assert_ne!(call(Some(&wrong_name)), 200, "wrong subject");
    // A refused handshake never reaches HTTP: no status at all.
    assert_eq!(call(Some(&wrong_name)), 0);
}

#[test]
fn tls_certificate_swaps_at_run_time_and_sec1_keys_load() {
    let fx = Fixture::start(None);
    let health = format!("{PREFIX}/kms/xks/v1/health");
    let body = json!({"requestMetadata": {"kmsRequestId": "1", "kmsOperation": "KmsHealthCheck"}});
    assert_eq!(fx.signed(&health, &body).0, 200);
    let new_ca = ca("second CA");
    let (chain, pkcs8) = leaf(&new_ca, "localhost", &["localhost", "127.0.0.1"], false);
    // Convert the PKCS#8 key to SEC1 ("BEGIN EC PRIVATE KEY") with openssl.
    let k8 = fx.dir.path().join("k8.pem");
    std::fs::write(&k8, pkcs8).unwrap();
    let out = Command::new("openssl")
        .args(["ec", "-in"])
        .arg(&k8)
        .output()
        .expect("openssl");
    let sec1 = String::from_utf8(out.stdout).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    fx.cert
        .as_ref()
        .unwrap()
        .install(chain.as_bytes(), sec1.as_bytes())
        .unwrap();
    // The old CA no longer verifies; the new one does.
    assert_eq!(fx.signed(&health, &body).0, 0);
    std::fs::write(&fx.ca_path, new_ca.cert.pem()).unwrap();
    assert_eq!(fx.signed(&health, &body).0, 200);
    // A key that does not match the chain is refused.
    let (_, other_key) = leaf(&new_ca, "x", &[], false);
    assert!(fx
        .cert
        .as_ref()
        .unwrap()
        .install(chain.as_bytes(), other_key.as_bytes())
        .is_err());
}

#[test]
fn http1_keep_alive_reuses_the_connection() {
    let fx = Fixture::start(None);
    // Two transfers in one curl: the second reuses the connection (num_connects = 0).
    let out = xks_common::tools::curl()
        .args(["-s", "-o", "/dev/null", "-o", "/dev/null", "--cacert"])
        .arg(&fx.ca_path)
        .args(["--http1.1", "-w", "%{num_connects} %{http_version}\n"])
        .arg(fx.url("/ping"))
        .arg(fx.url("/ping"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["1 1.1", "0 1.1"],
        "{text}"
    );
}

#[test]
fn http2_by_alpn_and_absent_content_type() {
    let fx = Fixture::start(None);
    let user = format!("{AK1}:{SK1}");
    let body = json!({"requestMetadata": {"kmsRequestId": "1", "kmsOperation": "KmsHealthCheck"}})
        .to_string();
    let path = format!("{PREFIX}/kms/xks/v1/health");
    // HTTP/2: the host comes from :authority.
    let (s, b) = fx.curl(
        &path,
        Some(body.as_bytes()),
        &[
            "--http2",
            "--aws-sigv4",
            "aws:amz:us-east-1:kms-xks-proxy",
            "--user",
            &user,
            "-H",
            "Content-Type: application/json",
            "-D",
            "-",
        ],
    );
    assert_eq!(s, 200, "{b}");
    assert!(b.starts_with("HTTP/2 200"), "{b}");
    // No Content-Type at all: accepted (documented decision); the body is still JSON. (curl
    // signs a content-type even when told not to send one, so aws-sigv4 signs here.)
    let host = format!("127.0.0.1:{}", fx.addr.port());
    let hs = aws_sigv4_headers(
        &fx.url(&path),
        &host,
        body.as_bytes(),
        REGION,
        "kms-xks-proxy",
        SystemTime::now(),
        false,
    );
    let mut args: Vec<String> = vec!["-H".into(), "Content-Type:".into()];
    for (k, v) in hs {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (s, b) = fx.curl(&path, Some(body.as_bytes()), &a);
    assert_eq!(s, 200, "{b}");
}

#[test]
fn plain_http_needs_the_explicit_flag() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = XksSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        insecure_http: false,
        limits: Limits::default(),
        instance_id: "x".into(),
    };
    assert!(rt.block_on(XksServer::bind(settings.clone())).is_err());
    let ok = XksSettings {
        insecure_http: true,
        ..settings
    };
    assert!(rt.block_on(XksServer::bind(ok)).is_ok());
}

#[test]
fn audit_log_records_requests_without_secrets() {
    let fx = Fixture::start(None);
    let p = "arn:aws:iam::111122223333:role/auditor";
    let pt = b"TOP-SECRET-PLAINTEXT-0123456789";
    let aad = b"AAD-MARKER-project=nile";
    let mut body = enc(p, pt, Some(aad), true);
    body["requestMetadata"]["kmsRequestId"] = "audit-req-42".into();
    body["requestMetadata"]["kmsViaService"] = "ebs".into();
    let (s, e) = fx.signed(&fx.api("k-both", "encrypt"), &body);
    assert_eq!(s, 200);
    let (s, d) = fx.signed(&fx.api("k-both", "decrypt"), &dec(p, &e, Some(aad)));
    assert_eq!(s, 200);
    assert_eq!(fx.signed(&fx.api("k-nogrant", "encrypt"), &body).0, 403);
    fx.audit.shutdown().unwrap();
    let log = std::fs::read_to_string(&fx.audit_path).unwrap();
    let all: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The chain line first and the shutdown checkpoint last frame the request lines.
    assert_eq!(all.first().unwrap()["type"], "chain");
    assert_eq!(all.last().unwrap()["type"], "checkpoint");
    let lines: Vec<&Value> = all
        .iter()
        .filter(|l| l["type"] != "chain" && l["type"] != "checkpoint")
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert_eq!(lines[0]["kmsRequestId"], "audit-req-42");
    assert_eq!(lines[0]["operation"], "Encrypt");
    assert_eq!(lines[0]["principal"], p);
    assert_eq!(lines[0]["viaService"], "ebs");
    assert_eq!(lines[0]["keyId"], "k-both");
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[2]["decision"], "deny");
    assert_eq!(lines[2]["errorName"], "AccessDeniedException");
    for secret in [
        String::from_utf8_lossy(pt).to_string(),
        B64.encode(pt),
        String::from_utf8_lossy(aad).to_string(),
        B64.encode(aad),
        e["ciphertext"].as_str().unwrap().to_string(),
        e["authenticationTag"].as_str().unwrap().to_string(),
        d["plaintext"].as_str().unwrap().to_string(),
        SK1.to_string(),
        hex::encode([1u8; 32]),
        B64.encode([1u8; 32]),
    ] {
        assert!(!log.contains(&secret), "audit log contains {secret}");
    }
}

// ---------------------------------------------------------------- botocore

#[test]
fn botocore_signs_like_kms() {
    let py = botocore_python();
    let fx = Fixture::start(None);
    let script = crate::repo().join("tests/python/xks_sign.py");
    let run = |path: &str, body: &Value, extra: &[&str]| -> (u16, Value) {
        let out = Command::new(&py)
            .arg(&script)
            .args(["--url", &fx.url(path), "--ak", AK1, "--sk", SK1, "--cafile"])
            .arg(&fx.ca_path)
            .arg("--body-file")
            .arg(fx.body_file(body.to_string().as_bytes()))
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, body) = text.split_once('\n').unwrap_or((&text, ""));
        (
            code.trim().parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    };
    let p = "arn:aws:iam::1:role/boto";
    let health = format!("{PREFIX}/kms/xks/v1/health");
    let hb = json!({"requestMetadata": {"kmsRequestId": "b-1", "kmsOperation": "KmsHealthCheck"}});
    let (s, h) = run(&health, &hb, &[]);
    assert_eq!(s, 200);
    assert_eq!(h["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");
    let (s, m) = run(
        &fx.api("k-both", "metadata"),
        &json!({"requestMetadata": md(p)}),
        &[],
    );
    assert_eq!((s, &m["keySpec"]), (200, &json!("AES_256")));
    let pt: Vec<u8> = (0..4300u32).map(|i| i as u8).collect();
    let aad = vec![7u8; 8192];
    let (s, e) = run(
        &fx.api("k-both", "encrypt"),
        &enc(p, &pt, Some(&aad), true),
        &[],
    );
    assert_eq!(s, 200, "{e}");
    let (s, d) = run(&fx.api("k-both", "decrypt"), &dec(p, &e, Some(&aad)), &[]);
    assert_eq!((s, b64d(&d["plaintext"])), (200, pt));
    assert_eq!(run(&health, &hb, &["--skew", "400"]).0, 401);
    assert_eq!(run(&health, &hb, &["--skew", "-400"]).0, 401);
    assert_eq!(run(&health, &hb, &["--skew", "-200"]).0, 200);
    assert_eq!(run(&health, &hb, &["--tamper"]).0, 401);
    assert_eq!(run(&health, &hb, &["--region", "eu-west-1"]).0, 401);
    assert_eq!(run(&health, &hb, &["--service", "kms"]).0, 401);
    let (s, e) = run(&fx.api("k-off", "encrypt"), &enc(p, b"x", None, false), &[]);
    assert_eq!((s, &e["errorName"]), (400, &json!("InvalidStateException")));
}

/// Slow-loris and idle protection (`Limits::conn_idle`, the watchdog in `xks::watchdog`): a
/// connection that stops mid-headers, one idle after its answer, and one stalled mid-body are
/// all closed by the server; one that keeps sending requests is not.
#[test]
fn slow_and_idle_connections_are_closed() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = AuditLog::start(AuditSink::File(dir.path().join("audit.log"))).unwrap();
    let view: SharedView = Arc::new(ArcSwap::from_pointee(snapshot(&[(AK1, SK1)])));
    let settings = XksSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        insecure_http: true,
        limits: Limits {
            conn_idle: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        instance_id: "x".into(),
    };
    let server = rt.block_on(XksServer::bind(settings)).unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let a = audit.clone();
    rt.spawn(async move {
        let _ = server
            .run(view, a, Arc::new(InMemoryStore), async {
                let _ = rx.await;
            })
            .await;
    });
    let ping = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
        s
    };
    // Reads until the server closes; Err if it kept the connection open for 25 s.
    let closed = |mut s: TcpStream| -> Result<String, String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(String::from_utf8_lossy(&got).into_owned()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(String::from_utf8_lossy(&got).into_owned())
                }
                Err(e) => return Err(format!("still open after 25 s ({e})")),
            }
        }
    };

    let mut partial = connect();
    partial
        .write_all(b"POST /ping HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut idle = connect();
    idle.write_all(ping).unwrap();
    let mut stalled = connect();
    stalled
        .write_all(
            b"POST /kw/kms/xks/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"req",
        )
        .unwrap();
    let mut busy = connect();
    for i in 0..12 {
        busy.write_all(ping).unwrap();
        let mut buf = [0u8; 512];
        let n = busy.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "request {i} on a busy connection: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let got = closed(partial).expect("a connection stopped mid-headers");
    assert!(got.is_empty(), "no answer to half a request: {got:?}");
    let got = closed(idle).expect("an idle keep-alive connection");
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    closed(stalled).expect("a connection stalled mid-body");
    let _ = tx.send(());
    audit.shutdown().unwrap();
}

/// The same protection on the production path (TLS, HTTP/1.1 by ALPN): a client that
/// completes the handshake and then sends half a request is disconnected.
#[test]
fn a_slow_tls_client_is_disconnected() {
    use std::io::{Read, Write};
    let fx = Fixture::start_with(
        None,
        Limits {
            conn_idle: Duration::from_secs(1),
            ..Limits::default()
        },
    );
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&fx.ca_path).unwrap();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(fx.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"POST /kw/kms/xks/v1/health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut buf = [0u8; 256];
    let outcome = match tls.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("unexpected answer: {:?}", &buf[..n])),
        // A close without close_notify is still the server hanging up.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("still open after 25 s ({e})")),
    };
    outcome.unwrap();
}

/// A TLS connection to the fixture, handshake done, speaking HTTP/1.1.
fn raw_tls(fx: &Fixture) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&fx.ca_path).unwrap();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(fx.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

/// Read one HTTP/1.1 answer: (status, body).
fn read_answer(tls: &mut impl std::io::Read) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body[..len].to_string());
            }
        }
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => panic!("connection ended before a whole answer: {text:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn health_body() -> Value {
    json!({"requestMetadata": {"kmsRequestId": "h-1", "kmsOperation": "KmsHealthCheck"}})
}

/// Past the connection cap, KMS is answered 429 ThrottlingException (retryable) at once,
/// rather than left to time out; once connections close, requests are served again.
#[test]
fn past_the_connection_cap_kms_gets_429_throttling() {
    let fx = Fixture::start_with(
        None,
        Limits {
            max_connections: 3,
            max_overflow: 4,
            ..Limits::default()
        },
    );
    let health = format!("{PREFIX}/kms/xks/v1/health");
    let held: Vec<_> = (0..3).map(|_| raw_tls(&fx)).collect();
    let t = std::time::Instant::now();
    let got = fx.signed(&health, &health_body());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_err(got.clone(), 429, "ThrottlingException", "over the cap");
    assert_eq!(
        got.1["errorMessage"], "too many connections; retry",
        "{:?}",
        got.1
    );
    drop(held);
    // The cap frees as the held connections end.
    let mut s = 0;
    for _ in 0..50 {
        s = fx.signed(&health, &health_body()).0;
        if s == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s, 200, "served again once the held connections closed");
}

/// Too many requests in flight (here: two stalled mid-body) also give 429, while the
/// connections are under their cap.
#[test]
fn too_many_requests_in_flight_get_429_throttling() {
    use std::io::Write;
    let fx = Fixture::start_with(
        None,
        Limits {
            max_in_flight: 2,
            ..Limits::default()
        },
    );
    let health = format!("{PREFIX}/kms/xks/v1/health");
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            let mut s = raw_tls(&fx);
            s.write_all(format!("POST {health} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{{\"req").as_bytes())
                .unwrap();
            s.flush().unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_err(
        fx.signed(&health, &health_body()),
        429,
        "ThrottlingException",
        "in flight",
    );
    drop(stalled);
    let mut s = 0;
    for _ in 0..50 {
        s = fx.signed(&health, &health_body()).0;
        if s == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s, 200);
}

/// A body declared over the pre-authentication cap is answered 501 UnsupportedOperationException
/// (the spec's error for a parameter larger than supported) before any of it is sent: it is
/// never buffered. One just over the cap that is sent is read, dropped and refused the same way.
#[test]
fn bodies_over_the_pre_auth_cap_are_refused_without_buffering() {
    use std::io::Write;
    let fx = Fixture::start(None);
    let cap = Limits::default().max_body;
    assert_eq!(cap, 192 * 1024);
    let path = fx.api("k-both", "encrypt");
    // Declared over 16 MiB: answered at once; just over the cap: read, dropped, answered.
    for declared in [32 * 1024 * 1024, cap + 1] {
        let mut s = raw_tls(&fx);
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        s.flush().unwrap();
        if declared <= 16 * 1024 * 1024 {
            s.write_all(&vec![b'a'; declared]).unwrap();
            s.flush().unwrap();
        }
        let t = std::time::Instant::now();
        let (status, body) = read_answer(&mut s);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{declared}: {:?}",
            t.elapsed()
        );
        assert_eq!(status, 501, "{declared}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["errorName"], "UnsupportedOperationException",
            "{declared}"
        );
    }
}

/// An unknown access key id and a known one with the wrong secret get byte-identical answers
/// (the verifier does the same work for both: `sigv4` unit test
/// `unknown_access_key_ids_cost_a_signature_and_get_the_same_answer`).
#[test]
fn unknown_and_known_access_key_ids_get_the_same_refusal() {
    let fx = Fixture::start(None);
    let health = format!("{PREFIX}/kms/xks/v1/health");
    let body = health_body().to_string();
    let run = |ak: &str, sk: &str| {
        let user = format!("{ak}:{sk}");
        fx.curl(
            &health,
            Some(body.as_bytes()),
            &[
                "--aws-sigv4",
                "aws:amz:us-east-1:kms-xks-proxy",
                "--user",
                &user,
                "-H",
                "Content-Type: application/json",
            ],
        )
    };
    let unknown = run("AKIAUNKNOWNKEYIDZZZZZ", SK1);
    let wrong_secret = run(AK1, SK2);
    assert_eq!(unknown.0, 401);
    assert_eq!(unknown, wrong_secret);
    assert_eq!(run(AK1, SK1).0, 200);
}
