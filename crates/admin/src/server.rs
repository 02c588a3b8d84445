//! The admin listener: mutual TLS (a client certificate from the operator's CA is mandatory),
//! HTTP/1.1, one JSON request per `POST /admin/v1`, handed to a [`Backend`] together with the
//! verified [`Operator`]: the client certificate's subject (the actor named in the audit log)
//! and its role (SAN URI `keyward:role:…`, see [`super::role`]); the backend enforces the role.
//!
//! Request path, top to bottom: TLS accept (client certificate verified by rustls against the
//! operator CA handed over by the boot pipeline, never re-read from disk) → subject and role of
//! the verified certificate → an axum router per connection (method/path, tower-http body cap
//! and body deadline) → JSON → backend (on a blocking thread: it writes and fsyncs) → JSON
//! answer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::proto::{Request, Response, FILE_PATH, MAX_BODY, MAX_FILE_BODY, PATH};
use super::role::{Operator, Role};
use super::tls::OperatorCa;
use keyward_config::AdminConfig;

/// Why an admin request was refused. The String variants carry the API's own one-line answer
/// (naming the field at fault, or the cause already on that line); they have no `source()`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong (the message names the field).
    #[error("{0}")]
    BadRequest(String),
    /// What the request names is not there (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (the message says how).
    #[error("{0}")]
    Conflict(String),
    /// The operator's role does not allow the request.
    #[error("{0}")]
    Forbidden(String),
    /// The server failed for a reason the message gives.
    #[error("{0}")]
    Internal(String),
    /// A value could not be encoded as JSON (`what` names it); the answer's line shows the cause.
    #[error("{what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Another appliance of the fleet wrote to the shared key store at the same moment (retried
    /// by the backend; returned when every retry lost).
    #[error("{0}")]
    Raced(String),
    /// The shared key store's database cannot be reached: writes fail fast; serving goes on.
    #[error("{0}")]
    Unavailable(String),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::Internal(_) | AdminError::Json { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            AdminError::Raced(_) => StatusCode::CONFLICT,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What carries out admin requests for a verified operator (subject and role).
/// Implementations refuse what the role does not allow ([`Role::allows`]), and make each change
/// durable before returning and live at once.
pub trait Backend: Send + Sync + 'static {
    fn handle(&self, operator: &Operator, req: Request) -> Result<serde_json::Value, AdminError>;

    /// [`Backend::handle`] with the approval the request names (`--approval ID`, the
    /// [`super::proto::APPROVAL_HEADER`] header). The default knows no approvals.
    fn handle_approved(
        &self,
        operator: &Operator,
        req: Request,
        approval: Option<String>,
    ) -> Result<serde_json::Value, AdminError> {
        match approval {
            None => self.handle(operator, req),
            Some(_) => Err(AdminError::BadRequest(
                "approval: this server does not take approvals".into(),
            )),
        }
    }

    /// `GET /metrics`: the OpenMetrics text for `operator` (every role may read it). The
    /// default serves none.
    fn metrics(&self, operator: &Operator) -> Result<String, AdminError> {
        let _ = operator;
        Err(AdminError::NotFound("metrics are not served here".into()))
    }
}

/// The path of the metrics endpoint.
pub(crate) const METRICS_PATH: &str = "/metrics";
/// Its content type.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors starting the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("admin listener {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin TLS")]
    Tls(#[from] super::tls::TlsError),
}

/// A bound admin listener, not yet serving.
pub struct AdminServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    unclaimed_role: Role,
    /// `[admin] approvals_required` and `approval_ttl`.
    approvals: super::approval::ApprovalPolicy,
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
/// The same on [`FILE_PATH`] (up to [`MAX_FILE_BODY`]: 96 MiB at 2 MB/s).
const FILE_BODY_TIMEOUT: Duration = Duration::from_secs(60);

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
            .map_err(|source| ServerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        Ok(AdminServer {
            listener,
            acceptor: TlsAcceptor::from(tls),
            unclaimed_role: cfg.unclaimed_role,
            approvals: super::approval::ApprovalPolicy {
                required: cfg.approvals_required,
                ttl_secs: cfg.approval_ttl_secs,
            },
            max_connections: keyward_secret::FdBudget::current().admin,
        })
    }

    /// The dual-control settings from the configuration (for the backend).
    pub fn approval_policy(&self) -> super::approval::ApprovalPolicy {
        self.approvals
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
        let spki_sha256 = hex::encode(keyward_pki::spki_sha256(c.as_ref()).ok()?);
        let role = super::role::resolve(&super::role::claim_of(c), unclaimed);
        Some(Operator {
            subject,
            spki_sha256,
            role,
        })
    });
    let Some(actor) = actor else {
        tracing::warn!(%peer, "admin connection without a readable client certificate");
        return;
    };
    let service = hyper_util::service::TowerToHyperService::new(router(backend, Arc::new(actor)));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
}

