//! Turns `keyward bench`'s command line (and, optionally, `keyward demo`'s JSON line) into a
//! validated [`Settings`]: every refusal is a [`SettingsError`] that names the offending field.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A refused argument: the message always starts with the flag or field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{field}: missing (give it on the command line or through --demo FILE)")]
    Missing { field: &'static str },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// One XKS operation the generator can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Encrypt,
    Decrypt,
    Metadata,
    Health,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Encrypt, Op::Decrypt, Op::Metadata, Op::Health];

    pub fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Metadata => "metadata",
            Op::Health => "health",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == s)
    }
}

/// A weighted choice of operations, e.g. `encrypt=70,decrypt=25,health=5`.
///
/// Picking is deterministic (a weighted round robin over a 0..total cycle), so two runs with the
/// same mix send the same sequence and short runs still honour the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// (operation, weight), weights > 0, each operation at most once.
    entries: Vec<(Op, u32)>,
    /// Operation for each slot of one cycle, spread so the cycle interleaves operations.
    cycle: Vec<Op>,
}

impl Mix {
    /// A mix of a single operation.
    pub fn single(op: Op) -> Mix {
        Mix {
            entries: vec![(op, 1)],
            cycle: vec![op],
        }
    }

    /// Parses `op=weight[,op=weight...]`; weights are integers, at least one must be non-zero.
    pub fn parse(s: &str) -> Result<Mix, SettingsError> {
        let mut entries: Vec<(Op, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| {
                invalid(
                    "--mix",
                    format!("`{part}` is not op=weight (e.g. encrypt=70)"),
                )
            })?;
            let op = Op::parse(name.trim()).ok_or_else(|| {
                invalid(
                    "--mix",
                    format!(
                        "unknown operation `{}` (expected encrypt, decrypt, metadata or health)",
                        name.trim()
                    ),
                )
            })?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                invalid(
                    "--mix",
                    format!(
                        "weight `{}` of {} is not a whole number",
                        weight.trim(),
                        op.name()
                    ),
                )
            })?;
            if weight > 1_000_000 {
                return Err(invalid(
                    "--mix",
                    format!("weight of {} is above 1000000", op.name()),
                ));
            }
            if entries.iter().any(|(o, _)| *o == op) {
                return Err(invalid("--mix", format!("{} is given twice", op.name())));
            }
            if weight > 0 {
                entries.push((op, weight));
            }
        }
        if entries.is_empty() {
            return Err(invalid("--mix", "no operation with a weight above zero"));
        }
        // Reduce by the greatest common divisor so the cycle stays short (70/25/5 -> 14/5/1).
        let g = entries.iter().fold(0, |g, (_, w)| gcd(g, *w));
        for (_, w) in &mut entries {
            *w /= g;
        }
        let total: u32 = entries.iter().map(|(_, w)| *w).sum();
        // Smooth weighted round robin (as nginx does): interleaves instead of running in blocks.
        let mut current: Vec<i64> = vec![0; entries.len()];
        let mut cycle = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, (_, w)) in entries.iter().enumerate() {
                current[i] += i64::from(*w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= i64::from(total);
            cycle.push(entries[best].0);
        }
        Ok(Mix { entries, cycle })
    }

    /// The operation for the `n`-th request.
    pub fn pick(&self, n: u64) -> Op {
        // `cycle` is never empty: `parse` refuses an empty mix and `single` has one entry.
        self.cycle[(n % self.cycle.len() as u64) as usize]
    }

    /// The operations with their (reduced) weights.
    pub fn entries(&self) -> &[(Op, u32)] {
        &self.entries
    }

    pub fn contains(&self, op: Op) -> bool {
        self.entries.iter().any(|(o, _)| *o == op)
    }

    /// Human form, e.g. `encrypt=14,decrypt=5,health=1`.
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|(op, w)| format!("{}={w}", op.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Payload presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// What KMS really sends: its own encrypted blob of a data key (a few hundred bytes) and a
    /// short AAD (KMS header and encryption-context material): 320-byte plaintext, 96-byte AAD.
    Kms,
    /// The spec maximum every proxy must accept: 4300-byte plaintext and 8192-byte AAD.
    Max,
}

