//! Configuration: the TOML model for `keyward serve --config FILE`, the compatibility mapping of
//! the earlier product's `[aws_xks_config]` section, and the checks behind `keyward config check`.
//!
//! Loading never stops at the first problem: [`load_str`] walks the whole file and returns every
//! problem with its key path (see [`Problems`]). Problems of severity [`Severity::Invalid`] make
//! the file unusable; [`Severity::KmsIncompatible`] ones load (so an existing customer's file
//! keeps working) but `config check` reports them as errors because real AWS KMS refuses them.

// `keyward config check`: its arguments and its run, as the binary names them (`cli::Args`).
pub mod cli;
mod reader;
mod release;
mod role;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

// Reading: every problem of a file with its key path, and the section reader callers share.
pub use reader::{Problem, Problems, Section, Severity};
// `[master_key.release]`: the agent's settings and its pins.
pub use release::{parse_pin, AgentConfig, PinError, ReleaseConfig};
// The roles an operator certificate names.
pub use role::{Role, ROLE_URI_PREFIX};

/// The service name AWS KMS puts in the SigV4 credential scope.
pub const KMS_SERVICE: &str = "kms-xks-proxy";

/// The whole configuration.
#[derive(Debug)]
pub struct Config {
    pub xks: XksConfig,
    pub key_stores: Vec<KeyStoreConfig>,
    pub storage: StorageConfig,
    pub master_key: MasterKeyConfig,
    pub admin: Option<AdminConfig>,
    pub attestation: Option<AttestationConfig>,
    pub log: LogConfig,
    pub memory: MemoryConfig,
    pub fleet: FleetConfig,
}

/// The XKS API listener.
#[derive(Debug, Clone)]
pub struct XksConfig {
    pub listen: SocketAddr,
    /// Server certificate chain and key from files. `None` without `insecure_http`: the
    /// appliance-managed TLS key (generated inside the VM, stored sealed; its chain is
    /// installed through the admin API).
    pub tls: Option<TlsFiles>,
    /// Names (DNS names or IP addresses) of the self-signed certificate served for the
    /// appliance-managed key until a chain is installed; empty: `keyward-appliance`.
    pub tls_names: Vec<String>,
    /// Optional mutual TLS: KMS's client certificate.
    pub mtls: Option<MtlsConfig>,
    /// Plain HTTP, for tests only.
    pub insecure_http: bool,
}

/// A PEM certificate chain and its private key (PKCS#8, SEC1 or PKCS#1).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

/// Client-certificate requirements on the XKS listener.
#[derive(Debug, Clone)]
pub struct MtlsConfig {
    /// PEM file with the CA certificate(s) the client certificate must chain to.
    pub client_ca: PathBuf,
    /// Names accepted as subject CN or SAN dNSName, e.g. `cks.kms.us-east-1.amazonaws.com`.
    pub allowed_subjects: Vec<String>,
}

/// One logical key store: a URI prefix with its credentials and keys.
#[derive(Debug, Clone)]
pub struct KeyStoreConfig {
    pub name: String,
    /// Path before `/kms/xks/v1`: empty or `/...`.
    pub uri_prefix: String,
    pub region: String,
    /// Service names accepted in the SigV4 scope; always starts with `kms-xks-proxy`.
    pub services: Vec<String>,
    /// Credentials from the file (admin-added ones live in the key store).
    pub credentials: Vec<CredentialConfig>,
}

/// A SigV4 credential from the configuration file.
#[derive(Debug, Clone)]
pub struct CredentialConfig {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

/// Where the sealed key store lives.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The file store's directory (`backend = "file"`); the appliance's local state otherwise.
    pub dir: PathBuf,
    /// Where the sealed records are kept.
    pub backend: StorageBackend,
}

/// `[storage] backend`.
#[derive(Debug, Clone)]
pub enum StorageBackend {
    /// A directory on the data disk (one appliance).
    File,
    /// A PostgreSQL database shared by a fleet.
    Postgres(PostgresConfig),
}

/// `[storage] backend = "postgres"`: the shared store. The database holds only sealed records
/// and heads: it is trusted for availability, never for a key.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgresql://user@host:port/database[?options]`, without a password.
    pub url: String,
    /// The CA the server's certificate must chain to (RDS's CA bundle); required unless the
    /// host is loopback.
    pub ca_file: Option<PathBuf>,
    /// From `password_file` (0600) or `password_env`; never inline.
    pub password: Option<SecretString>,
}

/// `[fleet]`: how this member describes itself in heartbeats and GetHealthStatus.
#[derive(Debug, Clone, Default)]
pub struct FleetConfig {
    /// Availability zone and host, e.g. `us-east-1a/ip-10-0-1-7`; empty: the host name.
    pub label: Option<String>,
}

/// Where the master key comes from.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per configuration, parsed once
pub enum MasterKeyConfig {
    /// 32 raw bytes in a file that only the service user may read (development, migration).
    File { path: PathBuf },
    /// Attested key release from a key-release service (see [`ReleaseConfig`]).
    Release(release::ReleaseConfig),
}

