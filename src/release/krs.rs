//! The key-release service: decisions ([`Service`]) and the TLS listener ([`serve`]).
//!
//! Verification order for an Evidence message (key-release.md 8.3; each step its own code):
//! session (exists, unused, unexpired; consumed) -> policy digest -> ephemeral key -> T ->
//! evidence decoding -> appraisal by the shared verifier under the signed policy, against the
//! binding derived from T -> wrap (in the HSM, or the HPKE fallback) -> receipt signed in the
//! HSM -> log entry fsynced -> answer.

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::STANDARD, Engine};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha384};
use subtle::ConstantTimeEq;

use super::config::WrapChoice;
use super::log::{Entry, ReleaseLog};
use super::messages::{
    Challenge, Deny, Evidence, Hello, Release, Request, Response, WrapMode, VERSION,
};
use super::policy::VerifiedPolicy;
use super::receipt::{receipt_digest, spki_pin, DenyCode, Receipt};
use super::session::{SessionError, SessionStore};
use super::transcript;
use super::unwrap::{hpke_aad, seal_hpke};
use super::wire;
use crate::attest::Binding;
use crate::hsm::{HsmError, KeyBackend};
use crate::verify::evidence::EvidenceBundle;
use crate::verify::verdict::Verdict;

/// Master key version named in receipts (one master key per token label for now).
pub const KEY_VERSION: u32 = 1;

/// Judges evidence under the signed policy. The production implementation is the shared
/// verifier library (`crate::verify`); tests may plug others in only through this seam.
pub trait Appraiser: Send + Sync {
    fn appraise(
        &self,
        bundle: &EvidenceBundle,
        policy: &VerifiedPolicy,
        binding: &Binding,
        at: SystemTime,
    ) -> Verdict;
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum KrsError {
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error("{0}")]
    Setup(String),
}

struct Inner {
    hsm: Box<dyn KeyBackend>,
    log: ReleaseLog,
}

/// The decision-making half of the KRS.
pub struct Service {
    inner: Mutex<Inner>,
    sessions: SessionStore,
    policy: VerifiedPolicy,
    appraiser: Box<dyn Appraiser>,
    receipt_spki: Vec<u8>,
    krs_id: [u8; 32],
    tls_pin: [u8; 32],
    mode: WrapMode,
    key_id: String,
}

/// Facts gathered so far, for a deny receipt and log entry.
#[derive(Default)]
struct Ctx {
    session_id: Vec<u8>,
    t: Vec<u8>,
    evidence: Vec<u8>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Service {
    /// Build the service from an open HSM, a verified policy (version already enforced), the
    /// release log, the appraiser and the TLS key pin.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hsm: Box<dyn KeyBackend>,
        log: ReleaseLog,
        policy: VerifiedPolicy,
        appraiser: Box<dyn Appraiser>,
        tls_pin: [u8; 32],
        session_ttl: Duration,
        wrap: WrapChoice,
    ) -> Result<Self, KrsError> {
        let receipt_spki = super::receipt::spki_from_sec1(&hsm.receipt_public_key()?)
            .map_err(|e| KrsError::Setup(e.to_string()))?;
        let caps = hsm.capabilities();
        if !caps.ecdsa {
            return Err(KrsError::Setup(
                "the token cannot sign with CKM_ECDSA".into(),
            ));
        }
        let mode = match wrap {
            WrapChoice::Hpke => WrapMode::HpkeFallback,
            WrapChoice::Hsm if !caps.in_hsm_wrap() => {
                return Err(KrsError::Setup(format!(
                    "wrap = \"hsm\" but the token lacks mechanisms ({caps:?})"
                )))
            }
            WrapChoice::Hsm => WrapMode::HsmEcdhAesKw,
            WrapChoice::Auto if caps.in_hsm_wrap() => WrapMode::HsmEcdhAesKw,
            WrapChoice::Auto => WrapMode::HpkeFallback,
        };
        if mode == WrapMode::HpkeFallback {
            tracing::warn!(
                "wrap mode hpke-fallback: the master key enters KRS memory for each release \
                 (zeroized after sealing); receipts say so"
            );
        }
        let key_id = hsm.master_key_id().to_string();
        Ok(Self {
            krs_id: spki_pin(&receipt_spki),
            receipt_spki,
            inner: Mutex::new(Inner { hsm, log }),
            sessions: SessionStore::new(session_ttl),
            policy,
            appraiser,
            tls_pin,
            mode,
            key_id,
        })
    }

