//! The boot pipeline and the serving loop: phases, listeners, watchdog, signals, drain.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio::sync::watch;

use super::notify::Notifier;
use super::{phase, Addresses, AdminCaError, BootError, MasterKeySource};
use keyward_admin::AdminServer;
use keyward_admin::OperatorCa;
use keyward_admin::{FleetAdmin, RegistryBackend, TlsAdmin};
use keyward_audit::{AuditLog, AuditSink};
use keyward_config::{Config, KeyStoreConfig};
use keyward_keystore::{NewStore, Registry};
use keyward_secret::MemoryPolicy;
use keyward_xks::{ClientAuth, StoreProbe, TlsSettings, XksServer, XksSettings};

use super::fleet::{Fleet, FleetProbe};
use super::tls::ManagedTls;

/// A booted appliance: key store unsealed, listeners bound, not yet serving.
pub struct Running {
    pub addresses: Addresses,
    pub registry: Arc<Registry>,
    store_dir: std::path::PathBuf,
    /// On a shared store: this member's heartbeat and the store's change notifications.
    fleet: Option<(Arc<Fleet>, super::storage::Shared)>,
    audit: AuditLog,
    /// The XKS request figures the audit writer counts, served on `GET /metrics`.
    metrics: keyward_metrics::Metrics,
    /// Where the served XKS certificate's expiry is read for the metrics.
    cert_expiry: super::metrics::CertExpiry,
    xks: XksServer,
    admin: Option<AdminServer>,
    notifier: Notifier,
    /// `[attestation] listen` and the XKS certificate's SPKI hash the evidence is bound to.
    /// For the appliance-managed key, read at each request: it follows `tls install`.
    attestation: Option<(std::net::SocketAddr, keyward_attest::live::SpkiSource)>,
    attesters: Option<Arc<Vec<Box<dyn keyward_attest::Attester>>>>,
    /// The appliance-managed TLS identity, when a listener serves it.
    managed_tls: Option<Arc<ManagedTls>>,
    /// Where the master key came from: asked again while running for a newer version
    /// (`mk reseal`, or a fleet member that finds the store re-sealed under one).
    master_source: Arc<dyn MasterKeySource>,
}