impl XksConfig {
    /// Whether the XKS listener serves the appliance-managed TLS key (no TLS files, not plain
    /// HTTP).
    pub fn managed_tls(&self) -> bool {
        self.tls.is_none() && !self.insecure_http
    }
}

impl Config {
    /// Whether any listener serves the appliance-managed TLS identity.
    pub fn uses_managed_tls(&self) -> bool {
        self.xks.managed_tls() || self.admin.as_ref().is_some_and(|a| a.tls.is_none())
    }
}

/// The mutual-TLS admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Server certificate and key from files; `None`: the appliance-managed TLS identity
    /// (the same key and certificate as the XKS listener's).
    pub tls: Option<TlsFiles>,
    /// PEM file with the operator's CA: admin client certificates must chain to it.
    pub client_ca: PathBuf,
    /// The role of a client certificate without a `keyward:role:` SAN URI claim
    /// (`unclaimed_role`, default admin: certificates from before roles keep working).
    pub unclaimed_role: crate::role::Role,
    /// Distinct operators a destructive or secret-revealing request needs, the requester
    /// included (`approvals_required`, 1-5, default 2: the requester and one approver; 1 turns
    /// dual control off).
    pub approvals_required: u32,
    /// How long an approval request stays usable after it was filed, seconds (`approval_ttl`,
    /// `"1h"`, `"30m"` or seconds, 1 s to 7 days, default 1 h).
    pub approval_ttl_secs: u64,
}

/// Default [`AdminConfig::approvals_required`].
pub const DEFAULT_APPROVALS_REQUIRED: u32 = 2;
/// Default [`AdminConfig::approval_ttl_secs`].
pub const DEFAULT_APPROVAL_TTL_SECS: u64 = 3600;

/// The attestation listener (live evidence for auditors).
#[derive(Debug, Clone)]
pub struct AttestationConfig {
    pub listen: SocketAddr,
}

/// Log output.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter directive.
    pub level: String,
    pub format: LogFormat,
    /// Audit log file (JSON lines); `None` writes audit lines to stderr.
    pub audit_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Memory policy.
#[derive(Debug, Clone, Copy)]
pub struct MemoryConfig {
    /// Start even if memory cannot be locked (development only; warns).
    pub allow_unlocked_memory: bool,
}

/// The result of reading a file: the configuration when it is usable, and every problem.
#[derive(Debug)]
pub struct Loaded {
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
}

/// Errors that prevent reading the file at all.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Read and check a configuration file.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(load_str(&text, base))
}

/// Only the `[storage]` section of a configuration file (the rest is not read, so an operator's
/// machine needs neither the appliance's TLS files nor its master key file): what `keyward store
/// restore` writes to. `Err` lists the section's problems.
pub fn load_storage(path: &Path) -> Result<Result<StorageConfig, Vec<Problem>>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut p = Problems::default();
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            p.invalid("", format!("not valid TOML: {}", e.message().trim()));
            return Ok(Err(p.list));
        }
    };
    let mut root = Section::new("", &table, base);
    let storage = match root.table("storage", &mut p) {
        Some(s) => parse_storage(s, &mut p),
        None => Some(StorageConfig {
            dir: PathBuf::from("/var/lib/keyward"),
            backend: StorageBackend::File,
        }),
    };
    match storage {
        Some(s) if !p.has_invalid() => Ok(Ok(s)),
        _ => Ok(Err(p.list)),
    }
}

/// Parse and check configuration text; relative paths are resolved against `base_dir`.
pub fn load_str(text: &str, base_dir: &Path) -> Loaded {
    let mut p = Problems::default();
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            // A TOML syntax error: the parser gives line and column.
            p.invalid("", format!("not valid TOML: {}", e.message().trim()));
            if let Some(span) = e.span() {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                if let Some(last) = p.list.last_mut() {
                    last.message = format!("line {line}: {}", last.message);
                }
            }
            return Loaded {
                config: None,
                problems: p.list,
            };
        }
    };
    let config = parse(&table, base_dir, &mut p);
    let config = if p.has_invalid() { None } else { config };
    Loaded {
        config,
        problems: p.list,
    }
}

