//! The local fleet under faults: `keyward demo --fleet N` (PostgreSQL from the machine's
//! binaries, the embedded KRS, N `keyward serve` members on one shared store, HAProxy in TCP
//! passthrough), driven from outside as KMS and an operator would: XKS calls signed by `curl
//! --aws-sigv4` (serve_common's [`Xks`], a signer we did not write), `keyward admin`, and
//! `keyward bench` through the balancer.
//!
//! * a change on one member (key disabled, grant revoked, credential removed) is enforced by
//!   the others within 2 s;
//! * GetHealthStatus through the balancer counts the members; a member killed with `kill -9`
//!   while a load runs costs at most the requests in flight on it, is reported UNAVAILABLE,
//!   and restarted with the same configuration rejoins with every change made meanwhile;
//! * PostgreSQL stopped: no XKS error, admin writes refused with a clear message, accepted
//!   again after, members catch up by themselves;
//! * admin writes racing on three members: nothing lost, nothing twice, one store record;
//! * the database put back to an older state (dump, writes, restore): a booting member
//!   refuses it (Rollback), running members keep their view.
//!
//! Each test starts its own fleet (one boots in about 5 s) and they run one at a time (a
//! lock), so that their timings do not compete for this machine's two cores.

use crate::serve_common::{admin, served_spki_and_issuer, Proc, Xks, BIN};
use crate::tools;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One fleet at a time.
static ONE_FLEET: Mutex<()> = Mutex::new(());

/// The base64 plaintext the tests encrypt.
const PLAIN: &str = "aGVsbG8gZmxlZXQ=";
/// The spec's bound for a change to reach every member (issue 14, item 3).
const SPREAD: Duration = Duration::from_secs(2);

/// A running `keyward demo --fleet N` in a temporary state directory; stopped (SIGTERM, which
/// stops the members, HAProxy and PostgreSQL) when dropped.
struct Fleet {
    demo: Proc,
    ready: Value,
    state: PathBuf,
    _tmp: tempfile::TempDir,
    // Last: released after the fleet is stopped.
    _one: MutexGuard<'static, ()>,
}

