//! Where the sealed key store lives (`[storage] backend`): the file store on the data disk, or
//! a PostgreSQL database shared by a fleet. This is the only place that knows the difference;
//! the registry sees a [`KeyStore`], the XKS path sees neither.
//!
//! With PostgreSQL, a booting member waits for the database (retrying with capped backoff and
//! saying so in its status) and never serves a store it could not read and check against the
//! KRS's floor; a running member keeps serving from memory through any outage.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use keyward_config::{PostgresConfig, StorageBackend, StorageConfig};
use keyward_keystore::FleetBoard;
use keyward_keystore::{KeyStore, KeystoreError};
use keyward_store_pg::{PgConfig, SharedPgBoard, SharedPgStore, Watcher};

use super::notify::Notifier;
use super::phase;

/// The opened backend, and for a shared one what a fleet member needs besides it.
pub struct Opened {
    pub backend: Box<dyn KeyStore>,
    pub shared: Option<Shared>,
}

/// A shared store's heartbeat board and change notifications.
pub struct Shared {
    pub board: Arc<dyn FleetBoard>,
    /// Woken by the database's notifications (and its poll).
    pub wake: Arc<Notify>,
    /// Keeps the listening thread running.
    _watcher: Watcher,
}

/// First and largest pause between attempts to reach the database at boot.
const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The client settings for `pg`.
pub(crate) fn pg_config(pg: &PostgresConfig) -> PgConfig {
    let mut c = PgConfig::new(pg.url.clone());
    if let Some(ca) = &pg.ca_file {
        c = c.with_ca_file(ca.clone());
    }
    c.password = pg.password.clone();
    c.application_name = format!("keyward {}", env!("CARGO_PKG_VERSION"));
    c
}

/// Where the store lives, for messages (a path, or the database URL without credentials).
pub(crate) fn describe(storage: &StorageConfig) -> String {
    match &storage.backend {
        StorageBackend::File => storage.dir.display().to_string(),
        StorageBackend::Postgres(pg) => pg_config(pg).location(),
    }
}

/// Open the configured backend. A database that cannot be reached is retried until it can
/// (a configuration error is not retried).
pub async fn open(storage: &StorageConfig, notifier: &Notifier) -> Result<Opened, KeystoreError> {
    match &storage.backend {
        StorageBackend::File => {
            let dir = storage.dir.clone();
            let backend =
                tokio::task::spawn_blocking(move || keyward_keystore::FileKeyStore::open(&dir))
                    .await
                    .map_err(|e| KeystoreError::Unavailable {
                        location: storage.dir.display().to_string(),
                        what: "open",
                        source: Box::new(e),
                    })??;
            Ok(Opened {
                backend: Box::new(backend),
                shared: None,
            })
        }
        StorageBackend::Postgres(pg) => {
            let cfg = pg_config(pg);
            let location = cfg.location();
            let mut delay = RETRY_START;
            let mut attempt = 1u32;
            let (store, board) = loop {
                let c = cfg.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let store = SharedPgStore::connect(&c)?;
                    let board = SharedPgBoard::connect(&c)?;
                    Ok::<_, KeystoreError>((store, board))
                })
                .await
                .map_err(|e| KeystoreError::Unavailable {
                    location: location.clone(),
                    what: "connect",
                    source: Box::new(e),
                })?;
                match r {
                    Ok(v) => break v,
                    Err(e @ KeystoreError::Unavailable { .. }) => {
                        let text = format!(
                            "unseal: waiting for the key store database (attempt {attempt}): {}; \
                             retrying in {:.1}s",
                            keyward_agent::error_chain(&e),
                            delay.as_secs_f64()
                        );
                        phase("unseal", &text);
                        notifier.status(&text);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_MAX);
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            let (watcher, wake) = Watcher::start(&cfg, super::fleet::POLL)?;
            Ok(Opened {
                backend: Box::new(store),
                shared: Some(Shared {
                    board: Arc::new(board),
                    wake,
                    _watcher: watcher,
                }),
            })
        }
    }
}
