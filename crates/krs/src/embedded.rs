//! An embedded KRS for `keyward demo`: the same [`Service`] as `keyward krs serve`, on a
//! loopback port the system picks, with its keys in a SoftHSMv2 token under the demo's state
//! directory (its own `SOFTHSM2_CONF`) when `softhsm2-util` is installed, otherwise in the
//! software stand-in (`softkeys`) under the same directory, with a one-line notice. The
//! policy trusts the test signer's root (simulated SNP) and the given measurements, signed by
//! a demo policy-admin key kept in the state directory. It serves one deployment, `demo`: the
//! pins it hands out. A restart on the same state directory releases the same master key and
//! keeps the store heads (`heads.json`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::WrapChoice;
use crate::log::ReleaseLog;
use crate::service::Service;
use keyward_config::AgentConfig;
use keyward_hsm::{Hsm, HsmConfig, KeyBackend, PinSource};

/// Errors starting the embedded KRS.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A set-up step failed; `what` names it, the cause is the source.
    #[error("embedded KRS: {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `softhsm2-util --init-token` exited non-zero (the field is its stderr: its own message).
    #[error("embedded KRS: softhsm2-util --init-token: {0}")]
    InitToken(String),
    #[error("embedded KRS: TLS certificate unreadable")]
    NoCertificate,
    #[error("embedded KRS: pins digest")]
    PinsDigest,
}

fn setup<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: &'static str,
) -> impl FnOnce(E) -> EmbeddedError {
    move |e| EmbeddedError::Setup {
        what,
        source: e.into(),
    }
}

/// A running embedded KRS.
pub struct EmbeddedKrs {
    pub addr: std::net::SocketAddr,
    /// Agent settings with this KRS's pins (attesters: `simulated-snp`).
    pub agent: AgentConfig,
    /// `softhsm` or `software`.
    pub backend: &'static str,
    /// The release log path.
    pub log: PathBuf,
}

const SOFTHSM_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

fn softhsm_available() -> Option<PathBuf> {
    let util = Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .ok()?;
    if !util.status.success() {
        return None;
    }
    SOFTHSM_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn write_0600(p: &Path, bytes: &[u8]) -> Result<(), EmbeddedError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(setup("create"))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(setup("write"))
}

