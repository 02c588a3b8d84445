//! The appliance image's systemd units and scripts: the hardening the issue requires is present
//! (checked from the unit text), `systemd-analyze security --offline=true` rates keyward.service
//! at an exposure of 3.0 or less, and every image script (and scripts/*.sh, .ci/run) passes
//! shellcheck.

use crate::tools;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("systemd").join(name)).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(u: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    u.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn keyward_service_has_every_required_setting() {
    let u = unit("keyward.service");
    let want = [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("TimeoutStartSec", "infinity"),
        ("User", "keyward"),
        ("SupplementaryGroups", "tss"),
        ("CapabilityBoundingSet", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "keyward"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("LimitCORE", "0"),
        ("DevicePolicy", "closed"),
    ];
    for (k, v) in want {
        assert!(
            values(&u, k).contains(&v),
            "keyward.service: {k}={v} missing (has {:?})",
            values(&u, k)
        );
    }
    assert!(values(&u, "WatchdogSec")
        .iter()
        .any(|v| !v.is_empty() && *v != "0"));
    assert!(values(&u, "StartLimitBurst")
        .iter()
        .any(|v| v.parse::<u32>().is_ok_and(|n| n > 0)));
    assert!(values(&u, "LimitMEMLOCK").iter().any(|v| !v.is_empty()));
    assert!(values(&u, "SystemCallFilter").contains(&"@system-service"));
    assert!(values(&u, "RestrictAddressFamilies")
        .iter()
        .any(|v| v.contains("AF_INET")));
    assert_eq!(
        values(&u, "DeviceAllow"),
        ["/dev/tpmrm0 rw", "/dev/sev-guest rw"]
    );
    assert!(values(&u, "LoadCredential")
        .iter()
        .any(|v| v.ends_with("binary_bios_measurements")));
    let after = values(&u, "After").join(" ");
    for dep in [
        "network-online.target",
        "systemd-pcrphase.service",
        "keyward-pins.service",
    ] {
        assert!(
            after.contains(dep),
            "keyward.service must be ordered after {dep}"
        );
    }
    assert!(values(&u, "AmbientCapabilities")
        .iter()
        .all(|v| v.is_empty()));

    let pins = unit("keyward-pins.service");
    assert!(values(&pins, "Type").contains(&"oneshot"));
    assert!(values(&pins, "RemainAfterExit").contains(&"yes"));
    assert!(values(&pins, "Before")
        .iter()
        .any(|v| v.contains("keyward.service")));

    let rules = std::fs::read_to_string(repo().join("systemd/70-keyward.rules")).unwrap();
    assert!(rules.contains(r#"KERNEL=="sev-guest""#) && rules.contains(r#"GROUP="keyward""#));
}

fn exposure(unit: &Path) -> f64 {
    let out = Command::new(tools::need("systemd-analyze", "systemd"))
        .args(["security", "--offline=true"])
        .arg(unit)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{text}"));
    let tail = line.split(':').next_back().unwrap().trim();
    tail.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn keyward_service_exposure_is_at_most_3() {
    let e = exposure(&repo().join("systemd/keyward.service"));
    eprintln!("systemd-analyze security --offline=true keyward.service: {e}");
    assert!(e <= 3.0, "exposure {e} > 3.0");
    let krs = exposure(&repo().join("systemd/keyward-krs.service"));
    assert!(krs <= 3.0, "keyward-krs.service exposure {krs} > 3.0");
}

#[test]
fn image_scripts_pass_shellcheck() {
    let shellcheck = tools::need("shellcheck", "shellcheck");
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("image/scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    if let Ok(dir) = std::fs::read_dir(repo().join("scripts")) {
        files.extend(
            dir.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "sh")),
        );
    }
    files.push(repo().join(".ci/run"));
    files.push(repo().join("image/aws/ami.sh"));
    files.push(repo().join("image/mkosi.postinst"));
    files.push(repo().join("image/rootfs/usr/libexec/keyward/keyward-pins"));
    // The set-up scripts of `make run` / `make test` and the CI entry point too.
    files.push(repo().join("scripts/setup.sh"));
    files.push(repo().join("scripts/run.sh"));
    files.push(repo().join(".ci/run"));
    assert!(files.len() >= 11, "scripts not found: {files:?}");
    let out = Command::new(shellcheck)
        .arg("-x")
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