/// What every request on one connection shares: the backend and the verified operator.
#[derive(Clone)]
struct ConnState {
    backend: Arc<dyn Backend>,
    actor: Arc<Operator>,
}

/// The routes of one connection: `POST /admin/v1`, `POST /admin/v1/file` (the requests that
/// carry a whole file), `GET /metrics`, a JSON 405 for other methods on them, a JSON 404
/// elsewhere; each POST route's body capped ([`MAX_BODY`], [`MAX_FILE_BODY`]: 413) and due in
/// time ([`BODY_TIMEOUT`], [`FILE_BODY_TIMEOUT`]: 408) by tower-http layers. The TLS handshake
/// deadline, the header deadline and the connection cap are the accept loop's.
fn router(backend: Arc<dyn Backend>, actor: Arc<Operator>) -> axum::Router {
    use axum::routing::{get, post};
    let state = ConnState { backend, actor };
    let not_post = || async { answer(StatusCode::METHOD_NOT_ALLOWED, Err("use POST".into())) };
    axum::Router::new()
        .route(
            PATH,
            capped(post(admin_small).fallback(not_post), MAX_BODY, BODY_TIMEOUT),
        )
        .route(
            FILE_PATH,
            capped(
                post(admin_file).fallback(not_post),
                MAX_FILE_BODY,
                FILE_BODY_TIMEOUT,
            )
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                file_role_first,
            )),
        )
        .route(
            METRICS_PATH,
            get(metrics).fallback(|| async {
                answer(StatusCode::METHOD_NOT_ALLOWED, Err("use GET".into()))
            }),
        )
        .fallback(|| async { answer(StatusCode::NOT_FOUND, Err("unknown path".into())) })
        .with_state(state)
}

/// On the file route, an operator whose role may not send a file is refused before the body
/// is read: a viewer's certificate must not make the appliance hold 96 MiB per connection.
/// The refusal is the backend's own (it is handed the request with an empty file), so it is
/// worded and audited like every other.
async fn file_role_first(
    axum::extract::State(st): StateOf,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Answer {
    let probe = Request::BackupRewrap {
        file: String::new(),
    };
    let need = super::role::policy(&probe).need;
    if matches!(&st.actor.role, Ok(roles) if roles.satisfy(need)) {
        return next.run(req).await;
    }
    let ConnState { backend, actor } = st;
    match tokio::task::spawn_blocking(move || backend.handle_approved(&actor, probe, None)).await {
        Ok(Err(e)) => answer(e.status(), Err(keyward_keystore::error_chain(&e))),
        // The backend let it through after all: still not with this role.
        Ok(Ok(_)) => answer(
            StatusCode::FORBIDDEN,
            Err(format!(
                "forbidden: this route needs the {} role",
                need.role()
            )),
        ),
        Err(_) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            Err("internal error".into()),
        ),
    }
}

/// `route` with its body capped at `cap` bytes and due within `due`. Inner first: the limit
/// wraps the body the timeout already wraps, so an oversized body is told apart (413) from a
/// slow one (408); axum's own 2 MB default is lifted to the same cap, so the tower-http layer
/// is the one that answers.
fn capped(
    route: axum::routing::MethodRouter<ConnState>,
    cap: usize,
    due: Duration,
) -> axum::routing::MethodRouter<ConnState> {
    use std::convert::Infallible;
    route
        .layer::<_, Infallible>(axum::extract::DefaultBodyLimit::max(cap))
        .layer::<_, Infallible>(tower_http::limit::RequestBodyLimitLayer::new(cap))
        .layer::<_, Infallible>(tower_http::timeout::RequestBodyTimeoutLayer::new(due))
}

/// Which POST route a request came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// [`PATH`]: every operation (a file that fits in [`MAX_BODY`] too).
    Small,
    /// [`FILE_PATH`]: only the operations that carry a file.
    File,
}

type BodyResult = Result<Bytes, axum::extract::rejection::BytesRejection>;
type StateOf = axum::extract::State<ConnState>;

/// `POST /admin/v1`.
async fn admin_small(st: StateOf, headers: http::HeaderMap, body: BodyResult) -> Answer {
    admin(st, headers, body, Route::Small).await
}

