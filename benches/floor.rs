//! The floor: CPU cost of the work no XKS proxy can avoid for one signed encrypt, measured with
//! the same crates keyward uses, independent of keyward's code.
//!
//! * `sigv4_cached_key`: canonical request + SHA-256 of it and of the body, string to sign and
//!   the final HMAC with a signing key cached per day (the four-HMAC derivation is not per
//!   request).
//! * `json`: parse a KMS-sized encrypt request (borrowed strings) and serialise the answer.
//! * `base64`: decode plaintext and AAD, encode ciphertext, IV and tag (`base64-simd`, as the
//!   request path; `base64_scalar` is the same with the `base64` crate, for comparison).
//! * `aes_gcm/*`: random 12-byte IV plus AES-256-GCM with the spec's AAD layout, at KMS size
//!   (320 B plaintext, 96 B AAD) and the spec maximum (4300 B, 8192 B).
//! * `tls_record_roundtrip/*`: one request record client->server and one answer record back
//!   through in-memory rustls (ring) connections; both ends' work, so the server's share is
//!   about half.
//!
//! `make bench` adds these to the CPU per request of a bare TLS+HTTP server (`echo_server`) to
//! state keyward's cost as a multiple of the floor.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn encrypt_body(pt: usize, aad: usize) -> Vec<u8> {
    let mut p = vec![0u8; pt];
    let mut a = vec![0u8; aad];
    rand::thread_rng().fill_bytes(&mut p);
    rand::thread_rng().fill_bytes(&mut a);
    serde_json::json!({
        "requestMetadata": {
            "awsPrincipalArn": "arn:aws:iam::111122223333:role/keyward-bench",
            "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/4c5e3e7a-1d7b-4e0b-9a55-3b1f7c9e2d10",
            "kmsOperation": "Encrypt",
            "kmsRequestId": "b3c1e0a4-7d2f-4a6b-9c1d-5e8f0a1b2c3d",
        },
        "plaintext": B64.encode(&p),
        "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": B64.encode(&a),
    })
    .to_string()
    .into_bytes()
}