/// Run the phases `attest`, `release`, `unseal` and bind the listeners of `serve`.
pub async fn boot(
    config: &Config,
    source: Box<dyn MasterKeySource>,
    notifier: Notifier,
) -> Result<Running, BootError> {
    // Memory first: nothing secret may exist before key memory is locked and the process is
    // non-dumpable.
    keyward_secret::harden_process()?;
    let report = keyward_secret::init(MemoryPolicy {
        allow_unlocked: config.memory.allow_unlocked_memory,
    })?;
    if !report.locked {
        tracing::warn!(
            "key memory is NOT locked (RLIMIT_MEMLOCK too low?); allowed by memory.allow_unlocked_memory: development only"
        );
    }
    // The FIPS build (`--features fips`) checks the module before any key exists: AES-256-GCM
    // and the XKS endpoint's TLS then run in AWS-LC's FIPS 140-3 module, or nothing runs.
    if cfg!(feature = "fips") {
        if !keyward_secret::fips_mode() {
            return Err(BootError::NotFips);
        }
        tracing::info!("FIPS mode: AES-256-GCM and the XKS endpoint's TLS run in AWS-LC's FIPS 140-3 module (self tests passed)");
    }

    // The admin CA file lives on the (untrusted) data volume: read it ONCE, check it is the
    // one the pins name before anything is attested or released, and hand these very bytes
    // to the admin listener below (the file is not read again: the host may change it while
    // the release runs).
    let admin_ca = read_admin_ca(config)?;

    if source.attested() {
        phase("attest", "gathering evidence");
        notifier.status("attest: gathering evidence");
    } else {
        phase(
            "attest",
            &format!(
                "skipped: master_key.source = {} (no attestation)",
                source.name()
            ),
        );
        phase(
            "release",
            &format!(
                "skipped: master_key.source = {}: reading the master key",
                source.name()
            ),
        );
    }
    let master_source: Arc<dyn MasterKeySource> = Arc::from(source);
    let (master, freshness) = {
        let source = master_source.clone();
        tokio::task::spawn_blocking(move || source.obtain_keys())
            .await
            .map_err(|e| BootError::Task("master key", e))??
    };

    // Trusted time: the release receipt carried the KRS's signed time.
    keyward_agent::clock()
        .check_not_rewound()
        .map_err(BootError::Clock)?;
    if let keyward_agent::Skew::Drift(d) = keyward_agent::clock().skew() {
        tracing::warn!(
            skew_secs = d,
            "the VM's clock differs from the key-release service's signed time by {d} s; \
             schedules run on the KRS's time"
        );
    }
    let location = super::storage::describe(&config.storage);
    phase("unseal", &format!("opening key store {location}"));
    match &freshness {
        keyward_keystore::Freshness::Unanchored => tracing::warn!(
            "the key store's freshness is not anchored (master_key.source = file): a restored \
             older copy of {location} would open without a word; development only"
        ),
        keyward_keystore::Freshness::Anchored { floor, .. } => phase(
            "unseal",
            &match floor {
                Some(h) => format!("store head at the KRS: seq {}", h.seq),
                None => "store head at the KRS: none yet (first boot of this deployment)".into(),
            },
        ),
    }
    notifier.status("unseal: opening the key store");
    let opened = super::storage::open(&config.storage, &notifier).await?;
    let shared = opened.shared;
    let backend = opened.backend;
    let registry =
        tokio::task::spawn_blocking(move || Registry::open_keys(backend, master, freshness))
            .await
            .map_err(|e| BootError::Task("unseal", e))??;
    let registry = Arc::new(registry);
    spawn_reseal(&registry);
    let member_id = instance_id(shared.is_some());
    let fleet = shared.map(|sh| {
        let label = config.fleet.label.clone().unwrap_or_else(host_name);
        let f = Fleet::new(sh.board.clone(), member_id.clone(), label, registry.clone());
        phase(
            "unseal",
            &format!("shared key store: this member is {member_id}"),
        );
        (f, sh)
    });
    sync_stores(&registry, &config.key_stores)?;
    let snap = registry.snapshot();
    let keys: usize = snap.stores.values().map(|s| s.keys.len()).sum();
    phase(
        "unseal",
        &format!("{} key store(s), {keys} key(s) unsealed", snap.stores.len()),
    );

    let sink = match &config.log.audit_file {
        Some(p) => AuditSink::File(p.clone()),
        None => AuditSink::Stderr,
    };
    // The audit writer counts every XKS request for the metrics, off the request path.
    let metrics = keyward_metrics::Metrics::new();
    let audit = AuditLog::start_with(sink, Some(metrics.audit_hook())).map_err(BootError::Audit)?;
    // Logged to the journal (off the data disk): what `keyward audit verify --key` pins.
    tracing::info!(
        "audit log checkpoints are signed by this boot's key {} (keyward audit verify --key)",
        audit.public_key()
    );

    // The appliance-managed TLS identity (no TLS files): loaded from the unsealed key store,
    // or generated and stored sealed on first start.
    let managed_tls = if config.uses_managed_tls() {
        let reg = registry.clone();
        let names = config.xks.tls_names.clone();
        let m = tokio::task::spawn_blocking(move || ManagedTls::open(reg, &names))
            .await
            .map_err(|e| BootError::Task("TLS identity", e))??;
        // The operator reads this on the console to pin the admin client before a chain is
        // installed (`server_spki_sha256`); `keyward verify --url` shows the same hash.
        tracing::info!("xks tls key spki_sha256={}", hex::encode(m.spki_sha256()));
        Some(Arc::new(m))
    } else {
        None
    };

    let (settings, client_auth) = xks_settings(&config.xks, member_id)?;
    let xks = match &managed_tls {
        Some(m) if config.xks.managed_tls() => {
            XksServer::bind_with_cert(settings, m.handle(), client_auth.as_ref()).await
        }
        _ => XksServer::bind(settings).await,
    }?;
    let xks_addr = xks.local_addr().map_err(keyward_xks::ServerError::from)?;
    let cert_expiry = match (&config.xks.tls, &managed_tls) {
        (Some(t), _) => super::tls::pem_file_not_after_unix(&t.cert_chain).map_or(
            super::metrics::CertExpiry::Unknown,
            super::metrics::CertExpiry::Fixed,
        ),
        (None, Some(m)) if config.xks.managed_tls() => {
            super::metrics::CertExpiry::Managed(m.clone())
        }
        _ => super::metrics::CertExpiry::Unknown,
    };
    let admin = match (&config.admin, &admin_ca) {
        (Some(a), Some(ca)) => {
            let resolver = managed_tls.as_ref().map(|m| m.handle().resolver());
            Some(AdminServer::bind(a, resolver, ca).await?)
        }
        _ => None,
    };
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    let attestation = match (&config.attestation, &config.xks.tls, &managed_tls) {
        (Some(a), Some(tls), _) => {
            let spki =
                keyward_attest::live::spki_sha256_of_pem_file(&tls.cert_chain).map_err(|why| {
                    BootError::XksCertificate {
                        path: tls.cert_chain.clone(),
                        why,
                    }
                })?;
            let fixed: keyward_attest::live::SpkiSource = Arc::new(move || spki);
            Some((a.listen, fixed))
        }
        // The key actually served: the appliance-managed one, read at each request (a chain
        // installed for a new key changes it).
        (Some(a), None, Some(m)) if config.xks.managed_tls() => {
            let m = m.clone();
            let follow: keyward_attest::live::SpkiSource = Arc::new(move || m.spki_sha256());
            Some((a.listen, follow))
        }
        (Some(_), _, _) => {
            tracing::warn!("[attestation] needs the XKS TLS certificate to bind evidence to; not started with insecure_http");
            None
        }
        _ => None,
    };
    Ok(Running {
        addresses: Addresses {
            xks: xks_addr,
            admin: admin_addr,
        },
        registry,
        store_dir: config.storage.dir.clone(),
        fleet,
        audit,
        metrics,
        cert_expiry,
        xks,
        admin,
        notifier,
        attestation,
        attesters: None,
        managed_tls,
        master_source,
    })
}

