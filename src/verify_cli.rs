//! `keyward verify`: the auditor's tool. Reads saved evidence (a bundle, or a raw SNP report
//! with certificates in any order and format), a policy and optionally a past verification
//! time, runs the verifier library and prints the verdict as a table or JSON.
//!
//! Exit codes: 0 no check failed, 1 some check failed, 2 usage error or unreadable input.
//! All file and network input is read here; the library only judges bytes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use keyward_evidence::{EvidenceBundle, SnpEvidence};
use keyward_verify::snp::{split_cert_input, split_crl_input};
use keyward_verify::{verify_bundle, Expectations, Policy};

const LONG_ABOUT: &str = "\
Verify attestation evidence offline, from files alone (no network, no SEV needed).

Two ways to give evidence:
  keyward verify --evidence bundle.json [--policy policy.toml] [--at TIME] [--json]
      a saved evidence bundle (SNP report + certificates, TPM quote, NitroTPM document),
      as the appliance's /attestation endpoint and the key-release service's log write it;
  keyward verify --report report.bin --cert vek.der [--cert chain.pem ...] [--policy FILE]
      a raw 1184-byte SEV-SNP report (e.g. snpguest's report.bin) and its certificates,
      DER or PEM, in any order; a PEM file may hold a whole chain (AMD KDS cert_chain).

Live mode (the only one that uses the network):
  keyward verify --url http://HOST:PORT [--xks-url https://HOST[:PORT]] --policy FILE
      asks a running appliance's attestation listener for fresh evidence bound to a random
      nonce and to the key of the certificate the XKS endpoint serves (read over a separate
      TLS connection), then verifies it: REPORT_DATA / TPM qualifying data / NitroTPM user
      data must equal SHA-512(\"keyward/1 runtime\" || nonce || SHA-256(XKS cert SPKI)).

Without --policy the built-in default policy applies: report versions 2-5, AMD's pinned
roots, every non-negotiable check, VMPL 0, no VLEK CSP id; no measurement, TCB, REPORT_DATA
or CRL requirement (each shown as a warning). A --policy file whose required evidence no
reference value pins (empty required_evidence, no snp.measurements, no nitro.pcrs, no
tpm.allowed) is refused unless it sets allow_unmeasured (see attestation/policy.md).
--allow-vmpl and --allow-csp widen whichever
policy is in force; the verdict says so and its policy digest changes.

Every check is listed as PASS, FAIL or skip with its reason. See attestation/AUDITORS.md for
what each check proves and what it cannot.

Exit codes: 0 no check failed (skips and warnings do not count), 1 at least one check
failed, 2 usage error or unreadable input.";

/// Verify attestation evidence (the auditor's tool).
#[derive(clap::Args, Debug)]
#[command(after_help = LONG_ABOUT)]
pub struct Args {
    /// Saved evidence bundle (JSON).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["report", "url"])]
    pub evidence: Option<PathBuf>,

    /// Raw 1184-byte SEV-SNP attestation report.
    #[arg(long, value_name = "REPORT.bin", conflicts_with = "url")]
    pub report: Option<PathBuf>,

    /// Certificate file (DER or PEM; PEM may hold a chain). Repeat; any order. The VCEK/VLEK
    /// is required; ASK/ASVK/ARK are optional (AMD's built-in ones are used when no
    /// intermediate is given).
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,

    /// AMD CRL file (DER or PEM), checked with the ARK's signature. Repeat.
    #[arg(long = "crl", value_name = "FILE")]
    pub crls: Vec<PathBuf>,

    /// Policy file (TOML or JSON). Default: the built-in default policy.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Verify as of this time (RFC 3339, e.g. 2025-06-01T00:00:00Z). Default: now.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,

    /// Also allow this VMPL (e.g. 1 for a guest under an SVSM). Repeat.
    #[arg(long = "allow-vmpl", value_name = "N")]
    pub allow_vmpl: Vec<u32>,

    /// Also allow this VLEK CSP id (e.g. CN=cc-us-east-2.amazonaws.com). Repeat.
    #[arg(long = "allow-csp", value_name = "ID")]
    pub allow_csp: Vec<String>,

    /// Expected SNP REPORT_DATA (128 hex digits), compared in constant time.
    #[arg(long = "report-data", value_name = "HEX")]
    pub report_data: Option<String>,

    /// Expected TPM quote qualifying data (hex), for a saved bundle with a TPM quote.
    #[arg(long = "qualifying-data", value_name = "HEX")]
    pub qualifying_data: Option<String>,

    /// Expected NitroTPM document nonce (hex).
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,

    /// Expected NitroTPM document user data (hex).
    #[arg(long = "user-data", value_name = "HEX")]
    pub user_data: Option<String>,

    /// Expected NitroTPM document public key (a DER SubjectPublicKeyInfo file).
    #[arg(long = "public-key", value_name = "FILE")]
    pub public_key: Option<PathBuf>,

    /// Reference values of a release (attestation/reference-values.md): its SNP launch
    /// measurements for --platform pin the policy's `[snp] measurements`. With
    /// --signature-key, FILE.minisig must verify before the file is read as JSON.
    #[arg(long = "reference-values", value_name = "FILE")]
    pub reference_values: Option<PathBuf>,

    /// Minisign public key (minisign.pub) the release signs with: --reference-values FILE is
    /// used only when FILE.minisig is a good signature of it by this key.
    #[arg(
        long = "signature-key",
        value_name = "FILE",
        requires = "reference_values"
    )]
    pub signature_key: Option<PathBuf>,

    /// The platform whose launch measurements --reference-values pins (aws-ec2, qemu,
    /// bare-metal).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "aws-ec2",
        requires = "reference_values"
    )]
    pub platform: String,

    /// Print the verdict as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Live mode: a running appliance's attestation listener (http://HOST:PORT, plain HTTP by
    /// design; https:// is accepted for a TLS terminator in front). Fetches fresh evidence for
    /// a random nonce and checks its binding to the XKS TLS key.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// Live mode: the XKS endpoint whose TLS certificate the evidence must be bound to
    /// (default: https:// on the host of --url, port 443). Its certificate is read, not
    /// trusted: the evidence must name its key.
    #[arg(long = "xks-url", value_name = "URL", requires = "url")]
    pub xks_url: Option<String>,
}

