//! `keyward measure`: the reference values of a built appliance image, as JSON, for the KRS
//! policy and for auditors who rebuild the image and compare.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Map, Value};
use sev::measurement::vcpu_types::CpuType;

use super::snp::{ec2_launch_digest, SnpLaunch};
use super::{
    ovmf_empty_secure_boot_vars, pcr11_events, pcr15_events, pcr15_input, pcr4_events, pcr7_events,
    replay, stub_version, Bank, Event, PHASES_UNTIL_READY,
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
    /// The user data given to the members (the four pins; for a fleet member its [deploy],
    /// [storage] and [fleet] too); adds the expected PCR 15. Its password lines are dropped
    /// first, as keyward-pins does (they are not measured).
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
    /// Write the reference values (`keyward-reference-values/1`, attestation/reference-values.md)
    /// here; checked with the strict parser before it is written.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write every measurement event, every PCR in both banks and the SNP details here (JSON).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Write a KRS policy `[tpm]` section built from these values here (TOML).
    #[arg(long)]
    pub tpm_policy: Option<PathBuf>,
    /// Write a KRS policy `[nitro]` section (NitroTPM, SHA-384) here: PCR 4, 7 (unless
    /// `--pcr7 none`) and, with `--pins`, PCR 15 (this customer's pins: KRS URL, both KRS
    /// pins and the operator CA), so the NitroTPM evidence itself binds the pins.
    #[arg(long)]
    pub nitro_policy: Option<PathBuf>,
    /// TPM Name (hex) of an attestation key the `[tpm]` section registers (repeatable).
    #[arg(long)]
    pub ak_name: Vec<String>,
    /// PCR bank of the `tpm` reference values and the `[tpm]` policy: sha256 or sha384.
    #[arg(long, default_value = "sha256", value_parser = ["sha256", "sha384"])]
    pub bank: String,
    /// Release name, version and commit recorded in the reference values.
    #[arg(long, default_value = "keyward")]
    pub release_name: String,
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub release_version: String,
    /// The 40-hex commit the image was built from (default: zeros, "unknown").
    #[arg(long, default_value = "0000000000000000000000000000000000000000")]
    pub git_commit: String,
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<u64>,
    /// Further published files to list as artifacts (kind=path, kind one of rootfs, disk, other).
    #[arg(long)]
    pub artifact: Vec<String>,
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

/// The published reference values (`keyward-reference-values/1`), validated by the strict
/// parser of `verify::refvalues` before they are returned.
#[allow(clippy::too_many_arguments)]
fn reference_values(
    args: &Args,
    uki: &[u8],
    events: &[Event],
    pcr_list: &[u32],
    bank: Bank,
    cmdline: Option<String>,
    roothash: Option<String>,
    snp: &Value,
) -> anyhow::Result<String> {
    let mut artifacts = vec![json!({"name": "keyward.efi", "kind": "uki",
        "sha256": hex::encode(Bank::Sha256.hash(uki)), "sha384": hex::encode(Bank::Sha384.hash(uki))})];
    for spec in &args.artifact {
        let (kind, path) = spec.split_once('=').context("--artifact wants kind=path")?;
        let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().to_string());
        artifacts.push(
            json!({"name": name, "kind": kind, "sha256": hex::encode(Bank::Sha256.hash(&data))}),
        );
    }
    // the release's PCRs only: PCR 15 depends on each customer's pins, not on the release
    let tpm_pcrs: Vec<Value> = pcr_list
        .iter()
        .filter(|&&p| p != 15)
        .map(|&p| json!({"pcr": p, "values": [hex::encode(replay(events, p, bank))]}))
        .collect();
    let mut doc = json!({
        "format": keyward_verify::refvalues::FORMAT,
        "release": {"name": args.release_name, "version": args.release_version,
                    "git_commit": args.git_commit, "source_date_epoch": args.source_date_epoch},
        "artifacts": artifacts,
        "image": {"kernel_cmdline": cmdline, "dm_verity_root_hash": roothash},
        "nitrotpm": {
            "pcr4": [hex::encode(replay(events, 4, Bank::Sha384))],
            "pcr12": hex::encode(replay(events, 12, Bank::Sha384)),
            "tool": format!("keyward measure {} (UKI + embedded kernel Authenticode, as nitro-tpm-pcr-compute for systemd-stub < 258)", env!("CARGO_PKG_VERSION")),
        },
        "tpm": {"bank": bank.name(), "pcrs": tpm_pcrs, "pcr11_phases": PHASES_UNTIL_READY,
                "tool": format!("keyward measure {} (edk2 PCR 4/7 rules, systemd-stub 252 PCR 11)", env!("CARGO_PKG_VERSION"))},
    });
    if let Some(list) = snp.get("measurements").and_then(Value::as_array) {
        let fw = snp.get("firmware_sha256").cloned().unwrap_or(Value::Null);
        let launch: Vec<Value> = list
            .iter()
            .map(|m| json!({"platform": "aws-ec2", "firmware": "AWS_OVMF", "firmware_sha256": fw,
                 "vcpus": m["vcpus"], "measurement": m["measurement"],
                 "tool": format!("keyward measure (sev crate, vmm-type ec2, --vcpus {})", m["vcpus"])}))
            .collect();
        doc["snp"] = json!({"launch": launch});
    }
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    keyward_verify::refvalues::ReferenceValues::from_json(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("the reference values do not pass their own parser: {e}"))?;
    Ok(text)
}

