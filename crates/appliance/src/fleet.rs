//! Membership of a fleet on a shared key store: this member's heartbeat, its view of the
//! others (for GetHealthStatus and `keyward admin fleet`), and the follower loop that applies
//! other members' writes within a poll interval.
//!
//! Nothing here is on the XKS request path: the loops run on blocking threads and publish
//! their results through the registry's snapshot and an `ArcSwap` the health refresher reads.

use keyward_keystore::now_unix;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use keyward_keystore::Registry;
use keyward_keystore::{FleetBoard, Member};
use keyward_xks::{HealthStatus, Peer, StoreProbe};

use super::tls::ManagedTls;

/// How often a member records its heartbeat.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// A member whose last heartbeat is older than this is `DEGRADED` (late).
pub(crate) const LATE: Duration = Duration::from_secs(7);
/// ... older than this, `UNAVAILABLE`.
pub(crate) const GONE: Duration = Duration::from_secs(20);
/// ... older than this, no longer listed.
pub(crate) const FORGOTTEN: Duration = Duration::from_secs(300);
/// How often a follower asks the store for new records when no notification woke it.
pub(crate) const POLL: Duration = Duration::from_secs(1);
/// A member that has not applied the newest record for this long is `DEGRADED` (behind).
pub(crate) const BEHIND: Duration = Duration::from_secs(5);

/// A member's judged state, as `keyward admin fleet` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct MemberView {
    #[serde(flatten)]
    pub member: Member,
    /// Seconds since its last heartbeat (by the database's clock).
    pub age_secs: u64,
    /// `ACTIVE`, `DEGRADED` or `UNAVAILABLE`, as GetHealthStatus reports it.
    pub status: &'static str,
    /// Whether this is the member answering.
    pub this: bool,
}

/// This member's place in the fleet.
pub(crate) struct Fleet {
    board: Arc<dyn FleetBoard>,
    id: String,
    label: String,
    registry: Arc<Registry>,
    /// The last membership read, judged.
    seen: ArcSwap<Vec<MemberView>>,
    /// Unix seconds of the last heartbeat the board accepted (0: none yet).
    last_ok: AtomicU64,
    /// Since when (Unix seconds) some member is ahead of this one's seq (0: not behind).
    behind_since: AtomicU64,
    /// The newest record any member had applied, by heartbeat round (Unix seconds, seq), for
    /// the last [`BEHIND`] and a little more: a member is behind only when it has not applied
    /// what was already the newest [`BEHIND`] ago (a write a second old is not a lag).
    newest: std::sync::Mutex<std::collections::VecDeque<(u64, u64)>>,
}

fn status_str(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Active => "ACTIVE",
        HealthStatus::Degraded => "DEGRADED",
        HealthStatus::Unavailable => "UNAVAILABLE",
    }
}

/// A member's state from its heartbeat: late, or behind `settled_seq` (the newest record that
/// was known [`BEHIND`] ago), is `DEGRADED`; not seen for [`GONE`] is `UNAVAILABLE`.
pub(crate) fn judge(m: &Member, now: u64, settled_seq: u64) -> HealthStatus {
    let age = now.saturating_sub(m.last_seen);
    if age > GONE.as_secs() {
        HealthStatus::Unavailable
    } else if age > LATE.as_secs() || m.seq < settled_seq {
        HealthStatus::Degraded
    } else {
        HealthStatus::Active
    }
}

impl Fleet {
    pub(crate) fn new(
        board: Arc<dyn FleetBoard>,
        id: String,
        label: String,
        registry: Arc<Registry>,
    ) -> Arc<Self> {
        Arc::new(Fleet {
            board,
            id,
            label,
            registry,
            seen: ArcSwap::from_pointee(Vec::new()),
            last_ok: AtomicU64::new(0),
            behind_since: AtomicU64::new(0),
            newest: std::sync::Mutex::new(std::collections::VecDeque::new()),
        })
    }

    fn me(&self) -> Member {
        let snap = self.registry.snapshot();
        let keks: usize = snap.stores.values().map(|s| s.keys.len()).sum();
        Member {
            id: self.id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            label: self.label.clone(),
            last_seen: 0,
            keks: keks as u64,
            seq: self.registry.head().seq,
        }
    }

