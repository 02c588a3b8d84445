//! M-of-N approval (dual control) of destructive or secret-revealing admin requests: the rules,
//! as pure functions over the approval records the key store keeps
//! ([`keyward_keystore::ApprovalRecord`], chained and MACed like every record, so on a
//! fleet every member sees them and a database writer cannot forge one unnoticed).
//!
//! The walk: a request [`crate::role::policy`] marks as needing approval, made without one, is
//! refused and *files* a request bound to the SHA-256 of its canonical JSON ([`request_sha256`]:
//! sorted keys, secret fields left out, though no gated request carries one). Other operators
//! (a different client certificate key, compared by SPKI hash, holding the role the action
//! needs) [`approve`] it until `needed` have; the requester then makes the same request again
//! with the approval id and it runs once ([`consume`]). Expired, denied, used, another
//! operator's, or another request's approval: refused.

use serde_json::Value;

use super::role::{Need, Operator, Role, Roles};
use super::server::AdminError;
use keyward_keystore::{ApprovalRecord, ApprovalState, ApproverRecord};

/// Fields that may hold a secret: never part of what an approval is bound to or stores.
const SECRET_FIELDS: [&str; 2] = ["key_b64", "secret_access_key"];

/// The dual-control settings (`[admin] approvals_required`, `approval_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Distinct operators, requester included (1: dual control off).
    pub required: u32,
    pub ttl_secs: u64,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            required: keyward_config::DEFAULT_APPROVALS_REQUIRED,
            ttl_secs: keyward_config::DEFAULT_APPROVAL_TTL_SECS,
        }
    }
}

/// Canonical JSON: object keys sorted at every level, secret fields dropped.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                if SECRET_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(x) = m.get(k) {
                    out.insert(k.clone(), canonical(x));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// SHA-256 (hex) of the canonical JSON of `req`: what an approval is bound to.
pub(crate) fn request_sha256(req: &super::proto::Request) -> Result<String, AdminError> {
    use sha2::Digest;
    let json = |source| AdminError::Json {
        what: "the request's canonical JSON",
        source,
    };
    let v = serde_json::to_value(req).map_err(json)?;
    // serde_json's map keeps keys sorted without `preserve_order`; `canonical` sorts anyway.
    let bytes = serde_json::to_vec(&canonical(&v)).map_err(json)?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

fn random_id() -> Result<String, AdminError> {
    let mut b = [0u8; 16];
    keyward_secret::getrandom_fill(&mut b)
        .map_err(|e| AdminError::Internal(format!("random approval id: {e}")))?;
    Ok(hex::encode(b))
}

/// A new pending request for `op` by `who`.
pub(crate) fn file(
    op: &str,
    what: &str,
    request_sha256: String,
    need: Need,
    who: &Operator,
    policy: ApprovalPolicy,
    now: u64,
) -> Result<ApprovalRecord, AdminError> {
    Ok(ApprovalRecord {
        id: random_id()?,
        op: op.to_string(),
        what: what.to_string(),
        request_sha256,
        role: need.role().as_str().to_string(),
        requester: who.subject.clone(),
        requester_spki_sha256: who.spki_sha256.clone(),
        needed: policy.required.saturating_sub(1).max(1),
        created: now,
        expires: now.saturating_add(policy.ttl_secs),
        state: ApprovalState::Pending,
        approvers: Vec::new(),
        closed_by: None,
        closed: None,
    })
}

/// Whether `rec` can no longer be used because of time.
pub(crate) fn expired(rec: &ApprovalRecord, now: u64) -> bool {
    now > rec.expires
}

/// The state to show: `expired` for a pending or approved request past its time.
pub(crate) fn shown_state(rec: &ApprovalRecord, now: u64) -> &'static str {
    match rec.state {
        ApprovalState::Pending | ApprovalState::Approved if expired(rec, now) => "expired",
        ApprovalState::Pending => "pending",
        ApprovalState::Approved => "approved",
        ApprovalState::Denied => "denied",
        ApprovalState::Used => "used",
    }
}

fn found<'a>(cur: Option<&'a ApprovalRecord>, id: &str) -> Result<&'a ApprovalRecord, AdminError> {
    cur.ok_or_else(|| AdminError::NotFound(format!("approval: no request {id}")))
}

fn need_of(rec: &ApprovalRecord) -> Need {
    match Role::parse(&rec.role) {
        Ok(Role::Operator) => Need::Operator,
        Ok(Role::Viewer) => Need::Any,
        // Security, or anything unexpected: the strictest.
        _ => Need::Security,
    }
}

/// Expired: refused, naming the time.
fn refuse_expired(rec: &ApprovalRecord) -> AdminError {
    AdminError::Forbidden(format!(
        "approval: request {} expired at {}",
        rec.id,
        keyward_keystore::unix_rfc3339(rec.expires)
    ))
}

