//! `keyward demo`: the whole appliance on embedded defaults, what `make run` runs.
//!
//! It creates (or reuses) a state directory with an embedded key-release service (SoftHSMv2
//! token, or a software stand-in), a self-signed CA, a server certificate for
//! `localhost`/`127.0.0.1`, an admin client certificate and profile, one enabled key granted to
//! `*`, and a SigV4 credential; the master key is released to the simulated SNP attester through
//! the real KRP/1 protocol ([`master_key_source`]). It then boots through the same pipeline as
//! `keyward serve` and, once the XKS listener accepts, prints ONE JSON line on stdout with
//! everything a client needs (`"attestation": "simulated"`, see [`ready_line`]), followed by
//! human-readable lines and working commands (with this binary's real path) on stderr. A
//! restart on the same state directory reuses all of it. `--fleet N` runs a local fleet
//! instead (`crate::fleet`), sharing the certificates, the KRS and the ready line from here.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use secrecy::ExposeSecret;

use keyward_admin::Ca;
use keyward_appliance::{self, MasterKeySource};
use keyward_config::{
    AdminConfig, Config, KeyStoreConfig, LogConfig, LogFormat, MasterKeyConfig, MemoryConfig,
    StorageConfig, TlsFiles, XksConfig, KMS_SERVICE,
};
use keyward_keystore::{Grant, KeyUsage};

/// Name, prefix and region of the demo's key store.
pub const STORE: &str = "demo";
pub const URI_PREFIX: &str = "/keyward";
pub const DEMO_KEY: &str = "demo-key-1";

/// Run keyward on embedded defaults (what `make run` runs).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// State directory (created if missing, reused if present) [default: ./demo-state, with
    /// --fleet ./fleet-state].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// XKS API listen address (with --fleet: the load balancer's).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Admin API listen address (default: a port the system chooses; with --fleet each member
    /// gets its own).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// AWS region of the demo key store (the SigV4 scope clients sign with).
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Live-attestation listener (plain HTTP, `POST /attestation`; simulated SEV-SNP; with
    /// --fleet each member gets its own).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub attestation_listen: SocketAddr,
    /// A local fleet of N appliances (1-10) instead of one: a PostgreSQL server for their
    /// shared key store, the embedded KRS, N `keyward serve` members and HAProxy in front of
    /// them on --listen (see docs/fleet.md, "A local fleet").
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=10))]
    pub fleet: Option<u8>,
}

impl Args {
    /// The state directory asked for, or the default for this mode.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            PathBuf::from(if self.fleet.is_some() {
                "./fleet-state"
            } else {
                "./demo-state"
            })
        })
    }
}

/// Files in the state directory.
pub(crate) struct Paths {
    pub(crate) dir: PathBuf,
}

