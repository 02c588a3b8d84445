//! The appliance-managed XKS/admin TLS key against a real `keyward serve` with no TLS files:
//! the SPKI hash on the console, `tls show` through an admin client pinned to it (a wrong pin is
//! refused), `tls csr` signed by a test CA and `tls install` served at once to
//! `curl --cacert` (refused before), a chain for another key refused with one line and nothing
//! changed, a restart keeping the key and the chain, no private key in clear in the state
//! directory and another master key refused; and the live attestation bound to that key
//! (`keyward verify --url`, with a released master key and the simulated SNP attester); and
//! `keyward admin tls acme` against a real ACME server (Debian's `pebble`, validation skipped
//! with `PEBBLE_VA_ALWAYS_VALID=1`): the XKS listener then serves a pebble-issued leaf for the
//! in-VM key.

use crate::common;
use crate::serve_common;

use std::path::Path;
use std::time::Duration;

use serve_common::*;

/// Turn a [`ServeSetup`] (file-based TLS) into one with the appliance-managed TLS key: no TLS
/// files in `[xks]` and `[admin]`, the admin listener's operator CA kept.
fn managed(setup: &ServeSetup, names: &str) {
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let cfg = cfg
        .replace("tls_cert_chain_file = \"server.pem\"\n", "")
        .replace("tls_key_file = \"server-key.pem\"\n", "");
    let cfg = cfg.replacen(
        "[xks]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[xks]\nlisten = \"127.0.0.1:0\"\n{names}"),
        1,
    );
    assert!(!cfg.contains("tls_key_file") && cfg.contains("client_ca_file"));
    std::fs::write(&setup.config, cfg).unwrap();
}

/// The `spki_sha256=` the appliance logged at start.
fn logged_spki(p: &mut Proc) -> String {
    let line = p.wait_stderr("xks tls key spki_sha256=", Duration::from_secs(10));
    let at = line.find("spki_sha256=").unwrap() + "spki_sha256=".len();
    let hex: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    assert_eq!(hex.len(), 64, "{line}");
    hex
}

/// An admin profile trusting the server by SPKI pin (no CA).
fn pinned_profile(setup: &ServeSetup, name: &str, pin: &str) -> std::path::PathBuf {
    let path = setup.dir.path().join(name);
    std::fs::write(
        &path,
        format!(
            "url = \"https://{}\"\nserver_spki_sha256 = \"{pin}\"\nclient_cert = \"admin.pem\"\nclient_key = \"admin-key.pem\"\n",
            setup.admin_addr()
        ),
    )
    .unwrap();
    path
}

fn field<'a>(show: &'a str, name: &str) -> &'a str {
    show.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {show}"))
        .trim()
}

