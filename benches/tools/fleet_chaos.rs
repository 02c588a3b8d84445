//! `make fleet-chaos`: `keyward demo --fleet 3` under faults, measured, with `keyward bench`
//! driving 1,800 req/s open loop through the balancer (issue 14, item 8 and its numbers).
//!
//! Phases, each with a fresh bench run (new connections, so HAProxy spreads them over every
//! member that is up):
//!
//! 1. `baseline`: nothing happens;
//! 2. `kill-9`: member 3 is killed with SIGKILL (HAProxy's open connections to it counted just
//!    before), restarted from its configuration 10 s later, and checked to have caught up;
//! 3. `postgres-stopped`: PostgreSQL stopped for 30 s (`pg_ctl stop -m fast`); an admin write
//!    tried every 2 s meanwhile (all must be refused, fast), then accepted after the restart,
//!    and every member catches up;
//! 4. `admin-writes`: three operators, one per member, create keys for 60 s; no write lost or
//!    twice, every member at the same store record with the same keys;
//! 5. `changes`: 100 changes (a key disabled, enabled, ...) on member 1, each timed until
//!    members 2 and 3 both enforce it (an in-process SigV4 client polling each directly);
//! 6. throughput: closed loop through the balancer with 3 members, then with HAProxy sending
//!    to member 1 only (members 2 and 3 disabled on its stats socket), and to member 1
//!    directly; each member's CPU from /proc/PID/stat;
//! 7. `boot-100k`: 100,000 keys created in the fleet's store (a registry in this process
//!    released through the same KRS, batches of 1,000), then member 3 restarted three times:
//!    "released" to "XKS API on" from its log;
//! 8. `behind-krs`: the database dumped, written to, restored (the database operator's
//!    rollback); a new member must exit with the rollback refusal, running members keep their
//!    view.
//!
//! It writes `bench/fleet-chaos.json` and the table between the `fleet-chaos` markers of
//! `docs/performance.md`. Run from the repository root after `cargo build --release --bin
//! keyward --example fleet_chaos`; `--quick` shortens every phase (a smoke run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};

use keyward_admin::proto::Request;
use keyward_keystore::KeyUsage;

#[path = "fleetkit.rs"]
mod fleetkit;
use fleetkit::*;

/// The fleet's faults, measured.
#[derive(Parser, Debug)]
struct Opts {
    /// The keyward binary (default: target/release/keyward beside this example).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The fleet's state directory (removed first).
    #[arg(long, default_value = "target/fleet-chaos/state")]
    state_dir: PathBuf,
    /// The open-loop rate through the balancer, requests per second.
    #[arg(long, default_value_t = 1800)]
    rate: u32,
    /// Connections of each open-loop run.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Keys in the store for the boot measurement.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Where the results go.
    #[arg(long, default_value = "bench/fleet-chaos.json")]
    out: PathBuf,
    /// The page whose fleet-chaos table is rewritten (empty: none).
    #[arg(long, default_value = "docs/performance.md")]
    doc: PathBuf,
    /// Every phase a few seconds only, 10 changes, 10,000 keys (a smoke run; nothing written
    /// to the page).
    #[arg(long)]
    quick: bool,
    /// Start nothing: rewrite the page's table from the results in --out.
    #[arg(long)]
    render: bool,
}

const FLIP: &str = "chaos-flip";
const BEGIN: &str = "<!-- fleet-chaos: begin (written by make fleet-chaos) -->";
const END: &str = "<!-- fleet-chaos: end -->";

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    block_on(run(opts))
}