/// Run `keyward verify`. Errors (exit 2 in main) are usage errors and unreadable input.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut policy = match &args.policy {
        Some(p) => load_policy(p)?,
        None => Policy::builtin_default(),
    };
    for v in &args.allow_vmpl {
        policy.allow_vmpl(*v);
    }
    for c in &args.allow_csp {
        policy.allow_csp(c);
    }
    if let Some(rv) = &args.reference_values {
        pin_reference_values(
            &mut policy,
            rv,
            args.signature_key.as_deref(),
            &args.platform,
        )?;
    }
    let at = match &args.at {
        Some(t) => parse_time(t)?,
        None => SystemTime::now(),
    };

    let mut expect = Expectations::default();
    for f in &args.crls {
        let ders = split_crl_input(&read(f)?).with_context(|| format!("CRL {}", f.display()))?;
        expect.crls.extend(ders);
    }
    if let Some(h) = &args.report_data {
        let b =
            keyward_verify::check_hex(h, 64).map_err(|e| anyhow::anyhow!("--report-data: {e}"))?;
        let mut rd = [0u8; 64];
        rd.copy_from_slice(&b);
        expect.report_data = Some(rd);
    }
    let hex_arg = |name: &str, v: &Option<String>| -> anyhow::Result<Option<Vec<u8>>> {
        v.as_deref()
            .map(|h| hex::decode(h.trim()).map_err(|e| anyhow::anyhow!("--{name}: {e}")))
            .transpose()
    };
    expect.qualifying_data = hex_arg("qualifying-data", &args.qualifying_data)?;
    expect.nonce = hex_arg("nonce", &args.nonce)?;
    expect.user_data = hex_arg("user-data", &args.user_data)?;
    if let Some(p) = &args.public_key {
        expect.public_key = Some(read(p)?);
    }

    let bundle = if let Some(url) = &args.url {
        let (bundle, live) = fetch_live(url, args.xks_url.as_deref())?;
        // The live binding overrides any static expectation.
        expect.report_data = live.report_data.or(expect.report_data);
        expect.qualifying_data = live.qualifying_data;
        expect.nonce = live.nonce;
        expect.public_key = live.public_key;
        expect.user_data = live.user_data;
        bundle
    } else if let Some(path) = &args.evidence {
        if !args.certs.is_empty() {
            bail!("--cert goes with --report; a bundle carries its own certificates");
        }
        serde_json::from_slice::<EvidenceBundle>(&read(path)?)
            .with_context(|| format!("evidence bundle {}", path.display()))?
    } else if let Some(path) = &args.report {
        let report = read(path)?;
        let mut certs = Vec::new();
        for f in &args.certs {
            let ders = split_cert_input(&read(f)?)
                .with_context(|| format!("certificate file {}", f.display()))?;
            certs.extend(ders);
        }
        EvidenceBundle {
            version: 1,
            report_data: None,
            snp: Some(SnpEvidence { report, certs }),
            tpm: None,
            nitro: None,
            audit_key: None,
        }
    } else {
        bail!("give --evidence FILE, --report FILE --cert FILE..., or --url URL (see --help)");
    };

    let verdict = verify_bundle(&bundle, &policy, &expect, at);
    if args.json {
        println!("{}", verdict.to_json());
    } else {
        print!("{}", verdict.to_table());
    }
    Ok(ExitCode::from(verdict.exit_code()))
}

