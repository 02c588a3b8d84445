//! `keyward demo --fleet N`: a local fleet made of real parts, what `make fleet` runs.
//!
//! In the state directory (default `./fleet-state`) it starts, in order:
//!
//! 1. a PostgreSQL server from the machine's own binaries ([`LocalPostgres`] in
//!    `STATE/postgres`: `initdb` on the first run, reused after), the fleet's shared key store;
//! 2. the embedded key-release service, as `keyward demo` does (`STATE/krs`: SoftHSMv2 token,
//!    the demo deployment's store head); every member gets its master key from it through
//!    KRP/1 with the simulated SNP attester, so the store head IS anchored at the KRS (the
//!    fleet runs the anchored shared path, not a file key);
//! 3. N members, each a child process `keyward serve --config STATE/member-I/keyward.toml`
//!    with its own XKS, admin and live-attestation ports on loopback and its own `[fleet]
//!    label` (`local-az-I`); member 1 first (on a new store it records the first head at the
//!    KRS), then the others together;
//! 4. HAProxy (Debian's) in TCP mode on `--listen`, passing TLS through to the members as an
//!    AWS NLB's TCP listener does, health-checking each member's `/ping`.
//!
//! It seeds the demo key and credential once, through member 1's admin API (the demo process
//! holds no registry of its own here), waits until every member serves them, then prints ONE
//! JSON line with `keyward demo`'s fields (`url` is the balancer's, `admin_profile` member
//! 1's) plus `members`, `postgres_url`, `postgres_pid` and `balancer_pid`, and stays in the
//! foreground. SIGINT or SIGTERM stops the members, HAProxy and PostgreSQL, in that order. A
//! member that exits (a test's `kill -9`) is reported and not restarted: the others go on.
//!
//! Members and HAProxy are started through `setpriv --pdeathsig TERM` (util-linux), so they
//! stop when this process dies even without a clean stop. Missing `postgresql` or `haproxy`
//! packages are installed with apt-get when running as root, as `make run` does; otherwise
//! the error names them.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use keyward_admin::Profile;

use keyward_admin::proto::{KmsConfigFile, Request};
use keyward_keystore::{Grant, KeyUsage};
use keyward_store_pg::local::{LocalError, LocalPostgres};

use crate::demo::{self, Args, Paths, DEMO_KEY, STORE, URI_PREFIX};

/// The Debian packages the fleet needs besides `keyward demo`'s own.
const PACKAGES: [&str; 2] = ["postgresql", "haproxy"];
/// How long a member may take from start to serving (release retries included).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long seeded changes may take to reach every member.
const SPREAD_TIMEOUT: Duration = Duration::from_secs(30);

/// One member's settings and, while it runs, its process.
struct Member {
    index: usize,
    dir: PathBuf,
    label: String,
    xks: SocketAddr,
    admin: SocketAddr,
    attestation: SocketAddr,
    child: Option<Child>,
}

