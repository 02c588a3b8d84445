//! The local fleet the fleet tools drive (`make fleet-chaos`, `make soak`): `keyward demo
//! --fleet 3` started and stopped, its members' admin profiles and PostgreSQL, `keyward bench`
//! runs through the balancer, and an in-process SigV4 probe of one member.
//!
//! Each tool uses a part of it, so what one of them leaves unused is allowed here.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use keyward_admin::proto::Request;
use keyward_admin::Profile;
use keyward_bench::Connector;
use keyward_bench::Signer;
use keyward_bench::{Builder, Prepared};
use keyward_bench::{DemoLine, RawSettings};
use keyward_keystore::{Grant, KeyUsage};

/// Run a tool's `run` on a two-thread runtime, with key memory allowed unlocked (the tools hold
/// only the demo's test credentials).
pub(crate) fn block_on(
    f: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    keyward_secret::init(keyward_secret::MemoryPolicy {
        allow_unlocked: true,
    })?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

/// The key store every demo fleet member serves.
pub(crate) const STORE: &str = "demo";
/// The running fleet and what this tool started besides it.
pub(crate) struct Fleet {
    pub(crate) bin: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) ready: Value,
    pub(crate) demo: Child,
    /// Member 3 once this tool restarted it.
    pub(crate) restarted: Option<Child>,
}

impl Fleet {
    pub(crate) fn start(bin: &Path, state: &Path) -> anyhow::Result<Fleet> {
        if state.exists() {
            std::fs::remove_dir_all(state)
                .with_context(|| format!("removing {}", state.display()))?;
        }
        let parent = state.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let log = std::fs::File::create(parent.join("demo.log"))?;
        let mut demo = Command::new(bin)
            .args(["demo", "--fleet", "3", "--state-dir"])
            .arg(state)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("keyward demo --fleet 3")?;
        let mut line = String::new();
        BufReader::new(demo.stdout.take().context("demo stdout")?).read_line(&mut line)?;
        let ready: Value = serde_json::from_str(&line).with_context(|| {
            format!(
                "keyward demo --fleet printed no ready line; see {}",
                parent.join("demo.log").display()
            )
        })?;
        Ok(Fleet {
            bin: bin.to_path_buf(),
            state: std::fs::canonicalize(state)?,
            ready,
            demo,
            restarted: None,
        })
    }

    pub(crate) fn member(&self, i: usize) -> &Value {
        &self.ready["members"][i - 1]
    }
    pub(crate) fn profile(&self, i: usize) -> anyhow::Result<Profile> {
        Ok(Profile::load(Path::new(
            self.member(i)["admin_profile"]
                .as_str()
                .context("profile")?,
        ))?)
    }
    pub(crate) fn config(&self, i: usize) -> PathBuf {
        self.member(i)["config"].as_str().unwrap_or_default().into()
    }
    pub(crate) fn url(&self, i: usize) -> String {
        self.member(i)["url"].as_str().unwrap_or_default().into()
    }
    pub(crate) fn pid(&self, i: usize) -> u32 {
        if i == 3 {
            if let Some(c) = &self.restarted {
                return c.id();
            }
        }
        self.member(i)["pid"].as_u64().unwrap_or(0) as u32
    }

