//! Live attestation of the running appliance: an unauthenticated `POST /attestation` on its own
//! listener that answers a caller's 32-byte nonce with a fresh [`EvidenceBundle`] bound to
//!
//! ```text
//! V = SHA-512("keyward/1 runtime" ‖ nonce ‖ SHA-256(XKS TLS certificate's SubjectPublicKeyInfo))
//! ```
//!
//! or, when the appliance also binds the key that signs its audit-log checkpoints (it always
//! does; the bundle then carries that key as `audit_key`),
//!
//! ```text
//! V = SHA-512("keyward/2 runtime" ‖ nonce ‖ SHA-256(SPKI) ‖ SHA-256(audit key, SEC1))
//! ```
//!
//! as SNP REPORT_DATA, NitroTPM `user_data` (with `nonce` = the caller's nonce) and TPM
//! qualifying data. An auditor who reads the XKS endpoint's certificate separately and finds
//! the same SPKI hash inside hardware-signed evidence knows the TLS endpoint AWS KMS talks to
//! terminates inside the attested VM.
//!
//! Transport decision: **plain HTTP** on a dedicated address (never the admin port, never an
//! XKS path). The answer is self-authenticating (hardware-signed, bound to the caller's nonce
//! and to the XKS key), so TLS here would add no assurance, and serving the XKS certificate on
//! a second, unauthenticated listener would expose the XKS private key to more code for
//! nothing. The client side ([`fetch_evidence`]) also accepts `https://` URLs (for a TLS
//! terminator in front) without trusting their certificate: trust comes from the evidence.
//!
//! Each answer costs a hardware report, so requests are rate-limited by a token bucket (429
//! with `Retry-After` when empty) and attesters run on the blocking pool, one at a time.
//!
//! Unauthenticated callers cannot hold the appliance's descriptors: the listener serves at most
//! [`LiveConfig::max_connections`] connections (sized from the descriptor limit, see
//! [`keyward_secret::FdBudget`]); one past the cap is answered a fixed 429 without being read and closed
//! at once. Each connection carries one request (no keep-alive), whose headers must arrive
//! within [`LiveConfig::header_timeout`] and body within [`LiveConfig::body_timeout`]; the whole
//! exchange is bounded by [`LiveConfig::conn_deadline`].
//!
//! The request side is an axum [`router`] (one route, JSON 404/405, tower-http's body cap and
//! body deadline) served per connection through hyper, which keeps the cap and the deadlines
//! above. Request: `{"nonce": "<base64 of 32 bytes>"}` (at most 1 KiB). Answer: the bundle as JSON
//! (`keyward verify --evidence` reads the same form).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use sha2::{Digest, Sha512};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::{Attester, Binding};
use keyward_evidence::EvidenceBundle;
use keyward_pki::SpkiError;

/// The path.
pub const PATH: &str = "/attestation";
/// Domain separator of the runtime binding.
pub const RUNTIME_LABEL: &[u8] = b"keyward/1 runtime";
const MAX_BODY: usize = 1024;

/// Domain separator of the runtime binding that also covers the audit checkpoint key.
pub const RUNTIME_LABEL_AUDIT: &[u8] = b"keyward/2 runtime";

/// `SHA-512("keyward/1 runtime" ‖ nonce ‖ spki_sha256)`.
pub fn runtime_binding_value(nonce: &[u8; 32], xks_spki_sha256: &[u8; 32]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(RUNTIME_LABEL);
    h.update(nonce);
    h.update(xks_spki_sha256);
    h.finalize().into()
}

/// `SHA-512("keyward/2 runtime" ‖ nonce ‖ spki_sha256 ‖ SHA-256(audit_key))`, or the
/// `keyward/1` value when there is no audit key.
pub fn runtime_binding_value_with_audit(
    nonce: &[u8; 32],
    xks_spki_sha256: &[u8; 32],
    audit_key: Option<&[u8]>,
) -> [u8; 64] {
    let Some(k) = audit_key else {
        return runtime_binding_value(nonce, xks_spki_sha256);
    };
    let mut h = Sha512::new();
    h.update(RUNTIME_LABEL_AUDIT);
    h.update(nonce);
    h.update(xks_spki_sha256);
    h.update(sha2::Sha256::digest(k));
    h.finalize().into()
}