impl Preset {
    /// (plaintext bytes, AAD bytes).
    pub fn sizes(self) -> (usize, usize) {
        match self {
            Preset::Kms => (320, 96),
            Preset::Max => (4300, 8192),
        }
    }
}

/// The largest plaintext and AAD we let the generator build (well above the spec minimums, so
/// a proxy's "too large" answer can be measured too, but bounded so memory stays small).
pub(crate) const MAX_PLAINTEXT: usize = 65_536;
pub(crate) const MAX_AAD: usize = 65_535;

/// `keyward demo`'s JSON line (issue 2, part 7). Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DemoLine {
    pub url: String,
    #[serde(default)]
    pub uri_prefix: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub key_ids: Vec<String>,
    #[serde(default)]
    pub pid: Option<u32>,
}

impl DemoLine {
    /// Reads the demo's stdout as saved in a file: the last line that is a JSON object with a
    /// `url` is the one (human lines around it are skipped).
    pub fn parse_output(text: &str) -> Result<DemoLine, SettingsError> {
        let mut last_err = None;
        for line in text.lines().rev() {
            let line = line.trim();
            if !line.starts_with('{') {
                continue;
            }
            match serde_json::from_str::<DemoLine>(line) {
                Ok(d) => return Ok(d),
                Err(e) => last_err = Some(e.to_string()),
            }
        }
        Err(invalid(
            "--demo",
            match last_err {
                Some(e) => format!("the JSON line does not fit keyward demo's format: {e}"),
                None => "no JSON line found (expected keyward demo's stdout)".to_string(),
            },
        ))
    }
}

/// Where to send requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Host as written in the URL (no brackets for IPv6).
    pub host: String,
    pub port: u16,
    /// The `Host` header value (host[:port] as in the URL).
    pub authority: String,
    /// Path before `/kms/xks/v1`, e.g. `/keyward`, or empty.
    pub uri_prefix: String,
}

impl Target {
    /// Parses `https://host[:port]` or `http://host[:port]` (a trailing `/` is allowed; any other
    /// path belongs in `--uri-prefix`).
    pub fn parse(url: &str, uri_prefix: &str) -> Result<Target, SettingsError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(invalid(
                "--url",
                format!("`{url}` must start with https:// or http://"),
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(invalid(
                "--url",
                format!("`{url}` must be scheme, host and port only (put a path in --uri-prefix)"),
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("--url", format!("`{url}`: unclosed `[` in the host")))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p, url)?,
                None if after.is_empty() => default_port,
                None => return Err(invalid("--url", format!("`{url}`: junk after the host"))),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, url)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(invalid("--url", format!("`{url}` has no host")));
        }
        let prefix = uri_prefix.trim_end_matches('/');
        if !prefix.is_empty() && !prefix.starts_with('/') {
            return Err(invalid(
                "--uri-prefix",
                format!("`{uri_prefix}` must start with `/`"),
            ));
        }
        if prefix.contains(['?', '#', ' ']) || prefix.len() > 128 {
            return Err(invalid(
                "--uri-prefix",
                "must be a plain path of at most 128 characters",
            ));
        }
        Ok(Target {
            tls,
            host,
            port,
            authority: authority.to_string(),
            uri_prefix: prefix.to_string(),
        })
    }
}

fn parse_port(p: &str, url: &str) -> Result<u16, SettingsError> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid(
            "--url",
            format!("`{url}`: port `{p}` is not 1-65535"),
        )),
        Ok(port) => Ok(port),
    }
}

