//! The XKS listener: TLS (rustls, ring provider) or, only when asked for explicitly, plain HTTP;
//! hyper 1 with HTTP/1.1 keep-alive and HTTP/2 by ALPN; optional mutual TLS; graceful shutdown.
//!
//! The platform calls [`XksServer::bind`] (the listener accepts from then on, so it can report
//! READY), then [`XksServer::run`] on its own multi-thread runtime. [`CertHandle::install`]
//! swaps the server certificate at run time (new handshakes use it; open connections keep theirs).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use super::error::XksError;
use super::handlers::{self, Ctx, Limits, Reply, SMALL_BODY};
use super::health::{self, Health, StoreProbe};
use super::watchdog::{ConnGuard, Deadlines, Signal, Watchdog};
use keyward_audit::AuditLog;
use keyward_keystore::SharedView;

/// How the XKS listener is set up. The platform maps its configuration onto this.
#[derive(Debug, Clone)]
pub struct XksSettings {
    pub listen: SocketAddr,
    /// TLS; `None` means plain HTTP, which needs `insecure_http`.
    pub tls: Option<TlsSettings>,
    /// Allow plain HTTP (tests and benchmarks only).
    pub insecure_http: bool,
    pub limits: Limits,
    /// The id this instance reports in `ekmFleetDetails`.
    pub instance_id: String,
}

/// Server certificate and optional client authentication.
#[derive(Clone)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_chain_pem: Vec<u8>,
    /// PEM private key: PKCS#8, SEC1 or PKCS#1.
    pub key_pem: Zeroizing<Vec<u8>>,
    pub client_auth: Option<ClientAuth>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Mutual TLS: the client certificate must chain to `ca_pem` and name one of `allowed_names`
/// as its subject CN or a SAN dNSName (e.g. `cks.kms.us-east-1.amazonaws.com`).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub ca_pem: Vec<u8>,
    pub allowed_names: Vec<String>,
}

/// Errors setting up or running the listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS settings are unusable for a reason of their own (the message says which; no
    /// cause to keep).
    #[error("TLS setup: {0}")]
    Tls(&'static str),
    /// A PEM input could not be read (`what` names it: "certificate chain PEM", ...).
    #[error("TLS setup: {what}")]
    Pem {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// rustls refused part of the configuration (`what` names the step).
    #[error("TLS setup: {what}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the client CA.
    #[error("TLS setup: client certificate verifier")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("plain HTTP needs the explicit insecure_http setting")]
    InsecureNotAllowed,
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listener failed")]
    Io(#[from] io::Error),
    /// The health key could not be made.
    #[error("health key")]
    Health(#[source] keyward_secret::SecretError),
    /// The blocking task making the health key panicked or was cancelled.
    #[error("health key task")]
    HealthTask(#[source] tokio::task::JoinError),
}

/// A bound XKS listener, not yet serving.
pub struct XksServer {
    listener: TcpListener,
    tls: Option<(TlsAcceptor, CertHandle)>,
    limits: Limits,
    instance_id: String,
}

/// Swaps the server certificate at run time.
#[derive(Clone)]
pub struct CertHandle(Arc<ArcSwap<CertifiedKey>>);

impl CertHandle {
    /// A handle serving `key` until something else is installed.
    pub fn new(key: CertifiedKey) -> Self {
        CertHandle(Arc::new(ArcSwap::from_pointee(key)))
    }

    /// Install a new chain and key (PEM). New handshakes use it at once.
    pub fn install(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), ServerError> {
        self.0.store(Arc::new(certified_key(chain_pem, key_pem)?));
        Ok(())
    }

    /// Install a chain with its signing key, already checked to match. New handshakes use it
    /// at once; open connections keep theirs.
    pub fn install_certified(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }

    /// What new handshakes are served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.load_full()
    }

    /// A rustls certificate resolver that always serves this handle's current certificate
    /// (for another listener sharing the same identity, e.g. the admin API).
    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(SwapResolver(self.0.clone()))
    }
}

#[derive(Debug)]
struct SwapResolver(Arc<ArcSwap<CertifiedKey>>);

impl std::fmt::Debug for CertHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertHandle")
    }
}

