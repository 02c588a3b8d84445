//! keyward's own request path, in-process (no sockets, no TLS):
//!
//! * `xks/sigv4_verify`: `xks::sigv4::verify` on an encrypt request signed by `aws-sigv4`
//!   (canonical request, body hash, cached signing key, constant-time compare).
//! * `xks/handle_encrypt/{kms,max}` and `xks/handle_decrypt/kms`: `xks::handlers::handle`, the
//!   whole request path after HTTP: route, SigV4, JSON, key lookup, grants, IV + AES-256-GCM,
//!   JSON answer, and the audit record handed to the writer thread (writing to a temp file).
//! * `xks/handle_encrypt/kms_metrics`: the same with the metrics hook on the audit writer
//!   (what `keyward serve` runs): the request path does the same work; the writer thread
//!   counts the request, so on a busy machine the difference is the writer's extra CPU.
//! * `audit/line` and `audit/line_metrics`: the audit writer's own cost per XKS line (format,
//!   SHA-256 chain, write), without and with the metrics hook, measured from the request side
//!   as lines per second through a flush.
//! * `metrics/observe`: one `Metrics::observe` call (the hook's work per request).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use keyward_audit::{AuditLog, AuditSink};
use keyward_bench::Signer;
use keyward_bench::{Builder, EncryptOutput, Prepared};
use keyward_bench::{Preset, RawSettings, Settings};
use keyward_xks::sigv4;
use keyward_xks::{handle, Ctx, Limits, Request};
use keyward_xks::{Health, InMemoryStore};

#[path = "tools/fixture.rs"]
mod fixture;
use fixture::{AK, PREFIX, SK};

fn settings(preset: Preset) -> Settings {
    RawSettings {
        url: Some("https://127.0.0.1:8443".into()),
        uri_prefix: Some(PREFIX.into()),
        access_key_id: Some(AK.into()),
        secret_access_key: Some(SK.into()),
        key_ids: vec!["key-1".into()],
        preset: Some(preset),
        ..RawSettings::default()
    }
    .validate()
    .unwrap()
}

fn ctx(audit_dir: &std::path::Path) -> Ctx {
    ctx_with(audit_dir, "audit.log", None)
}

fn ctx_with(audit_dir: &std::path::Path, file: &str, hook: Option<keyward_audit::XksHook>) -> Ctx {
    Ctx {
        view: fixture::view(),
        health: Health::new(Arc::new(InMemoryStore), "bench".into()).unwrap(),
        audit: AuditLog::start_with(AuditSink::File(audit_dir.join(file)), hook).unwrap(),
        limits: Limits::default(),
    }
}

fn record(i: u64) -> keyward_audit::XksRecord {
    let mut r = keyward_audit::XksRecord::new();
    r.set_operation("Encrypt");
    r.set(keyward_audit::Field::KmsRequestId, &format!("req-{i}"));
    r.finish(200, None, Duration::from_micros(15 + i % 7));
    r
}

/// The audit writer's cost per line: `n` records handed over, then a flush (all written).
fn writer_lines(c: &mut Criterion, name: &str, hook: Option<keyward_audit::XksHook>) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start_with(AuditSink::File(dir.path().join("w.log")), hook).unwrap();
    let mut i = 0u64;
    c.bench_function(name, |bch| {
        bch.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                log.xks(record(i));
                i += 1;
            }
            log.flush().unwrap();
            t.elapsed()
        })
    });
    let _ = log.shutdown();
}

/// A signed request as the server would see it: path, headers, body.
struct Signed {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

fn signed(p: &Prepared) -> Signed {
    let signer = Signer::new(AK, SK, "us-east-1", "127.0.0.1:8443").unwrap();
    let req = signer.request(p, SystemTime::now()).unwrap();
    let (parts, _) = req.into_parts();
    Signed {
        path: p.path.clone(),
        headers: parts.headers,
        body: p.body.clone(),
    }
}

fn call(ctx: &Ctx, s: &Signed) -> keyward_xks::Reply {
    let req = Request {
        method: &Method::POST,
        path: &s.path,
        query: None,
        headers: &s.headers,
        authority: None,
        body: &s.body,
    };
    handle(ctx, &req, Instant::now())
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());

    let kms = settings(Preset::Kms);
    let b = Builder::new(&kms);
    let enc = signed(&b.encrypt("key-1", 0));
    let store = ctx.view.load().stores["bench"].clone();
    let policy_services = store.services.clone();
    c.bench_function("xks/sigv4_verify", |bch| {
        bch.iter(|| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let req = sigv4::SignedRequest {
                method: "POST",
                path: &enc.path,
                canonical_query: "",
                headers: &enc.headers,
                authority: None,
                body: &enc.body,
            };
            let policy = sigv4::Policy {
                region: "us-east-1",
                services: &policy_services,
                now_unix: now,
                xks_key_id_format: true,
            };
            black_box(
                sigv4::verify(
                    &req,
                    |ak| store.credentials.iter().find(|c| c.access_key_id == ak),
                    &policy,
                )
                .unwrap(),
            );
        })
    });

    let first = call(&ctx, &enc);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    c.bench_function("xks/handle_encrypt/kms", |bch| {
        bch.iter(|| black_box(call(&ctx, &enc)))
    });
    let out: EncryptOutput = serde_json::from_slice(&first.body).unwrap();
    let dec = signed(&b.decrypt("key-1", 1, &out));
    assert_eq!(call(&ctx, &dec).status, 200);
    c.bench_function("xks/handle_decrypt/kms", |bch| {
        bch.iter(|| black_box(call(&ctx, &dec)))
    });

    let max = settings(Preset::Max);
    let enc_max = signed(&Builder::new(&max).encrypt("key-1", 2));
    assert_eq!(call(&ctx, &enc_max).status, 200);
    c.bench_function("xks/handle_encrypt/max", |bch| {
        bch.iter(|| black_box(call(&ctx, &enc_max)))
    });
    let _ = ctx.audit.shutdown();

    // The metrics hook on the audit writer, as `keyward serve` runs it.
    let metrics = keyward_metrics::Metrics::new();
    let mctx = ctx_with(dir.path(), "audit-metrics.log", Some(metrics.audit_hook()));
    assert_eq!(call(&mctx, &enc).status, 200);
    c.bench_function("xks/handle_encrypt/kms_metrics", |bch| {
        bch.iter(|| black_box(call(&mctx, &enc)))
    });
    let _ = mctx.audit.shutdown();
    let text = metrics
        .render(&keyward_metrics::Figures::default())
        .unwrap();
    assert!(text.contains("keyward_xks_requests_total{operation=\"Encrypt\""));

    writer_lines(c, "audit/line", None);
    writer_lines(c, "audit/line_metrics", Some(metrics.audit_hook()));
    let recs: Vec<_> = (0..64).map(record).collect();
    let mut k = 0usize;
    c.bench_function("metrics/observe", |bch| {
        bch.iter(|| {
            metrics.observe(black_box(&recs[k % 64]));
            k += 1;
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = xks;
    config = config();
    targets = benches
}
criterion_main!(xks);