fn open_loop(fleet: &Fleet, opts: &Opts) -> anyhow::Result<Bench> {
    bench_start(
        fleet,
        &[
            "--rate",
            &opts.rate.to_string(),
            "--connections",
            &opts.connections.to_string(),
            "--duration",
            "1h",
            "--warmup",
            "1s",
        ],
    )
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    if opts.render {
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&opts.out)?)?;
        write_table(&opts.doc, &r)?;
        print!("{}", table(&r));
        return Ok(());
    }
    let bin = keyward_bin(&opts.bin)?;
    let q = opts.quick;
    let secs = |full: f64, quick: f64| if q { quick } else { full };
    eprintln!(
        "fleet-chaos: starting keyward demo --fleet 3 ({})",
        bin.display()
    );
    // Other work on the machine shows in every figure: the load average goes in the results.
    let load_before = loadavg();
    let mut fleet = Fleet::start(&bin, &opts.state_dir)?;
    eprintln!("fleet-chaos: the fleet is up: {}", fleet.ready["url"]);
    let p1 = fleet.profile(1)?;
    let mut phases = Vec::new();

    // 1. Baseline, with each member's and HAProxy's CPU at this rate (the sizing figure).
    eprintln!("fleet-chaos: baseline");
    let pids: Vec<u32> = [fleet.pid(1), fleet.pid(2), fleet.pid(3)]
        .into_iter()
        .chain(fleet.ready["balancer_pid"].as_u64().map(|p| p as u32))
        .collect();
    let b = open_loop(&fleet, &opts)?;
    sleep(1.5).await;
    let (before, t) = (cpu_of(&pids), Instant::now());
    sleep(secs(20.0, 4.0)).await;
    let (after, wall) = (cpu_of(&pids), t.elapsed().as_secs_f64());
    let report = b.finish()?;
    let answered = f64::from(opts.rate) * wall;
    let share: Vec<f64> = (0..pids.len())
        .map(|i| round((after[i] - before[i]) / wall * 100.0, 1))
        .collect();
    let per_request: Vec<f64> = (0..pids.len())
        .map(|i| round((after[i] - before[i]) * 1e6 / answered.max(1.0), 1))
        .collect();
    phases.push(phase_row(
        "baseline",
        &report,
        json!({
            "cpu_percent_of_a_core": {"members": &share[..3], "haproxy": share.get(3)},
            "cpu_us_per_request": {"members": &per_request[..3], "haproxy": per_request.get(3)},
        }),
    ));

    // 2. kill -9 one of three, restart it, check it caught up.
    eprintln!("fleet-chaos: kill -9 member 3");
    let b = open_loop(&fleet, &opts)?;
    sleep(secs(5.0, 2.0)).await;
    let on_it: u64 = fleet.stat("member-3", "scur")?.parse().unwrap_or(0);
    let pid3 = fleet.pid(3);
    signal(pid3, nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    wait_gone(pid3, Duration::from_secs(10));
    let mut down_after = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if fleet.stat("member-3", "status")?.starts_with("DOWN") {
            down_after = Some(killed.elapsed().as_secs_f64());
            break;
        }
        sleep(0.1).await;
    }
    // Changes while it is down.
    create_open_key(&p1, "made-while-member-3-was-down")
        .await
        .map_err(anyhow::Error::msg)?;
    sleep(secs(10.0, 2.0) - killed.elapsed().as_secs_f64().min(secs(10.0, 2.0))).await;
    let log = fleet.state.join("member-3/restart.log");
    let boot = fleet.restart_member3(&log)?;
    let restarted = killed.elapsed().as_secs_f64();
    let mut up_after = None;
    while killed.elapsed() < Duration::from_secs(40) {
        if fleet.stat("member-3", "status")?.starts_with("UP") {
            up_after = Some(killed.elapsed().as_secs_f64());
            break;
        }
        sleep(0.1).await;
    }
    let (record, keys, _) = settled(&fleet, Duration::from_secs(20)).await?;
    let p3 = fleet.profile(3)?;
    let has = key_ids(&p3)
        .await?
        .iter()
        .any(|k| k == "made-while-member-3-was-down");
    sleep(secs(10.0, 2.0)).await;
    let report = b.finish()?;
    phases.push(phase_row(
        "kill-9",
        &report,
        json!({
            "connections_on_the_killed_member": on_it,
            "marked_down_by_haproxy_after_s": down_after.map(|s| round(s, 1)),
            "restarted_after_s": round(restarted, 1),
            "released_to_serving_s": round(boot, 3),
            "back_in_haproxy_after_s": up_after.map(|s| round(s, 1)),
            "caught_up": has,
            "record_on_every_member": record,
            "keys": keys,
        }),
    ));

    // 3. PostgreSQL stopped for 30 s.
    eprintln!("fleet-chaos: PostgreSQL stopped");
    let b = open_loop(&fleet, &opts)?;
    sleep(secs(5.0, 2.0)).await;
    fleet.pg_ctl(&["-m", "fast", "-w", "stop"])?;
    let stopped = Instant::now();
    let outage = Duration::from_secs_f64(secs(30.0, 6.0));
    let (mut refused, mut accepted, mut slowest) = (0u32, 0u32, 0f64);
    let mut sample = String::new();
    let mut n = 0;
    while stopped.elapsed() < outage {
        let p = fleet.profile(1 + n % 3)?;
        let t = Instant::now();
        match create_open_key(&p, &format!("during-outage-{n}")).await {
            Ok(()) => accepted += 1,
            Err(e) => {
                refused += 1;
                sample = e;
            }
        }
        slowest = slowest.max(t.elapsed().as_secs_f64());
        n += 1;
        sleep(2.0).await;
    }
    if let Some(rest) = outage.checked_sub(stopped.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    fleet.pg_ctl(&["-w", "start"])?;
    let started = Instant::now();
    let mut first_write_after = None;
    while started.elapsed() < Duration::from_secs(60) {
        if create_open_key(&p1, "after-outage").await.is_ok() {
            first_write_after = Some(started.elapsed().as_secs_f64());
            break;
        }
        sleep(0.2).await;
    }
    let (record, keys, catch_up) = settled(&fleet, Duration::from_secs(30)).await?;
    sleep(secs(5.0, 1.0)).await;
    let report = b.finish()?;
    phases.push(phase_row(
        "postgres-stopped",
        &report,
        json!({
            "outage_s": outage.as_secs_f64(),
            "admin_writes_tried": refused + accepted,
            "admin_writes_refused": refused,
            "slowest_refusal_s": round(slowest, 3),
            "refusal": sample,
            "first_write_accepted_after_restart_s": first_write_after.map(|s| round(s, 1)),
            "members_settled_after_s": round(catch_up, 1),
            "record_on_every_member": record,
            "keys": keys,
        }),
    ));

    // 4. Concurrent admin writes from three members.
    eprintln!("fleet-chaos: concurrent admin writes");
    let (before, before_keys, _) = settled(&fleet, Duration::from_secs(10)).await?;
    let b = open_loop(&fleet, &opts)?;
    let span = Duration::from_secs_f64(secs(60.0, 5.0));
    let mut tasks = Vec::new();
    for i in 1..=3 {
        let p = fleet.profile(i)?;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let end = Instant::now() + span;
            let mut n = 0;
            while Instant::now() < end {
                let req = Request::KeysCreate {
                    store: Some(STORE.into()),
                    id: format!("w{i}-{n}"),
                    usage: KeyUsage::EncryptDecrypt,
                };
                match admin(&p, req).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                n += 1;
            }
            (ok, failed)
        }));
    }
    let mut acked = 0;
    let mut per_member = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        let (ok, failed) = t.await?;
        acked += ok;
        per_member.push(ok);
        failures.extend(failed);
    }
    let (after, after_keys, _) = settled(&fleet, Duration::from_secs(30)).await?;
    sleep(secs(2.0, 1.0)).await;
    let report = b.finish()?;
    let races: usize = (1..=3)
        .map(|i| {
            std::fs::read_to_string(fleet.state.join(format!("member-{i}/keyward.log")))
                .unwrap_or_default()
                .matches("admin write lost a race")
                .count()
        })
        .sum();
    let exact = after == before + acked && after_keys as u64 == before_keys as u64 + acked;
    phases.push(phase_row(
        "admin-writes",
        &report,
        json!({
            "writes_acknowledged": acked,
            "per_member": per_member,
            "refused": failures.len(),
            "refusals": failures.iter().take(3).collect::<Vec<_>>(),
            "races_lost_and_retried": races,
            "record_before": before,
            "record_after_on_every_member": after,
            "none_lost_none_twice": exact,
        }),
    ));
    if !exact {
        eprintln!(
            "fleet-chaos: LOST OR DUPLICATED WRITES: record {before} -> {after}, keys \
             {before_keys} -> {after_keys}, {acked} acknowledged"
        );
    }

    // 5. A change visible on every member: 100 changes.
    eprintln!("fleet-chaos: change visibility");
    create_open_key(&p1, FLIP)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut probes = vec![
        Probe::new(&fleet, &fleet.url(2), FLIP)?,
        Probe::new(&fleet, &fleet.url(3), FLIP)?,
    ];
    for p in &mut probes {
        p.until(200, Duration::from_secs(10)).await?;
    }
    let b = open_loop(&fleet, &opts)?;
    sleep(1.0).await;
    let changes = if q { 10 } else { 100 };
    let mut visible_ms = Vec::with_capacity(changes);
    for c in 0..changes {
        let disable = c % 2 == 0;
        let req = if disable {
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
        admin(&p1, req).await.map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        let want = if disable { 400 } else { 200 };
        let (a, b2) = probes.split_at_mut(1);
        let (ra, rb) = tokio::join!(
            a[0].until(want, Duration::from_secs(10)),
            b2[0].until(want, Duration::from_secs(10))
        );
        ra?;
        rb?;
        visible_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        sleep(0.05).await;
    }
    let report = b.finish()?;
    visible_ms.sort_by(f64::total_cmp);
    let visibility = json!({
        "changes": changes,
        "p50_ms": round(percentile(&visible_ms, 50.0), 1),
        "p99_ms": round(percentile(&visible_ms, 99.0), 1),
        "max_ms": round(visible_ms.last().copied().unwrap_or(0.0), 1),
        "measured": "from the admin call's answer on member 1 until members 2 and 3 both enforce the change (Encrypt polled on each directly, every 2 ms, keep-alive)",
    });
    phases.push(phase_row("changes", &report, visibility.clone()));

    // 6. Throughput: 3 members vs 1 member through the balancer, and 1 member directly.
    eprintln!("fleet-chaos: throughput");
    let closed = |fleet: &Fleet, url: Option<&str>| -> anyhow::Result<Bench> {
        let mut args = vec![
            "--connections",
            "64",
            "--duration",
            if q { "3s" } else { "10s" },
            "--warmup",
            "2s",
        ];
        if let Some(u) = url {
            args.extend(["--url", u]);
        }
        bench_start(fleet, &args)
    };
    let cpu = cpu_of;
    let balancer_pid = fleet.ready["balancer_pid"].as_u64().unwrap_or(0) as u32;
    let mut throughput = serde_json::Map::new();
    let configs = [
        ("three_members_through_haproxy", None, false),
        ("one_member_through_haproxy", None, true),
        ("one_member_direct", Some(fleet.url(1)), false),
    ];
    // This VM's run-to-run noise is about 15 %: the three set-ups alternate, three times each,
    // and each reports its median run (by req/s) with every run's req/s.
    let mut samples: Vec<Vec<Value>> = vec![Vec::new(); configs.len()];
    for _ in 0..if q { 1 } else { 3 } {
        for (k, (_, url, only_one)) in configs.iter().enumerate() {
            if *only_one {
                fleet.haproxy("disable server members/member-2")?;
                fleet.haproxy("disable server members/member-3")?;
            }
            let pids = [fleet.pid(1), fleet.pid(2), fleet.pid(3), balancer_pid];
            let before = cpu(&pids);
            let report = closed(&fleet, url.as_deref())?.report()?;
            let after = cpu(&pids);
            if *only_one {
                fleet.haproxy("enable server members/member-2")?;
                fleet.haproxy("enable server members/member-3")?;
            }
            // The CPU deltas span the warm-up too: per request over every request answered in
            // the run (measured + 2 s of warm-up, at the measured rate).
            let total = report["ops_per_s"].as_f64().unwrap_or(0.0)
                * (report["duration_s"].as_f64().unwrap_or(0.0) + 2.0);
            let us = |i: usize| round((after[i] - before[i]) * 1e6 / total.max(1.0), 1);
            samples[k].push(json!({
                "ops_per_s": report["ops_per_s"],
                "errors": report["errors_total"],
                "p50_us": report["latency_us"]["p50_us"],
                "p99_us": report["latency_us"]["p99_us"],
                "member_cpu_us_per_request": [us(0), us(1), us(2)],
                "members_cpu_us_per_request": round(us(0) + us(1) + us(2), 1),
                "haproxy_cpu_us_per_request": us(3),
                "client_cpu_us_per_request": report["client_cpu"]["us_per_request"],
            }));
        }
    }
    for ((name, _, _), mut runs) in configs.iter().zip(samples) {
        let all: Vec<Value> = runs.iter().map(|r| r["ops_per_s"].clone()).collect();
        runs.sort_by(|a, b| {
            a["ops_per_s"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b["ops_per_s"].as_f64().unwrap_or(0.0))
        });
        let mut median = runs.get(runs.len() / 2).cloned().unwrap_or(Value::Null);
        median["runs_ops_per_s"] = Value::Array(all);
        throughput.insert((*name).into(), median);
    }
    // A member's cost when idle (heartbeats, follower polls, health refresh): 10 s.
    let pids = [fleet.pid(1), fleet.pid(2), fleet.pid(3)];
    let before = cpu(&pids);
    sleep(secs(10.0, 2.0)).await;
    let after = cpu(&pids);
    let idle: Vec<f64> = (0..3)
        .map(|i| round((after[i] - before[i]) / secs(10.0, 2.0) * 100.0, 2))
        .collect();
    throughput.insert("idle_member_cpu_percent".into(), json!(idle));

    // 7. Boot of a member into a store of 100k keys.
    let keys_wanted = if q { 10_000 } else { opts.keys };
    eprintln!("fleet-chaos: {keys_wanted} keys into the store");
    let t = Instant::now();
    fill_store(&fleet, keys_wanted).await?;
    let fill_s = t.elapsed().as_secs_f64();
    let (_, keys_now, spread_s) = settled(&fleet, Duration::from_secs(300)).await?;
    let mut boots = Vec::new();
    for r in 0..3 {
        fleet.stop_member3()?;
        let log = fleet.state.join(format!("member-3/boot-{r}.log"));
        boots.push(round(fleet.restart_member3(&log)?, 3));
    }
    let mut sorted = boots.clone();
    sorted.sort_by(f64::total_cmp);
    let boot = json!({
        "keys": keys_now,
        "created_in_s": round(fill_s, 1),
        "applied_by_running_members_within_s": round(spread_s, 1),
        "released_to_serving_s": boots,
        "median_s": sorted.get(1),
    });

    // 8. A store behind the KRS head.
    eprintln!("fleet-chaos: database put back behind the KRS head");
    let b = open_loop(&fleet, &opts)?;
    sleep(secs(3.0, 1.0)).await;
    let dump = fleet.state.join("before.dump");
    fleet.pg_client(
        "pg_dump",
        &["--format=custom", "--file", &dump.to_string_lossy()],
    )?;
    create_open_key(&p1, "after-the-dump")
        .await
        .map_err(anyhow::Error::msg)?;
    fleet.pg_client(
        "pg_restore",
        &[
            "--clean",
            "--if-exists",
            "--single-transaction",
            &dump.to_string_lossy(),
        ],
    )?;
    let restored = Instant::now();
    let new = new_member(&fleet)?;
    let out = Command::new(&fleet.bin)
        .args(["serve", "--config"])
        .arg(&new)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let refused_boot = !out.status.success() && err.contains("rollback refused");
    let mut kept = 0;
    for i in 1..=3 {
        let mut p = Probe::new(&fleet, &fleet.url(i), "after-the-dump")?;
        if p.encrypt().await? == 200 {
            kept += 1;
        }
    }
    let mut noticed = 0;
    for i in 1..=3 {
        let log = if i == 3 {
            fleet.state.join("member-3/boot-2.log")
        } else {
            fleet.state.join(format!("member-{i}/keyward.log"))
        };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("was NOT applied")
            {
                noticed += 1;
                break;
            }
            sleep(0.2).await;
        }
    }
    let write = create_open_key(&p1, "onto-the-older-store").await;
    sleep(secs(3.0, 1.0)).await;
    let report = b.finish()?;
    phases.push(phase_row(
        "behind-krs",
        &report,
        json!({
            "booting_member_refused": refused_boot,
            "booting_member_exit": out.status.code(),
            "refusal": err.lines().rev().find(|l| l.contains("rollback")).unwrap_or_default(),
            "refused_within_s": round(restored.elapsed().as_secs_f64(), 1),
            "running_members_refusing_to_apply": noticed,
            "running_members_keeping_their_view": kept,
            "admin_write_refused": write.is_err(),
        }),
    ));

    let result = json!({
        "what": "make fleet-chaos: keyward demo --fleet 3 (PostgreSQL, embedded KRS, 3 members, HAProxy TCP passthrough) on this machine, keyward bench through the balancer",
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        "cpus": keyward_bench::online_cpus(),
        "loadavg_at_start": load_before,
        "loadavg_at_end": loadavg(),
        "rate": opts.rate,
        "connections": opts.connections,
        "quick": q,
        "phases": phases,
        "change_visibility": visibility,
        "throughput": throughput,
        "boot": boot,
    });
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&result)? + "\n")?;
    eprintln!("fleet-chaos: wrote {}", opts.out.display());
    if !q && !opts.doc.as_os_str().is_empty() {
        write_table(&opts.doc, &result)?;
        eprintln!("fleet-chaos: rewrote the table in {}", opts.doc.display());
    }
    print!("{}", table(&result));
    drop(fleet);
    Ok(())
}

