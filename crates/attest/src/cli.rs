//! `keyward attest`: operator commands for the evidence producers. `provision-ak` creates the
//! registered TPM attestation key (run once, before first boot) and prints the TPM Name the
//! policy's `[tpm] registered_aks` must list; `evidence` produces one evidence bundle (JSON on
//! stdout, the form `keyward verify --evidence` reads) from the named attesters.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::live::runtime_binding;
use super::nitrotpm::{NitroTpmAttester, NitroTpmConfig};
use super::snp::SnpAttester;
use super::tpm::{provision_ak, TpmAttester, TpmConfig, DEFAULT_AK_HANDLE, DEFAULT_EVENT_LOG};
use super::{Attester, Binding};
use keyward_evidence::Bank;
use keyward_evidence::EvidenceBundle;

/// Produce attestation evidence, or provision the TPM attestation key.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Create the ECDSA P-256 attestation key under the EK, make it persistent, print its Name.
    ProvisionAk {
        /// TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`).
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tcti: String,
        /// Persistent handle (hex).
        #[arg(long, default_value = "0x81010002")]
        handle: String,
    },
    /// Produce one evidence bundle (JSON on stdout).
    Evidence {
        /// Attesters, in order: snp, tpm, nitrotpm, simulated-snp.
        #[arg(long = "attester", required = true)]
        attesters: Vec<String>,
        /// Live-attestation binding: the 32-byte nonce (hex) ...
        #[arg(long, requires = "xks_spki_sha256", conflicts_with = "user_data")]
        runtime_nonce: Option<String>,
        /// ... and SHA-256 (hex) of the XKS certificate's SPKI.
        #[arg(long)]
        xks_spki_sha256: Option<String>,
        /// Otherwise: the value (hex, up to 64 bytes) used as REPORT_DATA (zero-padded), TPM
        /// qualifying data and NitroTPM user data.
        #[arg(long)]
        user_data: Option<String>,
        /// TCTI for tpm / nitrotpm.
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tcti: String,
        /// AK handle for tpm (hex).
        #[arg(long, default_value = "0x81010002")]
        ak_handle: String,
        /// PCR bank for tpm.
        #[arg(long, default_value = "sha256")]
        bank: String,
        /// PCRs for tpm, comma-separated.
        #[arg(
            long,
            default_value = "0,1,2,3,4,5,6,7,11,12,15",
            value_delimiter = ','
        )]
        pcrs: Vec<u8>,
        /// Event log for tpm (`none` to omit).
        #[arg(long, default_value = DEFAULT_EVENT_LOG)]
        event_log: String,
    },
}

fn parse_handle(s: &str) -> anyhow::Result<u32> {
    let t = s.trim_start_matches("0x");
    u32::from_str_radix(t, 16).with_context(|| format!("handle {s:?} is not hex"))
}

fn hex_arg(name: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(s.trim()).with_context(|| format!("--{name} is not hex"))
}

/// Print to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{s}");
}

/// Run `keyward attest`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Cmd::ProvisionAk { tcti, handle } => {
            let ak = provision_ak(&tcti, parse_handle(&handle)?)?;
            out(&serde_json::json!({
                    "handle": format!("0x{:08x}", ak.handle),
                    "name": ak.name_hex,
                    "policy": format!("[tpm]\nregistered_aks = [\"{}\"]", ak.name_hex),
            })
            .to_string());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Evidence {
            attesters,
            runtime_nonce,
            xks_spki_sha256,
            user_data,
            tcti,
            ak_handle,
            bank,
            pcrs,
            event_log,
        } => {
            let binding = match (runtime_nonce, xks_spki_sha256, user_data) {
                (Some(n), Some(s), _) => {
                    let n: [u8; 32] = hex_arg("runtime-nonce", &n)?
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("--runtime-nonce must be 32 bytes"))?;
                    let s: [u8; 32] = hex_arg("xks-spki-sha256", &s)?
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("--xks-spki-sha256 must be 32 bytes"))?;
                    runtime_binding(&n, &s)
                }
                (None, None, Some(u)) => {
                    let u = hex_arg("user-data", &u)?;
                    if u.len() > 64 {
                        bail!("--user-data is at most 64 bytes");
                    }
                    let mut rd = [0u8; 64];
                    rd[..u.len()].copy_from_slice(&u);
                    Binding {
                        report_data: rd,
                        user_data: u,
                        nonce: None,
                        public_key: None,
                    }
                }
                _ => bail!("give --user-data HEX, or --runtime-nonce HEX --xks-spki-sha256 HEX"),
            };
            let bank = Bank::from_name(&bank).context("--bank is sha256 or sha384")?;
            let mut list: Vec<Box<dyn Attester>> = Vec::new();
            for a in &attesters {
                list.push(match a.as_str() {
                    "snp" => Box::new(SnpAttester::default()),
                    "tpm" => Box::new(TpmAttester::new(TpmConfig {
                        tcti: tcti.clone(),
                        ak_handle: parse_handle(&ak_handle).unwrap_or(DEFAULT_AK_HANDLE),
                        bank,
                        pcrs: pcrs.clone(),
                        event_log: (event_log != "none").then(|| PathBuf::from(&event_log)),
                    })),
                    "nitrotpm" => Box::new(NitroTpmAttester::new(NitroTpmConfig {
                        tcti: tcti.clone(),
                        ..Default::default()
                    })),
                    #[cfg(feature = "simulated")]
                    "simulated-snp" => Box::new(super::simulated::SimulatedSnpAttester::new(
                        super::simulated::DEMO_MEASUREMENT,
                    )?),
                    other => bail!("unknown attester {other:?}"),
                });
            }
            let mut bundle = EvidenceBundle {
                version: 1,
                ..Default::default()
            };
            for a in &list {
                a.attest(&binding, &mut bundle)
                    .with_context(|| format!("attester {}", a.name()))?;
            }
            out(&serde_json::to_string_pretty(&bundle)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
