//! Bounds on the KRS's unauthenticated work (issue 12 §3): caps on connections (in total and
//! per source address), deadlines on every phase of a connection (TLS handshake, waiting for a
//! frame, reading a frame, the whole connection), caps on the session table, counters of the
//! denials that cost nothing (no HSM, no fsync, no log entry), and a rate limit on warning
//! lines. `[limits]` in the KRS configuration sets them; `krs::serve` and `krs::Service` apply
//! them; a `krs status` line with the counters is logged every `status_secs` (when one changed).
//!
//! Deadlines are enforced by [`DeadlineStream`]: before every read or write it sets the
//! socket's timeout to what is left of the current phase, so a client trickling one byte at a
//! time is cut when the phase ends, not only after a quiet read.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `[limits]` of the KRS configuration. Every value must be at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections served at once, all sources together.
    pub max_connections: usize,
    /// Connections served at once from one source (an IPv4 address or an IPv6 /64).
    pub max_connections_per_source: usize,
    /// Seconds for the TLS handshake.
    pub handshake_secs: u64,
    /// Seconds to wait for the first byte of the next frame.
    pub idle_secs: u64,
    /// Seconds from a frame's first byte to its last (and to write the answer).
    pub frame_secs: u64,
    /// Seconds a connection may live in all.
    pub connection_secs: u64,
    /// Frames one connection may send.
    pub max_frames_per_connection: usize,
    /// Sessions (open challenges and recently used ids) the KRS remembers; when full, expired
    /// and used ones go first, then the oldest of the source holding the most.
    pub max_sessions: usize,
    /// Open (unused, unexpired) sessions one source may hold; a Hello beyond it is refused
    /// at once (`busy`, unsigned, counted).
    pub max_sessions_per_source: usize,
    /// Raw evidence larger than this (bytes) is not copied into the release log (its digest
    /// still is).
    pub log_evidence_max: usize,
    /// Seconds between `krs status` lines.
    pub status_secs: u64,
    /// Warning lines per second (bursts up to ten times that); the rest are counted.
    pub warnings_per_sec: u32,
    /// Evidence messages one source may send per minute (bursts up to a quarter of that, at
    /// least 4): each on a live session costs HSM signatures and fsyncs. Beyond: `busy`,
    /// unsigned, before the session is touched.
    pub evidence_per_source_per_min: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_source: 16,
            handshake_secs: 5,
            idle_secs: 30,
            frame_secs: 10,
            connection_secs: 120,
            max_frames_per_connection: 64,
            max_sessions: 4096,
            max_sessions_per_source: 32,
            log_evidence_max: 64 * 1024,
            status_secs: 60,
            warnings_per_sec: 10,
            evidence_per_source_per_min: 60,
        }
    }
}

impl Limits {
    /// The first field that is out of range, as `limits.NAME: why`.
    pub fn check(&self) -> Result<(), String> {
        let ones: [(&str, u64); 13] = [
            (
                "evidence_per_source_per_min",
                u64::from(self.evidence_per_source_per_min),
            ),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_source",
                self.max_connections_per_source as u64,
            ),
            ("handshake_secs", self.handshake_secs),
            ("idle_secs", self.idle_secs),
            ("frame_secs", self.frame_secs),
            ("connection_secs", self.connection_secs),
            (
                "max_frames_per_connection",
                self.max_frames_per_connection as u64,
            ),
            ("max_sessions", self.max_sessions as u64),
            (
                "max_sessions_per_source",
                self.max_sessions_per_source as u64,
            ),
            ("log_evidence_max", self.log_evidence_max as u64),
            ("status_secs", self.status_secs),
            ("warnings_per_sec", u64::from(self.warnings_per_sec)),
        ];
        if let Some((name, _)) = ones.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limits.{name}: must be at least 1"));
        }
        if self.max_connections_per_source > self.max_connections {
            return Err("limits.max_connections_per_source: above max_connections".into());
        }
        if self.max_sessions_per_source > self.max_sessions {
            return Err("limits.max_sessions_per_source: above max_sessions".into());
        }
        Ok(())
    }
}

/// The unit a per-source cap counts: the IPv4 address (IPv4-mapped IPv6 included), or the
/// IPv6 /64 (one host usually holds a whole /64).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConnRefused {
    #[error("connection limit reached")]
    Total,
    #[error("connection limit for this source reached")]
    PerSource,
}

