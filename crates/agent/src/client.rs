//! The boot agent: the appliance's side of KRP/1.
//!
//! Connect with the pinned TLS key -> Hello (with the pins) -> Challenge (the receipt key must
//! be the pinned one) -> fresh P-384 ephemeral key, T, evidence from the configured attesters
//! bound to T -> Evidence -> Release: the receipt is verified with the pinned receipt key and
//! must name this T, this `hsm_epk`, this wrapped blob and this evidence BEFORE anything is
//! unwrapped -> unwrap -> the ephemeral private key is dropped (zeroized) -> the master key is
//! returned as a [`Key32`].

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use sha2::{Digest, Sha384};
use subtle::ConstantTimeEq;

use keyward_attest::Attester;
use keyward_config::{parse_pin, AgentConfig, PinError};
use keyward_evidence::EvidenceBundle;
use keyward_krp::cbor::to_canonical;
use keyward_krp::messages::{
    Challenge, Deny, Evidence, Hello, Pins, Release, Request, Response, WrapMode, VERSION,
};
use keyward_krp::transcript;
use keyward_krp::wire;
use keyward_krp::KEY_VERSION;
use keyward_krp::{hpke_aad, EphemeralKey};
use keyward_krp::{spki_pin, verify_receipt, DenyCode, Receipt};
use keyward_secret::Key32;

