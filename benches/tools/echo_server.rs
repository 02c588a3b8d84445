//! The transport floor for `make bench`: a bare HTTPS server on the same stack keyward uses
//! (tokio, hyper 1 HTTP/1.1 keep-alive, rustls with ring) that reads each POST body and answers
//! 200 with a fixed JSON body the size of an encrypt answer, doing no SigV4, JSON or crypto.
//!
//! `keyward bench` measures its server CPU per request exactly as it measures keyward's; the
//! difference is what keyward's XKS work (plus any overhead) costs. It prints a line in
//! `keyward demo`'s JSON format so `keyward bench --demo FILE` can drive it.
//!
//! Usage: bench_echo_server DIR [ANSWER_BYTES] [THREADS]   (DIR receives ca.pem)

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let answer_bytes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(560);
    let threads: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&leaf_key, &ca, &ca_key)?;
    std::fs::create_dir_all(&dir)?;
    let ca_path = std::fs::canonicalize(&dir)?.join("echo-ca.pem");
    std::fs::write(&ca_path, ca.pem())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    // An answer shaped like an encrypt response, padded to the requested size.
    let mut answer = String::from("{\"ciphertext\":\"");
    let fixed = "\",\"initializationVector\":\"AAAAAAAAAAAAAAAA\",\"authenticationTag\":\"AAAAAAAAAAAAAAAAAAAAAA==\",\"ciphertextMetadata\":\"AQE=\"}";
    while answer.len() + fixed.len() < answer_bytes {
        answer.push('A');
    }
    answer.push_str(fixed);
    let answer = Bytes::from(answer);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        println!(
            "{}",
            serde_json::json!({
                "url": format!("https://{addr}"), "uri_prefix": "", "region": "us-east-1",
                "access_key_id": "ECHOECHOECHOECHOECHO",
                "secret_access_key": "echo-server-checks-no-signature-000000000000",
                "ca_cert": ca_path, "key_ids": ["echo"], "pid": std::process::id(),
            })
        );
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(answer))
                                    .unwrap_or_default(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    })
}
