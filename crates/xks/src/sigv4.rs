//! Step 2 of a request: our own AWS Signature Version 4 verifier (contract section 8).
//!
//! Why hand-written: the `aws-sigv4` crate only *signs*; verifying with it means re-signing the
//! whole request, which re-derives the signing key (four HMACs) every time and allocates. Here
//! the canonical request is streamed straight into SHA-256 (no string is built), the HMAC state
//! keyed with the signing key is cached per (credential, day, region, service) in a small
//! per-thread cache, and a request costs one SHA-256 of the body, one of the canonical request
//! and one HMAC. The comparison is constant-time (`subtle`). `aws-sigv4`, curl and botocore
//! serve as independent signers in tests.
//!
//! Secrets in memory: the cache is a fixed array in a [`LockedBox`] per thread (locked, not
//! dumpable, never reallocated, so no `Vec` growth leaves a copy behind; wiped when the thread
//! ends), each cached keyed state is wiped when its slot is reused, the per-request copy of it
//! is wiped after use, and the intermediate keys (kDate, kRegion, kService) are `Zeroizing`.
//! (The `hmac` crate's own temporaries inside `finalize` are not reachable for wiping.)
//!
//! Unknown access key ids cost the same work as known ones: the canonical request is hashed
//! first, and an unknown id is checked against a per-process random dummy secret through the
//! same cache and the same constant-time comparison, so an unauthenticated probe cannot tell
//! an existing id from a missing one by the time the answer takes (both get the same error).
//!
//! Checked, in order: the `Authorization` header shape, the access key id format (20-30 of
//! `A-Z2-7` for XKS), that `SignedHeaders` names `host` and `x-amz-date`, the `X-Amz-Date`
//! format and +-5 minutes skew, that the scope date equals the `X-Amz-Date` day, the region and
//! service, the access key's existence, and finally the signature over exactly the signed headers
//! and the raw body bytes.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use hmac::Mac;
use http::HeaderMap;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use keyward_keystore::Credential;
use keyward_secret::HmacSha256;
use keyward_secret::{LockedBox, WipedMac};

/// The skew KMS requests may have against our clock.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a signature was refused. The message is safe to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub &'static str);

/// What the verifier needs to know about the request.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The raw path, exactly as received (XKS paths need no escaping).
    pub path: &'a str,
    /// The canonical query string (empty for XKS).
    pub canonical_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The `:authority` under HTTP/2, used for `host` when no `Host` header came.
    pub authority: Option<&'a str>,
    /// The raw body bytes.
    pub body: &'a [u8],
}

/// What the key store accepts.
pub struct Policy<'a> {
    /// The region expected in the scope.
    pub region: &'a str,
    /// The service names accepted in the scope.
    pub services: &'a [String],
    /// Seconds since the Unix epoch, now.
    pub now_unix: i64,
    /// Enforce the XKS access key id format (20-30 characters of `A-Z2-7`). Off only for AWS's
    /// generic test-suite vectors, whose `AKIDEXAMPLE` is not an XKS id.
    pub xks_key_id_format: bool,
}

/// The parts of an `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedAuth<'a> {
    pub access_key_id: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub signed_headers: &'a str,
    pub signature: [u8; 32],
}

/// Parse `AWS4-HMAC-SHA256 Credential=AK/yyyymmdd/region/service/aws4_request,
/// SignedHeaders=a;b, Signature=<64 hex>`.
///
/// Byte-level splitting (every separator is ASCII): `str::split` with a `char` pattern sets up
/// a searcher per call, which showed in the request-path profile.
pub fn parse_authorization(h: &str) -> Result<ParsedAuth<'_>, AuthError> {
    const BAD: AuthError = AuthError("malformed Authorization header");
    let rest = h.strip_prefix("AWS4-HMAC-SHA256 ").ok_or(BAD)?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in split_byte(rest, b',') {
        let part = trim_spaces(part);
        let eq = memchr::memchr(b'=', part.as_bytes()).ok_or(BAD)?;
        let (k, v) = (&part[..eq], &part[eq + 1..]);
        let slot = match k {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => return Err(BAD),
        };
        if slot.replace(v).is_some() {
            return Err(BAD);
        }
    }
    let (cred, signed_headers, sig) = (cred.ok_or(BAD)?, signed.ok_or(BAD)?, sig.ok_or(BAD)?);
    let mut it = split_byte(cred, b'/');
    let (Some(access_key_id), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(BAD);
    };
    let signature = decode_lower_hex_32(sig).ok_or(BAD)?;
    if access_key_id.is_empty() || region.is_empty() || service.is_empty() {
        return Err(BAD);
    }
    Ok(ParsedAuth {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Like `s.split(sep as char)` for an ASCII separator: every piece, empty ones included.
fn split_byte(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(sep, r.as_bytes()) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `s.trim_matches(' ')`, bytewise.
fn trim_spaces(s: &str) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|&c| c != b' ').unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b' ').map_or(start, |e| e + 1);
    &s[start..end]
}