impl Paths {
    pub(crate) fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Where the demo's master key comes from: an embedded KRS on a loopback port the system picks
/// (SoftHSMv2 token under `STATE/krs` when installed, else a software stand-in there) and the
/// simulated SNP attester, through the real KRP/1 protocol. A state directory from before key
/// release (a `master.key` file and no `krs/`) keeps its file key, so its key store still opens.
fn master_key_source(
    paths: &Paths,
) -> anyhow::Result<(Box<dyn MasterKeySource>, MasterKeyConfig, bool)> {
    let file = paths.p("master.key");
    if file.exists() && !paths.p("krs").exists() {
        eprintln!(
            "keyward demo: {} predates attested key release; using it (delete the state directory to use the embedded KRS)",
            file.display()
        );
        let cfg = MasterKeyConfig::File { path: file.clone() };
        return Ok((
            Box::new(keyward_appliance::FileMasterKey { path: file }),
            cfg,
            false,
        ));
    }
    // The operator CA is part of the pins the embedded KRS serves (and so of T).
    let admin_ca = demo_admin_ca_sha256(paths)?;
    let krs = keyward_krs::embedded::start_for(
        &paths.p("krs"),
        &[keyward_attest::DEMO_MEASUREMENT],
        keyward_krs::embedded::Backend::Auto,
        &admin_ca,
    )?;
    eprintln!(
        "keyward demo: embedded key-release service on {} ({}), simulated SNP attestation",
        krs.addr, krs.backend
    );
    let release = keyward_config::ReleaseConfig {
        agent: krs.agent.clone(),
        tpm_tcti: None,
        retry_initial_ms: 500,
        retry_max_secs: 5,
        policy_deny_retry_secs: 5,
        max_attempts: 5,
    };
    let source = keyward_appliance::release_source(&release, &keyward_agent::product_release())?;
    Ok((Box::new(source), MasterKeyConfig::Release(release), true))
}

/// SHA-256 of the demo operator CA certificate (DER) in `ca.pem`.
pub(crate) fn demo_admin_ca_sha256(paths: &Paths) -> anyhow::Result<Vec<u8>> {
    use sha2::Digest;
    let certs = keyward_pki::load_certs(&paths.p("ca.pem"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", paths.p("ca.pem").display()))?;
    let [ca] = certs.as_slice() else {
        anyhow::bail!("{}: expected one certificate", paths.p("ca.pem").display());
    };
    Ok(sha2::Sha256::digest(ca.as_ref()).to_vec())
}

/// Create the CA, the server certificate and the admin client certificate unless present.
pub(crate) fn ensure_pki(paths: &Paths) -> anyhow::Result<()> {
    let files = [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "admin.pem",
        "admin-key.pem",
    ];
    if files.iter().all(|f| paths.p(f).is_file()) {
        return Ok(());
    }
    let ca = Ca::new("keyward demo CA")?;
    let server = ca.server(&["localhost", "127.0.0.1"], 3650)?;
    let admin = ca.client("keyward-demo-admin", 3650)?;
    keyward_admin::write_file(&paths.p("ca-key.pem"), ca.key_pem().as_bytes(), true)?;
    keyward_admin::write_file(&paths.p("server.pem"), server.cert_pem.as_bytes(), false)?;
    keyward_admin::write_file(&paths.p("server-key.pem"), server.key_pem.as_bytes(), true)?;
    keyward_admin::write_file(&paths.p("admin.pem"), admin.cert_pem.as_bytes(), false)?;
    keyward_admin::write_file(&paths.p("admin-key.pem"), admin.key_pem.as_bytes(), true)?;
    // Last: its presence marks the set as complete.
    keyward_admin::write_file(&paths.p("ca.pem"), ca.cert_pem().as_bytes(), false)?;
    eprintln!("keyward demo: created a self-signed CA, server and admin certificates");
    Ok(())
}

fn demo_config(args: &Args, paths: &Paths, master_key: MasterKeyConfig) -> Config {
    Config {
        xks: XksConfig {
            listen: args.listen,
            tls: Some(TlsFiles {
                cert_chain: paths.p("server.pem"),
                key: paths.p("server-key.pem"),
            }),
            tls_names: Vec::new(),
            mtls: None,
            insecure_http: false,
        },
        key_stores: vec![KeyStoreConfig {
            name: STORE.into(),
            uri_prefix: URI_PREFIX.into(),
            region: args.region.clone(),
            services: vec![KMS_SERVICE.into()],
            credentials: Vec::new(),
        }],
        storage: StorageConfig {
            dir: paths.p("keystore"),
            backend: keyward_config::StorageBackend::File,
        },
        master_key,
        admin: Some(AdminConfig {
            listen: args.admin_listen,
            tls: Some(TlsFiles {
                cert_chain: paths.p("server.pem"),
                key: paths.p("server-key.pem"),
            }),
            client_ca: paths.p("ca.pem"),
            unclaimed_role: keyward_config::Role::Admin,
            approvals_required: keyward_config::DEFAULT_APPROVALS_REQUIRED,
            approval_ttl_secs: keyward_config::DEFAULT_APPROVAL_TTL_SECS,
        }),
        attestation: None,
        log: LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            audit_file: Some(paths.p("audit.jsonl")),
        },
        // Try to lock key memory; warn and go on if the limit does not allow it.
        memory: MemoryConfig {
            allow_unlocked_memory: true,
        },
        fleet: Default::default(),
    }
}

/// First run: one key with both usages granted to `*`, and one credential. Later runs: nothing.
fn seed(registry: &keyward_keystore::Registry) -> anyhow::Result<()> {
    let snap = registry.snapshot();
    let store = snap
        .stores
        .get(STORE)
        .context("the demo key store is missing")?;
    if store.credentials.is_empty() {
        let (akid, secret) = keyward_keystore::generate_credential()?;
        registry.add_credential(Some(STORE), &akid, secret)?;
    }
    if store.keys.is_empty() {
        registry.create_key(Some(STORE), DEMO_KEY, KeyUsage::EncryptDecrypt)?;
        registry.grant(Some(STORE), DEMO_KEY, Grant::open_to_all())?;
    }
    Ok(())
}

/// The one JSON line printed on stdout when the demo is ready.
#[allow(clippy::too_many_arguments)]
pub fn ready_line(
    url: &str,
    region: &str,
    access_key_id: &str,
    secret: &str,
    ca_cert: &Path,
    key_ids: &[String],
    admin_profile: &Path,
    attestation: &str,
) -> String {
    serde_json::json!({
        "url": url,
        "uri_prefix": URI_PREFIX,
        "region": region,
        "access_key_id": access_key_id,
        "secret_access_key": secret,
        "ca_cert": ca_cert,
        "key_ids": key_ids,
        "admin_profile": admin_profile,
        "pid": std::process::id(),
        "attestation": attestation,
    })
    .to_string()
}

/// Quote for a POSIX shell (single quotes).
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// One shell word: as is when it needs no quoting (a plain path), else single-quoted.
pub(crate) fn sh_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&b));
    if plain {
        s.to_string()
    } else {
        sh_quote(s)
    }
}

