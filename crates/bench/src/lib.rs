//! `keyward bench`: a SigV4 load generator for any XKS proxy (keyward or another vendor's).
//!
//! It signs every request as AWS KMS does (the `aws-sigv4` crate, service `kms-xks-proxy`),
//! sends it over keep-alive HTTPS (rustls, ring) or plain HTTP, in a closed loop (N connections
//! as fast as they go) or an open loop at a fixed rate with latency counted from the intended
//! send time, and reports throughput, errors by name and status, HDR-histogram percentiles and,
//! when it can read the server process, server CPU microseconds per request.
//!
//! Flow: [`settings`] validates the arguments (or `keyward demo`'s JSON line), [`payload`]
//! pre-builds and pre-hashes the bodies, [`conn`] opens the connections, [`load`] runs the
//! loops with [`signer`] signing each request, [`cpu`] and [`report`] sum up.

mod conn;
mod cpu;
mod load;
mod payload;
mod report;
mod settings;
mod signer;

// What a run is given: the validated settings, from arguments or `keyward demo`'s JSON line.
pub use settings::{DemoLine, Load, Mix, Op, Preset, RawSettings, Settings, SettingsError, Target};
// What a run reports: the result, latency percentiles and CPU per request.
pub use report::{distribution, new_histogram, record, CpuUse, LatencySummary, Report};
// Server CPU time from /proc (the numbers behind `CpuUse`).
pub use cpu::{online_cpus, parse_stat, process_cpu};
// The pieces the criterion benches time on their own: signing, pre-built bodies, connections.
pub use conn::Connector;
pub use payload::{Builder, EncryptOutput, Prepared};
pub use signer::Signer;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::ExposeSecret as _;

use self::load::{Shared, Tally};
use self::payload::{Pools, POOL};

/// Load-generate against an XKS proxy with SigV4-signed requests.
///
/// Examples:
///   keyward demo > demo.json &   keyward bench --demo demo.json --connections 64 --duration 10s
///   keyward bench --demo demo.json --rate 1800 --duration 20s --connections 32
///   keyward bench --demo demo.json --mix encrypt=70,decrypt=25,health=5 --preset max --json
///
/// Exits 0 when every request was answered 200, 1 when any failed, 2 on bad arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Read url, uri_prefix, region, credentials, CA, key ids and pid from `keyward demo`'s
    /// JSON line saved in FILE (its stdout). Flags given explicitly win.
    #[arg(long, value_name = "FILE")]
    pub demo: Option<PathBuf>,
    /// Scheme, host and port of the proxy, e.g. https://127.0.0.1:8443 (http:// for plain).
    #[arg(long)]
    pub url: Option<String>,
    /// Path before /kms/xks/v1, e.g. /keyward (empty for none).
    #[arg(long)]
    pub uri_prefix: Option<String>,
    /// Region in the SigV4 credential scope.
    #[arg(long)]
    pub region: Option<String>,
    /// SigV4 access key id of the key store.
    #[arg(long)]
    pub access_key_id: Option<String>,
    /// SigV4 secret (prefer the environment variable over the command line).
    #[arg(long, env = "KEYWARD_BENCH_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: Option<String>,
    /// PEM file of the CA to trust; without it the system roots and Mozilla's roots.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// External key id to use (repeat for several; requests rotate over them).
    #[arg(long = "key-id", value_name = "ID")]
    pub key_ids: Vec<String>,
    /// Operation: encrypt, decrypt, metadata or health (default encrypt).
    #[arg(long)]
    pub op: Option<String>,
    /// Weighted mix instead of one operation, e.g. encrypt=70,decrypt=25,health=5.
    #[arg(long)]
    pub mix: Option<String>,
    /// Payload sizes: kms (320-byte plaintext, 96-byte AAD) or max (4300 and 8192).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Plaintext bytes per encrypt (overrides the preset).
    #[arg(long)]
    pub plaintext_size: Option<usize>,
    /// AAD bytes (0 for none; overrides the preset).
    #[arg(long)]
    pub aad_size: Option<usize>,
    /// Ask for the ciphertext data integrity value (SHA_256) on encrypt.
    #[arg(long)]
    pub cdiv: bool,
    /// awsPrincipalArn sent in requestMetadata.
    #[arg(long)]
    pub principal: Option<String>,
    /// Keep-alive connections (closed loop default 16, open loop default 32).
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,
    /// Open loop: requests per second, latency measured from the intended send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to measure (after the warm-up), e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many measured requests.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Send but do not record for this long first, e.g. 1s (default 0s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Per-request timeout (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Client runtime threads (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Server process to read CPU time from (default: the demo's pid).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Args {
    /// Reads the demo file (if any) and validates everything.
    pub fn settings(self) -> anyhow::Result<Settings> {
        let demo = match &self.demo {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--demo: reading {}", path.display()))?;
                Some(DemoLine::parse_output(&text)?)
            }
            None => None,
        };
        let raw = RawSettings {
            demo,
            url: self.url,
            uri_prefix: self.uri_prefix,
            region: self.region,
            access_key_id: self.access_key_id,
            secret_access_key: self.secret_access_key,
            ca_cert: self.ca_cert,
            key_ids: self.key_ids,
            op: self.op,
            mix: self.mix,
            preset: self.preset,
            plaintext_size: self.plaintext_size,
            aad_size: self.aad_size,
            cdiv: self.cdiv,
            principal: self.principal,
            connections: self.connections,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            requests: self.requests,
            timeout: self.timeout,
            threads: self.threads,
            server_pid: self.server_pid,
            json: self.json,
            quiet: self.quiet,
        };
        Ok(raw.validate()?)
    }
}

