//! Wrapped key import end to end against a real `keyward serve`: `keys import-params` hands out
//! an RSA wrapping public key and a token; the key bytes are wrapped by openssl (an independent
//! implementation: `pkeyutl` RSA-OAEP-SHA-256 with MGF1-SHA-256, and `enc -id-aes256-wrap-pad`
//! for RFC 5649 AES-KWP); `keys import --wrapped` brings them in; an Encrypt through the XKS API
//! (SigV4-signed by curl) is then decrypted here with the known key bytes, which proves the right
//! key went in. Refusals: a reused, unknown, expired or wrong-algorithm token, a wrong length,
//! garbage, and the raw path without its explicit flag (CLI and API). Neither the audit log nor
//! the server's log holds the key bytes.

use crate::serve_common;
use crate::tools;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use serve_common::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn openssl() -> Command {
    Command::new(tools::need("openssl", "openssl"))
}

fn run(mut c: Command) {
    let out = c.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RSA-OAEP-SHA-256 (MGF1-SHA-256) of `input` to `pubkey`, by openssl.
fn oaep(pubkey: &Path, input: &Path, out: &Path) {
    let mut c = openssl();
    c.args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
        .arg(pubkey)
        .arg("-in")
        .arg(input)
        .arg("-out")
        .arg(out)
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ]);
    run(c);
}