/// Why a release attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("configuration")]
    Pin(#[from] PinError),
    #[error("KRS host {host:?}")]
    KrsHost {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("cannot reach the KRS at {krs}")]
    Connect {
        krs: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the KRS at {0}: the name resolves to no address")]
    NoAddress(String),
    #[error("TLS to the KRS failed (is its key the pinned one?)")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Framing or encoding of a KRP/1 message.
    #[error("protocol")]
    Wire(#[from] keyward_krp::wire::WireError),
    #[error("protocol")]
    Cbor(#[from] keyward_krp::cbor::CborError),
    /// The KRS answered out of turn, or with fields KRP/1 does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the KRS denied the release (code {code}{})", if *.receipt_verified { ", signed deny receipt verified" } else { ", no valid deny receipt" })]
    Denied { code: u32, receipt_verified: bool },
    #[error("the KRS's receipt key is not the pinned one (fake KRS?)")]
    ReceiptKeyNotPinned,
    #[error("release receipt rejected: {0}")]
    BadReceipt(ReceiptProblem),
    #[error("attestation by {attester}")]
    Attest {
        attester: &'static str,
        #[source]
        source: keyward_attest::AttestError,
    },
    #[error("unwrap")]
    Unwrap(#[from] keyward_krp::UnwrapError),
    #[error("secret memory")]
    Secret(#[from] keyward_secret::SecretError),
}

/// Why a release receipt was refused: its signature or encoding, or a field that names
/// something other than this exchange.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptProblem {
    #[error("{0}")]
    Invalid(#[source] keyward_krp::ReceiptError),
    #[error("{0}")]
    Mismatch(&'static str),
}

impl AgentError {
    /// True for a deny the KRS gave for policy reasons (evidence rejected, policy mismatch,
    /// pins): retrying quickly will not change the answer.
    pub fn is_policy_deny(&self) -> bool {
        match self {
            AgentError::Denied { code, .. } => {
                *code == DenyCode::PinMismatch.number()
                    || *code == DenyCode::PolicyDigestMismatch.number()
                    || (DenyCode::EvidenceMalformed.number()..DenyCode::Internal.number())
                        .contains(code)
            }
            _ => false,
        }
    }
}

/// A successful release.
pub struct Released {
    /// The primary master key: version `receipt.key_version` (the current one).
    pub key: Key32,
    /// Further master-key versions released with it (the receipt's `also`), by version.
    pub also: Vec<(u32, Key32)>,
    pub receipt: Receipt,
    pub mode: WrapMode,
    /// The receipt key's SPKI (DER; its SHA-256 is the pinned one).
    pub receipt_spki: Vec<u8>,
    /// The per-boot key the KRS registered (its id is in the receipt): it signs head updates.
    /// `None` when the KRS did not register one (it keeps no store heads).
    pub boot_key: Option<std::sync::Arc<keyward_krp::BootKey>>,
}

impl std::fmt::Debug for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Released")
            .field("log_index", &self.receipt.log_index)
            .field("mode", &self.mode)
            .finish()
    }
}

/// A KRP/1 connection: TLS 1.3 pinned to one SPKI.
pub struct Client {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

/// Strip an optional `krs://` prefix.
pub(crate) fn host_port(url: &str) -> &str {
    url.strip_prefix("krs://")
        .unwrap_or(url)
        .trim_end_matches('/')
}

impl Client {
    /// Connect and complete the TLS handshake (fails if the KRS's key is not `tls_pin`).
    pub fn connect(url: &str, tls_pin: [u8; 32], timeout: Duration) -> Result<Self, AgentError> {
        let hp = host_port(url);
        let addr = hp
            .to_socket_addrs()
            .map_err(|source| AgentError::Connect {
                krs: hp.into(),
                source,
            })?
            .next()
            .ok_or_else(|| AgentError::NoAddress(hp.into()))?;
        let connect = |source| AgentError::Connect {
            krs: hp.into(),
            source,
        };
        let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
        tcp.set_read_timeout(Some(timeout))
            .and_then(|_| tcp.set_write_timeout(Some(timeout)))
            .map_err(connect)?;
        let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(hp);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|source| {
            AgentError::KrsHost {
                host: host.to_string(),
                source,
            }
        })?;
        let cfg =
            keyward_krp::pinned_client_config(tls_pin).map_err(|e| AgentError::Tls(Box::new(e)))?;
        let conn =
            rustls::ClientConnection::new(cfg, name).map_err(|e| AgentError::Tls(Box::new(e)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Drive the handshake now so a wrong key is reported as a TLS failure.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| AgentError::Tls(Box::new(e)))?;
        }
        Ok(Self { stream })
    }

    /// Connect to the first of `urls` that can be reached (TCP, then the pinned TLS key).
    /// Only a failure to reach one moves on to the next; the error is the last one's.
    pub fn connect_any(
        urls: &[&str],
        tls_pin: [u8; 32],
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let mut last = AgentError::Config("no KRS address configured".into());
        for (i, url) in urls.iter().enumerate() {
            match Self::connect(url, tls_pin, timeout) {
                Ok(c) => {
                    if i > 0 {
                        tracing::info!(krs = %url, "reached the key-release service at a fallback address");
                    }
                    return Ok(c);
                }
                Err(e) => {
                    if urls.len() > 1 {
                        tracing::warn!(krs = %url, error = %crate::error_chain(&e), "key-release service unreachable; trying the next address");
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Send raw frame bytes (tests of malformed input), read one response.
    pub fn call_raw(&mut self, frame: &[u8]) -> Result<Response, AgentError> {
        use std::io::Write;
        let len = u32::try_from(frame.len())
            .map_err(|_| AgentError::Protocol("frame too large".into()))?;
        self.stream
            .write_all(&len.to_be_bytes())
            .and_then(|_| self.stream.write_all(frame))
            .and_then(|_| self.stream.flush())
            .map_err(keyward_krp::wire::WireError::from)?;
        wire::read_msg(&mut self.stream)?
            .ok_or_else(|| AgentError::Protocol("the KRS closed the connection".into()))
    }

    /// Send one request, read one response.
    pub fn call(&mut self, req: &Request) -> Result<Response, AgentError> {
        wire::write_msg(&mut self.stream, req)?;
        wire::read_msg(&mut self.stream)?
            .ok_or_else(|| AgentError::Protocol("the KRS closed the connection".into()))
    }
}

/// The parsed pins of an [`AgentConfig`].
#[derive(Debug, Clone)]
pub struct ParsedPins {
    pub tls: [u8; 32],
    pub receipt: [u8; 32],
    pub pins: Pins,
}

/// `krs_url` first, then `krs_fallback_urls`.
pub(crate) fn krs_addresses(cfg: &AgentConfig) -> Vec<&str> {
    std::iter::once(cfg.krs_url.as_str())
        .chain(cfg.krs_fallback_urls.iter().map(String::as_str))
        .collect()
}

/// Parse and check the agent configuration's pins.
pub fn parse_pins(cfg: &AgentConfig) -> Result<ParsedPins, AgentError> {
    let c = AgentError::Pin;
    let tls = parse_pin("krs_tls_spki_sha256", &cfg.krs_tls_spki_sha256).map_err(c)?;
    let receipt = parse_pin("receipt_spki_sha256", &cfg.receipt_spki_sha256).map_err(c)?;
    let admin = if cfg.admin_ca_sha256.is_empty() {
        vec![]
    } else {
        parse_pin("admin_ca_sha256", &cfg.admin_ca_sha256)
            .map_err(c)?
            .to_vec()
    };
    Ok(ParsedPins {
        tls,
        receipt,
        pins: Pins {
            krs_url: cfg.krs_url.clone(),
            krs_tls_spki_sha256: tls.to_vec(),
            receipt_spki_sha256: receipt.to_vec(),
            admin_ca_sha256: admin,
        },
    })
}

/// The platform string for Hello, from the attesters in use.
pub(crate) fn platform_for(cfg: &AgentConfig, attesters: &[Box<dyn Attester>]) -> String {
    if let Some(p) = &cfg.platform {
        return p.clone();
    }
    let names: Vec<&str> = attesters.iter().map(|a| a.name()).collect();
    if names.contains(&"snp") && names.contains(&"nitrotpm") {
        "aws-snp-nitrotpm".into()
    } else if let Some(first) = names.first() {
        (*first).to_string()
    } else {
        "none".into()
    }
}

/// The boot agent.
pub struct Agent {
    pub cfg: AgentConfig,
    pub attesters: Vec<Box<dyn Attester>>,
    pub product_release: String,
}

impl Agent {
    /// One complete release attempt (at boot: it registers a fresh boot key for the head).
    pub fn release(&self) -> Result<Released, AgentError> {
        self.release_with(&[], true)
    }

    /// One complete release attempt that names the master-key versions it wants besides the
    /// current one (Hello `key_versions`), with fresh evidence (new nonce, new ephemeral key)
    /// as at boot. Without `register_boot_key` no boot key is sent: a running appliance keeps
    /// the one its boot registered (its heads stay anchored through it).
    pub fn release_with(
        &self,
        key_versions: &[u32],
        register_boot_key: bool,
    ) -> Result<Released, AgentError> {
        let pins = parse_pins(&self.cfg)?;
        let timeout = Duration::from_secs(self.cfg.timeout_secs.max(1));
        let mut client = Client::connect_any(&krs_addresses(&self.cfg), pins.tls, timeout)?;
        let hello = Hello {
            v: VERSION,
            platform: platform_for(&self.cfg, &self.attesters),
            product_release: self.product_release.clone(),
            algs: vec![
                "p384-ecdh".into(),
                "aes-kw".into(),
                "hpke-p384-aes256gcm".into(),
            ],
            pins: pins.pins.clone(),
            // This agent handles master-key versions: the current one and its store head's.
            key_versions: Some(key_versions.to_vec()),
        };
        let ch = match client.call(&Request::Hello(hello.clone()))? {
            Response::Challenge(c) => c,
            Response::Deny(d) => return Err(denied(&d, None)),
            Response::Release(_) | Response::Head(_) => {
                return Err(AgentError::Protocol("release before evidence".into()))
            }
        };
        check_challenge(&ch, &pins.receipt)?;

        let esk = EphemeralKey::generate();
        let epk = esk.public_sec1();
        let boot_key = keyward_krp::BootKey::generate();
        let boot_pub: &[u8] = if register_boot_key {
            boot_key.public_sec1()
        } else {
            &[]
        };
        let t = transcript::transcript_with(&hello, &ch, &epk, boot_pub)?;
        let spki = transcript::p384_spki_der(&epk)
            .ok_or_else(|| AgentError::Protocol("own ephemeral key".into()))?;
        let binding = transcript::binding(&t, &ch.nonce, &spki);
        let mut bundle = EvidenceBundle {
            version: 1,
            report_data: Some(binding.report_data.to_vec()),
            ..EvidenceBundle::default()
        };
        if self.attesters.is_empty() {
            return Err(AgentError::Config("no attesters configured".into()));
        }
        for a in &self.attesters {
            a.attest(&binding, &mut bundle)
                .map_err(|source| AgentError::Attest {
                    attester: a.name(),
                    source,
                })?;
        }
        let evidence = to_canonical(&bundle)?;
        let msg = Evidence {
            v: VERSION,
            session_id: ch.session_id.clone(),
            epk,
            policy_digest: ch.policy_digest.clone(),
            evidence,
            boot_key: boot_pub.to_vec(),
        };
        let rel = match client.call(&Request::Evidence(msg.clone()))? {
            Response::Release(r) => r,
            Response::Deny(d) => return Err(denied(&d, Some(&ch.receipt_spki))),
            Response::Challenge(_) | Response::Head(_) => {
                return Err(AgentError::Protocol("unexpected answer to evidence".into()))
            }
        };
        let out = accept_release(&esk, &ch, &msg, &t, &rel);
        drop(esk);
        let mut released = out?;
        if register_boot_key && !released.receipt.boot_key_id.is_empty() {
            released.boot_key = Some(std::sync::Arc::new(boot_key));
        }
        Ok(released)
    }
}

/// The challenge must come from the KRS whose receipt key we pinned.
pub fn check_challenge(ch: &Challenge, receipt_pin: &[u8; 32]) -> Result<(), AgentError> {
    if ch.v != VERSION {
        return Err(AgentError::Protocol(format!("challenge v{}", ch.v)));
    }
    let spki_ok: bool = spki_pin(&ch.receipt_spki).ct_eq(receipt_pin).into();
    let id_ok: bool = ch.krs_id.ct_eq(&receipt_pin[..]).into();
    if !spki_ok || !id_ok {
        return Err(AgentError::ReceiptKeyNotPinned);
    }
    if ch.session_id.len() != 16 || ch.nonce.len() != 32 || ch.policy_digest.len() != 48 {
        return Err(AgentError::Protocol("challenge field sizes".into()));
    }
    Ok(())
}

/// A deny: after a Challenge we know the (pinned) receipt key and check the deny receipt with
/// it; a deny to Hello comes before we have the key, so only its code is reported (the KRS's
/// log keeps the signed receipt for `krs log verify`).
pub fn denied(d: &Deny, receipt_spki: Option<&[u8]>) -> AgentError {
    let receipt_verified = receipt_spki.is_some_and(|spki| {
        verify_receipt(spki, &d.receipt, &d.signature)
            .is_ok_and(|r| r.decision == "deny" && r.code == Some(d.code))
    });
    AgentError::Denied {
        code: d.code,
        receipt_verified,
    }
}

/// Verify the release receipt against everything we sent and received, then unwrap.
pub fn accept_release(
    esk: &EphemeralKey,
    ch: &Challenge,
    sent: &Evidence,
    t: &[u8; 48],
    rel: &Release,
) -> Result<Released, AgentError> {
    let bad = |s: &'static str| AgentError::BadReceipt(ReceiptProblem::Mismatch(s));
    let r = verify_receipt(&ch.receipt_spki, &rel.receipt, &rel.signature)
        .map_err(|e| AgentError::BadReceipt(ReceiptProblem::Invalid(e)))?;
    let eq = |a: &[u8], b: &[u8]| -> bool { a.ct_eq(b).into() };
    if r.decision != "release" {
        return Err(bad("decision is not release"));
    }
    if !eq(&r.t, t) {
        return Err(bad("receipt names another transcript"));
    }
    if !eq(&r.session_id, &ch.session_id) || !eq(&rel.session_id, &ch.session_id) {
        return Err(bad("receipt names another session"));
    }
    if !eq(&r.hsm_epk, &rel.hsm_epk) {
        return Err(bad("receipt names another HSM ephemeral key"));
    }
    if !eq(&r.wrapped_digest, &Sha384::digest(&rel.wrapped_mk)) {
        return Err(bad("receipt names another wrapped blob"));
    }
    if !eq(&r.evidence_digest, &Sha384::digest(&sent.evidence)) {
        return Err(bad("receipt names other evidence"));
    }
    if !eq(&r.policy_digest, &ch.policy_digest) {
        return Err(bad("receipt names another policy"));
    }
    if r.mode != Some(rel.mode) {
        return Err(bad("receipt names another wrap mode"));
    }
    // Every check passed: the receipt's time is the KRS's (signed in the HSM).
    crate::time::clock().observe(r.time);
    if !r.boot_key_id.is_empty()
        && (sent.boot_key.is_empty()
            || !eq(&r.boot_key_id, &keyward_krp::boot_key_id(&sent.boot_key)))
    {
        return Err(bad("receipt registers another boot key"));
    }
    let mk = match rel.mode {
        WrapMode::HsmEcdhAesKw => esk.unwrap_hsm(&rel.hsm_epk, t, &rel.wrapped_mk),
        WrapMode::HpkeFallback => esk.open_hpke(
            &rel.hsm_epk,
            &rel.wrapped_mk,
            t,
            &hpke_aad(&r.key_id, r.key_version, &r.policy_digest),
        ),
    }?;
    if r.key_version != KEY_VERSION {
        tracing::info!(key_version = r.key_version, "released master key version");
    }
    let key = Key32::from_bytes(&mk)?;
    // Each further version: named in the signed receipt, its blob's digest checked, then
    // unwrapped as the primary one.
    if r.also.len() != rel.also.len() {
        return Err(bad("receipt names other further master-key versions"));
    }
    let mut also = Vec::with_capacity(rel.also.len());
    for (named, w) in r.also.iter().zip(&rel.also) {
        if named.key_version != w.key_version
            || named.key_version == r.key_version
            || !eq(&named.hsm_epk, &w.hsm_epk)
            || !eq(&named.wrapped_digest, &Sha384::digest(&w.wrapped_mk))
        {
            return Err(bad("receipt names another further master-key version"));
        }
        let mk = match rel.mode {
            WrapMode::HsmEcdhAesKw => esk.unwrap_hsm(&w.hsm_epk, t, &w.wrapped_mk),
            WrapMode::HpkeFallback => esk.open_hpke(
                &w.hsm_epk,
                &w.wrapped_mk,
                t,
                &hpke_aad(&named.key_id, named.key_version, &r.policy_digest),
            ),
        }?;
        also.push((w.key_version, Key32::from_bytes(&mk)?));
    }
    Ok(Released {
        key,
        also,
        receipt: r,
        mode: rel.mode,
        receipt_spki: ch.receipt_spki.clone(),
        boot_key: None,
    })
}
