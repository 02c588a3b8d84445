//! Backup and disaster recovery (issue 14 §6), end to end with real parts: `keyward krs serve`
//! (SoftHSMv2) releases to `keyward serve` (simulated SNP) on a file store; keys are made and
//! used through the XKS API (SigV4 by curl), `keyward admin backup` exports the store, more
//! changes follow (the RPO loss), then the whole store is destroyed.
//!
//! Replayed: the boot without a store is refused (StoreMissing); a backup with one byte changed
//! is refused by `keyward store restore`, naming the file; the good one restores into the empty
//! store; the boot is refused (Rollback: the KRS holds a newer head); `keyward krs heads set`
//! refuses while the KRS runs, refuses another store's backup without `--new-store`, stops
//! without confirmation, then moves the head (logged as `head-set`); a changed backup whose
//! SHA-256 was recomputed restores (no master key to check it) and is refused by the boot
//! naming the record; the good restore boots and serves: ciphertexts made before the backup
//! decrypt, the key made after it is gone, the key disabled after it is enabled again, writes
//! are anchored again, and the release log verifies. The restore and boot times are printed
//! (docs/backup.md states them).
//!
//! With a master key file (development stores): `store restore --master-key-file` verifies the
//! MAC and every record before writing (a forged backup and a wrong key are refused), and the
//! restored store serves.
//!
//! The same recovery on the PostgreSQL store (a local server from the machine's binaries): the
//! database is lost (a new, empty server), the boot refuses the empty database, the backup
//! restores into it through `[storage] backend = "postgres"`, and after `heads set` the member
//! serves the ciphertexts made before the backup.

use crate::common;
use crate::serve_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serve_common::*;

fn use_release(f: &common::KrsFixture, setup: &ServeSetup, addr: &str) {
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let start = cfg.find("[master_key]").unwrap();
    let end = cfg[start..].find("\n[admin]").unwrap() + start;
    let section = format!(
        "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"{addr}\"\nkrs_tls_spki_sha256 = \"{}\"\nreceipt_spki_sha256 = \"{}\"\nadmin_ca_sha256 = \"{}\"\nattesters = [\"simulated-snp\"]\nretry_initial_ms = 200\nretry_max_secs = 1\nmax_attempts = 3\n",
        f.tls_pin,
        f.receipt_pin,
        common::ca_pin(&setup.ca)
    );
    let cfg = format!("{}{section}{}", &cfg[..start], &cfg[end..]);
    std::fs::write(&setup.config, cfg).unwrap();
    let _ = std::fs::remove_file(setup.dir.path().join("master.key"));
}

fn stop(mut p: Proc) {
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.stderr_text()
    );
}

