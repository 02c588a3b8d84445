//! Coarse clocks for the request path: whole seconds read from a value the kernel updates
//! once per tick, without the clock-source read (tens of nanoseconds on a VM) that
//! `SystemTime::now` and `Instant::now` pay. Used where seconds are enough: the SigV4 skew
//! window and the connection watchdog.

/// Seconds since the Unix epoch (`CLOCK_REALTIME_COARSE`, a few milliseconds of resolution).
pub(crate) fn unix_secs() -> i64 {
    coarse(nix::time::ClockId::CLOCK_REALTIME_COARSE).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    })
}

/// Monotonic seconds (`CLOCK_MONOTONIC_COARSE`), for deadlines.
pub(crate) fn mono_secs() -> u64 {
    match coarse(nix::time::ClockId::CLOCK_MONOTONIC_COARSE) {
        Some(s) => u64::try_from(s).unwrap_or(0),
        None => {
            // Not expected on Linux; a process-relative count keeps deadlines meaningful.
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_secs()
                + 1
        }
    }
}

fn coarse(clock: nix::time::ClockId) -> Option<i64> {
    nix::time::clock_gettime(clock).ok().map(|ts| ts.tv_sec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn coarse_clocks_agree_with_the_std_clocks() {
        let std_unix = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((super::unix_secs() - std_unix).abs() <= 1);
        let a = super::mono_secs();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = super::mono_secs();
        assert!(b > a, "{a} -> {b}");
    }
}