/// `POST /admin/v1/file`.
async fn admin_file(st: StateOf, headers: http::HeaderMap, body: BodyResult) -> Answer {
    admin(st, headers, body, Route::File).await
}

/// `POST /admin/v1` (or `/admin/v1/file`): one JSON request, carried out on a blocking thread
/// (it writes and fsyncs).
async fn admin(
    axum::extract::State(st): StateOf,
    headers: http::HeaderMap,
    body: BodyResult,
    route: Route,
) -> Answer {
    let cap = match route {
        Route::Small => MAX_BODY,
        Route::File => MAX_FILE_BODY,
    };
    let approval = match headers
        .get(super::proto::APPROVAL_HEADER)
        .map(|v| v.to_str())
    {
        None => None,
        Some(Ok(v))
            if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Some(v.to_ascii_lowercase())
        }
        Some(_) => {
            return answer(
                StatusCode::BAD_REQUEST,
                Err("approval: the approval id is 1-64 hex digits".into()),
            )
        }
    };
    let body = match body {
        // The request may carry key material: the copy we parse is wiped after use.
        Ok(b) => zeroize::Zeroizing::new(b.to_vec()),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                Err(format!("request larger than {cap} bytes")),
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
    if route == Route::File && !request.carries_file() {
        return answer(
            StatusCode::BAD_REQUEST,
            Err(format!(
                "op: {} carries no file: send it to {PATH}",
                request.op()
            )),
        );
    }
    let op = request.op();
    let ConnState { backend, actor } = st;
    let result =
        tokio::task::spawn_blocking(move || backend.handle_approved(&actor, request, approval))
            .await;
    match result {
        Ok(Ok(v)) => answer(StatusCode::OK, Ok(v)),
        Ok(Err(e)) => {
            let line = keyward_keystore::error_chain(&e);
            tracing::info!(op, "admin request refused: {line}");
            answer(e.status(), Err(line))
        }
        Err(_) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            Err("internal error".into()),
        ),
    }
}

/// `GET /metrics`: the backend's OpenMetrics text (read on a blocking thread: it walks the
/// key registry and `/proc/self`). Not audited: a scraper calls every few seconds.
async fn metrics(axum::extract::State(st): axum::extract::State<ConnState>) -> Answer {
    let ConnState { backend, actor } = st;
    match tokio::task::spawn_blocking(move || backend.metrics(&actor)).await {
        Ok(Ok(text)) => {
            let mut resp = http::Response::new(axum::body::Body::from(text));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            resp
        }
        Ok(Err(e)) => answer(e.status(), Err(keyward_keystore::error_chain(&e))),
        Err(_) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            Err("internal error".into()),
        ),
    }
}

type Answer = http::Response<axum::body::Body>;

