//! The TEST signer: a stand-in for AMD's key hierarchy, for tests and for the simulated SNP
//! attester of `keyward demo`. It issues RSA-PSS-SHA384 (salt 48) intermediates and P-384
//! VCEK/VLEK certificates that carry AMD's extensions, signs well-formed 1184-byte reports
//! with chosen fields, and issues CRLs.
//!
//! Its root (the "keyward TEST ARK") is a different trust root from AMD's: its private key is
//! public, in `attestation/test-roots/`, and no policy trusts it unless it names its
//! fingerprint ([`TEST_ARK_SHA256`]) in `[[snp.roots]]`. Reports it signs go through exactly the
//! same verifier code as real ones.
//!
//! The RSA-4096 keys were generated once (`cargo test --test verify_testsign -- --ignored
//! generate_test_roots`) and committed: generating them takes seconds (far more in debug
//! builds), and nothing may wait for that at demo start.

// Builds test data from fixed-size fields it chose itself; it never parses outside input.
#![allow(clippy::indexing_slicing)]

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{BitString, GeneralizedTime, Ia5StringRef, OctetString, UtcTime};
use der::{Decode, Encode};
use p384::ecdsa::signature::Signer;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256, Sha384};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::policy::{Product, SignerKind};
use crate::snp::cert::amd_oid;
use crate::snp::report::{Tcb, REPORT_LEN, SIGNED_LEN};

/// The test ARK certificate (PEM), committed.
pub const TEST_ARK_PEM: &str = include_str!("../../../attestation/test-roots/test_ark.pem");
const TEST_ARK_KEY: &str = include_str!("../../../attestation/test-roots/test_ark.key.pem");
const TEST_ASK_KEY: &str = include_str!("../../../attestation/test-roots/test_ask.key.pem");
const TEST_ASVK_KEY: &str = include_str!("../../../attestation/test-roots/test_asvk.key.pem");

/// SHA-256 of the test ARK's DER: the value a policy must name to trust simulated reports.
pub const TEST_ARK_SHA256: &str = include_str!("../../../attestation/test-roots/test_ark.sha256");

/// Subject of the test ARK.
pub const TEST_ARK_SUBJECT: &str = "CN=ARK-keyward-TEST,O=keyward TEST ROOT - NOT AMD";