/// Live-mode hook (`--url`): fetch a fresh evidence bundle from a running appliance for a
/// random 32-byte nonce, read the certificate the XKS endpoint serves, and return the bundle
/// with the binding it must carry (REPORT_DATA = SHA-512("keyward/1 runtime" || nonce ||
/// SHA-256(XKS certificate SPKI)), and the same in NitroTPM user data / TPM qualifying data).
/// The network code lives here, in the CLI, never in the verifier library.
fn fetch_live(url: &str, xks_url: Option<&str>) -> anyhow::Result<(EvidenceBundle, Expectations)> {
    use keyward_attest::live;
    let xks_url = match xks_url {
        Some(u) => u.to_string(),
        None => {
            let uri: http::Uri = url.parse().with_context(|| format!("--url {url}"))?;
            let host = uri.host().context("--url has no host")?;
            format!("https://{host}")
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (spki, live) = rt.block_on(async {
        let spki = live::fetch_spki_sha256(&xks_url)
            .await
            .with_context(|| format!("reading the XKS certificate at {xks_url}"))?;
        let live = fetch_bound(url, &spki).await?;
        anyhow::Ok((spki, live))
    })?;
    eprintln!(
        "keyward verify: XKS endpoint {xks_url} serves a key with SPKI SHA-256 {}; \
         evidence fetched from {url} for nonce {}",
        hex::encode(spki),
        hex::encode(live.nonce)
    );
    if let Some(k) = &live.bundle.audit_key {
        eprintln!(
            "keyward verify: the evidence binds the audit checkpoint key {} \
             (if the verdict passes, pin it: keyward audit verify --key {})",
            hex::encode(k),
            hex::encode(k)
        );
    }
    Ok((live.bundle, live.expect))
}

/// Fresh evidence from a live-attestation listener and the binding it must carry.
pub struct LiveEvidence {
    pub bundle: EvidenceBundle,
    /// REPORT_DATA / TPM qualifying data / NitroTPM user data and nonce expected for
    /// `nonce` and the TLS key.
    pub expect: Expectations,
    /// The random nonce sent.
    pub nonce: [u8; 32],
}

/// The live-mode core, shared by `keyward verify --url` and `keyward admin trust`: a fresh
/// random nonce, the evidence `attestation_url` answers for it, and the expectations binding
/// it to the TLS key whose SPKI SHA-256 is `spki` (read by the caller from the endpoint that
/// serves it). Judge it with [`verify_bundle`].
pub async fn fetch_bound(attestation_url: &str, spki: &[u8; 32]) -> anyhow::Result<LiveEvidence> {
    use keyward_attest::live;
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let bundle = live::fetch_evidence(attestation_url, &nonce)
        .await
        .with_context(|| format!("fetching evidence from {attestation_url}"))?;
    // A bundle that names an audit checkpoint key must be bound to it (`keyward/2 runtime`):
    // a key the host swapped in makes every binding check fail.
    let v = live::runtime_binding_value_with_audit(&nonce, spki, bundle.audit_key.as_deref());
    let expect = Expectations {
        report_data: Some(v),
        qualifying_data: Some(v.to_vec()),
        nonce: Some(nonce.to_vec()),
        public_key: None,
        user_data: Some(v.to_vec()),
        crls: Vec::new(),
    };
    Ok(LiveEvidence {
        bundle,
        expect,
        nonce,
    })
}

/// The verdict's checks that compare the evidence with the live binding (nonce and TLS key):
/// SNP REPORT_DATA, TPM qualifying data, NitroTPM user data. A caller that acts on a live
/// verdict needs at least one of them passed (a bundle without evidence binds nothing).
pub const BINDING_CHECKS: [&str; 3] = ["snp.report_data", "tpm.extra_data", "nitro.user_data"];

/// A verifier policy file (TOML or JSON), as `--policy` reads it.
pub fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    let pol =
        Policy::from_bytes(&read(path)?).with_context(|| format!("policy {}", path.display()))?;
    // A policy someone wrote must pin what it requires (the built-in default is exempt: its
    // verdicts say that no measurement was required).
    pol.check_measured()
        .with_context(|| format!("policy {}", path.display()))?;
    Ok(pol)
}

/// `--reference-values FILE [--signature-key KEY]`: check `FILE.minisig` with KEY first (when
/// given), then parse the file and pin the policy's SNP measurements to its values for
/// `platform`. Every refusal is one line naming the file.
fn pin_reference_values(
    policy: &mut Policy,
    path: &Path,
    key: Option<&Path>,
    platform: &str,
) -> anyhow::Result<()> {
    use keyward_verify::refvalues::ReferenceValues;
    use keyward_verify::{parse_public_key, verify_detached};
    use sha2::Digest;
    let bytes = read(path)?;
    if let Some(key_path) = key {
        let key_text = String::from_utf8(read(key_path)?)
            .map_err(|_| anyhow::anyhow!("--signature-key {}: not text", key_path.display()))?;
        let pk = parse_public_key(&key_text)
            .map_err(|e| anyhow::anyhow!("--signature-key {}: {e}", key_path.display()))?;
        let mut sig_path = path.as_os_str().to_owned();
        sig_path.push(".minisig");
        let sig_path = PathBuf::from(sig_path);
        let sig = std::fs::read(&sig_path).map_err(|e| {
            anyhow::anyhow!(
                "--reference-values {}: no signature {} ({e}); sign it with make sign",
                path.display(),
                sig_path.display()
            )
        })?;
        let sig = String::from_utf8(sig)
            .map_err(|_| anyhow::anyhow!("signature {}: not text", sig_path.display()))?;
        let comment = verify_detached(&pk, &bytes, &sig).map_err(|e| {
            anyhow::anyhow!(
                "--reference-values {}: signature {}: {e}",
                path.display(),
                sig_path.display()
            )
        })?;
        eprintln!(
            "keyward verify: {} is signed by {} (trusted comment: {comment})",
            path.display(),
            key_path.display()
        );
    } else {
        eprintln!(
            "keyward verify: warning: {} used without a signature check (give --signature-key)",
            path.display()
        );
    }
    let rv = ReferenceValues::from_json(&bytes)
        .with_context(|| format!("--reference-values {}", path.display()))?;
    let m = rv.measurements(platform);
    if m.is_empty() {
        bail!(
            "--reference-values {}: no SNP launch measurement for platform {platform:?}",
            path.display()
        );
    }
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    policy.pin_snp_measurements(&m, &format!("{} (sha256 {sha})", path.display()));
    Ok(())
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// RFC 3339 to SystemTime (times before 1970 are refused).
fn parse_time(s: &str) -> anyhow::Result<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--at {s:?} is not RFC 3339 (e.g. 2025-06-01T00:00:00Z)"))?;
    let secs = u64::try_from(t.unix_timestamp())
        .map_err(|_| anyhow::anyhow!("--at {s:?} is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}