/// A KRS policy `[tpm]` section for these values: the quote covers PCR 4, 7, 11, 12 (and 15
/// with pins); 4, 7 and 12 replay from the firmware event log; 11 is the log's stub events
/// plus the pcrphase words; 15 is one extend with the pins digest; and every quoted PCR must
/// equal the value computed here.
fn tpm_policy(
    args: &Args,
    events: &[Event],
    pcr_list: &[u32],
    bank: Bank,
) -> anyhow::Result<String> {
    use keyward_verify::tpm::{AllowedPcr, TpmPolicy, UserspacePcr};
    let pcrs: Vec<u8> = pcr_list
        .iter()
        .filter_map(|&p| u8::try_from(p).ok())
        .collect();
    let mut userspace = vec![UserspacePcr {
        pcr: 11,
        words: PHASES_UNTIL_READY.iter().map(|w| w.to_string()).collect(),
        digests: vec![],
    }];
    if pcr_list.contains(&15) {
        let digests = events
            .iter()
            .filter(|e| e.pcr == 15)
            .map(|e| hex::encode(e.digest(bank)))
            .collect();
        userspace.push(UserspacePcr {
            pcr: 15,
            words: vec![],
            digests,
        });
    }
    let policy = TpmPolicy {
        registered_aks: args.ak_name.clone(),
        bank: bank.name().to_string(),
        pcrs: pcrs.clone(),
        replay: Some(
            pcrs.iter()
                .copied()
                .filter(|p| [4, 7, 12].contains(p))
                .collect(),
        ),
        userspace,
        allowed: pcrs
            .iter()
            .map(|&p| AllowedPcr {
                pcr: p,
                values: vec![hex::encode(replay(events, u32::from(p), bank))],
            })
            .collect(),
    };
    #[derive(serde::Serialize)]
    struct Section<'a> {
        tpm: &'a TpmPolicy,
    }
    Ok(format!(
        "# [tpm] policy section from `keyward measure` of {} {}: paste into the KRS policy.\n{}",
        args.release_name,
        args.release_version,
        toml::to_string(&Section { tpm: &policy })?
    ))
}

/// A KRS policy `[nitro]` section: SHA-384 values of the measured PCRs except 11 and 12 (PCR 12
/// is checked in code; PCR 11 is not in the NitroTPM policy), PCR 15 only with `--pins`.
fn nitro_policy(args: &Args, events: &[Event], pcr_list: &[u32]) -> String {
    let mut out = format!(
        "# [nitro] policy section from `keyward measure` of {} {}{}: paste into the KRS policy.\n[nitro]\nmax_age = \"5m\"\npcrs = [\n",
        args.release_name,
        args.release_version,
        if args.pins.is_some() { " for these pins" } else { "" }
    );
    for &pcr in pcr_list.iter().filter(|&&p| p != 11 && p != 12) {
        out += &format!(
            "  {{ pcr = {pcr}, values = [\"{}\"] }},\n",
            hex::encode(replay(events, pcr, Bank::Sha384))
        );
    }
    out += "]\n";
    out
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
        events.extend(pcr15_events(&pcr15_input(&pins)));
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
        "format": "keyward-image-measurements/1",
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
    let bank = if args.bank == "sha384" {
        Bank::Sha384
    } else {
        Bank::Sha256
    };
    let refvals = reference_values(
        &args,
        &uki,
        &events,
        &pcr_list,
        bank,
        cmdline,
        roothash,
        &doc["snp"],
    )?;
    let mut summary = String::new();
    for b in Bank::ALL {
        for &pcr in &pcr_list {
            summary += &format!(
                "{} PCR {pcr:>2} {}\n",
                b.name(),
                hex::encode(replay(&events, pcr, b))
            );
        }
    }
    summary += &format!("{snp_note}\n");
    if let Some(path) = &args.out {
        std::fs::write(path, refvals).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.events {
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.nitro_policy {
        std::fs::write(path, nitro_policy(&args, &events, &pcr_list))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.tpm_policy {
        std::fs::write(path, tpm_policy(&args, &events, &pcr_list, bank)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.out.is_none() && args.events.is_none() && args.tpm_policy.is_none() {
        print!("{}", serde_json::to_string_pretty(&doc)? + "\n");
    } else {
        print!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}
