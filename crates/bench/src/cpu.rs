//! CPU time of the server process (from `/proc/PID/stat`) and of this process (`getrusage`), so
//! a run can report server CPU microseconds per request and the client's own share of the cores.

use std::time::Duration;

/// Why the server's CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("reading /proc/{pid}/stat: {source}")]
    Read { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/stat: unexpected format")]
    Format { pid: u32 },
}

/// Total user + system CPU time of process `pid` (all its threads).
pub fn process_cpu(pid: u32) -> Result<Duration, CpuError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| CpuError::Read { pid, source })?;
    parse_stat(&text, clock_ticks_per_second()).ok_or(CpuError::Format { pid })
}

/// Parses utime + stime (fields 14 and 15, in clock ticks) from a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after the last
/// `)`.
pub fn parse_stat(text: &str, ticks_per_second: u64) -> Option<Duration> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` starts at field 3 (state); utime is field 14, so skip 11 fields.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    if ticks_per_second == 0 {
        return None;
    }
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / ticks_per_second,
    ))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// User + system CPU time of this process, all threads, microsecond resolution.
pub(crate) fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Number of CPUs this machine has online (for "share of the machine").
pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