/// Boot and expect a refusal at unseal naming one of `what`: exit non-zero, nothing served.
fn refused_at_unseal(setup: &ServeSetup, what: &[&str]) -> String {
    let mut p = Proc::spawn(
        &["serve", "--config", setup.config.to_str().unwrap()],
        setup.dir.path(),
    );
    let code = p.wait_exit(Duration::from_secs(60));
    let log = p.stderr_text();
    assert!(code.is_some() && code != Some(0), "exit {code:?}: {log}");
    assert!(log.contains("phase=unseal"), "{log}");
    assert!(
        what.iter().any(|w| log.contains(w)),
        "expected one of {what:?}: {log}"
    );
    assert!(!log.contains("XKS API on"), "served anyway: {log}");
    log
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `keyward admin backup --out FILE`: its JSON line.
fn backup(profile: &Path, out: &Path) -> serde_json::Value {
    let line = admin_ok(profile, &["backup", "--out", out.to_str().unwrap()]);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// `keyward store restore --config CONFIG FILE`.
fn restore(setup: &ServeSetup, file: &Path) -> Output {
    Command::new(BIN)
        .args(["store", "restore", "--config"])
        .arg(&setup.config)
        .arg(file)
        .output()
        .unwrap()
}

/// `keyward store restore --config CONFIG [ARGS] FILE`.
fn restore_with(config: &Path, args: &[&str], file: &Path) -> Output {
    Command::new(BIN)
        .args(["store", "restore", "--config"])
        .arg(config)
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

/// `keyward krs heads set ...` with `stdin` as the operator's answer.
fn heads_set(f: &common::KrsFixture, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut c = f.cmd();
    c.args(["krs", "heads", "set", "--config"])
        .arg(&f.config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The head `keyward krs heads show` lists for `deployment`.
fn shown_head(f: &common::KrsFixture, deployment: &str) -> serde_json::Value {
    let out = common::run_ok(
        f.cmd()
            .args(["krs", "heads", "show", "--config"])
            .arg(&f.config),
    );
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["deployment"] == deployment)
        .unwrap_or_else(|| panic!("{deployment} not in {out}"))["head"]
        .clone()
}

/// A copy of the backup at `from` with its body changed by `edit`, and (with `rehash`) the
/// SHA-256 recomputed as anyone without the master key can.
fn forge(from: &Path, to: &Path, rehash: bool, edit: impl Fn(&str) -> String) -> PathBuf {
    use sha2::Digest;
    let text = std::fs::read_to_string(from).unwrap();
    let at = text.find("\"body\":").unwrap() + "\"body\":".len();
    let body = edit(&text[at..text.len() - 2]);
    assert_ne!(body, text[at..text.len() - 2], "the edit changed nothing");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sha = if rehash {
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    } else {
        v["sha256"].as_str().unwrap().to_string()
    };
    let out = format!(
        "{{\"keyward_backup\":1,\"sha256\":\"{sha}\",\"mac\":\"{}\",\"body\":{body}}}\n",
        v["mac"].as_str().unwrap()
    );
    std::fs::write(to, out).unwrap();
    to.to_path_buf()
}

#[test]
fn a_lost_store_is_restored_from_a_backup_after_the_krs_operator_moves_the_head() {
    let Some(f) = common::KrsFixture::new("backup", "") else {
        return;
    };
    let text_policy = common::policy_text_full(
        2,
        &[hex::encode(keyward_attest::DEMO_MEASUREMENT)],
        &keyward_verify::testsign::test_root_policy_toml(),
    );
    f.sign_policy_text(2, &text_policy, &f.policy_file);
    let a = ServeSetup::new();
    let b = ServeSetup::new();
    f.trust_admin_ca("appliance-a", &a.ca);
    f.trust_admin_ca("appliance-b", &b.ca);
    let krs = f.serve();
    use_release(&f, &a, &krs.addr);
    use_release(&f, &b, &krs.addr);
    let store = a.dir.path().join("store");
    let dir = a.dir.path();

    // Another deployment's store, and a backup of it.
    let (pb, _) = b.start();
    create_open_key(&b.profile, "b1");
    let other = dir.join("other-store.backup.json");
    let other_id = backup(&b.profile, &other)["store_id"]
        .as_str()
        .unwrap()
        .to_string();
    stop(pb);

    // Keys, used through the XKS API.
    let (pa, xks) = a.start();
    create_open_key(&a.profile, "k1");
    create_open_key(&a.profile, "k2");
    let (code, enc1) = xks.encrypt("k1", "YmVmb3JlIHRoZSBiYWNrdXA=");
    assert_eq!(code, 200, "{enc1}");
    let (code, enc2) = xks.encrypt("k2", "YWxzbyBiZWZvcmU=");
    assert_eq!(code, 200, "{enc2}");

    // The backup: 0600, its SHA-256 as printed, the head the appliance holds.
    let file = dir.join("store.backup.json");
    let info = backup(&a.profile, &file);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backup file mode {mode:o}");
    let bytes = std::fs::read(&file).unwrap();
    {
        use sha2::Digest;
        assert_eq!(
            info["sha256"].as_str().unwrap(),
            hex::encode(sha2::Sha256::digest(&bytes))
        );
    }
    let backup_seq = info["seq"].as_u64().unwrap();
    let store_id = info["store_id"].as_str().unwrap().to_string();
    assert_eq!(shown_head(&f, "appliance-a")["seq"], backup_seq);
    assert_eq!(shown_head(&f, "appliance-a")["store_id"], store_id.as_str());
    // No key material in clear in it.
    assert!(!String::from_utf8_lossy(&bytes).contains(SECRET_1));
    // A viewer may not export.
    let viewer = a
        .ca_obj
        .client_with_role("viewer", 30, Some(keyward_config::Role::Viewer))
        .unwrap();
    keyward_admin::write_file(&dir.join("viewer.pem"), viewer.cert_pem.as_bytes(), false).unwrap();
    keyward_admin::write_file(&dir.join("viewer-key.pem"), viewer.key_pem.as_bytes(), true)
        .unwrap();
    let vprofile = dir.join("viewer-profile.toml");
    a.write_profile(&vprofile, &a.admin_addr(), "viewer.pem", "viewer-key.pem");
    let out = admin(
        &vprofile,
        &["backup", "--out", dir.join("v.json").to_str().unwrap()],
    );
    assert!(
        !out.status.success() && text(&out).contains("forbidden"),
        "{}",
        text(&out)
    );

    // After the backup (what a restore loses: the RPO): a new key, a disabled key.
    create_open_key(&a.profile, "k3");
    let (code, _) = xks.encrypt("k3", "YWZ0ZXI=");
    assert_eq!(code, 200);
    admin_ok(&a.profile, &["keys", "disable", "k2"]);
    let newest = shown_head(&f, "appliance-a")["seq"].as_u64().unwrap();
    assert!(newest > backup_seq);
    stop(pa);

    // The store is lost: the boot refuses to start empty.
    std::fs::remove_dir_all(&store).unwrap();
    refused_at_unseal(&a, &["key store is missing"]);
    std::fs::remove_dir_all(&store).unwrap();

    // A backup with one byte changed: refused at restore, naming the file; nothing written.
    let flipped = forge(&file, &dir.join("flipped.json"), false, |b| {
        b.replacen("\"k1\"", "\"k7\"", 1)
    });
    let out = restore(&a, &flipped);
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains(flipped.to_str().unwrap()) && msg.contains("damaged"),
        "{msg}"
    );
    assert!(!store.join("keystore.jsonl").exists());

    // The good backup restores into the empty store...
    let t0 = Instant::now();
    let out = restore(&a, &file);
    let restore_time = t0.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(r["seq"], backup_seq);
    assert_eq!(r["store_id"], store_id.as_str());
    assert!(text(&out).contains("heads set"), "{}", text(&out));
    // ... not twice.
    let out = restore(&a, &file);
    assert!(
        !out.status.success() && text(&out).contains("not empty"),
        "{}",
        text(&out)
    );
    // ... and is refused at boot: the KRS holds the newer head.
    refused_at_unseal(&a, &["rollback"]);

    // The KRS operator moves the head: not while the KRS runs.
    let file_s = file.to_str().unwrap();
    let base = ["--deployment", "appliance-a", "--backup"];
    let out = heads_set(&f, &[&base[..], &[file_s, "--yes"]].concat(), "");
    assert!(
        !out.status.success() && text(&out).contains("in use"),
        "{}",
        text(&out)
    );
    drop(krs);
    // Not to another store's backup without --new-store.
    let out = heads_set(
        &f,
        &[&base[..], &[other.to_str().unwrap(), "--yes"]].concat(),
        "",
    );
    assert!(
        !out.status.success() && text(&out).contains("another store"),
        "{}",
        text(&out)
    );
    // Not without confirmation.
    let out = heads_set(&f, &[&base[..], &[file_s]].concat(), "no\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("LOST FOR GOOD"), "{}", text(&out));
    assert_eq!(shown_head(&f, "appliance-a")["seq"], newest);
    // Confirmed by typing the deployment's name.
    let out = heads_set(&f, &[&base[..], &[file_s]].concat(), "appliance-a\n");
    assert!(out.status.success(), "{}", text(&out));
    let set: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(set["from"]["seq"], newest);
    assert_eq!(set["head"]["seq"], backup_seq);
    assert_eq!(shown_head(&f, "appliance-a")["seq"], backup_seq);
    let last = f.log_entries().pop().unwrap();
    assert_eq!(last["decision"], "head-set", "{last}");
    assert!(
        last["detail"].as_str().unwrap().contains("appliance-a"),
        "{last}"
    );
    // Again: nothing to change.
    let out = heads_set(&f, &[&base[..], &[file_s, "--yes"]].concat(), "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.log_entries().last().unwrap()["index"], last["index"]);

    let krs = f.serve();
    use_release(&f, &a, &krs.addr);

    // A changed backup whose SHA-256 was recomputed: restore cannot tell without the master
    // key; the boot refuses it naming the record.
    let good = dir.join("store-good");
    std::fs::rename(&store, &good).unwrap();
    let forged = forge(&file, &dir.join("forged.json"), true, |b| {
        b.replacen("\"k1\"", "\"k7\"", 1)
    });
    let out = restore(&a, &forged);
    assert!(out.status.success(), "{}", text(&out));
    let log = refused_at_unseal(&a, &["altered or damaged"]);
    assert!(log.contains("key store record seq"), "{log}");
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::rename(&good, &store).unwrap();

    // The restored store boots and serves.
    let t0 = Instant::now();
    let (pa, xks) = a.start();
    let boot_time = t0.elapsed();
    let (code, dec) = xks.decrypt("k1", &enc1);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "YmVmb3JlIHRoZSBiYWNrdXA=");
    // The disable came after the backup: k2 is enabled again (the loss the operator accepted).
    let (code, dec) = xks.decrypt("k2", &enc2);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "YWxzbyBiZWZvcmU=");
    // k3 came after it: gone.
    let (code, _) = xks.encrypt("k3", "YWZ0ZXI=");
    assert_ne!(code, 200);
    let listed = admin_ok(&a.profile, &["keys", "list"]);
    assert!(!listed.contains("k3"), "{listed}");
    // Writes are anchored from the restored head on.
    admin_ok(&a.profile, &["keys", "create", "k4"]);
    assert_eq!(shown_head(&f, "appliance-a")["seq"], backup_seq + 1);
    stop(pa);
    drop(krs);
    // --new-store: the deployment's store replaced by another store's backup, said so loudly.
    let out = heads_set(
        &f,
        &[
            &base[..],
            &[other.to_str().unwrap(), "--new-store", "--yes"],
        ]
        .concat(),
        "",
    );
    assert!(
        out.status.success() && text(&out).contains("ANOTHER STORE"),
        "{}",
        text(&out)
    );
    assert_eq!(shown_head(&f, "appliance-a")["store_id"], other_id.as_str());
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "krs log verify with head-set entries: {out}");
    eprintln!(
        "backup: restore of {} records took {:.0} ms; boot to serving took {:.0} ms",
        r["records"],
        restore_time.as_secs_f64() * 1e3,
        boot_time.as_secs_f64() * 1e3
    );
}

/// A PostgreSQL server in a temporary directory (stopped before the directory goes).
struct Pg {
    pg: keyward_store_pg::local::LocalPostgres,
    _dir: tempfile::TempDir,
}

fn pg_server() -> Pg {
    let dir = tempfile::tempdir().unwrap();
    let pg = keyward_store_pg::local::LocalPostgres::start(dir.path(), None)
        .unwrap_or_else(|e| panic!("a local PostgreSQL server (apt-get install postgresql): {e}"));
    Pg { pg, _dir: dir }
}

/// Point `setup`'s `[storage]` at the database at `url`.
fn use_postgres(setup: &ServeSetup, url: &str) {
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let start = cfg.find("[storage]").unwrap();
    let end = cfg[start..].find("\n[master_key]").unwrap() + start;
    let cfg = format!(
        "{}[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\ndir = \"state\"\n{}",
        &cfg[..start],
        &cfg[end..]
    );
    std::fs::write(&setup.config, cfg).unwrap();
}

#[test]
fn a_lost_postgres_store_is_restored_from_a_backup() {
    let Some(f) = common::KrsFixture::new("backup-pg", "") else {
        return;
    };
    let text_policy = common::policy_text_full(
        2,
        &[hex::encode(keyward_attest::DEMO_MEASUREMENT)],
        &keyward_verify::testsign::test_root_policy_toml(),
    );
    f.sign_policy_text(2, &text_policy, &f.policy_file);
    let a = ServeSetup::new();
    f.trust_admin_ca("fleet", &a.ca);
    let krs = f.serve();
    use_release(&f, &a, &krs.addr);
    let db = pg_server();
    use_postgres(&a, &db.pg.url());
    let dir = a.dir.path();

    let (pa, xks) = a.start();
    create_open_key(&a.profile, "k1");
    let (code, enc1) = xks.encrypt("k1", "aW4gdGhlIGRhdGFiYXNl");
    assert_eq!(code, 200, "{enc1}");
    let file = dir.join("fleet.backup.json");
    let info = backup(&a.profile, &file);
    let backup_seq = info["seq"].as_u64().unwrap();
    create_open_key(&a.profile, "k2");
    stop(pa);

    // The database is lost: a new, empty server in its place.
    drop(db);
    let db = pg_server();
    use_postgres(&a, &db.pg.url());
    refused_at_unseal(&a, &["key store is missing"]);

    let out = restore(&a, &file);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(r["seq"], backup_seq);
    assert!(
        r["restored"].as_str().unwrap().contains("postgresql://"),
        "{r}"
    );
    refused_at_unseal(&a, &["rollback"]);

    drop(krs);
    let out = heads_set(
        &f,
        &[
            "--deployment",
            "fleet",
            "--backup",
            file.to_str().unwrap(),
            "--yes",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    let krs = f.serve();
    use_release(&f, &a, &krs.addr);

    let (pa, xks) = a.start();
    let (code, dec) = xks.decrypt("k1", &enc1);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "aW4gdGhlIGRhdGFiYXNl");
    let (code, _) = xks.encrypt("k2", "YWZ0ZXI=");
    assert_ne!(code, 200, "a key made after the backup came back");
    admin_ok(&a.profile, &["keys", "create", "k3"]);
    assert_eq!(shown_head(&f, "fleet")["seq"], backup_seq + 1);
    stop(pa);
    drop(krs);
}

#[test]
fn a_master_key_file_verifies_the_backup_before_it_is_restored() {
    let a = ServeSetup::new();
    let dir = a.dir.path();
    let (pa, xks) = a.start();
    create_open_key(&a.profile, "k1");
    let (code, enc) = xks.encrypt("k1", "ZGV2ZWxvcG1lbnQ=");
    assert_eq!(code, 200, "{enc}");
    let file = dir.join("dev.backup.json");
    backup(&a.profile, &file);
    stop(pa);

    // A file with only [storage]: the rest of the appliance's configuration is not needed.
    let target = |name: &str| {
        let c = dir.join(format!("{name}.toml"));
        std::fs::write(&c, format!("[storage]\ndir = \"{name}\"\n")).unwrap();
        c
    };
    let mk_path = dir.join("master.key");
    let mk_arg = ["--master-key-file", mk_path.to_str().unwrap()];

    // Forged with the SHA-256 recomputed: the MAC refuses it; nothing written.
    let forged = forge(&file, &dir.join("forged.json"), true, |b| {
        b.replacen("\"k1\"", "\"k7\"", 1)
    });
    let out = restore_with(&target("forged"), &mk_arg, &forged);
    assert!(
        !out.status.success() && text(&out).contains("MAC does not verify"),
        "{}",
        text(&out)
    );
    assert!(!dir.join("forged/keystore.jsonl").exists());
    // Another master key: refused.
    let other = dir.join("other.key");
    keyward_admin::write_file(&other, &rand32(), true).unwrap();
    let out = restore_with(
        &target("other"),
        &["--master-key-file", other.to_str().unwrap()],
        &file,
    );
    assert!(
        !out.status.success() && text(&out).contains("does not open"),
        "{}",
        text(&out)
    );
    // The right key: verified and restored.
    let out = restore_with(&target("restored"), &mk_arg, &file);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert!(
        r["verified"]
            .as_str()
            .unwrap()
            .contains("MAC and every record"),
        "{r}"
    );

    // The appliance on the restored copy decrypts what was made before.
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        cfg.replace("dir = \"store\"", "dir = \"restored\""),
    )
    .unwrap();
    let (pa, xks) = a.start();
    let (code, dec) = xks.decrypt("k1", &enc);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "ZGV2ZWxvcG1lbnQ=");
    stop(pa);
}