    /// One heartbeat round (blocking): record ours, read everyone's, judge them.
    pub(crate) fn beat(&self) -> Result<(), keyward_keystore::KeystoreError> {
        self.board.beat(&self.me())?;
        let (members, now) = self.board.members(FORGOTTEN.as_secs())?;
        self.last_ok.store(now_unix(), Ordering::Relaxed);
        let newest = members.iter().map(|m| m.seq).max().unwrap_or(0);
        let settled = {
            let mut h = self.newest.lock().unwrap_or_else(|e| e.into_inner());
            h.push_back((now, newest));
            while h.len() > 2
                && h.get(1)
                    .is_some_and(|(t, _)| now.saturating_sub(*t) >= BEHIND.as_secs())
            {
                h.pop_front();
            }
            // The newest seq already known BEHIND ago (0 until the history is that long).
            h.iter()
                .filter(|(t, _)| now.saturating_sub(*t) >= BEHIND.as_secs())
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0)
        };
        let mine = self.registry.head().seq;
        if mine < newest {
            let _ = self.behind_since.compare_exchange(
                0,
                now_unix(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.behind_since.store(0, Ordering::Relaxed);
        }
        let views = members
            .into_iter()
            .map(|m| {
                let status = status_str(judge(&m, now, settled));
                MemberView {
                    age_secs: now.saturating_sub(m.last_seen),
                    this: m.id == self.id,
                    status,
                    member: m,
                }
            })
            .collect();
        self.seen.store(Arc::new(views));
        Ok(())
    }

    /// The members as the last round saw them.
    pub(crate) fn members(&self) -> Vec<MemberView> {
        self.seen.load().as_ref().clone()
    }

    /// The other members, for GetHealthStatus.
    pub(crate) fn peers(&self) -> Vec<Peer> {
        self.seen
            .load()
            .iter()
            .filter(|v| !v.this)
            .map(|v| Peer {
                id: v.member.id.clone(),
                status: match v.status {
                    "ACTIVE" => HealthStatus::Active,
                    "DEGRADED" => HealthStatus::Degraded,
                    _ => HealthStatus::Unavailable,
                },
            })
            .collect()
    }

    /// Whether this member's own view is healthy: the store answered a heartbeat lately and
    /// this member is not behind the newest record for long. The error says why not.
    pub(crate) fn own_state(&self) -> Result<(), String> {
        let now = now_unix();
        let ok = self.last_ok.load(Ordering::Relaxed);
        if now.saturating_sub(ok) > LATE.as_secs() {
            return Err(format!(
                "the shared key store has not answered a heartbeat for {} s (serving from memory)",
                now.saturating_sub(ok)
            ));
        }
        let since = self.behind_since.load(Ordering::Relaxed);
        if since != 0 && now.saturating_sub(since) > BEHIND.as_secs() {
            return Err(format!(
                "behind the shared key store's newest record for {} s",
                now.saturating_sub(since)
            ));
        }
        Ok(())
    }

    /// Remove this member's row (clean shutdown), so the others stop counting it at once.
    pub(crate) fn leave(&self) {
        if let Err(e) = self.board.leave(&self.id) {
            tracing::warn!(error = %e, "fleet: could not remove this member's heartbeat");
        }
    }
}

impl keyward_admin::FleetAdmin for Fleet {
    fn members(&self) -> Result<serde_json::Value, keyward_admin::AdminError> {
        serde_json::to_value(Fleet::members(self))
            .map_err(|e| keyward_admin::AdminError::Internal(e.to_string()))
    }
}

/// Heartbeat every [`HEARTBEAT`] until `stop`; a store outage is logged once when it starts
/// and once when it ends.
pub(crate) async fn heartbeat_loop(fleet: Arc<Fleet>, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        let f = fleet.clone();
        match tokio::task::spawn_blocking(move || f.beat()).await {
            Ok(Ok(())) if failing => {
                failing = false;
                tracing::info!("fleet: heartbeats recorded again");
            }
            Ok(Ok(())) => {}
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "fleet: heartbeat failed; serving from memory, retrying");
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!("fleet: heartbeat task failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.changed() => break,
        }
    }
    let f = fleet.clone();
    let _ = tokio::task::spawn_blocking(move || f.leave()).await;
}

/// Apply other members' writes: on each wake-up from the store's notifications, and every
/// [`POLL`] without one. A refused re-read (the store went back, or forked) keeps the current
/// view and is logged at error level each time it changes. With the appliance-managed TLS
/// identity, a TLS key or chain another member installed is served after the re-read
/// ([`ManagedTls::follow`]). A store another member re-sealed under a master-key version this
/// boot was not released is fetched from the KRS ([`Follower::fetch_missing`]) and the
/// re-read tried again, without a restart.
pub(crate) async fn follow_loop(follower: Follower, mut stop: watch::Receiver<bool>) {
    let mut last_error: Option<String> = None;
    let mut next_fetch = std::time::Instant::now();
    let mut fetch_delay = FETCH_RETRY_FIRST;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = async {
                match &follower.wake {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = stop.changed() => return,
        }
        let r = follower.registry.clone();
        let t = follower.tls.clone();
        let reread = move || {
            let refreshed = r.refresh();
            // Also after a failed re-read: a local admin write may have applied other
            // members' records (TLS ones among them) before it.
            if let Some(t) = &t {
                if let Err(e) = t.follow() {
                    tracing::error!("fleet: the TLS identity in the shared key store: {e}");
                }
            }
            refreshed
        };
        let mut outcome = tokio::task::spawn_blocking(reread.clone()).await;
        if let Ok(Err(keyward_keystore::KeystoreError::MasterKeyVersionMissing {
            needed, ..
        })) = &outcome
        {
            let needed = *needed;
            if follower.source.is_some() && std::time::Instant::now() >= next_fetch {
                let f = follower.clone();
                let fetched = tokio::task::spawn_blocking(move || f.fetch_missing(needed)).await;
                if matches!(fetched, Ok(true)) {
                    fetch_delay = FETCH_RETRY_FIRST;
                    outcome = tokio::task::spawn_blocking(reread).await;
                } else {
                    next_fetch = std::time::Instant::now() + fetch_delay;
                    fetch_delay = (fetch_delay * 2).min(FETCH_RETRY_MAX);
                }
            }
        }
        match outcome {
            Ok(Ok(_)) => {
                if last_error.take().is_some() {
                    tracing::info!("fleet: the shared key store is readable again");
                }
            }
            Ok(Err(e)) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    match e {
                        keyward_keystore::KeystoreError::Unavailable { .. } => {
                            tracing::warn!("fleet: {text}; serving from memory, retrying")
                        }
                        _ => tracing::error!(
                            "fleet: the shared key store was NOT applied: {text}; the current \
                             view is kept"
                        ),
                    }
                    last_error = Some(text);
                }
            }
            Err(e) => tracing::error!("fleet: re-read task failed: {e}"),
        }
    }
}

