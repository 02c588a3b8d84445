//! One-shot, expiring KRP/1 sessions: `(session_id, nonce, expires)` plus what T needs from the
//! Hello and the Challenge. A session is consumed by its first Evidence message, valid or not;
//! used ids are remembered until well after expiry so a replay is named as one.
//!
//! The table is bounded (issue 12 §3): at most `max` entries; when full, used and expired
//! entries go first, then the oldest open session of the source holding the most open ones,
//! so a flood from one place evicts its own sessions, not a lone agent's. Each source (see
//! `limits::source_key`) may hold at most `max_per_source` open sessions; [`SessionStore::admit`]
//! refuses a Hello beyond that before any work is done.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyward_krp::messages::{Challenge, Hello};

/// What the store knows about a session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub hello: Hello,
    pub challenge: Challenge,
    expires: Instant,
    used: bool,
    source: Option<IpAddr>,
    /// Counted in its source's open sessions (tagged, unused, not yet seen expired).
    counted: bool,
}

/// Why a session cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("unknown session")]
    Unknown,
    #[error("session already used (replay)")]
    Replayed,
    #[error("session expired")]
    Expired,
}

/// Why a new session is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdmitError {
    #[error("this source holds {0} open sessions, the most allowed")]
    PerSource(usize),
}

struct Table {
    map: HashMap<[u8; 16], Session>,
    open_by_source: HashMap<IpAddr, usize>,
    last_sweep: Instant,
}

impl Table {
    fn uncount(&mut self, id: &[u8; 16]) {
        let Some(s) = self.map.get_mut(id) else {
            return;
        };
        if !s.counted {
            return;
        }
        s.counted = false;
        if let Some(src) = s.source {
            if let Some(n) = self.open_by_source.get_mut(&src) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.open_by_source.remove(&src);
                }
            }
        }
    }

    fn remove(&mut self, id: &[u8; 16]) {
        self.uncount(id);
        self.map.remove(id);
    }

    /// Stop counting expired sessions; forget those long past expiry.
    fn sweep(&mut self, now: Instant, keep: Duration) {
        self.last_sweep = now;
        let mut expired = Vec::new();
        let mut old = Vec::new();
        for (id, s) in &self.map {
            if now > s.expires {
                if s.counted {
                    expired.push(*id);
                }
                if now.saturating_duration_since(s.expires) >= keep {
                    old.push(*id);
                }
            }
        }
        for id in expired {
            self.uncount(&id);
        }
        for id in old {
            self.remove(&id);
        }
    }

    /// The entry to drop when the table is full.
    fn victim(&self, now: Instant) -> Option<[u8; 16]> {
        let spent = self
            .map
            .iter()
            .filter(|(_, s)| s.used || now > s.expires)
            .min_by_key(|(_, s)| s.expires)
            .map(|(id, _)| *id);
        if spent.is_some() {
            return spent;
        }
        let heavy = self
            .open_by_source
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(src, _)| *src);
        self.map
            .iter()
            .filter(|(_, s)| heavy.is_none() || s.source == heavy)
            .min_by_key(|(_, s)| s.expires)
            .map(|(id, _)| *id)
    }
}

/// In-memory session store. Sessions do not survive a KRS restart (a restarted KRS simply
/// refuses old sessions as unknown).
pub(crate) struct SessionStore {
    ttl: Duration,
    max: usize,
    max_per_source: usize,
    inner: Mutex<Table>,
}

impl SessionStore {
    /// A store with the default bounds (`limits::Limits::default()`).
    pub(crate) fn new(ttl: Duration) -> Self {
        let d = crate::limits::Limits::default();
        Self::bounded(ttl, d.max_sessions, d.max_sessions_per_source)
    }