impl ResolvesServerCert for SwapResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl XksServer {
    /// Build the TLS configuration and bind the listener (it accepts connections from now on;
    /// they are served once [`XksServer::run`] starts). Call inside a Tokio runtime.
    pub async fn bind(settings: XksSettings) -> Result<Self, ServerError> {
        let tls = match &settings.tls {
            Some(t) => {
                let handle = CertHandle::new(certified_key(&t.cert_chain_pem, &t.key_pem)?);
                Some(tls_acceptor(handle, t.client_auth.as_ref())?)
            }
            None if settings.insecure_http => None,
            None => return Err(ServerError::InsecureNotAllowed),
        };
        Self::bind_inner(settings, tls).await
    }

    /// Like [`XksServer::bind`], but serve the certificate of `cert` (the appliance-managed TLS
    /// identity, swapped at run time through the same handle) instead of PEM files;
    /// `settings.tls` and `settings.insecure_http` are ignored.
    pub async fn bind_with_cert(
        settings: XksSettings,
        cert: CertHandle,
        client_auth: Option<&ClientAuth>,
    ) -> Result<Self, ServerError> {
        let tls = Some(tls_acceptor(cert, client_auth)?);
        Self::bind_inner(settings, tls).await
    }

    async fn bind_inner(
        settings: XksSettings,
        tls: Option<(TlsAcceptor, CertHandle)>,
    ) -> Result<Self, ServerError> {
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            tls,
            limits: settings.limits,
            instance_id: settings.instance_id,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The handle that swaps the server certificate (`None` for plain HTTP).
    pub fn cert_handle(&self) -> Option<CertHandle> {
        self.tls.as_ref().map(|(_, h)| h.clone())
    }

    /// Serve until `shutdown` completes, then stop accepting, let open requests finish (at most
    /// 10 s) and return. The caller then calls `audit.shutdown()` to flush the last lines.
    pub async fn run(
        self,
        view: SharedView,
        audit: impl Into<AuditLog>,
        probe: Arc<dyn StoreProbe>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let id = self.instance_id.clone();
        let health = tokio::task::spawn_blocking(move || Health::new(probe, id))
            .await
            .map_err(ServerError::HealthTask)?
            .map_err(ServerError::Health)?;
        let limits = self.limits;
        let shared = Arc::new(Serving {
            ctx: Ctx {
                view,
                health: health.clone(),
                audit: audit.into(),
                limits,
            },
            adm: Admission::new(&limits),
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(health::refresher(health, stop_rx.clone()));
        let mut conns = tokio::task::JoinSet::new();
        // Connection caps: a permit per served connection, and a few more for connections past
        // the cap that are only answered 429 (see `serve_overflow`). Beyond both, a connection
        // is closed as soon as it is accepted, so the descriptor is freed at once.
        let max_conns = limits.max_connections.max(1);
        let conn_gate = Arc::new(Semaphore::new(max_conns));
        let overflow_gate = Arc::new(Semaphore::new(limits.max_overflow));
        let mut dog = Watchdog::new(Deadlines::new(
            limits.header_timeout,
            limits.conn_idle,
            limits.request_timeout,
            max_conns / 4 * 3,
        ));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let (tcp, _peer) = tokio::select! {
                _ = tick.tick() => {
                    dog.sweep();
                    let n = shared.adm.throttled.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        tracing::warn!(throttled = n, open = dog.len(), "xks: overloaded, answered 429 ThrottlingException");
                    }
                    continue;
                }
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "xks: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let tls = self.tls.as_ref().map(|(a, _)| a.clone());
            match conn_gate.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = shared.clone();
                    let guard = dog.watch();
                    conns.spawn(async move {
                        let _permit = permit;
                        match tls {
                            Some(acceptor) => match tokio::time::timeout(
                                TLS_HANDSHAKE_TIMEOUT,
                                acceptor.accept(tcp),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => {
                                    // ALPN decided the protocol: no need to sniff the first bytes.
                                    let proto = match stream.get_ref().1.alpn_protocol() {
                                        Some(b"h2") => Proto::Http2,
                                        _ => Proto::Http1,
                                    };
                                    serve_connection(stream, proto, shared, guard).await
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "xks: TLS handshake failed")
                                }
                                Err(_) => tracing::debug!("xks: TLS handshake timed out"),
                            },
                            None => serve_connection(tcp, Proto::Auto, shared, guard).await,
                        }
                    });
                }
                Err(_) => match overflow_gate.clone().try_acquire_owned() {
                    Ok(permit) => {
                        shared.adm.throttled.fetch_add(1, Ordering::Relaxed);
                        conns.spawn(async move {
                            let _permit = permit;
                            let _ =
                                tokio::time::timeout(OVERFLOW_DEADLINE, serve_overflow(tcp, tls))
                                    .await;
                        });
                    }
                    Err(_) => {
                        shared.adm.throttled.fetch_add(1, Ordering::Relaxed);
                        drop(tcp);
                    }
                },
            }
            // Reap finished connections so the set does not grow.
            while conns.try_join_next().is_some() {}
        }
        let _ = stop_tx.send(true);
        dog.drain_all();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
        shared.ctx.audit.flush().ok();
        Ok(())
    }
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection past the cap is kept: its handshake, one request's headers and the
/// 429 answer.
const OVERFLOW_DEADLINE: Duration = Duration::from_secs(3);