/// After a failed fetch of a missing master-key version, the first wait before the next try
/// (doubled each time, up to [`FETCH_RETRY_MAX`]): a deny will not change by itself.
const FETCH_RETRY_FIRST: Duration = Duration::from_secs(5);
const FETCH_RETRY_MAX: Duration = Duration::from_secs(300);

/// What the follower loop works with.
#[derive(Clone)]
pub(crate) struct Follower {
    pub registry: Arc<Registry>,
    pub tls: Option<Arc<ManagedTls>>,
    pub wake: Option<Arc<Notify>>,
    /// This boot's master-key source (an attested release: it can fetch a version again).
    pub source: Option<Arc<dyn keyward_keystore::MasterKeySource>>,
    pub audit: keyward_audit::AuditLog,
}

impl Follower {
    /// Another member re-sealed the shared store under master-key version `needed`, which
    /// this boot was not released: a fresh attested release asking for it (the KRS judges
    /// the new evidence as at boot), added to the key set. Audited either way (`mk_release`),
    /// the deny code with it. `true`: the version is held now.
    pub(crate) fn fetch_missing(&self, needed: u32) -> bool {
        let Some(source) = self.source.as_ref().filter(|s| s.attested()) else {
            return false;
        };
        const WHO: &str = "keyward (fleet follower)";
        tracing::info!(
            needed,
            "fleet: the shared key store is sealed under master-key version {needed}, which \
             this boot does not hold: asking the key-release service for it"
        );
        let got = source
            .obtain_more(&[needed])
            .map_err(|e| keyward_agent::error_chain(&e));
        let learned = got.and_then(|keys| {
            self.registry
                .learn_master_keys(keys)
                .map_err(|e| e.to_string())
        });
        match learned {
            Ok(st) if st.current >= needed => {
                tracing::info!(
                    current = st.current,
                    "fleet: master-key version {} released while running; re-reading the store",
                    st.current
                );
                self.audit.admin(
                    WHO,
                    "mk_release",
                    &format!("master-key version {needed} released while running"),
                    true,
                );
                true
            }
            Ok(st) => {
                let why = format!(
                    "the key-release service released version {}, not {needed}",
                    st.current
                );
                tracing::error!("fleet: {why}; admin writes stay refused");
                self.audit.admin(
                    WHO,
                    "mk_release",
                    &format!("master-key version {needed}; refused: {why}"),
                    false,
                );
                false
            }
            Err(why) => {
                tracing::error!(
                    "fleet: fetching master-key version {needed} failed: {why}; XKS keeps \
                     serving from memory, admin writes stay refused, retried later"
                );
                self.audit.admin(
                    WHO,
                    "mk_release",
                    &format!("master-key version {needed}; refused: {why}"),
                    false,
                );
                false
            }
        }
    }
}

/// The health probe of a fleet member: the store answers heartbeats and this member keeps up;
/// the peers from the last heartbeat round.
pub(crate) struct FleetProbe(pub Arc<Fleet>);

impl StoreProbe for FleetProbe {
    fn probe(&self) -> Result<(), String> {
        self.0.own_state()
    }

    fn peers(&self) -> Vec<Peer> {
        self.0.peers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64, last_seen: u64) -> Member {
        Member {
            id: "i".into(),
            version: "v".into(),
            label: "l".into(),
            last_seen,
            keks: 1,
            seq,
        }
    }

    #[test]
    fn judging_members() {
        assert_eq!(judge(&m(5, 100), 101, 5), HealthStatus::Active);
        // Behind on the store.
        assert_eq!(judge(&m(4, 100), 101, 5), HealthStatus::Degraded);
        // Late.
        assert_eq!(
            judge(&m(5, 100), 100 + LATE.as_secs() + 1, 5),
            HealthStatus::Degraded
        );
        // Gone.
        assert_eq!(
            judge(&m(5, 100), 100 + GONE.as_secs() + 1, 5),
            HealthStatus::Unavailable
        );
    }
}
