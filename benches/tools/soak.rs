//! `make soak`: the local fleet (`keyward demo --fleet 3`: PostgreSQL, the embedded KRS, three
//! members, HAProxy) at 1,800 req/s open loop for an hour (issue 16, item 3).
//!
//! The load is `keyward bench` through the balancer with a mix of Encrypt, Decrypt,
//! GetKeyMetadata and GetHealthStatus, one bench run per minute (so every minute has its own
//! latency percentiles and error count; the runs follow each other with a gap of well under a
//! second, and each opens new connections, which HAProxy spreads over the members). Every
//! minute an operator also changes the fleet, on a different member each time: a key created
//! and granted, and one key flipped between disabled and enabled.
//!
//! After each minute it samples each member's resident memory (`VmRSS`) and open file
//! descriptors from `/proc`, and writes one CSV row; at the end it checks that the members agree
//! (same store record, same keys), draws the chart, and writes a summary JSON. The bar is flat
//! memory and zero errors: the summary says whether it was met, and the exit status is 1 when
//! it was not.
//!
//! Run from the repository root after `cargo build --release --bin keyward --example soak`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

use keyward_admin::proto::Request;

#[path = "fleetkit.rs"]
mod fleetkit;
use fleetkit::*;

/// The fleet under KMS's load for a long time, sampled each minute.
#[derive(Parser, Debug)]
struct Opts {
    /// The keyward binary (default: target/release/keyward beside this example's directory).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The fleet's state directory (removed first).
    #[arg(long, default_value = "target/soak/state")]
    state_dir: PathBuf,
    /// Minutes of load (one sample each).
    #[arg(long, default_value_t = 60)]
    minutes: u32,
    /// Seconds per sample (60 for the real soak; less for a smoke run).
    #[arg(long, default_value_t = 60)]
    sample_seconds: u32,
    /// Open-loop rate through the balancer, requests per second.
    #[arg(long, default_value_t = 1800)]
    rate: u32,
    /// Keep-alive connections of each bench run.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// The operation mix (keyward bench --mix).
    #[arg(long, default_value = "encrypt=45,decrypt=45,metadata=8,health=2")]
    mix: String,
    /// The per-minute samples.
    #[arg(long, default_value = "bench/soak.csv")]
    csv: PathBuf,
    /// The chart of the samples.
    #[arg(long, default_value = "bench/soak.png")]
    chart: PathBuf,
    /// The summary.
    #[arg(long, default_value = "bench/soak.json")]
    out: PathBuf,
}

const FLIP: &str = "soak-flip";
const HEADER: &str =
    "minute,elapsed_s,requests,ops_per_s,errors,unsent,p50_us,p99_us,p999_us,max_us,\
rss_kb_1,rss_kb_2,rss_kb_3,fds_1,fds_2,fds_3,admin_member,admin_ok,admin_error";

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    block_on(run(opts))
}

/// One minute's figures.
#[derive(Debug, Clone)]
struct Sample {
    minute: u32,
    elapsed_s: f64,
    requests: u64,
    ops_per_s: f64,
    errors: u64,
    unsent: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    rss_kb: [u64; 3],
    fds: [u64; 3],
    admin_member: usize,
    admin_ok: bool,
    admin_error: String,
}

impl Sample {
    fn csv(&self) -> String {
        format!(
            "{},{:.1},{},{:.1},{},{},{:.0},{:.0},{:.0},{:.0},{},{},{},{},{},{},{},{},\"{}\"",
            self.minute,
            self.elapsed_s,
            self.requests,
            self.ops_per_s,
            self.errors,
            self.unsent,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.rss_kb[0],
            self.rss_kb[1],
            self.rss_kb[2],
            self.fds[0],
            self.fds[1],
            self.fds[2],
            self.admin_member,
            self.admin_ok,
            self.admin_error.replace('"', "'"),
        )
    }
}

/// `VmRSS` of a process in kB (0 when it is gone).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of a process (0 when it is gone).
fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// This minute's fleet change on member `m`: a new key (created and granted), and the flip key
/// disabled on even minutes, enabled on odd ones.
async fn change(fleet: &Fleet, m: usize, minute: u32) -> Result<(), String> {
    let p = fleet.profile(m).map_err(|e| e.to_string())?;
    create_open_key(&p, &format!("soak-{minute}")).await?;
    let req = if minute % 2 == 0 {
        Request::KeysDisable {
            store: Some(STORE.into()),
            id: FLIP.into(),
        }
    } else {
        Request::KeysEnable {
            store: Some(STORE.into()),
            id: FLIP.into(),
        }
    };
    admin(&p, req).await.map(|_| ())
}