fn answer(status: StatusCode, result: Result<serde_json::Value, String>) -> Answer {
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
    let mut resp = http::Response::new(axum::body::Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    /// Refuses every request, naming the actor, the operation and the file's size.
    struct Refuses;
    impl Backend for Refuses {
        fn handle(&self, op: &Operator, req: Request) -> Result<serde_json::Value, AdminError> {
            let size = match &req {
                Request::BackupRewrap { file } => file.len(),
                _ => 0,
            };
            Err(AdminError::Forbidden(format!(
                "forbidden: {} may not {} (file of {size} bytes)",
                op.subject,
                req.op()
            )))
        }
        fn metrics(&self, _: &Operator) -> Result<String, AdminError> {
            Err(AdminError::NotFound("no".into()))
        }
    }

    /// Answers every request with its operation name and the actor.
    struct Echo;
    impl Backend for Echo {
        fn handle(&self, op: &Operator, req: Request) -> Result<serde_json::Value, AdminError> {
            Ok(serde_json::json!({ "op": req.op(), "actor": op.subject }))
        }
        fn metrics(&self, op: &Operator) -> Result<String, AdminError> {
            Ok(format!("# {}\n# EOF\n", op.subject))
        }
    }

    /// Answers with the approval id the request carried.
    struct Approvals;
    impl Backend for Approvals {
        fn handle(&self, _: &Operator, _: Request) -> Result<serde_json::Value, AdminError> {
            Ok(serde_json::json!({ "approval": null }))
        }
        fn handle_approved(
            &self,
            _: &Operator,
            _: Request,
            approval: Option<String>,
        ) -> Result<serde_json::Value, AdminError> {
            Ok(serde_json::json!({ "approval": approval }))
        }
    }

    #[tokio::test]
    async fn the_approval_header_reaches_the_backend_checked() {
        let actor = Arc::new(Operator::new("CN=sam", Role::Security));
        let send = |value: Option<&'static str>| {
            let mut b = http::Request::builder().method("POST").uri(PATH);
            if let Some(v) = value {
                b = b.header(crate::proto::APPROVAL_HEADER, v);
            }
            let req = b
                .body(axum::body::Body::from(&br#"{"op":"stores_list"}"#[..]))
                .unwrap();
            router(Arc::new(Approvals), actor.clone()).oneshot(req)
        };
        let r = send(Some("ABCDEF0123")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["result"]["approval"], "abcdef0123");
        let r = send(None).await.unwrap();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v["result"]["approval"].is_null(), "{v}");
        for bad in ["not-hex", ""] {
            let r = send(Some(bad)).await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn metrics_is_a_get_with_openmetrics_text() {
        let actor = Arc::new(Operator::new("CN=viewer", Role::Viewer));
        let req = http::Request::builder()
            .method("GET")
            .uri(METRICS_PATH)
            .body(axum::body::Body::empty())
            .unwrap();
        let r = router(Arc::new(Echo), actor.clone())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[http::header::CONTENT_TYPE],
            METRICS_CONTENT_TYPE
        );
        let b = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"# CN=viewer\n# EOF\n");
        let (s, _) = call("POST", METRICS_PATH, Vec::new()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    }

    async fn call(method: &str, path: &str, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
        let actor = Arc::new(Operator::new("CN=alice", Role::Admin));
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::from(body))
            .unwrap();
        let r = router(Arc::new(Echo), actor).oneshot(req).await.unwrap();
        let status = r.status();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn the_file_route_takes_large_files_and_nothing_else() {
        // A backup far over the small cap (2 MB: also over axum's own default) goes through
        // the file route, and only there.
        let file = "x".repeat(2 * 1024 * 1024 + 7);
        let req =
            serde_json::to_vec(&serde_json::json!({"op":"backup_rewrap","file":file})).unwrap();
        let (s, v) = call("POST", FILE_PATH, req.clone()).await;
        assert_eq!(
            (s, v["result"]["op"].as_str()),
            (StatusCode::OK, Some("backup_rewrap")),
            "{v}"
        );
        let (s, _) = call("POST", PATH, req).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        // A small rewrap still works on the old path (older clients).
        let (s, v) = call(
            "POST",
            PATH,
            br#"{"op":"backup_rewrap","file":"{}"}"#.to_vec(),
        )
        .await;
        assert_eq!(
            (s, v["result"]["op"].as_str()),
            (StatusCode::OK, Some("backup_rewrap"))
        );
        // Any other operation is refused on the file route, naming it.
        let (s, v) = call("POST", FILE_PATH, br#"{"op":"stores_list"}"#.to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(
            v["error"].as_str(),
            Some("op: stores_list carries no file: send it to /admin/v1")
        );
        let (s, v) = call("GET", FILE_PATH, Vec::new()).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("use POST"))
        );
        // A viewer is refused there before the body is read, with the backend's own refusal.
        let viewer = Arc::new(Operator::new("CN=vic", Role::Viewer));
        let req = http::Request::builder()
            .method("POST")
            .uri(FILE_PATH)
            .body(axum::body::Body::from(vec![b' '; MAX_FILE_BODY + 1]))
            .unwrap();
        let r = router(Arc::new(Refuses), viewer)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v["error"],
            "forbidden: CN=vic may not backup_rewrap (file of 0 bytes)"
        );
        // Its cap holds too.
        let (s, v) = call("POST", FILE_PATH, vec![b' '; MAX_FILE_BODY + 1]).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            v["error"].as_str(),
            Some(format!("request larger than {MAX_FILE_BODY} bytes").as_str())
        );
    }

    #[tokio::test]
    async fn one_route_json_errors_and_the_body_cap() {
        let (s, v) = call("POST", PATH, br#"{"op":"stores_list"}"#.to_vec()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["result"]["op"], "stores_list");
        assert_eq!(v["result"]["actor"], "CN=alice");
        let (s, v) = call("GET", PATH, Vec::new()).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("use POST"))
        );
        let (s, v) = call("POST", "/admin/v2", b"{}".to_vec()).await;
        assert_eq!((s, v["ok"].as_bool()), (StatusCode::NOT_FOUND, Some(false)));
        let (s, _) = call("POST", PATH, vec![b' '; MAX_BODY + 1]).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        let (s, v) = call("POST", PATH, b"{\"op\":".to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            v["error"].as_str().unwrap().starts_with("bad request"),
            "{v}"
        );
    }
}
