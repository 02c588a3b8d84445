//! Prometheus/OpenMetrics figures for the admin listener's `GET /metrics`.
//!
//! XKS requests are counted by the audit writer thread: [`Metrics::audit_hook`] is handed to
//! [`keyward_audit::AuditLog::start_with`], and the writer calls it with every record it has
//! formatted, so the request path does no work for metrics at all (it already sends the record
//! to the writer). Everything else is read when a scrape comes in ([`Figures`], filled by the
//! appliance from the registry snapshot, the fleet's heartbeats, the audit log, the trusted
//! clock and the served certificate; the process figures from `/proc/self` and getrusage).
//!
//! Names (see docs/operations.md, Metrics): `keyward_xks_requests_total{operation,status,
//! error_name}`, `keyward_xks_request_duration_seconds{operation}` (histogram, 10 µs to 1 s),
//! `keyward_xks_auth_failures_total{reason}`, `keyward_keys{store,state}`,
//! `keyward_fleet_members{state}`, `keyward_fleet_store_seq_lag`, `keyward_audit_lines_total`,
//! `keyward_audit_waits_total`, `keyward_audit_lost_total`, `keyward_audit_queue_depth`,
//! `keyward_audit_queue_capacity`,
//! `keyward_tls_certificate_expiry_days`, `keyward_trusted_time_skew_seconds`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_cpu_seconds_total`, `process_threads`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use keyward_audit::{XksHook, XksRecord};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency bucket bounds (seconds): 10 µs to 1 s, with 200 ms (the latency AWS tells XKS
/// customers to alarm on) as a bound of its own.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.2, 0.5, 1.0,
];

/// Errors rendering the figures.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    status: String,
    /// Empty for a success.
    error_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    store: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The XKS request figures (fed by the audit writer) and the scrape-time rendering.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// How many keys a store has in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    pub store: String,
    /// `enabled`, `disabled`, `pending_destruction` or `destroyed`.
    pub state: &'static str,
    pub count: i64,
}

/// The fleet as this member's last heartbeat round saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetFigures {
    /// Members by `ACTIVE` / `DEGRADED` / `UNAVAILABLE` (each state is always listed).
    pub active: i64,
    pub degraded: i64,
    pub unavailable: i64,
    /// The newest store seq any member has applied minus this member's.
    pub seq_lag: i64,
}

/// The audit log's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFigures {
    pub written: u64,
    pub waits: u64,
    pub lost: u64,
    pub capacity: u64,
    /// Lines handed to the writer and not yet written.
    pub queued: u64,
}

/// What the appliance reads at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub keys: Vec<KeyCount>,
    /// `None` without a shared key store.
    pub fleet: Option<FleetFigures>,
    pub audit: AuditFigures,
    /// Wall clock minus the KRS's trusted time; `None` before any KRS reading.
    pub clock_skew_secs: Option<i64>,
    /// Days until the served XKS certificate expires (negative once expired); `None` when
    /// the appliance does not manage it.
    pub certificate_expiry_days: Option<f64>,
    /// The FIPS build in FIPS mode (`keyward_secret::fips_mode`).
    pub fips: bool,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            auth_failures: Family::default(),
        }
    }

    /// Count one XKS request (the audit writer thread calls this).
    pub fn observe(&self, r: &XksRecord) {
        let error_name = r.error_name().unwrap_or("");
        self.requests
            .get_or_create(&RequestLabels {
                operation: r.operation().to_string(),
                status: r.status().to_string(),
                error_name: error_name.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&OperationLabels {
                operation: r.operation().to_string(),
            })
            .observe(r.latency().as_secs_f64());
        if matches!(r.status(), 401 | 403) {
            let reason = if error_name.is_empty() {
                "unknown"
            } else {
                error_name
            };
            self.auth_failures
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .inc();
        }
    }

    /// The hook for [`keyward_audit::AuditLog::start_with`].
    pub fn audit_hook(&self) -> XksHook {
        let m = self.clone();
        Arc::new(move |r: &XksRecord| m.observe(r))
    }

    /// Everything, as OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn render(&self, f: &Figures) -> Result<String, MetricsError> {
        let mut reg = Registry::default();
        reg.register(
            "keyward_xks_requests",
            "XKS requests answered, by operation, HTTP status and errorName (empty: success)",
            self.requests.clone(),
        );
        reg.register(
            "keyward_xks_request_duration_seconds",
            "XKS request latency as the audit log records it, by operation",
            self.latency.clone(),
        );
        reg.register(
            "keyward_xks_auth_failures",
            "XKS requests refused with 401 or 403 (SigV4 failures and authorization denials), by errorName",
            self.auth_failures.clone(),
        );

        let keys = Family::<KeyLabels, Gauge>::default();
        for k in &f.keys {
            keys.get_or_create(&KeyLabels {
                store: k.store.clone(),
                state: k.state.to_string(),
            })
            .set(k.count);
        }
        reg.register(
            "keyward_keys",
            "External keys by store and state (enabled, disabled, pending_destruction, destroyed)",
            keys,
        );

        if let Some(fl) = &f.fleet {
            let members = Family::<StateLabels, Gauge>::default();
            for (state, n) in [
                ("ACTIVE", fl.active),
                ("DEGRADED", fl.degraded),
                ("UNAVAILABLE", fl.unavailable),
            ] {
                members
                    .get_or_create(&StateLabels {
                        state: state.into(),
                    })
                    .set(n);
            }
            reg.register(
                "keyward_fleet_members",
                "Fleet members by state, as this member's last heartbeat round judged them",
                members,
            );
            reg.register(
                "keyward_fleet_store_seq_lag",
                "Store records the fleet's newest member has applied that this member has not",
                gauge(fl.seq_lag),
            );
        }

        reg.register(
            "keyward_audit_lines",
            "Audit lines (XKS and admin) the writer thread has formatted",
            counter(f.audit.written),
        );
        reg.register(
            "keyward_audit_waits",
            "Times a request waited for room in the full audit channel",
            counter(f.audit.waits),
        );
        reg.register(
            "keyward_audit_lost",
            "Audit lines lost because the writer had stopped",
            counter(f.audit.lost),
        );
        reg.register(
            "keyward_audit_queue_depth",
            "Audit lines handed to the writer thread and not yet written",
            gauge(i64::try_from(f.audit.queued).unwrap_or(i64::MAX)),
        );
        reg.register(
            "keyward_audit_queue_capacity",
            "Lines the audit channel holds before requests wait",
            gauge(i64::try_from(f.audit.capacity).unwrap_or(i64::MAX)),
        );
        if let Some(s) = f.clock_skew_secs {
            reg.register(
                "keyward_trusted_time_skew_seconds",
                "The VM's wall clock minus the key-release service's signed time",
                gauge(s),
            );
        }
        if let Some(d) = f.certificate_expiry_days {
            reg.register(
                "keyward_tls_certificate_expiry_days",
                "Days until the served XKS TLS certificate expires",
                gauge_f64(d),
            );
        }
        reg.register(
            "keyward_fips_mode",
            "1 when AES-256-GCM and the XKS endpoint's TLS run in AWS-LC's FIPS 140-3 module in FIPS mode (the fips build), 0 otherwise",
            gauge(i64::from(f.fips)),
        );
        register_process(&mut reg);

        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        Ok(out)
    }
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

