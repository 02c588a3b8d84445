//! The boot pipeline and the serving loop: phases, listeners, watchdog, signals, drain.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio::sync::watch;

use super::notify::Notifier;
use super::{phase, Addresses, BootError, MasterKeySource};
use crate::admin::ops::RegistryBackend;
use crate::admin::server::AdminServer;
use crate::audit::{AuditLog, AuditSink};
use crate::config::{Config, KeyStoreConfig};
use crate::keystore::{NewStore, Registry};
use crate::secret::MemoryPolicy;
use crate::xks::XksServer;

/// A booted appliance: key store unsealed, listeners bound, not yet serving.
pub struct Running {
    pub addresses: Addresses,
    pub registry: Arc<Registry>,
    audit: Arc<AuditLog>,
    xks: XksServer,
    admin: Option<AdminServer>,
    notifier: Notifier,
}

/// Run the phases `attest`, `release`, `unseal` and bind the listeners of `serve`.
pub async fn boot(
    config: &Config,
    source: Box<dyn MasterKeySource>,
    notifier: Notifier,
) -> Result<Running, BootError> {
    // Memory first: nothing secret may exist before key memory is locked and the process is
    // non-dumpable.
    crate::secret::harden_process()?;
    let report = crate::secret::init(MemoryPolicy {
        allow_unlocked: config.memory.allow_unlocked_memory,
    })?;
    if !report.locked {
        tracing::warn!(
            "key memory is NOT locked (RLIMIT_MEMLOCK too low?); allowed by memory.allow_unlocked_memory: development only"
        );
    }

    if source.attested() {
        phase("attest", "gathering evidence");
        notifier.status("attest: gathering evidence");
    } else {
        phase(
            "attest",
            &format!("skipped: master_key.source = {} (no attestation)", source.name()),
        );
        phase(
            "release",
            &format!("skipped: master_key.source = {}: reading the master key", source.name()),
        );
    }
    let master = {
        let source = source;
        tokio::task::spawn_blocking(move || source.obtain())
            .await
            .map_err(|e| BootError::Xks(format!("master key task: {e}")))??
    };

    phase("unseal", &format!("opening key store {}", config.storage.dir.display()));
    notifier.status("unseal: opening the key store");
    let dir = config.storage.dir.clone();
    let registry = tokio::task::spawn_blocking(move || Registry::open_dir(&dir, master))
        .await
        .map_err(|e| BootError::Xks(format!("unseal task: {e}")))??;
    let registry = Arc::new(registry);
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
    let audit = Arc::new(AuditLog::start(sink).map_err(|e| BootError::Audit(e.to_string()))?);

    let xks = XksServer::bind(&config.xks)
        .await
        .map_err(|e| BootError::Xks(e.to_string()))?;
    let xks_addr = xks.local_addr().map_err(|e| BootError::Xks(e.to_string()))?;
    let admin = match &config.admin {
        Some(a) => Some(AdminServer::bind(a).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    Ok(Running {
        addresses: Addresses {
            xks: xks_addr,
            admin: admin_addr,
        },
        registry,
        audit,
        xks,
        admin,
        notifier,
    })
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
                registry.create_store(NewStore {
                    name: ks.name.clone(),
                    uri_prefix: ks.uri_prefix.clone(),
                    region: ks.region.clone(),
                    extra_services: ks
                        .services
                        .iter()
                        .filter(|s| *s != crate::config::KMS_SERVICE)
                        .cloned()
                        .collect(),
                })?;
                tracing::info!(store = %ks.name, "created key store `{}`", ks.name);
                Vec::new()
            }
        };
        for c in &ks.credentials {
            if !known.contains(&c.access_key_id) {
                registry.add_credential(
                    Some(&ks.name),
                    &c.access_key_id,
                    secrecy::SecretString::from(c.secret_access_key.expose_secret().to_string()),
                )?;
            }
        }
    }
    Ok(())
}

impl Running {
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
            audit,
            xks,
            admin,
            notifier,
        } = self;
        let (tx, rx) = watch::channel(false);

        let view = registry.view();
        let probe = Arc::new(RegistryProbe(registry.clone()));
        let xks_task = tokio::spawn(xks.run(view, audit.clone(), probe, wait_true(rx.clone())));
        let admin_task = admin.map(|a| {
            let backend = Arc::new(RegistryBackend::new(registry.clone(), audit.clone()));
            tokio::spawn(a.run(backend, wait_true(rx.clone())))
        });

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

        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| BootError::Xks(format!("signal handler: {e}")))?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| BootError::Xks(format!("signal handler: {e}")))?;
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

/// The health check's "readable key store" probe.
struct RegistryProbe(Arc<Registry>);