fn sigv4(c: &mut Criterion) {
    let body = encrypt_body(320, 96);
    type HmacSha256 = Hmac<Sha256>;
    // kSigning, derived once per (secret, day, region) and cached by a sensible verifier.
    let mut k =
        <HmacSha256 as Mac>::new_from_slice(b"AWS4wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEYxxx")
            .unwrap();
    k.update(b"20261128");
    let signing_key = k.finalize().into_bytes();
    c.bench_function("floor/sigv4_cached_key", |b| {
        b.iter(|| {
            let body_hash = hex::encode(Sha256::digest(black_box(&body)));
            let canonical = format!(
                "POST\n/keyward/kms/xks/v1/keys/key-1/encrypt\n\ncontent-type:application/json\nhost:127.0.0.1:8443\nx-amz-date:20261128T160000Z\n\ncontent-type;host;x-amz-date\n{body_hash}"
            );
            let creq_hash = hex::encode(Sha256::digest(canonical.as_bytes()));
            let sts = format!(
                "AWS4-HMAC-SHA256\n20261128T160000Z\n20261128/us-east-1/kms-xks-proxy/aws4_request\n{creq_hash}"
            );
            let mut mac = <HmacSha256 as Mac>::new_from_slice(&signing_key).unwrap();
            mac.update(sts.as_bytes());
            black_box(mac.finalize().into_bytes())
        })
    });
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Meta<'a> {
    aws_principal_arn: &'a str,
    kms_key_arn: Option<&'a str>,
    kms_operation: &'a str,
    kms_request_id: &'a str,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct EncryptReq<'a> {
    #[serde(borrow)]
    request_metadata: Meta<'a>,
    plaintext: &'a str,
    encryption_algorithm: &'a str,
    additional_authenticated_data: Option<&'a str>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EncryptResp<'a> {
    ciphertext: &'a str,
    initialization_vector: &'a str,
    authentication_tag: &'a str,
    ciphertext_metadata: &'a str,
}

fn json_and_base64(c: &mut Criterion) {
    let body = encrypt_body(320, 96);
    let ct = B64.encode([7u8; 320]);
    c.bench_function("floor/json", |b| {
        b.iter(|| {
            let req: EncryptReq = serde_json::from_slice(black_box(&body)).unwrap();
            black_box(req.request_metadata.aws_principal_arn);
            let resp = EncryptResp {
                ciphertext: &ct,
                initialization_vector: "AAAAAAAAAAAAAAAA",
                authentication_tag: "AAAAAAAAAAAAAAAAAAAAAA==",
                ciphertext_metadata: "AQE=",
            };
            black_box(serde_json::to_vec(&resp).unwrap())
        })
    });
    let req: EncryptReq = serde_json::from_slice(&body).unwrap();
    let (pt_b64, aad_b64) = (req.plaintext, req.additional_authenticated_data.unwrap());
    let ct_raw = [7u8; 320];
    // base64-simd, as keyward's request path (strict standard Base64 either way).
    let fast = base64_simd::STANDARD;
    c.bench_function("floor/base64", |b| {
        b.iter(|| {
            let pt = fast.decode_to_vec(black_box(pt_b64)).unwrap();
            let aad = fast.decode_to_vec(black_box(aad_b64)).unwrap();
            let mut out = Vec::with_capacity(512);
            fast.encode_append(black_box(&ct_raw), &mut out);
            fast.encode_append([1u8; 12], &mut out);
            fast.encode_append([2u8; 16], &mut out);
            black_box((pt, aad, out))
        })
    });
    c.bench_function("floor/base64_scalar", |b| {
        b.iter(|| {
            let pt = B64.decode(black_box(pt_b64)).unwrap();
            let aad = B64.decode(black_box(aad_b64)).unwrap();
            let mut out = String::with_capacity(512);
            B64.encode_string(black_box(&ct_raw), &mut out);
            B64.encode_string([1u8; 12], &mut out);
            B64.encode_string([2u8; 16], &mut out);
            black_box((pt, aad, out))
        })
    });
}

fn aes_gcm(c: &mut Criterion) {
    let cipher = Aes256Gcm::new_from_slice(&[9u8; 32]).unwrap();
    let mut g = c.benchmark_group("floor/aes_gcm");
    for (name, pt_len, aad_len) in [("kms", 320usize, 96usize), ("max", 4300, 8192)] {
        let pt = vec![3u8; pt_len];
        // AAD_gcm = u16_be(len(aad)) || aad || u8(len(ctm)) || ctm
        let mut aad = Vec::with_capacity(aad_len + 4);
        aad.extend_from_slice(&(aad_len as u16).to_be_bytes());
        aad.extend(std::iter::repeat_n(5u8, aad_len));
        aad.extend_from_slice(&[1, 1]);
        g.throughput(Throughput::Bytes((pt_len + aad_len) as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut iv = [0u8; 12];
                rand::rngs::OsRng.fill_bytes(&mut iv);
                black_box(
                    cipher
                        .encrypt(
                            Nonce::from_slice(&iv),
                            Payload {
                                msg: &pt,
                                aad: &aad,
                            },
                        )
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

/// A connected in-memory rustls (ring) client/server pair with TLS 1.3.
fn tls_pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into()),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client =
        rustls::ClientConnection::new(Arc::new(client_cfg), "localhost".try_into().unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    while client.is_handshaking() || server.is_handshaking() {
        transfer_c2s(&mut client, &mut server);
        transfer_s2c(&mut server, &mut client);
    }
    (client, server)
}

fn transfer_c2s(c: &mut rustls::ClientConnection, s: &mut rustls::ServerConnection) {
    let mut buf = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut buf).unwrap();
    }
    let mut rd = buf.as_slice();
    while !rd.is_empty() {
        s.read_tls(&mut rd).unwrap();
        s.process_new_packets().unwrap();
    }
}

fn transfer_s2c(s: &mut rustls::ServerConnection, c: &mut rustls::ClientConnection) {
    let mut buf = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut buf).unwrap();
    }
    let mut rd = buf.as_slice();
    while !rd.is_empty() {
        c.read_tls(&mut rd).unwrap();
        c.process_new_packets().unwrap();
    }
}

fn tls_records(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor/tls_record_roundtrip");
    for (name, req_len, resp_len) in [("kms", 1100usize, 600usize), ("max", 19_000, 5_900)] {
        let (mut client, mut server) = tls_pair();
        let req = vec![b'q'; req_len];
        let resp = vec![b'r'; resp_len];
        let mut sink = vec![0u8; req_len.max(resp_len)];
        g.bench_function(name, |b| {
            b.iter(|| {
                client.writer().write_all(&req).unwrap();
                transfer_c2s(&mut client, &mut server);
                let mut got = 0;
                while got < req_len {
                    got += server.reader().read(&mut sink[..]).unwrap();
                }
                server.writer().write_all(&resp).unwrap();
                transfer_s2c(&mut server, &mut client);
                let mut got = 0;
                while got < resp_len {
                    got += client.reader().read(&mut sink[..]).unwrap();
                }
            })
        });
    }
    g.finish();
}

/// Not part of the floor: what `keyward bench` spends signing one request with aws-sigv4 (body
/// hash pre-computed), to tell where the load generator's own ceiling is.
fn client_sign(c: &mut Criterion) {
    let signer = keyward_bench::Signer::new(
        "AKIAKEYWARDBENCHTEST23",
        "Q3w9vJm2Xb7Lr5Tn8Pk4Hs6Yd1Fg0Zc2Ve5Ua7Ni3Ox",
        "us-east-1",
        "127.0.0.1:8443",
    )
    .unwrap();
    let body = encrypt_body(320, 96);
    let prepared = keyward_bench::Prepared {
        op: keyward_bench::Op::Encrypt,
        path: "/keyward/kms/xks/v1/keys/key-1/encrypt".into(),
        body_sha256_hex: hex::encode(Sha256::digest(&body)),
        body: body.into(),
    };
    c.bench_function("client/sign_request", |b| {
        b.iter(|| {
            black_box(
                signer
                    .request(&prepared, std::time::SystemTime::now())
                    .unwrap(),
            )
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = sigv4, json_and_base64, aes_gcm, tls_records, client_sign
}
criterion_main!(benches);