fn gauge_f64(v: f64) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// Process figures (the names the Prometheus client libraries use), for any of keyward's
/// metrics endpoints (the appliance's and the KRS's).
pub fn register_process(reg: &mut Registry) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<i64>().ok())
    };
    if let Some(kb) = field("VmRSS:") {
        reg.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            gauge(kb.saturating_mul(1024)),
        );
    }
    if let Some(n) = field("Threads:") {
        reg.register("process_threads", "OS threads", gauge(n));
    }
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        let n = d.count().saturating_sub(1); // the directory handle read_dir holds
        reg.register(
            "process_open_fds",
            "Open file descriptors",
            gauge(i64::try_from(n).unwrap_or(i64::MAX)),
        );
    }
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        reg.register(
            "process_max_fds",
            "Maximum open file descriptors",
            gauge(i64::try_from(soft).unwrap_or(i64::MAX)),
        );
    }
    if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(secs(u.user_time()) + secs(u.system_time()));
        reg.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            c,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(op: &'static str, status: u16, err: Option<&'static str>, us: u64) -> XksRecord {
        let mut r = XksRecord::new();
        r.set_operation(op);
        r.finish(status, err, Duration::from_micros(us));
        r
    }

    #[test]
    fn counts_requests_latency_and_auth_failures() {
        let m = Metrics::new();
        let hook = m.audit_hook();
        hook(&rec("Encrypt", 200, None, 40));
        hook(&rec("Encrypt", 200, None, 300_000));
        hook(&rec(
            "Decrypt",
            401,
            Some("AuthenticationFailedException"),
            20,
        ));
        let text = m
            .render(&Figures {
                keys: vec![KeyCount {
                    store: "s".into(),
                    state: "enabled",
                    count: 3,
                }],
                fleet: Some(FleetFigures {
                    active: 2,
                    seq_lag: 1,
                    ..Default::default()
                }),
                clock_skew_secs: Some(-4),
                certificate_expiry_days: Some(12.5),
                fips: true,
                audit: AuditFigures {
                    queued: 7,
                    capacity: 4096,
                    ..Default::default()
                },
            })
            .unwrap();
        for want in [
            "keyward_xks_requests_total{operation=\"Encrypt\",status=\"200\",error_name=\"\"} 2\n",
            "keyward_fips_mode 1\n",
            "keyward_xks_requests_total{operation=\"Decrypt\",status=\"401\",error_name=\"AuthenticationFailedException\"} 1\n",
            "keyward_xks_auth_failures_total{reason=\"AuthenticationFailedException\"} 1\n",
            "keyward_xks_request_duration_seconds_bucket{le=\"0.2\",operation=\"Encrypt\"} 1\n",
            "keyward_xks_request_duration_seconds_bucket{le=\"0.5\",operation=\"Encrypt\"} 2\n",
            "keyward_keys{store=\"s\",state=\"enabled\"} 3\n",
            "keyward_fleet_members{state=\"ACTIVE\"} 2\n",
            "keyward_fleet_members{state=\"UNAVAILABLE\"} 0\n",
            "keyward_fleet_store_seq_lag 1\n",
            "keyward_trusted_time_skew_seconds -4\n",
            "keyward_tls_certificate_expiry_days 12.5\n",
            "keyward_audit_queue_depth 7\n",
            "keyward_audit_queue_capacity 4096\n",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