/// The [`Binding`] every attester gets for a live request.
pub fn runtime_binding(nonce: &[u8; 32], xks_spki_sha256: &[u8; 32]) -> Binding {
    runtime_binding_with_audit(nonce, xks_spki_sha256, None)
}

/// [`runtime_binding`], also covering the audit checkpoint key when there is one.
pub fn runtime_binding_with_audit(
    nonce: &[u8; 32],
    xks_spki_sha256: &[u8; 32],
    audit_key: Option<&[u8]>,
) -> Binding {
    let v = runtime_binding_value_with_audit(nonce, xks_spki_sha256, audit_key);
    Binding {
        report_data: v,
        user_data: v.to_vec(),
        nonce: Some(nonce.to_vec()),
        public_key: None,
    }
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo: the one SPKI hash, keyward-pki's
/// (the name the live-attestation callers know it by).
pub use keyward_pki::spki_sha256 as spki_sha256_of_cert;

/// Why the SPKI hash of a PEM certificate file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PemSpkiError {
    #[error("{}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no certificate", path.display())]
    NoCertificate { path: std::path::PathBuf },
    #[error("{}: {source}", path.display())]
    Pem {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Spki {
        path: std::path::PathBuf,
        #[source]
        source: SpkiError,
    },
}

/// SHA-256 of the SPKI of the first certificate in a PEM file (the XKS certificate chain).
pub fn spki_sha256_of_pem_file(path: &std::path::Path) -> Result<[u8; 32], PemSpkiError> {
    let pem = std::fs::read(path).map_err(|source| PemSpkiError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rd = std::io::BufReader::new(pem.as_slice());
    let first = rustls_pemfile::certs(&mut rd)
        .next()
        .ok_or_else(|| PemSpkiError::NoCertificate {
            path: path.to_path_buf(),
        })?
        .map_err(|source| PemSpkiError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    spki_sha256_of_cert(first.as_ref()).map_err(|source| PemSpkiError::Spki {
        path: path.to_path_buf(),
        source,
    })
}

/// Where the served key's SPKI hash comes from when it can change while serving (the
/// appliance-managed TLS key after `tls install` of a chain for a new key): read at each
/// request, so the evidence binds whatever key the XKS listener serves now.
pub type SpkiSource = Arc<dyn Fn() -> [u8; 32] + Send + Sync>;

/// [`spawn`], the evidence bound to the SPKI hash `spki` returns at each request and, when
/// given, to the audit checkpoint key `audit_key` (SEC1), which the bundle then carries.
pub async fn spawn_following(
    listen: SocketAddr,
    attesters: Arc<Vec<Box<dyn Attester>>>,
    spki: SpkiSource,
    audit_key: Option<Vec<u8>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind(listen).await?;
    let addr = l.local_addr()?;
    let mut cfg = LiveConfig::new(attesters, spki());
    cfg.follow = Some(spki);
    cfg.audit_key = audit_key;
    let task = tokio::spawn(serve_with(l, cfg, shutdown));
    Ok((addr, task))
}

/// Bind `listen` and serve live attestation on it in a task until `shutdown` resolves.
/// Returns the bound address (the port may have been chosen by the system).
pub async fn spawn(
    listen: SocketAddr,
    attesters: Arc<Vec<Box<dyn Attester>>>,
    xks_spki_sha256: [u8; 32],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind(listen).await?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(serve(l, attesters, xks_spki_sha256, shutdown));
    Ok((addr, task))
}

/// A token bucket: `capacity` tokens, refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(capacity: u32, per_second: f64) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            per_second: per_second.max(0.001),
            state: Mutex::new((capacity, Instant::now())),
        }
    }
    /// Take one token, or say how long until one is available.
    pub fn take(&self) -> Result<(), Duration> {
        // A poisoned lock only means another request panicked mid-update; the numbers are
        // still usable.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.capacity);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.per_second))
        }
    }
}