/// CPU seconds (user + system) of each process so far.
fn cpu_of(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|p| {
            keyward_bench::process_cpu(*p)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        })
        .collect()
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A configuration for a new member (member 3's with its own ports and label).
fn new_member(fleet: &Fleet) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(fleet.config(3))?;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("listen = ") {
            out.push_str("listen = \"127.0.0.1:0\"\n");
        } else {
            out.push_str(&line.replace("local-az-3", "local-az-new"));
            out.push('\n');
        }
    }
    let dir = fleet.state.join("member-new");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("keyward.toml");
    std::fs::write(&path, out)?;
    Ok(path)
}

/// `n` keys into the fleet's store, in batches of 1,000, through a registry of this process
/// that released its master key from the fleet's KRS as a member does.
async fn fill_store(fleet: &Fleet, n: usize) -> anyhow::Result<()> {
    let config = keyward_config::load_file(&fleet.config(1))?
        .config
        .context("member 1's configuration")?;
    let keyward_config::MasterKeyConfig::Release(release) = &config.master_key else {
        bail!("member 1 does not use key release");
    };
    let source = keyward_appliance::release_source(release, &keyward_agent::product_release())?;
    let notifier = keyward_appliance::Notifier::from_env();
    let opened = keyward_appliance::open_storage(&config.storage, &notifier).await?;
    let backend = opened.backend;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use keyward_keystore::MasterKeySource;
        let (master, freshness) = source.obtain_fresh()?;
        let registry = keyward_keystore::Registry::open_with(backend, master, freshness)?;
        let have = registry.list_keys(Some(STORE))?.len();
        let mut made = 0;
        let mut batch = 0;
        while have + made < n {
            let count = (n - have - made).min(1000);
            let ids: Vec<String> = (0..count).map(|i| format!("bulk-{batch}-{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            registry.create_keys(Some(STORE), &refs, KeyUsage::EncryptDecrypt)?;
            made += count;
            batch += 1;
        }
        Ok(())
    })
    .await?
}