/// How the printed commands start: the real path of this binary (after `make run` it is
/// `target/release/keyward`, not on PATH), so each command runs as printed from any directory.
pub(crate) fn self_command() -> String {
    std::env::current_exe()
        .map(|p| sh_word(&p.display().to_string()))
        .unwrap_or_else(|_| "keyward".into())
}

/// Create (mode `mode`) and resolve the state directory.
pub(crate) fn state_paths(state_dir: &Path, mode: u32) -> anyhow::Result<Paths> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(mode));
    }
    let dir = std::fs::canonicalize(state_dir)
        .with_context(|| format!("resolving {}", state_dir.display()))?;
    Ok(Paths { dir })
}

/// Run the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    keyward_appliance::cli::init_logging("info", LogFormat::Text);
    if let Some(n) = args.fleet {
        return crate::fleet::run(&args, usize::from(n));
    }
    let paths = state_paths(&args.state_dir(), 0o700)?;
    if paths.p("postgres").exists() {
        anyhow::bail!(
            "{} holds a local fleet (postgres/): run `keyward demo --fleet N` on it, or give \
             the single appliance another --state-dir",
            paths.dir.display()
        );
    }
    ensure_pki(&paths)?;
    let (source, master_key, attested) = master_key_source(&paths)?;
    let config = demo_config(&args, &paths, master_key);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let running =
            keyward_appliance::boot(&config, source, keyward_appliance::Notifier::from_env()).await?;
        let registry = running.registry.clone();
        tokio::task::spawn_blocking(move || seed(&registry)).await??;

        let snap = running.registry.snapshot();
        let store = snap.stores.get(STORE).context("the demo key store is missing")?;
        let cred = store
            .credentials
            .first()
            .context("the demo key store has no credential")?
            .clone();
        let mut key_ids: Vec<String> = store.keys.keys().cloned().collect();
        key_ids.sort();
        let xks_addr = running.addresses.xks;
        let admin_addr = running.addresses.admin.context("admin listener")?;
        let profile = paths.p("admin-profile.toml");
        let profile_text = format!(
            "# keyward admin profile for the demo: {} admin --profile {} keys list\n\
             url = \"https://127.0.0.1:{}\"\nca_cert = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            self_command(),
            sh_word(&profile.display().to_string()),
            admin_addr.port(),
            paths.p("ca.pem").display(),
            paths.p("admin.pem").display(),
            paths.p("admin-key.pem").display(),
        );
        keyward_admin::write_file(&profile, profile_text.as_bytes(), false)?;

        let url = format!("https://{xks_addr}");
        // `GET /metrics` on the admin listener, with the admin profile's client certificate.
        let metrics_url = format!("https://127.0.0.1:{}/metrics", admin_addr.port());
        let region = args.region.clone();
        let ca = paths.p("ca.pem");
        let (attestation_url, policy_file, live_stop) =
            start_live_attestation(&args, &paths).await?;
        let (_keep, stop) = tokio::sync::watch::channel(false);
        running
            .serve_until(stop, |_| {
                let secret = cred.secret_access_key.expose_secret();
                let line = with_attestation_url(
                    &ready_line(
                        &url,
                        &region,
                        &cred.access_key_id,
                        secret,
                        &ca,
                        &key_ids,
                        &profile,
                        if attested { "simulated" } else { "none" },
                    ),
                    &attestation_url,
                    &paths.p("audit.jsonl"),
                    &metrics_url,
                );
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
                drop(out);
                // The same line in STATE/ready.json (mode 0600: it holds the demo's secret), for
                // scripts and the docs' runnable blocks: `jq -r .url demo-state/ready.json`.
                if let Err(e) = keyward_admin::write_file(&paths.p("ready.json"), format!("{line}\n").as_bytes(), true) {
                    tracing::warn!("cannot write {}: {e:#}", paths.p("ready.json").display());
                }
                print_help(&url, &region, &cred.access_key_id, secret, &ca, &key_ids, &profile);
                print_attestation_help(&attestation_url, &url, &policy_file);
            })
            .await?;
        drop(live_stop);
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Add `"attestation_url"`, `"audit_log"` (the tamper-evident audit file, for `keyward
/// audit verify`) and `"metrics_url"` (the admin listener's `GET /metrics`, mutual TLS with
/// the admin profile's certificate) to the ready line.
pub(crate) fn with_attestation_url(
    line: &str,
    attestation_url: &str,
    audit_log: &Path,
    metrics_url: &str,
) -> String {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("attestation_url".into(), attestation_url.into());
            m.insert("audit_log".into(), audit_log.display().to_string().into());
            m.insert("metrics_url".into(), metrics_url.into());
            serde_json::Value::Object(m).to_string()
        }
        _ => line.to_string(),
    }
}

