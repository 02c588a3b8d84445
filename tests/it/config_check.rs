//! `keyward config check`, run as the real binary: the legacy `[aws_xks_config]` section loads,
//! its 40-character sample secret is reported with its key path and what KMS requires, unknown
//! keys are named, every problem is reported at once, a file that cannot be read is named with
//! its cause once, and the exit codes are right.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_keyward");
const GOOD_SECRET: &str = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=";

fn check(dir: &Path, text: &str) -> (i32, String) {
    let f = dir.join("keyward.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&f)
        .env_remove("KEYWARD_TEST_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    (out.status.code().unwrap_or(-1), stdout)
}

/// A state directory with a master key file and the files the sections point at.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mk = dir.path().join("master.key");
    std::fs::write(&mk, [7u8; 32]).unwrap();
    std::fs::set_permissions(&mk, std::fs::Permissions::from_mode(0o600)).unwrap();
    for f in ["chain.pem", "key.pem", "ca.pem"] {
        std::fs::write(dir.path().join(f), "placeholder").unwrap();
    }
    dir
}

const BASE: &str = r#"
[xks]
listen = "127.0.0.1:0"
tls_cert_chain_file = "chain.pem"
tls_key_file = "key.pem"

[storage]
dir = "store"

[master_key]
source = "file"
file = "master.key"
"#;

const LEGACY: &str = r#"
[aws_xks_config]
aws_xks_enable = true
aws_xks_region = "us-east-1"
aws_xks_service = "xks-kms"
aws_xks_sigv4_access_key_id = "AKIAIOSFODNN7EXAMPLE"
aws_xks_sigv4_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
"#;

#[test]
fn legacy_section_loads_and_its_sample_secret_is_an_error_with_its_path() {
    let dir = fixture();
    let (code, out) = check(dir.path(), &format!("{LEGACY}{BASE}"));
    assert_eq!(code, 1, "{out}");
    // The secret: an error with its key path and KMS's rule, never the value itself.
    let line = out
        .lines()
        .find(|l| l.contains("aws_xks_config.aws_xks_sigv4_secret_access_key"))
        .unwrap_or_else(|| panic!("secret not reported:\n{out}"));
    assert!(line.contains("error"), "{line}");
    assert!(
        line.contains("43-64") && line.contains("[A-Za-z0-9/+=]"),
        "{line}"
    );
    // ... and that serve still installs it (crates/integration-tests/tests/it/serve_legacy.rs shows it does).
    assert!(
        line.contains("still installs it") && line.contains("KMS will refuse it"),
        "{line}"
    );
    assert!(
        !out.contains("wJalrXUtnFEMI"),
        "secret value leaked:\n{out}"
    );
    // The service name: a warning naming the right value.
    let svc = out
        .lines()
        .find(|l| l.contains("aws_xks_config.aws_xks_service"))
        .unwrap_or_else(|| panic!("service not reported:\n{out}"));
    assert!(
        svc.contains("warning") && svc.contains("kms-xks-proxy"),
        "{svc}"
    );
    // Nothing else is wrong with the file: exactly one error.
    assert!(out.contains("1 error(s), 1 warning(s)"), "{out}");
}

#[test]
fn legacy_section_with_a_kms_valid_secret_passes() {
    let dir = fixture();
    let legacy = LEGACY.replace("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", GOOD_SECRET);
    let (code, out) = check(dir.path(), &format!("{legacy}{BASE}"));
    assert_eq!(code, 0, "{out}");
    let last = out.lines().last().unwrap();
    assert!(
        last.ends_with("OK (1 key store(s), 1 credential(s), 1 warning(s))"),
        "{out}"
    );
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let dir = fixture();
    let text = format!(
        "{BASE}\n[[key_store]]\nname = \"a\"\nregion = \"us-east-1\"\nuri_prefx = \"/a\"\n\n[memory]\nallow_unlocked_memroy = true\n"
    )
    .replace("tls_key_file", "tls_key_fiel");
    let (code, out) = check(dir.path(), &text);
    assert_eq!(code, 1, "{out}");
    for path in [
        "key_store[0].uri_prefx: unknown key",
        "memory.allow_unlocked_memroy: unknown key",
        "xks.tls_key_fiel: unknown key",
        "xks.tls_key_file: required key is missing",
    ] {
        assert!(out.contains(path), "missing `{path}` in:\n{out}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = fixture();
    let text = r#"
[xks]
listen = "not-an-address"
insecure_http = "yes"

[[key_store]]
name = "a"
region = "US East"
uri_prefix = "no-slash"
[[key_store.credentials]]
access_key_id = "AKIDEXAMPLE"
secret_access_key = "short"
[[key_store.credentials]]
access_key_id = "ABCDEFGHIJKLMNOPQRSTUVWX"
secret_access_key_env = "KEYWARD_TEST_SECRET"

[master_key]
source = "hsm"

[log]
format = "xml"
"#;
    let (code, out) = check(dir.path(), text);
    assert_eq!(code, 1, "{out}");
    for path in [
        "xks.listen:",
        "xks.insecure_http: expected true or false",
        "key_store[0].region:",
        "key_store[0].uri_prefix:",
        "key_store[0].credentials[0].access_key_id:",
        "key_store[0].credentials[0].secret_access_key:",
        "key_store[0].credentials[1].secret_access_key_env: environment variable KEYWARD_TEST_SECRET",
        "master_key.source: unknown source `hsm`",
        "log.format:",
    ] {
        assert!(out.contains(path), "missing `{path}` in:\n{out}");
    }
    let errors = out.lines().filter(|l| l.contains(": error: ")).count();
    assert!(errors >= 9, "{errors} errors:\n{out}");
}

#[test]
fn secrets_from_files_and_env_and_master_key_mode() {
    let dir = fixture();
    let s1 = dir.path().join("s1");
    std::fs::write(&s1, format!("{GOOD_SECRET}\n")).unwrap();
    std::fs::set_permissions(&s1, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "{BASE}\n[[key_store]]\nname = \"a\"\nregion = \"us-east-1\"\n\
         [[key_store.credentials]]\naccess_key_id = \"ABCDEFGHIJKLMNOPQRST\"\nsecret_access_key_file = \"s1\"\n\
         [[key_store.credentials]]\naccess_key_id = \"ABCDEFGHIJKLMNOPQRS2\"\nsecret_access_key_env = \"KW_TEST_S2\"\n"
    );
    let f = dir.path().join("keyward.toml");
    std::fs::write(&f, &text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&f)
        .env("KW_TEST_S2", GOOD_SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("OK (1 key store(s), 2 credential(s)"),
        "{stdout}"
    );

    // A secret file others may read is refused like the master key file, with its key path
    // (and it is named, never shown).
    for mode in [0o644, 0o640, 0o602] {
        std::fs::set_permissions(&s1, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = Command::new(BIN)
            .args(["config", "check"])
            .arg(&f)
            .env("KW_TEST_S2", GOOD_SECRET)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "mode {mode:o}: {stdout}");
        let line = stdout
            .lines()
            .find(|l| l.contains("key_store[0].credentials[0].secret_access_key_file:"))
            .unwrap_or_else(|| panic!("mode {mode:o} not reported:\n{stdout}"));
        assert!(
            line.contains("error")
                && line.contains(&format!("mode {mode:o}"))
                && line.contains("chmod 600"),
            "{line}"
        );
        assert!(
            !stdout.contains(GOOD_SECRET),
            "secret value leaked:\n{stdout}"
        );
    }
    std::fs::set_permissions(&s1, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A master key readable by the group is refused.
    std::fs::set_permissions(
        dir.path().join("master.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let (code, out) = check(dir.path(), &text);
    assert_eq!(code, 1);
    assert!(
        out.contains("master_key.file:") && out.contains("chmod 600"),
        "{out}"
    );
}

#[test]
fn syntax_errors_and_missing_files_exit_non_zero() {
    let dir = fixture();
    let (code, out) = check(dir.path(), "[xks\nlisten = 1");
    assert_eq!(code, 1);
    assert!(out.contains("not valid TOML"), "{out}");
    let out = Command::new(BIN)
        .args(["config", "check", "/nonexistent/keyward.toml"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn a_missing_file_is_reported_with_its_cause_once() {
    // `config check` and `serve` both stop on a file that cannot be read, in one line that
    // names the file and gives the OS's reason once (it was printed twice).
    let cause = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    for args in [
        &["config", "check", "/nonexistent/keyward.toml"][..],
        &["serve", "--config", "/nonexistent/keyward.toml"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!("keyward: cannot read /nonexistent/keyward.toml: {cause}"),
            "{args:?}"
        );
    }
}

#[test]
fn the_committed_example_has_no_unknown_or_malformed_keys() {
    // The example points at /etc/keyward files that do not exist here: only those may fail.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keyward.toml");
    let out = Command::new(BIN)
        .args(["config", "check", example])
        .env("KEYWARD_PAYMENTS_SECRET_2", GOOD_SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines().filter(|l| l.contains(": error: ")) {
        assert!(
            line.contains("is not a readable file") || line.contains("cannot read"),
            "unexpected problem in the example: {line}"
        );
    }
    assert!(stdout.contains("xks.tls_cert_chain_file"), "{stdout}");
}

#[test]
fn appliance_managed_tls_and_stores_from_the_admin_api() {
    let dir = fixture();
    let managed = BASE
        .replace("tls_cert_chain_file = \"chain.pem\"\n", "")
        .replace("tls_key_file = \"key.pem\"\n", "");
    let admin = "\n[admin]\nlisten = \"127.0.0.1:0\"\nclient_ca_file = \"ca.pem\"\n";
    // No TLS files and no key store: fine with an admin listener (the appliance image).
    let (code, out) = check(
        dir.path(),
        &format!("{managed}{admin}\n[xks.mtls]\nclient_ca_file = \"ca.pem\"\nallowed_subjects = [\"cks.kms.us-east-1.amazonaws.com\"]\n"),
    );
    assert_eq!(code, 0, "{out}");
    // Without one, no store can ever exist: an error; and the self-signed XKS certificate
    // could never be replaced: a warning.
    let (code, out) = check(dir.path(), &managed);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: key_store:") && out.contains("stores create"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("warning: xks:") && l.contains("self-signed")),
        "{out}"
    );
    // tls_names: DNS names or IP addresses, and only for the managed key.
    let named = managed.replace(
        "[xks]\n",
        "[xks]\ntls_names = [\"xks.example.com\", \"10.0.0.5\", \"bad name\"]\n",
    );
    let (code, out) = check(dir.path(), &format!("{named}{admin}"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("xks.tls_names[2]"), "{out}");
    let (code, out) = check(
        dir.path(),
        &format!(
            "{}{admin}",
            BASE.replace("[xks]\n", "[xks]\ntls_names = [\"a.example\"]\n")
        ),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("xks.tls_names"), "{out}");
    // One TLS file without the other is still an error.
    let (code, out) = check(
        dir.path(),
        &format!(
            "{}{admin}",
            BASE.replace("tls_key_file = \"key.pem\"\n", "")
        ),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("xks.tls_key_file: required key is missing"),
        "{out}"
    );
}