/// A JSON value as table text: numbers without a needless `.0`, lists joined, yes/no.
fn v(x: &Value) -> String {
    match x {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            Some(f) => format!("{f}"),
            None => n.to_string(),
        },
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::Array(a) => a.iter().map(v).collect::<Vec<_>>().join(" / "),
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Object(_) => x.to_string(),
    }
}

/// The markdown table of a result.
fn table(r: &Value) -> String {
    let mut t = format!(
        "| phase ({} req/s open loop through HAProxy, {} connections) | requests | XKS errors | p50 | p99 | p99.9 | what happened |\n|---|---|---|---|---|---|---|\n",
        v(&r["rate"]),
        v(&r["connections"])
    );
    let ms = |x: &Value| format!("{:.2} ms", x.as_f64().unwrap_or(0.0) / 1000.0);
    for p in r["phases"].as_array().into_iter().flatten() {
        let n = &p["notes"];
        let what = match p["phase"].as_str().unwrap_or("") {
            "baseline" => format!(
                "nothing. CPU: each member {} % of a core, HAProxy {} %",
                v(&n["cpu_percent_of_a_core"]["members"]),
                v(&n["cpu_percent_of_a_core"]["haproxy"])
            ),
            "kill-9" => format!(
                "member 3 killed with {} connections on it; HAProxy marked it down after {} s; restarted at {} s, serving {} s after its release, back in HAProxy at {} s; it has the change made while it was down: {}",
                v(&n["connections_on_the_killed_member"]),
                v(&n["marked_down_by_haproxy_after_s"]),
                v(&n["restarted_after_s"]),
                v(&n["released_to_serving_s"]),
                v(&n["back_in_haproxy_after_s"]),
                v(&n["caught_up"])
            ),
            "postgres-stopped" => format!(
                "PostgreSQL down {} s: {} of {} admin writes refused, the slowest refusal in {} s; the first write accepted {} s after the restart; every member at the same record {} s later",
                v(&n["outage_s"]),
                v(&n["admin_writes_refused"]),
                v(&n["admin_writes_tried"]),
                v(&n["slowest_refusal_s"]),
                v(&n["first_write_accepted_after_restart_s"]),
                v(&n["members_settled_after_s"])
            ),
            "admin-writes" => format!(
                "{} writes acknowledged from three members ({} per member; {} compare-and-set races lost and retried, {} refused); record {} -> {} on every member, same keys; none lost or twice: {}",
                v(&n["writes_acknowledged"]),
                v(&n["per_member"]),
                v(&n["races_lost_and_retried"]),
                v(&n["refused"]),
                v(&n["record_before"]),
                v(&n["record_after_on_every_member"]),
                v(&n["none_lost_none_twice"])
            ),
            "changes" => format!(
                "{} changes on member 1, each enforced by members 2 and 3 after p50 {} ms, p99 {} ms, max {} ms",
                v(&n["changes"]),
                v(&n["p50_ms"]),
                v(&n["p99_ms"]),
                v(&n["max_ms"])
            ),
            "behind-krs" => format!(
                "database restored to before a write: a booting member refused it: {}; running members refusing to apply it: {} of 3, keeping their view: {} of 3; an admin write refused: {}",
                v(&n["booting_member_refused"]),
                v(&n["running_members_refusing_to_apply"]),
                v(&n["running_members_keeping_their_view"]),
                v(&n["admin_write_refused"])
            ),
            other => other.to_string(),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            v(&p["phase"]),
            v(&p["requests"]),
            v(&p["errors"]),
            ms(&p["p50_us"]),
            ms(&p["p99_us"]),
            ms(&p["p999_us"]),
            what
        ));
    }
    let th = &r["throughput"];
    t.push_str("\n| closed loop, 64 connections, median of 3 alternating runs | req/s (each run) | p99 | members' CPU per request (each) | HAProxy's | the client's |\n|---|---|---|---|---|---|\n");
    for (name, label) in [
        ("three_members_through_haproxy", "3 members through HAProxy"),
        ("one_member_through_haproxy", "1 member through HAProxy"),
        ("one_member_direct", "1 member directly"),
    ] {
        let x = &th[name];
        t.push_str(&format!(
            "| {label} | {} ({}) | {} | {} µs ({}) | {} µs | {} µs |\n",
            v(&x["ops_per_s"]),
            v(&x["runs_ops_per_s"]),
            ms(&x["p99_us"]),
            v(&x["members_cpu_us_per_request"]),
            v(&x["member_cpu_us_per_request"]),
            v(&x["haproxy_cpu_us_per_request"]),
            v(&x["client_cpu_us_per_request"]),
        ));
    }
    let b = &r["boot"];
    t.push_str(&format!(
        "\nIdle members: {} % of a core each. A member's boot into a store of {} keys, from `released` to `XKS API on` in its log: {} s (three restarts, median {} s).\n",
        v(&th["idle_member_cpu_percent"]),
        v(&b["keys"]),
        v(&b["released_to_serving_s"]),
        v(&b["median_s"]),
    ));
    t.push_str(&format!(
        "\nMeasured {} on {} CPUs, load average {} at the start and {} at the end (`bench/fleet-chaos.json`).\n",
        r["date"].as_str().unwrap_or(""),
        v(&r["cpus"]),
        v(&r["loadavg_at_start"]),
        v(&r["loadavg_at_end"]),
    ));
    t
}

/// Rewrite the table between the markers of `doc` (added at the end when missing).
fn write_table(doc: &Path, r: &Value) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(doc)?;
    let block = format!("{BEGIN}\n{}{END}", table(r));
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &text[..a], &text[b + END.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(doc, new)?;
    Ok(())
}
