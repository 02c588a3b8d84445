//! The fuzz targets: one function per parser that reads bytes from outside the appliance.
//!
//! Each target takes arbitrary bytes and must return without panicking, whatever they are; what
//! the parser answers (an error, most of the time) is not judged. The same functions are run two
//! ways:
//!
//! * by libFuzzer, coverage-guided, through `fuzz/fuzz_targets/<name>.rs` (`make fuzz`, see
//!   docs/testing.md: cargo-fuzz on the installed stable toolchain);
//! * by `cargo test` (`tests/corpus.rs`), which replays every file under `fuzz/corpus/<name>/`
//!   and `fuzz/regressions/<name>/` through its target, so a change that makes a committed input
//!   panic fails `make test` without any fuzzer installed.
//!
//! Several targets need more than one input (a report and its certificates; a file and its
//! head): [`pieces`] splits the bytes at [`SEP`], which seeds are made with and which the fuzzer
//! learns from the comparisons it sees.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The separator between the parts of a multi-part input.
pub const SEP: &[u8] = b"\n--keyward-fuzz--\n";

/// A fuzz target.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory and its libFuzzer binary have.
pub const TARGETS: &[(&str, Target)] = &[
    ("snp_report", snp_report),
    ("snp_certs", snp_certs),
    ("tpm_structures", tpm_structures),
    ("nitro_document", nitro_document),
    ("evidence_bundle", evidence_bundle),
    ("krp_messages", krp_messages),
    ("xks_request", xks_request),
    ("keystore_log", keystore_log),
    ("backup_file", backup_file),
    ("config_file", config_file),
    ("policy_file", policy_file),
    ("tls_chain", tls_chain),
];

/// Split `data` at every [`SEP`].
pub fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = find(rest, SEP) {
        out.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    out.push(rest);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A fixed verification time (the test vectors' certificates are valid then), so a run does
/// not depend on the day.
fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_735_689_600) // 2025-01-01
}

/// The repository's default verifier policy (AMD roots pinned, measurements unpinned).
fn default_policy() -> &'static keyward_verify::Policy {
    static P: OnceLock<keyward_verify::Policy> = OnceLock::new();
    P.get_or_init(keyward_verify::Policy::builtin_default)
}

/// A raw SEV-SNP report, then (after [`SEP`]s) the DER certificates that came with it (VCEK or
/// VLEK, ASK, ARK): the report parser, every field accessor the verifier uses, and the whole
/// SNP check (chain to the AMD roots, signature, policy fields).
pub fn snp_report(data: &[u8]) {
    let parts = pieces(data);
    let (report, certs) = match parts.split_first() {
        Some((r, c)) => (*r, c),
        None => return,
    };
    if let Ok(r) = keyward_verify::snp::Report::parse(report) {
        let _ = format!("{r:?}");
    }
    let certs: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
    let v = keyward_verify::verify_snp_report(
        report,
        &certs,
        default_policy(),
        &keyward_verify::Expectations::default(),
        at(),
    );
    let _ = v.to_json();
}

/// AMD certificates and CRLs: the DER parsers the SNP chain check and `krs crl` use.
pub fn snp_certs(data: &[u8]) {
    let _ = keyward_verify::snp::Cert::from_der(data);
    let _ = keyward_verify::snp::Crl::from_der(data);
}

/// TPM 2.0 wire structures: a TPMT_PUBLIC (the AK), a TPMT_SIGNATURE, a TPMS_ATTEST (quote)
/// and a TCG event log, as parts; then the whole quote check on them.
pub fn tpm_structures(data: &[u8]) {
    use keyward_verify::tpm;
    let parts = pieces(data);
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let _ = tpm::parse_public(part(0));
    let _ = tpm::parse_signature(part(1));
    for bank in [
        keyward_evidence::Bank::Sha256,
        keyward_evidence::Bank::Sha384,
    ] {
        let _ = tpm::parse_event_log(part(3), bank);
    }
    let ev = keyward_evidence::TpmEvidence {
        ak_public: part(0).to_vec(),
        signature: part(1).to_vec(),
        attest: part(2).to_vec(),
        pcrs: Vec::new(),
        event_log: parts.get(3).map(|p| p.to_vec()),
    };
    let mut v = keyward_verify::Verdict::default();
    tpm::verify_tpm(&ev, &tpm::TpmPolicy::default(), Some(&[0u8; 64]), &mut v);
}

/// A NitroTPM / Nitro Enclaves attestation document: COSE_Sign1, the CBOR payload, and the
/// certificate chain check against AWS's root.
pub fn nitro_document(data: &[u8]) {
    use keyward_verify::nitro;
    if let Ok(cose) = nitro::parse_cose(data) {
        let _ = nitro::parse_document(&cose.payload);
    }
    let ev = keyward_evidence::NitroEvidence {
        document: data.to_vec(),
    };
    let mut v = keyward_verify::Verdict::default();
    nitro::verify_nitro(
        &ev,
        &nitro::NitroPolicy::default(),
        nitro::NitroExpect {
            nonce: None,
            public_key: None,
            user_data: None,
        },
        1_735_689_600,
        &mut v,
    );
}

