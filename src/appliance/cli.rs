//! Command-line entry point (placeholder until its owner lands it).

use std::process::ExitCode;

/// Arguments (placeholder).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

/// Run the command (placeholder).
pub fn serve(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