/// Counts the connections being served, in total and per source.
pub(crate) struct ConnTracker {
    max_total: usize,
    max_per_source: usize,
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnTracker {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            max_total: limits.max_connections,
            max_per_source: limits.max_connections_per_source,
            inner: Mutex::new((0, HashMap::new())),
        }
    }

    /// Take a slot for a connection from `src` (already a [`source_key`]); the slot is given
    /// back when the returned guard is dropped.
    pub(crate) fn admit(self: &Arc<Self>, src: IpAddr) -> Result<ConnSlot, ConnRefused> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 >= self.max_total {
            return Err(ConnRefused::Total);
        }
        let n = g.1.entry(src).or_insert(0);
        if *n >= self.max_per_source {
            return Err(ConnRefused::PerSource);
        }
        *n += 1;
        g.0 += 1;
        Ok(ConnSlot {
            tracker: self.clone(),
            src,
        })
    }

    /// Connections being served now.
    pub(crate) fn active(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

/// One admitted connection's slot.
pub(crate) struct ConnSlot {
    tracker: Arc<ConnTracker>,
    src: IpAddr,
}

impl ConnSlot {
    pub(crate) fn source(&self) -> IpAddr {
        self.src
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.tracker.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.src) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.1.remove(&self.src);
            }
        }
    }
}

/// A TCP stream whose reads and writes fail with `TimedOut` once the current phase's
/// deadline (never later than the connection's own) has passed, however the peer paces its
/// bytes.
pub(crate) struct DeadlineStream {
    inner: TcpStream,
    end: Instant,
    deadline: Instant,
    expired: bool,
}

impl DeadlineStream {
    /// Wrap `inner`; the connection ends after `lifetime` whatever happens.
    pub(crate) fn new(inner: TcpStream, lifetime: Duration) -> Self {
        let end = Instant::now() + lifetime;
        Self {
            inner,
            end,
            deadline: end,
            expired: false,
        }
    }

    /// Start a phase that must end within `d` (and within the connection's lifetime).
    pub(crate) fn phase(&mut self, d: Duration) {
        self.deadline = (Instant::now() + d).min(self.end);
    }

    /// Whether a read or write failed because a deadline passed.
    pub(crate) fn expired(&self) -> bool {
        self.expired
    }

