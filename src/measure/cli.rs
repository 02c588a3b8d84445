//! `keyward measure`: the reference values of a built appliance image, as JSON, for the KRS
//! policy and for auditors who rebuild the image and compare.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Map, Value};
use sev::measurement::vcpu_types::CpuType;

use super::snp::{ec2_launch_digest, SnpLaunch};
use super::{
    ovmf_empty_secure_boot_vars, pcr11_events, pcr15_events, pcr4_events, pcr7_events, replay,
    stub_version, Bank, Event, PHASES_UNTIL_READY,
};

/// Arguments of `keyward measure`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The unified kernel image (image/build/keyward.efi).
    #[arg(long)]
    pub uki: PathBuf,
    /// The Secure Boot variable store PCR 7 is computed for: `ovmf-empty` (the qemu test:
    /// Debian's OVMF with no keys enrolled) or `none` (leave PCR 7 out, as for EC2 unless the
    /// AMI was registered with its own --uefi-data).
    #[arg(long, default_value = "ovmf-empty", value_parser = ["ovmf-empty", "none"])]
    pub pcr7: String,
    /// The pins file given as user data; adds the expected PCR 15.
    #[arg(long)]
    pub pins: Option<PathBuf>,
    /// AWS's EC2 firmware (ovmf_img.fd from AWS's published UEFI build): adds the SEV-SNP
    /// launch measurements. Without it no SNP values are written.
    #[arg(long, env = "AWS_OVMF")]
    pub aws_ovmf: Option<PathBuf>,
    /// vCPU counts to compute SNP measurements for (the instance sizes the product supports).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32,48,64")]
    pub vcpus: Vec<u32>,
    /// vCPU type for the SNP VMSA: `epyc-v4`, `milan` or `genoa`.
    #[arg(long, default_value = "epyc-v4", value_parser = ["epyc-v4", "milan", "genoa"])]
    pub vcpu_type: String,
    /// Write the JSON here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn events_json(events: &[Event]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                json!({"pcr": e.pcr, "type": e.kind, "what": e.what,
                       "sha256": hex::encode(&e.sha256), "sha384": hex::encode(&e.sha384)})
            })
            .collect(),
    )
}

/// Run `keyward measure`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let uki =
        std::fs::read(&args.uki).with_context(|| format!("reading {}", args.uki.display()))?;
    let mut events = pcr4_events(&uki)?;
    if args.pcr7 == "ovmf-empty" {
        events.extend(pcr7_events(&ovmf_empty_secure_boot_vars()));
    }
    events.extend(pcr11_events(&uki, &PHASES_UNTIL_READY)?);
    if let Some(p) = &args.pins {
        let pins = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        events.extend(pcr15_events(&pins));
    }
    let mut pcr_list = vec![4u32];
    if args.pcr7 != "none" {
        pcr_list.push(7);
    }
    pcr_list.extend([11, 12]);
    if args.pins.is_some() {
        pcr_list.push(15);
    }

    let mut banks = Map::new();
    for bank in Bank::ALL {
        let mut pcrs = Map::new();
        for &pcr in &pcr_list {
            pcrs.insert(
                pcr.to_string(),
                Value::String(hex::encode(replay(&events, pcr, bank))),
            );
        }
        banks.insert(bank.name().to_string(), Value::Object(pcrs));
    }

    let pe = super::pe::Pe::parse(&uki)?;
    let cmdline = pe.section_data(".cmdline")?.map(|c| {
        String::from_utf8_lossy(&c)
            .trim_end_matches('\0')
            .to_string()
    });
    let roothash = cmdline
        .as_deref()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|w| w.strip_prefix("roothash="))
        })
        .map(str::to_string);

    let (snp, snp_note) = match &args.aws_ovmf {
        None => (
            Value::Null,
            "no AWS_OVMF firmware file given: no SEV-SNP launch measurements written".to_string(),
        ),
        Some(ovmf) => {
            let vcpu_type = match args.vcpu_type.as_str() {
                "milan" => CpuType::EpycMilan,
                "genoa" => CpuType::EpycGenoa,
                _ => CpuType::EpycV4,
            };
            let fw = std::fs::read(ovmf).with_context(|| format!("reading {}", ovmf.display()))?;
            let mut list = Vec::new();
            for &vcpus in &args.vcpus {
                let launch = SnpLaunch {
                    vcpus,
                    vcpu_type,
                    guest_features: 0x1,
                    direct_boot: None,
                };
                list.push(
                    json!({"vcpus": vcpus, "measurement": ec2_launch_digest(ovmf, &launch)?}),
                );
            }
            (
                json!({"firmware_sha256": hex::encode(Bank::Sha256.hash(&fw)), "vmm_type": "ec2",
                       "vcpu_type": args.vcpu_type, "guest_features": "0x1", "measurements": list}),
                "computed like sev-snp-measure --mode snp --vmm-type ec2".to_string(),
            )
        }
    };

    let doc = json!({
        "format": "keyward-image-reference/1",
        "image": {
            "uki_sha256": hex::encode(Bank::Sha256.hash(&uki)),
            "uki_bytes": uki.len(),
            "stub": stub_version(&uki),
            "cmdline": cmdline,
            "roothash": roothash,
        },
        "pcr7_variable_store": args.pcr7,
        "pcr_phase": "ready",
        "pcrs": banks,
        "events": events_json(&events),
        "snp": snp,
        "snp_note": snp_note,
    });
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