/// Open loop (fixed rate) or closed loop (as fast as the connections allow).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Closed,
    /// Requests per second, spread evenly; latency counts from the intended send time.
    Open {
        rate: f64,
    },
}

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: secrecy::SecretString,
    pub ca_cert: Option<PathBuf>,
    pub key_ids: Vec<String>,
    pub mix: Mix,
    pub preset: Preset,
    pub plaintext_size: usize,
    pub aad_size: usize,
    pub cdiv: bool,
    pub principal: String,
    pub connections: usize,
    pub load: Load,
    pub duration: Duration,
    pub warmup: Duration,
    pub requests: Option<u64>,
    pub timeout: Duration,
    pub threads: usize,
    pub server_pid: Option<u32>,
    pub json: bool,
    pub progress: bool,
}

/// The raw inputs, as the command line gives them (see `Args` for their meaning).
#[derive(Debug, Clone, Default)]
pub struct RawSettings {
    pub demo: Option<DemoLine>,
    pub url: Option<String>,
    pub uri_prefix: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub key_ids: Vec<String>,
    pub op: Option<String>,
    pub mix: Option<String>,
    pub preset: Option<Preset>,
    pub plaintext_size: Option<usize>,
    pub aad_size: Option<usize>,
    pub cdiv: bool,
    pub principal: Option<String>,
    pub connections: Option<usize>,
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub warmup: Option<Duration>,
    pub requests: Option<u64>,
    pub timeout: Option<Duration>,
    pub threads: Option<usize>,
    pub server_pid: Option<u32>,
    pub json: bool,
    pub quiet: bool,
}

