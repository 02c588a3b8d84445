//! Shared fixtures for the release/KRS/HSM integration tests: a SoftHSMv2 token in a temp dir
//! with its own SOFTHSM2_CONF, and helpers to run the real `keyward` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

// the same programs, found the same way (`common::tools::need`, ... as before)
pub use crate::tools;

pub const MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// A SoftHSM token of our own. The SOFTHSM2_CONF path must be in the environment of whatever
/// loads the module (this process for library tests, the child for binary tests).
pub struct Token {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub label: String,
    pub pin: String,
}

/// A fresh token; the test fails naming the package when SoftHSMv2 is not installed.
pub fn softhsm_token(label: &str) -> Token {
    let util = tools::need("softhsm2-util", "softhsm2");
    let module = tools::need_file(MODULES, "libsofthsm2");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new(util)
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            "0000",
            "--pin",
            "1234",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Token {
        dir,
        conf,
        module,
        label: label.into(),
        pin: "1234".into(),
    }
}

/// The `keyward` binary (see [`crate::keyward_bin`]).
pub fn bin() -> &'static str {
    crate::keyward_bin_str()
}

pub fn write(path: &Path, s: &str) {
    std::fs::write(path, s).unwrap();
}

/// A `keyward krs` set up in a temp dir against its own SoftHSM token: `krs init` done, a
/// policy-admin key made, a signed policy in place. `serve()` starts the real binary.
pub struct KrsFixture {
    pub token: Token,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    pub admin_key: PathBuf,
    pub admin_pub: PathBuf,
    pub policy_file: PathBuf,
    pub receipt_pin: String,
    pub tls_pin: String,
}

