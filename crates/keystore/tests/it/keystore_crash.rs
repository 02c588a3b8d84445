//! Crash safety of the key store: a child process (this test binary, re-run with an env var)
//! performs admin writes in a loop and prints each acknowledged change; the parent `kill -9`s it
//! at random moments, reopens the store after every kill, and checks that every acknowledged
//! change is there and that every acknowledged key still decrypts what was encrypted with it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keyward_keystore::{generate_credential, NewStore, Registry};
use keyward_keystore::{Grant, GrantOps, KeyStatus, KeyUsage};
use keyward_secret::Key32;
use rand::Rng;
use secrecy::ExposeSecret;

const MK: [u8; 32] = [0x5a; 32];
const DIR_ENV: &str = "KEYWARD_CRASH_CHILD_DIR";
const GEN_ENV: &str = "KEYWARD_CRASH_CHILD_GEN";

fn open(dir: &Path) -> Registry {
    Registry::open_dir(dir, Key32::from_bytes(&MK).unwrap()).expect("store must always open")
}

fn cipher(reg: &Registry, id: &str) -> Aes256Gcm {
    let snap = reg.snapshot();
    Aes256Gcm::new_from_slice(snap.stores["default"].keys[id].kek.expose()).unwrap()
}

const NONCE: [u8; 12] = [3; 12];

/// The child: admin writes forever, one `ACK ...` line per acknowledged change. Not a test on
/// its own (ignored; a no-op without the env var); the parent below runs it.
#[test]
#[ignore = "helper process for crash_kill9_loses_no_acknowledged_change"]
fn crash_child() {
    let (Ok(dir), Ok(gen)) = (std::env::var(DIR_ENV), std::env::var(GEN_ENV)) else {
        eprintln!("crash_child: helper for the crash test; nothing to do without {DIR_ENV}");
        return;
    };
    let reg = open(Path::new(&dir));
    let out = std::io::stdout();
    let ack = |line: String| {
        let mut o = out.lock();
        // One write per line, so a kill never leaves half an ACK that parses.
        o.write_all(format!("ACK {line}\n").as_bytes()).unwrap();
        o.flush().unwrap();
    };
    if reg.list_stores().is_empty() {
        reg.create_store(NewStore {
            name: "default".into(),
            uri_prefix: "/keyward".into(),
            region: "us-east-1".into(),
            extra_services: vec![],
        })
        .unwrap();
        ack("store".into());
    }
    for i in 0u64.. {
        let id = format!("g{gen}-k{i}");
        reg.create_key(None, &id, KeyUsage::EncryptDecrypt).unwrap();
        let ct = cipher(&reg, &id)
            .encrypt(
                Nonce::from_slice(&NONCE),
                Payload {
                    msg: id.as_bytes(),
                    aad: b"crash",
                },
            )
            .unwrap();
        ack(format!("key {id} {}", hex::encode(ct)));
        if i % 3 == 0 {
            let g = Grant {
                principal: format!("arn:aws:iam::1:role/{id}"),
                ops: GrantOps {
                    encrypt: true,
                    decrypt: false,
                    metadata: true,
                },
                via_service: None,
                source_vpc: None,
                source_vpce: None,
            };
            reg.grant(None, &id, g).unwrap();
            ack(format!("grant {id}"));
        }
        if i % 4 == 1 {
            reg.disable_key(None, &id).unwrap();
            ack(format!("disable {id}"));
        }
        if i % 7 == 2 {
            let (akid, secret) = generate_credential().unwrap();
            let s = secret.expose_secret().to_string();
            reg.add_credential(None, &akid, secret).unwrap();
            ack(format!("cred {akid} {s}"));
        }
        if i % 25 == 24 {
            reg.compact().unwrap();
            ack("compact".into());
        }
    }
}

/// Complete `ACK` lines the child printed before it died.
fn run_child_and_kill(dir: &Path, gen: u32, after: Duration) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "keystore_crash::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(GEN_ENV, gen.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut acks = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.ends_with(b"\n") => {
                    let l = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if let Some(a) = l.strip_prefix("ACK ") {
                        acks.push(a.to_string());
                    }
                }
                Ok(_) => break, // torn last line: not acknowledged
            }
        }
        acks
    });
    std::thread::sleep(after);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "child should have been killed");
    reader.join().unwrap()
}

#[test]
fn crash_kill9_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    let mut grants = Vec::new();
    let mut disabled = Vec::new();
    let mut creds = Vec::new();
    let mut kills = 0;
    for gen in 0..8u32 {
        // The first run needs time to start up; later ones are killed at random moments.
        let ms = if gen == 0 {
            600
        } else {
            rng.gen_range(80..500)
        };
        let acks = run_child_and_kill(dir.path(), gen, Duration::from_millis(ms));
        kills += 1;
        for a in &acks {
            let f: Vec<&str> = a.split(' ').collect();
            match f[0] {
                "key" => keys.push((f[1].to_string(), hex::decode(f[2]).unwrap())),
                "grant" => grants.push(f[1].to_string()),
                "disable" => disabled.push(f[1].to_string()),
                "cred" => creds.push((f[1].to_string(), f[2].to_string())),
                _ => {}
            }
        }

        // After every kill: the store opens and holds every acknowledged change.
        let reg = open(dir.path());
        let snap = reg.snapshot();
        let store = &snap.stores["default"];
        for (id, ct) in &keys {
            let k = store
                .keys
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged key {id} lost"));
            let pt = cipher(&reg, id)
                .decrypt(
                    Nonce::from_slice(&NONCE),
                    Payload {
                        msg: ct,
                        aad: b"crash",
                    },
                )
                .unwrap_or_else(|_| panic!("key {id} no longer decrypts its ciphertext"));
            assert_eq!(pt, id.as_bytes());
            assert_eq!(k.usage, KeyUsage::EncryptDecrypt);
        }
        for id in &grants {
            let p = format!("arn:aws:iam::1:role/{id}");
            assert!(
                store.keys[id].grants.iter().any(|g| g.principal == p),
                "acknowledged grant on {id} lost"
            );
        }
        for id in &disabled {
            assert_eq!(store.keys[id].status, KeyStatus::Disabled, "{id}");
        }
        for (akid, secret) in &creds {
            let c = store
                .credentials
                .iter()
                .find(|c| &c.access_key_id == akid)
                .unwrap_or_else(|| panic!("acknowledged credential {akid} lost"));
            assert_eq!(c.secret_access_key.expose_secret(), secret);
        }
    }
    eprintln!(
        "crash test: {kills} kills, {} keys, {} grants, {} disables, {} credentials acknowledged",
        keys.len(),
        grants.len(),
        disabled.len(),
        creds.len()
    );
    assert!(
        keys.len() >= 10,
        "the child made too few changes to test anything"
    );
}