/// Least-squares slope of `ys` against their index, per sample.
fn slope(ys: &[f64]) -> f64 {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return 0.0;
    }
    let mx = (n - 1.0) / 2.0;
    let my = ys.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mx;
        num += dx * (y - my);
        den += dx * dx;
    }
    num / den
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let bin = keyward_bin(&opts.bin)?;
    eprintln!("soak: starting keyward demo --fleet 3 ({})", bin.display());
    let fleet = Fleet::start(&bin, &opts.state_dir)?;
    eprintln!("soak: the fleet is up: {}", fleet.ready["url"]);
    create_open_key(&fleet.profile(1)?, FLIP)
        .await
        .map_err(anyhow::Error::msg)?;
    settled(&fleet, Duration::from_secs(30)).await?;

    if let Some(dir) = opts.csv.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut csv = String::from(HEADER);
    csv.push('\n');
    std::fs::write(&opts.csv, &csv)?;
    let pids = [fleet.pid(1), fleet.pid(2), fleet.pid(3)];
    let start = Instant::now();
    let mut samples = Vec::new();
    let duration = format!("{}s", opts.sample_seconds);
    for minute in 1..=opts.minutes {
        let b = bench_start(
            &fleet,
            &[
                "--mix",
                &opts.mix,
                "--rate",
                &opts.rate.to_string(),
                "--connections",
                &opts.connections.to_string(),
                "--duration",
                &duration,
                "--warmup",
                "0s",
            ],
        )?;
        // The change lands a few seconds into the minute, under load.
        sleep(2.0).await;
        let m = (minute as usize % 3) + 1;
        let changed = change(&fleet, m, minute).await;
        let r = b.report()?;
        let l = &r["latency_us"];
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let s = Sample {
            minute,
            elapsed_s: start.elapsed().as_secs_f64(),
            requests: r["requests"].as_u64().unwrap_or(0),
            ops_per_s: f(&r["ops_per_s"]),
            errors: r["errors_total"].as_u64().unwrap_or(u64::MAX),
            unsent: r["unsent"].as_u64().unwrap_or(0),
            p50_us: f(&l["p50_us"]),
            p99_us: f(&l["p99_us"]),
            p999_us: f(&l["p999_us"]),
            max_us: f(&l["max_us"]),
            rss_kb: pids.map(rss_kb),
            fds: pids.map(fds),
            admin_member: m,
            admin_ok: changed.is_ok(),
            admin_error: changed.err().unwrap_or_default(),
        };
        eprintln!(
            "soak: minute {minute}/{}: {:.0} req/s, {} errors, p99 {:.0} us, RSS {:?} kB, fds {:?}{}",
            opts.minutes,
            s.ops_per_s,
            s.errors,
            s.p99_us,
            s.rss_kb,
            s.fds,
            if s.admin_ok {
                String::new()
            } else {
                format!(", admin change failed: {}", s.admin_error)
            }
        );
        if s.errors > 0 {
            eprintln!("soak: minute {minute} errors: {}", r["errors"]);
        }
        csv.push_str(&s.csv());
        csv.push('\n');
        // Rewritten each minute, so an interrupted soak keeps what it measured.
        std::fs::write(&opts.csv, &csv)?;
        samples.push(s);
    }
    let (record, keys, _) = settled(&fleet, Duration::from_secs(60)).await?;

    // Memory: the slope over the second half (the first minutes include warm-up growth).
    let half = &samples[samples.len() / 2..];
    let growth_kb_per_min: Vec<f64> = (0..3)
        .map(|i| slope(&half.iter().map(|s| s.rss_kb[i] as f64).collect::<Vec<_>>()))
        .collect();
    let fd_growth: Vec<i64> = (0..3)
        .map(|i| {
            half.last().map_or(0, |s| s.fds[i] as i64) - half.first().map_or(0, |s| s.fds[i] as i64)
        })
        .collect();
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    let admin_failed = samples.iter().filter(|s| !s.admin_ok).count();
    let requests: u64 = samples.iter().map(|s| s.requests).sum();
    let mut p99: Vec<f64> = samples.iter().map(|s| s.p99_us).collect();
    p99.sort_by(f64::total_cmp);
    // "Flat": under 1 MB per member over the second half, extrapolated (slope x minutes).
    let flat = growth_kb_per_min
        .iter()
        .all(|g| g * (half.len() as f64) < 1024.0);
    let met = errors == 0 && admin_failed == 0 && flat && fd_growth.iter().all(|g| *g <= 2);
    let summary = json!({
        "what": "make soak: keyward demo --fleet 3 (PostgreSQL, embedded KRS, 3 members, HAProxy), keyward bench through the balancer, one run per sample",
        "minutes": opts.minutes,
        "sample_seconds": opts.sample_seconds,
        "rate": opts.rate,
        "mix": opts.mix,
        "requests": requests,
        "errors": errors,
        "admin_changes": samples.len(),
        "admin_changes_failed": admin_failed,
        "p99_us_median_minute": round(percentile(&p99, 50.0), 0),
        "p99_us_worst_minute": round(p99.last().copied().unwrap_or(f64::NAN), 0),
        "rss_kb_first": samples.first().map(|s| s.rss_kb),
        "rss_kb_last": samples.last().map(|s| s.rss_kb),
        "rss_growth_kb_per_sample_second_half": growth_kb_per_min.iter().map(|g| round(*g, 1)).collect::<Vec<_>>(),
        "fd_growth_second_half": fd_growth,
        "members_agree": {"record": record, "keys": keys},
        "bar_met": met,
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "csv": opts.csv,
        "chart": opts.chart,
    });
    std::fs::write(&opts.out, serde_json::to_string_pretty(&summary)? + "\n")?;
    chart::draw(&samples, &opts.chart)?;
    println!("{summary}");
    eprintln!(
        "soak: {} ({} errors, {} failed admin changes, RSS growth {:?} kB/sample); wrote {}, {}, {}",
        if met { "bar met" } else { "BAR NOT MET" },
        errors,
        admin_failed,
        growth_kb_per_min,
        opts.csv.display(),
        opts.chart.display(),
        opts.out.display()
    );
    if !met {
        std::process::exit(1);
    }
    Ok(())
}