/// Runs the command: exit 0 when all requests succeeded, 1 otherwise.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.settings()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let report = rt.block_on(execute(&settings))?;
    if settings.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs one measurement and returns its report (used by `run` and by tests).
pub async fn execute(s: &Settings) -> anyhow::Result<Report> {
    let signer = signer::Signer::new(
        &s.access_key_id,
        s.secret_access_key.expose_secret(),
        &s.region,
        &s.target.authority,
    )?;
    let connector = conn::Connector::new(&s.target, s.ca_cert.as_deref())?;
    let pools = build_pools(s);

    // Connections first, so TLS handshakes are not counted as request latency.
    let mut conns = tokio::task::JoinSet::new();
    let connector = Arc::new(connector);
    for _ in 0..s.connections {
        let c = connector.clone();
        conns.spawn(async move { c.connect().await });
    }
    let mut ready = Vec::with_capacity(s.connections);
    while let Some(r) = conns.join_next().await {
        let c = r
            .context("connection task")?
            .with_context(|| format!("connecting to {}", s.target.authority))?;
        ready.push(Some(c));
    }
    let connector =
        Arc::try_unwrap(connector).map_err(|_| anyhow::anyhow!("connector still shared"))?;

    let now = Instant::now();
    let mut shared = Shared {
        pools,
        mix: s.mix.clone(),
        signer,
        connector,
        timeout: s.timeout,
        measure_start: now,
        end: now,
        give_up: now,
        limit: s.requests,
        issued: AtomicU64::new(0),
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };

    if s.mix.contains(Op::Decrypt) {
        prime_decrypt(s, &mut shared, &mut ready[0]).await?;
    }

    // The clock starts now.
    let start = Instant::now();
    let measure_start = start + s.warmup;
    let window = if s.duration.is_zero() {
        Duration::from_secs(24 * 3600)
    } else {
        s.duration
    };
    shared.measure_start = measure_start;
    shared.end = measure_start + window;
    shared.give_up = shared.end + Duration::from_secs(5).max(s.timeout);
    let shared = Arc::new(shared);

    let mut workers = tokio::task::JoinSet::new();
    let mut pacer = None;
    match s.load {
        Load::Closed => {
            for c in ready {
                workers.spawn(load::closed_worker(shared.clone(), c));
            }
        }
        Load::Open { rate } => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for c in ready {
                workers.spawn(load::open_worker(shared.clone(), rx.clone(), c));
            }
            let sh = shared.clone();
            let (ms, end, limit) = (measure_start, shared.end, s.requests);
            pacer = Some(
                std::thread::Builder::new()
                    .name("bench-pacer".into())
                    .spawn(move || load::pacer(start, rate, ms, end, limit, sh, tx))
                    .context("starting the pacer thread")?,
            );
        }
    }

    // Progress once a second, CPU snapshots at the window's edges, Ctrl-C stops early.
    let progress = s
        .progress
        .then(|| tokio::spawn(progress_loop(shared.clone(), start)));
    tokio::time::sleep_until(measure_start.into()).await;
    let cpus = cpu::online_cpus();
    let server_before = s.server_pid.map(cpu::process_cpu);
    let client_before = cpu::self_cpu();
    let window_start = Instant::now();

    let mut tally = Tally::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Polled until it fires once only: a finished `ctrl_c()` must not be polled again.
    let mut interrupted = false;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(t) => tally.merge(t.context("worker task")?),
                None => break,
            },
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
    let window_end = tally
        .last_completion
        .unwrap_or_else(Instant::now)
        .max(window_start);
    let client_cpu = cpu::self_cpu().saturating_sub(client_before);
    let server_after = s.server_pid.map(cpu::process_cpu);
    if let Some(p) = progress {
        p.abort();
        if s.progress {
            eprintln!();
        }
    }
    if let Some(p) = pacer {
        let _ = p.join();
    }

    let wall = window_end - window_start;
    let requests = tally.hist.len();
    let errors_total: u64 = tally.errors.values().sum();
    let (server_cpu, server_cpu_error) = match (server_before, server_after) {
        (Some(Ok(b)), Some(Ok(a))) => (
            Some(CpuUse::new(a.saturating_sub(b), wall, requests, cpus)),
            None,
        ),
        (Some(Err(e)), _) | (_, Some(Err(e))) => (None, Some(e.to_string())),
        _ => (None, None),
    };
    let by_op: BTreeMap<String, u64> = tally
        .by_op
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    Ok(Report {
        target: format!(
            "{}://{}{}",
            if s.target.tls { "https" } else { "http" },
            s.target.authority,
            s.target.uri_prefix
        ),
        mode: match s.load {
            Load::Closed => "closed",
            Load::Open { .. } => "open",
        },
        connections: s.connections,
        rate: match s.load {
            Load::Open { rate } => Some(rate),
            Load::Closed => None,
        },
        mix: s.mix.describe(),
        plaintext_bytes: s.plaintext_size,
        aad_bytes: s.aad_size,
        cdiv: s.cdiv,
        client_threads: s.threads,
        duration_s: (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        requests,
        ok: tally.ok,
        errors_total,
        ops_per_s: if wall.is_zero() {
            0.0
        } else {
            (requests as f64 / wall.as_secs_f64()).round()
        },
        by_op,
        errors: tally.errors,
        unsent: tally.unsent,
        latency_us: LatencySummary::from_histogram(&tally.hist),
        distribution_us: distribution(&tally.hist),
        server_pid: s.server_pid,
        server_cpu,
        client_cpu: CpuUse::new(client_cpu, wall, requests, cpus),
        server_cpu_error,
    })
}