/// Exactly 64 lowercase hex digits to 32 bytes (the `hex` crate's general decoder was 1% of
/// a request in the profile; this is the one shape SigV4 allows). A table lookup per digit,
/// no early exit: invalid digits set a flag checked once at the end.
fn decode_lower_hex_32(s: &str) -> Option<[u8; 32]> {
    const BAD: u8 = 0x80;
    // Evaluated at compile time: an index out of range here is a build error, not a panic.
    #[allow(clippy::indexing_slicing)]
    const NIB: [u8; 256] = {
        let mut t = [BAD; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let b: &[u8; 64] = s.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    let nib = |c: u8| NIB.get(usize::from(c)).copied().unwrap_or(BAD);
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        // Always two bytes (chunks_exact): the `else` never runs, so no data-dependent exit.
        let &[h, l] = pair else { return None };
        let (hi, lo) = (nib(h), nib(l));
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & BAD == 0).then_some(out)
}

/// An XKS access key id: 20-30 characters of `A-Z2-7`.
pub fn access_key_id_ok(id: &str) -> bool {
    (20..=30).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7'))
}

/// Verify the request's signature. `lookup` maps an access key id to its credential. Returns
/// the credential that signed it.
pub fn verify<'c>(
    req: &SignedRequest<'_>,
    lookup: impl Fn(&str) -> Option<&'c Arc<Credential>>,
    policy: &Policy<'_>,
) -> Result<&'c Arc<Credential>, AuthError> {
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError("missing Authorization header"))?
        .to_str()
        .map_err(|_| AuthError("malformed Authorization header"))?;
    let auth = parse_authorization(auth)?;
    if policy.xks_key_id_format && !access_key_id_ok(auth.access_key_id) {
        return Err(AuthError("access key id is not 20-30 characters of A-Z2-7"));
    }
    let (mut has_host, mut has_date) = (false, false);
    for name in split_byte(auth.signed_headers, b';') {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(AuthError("malformed SignedHeaders"));
        }
        has_host |= name == "host";
        has_date |= name == "x-amz-date";
    }
    if !(has_host && has_date) {
        return Err(AuthError("SignedHeaders must include host and x-amz-date"));
    }
    let amz_date = single_header(req.headers, &X_AMZ_DATE)
        .ok_or(AuthError("missing or repeated X-Amz-Date header"))?;
    let t = parse_amz_date(amz_date).ok_or(AuthError("malformed X-Amz-Date header"))?;
    if (policy.now_unix - t).abs() > MAX_SKEW_SECS {
        return Err(AuthError(
            "request time is more than 5 minutes from the server time",
        ));
    }
    if auth.date != &amz_date[..8] {
        return Err(AuthError("credential scope date differs from X-Amz-Date"));
    }
    if auth.region != policy.region {
        return Err(AuthError(
            "credential scope region is not this key store's region",
        ));
    }
    if !policy.services.iter().any(|s| s == auth.service) {
        return Err(AuthError("credential scope service is not kms-xks-proxy"));
    }
    // Same message, and the same work, for an unknown key and a wrong signature: do not
    // confirm which ids exist. The canonical request is hashed before the lookup, and an
    // unknown id is verified against the dummy secret.
    const MISMATCH: AuthError = AuthError("signature or credential not accepted");
    let creq_hash = canonical_request_hash(req, auth.signed_headers)?;
    let mut hex_hash = [0u8; 64];
    hex::encode_to_slice(creq_hash, &mut hex_hash).map_err(|_| MISMATCH)?;
    let found = lookup(auth.access_key_id);
    let signer = found.unwrap_or_else(|| dummy_credential());
    let expected = with_signing_key(signer, auth.date, auth.region, auth.service, |keyed| {
        signature(keyed, amz_date, &auth, &hex_hash)
    });
    let same = expected.ct_eq(&auth.signature);
    match found {
        Some(cred) if bool::from(same) => Ok(cred),
        _ => Err(MISMATCH),
    }
}