fn parse(table: &toml::Table, base: &Path, p: &mut Problems) -> Option<Config> {
    let mut root = Section::new("", table, base);

    let xks = match root.table("xks", p) {
        Some(s) => parse_xks(s, p),
        None => {
            if !root.has("xks") {
                p.invalid(
                    "xks",
                    "required section [xks] is missing (listen address and TLS)",
                );
            }
            None
        }
    };

    let mut key_stores = Vec::new();
    if let Some(s) = root.table("aws_xks_config", p) {
        if let Some(ks) = parse_legacy(s, p) {
            key_stores.push(ks);
        }
    }
    let mut stores_ok = true;
    for s in root.tables("key_store", p) {
        match parse_key_store(s, p) {
            Some(ks) => key_stores.push(ks),
            None => stores_ok = false,
        }
    }
    // Key stores may also be created at run time through the admin API (and are then kept in
    // the sealed store); without an admin listener the file must declare at least one.
    if key_stores.is_empty() && stores_ok && !root.has("admin") {
        p.invalid(
            "key_store",
            "no key store: add a [[key_store]] section (or an enabled [aws_xks_config]), or an \
             [admin] listener to create them with `keyward admin stores create`",
        );
    }
    check_store_uniqueness(&key_stores, p);

    let storage = match root.table("storage", p) {
        Some(s) => parse_storage(s, p),
        None => Some(StorageConfig {
            dir: PathBuf::from("/var/lib/keyward"),
            backend: StorageBackend::File,
        }),
    };
    let fleet = match root.table("fleet", p) {
        Some(mut s) => {
            let label = s.string("label", p);
            if let Some(l) = &label {
                if l.is_empty()
                    || l.len() > 64
                    || !l
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
                {
                    p.invalid(
                        s.key_path("label"),
                        "1-64 characters of A-Z a-z 0-9 - _ . / :",
                    );
                }
            }
            s.finish(p);
            FleetConfig { label }
        }
        None => FleetConfig::default(),
    };

    let master_key = match root.table("master_key", p) {
        Some(s) => parse_master_key(s, p),
        None => {
            if !root.has("master_key") {
                p.invalid(
                    "master_key",
                    "required section [master_key] is missing (source = \"file\" or \"release\")",
                );
            }
            None
        }
    };

    let admin = root.table("admin", p).and_then(|s| parse_admin(s, p));
    let attestation = root.table("attestation", p).and_then(|mut s| {
        let listen = addr(&mut s, "listen", p, true);
        s.finish(p);
        listen.map(|listen| AttestationConfig { listen })
    });

    let log = match root.table("log", p) {
        Some(s) => parse_log(s, p),
        None => Some(LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            audit_file: None,
        }),
    };

    let memory = match root.table("memory", p) {
        Some(mut s) => {
            let allow = s.bool("allow_unlocked_memory", p).unwrap_or(false);
            s.finish(p);
            MemoryConfig {
                allow_unlocked_memory: allow,
            }
        }
        None => MemoryConfig {
            allow_unlocked_memory: false,
        },
    };
    if memory.allow_unlocked_memory {
        p.warn(
            "memory.allow_unlocked_memory",
            "keys may be swapped to disk if memory cannot be locked: development only",
        );
    }

    if let (Some(x), None) = (&xks, &admin) {
        if x.managed_tls() && !root.has("admin") {
            p.warn(
                "xks",
                "no TLS files and no [admin] listener: the XKS API serves the appliance-managed \
                 key with a self-signed certificate, and no chain can be installed for it \
                 (AWS KMS requires a public CA's certificate)",
            );
        }
    }

    // The operator CA file is on the untrusted data volume: with a released master key, only
    // the pin (in the release transcript and PCR 15) says which CA the admin listener trusts.
    if let (Some(MasterKeyConfig::Release(r)), Some(_)) = (&master_key, &admin) {
        if r.agent.admin_ca_sha256.trim().is_empty() {
            p.invalid(
                "master_key.release.admin_ca_sha256",
                "required when source = \"release\" and [admin] is set: the SHA-256 of the \
                 operator CA certificate (DER) that [admin] client_ca_file must hold; without it \
                 whoever writes the data volume chooses who is admin",
            );
        }
    }

    root.finish(p);
    Some(Config {
        xks: xks?,
        key_stores,
        storage: storage?,
        master_key: master_key?,
        admin,
        attestation,
        log: log?,
        memory,
        fleet,
    })
}

fn parse_storage(mut s: Section, p: &mut Problems) -> Option<StorageConfig> {
    let backend = s.string("backend", p);
    match backend.as_deref() {
        None | Some("file") => {
            let dir = s.required_path("dir", p);
            s.finish(p);
            Some(StorageConfig {
                dir: dir?,
                backend: StorageBackend::File,
            })
        }
        Some("postgres") => {
            let dir = s
                .path("dir", p)
                .unwrap_or_else(|| PathBuf::from("/var/lib/keyward"));
            let url = s.required_string("url", p);
            if let Some(u) = &url {
                if let Err(why) = check_postgres_url(u) {
                    p.invalid(s.key_path("url"), why);
                }
            }
            let ca_file = s.path("ca_file", p);
            if let Some(f) = &ca_file {
                if !f.is_file() {
                    p.invalid(
                        s.key_path("ca_file"),
                        format!("{} is not a readable file", f.display()),
                    );
                }
            }
            if let (Some(u), None) = (&url, &ca_file) {
                if !postgres_host_is_loopback(u) {
                    p.invalid(
                        s.key_path("ca_file"),
                        "required for a database that is not on loopback: the server's \
                         certificate is verified against it (RDS: the region's CA bundle)",
                    );
                }
            }
            let password = if s.has("password") {
                s.raw("password");
                p.invalid(
                    s.key_path("password"),
                    "a database password is not written in the configuration: use password_file \
                     (mode 600) or password_env",
                );
                None
            } else {
                s.secret("password", p, false)
            };
            s.finish(p);
            Some(StorageConfig {
                dir,
                backend: StorageBackend::Postgres(PostgresConfig {
                    url: url?,
                    ca_file,
                    password,
                }),
            })
        }
        Some(other) => {
            p.invalid(
                s.key_path("backend"),
                format!("`{other}` is not a backend: \"file\" or \"postgres\""),
            );
            None
        }
    }
}