fn build_pools(s: &Settings) -> Pools {
    let b = payload::Builder::new(s);
    let mut pools = Pools::default();
    for n in 0..POOL {
        let key = s.key_ids.get(n % s.key_ids.len().max(1));
        if let Some(key) = key {
            if s.mix.contains(Op::Encrypt) || s.mix.contains(Op::Decrypt) {
                pools.encrypt.push(b.encrypt(key, n));
            }
            if s.mix.contains(Op::Metadata) {
                pools.metadata.push(b.key_metadata(key, n));
            }
        }
        if s.mix.contains(Op::Health) {
            pools.health.push(b.health(n));
        }
    }
    pools
}

/// Makes the ciphertexts the decrypt bodies need, by encrypting once per pooled body.
async fn prime_decrypt(
    s: &Settings,
    shared: &mut Shared,
    conn: &mut Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
) -> anyhow::Result<()> {
    let b = payload::Builder::new(s);
    // The decrypt bodies must use the AAD the encrypts used: rebuild the encrypt pool with
    // this builder's AAD and encrypt each body once.
    let mut encrypts = Vec::new();
    let mut decrypts = Vec::new();
    for n in 0..POOL {
        let Some(key) = s.key_ids.get(n % s.key_ids.len().max(1)) else {
            anyhow::bail!("--key-id: decrypt needs a key id");
        };
        let enc = b.encrypt(key, n);
        let (outcome, body) = load::send(shared, conn, &enc).await;
        if let Err(e) = outcome {
            anyhow::bail!("preparing decrypt ciphertexts: encrypt of key {key} failed: {e}");
        }
        let body = body.unwrap_or_default();
        let out: EncryptOutput = serde_json::from_slice(&body)
            .context("preparing decrypt ciphertexts: the encrypt answer is not XKS JSON")?;
        decrypts.push(b.decrypt(key, n, &out));
        encrypts.push(enc);
    }
    if s.mix.contains(Op::Encrypt) {
        shared.pools.encrypt = encrypts;
    }
    shared.pools.decrypt = decrypts;
    Ok(())
}

async fn progress_loop(shared: Arc<Shared>, start: Instant) {
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs();
        let phase = if Instant::now() < shared.measure_start {
            " (warm-up)"
        } else {
            ""
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{secs:>4}s] {done:>10} requests {:>8}/s  {failed} errors{phase}   ",
            done - last
        );
        let _ = err.flush();
        last = done;
    }
}