/// Server settings.
#[derive(Clone)]
pub struct LiveConfig {
    pub attesters: Arc<Vec<Box<dyn Attester>>>,
    pub xks_spki_sha256: [u8; 32],
    /// When set, the SPKI hash is read from here at each request (and `xks_spki_sha256` is
    /// not used).
    pub follow: Option<SpkiSource>,
    /// The audit checkpoint key (SEC1) bound into every answer (`keyward/2 runtime`).
    pub audit_key: Option<Vec<u8>>,
    pub bucket: Arc<TokenBucket>,
    /// One hardware request at a time.
    pub gate: Arc<tokio::sync::Semaphore>,
    /// Connections served at once; more are answered 429 and closed unread.
    pub max_connections: usize,
    /// From accept to the end of the request headers.
    pub header_timeout: Duration,
    /// From the headers to the end of the (1 KiB at most) body.
    pub body_timeout: Duration,
    /// The whole connection, answer included.
    pub conn_deadline: Duration,
}

impl LiveConfig {
    /// Default limits: bursts of 5, then 1 request per second; the descriptor budget's
    /// attestation share of connections; 5 s for headers, 5 s for the body, 30 s in all.
    pub fn new(attesters: Arc<Vec<Box<dyn Attester>>>, xks_spki_sha256: [u8; 32]) -> Self {
        Self {
            attesters,
            xks_spki_sha256,
            follow: None,
            audit_key: None,
            bucket: Arc::new(TokenBucket::new(5, 1.0)),
            gate: Arc::new(tokio::sync::Semaphore::new(1)),
            max_connections: keyward_secret::FdBudget::current().attestation,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            conn_deadline: Duration::from_secs(30),
        }
    }
}

/// The answer to a connection past the cap, written without reading the request.
const OVER_CAP: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 32\r\n\r\n{\"error\":\"too many connections\"}";

/// Serve `POST /attestation` on `listener` until `shutdown` resolves, with default limits.
pub async fn serve(
    listener: TcpListener,
    attesters: Arc<Vec<Box<dyn Attester>>>,
    xks_spki_sha256: [u8; 32],
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listener,
        LiveConfig::new(attesters, xks_spki_sha256),
        shutdown,
    )
    .await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    cfg: LiveConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut conns = JoinSet::new();
    let cap = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "attestation: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = cap.clone().try_acquire_owned() else {
                    // Over the cap: a fixed answer if the socket takes it now, then close.
                    let _ = tcp.try_write(OVER_CAP);
                    drop(tcp);
                    continue;
                };
                let cfg = cfg.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    let deadline = cfg.conn_deadline;
                    let _ = tokio::time::timeout(deadline, serve_conn(tcp, peer, cfg)).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
}

/// The routes: `POST /attestation`, a JSON 405 (with `Allow: POST`) for other methods on it and a
/// JSON 404 elsewhere. The body is capped at 1 KiB (413) and must arrive within
/// [`LiveConfig::body_timeout`] (408) by tower-http layers; the connection cap, the header
/// deadline and the whole-connection deadline are the accept loop's ([`serve_with`]).
pub fn router(cfg: LiveConfig) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route(
            PATH,
            post(attest).fallback(|| async {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
                r
            }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "unknown path") })
        // Inner first: the limit wraps the body the timeout already wraps, so an oversized body
        // is told apart (413) from a slow one (408).
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            cfg.body_timeout,
        ))
        .with_state(cfg)
}