/// Map the `[xks]` section onto the XKS server's settings (reading the PEM files), and the
/// client authentication separately (for the appliance-managed certificate too).
fn xks_settings(
    x: &keyward_config::XksConfig,
    instance_id: String,
) -> Result<(XksSettings, Option<ClientAuth>), BootError> {
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(|e| BootError::Read(p.to_path_buf(), e));
    let client_auth = match &x.mtls {
        Some(m) => Some(ClientAuth {
            ca_pem: read(&m.client_ca)?,
            allowed_names: m.allowed_subjects.clone(),
        }),
        None => None,
    };
    let tls = match &x.tls {
        Some(t) => Some(TlsSettings {
            cert_chain_pem: read(&t.cert_chain)?,
            key_pem: zeroize::Zeroizing::new(read(&t.key)?),
            client_auth: client_auth.clone(),
        }),
        None => None,
    };
    let settings = XksSettings {
        listen: x.listen,
        tls,
        insecure_http: x.insecure_http,
        limits: keyward_xks::Limits::default(),
        instance_id,
    };
    Ok((settings, client_auth))
}

/// Read the admin listener's operator CA file once (`None` without `[admin]`). With a released
/// master key it must hold exactly one certificate whose DER SHA-256 is the `admin_ca_sha256`
/// pin (the pin is in PCR 15 and the release transcript; the file is on the data volume, which
/// is not trusted); the pin is required then (`keyward config check` says so too). The result
/// is what the admin listener trusts: the file is never read a second time.
fn read_admin_ca(config: &Config) -> Result<Option<OperatorCa>, BootError> {
    let Some(admin) = &config.admin else {
        return Ok(None);
    };
    let path = || admin.client_ca.clone();
    let ca = OperatorCa::load(&admin.client_ca).map_err(|source| AdminCaError::Load {
        path: path(),
        source,
    })?;
    let keyward_config::MasterKeyConfig::Release(r) = &config.master_key else {
        return Ok(Some(ca));
    };
    let pin = r.agent.admin_ca_sha256.trim().to_ascii_lowercase();
    if pin.is_empty() {
        // `keyward serve` never gets here: its configuration parser refuses a release without
        // the pin (`master_key.release.admin_ca_sha256 ... required`). Only an in-process
        // configuration (`keyward demo`, whose CA it made itself) can.
        tracing::warn!(
            "master_key.release.admin_ca_sha256 is not set: the operator CA {} is not pinned",
            admin.client_ca.display()
        );
        return Ok(Some(ca));
    }
    let certs = ca.certs();
    if certs.len() != 1 {
        return Err(AdminCaError::Count {
            path: path(),
            count: certs.len(),
        }
        .into());
    }
    use sha2::Digest;
    let got = hex::encode(sha2::Sha256::digest(certs[0].as_ref()));
    if got != pin {
        return Err(AdminCaError::Mismatch {
            path: path(),
            got,
            pin,
        }
        .into());
    }
    Ok(Some(ca))
}