    /// A store of at most `max` entries, `max_per_source` open sessions per source.
    pub(crate) fn bounded(ttl: Duration, max: usize, max_per_source: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            max_per_source: max_per_source.max(1),
            inner: Mutex::new(Table {
                map: HashMap::new(),
                open_by_source: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Entries held (open sessions and remembered used ids).
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// The most entries held.
    pub(crate) fn capacity(&self) -> usize {
        self.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self) -> Duration {
        // Used ids are remembered a while to name replays.
        self.ttl * 10
    }

    /// May `source` open another session? (Cheap: checked before a Hello is handled.)
    pub(crate) fn admit(&self, source: Option<IpAddr>) -> Result<(), AdmitError> {
        let now = Instant::now();
        let mut t = self.lock();
        if now.saturating_duration_since(t.last_sweep) >= Duration::from_secs(1) {
            t.sweep(now, self.keep());
        }
        let Some(src) = source else { return Ok(()) };
        let open = t.open_by_source.get(&src).copied().unwrap_or(0);
        if open >= self.max_per_source {
            return Err(AdmitError::PerSource(open));
        }
        Ok(())
    }

    /// Remember a new session (evicting one when the table is full).
    pub(crate) fn insert(&self, id: [u8; 16], hello: Hello, challenge: Challenge) {
        let now = Instant::now();
        let mut t = self.lock();
        if t.map.len() >= self.max {
            t.sweep(now, self.keep());
        }
        while t.map.len() >= self.max {
            match t.victim(now) {
                Some(v) => t.remove(&v),
                None => break,
            }
        }
        t.map.insert(
            id,
            Session {
                hello,
                challenge,
                expires: now + self.ttl,
                used: false,
                source: None,
                counted: false,
            },
        );
    }

    /// Record which source opened session `id` (after [`insert`](Self::insert)), so it
    /// counts toward that source's open sessions.
    pub(crate) fn assign(&self, id: &[u8], source: IpAddr) {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return;
        };
        let mut t = self.lock();
        let Some(s) = t.map.get_mut(&id) else { return };
        if s.used || s.source.is_some() {
            return;
        }
        s.source = Some(source);
        s.counted = true;
        *t.open_by_source.entry(source).or_insert(0) += 1;
    }

    /// Consume a session: the first call returns it (if not expired); every later call fails.
    pub(crate) fn take(&self, id: &[u8]) -> Result<Session, SessionError> {
        let id: [u8; 16] = id.try_into().map_err(|_| SessionError::Unknown)?;
        let mut t = self.lock();
        let s = t.map.get_mut(&id).ok_or(SessionError::Unknown)?;
        if s.used {
            return Err(SessionError::Replayed);
        }
        s.used = true;
        let expired = Instant::now() > s.expires;
        let out = s.clone();
        t.uncount(&id);
        if expired {
            return Err(SessionError::Expired);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_krp::messages::Pins;

    fn hc() -> (Hello, Challenge) {
        (
            Hello {
                v: 1,
                platform: "snp".into(),
                product_release: "x".into(),
                algs: vec![],
                pins: Pins {
                    krs_url: String::new(),
                    krs_tls_spki_sha256: vec![],
                    receipt_spki_sha256: vec![],
                    admin_ca_sha256: vec![],
                },
                key_versions: None,
            },
            Challenge {
                v: 1,
                session_id: vec![1; 16],
                nonce: vec![2; 32],
                krs_id: vec![],
                policy_id: String::new(),
                policy_digest: vec![],
                expires: 0,
                receipt_spki: vec![],
            },
        )
    }

    #[test]
    fn one_shot_and_expiry() {
        let s = SessionStore::new(Duration::from_millis(50));
        let (h, c) = hc();
        s.insert([1; 16], h.clone(), c.clone());
        assert!(s.take(&[1; 16]).is_ok());
        assert_eq!(s.take(&[1; 16]).unwrap_err(), SessionError::Replayed);
        assert_eq!(s.take(&[9; 16]).unwrap_err(), SessionError::Unknown);
        assert_eq!(s.take(&[9; 3]).unwrap_err(), SessionError::Unknown);
        s.insert([2; 16], h, c);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(s.take(&[2; 16]).unwrap_err(), SessionError::Expired);
        assert_eq!(s.take(&[2; 16]).unwrap_err(), SessionError::Replayed);
    }

    fn id(n: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_be_bytes());
        b
    }

    #[test]
    fn table_stays_bounded_and_a_flood_evicts_its_own() {
        let s = SessionStore::bounded(Duration::from_secs(60), 50, 1000);
        let (h, c) = hc();
        let lone: IpAddr = "127.0.0.1".parse().unwrap();
        let flood: IpAddr = "127.0.0.2".parse().unwrap();
        s.insert(id(0), h.clone(), c.clone());
        s.assign(&id(0), lone);
        for n in 1..5000 {
            s.insert(id(n), h.clone(), c.clone());
            s.assign(&id(n), flood);
            assert!(s.len() <= 50);
        }
        assert_eq!(s.len(), 50);
        // The lone agent's session survived 5000 Hellos from elsewhere.
        assert!(s.take(&id(0)).is_ok());
        assert_eq!(s.take(&id(1)).unwrap_err(), SessionError::Unknown);
        assert!(s.take(&id(4999)).is_ok());
    }

    #[test]
    fn per_source_open_sessions_are_capped_and_freed_by_use() {
        let s = SessionStore::bounded(Duration::from_secs(60), 100, 3);
        let (h, c) = hc();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for n in 0..3 {
            assert!(s.admit(Some(a)).is_ok());
            s.insert(id(n), h.clone(), c.clone());
            s.assign(&id(n), a);
        }
        assert_eq!(s.admit(Some(a)), Err(AdmitError::PerSource(3)));
        assert!(s.admit(Some(b)).is_ok());
        assert!(s.admit(None).is_ok());
        s.take(&id(0)).unwrap();
        assert!(s.admit(Some(a)).is_ok());
    }
}