/// `who` approves `cur`: another operator than the requester (SPKI hash), holding the role the
/// action needs, once each; the request becomes approved when enough have.
pub(crate) fn approve(
    cur: Option<&ApprovalRecord>,
    id: &str,
    who: &Operator,
    roles: Roles,
    now: u64,
) -> Result<ApprovalRecord, AdminError> {
    let rec = found(cur, id)?;
    if rec.state != ApprovalState::Pending {
        return Err(AdminError::Conflict(format!(
            "approval: request {id} is {}, not pending",
            shown_state(rec, now)
        )));
    }
    if expired(rec, now) {
        return Err(refuse_expired(rec));
    }
    if who.spki_sha256 == rec.requester_spki_sha256 {
        return Err(AdminError::Forbidden(format!(
            "approval: {} filed request {id}; the same operator cannot approve their own request \
             (another operator's certificate must)",
            who.subject
        )));
    }
    if rec
        .approvers
        .iter()
        .any(|a| a.spki_sha256 == who.spki_sha256)
    {
        return Err(AdminError::Forbidden(format!(
            "approval: {} has already approved request {id}; another operator must",
            who.subject
        )));
    }
    let need = need_of(rec);
    if !roles.satisfy(need) {
        return Err(AdminError::Forbidden(format!(
            "forbidden: approving request {id} ({}) needs the {} role; the client certificate's \
             role is {roles}",
            rec.op,
            need.role()
        )));
    }
    let mut next = rec.clone();
    next.approvers.push(ApproverRecord {
        subject: who.subject.clone(),
        spki_sha256: who.spki_sha256.clone(),
        at: now,
    });
    if next.approvers.len() as u64 >= u64::from(next.needed) {
        next.state = ApprovalState::Approved;
    }
    Ok(next)
}

/// `who` denies `cur` (pending or approved, not used): its requester, or an operator holding
/// the role the action needs.
pub(crate) fn deny(
    cur: Option<&ApprovalRecord>,
    id: &str,
    who: &Operator,
    roles: Roles,
    now: u64,
) -> Result<ApprovalRecord, AdminError> {
    let rec = found(cur, id)?;
    if !matches!(rec.state, ApprovalState::Pending | ApprovalState::Approved) {
        return Err(AdminError::Conflict(format!(
            "approval: request {id} is {}: nothing to deny",
            shown_state(rec, now)
        )));
    }
    let need = need_of(rec);
    if who.spki_sha256 != rec.requester_spki_sha256 && !roles.satisfy(need) {
        return Err(AdminError::Forbidden(format!(
            "forbidden: denying request {id} needs the {} role (or being its requester); the \
             client certificate's role is {roles}",
            need.role()
        )));
    }
    let mut next = rec.clone();
    next.state = ApprovalState::Denied;
    next.closed_by = Some(who.subject.clone());
    next.closed = Some(now);
    Ok(next)
}

/// The requester `who` uses approved request `cur` for the request hashing to `sha`: once.
pub(crate) fn consume(
    cur: Option<&ApprovalRecord>,
    id: &str,
    who: &Operator,
    sha: &str,
    now: u64,
) -> Result<ApprovalRecord, AdminError> {
    let rec = found(cur, id)?;
    match rec.state {
        ApprovalState::Approved => {}
        ApprovalState::Pending if !expired(rec, now) => {
            return Err(AdminError::Forbidden(format!(
                "approval: request {id} has {} of {} approvals; not approved yet",
                rec.approvers.len(),
                rec.needed
            )))
        }
        ApprovalState::Used => {
            return Err(AdminError::Forbidden(format!(
                "approval: request {id} was used already (an approval runs its request once)"
            )))
        }
        ApprovalState::Denied => {
            return Err(AdminError::Forbidden(format!(
                "approval: request {id} was denied"
            )))
        }
        ApprovalState::Pending => {}
    }
    if expired(rec, now) {
        return Err(refuse_expired(rec));
    }
    if who.spki_sha256 != rec.requester_spki_sha256 {
        return Err(AdminError::Forbidden(format!(
            "approval: request {id} was filed by {}; only its requester can use it",
            rec.requester
        )));
    }
    if sha != rec.request_sha256 {
        return Err(AdminError::Forbidden(format!(
            "approval: request {id} approved another request ({}: {}); re-run exactly that \
             command, or file a new request",
            rec.op, rec.what
        )));
    }
    let mut next = rec.clone();
    next.state = ApprovalState::Used;
    next.closed_by = Some(who.subject.clone());
    next.closed = Some(now);
    Ok(next)
}

