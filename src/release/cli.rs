//! Command-line entry point (placeholder until its owner lands it).

use std::process::ExitCode;

/// Arguments (placeholder).
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run the command (placeholder).
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
