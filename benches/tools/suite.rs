//! `make bench`'s driver: starts `keyward demo` on a free port with its own state directory,
//! drives it with `keyward bench` (closed loop at 1/4/16/64 connections, open loop at
//! 1800 req/s, spec-maximum payloads, server CPU per request; the 64-connection figure repeated
//! five times alternating with the floor, medians reported), measures the transport floor
//! with `bench_echo_server`, reads criterion's estimates for the floor's CPU parts, measures
//! start-up time, then writes `bench/results.json` and `bench/chart.png`.
//!
//! Usage: bench_suite [--quick]   (run from the repository root after `cargo build --release`
//! and the criterion benches; `make bench` does all of it)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

struct Suite {
    keyward: PathBuf,
    work: PathBuf,
    quick: bool,
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a process that prints a demo-format JSON line on stdout; waits for it (up to
/// `wait`), saves it to `line_file`, and returns the guard and the parsed line.
fn start_with_json_line(
    mut cmd: Command,
    line_file: &Path,
    wait: Duration,
) -> anyhow::Result<(Guard, Value)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.trim_start().starts_with('{') {
                let _ = tx.send(line);
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(wait)
        .context("no JSON line on stdout in time")?;
    std::fs::write(line_file, format!("{line}\n"))?;
    let v: Value = serde_json::from_str(&line)?;
    Ok((guard, v))
}

impl Suite {
    fn bench(&self, demo: &Path, label: &str, args: &[&str]) -> anyhow::Result<Value> {
        eprintln!("bench: {label}: keyward bench {}", args.join(" "));
        let out = Command::new(&self.keyward)
            .arg("bench")
            .arg("--demo")
            .arg(demo)
            .args(["--json", "--quiet"])
            .args(args)
            .output()
            .context("running keyward bench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "{label}: no JSON from keyward bench (exit {:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        eprintln!(
            "bench: {label}: {} req/s, p99 {} us, errors {}, server {} us/req, client {} cores",
            v["ops_per_s"],
            v["latency_us"]["p99_us"],
            v["errors_total"],
            v["server_cpu"]["us_per_request"],
            v["client_cpu"]["cores"]
        );
        Ok(v)
    }

    fn secs(&self, full: u64) -> String {
        format!("{}s", if self.quick { full.min(3) } else { full })
    }

    fn start_demo(&self, state: &Path, line_file: &Path) -> anyhow::Result<(Guard, Value, u16)> {
        let port = free_port()?;
        let mut cmd = Command::new(&self.keyward);
        cmd.arg("demo")
            .arg("--state-dir")
            .arg(state)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        let (g, v) = start_with_json_line(cmd, line_file, Duration::from_secs(60))?;
        Ok((g, v, port))
    }
}

/// Time from spawning `keyward demo` (state already created) to its XKS listener accepting a
/// TCP connection, polled every 200 us.
fn startup_once(suite: &Suite, state: &Path) -> anyhow::Result<Duration> {
    let port = free_port()?;
    let t0 = Instant::now();
    let child = Command::new(&suite.keyward)
        .arg("demo")
        .arg("--state-dir")
        .arg(state)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _guard = Guard(child);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the demo did not accept on port {port} within 30 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Criterion's mean estimate for a benchmark, in microseconds.
fn criterion_us(id: &str) -> Option<f64> {
    let dir = Path::new("target/criterion")
        .join(id)
        .join("new/estimates.json");
    let v: Value = serde_json::from_slice(&std::fs::read(dir).ok()?).ok()?;
    Some((v["mean"]["point_estimate"].as_f64()? / 1000.0 * 100.0).round() / 100.0)
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0).round(),
        "kernel": kernel.trim(),
        "rustc": rustc,
        "loadavg_at_start": load.trim(),
    })
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let root = std::env::current_dir()?;
    let suite = Suite {
        keyward: root.join("target/release/keyward"),
        work: root.join("target/bench-suite"),
        quick,
    };
    if !suite.keyward.exists() {
        bail!(
            "{} missing: run `cargo build --release` first",
            suite.keyward.display()
        );
    }
    let _ = std::fs::remove_dir_all(&suite.work);
    std::fs::create_dir_all(&suite.work)?;
    let out_dir = root.join("bench");
    std::fs::create_dir_all(&out_dir)?;

    let mut results = json!({
        "generated_by": "make bench (benches/tools/suite.rs)",
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": machine(),
        "quick": quick,
    });

    // 1. The transport floor: bare TLS + HTTP server, same client, same connections.
    let echo_line = suite.work.join("echo.json");
    let echo_bin = root.join("target/release/examples/bench_echo_server");
    // Kept running for the alternating repeats of step 3b.
    let mut echo_guard = None;
    let echo = if echo_bin.exists() {
        let mut cmd = Command::new(&echo_bin);
        cmd.arg(&suite.work).arg("560").arg("2");
        let (guard, _) = start_with_json_line(cmd, &echo_line, Duration::from_secs(10))?;
        let r = suite.bench(
            &echo_line,
            "echo c64",
            &["-c", "64", "--duration", &suite.secs(5), "--warmup", "1s"],
        )?;
        echo_guard = Some(guard);
        Some(r)
    } else {
        eprintln!(
            "bench: {} missing, transport floor skipped",
            echo_bin.display()
        );
        None
    };

    // 2. keyward's request path alone: xks::XksServer over in-memory keys, same client.
    let xks_bin = root.join("target/release/examples/bench_xks_server");
    let xks_line = suite.work.join("xks.json");
    let xks_alone = if xks_bin.exists() {
        let mut cmd = Command::new(&xks_bin);
        cmd.arg(suite.work.join("xks")).arg("2");
        let (guard, _) = start_with_json_line(cmd, &xks_line, Duration::from_secs(20))?;
        let r = suite.bench(
            &xks_line,
            "xks server c64",
            &["-c", "64", "--duration", &suite.secs(5), "--warmup", "1s"],
        )?;
        Some((guard, r))
    } else {
        None
    };

    // 3. keyward demo (or, when it cannot start, the XKS server alone, said so in the results).
    let state = suite.work.join("demo-state");
    let demo_line = suite.work.join("demo.json");
    let (demo_guard, demo, demo_line, server_kind) = match suite.start_demo(&state, &demo_line) {
        Ok((g, v, _port)) => (Some(g), v, demo_line, "keyward demo"),
        Err(e) => {
            eprintln!(
                "bench: keyward demo did not start ({e:#}); measuring bench_xks_server instead"
            );
            results["demo_error"] = json!(format!("{e:#}"));
            let v: Value = serde_json::from_slice(&std::fs::read(&xks_line)?)?;
            (
                None,
                v,
                xks_line.clone(),
                "bench_xks_server (keyward demo unavailable)",
            )
        }
    };
    results["server"] = json!(server_kind);
    results["demo"] =
        json!({ "url": demo["url"], "uri_prefix": demo["uri_prefix"], "pid": demo["pid"] });

    let mut closed = Vec::new();
    for c in [1, 4, 16, 64] {
        let r = suite.bench(
            &demo_line,
            &format!("encrypt c{c}"),
            &[
                "-c",
                &c.to_string(),
                "--duration",
                &suite.secs(5),
                "--warmup",
                "1s",
            ],
        )?;
        closed.push(r);
    }
    let c64 = closed.last().cloned().unwrap_or(Value::Null);
    let open = suite.bench(
        &demo_line,
        "open 1800/s",
        &[
            "--rate",
            "1800",
            "-c",
            "32",
            "--duration",
            &suite.secs(20),
            "--warmup",
            "1s",
        ],
    )?;
    let max = suite.bench(
        &demo_line,
        "spec-max c64",
        &[
            "-c",
            "64",
            "--preset",
            "max",
            "--duration",
            &suite.secs(5),
            "--warmup",
            "1s",
        ],
    )?;
    let decrypt = suite.bench(
        &demo_line,
        "decrypt c64",
        &[
            "-c",
            "64",
            "--op",
            "decrypt",
            "--duration",
            &suite.secs(5),
            "--warmup",
            "1s",
        ],
    )?;
    let mix = suite.bench(
        &demo_line,
        "mix c64",
        &[
            "-c",
            "64",
            "--mix",
            "encrypt=70,decrypt=25,health=5",
            "--duration",
            &suite.secs(5),
            "--warmup",
            "1s",
        ],
    )?;
    // 3b. The headline figure again, alternating with the echo floor: on a shared VM the
    // run-to-run noise (+-15 %) is larger than most changes, so the medians of several
    // alternating runs are what the targets are judged on, with every run kept.
    let c64_args = ["-c", "64", "--duration", &suite.secs(5), "--warmup", "1s"];
    let mut kw_runs = vec![f(&c64["server_cpu"]["us_per_request"])];
    let mut echo_runs: Vec<f64> = echo
        .iter()
        .map(|e| f(&e["server_cpu"]["us_per_request"]))
        .collect();
    for i in 1..if quick { 2 } else { 5 } {
        let r = suite.bench(&demo_line, &format!("encrypt c64 #{}", i + 1), &c64_args)?;
        kw_runs.push(f(&r["server_cpu"]["us_per_request"]));
        if echo_guard.is_some() {
            let r = suite.bench(&echo_line, &format!("echo c64 #{}", i + 1), &c64_args)?;
            echo_runs.push(f(&r["server_cpu"]["us_per_request"]));
        }
    }
    drop(echo_guard);
    let median = |v: &[f64]| -> Option<f64> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let keyward_median = median(&kw_runs).unwrap_or(f64::NAN);
    let echo_median = median(&echo_runs);

    // RSS of the serving process after the load.
    let rss_kib = demo["pid"]
        .as_u64()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        });
    drop(demo_guard);
    let xks_alone = xks_alone.map(|(guard, r)| {
        drop(guard);
        r
    });

    // 3. Start-up: process start to the XKS listener accepting, state already created.
    let mut startups = Vec::new();
    let runs = match (server_kind == "keyward demo", quick) {
        (false, _) => 0,
        (true, true) => 3,
        (true, false) => 7,
    };
    for _ in 0..runs {
        match startup_once(&suite, &state) {
            Ok(d) => startups.push(d.as_secs_f64() * 1000.0),
            Err(e) => {
                eprintln!("bench: start-up: {e:#}");
                break;
            }
        }
    }
    startups.sort_by(f64::total_cmp);
    let startup_median = startups.get(startups.len() / 2).copied();

    // 4. Unseal and memory with 100k keys, in a fresh process.
    let unseal_bin = root.join("target/release/examples/bench_unseal");
    let unseal_dir = suite.work.join("unseal-100k");
    let unseal = (|| -> anyhow::Result<Value> {
        let st = Command::new(&unseal_bin)
            .arg("create")
            .arg(&unseal_dir)
            .arg("100000")
            .status()?;
        if !st.success() {
            bail!("bench_unseal create failed");
        }
        let mut runs = Vec::new();
        for _ in 0..3 {
            let out = Command::new(&unseal_bin)
                .arg("open")
                .arg(&unseal_dir)
                .output()?;
            runs.push(serde_json::from_slice::<Value>(&out.stdout)?);
        }
        runs.sort_by(|a, b| f(&a["unseal_ms"]).total_cmp(&f(&b["unseal_ms"])));
        Ok(runs[1].clone())
    })();
    let unseal = unseal.unwrap_or_else(|e| {
        eprintln!("bench: unseal: {e:#}");
        Value::Null
    });
    eprintln!("bench: unseal 100k: {unseal}");
    let _ = std::fs::remove_dir_all(&unseal_dir);

    // 5. The floor from criterion (run before this driver by `make bench`).
    let sigv4 = criterion_us("floor_sigv4_cached_key");
    let json_us = criterion_us("floor_json");
    let b64 = criterion_us("floor_base64");
    let gcm = criterion_us("floor_aes_gcm/kms");
    let tls = criterion_us("floor_tls_record_roundtrip/kms");
    let echo_cpu = echo_median;
    let work = [sigv4, json_us, b64, gcm].iter().flatten().sum::<f64>();
    let keyward_cpu = keyward_median;
    let floor_total = echo_cpu.map(|e| ((e + work) * 100.0).round() / 100.0);
    results["floor"] = json!({
        "echo_server_cpu_us_per_request": echo_cpu,
        "echo_server_cpu_us_per_request_runs": echo_runs,
        "keyward_us_per_request_runs": kw_runs,
        "echo_ops_per_s": echo.as_ref().map(|e| e["ops_per_s"].clone()),
        "sigv4_cached_key_us": sigv4,
        "json_us": json_us,
        "base64_us": b64,
        "aes_gcm_kms_us": gcm,
        "tls_record_roundtrip_both_ends_us": tls,
        "xks_work_us": (work * 100.0).round() / 100.0,
        "floor_us_per_request": floor_total,
        "keyward_us_per_request": keyward_cpu,
        "floor_fraction_of_keyward": floor_total.map(|fl| (fl / keyward_cpu * 100.0).round() / 100.0),
        "note": "floor = CPU per request of a bare tokio+hyper+rustls server answering a fixed body (includes TCP, TLS records, HTTP/1.1) + the XKS work measured by criterion (SigV4 with cached key, JSON, base64, IV + AES-256-GCM); keyward and echo figures are medians of alternating 64-connection runs",
    });

    results["throughput_vs_connections"] = Value::Array(
        closed
            .iter()
            .map(|r| {
                json!({
                    "connections": r["connections"], "ops_per_s": r["ops_per_s"],
                    "p50_us": r["latency_us"]["p50_us"], "p99_us": r["latency_us"]["p99_us"],
                    "server_cpu_us_per_request": r["server_cpu"]["us_per_request"],
                    "server_cores": r["server_cpu"]["cores"],
                    "client_cores": r["client_cpu"]["cores"],
                    "errors": r["errors_total"],
                })
            })
            .collect(),
    );
    let spec_ratio = f(&max["ops_per_s"]) / f(&c64["ops_per_s"]);
    results["runs"] = json!({
        "encrypt_closed": closed, "open_1800": open, "spec_max_c64": max,
        "decrypt_c64": decrypt, "mix_c64": mix, "echo_c64": echo, "xks_server_alone_c64": xks_alone,
    });
    results["startup_ms"] = json!({ "median": startup_median, "all": startups });
    results["demo_rss_kib_after_load"] = json!(rss_kib);
    results["unseal_100k"] = unseal.clone();
    results["criterion_us"] = json!({
        "xks_sigv4_verify": criterion_us("xks_sigv4_verify"),
        "xks_handle_encrypt_kms": criterion_us("xks_handle_encrypt_kms"),
        "xks_handle_decrypt_kms": criterion_us("xks_handle_decrypt_kms"),
        "xks_handle_encrypt_max": criterion_us("xks_handle_encrypt_max"),
        "unseal_10k_keys": criterion_us("unseal/10k_keys"),
        "unseal_100k_keys": criterion_us("unseal/100k_keys"),
        "client_sign_request": criterion_us("client_sign_request"),
    });
    let unseal_ms = f(&unseal["unseal_ms"]);
    let unseal_rss_mib = f(&unseal["rss_kib"]) / 1024.0;

    let open_p99 = f(&open["latency_us"]["p99_us"]);
    let open_p999 = f(&open["latency_us"]["p999_us"]);
    let open_clean = open["errors_total"] == 0 && open["unsent"] == 0;
    results["targets"] = json!([
        { "name": "server CPU per signed encrypt, TLS, 64 connections (median of alternating runs)", "target": "<= 25 us (aim 15 us)",
          "measured": format!("{keyward_cpu} us"), "met": keyward_cpu <= 25.0 },
        { "name": "open loop 1800 req/s p99", "target": "<= 1 ms", "measured": format!("{open_p99} us"),
          "met": open_p99 <= 1000.0 && open_clean },
        { "name": "open loop 1800 req/s p99.9", "target": "<= 5 ms", "measured": format!("{open_p999} us"),
          "met": open_p999 <= 5000.0 && open_clean },
        { "name": "spec-max throughput / KMS-sized throughput", "target": ">= 0.30",
          "measured": format!("{:.2}", spec_ratio), "met": spec_ratio >= 0.30 },
        { "name": "unseal 100k keys", "target": "<= 1000 ms", "measured": format!("{unseal_ms} ms"),
          "met": unseal_ms <= 1000.0 },
        { "name": "resident memory with 100k keys (fresh process after unseal)", "target": "<= 64 MiB",
          "measured": format!("{unseal_rss_mib:.1} MiB"), "met": unseal_rss_mib <= 64.0 },
        { "name": "start-up to XKS listener accepting", "target": "<= 300 ms",
          "measured": startup_median.map(|m| format!("{m:.1} ms")), "met": startup_median.map(|m| m <= 300.0) },
    ]);

    let results_path = out_dir.join("results.json");
    std::fs::write(
        &results_path,
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    eprintln!("bench: wrote {}", results_path.display());
    chart::draw(&results, &out_dir.join("chart.png"))?;
    eprintln!("bench: wrote {}", out_dir.join("chart.png").display());
    Ok(())
}

#[path = "chartfont.rs"]
mod chartfont;

mod chart {
    //! Throughput against concurrency, and the latency distribution at 1800 req/s.

    use std::path::Path;

    use plotters::prelude::*;
    use serde_json::Value;

    use super::chartfont::register_font;

    /// Percentile p (0..100) on a "nines" axis: 0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3.
    fn nines(p: f64) -> f64 {
        let q = (1.0 - p / 100.0).max(1e-5);
        -q.log10()
    }

    pub fn draw(results: &Value, path: &Path) -> anyhow::Result<()> {
        register_font()?;
        let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(700);

        // Left: throughput vs connections (keyward), with the echo floor at 64 connections.
        let pts: Vec<(f64, f64, f64)> = results["throughput_vs_connections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| {
                        Some((
                            r["connections"].as_f64()?,
                            r["ops_per_s"].as_f64()?,
                            r["server_cpu_us_per_request"].as_f64().unwrap_or(f64::NAN),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let echo = results["floor"]["echo_ops_per_s"].as_f64();
        let ymax = pts.iter().map(|p| p.1).chain(echo).fold(1000.0, f64::max) * 1.15;
        let mut ch = ChartBuilder::on(&left)
            .caption(
                "Signed encrypt over TLS, closed loop (KMS-sized)",
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d((0.8f64..90f64).log_scale(), 0f64..ymax)?;
        ch.configure_mesh()
            .x_desc("keep-alive connections")
            .y_desc("requests per second")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
            .label_style(("sans-serif", 15))
            .draw()?;
        ch.draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            BLUE.stroke_width(3),
        ))?
        .label("keyward demo")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(3)));
        ch.draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.1), 5, BLUE.filled())),
        )?;
        ch.draw_series(pts.iter().map(|p| {
            Text::new(
                format!("{:.0}/s, {:.1} us CPU/req", p.1, p.2),
                (p.0 * 0.85, p.1 + ymax * 0.03),
                ("sans-serif", 13),
            )
        }))?;
        if let Some(e) = echo {
            ch.draw_series(std::iter::once(Circle::new((64.0, e), 6, RED.filled())))?
                .label("bare TLS+HTTP server, 64 conn. (floor)")
                .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
        }
        ch.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;

        // Right: latency distribution at 1800 req/s (open loop, from intended send time).
        let dist: Vec<(f64, f64)> = results["runs"]["open_1800"]["distribution_us"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((nines(p[0].as_f64()?), p[1].as_f64()?.max(1.0))))
                    .collect()
            })
            .unwrap_or_default();
        let lmax = dist.iter().map(|p| p.1).fold(1000.0, f64::max) * 2.0;
        let mut ch = ChartBuilder::on(&right)
            .caption(
                "Latency at 1800 req/s, open loop (from intended send)",
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..5f64, (10f64..lmax).log_scale())?;
        ch.configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (microseconds)")
            .x_labels(6)
            .x_label_formatter(&|x| {
                let p = 100.0 * (1.0 - 10f64.powf(-x));
                match x.round() as i32 {
                    0 => "0%".into(),
                    1 => "90%".into(),
                    2 => "99%".into(),
                    3 => "99.9%".into(),
                    4 => "99.99%".into(),
                    _ => format!("{p:.3}%"),
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 15))
            .draw()?;
        ch.draw_series(LineSeries::new(dist.iter().cloned(), BLUE.stroke_width(3)))?
            .label("keyward demo")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(3)));
        ch.draw_series(dist.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
        for (x, y, label) in [
            (2.0, 1000.0, "target p99 1 ms"),
            (3.0, 5000.0, "target p99.9 5 ms"),
        ] {
            ch.draw_series(std::iter::once(Cross::new((x, y), 8, RED.stroke_width(3))))?;
            ch.draw_series(std::iter::once(Text::new(
                label,
                (x + 0.08, y),
                ("sans-serif", 14).into_font().color(&RED),
            )))?;
        }
        ch.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }
}
