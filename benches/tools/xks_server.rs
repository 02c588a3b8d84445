//! `bench_xks_server DIR [THREADS]`: keyward's XKS listener (`xks::XksServer`: rustls, hyper,
//! SigV4, handlers, audit log to DIR/audit.log) over an in-memory key view, printing a line in
//! `keyward demo`'s JSON format. `make bench` uses it next to `keyward demo` to measure the
//! request path alone (no admin listener, no key-store files), and in place of the demo when
//! the demo cannot start.

use std::sync::Arc;

use anyhow::Context;
use keyward_audit::{AuditLog, AuditSink};
use keyward_xks::{InMemoryStore, Limits, TlsSettings, XksServer, XksSettings};

#[path = "fixture.rs"]
mod fixture;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .context("usage: bench_xks_server DIR [THREADS]")?,
    );
    let threads: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&leaf_key, &ca, &ca_key)?;
    let ca_path = dir.join("xks-ca.pem");
    std::fs::write(&ca_path, ca.pem())?;

    let view = fixture::view();
    let audit = Arc::new(AuditLog::start(AuditSink::File(dir.join("audit.log")))?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = XksServer::bind(XksSettings {
            listen: "127.0.0.1:0".parse()?,
            tls: Some(TlsSettings {
                cert_chain_pem: leaf.pem().into_bytes(),
                key_pem: leaf_key.serialize_pem().into_bytes().into(),
                client_auth: None,
            }),
            insecure_http: false,
            limits: Limits::default(),
            instance_id: "bench".into(),
        })
        .await?;
        let addr = server.local_addr()?;
        println!(
            "{}",
            serde_json::json!({
                "url": format!("https://{addr}"), "uri_prefix": fixture::PREFIX,
                "region": fixture::REGION, "access_key_id": fixture::AK,
                "secret_access_key": fixture::SK, "ca_cert": ca_path,
                "key_ids": [fixture::KEY_ID], "pid": std::process::id(),
            })
        );
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        server
            .run(view, audit.clone(), Arc::new(InMemoryStore), shutdown)
            .await?;
        audit.shutdown()?;
        Ok::<(), anyhow::Error>(())
    })
}