/// Errors from the test signer (bad fixture files or bad requests).
#[derive(Debug, thiserror::Error)]
pub enum TestSignError {
    /// A committed fixture is not what it should be (the message says which).
    #[error("test root fixture: {0}")]
    Fixture(&'static str),
    #[error("test root fixture: {0}")]
    FixtureKey(#[source] rsa::pkcs8::Error),
    #[error("test root fixture: {0}")]
    FixtureCert(#[source] crate::snp::cert::CertError),
    /// Building a certificate or report failed (DER, names, times, keys).
    #[error("encoding: {0}")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn enc<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> TestSignError {
    TestSignError::Encode(e.into())
}

/// A `[[snp.roots]]` TOML snippet that trusts the test root (for tests and the demo only).
pub fn test_root_policy_toml() -> String {
    format!(
        "[[snp.roots]]\nname = \"keyward TEST ARK (simulated; never in production)\"\nsha256 = \"{}\"\npem = \"\"\"\n{}\"\"\"\n",
        TEST_ARK_SHA256.trim(),
        TEST_ARK_PEM
    )
}

/// The test CA: the committed ARK, ASK and ASVK keys.
pub struct TestCa {
    ark_key: RsaPrivateKey,
    ark_der: Vec<u8>,
    ask_key: RsaPrivateKey,
    asvk_key: RsaPrivateKey,
}

/// What a VEK certificate should say.
#[derive(Debug, Clone)]
pub struct VekSpec {
    pub product: Product,
    pub signer: SignerKind,
    /// The TCB the certificate endorses (its SPL extensions).
    pub tcb: Tcb,
    /// hwID (64 bytes, Turin 8) for a VCEK; `None` omits the extension.
    pub hw_id: Option<Vec<u8>>,
    /// CSP id for a VLEK (e.g. `CN=test.example`); `None` omits the extension.
    pub csp_id: Option<String>,
    /// DER INTEGER contents of the serial (real VEKs use 0).
    pub serial: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl VekSpec {
    /// A VEK valid from 2020 to 2049 with serial 0.
    pub fn new(product: Product, signer: SignerKind, tcb: Tcb) -> VekSpec {
        VekSpec {
            product,
            signer,
            tcb,
            hw_id: None,
            csp_id: None,
            serial: vec![0],
            not_before: UNIX_EPOCH + Duration::from_secs(1_577_836_800),
            not_after: UNIX_EPOCH + Duration::from_secs(2_524_608_000),
        }
    }
}

/// What a CRL should say.
#[derive(Debug, Clone)]
pub struct CrlSpec {
    /// Serials (DER INTEGER contents) to list.
    pub revoked: Vec<Vec<u8>>,
    pub this_update: SystemTime,
    pub next_update: SystemTime,
}

fn name(s: &str) -> Result<Name, TestSignError> {
    Name::from_str(s).map_err(enc)
}

fn time(t: SystemTime) -> Result<Time, TestSignError> {
    let d = t.duration_since(UNIX_EPOCH).map_err(enc)?;
    // RFC 5280: UTCTime through 2049, GeneralizedTime after.
    if d.as_secs() < 2_524_608_000 {
        Ok(Time::UtcTime(UtcTime::from_unix_duration(d).map_err(enc)?))
    } else {
        Ok(Time::GeneralTime(
            GeneralizedTime::from_unix_duration(d).map_err(enc)?,
        ))
    }
}

fn pss_sign(key: &RsaPrivateKey, msg: &[u8]) -> Vec<u8> {
    let sk = rsa::pss::BlindedSigningKey::<Sha384>::new_with_salt_len(key.clone(), 48);
    sk.sign_with_rng(&mut rand::rngs::OsRng, msg).to_vec()
}

fn pss_alg() -> Result<spki::AlgorithmIdentifierOwned, TestSignError> {
    rsa::pss::get_default_pss_signature_algo_id::<Sha384>().map_err(enc)
}

fn ext<T: Encode>(oid: der::asn1::ObjectIdentifier, v: &T) -> Result<Extension, TestSignError> {
    Ok(Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(v.to_der().map_err(enc)?).map_err(enc)?,
    })
}

/// Build and sign a certificate with RSA-PSS-SHA384 (salt 48).
#[allow(clippy::too_many_arguments)]
fn issue(
    issuer_key: &RsaPrivateKey,
    issuer: &str,
    subject: &str,
    spki_der: &[u8],
    serial: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, TestSignError> {
    let alg = pss_alg()?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(serial).map_err(enc)?,
        signature: alg.clone(),
        issuer: name(issuer)?,
        validity: Validity {
            not_before: time(not_before)?,
            not_after: time(not_after)?,
        },
        subject: name(subject)?,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki_der).map_err(enc)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: if extensions.is_empty() {
            None
        } else {
            Some(extensions)
        },
    };
    let tbs_der = tbs.to_der().map_err(enc)?;
    let sig = pss_sign(issuer_key, &tbs_der);
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig).map_err(enc)?,
    };
    cert.to_der().map_err(enc)
}

fn rsa_key(pem: &str) -> Result<RsaPrivateKey, TestSignError> {
    RsaPrivateKey::from_pkcs8_pem(pem).map_err(TestSignError::FixtureKey)
}

/// Intermediate subject for a product and signer kind.
pub fn intermediate_subject(product: Product, signer: SignerKind) -> String {
    let n = product.amd_name();
    match signer {
        SignerKind::Vcek => format!("CN=SEV-{n},O=keyward TEST - NOT AMD"),
        SignerKind::Vlek => format!("CN=SEV-VLEK-{n},O=keyward TEST - NOT AMD"),
    }
}

