//! A throwaway PostgreSQL server from the machine's own binaries, for the tests and `keyward
//! demo --fleet` (feature `local`): `initdb` into a directory, `pg_ctl` on 127.0.0.1 (a free
//! port unless one is given), optionally TLS with a CA and server certificate made here
//! (rcgen) and a required password (SCRAM), stopped when dropped.
//!
//! A running server can be given a streaming standby ([`LocalPostgres::start_standby`]:
//! `pg_basebackup -R` into another directory, its own free port, synchronous or asynchronous
//! as the caller chooses through the primary's `synchronous_standby_names`), which
//! [`LocalPostgres::promote`] turns into a primary (`pg_ctl promote`, then waiting until
//! `pg_is_in_recovery()` is false): the failover tests kill the primary and promote it.
//! Replication connections from loopback are trusted (`pg_hba.conf`), password or not.
//!
//! `initdb` and `postgres` refuse to run as root. When this process's effective uid is 0 (CI,
//! the developer machines here), they are run as the `postgres` user that the Debian package
//! creates (`runuser -u postgres --`, or `setpriv` when there is no runuser), and the directory
//! is given to that user (chown): it must be reachable by it (no root-only parent directory).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::PgConfig;

/// The database user the server is initialised with (its superuser).
pub const USER: &str = "keyward";
/// The database the URL names.
pub const DATABASE: &str = "postgres";