    fn left(&mut self) -> io::Result<Duration> {
        match self.deadline.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => {
                self.expired = true;
                Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
            }
        }
    }

    fn timed<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        match r {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.expired = true;
                Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
            }
            r => r,
        }
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.inner.set_read_timeout(Some(left))?;
        let r = self.inner.read(buf);
        self.timed(r)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.inner.set_write_timeout(Some(left))?;
        let r = self.inner.write(buf);
        self.timed(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A token bucket for warning lines: `per_sec` a second, bursts up to ten times that. What it
/// holds back is counted and reported in the next `krs status` line.
pub(crate) struct WarnGate {
    per_sec: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
    suppressed: AtomicU64,
}

impl WarnGate {
    pub(crate) fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            per_sec,
            burst: per_sec * 10.0,
            state: Mutex::new((per_sec * 10.0, Instant::now())),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a warning line may be written now.
    pub(crate) fn allow(&self) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.saturating_duration_since(g.1).as_secs_f64() * self.per_sec;
        g.0 = (g.0 + refill).min(self.burst);
        g.1 = now;
        if g.0 >= 1.0 {
            g.0 -= 1.0;
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Lines held back so far.
    pub(crate) fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// Token buckets per source (for Evidence messages): `per_min` a minute, bursts of a quarter
/// of that (at least 4). At most `max_sources` buckets are kept; when more are needed, full
/// (idle) ones are forgotten first, then the table is cleared (which only forgives).
pub(crate) struct SourceBudget {
    per_sec: f64,
    burst: f64,
    max_sources: usize,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl SourceBudget {
    pub(crate) fn new(per_min: u32, max_sources: usize) -> Self {
        let per_min = f64::from(per_min.max(1));
        Self {
            per_sec: per_min / 60.0,
            burst: (per_min / 4.0).max(4.0),
            max_sources: max_sources.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one unit of `src`'s budget; false when it has none left.
    pub(crate) fn take(&self, src: IpAddr) -> bool {
        let now = Instant::now();
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (per_sec, burst) = (self.per_sec, self.burst);
        let level = |(t, at): &(f64, Instant)| {
            (t + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(burst)
        };
        if !m.contains_key(&src) && m.len() >= self.max_sources {
            m.retain(|_, b| level(b) < burst);
            if m.len() >= self.max_sources {
                m.clear();
            }
        }
        let b = m.entry(src).or_insert((burst, now));
        let t = level(b);
        if t >= 1.0 {
            *b = (t - 1.0, now);
            true
        } else {
            *b = (t, now);
            false
        }
    }
}

/// Counters for the `krs status` line.
#[derive(Default)]
pub(crate) struct Stats {
    unsigned_denies: Mutex<BTreeMap<&'static str, u64>>,
    signed_denies_by: Mutex<BTreeMap<&'static str, u64>>,
    pub signed_denies: AtomicU64,
    pub releases: AtomicU64,
    pub hsm_signs: AtomicU64,
    pub connections_refused_total: AtomicU64,
    pub connections_refused_per_source: AtomicU64,
    pub deadline_cuts: AtomicU64,
    pub frame_limit_cuts: AtomicU64,
}

impl Stats {
    /// Count an unsigned deny by its reason name.
    pub(crate) fn unsigned_deny(&self, reason: &'static str) {
        let mut g = self
            .unsigned_denies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *g.entry(reason).or_insert(0) += 1;
    }

    /// Count a signed deny (a session existed) by its reason name.
    pub(crate) fn signed_deny(&self, reason: &'static str) {
        let mut g = self
            .signed_denies_by
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *g.entry(reason).or_insert(0) += 1;
    }

    pub(crate) fn signed_denies_by(&self) -> BTreeMap<String, u64> {
        self.signed_denies_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect()
    }

    pub(crate) fn unsigned_denies(&self) -> BTreeMap<String, u64> {
        self.unsigned_denies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect()
    }

    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a `krs status` line says (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Entries in the session table (open and recently used), and its cap.
    pub sessions: usize,
    pub max_sessions: usize,
    /// Connections being served, and the cap.
    pub connections: usize,
    pub max_connections: usize,
    /// Signatures made in the HSM (receipts and log heads) since start.
    pub hsm_signs: u64,
    pub releases: u64,
    /// Denies after a session existed: signed and in the release log.
    pub signed_denies: u64,
    /// The same, by reason (the decision was made; its log write may still have failed).
    #[serde(default)]
    pub signed_denies_by_reason: BTreeMap<String, u64>,
    /// Denies before a session existed, by reason: unsigned, not in the release log.
    pub unsigned_denies: BTreeMap<String, u64>,
    pub connections_refused_total: u64,
    pub connections_refused_per_source: u64,
    /// Connections cut because a deadline passed (slow handshake, trickled frame, idle).
    pub deadline_cuts: u64,
    /// Connections closed after `max_frames_per_connection`.
    pub frame_limit_cuts: u64,
    /// Warning lines held back by the rate limit.
    pub warnings_suppressed: u64,
}

/// Cut `s` to at most `max` bytes (on a character boundary), marking the cut.
pub(crate) fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_total_caps() {
        let l = Limits {
            max_connections: 3,
            max_connections_per_source: 2,
            ..Limits::default()
        };
        let t = Arc::new(ConnTracker::new(&l));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let s1 = t.admit(a).unwrap();
        let _s2 = t.admit(a).unwrap();
        assert_eq!(t.admit(a).err(), Some(ConnRefused::PerSource));
        let _s3 = t.admit(b).unwrap();
        assert_eq!(t.admit(b).err(), Some(ConnRefused::Total));
        drop(s1);
        assert_eq!(t.active(), 2);
        assert!(t.admit(a).is_ok());
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let a = source_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = source_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = source_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            source_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn warn_gate_limits_bursts_and_counts() {
        let g = WarnGate::new(1);
        let allowed = (0..100).filter(|_| g.allow()).count();
        assert_eq!(allowed, 10);
        assert_eq!(g.suppressed(), 90);
    }

    #[test]
    fn source_budget_allows_a_burst_then_refuses() {
        let b = SourceBudget::new(60, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        let granted = (0..100).filter(|_| b.take(a)).count();
        assert_eq!(granted, 15);
        assert!(b.take(c));
        // A third source when the table is full: the others are not full, so it is cleared.
        assert!(b.take("127.0.0.4".parse().unwrap()));
        assert!(b.take(a), "a cleared table forgives");
    }

    #[test]
    fn bounded_cuts_on_a_char_boundary() {
        assert_eq!(bounded("abc", 5), "abc");
        let s = "é".repeat(10);
        let b = bounded(&s, 5);
        assert!(b.starts_with("éé...") && b.ends_with("(20 bytes)"), "{b}");
    }

    #[test]
    fn zero_limits_are_refused_by_name() {
        let l = Limits {
            frame_secs: 0,
            ..Limits::default()
        };
        assert_eq!(
            l.check().unwrap_err(),
            "limits.frame_secs: must be at least 1"
        );
        assert!(Limits::default().check().is_ok());
    }
}
