//! `keyward`: argument parsing and dispatch only. Each subcommand's arguments and behaviour live
//! in its crate's `cli` module; the few commands that join two crates (`verify --url`, `admin
//! trust`, `demo`) live beside this file. Which subcommands exist is a build choice: the image
//! builds `--no-default-features --features appliance` (serve, config, attest).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "operator")]
mod admin_trust;
#[cfg(feature = "auditor")]
mod audit_cli;
#[cfg(feature = "dev")]
mod demo;
#[cfg(feature = "dev")]
mod fleet;
#[cfg(any(feature = "auditor", feature = "operator"))]
mod verify_cli;

/// The allocator: per-thread free lists make the request path's small allocations cheaper than
/// glibc's (see docs/performance.md). Secrets never rely on it: keys live in the locked arena.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// keyward: a confidential key appliance for AWS KMS External Key Stores.
///
/// Boots in an AMD SEV-SNP confidential VM, proves what it runs to a key-release service in
/// front of the customer's HSM, receives its master key wrapped to an in-VM ephemeral key,
/// unseals the KEKs into locked memory and serves the XKS Proxy API.
#[derive(Parser)]
#[command(name = "keyward", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the appliance: attest, release, unseal, then serve the XKS and admin APIs.
    Serve(keyward_appliance::cli::ServeArgs),
    /// Offline key store commands: restore a backup into an empty store (`store restore`).
    Store(keyward_appliance::restore::Args),
    /// Check a configuration file and report every problem with its key path.
    Config(keyward_config::cli::Args),
    /// Manage keys, grants and credentials through the mutual-TLS admin API.
    #[cfg(feature = "operator")]
    Admin(keyward_admin::Args),
    /// Run the whole pipeline on embedded defaults (simulated TEE, local key release).
    #[cfg(feature = "dev")]
    Demo(demo::Args),
    /// Verify attestation evidence offline or from a running appliance (the auditor's tool).
    #[cfg(feature = "auditor")]
    Verify(verify_cli::Args),
    /// Produce attestation evidence, or provision the TPM attestation key (operators).
    Attest(keyward_attest::cli::Args),
    /// The key-release service in front of the HSM, and its operator commands.
    #[cfg(feature = "krs")]
    Krs(keyward_krs::Args),
    /// Load-generate against any XKS proxy with SigV4-signed requests.
    #[cfg(feature = "dev")]
    Bench(Box<keyward_bench::Args>),
    /// Check audit log files offline: the hash chain, the signed checkpoints, the keys.
    #[cfg(feature = "auditor")]
    Audit(audit_cli::Args),
    /// Compute the reference values (PCRs, SNP) of a built appliance image (UKI).
    #[cfg(feature = "auditor")]
    Measure(keyward_measure::cli::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Listeners size their connection caps from the descriptor limit: lift the soft limit to
    // the hard one (the unit's LimitNOFILE) before anything binds.
    keyward_secret::raise_nofile();
    let result = match cli.command {
        Command::Serve(a) => keyward_appliance::cli::serve(a),
        Command::Store(a) => keyward_appliance::restore::run(a),
        Command::Config(a) => keyward_config::cli::run(a),
        #[cfg(feature = "operator")]
        Command::Admin(a) => {
            keyward_admin::run(a, admin_trust::run, keyward_appliance::cli::store_command)
        }
        #[cfg(feature = "dev")]
        Command::Demo(a) => demo::run(a),
        #[cfg(feature = "auditor")]
        Command::Verify(a) => verify_cli::run(a),
        Command::Attest(a) => keyward_attest::cli::run(a),
        #[cfg(feature = "krs")]
        Command::Krs(a) => keyward_krs::run(a),
        #[cfg(feature = "dev")]
        Command::Bench(a) => keyward_bench::run(*a),
        #[cfg(feature = "auditor")]
        Command::Audit(a) => audit_cli::run(a),
        #[cfg(feature = "auditor")]
        Command::Measure(a) => keyward_measure::cli::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyward: {}", error_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line (`a: b: c`), each cause once. Many of our error
/// messages already show their source (`cannot read {path}: {source}`, as thiserror's `source`
/// field is also the error's `source()`), so anyhow's `{:#}` printed it twice
/// (`... (os error 2): No such file or directory (os error 2)`): a cause whose text is already
/// in the line is left out.
fn error_line(e: &anyhow::Error) -> String {
    keyward_agent::error_chain(e.as_ref())
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Shows {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the store")]
    struct Hides {
        #[source]
        source: std::io::Error,
    }

    fn enoent() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::NotFound)
    }

    #[test]
    fn each_cause_is_printed_once() {
        let shows = anyhow::Error::new(Shows {
            path: "/x".into(),
            source: enoent(),
        });
        let cause = enoent().to_string();
        let line = error_line(&shows);
        assert_eq!(line.matches(&cause).count(), 1, "{line}");
        assert_eq!(line, format!("cannot read /x: {cause}"));
        // A message that does not show its source still gets it, after a colon.
        let hides = anyhow::Error::new(Hides { source: enoent() }).context("serve");
        assert_eq!(
            error_line(&hides),
            format!("serve: cannot open the store: {cause}")
        );
    }
}
