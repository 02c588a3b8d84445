//! The key-release service: decisions ([`Service`]) and the TLS listener ([`serve`]).
//!
//! Verification order for an Evidence message (docs/key-release.md 8.3; each step its own code):
//! session (exists, unused, unexpired; consumed) -> policy digest -> ephemeral key -> T ->
//! evidence decoding -> appraisal by the shared verifier under the signed policy, against the
//! binding derived from T -> wrap (in the HSM, or the HPKE fallback) -> receipt signed in the
//! HSM -> log entry fsynced -> answer.
//!
//! Work before a session exists is bounded (issue 12 §3): a deny before a session was
//! consumed (an undecodable frame, a wrong version, an unknown, expired or replayed session, a
//! Hello whose pins match nothing, a source over its session quota) costs no HSM call, no fsync
//! and no log entry: it is counted by reason, logged under a rate limit and answered with an
//! unsigned Deny. Denies after a session was consumed are signed and logged as before, with raw
//! evidence kept only up to `limits.log_evidence_max`. [`serve`] caps connections (in total and
//! per source) and gives every phase of a connection a deadline (see `limits`).

use keyward_keystore::now_unix;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::{engine::general_purpose::STANDARD, Engine};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha384};
use subtle::ConstantTimeEq;

use crate::config::WrapChoice;
use crate::deployment::Deployment;
use crate::heads::HeadBook;
use crate::limits::{
    bounded, source_key, ConnRefused, ConnTracker, DeadlineStream, Limits, SourceBudget, Stats,
    Status, WarnGate,
};
use crate::log::{Entry, ReleaseLog};
use crate::policy::VerifiedPolicy;
use crate::session::{SessionError, SessionStore};
use keyward_evidence::Binding;
use keyward_evidence::EvidenceBundle;
use keyward_hsm::{HsmError, KeyBackend};
use keyward_keystore::error_chain;
use keyward_krp::messages::{
    Challenge, Deny, Evidence, HeadAck, HeadQuery, HeadUpdate, Hello, Release, Request, Response,
    WrapMode, VERSION,
};
use keyward_krp::transcript;
use keyward_krp::wire;
use keyward_krp::{hpke_aad, seal_hpke};
use keyward_krp::{receipt_digest, spki_pin, DenyCode, Receipt};
use keyward_verify::Verdict;

pub(crate) use keyward_krp::KEY_VERSION;

/// Judges evidence under the signed policy. The production implementation is the shared
/// verifier library (`keyward_verify`); tests may plug others in only through this seam.
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
    /// The HSM's receipt public key is not a P-384 point.
    #[error("the HSM's receipt public key")]
    ReceiptKey(#[source] keyward_krp::ReceiptError),
    /// The token lacks what the configuration asks for (the message names it).
    #[error("{0}")]
    Token(String),
    /// The release log's head could not be repaired at start.
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
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
    limits: Limits,
    stats: Stats,
    conns: Arc<ConnTracker>,
    warn: WarnGate,
    /// The `[[deployment]]`s served (none: every Hello is denied).
    deployments: Vec<Deployment>,
    /// Store heads and registered boot keys (none: boot keys are not registered and head
    /// requests are denied).
    heads: Option<HeadBook>,
    evidence_budget: SourceBudget,
}

/// Longest deny detail written to a log line or a release-log entry.
const MAX_DETAIL: usize = 512;