/// A PostgreSQL URL keyward accepts: `postgres://` or `postgresql://`, a host, no password.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or("must start with postgresql://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(
                "must not contain a password (user:password@): use password_file or password_env"
                    .into(),
            );
        }
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err("names no host (postgresql://user@host:5432/database)".into());
    }
    // Several hosts (a primary and its standbys): libpq takes the first that answers, so the
    // member must ask for the one that accepts writes, not settle on a read-only standby.
    let hosts = host.split(',').count();
    let read_write = rest.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.trim() == "target_session_attrs=read-write")
    });
    if hosts > 1 && !read_write {
        return Err(format!(
            "names {hosts} hosts but not target_session_attrs=read-write: a member could \
             connect to a read-only standby (add ?target_session_attrs=read-write)"
        ));
    }
    Ok(())
}

/// Whether the URL's hosts (every one, when it lists several) are 127.0.0.0/8, ::1 or
/// localhost.
pub fn postgres_host_is_loopback(url: &str) -> bool {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hostports = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hostports.split(',').all(|hostport| {
        let host = if let Some(v6) = hostport.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            hostport.split(':').next().unwrap_or_default()
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn addr(s: &mut Section, key: &str, p: &mut Problems, required: bool) -> Option<SocketAddr> {
    let text = if required {
        s.required_string(key, p)?
    } else {
        s.string(key, p)?
    };
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.invalid(
                s.key_path(key),
                format!("`{text}` is not an IP address with a port, e.g. 0.0.0.0:443"),
            );
            None
        }
    }
}

fn tls_files(s: &mut Section, p: &mut Problems, required: bool) -> Option<TlsFiles> {
    if !required && !s.has("tls_cert_chain_file") && !s.has("tls_key_file") {
        return None;
    }
    let cert_chain = s.required_path("tls_cert_chain_file", p);
    let key = s.required_path("tls_key_file", p);
    for (k, f) in [("tls_cert_chain_file", &cert_chain), ("tls_key_file", &key)] {
        if let Some(f) = f {
            if !f.is_file() {
                p.invalid(
                    s.key_path(k),
                    format!("{} is not a readable file", f.display()),
                );
            }
        }
    }
    Some(TlsFiles {
        cert_chain: cert_chain?,
        key: key?,
    })
}

fn parse_xks(mut s: Section, p: &mut Problems) -> Option<XksConfig> {
    let listen = match s.has("listen") {
        true => addr(&mut s, "listen", p, true),
        false => Some(SocketAddr::from(([0, 0, 0, 0], 443))),
    };
    let insecure_http = s.bool("insecure_http", p).unwrap_or(false);
    // Without TLS files (and without insecure_http) the appliance manages the TLS key.
    let tls = tls_files(&mut s, p, false);
    let tls_names = s.string_list("tls_names", p).unwrap_or_default();
    for (i, n) in tls_names.iter().enumerate() {
        if !valid_tls_name(n) {
            p.invalid(
                format!("{}[{i}]", s.key_path("tls_names")),
                format!("`{n}` is not a DNS name or an IP address"),
            );
        }
    }
    if !tls_names.is_empty() && (tls.is_some() || insecure_http) {
        p.invalid(
            s.key_path("tls_names"),
            "tls_names names the self-signed certificate of the appliance-managed TLS key: \
             remove it, or remove the TLS files / insecure_http",
        );
    }
    if insecure_http {
        p.warn(
            s.key_path("insecure_http"),
            "the XKS API is served over plain HTTP: tests only, AWS KMS requires HTTPS",
        );
        if tls.is_some() {
            p.invalid(
                s.key_path("insecure_http"),
                "insecure_http = true and a TLS certificate are both set: choose one",
            );
        }
    }
    let mtls = match s.table("mtls", p) {
        Some(mut m) => {
            let client_ca = m.required_path("client_ca_file", p);
            if let Some(f) = &client_ca {
                if !f.is_file() {
                    p.invalid(
                        m.key_path("client_ca_file"),
                        format!("{} is not a readable file", f.display()),
                    );
                }
            }
            let allowed = m.string_list("allowed_subjects", p).unwrap_or_default();
            if allowed.is_empty() {
                p.invalid(
                    m.key_path("allowed_subjects"),
                    "name at least one allowed client subject, e.g. cks.kms.us-east-1.amazonaws.com",
                );
            }
            if insecure_http {
                p.invalid(
                    m.key_path("client_ca_file"),
                    "mTLS needs TLS: insecure_http is set",
                );
            }
            m.finish(p);
            client_ca.map(|client_ca| MtlsConfig {
                client_ca,
                allowed_subjects: allowed,
            })
        }
        None => None,
    };
    s.finish(p);
    Some(XksConfig {
        listen: listen?,
        tls,
        tls_names,
        mtls,
        insecure_http,
    })
}

/// The earlier product's single-store section, kept loading unchanged.
fn parse_legacy(mut s: Section, p: &mut Problems) -> Option<KeyStoreConfig> {
    let enabled = s.bool("aws_xks_enable", p).unwrap_or(true);
    let region = s.required_string("aws_xks_region", p);
    let service = s.string("aws_xks_service", p);
    let prefix = s.string("aws_xks_uri_prefix", p).unwrap_or_default();
    let akid = s.required_string("aws_xks_sigv4_access_key_id", p);
    let secret = s.secret("aws_xks_sigv4_secret_access_key", p, true);
    if let Some(r) = &region {
        check_region(r, &s.key_path("aws_xks_region"), p);
    }
    check_prefix(&prefix, &s.key_path("aws_xks_uri_prefix"), p);
    let mut services = vec![KMS_SERVICE.to_string()];
    if let Some(svc) = service {
        check_service(&svc, &s.key_path("aws_xks_service"), p);
        if svc != KMS_SERVICE {
            services.push(svc);
        }
    }
    if let Some(a) = &akid {
        check_access_key_id(a, &s.key_path("aws_xks_sigv4_access_key_id"), p);
    }
    if let Some(sec) = &secret {
        check_secret(sec, &s.key_path("aws_xks_sigv4_secret_access_key"), p);
    }
    s.finish(p);
    if !enabled {
        return None;
    }
    Some(KeyStoreConfig {
        name: "default".into(),
        uri_prefix: prefix,
        region: region?,
        services,
        credentials: vec![CredentialConfig {
            access_key_id: akid?,
            secret_access_key: secret?,
        }],
    })
}

fn parse_key_store(mut s: Section, p: &mut Problems) -> Option<KeyStoreConfig> {
    let name = s.required_string("name", p);
    if let Some(n) = &name {
        if !valid_name(n) {
            p.invalid(
                s.key_path("name"),
                "1-64 characters of A-Za-z0-9._- are allowed in a key store name",
            );
        }
    }
    let uri_prefix = s.string("uri_prefix", p).unwrap_or_default();
    check_prefix(&uri_prefix, &s.key_path("uri_prefix"), p);
    let region = s.required_string("region", p);
    if let Some(r) = &region {
        check_region(r, &s.key_path("region"), p);
    }
    let mut services = vec![KMS_SERVICE.to_string()];
    let svc_path = s.key_path("services");
    for (i, svc) in s
        .string_list("services", p)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        check_service(&svc, &format!("{svc_path}[{i}]"), p);
        if !services.contains(&svc) {
            services.push(svc);
        }
    }
    let mut credentials = Vec::new();
    let mut ok = true;
    for mut c in s.tables("credentials", p) {
        let akid = c.required_string("access_key_id", p);
        let secret = c.secret("secret_access_key", p, true);
        if let Some(a) = &akid {
            check_access_key_id(a, &c.key_path("access_key_id"), p);
        }
        if let Some(sec) = &secret {
            check_secret(sec, &c.key_path("secret_access_key"), p);
        }
        c.finish(p);
        match (akid, secret) {
            (Some(access_key_id), Some(secret_access_key)) => credentials.push(CredentialConfig {
                access_key_id,
                secret_access_key,
            }),
            _ => ok = false,
        }
    }
    let mut seen = HashSet::new();
    for (i, c) in credentials.iter().enumerate() {
        if !seen.insert(c.access_key_id.clone()) {
            p.invalid(
                format!("{}.credentials[{i}].access_key_id", s.here()),
                "duplicate access key id",
            );
        }
    }
    s.finish(p);
    if !ok {
        return None;
    }
    Some(KeyStoreConfig {
        name: name?,
        uri_prefix,
        region: region?,
        services,
        credentials,
    })
}

