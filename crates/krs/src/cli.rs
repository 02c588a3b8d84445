//! `keyward krs`: the key-release service and its operator commands.
//!
//! * `init --config FILE`: master key + receipt key in the token, TLS certificate, and the pins
//!   the appliance must be given.
//! * `serve --config FILE`: the KRP/1 service.
//! * `policy keygen|sign|show|check`: the signed, versioned verifier policy.
//! * `crl fetch|status --config FILE`: the AMD CRLs the KRS hands the verifier.
//! * `log verify FILE --receipt-key PEM [--against HEAD]`: offline check of the release log
//!   (and that it is not older than, or forked from, a head noted earlier).
//! * `heads show --config FILE`: the store head held per deployment.
//! * `heads set --config FILE --deployment NAME --backup BACKUP [--new-store] [--yes]`: the
//!   disaster-recovery override: move a deployment's head (back) to a backup's, logged.
//! * `mk list|rotate|retire VERSION --config FILE`: master-key versions (`mk_cli.rs`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};

use crate::config::KrsConfig;
use crate::log::ReleaseLog;
use crate::policy;
use crate::service::{Service, KEY_VERSION};
use keyward_hsm::Hsm;
use keyward_krp::spki_pin;

/// Arguments of `keyward krs`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the master key and receipt key in the token and the TLS certificate; print the
    /// pins the appliance must be configured with.
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve KRP/1 over TLS 1.3.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the pins of an initialised KRS (same output as `init`); with `--admin-ca`, the
    /// `[[deployment]]` block this KRS must be configured with for appliances whose operator CA
    /// is that file (appended to the config with `--append`).
    Pins {
        #[arg(long)]
        config: PathBuf,
        /// The deployment's operator (admin client) CA certificate, PEM: exactly one.
        #[arg(long)]
        admin_ca: Option<PathBuf>,
        /// The `krs_url` the appliances are configured with, exactly: adds `pins_sha384`
        /// (the whole pins digest: URL, both KRS pins and the CA).
        #[arg(long, requires = "admin_ca")]
        url: Option<String>,
        /// The deployment's name (logs, and the store head the KRS keeps for it).
        #[arg(long, default_value = "default", requires = "admin_ca")]
        name: String,
        /// Append the block to the config file instead of printing it.
        #[arg(long, requires = "admin_ca")]
        append: bool,
    },
    /// Signed policy commands.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Release log commands.
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// AMD CRL commands (the config's `crl_files`).
    Crl {
        #[command(subcommand)]
        cmd: CrlCmd,
    },
    /// The store heads this KRS holds per deployment (the floor every boot must reach).
    Heads {
        #[command(subcommand)]
        cmd: HeadsCmd,
    },
    /// Master-key versions: list, rotate (make a new current one), retire (destroy an old one).
    Mk {
        #[command(subcommand)]
        cmd: MkCmd,
    },
}