/// Find `access_key_id` among `creds`, comparing every id in constant time (the scan does not
/// stop at the match, nor at the first differing byte).
pub fn find_credential<'c>(
    creds: &'c [Arc<Credential>],
    access_key_id: &str,
) -> Option<&'c Arc<Credential>> {
    let mut found = None;
    for c in creds {
        if bool::from(c.access_key_id.as_bytes().ct_eq(access_key_id.as_bytes())) {
            found = Some(c);
        }
    }
    found
}

/// The credential unknown access key ids are verified against: a random secret drawn once per
/// process (never accepted: [`verify`] refuses whenever the lookup found nothing).
fn dummy_credential() -> &'static Arc<Credential> {
    static DUMMY: std::sync::OnceLock<Arc<Credential>> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut raw = Zeroizing::new([0u8; 30]);
        // An RNG failure leaves zeros: still never accepted, still the same work.
        let _ = keyward_secret::getrandom_fill(&mut raw[..]);
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD.encode(&raw[..]);
        Arc::new(Credential {
            access_key_id: String::new(),
            secret_access_key: secret.into(),
        })
    })
}

#[cfg(test)]
thread_local! {
    /// Signatures computed on this thread (tests: both branches of [`verify`] do one).
    static SIGNATURES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The string-to-sign's HMAC under the cached keyed state `keyed`, on a wiped copy of it.
fn signature(
    keyed: &HmacSha256,
    amz_date: &str,
    auth: &ParsedAuth<'_>,
    hex_hash: &[u8; 64],
) -> [u8; 32] {
    #[cfg(test)]
    SIGNATURES.with(|c| c.set(c.get() + 1));
    let mut mac = WipedMac(keyed.clone());
    let m = &mut mac.0;
    m.update(b"AWS4-HMAC-SHA256\n");
    m.update(amz_date.as_bytes());
    m.update(b"\n");
    m.update(auth.date.as_bytes());
    m.update(b"/");
    m.update(auth.region.as_bytes());
    m.update(b"/");
    m.update(auth.service.as_bytes());
    m.update(b"/aws4_request\n");
    m.update(hex_hash);
    m.finalize_reset().into_bytes().into()
}

/// SHA-256 of the canonical request, streamed: method, path, query, the signed headers
/// (lowercase name, values trimmed with inner space runs collapsed, repeated headers joined by
/// commas), the signed-header list and the hex SHA-256 of the raw body.
fn canonical_request_hash(req: &SignedRequest<'_>, signed: &str) -> Result<[u8; 32], AuthError> {
    let mut h = Sha256::new();
    h.update(req.method.as_bytes());
    h.update(b"\n");
    h.update(req.path.as_bytes());
    h.update(b"\n");
    h.update(req.canonical_query.as_bytes());
    h.update(b"\n");
    for name in split_byte(signed, b';') {
        h.update(name.as_bytes());
        h.update(b":");
        let mut any = false;
        // Names KMS always signs are looked up as constants (no parsing of the name).
        let values = match name {
            "host" => req.headers.get_all(http::header::HOST),
            "x-amz-date" => req.headers.get_all(&X_AMZ_DATE),
            "content-type" => req.headers.get_all(http::header::CONTENT_TYPE),
            n => req.headers.get_all(n),
        };
        for v in values {
            if any {
                h.update(b",");
            }
            any = true;
            update_trimmed(&mut h, v.as_bytes());
        }
        if !any {
            match (name, req.authority) {
                ("host", Some(a)) => update_trimmed(&mut h, a.as_bytes()),
                _ => return Err(AuthError("a signed header is missing from the request")),
            }
        }
        h.update(b"\n");
    }
    h.update(b"\n");
    h.update(signed.as_bytes());
    h.update(b"\n");
    let mut body_hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(req.body), &mut body_hex)
        .map_err(|_| AuthError("internal"))?;
    h.update(body_hex);
    Ok(h.finalize().into())
}

/// Feed a header value with leading/trailing whitespace removed and inner runs of spaces
/// collapsed to one space.
fn update_trimmed(h: &mut Sha256, v: &[u8]) {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    let v = v.get(start..end).unwrap_or_default();
    // Each run of spaces/tabs becomes one space; the pieces between them are fed as they are.
    let mut pieces = v.split(is_ws).filter(|p| !p.is_empty());
    if let Some(first) = pieces.next() {
        h.update(first);
        for p in pieces {
            h.update(b" ");
            h.update(p);
        }
    }
}