async fn serve_conn(tcp: tokio::net::TcpStream, _peer: SocketAddr, cfg: LiveConfig) {
    let header_timeout = cfg.header_timeout;
    let service = hyper_util::service::TowerToHyperService::new(router(cfg));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(false)
        .max_buf_size(16 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        .await;
}

type Answer = http::Response<axum::body::Body>;

fn error(status: StatusCode, msg: &str) -> Answer {
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut r = http::Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveRequest {
    nonce: String,
}

/// `POST /attestation`: nonce in, a fresh bundle bound to it and to the XKS key out.
async fn attest(
    axum::extract::State(cfg): axum::extract::State<LiveConfig>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Answer {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 1 KiB")
        }
        // The body-timeout layer ends a slow body with an error (or the peer went away).
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
    };
    let nonce: [u8; 32] = match serde_json::from_slice::<LiveRequest>(&body)
        .ok()
        .and_then(|r| STANDARD.decode(r.nonce.as_bytes()).ok())
        .and_then(|n| <[u8; 32]>::try_from(n).ok())
    {
        Some(n) => n,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "body must be {\"nonce\": \"<base64 of 32 bytes>\"}",
            )
        }
    };
    if let Err(wait) = cfg.bucket.take() {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&secs) {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        return r;
    }
    let Ok(_permit) = cfg.gate.clone().acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let spki = cfg
        .follow
        .as_ref()
        .map_or(cfg.xks_spki_sha256, |follow| follow());
    let binding = runtime_binding_with_audit(&nonce, &spki, cfg.audit_key.as_deref());
    let attesters = cfg.attesters.clone();
    let audit_key = cfg.audit_key.clone();
    let produced = tokio::task::spawn_blocking(move || {
        let mut bundle = EvidenceBundle {
            version: 1,
            report_data: Some(binding.report_data.to_vec()),
            audit_key,
            ..Default::default()
        };
        for a in attesters.iter() {
            a.attest(&binding, &mut bundle)
                .map_err(|e| format!("{}: {e}", a.name()))?;
        }
        Ok::<_, String>(bundle)
    })
    .await;
    match produced {
        Ok(Ok(bundle)) => match serde_json::to_vec(&bundle) {
            Ok(json) => {
                let mut r = http::Response::new(axum::body::Body::from(json));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                r
            }
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"),
        },
        Ok(Err(e)) => {
            tracing::warn!("live attestation failed: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, "attestation failed")
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "attester panicked"),
    }
}

// ---------------------------------------------------------------------------------------------
// Client side, for `keyward verify --url` (the CLI fetches; the verifier library judges).
// ---------------------------------------------------------------------------------------------

/// Errors of the client helpers.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
    /// No TCP connection within 10 s.
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The URL's host is not a name rustls can send.
    #[error("connecting to {addr}: {source}")]
    ServerName {
        addr: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    #[error("connecting to {addr}: TLS: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the XKS endpoint sent no certificate")]
    NoCertificate,
    #[error("{0}")]
    Spki(#[from] SpkiError),
    /// The HTTP/1.1 exchange failed (handshake or request).
    #[error("{0}")]
    Http(#[source] hyper::Error),
    #[error("{0}")]
    Request(#[source] http::Error),
    #[error("no answer within 60 s")]
    Timeout,
    #[error("reading the answer: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A non-2xx answer, with the start of its body.
    #[error("{status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("evidence JSON: {0}")]
    Json(#[source] serde_json::Error),
}

struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str, default_path: &str) -> Result<Target, FetchError> {
    let bad = |m: &str| FetchError::Url(url.to_string(), m.to_string());
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = match uri.path() {
        "" | "/" => default_path.to_string(),
        p => p.to_string(),
    };
    Ok(Target {
        https,
        host,
        port,
        path,
    })
}

/// A rustls verifier that accepts any server certificate: used only where trust comes from
/// elsewhere (the attestation evidence), to read the certificate the server presents.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn accept_any_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
                .with_no_client_auth()
        });
    // with_safe_default_protocol_versions only fails for a provider without TLS 1.2/1.3
    // cipher suites; ring's default provider has both. Fall back to the same builder anyway.
    Arc::new(cfg.unwrap_or_else(|_| {
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    }))
}

async fn connect_tls(
    t: &Target,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, FetchError> {
    let addr = format!("{}:{}", t.host, t.port);
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((t.host.as_str(), t.port)),
    )
    .await
    .map_err(|_| FetchError::ConnectTimeout(addr.clone()))?
    .map_err(|source| FetchError::Connect {
        addr: addr.clone(),
        source,
    })?;
    let name = rustls_pki_types::ServerName::try_from(t.host.clone()).map_err(|source| {
        FetchError::ServerName {
            addr: addr.clone(),
            source,
        }
    })?;
    tokio_rustls::TlsConnector::from(accept_any_client())
        .connect(name, tcp)
        .await
        .map_err(|source| FetchError::Tls { addr, source })
}

