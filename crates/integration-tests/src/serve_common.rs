//! Shared helpers for the tests that run the real `keyward` binary (demo, serve, admin): start a
//! process and wait for its ready signal, run admin commands, call the XKS API with
//! `curl --aws-sigv4` (a SigV4 signer we did not write).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// the same programs, found the same way (`common::tools::need`, ... as before)
pub use crate::tools;

pub use crate::BIN;

/// A running keyward process whose stderr is collected in the background.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
    stdout_rx: mpsc::Receiver<String>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(args: &[&str], dir: &Path) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(dir);
        Self::spawn_command(cmd)
    }

    /// Like [`Proc::spawn`] with a command the caller has set up (limits, environment). The
    /// test runner's `NOTIFY_SOCKET` is not passed on, unless the caller set one of its own.
    pub fn spawn_command(mut cmd: Command) -> Proc {
        let own_notify = cmd
            .get_envs()
            .any(|(k, v)| k == "NOTIFY_SOCKET" && v.is_some());
        if !own_notify {
            cmd.env_remove("NOTIFY_SOCKET");
        }
        let mut child = cmd
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyward");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        }));
        let out = child.stdout.take().unwrap();
        let (tx, stdout_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stderr,
            stdout_rx,
            stderr_reader,
        }
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn stdout_line(&mut self, timeout: Duration) -> String {
        match self.stdout_rx.recv_timeout(timeout) {
            Ok(l) => l,
            Err(_) => panic!(
                "no stdout line within {timeout:?}; exit: {:?}; stderr:\n{}",
                self.child.try_wait(),
                self.stderr_text()
            ),
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Wait until a stderr line contains `needle`; returns that line.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "keyward exited ({status}) before `{needle}`:\n{}",
                    self.stderr_text()
                );
            }
            if start.elapsed() > timeout {
                panic!("no `{needle}` within {timeout:?}:\n{}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit (at most `timeout`), returning the exit code (None: killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Every line the process wrote before it exited is read before this returns
                // (a loaded machine may otherwise still hold the last lines in the pipe); at
                // most 5 s, since a child it left behind may hold the pipe open.
                if let Some(r) = self.stderr_reader.take() {
                    let t = Instant::now();
                    while !r.is_finished() && t.elapsed() < Duration::from_secs(5) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                return status.code();
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "keyward did not exit within {timeout:?}:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo's ready line.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Ready {
    pub url: String,
    pub uri_prefix: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub ca_cert: PathBuf,
    pub key_ids: Vec<String>,
    pub admin_profile: PathBuf,
    pub pid: u32,
    /// `simulated` when the master key came through the embedded KRS (KRP/1).
    pub attestation: String,
    /// The live-attestation listener (`POST /attestation`).
    pub attestation_url: String,
}

/// Start `keyward demo` on `state` with the XKS API on a port the system picks.
pub fn start_demo(state: &Path) -> (Proc, Ready, String) {
    let mut p = Proc::spawn(
        &[
            "demo",
            "--state-dir",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        state.parent().unwrap(),
    );
    let line = p.stdout_line(Duration::from_secs(60));
    let ready: Ready = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("bad ready line {line}: {e}\n{}", p.stderr_text()));
    (p, ready, line)
}

/// `keyward admin --profile P args...`
pub fn admin(profile: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("admin")
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .expect("run keyward admin")
}

/// Run an admin command that must succeed; returns its stdout.
pub fn admin_ok(profile: &Path, args: &[&str]) -> String {
    let out = admin(profile, args);
    assert!(
        out.status.success(),
        "keyward admin {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Create key `id` and grant every principal encrypt, decrypt and metadata on it.
pub fn create_open_key(profile: &Path, id: &str) {
    admin_ok(profile, &["keys", "create", id]);
    admin_ok(
        profile,
        &[
            "keys",
            "grant",
            id,
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt,metadata",
        ],
    );
}

/// Where and how to call an XKS API.
#[derive(Debug, Clone)]
pub struct Xks {
    pub url: String,
    pub uri_prefix: String,
    pub region: String,
    pub access_key_id: String,
    pub secret: String,
    pub ca: PathBuf,
    /// SigV4 service name signed with (KMS: `kms-xks-proxy`).
    pub service: String,
}

impl From<&Ready> for Xks {
    fn from(r: &Ready) -> Self {
        Xks {
            url: r.url.clone(),
            uri_prefix: r.uri_prefix.clone(),
            region: r.region.clone(),
            access_key_id: r.access_key_id.clone(),
            secret: r.secret_access_key.clone(),
            ca: r.ca_cert.clone(),
            service: "kms-xks-proxy".into(),
        }
    }
}

impl Xks {
    /// POST `body` to `{prefix}/kms/xks/v1/{path}` signed by curl; (HTTP status, JSON body).
    pub fn call(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let out = tools::curl()
            .args(["-sS", "--max-time", "20", "--aws-sigv4"])
            .arg(format!("aws:amz:{}:{}", self.region, self.service))
            .arg("--user")
            .arg(format!("{}:{}", self.access_key_id, self.secret))
            .arg("--cacert")
            .arg(&self.ca)
            .args([
                "-H",
                "Content-Type: application/json",
                "-w",
                "\n%{http_code}",
                "-d",
            ])
            .arg(body.to_string())
            .arg(format!("{}{}/kms/xks/v1/{path}", self.url, self.uri_prefix))
            .output()
            .expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (json, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code: u16 = code.trim().parse().unwrap_or(0);
        let json = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
        (code, json)
    }

    pub fn encrypt(&self, key: &str, plaintext_b64: &str) -> (u16, serde_json::Value) {
        self.call(
            &format!("keys/{key}/encrypt"),
            &serde_json::json!({
                "requestMetadata": md("Encrypt"),
                "plaintext": plaintext_b64,
                "encryptionAlgorithm": "AES_GCM",
            }),
        )
    }

    /// Decrypt what `encrypt` returned.
    pub fn decrypt(&self, key: &str, enc: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut body = serde_json::json!({
            "requestMetadata": md("Decrypt"),
            "ciphertext": enc["ciphertext"],
            "initializationVector": enc["initializationVector"],
            "authenticationTag": enc["authenticationTag"],
            "encryptionAlgorithm": "AES_GCM",
        });
        if let Some(m) = enc.get("ciphertextMetadata") {
            body["ciphertextMetadata"] = m.clone();
        }
        self.call(&format!("keys/{key}/decrypt"), &body)
    }

    pub fn metadata(&self, key: &str) -> (u16, serde_json::Value) {
        self.call(
            &format!("keys/{key}/metadata"),
            &serde_json::json!({ "requestMetadata": md("CreateKey") }),
        )
    }
}

fn md(op: &str) -> serde_json::Value {
    serde_json::json!({
        "awsPrincipalArn": "arn:aws:iam::111122223333:user/test",
        "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/test",
        "kmsOperation": op,
        "kmsRequestId": "test-request",
    })
}

/// A `keyward serve` set-up in a temp dir: CA, server and admin certificates, master key,
/// configuration with the XKS and admin listeners on ports the system picks.
pub struct ServeSetup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub profile: PathBuf,
    pub ca: PathBuf,
    pub access_key_id: String,
    pub secret: String,
    pub ca_obj: keyward_admin::Ca,
}

pub const SECRET_1: &str = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=";
pub const AKID_1: &str = "KEYWARDTESTCREDENTIAL2AB";

impl Default for ServeSetup {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeSetup {
    pub fn new() -> ServeSetup {
        Self::with_stores(&format!(
            "[[key_store]]\nname = \"main\"\nuri_prefix = \"/kw\"\nregion = \"us-east-1\"\n\
             [[key_store.credentials]]\naccess_key_id = \"{AKID_1}\"\nsecret_access_key = \"{SECRET_1}\"\n"
        ))
    }

    /// Like [`ServeSetup::new`] with `stores` as the key-store part of the configuration.
    pub fn with_stores(stores: &str) -> ServeSetup {
        use keyward_admin::{write_file, Ca};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = Ca::new("test operator CA").unwrap();
        let server = ca.server(&["localhost", "127.0.0.1"], 30).unwrap();
        let admin = ca.client("test-admin", 30).unwrap();
        write_file(&d.join("ca.pem"), ca.cert_pem().as_bytes(), false).unwrap();
        write_file(&d.join("server.pem"), server.cert_pem.as_bytes(), false).unwrap();
        write_file(&d.join("server-key.pem"), server.key_pem.as_bytes(), true).unwrap();
        write_file(&d.join("admin.pem"), admin.cert_pem.as_bytes(), false).unwrap();
        write_file(&d.join("admin-key.pem"), admin.key_pem.as_bytes(), true).unwrap();
        write_file(&d.join("master.key"), &rand32(), true).unwrap();
        let config = d.join("keyward.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[xks]
listen = "127.0.0.1:0"
tls_cert_chain_file = "server.pem"
tls_key_file = "server-key.pem"

{stores}

[storage]
dir = "store"

[master_key]
source = "file"
file = "master.key"

[admin]
listen = "127.0.0.1:0"
tls_cert_chain_file = "server.pem"
tls_key_file = "server-key.pem"
client_ca_file = "ca.pem"
# Most tests drive single-operator flows (kms-config, stores remove) with one certificate:
# dual control off here; admin_approvals turns the default (2) back on.
approvals_required = 1

[log]
audit_file = "audit.jsonl"

[memory]
allow_unlocked_memory = true
"#
            ),
        )
        .unwrap();
        ServeSetup {
            config,
            profile: d.join("admin-profile.toml"),
            ca: d.join("ca.pem"),
            access_key_id: AKID_1.into(),
            secret: SECRET_1.into(),
            ca_obj: ca,
            dir,
        }
    }

    /// Start `keyward serve`, wait for both listeners, write the admin profile for this run.
    pub fn start(&self) -> (Proc, Xks) {
        let mut p = Proc::spawn(
            &["serve", "--config", self.config.to_str().unwrap()],
            self.dir.path(),
        );
        let xks_line = p.wait_stderr("XKS API on ", Duration::from_secs(60));
        let admin_line = p.wait_stderr("admin API on ", Duration::from_secs(10));
        let xks_addr = addr_after(&xks_line, "XKS API on ");
        let admin_addr = addr_after(&admin_line, "admin API on ");
        self.write_profile(&self.profile, &admin_addr, "admin.pem", "admin-key.pem");
        (p, self.xks_at(&xks_addr))
    }

    /// The XKS API this set-up's configuration serves, at `addr` (`host:port`).
    pub fn xks_at(&self, addr: &str) -> Xks {
        Xks {
            url: format!("https://{addr}"),
            uri_prefix: "/kw".into(),
            region: "us-east-1".into(),
            access_key_id: self.access_key_id.clone(),
            secret: self.secret.clone(),
            ca: self.ca.clone(),
            service: "kms-xks-proxy".into(),
        }
    }

    pub fn write_profile(&self, path: &Path, admin_addr: &str, cert: &str, key: &str) {
        std::fs::write(
            path,
            format!(
                "url = \"https://{admin_addr}\"\nca_cert = \"ca.pem\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"\n"
            ),
        )
        .unwrap();
    }

    /// The admin address from the current profile.
    pub fn admin_addr(&self) -> String {
        let text = std::fs::read_to_string(&self.profile).unwrap();
        let line = text.lines().find(|l| l.starts_with("url")).unwrap();
        line.split("https://")
            .nth(1)
            .unwrap()
            .trim_end_matches('"')
            .to_string()
    }
}

pub fn addr_after(line: &str, marker: &str) -> String {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(['"', ','])
        .to_string()
}

pub fn rand32() -> [u8; 32] {
    let mut b = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// The leaf certificate (DER) an `https://HOST:PORT` endpoint serves, read with a real
/// handshake by `openssl s_client` (a TLS client we did not write; the certificate is read,
/// not trusted).
pub fn served_leaf(url: &str) -> Vec<u8> {
    let hostport = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &hostport])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let leaf = rustls_pemfile::certs(&mut text.as_bytes())
        .next()
        .unwrap_or_else(|| {
            panic!(
                "openssl s_client {hostport} showed no certificate: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .unwrap()
        .as_ref()
        .to_vec();
    leaf
}

/// SHA-256 of the served leaf's SPKI (hex) and its issuer, by [`served_leaf`].
pub fn served_spki_and_issuer(url: &str) -> (String, String) {
    use x509_parser::prelude::FromDer;
    let der = served_leaf(url);
    let spki = hex::encode(keyward_attest::live::spki_sha256_of_cert(&der).unwrap());
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    (spki, c.issuer().to_string())
}