#[derive(Subcommand, Debug)]
enum MkCmd {
    /// One JSON line per version: version, label, created, state (current, previous,
    /// retired) and the deployments whose store head is sealed under it.
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Generate master key version N+1 in the token (current from the KRS's next start;
    /// appliances re-seal at their next boot). Logged. The KRS must be stopped.
    Rotate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Destroy master key version VERSION in the token. Refused while it is current, while any
    /// deployment's store head is sealed under it, and without --backups-moved. Logged. The
    /// KRS must be stopped.
    Retire {
        #[arg(long)]
        config: PathBuf,
        /// The version to retire.
        version: u32,
        /// Every backup kept was taken after the re-seal (under a newer version).
        #[arg(long)]
        backups_moved: bool,
    },
}

#[derive(Subcommand, Debug)]
enum HeadsCmd {
    /// List each deployment's store head (store id, record, chain MAC) and boot keys (JSON
    /// lines).
    Show {
        #[arg(long)]
        config: PathBuf,
    },
    /// Disaster recovery: move a deployment's store head to the head of a backup (`keyward
    /// admin backup`), so its appliances open the restored store (`keyward store restore`).
    /// Every change made after the backup is lost for good. Recorded in the release log. The
    /// KRS must be stopped (its state directory is locked while it runs).
    Set {
        #[arg(long)]
        config: PathBuf,
        /// The deployment (a `[[deployment]]` name of the config).
        #[arg(long)]
        deployment: String,
        /// The backup file whose head to hold.
        #[arg(long)]
        backup: PathBuf,
        /// Also when the backup is of another store than the one the deployment's head
        /// names (the deployment's store is replaced by the backup's).
        #[arg(long)]
        new_store: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CrlCmd {
    /// Download the CRLs for the products and signers the policy accepts from AMD's KDS,
    /// check each signature by the pinned ARK, and replace the CRL file (all or nothing).
    Fetch {
        #[arg(long)]
        config: PathBuf,
        /// KDS base URL (`{base}/vcek/v1/Milan/crl`, ...).
        #[arg(long, default_value = crate::crl_fetch::AMD_KDS)]
        kds_url: String,
        /// The file to write. Default: the config's first `crl_files` entry.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print each configured CRL's issuer, thisUpdate, nextUpdate and age (JSON lines); exit
    /// 1 when one is stale, unreadable or not signed by a pinned ARK.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Generate a policy-admin P-384 key pair (keep the private key offline).
    Keygen {
        /// Private key (PKCS#8 PEM), created with mode 0600.
        #[arg(long)]
        out: PathBuf,
        /// Public key (SPKI PEM) for the KRS's `admin_public_key`.
        #[arg(long)]
        public: PathBuf,
    },
    /// Sign a verifier policy file as a given version.
    Sign {
        /// Policy-admin private key (PKCS#8 or SEC1 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Policy name.
        #[arg(long, default_value = "default")]
        id: String,
        /// Version; must be at least the highest the KRS has accepted. Default: the policy's
        /// own `policy_version`.
        #[arg(long)]
        version: Option<u64>,
        /// The verifier policy file to sign.
        #[arg(long = "in")]
        input: PathBuf,
        /// Where to write the signed policy (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a signed policy (id, version, digest, text); verifies it when --admin-key is given.
    Show {
        file: PathBuf,
        #[arg(long)]
        admin_key: Option<PathBuf>,
    },
    /// Check a signed policy against the KRS configuration: signature, version rule, measured
    /// evidence; warns when nothing judges the deployment pins or the CRLs are missing.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Defaults to the config's policy_file.
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum LogCmd {
    /// Verify the hash chain, every receipt and the signed head of a release log.
    Verify {
        file: PathBuf,
        /// The receipt public key (PEM), as written by `krs init` to `receipt.pub.pem`.
        #[arg(long)]
        receipt_key: PathBuf,
        /// A head noted earlier: a saved copy of `release.log.head`, or `COUNT:HASH[:COUNTER]`
        /// from an earlier verify. Fails when the log is older than it or forked from it.
        #[arg(long)]
        against: Option<String>,
    },
}

/// Run `keyward krs`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.cmd {
        Cmd::Init { config } => init(&config),
        Cmd::Serve { config } => serve(&config),
        Cmd::Pins {
            config,
            admin_ca: None,
            ..
        } => {
            let cfg = KrsConfig::load(&config)?;
            print_pins(&cfg, &Hsm::open(&cfg.hsm)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pins {
            config,
            admin_ca: Some(ca),
            url,
            name,
            append,
        } => deployment_block(&config, &ca, url.as_deref(), &name, append),
        Cmd::Policy { cmd } => policy_cmd(cmd),
        Cmd::Mk {
            cmd: MkCmd::List { config },
        } => crate::mk_cli::list(&config),
        Cmd::Mk {
            cmd: MkCmd::Rotate { config },
        } => crate::mk_cli::rotate(&config),
        Cmd::Mk {
            cmd:
                MkCmd::Retire {
                    config,
                    version,
                    backups_moved,
                },
        } => crate::mk_cli::retire(&config, version, backups_moved),
        Cmd::Crl { cmd } => crl_cmd(cmd),
        Cmd::Heads {
            cmd: HeadsCmd::Show { config },
        } => crate::heads_cli::show(&config),
        Cmd::Heads {
            cmd:
                HeadsCmd::Set {
                    config,
                    deployment,
                    backup,
                    new_store,
                    yes,
                },
        } => crate::heads_cli::set(&crate::heads_cli::SetArgs {
            config,
            deployment,
            backup,
            new_store,
            yes,
        }),
        Cmd::Log {
            cmd:
                LogCmd::Verify {
                    file,
                    receipt_key,
                    against,
                },
        } => {
            let pem = std::fs::read_to_string(&receipt_key)
                .with_context(|| format!("reading {}", receipt_key.display()))?;
            let spki = spki_der_from_pem(&pem)?;
            let checked = match &against {
                None => crate::log::verify_file(&file, &spki),
                Some(a) => crate::log::SavedHead::load(a, &spki)
                    .and_then(|saved| crate::log::verify_against(&file, &spki, &saved)),
            };
            match checked {
                Ok(s) => {
                    println!(
                        "{}",
                        serde_json::json!({"ok": true, "entries": s.entries,
                        "releases": s.releases, "denies": s.denies, "head_hash": s.head_hash,
                        "counter": s.counter, "against": against})
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!(
                        "{}",
                        serde_json::json!({"ok": false, "error": e.to_string()})
                    );
                    eprintln!("keyward: release log does not verify: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn spki_der_from_pem(pem: &str) -> anyhow::Result<Vec<u8>> {
    use p384::pkcs8::{DecodePublicKey, EncodePublicKey};
    let pk = p384::PublicKey::from_public_key_pem(pem).context("not a P-384 public key PEM")?;
    Ok(pk.to_public_key_der()?.as_bytes().to_vec())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn init(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = KrsConfig::load(config)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let hsm = Hsm::open(&cfg.hsm)?;
    hsm.init_keys()?;
    if hsm.try_read_master_value().is_ok() {
        bail!("the token lets CKA_VALUE of the master key be read; refusing to use it");
    }
    if !cfg.tls_cert().exists() {
        let (cert, key, _) = keyward_krp::generate_cert(cfg.tls_names.clone())?;
        write_private(&cfg.tls_key(), &key)?;
        std::fs::write(cfg.tls_cert(), cert)?;
    }
    print_pins(&cfg, &hsm)?;
    Ok(ExitCode::SUCCESS)
}

/// `krs pins --admin-ca`: the `[[deployment]]` block for appliances with this operator CA (and,
/// with `--url`, exactly these pins), printed or appended to the config.
fn deployment_block(
    config: &Path,
    ca: &Path,
    url: Option<&str>,
    name: &str,
    append: bool,
) -> anyhow::Result<ExitCode> {
    use sha2::Digest;
    let cfg = KrsConfig::load(config)?;
    crate::deployment::parse(&[crate::config::DeploymentConfig {
        name: name.to_string(),
        pins_sha384: None,
        admin_ca_sha256: Some("00".repeat(32)),
    }])
    .context("--name")?;
    if cfg.deployments.iter().any(|d| d.name == name) {
        bail!("--name: {config:?} already has a [[deployment]] named {name:?}");
    }
    let certs = keyward_pki::load_certs(ca)
        .map_err(|e| anyhow::anyhow!("--admin-ca {}: {e}", ca.display()))?;
    if certs.len() != 1 {
        bail!(
            "--admin-ca {}: holds {} certificates; the operator CA is exactly one",
            ca.display(),
            certs.len()
        );
    }
    let ca_sha: [u8; 32] = sha2::Sha256::digest(certs[0].as_ref()).into();
    let pins = match url {
        Some(u) => {
            let hsm = Hsm::open(&cfg.hsm)?;
            let sec1 = hsm.receipt_public_key()?;
            let spki = keyward_krp::spki_from_sec1(&sec1)?;
            let tls = keyward_pki::load_certs(&cfg.tls_cert())?;
            let first = tls
                .first()
                .context("no TLS certificate (run `keyward krs init`)")?;
            let tls_pin = keyward_pki::spki_sha256(first).context("TLS certificate unreadable")?;
            Some(keyward_krp::messages::Pins {
                krs_url: u.to_string(),
                krs_tls_spki_sha256: tls_pin.to_vec(),
                receipt_spki_sha256: spki_pin(&spki).to_vec(),
                admin_ca_sha256: ca_sha.to_vec(),
            })
        }
        None => None,
    };
    let block = crate::deployment::block(name, &ca_sha, pins.as_ref());
    if append {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(config)
            .with_context(|| format!("opening {}", config.display()))?;
        f.write_all(format!("\n{block}").as_bytes())?;
        f.sync_all()?;
        KrsConfig::load(config).context("the config after appending")?;
        eprintln!("appended [[deployment]] {name:?} to {}", config.display());
    } else {
        print!("{block}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Print (JSON, one line) the pins the appliance needs, and write receipt.pub.pem.
fn print_pins(cfg: &KrsConfig, hsm: &Hsm) -> anyhow::Result<()> {
    use p384::pkcs8::{EncodePublicKey, LineEnding};
    let sec1 = hsm.receipt_public_key()?;
    let pk = p384::PublicKey::from_sec1_bytes(&sec1).context("receipt key from the token")?;
    let spki = pk.to_public_key_der()?.as_bytes().to_vec();
    let pem = pk.to_public_key_pem(LineEnding::LF)?;
    std::fs::write(cfg.receipt_pub(), &pem)?;
    let certs = keyward_pki::load_certs(&cfg.tls_cert())?;
    let first = certs.first().context("no TLS certificate")?;
    let tls_pin = keyward_pki::spki_sha256(first).context("TLS certificate unreadable")?;
    println!(
        "{}",
        serde_json::json!({
            "receipt_spki_sha256": hex::encode(spki_pin(&spki)),
            "krs_tls_spki_sha256": hex::encode(tls_pin),
            "receipt_public_key": cfg.receipt_pub(),
            "receipt_public_key_pem": pem,
            "master_key": hsm.master_key_id(),
            "key_version": KEY_VERSION,
            "capabilities": format!("{:?}", hsm.capabilities()),
        })
    );
    Ok(())
}

/// Load the policy under the config's rules (signature, forward-only version).
pub(crate) fn load_policy(cfg: &KrsConfig, file: &Path) -> anyhow::Result<policy::VerifiedPolicy> {
    let pem = std::fs::read_to_string(&cfg.admin_public_key)
        .with_context(|| format!("reading {}", cfg.admin_public_key.display()))?;
    let admin = policy::admin_public_key(&pem)?;
    let p = policy::load(file, &admin)?;
    crate::appraiser::check_policy_text(&p.policy)
        .with_context(|| format!("signed policy {}", file.display()))?;
    policy::enforce_version(&cfg.version_file(), &p)?;
    Ok(p)
}

/// The verifier policy inside the config's signed policy (signature checked; the version rule
/// is not applied or recorded).
fn read_verifier_policy(cfg: &KrsConfig) -> anyhow::Result<keyward_verify::Policy> {
    let pem = std::fs::read_to_string(&cfg.admin_public_key)
        .with_context(|| format!("reading {}", cfg.admin_public_key.display()))?;
    let admin = policy::admin_public_key(&pem)?;
    let p = policy::load(&cfg.policy_file, &admin)?;
    keyward_verify::Policy::from_bytes(&p.policy)
        .with_context(|| format!("signed policy {}", cfg.policy_file.display()))
}

/// Warnings about what the policy leaves to the KRS configuration: the deployment pins
/// (`admin_ca_sha256`, KRS URL) and the CRLs.
pub(crate) fn policy_warnings(cfg: &KrsConfig, p: &keyward_verify::Policy) -> Vec<String> {
    let mut out = Vec::new();
    if !covers_pcr15(p) && cfg.deployments.is_empty() {
        out.push(
            "nothing judges the deployment pins (admin_ca_sha256, krs_url): the policy has no \
             PCR 15 entry ([[tpm.allowed]]/[[tpm.userspace]] or [nitro] pcrs with pcr = 15) and \
             the KRS config has no [[deployment]]; a VM booted with someone else's operator CA \
             would be released to (add a [[deployment]] with pins_sha384 or admin_ca_sha256)"
                .into(),
        );
    }
    let snp = p
        .required_evidence
        .contains(&keyward_verify::EvidenceKind::Snp);
    if snp && cfg.crl_files.is_empty() {
        if p.snp.crl.required {
            out.push(
                "snp.crl.required = true but the KRS config has no crl_files: every SNP \
                 release will be denied (run `keyward krs crl fetch` and list the file in \
                 crl_files)"
                    .into(),
            );
        } else {
            out.push(
                "no crl_files configured: SEV-SNP revocation is not checked (set crl_files and \
                 snp.crl.required = true)"
                    .into(),
            );
        }
    }
    out
}

/// Whether the policy compares PCR 15 (where the appliance extends the pins digest) with a
/// reference value, in the TPM or the NitroTPM section.
fn covers_pcr15(p: &keyward_verify::Policy) -> bool {
    let has15 = |v: &Option<serde_json::Value>, key: &str| {
        v.as_ref()
            .and_then(|v| v.get(key))
            .and_then(|l| l.as_array())
            .is_some_and(|l| {
                l.iter()
                    .any(|e| e.get("pcr").and_then(|n| n.as_u64()) == Some(15))
            })
    };
    use keyward_verify::EvidenceKind;
    (p.required_evidence.contains(&EvidenceKind::Tpm)
        && (has15(&p.tpm, "allowed") || has15(&p.tpm, "userspace")))
        || (p.required_evidence.contains(&EvidenceKind::Nitro) && has15(&p.nitro, "pcrs"))
}

/// Everything `serve` needs, built from the config, and the state directory's lock (held for
/// as long as the service runs: one process on this state at a time; an operator's `heads set`
/// waits for a stop).
pub(crate) fn build_service(
    cfg: &KrsConfig,
    appraiser: Box<dyn crate::service::Appraiser>,
) -> anyhow::Result<(
    Service,
    Arc<rustls::ServerConfig>,
    crate::state_lock::StateLock,
)> {
    let deployments = crate::deployment::parse(&cfg.deployments)?;
    std::fs::create_dir_all(&cfg.state_dir)?;
    let policy = load_policy(cfg, &cfg.policy_file)?;
    // Before the head book and the release log are read (and the log's head repaired).
    let state = crate::state_lock::lock(&cfg.state_dir)?;
    let heads = crate::heads::HeadBook::open(&cfg.heads_file())?;
    let hsm = Hsm::open(&cfg.hsm)?;
    let log = ReleaseLog::open(&cfg.log_file())?;
    let certs = keyward_pki::load_certs(&cfg.tls_cert())?;
    let key = keyward_pki::load_key(&cfg.tls_key())?;
    let first = certs
        .first()
        .context("no TLS certificate (run `keyward krs init`)")?;
    let tls_pin = keyward_pki::spki_sha256(first).context("TLS certificate unreadable")?;
    let tls = keyward_krp::server_config(certs, key)?;
    let svc = Service::new(
        Box::new(hsm),
        log,
        policy,
        appraiser,
        tls_pin,
        Duration::from_secs(cfg.session_ttl_secs),
        cfg.wrap,
    )?
    .with_deployments(deployments)
    .with_heads(heads);
    Ok((svc, tls, state))
}

fn serve(config: &Path) -> anyhow::Result<ExitCode> {
    init_tracing();
    let cfg = KrsConfig::load(config)?;
    // As the appliance does, before anything secret exists (the HSM PIN, an HPKE-fallback
    // master key): non-dumpable, no core files, key memory locked.
    keyward_secret::harden_process().context("hardening the KRS process")?;
    let mem =
        keyward_secret::init(cfg.memory).context("locking key memory (memory.allow_unlocked)")?;
    if !mem.locked {
        tracing::warn!(
            "key memory is NOT locked (RLIMIT_MEMLOCK too low?); allowed by memory.allow_unlocked: development only"
        );
    }
    let verifier_policy = Arc::new(read_verifier_policy(&cfg)?);
    let crls = Arc::new(crate::crl::CrlStore::open(&cfg.crl_files)?);
    let crl_status = crls
        .status(Some(&verifier_policy))
        .map_err(|e| anyhow::anyhow!(e))?;
    for s in &crl_status {
        if s.stale || s.signature_error.is_some() {
            tracing::warn!("{}", s.line());
        } else {
            tracing::info!("{}", s.line());
        }
    }
    for w in policy_warnings(&cfg, &verifier_policy) {
        tracing::warn!("{w}");
    }
    let appraiser = crate::appraiser::VerifierAppraiser::with_crls(crls.clone());
    let (svc, tls, _state) = build_service(&cfg, Box::new(appraiser))?;
    let svc = svc.with_limits(cfg.limits);
    let listener =
        TcpListener::bind(&cfg.listen).with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let svc = Arc::new(svc);
    let metrics = match &cfg.metrics_listen {
        Some(listen) => {
            let l = crate::metrics::bind(listen)?;
            Some(crate::metrics::spawn(l, svc.clone())?.to_string())
        }
        None => None,
    };
    println!(
        "{}",
        serde_json::json!({"krs": "listening", "addr": addr.to_string(), "mode": svc.mode(),
            "non_dumpable": !keyward_secret::is_dumpable(), "memory_locked": mem.locked,
            "crls": crl_status, "metrics": metrics})
    );
    tracing::info!(%addr, mode = ?svc.mode(), "keyward krs serving KRP/1");
    if !cfg.crl_files.is_empty() {
        crate::crl::spawn_status_logger(crls, verifier_policy);
    }
    crate::service::serve(listener, tls, svc);
    Ok(ExitCode::SUCCESS)
}

fn crl_cmd(cmd: CrlCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CrlCmd::Fetch {
            config,
            kds_url,
            out,
        } => {
            let now = keyward_keystore::now_unix();
            let cfg = KrsConfig::load(&config)?;
            let p = read_verifier_policy(&cfg)?;
            let out = match out.or_else(|| cfg.crl_files.first().cloned()) {
                Some(o) => o,
                None => bail!("crl_files: empty in {}; give --out FILE", config.display()),
            };
            let got = crate::crl_fetch::fetch(&kds_url, &p, &out, now)?;
            for f in &got {
                println!(
                    "{}",
                    serde_json::json!({"fetched": f.url, "issuer": f.facts.issuer_cn,
                        "signed_by": f.facts.root,
                        "this_update": keyward_verify::snp::fmt_time(f.facts.this_update),
                        "next_update": f.facts.next_update.map(keyward_verify::snp::fmt_time),
                        "revoked": f.facts.revoked, "file": out})
                );
            }
            if !cfg.crl_files.contains(&out) {
                eprintln!(
                    "keyward: warning: {} is not in crl_files of {}; the KRS does not read it",
                    out.display(),
                    config.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CrlCmd::Status { config } => {
            let cfg = KrsConfig::load(&config)?;
            let p = read_verifier_policy(&cfg)?;
            if cfg.crl_files.is_empty() {
                println!(
                    "{}",
                    serde_json::json!({"crls": [], "note": "no crl_files configured"})
                );
                return Ok(ExitCode::SUCCESS);
            }
            let store = crate::crl::CrlStore::open(&cfg.crl_files)?;
            let list = store.status(Some(&p)).map_err(|e| anyhow::anyhow!(e))?;
            let mut ok = true;
            for s in &list {
                ok &= !s.stale && s.signature_error.is_none();
                println!("{}", serde_json::to_string(s)?);
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}

fn policy_cmd(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Keygen { out, public } => {
            use p384::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let sk = p384::SecretKey::random(&mut rand_core::OsRng);
            let pem = sk.to_pkcs8_pem(LineEnding::LF)?;
            write_private(&out, &pem)?;
            std::fs::write(&public, sk.public_key().to_public_key_pem(LineEnding::LF)?)?;
            println!(
                "policy-admin key written to {} (keep it offline); public key {}",
                out.display(),
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Sign {
            key,
            id,
            version,
            input,
            out,
        } => {
            let pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(&key)
                    .with_context(|| format!("reading {}", key.display()))?,
            );
            let text =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let parsed = keyward_verify::Policy::from_bytes(&text)
                .with_context(|| format!("{} is not a valid verifier policy", input.display()))?;
            parsed
                .check_measured()
                .with_context(|| format!("refusing to sign {}", input.display()))?;
            let version = match version {
                Some(v) => v,
                None if parsed.policy_version > 0 => parsed.policy_version,
                None => bail!("pass --version (the policy has no policy_version)"),
            };
            let signed = policy::sign(&pem, &id, version, &text)?;
            std::fs::write(&out, serde_json::to_vec_pretty(&signed)?)?;
            println!("signed {id} version {version} -> {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Show { file, admin_key } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let f: policy::SignedPolicyFile =
                serde_json::from_slice(&bytes).map_err(policy::PolicyError::NotJson)?;
            let verified = match admin_key {
                Some(k) => {
                    let admin = policy::admin_public_key(&std::fs::read_to_string(k)?)?;
                    Some(policy::verify(&bytes, &admin)?)
                }
                None => None,
            };
            use base64::Engine;
            let text = base64::engine::general_purpose::STANDARD.decode(f.policy.as_bytes())?;
            println!("policy_id: {}\nversion:   {}", f.policy_id, f.version);
            match verified {
                Some(p) => println!("signature: valid\ndigest:    {}", hex::encode(p.digest)),
                None => println!("signature: not checked (pass --admin-key)"),
            }
            println!("---\n{}", String::from_utf8_lossy(&text));
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Check { config, file } => {
            let cfg = KrsConfig::load(&config)?;
            let file = file.unwrap_or_else(|| cfg.policy_file.clone());
            let pem = std::fs::read_to_string(&cfg.admin_public_key)?;
            let admin = policy::admin_public_key(&pem)?;
            let p = policy::load(&file, &admin)?;
            let (highest, _) = policy::read_version_file(&cfg.version_file())?;
            policy::check_version(&cfg.version_file(), &p)?;
            let parsed = crate::appraiser::check_policy_text(&p.policy)
                .with_context(|| format!("signed policy {}", file.display()))?;
            for w in policy_warnings(&cfg, &parsed) {
                eprintln!("keyward: warning: {w}");
            }
            if !cfg.crl_files.is_empty() {
                let store = crate::crl::CrlStore::open(&cfg.crl_files)?;
                for s in store
                    .status(Some(&parsed))
                    .map_err(|e| anyhow::anyhow!(e))?
                {
                    if s.stale || s.signature_error.is_some() {
                        eprintln!("keyward: warning: {}", s.line());
                    }
                }
            }
            if parsed.allows_unmeasured() {
                for (field, reason) in parsed.unmeasured() {
                    eprintln!(
                        "keyward: warning: allow_unmeasured is set: {field} {reason}; evidence \
                         no one measured is released to"
                    );
                }
            }
            println!(
                "ok: {} signature valid, version {} (highest accepted {highest}), digest {}",
                p.label(),
                p.version,
                hex::encode(p.digest)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