/// Connect to an XKS endpoint (`https://HOST[:PORT]`) and return SHA-256 of the SPKI of the
/// certificate it serves. The certificate is read, not trusted.
pub async fn fetch_spki_sha256(xks_url: &str) -> Result<[u8; 32], FetchError> {
    let t = parse_url(xks_url, "/")?;
    if !t.https {
        return Err(FetchError::Url(
            xks_url.into(),
            "the XKS endpoint is https".into(),
        ));
    }
    let tls = connect_tls(&t).await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(FetchError::NoCertificate)?;
    Ok(spki_sha256_of_cert(cert.as_ref())?)
}

async fn post<S>(io: S, t: &Target, body: Vec<u8>) -> Result<Vec<u8>, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(FetchError::Http)?;
    tokio::spawn(conn);
    let req = http::Request::post(t.path.as_str())
        .header(http::header::HOST, format!("{}:{}", t.host, t.port))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(FetchError::Request)?;
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .map_err(|_| FetchError::Timeout)?
        .map_err(FetchError::Http)?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), 4 * 1024 * 1024)
        .collect()
        .await
        .map_err(FetchError::Body)?
        .to_bytes();
    if !status.is_success() {
        return Err(FetchError::Status {
            status,
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        });
    }
    Ok(bytes.to_vec())
}

/// POST `nonce` to a live-attestation URL (`http[s]://HOST:PORT[/attestation]`) and parse the
/// bundle it answers.
pub async fn fetch_evidence(url: &str, nonce: &[u8; 32]) -> Result<EvidenceBundle, FetchError> {
    let t = parse_url(url, PATH)?;
    let body = serde_json::json!({ "nonce": STANDARD.encode(nonce) })
        .to_string()
        .into_bytes();
    let bytes = if t.https {
        post(connect_tls(&t).await?, &t, body).await?
    } else {
        let addr = format!("{}:{}", t.host, t.port);
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((t.host.as_str(), t.port)),
        )
        .await
        .map_err(|_| FetchError::ConnectTimeout(addr.clone()))?
        .map_err(|source| FetchError::Connect { addr, source })?;
        post(tcp, &t, body).await?
    };
    serde_json::from_slice(&bytes).map_err(FetchError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    fn cfg() -> LiveConfig {
        LiveConfig::new(Arc::new(Vec::new()), [7; 32])
    }

    async fn call(method: &str, path: &str, body: Vec<u8>) -> (StatusCode, String, Option<String>) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::from(body))
            .unwrap();
        let r = router(cfg()).oneshot(req).await.unwrap();
        let status = r.status();
        let allow = r
            .headers()
            .get(http::header::ALLOW)
            .map(|v| v.to_str().unwrap().to_string());
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&b).into_owned(), allow)
    }

    #[tokio::test]
    async fn routes_methods_and_limits_answer_json_errors() {
        let (s, b, _) = call("POST", "/elsewhere", b"{}".to_vec()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(b.contains("unknown path"), "{b}");
        let (s, b, allow) = call("GET", PATH, Vec::new()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert!(b.contains("use POST"), "{b}");
        assert_eq!(allow.as_deref(), Some("POST"));
        let (s, _, _) = call("POST", PATH, vec![b' '; MAX_BODY + 1]).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        let (s, b, _) = call("POST", PATH, br#"{"nonce":"c2hvcnQ="}"#.to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(b.contains("32 bytes"), "{b}");
    }

    #[tokio::test]
    async fn a_good_nonce_gets_a_bundle_bound_to_it() {
        let nonce = [9u8; 32];
        let body = serde_json::json!({ "nonce": STANDARD.encode(nonce) }).to_string();
        let (s, b, _) = call("POST", PATH, body.into_bytes()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let bundle: EvidenceBundle = serde_json::from_str(&b).unwrap();
        let want = runtime_binding_value(&nonce, &[7; 32]);
        assert_eq!(bundle.report_data.as_deref(), Some(&want[..]));
    }

    #[tokio::test]
    async fn a_body_slower_than_the_deadline_gets_408() {
        let mut c = cfg();
        c.body_timeout = Duration::from_millis(100);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        tx.send(Ok(Bytes::from_static(b"{\"nonce\":")))
            .await
            .unwrap();
        // `tx` stays alive: the rest of the body never comes.
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let req = http::Request::builder()
            .method("POST")
            .uri(PATH)
            .body(axum::body::Body::from_stream(stream))
            .unwrap();
        let r = router(c).oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        drop(tx);
    }
}