impl RawSettings {
    /// Validates and fills defaults. Command-line values win over the demo line.
    pub fn validate(self) -> Result<Settings, SettingsError> {
        let demo = self.demo;
        let url = self
            .url
            .or_else(|| demo.as_ref().map(|d| d.url.clone()))
            .ok_or(SettingsError::Missing { field: "--url" })?;
        let prefix = self
            .uri_prefix
            .or_else(|| demo.as_ref().map(|d| d.uri_prefix.clone()))
            .unwrap_or_default();
        let target = Target::parse(&url, &prefix)?;

        let region = self
            .region
            .or_else(|| demo.as_ref().map(|d| d.region.clone()))
            .unwrap_or_else(|| "us-east-1".to_string());
        if region.is_empty()
            || region.len() > 64
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "--region",
                format!("`{region}` is not a Region name like us-east-1"),
            ));
        }

        let access_key_id = self
            .access_key_id
            .or_else(|| demo.as_ref().map(|d| d.access_key_id.clone()))
            .ok_or(SettingsError::Missing {
                field: "--access-key-id",
            })?;
        // Only what SigV4 itself needs is checked here: measuring a proxy's answer to an odd
        // credential is legitimate, but a credential that cannot appear in a header is not.
        if access_key_id.is_empty() || !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(
                "--access-key-id",
                "must be non-empty letters and digits",
            ));
        }
        let secret = self
            .secret_access_key
            .or_else(|| demo.as_ref().map(|d| d.secret_access_key.clone()))
            .ok_or(SettingsError::Missing {
                field: "--secret-access-key",
            })?;
        if secret.is_empty() {
            return Err(invalid("--secret-access-key", "must not be empty"));
        }

        let ca_cert = self
            .ca_cert
            .or_else(|| demo.as_ref().and_then(|d| d.ca_cert.clone()));

        let mut key_ids = self.key_ids;
        if key_ids.is_empty() {
            key_ids = demo.as_ref().map(|d| d.key_ids.clone()).unwrap_or_default();
        }
        for id in &key_ids {
            let ok = !id.is_empty()
                && id.len() <= 128
                && id != "."
                && id != ".."
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(invalid(
                    "--key-id",
                    format!("`{id}` is not 1-128 characters of A-Za-z0-9._- (and not . or ..)"),
                ));
            }
        }

        let mix = match (self.op.as_deref(), self.mix.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(invalid("--op", "give either --op or --mix, not both"));
            }
            (_, Some(m)) => Mix::parse(m)?,
            (Some("mix"), None) => {
                return Err(invalid("--op", "`mix` needs --mix op=weight,..."));
            }
            (Some(o), None) => Mix::single(Op::parse(o).ok_or_else(|| {
                invalid(
                    "--op",
                    format!(
                        "unknown operation `{o}` (expected encrypt, decrypt, metadata, health)"
                    ),
                )
            })?),
            (None, None) => Mix::single(Op::Encrypt),
        };
        let needs_key = mix.entries().iter().any(|(op, _)| *op != Op::Health);
        if needs_key && key_ids.is_empty() {
            return Err(SettingsError::Missing { field: "--key-id" });
        }

        let preset = self.preset.unwrap_or(Preset::Kms);
        let (pt_default, aad_default) = preset.sizes();
        let plaintext_size = self.plaintext_size.unwrap_or(pt_default);
        if plaintext_size > MAX_PLAINTEXT {
            return Err(invalid(
                "--plaintext-size",
                format!("{plaintext_size} is above the generator's limit {MAX_PLAINTEXT}"),
            ));
        }
        let aad_size = self.aad_size.unwrap_or(aad_default);
        if aad_size > MAX_AAD {
            return Err(invalid(
                "--aad-size",
                format!("{aad_size} is above 65535 (the spec's 2-byte length prefix)"),
            ));
        }

        let principal = self
            .principal
            .unwrap_or_else(|| "arn:aws:iam::111122223333:role/keyward-bench".to_string());
        if principal.is_empty() || principal.len() > 2048 {
            return Err(invalid("--principal", "must be 1-2048 characters"));
        }

        let load = match self.rate {
            None => Load::Closed,
            Some(r) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => Load::Open { rate: r },
            Some(r) => {
                return Err(invalid(
                    "--rate",
                    format!("{r} is not a rate between 0 and 10000000 per second"),
                ));
            }
        };
        let connections = self.connections.unwrap_or(match load {
            Load::Closed => 16,
            Load::Open { .. } => 32,
        });
        if connections == 0 || connections > 10_000 {
            return Err(invalid(
                "--connections",
                format!("{connections} is not 1-10000"),
            ));
        }

        let duration = self.duration.unwrap_or(Duration::from_secs(10));
        if duration.is_zero() && self.requests.is_none() {
            return Err(invalid(
                "--duration",
                "must be above zero (or give --requests)",
            ));
        }
        if duration > Duration::from_secs(24 * 3600) {
            return Err(invalid("--duration", "at most 24h"));
        }
        if self.requests == Some(0) {
            return Err(invalid("--requests", "must be at least 1"));
        }
        let warmup = self.warmup.unwrap_or(Duration::ZERO);
        if warmup > Duration::from_secs(3600) {
            return Err(invalid("--warmup", "at most 1h"));
        }
        let timeout = self.timeout.unwrap_or(Duration::from_secs(5));
        if timeout.is_zero() {
            return Err(invalid("--timeout", "must be above zero"));
        }
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        if threads == 0 || threads > 256 {
            return Err(invalid("--threads", format!("{threads} is not 1-256")));
        }
        let server_pid = self
            .server_pid
            .or_else(|| demo.as_ref().and_then(|d| d.pid));
        if server_pid == Some(0) {
            return Err(invalid("--server-pid", "0 is not a process"));
        }

        Ok(Settings {
            target,
            region,
            access_key_id,
            secret_access_key: secrecy::SecretString::from(secret),
            ca_cert,
            key_ids,
            mix,
            preset,
            plaintext_size,
            aad_size,
            cdiv: self.cdiv,
            principal,
            connections,
            load,
            duration,
            warmup,
            requests: self.requests,
            timeout,
            threads,
            server_pid,
            json: self.json,
            progress: !self.quiet,
        })
    }
}
