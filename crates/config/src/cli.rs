//! `keyward config check FILE`: report every problem of a configuration file with its key path.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Severity;

/// Check configuration files.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check FILE: print every problem with its key path (exit 1), or one OK line (exit 0).
    ///
    /// Errors are what makes the file unusable and what real AWS KMS would refuse (such as a
    /// SigV4 secret outside 43-64 characters); warnings do not change the exit code.
    Check {
        /// The configuration file, as given to `keyward serve --config`.
        file: PathBuf,
    },
}

/// Run the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check { file } => check(file),
    }
}

fn check(file: PathBuf) -> anyhow::Result<ExitCode> {
    let loaded = super::load_file(&file)?;
    let name = file.display();
    let mut errors = 0;
    let mut warnings = 0;
    for problem in &loaded.problems {
        match problem.severity {
            Severity::Warning => warnings += 1,
            _ => errors += 1,
        }
        println!("{name}: {problem}");
    }
    if errors > 0 {
        println!("{name}: {errors} error(s), {warnings} warning(s)");
        return Ok(ExitCode::from(1));
    }
    let (stores, creds) = loaded
        .config
        .as_ref()
        .map(|c| {
            (
                c.key_stores.len(),
                c.key_stores
                    .iter()
                    .map(|s| s.credentials.len())
                    .sum::<usize>(),
            )
        })
        .unwrap_or((0, 0));
    println!("{name}: OK ({stores} key store(s), {creds} credential(s), {warnings} warning(s))");
    Ok(ExitCode::SUCCESS)
}