#[path = "chartfont.rs"]
mod chartfont;

mod chart {
    //! Latency percentiles, memory and errors per sample.

    use std::path::Path;

    use plotters::prelude::*;

    use super::Sample;

    use super::chartfont::register_font;

    pub(super) fn draw(samples: &[Sample], path: &Path) -> anyhow::Result<()> {
        register_font()?;
        let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(450);
        let (bl, br) = bottom.split_horizontally(700);
        let n = samples.len().max(2) as f64;

        let lat_max = samples
            .iter()
            .map(|s| s.p999_us / 1000.0)
            .filter(|x| x.is_finite())
            .fold(1.0, f64::max)
            * 1.15;
        let mut ch = ChartBuilder::on(&top)
            .caption(
                "Latency per sample through the balancer (open loop)",
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(1f64..n, 0f64..lat_max)?;
        ch.configure_mesh()
            .x_desc("sample (minute)")
            .y_desc("ms")
            .label_style(("sans-serif", 15))
            .draw()?;
        for (name, color, pick) in [
            ("p50", BLUE, (|s: &Sample| s.p50_us) as fn(&Sample) -> f64),
            ("p99", GREEN, |s: &Sample| s.p99_us),
            ("p99.9", RED, |s: &Sample| s.p999_us),
        ] {
            ch.draw_series(LineSeries::new(
                samples.iter().map(|s| (s.minute as f64, pick(s) / 1000.0)),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        ch.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .label_font(("sans-serif", 15))
            .draw()?;

        let rss_max =
            samples.iter().flat_map(|s| s.rss_kb).max().unwrap_or(1) as f64 / 1024.0 * 1.2;
        let mut ch = ChartBuilder::on(&bl)
            .caption("Resident memory per member", ("sans-serif", 20))
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(1f64..n, 0f64..rss_max)?;
        ch.configure_mesh()
            .x_desc("sample (minute)")
            .y_desc("MiB")
            .label_style(("sans-serif", 15))
            .draw()?;
        for (i, color) in [BLUE, GREEN, MAGENTA].into_iter().enumerate() {
            ch.draw_series(LineSeries::new(
                samples
                    .iter()
                    .map(|s| (s.minute as f64, s.rss_kb[i] as f64 / 1024.0)),
                color.stroke_width(2),
            ))?
            .label(format!("member {}", i + 1))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        ch.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .label_font(("sans-serif", 15))
            .draw()?;

        let err_max = samples.iter().map(|s| s.errors).max().unwrap_or(0).max(1) as f64 * 1.2;
        let mut ch = ChartBuilder::on(&br)
            .caption("Errors and failed admin changes", ("sans-serif", 20))
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(1f64..n, 0f64..err_max)?;
        ch.configure_mesh()
            .x_desc("sample (minute)")
            .y_desc("count")
            .label_style(("sans-serif", 15))
            .draw()?;
        ch.draw_series(LineSeries::new(
            samples.iter().map(|s| (s.minute as f64, s.errors as f64)),
            RED.stroke_width(2),
        ))?
        .label("XKS errors")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        ch.draw_series(
            samples
                .iter()
                .filter(|s| !s.admin_ok)
                .map(|s| Circle::new((s.minute as f64, 0.0), 6, BLACK.filled())),
        )?
        .label("failed admin change")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.filled()));
        ch.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
        Ok(())
    }
}