/// What every connection task shares: the request context and the admission counters.
struct Serving {
    ctx: Ctx,
    adm: Admission,
}

/// Admission control across connections: requests in flight, and bytes of large bodies being
/// buffered before authentication. A request costs one increment and one decrement of
/// `in_flight` (and two more atomics only for a body over [`SMALL_BODY`]).
struct Admission {
    in_flight: AtomicUsize,
    max_in_flight: usize,
    big_bytes: AtomicUsize,
    body_budget: usize,
    /// Requests and connections answered 429 since the last tick (logged once a second).
    throttled: AtomicU64,
}

impl Admission {
    fn new(l: &Limits) -> Self {
        Admission {
            in_flight: AtomicUsize::new(0),
            max_in_flight: l.max_in_flight.max(1),
            big_bytes: AtomicUsize::new(0),
            body_budget: l.body_budget,
            throttled: AtomicU64::new(0),
        }
    }

    /// Admit a request that will buffer up to `big` body bytes (0 for a small body).
    fn admit(&self, big: usize) -> Result<Ticket<'_>, &'static str> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err("too many requests in flight; retry");
        }
        let mut t = Ticket { adm: self, big: 0 };
        if big > 0 {
            if self.big_bytes.fetch_add(big, Ordering::Relaxed) + big > self.body_budget {
                self.big_bytes.fetch_sub(big, Ordering::Relaxed);
                return Err("too many large requests in flight; retry");
            }
            t.big = big;
        }
        Ok(t)
    }
}

/// An admitted request; dropping it gives its share back.
struct Ticket<'a> {
    adm: &'a Admission,
    big: usize,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.adm.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.big > 0 {
            self.adm.big_bytes.fetch_sub(self.big, Ordering::Relaxed);
        }
    }
}

/// Serve a connection past the cap: every request on it is answered 429 `ThrottlingException`
/// (KMS retries, on another connection), then it is closed. The caller bounds the whole
/// exchange with [`OVERFLOW_DEADLINE`].
async fn serve_overflow(tcp: tokio::net::TcpStream, tls: Option<TlsAcceptor>) {
    let service = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
        let version = req.version();
        Ok::<_, Infallible>(
            throttled(req.into_body(), version, "too many connections; retry").await,
        )
    });
    match tls {
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let io = TokioIo::new(stream);
            if stream_is_h2(&io) {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(4)
                    .serve_connection(io, service)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(io, service)
                    .await;
            }
        }
        None => {
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1().keep_alive(false);
            b.http2().timer(TokioTimer::new()).max_concurrent_streams(4);
            let _ = b.serve_connection(TokioIo::new(tcp), service).await;
        }
    }
}

fn stream_is_h2(io: &TokioIo<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>) -> bool {
    io.inner().get_ref().1.alpn_protocol() == Some(b"h2")
}