static X_AMZ_DATE: http::HeaderName = http::HeaderName::from_static("x-amz-date");

fn single_header<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<&'h str> {
    let mut it = headers.get_all(name).iter();
    let v = it.next()?;
    if it.next().is_some() {
        return None;
    }
    v.to_str().ok()
}

/// `yyyymmddTHHMMSSZ` to Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let b: &[u8; 16] = b.try_into().ok()?;
    if b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// One cached keyed state. The credential is held weakly: a removed credential's entry can no
/// longer match (its allocation stays until the slot is reused, so the pointer cannot be
/// reused either).
struct CachedKey {
    cred: Weak<Credential>,
    date: String,
    region: String,
    service: String,
    keyed: WipedMac,
}

const CACHE_SLOTS: usize = 32;

/// A thread's cache: a fixed array (it never grows, so never moves), in a [`LockedBox`].
struct KeyCache {
    slots: [Option<CachedKey>; CACHE_SLOTS],
    /// The next slot to reuse when all are live (round robin).
    next: usize,
}

thread_local! {
    // Per worker thread, so the hot path takes no lock. A few entries per thread per day.
    static SIGNING_KEYS: RefCell<Option<LockedBox<KeyCache>>> = const { RefCell::new(None) };
}

/// An HMAC state keyed with kSigning for these scope values.
fn keyed_state(cred: &Credential, date: &str, region: &str, service: &str) -> WipedMac {
    let key = derive_signing_key(
        cred.secret_access_key.expose_secret(),
        date,
        region,
        service,
    );
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; the fallback keeps the
    // type total (an empty key, whose signatures never match a real one).
    WipedMac(
        <HmacSha256 as Mac>::new_from_slice(&key[..])
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default())),
    )
}

