//! `keyward verify` as a process on a saved TPM bundle (a real swtpm quote with a synthetic
//! firmware event log, `tests/data/tpm/`): accepted under its policy, refused when a PCR value
//! or the event log is altered, and refused under the built-in policy (no registered AK).

use std::process::Command;

fn data(f: &str) -> String {
    format!("{}/tests/data/tpm/{f}", env!("CARGO_MANIFEST_DIR"))
}

fn verify(bundle: &str, policy: Option<&str>) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.args(["verify", "--evidence", bundle, "--json"]);
    if let Some(p) = policy {
        cmd.args(["--policy", p]);
    }
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing in {v:#}"))
}

#[test]
fn saved_tpm_bundle_verifies_and_alterations_fail() {
    let (code, v) = verify(&data("bundle.json"), Some(&data("policy.toml")));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(check(&v, "tpm.signature")["status"], "passed");
    let replay = check(&v, "tpm.replay");
    assert_eq!(replay["status"], "passed");
    assert!(replay["detail"].as_str().unwrap().contains("[0, 4, 7]"));
    assert!(check(&v, "tpm.userspace")["detail"]
        .as_str()
        .unwrap()
        .contains("[11]"));
    // Offline, no expected qualifying data: skipped with a warning, not passed.
    assert_eq!(check(&v, "tpm.extra_data")["status"], "skipped");

    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("bundle.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A PCR value changed.
    let mut b = original.clone();
    let val = b["tpm"]["pcrs"][1]["value"].as_str().unwrap().to_string();
    let flipped = format!(
        "{}{}",
        if val.starts_with('0') { "1" } else { "0" },
        &val[1..]
    );
    b["tpm"]["pcrs"][1]["value"] = flipped.into();
    let p = dir.path().join("pcr.json");
    std::fs::write(&p, serde_json::to_vec(&b).unwrap()).unwrap();
    let (code, v) = verify(p.to_str().unwrap(), Some(&data("policy.toml")));
    assert_eq!(code, 1);
    assert_eq!(check(&v, "tpm.pcr_digest")["status"], "failed");

    // The event log dropped.
    let mut b = original.clone();
    b["tpm"].as_object_mut().unwrap().remove("event_log");
    let p = dir.path().join("nolog.json");
    std::fs::write(&p, serde_json::to_vec(&b).unwrap()).unwrap();
    let (code, v) = verify(p.to_str().unwrap(), Some(&data("policy.toml")));
    assert_eq!(code, 1);
    assert_eq!(check(&v, "tpm.event_log")["status"], "failed");

    // Under the built-in policy nothing registers the AK.
    let (code, v) = verify(&data("bundle.json"), None);
    assert_eq!(code, 1);
    assert_eq!(check(&v, "tpm.policy")["status"], "failed");

    // Malformed input: exit 2, no panic.
    let p = dir.path().join("junk.json");
    std::fs::write(&p, b"{\"version\":1,\"tpm\":{\"attest\":\"!!\"}}").unwrap();
    let (code, _) = verify(p.to_str().unwrap(), Some(&data("policy.toml")));
    assert_eq!(code, 2);
}