/// The host name (`keyward` when it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keyward".into())
}

/// The id this instance reports in health's `ekmFleetDetails`: `keyward-HOST`, and in a fleet
/// also a per-boot suffix (several members may share a host name, and a restarted member is
/// a new boot).
fn instance_id(fleet: bool) -> String {
    let host: String = host_name().chars().take(40).collect();
    if !fleet {
        return format!("keyward-{host}");
    }
    let mut b = [0u8; 3];
    if keyward_secret::getrandom_fill(&mut b).is_err() {
        b = (std::process::id() & 0xff_ffff).to_be_bytes()[1..]
            .try_into()
            .unwrap_or([0; 3]);
    }
    format!("keyward-{host}-{}", hex::encode(b))
}

/// Create the configured key stores that do not exist yet and add the configured credentials
/// that are missing. Stores and credentials added through the admin API are left alone.
fn sync_stores(registry: &Registry, stores: &[KeyStoreConfig]) -> Result<(), BootError> {
    let existing = registry.list_stores();
    for ks in stores {
        let current = existing.iter().find(|s| s.name == ks.name);
        let known: Vec<String> = match current {
            Some(s) => {
                if s.uri_prefix != ks.uri_prefix || s.region != ks.region {
                    tracing::warn!(
                        store = %ks.name,
                        "the key store exists with uri prefix `{}` and region {}; the configuration's `{}` / {} are ignored",
                        s.uri_prefix, s.region, ks.uri_prefix, ks.region
                    );
                }
                s.access_key_ids.clone()
            }
            None => {
                let created = registry.create_store(NewStore {
                    name: ks.name.clone(),
                    uri_prefix: ks.uri_prefix.clone(),
                    region: ks.region.clone(),
                    extra_services: ks
                        .services
                        .iter()
                        .filter(|s| *s != keyward_config::KMS_SERVICE)
                        .cloned()
                        .collect(),
                });
                match created {
                    Ok(_) => {
                        tracing::info!(store = %ks.name, "created key store `{}`", ks.name)
                    }
                    // A store created at run time (admin API) already serves this prefix: the
                    // sealed store wins, as for a store that exists with other settings.
                    Err(keyward_keystore::KeystoreError::DuplicatePrefix { prefix, store }) => {
                        tracing::error!(
                            store = %ks.name,
                            "key store `{}` from the configuration is NOT created: its uri prefix `{prefix}` is served by key store `{store}`",
                            ks.name
                        );
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                Vec::new()
            }
        };
        for c in &ks.credentials {
            // A secret KMS would refuse (e.g. the earlier docs' 40-character sample) is still
            // installed, so such a file serves requests as it did, with this warning at every
            // start; `keyward config check` reports it as an error.
            let secret = c.secret_access_key.expose_secret();
            let kms_refuses = keyward_keystore::validate::secret_access_key(secret).err();
            if let Some(why) = &kms_refuses {
                tracing::warn!(
                    store = %ks.name,
                    "credential {} from the configuration: AWS KMS WILL REFUSE ITS SECRET ({why}). \
                     keyward serves requests signed with it, but no KMS external key store can be \
                     set up with it: replace it with 43-64 characters (e.g. `head -c 32 /dev/urandom | base64`)",
                    c.access_key_id
                );
            }
            if known.contains(&c.access_key_id) {
                continue;
            }
            let secret = secrecy::SecretString::from(secret.to_string());
            let added = match kms_refuses {
                None => registry.add_credential(Some(&ks.name), &c.access_key_id, secret),
                Some(_) => registry.add_credential_kms_incompatible(
                    Some(&ks.name),
                    &c.access_key_id,
                    secret,
                ),
            };
            match added {
                Ok(()) => {}
                // Unusable even outside KMS (e.g. shorter than 16 characters): the file still
                // loads, the credential is not used, and the log says why.
                Err(e @ keyward_keystore::KeystoreError::Invalid { .. }) => tracing::error!(
                    store = %ks.name,
                    "credential {} from the configuration is NOT used: {e}; replace it, or add one with `keyward admin creds add`",
                    c.access_key_id
                ),
                Err(e) => return Err(e.into()),
            }
        }
        let live = registry
            .list_credentials(Some(&ks.name))
            .map(|c| c.len())
            .unwrap_or(0);
        if live == 0 && !ks.credentials.is_empty() {
            tracing::warn!(
                store = %ks.name,
                "key store `{}` has no usable SigV4 credential yet: every XKS request to it is refused until `keyward admin creds add --store {}`",
                ks.name, ks.name
            );
        }
    }
    Ok(())
}

impl Running {
    /// The attesters the live-attestation listener (`[attestation] listen`) answers with.
    pub fn set_attesters(&mut self, attesters: Vec<Box<dyn keyward_attest::Attester>>) {
        self.attesters = Some(Arc::new(attesters));
    }

    /// Serve the XKS and admin APIs until SIGINT/SIGTERM (or `stop` turns true); then stop
    /// accepting, drain, flush the audit log. `on_ready` runs once the listeners accept.
    pub async fn serve_until(
        self,
        mut stop: watch::Receiver<bool>,
        on_ready: impl FnOnce(&Addresses),
    ) -> Result<(), BootError> {
        let Running {
            addresses,
            registry,
            store_dir,
            fleet,
            audit,
            metrics,
            cert_expiry,
            xks,
            admin,
            notifier,
            attestation,
            attesters,
            managed_tls,
            master_source,
        } = self;
        // Signal handlers first, so a SIGTERM right after the ready line is a clean stop.
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(BootError::Signal)?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(BootError::Signal)?;
        let (tx, rx) = watch::channel(false);

        let view = registry.view();
        let mut fleet_tasks = Vec::new();
        let probe: Arc<dyn StoreProbe> = match &fleet {
            Some((f, sh)) => {
                // The first round now, so the first health answer already knows the fleet.
                let f0 = f.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || f0.beat()).await {
                    tracing::warn!(error = %e, "fleet: first heartbeat failed; retrying");
                }
                fleet_tasks.push(tokio::spawn(super::fleet::heartbeat_loop(
                    f.clone(),
                    rx.clone(),
                )));
                fleet_tasks.push(tokio::spawn(super::fleet::follow_loop(
                    super::fleet::Follower {
                        registry: registry.clone(),
                        tls: managed_tls.clone(),
                        wake: Some(sh.wake.clone()),
                        source: Some(master_source.clone()),
                        audit: audit.clone(),
                    },
                    rx.clone(),
                )));
                Arc::new(FleetProbe(f.clone()))
            }
            None => Arc::new(DirProbe(store_dir)),
        };
        fleet_tasks.push(tokio::spawn(super::schedule::rotation_loop(
            registry.clone(),
            audit.clone(),
            rx.clone(),
        )));
        if let Some(m) = &managed_tls {
            // The served certificate's expiry, at start and daily.
            fleet_tasks.push(tokio::spawn(super::tls::expiry_loop(m.clone(), rx.clone())));
        }
        let xks_task = tokio::spawn(xks.run(view, audit.clone(), probe, wait_true(rx.clone())));
        let admin_task = admin.map(|a| {
            let mut backend = RegistryBackend::new(registry.clone(), audit.clone())
                .with_approvals(a.approval_policy())
                .with_clock(|| keyward_agent::clock().now_or_wall())
                .with_master_key_source(master_source.clone());
            if let Some(m) = &managed_tls {
                backend = backend.with_tls(m.clone() as Arc<dyn TlsAdmin>);
            }
            if let Some((f, _)) = &fleet {
                backend = backend.with_fleet(f.clone() as Arc<dyn FleetAdmin>);
            }
            backend = backend.with_metrics(Arc::new(super::metrics::ApplianceMetrics {
                metrics,
                registry: registry.clone(),
                fleet: fleet.as_ref().map(|(f, _)| f.clone()),
                audit: audit.clone(),
                cert: cert_expiry,
            }));
            let backend = Arc::new(backend);
            tokio::spawn(a.run(backend, wait_true(rx.clone())))
        });

        let live_task = match (attestation, attesters) {
            (Some((listen, spki)), Some(att)) if !att.is_empty() => {
                // The live evidence also binds the key that signs this boot's audit checkpoints,
                // so an auditor can pin it from hardware-signed evidence.
                let audit_key = hex::decode(audit.public_key()).ok();
                let (addr, task) = keyward_attest::live::spawn_following(
                    listen,
                    att,
                    spki,
                    audit_key,
                    wait_true(rx.clone()),
                )
                .await
                .map_err(|e| BootError::Attestation(listen, e))?;
                phase(
                    "serve",
                    &format!("live attestation on http://{addr}/attestation"),
                );
                Some(task)
            }
            (Some((listen, _)), _) => {
                tracing::warn!("[attestation] listen = {listen}: not started, no attester is configured (master_key.source = file)");
                None
            }
            _ => None,
        };

        // The listeners are bound (the kernel completes connections from here on) and their
        // accept loops are running: ready.
        phase("serve", &format!("XKS API on {}", addresses.xks));
        if let Some(a) = addresses.admin {
            phase("serve", &format!("admin API on {a} (mutual TLS)"));
        }
        notifier.ready(&format!("serving XKS on {}", addresses.xks));
        on_ready(&addresses);

        if let Some(interval) = Notifier::watchdog_interval() {
            let n = Notifier::from_env();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(interval);
                loop {
                    t.tick().await;
                    n.watchdog();
                }
            });
        }

        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
            _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
            _ = wait_true(stop.clone()) => tracing::info!("stop requested"),
        }
        let _ = stop.borrow_and_update();
        notifier.stopping();
        let _ = tx.send(true);
        let _ = xks_task.await;
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        if let Some(t) = live_task {
            let _ = t.await;
        }
        for t in fleet_tasks {
            let _ = t.await;
        }
        drop(fleet);
        if let Err(e) = audit.shutdown() {
            tracing::error!("audit log flush failed: {e}");
        }
        tracing::info!("stopped: listeners closed, requests drained, audit log flushed");
        Ok(())
    }
}

