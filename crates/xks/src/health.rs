//! GetHealthStatus: a deep check, refreshed in the background and answered from a cache.
//!
//! Every few seconds a background task does a real AES-256-GCM encrypt and decrypt with a
//! dedicated health key (made at start in the same locked-memory type as every KEK, never a
//! customer key) and asks the platform whether the key store is readable ([`StoreProbe`]). The
//! answer is serialized once and served from an `ArcSwap`, so a health call costs nothing.
//! Honest `ekmFleetDetails`: `ACTIVE` when both pass, `DEGRADED` when the crypto works but the
//! store cannot be read (keys in memory still serve), `UNAVAILABLE` when the crypto fails or the
//! cached result is older than [`MAX_AGE`] (the refresher is stuck).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;

use super::crypto;
use super::model::{EkmDetail, HealthResponse};
use keyward_secret::Key32;

/// How often the deep check runs.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);
/// A cached result older than this is reported as `UNAVAILABLE` (the spec allows 60 s).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(30);

/// Implemented by the platform: can the key store be read right now? May block briefly.
pub trait StoreProbe: Send + Sync + 'static {
    /// `Ok` when the store is readable; the error text goes to the log only.
    fn probe(&self) -> Result<(), String>;

    /// The other members of this appliance's fleet as the platform last saw them (heartbeats in
    /// a shared store); empty for a single appliance. Cheap: answered from a cache.
    fn peers(&self) -> Vec<Peer> {
        Vec::new()
    }
}

/// Another member of the fleet, for `ekmFleetDetails`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its id (instance and boot), as it reports itself.
    pub id: String,
    /// Its state as this member judges it from its heartbeat: `Active` when seen lately and
    /// current, `Degraded` when behind on the store or late, `Unavailable` when not seen.
    pub status: Status,
}

/// At most this many `ekmFleetDetails` entries (the spec's limit).
pub(crate) const MAX_FLEET_DETAILS: usize = 10;

/// A probe for deployments whose keys live only in memory (tests, benchmarks).
pub struct InMemoryStore;

impl StoreProbe for InMemoryStore {
    fn probe(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The health state shared by the handlers and the refresher.
pub struct Health {
    key: Key32,
    probe: Arc<dyn StoreProbe>,
    instance_id: String,
    /// When, the answer, the stale answer (UNAVAILABLE), the answer while the audit log fails.
    cached: ArcSwap<(Instant, Bytes, Bytes, Bytes)>,
}

/// One deep-check outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Degraded,
    Unavailable,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "ACTIVE",
            Status::Degraded => "DEGRADED",
            Status::Unavailable => "UNAVAILABLE",
        }
    }
}

impl Health {
    /// Make the health key and run the first check now (blocking the caller briefly).
    pub fn new(
        probe: Arc<dyn StoreProbe>,
        instance_id: String,
    ) -> Result<Arc<Self>, keyward_secret::SecretError> {
        let key = Key32::random()?;
        let unavailable = render(&instance_id, Status::Unavailable, &[]);
        let h = Arc::new(Self {
            key,
            probe,
            cached: ArcSwap::from_pointee((
                Instant::now(),
                unavailable.clone(),
                unavailable.clone(),
                unavailable,
            )),
            instance_id,
        });
        h.refresh();
        Ok(h)
    }

    /// Run the deep check and cache its answer. Blocking (the probe may touch the disk).
    pub fn refresh(&self) -> Status {
        let status = match (self.self_test(), self.probe.probe()) {
            (false, _) => Status::Unavailable,
            (true, Ok(())) => Status::Active,
            (true, Err(e)) => {
                tracing::warn!(error = %e, "health: key store not readable, reporting DEGRADED");
                Status::Degraded
            }
        };
        let peers = self.probe.peers();
        let stale = render(&self.instance_id, Status::Unavailable, &peers);
        self.cached.store(Arc::new((
            Instant::now(),
            render(&self.instance_id, status, &peers),
            stale,
            render(
                &self.instance_id,
                if status == Status::Active {
                    Status::Degraded
                } else {
                    status
                },
                &peers,
            ),
        )));
        status
    }

    /// The cached JSON answer (UNAVAILABLE if the last refresh is too old).
    pub fn answer(&self) -> Bytes {
        self.answer_for(false)
    }

    /// [`Health::answer`], with `DEGRADED` for an `ACTIVE` member while its audit log cannot
    /// be written (it refuses operations then; see `keyward_audit::AuditLog::failing`).
    pub fn answer_for(&self, audit_failing: bool) -> Bytes {
        let c = self.cached.load();
        if c.0.elapsed() > MAX_AGE {
            c.2.clone()
        } else if audit_failing {
            c.3.clone()
        } else {
            c.1.clone()
        }
    }

