//! The four XKS APIs, one file each, as mini-redis has one file per command. Each `handle` reads
//! top to bottom in the contract's order of checks (section 7.4): parse the JSON and its
//! `requestMetadata` (400), look the key up (404), its state (400), the grants (403), the sizes
//! (501), the key usage, then the crypto. Route and SigV4 ran before, in [`crate::handlers`].
//! What the operations share lives here: the audit fields from the metadata, key lookup, the
//! grant check, size checks, and the per-thread scratch buffers.

pub(crate) mod decrypt;
pub(crate) mod encrypt;
pub(crate) mod health;
pub(crate) mod metadata;

use std::borrow::Cow;
use std::sync::Arc;

use crate::error::XksError;
use crate::grants::{self, Op};
use crate::model::RequestMetadata;
use keyward_audit::{Field, XksRecord};
use keyward_keystore::{LiveKey, StoreView};

/// The request's `requestMetadata`: copied into the audit record when present (so a refused
/// request is still attributed), then required and checked (400 when absent or malformed).
pub(crate) fn request_metadata<'r, 'a>(
    md: &'r Option<RequestMetadata<'a>>,
    rec: &mut XksRecord,
) -> Result<&'r RequestMetadata<'a>, XksError> {
    if let Some(md) = md {
        note_metadata(rec, md);
    }
    crate::model::require_metadata(md)
}

/// Copy the request's metadata into the audit record.
fn note_metadata(rec: &mut XksRecord, md: &RequestMetadata<'_>) {
    let fields = [
        (Field::KmsRequestId, &md.kms_request_id),
        (Field::KmsOperation, &md.kms_operation),
        (Field::Principal, &md.aws_principal_arn),
        (Field::ViaService, &md.kms_via_service),
        (Field::SourceVpc, &md.aws_source_vpc),
        (Field::SourceVpce, &md.aws_source_vpce),
        (Field::KmsKeyArn, &md.kms_key_arn),
    ];
    for (f, v) in fields {
        if let Some(v) = v {
            rec.set(f, v);
        }
    }
}

/// 4. key lookup and 5. (for encrypt/decrypt) key state.
pub(crate) fn lookup<'s>(store: &'s StoreView, id: &str) -> Result<&'s Arc<LiveKey>, XksError> {
    store.keys.get(id).ok_or_else(|| {
        if store.destroyed.contains_key(id) {
            XksError::KeyNotFound("the external key was destroyed")
        } else {
            XksError::KeyNotFound("no such external key")
        }
    })
}

/// 6. grants.
pub(crate) fn authorize(
    key: &LiveKey,
    op: Op,
    md: &RequestMetadata<'_>,
    rec: &mut XksRecord,
) -> Result<(), XksError> {
    match grants::allowed(&key.grants, op, md) {
        Some(i) => {
            rec.set_grant(i);
            Ok(())
        }
        None => Err(XksError::AccessDenied(
            "no grant on this key allows this principal and operation",
        )),
    }
}

/// 7. A Base64 field's decoded size against a limit, checked before decoding.
pub(crate) fn check_size(field: &'static str, b64: &str, max: usize) -> Result<(), XksError> {
    if b64.len() > base64::encoded_len(max, true).unwrap_or(usize::MAX) {
        return Err(XksError::UnsupportedOperation(Cow::Owned(format!(
            "{field} larger than this proxy supports ({max} bytes)"
        ))));
    }
    Ok(())
}

/// Per-thread buffers reused across requests, so the crypto path allocates only its answer.
/// Plaintext-bearing buffers are wiped (the used part) after every request.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) data: Vec<u8>,
    pub(crate) check: Vec<u8>,
    pub(crate) aad: Vec<u8>,
    pub(crate) gcm_aad: Vec<u8>,
}

/// Buffers above this capacity are freed after use rather than kept.
const SCRATCH_KEEP: usize = 256 * 1024;

impl Scratch {
    fn wipe(&mut self) {
        use zeroize::Zeroize;
        for v in [
            &mut self.data,
            &mut self.check,
            &mut self.aad,
            &mut self.gcm_aad,
        ] {
            v[..].zeroize();
            v.clear();
            if v.capacity() > SCRATCH_KEEP {
                *v = Vec::new();
            }
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let r = f(&mut s);
            s.wipe();
            r
        }
        // Not reachable (no re-entry), but never panic: use fresh buffers.
        Err(_) => {
            let mut s = Scratch::default();
            let r = f(&mut s);
            s.wipe();
            r
        }
    })
}

/// A small Base64 field (IV, tag, metadata) longer than its maximum is invalid input.
pub(crate) fn check_small(b64: &str, max: usize) -> Result<&str, XksError> {
    if b64.len() > base64::encoded_len(max, true).unwrap_or(0) {
        return Err(XksError::Validation(
            "a field is longer than the spec allows".into(),
        ));
    }
    Ok(b64)
}
