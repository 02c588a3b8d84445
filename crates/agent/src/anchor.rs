//! [`KrsAnchor`]: the appliance's [`HeadAnchor`] at the KRS that released its master key.
//!
//! Each call opens a fresh TLS connection pinned to the KRS's TLS key (the same
//! [`Client`] as the boot agent), sends a `HeadUpdate` or `HeadQuery` signed by this boot's
//! key, and accepts only an answer signed by the pinned receipt key (in the HSM) that names the
//! request's fresh nonce and the head asked for. A deny is a refusal (nothing recorded), except
//! `Internal`, after which the outcome is unknown; a transport error or an answer that does
//! not verify is `Unreachable`. Only admin writes call it, never the XKS request path.

use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::client::Client;
use keyward_keystore::{AnchorError, HeadAnchor};
use keyward_krp::messages::{HeadAck, Request, Response, StoreHead};
use keyward_krp::BootKey;
use keyward_krp::{verify_receipt, DenyCode};

/// Store heads recorded at the KRS, through this boot's registered key.
pub struct KrsAnchor {
    krs_urls: Vec<String>,
    tls_pin: [u8; 32],
    receipt_spki: Vec<u8>,
    boot_key: Arc<BootKey>,
    timeout: Duration,
}

impl std::fmt::Debug for KrsAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KrsAnchor")
            .field("krs_urls", &self.krs_urls)
            .field("boot_key", &self.boot_key)
            .finish()
    }
}

impl KrsAnchor {
    /// `receipt_spki` must be the pinned receipt key's SPKI (as checked in the release).
    /// `krs_urls`: the KRS's addresses, tried in order.
    pub fn new(
        krs_urls: &[&str],
        tls_pin: [u8; 32],
        receipt_spki: Vec<u8>,
        boot_key: Arc<BootKey>,
        timeout: Duration,
    ) -> Self {
        Self {
            krs_urls: krs_urls.iter().map(|u| u.to_string()).collect(),
            tls_pin,
            receipt_spki,
            boot_key,
            timeout,
        }
    }

    fn call(&self, req: &Request) -> Result<HeadAck, AnchorError> {
        let urls: Vec<&str> = self.krs_urls.iter().map(String::as_str).collect();
        let mut c = Client::connect_any(&urls, self.tls_pin, self.timeout)
            .map_err(|e| AnchorError::Unreachable(e.to_string()))?;
        match c.call(req) {
            Ok(Response::Head(ack)) => Ok(ack),
            Ok(Response::Deny(d)) if d.code == DenyCode::Internal.number() => Err(
                AnchorError::Unreachable(format!("the KRS failed (code {})", d.code)),
            ),
            Ok(Response::Deny(d)) => Err(AnchorError::Refused(format!(
                "denied with code {}{}",
                d.code,
                deny_name(d.code)
            ))),
            Ok(_) => Err(AnchorError::Unreachable("unexpected answer".into())),
            Err(e) => Err(AnchorError::Unreachable(e.to_string())),
        }
    }

    /// Verify an answer: the pinned receipt key, the decision, our key and nonce.
    fn check(
        &self,
        ack: &HeadAck,
        decision: &str,
        nonce: &[u8],
    ) -> Result<Option<StoreHead>, AnchorError> {
        let lost = |why: &str| AnchorError::Unreachable(format!("head answer rejected: {why}"));
        let r = verify_receipt(&self.receipt_spki, &ack.receipt, &ack.signature)
            .map_err(|e| lost(&e.to_string()))?;
        let eq = |a: &[u8], b: &[u8]| -> bool { a.ct_eq(b).into() };
        if r.decision != decision {
            return Err(lost("another decision"));
        }
        if !eq(&r.nonce, nonce) {
            return Err(lost("another nonce (a replayed answer)"));
        }
        if !eq(&r.boot_key_id, &self.boot_key.id()) {
            return Err(lost("another boot key"));
        }
        // The KRS's signed time: trusted time moves forward with each admin write.
        crate::time::clock().observe(r.time);
        Ok(r.head)
    }
}

fn deny_name(code: u32) -> &'static str {
    if code == DenyCode::HeadRefused.number() {
        " (the new head does not extend the one the KRS holds, or names another store)"
    } else if code == DenyCode::HeadKeyUnknown.number() {
        " (this boot's key is not registered at the KRS)"
    } else if code == DenyCode::HeadSignature.number() {
        " (boot key signature)"
    } else {
        ""
    }
}

impl HeadAnchor for KrsAnchor {
    fn advance(&self, prev: Option<&StoreHead>, next: &StoreHead) -> Result<(), AnchorError> {
        let u = self
            .boot_key
            .head_update(prev, next)
            .map_err(AnchorError::Unreachable)?;
        let nonce = u.nonce.clone();
        let ack = self.call(&Request::HeadUpdate(u))?;
        match self.check(&ack, "head", &nonce)? {
            Some(h) if h == *next => Ok(()),
            _ => Err(AnchorError::Unreachable(
                "head answer names another head".into(),
            )),
        }
    }

    fn current(&self) -> Result<Option<StoreHead>, AnchorError> {
        let q = self
            .boot_key
            .head_query()
            .map_err(AnchorError::Unreachable)?;
        let nonce = q.nonce.clone();
        let ack = self.call(&Request::HeadQuery(q))?;
        self.check(&ack, "head-query", &nonce)
    }
}
