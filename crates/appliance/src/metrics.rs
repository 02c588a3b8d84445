//! What `GET /metrics` on the admin listener reads at scrape time: keys by state from the
//! registry snapshot, the fleet from the last heartbeat round, the audit log's counters, the
//! trusted clock's skew and the served XKS certificate's expiry, rendered with the XKS request
//! figures the audit writer thread has counted ([`keyward_metrics::Metrics`]).

use std::sync::Arc;

use keyward_admin::MetricsSource;
use keyward_audit::AuditLog;
use keyward_keystore::KeyStatus;
use keyward_keystore::Registry;
use keyward_metrics::{AuditFigures, Figures, FleetFigures, KeyCount, Metrics};

use super::fleet::Fleet;
use super::tls::ManagedTls;

/// Where the served XKS certificate's expiry comes from.
pub(crate) enum CertExpiry {
    /// The appliance-managed identity (a new chain may be installed at any time).
    Managed(Arc<ManagedTls>),
    /// A certificate file read at boot (Unix seconds).
    Fixed(i64),
    /// Plain HTTP, or a file that did not parse.
    Unknown,
}

/// The appliance's [`MetricsSource`].
pub(crate) struct ApplianceMetrics {
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub fleet: Option<Arc<Fleet>>,
    pub audit: AuditLog,
    pub cert: CertExpiry,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl ApplianceMetrics {
    /// The scrape-time figures.
    pub(crate) fn figures(&self) -> Figures {
        let snap = self.registry.snapshot();
        let mut keys = Vec::new();
        let mut names: Vec<&String> = snap.stores.keys().collect();
        names.sort();
        for name in names {
            let Some(store) = snap.stores.get(name) else {
                continue;
            };
            let (mut enabled, mut disabled, mut pending) = (0i64, 0i64, 0i64);
            for k in store.keys.values() {
                match (k.destroy_at, k.status) {
                    (Some(_), _) => pending += 1,
                    (None, KeyStatus::Enabled) => enabled += 1,
                    (None, KeyStatus::Disabled) => disabled += 1,
                }
            }
            let destroyed = i64::try_from(store.destroyed.len()).unwrap_or(i64::MAX);
            for (state, count) in [
                ("enabled", enabled),
                ("disabled", disabled),
                ("pending_destruction", pending),
                ("destroyed", destroyed),
            ] {
                keys.push(KeyCount {
                    store: name.clone(),
                    state,
                    count,
                });
            }
        }
        let fleet = self.fleet.as_ref().map(|f| {
            let members = f.members();
            let mut fig = FleetFigures::default();
            for m in &members {
                match m.status {
                    "ACTIVE" => fig.active += 1,
                    "DEGRADED" => fig.degraded += 1,
                    _ => fig.unavailable += 1,
                }
            }
            let newest = members.iter().map(|m| m.member.seq).max().unwrap_or(0);
            let lag = newest.saturating_sub(self.registry.head().seq);
            fig.seq_lag = i64::try_from(lag).unwrap_or(i64::MAX);
            fig
        });
        let clock_skew_secs = match keyward_agent::clock().skew() {
            keyward_agent::Skew::Unknown => None,
            keyward_agent::Skew::Fine(d) | keyward_agent::Skew::Drift(d) => Some(d),
        };
        let not_after = match &self.cert {
            CertExpiry::Managed(m) => m.not_after_unix(),
            CertExpiry::Fixed(t) => Some(*t),
            CertExpiry::Unknown => None,
        };
        Figures {
            keys,
            fleet,
            audit: AuditFigures {
                written: self.audit.written(),
                waits: self.audit.waits(),
                lost: self.audit.lost(),
                capacity: self.audit.capacity() as u64,
                queued: self.audit.queued(),
            },
            clock_skew_secs,
            certificate_expiry_days: not_after
                .map(|t| t.saturating_sub(now_unix()) as f64 / 86_400.0),
            fips: keyward_secret::fips_mode(),
        }
    }
}

impl MetricsSource for ApplianceMetrics {
    fn render(&self) -> Result<String, String> {
        self.metrics
            .render(&self.figures())
            .map_err(|e| e.to_string())
    }
}
