//! `keyward store restore --config CONFIG FILE`: load a backup made by `keyward admin backup`
//! into the EMPTY key store the configuration names (`[storage]`: the file store's directory or
//! the PostgreSQL database), offline: on the appliance before it boots, or on an operator's
//! machine with the same configuration.
//!
//! The records are written verbatim (header, records, sealed head, as the appliance wrote them).
//! Without the master key (the usual case: it is only ever released to an attested appliance)
//! only the file's structure and SHA-256 are checked, not its MACs: the next boot verifies every
//! record, the chain and the sealed head, as for any store, and refuses a changed one. With
//! `--master-key-file` (development stores whose master key is a file) the backup's MAC and every
//! record are verified first.
//!
//! The restored store is older than the head the key-release service holds: the appliance
//! refuses it (a rollback) until the KRS operator moves the deployment's head to the backup's
//! (`keyward krs heads set ... --backup FILE`). That is deliberate: putting an older store back
//! is exactly the attack the anchor stops, so recovery is the operator's explicit, logged act.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use keyward_config::StorageBackend;
use keyward_keystore::backup;
use keyward_keystore::{KeyStore, MasterKeySource};

/// `keyward store ...`: offline key store commands.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Load a backup (`keyward admin backup --out FILE`) into the empty key store of CONFIG's
    /// [storage] (a file store directory or the PostgreSQL database). Refuses a store that is
    /// not empty. The appliance must be stopped.
    Restore {
        /// The appliance configuration whose [storage] to restore into (only that section is
        /// read: a file holding just [storage] will do).
        #[arg(long, short = 'c', env = "KEYWARD_CONFIG")]
        config: PathBuf,
        /// Also verify the backup's MAC and every record with this master key file (32 raw
        /// bytes, mode 0600; development stores). Without it the MACs are checked at the next
        /// boot.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
        /// The backup file.
        file: PathBuf,
    },
    /// Create or upgrade a PostgreSQL store's schema (the same as `keyward admin store
    /// migrate`).
    Migrate {
        /// The appliance configuration naming the database.
        #[arg(long, short = 'c', env = "KEYWARD_CONFIG")]
        config: PathBuf,
    },
}

/// Run `keyward store`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, master_key_file, file) = match args.cmd {
        Cmd::Restore {
            config,
            master_key_file,
            file,
        } => (config, master_key_file, file),
        Cmd::Migrate { config } => {
            return crate::cli::store_command(keyward_admin::StoreCommand::Migrate { config })
        }
    };
    let started = std::time::Instant::now();
    let storage = match keyward_config::load_storage(&config)? {
        Ok(s) => s,
        Err(problems) => {
            for p in &problems {
                eprintln!("keyward: {}: {p}", config.display());
            }
            anyhow::bail!("{}: [storage] is not usable", config.display());
        }
    };
    let shown = file.display().to_string();
    let bytes = read_bounded(&file)?;
    let b = backup::parse(&bytes).map_err(|e| anyhow::anyhow!("backup {shown}: {e}"))?;
    let verified = match &master_key_file {
        Some(path) => {
            let mk = crate::FileMasterKey { path: path.clone() }
                .obtain()
                .with_context(|| format!("--master-key-file {}", path.display()))?;
            b.verify(&mk)
                .map_err(|e| anyhow::anyhow!("backup {shown}: {e}"))?;
            "MAC and every record verified with the master key file"
        }
        None => {
            "SHA-256 and structure checked; the MACs need the master key: the next boot verifies \
             every record"
        }
    };
    let mut backend: Box<dyn KeyStore> = match &storage.backend {
        StorageBackend::File => Box::new(
            keyward_keystore::FileKeyStore::open(&storage.dir).with_context(|| {
                format!(
                    "key store {} (is the appliance still running?)",
                    storage.dir.display()
                )
            })?,
        ),
        StorageBackend::Postgres(pg) => Box::new(
            keyward_store_pg::PgKeyStore::connect(&crate::storage::pg_config(pg))
                .context("key store database")?,
        ),
    };
    let r = b
        .restore_into(backend.as_mut())
        .map_err(|e| anyhow::anyhow!("restoring backup {shown}: {e}"))?;
    let body = b.body();
    println!(
        "{}",
        serde_json::json!({
            "restored": r.location,
            "backup": file,
            "store_id": r.store_id,
            "seq": r.seq,
            "records": r.records,
            "backup_created": keyward_keystore::unix_rfc3339(body.created),
            "backup_keyward_version": body.keyward_version,
            "verified": verified,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        })
    );
    eprintln!(
        "keyward: restored store {} at record {} into {}. If the key-release service holds a \
         newer head of this deployment (changes were made after this backup), the appliance \
         refuses this store (rollback) until the KRS operator runs: keyward krs heads set \
         --config KRS_CONFIG --deployment NAME --backup {}",
        r.store_id, r.seq, r.location, shown
    );
    Ok(ExitCode::SUCCESS)
}

/// Read at most [`backup::MAX_BACKUP_BYTES`] of `path`.
fn read_bounded(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("backup {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(backup::MAX_BACKUP_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading backup {}", path.display()))?;
    Ok(bytes)
}
