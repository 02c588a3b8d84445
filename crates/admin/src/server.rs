//! The admin listener: mutual TLS (a client certificate from the operator's CA is mandatory),
//! HTTP/1.1, one JSON request per `POST /admin/v1`, handed to a [`Backend`] together with the
//! verified [`Operator`]: the client certificate's subject (the actor named in the audit log)
//! and its role (SAN URI `keyward:role:…`, see [`super::role`]); the backend enforces the role.
//!
//! Request path, top to bottom: TLS accept (client certificate verified by rustls against the
//! operator CA handed over by the boot pipeline, never re-read from disk) → subject and role of
//! the verified certificate → method/path check → bounded body read → JSON → backend (on a
//! blocking thread: it writes and fsyncs) → JSON answer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::proto::{Request, Response, MAX_BODY, PATH};
use super::role::{Operator, Role};
use super::tls::OperatorCa;
use keyward_config::AdminConfig;

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The operator's role does not allow the request.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What carries out admin requests for a verified operator (subject and role).
/// Implementations refuse what the role does not allow ([`Role::allows`]), and make each change
/// durable before returning and live at once.
pub trait Backend: Send + Sync + 'static {
    fn handle(&self, operator: &Operator, req: Request) -> Result<serde_json::Value, AdminError>;
}

/// Errors starting the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("admin listener {addr}: {msg}")]
    Bind { addr: SocketAddr, msg: String },
    #[error("admin TLS: {0}")]
    Tls(#[from] super::tls::TlsError),
}

/// A bound admin listener, not yet serving.
pub struct AdminServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    unclaimed_role: Role,
    /// Connections served at once (the descriptor budget's admin share); more are closed at
    /// accept, before any TLS work.
    max_connections: usize,
}

/// From accept to a verified client certificate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// From accept (or the previous answer) to the end of the next request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// From the headers to the end of the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

impl AdminServer {
    /// Load the TLS material and bind the listener. Without TLS files in `cfg`, the server
    /// certificate comes from `managed` (the appliance-managed TLS identity, shared with the
    /// XKS listener); one of the two is needed. `client_ca` is the operator CA as the caller
    /// read (and checked) it: `cfg.client_ca` is not read again.
    pub async fn bind(
        cfg: &AdminConfig,
        managed: Option<Arc<dyn rustls::server::ResolvesServerCert>>,
        client_ca: &OperatorCa,
    ) -> Result<Self, ServerError> {
        use super::tls::ServerCert;
        let cert = match (&cfg.tls, managed) {
            (Some(f), _) => ServerCert::Files {
                cert_chain: &f.cert_chain,
                key: &f.key,
            },
            (None, Some(r)) => ServerCert::Resolver(r),
            (None, None) => {
                return Err(ServerError::Tls(super::tls::TlsError::Config(
                    "no TLS files and no appliance-managed TLS identity".into(),
                )))
            }
        };
        let tls = super::tls::server_config_with(cert, client_ca)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ServerError::Bind {
                addr: cfg.listen,
                msg: e.to_string(),
            })?;
        Ok(AdminServer {
            listener,
            acceptor: TlsAcceptor::from(tls),
            unclaimed_role: cfg.unclaimed_role,
            max_connections: keyward_secret::fdlimit::FdBudget::current().admin,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` resolves; then stop accepting and let requests in flight finish
    /// (up to 10 s).
    pub async fn run(self, backend: Arc<dyn Backend>, shutdown: impl Future<Output = ()>) {
        let mut conns = JoinSet::new();
        let cap = Arc::new(tokio::sync::Semaphore::new(self.max_connections.max(1)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "admin: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = cap.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "admin: connection cap reached, closed");
                        continue;
                    };
                    let acceptor = self.acceptor.clone();
                    let backend = backend.clone();
                    let unclaimed = self.unclaimed_role;
                    conns.spawn(async move {
                        let _permit = permit;
                        serve_conn(acceptor, tcp, peer, backend, unclaimed).await
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(self.listener);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            conns.abort_all();
        }
    }
}

async fn serve_conn(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    backend: Arc<dyn Backend>,
    unclaimed: Role,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "admin TLS handshake refused: {e}");
            return;
        }
        Err(_) => return,
    };
    // rustls has verified the chain to the operator CA; the subject names the actor, the SAN
    // URI claim gives the role.
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let actor = leaf.and_then(|c| {
        let subject = super::tls::subject_of(c)?;
        let role = super::role::resolve(&super::role::claim_of(c), unclaimed);
        Some(Operator { subject, role })
    });
    let Some(actor) = actor else {
        tracing::warn!(%peer, "admin connection without a readable client certificate");
        return;
    };
    let actor = Arc::new(actor);
    let service = hyper::service::service_fn(move |req| {
        let backend = backend.clone();
        let actor = actor.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, backend, actor).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
}

async fn handle(
    req: http::Request<Incoming>,
    backend: Arc<dyn Backend>,
    actor: Arc<Operator>,
) -> http::Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return answer(StatusCode::NOT_FOUND, Err("unknown path".into()));
    }
    if req.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, Err("use POST".into()));
    }
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(b)) => zeroize::Zeroizing::new(b.to_bytes().to_vec()),
        Ok(Err(_)) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                Err(format!("request larger than {MAX_BODY} bytes")),
            )
        }
        Err(_) => {
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                Err("request body not received in time".into()),
            )
        }
    };
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return answer(StatusCode::BAD_REQUEST, Err(format!("bad request: {e}"))),
    };
    let op = request.op();
    let result = tokio::task::spawn_blocking(move || backend.handle(&actor, request)).await;
    match result {
        Ok(Ok(v)) => answer(StatusCode::OK, Ok(v)),
        Ok(Err(e)) => {
            tracing::info!(op, "admin request refused: {e}");
            answer(e.status(), Err(e.to_string()))
        }
        Err(_) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            Err("internal error".into()),
        ),
    }
}

fn answer(
    status: StatusCode,
    result: Result<serde_json::Value, String>,
) -> http::Response<Full<Bytes>> {
    let body = match result {
        Ok(v) => Response {
            ok: true,
            result: Some(v),
            error: None,
        },
        Err(e) => Response {
            ok: false,
            result: None,
            error: Some(e),
        },
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    let mut resp = http::Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
