//! `keyward admin trust`: the operator's first contact with an appliance, without trusting the
//! console the host controls. Reads the TLS key the admin endpoint serves, asks the appliance's
//! live-attestation listener for fresh evidence bound to a random nonce and to that key (the
//! `keyward verify --url` core, [`crate::verify_cli::fetch_bound`]), judges it under the same
//! policy file the KRS and `keyward verify` use, and only when it verifies and is bound to that
//! very key writes the pin (`server_spki_sha256`) into the admin profile. Then one `tls show`
//! through the pinned connection confirms the appliance holds the key and reports the same hash.
//!
//! A relay (man in the middle) that serves its own key at the admin address cannot pass: the
//! hardware-signed evidence names the appliance's key, not the relay's, so the binding check
//! fails and nothing is written. A relay that forwards the TLS bytes unchanged gains nothing: the
//! pinned key's private half never leaves the attested VM.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use std::time::SystemTime;

use crate::verify_cli::{fetch_bound, load_policy, BINDING_CHECKS};
use keyward_admin::proto::{Request, TlsInfo};
use keyward_admin::Profile;
use keyward_admin::ServerTrust;
use keyward_verify::{verify_bundle, Status, Verdict};

/// Why the pin was not written.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot read the TLS key served at {url}: {msg}")]
    ReadKey { url: String, msg: String },
    #[error("cannot get evidence: {0}")]
    Fetch(String),
    #[error(
        "the evidence is not bound to the TLS key {url} serves ({spki}) and this nonce: it names \
         another key (a relay or man in the middle at that address; or the admin listener does \
         not serve the attested XKS key), or it is replayed; no pin written ({check}: {detail})"
    )]
    OtherKey {
        url: String,
        spki: String,
        check: String,
        detail: String,
    },
    #[error("the evidence does not verify under {policy}: {check}: {detail}; no pin written")]
    Verdict {
        policy: String,
        check: String,
        detail: String,
    },
    #[error(
        "the evidence binds nothing to the TLS key (no {} check passed); no pin written",
        BINDING_CHECKS.join(" / ")
    )]
    Unbound,
    #[error("the pinned admin API did not confirm: {0}; no pin written")]
    Confirm(String),
    #[error("writing {path}: {msg}")]
    Write { path: String, msg: String },
}

/// What a successful `trust` established.
#[derive(Debug)]
pub struct Trusted {
    pub spki_sha256: [u8; 32],
    pub verdict: Verdict,
    pub nonce: [u8; 32],
}

/// Verify and pin. `url`: the admin API (default: the profile's); `attestation_url`: the
/// appliance's `[attestation] listen`; `policy`: the verifier policy file. The profile is
/// rewritten (its `server_spki_sha256` line set) only on success.
pub async fn trust(
    profile_path: &Path,
    url: Option<&str>,
    attestation_url: &str,
    policy: &Path,
) -> Result<Trusted, TrustError> {
    let policy_v = load_policy(policy).map_err(|e| TrustError::Setup(format!("{e:#}")))?;
    // The server is not trusted yet: the profile is read for its URL and client certificate.
    let mut profile = Profile::load_with(profile_path, Some(ServerTrust::SpkiSha256([0; 32])))
        .map_err(|e| TrustError::Setup(e.to_string()))?;
    if let Some(u) = url {
        let (host, port) = keyward_admin::parse_url(u).map_err(TrustError::Setup)?;
        profile.url = u.to_string();
        profile.host = host;
        profile.port = port;
    }
    // The key the admin endpoint serves (read, not trusted: the evidence must name it).
    let spki = keyward_attest::live::fetch_spki_sha256(&profile.url)
        .await
        .map_err(|e| TrustError::ReadKey {
            url: profile.url.clone(),
            msg: e.to_string(),
        })?;
    let live = fetch_bound(attestation_url, &spki)
        .await
        .map_err(|e| TrustError::Fetch(format!("{e:#}")))?;
    let verdict = verify_bundle(&live.bundle, &policy_v, &live.expect, SystemTime::now());
    let failed_binding = verdict
        .checks
        .iter()
        .find(|c| c.status == Status::Failed && BINDING_CHECKS.contains(&c.name.as_str()));
    if let Some(c) = failed_binding {
        return Err(TrustError::OtherKey {
            url: profile.url.clone(),
            spki: hex::encode(spki),
            check: c.name.clone(),
            detail: c.detail.clone(),
        });
    }
    if let Some(c) = verdict.first_failure() {
        return Err(TrustError::Verdict {
            policy: policy.display().to_string(),
            check: c.name.clone(),
            detail: c.detail.clone(),
        });
    }
    let bound = verdict
        .checks
        .iter()
        .any(|c| c.status == Status::Passed && BINDING_CHECKS.contains(&c.name.as_str()));
    if !bound {
        return Err(TrustError::Unbound);
    }
    // Through the pinned connection: the server proves it holds the key (handshake signature)
    // and reports the same hash.
    profile.trust = ServerTrust::SpkiSha256(spki);
    let resp = profile
        .call(&Request::TlsShow)
        .await
        .map_err(|e| TrustError::Confirm(e.to_string()))?;
    if resp.ok {
        let info: TlsInfo = serde_json::from_value(resp.result.unwrap_or_default())
            .map_err(|e| TrustError::Confirm(format!("unreadable tls show answer: {e}")))?;
        if !info.spki_sha256.eq_ignore_ascii_case(&hex::encode(spki)) {
            return Err(TrustError::Confirm(format!(
                "tls show reports {}, the served key is {}",
                info.spki_sha256,
                hex::encode(spki)
            )));
        }
    }
    write_pin(profile_path, &hex::encode(spki))?;
    Ok(Trusted {
        spki_sha256: spki,
        verdict,
        nonce: live.nonce,
    })
}