impl TestCa {
    /// Load the committed test root and intermediate keys.
    pub fn load() -> Result<TestCa, TestSignError> {
        let ark_der = crate::snp::cert::split_cert_input(TEST_ARK_PEM.as_bytes())
            .map_err(TestSignError::FixtureCert)?
            .into_iter()
            .next()
            .ok_or(TestSignError::Fixture("no test ARK"))?;
        if hex::encode(Sha256::digest(&ark_der)) != TEST_ARK_SHA256.trim() {
            return Err(TestSignError::Fixture(
                "test_ark.pem does not match test_ark.sha256",
            ));
        }
        Ok(TestCa {
            ark_key: rsa_key(TEST_ARK_KEY)?,
            ark_der,
            ask_key: rsa_key(TEST_ASK_KEY)?,
            asvk_key: rsa_key(TEST_ASVK_KEY)?,
        })
    }

    /// Build a test CA from freshly generated keys (the fixture generator uses this).
    pub fn from_keys(
        ark_key: RsaPrivateKey,
        ask_key: RsaPrivateKey,
        asvk_key: RsaPrivateKey,
    ) -> Result<TestCa, TestSignError> {
        let spki = ark_key.to_public_key().to_public_key_der().map_err(enc)?;
        let ark_der = issue(
            &ark_key,
            TEST_ARK_SUBJECT,
            TEST_ARK_SUBJECT,
            spki.as_bytes(),
            &[1, 0, 0],
            UNIX_EPOCH + Duration::from_secs(1_577_836_800), // 2020-01-01
            UNIX_EPOCH + Duration::from_secs(4_102_444_800), // 2100-01-01
            Vec::new(),
        )?;
        Ok(TestCa {
            ark_key,
            ark_der,
            ask_key,
            asvk_key,
        })
    }

