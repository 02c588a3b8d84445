//! The routing step of the XKS request path, two ways, in-process: keyward's own
//! `xks::router::route` (what the hot path uses) against an axum `Router` with the same four
//! routes answering a fixed body through `tower::ServiceExt::oneshot` (what the admin API and
//! the live-attestation listener use). The difference is what moving the XKS path onto axum
//! would add per request, before any XKS work (docs/performance.md, "Why the XKS path stays on
//! hyper").

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tower::ServiceExt as _;

const PATH: &str = "/keyward/kms/xks/v1/keys/key-1/encrypt";

fn bench(c: &mut Criterion) {
    c.bench_function("router/keyward_route", |b| {
        b.iter(|| black_box(keyward_xks::route(black_box(PATH), None)))
    });

    use axum::routing::post;
    let app = axum::Router::new()
        .route("/{prefix}/kms/xks/v1/health", post(|| async { "h" }))
        .route(
            "/{prefix}/kms/xks/v1/keys/{id}/metadata",
            post(|| async { "m" }),
        )
        .route(
            "/{prefix}/kms/xks/v1/keys/{id}/encrypt",
            post(|| async { "e" }),
        )
        .route(
            "/{prefix}/kms/xks/v1/keys/{id}/decrypt",
            post(|| async { "d" }),
        );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("router/axum_oneshot", |b| {
        b.iter(|| {
            let req = http::Request::post(PATH)
                .body(axum::body::Body::empty())
                .unwrap();
            let app = app.clone();
            black_box(rt.block_on(app.oneshot(req)).unwrap())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