pub struct Running {
    pub child: std::process::Child,
    pub addr: String,
    /// The `metrics_listen` address the KRS bound, when configured.
    pub metrics: Option<String>,
    pub stderr_path: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// The repository's default verifier policy with a given version.
pub fn policy_text(version: u64, extra: &str) -> String {
    policy_text_full(version, &[], extra)
}

/// The opt-out line a policy without measurements needs to be signed and served.
pub const ALLOW_UNMEASURED: &str =
    "allow_unmeasured = \"I understand this accepts evidence no one measured\"\n";

/// The default policy with a version, a measurement allow-list and extra TOML appended. With
/// no measurements it carries `allow_unmeasured` (the KRS refuses it otherwise).
pub fn policy_text_full(version: u64, measurements: &[String], extra: &str) -> String {
    let base =
        std::fs::read_to_string(crate::repo().join("attestation/policies/default.toml")).unwrap();
    let mut out = String::new();
    for line in base.lines() {
        if line.starts_with("policy_version") {
            out.push_str(&format!("policy_version = {version}\n"));
        } else if line.starts_with("required_evidence") && measurements.is_empty() {
            out.push_str(line);
            out.push('\n');
            out.push_str(ALLOW_UNMEASURED);
        } else if line.starts_with("measurements") && !measurements.is_empty() {
            out.push_str(&format!("measurements = {measurements:?}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(extra);
    out
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The operator CA pin of the fixture KRS's `test` deployment (no real CA behind it: these
/// agents run no admin API).
pub const TEST_ADMIN_CA_PIN: &str =
    "7e57ca7e57ca7e57ca7e57ca7e57ca7e57ca7e57ca7e57ca7e57ca7e57ca7e57";

/// SHA-256 (hex) of the one certificate in a PEM file (DER), as `admin_ca_sha256` names it.
pub fn ca_pin(ca: &Path) -> String {
    use sha2::Digest;
    let certs = keyward_pki::load_certs(ca).unwrap();
    assert_eq!(certs.len(), 1);
    hex::encode(sha2::Sha256::digest(certs[0].as_ref()))
}

impl KrsFixture {
    /// Always `Some` (a missing SoftHSMv2 fails the test, see [`softhsm_token`]); the `Option`
    /// stays so the callers' `let Some(f) = ... else` need not change.
    pub fn new(label: &str, extra_config: &str) -> Option<Self> {
        let token = softhsm_token(label);
        let dir = token.dir.path().to_path_buf();
        let state = dir.join("krs-state");
        let config = dir.join("krs.toml");
        let admin_key = dir.join("admin.pem");
        let admin_pub = dir.join("admin.pub.pem");
        let policy_file = dir.join("policy.signed.json");
        write(
            &config,
            &format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\npolicy_file = \"{}\"\nadmin_public_key = \"{}\"\n{extra_config}\n[hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\npin_env = \"KRS_TEST_PIN\"\n",
                state.display(),
                policy_file.display(),
                admin_pub.display(),
                token.module.display(),
                token.label
            ),
        );
        let mut f = Self {
            token,
            dir,
            config,
            state,
            admin_key,
            admin_pub,
            policy_file,
            receipt_pin: String::new(),
            tls_pin: String::new(),
        };
        let out = run_ok(f.cmd().args(["krs", "init", "--config"]).arg(&f.config));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        f.receipt_pin = v["receipt_spki_sha256"].as_str().unwrap().to_string();
        f.tls_pin = v["krs_tls_spki_sha256"].as_str().unwrap().to_string();
        run_ok(
            f.cmd()
                .args(["krs", "policy", "keygen", "--out"])
                .arg(&f.admin_key)
                .arg("--public")
                .arg(&f.admin_pub),
        );
        f.sign_policy(1, "", &f.policy_file.clone());
        // The deployment the tests' agents belong to (`agent_config` sends this CA pin).
        f.add_deployment(
            "test",
            &format!("admin_ca_sha256 = \"{TEST_ADMIN_CA_PIN}\""),
        );
        Some(f)
    }

    /// Append a `[[deployment]]` (`body`: its pins lines) to the KRS config; takes effect at
    /// the next `serve`.
    pub fn add_deployment(&self, name: &str, body: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .unwrap();
        write!(f, "\n[[deployment]]\nname = \"{name}\"\n{body}\n").unwrap();
    }

    /// Serve appliances whose operator CA is the PEM file `ca` (the deployment `name`).
    pub fn trust_admin_ca(&self, name: &str, ca: &Path) -> String {
        let pin = ca_pin(ca);
        self.add_deployment(name, &format!("admin_ca_sha256 = \"{pin}\""));
        pin
    }

    /// A command for the real binary with this token's environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("SOFTHSM2_CONF", &self.token.conf)
            .env("KRS_TEST_PIN", &self.token.pin);
        c
    }

    pub fn sign_policy(&self, version: u64, extra: &str, out: &Path) {
        self.sign_policy_text(version, &policy_text(version, extra), out)
    }

    pub fn sign_policy_text(&self, version: u64, text_body: &str, out: &Path) {
        let text = self.dir.join(format!("policy-v{version}.toml"));
        write(&text, text_body);
        let _ = std::fs::remove_file(out);
        run_ok(
            self.cmd()
                .args(["krs", "policy", "sign", "--key"])
                .arg(&self.admin_key)
                .args(["--id", "test", "--in"])
                .arg(&text)
                .arg("--out")
                .arg(out),
        );
    }

    /// Start `keyward krs serve`; waits for its "listening" line.
    pub fn serve(&self) -> Running {
        use std::io::{BufRead, BufReader};
        let stderr_path = self.dir.join(format!(
            "krs-stderr-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = self
            .cmd()
            .args(["krs", "serve", "--config"])
            .arg(&self.config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
            panic!(
                "krs serve did not start: {line}\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        });
        Running {
            child,
            addr: v["addr"].as_str().unwrap().to_string(),
            metrics: v["metrics"].as_str().map(str::to_string),
            stderr_path,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.state.join("release.log")
    }

    /// The release log's entries.
    pub fn log_entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn agent_config(&self, addr: &str) -> keyward_config::AgentConfig {
        keyward_config::AgentConfig {
            krs_url: addr.to_string(),
            krs_fallback_urls: Vec::new(),
            krs_tls_spki_sha256: self.tls_pin.clone(),
            receipt_spki_sha256: self.receipt_pin.clone(),
            admin_ca_sha256: TEST_ADMIN_CA_PIN.into(),
            attesters: vec![],
            platform: Some("snp".into()),
            timeout_secs: 10,
        }
    }

    /// `krs log verify` exit status and stdout.
    pub fn log_verify(&self, file: &Path) -> (bool, String) {
        let out = self
            .cmd()
            .args(["krs", "log", "verify"])
            .arg(file)
            .arg("--receipt-key")
            .arg(self.state.join("receipt.pub.pem"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    }
}

/// An honest simulated SEV-SNP platform (Milan, VCEK, SNP TCB 22) measuring `meas`: the agent
/// the KRS tests release to.
pub fn honest_snp(meas: [u8; 48]) -> keyward_attest::SimulatedSnpAttester {
    use keyward_verify::snp::Tcb;
    use keyward_verify::{Product, SignerKind};
    let tcb = Tcb {
        fmc: None,
        bootloader: 4,
        tee: 0,
        snp: 22,
        microcode: 213,
        raw: [0; 8],
    };
    let mut chip = [0u8; 64];
    chip[0] = 7;
    keyward_attest::SimulatedSnpAttester::from_platform(
        keyward_verify::testsign::SimulatedPlatform::with(
            Product::Milan,
            SignerKind::Vcek,
            tcb,
            chip,
            meas,
        )
        .unwrap(),
    )
}

impl KrsFixture {
    /// Run `krs serve` on this fixture's config, which must refuse to start; its stderr.
    pub fn serve_refused(&self) -> String {
        let out = self
            .cmd()
            .args(["krs", "serve", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "krs serve started");
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}
