//! `GET /metrics` for the key-release service (`metrics_listen` in the KRS config): releases,
//! denials by deny code (signed, after a session existed, and unsigned, before one), the
//! session and connection tables, the cuts the listener made, HSM signatures, and the process
//! figures, as OpenMetrics text through `prometheus-client`.
//!
//! The figures are the same counters the periodic `krs status` line prints ([`Status`]), read
//! at scrape time: nothing is added to the decision path. The listener is plain HTTP on a
//! loopback address only (a scraper or an agent beside the KRS forwards them): the KRS's one
//! network port stays KRP/1 over TLS, and the figures carry no secret but do tell an outsider
//! how often releases are denied, which is not theirs to know.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::limits::Status;
use crate::service::Service;

/// The content type of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = keyward_metrics::CONTENT_TYPE;

/// Errors starting the listener or rendering the figures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KrsMetricsError {
    /// The setting's text (shown as given) does not parse as an address; no cause worth keeping.
    #[error("metrics_listen {0:?} is not an address (for example 127.0.0.1:9466)")]
    Address(String),
    #[error(
        "metrics_listen {0} is not a loopback address: the KRS serves its metrics on loopback \
         only (run the scraper or a forwarding agent beside it)"
    )]
    NotLoopback(SocketAddr),
    #[error("binding metrics_listen {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("starting the metrics thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot encode the metrics")]
    Encode(#[from] std::fmt::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenyLabels {
    /// The deny reason's name (`pin_mismatch`, `measurement`, ...: `DenyCode::name`).
    code: String,
    /// `true`: after a session existed, signed and in the release log; `false`: before one.
    signed: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    why: String,
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn gauge(v: usize) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

/// The figures of `status` as OpenMetrics text ([`CONTENT_TYPE`]).
pub(crate) fn render(status: &Status) -> Result<String, KrsMetricsError> {
    let mut reg = Registry::default();
    reg.register(
        "keyward_krs_releases",
        "Master-key releases (signed receipts with decision release)",
        counter(status.releases),
    );
    let denials = Family::<DenyLabels, Counter>::default();
    let add = |by: &BTreeMap<String, u64>, signed: &str| {
        for (code, n) in by {
            denials
                .get_or_create(&DenyLabels {
                    code: code.clone(),
                    signed: signed.into(),
                })
                .inc_by(*n);
        }
    };
    add(&status.signed_denies_by_reason, "true");
    add(&status.unsigned_denies, "false");
    reg.register(
        "keyward_krs_denials",
        "Refused key releases by deny code; signed=true after a session existed (in the release log)",
        denials,
    );
    reg.register(
        "keyward_krs_hsm_signatures",
        "Signatures made in the HSM (receipts and release-log heads)",
        counter(status.hsm_signs),
    );
    reg.register(
        "keyward_krs_sessions",
        "Entries in the session table",
        gauge(status.sessions),
    );
    reg.register(
        "keyward_krs_sessions_max",
        "The session table's cap",
        gauge(status.max_sessions),
    );
    reg.register(
        "keyward_krs_connections",
        "Connections being served",
        gauge(status.connections),
    );
    reg.register(
        "keyward_krs_connections_max",
        "The connection cap",
        gauge(status.max_connections),
    );
    let refused = Family::<WhyLabels, Counter>::default();
    for (why, n) in [
        ("total_cap", status.connections_refused_total),
        ("per_source_cap", status.connections_refused_per_source),
        ("deadline", status.deadline_cuts),
        ("frame_limit", status.frame_limit_cuts),
    ] {
        refused
            .get_or_create(&WhyLabels { why: why.into() })
            .inc_by(n);
    }
    reg.register(
        "keyward_krs_connections_cut",
        "Connections refused at a cap or cut by a deadline or the frame limit",
        refused,
    );
    reg.register(
        "keyward_krs_warnings_suppressed",
        "Warning lines held back by the rate limit",
        counter(status.warnings_suppressed),
    );
    keyward_metrics::register_process(&mut reg);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(out)
}

/// Check `listen` (loopback only) and bind it.
pub(crate) fn bind(listen: &str) -> Result<TcpListener, KrsMetricsError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| KrsMetricsError::Address(listen.to_string()))?;
    if !addr.ip().is_loopback() {
        return Err(KrsMetricsError::NotLoopback(addr));
    }
    TcpListener::bind(addr).map_err(|e| KrsMetricsError::Bind(addr, e))
}

/// Serve `GET /metrics` on `listener` from a thread of its own (a one-thread runtime; a
/// scrape every few seconds needs no more) for as long as the process runs.
pub(crate) fn spawn(
    listener: TcpListener,
    svc: Arc<Service>,
) -> Result<SocketAddr, KrsMetricsError> {
    let addr = listener.local_addr().map_err(KrsMetricsError::Thread)?;
    listener
        .set_nonblocking(true)
        .map_err(KrsMetricsError::Thread)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(KrsMetricsError::Thread)?;
    std::thread::Builder::new()
        .name("krs-metrics".into())
        .spawn(move || rt.block_on(serve(listener, svc)))
        .map_err(KrsMetricsError::Thread)?;
    Ok(addr)
}

async fn serve(listener: TcpListener, svc: Arc<Service>) {
    let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!("metrics listener: cannot register with the runtime");
        return;
    };
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(tcp);
            let answer = hyper::service::service_fn(move |req: http::Request<_>| {
                let svc = svc.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &svc)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(io, answer);
            // One request, answered from memory: a peer that does not send it within 10 s
            // loses its connection.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
        });
    }
}

fn answer<B>(req: &http::Request<B>, svc: &Service) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; GET /metrics\n");
    }
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match render(&svc.status()) {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        Err(e) => {
            tracing::error!("metrics: {}", keyward_keystore::error_chain(&e));
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot render\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_counted_by_code_and_kind() {
        let mut s = Status {
            sessions: 2,
            max_sessions: 64,
            connections: 1,
            max_connections: 128,
            hsm_signs: 9,
            releases: 3,
            signed_denies: 2,
            signed_denies_by_reason: BTreeMap::new(),
            unsigned_denies: BTreeMap::new(),
            connections_refused_total: 4,
            connections_refused_per_source: 0,
            deadline_cuts: 1,
            frame_limit_cuts: 0,
            warnings_suppressed: 0,
        };
        s.signed_denies_by_reason.insert("measurement".into(), 2);
        s.unsigned_denies.insert("pin_mismatch".into(), 5);
        let text = render(&s).unwrap();
        for want in [
            "keyward_krs_releases_total 3\n",
            "keyward_krs_denials_total{code=\"measurement\",signed=\"true\"} 2\n",
            "keyward_krs_denials_total{code=\"pin_mismatch\",signed=\"false\"} 5\n",
            "keyward_krs_sessions 2\n",
            "keyward_krs_connections_cut_total{why=\"total_cap\"} 4\n",
            "keyward_krs_hsm_signatures_total 9\n",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn only_loopback_addresses_are_served() {
        let e = bind("0.0.0.0:0").unwrap_err().to_string();
        assert!(e.contains("not a loopback address"), "{e}");
        let e = bind("metrics").unwrap_err().to_string();
        assert!(e.contains("metrics_listen \"metrics\""), "{e}");
        assert!(bind("127.0.0.1:0").is_ok());
    }
}