/// The 429 answer. A small body is read first (bounded by the caller's deadline) so that the
/// connection can be reused and the client is not reset before it reads the answer; a larger
/// one is left unread and the connection closed.
async fn throttled(
    body: Incoming,
    version: http::Version,
    msg: &'static str,
) -> http::Response<Full<Bytes>> {
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= SMALL_BODY as u64);
    let mut resp = response(Reply::error(&XksError::Throttling(msg)));
    if small {
        let _ = http_body_util::Limited::new(body, SMALL_BODY)
            .collect()
            .await;
    } else {
        close_after(&mut resp, version);
    }
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}

/// Which HTTP version a connection speaks: fixed by ALPN under TLS, sniffed from the first
/// bytes on plain HTTP (tests and benchmarks; HTTP/2 there means prior knowledge).
#[derive(Debug, Clone, Copy)]
enum Proto {
    Http1,
    Http2,
    Auto,
}

/// Concurrent streams per HTTP/2 connection. Each may buffer a body of up to
/// [`Limits::max_body`] before authentication, and all of them together count against
/// [`Limits::body_budget`] and [`Limits::max_in_flight`].
const MAX_H2_STREAMS: u32 = 64;

/// HTTP/2 connection flow-control window: what a client may send before we read it.
const H2_CONN_WINDOW: u32 = 1024 * 1024;

/// The largest header block: SigV4 requests carry well under 2 KiB of headers.
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// HTTP/1 read buffer (headers must fit in it; body chunks are read through it).
const H1_MAX_BUF: usize = 64 * 1024;

/// HTTP/2 stream window: one request of the largest legal size can be sent without waiting.
fn h2_stream_window(limits: &Limits) -> u32 {
    u32::try_from(limits.max_body)
        .unwrap_or(H2_CONN_WINDOW)
        .clamp(65_535, H2_CONN_WINDOW)
}

/// Serve one connection. Slow-loris and idle protection come from `guard` (see
/// [`super::watchdog`]), not from hyper timers: no timer is armed per request.
async fn serve_connection<S>(io: S, proto: Proto, shared: Arc<Serving>, guard: Arc<ConnGuard>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let g = guard.clone();
    let window = h2_stream_window(&shared.ctx.limits);
    let service = hyper::service::service_fn(move |req| {
        let busy = g.begin();
        let shared = shared.clone();
        async move {
            let r = serve_request(&shared, req).await;
            drop(busy);
            Ok::<_, Infallible>(r)
        }
    });
    let io = TokioIo::new(io);
    match proto {
        Proto::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .header_read_timeout(None)
                .max_buf_size(H1_MAX_BUF)
                .serve_connection(io, service);
            drive(conn, &guard, |c| c.graceful_shutdown()).await;
        }
        Proto::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_H2_STREAMS)
                .initial_stream_window_size(window)
                .initial_connection_window_size(H2_CONN_WINDOW)
                .max_header_list_size(MAX_HEADER_BYTES)
                .serve_connection(io, service);
            drive(conn, &guard, |c| c.graceful_shutdown()).await;
        }
        Proto::Auto => {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .keep_alive(true)
                .header_read_timeout(None)
                .max_buf_size(H1_MAX_BUF);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_H2_STREAMS)
                .initial_stream_window_size(window)
                .initial_connection_window_size(H2_CONN_WINDOW)
                .max_header_list_size(MAX_HEADER_BYTES);
            let conn = builder.serve_connection(io, service);
            drive(conn, &guard, |c| c.graceful_shutdown()).await;
        }
    }
}

/// Run a connection until it ends. When the watchdog asks it to drain, shut it down gracefully
/// (the request in flight finishes, keep-alive ends); when it asks to drop it, stop polling it.
async fn drive<C, E>(conn: C, guard: &ConnGuard, shutdown: impl FnOnce(std::pin::Pin<&mut C>))
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        biased;
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "xks: connection ended");
            }
            return;
        }
        () = guard.wait(Signal::Drain) => shutdown(conn.as_mut()),
    }
    tokio::select! {
        biased;
        _ = conn.as_mut() => {}
        () = guard.wait(Signal::Drop) => tracing::debug!("xks: connection dropped after its grace period"),
    }
}

