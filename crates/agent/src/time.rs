//! Trusted time: the key-release service's clock, as its HSM-signed receipts carry it, carried
//! forward in this VM by the monotonic clock.
//!
//! The host controls the VM's wall clock. Every receipt the agent verifies (the release at
//! boot, and each store-head update an admin write makes) holds the KRS's time, signed with the
//! receipt key in the HSM. [`TrustedClock`] keeps the latest such reading and the monotonic
//! instant it was taken at; `now()` is that reading plus the monotonic time since. The wall
//! clock is compared with it: earlier than the floor by more than [`TOLERANCE`] refuses the
//! boot (a rewound clock), and a drift either way beyond it is warned about and exposed.
//! Schedules (rotation, destruction) run on `now()`, so a host that sets the wall clock a month
//! ahead does not destroy a key early. What the host can still do: slow or speed the VM's
//! monotonic clock within what the hypervisor allows between two receipts (SEV-SNP's Secure TSC
//! would bound it; the time between admin writes bounds how long it lasts), and delay receipts.

use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How far the wall clock may be from the KRS's before it counts as drift (and, behind it,
/// refuses the boot).
pub(crate) const TOLERANCE_SECS: u64 = 60;

/// The latest KRS time seen and when.
#[derive(Default)]
pub struct TrustedClock {
    at: Mutex<Option<(u64, Instant)>>,
}

fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The process's clock (one per appliance).
pub fn clock() -> &'static TrustedClock {
    static C: OnceLock<TrustedClock> = OnceLock::new();
    C.get_or_init(TrustedClock::default)
}

/// What the wall clock says compared with trusted time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    /// No KRS reading yet (a file master key: no KRS at all).
    Unknown,
    /// Within [`TOLERANCE_SECS`].
    Fine(i64),
    /// The wall clock is this many seconds ahead (positive) or behind (negative).
    Drift(i64),
}

impl TrustedClock {
    /// Take a KRS time from a verified receipt. A reading older than what is already known is
    /// ignored (time never goes back).
    pub fn observe(&self, krs_unix: u64) {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let newer = match *at {
            None => true,
            Some((t, i)) => krs_unix > t.saturating_add(now.duration_since(i).as_secs()),
        };
        if newer {
            *at = Some((krs_unix, now));
        }
    }

    /// Trusted Unix time: the last KRS reading plus the monotonic time since; `None` before one.
    pub fn now(&self) -> Option<u64> {
        let at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        at.map(|(t, i)| t.saturating_add(i.elapsed().as_secs()))
    }

    /// Trusted time if known, else the wall clock (no KRS).
    pub fn now_or_wall(&self) -> u64 {
        self.now().unwrap_or_else(wall_now)
    }

    /// The wall clock against trusted time.
    pub fn skew(&self) -> Skew {
        self.skew_at(wall_now())
    }

    fn skew_at(&self, wall: u64) -> Skew {
        let Some(t) = self.now() else {
            return Skew::Unknown;
        };
        let d = i64::try_from(wall).unwrap_or(i64::MAX) - i64::try_from(t).unwrap_or(i64::MAX);
        if d.unsigned_abs() > TOLERANCE_SECS {
            Skew::Drift(d)
        } else {
            Skew::Fine(d)
        }
    }

    /// At boot, after the release: refuse a wall clock earlier than the KRS's time by more than
    /// the tolerance (the error names both).
    pub fn check_not_rewound(&self) -> Result<(), String> {
        self.check_at(wall_now())
    }

    fn check_at(&self, wall: u64) -> Result<(), String> {
        match self.skew_at(wall) {
            Skew::Drift(d) if d < 0 => Err(format!(
                "the VM's clock ({wall}) is {} s earlier than the key-release service's signed \
                 time ({}): refusing to run with a rewound clock (the host sets it; fix the \
                 instance's time source)",
                d.unsigned_abs(),
                self.now().unwrap_or(0)
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_skew_and_rewind() {
        let c = TrustedClock::default();
        assert_eq!(c.skew_at(1000), Skew::Unknown);
        assert!(c.check_at(0).is_ok(), "no reading: nothing to judge");
        c.observe(1_000_000);
        // An older reading does not move time back.
        c.observe(500);
        assert!(c.now().unwrap() >= 1_000_000);
        assert_eq!(c.skew_at(1_000_010), Skew::Fine(10));
        assert_eq!(c.skew_at(1_000_000 + 3_600), Skew::Drift(3_600));
        assert!(
            c.check_at(1_000_000 + 3_600).is_ok(),
            "ahead: warned, not refused"
        );
        assert_eq!(c.skew_at(1_000_000 - 61), Skew::Drift(-61));
        let e = c.check_at(1_000_000 - 3_600).unwrap_err();
        assert!(e.contains("3600 s earlier"), "{e}");
        assert!(c.check_at(1_000_000 - 30).is_ok(), "within the tolerance");
    }
}