impl Member {
    fn config(&self) -> PathBuf {
        self.dir.join("keyward.toml")
    }
    fn profile(&self) -> PathBuf {
        self.dir.join("admin-profile.toml")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("keyward.log")
    }
    fn url(&self) -> String {
        format!("https://{}", self.xks)
    }
    fn attestation_url(&self) -> String {
        format!("http://{}", self.attestation)
    }
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Run `keyward demo --fleet n`.
pub fn run(args: &Args, n: usize) -> anyhow::Result<ExitCode> {
    if args.admin_listen.port() != 0 || args.attestation_listen.port() != 0 {
        anyhow::bail!(
            "--admin-listen and --attestation-listen name one appliance's ports; with --fleet \
             each member gets its own (listed in the ready line)"
        );
    }
    // The postgres user (the server refuses root) must reach STATE/postgres: others may
    // search the state directory, not list it; its secrets are files of mode 0600.
    let paths = demo::state_paths(&args.state_dir(), 0o711)?;
    if paths.p("keystore").exists() {
        anyhow::bail!(
            "{} holds a single appliance's key store (keystore/, from `keyward demo`): give the \
             fleet another --state-dir (the default is ./fleet-state)",
            paths.dir.display()
        );
    }
    let listen = balancer_address(args.listen)?;
    ensure_packages()?;
    demo::ensure_pki(&paths)?;
    let admin_ca = demo::demo_admin_ca_sha256(&paths)?;
    let policy_file = demo::write_attestation_policy(&paths)?;

    let pg_dir = postgres_dir(&paths)?;
    let mut pg = LocalPostgres::start(&pg_dir, None)
        .with_context(|| format!("starting PostgreSQL in {}", pg_dir.display()))?;
    let postgres_pid = pg.pid();
    eprintln!(
        "keyward demo: PostgreSQL {} (pid {}) in {}, log {}",
        pg.url(),
        postgres_pid.map_or("?".into(), |p| p.to_string()),
        pg_dir.display(),
        pg_dir.join("postgres.log").display()
    );

    let krs = keyward_krs::embedded::start_for(
        &paths.p("krs"),
        &[keyward_attest::DEMO_MEASUREMENT],
        keyward_krs::embedded::Backend::Auto,
        &admin_ca,
    )?;
    eprintln!(
        "keyward demo: embedded key-release service on {} ({}); members release their master \
         key through it (simulated SNP attestation)",
        krs.addr, krs.backend
    );

    let mut members = Vec::with_capacity(n);
    for index in 1..=n {
        let dir = paths.p(&format!("member-{index}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let m = Member {
            index,
            dir,
            label: format!("local-az-{index}"),
            xks: free_port()?,
            admin: free_port()?,
            attestation: free_port()?,
            child: None,
        };
        write_member_files(&paths, &m, &args.region, &pg.url(), &krs.agent)?;
        members.push(m);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut balancer: Option<Child> = None;
    // From here on, whatever fails stops what was started.
    let result = (|| -> anyhow::Result<()> {
        // Member 1 alone first: on a new store it writes the store's first records and records
        // the first head at the KRS; the others then open a store that exists.
        spawn_member(&mut members[0])?;
        wait_serving(&mut members[0])?;
        for m in members.iter_mut().skip(1) {
            spawn_member(m)?;
        }
        for m in members.iter_mut().skip(1) {
            wait_serving(m)?;
        }
        let (akid, secret, key_ids) = rt.block_on(seed(&paths, &members))?;
        write_haproxy_config(&paths, listen, &members)?;
        balancer = Some(spawn_balancer(&paths)?);
        wait_accepting(listen, balancer.as_mut())?;

        let url = format!("https://{listen}");
        let profile = members[0].profile();
        let line = ready_line(
            &url,
            &args.region,
            (&akid, &secret),
            &paths.p("ca.pem"),
            &key_ids,
            &members,
            (&pg.url(), postgres_pid),
            balancer.as_ref().map(Child::id),
        );
        // The file first: whoever reads the line may at once run `keyward bench --demo` on
        // the file (mode 0600: it holds the demo's secret).
        keyward_admin::write_file(&paths.p("ready.json"), format!("{line}\n").as_bytes(), true)?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        demo::print_help(
            &url,
            &args.region,
            &akid,
            &secret,
            &paths.p("ca.pem"),
            &key_ids,
            &profile,
        );
        demo::print_attestation_help(&members[0].attestation_url(), &url, &policy_file);
        print_fleet_help(&paths, &members, &pg.url());
        rt.block_on(wait_for_stop(&mut members, &mut balancer));
        Ok(())
    })();
    if let Err(e) = &result {
        eprintln!(
            "keyward demo: the fleet did not start: {}",
            keyward_agent::error_chain(e.as_ref())
        );
    }
    stop_all(&mut members, &mut balancer);
    if let Err(e) = pg.stop() {
        eprintln!("keyward demo: stopping PostgreSQL: {e}");
    }
    eprintln!(
        "keyward demo: the fleet is stopped (state kept in {})",
        paths.dir.display()
    );
    result.map(|()| ExitCode::SUCCESS)
}

/// The balancer's address: `--listen`, with port 0 replaced by a free port (HAProxy binds a
/// named port), refused when something already listens there.
fn balancer_address(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if listen.port() == 0 {
        let l = TcpListener::bind(listen).with_context(|| format!("--listen {listen}"))?;
        return Ok(l.local_addr()?);
    }
    match TcpListener::bind(listen) {
        Ok(_) => Ok(listen),
        Err(e) => anyhow::bail!(
            "--listen {listen}: {e} (an earlier demo still running?); choose another, e.g. \
             --listen 127.0.0.1:9443"
        ),
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's choice, released at once for the child).
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// Where `program` is on PATH (then /usr/sbin, /sbin).
fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The packages of [`PACKAGES`] whose programs are missing.
fn missing_packages() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if matches!(
        keyward_store_pg::local::server_bindir(),
        Err(LocalError::Missing)
    ) || (is_root() && !user_exists("postgres"))
    {
        missing.push(PACKAGES[0]);
    }
    if find_program("haproxy").is_none() {
        missing.push(PACKAGES[1]);
    }
    missing
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn user_exists(name: &str) -> bool {
    nix::unistd::User::from_name(name).ok().flatten().is_some()
}

/// Install the missing packages as `make run` does (scripts/setup.sh): as root with apt-get
/// (updating the package lists only when the first try fails); otherwise fail with the one
/// `sudo apt-get install` line.
fn ensure_packages() -> anyhow::Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    let line = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    let apt = find_program("apt-get");
    let Some(apt) = apt.filter(|_| is_root()) else {
        anyhow::bail!(
            "keyward demo --fleet needs the Debian package(s) {}: install them with `sudo {line}`",
            missing.join(" ")
        );
    };
    eprintln!("keyward demo: installing {} ({line})", missing.join(" "));
    let install = || {
        Command::new(&apt)
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        eprintln!("keyward demo: apt-get install failed; refreshing the package lists once");
        let _ = Command::new(&apt)
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        if !install() {
            anyhow::bail!(
                "keyward demo --fleet: `{line}` failed; install the package(s) {} and try again",
                missing.join(" ")
            );
        }
    }
    let still = missing_packages();
    if !still.is_empty() {
        anyhow::bail!(
            "keyward demo --fleet: still missing after apt-get install: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// `STATE/postgres`, where the server's files live. Run as root, the server runs as the
/// `postgres` user, which must be able to search every directory above it: when it cannot
/// (the state directory under `/root`, mode 0700), the files go to
/// `/var/lib/postgresql/keyward-fleet/<hash of STATE>` and `STATE/postgres` links there.
fn postgres_dir(paths: &Paths) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = paths.p("postgres");
    if !is_root() {
        return Ok(dir);
    }
    let searchable = paths
        .dir
        .ancestors()
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if searchable || std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Ok(dir);
    }
    if let Ok(target) = std::fs::read_link(&dir) {
        return Ok(target);
    }
    use sha2::Digest;
    let tag = hex::encode(&sha2::Sha256::digest(paths.dir.as_os_str().as_encoded_bytes())[..8]);
    let target = PathBuf::from("/var/lib/postgresql/keyward-fleet").join(tag);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    if let Some(user) = nix::unistd::User::from_name("postgres").ok().flatten() {
        for d in [target.parent().unwrap_or(&target), target.as_path()] {
            let _ = std::os::unix::fs::chown(d, Some(user.uid.as_raw()), Some(user.gid.as_raw()));
        }
    }
    std::os::unix::fs::symlink(&target, &dir)
        .with_context(|| format!("linking {} to {}", dir.display(), target.display()))?;
    eprintln!(
        "keyward demo: the postgres user cannot reach {}; PostgreSQL's files are in {} \
         (linked from {})",
        paths.dir.display(),
        target.display(),
        dir.display()
    );
    Ok(target)
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `STATE/member-I/keyward.toml` (and the admin profile): written at every start (the KRS and
/// the database get new ports each time).
fn write_member_files(
    paths: &Paths,
    m: &Member,
    region: &str,
    postgres_url: &str,
    agent: &keyward_config::AgentConfig,
) -> anyhow::Result<()> {
    let p = |name: &str| toml_str(&paths.p(name).display().to_string());
    let config = format!(
        "# keyward demo --fleet: member {index} of the local fleet (written at every start).\n\
         # Run by the demo as `keyward serve --config {path}`; start it again the same way after\n\
         # stopping it: it rejoins the fleet.\n\n\
         [xks]\nlisten = \"{xks}\"\ntls_cert_chain_file = {cert}\ntls_key_file = {key}\n\n\
         [[key_store]]\nname = \"{STORE}\"\nuri_prefix = \"{URI_PREFIX}\"\nregion = {region}\n\n\
         [storage]\nbackend = \"postgres\"\nurl = {pg}\ndir = {dir}\n\n\
         [fleet]\nlabel = \"{label}\"\n\n\
         [master_key]\nsource = \"release\"\n\n\
         [master_key.release]\nkrs_url = \"{krs}\"\nkrs_tls_spki_sha256 = \"{tls_pin}\"\n\
         receipt_spki_sha256 = \"{receipt_pin}\"\nadmin_ca_sha256 = \"{admin_pin}\"\n\
         attesters = [\"simulated-snp\"]\nretry_initial_ms = 500\nretry_max_secs = 5\n\
         policy_deny_retry_secs = 5\n\n\
         [admin]\nlisten = \"{admin}\"\ntls_cert_chain_file = {cert}\ntls_key_file = {key}\n\
         client_ca_file = {ca}\n\
         # One person runs this local fleet: dual control off (the demo re-reads its credential\n\
         # with kms-config at every start). Keep the default (2) on a real fleet.\n\
         approvals_required = 1\n\n\
         [attestation]\nlisten = \"{attestation}\"\n\n\
         [log]\nlevel = \"info\"\naudit_file = {audit}\n\n\
         [memory]\nallow_unlocked_memory = true\n",
        index = m.index,
        path = m.config().display(),
        xks = m.xks,
        cert = p("server.pem"),
        key = p("server-key.pem"),
        region = toml_str(region),
        pg = toml_str(postgres_url),
        dir = toml_str(&m.dir.display().to_string()),
        label = m.label,
        krs = agent.krs_url,
        tls_pin = agent.krs_tls_spki_sha256,
        receipt_pin = agent.receipt_spki_sha256,
        admin_pin = agent.admin_ca_sha256,
        admin = m.admin,
        ca = p("ca.pem"),
        attestation = m.attestation,
        audit = toml_str(&m.dir.join("audit.jsonl").display().to_string()),
    );
    std::fs::write(m.config(), config)
        .with_context(|| format!("writing {}", m.config().display()))?;
    let profile = format!(
        "# keyward admin profile for member {index} of the local fleet: {cmd} admin --profile {path} fleet\n\
         url = \"https://{admin}\"\nca_cert = {ca}\nclient_cert = {cert}\nclient_key = {key}\n",
        index = m.index,
        cmd = demo::self_command(),
        path = demo::sh_word(&m.profile().display().to_string()),
        admin = m.admin,
        ca = p("ca.pem"),
        cert = p("admin.pem"),
        key = p("admin-key.pem"),
    );
    keyward_admin::write_file(&m.profile(), profile.as_bytes(), false)?;
    Ok(())
}

/// A command that runs `program` with this process's death as its SIGTERM (`setpriv
/// --pdeathsig`), or plainly when util-linux's setpriv is not there. Called on the main
/// thread only: the signal follows the thread that started the child.
fn child_command(program: &Path) -> Command {
    match find_program("setpriv") {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "TERM", "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn spawn_member(m: &mut Member) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("this binary's path")?;
    let log = std::fs::File::create(m.log())
        .with_context(|| format!("creating {}", m.log().display()))?;
    let child = child_command(&exe)
        .arg("serve")
        .arg("--config")
        .arg(m.config())
        .current_dir(&m.dir)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting member {}", m.index))?;
    eprintln!(
        "keyward demo: member {} ({}) starting, pid {}, log {}",
        m.index,
        m.label,
        child.id(),
        m.log().display()
    );
    m.child = Some(child);
    Ok(())
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wait until the member's log says its XKS listener serves.
fn wait_serving(m: &mut Member) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(m.log()).unwrap_or_default();
        if text.contains("XKS API on ") {
            eprintln!("keyward demo: member {} serves on {}", m.index, m.url());
            return Ok(());
        }
        if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            m.child = None;
            anyhow::bail!(
                "member {} exited ({status}) before serving; the end of {}:\n{}",
                m.index,
                m.log().display(),
                tail(&m.log(), 15)
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "member {} does not serve after {:?}; the end of {}:\n{}",
                m.index,
                BOOT_TIMEOUT,
                m.log().display(),
                tail(&m.log(), 15)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One admin request that must succeed.
async fn call(profile: &Profile, req: Request) -> anyhow::Result<serde_json::Value> {
    let what = req.op();
    let resp = profile
        .call(&req)
        .await
        .with_context(|| format!("admin {what} on {}", profile.url))?;
    if !resp.ok {
        anyhow::bail!(
            "admin {what} on {}: refused: {}",
            profile.url,
            resp.error.unwrap_or_default()
        );
    }
    Ok(resp.result.unwrap_or(serde_json::Value::Null))
}

/// First run: one key with both usages granted to `*`, and one credential, through member 1's
/// admin API; every run: wait until every member serves them. Returns the credential and the
/// key ids. The credential's access key id is kept in `STATE/credential` (the secret stays in
/// the sealed store and is read back with `kms-config`).
async fn seed(paths: &Paths, members: &[Member]) -> anyhow::Result<(String, String, Vec<String>)> {
    let first = Profile::load(&members[0].profile())?;
    let store = Some(STORE.to_string());
    let akid_file = paths.p("credential");
    let known = std::fs::read_to_string(&akid_file)
        .ok()
        .map(|s| s.trim().to_string());
    let creds = call(
        &first,
        Request::CredsList {
            store: store.clone(),
        },
    )
    .await?;
    let ids: Vec<String> = creds
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("access_key_id")?.as_str().map(str::to_string))
        .collect();
    let akid = match known.filter(|k| ids.contains(k)) {
        Some(k) => k,
        None => {
            let added = call(
                &first,
                Request::CredsAdd {
                    store: store.clone(),
                    access_key_id: None,
                    secret_access_key: None,
                },
            )
            .await?;
            let akid = added
                .get("access_key_id")
                .and_then(|a| a.as_str())
                .context("creds add answered no access key id")?
                .to_string();
            std::fs::write(&akid_file, format!("{akid}\n"))
                .with_context(|| format!("writing {}", akid_file.display()))?;
            eprintln!("keyward demo: added the demo credential {akid}");
            akid
        }
    };
    let kms = call(
        &first,
        Request::KmsConfig {
            store: store.clone(),
            access_key_id: Some(akid.clone()),
        },
    )
    .await?;
    let kms: KmsConfigFile = serde_json::from_value(kms).context("kms-config's answer")?;
    let secret = kms.credential.raw_secret_access_key.expose().to_string();

    let keys = key_ids(
        &call(
            &first,
            Request::KeysList {
                store: store.clone(),
            },
        )
        .await?,
    );
    if keys.is_empty() {
        call(
            &first,
            Request::KeysCreate {
                store: store.clone(),
                id: DEMO_KEY.into(),
                usage: KeyUsage::EncryptDecrypt,
            },
        )
        .await?;
        call(
            &first,
            Request::KeysGrant {
                store: store.clone(),
                id: DEMO_KEY.into(),
                grant: Grant::open_to_all(),
            },
        )
        .await?;
        eprintln!("keyward demo: created key {DEMO_KEY}, granted to every principal");
    }
    let keys = key_ids(
        &call(
            &first,
            Request::KeysList {
                store: store.clone(),
            },
        )
        .await?,
    );

    // Every member applies what member 1 wrote within its poll interval.
    let deadline = Instant::now() + SPREAD_TIMEOUT;
    for m in members.iter().skip(1) {
        let profile = Profile::load(&m.profile())?;
        loop {
            let theirs = key_ids(
                &call(
                    &profile,
                    Request::KeysList {
                        store: store.clone(),
                    },
                )
                .await?,
            );
            let creds = call(
                &profile,
                Request::CredsList {
                    store: store.clone(),
                },
            )
            .await?;
            let has_cred =
                creds.as_array().into_iter().flatten().any(|c| {
                    c.get("access_key_id").and_then(|a| a.as_str()) == Some(akid.as_str())
                });
            if theirs == keys && has_cred {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "member {} did not apply the seeded key and credential within {:?}",
                    m.index,
                    SPREAD_TIMEOUT
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((akid, secret, keys))
}

/// The sorted key ids of a `keys list` answer.
fn key_ids(v: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.get("id")?.as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// `STATE/haproxy.cfg`, written at every start.
fn write_haproxy_config(
    paths: &Paths,
    listen: SocketAddr,
    members: &[Member],
) -> anyhow::Result<()> {
    let servers: String = members
        .iter()
        .map(|m| format!("    server member-{} {}\n", m.index, m.xks))
        .collect();
    let cfg = format!(
        "# keyward demo --fleet: the local fleet's load balancer (written at every start).\n\
         # TCP mode: each client's TLS session passes through to one member untouched, as an AWS\n\
         # NLB's TCP listener does (the members hold the XKS certificate; the balancer sees bytes).\n\
         global\n\
         \x20   maxconn 4096\n\
         \x20   stats socket {sock} mode 600 level admin\n\
         \x20   log stderr format short local0 notice\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   log global\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 10m\n\
         \x20   timeout server 10m\n\
         \x20   timeout check 2s\n\
         \x20   # A connection a member refuses (killed, restarting) is tried again on another.\n\
         \x20   retries 2\n\
         \x20   option redispatch 1\n\
         \n\
         frontend xks\n\
         \x20   bind {listen}\n\
         \x20   default_backend members\n\
         \n\
         backend members\n\
         \x20   balance roundrobin\n\
         \x20   # Health: an HTTPS `GET /ping` to each member's XKS port every second (check-ssl: the\n\
         \x20   # port speaks only TLS; verify none: the check asks whether the member answers, not\n\
         \x20   # who it is, and clients verify the certificate themselves end to end), `up` expected.\n\
         \x20   # Not a plain TCP check: the kernel completes a TCP handshake for a process that is\n\
         \x20   # wedged, or that has bound its listener but is not serving yet; /ping proves the TLS\n\
         \x20   # stack and the HTTP server answer, and stays cheap (no SigV4, no key, no store).\n\
         \x20   # Down after 2 failed checks, up again after 2 good ones.\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri /ping ver HTTP/1.1 hdr Host 127.0.0.1\n\
         \x20   http-check expect string up\n\
         \x20   default-server check check-ssl verify none inter 1s fall 2 rise 2\n\
         {servers}",
        sock = paths.p("haproxy.sock").display(),
    );
    std::fs::write(paths.p("haproxy.cfg"), cfg).context("writing haproxy.cfg")?;
    let exe = find_program("haproxy").context("haproxy not found: apt-get install haproxy")?;
    let out = Command::new(exe)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(paths.p("haproxy.cfg"))
        .output()
        .context("haproxy -c")?;
    if !out.status.success() {
        anyhow::bail!(
            "haproxy refuses {}: {}{}",
            paths.p("haproxy.cfg").display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn spawn_balancer(paths: &Paths) -> anyhow::Result<Child> {
    let exe = find_program("haproxy").context("haproxy not found: apt-get install haproxy")?;
    let log = std::fs::File::create(paths.p("haproxy.log")).context("creating haproxy.log")?;
    let child = child_command(&exe)
        .arg("-db")
        .arg("-f")
        .arg(paths.p("haproxy.cfg"))
        .current_dir(&paths.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting haproxy")?;
    eprintln!(
        "keyward demo: HAProxy (pid {}) balancing the members, log {}",
        child.id(),
        paths.p("haproxy.log").display()
    );
    Ok(child)
}

/// Wait until something accepts on `addr` (HAProxy bound its frontend).
fn wait_accepting(addr: SocketAddr, child: Option<&mut Child>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut child = child;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            anyhow::bail!("haproxy exited ({status}) before listening on {addr}");
        }
        if Instant::now() > deadline {
            anyhow::bail!("nothing listens on {addr} 20 s after starting haproxy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The one JSON line: `keyward demo`'s fields, then the fleet's.
#[allow(clippy::too_many_arguments)]
fn ready_line(
    url: &str,
    region: &str,
    (akid, secret): (&str, &str),
    ca: &Path,
    key_ids: &[String],
    members: &[Member],
    (postgres_url, postgres_pid): (&str, Option<u32>),
    balancer_pid: Option<u32>,
) -> String {
    let base = demo::ready_line(
        url,
        region,
        akid,
        secret,
        ca,
        key_ids,
        &members[0].profile(),
        "simulated",
    );
    let mut v: serde_json::Value = match serde_json::from_str(&demo::with_attestation_url(
        &base,
        &members[0].attestation_url(),
        &members[0].dir.join("audit.jsonl"),
        &format!("https://{}/metrics", members[0].admin),
    )) {
        Ok(v) => v,
        Err(_) => return base,
    };
    v["members"] = members
        .iter()
        .map(|m| {
            serde_json::json!({
                "url": m.url(),
                "pid": m.pid(),
                "admin_profile": m.profile(),
                "label": m.label,
                "config": m.config(),
                "log": m.log(),
                "attestation_url": m.attestation_url(),
            })
        })
        .collect();
    v["postgres_url"] = postgres_url.into();
    v["postgres_pid"] = postgres_pid.into();
    v["balancer_pid"] = balancer_pid.into();
    v.to_string()
}

fn print_fleet_help(paths: &Paths, members: &[Member], postgres_url: &str) {
    let mut e = std::io::stderr().lock();
    let kw = demo::self_command();
    let _ = writeln!(
        e,
        "The fleet: {} member(s) behind HAProxy, one key store in PostgreSQL ({postgres_url}):",
        members.len()
    );
    for m in members {
        let _ = writeln!(
            e,
            "  member {} ({}): XKS {}  pid {}  log {}",
            m.index,
            m.label,
            m.url(),
            m.pid().map_or("-".into(), |p| p.to_string()),
            m.log().display()
        );
    }
    let _ = writeln!(e, "List the members as the fleet sees them:");
    let _ = writeln!(
        e,
        "  {kw} admin --profile {} fleet",
        demo::sh_word(&members[0].profile().display().to_string())
    );
    let _ = writeln!(
        e,
        "Stop one member (kill {}), start it again with {kw} serve --config {}: it rejoins.",
        members
            .last()
            .and_then(Member::pid)
            .map_or("PID".into(), |p| p.to_string()),
        demo::sh_word(
            &members
                .last()
                .map_or(PathBuf::new(), Member::config)
                .display()
                .to_string()
        )
    );
    let _ = writeln!(
        e,
        "Balancer state: echo 'show stat' | socat - {} (when socat is installed)",
        paths.p("haproxy.sock").display()
    );
}

/// Until SIGINT or SIGTERM: report members (and the balancer) that exit.
async fn wait_for_stop(members: &mut [Member], balancer: &mut Option<Child>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("keyward demo: cannot handle signals; stopping");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => { eprintln!("keyward demo: SIGTERM: stopping the fleet"); return; }
            _ = int.recv() => { eprintln!("keyward demo: SIGINT: stopping the fleet"); return; }
            _ = tick.tick() => {}
        }
        for m in members.iter_mut() {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                eprintln!(
                    "keyward demo: member {} ({}) exited ({status}); the others go on. Start it \
                     again with: {} serve --config {}",
                    m.index,
                    m.label,
                    demo::self_command(),
                    demo::sh_word(&m.config().display().to_string())
                );
                m.child = None;
            }
        }
        if let Some(status) = balancer.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            eprintln!(
                "keyward demo: HAProxy exited ({status}): the balancer's address no longer answers"
            );
            *balancer = None;
        }
    }
}

/// SIGTERM, then wait up to `grace` (SIGKILL after it).
fn terminate(child: &mut Child, grace: Duration) {
    let Ok(raw) = i32::try_from(child.id()) else {
        return;
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Stop the members (together), then the balancer.
fn stop_all(members: &mut [Member], balancer: &mut Option<Child>) {
    for m in members.iter_mut() {
        if let Some(c) = &m.child {
            if let Ok(raw) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    for m in members.iter_mut() {
        if let Some(mut c) = m.child.take() {
            terminate(&mut c, Duration::from_secs(15));
        }
    }
    if let Some(mut b) = balancer.take() {
        terminate(&mut b, Duration::from_secs(5));
    }
}