/// Facts gathered so far, for a deny receipt and log entry.
#[derive(Default)]
struct Ctx {
    session_id: Vec<u8>,
    t: Vec<u8>,
    evidence: Vec<u8>,
    /// A session was consumed: a deny is signed and logged. Before that, it is not.
    session: bool,
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
        let receipt_spki = keyward_krp::spki_from_sec1(&hsm.receipt_public_key()?)
            .map_err(KrsError::ReceiptKey)?;
        let caps = hsm.capabilities();
        if !caps.ecdsa {
            return Err(KrsError::Token(
                "the token cannot sign with CKM_ECDSA".into(),
            ));
        }
        let mode = match wrap {
            WrapChoice::Hpke => WrapMode::HpkeFallback,
            WrapChoice::Hsm if !caps.in_hsm_wrap() => {
                return Err(KrsError::Token(format!(
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
        let mut log = log;
        log.repair_head(&|d| hsm.sign_digest(d))?;
        let limits = Limits::default();
        Ok(Self {
            conns: Arc::new(ConnTracker::new(&limits)),
            warn: WarnGate::new(limits.warnings_per_sec),
            evidence_budget: SourceBudget::new(
                limits.evidence_per_source_per_min,
                limits.max_sessions,
            ),
            stats: Stats::default(),
            limits,
            krs_id: spki_pin(&receipt_spki),
            receipt_spki,
            inner: Mutex::new(Inner { hsm, log }),
            sessions: SessionStore::new(session_ttl),
            policy,
            appraiser,
            tls_pin,
            mode,
            key_id,
            deployments: Vec::new(),
            heads: None,
        })
    }

    /// Apply `[limits]` (before serving: the session table starts empty again).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.sessions = SessionStore::bounded(
            self.sessions.ttl(),
            limits.max_sessions,
            limits.max_sessions_per_source,
        );
        self.conns = Arc::new(ConnTracker::new(&limits));
        self.warn = WarnGate::new(limits.warnings_per_sec);
        self.evidence_budget =
            SourceBudget::new(limits.evidence_per_source_per_min, limits.max_sessions);
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The counters of a `krs status` line.
    pub fn status(&self) -> Status {
        let st = &self.stats;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Status {
            sessions: self.sessions.len(),
            max_sessions: self.sessions.capacity(),
            connections: self.conns.active(),
            max_connections: self.limits.max_connections,
            hsm_signs: n(&st.hsm_signs),
            releases: n(&st.releases),
            signed_denies: n(&st.signed_denies),
            signed_denies_by_reason: st.signed_denies_by(),
            unsigned_denies: st.unsigned_denies(),
            connections_refused_total: n(&st.connections_refused_total),
            connections_refused_per_source: n(&st.connections_refused_per_source),
            deadline_cuts: n(&st.deadline_cuts),
            frame_limit_cuts: n(&st.frame_limit_cuts),
            warnings_suppressed: self.warn.suppressed(),
        }
    }

    /// Serve these deployments (checked by [`crate::deployment::parse`]); a Hello whose pins
    /// match none of them is denied with `PinMismatch`.
    pub fn with_deployments(mut self, deployments: Vec<Deployment>) -> Self {
        self.deployments = deployments;
        self
    }

    /// Keep store heads and boot keys in `book` (`STATE/heads.json`).
    pub fn with_heads(mut self, book: HeadBook) -> Self {
        self.heads = Some(book);
        self
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
            Request::HeadUpdate(u) => self.head_update(u),
            Request::HeadQuery(q) => self.head_query(q),
        }
    }

    /// Handle one frame from `source` (a `limits::source_key`; `None`: no per-source quota).
    /// A Hello is checked for size and against the source's session quota before anything
    /// else.
    pub fn handle_from(&self, frame: &[u8], source: Option<IpAddr>) -> Response {
        let req = match keyward_krp::cbor::from_slice::<Request>(frame) {
            Ok(r) => r,
            Err(e) => return self.deny(DenyCode::Malformed, &error_chain(&e), Ctx::default()),
        };
        let h = match req {
            Request::Hello(h) => h,
            Request::Evidence(e) => {
                // Evidence on a live session costs HSM signatures and fsyncs: a budget per
                // source, checked before the session is touched.
                if let Some(src) = source {
                    if !self.evidence_budget.take(src) {
                        return self.deny(
                            DenyCode::Busy,
                            "evidence budget of this source spent",
                            Ctx::default(),
                        );
                    }
                }
                return self.handle(Request::Evidence(e));
            }
            // Request types added later go straight to `handle`.
            #[allow(unreachable_patterns)]
            other => return self.handle(other),
        };
        if let Some(field) = hello_oversized(&h) {
            return self.deny(
                DenyCode::Malformed,
                &format!("hello {field} is too long"),
                Ctx::default(),
            );
        }
        if let Err(e) = self.sessions.admit(source) {
            return self.deny(DenyCode::Busy, &e.to_string(), Ctx::default());
        }
        let resp = self.hello(h);
        if let (Response::Challenge(ch), Some(src)) = (&resp, source) {
            self.sessions.assign(&ch.session_id, src);
        }
        resp
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
        // The rest of the pins (URL, operator CA) must be a configured deployment's: else the
        // host could boot the genuine image with its own operator CA and administer our keys.
        let deployment = match crate::deployment::find(&self.deployments, &h.pins) {
            Ok(d) => d.name.clone(),
            Err(detail) => return self.deny(DenyCode::PinMismatch, &detail, Ctx::default()),
        };
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
            expires: now_unix() + self.sessions.ttl().as_secs(),
            receipt_spki: self.receipt_spki.clone(),
        };
        tracing::info!(
            session = %hex::encode(session_id),
            platform = %h.platform,
            product_release = %h.product_release,
            deployment = %deployment,
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
        ctx.session = true;
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
        if !e.boot_key.is_empty() && transcript::p384_spki_der(&e.boot_key).is_none() {
            return self.deny(
                DenyCode::BadEphemeralKey,
                "boot_key is not a P-384 point",
                ctx,
            );
        }
        // The session's Hello matched a deployment; match again (the table is fixed for the
        // process) rather than keep a copy per session.
        let deployment = match crate::deployment::find(&self.deployments, &s.hello.pins) {
            Ok(d) => d.name.clone(),
            Err(detail) => return self.deny(DenyCode::PinMismatch, &detail, ctx),
        };
        let t = match transcript::transcript_with(&s.hello, &s.challenge, &e.epk, &e.boot_key) {
            Ok(t) => t,
            Err(err) => return self.deny(DenyCode::Internal, &error_chain(&err), ctx),
        };
        ctx.t = t.to_vec();
        let bundle: EvidenceBundle = match keyward_krp::cbor::from_slice(&e.evidence) {
            Ok(b) => b,
            Err(err) => return self.deny(DenyCode::EvidenceMalformed, &error_chain(&err), ctx),
        };
        let binding = transcript::binding(&t, &s.challenge.nonce, &epk_spki);
        let verdict = self
            .appraiser
            .appraise(&bundle, &self.policy, &binding, SystemTime::now());
        if let Some(f) = verdict.first_failure() {
            let code = code_for_check(&f.name);
            return self.deny(code, &format!("{}: {}", f.name, f.detail), ctx);
        }
        self.release(&e, &t, &deployment, s.hello.key_versions.as_deref(), ctx)
    }

    /// Which master-key versions to release: an agent from before rotation (`wanted` absent)
    /// gets version 1; one that handles versions gets the current (newest present) version,
    /// the version of the store head held for its deployment and any it names, each only
    /// while present in the token (not retired). `Err`: a version it needs is retired.
    fn versions_to_release(
        hsm: &dyn KeyBackend,
        wanted: Option<&[u32]>,
        head: Option<&keyward_krp::messages::StoreHead>,
    ) -> Result<(u32, Vec<u32>), String> {
        let present = hsm.master_key_versions().map_err(|e| error_chain(&e))?;
        let Some(wanted) = wanted else {
            if !present.contains(&KEY_VERSION) {
                return Err(
                    "master-key version 1 is retired and the agent predates rotation".into(),
                );
            }
            return Ok((KEY_VERSION, vec![]));
        };
        let current = *present.last().ok_or("no master key in the token")?;
        let mut also: Vec<u32> = wanted.to_vec();
        if let Some(h) = head {
            also.push(h.mk_version);
        }
        also.sort_unstable();
        also.dedup();
        also.retain(|v| *v != current);
        if let Some(v) = also.iter().find(|v| !present.contains(v)) {
            return Err(format!("master-key version {v} is retired"));
        }
        Ok((current, also))
    }

    fn wrap_version(
        &self,
        hsm: &dyn KeyBackend,
        version: u32,
        e: &Evidence,
        t: &[u8; 48],
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        match self.mode {
            WrapMode::HsmEcdhAesKw => hsm
                .release_wrap_version(version, &e.epk, t)
                .map(|w| (w.hsm_epk, w.wrapped))
                .map_err(|err| error_chain(&err)),
            WrapMode::HpkeFallback => hsm
                .export_master_version(version)
                .map_err(|err| error_chain(&err))
                .and_then(|mk| {
                    let label = keyward_hsm::mk_label(&self.key_id, version);
                    let aad = hpke_aad(&label, version, &self.policy.digest);
                    // `mk` is Zeroizing and dropped (wiped) at the end of this closure.
                    seal_hpke(&e.epk, &mk, t, &aad).map_err(|err| error_chain(&err))
                }),
        }
    }

    fn release(
        &self,
        e: &Evidence,
        t: &[u8; 48],
        deployment: &str,
        wanted: Option<&[u32]>,
        ctx: Ctx,
    ) -> Response {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Register the boot key (durably) and read the head held, before anything is wrapped:
        // a release whose key cannot advance heads would leave the store unanchored.
        let (head, boot_key_id) = match (&self.heads, e.boot_key.is_empty()) {
            (Some(book), false) => match book.register(deployment, &e.boot_key, now_unix()) {
                Ok(h) => (h, keyward_krp::boot_key_id(&e.boot_key).to_vec()),
                Err(err) => {
                    drop(inner);
                    return self.deny(DenyCode::Internal, &error_chain(&err), ctx);
                }
            },
            (Some(book), true) => (book.head(deployment), vec![]),
            (None, _) => (None, vec![]),
        };
        let (primary, also_versions) =
            match Self::versions_to_release(inner.hsm.as_ref(), wanted, head.as_ref()) {
                Ok(v) => v,
                Err(why) => {
                    drop(inner);
                    return self.deny(DenyCode::KeyRetired, &why, ctx);
                }
            };
        let mut wrapped = self.wrap_version(inner.hsm.as_ref(), primary, e, t);
        let mut also = Vec::new();
        for v in &also_versions {
            match self.wrap_version(inner.hsm.as_ref(), *v, e, t) {
                Ok((hsm_epk, wrapped_mk)) => also.push(keyward_krp::messages::WrappedKey {
                    key_version: *v,
                    hsm_epk,
                    wrapped_mk,
                }),
                Err(err) => {
                    wrapped = Err(format!("version {v}: {err}"));
                    break;
                }
            }
        }
        let (hsm_epk, wrapped_mk) = match wrapped {
            Ok(w) => w,
            Err(err) => {
                drop(inner);
                return self.deny(DenyCode::Internal, &format!("wrap: {err}"), ctx);
            }
        };
        let also_receipt: Vec<keyward_krp::ReleasedKey> = also
            .iter()
            .map(|w| keyward_krp::ReleasedKey {
                key_version: w.key_version,
                key_id: keyward_hsm::mk_label(&self.key_id, w.key_version),
                hsm_epk: w.hsm_epk.clone(),
                wrapped_digest: Sha384::digest(&w.wrapped_mk).to_vec(),
            })
            .collect();
        let time = now_unix();
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
            key_id: keyward_hsm::mk_label(&self.key_id, primary),
            key_version: primary,
            time,
            log_index,
            head,
            boot_key_id,
            nonce: vec![],
            also: also_receipt,
        };
        let signed = self.sign_and_log(&mut inner, &receipt, None, None, &ctx);
        drop(inner);
        match signed {
            Ok((receipt, signature)) => {
                tracing::info!(
                    session = %hex::encode(&e.session_id),
                    log_index,
                    mode = ?self.mode,
                    deployment,
                    key_version = primary,
                    also = ?also_versions,
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
                    also,
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

    /// The deployment of the boot key that signed a head request, or the deny: unknown key
    /// or bad signature are refused before any HSM work.
    fn head_caller(
        &self,
        v: u32,
        boot_key_id: &[u8],
        digest: Result<[u8; 48], keyward_krp::cbor::CborError>,
        signature: &[u8],
    ) -> Result<String, Box<Response>> {
        if v != VERSION {
            return Err(Box::new(self.deny(
                DenyCode::UnsupportedVersion,
                &format!("head request v{v}"),
                Ctx::default(),
            )));
        }
        let Some(book) = &self.heads else {
            return Err(Box::new(self.deny(
                DenyCode::Internal,
                "this KRS keeps no store heads",
                Ctx::default(),
            )));
        };
        let Some((deployment, public)) = book.lookup(boot_key_id) else {
            return Err(Box::new(self.deny(
                DenyCode::HeadKeyUnknown,
                &format!(
                    "head request signed by boot key {} that no release registered",
                    hex::encode(boot_key_id.get(..32).unwrap_or(boot_key_id))
                ),
                Ctx::default(),
            )));
        };
        let ok = digest.is_ok_and(|d| keyward_krp::verify_boot_signature(&public, &d, signature));
        if !ok {
            return Err(Box::new(self.deny(
                DenyCode::HeadSignature,
                &format!(
                    "head request for deployment {deployment}: boot key signature does not verify"
                ),
                Ctx::default(),
            )));
        }
        Ok(deployment)
    }

    /// `HeadUpdate`: compare-and-set the deployment's store head; durable before the signed
    /// answer, and recorded in the release log (decision `head`).
    fn head_update(&self, u: HeadUpdate) -> Response {
        use keyward_krp::well_formed;
        let deployment = match self.head_caller(
            u.v,
            &u.boot_key_id,
            keyward_krp::update_digest(&u),
            &u.signature,
        ) {
            Ok(d) => d,
            Err(r) => return *r,
        };
        if !well_formed(&u.next)
            || u.prev.as_ref().is_some_and(|p| !well_formed(p))
            || u.nonce.len() != 32
        {
            return self.deny(
                DenyCode::Malformed,
                "head update: store id, chain MAC or nonce size",
                Ctx::default(),
            );
        }
        let Some(book) = &self.heads else {
            return self.deny(DenyCode::Internal, "no head book", Ctx::default());
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match book.advance(&deployment, u.prev.as_ref(), &u.next) {
            Ok(Ok(outcome)) => {
                let detail = format!(
                    "deployment {deployment}: store head seq {} ({outcome:?})",
                    u.next.seq
                );
                self.head_answer(&mut inner, "head", Some(u.next.clone()), &u, &detail)
            }
            Ok(Err(refusal)) => {
                drop(inner);
                let held = book.head(&deployment);
                self.deny(
                    DenyCode::HeadRefused,
                    &format!(
                        "deployment {deployment}: {refusal}: held {held:?}, prev {:?}, next {:?}",
                        u.prev, u.next
                    ),
                    Ctx::default(),
                )
            }
            Err(err) => {
                drop(inner);
                self.deny(DenyCode::Internal, &error_chain(&err), Ctx::default())
            }
        }
    }

    /// `HeadQuery`: the head held for the caller's deployment, signed, naming the nonce.
    fn head_query(&self, q: HeadQuery) -> Response {
        let deployment = match self.head_caller(
            q.v,
            &q.boot_key_id,
            keyward_krp::query_digest(&q),
            &q.signature,
        ) {
            Ok(d) => d,
            Err(r) => return *r,
        };
        if q.nonce.len() != 32 {
            return self.deny(
                DenyCode::Malformed,
                "head query: nonce size",
                Ctx::default(),
            );
        }
        let head = self.heads.as_ref().and_then(|b| b.head(&deployment));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let detail = format!("deployment {deployment}: head query");
        let u = HeadUpdate {
            v: q.v,
            boot_key_id: q.boot_key_id,
            prev: None,
            next: head.clone().unwrap_or(keyward_krp::messages::StoreHead {
                store_id: vec![],
                seq: 0,
                chain_mac: vec![],
                mk_version: 1,
            }),
            nonce: q.nonce,
            signature: vec![],
        };
        self.head_answer(&mut inner, "head-query", head, &u, &detail)
    }

    /// Sign and log a head receipt and answer with it.
    fn head_answer(
        &self,
        inner: &mut Inner,
        decision: &str,
        head: Option<keyward_krp::messages::StoreHead>,
        req: &HeadUpdate,
        detail: &str,
    ) -> Response {
        let receipt = Receipt {
            v: VERSION,
            decision: decision.into(),
            code: None,
            session_id: vec![],
            t: vec![],
            mode: None,
            hsm_epk: vec![],
            wrapped_digest: vec![],
            evidence_digest: vec![],
            policy_digest: self.policy.digest.to_vec(),
            key_id: self.key_id.clone(),
            key_version: KEY_VERSION,
            time: now_unix(),
            log_index: inner.log.next_index(),
            head,
            boot_key_id: req.boot_key_id.clone(),
            nonce: req.nonce.clone(),
            also: vec![],
        };
        match self.sign_and_log(inner, &receipt, None, Some(detail), &Ctx::default()) {
            Ok((receipt, signature)) => {
                tracing::info!("{detail}: answered");
                Response::Head(HeadAck {
                    v: VERSION,
                    receipt,
                    signature,
                })
            }
            Err(err) => {
                tracing::error!("{detail}: answer not logged, withheld: {err}");
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
        let keep_evidence =
            !ctx.evidence.is_empty() && ctx.evidence.len() <= self.limits.log_evidence_max;
        let bytes = receipt.encode().map_err(|e| error_chain(&e))?;
        Stats::bump(&self.stats.hsm_signs);
        let sig = inner
            .hsm
            .sign_digest(&receipt_digest(&bytes))
            .map_err(|e| error_chain(&e))?;
        let entry = Entry {
            index: receipt.log_index,
            time: receipt.time,
            decision: receipt.decision.clone(),
            code: receipt.code,
            reason: reason.map(|c| c.name().to_string()),
            detail: match (detail, keep_evidence) {
                (Some(d), false) if !ctx.evidence.is_empty() => Some(format!(
                    "{} (evidence of {} bytes not kept: over limits.log_evidence_max)",
                    bounded(d, MAX_DETAIL),
                    ctx.evidence.len()
                )),
                (d, _) => d.map(|d| bounded(d, MAX_DETAIL).into_owned()),
            },
            key_id: receipt.key_id.clone(),
            evidence_digest: hex::encode(&receipt.evidence_digest),
            policy_digest: hex::encode(&receipt.policy_digest),
            session_id: hex::encode(&ctx.session_id),
            evidence: keep_evidence.then(|| STANDARD.encode(&ctx.evidence)),
            receipt: STANDARD.encode(&bytes),
            signature: STANDARD.encode(&sig),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let Inner { hsm, log } = inner;
        log.append(entry, &|d| {
            Stats::bump(&self.stats.hsm_signs);
            hsm.sign_digest(d)
        })
        .map_err(|e| error_chain(&e))?;
        if receipt.decision == "release" {
            Stats::bump(&self.stats.releases);
        } else {
            Stats::bump(&self.stats.signed_denies);
        }
        Ok((bytes, sig))
    }

    /// The one way to refuse. Before a session was consumed (`ctx.session` false): counted,
    /// logged under the rate limit, answered unsigned; nothing reaches the HSM or the release
    /// log. After: signed in the HSM and appended to the release log.
    fn deny(&self, code: DenyCode, detail: &str, ctx: Ctx) -> Response {
        let detail = bounded(detail, MAX_DETAIL);
        if !ctx.session {
            self.stats.unsigned_deny(code.name());
            if self.warn.allow() {
                tracing::warn!(
                    code = code.number(),
                    reason = code.name(),
                    "deny before a session (unsigned, not in the release log): {detail}"
                );
            }
            return Response::Deny(Deny {
                v: VERSION,
                code: code.number(),
                receipt: vec![],
                signature: vec![],
            });
        }
        self.stats.signed_deny(code.name());
        if self.warn.allow() {
            tracing::warn!(
                code = code.number(),
                reason = code.name(),
                session = %hex::encode(&ctx.session_id),
                "deny: {detail}"
            );
        }
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
            time: now_unix(),
            log_index: inner.log.next_index(),
            head: None,
            boot_key_id: vec![],
            nonce: vec![],
            also: vec![],
        };
        let (receipt, signature) =
            match self.sign_and_log(&mut inner, &receipt, Some(code), Some(&detail), &ctx) {
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

/// Longest field of a Hello (its strings go into log lines and T).
const HELLO_FIELD_MAX: usize = 256;

/// The first Hello field that is longer than any agent sends.
fn hello_oversized(h: &Hello) -> Option<&'static str> {
    let p = &h.pins;
    if h.platform.len() > HELLO_FIELD_MAX {
        Some("platform")
    } else if h.product_release.len() > HELLO_FIELD_MAX {
        Some("product_release")
    } else if h.algs.len() > 16 || h.algs.iter().any(|a| a.len() > 64) {
        Some("algs")
    } else if p.krs_url.len() > HELLO_FIELD_MAX * 4 {
        Some("pins.krs_url")
    } else if [
        &p.krs_tls_spki_sha256,
        &p.receipt_spki_sha256,
        &p.admin_ca_sha256,
    ]
    .iter()
    .any(|b| b.len() > 64)
    {
        Some("pins")
    } else {
        None
    }
}

/// Serve KRP/1 on `listener` until the process ends: one thread per connection, TLS 1.3, one
/// frame in, one frame out, as many rounds as the agent sends (up to the limits). A status
/// line (`krs status {json}`) is logged every `limits.status_secs` when a counter changed.
pub(crate) fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, svc: Arc<Service>) {
    let every = Duration::from_secs(svc.limits.status_secs);
    let status_svc = svc.clone();
    let _ = std::thread::Builder::new()
        .name("krs-status".into())
        .spawn(move || {
            // One line per interval, only when something changed (a quiet KRS stays quiet).
            let mut last = None;
            loop {
                std::thread::sleep(every);
                let now = status_svc.status();
                if last.as_ref() == Some(&now) {
                    continue;
                }
                match serde_json::to_string(&now) {
                    Ok(j) => tracing::info!("krs status {j}"),
                    Err(e) => tracing::error!("krs status: {e}"),
                }
                last = Some(now);
            }
        });
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, typically: do not spin.
                if svc.warn.allow() {
                    tracing::warn!("accept: {e}");
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let src = source_key(peer.ip());
        // Bounded concurrency: beyond a limit, a new connection is closed at once.
        let slot = match svc.conns.admit(src) {
            Ok(slot) => slot,
            Err(why) => {
                let c = match why {
                    ConnRefused::Total => &svc.stats.connections_refused_total,
                    ConnRefused::PerSource => &svc.stats.connections_refused_per_source,
                };
                Stats::bump(c);
                if svc.warn.allow() {
                    tracing::warn!(source = %src, "{why}; closing a new connection");
                }
                continue;
            }
        };
        let tls = tls.clone();
        let svc2 = svc.clone();
        let spawned = std::thread::Builder::new()
            .name("krs-conn".into())
            .spawn(move || {
                let src = slot.source();
                if let Err(e) = connection(stream, tls, &svc2, src) {
                    tracing::debug!(source = %src, "connection ended: {e}");
                }
                drop(slot);
            });
        if spawned.is_err() && svc.warn.allow() {
            tracing::error!("cannot start a connection thread");
        }
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn connection(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    svc: &Service,
    src: IpAddr,
) -> Result<(), String> {
    let l = svc.limits;
    let mut sock = DeadlineStream::new(stream, secs(l.connection_secs));
    sock.phase(secs(l.handshake_secs));
    let conn = rustls::ServerConnection::new(tls).map_err(|e| error_chain(&e))?;
    let mut tls_stream = rustls::StreamOwned::new(conn, sock);
    let r = frames(&mut tls_stream, svc, src);
    if tls_stream.sock.expired() {
        Stats::bump(&svc.stats.deadline_cuts);
        if svc.warn.allow() {
            tracing::warn!(source = %src, "connection cut: a deadline passed");
        }
    }
    r
}

fn frames(
    s: &mut rustls::StreamOwned<rustls::ServerConnection, DeadlineStream>,
    svc: &Service,
    src: IpAddr,
) -> Result<(), String> {
    let l = svc.limits;
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("TLS handshake: {}", error_chain(&e)))?;
    }
    for _ in 0..l.max_frames_per_connection {
        s.sock.phase(secs(l.idle_secs));
        let frame = match wire::read_frame_phased(s, |s| s.sock.phase(secs(l.frame_secs))) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(error_chain(&e)),
        };
        let resp = svc.handle_from(&frame, Some(src));
        s.sock.phase(secs(l.frame_secs));
        wire::write_msg(s, &resp).map_err(|e| error_chain(&e))?;
    }
    Stats::bump(&svc.stats.frame_limit_cuts);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_hsm::{Capabilities, HsmWrap};
    use zeroize::Zeroizing;

    /// The soft backend with a chosen set of master-key versions present.
    struct Versions(crate::softkeys::SoftKeys, Vec<u32>);

    impl KeyBackend for Versions {
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        fn master_key_id(&self) -> &str {
            self.0.master_key_id()
        }
        fn receipt_public_key(&self) -> Result<Vec<u8>, HsmError> {
            self.0.receipt_public_key()
        }
        fn sign_digest(&self, digest: &[u8; 48]) -> Result<Vec<u8>, HsmError> {
            self.0.sign_digest(digest)
        }
        fn release_wrap(&self, epk: &[u8], t: &[u8]) -> Result<HsmWrap, HsmError> {
            self.0.release_wrap(epk, t)
        }
        fn export_master_for_fallback(&self) -> Result<Zeroizing<[u8; 32]>, HsmError> {
            self.0.export_master_for_fallback()
        }
        fn master_key_versions(&self) -> Result<Vec<u32>, HsmError> {
            Ok(self.1.clone())
        }
    }

    fn head(v: u32) -> keyward_krp::messages::StoreHead {
        keyward_krp::messages::StoreHead {
            store_id: vec![1; 16],
            seq: 3,
            chain_mac: vec![2; 32],
            mk_version: v,
        }
    }

    #[test]
    fn which_master_key_versions_are_released() {
        let d = tempfile::tempdir().unwrap();
        let b = |present: Vec<u32>| {
            Versions(
                crate::softkeys::SoftKeys::open_or_create(d.path()).unwrap(),
                present,
            )
        };
        let pick = Service::versions_to_release;
        // An agent from before rotation: version 1, whatever is current; refused once retired.
        assert_eq!(pick(&b(vec![1, 2]), None, Some(&head(2))), Ok((1, vec![])));
        assert!(pick(&b(vec![2]), None, None)
            .unwrap_err()
            .contains("retired"));
        // A rotating agent: the current version and its store head's, while present.
        assert_eq!(
            pick(&b(vec![1]), Some(&[]), Some(&head(1))),
            Ok((1, vec![]))
        );
        assert_eq!(
            pick(&b(vec![1, 2]), Some(&[]), Some(&head(1))),
            Ok((2, vec![1]))
        );
        assert_eq!(
            pick(&b(vec![1, 2]), Some(&[]), Some(&head(2))),
            Ok((2, vec![]))
        );
        assert_eq!(
            pick(&b(vec![1, 2, 3]), Some(&[1]), Some(&head(2))),
            Ok((3, vec![1, 2]))
        );
        // A retired version asked for (by name or by the head held): refused, not skipped.
        let e = pick(&b(vec![2]), Some(&[]), Some(&head(1))).unwrap_err();
        assert!(e.contains("version 1 is retired"), "{e}");
        assert!(pick(&b(vec![2, 3]), Some(&[1]), None).is_err());
    }
}