impl Fleet {
    fn start(n: usize) -> Fleet {
        let one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
        tools::need("haproxy", "haproxy");
        if let Err(e) = keyward_store_pg::local::server_bindir() {
            panic!("{e} (scripts/setup.sh test installs everything the tests need)");
        }
        let tmp = tempfile::tempdir().unwrap();
        // The PostgreSQL server runs as the postgres user: it must reach STATE/postgres.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        let state = tmp.path().join("state");
        let mut demo = Proc::spawn(
            &[
                "demo",
                "--fleet",
                &n.to_string(),
                "--state-dir",
                state.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            tmp.path(),
        );
        let line = demo.stdout_line(Duration::from_secs(180));
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad ready line {line}: {e}\n{}", demo.stderr_text()));
        assert_eq!(
            ready["members"].as_array().map(Vec::len),
            Some(n),
            "{ready}"
        );
        Fleet {
            demo,
            ready,
            state,
            _tmp: tmp,
            _one: one,
        }
    }

    fn member(&self, i: usize) -> &Value {
        &self.ready["members"][i - 1]
    }

    fn profile(&self, i: usize) -> PathBuf {
        self.member(i)["admin_profile"].as_str().unwrap().into()
    }

    fn config(&self, i: usize) -> PathBuf {
        self.member(i)["config"].as_str().unwrap().into()
    }

    fn log(&self, i: usize) -> PathBuf {
        self.member(i)["log"].as_str().unwrap().into()
    }

    fn pid(&self, i: usize) -> i32 {
        self.member(i)["pid"].as_i64().unwrap() as i32
    }

    /// The XKS API of member `i` directly, with the demo's credential.
    fn xks(&self, i: usize) -> Xks {
        self.xks_at(self.member(i)["url"].as_str().unwrap())
    }

    /// The XKS API through the balancer.
    fn balancer(&self) -> Xks {
        self.xks_at(self.ready["url"].as_str().unwrap())
    }

    fn xks_at(&self, url: &str) -> Xks {
        let r = &self.ready;
        Xks {
            url: url.into(),
            uri_prefix: r["uri_prefix"].as_str().unwrap().into(),
            region: r["region"].as_str().unwrap().into(),
            access_key_id: r["access_key_id"].as_str().unwrap().into(),
            secret: r["secret_access_key"].as_str().unwrap().into(),
            ca: r["ca_cert"].as_str().unwrap().into(),
            service: "kms-xks-proxy".into(),
        }
    }

    fn key(&self) -> String {
        self.ready["key_ids"][0].as_str().unwrap().into()
    }

    /// `keyward admin` on member `i`, which must succeed; its stdout.
    fn admin_ok(&self, i: usize, args: &[&str]) -> String {
        crate::serve_common::admin_ok(&self.profile(i), args)
    }

    /// The members as member `i` lists them (`keyward admin fleet`): (id, state, label,
    /// record, this).
    fn members(&self, i: usize) -> Vec<(String, String, String, u64, bool)> {
        let out = self.admin_ok(i, &["fleet"]);
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.to_string(),
                    f.get(2)?.to_string(),
                    f.get(4)?.parse().ok()?,
                    l.ends_with("(this)"),
                ))
            })
            .collect()
    }

    /// The store record member `i` has applied, as it heartbeats it.
    fn record_of(&self, i: usize) -> u64 {
        self.members(i)
            .into_iter()
            .find(|m| m.4)
            .unwrap_or_else(|| panic!("member {i} does not list itself"))
            .3
    }

    /// One line of HAProxy's `show stat` for `server` of the `members` backend, as a map.
    fn balancer_stat(&self, server: &str) -> std::collections::HashMap<String, String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.state.join("haproxy.sock"))
            .expect("HAProxy's stats socket");
        s.write_all(b"show stat\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            if f.first() == Some(&"members") && f.get(1) == Some(&server) {
                return header
                    .iter()
                    .zip(f)
                    .map(|(h, v)| (h.to_string(), v.to_string()))
                    .collect();
            }
        }
        panic!("no server {server} in HAProxy's stats:\n{text}");
    }

    /// Run a PostgreSQL tool (pg_ctl stop/start) on the fleet's server, as its user.
    fn pg_ctl(&self, args: &[&str]) {
        let bin = keyward_store_pg::local::server_bindir().unwrap();
        let data = self.state.join("postgres/data");
        let log = self.state.join("postgres/postgres.log");
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
            c
        } else {
            Command::new(bin.join("pg_ctl"))
        };
        let out = cmd
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_dump`/`pg_restore` (or another client tool) against the fleet's database.
    fn pg_client(&self, tool: &str, args: &[&str]) {
        let bin = keyward_store_pg::local::server_bindir().unwrap();
        let url = self.ready["postgres_url"].as_str().unwrap();
        let out = Command::new(bin.join(tool))
            .arg("--dbname")
            .arg(url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start `keyward bench` through the balancer: open loop at `rate` for `secs` seconds.
    fn bench(&self, rate: u32, secs: u32, connections: u32) -> Child {
        Command::new(BIN)
            .args(["bench", "--demo"])
            .arg(self.state.join("ready.json"))
            .args([
                "--rate",
                &rate.to_string(),
                "--duration",
                &format!("{secs}s"),
                "--warmup",
                "0s",
                "--connections",
                &connections.to_string(),
                "--timeout",
                "5s",
                "--json",
                "--quiet",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("keyward bench")
    }

    /// Start member `i` again from its configuration (after it was killed): a child of the test.
    fn restart(&self, i: usize) -> Proc {
        let cfg = self.config(i);
        let mut p = Proc::spawn(
            &["serve", "--config", cfg.to_str().unwrap()],
            cfg.parent().unwrap(),
        );
        p.wait_stderr("XKS API on ", Duration::from_secs(120));
        p
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.demo.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.demo.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "keyward demo --fleet did not stop within 60 s:\n{}",
            self.demo.stderr_text()
        );
    }
}

/// The finished bench's JSON report.
fn bench_report(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "keyward bench printed no report ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Poll `f` until it is true or `limit` passed; how long it took (None: it never was).
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long until every one of `members` answers `f` with true, measured from `start`.
fn spread(
    start: Instant,
    fleet: &Fleet,
    members: &[usize],
    what: &str,
    f: impl Fn(&Xks) -> bool,
) -> Duration {
    for &m in members {
        let x = fleet.xks(m);
        if within(Duration::from_secs(10), || f(&x)).is_none() {
            panic!("member {m}: {what} not seen within 10 s");
        }
    }
    start.elapsed()
}

fn error_name(v: &Value) -> &str {
    v["errorName"].as_str().unwrap_or("")
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// GetHealthStatus as KMS calls it.
fn health(x: &Xks) -> (u16, Value) {
    x.call(
        "health",
        &json!({"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": "fleet-test"}}),
    )
}

#[test]
fn a_change_on_one_member_is_enforced_by_every_member_within_2_s() {
    let fleet = Fleet::start(3);
    let key = fleet.key();
    let others = [2, 3];
    for m in others {
        let (code, v) = fleet.xks(m).encrypt(&key, PLAIN);
        assert_eq!(code, 200, "member {m}: {v}");
    }

    // A disabled key: Encrypt refused with the spec's InvalidStateException (KMS turns it into
    // KMSInvalidStateException), then served again once enabled.
    fleet.admin_ok(1, &["keys", "disable", &key]);
    let t = Instant::now();
    let took = spread(t, &fleet, &others, "the disabled key refused", |x| {
        let (code, v) = x.encrypt(&key, PLAIN);
        code == 400 && error_name(&v) == "InvalidStateException"
    });
    assert!(
        took <= SPREAD,
        "a disabled key took {took:?} to reach every member"
    );
    fleet.admin_ok(1, &["keys", "enable", &key]);
    let t = Instant::now();
    let took = spread(t, &fleet, &others, "the key enabled again", |x| {
        x.encrypt(&key, PLAIN).0 == 200
    });
    assert!(took <= SPREAD, "an enabled key took {took:?}");

    // A revoked grant: Encrypt refused (AccessDeniedException), Decrypt (still granted) served.
    let (code, ciphertext) = fleet.xks(2).encrypt(&key, PLAIN);
    assert_eq!(code, 200, "{ciphertext}");
    fleet.admin_ok(
        1,
        &[
            "keys",
            "revoke",
            &key,
            "--principal",
            "*",
            "--ops",
            "encrypt",
        ],
    );
    let t = Instant::now();
    let took = spread(t, &fleet, &others, "the revoked grant refused", |x| {
        let (code, v) = x.encrypt(&key, PLAIN);
        code == 403 && error_name(&v) == "AccessDeniedException"
    });
    assert!(took <= SPREAD, "a revoked grant took {took:?}");
    eprintln!("fleet spread: revoked grant refused by members 2 and 3 after {took:?}");
    for m in others {
        let (code, v) = fleet.xks(m).decrypt(&key, &ciphertext);
        assert_eq!(
            (code, v["plaintext"].as_str()),
            (200, Some(PLAIN)),
            "member {m}"
        );
    }

    // A removed credential: SigV4 with it refused (AuthenticationFailedException).
    let out = fleet.admin_ok(1, &["creds", "add"]);
    let akid = out
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("creds add: {out}"))
        .to_string();
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret access key (shown once): "))
        .unwrap_or_else(|| panic!("creds add: {out}"))
        .trim()
        .to_string();
    let with_new = |m: usize| Xks {
        access_key_id: akid.clone(),
        secret: secret.clone(),
        ..fleet.xks(m)
    };
    for m in others {
        let x = with_new(m);
        assert!(
            within(Duration::from_secs(10), || x.metadata(&key).0 == 200).is_some(),
            "member {m} never accepted the new credential"
        );
    }
    fleet.admin_ok(1, &["creds", "remove", &akid]);
    let t = Instant::now();
    for m in others {
        let x = with_new(m);
        let refused = within(Duration::from_secs(10), || {
            let (code, v) = x.metadata(&key);
            code == 401 && error_name(&v) == "AuthenticationFailedException"
        });
        assert!(
            refused.is_some(),
            "member {m} still accepts a removed credential"
        );
    }
    let took = t.elapsed();
    assert!(took <= SPREAD, "a removed credential took {took:?}");
    eprintln!("fleet spread: removed credential refused by members 2 and 3 after {took:?}");
    // The demo's own credential still works everywhere.
    for m in [1, 2, 3] {
        assert_eq!(fleet.xks(m).metadata(&key).0, 200, "member {m}");
    }
}

#[test]
fn a_killed_member_costs_its_in_flight_requests_is_reported_and_rejoins_with_every_change() {
    let fleet = Fleet::start(3);
    let key = fleet.key();
    let lb = fleet.balancer();

    // Through the balancer, whichever member answers counts three, all ACTIVE.
    let all_three = within(Duration::from_secs(30), || {
        (0..3).all(|_| {
            let (code, v) = health(&lb);
            let details = v["ekmFleetDetails"].as_array().map_or(0, Vec::len);
            let active = v["ekmFleetDetails"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|d| d["healthStatus"] == "ACTIVE");
            code == 200 && v["xksProxyFleetSize"] == 3 && details == 3 && active
        })
    });
    assert!(
        all_three.is_some(),
        "health never showed 3: {:?}",
        health(&lb)
    );
    let old_id = fleet
        .members(1)
        .into_iter()
        .find(|m| m.2 == "local-az-3")
        .expect("member 3 in the fleet")
        .0;

    // kill -9 member 3 while a load runs through the balancer.
    let bench = fleet.bench(150, 10, 9);
    std::thread::sleep(Duration::from_secs(4));
    let on_it: u64 = fleet.balancer_stat("member-3")["scur"].parse().unwrap();
    kill9(fleet.pid(3));
    let killed = Instant::now();
    let report = bench_report(bench);
    // HTTP/1.1 without pipelining: a connection carries at most one request at a time, so
    // the requests in flight on member 3 are at most the connections HAProxy had open to it.
    // Each of them fails at most once: the bench then reconnects, and HAProxy sends the new
    // connection elsewhere (a refused connect is redispatched; the health check marks the
    // member down within 2 s).
    let errors = report["errors_total"].as_u64().unwrap();
    assert!(
        errors <= on_it,
        "{errors} errors with {on_it} connection(s) on the killed member: {report}"
    );
    for (kind, _) in report["errors"].as_object().unwrap() {
        assert!(
            !kind.starts_with(|c: char| c.is_ascii_digit()),
            "an XKS error answer, not a lost connection: {kind} ({report})"
        );
    }
    assert_eq!(report["unsent"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 1000, "{report}");
    eprintln!(
        "fleet kill -9: {errors} error(s) {} with {on_it} connection(s) on the killed member; \
         {} ok, p99 {} us",
        report["errors"], report["ok"], report["latency_us"]["p99_us"]
    );

    // Changes while it is down.
    fleet.admin_ok(1, &["keys", "create", "made-while-down"]);
    fleet.admin_ok(
        2,
        &[
            "keys",
            "grant",
            "made-while-down",
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt,metadata",
        ],
    );
    fleet.admin_ok(2, &["keys", "disable", &key]);

    // The others report it UNAVAILABLE and stop counting it (20 s without a heartbeat, seen at
    // the next heartbeat round and health refresh).
    let gone = within(Duration::from_secs(40), || {
        (0..2).all(|_| {
            let (_, v) = health(&lb);
            let details = v["ekmFleetDetails"].as_array().cloned().unwrap_or_default();
            v["xksProxyFleetSize"] == 2
                && details
                    .iter()
                    .any(|d| d["id"] == old_id.as_str() && d["healthStatus"] == "UNAVAILABLE")
        })
    });
    assert!(
        gone.is_some(),
        "member 3 never reported gone: {:?}",
        health(&lb)
    );
    let after = killed.elapsed();
    assert!(after <= Duration::from_secs(30), "took {after:?}");
    assert_eq!(
        fleet.balancer_stat("member-3")["status"],
        "DOWN",
        "HAProxy still sends to the killed member"
    );

    // Restarted with the same configuration: it has every change made while it was down.
    let _m3 = fleet.restart(3);
    let direct = fleet.xks(3);
    let (code, v) = direct.encrypt("made-while-down", PLAIN);
    assert_eq!(code, 200, "a key made while member 3 was down: {v}");
    let (code, v) = direct.encrypt(&key, PLAIN);
    assert_eq!(
        (code, error_name(&v)),
        (400, "InvalidStateException"),
        "a key disabled while member 3 was down: {v}"
    );
    let rejoined = within(Duration::from_secs(30), || {
        (0..3).all(|_| {
            let (_, v) = health(&lb);
            v["xksProxyFleetSize"] == 3
        }) && fleet.balancer_stat("member-3")["status"] == "UP"
    });
    assert!(
        rejoined.is_some(),
        "member 3 never rejoined: {:?}",
        health(&lb)
    );
    let new = fleet
        .members(1)
        .into_iter()
        .find(|m| m.2 == "local-az-3" && m.0 != old_id)
        .expect("the restarted member 3 in the fleet");
    assert_eq!(new.1, "ACTIVE", "{new:?}");
}

#[test]
fn a_database_outage_costs_no_xks_request_and_members_catch_up_by_themselves() {
    let fleet = Fleet::start(3);
    let key = fleet.key();
    let bench = fleet.bench(150, 18, 9);
    std::thread::sleep(Duration::from_secs(2));

    fleet.pg_ctl(&["-m", "fast", "-w", "stop"]);
    let stopped = Instant::now();
    // Admin writes are refused at once, saying why.
    let t = Instant::now();
    let out = admin(&fleet.profile(1), &["keys", "create", "during-outage"]);
    let refused_in = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a write with the database down");
    assert!(
        err.contains("key store database") && err.contains("connect"),
        "the refusal does not say why: {err}"
    );
    assert!(
        refused_in < Duration::from_secs(5),
        "refused after {refused_in:?}"
    );
    // Members serve on, and say in health that their store does not answer.
    let degraded = within(Duration::from_secs(15), || {
        let (code, v) = health(&fleet.xks(1));
        code == 200 && v["ekmFleetDetails"][0]["healthStatus"] == "DEGRADED"
    });
    assert!(degraded.is_some(), "{:?}", health(&fleet.xks(1)));
    let rest = Duration::from_secs(10).saturating_sub(stopped.elapsed());
    std::thread::sleep(rest);
    fleet.pg_ctl(&["-w", "start"]);

    // Accepted again after the restart (the members reconnect by themselves).
    let accepted = within(Duration::from_secs(30), || {
        admin(&fleet.profile(1), &["keys", "create", "after-outage"])
            .status
            .success()
    });
    assert!(accepted.is_some(), "admin writes never accepted again");
    fleet.admin_ok(
        1,
        &[
            "keys",
            "grant",
            "after-outage",
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt,metadata",
        ],
    );
    let t = Instant::now();
    spread(t, &fleet, &[2, 3], "the key made after the outage", |x| {
        x.encrypt("after-outage", PLAIN).0 == 200
    });
    for m in [1, 2, 3] {
        let (code, v) = fleet.xks(m).metadata("during-outage");
        assert_eq!(
            (code, error_name(&v)),
            (404, "KeyNotFoundException"),
            "member {m}: the refused write exists: {v}"
        );
    }

    let report = bench_report(bench);
    assert_eq!(
        report["errors_total"], 0,
        "XKS errors during the outage: {report}"
    );
    assert_eq!(report["unsent"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 2000, "{report}");
    assert_eq!(fleet.xks(1).encrypt(&key, PLAIN).0, 200);
}

#[test]
fn admin_writes_racing_on_three_members_lose_nothing_and_duplicate_nothing() {
    use keyward_admin::proto::Request;
    use keyward_admin::Profile;
    use keyward_keystore::KeyUsage;

    let fleet = Fleet::start(3);
    // The record each member applied, as its next heartbeat (every 2 s) reports it.
    std::thread::sleep(Duration::from_secs(3));
    let before = fleet.record_of(1);
    let keys_of = |i: usize| -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let p = Profile::load(&fleet.profile(i)).unwrap();
        let r = rt
            .block_on(p.call(&Request::KeysList { store: None }))
            .unwrap();
        assert!(r.ok, "{:?}", r.error);
        let mut ids: Vec<String> = r
            .result
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let initial = keys_of(1);

    // Three operators, one per member, creating keys as fast as they can for 15 s: per
    // member, the keys acknowledged and the (key, error) of each refused write.
    type Outcome = (Vec<String>, Vec<(String, String)>);
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let tasks: Vec<_> = (1..=3)
            .map(|i| {
                let profile = Profile::load(&fleet.profile(i)).unwrap();
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let (mut ok, mut failed) = (Vec::new(), Vec::new());
                    let end = Instant::now() + Duration::from_secs(15);
                    let mut n = 0;
                    while Instant::now() < end {
                        let id = format!("race-{i}-{n}");
                        n += 1;
                        let req = Request::KeysCreate {
                            store: None,
                            id: id.clone(),
                            usage: KeyUsage::EncryptDecrypt,
                        };
                        match rt.block_on(profile.call(&req)) {
                            Ok(r) if r.ok => ok.push(id),
                            Ok(r) => failed.push((id, r.error.unwrap_or_default())),
                            Err(e) => failed.push((id, e.to_string())),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let acknowledged: Vec<String> = results.iter().flat_map(|r| r.0.clone()).collect();
    let failed: Vec<(String, String)> = results.iter().flat_map(|r| r.1.clone()).collect();
    assert!(
        results.iter().all(|r| r.0.len() >= 5),
        "some operator hardly got through: {:?}",
        results
            .iter()
            .map(|r| (r.0.len(), r.1.len()))
            .collect::<Vec<_>>()
    );
    // A write may lose every retry of its race (reported as a conflict, nothing written); any
    // other refusal is a bug.
    for (id, why) in &failed {
        assert!(
            why.contains("at the same time"),
            "{id} refused for another reason: {why}"
        );
    }

    // Every member ends with the same keys: all acknowledged ones, none of the refused ones.
    let mut expected: Vec<String> = initial
        .iter()
        .cloned()
        .chain(acknowledged.clone())
        .collect();
    expected.sort();
    let same = within(Duration::from_secs(10), || {
        (1..=3).all(|i| keys_of(i) == expected)
    });
    assert!(
        same.is_some(),
        "members differ: {:?} / {:?} / {:?}, expected {} keys",
        keys_of(1).len(),
        keys_of(2).len(),
        keys_of(3).len(),
        expected.len()
    );
    // ... at the same store record, exactly one record per acknowledged write (none lost, none
    // twice): as each member reports itself in `keyward admin fleet` (its next heartbeat).
    let end = before + acknowledged.len() as u64;
    let settled = within(Duration::from_secs(10), || {
        (1..=3).all(|i| fleet.record_of(i) == end)
    });
    assert!(
        settled.is_some(),
        "records: {} {} {}, expected {end} ({before} + {} writes, {} lost races)",
        fleet.record_of(1),
        fleet.record_of(2),
        fleet.record_of(3),
        acknowledged.len(),
        failed.len()
    );
    let races: usize = (1..=3)
        .map(|i| {
            std::fs::read_to_string(fleet.log(i))
                .unwrap_or_default()
                .matches("admin write lost a race")
                .count()
        })
        .sum();
    eprintln!(
        "fleet race: {} writes acknowledged ({:?} per member), {races} compare-and-set races \
         lost and tried again, {} lost every retry; store record {before} -> {end} on every \
         member",
        acknowledged.len(),
        results.iter().map(|r| r.0.len()).collect::<Vec<_>>(),
        failed.len()
    );
}

#[test]
fn a_database_put_back_behind_the_krs_head_is_refused_by_a_booting_member_and_not_applied() {
    let fleet = Fleet::start(2);
    let dump = fleet.state.join("before.dump");
    fleet.pg_client(
        "pg_dump",
        &["--format=custom", "--file", dump.to_str().unwrap()],
    );

    // Writes after the dump: acknowledged, so recorded at the KRS.
    fleet.admin_ok(1, &["keys", "create", "after-dump"]);
    fleet.admin_ok(
        1,
        &[
            "keys",
            "grant",
            "after-dump",
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt,metadata",
        ],
    );
    let t = Instant::now();
    spread(t, &fleet, &[2], "the key made after the dump", |x| {
        x.encrypt("after-dump", PLAIN).0 == 200
    });

    // The database operator's rollback.
    fleet.pg_client(
        "pg_restore",
        &[
            "--clean",
            "--if-exists",
            "--single-transaction",
            dump.to_str().unwrap(),
        ],
    );

    // Running members refuse to apply it: their follower says so and keeps the view.
    for m in [1, 2] {
        let log = fleet.log(m);
        let noticed = within(Duration::from_secs(15), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("ERROR") && l.contains("was NOT applied"))
        });
        assert!(
            noticed.is_some(),
            "member {m} did not refuse the older store:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let (code, v) = fleet.xks(m).encrypt("after-dump", PLAIN);
        assert_eq!(code, 200, "member {m} lost a key it had applied: {v}");
    }
    // ... and do not write onto it (that would fork the chain).
    let out = admin(&fleet.profile(1), &["keys", "create", "on-the-older-store"]);
    assert!(!out.status.success(), "a write onto the rolled-back store");

    // A member booting now refuses to serve it.
    let cfg = fleet.config(2);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let new_dir = fleet.state.join("member-new");
    std::fs::create_dir_all(&new_dir).unwrap();
    let mut fresh = text.replace("local-az-2", "local-az-new");
    for key in ["[xks]", "[admin]", "[attestation]"] {
        // Its own ports: the listen line after each section header.
        let at = fresh.find(key).unwrap();
        let line_start = at + fresh[at..].find("listen = ").unwrap();
        let line_end = line_start + fresh[line_start..].find('\n').unwrap();
        fresh.replace_range(line_start..line_end, "listen = \"127.0.0.1:0\"");
    }
    let new_cfg = new_dir.join("keyward.toml");
    std::fs::write(&new_cfg, fresh).unwrap();
    let mut p = Proc::spawn(&["serve", "--config", new_cfg.to_str().unwrap()], &new_dir);
    let code = p.wait_exit(Duration::from_secs(120));
    let err = p.stderr_text();
    assert_ne!(
        code,
        Some(0),
        "a member served the rolled-back store:\n{err}"
    );
    assert!(
        err.contains("rollback refused"),
        "not refused as a rollback:\n{err}"
    );
    assert!(!err.contains("XKS API on "), "it served first:\n{err}");
}

/// The demo refuses a second fleet on a busy balancer address, naming it.
#[test]
fn demo_fleet_refuses_a_taken_balancer_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--fleet", "2", "--state-dir"])
        .arg(tmp.path().join("state"))
        .args(["--listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&addr) && err.contains("--listen"), "{err}");
    // Nothing was started in the state directory.
    assert!(!tmp.path().join("state/postgres").exists(), "{err}");
}

/// The `spki_sha256=` a member logged at start for its appliance-managed TLS key.
fn logged_spki(p: &mut Proc) -> String {
    let line = p.wait_stderr("xks tls key spki_sha256=", Duration::from_secs(10));
    let at = line.find("spki_sha256=").unwrap() + "spki_sha256=".len();
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect()
}

#[test]
fn a_tls_key_and_chain_installed_through_one_member_are_served_by_every_member_without_restart() {
    let fleet = Fleet::start(2);
    // The demo's members serve TLS files; start them again with the appliance-managed key on
    // the XKS listener (the admin listener keeps the demo's files, so its profiles still work).
    let mut members = Vec::new();
    for i in 1..=2 {
        kill9(fleet.pid(i));
        let cfg = std::fs::read_to_string(fleet.config(i)).unwrap();
        let at = cfg.find("[xks]").unwrap();
        let end = at + cfg[at..].find("\n\n").unwrap();
        let xks: String = cfg[at..end]
            .lines()
            .filter(|l| !l.starts_with("tls_"))
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = format!("{}{}{}", &cfg[..at], xks.trim_end(), &cfg[end..]);
        std::fs::write(fleet.config(i), cfg).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 1..=2 {
        // One after the other: the first generates the key in the shared store.
        let mut p = fleet.restart(i);
        let spki = logged_spki(&mut p);
        members.push((p, spki));
    }
    let old = members[0].1.clone();
    assert_eq!(old.len(), 64);
    assert_eq!(members[1].1, old, "both members serve the store's one key");
    let url = |i: usize| fleet.member(i)["url"].as_str().unwrap().to_string();
    for i in 1..=2 {
        assert_eq!(served_spki_and_issuer(&url(i)).0, old, "member {i}");
    }

    // A new key through member 1 (`tls csr --new-key`), its chain from a CA installed there.
    let csr = fleet.admin_ok(1, &["tls", "csr", "--new-key", "--dns-name", "127.0.0.1"]);
    let ca = keyward_admin::Ca::new("fleet test XKS CA").unwrap();
    let chain = fleet.state.join("xks-chain.pem");
    std::fs::write(&chain, ca.sign_csr(&csr, 30).unwrap()).unwrap();
    fleet.admin_ok(1, &["tls", "install", "--chain", chain.to_str().unwrap()]);
    let installed = Instant::now();
    let (new, issuer) = served_spki_and_issuer(&url(1));
    assert_ne!(new, old, "member 1 serves the new key at once");
    assert!(issuer.contains("fleet test XKS CA"), "{issuer}");
    // Member 2, not restarted, serves it on its next re-read of the store.
    let took = within(Duration::from_secs(10), || {
        served_spki_and_issuer(&url(2)) == (new.clone(), issuer.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "member 2 still serves {:?}:\n{}",
            served_spki_and_issuer(&url(2)),
            members[1].0.stderr_text()
        )
    });
    eprintln!(
        "member 2 served the new key {:?} after the install on member 1",
        installed.elapsed()
    );
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    let show = fleet.admin_ok(2, &["tls", "show"]);
    assert!(show.contains(&new), "{show}");
    assert!(show.contains("fleet test XKS CA"), "{show}");

    // Member 2's live attestation binds the key it serves now (verify --url checks the
    // evidence against the SPKI the XKS URL serves).
    let verify = Command::new(BIN)
        .args([
            "verify",
            "--json",
            "--url",
            fleet.member(2)["attestation_url"].as_str().unwrap(),
            "--xks-url",
            &url(2),
        ])
        .arg("--policy")
        .arg(fleet.state.join("attestation-policy.toml"))
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // A renewal for the same key through member 2: member 1 serves the new chain.
    let csr = fleet.admin_ok(2, &["tls", "csr", "--dns-name", "127.0.0.1"]);
    let renewal = keyward_admin::Ca::new("fleet renewal CA").unwrap();
    std::fs::write(&chain, renewal.sign_csr(&csr, 30).unwrap()).unwrap();
    fleet.admin_ok(2, &["tls", "install", "--chain", chain.to_str().unwrap()]);
    let renewed = within(Duration::from_secs(10), || {
        let (spki, issuer) = served_spki_and_issuer(&url(1));
        spki == new && issuer.contains("fleet renewal CA")
    });
    assert!(
        renewed.is_some(),
        "member 1 serves {:?}",
        served_spki_and_issuer(&url(1))
    );
}