/// Resolves once the watch value is true (or its sender is gone).
async fn wait_true(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The health check's "readable key store" probe: the store directory can be listed.
struct DirProbe(std::path::PathBuf);

impl StoreProbe for DirProbe {
    fn probe(&self) -> Result<(), String> {
        std::fs::read_dir(&self.0)
            .map(|_| ())
            .map_err(|e| format!("key store {}: {e}", self.0.display()))
    }
}

/// Master-key rotation: when the KRS released a newer version than the store is sealed under,
/// re-seal the store under it in the background (admin writes wait on the writer lock; the
/// XKS request path does not, its KEKs in memory do not change). A failure leaves the store
/// under the old version (or resumes at the next boot); `keyward admin mk reseal` retries.
/// A fleet's shared store is re-sealed by exactly one member (one compare-and-set transaction
/// in PostgreSQL); a member that loses the race finds the store re-sealed and follows (`Ok(None)`).
pub(crate) fn spawn_reseal(registry: &Arc<Registry>) {
    let st = registry.mk_status();
    if st.current <= st.sealed {
        phase(
            "unseal",
            &format!("key store sealed under master key version {}", st.sealed),
        );
        return;
    }
    phase(
        "unseal",
        &format!(
            "key store sealed under master key version {}, version {} released: re-sealing",
            st.sealed, st.current
        ),
    );
    let reg = registry.clone();
    let _ = std::thread::Builder::new()
        .name("mk-reseal".into())
        .spawn(move || match reg.reseal() {
            Ok(Some(h)) => tracing::info!(
                mk_version = h.mk_version,
                seq = h.seq,
                "key store re-sealed under the new master key version"
            ),
            Ok(None) => tracing::info!(
                mk_version = reg.mk_status().sealed,
                "key store already re-sealed (by another fleet member)"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "key store re-seal failed (the store stays under the old master key version; \
                 retried at the next boot or with `keyward admin mk reseal`)"
            ),
        });
}