/// `tls show` without the days left (which tick down between two calls).
fn stable(show: &str) -> String {
    show.lines()
        .map(|l| match l.find(" (") {
            Some(i) if l.starts_with("not_after") => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn fetch_spki(url: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    hex::encode(
        rt.block_on(keyward_attest::live::fetch_spki_sha256(url))
            .unwrap(),
    )
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn managed_tls_key_csr_install_restart() {
    let setup = ServeSetup::new();
    managed(&setup, "");
    let d = setup.dir.path();
    let (mut p, xks) = setup.start();
    let spki = logged_spki(&mut p);

    // The XKS listener serves the logged key (what `keyward verify --url` reads).
    assert_eq!(fetch_spki(&xks.url), spki);

    // The admin client pinned to it; `tls show` agrees; no chain yet.
    let prof = pinned_profile(&setup, "pinned.toml", &spki);
    let show = admin_ok(&prof, &["tls", "show"]);
    assert_eq!(field(&show, "spki_sha256"), spki, "{show}");
    assert!(show.contains("not installed"), "{show}");
    assert_eq!(field(&show, "names"), "keyward-appliance", "{show}");
    // The CA of the file-based set-up does not vouch for the self-signed certificate.
    let out = admin(&setup.profile, &["tls", "show"]);
    assert!(!out.status.success(), "the self-signed server was trusted");
    // A wrong pin is refused before anything is sent.
    let mut wrong = spki.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let out = admin(
        &pinned_profile(&setup, "wrong.toml", &wrong),
        &["tls", "show"],
    );
    assert!(!out.status.success(), "a wrong SPKI pin was accepted");
    assert!(out.stdout.is_empty());
    let out = std::process::Command::new(BIN)
        .args(["admin", "--profile"])
        .arg(&prof)
        .args(["--server-spki-sha256", &wrong, "tls", "show"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "--server-spki-sha256 does not override"
    );

    // A test CA; curl trusting it fails against the self-signed certificate.
    let ca = keyward_admin::Ca::new("test XKS CA").unwrap();
    std::fs::write(d.join("testca.pem"), ca.cert_pem()).unwrap();
    let xks = Xks {
        ca: d.join("testca.pem"),
        ..xks
    };
    create_open_key(&prof, "k1");
    assert_eq!(
        xks.encrypt("k1", "aGVsbG8=").0,
        0,
        "curl --cacert testca must fail before the chain is installed"
    );

    // CSR (signed by the in-VM key), signed by the test CA, installed: served at once.
    let csr = admin_ok(
        &prof,
        &[
            "tls",
            "csr",
            "--dns-name",
            "xks.example.com",
            "--dns-name",
            "127.0.0.1",
        ],
    );
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    let leaf = ca.sign_csr(&csr, 30).unwrap();
    std::fs::write(d.join("chain.pem"), format!("{leaf}{}", ca.cert_pem())).unwrap();
    let out = admin_ok(
        &prof,
        &[
            "tls",
            "install",
            "--chain",
            d.join("chain.pem").to_str().unwrap(),
        ],
    );
    assert!(out.contains("installed (2 certificate(s)"), "{out}");
    let (code, enc) = xks.encrypt("k1", "aGVsbG8=");
    assert_eq!(code, 200, "{enc}");
    assert_eq!(fetch_spki(&xks.url), spki, "same key, new chain");
    // The admin listener serves the same chain: a CA-trusting profile works now.
    std::fs::write(
        d.join("ca-profile.toml"),
        format!(
            "url = \"https://{}\"\nca_cert = \"testca.pem\"\nclient_cert = \"admin.pem\"\nclient_key = \"admin-key.pem\"\n",
            setup.admin_addr()
        ),
    )
    .unwrap();
    let show = admin_ok(&d.join("ca-profile.toml"), &["tls", "show"]);
    assert_eq!(field(&show, "spki_sha256"), spki);
    assert_eq!(field(&show, "names"), "xks.example.com, 127.0.0.1");
    assert!(field(&show, "issuer").contains("test XKS CA"), "{show}");

    // A chain for another key: one line naming why, nothing changes.
    let stranger = ca.server(&["xks.example.com"], 30).unwrap();
    std::fs::write(d.join("stranger.pem"), &stranger.cert_pem).unwrap();
    let out = admin(
        &prof,
        &[
            "tls",
            "install",
            "--chain",
            d.join("stranger.pem").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("the certificate's public key is not this appliance's TLS key"),
        "{err}"
    );
    assert_eq!(stable(&admin_ok(&prof, &["tls", "show"])), stable(&show));
    assert_eq!(xks.decrypt("k1", &enc).0, 200);
    // An expired certificate for the right key: refused too.
    let old = ca.sign_csr(&csr, -1).unwrap();
    std::fs::write(d.join("old.pem"), old).unwrap();
    let out = admin(
        &prof,
        &[
            "tls",
            "install",
            "--chain",
            d.join("old.pem").to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid now"));

    // Restart: same key, the installed chain is served straight away.
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let (mut p, xks2) = setup.start();
    assert_eq!(logged_spki(&mut p), spki);
    let xks2 = Xks {
        ca: d.join("testca.pem"),
        ..xks2
    };
    let (code, dec) = xks2.decrypt("k1", &enc);
    assert_eq!((code, dec["plaintext"].as_str()), (200, Some("aGVsbG8=")));
    let prof = pinned_profile(&setup, "pinned.toml", &spki);
    assert!(admin_ok(&prof, &["tls", "show"]).contains("installed (2 certificate(s)"));
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));

    // The state directory: the sealed TLS record is there, no private key in clear.
    let store = d.join("store");
    let mut saw_tls_record = false;
    for f in files_under(&store) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).to_string();
        assert!(!text.contains("PRIVATE KEY"), "{}", f.display());
        saw_tls_record |= text.contains("\"tls_key\"");
    }
    assert!(saw_tls_record, "no tls_key record in {}", store.display());
    // The audit log names the installs (and the refusal).
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    assert!(audit.contains("tls_install") && audit.contains("refused"));

    // Another master key cannot open the sealed store (nor the TLS key in it).
    write_master(d, &rand32());
    let mut p = Proc::spawn(&["serve", "--config", setup.config.to_str().unwrap()], d);
    assert_ne!(p.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        p.stderr_text().contains("master key does not open"),
        "{}",
        p.stderr_text()
    );
}

/// The chain file for `csr` signed by `ca` for `days`, written to `d/name`.
fn signed_chain(
    d: &Path,
    ca: &keyward_admin::Ca,
    csr: &str,
    days: i64,
    name: &str,
) -> std::path::PathBuf {
    let leaf = ca.sign_csr(csr, days).unwrap();
    let path = d.join(name);
    std::fs::write(&path, format!("{leaf}{}", ca.cert_pem())).unwrap();
    path
}

#[test]
fn new_key_pending_until_installed_then_served_and_kept() {
    let setup = ServeSetup::new();
    managed(&setup, "");
    let d = setup.dir.path();
    let (mut p, xks) = setup.start();
    let old = logged_spki(&mut p);
    let pinned = pinned_profile(&setup, "pinned.toml", &old);

    // A chain for the current key that expires in 5 days: served, and an error is logged.
    let ca = keyward_admin::Ca::new("test XKS CA").unwrap();
    std::fs::write(d.join("testca.pem"), ca.cert_pem()).unwrap();
    let csr = admin_ok(&pinned, &["tls", "csr", "--dns-name", "127.0.0.1"]);
    let short = signed_chain(d, &ca, &csr, 5, "short.pem");
    admin_ok(
        &pinned,
        &["tls", "install", "--chain", short.to_str().unwrap()],
    );
    let line = p.wait_stderr(
        "the XKS TLS certificate expires in",
        Duration::from_secs(10),
    );
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("expires in 4 days") || line.contains("expires in 5 days"),
        "{line}"
    );
    let show = admin_ok(&pinned, &["tls", "show"]);
    assert!(field(&show, "not_after").contains("days left)"), "{show}");
    assert!(!show.contains("pending"), "{show}");
    // From here the admin client trusts the test CA (the key it serves will change).
    let prof = d.join("ca-profile.toml");
    std::fs::write(
        &prof,
        format!(
            "url = \"https://{}\"\nca_cert = \"testca.pem\"\nclient_cert = \"admin.pem\"\nclient_key = \"admin-key.pem\"\n",
            setup.admin_addr()
        ),
    )
    .unwrap();
    let xks = Xks {
        ca: d.join("testca.pem"),
        ..xks
    };
    create_open_key(&prof, "k1");
    let (code, enc) = xks.encrypt("k1", "aGVsbG8=");
    assert_eq!(code, 200, "{enc}");

    // csr --new-key: a new key is pending; the handshake still shows the old key.
    let csr2 = admin_ok(
        &prof,
        &["tls", "csr", "--new-key", "--dns-name", "127.0.0.1"],
    );
    assert!(csr2.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let show = admin_ok(&prof, &["tls", "show"]);
    assert_eq!(field(&show, "spki_sha256"), old, "{show}");
    let pending: String = field(&show, "pending").chars().take(64).collect();
    assert_eq!(pending.len(), 64, "{show}");
    assert_ne!(pending, old);
    assert_eq!(fetch_spki(&xks.url), old, "the pending key is not served");
    assert_eq!(stable(&admin_ok(&pinned, &["tls", "show"])), stable(&show));

    // A chain for neither key: refused, nothing changes.
    let stranger = ca.server(&["127.0.0.1"], 30).unwrap();
    std::fs::write(d.join("stranger.pem"), &stranger.cert_pem).unwrap();
    let out = admin(
        &prof,
        &[
            "tls",
            "install",
            "--chain",
            d.join("stranger.pem").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not this appliance's TLS key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stable(&admin_ok(&prof, &["tls", "show"])), stable(&show));
    assert_eq!(fetch_spki(&xks.url), old);

    // The chain for the new key: served at once by both listeners.
    let new_chain = signed_chain(d, &ca, &csr2, 30, "new.pem");
    let out = admin_ok(
        &prof,
        &["tls", "install", "--chain", new_chain.to_str().unwrap()],
    );
    assert!(out.contains("installed (2 certificate(s)"), "{out}");
    assert_eq!(fetch_spki(&xks.url), pending, "the new key is served");
    let show = admin_ok(&prof, &["tls", "show"]);
    assert_eq!(field(&show, "spki_sha256"), pending, "{show}");
    assert!(!show.contains("pending"), "{show}");
    // The admin listener serves the new key: the old pin is refused.
    assert!(!admin(&pinned, &["tls", "show"]).status.success());
    let (code, dec) = xks.decrypt("k1", &enc);
    assert_eq!((code, dec["plaintext"].as_str()), (200, Some("aGVsbG8=")));
    // The old key's chain is refused now: the old key is gone.
    let out = admin(
        &prof,
        &["tls", "install", "--chain", short.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));

    // Restart: the new key and its chain; 30 days left is a warning at start.
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let (mut p, xks2) = setup.start();
    assert_eq!(logged_spki(&mut p), pending);
    std::fs::write(
        &prof,
        format!(
            "url = \"https://{}\"\nca_cert = \"testca.pem\"\nclient_cert = \"admin.pem\"\nclient_key = \"admin-key.pem\"\n",
            setup.admin_addr()
        ),
    )
    .unwrap();
    let line = p.wait_stderr(
        "the XKS TLS certificate expires in",
        Duration::from_secs(10),
    );
    assert!(line.contains("WARN") && !line.contains("ERROR"), "{line}");
    assert_eq!(fetch_spki(&xks2.url), pending);
    let show = admin_ok(&prof, &["tls", "show"]);
    assert_eq!(field(&show, "spki_sha256"), pending);
    assert!(!show.contains("pending"), "{show}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    // The audit log names the new-key request.
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    assert!(audit.contains("with a new key"), "{audit}");
}

fn write_master(d: &Path, key: &[u8; 32]) {
    keyward_admin::write_file(&d.join("master.key"), key, true).unwrap();
}

#[test]
fn tls_names_and_commands_without_a_managed_key() {
    // tls_names name the self-signed certificate.
    let setup = ServeSetup::new();
    managed(
        &setup,
        "tls_names = [\"xks.internal.example\", \"10.0.0.5\"]\n",
    );
    let (mut p, _xks) = setup.start();
    let spki = logged_spki(&mut p);
    let prof = pinned_profile(&setup, "pinned.toml", &spki);
    let show = admin_ok(&prof, &["tls", "show"]);
    assert_eq!(field(&show, "names"), "xks.internal.example, 10.0.0.5");
    assert!(field(&show, "subject").contains("xks.internal.example"));
    // Bad names for a CSR: refused with one line.
    let out = admin(&prof, &["tls", "csr", "--dns-name", "not a name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid dns name"));
    drop(p);

    // With TLS files, the tls commands say the managed key is not in use.
    let setup = ServeSetup::new();
    let (_p, _xks) = setup.start();
    let out = admin(&setup.profile, &["tls", "show"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in use"), "{err}");
}

#[test]
fn live_attestation_binds_the_managed_key() {
    let Some(f) = common::KrsFixture::new("tls-attest", "") else {
        return;
    };
    let text = common::policy_text_full(
        2,
        &[hex::encode(keyward_attest::DEMO_MEASUREMENT)],
        &keyward_verify::testsign::test_root_policy_toml(),
    );
    f.sign_policy_text(2, &text, &f.policy_file);
    let setup = ServeSetup::new();
    f.trust_admin_ca("appliance", &setup.ca);
    let krs = f.serve();
    managed(&setup, "");
    let file_config = std::fs::read_to_string(&setup.config).unwrap();
    let release = |admin_ca: &str| {
        let cfg = file_config.replace(
            "[master_key]\nsource = \"file\"\nfile = \"master.key\"\n",
            &format!(
                "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"{}\"\nkrs_tls_spki_sha256 = \"{}\"\nreceipt_spki_sha256 = \"{}\"\nadmin_ca_sha256 = \"{admin_ca}\"\nattesters = [\"simulated-snp\"]\nretry_initial_ms = 200\nretry_max_secs = 1\n\n[attestation]\nlisten = \"127.0.0.1:0\"\n",
                krs.addr, f.tls_pin, f.receipt_pin
            ),
        );
        assert!(cfg.contains("source = \"release\""));
        std::fs::write(&setup.config, cfg).unwrap();
    };
    // The operator CA file (on the untrusted data volume) must be the one the pins name:
    // another one stops the boot before anything is attested or released.
    release(&"ab".repeat(32));
    let mut p = Proc::spawn(
        &["serve", "--config", setup.config.to_str().unwrap()],
        setup.dir.path(),
    );
    // Generous: on a loaded 2-core CI machine a debug start can take long.
    assert_ne!(p.wait_exit(Duration::from_secs(90)), Some(0));
    assert!(
        p.stderr_text().contains("not the admin_ca_sha256 pin"),
        "{}",
        p.stderr_text()
    );
    assert!(f.log_entries().is_empty(), "the KRS was asked anyway");
    let ca_der = rustls_pemfile::certs(&mut std::fs::read(&setup.ca).unwrap().as_slice())
        .next()
        .unwrap()
        .unwrap();
    use sha2::Digest;
    release(&hex::encode(sha2::Sha256::digest(ca_der.as_ref())));
    let (mut p, xks) = setup.start();
    let spki = logged_spki(&mut p);
    let line = p.wait_stderr("live attestation on http://", Duration::from_secs(20));
    let att: String = line[line.find("http://").unwrap()..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    let att = att.trim_end_matches("/attestation").to_string();
    let policy = setup.dir.path().join("verify-policy.toml");
    std::fs::write(&policy, &text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["verify", "--json", "--url", &att, "--xks-url", &xks.url])
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{v:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report_data = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "snp.report_data")
        .unwrap();
    assert_eq!(report_data["status"], "passed", "{v:#}");
    // The bound key is the one `tls show` reports.
    let prof = pinned_profile(&setup, "pinned.toml", &spki);
    assert_eq!(
        field(&admin_ok(&prof, &["tls", "show"]), "spki_sha256"),
        fetch_spki(&xks.url)
    );
    // A new key, its chain installed: the evidence binds the new key (verify --url checks the
    // binding against the key the XKS URL serves now).
    let csr = admin_ok(
        &prof,
        &["tls", "csr", "--new-key", "--dns-name", "127.0.0.1"],
    );
    let ca = keyward_admin::Ca::new("test XKS CA").unwrap();
    let chain = setup.dir.path().join("new-chain.pem");
    std::fs::write(&chain, ca.sign_csr(&csr, 30).unwrap()).unwrap();
    admin_ok(
        &prof,
        &["tls", "install", "--chain", chain.to_str().unwrap()],
    );
    let now_served = fetch_spki(&xks.url);
    assert_ne!(now_served, spki);
    std::thread::sleep(Duration::from_millis(1100)); // the attestation listener's rate limit
    let out = std::process::Command::new(BIN)
        .args(["verify", "--json", "--url", &att, "--xks-url", &xks.url])
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(0),
        "after the key change: {v:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    drop(krs);
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `pebble` (the ACME test server from Debian), killed when dropped.
struct Pebble {
    child: std::process::Child,
    /// `https://127.0.0.1:PORT/dir`.
    directory: String,
    /// The CA of its directory's TLS certificate (a test CA of ours).
    tls_ca: std::path::PathBuf,
    /// Its issuing root, from its management endpoint.
    root: std::path::PathBuf,
}

impl Pebble {
    /// Start pebble in `d` with validation skipped (`PEBBLE_VA_ALWAYS_VALID=1`: it does not
    /// look the TXT record up) and no random sleeps or nonce rejections.
    fn start(d: &Path) -> Pebble {
        let bin = crate::tools::need("pebble", "pebble");
        let ca = keyward_admin::Ca::new("pebble directory test CA").unwrap();
        let tls = ca.server(&["127.0.0.1"], 2).unwrap();
        let (cert, key, tls_ca) = (
            d.join("pebble-tls.pem"),
            d.join("pebble-tls-key.pem"),
            d.join("pebble-tls-ca.pem"),
        );
        std::fs::write(&cert, &tls.cert_pem).unwrap();
        std::fs::write(&key, tls.key_pem.as_bytes()).unwrap();
        std::fs::write(&tls_ca, ca.cert_pem()).unwrap();
        let (port, mgmt) = (free_port(), free_port());
        let config = d.join("pebble.json");
        std::fs::write(
            &config,
            serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": cert, "privateKey": key,
                "httpPort": free_port(), "tlsPort": free_port(),
                "ocspResponderURL": "", "externalAccountBindingRequired": false,
                "certificateValidityPeriod": 7776000u64,
            }})
            .to_string(),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("pebble.log")).unwrap();
        let child = std::process::Command::new(bin)
            .arg("-config")
            .arg(&config)
            .env("PEBBLE_VA_ALWAYS_VALID", "1")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble");
        let mut p = Pebble {
            child,
            directory: format!("https://127.0.0.1:{port}/dir"),
            tls_ca,
            root: d.join("pebble-root.pem"),
        };
        // Its issuing root (new at each start) from the management endpoint.
        let start = std::time::Instant::now();
        loop {
            let out = crate::tools::curl()
                .args(["-sf", "--cacert"])
                .arg(&p.tls_ca)
                .arg(format!("https://127.0.0.1:{mgmt}/roots/0"))
                .output()
                .unwrap();
            if out.status.success() && out.stdout.starts_with(b"-----BEGIN CERTIFICATE") {
                std::fs::write(&p.root, &out.stdout).unwrap();
                break;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!(
                    "pebble exited ({st}):\n{}",
                    std::fs::read_to_string(d.join("pebble.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pebble did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn acme_dns01_order_against_pebble_installs_a_chain_for_the_in_vm_key() {
    let setup = ServeSetup::new();
    managed(&setup, "");
    let d = setup.dir.path();
    let pebble = Pebble::start(d);
    let (mut p, xks) = setup.start();
    let spki = logged_spki(&mut p);
    let prof = pinned_profile(&setup, "pinned.toml", &spki);
    let account = d.join("acme-account.json");
    let hook_log = d.join("hook.log");
    let hook = format!(
        "echo \"$KEYWARD_ACME_ACTION $KEYWARD_ACME_TXT_NAME $KEYWARD_ACME_TXT_VALUE\" >> {}",
        hook_log.display()
    );
    let acme = |extra: &[&str]| {
        let mut args = vec![
            "admin",
            "--profile",
            prof.to_str().unwrap(),
            "tls",
            "acme",
            "--directory",
            &pebble.directory,
            "--directory-ca",
            pebble.tls_ca.to_str().unwrap(),
            "--dns-name",
            "xks.keyward.test",
            "--contact",
            "mailto:ops@keyward.test",
            "--account",
            account.to_str().unwrap(),
            "--dns-hook",
            &hook,
            "--timeout",
            "30s",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap()
    };

    // A directory whose TLS is not trusted is refused before any order.
    let out = std::process::Command::new(BIN)
        .args(["admin", "--profile", prof.to_str().unwrap(), "tls", "acme"])
        .args([
            "--directory",
            &pebble.directory,
            "--dns-name",
            "xks.keyward.test",
        ])
        .arg("--account")
        .arg(d.join("other-account.json"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "an untrusted directory was used");
    assert!(!d.join("other-account.json").exists());

    let out = acme(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The hook was given the challenge's record, then asked to clean it up.
    let hooked = std::fs::read_to_string(&hook_log).unwrap();
    let lines: Vec<&str> = hooked.lines().collect();
    assert_eq!(lines.len(), 2, "{hooked}");
    let present: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(
        present[..2],
        ["present", "_acme-challenge.xks.keyward.test"]
    );
    assert_eq!(present[2].len(), 43, "base64url SHA-256: {hooked}");
    assert_eq!(lines[1], lines[0].replacen("present", "cleanup", 1));
    assert!(stdout.contains(present[2]), "{stdout}");
    // The account key stays on the operator's side, private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&account).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The XKS listener serves pebble's leaf for the in-VM key (a real handshake), and the chain
    // verifies up to pebble's root.
    let (served, issuer) = served_spki_and_issuer(&xks.url);
    assert_eq!(served, spki);
    assert!(issuer.contains("Pebble Intermediate CA"), "{issuer}");
    let hostport = xks.url.trim_start_matches("https://");
    let v = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            hostport,
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(&pebble.root)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        v.status.success()
            && String::from_utf8_lossy(&v.stdout).contains("Verify return code: 0 (ok)"),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let show = admin_ok(&prof, &["tls", "show"]);
    assert!(show.contains("xks.keyward.test"), "{show}");
    assert!(show.contains("Pebble Intermediate CA"), "{show}");

    // A renewal with a new in-VM key, on the same account: served at once, the old key gone.
    std::fs::remove_file(&hook_log).unwrap();
    let out = acme(&["--new-key"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (rotated, issuer) = served_spki_and_issuer(&xks.url);
    assert_ne!(rotated, spki);
    assert!(issuer.contains("Pebble Intermediate CA"), "{issuer}");
    let prof = pinned_profile(&setup, "new.toml", &rotated);
    assert_eq!(
        field(&admin_ok(&prof, &["tls", "show"]), "spki_sha256"),
        rotated
    );
    // Without --dns-hook the record is printed and the order waits for Enter.
    let mut child = std::process::Command::new(BIN)
        .args(["admin", "--profile", prof.to_str().unwrap(), "tls", "acme"])
        .args(["--directory", &pebble.directory, "--directory-ca"])
        .arg(&pebble.tls_ca)
        .args(["--dns-name", "xks.keyward.test", "--account"])
        .arg(&account)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("press Enter")
            && err.contains("_acme-challenge.xks.keyward.test. 300 IN TXT \""),
        "{err}"
    );
    // The appliance audited the admin calls of each order.
    // (The audit writer flushes in the background: wait for it.)
    let audited = |a: &str| {
        a.matches("\"action\":\"tls_install\"").count() == 3
            && a.matches("\"action\":\"tls_csr\"").count() == 3
    };
    let start = std::time::Instant::now();
    let mut audit = String::new();
    while start.elapsed() < Duration::from_secs(20) {
        audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap_or_default();
        if audited(&audit) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(audited(&audit), "{audit}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}
