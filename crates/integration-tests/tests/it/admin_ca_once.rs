//! The operator CA file is on the untrusted data volume and is read ONCE: the boot pipeline
//! checks those bytes against the `admin_ca_sha256` pin and the admin listener trusts exactly
//! them. Replayed here in process with the real boot pipeline and listeners: a master-key source
//! that, while the "release" runs (after the check, before the admin listener is bound), swaps
//! the CA file for the host's own CA. The host's operator certificate is still refused and the
//! genuine one accepted. Also: a CA file that differs from the pin stops the boot, and a release
//! configuration with `[admin]` but no `admin_ca_sha256` is a config error naming the field.

use crate::serve_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_admin::{write_file, Ca};
use keyward_appliance::{BootError, MasterKeySource};
use keyward_secret::Key32;
use serve_common::*;

/// Stands in for the release: swaps the CA file (the host's move), then returns a key.
struct SwapDuringRelease {
    ca_file: PathBuf,
    host_ca_pem: String,
    key: [u8; 32],
}

impl MasterKeySource for SwapDuringRelease {
    fn name(&self) -> &'static str {
        "release"
    }
    fn obtain(&self) -> Result<Key32, keyward_appliance::MasterKeyError> {
        std::fs::write(&self.ca_file, &self.host_ca_pem).unwrap();
        Ok(Key32::from_bytes(&self.key).unwrap())
    }
    fn attested(&self) -> bool {
        true
    }
}

fn profile(d: &Path, name: &str, addr: &str, cert: &str, key: &str) -> PathBuf {
    let p = d.join(name);
    std::fs::write(
        &p,
        format!(
            "url = \"https://{addr}\"\nca_cert = \"server-ca.pem\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"\n"
        ),
    )
    .unwrap();
    p
}

fn release_config(setup: &ServeSetup, pin: Option<&str>) -> String {
    let pin_line = pin
        .map(|p| format!("admin_ca_sha256 = \"{p}\"\n"))
        .unwrap_or_default();
    let cfg = std::fs::read_to_string(&setup.config).unwrap().replace(
        "[master_key]\nsource = \"file\"\nfile = \"master.key\"\n",
        &format!(
            "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"127.0.0.1:9\"\nkrs_tls_spki_sha256 = \"{}\"\nreceipt_spki_sha256 = \"{}\"\n{pin_line}attesters = [\"simulated-snp\"]\n",
            "11".repeat(32),
            "22".repeat(32)
        ),
    );
    assert!(cfg.contains("source = \"release\""));
    cfg
}

fn ca_sha256(pem: &str) -> String {
    use sha2::Digest;
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    hex::encode(sha2::Sha256::digest(der.as_ref()))
}

#[test]
fn the_admin_listener_trusts_the_checked_bytes() {
    let setup = ServeSetup::new();
    let d = setup.dir.path();
    let genuine_pem = setup.ca_obj.cert_pem();
    std::fs::write(d.join("server-ca.pem"), &genuine_pem).unwrap();
    // The host's own operator CA and an operator certificate from it.
    let host_ca = Ca::new("host's operator CA").unwrap();
    let host_op = host_ca.client("host-admin", 1).unwrap();
    write_file(&d.join("host.pem"), host_op.cert_pem.as_bytes(), false).unwrap();
    write_file(&d.join("host-key.pem"), host_op.key_pem.as_bytes(), true).unwrap();

    let text = release_config(&setup, Some(&ca_sha256(&genuine_pem)));
    let loaded = keyward_config::load_str(&text, d);
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{:?}", loaded.problems));
    let source = SwapDuringRelease {
        ca_file: setup.ca.clone(),
        host_ca_pem: host_ca.cert_pem(),
        key: rand32(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = rt
        .block_on(keyward_appliance::boot(
            &config,
            Box::new(source),
            keyward_appliance::Notifier::from_env(),
        ))
        .unwrap_or_else(|e| panic!("boot: {e}"));
    // The host did swap the file while the "release" ran.
    assert_eq!(
        std::fs::read_to_string(&setup.ca).unwrap(),
        host_ca.cert_pem()
    );
    let admin_addr = running.addresses.admin.unwrap().to_string();
    let served = rt.spawn(running.serve_until(stop_rx, |_| {}));

    let host = profile(d, "host.toml", &admin_addr, "host.pem", "host-key.pem");
    let genuine = profile(d, "genuine.toml", &admin_addr, "admin.pem", "admin-key.pem");
    let out = admin(&host, &["kms-config", "main"]);
    assert!(
        !out.status.success(),
        "the host's operator certificate got in: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    assert!(admin_ok(&genuine, &["stores"]).contains("main"));

    stop_tx.send(true).unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), served)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    });

    // A CA file that is not the pinned one (the host's, now on the disk): the boot stops
    // before anything is attested or released.
    let source = SwapDuringRelease {
        ca_file: d.join("unused.pem"),
        host_ca_pem: String::new(),
        key: rand32(),
    };
    let err = rt
        .block_on(keyward_appliance::boot(
            &config,
            Box::new(source),
            keyward_appliance::Notifier::from_env(),
        ))
        .err()
        .expect("booted with a CA file other than the pinned one");
    assert!(matches!(err, BootError::Pins(_)), "{err}");
    assert!(
        err.to_string().contains("not the admin_ca_sha256 pin"),
        "{err}"
    );
    assert!(!d.join("unused.pem").exists(), "the release ran anyway");
}

#[test]
fn release_with_admin_needs_the_ca_pin() {
    let setup = ServeSetup::new();
    std::fs::write(&setup.config, release_config(&setup, None)).unwrap();
    for cmd in [&["config", "check"][..], &["serve", "--config"]] {
        let out = std::process::Command::new(BIN)
            .args(cmd)
            .arg(&setup.config)
            .current_dir(setup.dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd:?} accepted it");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("master_key.release.admin_ca_sha256") && text.contains("required"),
            "{cmd:?}: {text}"
        );
    }
}