fn with_signing_key<R>(
    cred: &Arc<Credential>,
    date: &str,
    region: &str,
    service: &str,
    f: impl FnOnce(&HmacSha256) -> R,
) -> R {
    SIGNING_KEYS.with(|cell| {
        let Ok(mut guard) = cell.try_borrow_mut() else {
            // Not reachable (no re-entry); never panic: work uncached.
            return f(&keyed_state(cred, date, region, service).0);
        };
        if guard.is_none() {
            let fresh = KeyCache {
                slots: std::array::from_fn(|_| None),
                next: 0,
            };
            match LockedBox::new(fresh) {
                Ok(b) => *guard = Some(b),
                Err(_) => return f(&keyed_state(cred, date, region, service).0),
            }
        }
        let Some(cache) = guard.as_mut() else {
            return f(&keyed_state(cred, date, region, service).0);
        };
        let hit = cache.slots.iter().position(|e| {
            e.as_ref().is_some_and(|e| {
                std::ptr::eq(e.cred.as_ptr(), Arc::as_ptr(cred))
                    && e.cred.strong_count() > 0
                    && e.date == date
                    && e.region == region
                    && e.service == service
            })
        });
        let idx = match hit {
            Some(i) => i,
            None => {
                // An empty slot, or one whose credential is gone, else the next in turn.
                let i = cache
                    .slots
                    .iter()
                    .position(|e| e.as_ref().is_none_or(|e| e.cred.strong_count() == 0))
                    .unwrap_or(cache.next % CACHE_SLOTS);
                cache.next = (i + 1) % CACHE_SLOTS;
                // The slot's previous state is wiped by its drop here.
                if let Some(slot) = cache.slots.get_mut(i) {
                    *slot = Some(CachedKey {
                        cred: Arc::downgrade(cred),
                        date: date.to_owned(),
                        region: region.to_owned(),
                        service: service.to_owned(),
                        keyed: keyed_state(cred, date, region, service),
                    });
                }
                i
            }
        };
        match cache.slots.get(idx) {
            Some(Some(e)) => f(&e.keyed.0),
            _ => f(&keyed_state(cred, date, region, service).0),
        }
    })
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
pub fn derive_signing_key(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k.extend_from_slice(b"AWS4");
    k.extend_from_slice(secret.as_bytes());
    let mut cur = Zeroizing::new([0u8; 32]);
    cur.copy_from_slice(&hmac(&k, date.as_bytes())[..]);
    for part in [region, service, "aws4_request"] {
        let next = hmac(&cur[..], part.as_bytes());
        cur.copy_from_slice(&next[..]);
    }
    cur
}

fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut out = Zeroizing::new([0u8; 32]);
    if let Ok(m) = <HmacSha256 as Mac>::new_from_slice(key) {
        let mut mac = WipedMac(m);
        mac.0.update(data);
        out.copy_from_slice(&mac.0.finalize_reset().into_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const T: i64 = 1_440_938_160; // 20150830T123600Z

    fn cred(ak: &str, sk: &str) -> Arc<Credential> {
        Arc::new(Credential {
            access_key_id: ak.into(),
            secret_access_key: sk.to_owned().into(),
        })
    }

    /// Verify one AWS test-suite request; returns the outcome.
    fn check(
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        signed: &str,
        body: &[u8],
        sig: &str,
    ) -> Result<(), AuthError> {
        let mut h = HeaderMap::new();
        h.append("host", HeaderValue::from_static("example.amazonaws.com"));
        h.append("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        for (k, v) in extra {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={sig}"
        );
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        let c = cred("AKIDEXAMPLE", SECRET);
        let services = vec!["service".to_string()];
        let req = SignedRequest {
            method,
            path,
            canonical_query: "",
            headers: &h,
            authority: None,
            body,
        };
        let pol = Policy {
            region: "us-east-1",
            services: &services,
            now_unix: T + 10,
            xks_key_id_format: false,
        };
        verify(&req, |ak| (ak == "AKIDEXAMPLE").then_some(&c), &pol).map(|_| ())
    }

    /// Flip one hex digit.
    fn flip(sig: &str) -> String {
        let mut s = sig.to_string();
        let c = if s.ends_with('0') { "1" } else { "0" };
        s.replace_range(63..64, c);
        s
    }

    #[test]
    fn aws_sigv4_test_suite_vectors() {
        type Vector<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            &'a str,
            &'a [u8],
            &'a str,
        );
        let vectors: &[Vector] = &[
            (
                "get-vanilla",
                "GET",
                &[],
                "host;x-amz-date",
                b"",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "post-vanilla",
                "POST",
                &[],
                "host;x-amz-date",
                b"",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "post-header-key-sort",
                "POST",
                &[("My-Header1", "value1")],
                "host;my-header1;x-amz-date",
                b"",
                "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
            ),
            (
                "post-header-value-case",
                "POST",
                &[("My-Header1", "VALUE1")],
                "host;my-header1;x-amz-date",
                b"",
                "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
            ),
            (
                "get-header-value-trim",
                "GET",
                &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
                "host;my-header1;my-header2;x-amz-date",
                b"",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            ),
            (
                "post-x-www-form-urlencoded",
                "POST",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                "content-type;host;x-amz-date",
                b"Param1=value1",
                "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            ),
        ];
        for (name, method, extra, signed, body, sig) in vectors {
            assert_eq!(
                check(method, "/", extra, signed, body, sig),
                Ok(()),
                "{name}"
            );
            assert!(
                check(method, "/", extra, signed, body, &flip(sig)).is_err(),
                "{name} flipped"
            );
        }
        // The body is part of the signature.
        assert!(check(
            "POST",
            "/",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "content-type;host;x-amz-date",
            b"Param1=value2",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        )
        .is_err());
    }

    #[test]
    fn derives_the_published_signing_key() {
        let k = derive_signing_key(SECRET, "20150830", "us-east-1", "service");
        assert_eq!(
            hex::encode(*k),
            "938127b5336810ddb6a5d6af445fcac9e371f9ed418ed386b022aed82901be75"
        );
    }

    #[test]
    fn scope_and_time_rules() {
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        // Missing x-amz-date in SignedHeaders.
        assert!(check("GET", "/", &[], "host", b"", sig).is_err());
        let c = cred("AKIDEXAMPLE", SECRET);
        let mut h = HeaderMap::new();
        h.append("host", HeaderValue::from_static("example.amazonaws.com"));
        h.append("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h.insert("authorization", HeaderValue::from_str(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}")).unwrap());
        let req = SignedRequest {
            method: "GET",
            path: "/",
            canonical_query: "",
            headers: &h,
            authority: None,
            body: b"",
        };
        let services = vec!["service".to_string()];
        let other = vec!["kms-xks-proxy".to_string()];
        let ok = |now, region, svcs: &Vec<String>, fmt| {
            let pol = Policy {
                region,
                services: svcs,
                now_unix: now,
                xks_key_id_format: fmt,
            };
            verify(&req, |_| Some(&c), &pol).is_ok()
        };
        assert!(ok(T + 300, "us-east-1", &services, false));
        assert!(ok(T - 300, "us-east-1", &services, false));
        assert!(!ok(T + 301, "us-east-1", &services, false));
        assert!(!ok(T - 301, "us-east-1", &services, false));
        assert!(!ok(T, "eu-west-1", &services, false));
        assert!(!ok(T, "us-east-1", &other, false));
        // AKIDEXAMPLE is not an XKS access key id.
        assert!(!ok(T, "us-east-1", &services, true));
    }

    /// An unknown access key id gets the same answer as a wrong signature, after the same
    /// work: one signature computed (against the dummy secret) in both cases.
    #[test]
    fn unknown_access_key_ids_cost_a_signature_and_get_the_same_answer() {
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let c = cred("AKIDEXAMPLE", SECRET);
        let headers = |sig: &str| {
            let mut h = HeaderMap::new();
            h.append("host", HeaderValue::from_static("example.amazonaws.com"));
            h.append("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
            h.insert("authorization", HeaderValue::from_str(&format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}")).unwrap());
            h
        };
        let services = vec!["service".to_string()];
        let pol = Policy {
            region: "us-east-1",
            services: &services,
            now_unix: T,
            xks_key_id_format: false,
        };
        let count = || SIGNATURES.with(|c| c.get());
        let run = |h: &HeaderMap, known: bool| {
            let req = SignedRequest {
                method: "GET",
                path: "/",
                canonical_query: "",
                headers: h,
                authority: None,
                body: b"",
            };
            let before = count();
            let r = verify(&req, |_| known.then_some(&c), &pol).map(|_| ());
            (r, count() - before)
        };
        let good = headers(sig);
        let bad = headers(&flip(sig));
        assert_eq!(run(&good, true), (Ok(()), 1));
        let mismatch = Err(AuthError("signature or credential not accepted"));
        assert_eq!(run(&bad, true), (mismatch, 1), "known id, wrong signature");
        assert_eq!(run(&good, false), (mismatch, 1), "unknown id");
        assert_eq!(
            run(&bad, false),
            (mismatch, 1),
            "unknown id, other signature"
        );
        // The dummy secret never verifies, even for a signature made with an empty secret.
        assert_ne!(
            dummy_credential().secret_access_key.expose_secret(),
            "",
            "the dummy secret is random"
        );

        // The lookup compares every id, and finds exactly the matching one.
        let creds = vec![
            cred("AKIAAAAAAAAAAAAAAAAA", "a"),
            cred("AKIABBBBBBBBBBBBBBBB", "b"),
        ];
        assert!(std::ptr::eq(
            find_credential(&creds, "AKIABBBBBBBBBBBBBBBB").unwrap(),
            &creds[1]
        ));
        assert!(find_credential(&creds, "AKIABBBBBBBBBBBBBBBC").is_none());
        assert!(find_credential(&creds, "AKIABBBB").is_none());
    }

    /// The cache lives in one locked mapping per thread that never moves, and serves the
    /// same keyed state as a fresh derivation.
    #[test]
    fn the_signing_cache_is_locked_in_place_and_agrees_with_a_fresh_key() {
        let c = cred("AKIDEXAMPLE", SECRET);
        let tag = |keyed: &HmacSha256| {
            let mut m = keyed.clone();
            m.update(b"x");
            m.finalize().into_bytes()
        };
        let first = with_signing_key(&c, "20150830", "us-east-1", "service", tag);
        let at = SIGNING_KEYS.with(|k| k.borrow().as_ref().map(|b| &**b as *const KeyCache));
        // Fill every slot and more (eviction), then ask again.
        for i in 0..(CACHE_SLOTS + 5) {
            let d = format!("2015{:02}{:02}", 1 + i % 12, 1 + i % 28);
            with_signing_key(&c, &d, "us-east-1", "service", |_| ());
        }
        let again = with_signing_key(&c, "20150830", "us-east-1", "service", tag);
        let after = SIGNING_KEYS.with(|k| k.borrow().as_ref().map(|b| &**b as *const KeyCache));
        assert_eq!(first, again);
        assert_eq!(at, after, "the cache did not move");
        let k = derive_signing_key(SECRET, "20150830", "us-east-1", "service");
        let fresh = <HmacSha256 as Mac>::new_from_slice(&k[..]).unwrap();
        assert_eq!(first, tag(&fresh));
        // Locked where the process may lock memory (RLIMIT_MEMLOCK allows a few pages).
        let locked = SIGNING_KEYS.with(|k| k.borrow().as_ref().map(|b| b.is_locked()));
        assert!(locked.is_some());
    }

    #[test]
    fn access_key_id_format() {
        assert!(access_key_id_ok("AKIAIOSFODNN7EXAMPLE"));
        assert!(!access_key_id_ok("AKIAIOSFODNN7EXAMPL1")); // '1' is not base32
        assert!(!access_key_id_ok("AKIAIOSFODNN7EXAMPL")); // 19
        assert!(access_key_id_ok(&"A".repeat(30)));
        assert!(!access_key_id_ok(&"A".repeat(31)));
        assert!(!access_key_id_ok("akiaiosfodnn7example"));
    }

    #[test]
    fn parses_dates() {
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(T));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600"), None);
        assert_eq!(parse_amz_date("2015083OT123600Z"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn garbage_headers_do_not_panic() {
        for h in ["", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 Credential=", "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=zz",
                  "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request/x, SignedHeaders=host;x-amz-date, Signature=00",
                  "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=00"] {
            assert!(parse_authorization(h).is_err(), "{h}");
        }
    }

    /// The `str::split` parser this module used before the byte-level one, kept as the
    /// reference: both must agree on every input.
    fn reference_parse(h: &str) -> Result<ParsedAuth<'_>, AuthError> {
        const BAD: AuthError = AuthError("malformed Authorization header");
        let rest = h.strip_prefix("AWS4-HMAC-SHA256 ").ok_or(BAD)?;
        let pairs = rest
            .split(',')
            .map(|p| p.trim_matches(' ').split_once('=').ok_or(BAD))
            .collect::<Result<Vec<_>, _>>()?;
        const NAMES: [&str; 3] = ["Credential", "SignedHeaders", "Signature"];
        if pairs.iter().any(|(k, _)| !NAMES.contains(k)) {
            return Err(BAD);
        }
        let once = |name: &str| {
            let found: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| *k == name)
                .map(|p| p.1)
                .collect();
            (found.len() == 1).then(|| found[0]).ok_or(BAD)
        };
        let (cred, signed_headers, sig) = (once(NAMES[0])?, once(NAMES[1])?, once(NAMES[2])?);
        let scope: Vec<&str> = cred.split('/').collect();
        let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
            return Err(BAD);
        };
        if sig.len() != 64 || sig.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(BAD);
        }
        let signature: [u8; 32] = hex::decode(sig)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(BAD)?;
        if [access_key_id, region, service].contains(&"") {
            return Err(BAD);
        }
        // (Fields in another order than the parser's, so the two read as independent.)
        Ok(ParsedAuth {
            signature,
            signed_headers,
            service,
            region,
            date,
            access_key_id,
        })
    }

    /// Valid headers, then each mutated by inserting, deleting or replacing characters drawn
    /// from the separators and their neighbours (and a few non-ASCII ones).
    #[test]
    fn byte_level_parser_agrees_with_the_reference() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let good = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20150830/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let alphabet: Vec<char> = " ,=/;aAf0Z9-_\u{e9}\u{1F600}".chars().collect();
        let mut agreed_ok = 0;
        for round in 0..20_000 {
            let mut h: Vec<char> = good.chars().collect();
            for _ in 0..rng.gen_range(0..4) * usize::from(round > 0) {
                let at = rng.gen_range(0..=h.len());
                let c = alphabet[rng.gen_range(0..alphabet.len())];
                match rng.gen_range(0..3) {
                    0 => h.insert(at, c),
                    1 if at < h.len() => {
                        h.remove(at);
                    }
                    _ if at < h.len() => h[at] = c,
                    _ => h.push(c),
                }
            }
            let h: String = h.into_iter().collect();
            let (ours, theirs) = (parse_authorization(&h), reference_parse(&h));
            assert_eq!(ours, theirs, "{h:?}");
            agreed_ok += usize::from(ours.is_ok());
        }
        // Both accepting and refusing inputs were exercised.
        assert!(agreed_ok > 1000 && agreed_ok < 19_000, "{agreed_ok}");
    }
}