fn check_store_uniqueness(stores: &[KeyStoreConfig], p: &mut Problems) {
    let mut names = HashSet::new();
    let mut prefixes = HashSet::new();
    for s in stores {
        if !names.insert(s.name.as_str()) {
            p.invalid(
                "key_store",
                format!("two key stores are named `{}`", s.name),
            );
        }
        if !prefixes.insert(s.uri_prefix.as_str()) {
            p.invalid(
                "key_store",
                format!("two key stores use the uri prefix `{}`", s.uri_prefix),
            );
        }
    }
}

fn parse_master_key(mut s: Section, p: &mut Problems) -> Option<MasterKeyConfig> {
    let source = s.required_string("source", p)?;
    let out = match source.as_str() {
        "file" => {
            let path = s.required_path("file", p);
            if let Some(f) = &path {
                check_master_key_file(f, &s.key_path("file"), p);
            }
            path.map(|path| MasterKeyConfig::File { path })
        }
        "release" => release::parse(&mut s, p).map(MasterKeyConfig::Release),
        other => {
            p.invalid(
                s.key_path("source"),
                format!("unknown source `{other}`: use \"file\" or \"release\""),
            );
            None
        }
    };
    s.finish(p);
    out
}

/// The master key file must hold 32 bytes and must not be readable by group or others.
pub fn check_master_key_file(f: &Path, path: &str, p: &mut Problems) {
    match std::fs::metadata(f) {
        Ok(m) if !m.is_file() => p.invalid(path, format!("{} is not a file", f.display())),
        Ok(m) => {
            if m.len() != 32 {
                p.invalid(
                    path,
                    format!(
                        "{} holds {} bytes; a master key is 32 raw bytes",
                        f.display(),
                        m.len()
                    ),
                );
            }
            if let Some(problem) = reader::not_private(f, &m) {
                p.invalid(path, problem);
            }
        }
        Err(e) => p.invalid(path, format!("cannot read {}: {e}", f.display())),
    }
}