    /// The test ARK (DER).
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }
    pub fn ark_key(&self) -> &RsaPrivateKey {
        &self.ark_key
    }
    pub fn ask_key(&self) -> &RsaPrivateKey {
        &self.ask_key
    }
    pub fn asvk_key(&self) -> &RsaPrivateKey {
        &self.asvk_key
    }

    /// Issue the test ASK (VCEK issuer) or ASVK (VLEK issuer) for `product`, signed by the
    /// test ARK, with the given serial and validity.
    pub fn intermediate_with(
        &self,
        product: Product,
        signer: SignerKind,
        serial: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<u8>, TestSignError> {
        let key = match signer {
            SignerKind::Vcek => &self.ask_key,
            SignerKind::Vlek => &self.asvk_key,
        };
        let spki = key.to_public_key().to_public_key_der().map_err(enc)?;
        issue(
            &self.ark_key,
            TEST_ARK_SUBJECT,
            &intermediate_subject(product, signer),
            spki.as_bytes(),
            serial,
            not_before,
            not_after,
            Vec::new(),
        )
    }

    /// [`TestCa::intermediate_with`] with serial 0x0100+kind and validity 2020-2100.
    pub fn intermediate(
        &self,
        product: Product,
        signer: SignerKind,
    ) -> Result<Vec<u8>, TestSignError> {
        let serial = match signer {
            SignerKind::Vcek => [1, 0, 1],
            SignerKind::Vlek => [1, 1, 1],
        };
        self.intermediate_with(
            product,
            signer,
            &serial,
            UNIX_EPOCH + Duration::from_secs(1_577_836_800),
            UNIX_EPOCH + Duration::from_secs(4_102_444_800),
        )
    }

    /// Issue a VCEK or VLEK certificate for `key` with AMD's extensions.
    pub fn vek(
        &self,
        spec: &VekSpec,
        key: &p384::ecdsa::SigningKey,
    ) -> Result<Vec<u8>, TestSignError> {
        let (issuer_key, subject) = match spec.signer {
            SignerKind::Vcek => (&self.ask_key, "CN=SEV-VCEK,O=keyward TEST - NOT AMD"),
            SignerKind::Vlek => (&self.asvk_key, "CN=SEV-VLEK,O=keyward TEST - NOT AMD"),
        };
        let ia5 = |s: &str| Ia5StringRef::new(s).map(|x| x.to_der());
        let mut exts = vec![
            ext(
                der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1"),
                &1u8,
            )?,
            Extension {
                extn_id: amd_oid::PRODUCT_NAME,
                critical: false,
                extn_value: OctetString::new(
                    ia5(&format!("{}-B0", spec.product.amd_name()))
                        .map_err(enc)?
                        .map_err(enc)?,
                )
                .map_err(enc)?,
            },
        ];
        if let Some(fmc) = spec.tcb.fmc {
            exts.push(ext(amd_oid::FMC_SPL, &fmc)?);
        }
        exts.push(ext(amd_oid::BL_SPL, &spec.tcb.bootloader)?);
        exts.push(ext(amd_oid::TEE_SPL, &spec.tcb.tee)?);
        exts.push(ext(amd_oid::SNP_SPL, &spec.tcb.snp)?);
        exts.push(ext(amd_oid::UCODE_SPL, &spec.tcb.microcode)?);
        if let Some(hw) = &spec.hw_id {
            // AMD's current encoding: hwID wrapped in a DER OCTET STRING.
            exts.push(ext(
                amd_oid::HW_ID,
                &OctetString::new(hw.clone()).map_err(enc)?,
            )?);
        }
        if let Some(csp) = &spec.csp_id {
            exts.push(Extension {
                extn_id: amd_oid::CSP_ID,
                critical: false,
                extn_value: OctetString::new(ia5(csp).map_err(enc)?.map_err(enc)?).map_err(enc)?,
            });
        }
        let spki = key.verifying_key().to_public_key_der().map_err(enc)?;
        issue(
            issuer_key,
            &intermediate_subject(spec.product, spec.signer),
            subject,
            spki.as_bytes(),
            &spec.serial,
            spec.not_before,
            spec.not_after,
            exts,
        )
    }

    /// A CRL issued by the test ARK (or, to test the "wrong signer" case, signed by `signer`
    /// while still naming the ARK).
    pub fn crl(
        &self,
        spec: &CrlSpec,
        signer: Option<&RsaPrivateKey>,
    ) -> Result<Vec<u8>, TestSignError> {
        let alg = pss_alg()?;
        let revoked = spec
            .revoked
            .iter()
            .map(|s| {
                Ok(RevokedCert {
                    serial_number: SerialNumber::new(s).map_err(enc)?,
                    revocation_date: time(spec.this_update)?,
                    crl_entry_extensions: None,
                })
            })
            .collect::<Result<Vec<_>, TestSignError>>()?;
        let tbs = TbsCertList {
            version: Version::V2,
            signature: alg.clone(),
            issuer: name(TEST_ARK_SUBJECT)?,
            this_update: time(spec.this_update)?,
            next_update: Some(time(spec.next_update)?),
            revoked_certificates: if revoked.is_empty() {
                None
            } else {
                Some(revoked)
            },
            crl_extensions: None,
        };
        let tbs_der = tbs.to_der().map_err(enc)?;
        let sig = pss_sign(signer.unwrap_or(&self.ark_key), &tbs_der);
        CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: alg,
            signature: BitString::from_bytes(&sig).map_err(enc)?,
        }
        .to_der()
        .map_err(enc)
    }
}

/// Builds a raw 1184-byte report field by field (offsets of the SNP ABI), then signs it.
#[derive(Clone)]
pub struct ReportBuilder {
    raw: [u8; REPORT_LEN],
    product: Product,
}

