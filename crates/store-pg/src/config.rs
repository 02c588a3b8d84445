//! The connection settings of the PostgreSQL key store ([`PgConfig`]) and the connector built
//! from them: the URL checked (no password in it, plain TCP only to loopback), TLS through
//! rustls (ring provider) verified against the configured CA with the host name checked
//! (libpq's `sslmode=verify-full`), the password from a private file, and the timeouts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keyward_keystore::KeystoreError;
use postgres::config::{Host, SslMode, TargetSessionAttrs};
use postgres::{Client, NoTls};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Default [`PgConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`PgConfig::statement_timeout`].
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;

/// Where the shared key store lives and how to reach it.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgresql://user@host:port/dbname` (or libpq `key=value` form). It may not contain a
    /// password: that comes from [`PgConfig::password`].
    pub url: String,
    /// PEM CA bundle the server's certificate must chain to (RDS's bundle in production). With
    /// it the connection is TLS, the certificate verified and the host name checked; without
    /// it the connection is plain TCP, allowed only to a loopback host.
    pub ca_file: Option<PathBuf>,
    /// The database password (see [`PgConfig::with_password_file`]); never logged.
    pub password: Option<SecretString>,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// Server-side limit on each statement (`statement_timeout`).
    pub statement_timeout: Duration,
    /// `application_name` of the sessions (shown in `pg_stat_activity`).
    pub application_name: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl PgConfig {
    /// Settings for `url` with the defaults: no CA (loopback only), no password, 5 s to
    /// connect, 10 s per statement, application name `keyward`.
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            ca_file: None,
            password: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            application_name: "keyward".into(),
        }
    }

    /// These settings with TLS verified against the PEM CA bundle in `ca_file`.
    pub fn with_ca_file(mut self, ca_file: impl Into<PathBuf>) -> PgConfig {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// These settings with the password read from `path`: its first line (a trailing newline is
    /// not part of it). Refused when the file is readable or writable by group or others, or
    /// empty.
    pub fn with_password_file(mut self, path: &Path) -> Result<PgConfig, KeystoreError> {
        self.password = Some(read_password_file(path)?);
        Ok(self)
    }

    /// The URL without credentials, for messages: `postgresql://host:port/dbname`.
    pub fn location(&self) -> String {
        match self.url.parse::<postgres::Config>() {
            Ok(c) => location_of(&c),
            Err(_) => "postgresql://(unparsable url)".into(),
        }
    }
}

fn read_password_file(path: &Path) -> Result<SecretString, KeystoreError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| KeystoreError::Invalid {
        what: "password_file",
        why,
    };
    let f = std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "{} is readable or writable by group or others (mode {:o}): chmod 600",
            path.display(),
            mode & 0o777
        )));
    }
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    let mut buf = String::new();
    f.take(MAX_PASSWORD_FILE + 1)
        .read_to_string(&mut buf)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_PASSWORD_FILE {
        return Err(bad(format!("{} is too long", path.display())));
    }
    let end = buf.find(['\n', '\r']).unwrap_or(buf.len());
    buf.truncate(end);
    if buf.is_empty() {
        return Err(bad(format!("{} holds no password", path.display())));
    }
    Ok(SecretString::from(buf))
}

/// `postgresql://host:port,.../dbname` of a parsed configuration (no user, no password).
fn location_of(c: &postgres::Config) -> String {
    let ports = c.get_ports();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name = match h {
                Host::Tcp(s) if s.contains(':') => format!("[{s}]"),
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            // One port for all hosts, or one per host.
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{name}:{port}")
        })
        .collect();
    format!(
        "postgresql://{}/{}",
        hosts.join(","),
        c.get_dbname().or(c.get_user()).unwrap_or("")
    )
}

fn is_loopback_name(h: &str) -> bool {
    h.eq_ignore_ascii_case("localhost")
        || h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How the connections are secured.
#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(MakeRustlsConnect),
}

/// A checked configuration that opens connections (each store, board and watcher has its own).
#[derive(Clone)]
pub(crate) struct Connector {
    config: postgres::Config,
    tls: Tls,
    location: String,
}