    /// A real encrypt and decrypt on the health key.
    fn self_test(&self) -> bool {
        let msg = *b"keyward deep health check 000000";
        let mut buf = msg;
        let mut scratch = Vec::new();
        let ctm = crypto::ctm_v1(1);
        let Ok((iv, tag)) = crypto::encrypt(&self.key, b"health", &ctm, &mut buf, &mut scratch)
        else {
            return false;
        };
        if buf == msg {
            return false;
        }
        crypto::decrypt(
            &self.key,
            b"health",
            &ctm,
            &iv,
            &tag,
            &mut buf,
            &mut scratch,
        )
        .is_ok()
            && buf == msg
    }
}

/// Refresh in the background until the runtime stops.
pub(crate) async fn refresher(h: Arc<Health>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = stop.changed() => return,
        }
        let h2 = h.clone();
        if tokio::task::spawn_blocking(move || h2.refresh())
            .await
            .is_err()
        {
            tracing::error!("health: deep check panicked");
        }
    }
}

/// The answer: this member first, then its peers (at most [`MAX_FLEET_DETAILS`] entries);
/// `xksProxyFleetSize` counts the members that serve (this one and every peer not
/// `UNAVAILABLE`), so KMS's fleet-size warning fires when only one is left.
fn render(instance_id: &str, status: Status, peers: &[Peer]) -> Bytes {
    let model = format!(
        "keyward {} in-memory AES-256-GCM (KEKs unsealed in locked memory)",
        env!("CARGO_PKG_VERSION")
    );
    let serving = peers
        .iter()
        .filter(|p| p.status != Status::Unavailable)
        .count();
    let mut details = vec![EkmDetail {
        id: instance_id.to_owned(),
        model: model.clone(),
        health_status: status.as_str(),
    }];
    details.extend(
        peers
            .iter()
            .filter(|p| p.id != instance_id)
            .take(MAX_FLEET_DETAILS - 1)
            .map(|p| EkmDetail {
                id: p.id.clone(),
                model: model.clone(),
                health_status: p.status.as_str(),
            }),
    );
    let r = HealthResponse {
        xks_proxy_fleet_size: u32::try_from(1 + serving).unwrap_or(u32::MAX),
        xks_proxy_vendor: "keyward",
        // The FIPS build says so where KMS shows the proxy's model.
        xks_proxy_model: if keyward_secret::fips_mode() {
            format!("keyward {} FIPS", env!("CARGO_PKG_VERSION"))
        } else {
            format!("keyward {}", env!("CARGO_PKG_VERSION"))
        },
        ekm_vendor: "keyward",
        ekm_fleet_details: details,
    };
    // Serializing a struct of strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(&r).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(AtomicBool);
    impl StoreProbe for Flag {
        fn probe(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("gone".into())
            }
        }
    }

    struct Fleet(Vec<Peer>);
    impl StoreProbe for Fleet {
        fn probe(&self) -> Result<(), String> {
            Ok(())
        }
        fn peers(&self) -> Vec<Peer> {
            self.0.clone()
        }
    }

    #[test]
    fn reports_the_fleet_honestly() {
        let peer = |id: &str, status| Peer {
            id: id.into(),
            status,
        };
        let probe = Fleet(vec![
            peer("i-2", Status::Active),
            peer("i-3", Status::Degraded),
            peer("i-4", Status::Unavailable),
        ]);
        let h = Health::new(Arc::new(probe), "i-1".into()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&h.answer()).unwrap();
        // Serving members: this one, i-2 and i-3 (a DEGRADED member still serves).
        assert_eq!(v["xksProxyFleetSize"], 3);
        let details = v["ekmFleetDetails"].as_array().unwrap();
        let got: Vec<(&str, &str)> = details
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap(),
                    d["healthStatus"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("i-1", "ACTIVE"),
                ("i-2", "ACTIVE"),
                ("i-3", "DEGRADED"),
                ("i-4", "UNAVAILABLE")
            ]
        );

        // At most ten entries, this member first, even in a larger fleet.
        let many = Fleet(
            (2..30)
                .map(|i| peer(&format!("i-{i}"), Status::Active))
                .collect(),
        );
        let h = Health::new(Arc::new(many), "i-1".into()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&h.answer()).unwrap();
        assert_eq!(
            v["ekmFleetDetails"].as_array().unwrap().len(),
            MAX_FLEET_DETAILS
        );
        assert_eq!(v["ekmFleetDetails"][0]["id"], "i-1");
        assert_eq!(v["xksProxyFleetSize"], 29);
    }

    #[test]
    fn reports_active_then_degraded() {
        let flag = Arc::new(Flag(AtomicBool::new(true)));
        let h = Health::new(flag.clone(), "i-1".into()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&h.answer()).unwrap();
        assert_eq!(v["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");
        assert!(v["xksProxyModel"]
            .as_str()
            .unwrap()
            .contains(env!("CARGO_PKG_VERSION")));
        assert_eq!(v["xksProxyFleetSize"], 1);
        flag.0.store(false, Ordering::SeqCst);
        assert_eq!(h.refresh(), Status::Degraded);
        let v: serde_json::Value = serde_json::from_slice(&h.answer()).unwrap();
        assert_eq!(v["ekmFleetDetails"][0]["healthStatus"], "DEGRADED");
    }
}