fn parse_admin(mut s: Section, p: &mut Problems) -> Option<AdminConfig> {
    let listen = addr(&mut s, "listen", p, true);
    // Without TLS files the admin listener serves the appliance-managed TLS identity.
    let tls = tls_files(&mut s, p, false);
    let client_ca = s.required_path("client_ca_file", p);
    if let Some(f) = &client_ca {
        if !f.is_file() {
            p.invalid(
                s.key_path("client_ca_file"),
                format!("{} is not a readable file", f.display()),
            );
        }
    }
    let unclaimed_role = match s.string("unclaimed_role", p) {
        None => crate::role::Role::Admin,
        Some(r) => match crate::role::Role::parse(&r) {
            Ok(role) => role,
            Err(e) => {
                p.invalid(s.key_path("unclaimed_role"), e);
                crate::role::Role::Admin
            }
        },
    };
    let approvals_required = match s.integer("approvals_required", p) {
        None => DEFAULT_APPROVALS_REQUIRED,
        Some(n) if (1..=5).contains(&n) => n as u32,
        Some(n) => {
            p.invalid(
                s.key_path("approvals_required"),
                format!(
                    "{n} is not 1-5 (operators a destructive request needs, requester included)"
                ),
            );
            DEFAULT_APPROVALS_REQUIRED
        }
    };
    let approval_ttl_secs = {
        let key = s.key_path("approval_ttl");
        let raw = match s.raw("approval_ttl") {
            None => None,
            Some(toml::Value::Integer(n)) => Some(u64::try_from(*n).ok()),
            Some(toml::Value::String(t)) => Some(parse_ttl(t)),
            Some(_) => Some(None),
        };
        match raw {
            None => DEFAULT_APPROVAL_TTL_SECS,
            Some(Some(n)) if (1..=7 * 86_400).contains(&n) => n,
            Some(_) => {
                p.invalid(
                    key,
                    "use a duration of 1 s to 7 days, like \"1h\", \"30m\" or 3600",
                );
                DEFAULT_APPROVAL_TTL_SECS
            }
        }
    };
    s.finish(p);
    Some(AdminConfig {
        listen: listen?,
        tls,
        client_ca: client_ca?,
        unclaimed_role,
        approvals_required,
        approval_ttl_secs,
    })
}

/// `"1h"`, `"30m"`, `"90s"`, `"2d"` or `"3600"` as seconds.
fn parse_ttl(t: &str) -> Option<u64> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn parse_log(mut s: Section, p: &mut Problems) -> Option<LogConfig> {
    let level = s.string("level", p).unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        p.invalid(
            s.key_path("level"),
            format!("`{level}` is not a log level (error, warn, info, debug, trace)"),
        );
    }
    let format = match s.string("format", p).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.invalid(
                s.key_path("format"),
                format!("unknown format `{other}`: use \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let audit_file = s.path("audit_file", p);
    s.finish(p);
    Some(LogConfig {
        level,
        format,
        audit_file,
    })
}

/// A DNS name (labels of `A-Za-z0-9-`, a leading `*.` allowed) or an IP address, as a
/// certificate's subject alternative name.
pub fn valid_tls_name(n: &str) -> bool {
    if n.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let host = n.strip_prefix("*.").unwrap_or(n);
    (1..=253).contains(&n.len())
        && host.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_region(r: &str, path: &str, p: &mut Problems) {
    if r.is_empty()
        || !r
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        p.invalid(
            path,
            format!("`{r}` is not an AWS region name such as us-east-1"),
        );
    }
}

/// A prefix is empty or `/` followed by `[A-Za-z0-9/_-]`, at most 117 characters (so that the
/// whole `XksProxyUriPath` stays within KMS's 128), with no trailing slash.
pub fn check_prefix(prefix: &str, path: &str, p: &mut Problems) {
    if prefix.is_empty() {
        return;
    }
    let ok_chars = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'));
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") || !ok_chars {
        p.invalid(
            path,
            format!("`{prefix}`: a uri prefix is empty or like /keyward (characters A-Za-z0-9/_-, no trailing /)"),
        );
    } else if prefix.len() > 117 {
        p.invalid(
            path,
            "longer than 117 characters: KMS allows 128 for the whole path including /kms/xks/v1",
        );
    }
}

fn check_service(svc: &str, path: &str, p: &mut Problems) {
    if svc == KMS_SERVICE {
        return;
    }
    p.warn(
        path,
        format!(
            "AWS KMS signs with the service name `{KMS_SERVICE}`; `{svc}` is accepted as well, \
             but write `{KMS_SERVICE}`"
        ),
    );
}