/// Start the live-attestation listener with the simulated SNP attester (test root, never
/// AMD's), bound to the demo's XKS certificate; write the policy an auditor verifies it with.
async fn start_live_attestation(
    args: &Args,
    paths: &Paths,
) -> anyhow::Result<(String, PathBuf, tokio::sync::oneshot::Sender<()>)> {
    use keyward_attest::{SimulatedSnpAttester, DEMO_MEASUREMENT};
    let spki = keyward_attest::live::spki_sha256_of_pem_file(&paths.p("server.pem"))
        .map_err(|e| anyhow::anyhow!("XKS certificate: {e}"))?;
    let policy_file = write_attestation_policy(paths)?;
    let attester = SimulatedSnpAttester::new(DEMO_MEASUREMENT)?;
    let attesters: Vec<Box<dyn keyward_attest::Attester>> = vec![Box::new(attester)];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, _task) = keyward_attest::live::spawn(
        args.attestation_listen,
        std::sync::Arc::new(attesters),
        spki,
        async {
            let _ = rx.await;
        },
    )
    .await
    .with_context(|| format!("attestation listener {}", args.attestation_listen))?;
    Ok((format!("http://{addr}"), policy_file, tx))
}

/// The verifier policy for the demo's simulated attestation, in `STATE/attestation-policy.toml`.
pub(crate) fn write_attestation_policy(paths: &Paths) -> anyhow::Result<PathBuf> {
    use keyward_attest::DEMO_MEASUREMENT;
    let policy_file = paths.p("attestation-policy.toml");
    let policy = format!(
        "# keyward demo: trusts the simulated SEV-SNP TEST root only (never AMD's, never in\n\
         # production) and the demo's launch measurement.\n\
         format = 1\nname = \"keyward demo (simulated SNP)\"\n\n[snp]\nbuiltin_amd_roots = false\n\
         measurements = [\"{}\"]\n\n{}",
        hex::encode(DEMO_MEASUREMENT),
        keyward_verify::testsign::test_root_policy_toml()
    );
    keyward_admin::write_file(&policy_file, policy.as_bytes(), false)?;
    Ok(policy_file)
}