    /// The wrap mode in use.
    pub fn mode(&self) -> WrapMode {
        self.mode
    }

    /// The receipt key's SPKI (DER).
    pub fn receipt_spki(&self) -> &[u8] {
        &self.receipt_spki
    }

    /// Handle one decoded request.
    pub fn handle(&self, req: Request) -> Response {
        match req {
            Request::Hello(h) => self.hello(h),
            Request::Evidence(e) => self.evidence(e),
        }
    }

    /// Handle one frame's raw bytes (undecodable input is a logged deny).
    pub fn handle_bytes(&self, frame: &[u8]) -> Response {
        match super::cbor::from_slice::<Request>(frame) {
            Ok(r) => self.handle(r),
            Err(e) => self.deny(DenyCode::Malformed, &e.to_string(), Ctx::default()),
        }
    }

    fn hello(&self, h: Hello) -> Response {
        if h.v != VERSION {
            return self.deny(
                DenyCode::UnsupportedVersion,
                &format!("hello v{}", h.v),
                Ctx::default(),
            );
        }
        let tls_ok: bool = h.pins.krs_tls_spki_sha256.ct_eq(&self.tls_pin[..]).into();
        let rk_ok: bool = h.pins.receipt_spki_sha256.ct_eq(&self.krs_id[..]).into();
        if !tls_ok || !rk_ok {
            let which = match (tls_ok, rk_ok) {
                (false, false) => "TLS and receipt key pins",
                (false, true) => "TLS key pin",
                _ => "receipt key pin",
            };
            return self.deny(
                DenyCode::PinMismatch,
                &format!("{which} in Hello are not this KRS's"),
                Ctx::default(),
            );
        }
        let mut session_id = [0u8; 16];
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut session_id);
        OsRng.fill_bytes(&mut nonce);
        let ch = Challenge {
            v: VERSION,
            session_id: session_id.to_vec(),
            nonce: nonce.to_vec(),
            krs_id: self.krs_id.to_vec(),
            policy_id: self.policy.label(),
            policy_digest: self.policy.digest.to_vec(),
            expires: now_secs() + self.sessions.ttl().as_secs(),
            receipt_spki: self.receipt_spki.clone(),
        };
        tracing::info!(
            session = %hex::encode(session_id),
            platform = %h.platform,
            product_release = %h.product_release,
            "challenge issued"
        );
        self.sessions.insert(session_id, h, ch.clone());
        Response::Challenge(ch)
    }

    fn evidence(&self, e: Evidence) -> Response {
        let mut ctx = Ctx {
            session_id: e.session_id.clone(),
            evidence: e.evidence.clone(),
            ..Ctx::default()
        };
        if e.v != VERSION {
            return self.deny(
                DenyCode::UnsupportedVersion,
                &format!("evidence v{}", e.v),
                ctx,
            );
        }
        let s = match self.sessions.take(&e.session_id) {
            Ok(s) => s,
            Err(err) => {
                let code = match err {
                    SessionError::Unknown => DenyCode::SessionUnknown,
                    SessionError::Replayed => DenyCode::SessionReplayed,
                    SessionError::Expired => DenyCode::SessionExpired,
                };
                return self.deny(code, &err.to_string(), ctx);
            }
        };
        let pd_agent: bool = e.policy_digest.ct_eq(&self.policy.digest[..]).into();
        let pd_session: bool = s
            .challenge
            .policy_digest
            .ct_eq(&self.policy.digest[..])
            .into();
        if !pd_agent || !pd_session {
            return self.deny(
                DenyCode::PolicyDigestMismatch,
                &format!(
                    "agent used policy digest {}, policy in force is {}",
                    hex::encode(&e.policy_digest),
                    hex::encode(self.policy.digest)
                ),
                ctx,
            );
        }
        let Some(epk_spki) = transcript::p384_spki_der(&e.epk) else {
            return self.deny(DenyCode::BadEphemeralKey, "epk is not a P-384 point", ctx);
        };
        let t = match transcript::transcript(&s.hello, &s.challenge, &e.epk) {
            Ok(t) => t,
            Err(err) => return self.deny(DenyCode::Internal, &err.to_string(), ctx),
        };
        ctx.t = t.to_vec();
        let bundle: EvidenceBundle = match super::cbor::from_slice(&e.evidence) {
            Ok(b) => b,
            Err(err) => return self.deny(DenyCode::EvidenceMalformed, &err.to_string(), ctx),
        };
        let binding = transcript::binding(&t, &s.challenge.nonce, &epk_spki);
        let verdict = self
            .appraiser
            .appraise(&bundle, &self.policy, &binding, SystemTime::now());
        if let Some(f) = verdict.first_failure() {
            let code = code_for_check(&f.name);
            return self.deny(code, &format!("{}: {}", f.name, f.detail), ctx);
        }
        self.release(&e, &t, ctx)
    }

    fn release(&self, e: &Evidence, t: &[u8; 48], ctx: Ctx) -> Response {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let wrapped = match self.mode {
            WrapMode::HsmEcdhAesKw => inner
                .hsm
                .release_wrap(&e.epk, t)
                .map(|w| (w.hsm_epk, w.wrapped))
                .map_err(|err| err.to_string()),
            WrapMode::HpkeFallback => inner
                .hsm
                .export_master_for_fallback()
                .map_err(|err| err.to_string())
                .and_then(|mk| {
                    let aad = hpke_aad(&self.key_id, KEY_VERSION, &self.policy.digest);
                    // `mk` is Zeroizing and dropped (wiped) at the end of this closure.
                    seal_hpke(&e.epk, &mk, t, &aad).map_err(|err| err.to_string())
                }),
        };
        let (hsm_epk, wrapped_mk) = match wrapped {
            Ok(w) => w,
            Err(err) => {
                drop(inner);
                return self.deny(DenyCode::Internal, &format!("wrap: {err}"), ctx);
            }
        };
        let time = now_secs();
        let log_index = inner.log.next_index();
        let receipt = Receipt {
            v: VERSION,
            decision: "release".into(),
            code: None,
            session_id: e.session_id.clone(),
            t: t.to_vec(),
            mode: Some(self.mode),
            hsm_epk: hsm_epk.clone(),
            wrapped_digest: Sha384::digest(&wrapped_mk).to_vec(),
            evidence_digest: Sha384::digest(&e.evidence).to_vec(),
            policy_digest: self.policy.digest.to_vec(),
            key_id: self.key_id.clone(),
            key_version: KEY_VERSION,
            time,
            log_index,
        };
        let signed = self.sign_and_log(&mut inner, &receipt, None, None, &ctx);
        drop(inner);
        match signed {
            Ok((receipt, signature)) => {
                tracing::info!(
                    session = %hex::encode(&e.session_id),
                    log_index,
                    mode = ?self.mode,
                    "released"
                );
                Response::Release(Release {
                    v: VERSION,
                    session_id: e.session_id.clone(),
                    mode: self.mode,
                    hsm_epk,
                    wrapped_mk,
                    receipt,
                    signature,
                })
            }
            Err(err) => {
                tracing::error!("release not logged, withheld: {err}");
                Response::Deny(Deny {
                    v: VERSION,
                    code: DenyCode::Internal.number(),
                    receipt: vec![],
                    signature: vec![],
                })
            }
        }
    }

    /// Sign `receipt` in the HSM and append it to the log (fsynced). Returns (bytes, sig).
    fn sign_and_log(
        &self,
        inner: &mut Inner,
        receipt: &Receipt,
        reason: Option<DenyCode>,
        detail: Option<&str>,
        ctx: &Ctx,
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let bytes = receipt.encode().map_err(|e| e.to_string())?;
        let sig = inner
            .hsm
            .sign_digest(&receipt_digest(&bytes))
            .map_err(|e| e.to_string())?;
        let entry = Entry {
            index: receipt.log_index,
            time: receipt.time,
            decision: receipt.decision.clone(),
            code: receipt.code,
            reason: reason.map(|c| c.name().to_string()),
            detail: detail.map(str::to_string),
            key_id: receipt.key_id.clone(),
            evidence_digest: hex::encode(&receipt.evidence_digest),
            policy_digest: hex::encode(&receipt.policy_digest),
            session_id: hex::encode(&ctx.session_id),
            evidence: (!ctx.evidence.is_empty()).then(|| STANDARD.encode(&ctx.evidence)),
            receipt: STANDARD.encode(&bytes),
            signature: STANDARD.encode(&sig),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let Inner { hsm, log } = inner;
        log.append(entry, &|d| hsm.sign_digest(d).map_err(|e| e.to_string()))
            .map_err(|e| e.to_string())?;
        Ok((bytes, sig))
    }

    fn deny(&self, code: DenyCode, detail: &str, ctx: Ctx) -> Response {
        tracing::warn!(
            code = code.number(),
            reason = code.name(),
            session = %hex::encode(&ctx.session_id),
            "deny: {detail}"
        );
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let receipt = Receipt {
            v: VERSION,
            decision: "deny".into(),
            code: Some(code.number()),
            session_id: ctx.session_id.clone(),
            t: ctx.t.clone(),
            mode: None,
            hsm_epk: vec![],
            wrapped_digest: vec![],
            evidence_digest: if ctx.evidence.is_empty() {
                vec![]
            } else {
                Sha384::digest(&ctx.evidence).to_vec()
            },
            policy_digest: self.policy.digest.to_vec(),
            key_id: self.key_id.clone(),
            key_version: KEY_VERSION,
            time: now_secs(),
            log_index: inner.log.next_index(),
        };
        let (receipt, signature) =
            match self.sign_and_log(&mut inner, &receipt, Some(code), Some(detail), &ctx) {
                Ok(rs) => rs,
                Err(err) => {
                    tracing::error!("deny receipt not logged: {err}");
                    (vec![], vec![])
                }
            };
        Response::Deny(Deny {
            v: VERSION,
            code: code.number(),
            receipt,
            signature,
        })
    }
}