/// AWS KMS: access key id 20–30 characters of `A-Z2-7`.
pub fn valid_access_key_id(a: &str) -> bool {
    (20..=30).contains(&a.len())
        && a.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// AWS KMS: secret 43–64 characters of `A-Za-z0-9/+=`.
pub fn valid_secret(s: &str) -> bool {
    (43..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'='))
}

fn check_access_key_id(a: &str, path: &str, p: &mut Problems) {
    if !valid_access_key_id(a) {
        p.push(
            Severity::KmsIncompatible,
            path,
            format!(
                "{} characters; AWS KMS requires an access key id of 20-30 characters of A-Z and 2-7",
                a.len()
            ),
        );
    }
}

fn check_secret(s: &SecretString, path: &str, p: &mut Problems) {
    let s = s.expose_secret();
    if !valid_secret(s) {
        // Only the length is reported, never the value.
        p.push(
            Severity::KmsIncompatible,
            path,
            format!(
                "{} characters; AWS KMS requires a secret access key of 43-64 characters of \
                 [A-Za-z0-9/+=] (e.g. base64 of 32 random bytes). `keyward serve` still \
                 installs it (16-128 characters, with a warning) for clients that sign with it, \
                 but KMS will refuse it",
                s.len()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_section_loads_into_a_store_accepting_both_service_names() {
        let dir = tempfile::tempdir().unwrap();
        let mk = dir.path().join("mk");
        std::fs::write(&mk, [1u8; 32]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = r#"
[aws_xks_config]
aws_xks_enable = true
aws_xks_region = "us-east-1"
aws_xks_service = "xks-kms"
aws_xks_sigv4_access_key_id = "AKIAIOSFODNN7EXAMPLE"
aws_xks_sigv4_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
[xks]
insecure_http = true
[master_key]
source = "file"
file = "mk"
"#;
        let loaded = load_str(text, dir.path());
        let cfg = loaded.config.expect("the legacy file must load");
        let ks = &cfg.key_stores[0];
        assert_eq!(ks.uri_prefix, "");
        assert_eq!(ks.region, "us-east-1");
        assert_eq!(
            ks.services,
            vec!["kms-xks-proxy".to_string(), "xks-kms".to_string()]
        );
        assert_eq!(ks.credentials[0].access_key_id, "AKIAIOSFODNN7EXAMPLE");
        assert!(loaded
            .problems
            .iter()
            .any(|p| p.severity == Severity::KmsIncompatible
                && p.path == "aws_xks_config.aws_xks_sigv4_secret_access_key"));
        // A disabled legacy section yields no store (and so, alone, an error).
        let off = text.replace("aws_xks_enable = true", "aws_xks_enable = false");
        assert!(load_str(&off, dir.path()).config.is_none());
    }

    fn storage_case(storage: &str, files: &[(&str, u32)]) -> Loaded {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mk = dir.path().join("mk");
        std::fs::write(&mk, [1u8; 32]).unwrap();
        std::fs::set_permissions(&mk, std::fs::Permissions::from_mode(0o600)).unwrap();
        for (name, mode) in files {
            let f = dir.path().join(name);
            std::fs::write(&f, "x").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let text = format!(
            "[[key_store]]\nname = \"a\"\nregion = \"us-east-1\"\n[xks]\ninsecure_http = true\n\
             [master_key]\nsource = \"file\"\nfile = \"mk\"\n{storage}"
        );
        load_str(&text, dir.path())
    }

    fn invalid_paths(l: &Loaded) -> Vec<String> {
        l.problems
            .iter()
            .filter(|p| p.severity == Severity::Invalid)
            .map(|p| p.path.clone())
            .collect()
    }

    #[test]
    fn admin_dual_control_settings() {
        let admin = |extra: &str| {
            storage_case(
                &format!(
                    "[admin]\nlisten = \"127.0.0.1:0\"\nclient_ca_file = \"ca.pem\"\n\
                     tls_cert_chain_file = \"ca.pem\"\ntls_key_file = \"ca.pem\"\n{extra}\n"
                ),
                &[("ca.pem", 0o600)],
            )
        };
        let l = admin("");
        let a = l.config.as_ref().and_then(|c| c.admin.clone());
        let a = a.unwrap_or_else(|| panic!("{:?}", l.problems));
        assert_eq!(
            (a.approvals_required, a.approval_ttl_secs),
            (DEFAULT_APPROVALS_REQUIRED, DEFAULT_APPROVAL_TTL_SECS)
        );
        for (extra, want) in [
            ("approvals_required = 3\napproval_ttl = \"30m\"", (3, 1800)),
            ("approvals_required = 1\napproval_ttl = 90", (1, 90)),
            ("approval_ttl = \"2d\"", (2, 172_800)),
        ] {
            let l = admin(extra);
            let a = l.config.as_ref().and_then(|c| c.admin.clone());
            let a = a.unwrap_or_else(|| panic!("{extra}: {:?}", l.problems));
            assert_eq!((a.approvals_required, a.approval_ttl_secs), want, "{extra}");
        }
        for (extra, field) in [
            ("approvals_required = 0", "admin.approvals_required"),
            ("approvals_required = 9", "admin.approvals_required"),
            ("approval_ttl = \"1y\"", "admin.approval_ttl"),
            ("approval_ttl = \"8d\"", "admin.approval_ttl"),
            ("approval_ttl = true", "admin.approval_ttl"),
        ] {
            let bad = invalid_paths(&admin(extra));
            assert!(bad.iter().any(|p| p == field), "{extra}: {bad:?}");
        }
        let bad = invalid_paths(&admin("unclaimed_role = \"root\""));
        assert!(bad.iter().any(|p| p == "admin.unclaimed_role"), "{bad:?}");
        let l = admin("unclaimed_role = \"security\"");
        assert_eq!(
            l.config.and_then(|c| c.admin).map(|a| a.unclaimed_role),
            Some(crate::role::Role::Security)
        );
    }

    #[test]
    fn storage_postgres_settings() {
        let ok = storage_case(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgresql://kw@db.internal:5432/kw\"\n\
             ca_file = \"ca.pem\"\npassword_file = \"pw\"\n[fleet]\nlabel = \"us-east-1a/ip-10-0-1-7\"\n",
            &[("ca.pem", 0o644), ("pw", 0o600)],
        );
        let cfg = ok.config.expect("a complete postgres section loads");
        match &cfg.storage.backend {
            StorageBackend::Postgres(pg) => {
                assert_eq!(pg.url, "postgresql://kw@db.internal:5432/kw");
                assert!(pg.password.is_some() && pg.ca_file.is_some());
            }
            StorageBackend::File => panic!("backend = postgres"),
        }
        assert_eq!(cfg.fleet.label.as_deref(), Some("us-east-1a/ip-10-0-1-7"));

        // Each mistake names its field.
        for (storage, files, field) in [
            (
                "backend = \"postgres\"\nurl = \"postgresql://kw:hunter2@db/kw\"\nca_file = \"ca.pem\"",
                vec![("ca.pem", 0o644)],
                "storage.url",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgresql://kw@db.internal/kw\"",
                vec![],
                "storage.ca_file",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgresql://kw@127.0.0.1:5432/kw\"\npassword = \"x\"",
                vec![],
                "storage.password",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgresql://kw@127.0.0.1:5432/kw\"\npassword_file = \"pw\"",
                vec![("pw", 0o644)],
                "storage.password_file",
            ),
            ("backend = \"mysql\"", vec![], "storage.backend"),
            (
                "backend = \"postgres\"\nurl = \"mysql://db/kw\"",
                vec![],
                "storage.url",
            ),
            // A primary and a standby, without asking for the writable one.
            (
                "backend = \"postgres\"\nurl = \"postgresql://kw@127.0.0.1:5432,127.0.0.1:5433/kw\"",
                vec![],
                "storage.url",
            ),
            // A remote standby after a loopback primary still needs the CA.
            (
                "backend = \"postgres\"\nurl = \"postgresql://kw@127.0.0.1:5432,db-b.internal:5432/kw?target_session_attrs=read-write\"",
                vec![],
                "storage.ca_file",
            ),
        ] {
            let l = storage_case(&format!("[storage]\n{storage}\n"), &files);
            let bad = invalid_paths(&l);
            assert!(
                bad.iter().any(|p| p == field),
                "{storage}: expected a problem at {field}, got {bad:?}"
            );
            assert!(l.config.is_none(), "{storage}: must not load");
        }
        // A loopback database needs no CA (the demo fleet); the password never shows up.
        let local = storage_case(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgresql://kw@127.0.0.1:5432/kw\"\n",
            &[],
        );
        assert!(local.config.is_some(), "{:?}", invalid_paths(&local));
        let pair = storage_case(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgresql://kw@db-a.internal:5432,\
             db-b.internal:5432/kw?target_session_attrs=read-write\"\nca_file = \"ca.pem\"\n",
            &[("ca.pem", 0o644)],
        );
        assert!(pair.config.is_some(), "{:?}", invalid_paths(&pair));
        let shown = format!("{:?}", ok.problems);
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn prefix_rules() {
        let mut p = Problems::default();
        check_prefix("", "x", &mut p);
        check_prefix("/keyward", "x", &mut p);
        check_prefix("/a/b-c_d", "x", &mut p);
        assert!(p.list.is_empty());
        for bad in ["keyward", "/keyward/", "/a b", "/a//b", "/é"] {
            let mut p = Problems::default();
            check_prefix(bad, "x", &mut p);
            assert_eq!(p.list.len(), 1, "{bad}");
        }
    }

    #[test]
    fn credential_formats() {
        assert!(valid_access_key_id("AKIAIOSFODNN7EXAMPLE"));
        assert!(!valid_access_key_id("AKIAIOSFODNN7EXAMPL0"));
        assert!(!valid_access_key_id("SHORT"));
        assert!(!valid_secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"));
        assert!(valid_secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1234"));
        assert!(!valid_secret(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY12-4"
        ));
    }
}