/// An approval as `approvals list` shows it.
pub(crate) fn info(rec: &ApprovalRecord, now: u64) -> super::proto::ApprovalInfo {
    super::proto::ApprovalInfo {
        id: rec.id.clone(),
        op: rec.op.clone(),
        what: rec.what.clone(),
        state: shown_state(rec, now).to_string(),
        requester: rec.requester.clone(),
        approvers: rec.approvers.iter().map(|a| a.subject.clone()).collect(),
        needed: rec.needed,
        role: rec.role.clone(),
        created: keyward_keystore::unix_rfc3339(rec.created),
        expires: keyward_keystore::unix_rfc3339(rec.expires),
        request_sha256: rec.request_sha256.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Request;

    fn destroy(id: &str) -> Request {
        Request::KeysScheduleDestroy {
            store: None,
            id: id.into(),
            days: Some(7),
        }
    }

    fn sec() -> Roles {
        Roles::of(Role::Security)
    }

    #[test]
    fn the_walk_and_its_refusals() {
        let alice = Operator::new("CN=alice", Role::Security);
        let bob = Operator::new("CN=bob", Role::Security);
        let olga = Operator::new("CN=olga", Role::Operator);
        let sha = request_sha256(&destroy("k1")).unwrap();
        assert_ne!(sha, request_sha256(&destroy("k2")).unwrap());
        let r = file(
            "keys_schedule_destroy",
            "key=k1",
            sha.clone(),
            Need::Security,
            &alice,
            ApprovalPolicy::default(),
            1000,
        )
        .unwrap();
        assert_eq!((r.needed, r.expires), (1, 1000 + 3600));
        // Not yet approved; self-approval; wrong role.
        assert!(consume(Some(&r), &r.id, &alice, &sha, 1001).is_err());
        assert!(approve(Some(&r), &r.id, &alice, sec(), 1001).is_err());
        let e = approve(Some(&r), &r.id, &olga, Roles::of(Role::Operator), 1001).unwrap_err();
        assert!(e.to_string().contains("security"), "{e}");
        // Approved by bob; expired after the TTL.
        assert!(approve(Some(&r), &r.id, &bob, sec(), 1000 + 3601).is_err());
        let a = approve(Some(&r), &r.id, &bob, sec(), 1002).unwrap();
        assert_eq!(a.state, ApprovalState::Approved);
        assert!(consume(Some(&a), &a.id, &alice, &sha, 1000 + 3601)
            .unwrap_err()
            .to_string()
            .contains("expired"));
        // Another request, another operator: refused.
        let other = request_sha256(&destroy("k2")).unwrap();
        assert!(consume(Some(&a), &a.id, &alice, &other, 1003).is_err());
        assert!(consume(Some(&a), &a.id, &bob, &sha, 1003).is_err());
        // Used once, then refused.
        let u = consume(Some(&a), &a.id, &alice, &sha, 1003).unwrap();
        assert_eq!(u.state, ApprovalState::Used);
        assert!(consume(Some(&u), &u.id, &alice, &sha, 1004)
            .unwrap_err()
            .to_string()
            .contains("used already"));
        // Denied: by its requester or a security operator, not by an operator.
        assert!(deny(Some(&r), &r.id, &olga, Roles::of(Role::Operator), 1001).is_err());
        let d = deny(Some(&r), &r.id, &alice, sec(), 1001).unwrap();
        assert!(consume(Some(&d), &d.id, &alice, &sha, 1002).is_err());
        assert!(approve(None, "nope", &bob, sec(), 1).is_err());
    }

    #[test]
    fn an_export_approval_binds_key_escrow_key_and_algorithm() {
        use crate::import::WrappingAlgorithm as W;
        let e = |id: &str, w: W, spki: &str| Request::KeysExport {
            store: None,
            id: id.into(),
            wrapping_algorithm: w,
            wrapping_public_key_der_b64: spki.into(),
        };
        let base = request_sha256(&e("k", W::RsaesOaepSha256, "AAAA")).unwrap();
        assert_eq!(
            base,
            request_sha256(&e("k", W::RsaesOaepSha256, "AAAA")).unwrap()
        );
        for other in [
            e("k2", W::RsaesOaepSha256, "AAAA"),
            e("k", W::RsaAesKeyWrapSha256, "AAAA"),
            e("k", W::RsaesOaepSha256, "BBBB"),
        ] {
            assert_ne!(base, request_sha256(&other).unwrap());
        }
    }

    #[test]
    fn secrets_are_not_part_of_the_hash() {
        let a = Request::KeysImport {
            store: None,
            id: "k".into(),
            usage: keyward_keystore::KeyUsage::EncryptDecrypt,
            key_b64: crate::proto::SecretText::new("AAAA".into()),
            plaintext_key_material: true,
        };
        let b = Request::KeysImport {
            store: None,
            id: "k".into(),
            usage: keyward_keystore::KeyUsage::EncryptDecrypt,
            key_b64: crate::proto::SecretText::new("BBBB".into()),
            plaintext_key_material: true,
        };
        assert_eq!(request_sha256(&a).unwrap(), request_sha256(&b).unwrap());
    }
}