/// Map a failed verifier check to a deny code. The mapping is the KRS's; callers see only the
/// number.
fn code_for_check(name: &str) -> DenyCode {
    DenyCode::for_check(name)
}

/// Serve KRP/1 on `listener` until the process ends: one thread per connection, TLS 1.3, one
/// frame in, one frame out, as many rounds as the agent sends.
pub fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, svc: Arc<Service>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // Bounded concurrency: beyond the limit, new connections are closed at once.
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                "connection limit ({MAX_CONNECTIONS}) reached; closing a new connection"
            );
            continue;
        }
        let tls = tls.clone();
        let svc = svc.clone();
        let counter = active.clone();
        let spawned = std::thread::Builder::new()
            .name("krs-conn".into())
            .spawn(move || {
                if let Err(e) = connection(stream, tls, &svc) {
                    tracing::debug!("connection ended: {e}");
                }
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("cannot start a connection thread");
        }
    }
}

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

fn connection(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    svc: &Service,
) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ServerConnection::new(tls).map_err(|e| e.to_string())?;
    let mut tls_stream = rustls::StreamOwned::new(conn, stream);
    loop {
        let frame = match wire::read_frame(&mut tls_stream) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let resp = svc.handle_bytes(&frame);
        wire::write_msg(&mut tls_stream, &resp).map_err(|e| e.to_string())?;
    }
}