impl ReportBuilder {
    /// A version-3 report for `product`: VMPL 0, POLICY 0x30000 (SMT allowed, bit 17),
    /// sig_algo 1, CPUID of the product, the given signer in KEY_INFO, all TCBs equal to `tcb`.
    pub fn new(product: Product, signer: SignerKind, tcb: &Tcb) -> ReportBuilder {
        let mut b = ReportBuilder {
            raw: [0u8; REPORT_LEN],
            product,
        };
        b.version(3).policy(0x30000).vmpl(0);
        b.raw[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        b.signer_bits(match signer {
            SignerKind::Vcek => 0,
            SignerKind::Vlek => 1,
        });
        let (fam, model) = match product {
            Product::Milan => (0x19, 0x01),
            Product::Genoa => (0x19, 0x11),
            Product::Turin => (0x1A, 0x02),
        };
        b.cpuid(fam, model, 1);
        b.reported_tcb(tcb)
            .committed_tcb(tcb)
            .launch_tcb(tcb)
            .current_tcb(tcb);
        b.raw[0x1E8..0x1EB].copy_from_slice(&[29, 55, 1]);
        b.raw[0x1EC..0x1EF].copy_from_slice(&[29, 55, 1]);
        b
    }
    pub fn version(&mut self, v: u32) -> &mut Self {
        self.raw[0..4].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn guest_svn(&mut self, v: u32) -> &mut Self {
        self.raw[4..8].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn policy(&mut self, p: u64) -> &mut Self {
        self.raw[8..16].copy_from_slice(&p.to_le_bytes());
        self
    }
    pub fn vmpl(&mut self, v: u32) -> &mut Self {
        self.raw[0x30..0x34].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn platform_info(&mut self, p: u64) -> &mut Self {
        self.raw[0x40..0x48].copy_from_slice(&p.to_le_bytes());
        self
    }
    /// KEY_INFO.SIGNING_KEY (0 VCEK, 1 VLEK, 7 none).
    pub fn signer_bits(&mut self, k: u32) -> &mut Self {
        let ki = (k & 7) << 2;
        self.raw[0x48..0x4C].copy_from_slice(&ki.to_le_bytes());
        self
    }
    pub fn report_data(&mut self, d: &[u8; 64]) -> &mut Self {
        self.raw[0x50..0x90].copy_from_slice(d);
        self
    }
    pub fn measurement(&mut self, m: &[u8; 48]) -> &mut Self {
        self.raw[0x90..0xC0].copy_from_slice(m);
        self
    }
    pub fn host_data(&mut self, h: &[u8; 32]) -> &mut Self {
        self.raw[0xC0..0xE0].copy_from_slice(h);
        self
    }
    /// ID_KEY_DIGEST (0xE0).
    pub fn id_key_digest(&mut self, d: &[u8; 48]) -> &mut Self {
        self.raw[0xE0..0x110].copy_from_slice(d);
        self
    }
    /// AUTHOR_KEY_DIGEST (0x110); also sets KEY_INFO.AUTHOR_KEY_EN.
    pub fn author_key_digest(&mut self, d: &[u8; 48]) -> &mut Self {
        self.raw[0x110..0x140].copy_from_slice(d);
        self.raw[0x48] |= 1;
        self
    }
    pub fn reported_tcb(&mut self, t: &Tcb) -> &mut Self {
        let e = t.encode(self.product);
        self.raw[0x180..0x188].copy_from_slice(&e);
        self
    }
    pub fn cpuid(&mut self, fam: u8, model: u8, step: u8) -> &mut Self {
        self.raw[0x188] = fam;
        self.raw[0x189] = model;
        self.raw[0x18A] = step;
        self
    }
    pub fn chip_id(&mut self, c: &[u8; 64]) -> &mut Self {
        self.raw[0x1A0..0x1E0].copy_from_slice(c);
        self
    }
    pub fn committed_tcb(&mut self, t: &Tcb) -> &mut Self {
        let e = t.encode(self.product);
        self.raw[0x1E0..0x1E8].copy_from_slice(&e);
        self
    }
    pub fn current_tcb(&mut self, t: &Tcb) -> &mut Self {
        let e = t.encode(self.product);
        self.raw[0x38..0x40].copy_from_slice(&e);
        self
    }
    pub fn launch_tcb(&mut self, t: &Tcb) -> &mut Self {
        let e = t.encode(self.product);
        self.raw[0x1F0..0x1F8].copy_from_slice(&e);
        self
    }
    /// Any byte, for tests of fields without a setter.
    pub fn set_byte(&mut self, off: usize, b: u8) -> &mut Self {
        if off < SIGNED_LEN {
            self.raw[off] = b;
        }
        self
    }
    /// The unsigned bytes.
    pub fn raw(&self) -> [u8; REPORT_LEN] {
        self.raw
    }
    /// Sign bytes 0x000-0x29F with ECDSA P-384/SHA-384 and write R and S (72-byte
    /// little-endian fields) at 0x2A0 and 0x2E8.
    pub fn sign(&self, key: &p384::ecdsa::SigningKey) -> Vec<u8> {
        let mut raw = self.raw;
        let sig: p384::ecdsa::Signature = key.sign(&raw[..SIGNED_LEN]);
        let (r, s) = sig.split_bytes();
        for i in 0..48 {
            raw[0x2A0 + i] = r[47 - i];
            raw[0x2E8 + i] = s[47 - i];
        }
        raw.to_vec()
    }
}

/// A complete simulated platform: a VEK key and its certificate chain under the test root.
/// The simulated attester calls [`SimulatedPlatform::report`] for each attestation.
pub struct SimulatedPlatform {
    pub product: Product,
    pub signer: SignerKind,
    pub tcb: Tcb,
    pub chip_id: [u8; 64],
    pub measurement: [u8; 48],
    vek_key: p384::ecdsa::SigningKey,
    /// VEK, intermediate, ARK (DER), as an extended report's certificate table would carry.
    pub certs: Vec<Vec<u8>>,
}

impl SimulatedPlatform {
    /// A Milan VCEK platform with a fixed TCB (bl 4, tee 0, snp 22, ucode 213), a random
    /// chip id and VEK key, and the given launch measurement.
    pub fn new(measurement: [u8; 48]) -> Result<SimulatedPlatform, TestSignError> {
        let tcb = Tcb {
            fmc: None,
            bootloader: 4,
            tee: 0,
            snp: 22,
            microcode: 213,
            raw: [0; 8],
        };
        let mut chip_id = [0u8; 64];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut chip_id);
        Self::with(Product::Milan, SignerKind::Vcek, tcb, chip_id, measurement)
    }

    /// A platform with every parameter chosen.
    pub fn with(
        product: Product,
        signer: SignerKind,
        tcb: Tcb,
        chip_id: [u8; 64],
        measurement: [u8; 48],
    ) -> Result<SimulatedPlatform, TestSignError> {
        let ca = TestCa::load()?;
        let vek_key = p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let mut spec = VekSpec::new(product, signer, tcb);
        match signer {
            SignerKind::Vcek => {
                let n = if product == Product::Turin { 8 } else { 64 };
                spec.hw_id = Some(chip_id[..n].to_vec());
            }
            SignerKind::Vlek => spec.csp_id = Some("CN=keyward-simulated.test".into()),
        }
        let vek = ca.vek(&spec, &vek_key)?;
        let int = ca.intermediate(product, signer)?;
        Ok(SimulatedPlatform {
            product,
            signer,
            tcb,
            chip_id: if signer == SignerKind::Vlek {
                [0; 64]
            } else {
                chip_id
            },
            measurement,
            vek_key,
            certs: vec![vek, int, ca.ark_der().to_vec()],
        })
    }

    /// A signed report bound to `report_data`.
    pub fn report(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let mut b = ReportBuilder::new(self.product, self.signer, &self.tcb);
        b.report_data(report_data)
            .measurement(&self.measurement)
            .chip_id(&self.chip_id);
        b.sign(&self.vek_key)
    }

    /// Sign an arbitrary builder with this platform's VEK.
    pub fn sign(&self, b: &ReportBuilder) -> Vec<u8> {
        b.sign(&self.vek_key)
    }
}