/// Set `server_spki_sha256 = "<hex>"` in the profile: the existing line replaced, or a new one
/// before the first table (top-level keys must precede tables); every other line kept.
pub fn write_pin(path: &Path, hex: &str) -> Result<(), TrustError> {
    let err = |msg: String| TrustError::Write {
        path: path.display().to_string(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let line = format!("server_spki_sha256 = \"{hex}\"  # written by `keyward admin trust`");
    let mut out = Vec::new();
    let mut placed = false;
    for l in text.lines() {
        let key = l.trim_start();
        let is_pin = key
            .strip_prefix("server_spki_sha256")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_pin {
            if !placed {
                out.push(line.clone());
                placed = true;
            }
            continue;
        }
        if !placed && key.starts_with('[') {
            out.push(line.clone());
            placed = true;
        }
        out.push(l.to_string());
    }
    if !placed {
        out.push(line);
    }
    let mut new = out.join("\n");
    new.push('\n');
    // The result must still be a profile (e.g. not a duplicate key).
    toml::from_str::<toml::Table>(&new).map_err(|e| err(e.message().to_string()))?;
    keyward_admin::write_file(path, new.as_bytes(), false).map_err(|e| err(e.to_string()))
}

/// `keyward admin trust`: exit 0 with the pin written, 1 refused (one line, nothing written).
pub fn run(req: keyward_admin::TrustRequest) -> anyhow::Result<ExitCode> {
    let keyward_admin::TrustRequest {
        profile,
        url,
        attestation_url,
        policy,
        json,
    } = req;
    let (profile, policy) = (profile.as_path(), policy.as_path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match rt.block_on(trust(profile, url.as_deref(), &attestation_url, policy)) {
        Ok(t) => {
            if json {
                println!("{}", t.verdict.to_json());
            } else {
                print!("{}", t.verdict.to_table());
            }
            eprintln!(
                "keyward admin trust: fresh evidence (nonce {}) verified under {} and bound to the admin TLS key spki_sha256={}; pinned in {} (server_spki_sha256)",
                hex::encode(t.nonce),
                policy.display(),
                hex::encode(t.spki_sha256),
                profile.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("keyward admin trust: refused: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

// Test code only: every unwrap below is on a temporary file the test itself writes, never on
// outside input.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_line_replaced_or_added() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.toml");
        std::fs::write(&p, "# mine\nurl = \"https://a:1\"\nclient_cert = \"c\"\n").unwrap();
        write_pin(&p, &"ab".repeat(32)).unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.starts_with("# mine\nurl"), "{t}");
        let v: toml::Table = toml::from_str(&t).unwrap();
        assert_eq!(
            v["server_spki_sha256"].as_str(),
            Some("ab".repeat(32).as_str())
        );
        write_pin(&p, &"cd".repeat(32)).unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        assert_eq!(t.matches("server_spki_sha256").count(), 1, "{t}");
        let v: toml::Table = toml::from_str(&t).unwrap();
        assert_eq!(
            v["server_spki_sha256"].as_str(),
            Some("cd".repeat(32).as_str())
        );
    }
}