/// Open (initialising on first use) the demo's SoftHSM token under `dir`.
///
/// SoftHSM reads its configuration path from `SOFTHSM2_CONF` in this process's environment;
/// the demo sets it before any other thread reads the environment.
fn softhsm_backend(dir: &Path, module: PathBuf) -> Result<Hsm, EmbeddedError> {
    let tokens = dir.join("softhsm-tokens");
    std::fs::create_dir_all(&tokens).map_err(setup("token dir"))?;
    let conf = dir.join("softhsm2.conf");
    if !conf.exists() {
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .map_err(setup("softhsm2.conf"))?;
    }
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let pin_file = dir.join("hsm-pin");
    if !pin_file.exists() {
        let mut pin = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut pin);
        write_0600(&pin_file, hex::encode(pin).as_bytes())?;
    }
    let pin = std::fs::read_to_string(&pin_file).map_err(setup("hsm-pin"))?;
    let initialised = std::fs::read_dir(&tokens)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !initialised {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                "keyward-demo",
                "--so-pin",
            ])
            .arg(pin.trim())
            .arg("--pin")
            .arg(pin.trim())
            .output()
            .map_err(setup("softhsm2-util"))?;
        if !out.status.success() {
            return Err(EmbeddedError::InitToken(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
    }
    let hsm = Hsm::open(&HsmConfig {
        module,
        token_label: "keyward-demo".into(),
        pin: PinSource {
            pin_file: Some(pin_file),
            pin_env: None,
        },
        master_key_label: "keyward-master".into(),
        receipt_key_label: "keyward-receipt".into(),
    })
    .map_err(setup("SoftHSM"))?;
    if hsm.receipt_public_key().is_err() {
        hsm.init_keys().map_err(setup("krs init"))?;
    }
    Ok(hsm)
}

/// The demo policy: the default verifier policy, the test root, the given measurements.
fn demo_policy(measurements: &[[u8; 48]]) -> String {
    let list: Vec<String> = measurements.iter().map(hex::encode).collect();
    let mut out = String::new();
    for line in keyward_verify::DEFAULT_POLICY_TOML.lines() {
        if line.starts_with("policy_version") {
            out.push_str("policy_version = 1\n");
        } else if line.starts_with("name") {
            out.push_str("name = \"keyward demo (simulated SNP; never in production)\"\n");
        } else if line.starts_with("measurements") {
            out.push_str(&format!("measurements = {list:?}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&keyward_verify::testsign::test_root_policy_toml());
    out
}

/// Which key store the embedded KRS uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SoftHSMv2 when installed, else the software stand-in (with a notice).
    Auto,
    /// The software stand-in, always.
    Software,
}

/// Start the embedded KRS with its state under `dir`, for appliances without an operator CA
/// pin (see [`start_for`]).
pub fn start(
    dir: &Path,
    measurements: &[[u8; 48]],
    want: Backend,
) -> Result<EmbeddedKrs, EmbeddedError> {
    start_for(dir, measurements, want, &[])
}

/// Start the embedded KRS with its state under `dir`, serving one deployment (`demo`): the
/// pins in [`EmbeddedKrs::agent`], with `admin_ca_sha256` (empty: none). Its store heads and
/// boot keys are kept in `dir/heads.json`, so a restart on the same directory keeps them.
pub fn start_for(
    dir: &Path,
    measurements: &[[u8; 48]],
    want: Backend,
    admin_ca_sha256: &[u8],
) -> Result<EmbeddedKrs, EmbeddedError> {
    std::fs::create_dir_all(dir).map_err(setup("state dir"))?;
    let found = match want {
        Backend::Auto => softhsm_available(),
        Backend::Software => None,
    };
    let (backend, name): (Box<dyn KeyBackend>, &'static str) = match found {
        Some(module) => (Box::new(softhsm_backend(dir, module)?), "softhsm"),
        None if want == Backend::Software => (
            Box::new(crate::softkeys::SoftKeys::open_or_create(dir).map_err(setup("soft keys"))?),
            "software",
        ),
        None => {
            eprintln!(
                "keyward demo: softhsm2-util is not installed; the embedded KRS uses a software key-wrapping stand-in (master key in {}) — install softhsm2 for an HSM-backed release",
                dir.join("soft-master.key").display()
            );
            (
                Box::new(
                    crate::softkeys::SoftKeys::open_or_create(dir).map_err(setup("soft keys"))?,
                ),
                "software",
            )
        }
    };
    start_with_backend(dir, measurements, backend, name, admin_ca_sha256)
}

/// [`start_for`] with a key backend of the caller's (the fault-injection tests wrap the
/// software stand-in in one that fails on demand); `name` is reported as
/// [`EmbeddedKrs::backend`]. `dir` must exist.
pub fn start_with_backend(
    dir: &Path,
    measurements: &[[u8; 48]],
    backend: Box<dyn KeyBackend>,
    name: &'static str,
    admin_ca_sha256: &[u8],
) -> Result<EmbeddedKrs, EmbeddedError> {
    // TLS certificate (pinned by SPKI).
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    if !cert.exists() {
        let (c, k, _) = keyward_krp::generate_cert(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(setup("TLS certificate"))?;
        let _ = std::fs::remove_file(&key);
        write_0600(&key, k.as_bytes())?;
        std::fs::write(&cert, c).map_err(setup("tls.crt"))?;
    }
    let certs = keyward_pki::load_certs(&cert).map_err(setup("tls.crt"))?;
    let tls_key = keyward_pki::load_key(&key).map_err(setup("tls.key"))?;
    let tls_pin = keyward_pki::spki_sha256(certs.first().ok_or(EmbeddedError::NoCertificate)?)
        .map_err(setup("TLS certificate"))?;
    let tls = keyward_krp::server_config(certs, tls_key).map_err(setup("TLS"))?;

    // Signed policy, by a demo admin key in the state dir.
    let admin_path = dir.join("policy-admin.pem");
    if !admin_path.exists() {
        use p384::pkcs8::{EncodePrivateKey, LineEnding};
        let sk = p384::SecretKey::random(&mut rand_core::OsRng);
        let pem = sk
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(setup("admin key"))?;
        write_0600(&admin_path, pem.as_bytes())?;
    }
    let admin_pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(&admin_path).map_err(setup("admin key"))?);
    let signed = crate::policy::sign(&admin_pem, "demo", 1, demo_policy(measurements).as_bytes())
        .map_err(setup("policy"))?;
    let admin_pub = {
        use p384::pkcs8::DecodePrivateKey;
        let sk = p384::ecdsa::SigningKey::from_pkcs8_pem(&admin_pem).map_err(setup("admin key"))?;
        *sk.verifying_key()
    };
    let policy = crate::policy::verify(
        &serde_json::to_vec(&signed).map_err(setup("policy"))?,
        &admin_pub,
    )
    .map_err(setup("policy"))?;
    crate::appraiser::check_policy_text(&policy.policy).map_err(setup("policy"))?;
    crate::policy::enforce_version(&dir.join("policy.version"), &policy)
        .map_err(setup("policy"))?;

    let receipt_spki =
        keyward_krp::spki_from_sec1(&backend.receipt_public_key().map_err(setup("receipt key"))?)
            .map_err(setup("receipt key"))?;
    let log_path = dir.join("release.log");
    let log = ReleaseLog::open(&log_path).map_err(setup("release log"))?;
    let heads = crate::heads::HeadBook::open(&dir.join("heads.json")).map_err(setup("heads"))?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(setup("bind"))?;
    let addr = listener.local_addr().map_err(setup("bind"))?;
    let receipt_pin = Sha256::digest(&receipt_spki);
    // The one deployment: exactly the pins handed to the appliance (the port changes per
    // start, the name, under which the heads are kept, does not).
    let pins = keyward_krp::messages::Pins {
        krs_url: addr.to_string(),
        krs_tls_spki_sha256: tls_pin.to_vec(),
        receipt_spki_sha256: receipt_pin.to_vec(),
        admin_ca_sha256: admin_ca_sha256.to_vec(),
    };
    let deployment = crate::deployment::Deployment {
        name: "demo".into(),
        pins_sha384: Some(crate::deployment::pins_sha384(&pins).ok_or(EmbeddedError::PinsDigest)?),
        admin_ca_sha256: None,
    };
    let svc = Service::new(
        backend,
        log,
        policy,
        crate::appraiser::default_appraiser(),
        tls_pin,
        Duration::from_secs(60),
        WrapChoice::Auto,
    )
    .map_err(setup("service"))?
    .with_deployments(vec![deployment])
    .with_heads(heads);
    let svc = Arc::new(svc);
    std::thread::Builder::new()
        .name("embedded-krs".into())
        .spawn(move || crate::service::serve(listener, tls, svc))
        .map_err(setup("thread"))?;
    Ok(EmbeddedKrs {
        addr,
        agent: AgentConfig {
            krs_url: addr.to_string(),
            krs_fallback_urls: Vec::new(),
            krs_tls_spki_sha256: hex::encode(tls_pin),
            receipt_spki_sha256: hex::encode(receipt_pin),
            admin_ca_sha256: hex::encode(admin_ca_sha256),
            attesters: vec!["simulated-snp".into()],
            platform: None,
            timeout_secs: 10,
        },
        backend: name,
        log: log_path,
    })
}
