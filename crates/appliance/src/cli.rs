//! `keyward serve --config FILE`: load the configuration, boot (attest, release, unseal) and
//! serve the XKS and admin APIs until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::notify::Notifier;
use keyward_config::{Config, LogFormat, MasterKeyConfig, Severity};

/// Run the appliance.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The configuration file (check it first with `keyward config check FILE`).
    #[arg(long, short = 'c', env = "KEYWARD_CONFIG")]
    config: PathBuf,
}

/// Set up logging on stderr from the `[log]` section.
pub fn init_logging(level: &str, format: LogFormat) {
    // The PostgreSQL client logs the server's NOTICEs ("relation already exists, skipping")
    // at info: only its warnings are worth an operator's line.
    let quiet = |f: tracing_subscriber::EnvFilter| match "tokio_postgres=warn".parse() {
        Ok(d) => f.add_directive(d),
        Err(_) => f,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level).map(quiet))
        .unwrap_or_else(|_| quiet(tracing_subscriber::EnvFilter::new("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Load a configuration for serving: problems that make it unusable are an error; the others
/// are logged (a KMS-incompatible secret loads, as an existing customer's file must).
pub fn load_for_serve(path: &std::path::Path) -> anyhow::Result<Config> {
    let loaded = keyward_config::load_file(path)?;
    let Some(config) = loaded.config else {
        for p in &loaded.problems {
            eprintln!("keyward: {}: {p}", path.display());
        }
        anyhow::bail!(
            "{} is not usable; `keyward config check {}` lists every problem",
            path.display(),
            path.display()
        );
    };
    init_logging(&config.log.level, config.log.format);
    for p in &loaded.problems {
        match p.severity {
            Severity::Warning => tracing::warn!("{}: {}", p.path, p.message),
            _ => tracing::error!("{}: {} (loaded anyway)", p.path, p.message),
        }
    }
    Ok(config)
}

/// The attesters the live-attestation listener (`[attestation] listen`, plain HTTP
/// `POST /attestation`) answers with: the release attesters, or the SNP device with a file key.
fn live_attesters(config: &Config) -> anyhow::Result<Vec<Box<dyn keyward_attest::Attester>>> {
    Ok(match &config.master_key {
        MasterKeyConfig::Release(r) => crate::release::build_attesters(r)?,
        MasterKeyConfig::File { .. } => vec![Box::new(keyward_attest::SnpAttester::default())],
    })
}

/// Run the command.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = load_for_serve(&args.config)?;
    let source: Box<dyn super::MasterKeySource> = match &config.master_key {
        MasterKeyConfig::File { path } => Box::new(super::FileMasterKey { path: path.clone() }),
        MasterKeyConfig::Release(r) => Box::new(
            crate::release::release_source(r, &keyward_agent::product_release())
                .context("[master_key.release]")?,
        ),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let notifier = Notifier::from_env();
        let mut running = match super::boot(&config, source, notifier).await {
            Ok(r) => r,
            Err(e) => {
                Notifier::from_env()
                    .status(&format!("boot failed: {}", keyward_agent::error_chain(&e)));
                return Err(anyhow::Error::new(e).context("boot failed"));
            }
        };
        if config.attestation.is_some() {
            running.set_attesters(live_attesters(&config)?);
        }
        let (_keep, stop) = tokio::sync::watch::channel(false);
        running.serve_until(stop, |_| {}).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `keyward admin store ...`: the storage backend of the configuration in `--config`, offline.
pub fn store_command(cmd: keyward_admin::StoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        keyward_admin::StoreCommand::Migrate { config } => {
            let loaded = keyward_config::load_file(&config)?;
            let Some(cfg) = loaded.config else {
                anyhow::bail!(
                    "{} is not usable; `keyward config check {}` lists every problem",
                    config.display(),
                    config.display()
                );
            };
            let keyward_config::StorageBackend::Postgres(pg) = &cfg.storage.backend else {
                anyhow::bail!(
                    "storage.backend: {} uses the file store ({}), which has no schema to \
                     migrate; `store migrate` is for backend = \"postgres\"",
                    config.display(),
                    cfg.storage.dir.display()
                );
            };
            let r = keyward_store_pg::migrate(&crate::storage::pg_config(pg))
                .with_context(|| "storage.url: migrating the key store database".to_string())?;
            if r.applied.is_empty() {
                println!(
                    "{}: schema version {} is current; nothing to do",
                    r.location, r.to
                );
            } else {
                println!(
                    "{}: schema migrated from version {} to {} (applied {:?})",
                    r.location, r.from, r.to, r.applied
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