/// Why the local server could not be set up, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The PostgreSQL server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via pg_config \
         --bindir, /usr/lib/postgresql/*/bin or PATH: install the Debian package `postgresql` \
         (apt-get install postgresql)"
    )]
    Missing,
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root, and PostgreSQL refuses to: no `postgres` user to run it as (the \
         Debian package `postgresql` creates it)"
    )]
    NoPostgresUser,
    /// A file or directory operation failed.
    #[error("local postgres: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A server command failed; `output` holds its output and the server log's end.
    #[error("local postgres: {what} failed: {output}")]
    Command {
        /// The command.
        what: String,
        /// Its output and the log's tail.
        output: String,
    },
    /// The TLS certificates could not be made.
    #[error("local postgres: certificates: {0}")]
    Tls(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// How to set the server up.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// TCP port on 127.0.0.1; a free one when `None`.
    pub port: Option<u16>,
    /// Serve TLS with a CA and server certificate made at the first start (the CA's PEM is at
    /// [`LocalPostgres::ca_file`]).
    pub tls: bool,
    /// Require this password (SCRAM-SHA-256) for TCP connections; `None`: trust.
    pub password: Option<String>,
    /// Copy this pristine data directory (from [`LocalPostgres::template`]) instead of running
    /// `initdb`; not used with a password (set by `initdb`).
    pub template: Option<PathBuf>,
}

/// A running (or stopped) local server; dropping it stops the server.
#[derive(Debug)]
pub struct LocalPostgres {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    /// `Some((uid, gid))` of the `postgres` user when running as root.
    run_as: Option<(u32, u32)>,
    ca_file: Option<PathBuf>,
    /// The superuser's password, when one is required (for this module's own SQL sessions).
    password: Option<secrecy::SecretString>,
    running: bool,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
fn find_bindir() -> Result<PathBuf, LocalError> {
    let has = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has(&d) {
                return Ok(d);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut best: Option<(u32, PathBuf)> = None;
        for e in entries.flatten() {
            let v = e.file_name().to_string_lossy().parse::<u32>().unwrap_or(0);
            let d = e.path().join("bin");
            if has(&d) && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, d));
            }
        }
        if let Some((_, d)) = best {
            return Ok(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&path) {
            let initdb = p.join("initdb");
            if initdb.is_file() {
                // Debian links /usr/local/bin or /usr/bin entries into the versioned directory.
                if let Some(d) = std::fs::canonicalize(&initdb)
                    .ok()
                    .and_then(|r| r.parent().map(Path::to_path_buf))
                    .filter(|d| has(d))
                {
                    return Ok(d);
                }
            }
        }
    }
    Err(LocalError::Missing)
}

/// The directory holding the server binaries (`initdb`, `pg_ctl`, `postgres`), or
/// [`LocalError::Missing`] naming the Debian package: for a caller that installs what is
/// missing before starting a server (`keyward demo --fleet`).
pub fn server_bindir() -> Result<PathBuf, LocalError> {
    find_bindir()
}

/// The effective uid of this process.
fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The `postgres` user's `(uid, gid)` when running as root (the server refuses root).
fn run_as() -> Result<Option<(u32, u32)>, LocalError> {
    if euid() != 0 {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or(LocalError::NoPostgresUser)?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn free_port() -> Result<u16, LocalError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("find a free port"))?;
    Ok(l.local_addr().map_err(io("find a free port"))?.port())
}

fn write_file(path: &Path, body: &str, mode: u32) -> Result<(), LocalError> {
    std::fs::write(path, body).map_err(io(format!("write {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

impl LocalPostgres {
    /// Initialise (unless `dir` already holds one) and start a server in `dir` on `port` (a
    /// free one when `None`), trusting local connections.
    pub fn start(dir: &Path, port: Option<u16>) -> Result<LocalPostgres, LocalError> {
        Self::start_with(
            dir,
            LocalOptions {
                port,
                ..LocalOptions::default()
            },
        )
    }

    /// [`LocalPostgres::start`] with TLS and a password as `opts` says. TLS and the password
    /// are set up when the data directory is first made.
    pub fn start_with(dir: &Path, opts: LocalOptions) -> Result<LocalPostgres, LocalError> {
        let bin = find_bindir()?;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let run_as = run_as()?;
        let data = dir.join("data");
        let mut pg = LocalPostgres {
            dir: dir.to_path_buf(),
            data,
            bin,
            port: match opts.port {
                Some(p) => p,
                None => free_port()?,
            },
            run_as,
            ca_file: None,
            password: opts.password.clone().map(secrecy::SecretString::from),
            running: false,
        };
        pg.prepare_dir(dir)?;
        let ca = dir.join("ca.pem");
        if !pg.data.join("PG_VERSION").is_file() {
            pg.initdb(&opts)?;
        }
        if ca.is_file() {
            pg.ca_file = Some(ca);
        }
        // A server left running on this directory (an earlier process died without stopping
        // it): stop it, so that this one starts with the options asked for now.
        if pg.postmaster_pid().is_some_and(alive) {
            let mut cmd = pg.command(pg.bin.join("pg_ctl"));
            cmd.arg("-D")
                .arg(&pg.data)
                .args(["-m", "fast", "-w", "-t", "60", "stop"]);
            let _ = pg.run("pg_ctl stop (a server left running)", cmd);
        }
        // A free port found here may be taken before the server binds it: then try another.
        let mut tries = 0;
        loop {
            match pg.start_again() {
                Ok(()) => return Ok(pg),
                Err(e) if opts.port.is_some() || tries >= 2 => return Err(e),
                Err(_) => {
                    tries += 1;
                    pg.port = free_port()?;
                }
            }
        }
    }

    /// A pristine data directory (`initdb`'s output, superuser `keyward`, trust) under `cache`
    /// to pass as [`LocalOptions::template`]: copying it is much faster than `initdb` (about 2 s
    /// here). Made once and kept (concurrent callers, in this process or others, end up with
    /// one); `cache` must be reachable by the server's user.
    pub fn template(cache: &Path) -> Result<PathBuf, LocalError> {
        let bin = find_bindir()?;
        let tag: String = bin
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let done = cache.join(format!("pg-template{tag}"));
        if done.join("data/PG_VERSION").is_file() {
            return Ok(done.join("data"));
        }
        std::fs::create_dir_all(cache).map_err(io(format!("create {}", cache.display())))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = cache.join(format!(
            "pg-template{tag}.tmp-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        let maker = LocalPostgres {
            dir: tmp.clone(),
            data: tmp.join("data"),
            bin,
            port: 0,
            run_as: run_as()?,
            ca_file: None,
            password: None,
            running: false,
        };
        let made = maker.chown(&tmp).and_then(|()| maker.run_initdb(None));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Another caller may have finished first: then keep theirs.
        if std::fs::rename(&tmp, &done).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if done.join("data/PG_VERSION").is_file() {
            Ok(done.join("data"))
        } else {
            Err(LocalError::Command {
                what: "make the template data directory".into(),
                output: format!("{} has no PG_VERSION", done.display()),
            })
        }
    }

    /// Give `dir` to the server's user and check that it can write there.
    fn prepare_dir(&self, dir: &Path) -> Result<(), LocalError> {
        self.chown(dir)?;
        if self.run_as.is_some() {
            // The postgres user must reach the directory (every parent searchable).
            let ok = self
                .command("test")
                .arg("-w")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(LocalError::Command {
                    what: "prepare the directory".into(),
                    output: format!(
                        "the postgres user cannot write {} (a parent directory is not \
                         searchable by others?)",
                        dir.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// A command run as the server's user.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let program = program.as_ref();
        match self.run_as {
            None => Command::new(program),
            Some(_) if Path::new("/usr/sbin/runuser").is_file() || which("runuser") => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    fn chown(&self, p: &Path) -> Result<(), LocalError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(io(format!("chown {} to postgres", p.display())))?;
        }
        Ok(())
    }

    fn run(&self, what: &str, mut cmd: Command) -> Result<(), LocalError> {
        let out = cmd.output().map_err(io(format!("run {what}")))?;
        if out.status.success() {
            return Ok(());
        }
        let mut output = format!(
            "{}{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        if !tail.is_empty() {
            output.push_str("\nserver log:\n");
            for l in tail.iter().rev() {
                output.push_str(l);
                output.push('\n');
            }
        }
        Err(LocalError::Command {
            what: what.into(),
            output,
        })
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// `initdb` into the data directory, with `password` for the superuser.
    fn run_initdb(&self, password: Option<&str>) -> Result<(), LocalError> {
        let mut cmd = self.command(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .arg("--auth=trust");
        let pwfile = self.dir.join("initdb.pw");
        if let Some(pw) = password {
            write_file(&pwfile, pw, 0o600)?;
            self.chown(&pwfile)?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        let r = self.run("initdb", cmd);
        let _ = std::fs::remove_file(&pwfile);
        r
    }

    /// Make the data directory (`initdb`, or a copy of the template), then configure it.
    fn initdb(&mut self, opts: &LocalOptions) -> Result<(), LocalError> {
        let template = opts
            .template
            .as_ref()
            .filter(|t| opts.password.is_none() && t.join("PG_VERSION").is_file());
        match template {
            Some(t) => {
                let mut cmd = self.command("cp");
                cmd.arg("-a").arg(t).arg(&self.data);
                self.run("copy the template data directory", cmd)?;
            }
            None => self.run_initdb(opts.password.as_deref())?,
        }
        let method = if opts.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let hba = self.data.join("pg_hba.conf");
        write_file(
            &hba,
            &format!(
                "# written by keyward's LocalPostgres\n\
                 local all all trust\n\
                 host all all 127.0.0.1/32 {method}\n\
                 host all all ::1/128 {method}\n\
                 host replication all 127.0.0.1/32 trust\n"
            ),
            0o600,
        )?;
        self.chown(&hba)?;
        let mut conf = String::from(
            "\n# keyward's LocalPostgres\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = ''\n\
             max_connections = 200\n\
             shared_buffers = 32MB\n\
             password_encryption = 'scram-sha-256'\n\
             include_if_exists = 'keyward-port.conf'\n\
             include_if_exists = 'keyward-replication.conf'\n",
        );
        if opts.tls {
            self.make_certs()?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        let main = self.data.join("postgresql.conf");
        let mut body = std::fs::read_to_string(&main).map_err(io("read postgresql.conf"))?;
        body.push_str(&conf);
        write_file(&main, &body, 0o600)?;
        self.chown(&main)
    }

    /// A CA (its PEM in `dir/ca.pem`) and a server certificate for 127.0.0.1 and localhost
    /// signed by it, in the data directory.
    fn make_certs(&mut self) -> Result<(), LocalError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        let e = |e: rcgen::Error| LocalError::Tls(e.to_string());
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "keyward local PostgreSQL CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let key = KeyPair::generate().map_err(e)?;
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).map_err(e)?;
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::V4(
                Ipv4Addr::LOCALHOST,
            )));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
        let crt = self.data.join("server.crt");
        let k = self.data.join("server.key");
        write_file(&crt, &cert.pem(), 0o644)?;
        write_file(&k, &key.serialize_pem(), 0o600)?;
        self.chown(&crt)?;
        self.chown(&k)?;
        let ca_file = self.dir.join("ca.pem");
        write_file(&ca_file, &ca_cert.pem(), 0o644)?;
        self.ca_file = Some(ca_file);
        Ok(())
    }

    /// `postgresql://keyward@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// A [`PgConfig`] for [`LocalPostgres::url`], with the CA file when TLS is on (no
    /// password: add one with [`PgConfig::with_password_file`]).
    pub fn config(&self) -> PgConfig {
        let mut c = PgConfig::new(self.url());
        c.ca_file = self.ca_file.clone();
        c
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        if !self.running {
            return None;
        }
        self.postmaster_pid()
    }

    /// The process id in `postmaster.pid`, if there is one.
    fn postmaster_pid(&self) -> Option<u32> {
        let s = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The CA's PEM file, when TLS is on.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Stop the server (`pg_ctl stop -m fast`: sessions are ended, the data is kept).
    pub fn stop(&mut self) -> Result<(), LocalError> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = self.command(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        self.run("pg_ctl stop", cmd)?;
        self.running = false;
        Ok(())
    }

    /// Start the server again (after [`LocalPostgres::stop`] or [`LocalPostgres::kill9`]) on
    /// the same port, and wait until it accepts connections.
    pub fn start_again(&mut self) -> Result<(), LocalError> {
        if self.running {
            return Ok(());
        }
        let port_conf = self.data.join("keyward-port.conf");
        write_file(&port_conf, &format!("port = {}\n", self.port), 0o600)?;
        self.chown(&port_conf)?;
        self.clear_stale_pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut cmd = self.command(self.bin.join("pg_ctl"));
            cmd.arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "60", "start"]);
            match self.run("pg_ctl start", cmd) {
                Ok(()) => break,
                // After a kill -9 the old backends may still hold the shared memory a moment.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(300));
                    self.clear_stale_pid();
                }
                Err(e) => return Err(e),
            }
        }
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(LocalError::Command {
                    what: "wait for the server".into(),
                    output: format!("nothing accepts connections on port {}", self.port),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kill the postmaster and its backends with SIGKILL (a crash of the machine: no
    /// shutdown, no checkpoint, no backend finishing a statement), and wait until they are
    /// gone.
    pub fn kill9(&mut self) -> Result<(), LocalError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let mut pids = children(pid);
        pids.insert(0, pid);
        for p in &pids {
            let raw = nix::unistd::Pid::from_raw(i32::try_from(*p).unwrap_or(i32::MAX));
            match nix::sys::signal::kill(raw, nix::sys::signal::Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Err(LocalError::Io {
                        what: format!("kill -9 {p}"),
                        source: std::io::Error::from(e),
                    })
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.running = false;
        Ok(())
    }

    /// A session as the superuser on this server (plain TCP on loopback: the server accepts it
    /// beside TLS), for the set-up steps here.
    fn client(&self) -> Result<postgres::Client, LocalError> {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(5));
        if let Some(pw) = &self.password {
            use secrecy::ExposeSecret;
            c.password(pw.expose_secret().as_bytes());
        }
        c.connect(postgres::NoTls).map_err(|e| LocalError::Command {
            what: format!("connect to the server on port {}", self.port),
            output: e.to_string(),
        })
    }

    /// Run `f` on a new session until it returns `Some` or `timeout` passes.
    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut postgres::Client) -> Result<Option<T>, postgres::Error>,
    ) -> Result<T, LocalError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.client() {
                Ok(mut c) => match f(&mut c) {
                    Ok(Some(v)) => return Ok(v),
                    Ok(None) => "not yet".to_string(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(LocalError::Command {
                    what: format!("wait until {what}"),
                    output: format!("still not after {timeout:?}: {last}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start a streaming standby of this (running) server in `dir` (reachable by the server's
    /// user, as for [`LocalPostgres::start_with`]) on a free loopback port: `pg_basebackup -R`
    /// of this server, started, and waited for until this server's `pg_stat_replication` shows
    /// it streaming. With `synchronous` this server's `synchronous_standby_names` names it (a
    /// commit is acknowledged once the standby has flushed it) and the wait is until it is the
    /// `sync` standby; otherwise replication is asynchronous (a commit may be acknowledged
    /// before the standby has it). The standby has this server's TLS certificate, CA and
    /// password; replication connections on loopback are trusted (`pg_hba.conf`).
    pub fn start_standby(
        &self,
        dir: &Path,
        synchronous: bool,
    ) -> Result<LocalPostgres, LocalError> {
        if !self.running {
            return Err(LocalError::Command {
                what: "start a standby".into(),
                output: "the primary is not running".into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        self.prepare_dir(dir)?;
        let mut standby = LocalPostgres {
            dir: dir.to_path_buf(),
            data: dir.join("data"),
            bin: self.bin.clone(),
            port: free_port()?,
            run_as: self.run_as,
            ca_file: None,
            password: self.password.clone(),
            running: false,
        };
        let name = format!("keyward_standby_{}", standby.port);
        let mut cmd = self.command(self.bin.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&standby.data)
            .arg("-d")
            .arg(format!(
                "host=127.0.0.1 port={} user={USER} application_name={name}",
                self.port
            ))
            // -R: standby.signal and primary_conninfo (with the application name above, which
            // synchronous_standby_names matches).
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        self.run("pg_basebackup", cmd)?;
        // The copy holds this server's replication settings: a promoted standby that kept
        // synchronous_standby_names would wait for a standby of its own on every commit.
        let repl = standby.data.join("keyward-replication.conf");
        write_file(&repl, "", 0o600)?;
        standby.chown(&repl)?;
        if let Some(ca) = &self.ca_file {
            let to = dir.join("ca.pem");
            std::fs::copy(ca, &to).map_err(io(format!("copy {}", ca.display())))?;
            standby.ca_file = Some(to);
        }
        standby.start_again()?;
        self.set_synchronous(synchronous.then_some(name.as_str()))?;
        let want = if synchronous { "sync" } else { "async" };
        self.wait_for(
            &format!("the standby on port {} streams ({want})", standby.port),
            Duration::from_secs(30),
            |c| {
                let row = c.query_opt(
                    "SELECT sync_state FROM pg_stat_replication \
                     WHERE application_name = $1 AND state = 'streaming'",
                    &[&name],
                )?;
                Ok(row
                    .map(|r| r.try_get::<_, String>(0))
                    .transpose()?
                    .filter(|s| s == want)
                    .map(|_| ()))
            },
        )?;
        Ok(standby)
    }

    /// Set (`Some(name)`) or clear this server's `synchronous_standby_names` and reload it.
    fn set_synchronous(&self, standby: Option<&str>) -> Result<(), LocalError> {
        let repl = self.data.join("keyward-replication.conf");
        let body = match standby {
            Some(n) => format!("synchronous_standby_names = '\"{n}\"'\nsynchronous_commit = on\n"),
            None => String::new(),
        };
        write_file(&repl, &body, 0o600)?;
        self.chown(&repl)?;
        let mut cmd = self.command(self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data).arg("reload");
        self.run("pg_ctl reload", cmd)?;
        // The reload is asynchronous: wait until the setting is in effect.
        let want = standby.map(|n| format!("\"{n}\"")).unwrap_or_default();
        self.wait_for(
            "synchronous_standby_names is in effect",
            Duration::from_secs(10),
            |c| {
                let v: String = c
                    .query_one("SHOW synchronous_standby_names", &[])?
                    .try_get(0)?;
                Ok((v == want).then_some(()))
            },
        )
    }

    /// Promote this standby to a primary (`pg_ctl promote`) and wait until
    /// `pg_is_in_recovery()` is false, i.e. it accepts writes.
    pub fn promote(&mut self) -> Result<(), LocalError> {
        let mut cmd = self.command(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "promote"]);
        self.run("pg_ctl promote", cmd)?;
        self.wait_for(
            "the promoted server leaves recovery",
            Duration::from_secs(30),
            |c| {
                let r: bool = c.query_one("SELECT pg_is_in_recovery()", &[])?.try_get(0)?;
                Ok((!r).then_some(()))
            },
        )
    }

    /// The server's log file (`postgres.log` beside the data directory).
    pub fn log_path(&self) -> PathBuf {
        self.log_file()
    }

    /// Remove `postmaster.pid` when the process it names is gone (or a zombie nobody reaped:
    /// the server would take it for a running postmaster).
    fn clear_stale_pid(&self) {
        if self.postmaster_pid().is_some_and(|p| !alive(p)) {
            let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
        }
    }
}

/// The processes whose parent is `pid` (the postmaster's backends and helpers).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = self.stop() {
                tracing::warn!(error = %e, "could not stop the local postgres");
                let _ = self.kill9();
            }
        }
    }
}