/// RSA_AES_KEY_WRAP_SHA_256 as the KMS docs make it: a fresh AES-256 key, RSA-OAEP of it, then
/// `openssl enc -id-aes256-wrap-pad` of the key material, concatenated.
fn rsa_aes_wrap(dir: &Path, pubkey: &Path, input: &Path, out: &Path) {
    let aes = dir.join("aes.bin");
    std::fs::write(&aes, rand32()).unwrap();
    let aes_hex = hex::encode(std::fs::read(&aes).unwrap());
    let kwp = dir.join("kwp.bin");
    let mut c = openssl();
    c.args(["enc", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K"])
        .arg(&aes_hex)
        .arg("-in")
        .arg(input)
        .arg("-out")
        .arg(&kwp);
    run(c);
    let rsa = dir.join("aes-wrapped.bin");
    oaep(pubkey, &aes, &rsa);
    let mut both = std::fs::read(&rsa).unwrap();
    both.extend(std::fs::read(&kwp).unwrap());
    std::fs::write(out, both).unwrap();
}

/// `keys import-params`; (public key file, token).
fn params(prof: &Path, dir: &Path, name: &str, extra: &[&str]) -> (std::path::PathBuf, String) {
    let pk = dir.join(format!("{name}.pub.pem"));
    let tok = dir.join(format!("{name}.token"));
    let mut args = vec![
        "keys",
        "import-params",
        "--public-key-out",
        pk.to_str().unwrap(),
        "--token-out",
        tok.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = admin_ok(prof, &args);
    let token = std::fs::read_to_string(&tok).unwrap().trim().to_string();
    assert!(out.contains(&format!("import token: {token}")), "{out}");
    assert_eq!(token.len(), 32, "{token}");
    let pem = std::fs::read_to_string(&pk).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    (pk, token)
}

fn import(prof: &Path, id: &str, wrapped: &Path, token: &str, wrapping: &str) -> (bool, String) {
    let out = admin(
        prof,
        &[
            "keys",
            "import",
            id,
            "--wrapped",
            wrapped.to_str().unwrap(),
            "--token",
            token,
            "--wrapping",
            wrapping,
        ],
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Open `id` to everyone, Encrypt `plaintext` through the XKS API and decrypt the answer here
/// with `key`: AES-256-GCM, AAD `u16(0) ‖ u8(len ctm) ‖ ctm` (crates/xks/src/crypto.rs).
fn encrypt_and_check_outside(prof: &Path, xks: &Xks, id: &str, key: &[u8; 32]) {
    admin_ok(
        prof,
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
    let plaintext = b"wrapped import, checked outside";
    let (code, enc) = xks.encrypt(id, &B64.encode(plaintext));
    assert_eq!(code, 200, "{enc}");
    let b = |f: &str| B64.decode(enc[f].as_str().unwrap()).unwrap();
    let (ct, iv, tag, ctm) = (
        b("ciphertext"),
        b("initializationVector"),
        b("authenticationTag"),
        b("ciphertextMetadata"),
    );
    let mut aad = vec![0u8, 0u8, u8::try_from(ctm.len()).unwrap()];
    aad.extend_from_slice(&ctm);
    let mut msg = ct.clone();
    msg.extend_from_slice(&tag);
    let gcm = aes_gcm::Aes256Gcm::new_from_slice(key).unwrap();
    let got = gcm
        .decrypt(
            aes_gcm::Nonce::from_slice(&iv),
            Payload {
                msg: &msg,
                aad: &aad,
            },
        )
        .expect("the XKS ciphertext decrypts under the key bytes that were wrapped");
    assert_eq!(got, plaintext);
    // And a different key does not (the check above can fail).
    let other = aes_gcm::Aes256Gcm::new_from_slice(&[0u8; 32]).unwrap();
    assert!(other
        .decrypt(
            aes_gcm::Nonce::from_slice(&iv),
            Payload {
                msg: &msg,
                aad: &aad
            }
        )
        .is_err());
}

#[test]
fn wrapped_import_with_openssl_then_xks_encrypt_decrypts_outside() {
    let setup = ServeSetup::new();
    let (mut p, xks) = setup.start();
    let prof = setup.profile.as_path();
    let dir = setup.dir.path();
    let mut secrets: Vec<[u8; 32]> = Vec::new();

    // RSAES_OAEP_SHA_256 (the default), RSA-3072.
    let (pk, token) = params(prof, dir, "oaep", &[]);
    let first_token = token.clone();
    let key = rand32();
    secrets.push(key);
    let key_file = dir.join("material-1.bin");
    std::fs::write(&key_file, key).unwrap();
    let wrapped = dir.join("wrapped-1.bin");
    oaep(&pk, &key_file, &wrapped);
    assert_eq!(std::fs::metadata(&wrapped).unwrap().len(), 384);
    let (ok, err) = import(prof, "wrapped-1", &wrapped, &token, "RSAES_OAEP_SHA_256");
    assert!(ok, "{err}");
    encrypt_and_check_outside(prof, &xks, "wrapped-1", &key);

    // The token is used up: the same wrapped bytes again, under another id, are refused.
    let (ok, err) = import(
        prof,
        "wrapped-again",
        &wrapped,
        &token,
        "RSAES_OAEP_SHA_256",
    );
    assert!(!ok);
    assert!(err.contains("import_token: no such token"), "{err}");

    // RSA_AES_KEY_WRAP_SHA_256 with RSA-4096, token read from its file.
    let (pk, token) = params(
        prof,
        dir,
        "kwp",
        &[
            "--wrapping",
            "RSA_AES_KEY_WRAP_SHA_256",
            "--key-spec",
            "RSA_4096",
        ],
    );
    let key = rand32();
    secrets.push(key);
    let key_file = dir.join("material-2.bin");
    std::fs::write(&key_file, key).unwrap();
    let wrapped = dir.join("wrapped-2.bin");
    rsa_aes_wrap(dir, &pk, &key_file, &wrapped);
    assert_eq!(std::fs::metadata(&wrapped).unwrap().len(), 512 + 40);
    // The token says which algorithm it is for; asking for the other one is refused and does
    // not use the token.
    let (ok, err) = import(prof, "wrapped-2", &wrapped, &token, "RSAES_OAEP_SHA_256");
    assert!(!ok);
    assert!(
        err.contains("wrapping_algorithm: the token was issued for RSA_AES_KEY_WRAP_SHA_256"),
        "{err}"
    );
    let tok_file = format!("@{}", dir.join("kwp.token").display());
    let (ok, err) = import(
        prof,
        "wrapped-2",
        &wrapped,
        &tok_file,
        "RSA_AES_KEY_WRAP_SHA_256",
    );
    assert!(ok, "{err}");
    encrypt_and_check_outside(prof, &xks, "wrapped-2", &key);

    // A token never issued.
    let (ok, err) = import(
        prof,
        "x1",
        &wrapped,
        &"ab".repeat(16),
        "RSA_AES_KEY_WRAP_SHA_256",
    );
    assert!(!ok && err.contains("import_token: no such token"), "{err}");

    // Wrong length: 16 bytes, properly wrapped.
    let (pk, token) = params(prof, dir, "short", &[]);
    let short = dir.join("short.bin");
    std::fs::write(&short, &rand32()[..16]).unwrap();
    let wrapped = dir.join("wrapped-short.bin");
    oaep(&pk, &short, &wrapped);
    // An id that exists is refused before the unwrap, and does not use the token up.
    let (ok, err) = import(prof, "wrapped-1", &wrapped, &token, "RSAES_OAEP_SHA_256");
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, err) = import(prof, "short", &wrapped, &token, "RSAES_OAEP_SHA_256");
    assert!(!ok);
    assert!(
        err.contains("encrypted_key_material: the unwrapped key is 16 bytes"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Garbage of the right size, and garbage of a wrong size.
    let (_, token) = params(prof, dir, "garbage", &[]);
    let garbage = dir.join("garbage.bin");
    let mut g = Vec::new();
    for _ in 0..12 {
        g.extend(rand32());
    }
    std::fs::write(&garbage, &g).unwrap();
    let (ok, err) = import(prof, "garbage", &garbage, &token, "RSAES_OAEP_SHA_256");
    assert!(
        !ok && err.contains("encrypted_key_material: RSA-OAEP"),
        "{err}"
    );
    let (_, token) = params(prof, dir, "garbage2", &[]);
    std::fs::write(&garbage, &g[..100]).unwrap();
    let (ok, err) = import(prof, "garbage", &garbage, &token, "RSAES_OAEP_SHA_256");
    assert!(
        !ok && err.contains("encrypted_key_material: 100 bytes"),
        "{err}"
    );

    // Expired.
    let (pk, token) = params(prof, dir, "expiring", &["--valid-for", "1s"]);
    let key_file = dir.join("material-3.bin");
    std::fs::write(&key_file, rand32()).unwrap();
    let wrapped = dir.join("wrapped-3.bin");
    oaep(&pk, &key_file, &wrapped);
    std::thread::sleep(Duration::from_millis(2100));
    let (ok, err) = import(prof, "late", &wrapped, &token, "RSAES_OAEP_SHA_256");
    assert!(!ok && err.contains("import_token: expired at"), "{err}");
    let out = admin(prof, &["keys", "import-params", "--valid-for", "25h"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("valid_for_secs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // None of the refused imports made a key.
    let list = admin_ok(prof, &["keys", "list"]);
    for id in ["wrapped-again", "x1", "short", "garbage", "late"] {
        assert!(!list.lines().any(|l| l.starts_with(id)), "{id}: {list}");
    }

    // The raw path: refused by the CLI without the flag, and by the API without its field.
    let raw = dir.join("raw.bin");
    std::fs::write(&raw, rand32()).unwrap();
    let out = admin(
        prof,
        &[
            "keys",
            "import",
            "raw-1",
            "--from-file",
            raw.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--plaintext-key-material"), "{err}");
    let body = serde_json::json!({
        "op": "keys_import", "store": null, "id": "raw-2", "usage": "encrypt_decrypt",
        "key_b64": B64.encode(rand32()),
    });
    let d = setup.dir.path();
    let out = tools::curl()
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(d.join("ca.pem"))
        .arg("--cert")
        .arg(d.join("admin.pem"))
        .arg("--key")
        .arg(d.join("admin-key.pem"))
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(body.to_string())
        .arg(format!("https://{}/admin/v1", setup.admin_addr()))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("\"ok\":false") && answer.contains("plaintext_key_material:"),
        "{answer}"
    );
    let with_flag = admin_ok(
        prof,
        &[
            "keys",
            "import",
            "raw-3",
            "--from-file",
            raw.to_str().unwrap(),
            "--plaintext-key-material",
        ],
    );
    assert!(with_flag.contains("imported key raw-3"), "{with_flag}");

    // The audit log names each import and refusal, and no key bytes are in it or in the log.
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("keys_import_params") && audit.contains("keys_import_wrapped"),
        "{audit}"
    );
    assert!(audit.contains("imported wrapped (RSA_AES_KEY_WRAP_SHA_256)"));
    assert!(audit.contains("import_token: expired"));
    // Tokens are bearer secrets until used: the audit log names them by a hash prefix only.
    assert!(audit.contains("import_token_sha256="), "{audit}");
    assert!(
        !audit.contains(&first_token),
        "an import token is in the audit log"
    );
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(20));
    let log = p.stderr_text();
    for k in &secrets {
        for text in [&audit, &log] {
            assert!(!text.contains(&hex::encode(k)) && !text.contains(&B64.encode(k)));
        }
    }
}

/// Two `keyward serve` members on one PostgreSQL store: the wrapping key of an import token
/// issued by member A is a sealed record of the shared store, so member B imports with it (a
/// client behind a balancer cannot choose its member); the key then encrypts on member A, checked
/// outside with the known bytes; the token is used up on both members; and the wrapping key's
/// bytes are nowhere in the database in clear (`pg_dump`, searched for the RSA modulus).
#[test]
fn import_params_on_one_member_then_wrapped_import_on_another() {
    let pgdir = tempfile::tempdir().unwrap();
    let pg = keyward_store_pg::local::LocalPostgres::start(pgdir.path(), None)
        .unwrap_or_else(|e| panic!("a local PostgreSQL server (apt-get install postgresql): {e}"));
    let setup = ServeSetup::new();
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let start = cfg.find("[storage]").unwrap();
    let end = cfg[start..].find("\n[master_key]").unwrap() + start;
    let member = |state: &str| {
        format!(
            "{}[storage]\nbackend = \"postgres\"\nurl = \"{}\"\ndir = \"{state}\"\n{}",
            &cfg[..start],
            pg.url(),
            &cfg[end..]
        )
    };
    std::fs::write(&setup.config, member("state-a")).unwrap();
    let config_b = setup.dir.path().join("member-b.toml");
    std::fs::write(&config_b, member("state-b")).unwrap();
    let (mut pa, xks_a) = setup.start();
    let prof_a = setup.profile.clone();
    let mut pb = Proc::spawn(
        &["serve", "--config", config_b.to_str().unwrap()],
        setup.dir.path(),
    );
    let line = pb.wait_stderr("admin API on ", Duration::from_secs(60));
    let addr_b = addr_after(&line, "admin API on ");
    let prof_b = setup.dir.path().join("admin-b.toml");
    setup.write_profile(&prof_b, &addr_b, "admin.pem", "admin-key.pem");
    let dir = setup.dir.path();

    // Member A issues the token and its wrapping key.
    let (pk, token) = params(&prof_a, dir, "fleet", &[]);
    let key = rand32();
    let key_file = dir.join("fleet-material.bin");
    std::fs::write(&key_file, key).unwrap();
    let wrapped = dir.join("fleet-wrapped.bin");
    oaep(&pk, &key_file, &wrapped);

    // Member B imports with it (it may need a moment to read A's record).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, err) = import(&prof_b, "fleet-1", &wrapped, &token, "RSAES_OAEP_SHA_256");
        if ok {
            break;
        }
        assert!(
            err.contains("no such token") && std::time::Instant::now() < deadline,
            "member B refused the import: {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The key works on member A (once A has read B's write), checked with the known bytes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !admin_ok(&prof_a, &["keys", "list"]).contains("fleet-1") {
        assert!(
            std::time::Instant::now() < deadline,
            "member A never saw fleet-1"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    encrypt_and_check_outside(&prof_a, &xks_a, "fleet-1", &key);

    // The token is used up fleet-wide: member A refuses it too.
    let (ok, err) = import(&prof_a, "fleet-2", &wrapped, &token, "RSAES_OAEP_SHA_256");
    assert!(!ok, "member A took a token member B used");
    assert!(err.contains("no such token"), "{err}");

    // The wrapping key is in the database only sealed: its public modulus (which only the
    // private key would carry there) is in no dump, raw, hex or base64 at any alignment.
    let pub_der = {
        let out = openssl()
            .args(["rsa", "-pubin", "-outform", "DER", "-in"])
            .arg(&pk)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let modulus = &pub_der[pub_der.len() - 16 - 384 - 5..pub_der.len() - 5];
    let bindir = keyward_store_pg::local::server_bindir().unwrap();
    let dump = Command::new(bindir.join("pg_dump"))
        .arg("--dbname")
        .arg(pg.url())
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let text = dump.stdout;
    assert!(text.len() > 1000, "an empty dump proves nothing");
    let probe = &modulus[100..148];
    let hay = String::from_utf8_lossy(&text).to_string();
    assert!(
        !text.windows(probe.len()).any(|w| w == probe),
        "raw modulus in the dump"
    );
    assert!(
        !hay.contains(&hex::encode(probe)),
        "hex modulus in the dump"
    );
    for shift in 0..3 {
        let b64 = B64.encode(&probe[shift..]);
        assert!(!hay.contains(&b64[4..40]), "base64 modulus in the dump");
    }
    pb.signal(libc::SIGTERM);
    assert_eq!(pb.wait_exit(Duration::from_secs(20)), Some(0));
    pa.signal(libc::SIGTERM);
    assert_eq!(pa.wait_exit(Duration::from_secs(20)), Some(0));
}

/// The XKS Encrypt answer `enc` decrypted here with `key` (AES-256-GCM, the AAD of
/// crates/xks/src/crypto.rs); `None` when `key` is not its key.
fn decrypt_outside(enc: &serde_json::Value, key: &[u8]) -> Option<Vec<u8>> {
    let b = |f: &str| B64.decode(enc[f].as_str().unwrap()).unwrap();
    let (ct, iv, tag, ctm) = (
        b("ciphertext"),
        b("initializationVector"),
        b("authenticationTag"),
        b("ciphertextMetadata"),
    );
    let mut aad = vec![0u8, 0u8, u8::try_from(ctm.len()).unwrap()];
    aad.extend_from_slice(&ctm);
    let mut msg = ct;
    msg.extend_from_slice(&tag);
    let gcm = aes_gcm::Aes256Gcm::new_from_slice(key).unwrap();
    gcm.decrypt(
        aes_gcm::Nonce::from_slice(&iv),
        Payload {
            msg: &msg,
            aad: &aad,
        },
    )
    .ok()
}

/// `keys export`: a key created and rotated (two versions), one XKS Encrypt under each, exported
/// to a fresh openssl RSA-3072 escrow key; openssl unwraps each version (OAEP SHA-256, MGF1
/// SHA-256) and each ciphertext decrypts here under its own version's bytes only. A 2048-bit
/// escrow key is refused naming the field. serve_common sets approvals_required = 1, so the
/// M-of-N step is not exercised here (the policy and the hash binding are unit-tested).
#[test]
fn keys_export_to_an_openssl_escrow_key_then_openssl_unwraps_and_ciphertexts_decrypt() {
    let setup = ServeSetup::new();
    let (mut p, xks) = setup.start();
    let prof = setup.profile.as_path();
    let dir = setup.dir.path();
    admin_ok(prof, &["keys", "create", "exp-1"]);
    admin_ok(
        prof,
        &[
            "keys",
            "grant",
            "exp-1",
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt,metadata",
        ],
    );
    let plaintext = b"exported, checked outside";
    let (code, enc1) = xks.encrypt("exp-1", &B64.encode(plaintext));
    assert_eq!(code, 200, "{enc1}");
    admin_ok(prof, &["keys", "rotate", "exp-1"]);
    let (code, enc2) = xks.encrypt("exp-1", &B64.encode(plaintext));
    assert_eq!(code, 200, "{enc2}");

    let keygen = |bits: &str, name: &str| {
        let priv_pem = dir.join(format!("{name}.pem"));
        let pub_pem = dir.join(format!("{name}.pub.pem"));
        let mut c = openssl();
        c.args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .arg("-out")
            .arg(&priv_pem);
        run(c);
        let mut c = openssl();
        c.args(["pkey", "-pubout", "-in"])
            .arg(&priv_pem)
            .arg("-out")
            .arg(&pub_pem);
        run(c);
        (priv_pem, pub_pem)
    };
    let (esc_priv, esc_pub) = keygen("3072", "escrow");
    let out = dir.join("exp-1.export.json");
    let said = admin_ok(
        prof,
        &[
            "keys",
            "export",
            "exp-1",
            "--wrapping-public-key",
            esc_pub.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(said.contains("2 version(s)"), "{said}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(file["key_id"], "exp-1");
    let versions = file["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{file}");
    let mut keys = Vec::new();
    for v in versions {
        let n = v["version"].as_u64().unwrap();
        let wrapped = dir.join(format!("v{n}.wrapped"));
        std::fs::write(
            &wrapped,
            B64.decode(v["wrapped"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(std::fs::metadata(&wrapped).unwrap().len(), 384);
        let raw = dir.join(format!("v{n}.raw"));
        let mut c = openssl();
        c.args(["pkeyutl", "-decrypt", "-inkey"])
            .arg(&esc_priv)
            .arg("-in")
            .arg(&wrapped)
            .arg("-out")
            .arg(&raw)
            .args([
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
            ]);
        run(c);
        let k = std::fs::read(&raw).unwrap();
        assert_eq!(k.len(), 32);
        keys.push((n, k));
    }
    keys.sort();
    assert_eq!(keys[0].0, 1);
    assert_eq!(keys[1].0, 2);
    assert_ne!(keys[0].1, keys[1].1);
    assert_eq!(
        decrypt_outside(&enc1, &keys[0].1).as_deref(),
        Some(&plaintext[..])
    );
    assert_eq!(
        decrypt_outside(&enc2, &keys[1].1).as_deref(),
        Some(&plaintext[..])
    );
    assert!(decrypt_outside(&enc1, &keys[1].1).is_none());
    assert!(decrypt_outside(&enc2, &keys[0].1).is_none());

    // A 2048-bit escrow key is refused, naming the field; no file is written.
    let (_, small_pub) = keygen("2048", "small");
    let out2 = dir.join("small.export.json");
    let o = admin(
        prof,
        &[
            "keys",
            "export",
            "exp-1",
            "--wrapping-public-key",
            small_pub.to_str().unwrap(),
            "--out",
            out2.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrapping_public_key: RSA 2048 bits"), "{err}");
    assert!(!out2.exists());

    // A key scheduled for destruction is not exported; the refusal is one readable line.
    admin_ok(prof, &["keys", "schedule-destroy", "exp-1", "--days", "7"]);
    let o = admin(
        prof,
        &[
            "keys",
            "export",
            "exp-1",
            "--wrapping-public-key",
            esc_pub.to_str().unwrap(),
            "--out",
            out2.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "id: key exp-1 is scheduled for destruction; cancel-destroy it first to export it"
        ),
        "{err}"
    );
    assert!(!out2.exists());

    // Audited: key id, versions, escrow SPKI hash; no key bytes in the audit log or the log.
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("key=exp-1 export wrapped (RSAES_OAEP_SHA_256) to escrow_spki_sha256=")
            && audit.contains("versions=1,2")
            && audit.contains(file["escrow_spki_sha256"].as_str().unwrap()),
        "{audit}"
    );
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(20));
    let log = p.stderr_text();
    for (_, k) in &keys {
        for text in [&audit, &log] {
            assert!(!text.contains(&hex::encode(k)) && !text.contains(&B64.encode(k)));
        }
    }
}

/// `keys export` end to end under dual control (`approvals_required` back at its default, 2,
/// as crates/integration-tests/tests/it/admin_approvals.rs runs it) with the `RSA_AES_KEY_WRAP_SHA_256` layout: a viewer
/// and an operator are refused naming the security role; a security operator's export is
/// refused and files a request (no file written); the re-run before approval is refused; the
/// requester cannot approve it, an operator cannot; a second security operator approves; the
/// approval does not cover another escrow key, another layout or another requester; the
/// requester's re-run exports once and the approval cannot be used again. openssl unwraps each
/// version (RSA-OAEP-SHA-256 of the AES key, then `enc -d -id-aes256-wrap-pad`), and the
/// ciphertexts made before the export decrypt here under their own version only. Every step is
/// in the audit log, and no key bytes are.
#[test]
fn keys_export_under_dual_control_then_openssl_unwraps_rsa_aes_key_wrap() {
    use crate::admin_approvals::{dual_control, filed, issue, refused};
    let setup = ServeSetup::new();
    dual_control(&setup, "");
    let (mut p, xks) = setup.start();
    let dir = setup.dir.path();
    let addr = setup.admin_addr();
    let vera = issue(&setup, "vera", "viewer", &addr);
    let olga = issue(&setup, "olga", "operator", &addr);
    let sam = issue(&setup, "sam", "security", &addr);
    let tom = issue(&setup, "tom", "security", &addr);

    create_open_key(&olga, "esc-1");
    let plaintext = b"escrowed under dual control";
    let (code, enc1) = xks.encrypt("esc-1", &B64.encode(plaintext));
    assert_eq!(code, 200, "{enc1}");
    admin_ok(&olga, &["keys", "rotate", "esc-1"]);
    let (code, enc2) = xks.encrypt("esc-1", &B64.encode(plaintext));
    assert_eq!(code, 200, "{enc2}");

    let keygen = |name: &str| {
        let priv_pem = dir.join(format!("{name}.pem"));
        let pub_pem = dir.join(format!("{name}.pub.pem"));
        let mut c = openssl();
        c.args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:3072",
        ])
        .arg("-out")
        .arg(&priv_pem);
        run(c);
        let mut c = openssl();
        c.args(["pkey", "-pubout", "-in"])
            .arg(&priv_pem)
            .arg("-out")
            .arg(&pub_pem);
        run(c);
        (priv_pem, pub_pem)
    };
    let (esc_priv, esc_pub) = keygen("escrow");
    let (_, other_pub) = keygen("other-escrow");
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let out = dir.join("esc-1.export.json");
    let export = |escrow: &Path, wrapping: &str, approval: Option<&str>| -> Vec<String> {
        let mut v: Vec<String> = [
            "keys",
            "export",
            "esc-1",
            "--wrapping-public-key",
            escrow.to_str().unwrap(),
            "--wrapping",
            wrapping,
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(id) = approval {
            v.push("--approval".into());
            v.push(id.into());
        }
        v
    };
    const KWP: &str = "RSA_AES_KEY_WRAP_SHA_256";

    // A viewer and an operator: refused, naming the role needed; nothing filed.
    let err = refused(&vera, &args(&export(&esc_pub, KWP, None)));
    assert!(
        err.contains("forbidden")
            && err.contains("role is viewer")
            && err.contains("needs security"),
        "{err}"
    );
    let err = refused(&olga, &args(&export(&esc_pub, KWP, None)));
    assert!(
        err.contains("forbidden")
            && err.contains("role is operator")
            && err.contains("needs security"),
        "{err}"
    );
    assert!(!admin_ok(&vera, &["approvals", "list"]).contains("keys_export"));

    // Security, without an approval: refused, a request filed, no file written.
    let id = filed(&refused(&sam, &args(&export(&esc_pub, KWP, None))));
    assert!(!out.exists());
    let list = admin_ok(&vera, &["approvals", "list"]);
    assert!(
        list.contains(&id) && list.contains("pending") && list.contains("keys_export"),
        "{list}"
    );
    // Not approved yet.
    let err = refused(&sam, &args(&export(&esc_pub, KWP, Some(&id))));
    assert!(err.contains("not approved yet"), "{err}");
    assert!(!out.exists());
    // The requester cannot approve it; an operator cannot either.
    let err = refused(&sam, &["approvals", "approve", &id]);
    assert!(err.contains("cannot approve their own request"), "{err}");
    let err = refused(&olga, &["approvals", "approve", &id]);
    assert!(err.contains("needs the security role"), "{err}");
    // A second security operator approves.
    assert!(admin_ok(&tom, &["approvals", "approve", &id]).contains("approved request"));

    // Bound to the escrow key, the layout and the requester.
    let err = refused(&sam, &args(&export(&other_pub, KWP, Some(&id))));
    assert!(err.contains("approved another request"), "{err}");
    let err = refused(
        &sam,
        &args(&export(&esc_pub, "RSAES_OAEP_SHA_256", Some(&id))),
    );
    assert!(err.contains("approved another request"), "{err}");
    let err = refused(&tom, &args(&export(&esc_pub, KWP, Some(&id))));
    assert!(err.contains("only its requester"), "{err}");
    assert!(!out.exists());

    // The requester's re-run exports, once.
    let said = admin_ok(&sam, &args(&export(&esc_pub, KWP, Some(&id))));
    assert!(
        said.contains("2 version(s)") && said.contains(KWP),
        "{said}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::rename(&out, dir.join("esc-1.kept.json")).unwrap();
    let err = refused(&sam, &args(&export(&esc_pub, KWP, Some(&id))));
    assert!(err.contains("used already"), "{err}");
    assert!(!out.exists());
    assert!(admin_ok(&vera, &["approvals", "list"]).contains("used"));

    // openssl unwraps every version: RSA-OAEP-SHA-256 of the AES key, then AES-KWP.
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(file["key_id"], "esc-1");
    assert_eq!(file["wrapping_algorithm"], KWP);
    let mut keys = Vec::new();
    for v in file["versions"].as_array().unwrap() {
        let n = v["version"].as_u64().unwrap();
        let wrapped = B64.decode(v["wrapped"].as_str().unwrap()).unwrap();
        // 384 bytes of RSA-3072 ciphertext, then 40 of KWP (32 bytes padded to 8, plus 8).
        assert_eq!(wrapped.len(), 384 + 40, "version {n}");
        let rsa_part = dir.join(format!("kwp-v{n}.rsa"));
        let kwp_part = dir.join(format!("kwp-v{n}.kwp"));
        std::fs::write(&rsa_part, &wrapped[..384]).unwrap();
        std::fs::write(&kwp_part, &wrapped[384..]).unwrap();
        let aes = dir.join(format!("kwp-v{n}.aes"));
        let mut c = openssl();
        c.args(["pkeyutl", "-decrypt", "-inkey"])
            .arg(&esc_priv)
            .arg("-in")
            .arg(&rsa_part)
            .arg("-out")
            .arg(&aes)
            .args([
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
            ]);
        run(c);
        let aes_key = std::fs::read(&aes).unwrap();
        assert_eq!(
            aes_key.len(),
            32,
            "version {n}: the RSA part holds an AES-256 key"
        );
        let raw = dir.join(format!("kwp-v{n}.raw"));
        let mut c = openssl();
        c.args(["enc", "-d", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K"])
            .arg(hex::encode(&aes_key))
            .arg("-in")
            .arg(&kwp_part)
            .arg("-out")
            .arg(&raw);
        run(c);
        let k = std::fs::read(&raw).unwrap();
        assert_eq!(k.len(), 32, "version {n}");
        keys.push((n, k));
    }
    keys.sort();
    assert_eq!(keys.iter().map(|k| k.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        decrypt_outside(&enc1, &keys[0].1).as_deref(),
        Some(&plaintext[..])
    );
    assert_eq!(
        decrypt_outside(&enc2, &keys[1].1).as_deref(),
        Some(&plaintext[..])
    );
    assert!(decrypt_outside(&enc1, &keys[1].1).is_none());
    assert!(decrypt_outside(&enc2, &keys[0].1).is_none());

    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));

    // The audit log names every step; no key bytes anywhere in it or in serve's log.
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    let line = |who: &str, what: &str, needle: &str| {
        audit
            .lines()
            .find(|l| l.contains(who) && l.contains(what) && l.contains(needle))
            .unwrap_or_else(|| panic!("no audit line for {who} {what} {needle}:\n{audit}"))
            .to_string()
    };
    line("CN=vera", "keys_export", "forbidden");
    line("CN=olga", "keys_export", "forbidden");
    assert!(line("CN=sam", "approval_filed", &id).contains("keys_export"));
    assert!(line("CN=sam", "approvals_approve", &id).contains("cannot approve"));
    assert!(line("CN=olga", "approvals_approve", &id).contains("security role"));
    line("CN=tom", "approvals_approve", &id);
    assert!(line("CN=sam", "approval_used", &id).contains("CN=tom"));
    let done = line("CN=sam", "keys_export", "versions=1,2");
    assert!(
        done.contains(&format!("export wrapped ({KWP})"))
            && done.contains(file["escrow_spki_sha256"].as_str().unwrap()),
        "{done}"
    );
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("keys_export") && l.contains("versions="))
            .count(),
        1,
        "exactly one export ran:\n{audit}"
    );
    let log = p.stderr_text();
    for (_, k) in &keys {
        for text in [&audit, &log] {
            assert!(!text.contains(&hex::encode(k)) && !text.contains(&B64.encode(k)));
        }
    }
}