    /// HAProxy's stats socket: one command, its answer.
    pub(crate) fn haproxy(&self, command: &str) -> anyhow::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.state.join("haproxy.sock"))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// A field of `show stat` for server `name` of the members backend.
    pub(crate) fn stat(&self, name: &str, field: &str) -> anyhow::Result<String> {
        let text = self.haproxy("show stat")?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = header
            .iter()
            .position(|h| *h == field)
            .context("no such stat")?;
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            if f.first() == Some(&"members") && f.get(1) == Some(&name) {
                return Ok(f.get(col).unwrap_or(&"").to_string());
            }
        }
        bail!("no server {name}")
    }

    /// `pg_ctl` on the fleet's server, as the postgres user when root.
    pub(crate) fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let bin = keyward_store_pg::local::server_bindir()?;
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
            c
        } else {
            Command::new(bin.join("pg_ctl"))
        };
        let out = cmd
            .arg("-D")
            .arg(self.state.join("postgres/data"))
            .arg("-l")
            .arg(self.state.join("postgres/postgres.log"))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub(crate) fn pg_client(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let bin = keyward_store_pg::local::server_bindir()?;
        let out = Command::new(bin.join(tool))
            .arg("--dbname")
            .arg(self.ready["postgres_url"].as_str().unwrap_or_default())
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{tool} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Start member 3 again from its configuration; its log in `log`. Returns when it serves,
    /// with the seconds from "released" to "XKS API on" in that log.
    pub(crate) fn restart_member3(&mut self, log: &Path) -> anyhow::Result<f64> {
        let cfg = self.config(3);
        let file = std::fs::File::create(log)?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .current_dir(cfg.parent().unwrap_or(Path::new(".")))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        self.restarted = Some(child);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("XKS API on ") {
                return boot_seconds(&text);
            }
            if let Some(c) = self.restarted.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("member 3 exited ({status}):\n{text}");
                }
            }
            if Instant::now() > deadline {
                bail!("member 3 does not serve after 300 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM member 3 (whichever process it is now) and wait for it.
    pub(crate) fn stop_member3(&mut self) -> anyhow::Result<()> {
        match self.restarted.take() {
            Some(mut c) => {
                signal(c.id(), nix::sys::signal::Signal::SIGTERM);
                c.wait()?;
            }
            None => {
                let pid = self.pid(3);
                signal(pid, nix::sys::signal::Signal::SIGTERM);
                wait_gone(pid, Duration::from_secs(20));
            }
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut c) = self.restarted.take() {
            signal(c.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
        signal(self.demo.id(), nix::sys::signal::Signal::SIGTERM);
        let _ = self.demo.wait();
    }
}

pub(crate) fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .is_some_and(|dead| !dead)
}

pub(crate) fn wait_gone(pid: u32, limit: Duration) {
    let end = Instant::now() + limit;
    while alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds from the `released` line to the `XKS API on` line of a member's log.
pub(crate) fn boot_seconds(log: &str) -> anyhow::Result<f64> {
    let at = |needle: &str| -> anyhow::Result<time::OffsetDateTime> {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .with_context(|| format!("no `{needle}` in the log"))?;
        let stamp = line.split_whitespace().next().unwrap_or_default();
        Ok(time::OffsetDateTime::parse(
            stamp,
            &time::format_description::well_known::Rfc3339,
        )?)
    };
    let released = at(": released (")?;
    let serving = at("XKS API on ")?;
    Ok((serving - released).as_seconds_f64())
}

/// A `keyward bench` run through the balancer, stopped with SIGINT (killed when dropped
/// unfinished, as when a phase fails).
pub(crate) struct Bench(pub(crate) Option<Child>);

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn bench_start(fleet: &Fleet, args: &[&str]) -> anyhow::Result<Bench> {
    let child = Command::new(&fleet.bin)
        .args(["bench", "--demo"])
        .arg(fleet.state.join("ready.json"))
        .args(args)
        .args(["--timeout", "5s", "--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("keyward bench")?;
    Ok(Bench(Some(child)))
}

impl Bench {
    /// Stop (SIGINT: the bench reports what it measured) and read the report.
    pub(crate) fn finish(self) -> anyhow::Result<Value> {
        if let Some(c) = &self.0 {
            signal(c.id(), nix::sys::signal::Signal::SIGINT);
        }
        self.report()
    }

    pub(crate) fn report(mut self) -> anyhow::Result<Value> {
        let out = self
            .0
            .take()
            .context("bench already finished")?
            .wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "keyward bench printed no report: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// One phase's row: what the bench saw, and what happened.
pub(crate) fn phase_row(name: &str, report: &Value, notes: Value) -> Value {
    let l = &report["latency_us"];
    json!({
        "phase": name,
        "seconds": report["duration_s"],
        "requests": report["requests"],
        "ops_per_s": report["ops_per_s"],
        "errors": report["errors_total"],
        "errors_by_kind": report["errors"],
        "unsent": report["unsent"],
        "p50_us": l["p50_us"],
        "p99_us": l["p99_us"],
        "p999_us": l["p999_us"],
        "max_us": l["max_us"],
        "notes": notes,
    })
}

pub(crate) async fn sleep(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

/// One admin request; `Err` carries the refusal.
pub(crate) async fn admin(p: &Profile, req: Request) -> Result<Value, String> {
    match p.call(&req).await {
        Ok(r) if r.ok => Ok(r.result.unwrap_or(Value::Null)),
        Ok(r) => Err(r.error.unwrap_or_default()),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) async fn create_open_key(p: &Profile, id: &str) -> Result<(), String> {
    admin(
        p,
        Request::KeysCreate {
            store: Some(STORE.into()),
            id: id.into(),
            usage: KeyUsage::EncryptDecrypt,
        },
    )
    .await?;
    admin(
        p,
        Request::KeysGrant {
            store: Some(STORE.into()),
            id: id.into(),
            grant: Grant::open_to_all(),
        },
    )
    .await?;
    Ok(())
}

pub(crate) async fn key_ids(p: &Profile) -> anyhow::Result<Vec<String>> {
    let v = admin(
        p,
        Request::KeysList {
            store: Some(STORE.into()),
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let mut ids: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    Ok(ids)
}

/// The store record member `p` reports for itself (its last heartbeat).
pub(crate) async fn record_of(p: &Profile) -> anyhow::Result<u64> {
    let v = admin(p, Request::Fleet).await.map_err(anyhow::Error::msg)?;
    v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["this"] == true)
        .and_then(|m| m["seq"].as_u64())
        .context("the member does not list itself")
}

/// Wait until every member reports the same record and key list; (record, keys, seconds).
pub(crate) async fn settled(fleet: &Fleet, limit: Duration) -> anyhow::Result<(u64, usize, f64)> {
    let start = Instant::now();
    let profiles: Vec<Profile> = (1..=3)
        .map(|i| fleet.profile(i))
        .collect::<Result<_, _>>()?;
    loop {
        let mut records = Vec::new();
        let mut keys = Vec::new();
        for p in &profiles {
            records.push(record_of(p).await?);
            keys.push(key_ids(p).await?);
        }
        if records.iter().all(|r| *r == records[0]) && keys.iter().all(|k| *k == keys[0]) {
            return Ok((records[0], keys[0].len(), start.elapsed().as_secs_f64()));
        }
        if start.elapsed() > limit {
            bail!(
                "members did not settle within {limit:?}: records {records:?}, keys {:?}",
                keys.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
        sleep(0.5).await;
    }
}

/// A keep-alive SigV4 client of one member's XKS API (keyward bench's signer and connector).
pub(crate) struct Probe {
    pub(crate) connector: Connector,
    pub(crate) signer: Signer,
    pub(crate) body: Prepared,
    pub(crate) conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Probe {
    pub(crate) fn new(fleet: &Fleet, url: &str, key: &str) -> anyhow::Result<Probe> {
        let mut demo: DemoLine = serde_json::from_value(fleet.ready.clone())?;
        demo.url = url.into();
        let s = RawSettings {
            demo: Some(demo),
            key_ids: vec![key.into()],
            ..RawSettings::default()
        }
        .validate()?;
        use secrecy::ExposeSecret;
        let signer = Signer::new(
            &s.access_key_id,
            s.secret_access_key.expose_secret(),
            &s.region,
            &s.target.authority,
        )?;
        let connector = Connector::new(&s.target, s.ca_cert.as_deref())?;
        let body = Builder::new(&s).encrypt(key, 0);
        Ok(Probe {
            connector,
            signer,
            body,
            conn: None,
        })
    }

    /// Encrypt once: the HTTP status.
    pub(crate) async fn encrypt(&mut self) -> anyhow::Result<u16> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            self.conn = Some(self.connector.connect().await?);
        }
        let Some(c) = self.conn.as_mut() else {
            bail!("no connection");
        };
        c.ready().await?;
        let req = self.signer.request(&self.body, SystemTime::now())?;
        let resp = match c.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(e.into());
            }
        };
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }

    /// Poll until Encrypt answers `want`; how long it took.
    pub(crate) async fn until(&mut self, want: u16, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.encrypt().await? == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("no {want} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// The keyward binary a fleet tool runs: `--bin` when given, else the `keyward` beside the
/// tool's own directory (`target/release/examples/..`), made absolute (members start from
/// their own directories).
pub fn keyward_bin(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(b) => b.clone(),
        // the tests' lookup: KEYWARD_BIN, else `keyward` beside target/<profile>/examples
        None => keyward_integration_tests::keyward_bin().to_path_buf(),
    };
    std::fs::canonicalize(&bin).with_context(|| format!("{}", bin.display()))
}