impl Connector {
    /// Check `cfg` and prepare the client configuration and TLS (the CA file is read here).
    pub(crate) fn new(cfg: &PgConfig) -> Result<Connector, KeystoreError> {
        let mut c: postgres::Config = cfg.url.parse().map_err(|e| KeystoreError::Invalid {
            what: "url",
            why: format!(
                "not a PostgreSQL connection URL (postgresql://user@host:port/dbname): {e}"
            ),
        })?;
        if c.get_password().is_some() {
            return Err(KeystoreError::Invalid {
                what: "url",
                why: "it contains a password: remove it from the url and give it in \
                      password_file"
                    .into(),
            });
        }
        if c.get_hosts().is_empty() && c.get_hostaddrs().is_empty() {
            return Err(KeystoreError::Invalid {
                what: "url",
                why: "it names no host".into(),
            });
        }
        let hosts = c.get_hosts().len().max(c.get_hostaddrs().len());
        if hosts > 1 && c.get_target_session_attrs() != TargetSessionAttrs::ReadWrite {
            // libpq takes the first host that answers: a read-only standby would serve this
            // member a lagging copy (refused as a rollback) and refuse its writes.
            return Err(KeystoreError::Invalid {
                what: "url",
                why: format!(
                    "it names {hosts} hosts but not target_session_attrs=read-write: a \
                     member could connect to a read-only standby (add \
                     ?target_session_attrs=read-write)"
                ),
            });
        }
        if c.get_user().is_none() {
            return Err(KeystoreError::Invalid {
                what: "url",
                why: "it names no user (postgresql://user@host/dbname)".into(),
            });
        }
        let location = location_of(&c);
        let tls = match &cfg.ca_file {
            Some(ca) => {
                c.ssl_mode(SslMode::Require);
                Tls::Rustls(MakeRustlsConnect::new(client_tls(ca)?))
            }
            None => {
                let remote = c
                    .get_hosts()
                    .iter()
                    .filter_map(|h| match h {
                        Host::Tcp(s) if !is_loopback_name(s) => Some(s.clone()),
                        _ => None,
                    })
                    .chain(
                        c.get_hostaddrs()
                            .iter()
                            .filter(|a| !a.is_loopback())
                            .map(|a| a.to_string()),
                    )
                    .collect::<Vec<_>>();
                if !remote.is_empty() {
                    return Err(KeystoreError::Invalid {
                        what: "ca_file",
                        why: format!(
                            "required for a database that is not on loopback ({}): the \
                             connection would be plain TCP",
                            remote.join(", ")
                        ),
                    });
                }
                c.ssl_mode(SslMode::Disable);
                Tls::Plain
            }
        };
        if let Some(pw) = &cfg.password {
            c.password(pw.expose_secret().as_bytes());
        }
        let statement_ms = cfg.statement_timeout.as_millis().max(1);
        let mut options = c.get_options().map(str::to_owned).unwrap_or_default();
        if !options.is_empty() {
            options.push(' ');
        }
        // A member that stalls inside a transaction (it holds the head row's lock) is cut off
        // by the server after the same time, so it cannot block the fleet's writers.
        options.push_str(&format!(
            "-c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout={statement_ms}"
        ));
        c.options(&options)
            .application_name(&cfg.application_name)
            .connect_timeout(cfg.connect_timeout)
            // A dead peer (no RST: a partition, a vanished instance) is noticed within about
            // the statement timeout, not the kernel's two hours.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(cfg.statement_timeout + cfg.connect_timeout);
        Ok(Connector {
            config: c,
            tls,
            location,
        })
    }

    /// The database without credentials.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    /// Open a new connection.
    pub(crate) fn connect(&self) -> Result<Client, KeystoreError> {
        let r = match &self.tls {
            Tls::Plain => self.config.connect(NoTls),
            Tls::Rustls(t) => self.config.connect(t.clone()),
        };
        r.map_err(|e| {
            let what = match self.tls {
                Tls::Plain => "connect",
                Tls::Rustls(_) => "connect over TLS",
            };
            self.unavailable(what, e)
        })
    }

    /// [`KeystoreError::Unavailable`] for `what` on this database.
    pub(crate) fn unavailable(
        &self,
        what: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> KeystoreError {
        KeystoreError::Unavailable {
            location: self.location.clone(),
            what,
            source: Box::new(e),
        }
    }
}

/// A rustls client configuration (ring) trusting only the certificates in `ca`.
fn client_tls(ca: &Path) -> Result<rustls::ClientConfig, KeystoreError> {
    let bad = |why: String| KeystoreError::Invalid {
        what: "ca_file",
        why: format!("{}: {why}", ca.display()),
    };
    let pem = std::fs::read(ca).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0usize;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate is not usable as a CA: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(bad("holds no PEM certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refuses_a_password_in_the_url() {
        let e = Connector::new(&PgConfig::new("postgresql://u:hunter2@127.0.0.1/db"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("url") && e.contains("password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn plain_tcp_only_to_loopback() {
        for ok in [
            "postgresql://u@127.0.0.1:5432/db",
            "postgresql://u@localhost/db",
            "postgresql://u@[::1]:5433/db",
            "host=/run/postgresql user=u",
        ] {
            Connector::new(&PgConfig::new(ok)).unwrap();
        }
        let e = Connector::new(&PgConfig::new("postgresql://u@db.example.com/db"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ca_file") && e.contains("db.example.com"), "{e}");
    }

    #[test]
    fn several_hosts_need_read_write() {
        for ok in [
            "postgresql://u@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write",
            "host=127.0.0.1,localhost port=5432,5433 user=u target_session_attrs=read-write",
        ] {
            Connector::new(&PgConfig::new(ok)).unwrap();
        }
        let e = Connector::new(&PgConfig::new(
            "postgresql://u@127.0.0.1:5432,127.0.0.1:5433/db",
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("url") && e.contains("target_session_attrs=read-write"),
            "{e}"
        );
        let c = PgConfig::new(
            "postgresql://u@10.0.0.5:5432,10.0.0.6:5433/db?target_session_attrs=read-write",
        );
        assert_eq!(c.location(), "postgresql://10.0.0.5:5432,10.0.0.6:5433/db");
        // Plain TCP to a remote host is refused whichever of the hosts it is.
        let e = Connector::new(&PgConfig::new(
            "postgresql://u@127.0.0.1:5432,db2.example.com:5433/db?target_session_attrs=read-write",
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("ca_file") && e.contains("db2.example.com"),
            "{e}"
        );
    }

    #[test]
    fn location_has_no_credentials_and_debug_redacts() {
        let mut c = PgConfig::new("postgresql://keyward@10.0.0.5:6432/store");
        c.password = Some(SecretString::from("hunter2".to_string()));
        assert_eq!(c.location(), "postgresql://10.0.0.5:6432/store");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("redacted"), "{d}");
    }

    #[test]
    fn password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PgConfig::new("postgresql://u@127.0.0.1/db")
            .with_password_file(&p)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("password_file") && e.contains("644"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = PgConfig::new("postgresql://u@127.0.0.1/db")
            .with_password_file(&p)
            .unwrap();
        assert_eq!(c.password.unwrap().expose_secret(), "s3cret");
    }
}