/// Bodies over the pre-authentication cap but at most this size are read and thrown away
/// (nothing is kept, and it is bounded by the request deadline), so that the client reads our
/// 501 rather than a reset (curl 7.88 over HTTP/2 reports a stream reset after a complete answer
/// as an error); larger ones are answered at once and the connection closed.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

async fn serve_request(s: &Serving, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let ctx = &s.ctx;
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // The declared length (Content-Length, or 0 for a body that is known to be empty).
    let declared = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint()
            .exact()
            .and_then(|n| usize::try_from(n).ok())
    };
    let cap = ctx.limits.max_body;
    let big = match declared {
        Some(n) if n <= SMALL_BODY => 0,
        Some(n) if n > cap => 0, // not kept: drained or refused below
        Some(n) => n,
        None => cap,
    };
    let _ticket = match s.adm.admit(big) {
        Ok(t) => t,
        Err(msg) => {
            s.adm.throttled.fetch_add(1, Ordering::Relaxed);
            return throttled(body, parts.version, msg).await;
        }
    };
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        let mut resp = response(handlers::oversized(ctx, parts.uri.path(), started));
        close_after(&mut resp, parts.version);
        return resp;
    }
    let body = match read_body(body, cap, declared).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            let mut resp = response(handlers::oversized(ctx, parts.uri.path(), started));
            close_after(&mut resp, parts.version);
            return resp;
        }
        Err(()) => {
            let e = XksError::Validation("request body could not be read".into());
            return response(Reply::error(&e));
        }
    };
    let authority = parts.uri.authority().map(|a| a.as_str());
    let req = handlers::Request {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        authority,
        body: &body,
    };
    response(handlers::handle(ctx, &req, started))
}

/// Read the body: `Ok(None)` when it exceeds `limit`. Nothing past `limit` is kept: the rest
/// is read and dropped up to [`DRAIN_LIMIT`] (so the client gets our answer rather than a
/// reset), then reading stops. A single-frame body is not copied.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    declared: Option<usize>,
) -> Result<Option<Bytes>, ()> {
    let mut first: Option<Bytes> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ())?.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            if total > DRAIN_LIMIT {
                return Ok(None);
            }
            first = None;
            buf = Vec::new();
            continue;
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            f => {
                if buf.is_empty() {
                    buf.reserve(declared.unwrap_or(0).min(limit));
                }
                if let Some(f) = f {
                    buf.extend_from_slice(&f);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > limit {
        return Ok(None);
    }
    Ok(Some(first.unwrap_or_else(|| Bytes::from(buf))))
}

/// Ask an HTTP/1 client to close after this answer (its body was not read to the end). HTTP/2
/// has no such header (the stream is reset instead, by hyper): adding it there would make the
/// answer malformed.
fn close_after(resp: &mut http::Response<Full<Bytes>>, version: http::Version) {
    if version <= http::Version::HTTP_11 {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
}

fn response(r: Reply) -> http::Response<Full<Bytes>> {
    let ct = if r.json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut resp = http::Response::new(Full::new(r.body));
    *resp.status_mut() =
        http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    if r.allow_post {
        resp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    }
    resp
}

/// The spec's four suites (TLS 1.3: AES-256-GCM, ChaCha20-Poly1305; TLS 1.2: ECDHE-RSA and
/// ECDHE-ECDSA with AES-256-GCM), all forward-secret, on the ring provider.
#[cfg(not(feature = "fips"))]
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

/// The FIPS build: rustls's AWS-LC FIPS provider (only FIPS-approved suites, key exchange
/// groups and signature schemes), narrowed to the spec's suites that FIPS approves:
/// ChaCha20-Poly1305 is not one, so TLS 1.3 offers AES-256-GCM only.
#[cfg(feature = "fips")]
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut p = rustls::crypto::default_fips_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

#[cfg(not(feature = "fips"))]
fn signing_key(
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    rustls::crypto::ring::sign::any_supported_type(key)
}

#[cfg(feature = "fips")]
fn signing_key(
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    rustls::crypto::aws_lc_rs::sign::any_supported_type(key)
}

#[cfg(not(feature = "fips"))]
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    rustls::crypto::ring::Ticketer::new()
}

#[cfg(feature = "fips")]
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    rustls::crypto::aws_lc_rs::Ticketer::new()
}

fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, ServerError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &chain_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|source| ServerError::Pem {
            what: "certificate chain PEM",
            source,
        })?;
    if chain.is_empty() {
        return Err(ServerError::Tls("no certificate in the chain PEM"));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|source| ServerError::Pem {
            what: "private key PEM",
            source,
        })?
        .ok_or_else(|| ServerError::Tls("no PKCS#8, SEC1 or PKCS#1 private key in the key PEM"))?;
    let signer = signing_key(&key).map_err(|source| ServerError::Rustls {
        what: "unsupported private key",
        source,
    })?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|source| ServerError::Rustls {
        what: "key does not match the certificate",
        source,
    })?;
    Ok(ck)
}

fn tls_acceptor(
    handle: CertHandle,
    client_auth: Option<&ClientAuth>,
) -> Result<(TlsAcceptor, CertHandle), ServerError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| ServerError::Rustls {
            what: "protocol versions",
            source,
        })?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SwapResolver(handle.0.clone())));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(8192);
    if let Ok(t) = ticketer() {
        cfg.ticketer = t;
    }
    // The FIPS build checks what it built: rustls says FIPS only when every part of the
    // configuration (provider, suites, groups, EMS for TLS 1.2) is in the validated module.
    if cfg!(feature = "fips") && !cfg.fips() {
        return Err(ServerError::Tls(
            "the FIPS build's TLS configuration is not FIPS-approved (rustls ServerConfig::fips() is false)",
        ));
    }
    Ok((TlsAcceptor::from(Arc::new(cfg)), handle))
}

fn client_verifier(
    ca: &ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, ServerError> {
    if ca.allowed_names.is_empty() {
        return Err(ServerError::Tls(
            "mTLS needs at least one allowed client name",
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca.ca_pem[..]) {
        let c = c.map_err(|source| ServerError::Pem {
            what: "client CA PEM",
            source,
        })?;
        roots.add(c).map_err(|source| ServerError::Rustls {
            what: "client CA",
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(ServerError::Tls("no certificate in the client CA PEM"));
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(ServerError::ClientVerifier)?;
    Ok(Arc::new(NameCheckingVerifier {
        inner,
        names: ca.allowed_names.clone(),
    }))
}

/// WebPKI chain validation, then the subject CN or a SAN dNSName must be an allowed name.
#[derive(Debug)]
struct NameCheckingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl ClientCertVerifier for NameCheckingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if cert_names(end_entity)
            .iter()
            .any(|n| self.names.iter().any(|a| a.eq_ignore_ascii_case(n)))
        {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The subject CNs and SAN dNSNames of a certificate (empty if it does not parse).
fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let Ok(cert) = x509_cert::Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == const_oid::db::rfc4519::CN {
                if let Ok(s) = std::str::from_utf8(atv.value.value()) {
                    out.push(s.to_owned());
                }
            }
        }
    }
    if let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() {
        for n in san.0 {
            if let GeneralName::DnsName(d) = n {
                out.push(d.as_str().to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    const CHAIN: &[u8] = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn an_unusable_private_key_keeps_the_rustls_error() {
        let key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let Err(e) = certified_key(CHAIN, key) else {
            panic!("a 3-byte private key was accepted")
        };
        assert_eq!(e.to_string(), "TLS setup: unsupported private key");
        let src = e.source().and_then(|s| s.downcast_ref::<rustls::Error>());
        assert!(src.is_some(), "{e:?}");
    }

    #[test]
    fn a_broken_pem_keeps_the_io_error() {
        let chain = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let Err(e) = certified_key(chain, b"") else {
            panic!("a PEM that is not base64 was accepted")
        };
        assert_eq!(e.to_string(), "TLS setup: certificate chain PEM");
        let io = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert!(io.is_some(), "{e:?}");
    }
}