pub(crate) fn print_attestation_help(attestation_url: &str, xks_url: &str, policy: &Path) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(
        e,
        "  attestation:   {attestation_url}/attestation   (POST; simulated SEV-SNP, TEST root)"
    );
    let _ = writeln!(e, "Verify the running appliance as an auditor would:");
    let _ = writeln!(
        e,
        "  {} verify --url {attestation_url} --xks-url {xks_url} --policy {}",
        self_command(),
        sh_word(&policy.display().to_string())
    );
}

pub(crate) fn print_help(
    url: &str,
    region: &str,
    akid: &str,
    secret: &str,
    ca: &Path,
    key_ids: &[String],
    profile: &Path,
) {
    let key = key_ids.first().map(String::as_str).unwrap_or(DEMO_KEY);
    let body = serde_json::json!({
        "requestMetadata": {
            "awsPrincipalArn": "arn:aws:iam::111122223333:user/demo",
            "kmsKeyArn": format!("arn:aws:kms:{region}:111122223333:key/demo"),
            "kmsOperation": "Encrypt",
            "kmsRequestId": "demo-request-1",
        },
        "plaintext": "SGVsbG8sIGtleXdhcmQh",
        "encryptionAlgorithm": "AES_GCM",
    });
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "keyward demo is ready.");
    let _ = writeln!(
        e,
        "  XKS API:       {url}{URI_PREFIX}/kms/xks/v1   (region {region}, service {KMS_SERVICE})"
    );
    let _ = writeln!(e, "  keys:          {}", key_ids.join(", "));
    let _ = writeln!(e, "  CA:            {}", ca.display());
    let _ = writeln!(
        e,
        "  admin:         {} admin --profile {} keys list",
        self_command(),
        sh_word(&profile.display().to_string())
    );
    let _ = writeln!(e, "Encrypt with curl (SigV4 signed):");
    let _ = writeln!(
        e,
        "  curl -sS --aws-sigv4 {} --user {} --cacert {} -H 'Content-Type: application/json' -d {} {}",
        sh_quote(&format!("aws:amz:{region}:{KMS_SERVICE}")),
        sh_quote(&format!("{akid}:{secret}")),
        sh_quote(&ca.display().to_string()),
        sh_quote(&body.to_string()),
        sh_quote(&format!("{url}{URI_PREFIX}/kms/xks/v1/keys/{key}/encrypt")),
    );
    let _ = writeln!(
        e,
        "Stop with Ctrl-C (state is kept in {}).",
        ca.parent().unwrap_or(ca).display()
    );
}
