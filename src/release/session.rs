//! One-shot, expiring KRP/1 sessions: `(session_id, nonce, expires)` plus what T needs from the
//! Hello and the Challenge. A session is consumed by its first Evidence message, valid or not;
//! used ids are remembered until well after expiry so a replay is named as one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::messages::{Challenge, Hello};

/// What the store knows about a session.
#[derive(Debug, Clone)]
pub struct Session {
    pub hello: Hello,
    pub challenge: Challenge,
    expires: Instant,
    used: bool,
}

/// Why a session cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("unknown session")]
    Unknown,
    #[error("session already used (replay)")]
    Replayed,
    #[error("session expired")]
    Expired,
}

/// In-memory session store. Sessions do not survive a KRS restart (a restarted KRS simply
/// refuses old sessions as unknown).
pub struct SessionStore {
    ttl: Duration,
    inner: Mutex<HashMap<[u8; 16], Session>>,
}

impl SessionStore {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Remember a new session.
    pub fn insert(&self, id: [u8; 16], hello: Hello, challenge: Challenge) {
        let now = Instant::now();
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Forget sessions long past expiry (kept a while to name replays).
        let keep = self.ttl * 10;
        m.retain(|_, s| now.saturating_duration_since(s.expires) < keep);
        m.insert(
            id,
            Session {
                hello,
                challenge,
                expires: now + self.ttl,
                used: false,
            },
        );
    }

    /// Consume a session: the first call returns it (if not expired); every later call fails.
    pub fn take(&self, id: &[u8]) -> Result<Session, SessionError> {
        let id: [u8; 16] = id.try_into().map_err(|_| SessionError::Unknown)?;
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.get_mut(&id).ok_or(SessionError::Unknown)?;
        if s.used {
            return Err(SessionError::Replayed);
        }
        s.used = true;
        if Instant::now() > s.expires {
            return Err(SessionError::Expired);
        }
        Ok(s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::messages::Pins;

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
}