/// An evidence bundle as `keyward verify --evidence` reads it (JSON) and as the KRS receives it
/// (canonical CBOR), judged under the default policy.
pub fn evidence_bundle(data: &[u8]) {
    let json = serde_json::from_slice::<keyward_evidence::EvidenceBundle>(data);
    let cbor = keyward_krp::cbor::from_slice::<keyward_evidence::EvidenceBundle>(data);
    for b in [json.ok(), cbor.ok()].into_iter().flatten() {
        let v = keyward_verify::verify_bundle(
            &b,
            default_policy(),
            &keyward_verify::Expectations::default(),
            at(),
        );
        let _ = v.to_table();
    }
}

/// KRP/1 frames in both directions: what the KRS reads from an agent (Hello, Evidence, head
/// updates and queries) and what an agent reads from the KRS (Challenge, Release, Deny, acks),
/// and the receipts inside them.
pub fn krp_messages(data: &[u8]) {
    use keyward_krp::messages::{Request, Response};
    use keyward_krp::wire::read_msg;
    let mut r = data;
    while let Ok(Some(_)) = read_msg::<_, Request>(&mut r) {}
    let mut r = data;
    while let Ok(Some(resp)) = read_msg::<_, Response>(&mut r) {
        let receipt = match &resp {
            Response::Release(rel) => Some(&rel.receipt),
            Response::Deny(d) => Some(&d.receipt),
            _ => None,
        };
        if let Some(bytes) = receipt {
            let _ = keyward_krp::Receipt::decode(bytes);
        }
    }
    let _ = keyward_krp::cbor::from_slice::<Request>(data);
    let _ = keyward_krp::cbor::from_slice::<Response>(data);
    let _ = keyward_krp::Receipt::decode(data);
}

mod xks_fixture;

/// One XKS request as it arrives: a raw HTTP/1.1 head (parsed by httparse, hyper's parser)
/// and its body, through the whole handler (route, SigV4, JSON, key lookup, grants, AES-GCM,
/// the audit record). Each input runs twice: as it is, and re-signed with the fixture's known
/// secret (SigV4 over its method, path, host and body), so inputs get past authentication
/// into the operations.
pub fn xks_request(data: &[u8]) {
    let _ = xks_statuses(data);
}

/// [`xks_request`]'s work, returning the status of each call (as it is, then re-signed).
pub fn xks_statuses(data: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let (head, body) = match find(data, b"\r\n\r\n") {
        Some(i) => (&data[..i + 4], &data[i + 4..]),
        None => (data, &[][..]),
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
        return out;
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return out;
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return out;
    };
    let mut map = http::HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            map.append(n, v);
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let ctx = xks_fixture::ctx();
    let mut call = |headers: &http::HeaderMap| {
        let r = keyward_xks::Request {
            method: &method,
            path,
            query,
            headers,
            authority: None,
            body,
        };
        let reply = keyward_xks::handle(ctx, &r, Instant::now());
        // Whatever the input, the answer is an HTTP status.
        assert!((200..600).contains(&reply.status));
        if std::env::var_os("KEYWARD_FUZZ_DEBUG").is_some() {
            eprintln!("{} {}", reply.status, String::from_utf8_lossy(&reply.body));
        }
        out.push(reply.status);
    };
    call(&map);
    if let Some(signed) = xks_fixture::resign(&method, target, &map, body) {
        call(&signed);
    }
    out
}

/// The file key store as `keyward serve` opens it: `keystore.jsonl` (the header, then one
/// signed record per line), then after [`SEP`] the sealed head, opened by the registry under
/// the fixture master key (the seeds are stores made under that key, so their MACs pass and
/// the records are applied).
pub fn keystore_log(data: &[u8]) {
    let _ = keystore_opens(data);
}

/// [`keystore_log`]'s work: whether the registry opened the store.
pub fn keystore_opens(data: &[u8]) -> bool {
    let parts = pieces(data);
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let log = parts.first().copied().unwrap_or_default();
    if std::fs::write(dir.path().join("keystore.jsonl"), log).is_err() {
        return false;
    }
    if let Some(head) = parts.get(1) {
        if std::fs::write(dir.path().join("keystore.head"), head).is_err() {
            return false;
        }
    }
    xks_fixture::init_memory();
    match keyward_secret::Key32::from_bytes(&FUZZ_MASTER_KEY) {
        Ok(mk) => keyward_keystore::Registry::open_dir(dir.path(), mk).is_ok(),
        Err(_) => false,
    }
}

/// The master key the keystore seeds are sealed under (a test value, never a real key).
pub const FUZZ_MASTER_KEY: [u8; 32] = [0x4b; 32];

/// A backup file (`keyward admin backup`), as `keyward store restore` reads it.
pub fn backup_file(data: &[u8]) {
    let _ = keyward_keystore::backup::parse(data);
}

/// The appliance configuration (`keyward.toml`), as `keyward serve` and `config check` read
/// it, with every problem reported rather than raised.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = keyward_config::load_str(text, std::path::Path::new("/nonexistent"));
    let _ = format!("{loaded:?}");
}

/// A verifier policy (TOML or JSON) and a reference-values file, as `keyward verify` and the
/// KRS read them.
pub fn policy_file(data: &[u8]) {
    if let Ok(p) = keyward_verify::Policy::from_bytes(data) {
        let _ = p.check_measured();
        let _ = p.digest();
    }
    let _ = keyward_verify::refvalues::ReferenceValues::from_json(data);
}

/// A PEM certificate chain as `keyward admin tls install` hands it to the appliance: checked
/// for a fixed key at a fixed time (parse, no private key, leaf key, validity, each issuer's
/// signature).
pub fn tls_chain(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = keyward_appliance::check_chain(text, xks_fixture::tls_spki(), 1_735_689_600);
}
