//! Results of a run: latency percentiles from an HDR histogram, error counts by error name and
//! status, throughput and CPU, printed for people or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks; longer ones are recorded as this.
pub(crate) const MAX_LATENCY: Duration = Duration::from_secs(60);

/// A histogram of latencies in nanoseconds, 1 ns to 60 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Fixed, valid bounds (low 1 >= 1, high >= 2 * low, sigfig 3 <= 5): cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_LATENCY.as_nanos() as u64, 3).expect("valid bounds")
}

/// Records one latency, clamping to the histogram's range.
pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    let ns = (latency.as_nanos().min(MAX_LATENCY.as_nanos()) as u64).max(1);
    h.saturating_record(ns);
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary {
                count: 0,
                min_us: 0.0,
                mean_us: 0.0,
                p50_us: 0.0,
                p90_us: 0.0,
                p99_us: 0.0,
                p999_us: 0.0,
                max_us: 0.0,
            };
        }
        LatencySummary {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: (h.mean() / 100.0).round() / 10.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Percentiles at which the latency distribution is reported (for charts).
pub(crate) const DISTRIBUTION_PERCENTILES: [f64; 14] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// `[percentile, microseconds]` pairs for [`DISTRIBUTION_PERCENTILES`].
pub fn distribution(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    DISTRIBUTION_PERCENTILES
        .iter()
        .map(|p| [*p, us(h.value_at_percentile(*p))])
        .collect()
}

/// CPU used during the measured window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuUse {
    /// CPU microseconds per completed request.
    pub us_per_request: f64,
    /// Average cores busy (CPU time / wall time).
    pub cores: f64,
    /// `cores` as a share of all online CPUs (0..1).
    pub share_of_machine: f64,
}

impl CpuUse {
    pub fn new(cpu: Duration, wall: Duration, requests: u64, cpus: usize) -> CpuUse {
        let wall_s = wall.as_secs_f64();
        let cores = if wall_s > 0.0 {
            cpu.as_secs_f64() / wall_s
        } else {
            0.0
        };
        CpuUse {
            us_per_request: if requests > 0 {
                round2(cpu.as_secs_f64() * 1e6 / requests as f64)
            } else {
                0.0
            },
            cores: round2(cores),
            share_of_machine: round2(cores / cpus.max(1) as f64),
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub connections: usize,
    /// Intended rate (open loop only).
    pub rate: Option<f64>,
    pub mix: String,
    pub plaintext_bytes: usize,
    pub aad_bytes: usize,
    pub cdiv: bool,
    pub client_threads: usize,
    /// The measured window (after warm-up), seconds.
    pub duration_s: f64,
    /// Requests completed in the window (successes and errors).
    pub requests: u64,
    pub ok: u64,
    pub errors_total: u64,
    /// Completed requests per second in the window.
    pub ops_per_s: f64,
    /// Per-operation request counts in the window.
    pub by_op: BTreeMap<String, u64>,
    /// `"<status> <errorName>"` or `"<kind>: <detail>"` for transport failures.
    pub errors: BTreeMap<String, u64>,
    /// Open loop: scheduled requests never sent because the generator fell too far behind.
    pub unsent: u64,
    pub latency_us: LatencySummary,
    /// `[percentile, microseconds]`.
    pub distribution_us: Vec<[f64; 2]>,
    pub server_pid: Option<u32>,
    pub server_cpu: Option<CpuUse>,
    pub client_cpu: CpuUse,
    /// Why the server's CPU could not be read, when it was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_error: Option<String>,
}

impl Report {
    /// True when every scheduled request was sent and answered with 200.
    pub fn clean(&self) -> bool {
        self.errors_total == 0 && self.unsent == 0 && self.requests > 0
    }

    /// The human-readable summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        let _ = writeln!(s, "target      {}", self.target);
        let load = match self.rate {
            Some(r) => format!(
                "open loop at {r} req/s over {} connections",
                self.connections
            ),
            None => format!("closed loop, {} connections", self.connections),
        };
        let _ = writeln!(
            s,
            "load        {load}; mix {}; plaintext {} B, AAD {} B{}",
            self.mix,
            self.plaintext_bytes,
            self.aad_bytes,
            if self.cdiv { ", CDIV" } else { "" }
        );
        let _ = writeln!(
            s,
            "requests    {} in {:.2} s = {:.0} req/s ({} ok, {} errors{})",
            self.requests,
            self.duration_s,
            self.ops_per_s,
            self.ok,
            self.errors_total,
            if self.unsent > 0 {
                format!(", {} never sent", self.unsent)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "latency us  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
        );
        if let Some(c) = &self.server_cpu {
            let _ = writeln!(
                s,
                "server cpu  {} us/request, {} cores (pid {})",
                c.us_per_request,
                c.cores,
                self.server_pid.unwrap_or(0)
            );
        } else if let Some(e) = &self.server_cpu_error {
            let _ = writeln!(s, "server cpu  not measured: {e}");
        }
        let c = &self.client_cpu;
        let _ = writeln!(
            s,
            "client cpu  {} us/request, {} cores ({:.0}% of the machine, {} threads)",
            c.us_per_request,
            c.cores,
            c.share_of_machine * 100.0,
            self.client_threads
        );
        for (k, v) in &self.errors {
            let _ = writeln!(s, "error       {v} x {k}");
        }
        s
    }
}
