//! The SNP attester's conversion code on recorded bytes: a real AWS report and VLEK (plus the
//! AMD Milan ASK/ARK/ASVK) assembled into a GHCB certificate table the way the EC2 host returns
//! it, parsed and turned into `SnpEvidence` by the same functions `/dev/sev-guest` and
//! configfs-tsm use. Malformed tables are refused without panicking.

use keyward_attest::{
    build_cert_table, evidence_from_parts, parse_cert_table, tsm_report, GUID_ARK, GUID_ASK,
    GUID_CRL, GUID_VLEK,
};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/attest/{name}",
        crate::repo().display()
    ))
    .unwrap()
}

fn pem_blocks(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8(pem.to_vec()).unwrap();
    text.split("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN"))
        .map(|b| {
            let block = format!("{}-----END CERTIFICATE-----\n", b.trim_start());
            der::pem::decode_vec(block.as_bytes()).unwrap().1
        })
        .collect()
}

#[test]
fn ec2_cert_table_converts_to_evidence() {
    let report = data("aws_milan_vlek_report_v3_vmpl1.bin");
    let vlek = data("aws_milan_vlek.der");
    let chain = pem_blocks(&data("milan_ask_ark_asvk.pem"));
    assert_eq!(chain.len(), 3);
    // Hosts pad entries; the VLEK goes in with 64 zero bytes after its DER.
    let mut padded = vlek.clone();
    padded.extend_from_slice(&[0u8; 64]);
    // The ARK entry as PEM: converted to DER on the way.
    let ark_pem =
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &chain[1]).unwrap();
    let table = build_cert_table(&[
        (GUID_VLEK, &padded),
        (GUID_ASK, &chain[0]),
        (GUID_ARK, ark_pem.as_bytes()),
        (GUID_CRL, b"not a certificate"),
    ]);
    let entries = parse_cert_table(&table).unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0].guid, GUID_VLEK);
    assert_eq!(entries[3].guid, GUID_CRL);

    let ev = evidence_from_parts(&report, &entries).unwrap();
    assert_eq!(ev.report, report);
    assert_eq!(ev.certs.len(), 3, "the CRL entry is dropped");
    assert_eq!(ev.certs[0], vlek, "padding trimmed to the DER length");
    assert_eq!(ev.certs[1], chain[0]);
    assert_eq!(ev.certs[2], chain[1], "PEM converted to DER");

    // A short report is refused.
    assert!(evidence_from_parts(&report[..1000], &entries).is_err());
}

#[test]
fn malformed_cert_tables_are_refused_without_panic() {
    let table = build_cert_table(&[(GUID_VLEK, b"abcdef")]);
    for cut in 0..table.len() {
        // Every truncation either fails or (past the terminator) yields the one entry.
        if let Ok(e) = parse_cert_table(&table[..cut]) {
            assert_eq!(e.len(), 1);
        }
    }
    // An entry pointing past the end.
    let mut bad = table.clone();
    bad[20..24].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    assert!(parse_cert_table(&bad).is_err());
    // No terminator.
    assert!(parse_cert_table(&[0xaa; 24]).is_err());
    assert!(parse_cert_table(&[]).is_err());
}

#[test]
fn configfs_tsm_absent_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-tsm");
    assert!(tsm_report(&missing, &[0u8; 64], 0).is_err());
}
