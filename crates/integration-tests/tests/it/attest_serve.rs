//! `keyward serve` with `[attestation] listen`: the live-attestation listener comes up on its
//! own address, separate from the XKS and admin ports, bound to the XKS certificate. No SNP
//! device exists here, so a well-formed request is answered 503 (the attester is unavailable)
//! rather than with evidence; malformed requests are refused before any attester runs.

use crate::serve_common;

use std::time::Duration;

use serve_common::*;

#[test]
fn serve_starts_the_attestation_listener() {
    let setup = ServeSetup::new();
    let mut cfg = std::fs::read_to_string(&setup.config).unwrap();
    cfg.push_str("\n[attestation]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&setup.config, cfg).unwrap();
    let (mut p, xks) = setup.start();
    let line = p.wait_stderr("live attestation on http://", Duration::from_secs(20));
    let rest = &line[line.find("http://").unwrap() + 7..];
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '/')
        .collect();
    assert!(
        !xks.url.contains(&addr),
        "attestation shares the XKS address"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://{addr}/attestation");
    let err = rt
        .block_on(keyward_attest::live::fetch_evidence(&url, &[3u8; 32]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("503"), "{err}");
    // Not under an XKS path, and GET is refused.
    let err = rt
        .block_on(keyward_attest::live::fetch_evidence(
            &format!("http://{addr}/kw/kms/xks/v1/health"),
            &[3u8; 32],
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("404"), "{err}");
    p.signal(15);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}
