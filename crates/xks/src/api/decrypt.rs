//! `POST /kms/xks/v1/keys/{id}/decrypt`: parse (ciphertext, IV, tag, AAD, metadata) -> key
//! lookup and state -> grants -> sizes -> small fields into stack buffers -> usage ->
//! AES-256-GCM open. Every authentication failure is one `InvalidCiphertextException`: which
//! part was wrong is never told.

use std::borrow::Cow;

use crate::crypto::{self, CryptoError};
use crate::error::XksError;
use crate::grants::Op;
use crate::handlers::{Ctx, Reply};
use crate::model::{self, DecryptRequest};
use keyward_audit::XksRecord;
use keyward_keystore::{KeyStatus, StoreView};

use super::{authorize, check_size, check_small, lookup, with_scratch, Scratch};

pub(crate) fn handle(
    ctx: &Ctx,
    store: &StoreView,
    id: &str,
    body: &[u8],
    rec: &mut XksRecord,
) -> Result<Reply, XksError> {
    let r: DecryptRequest = model::parse(body)?;
    let md = super::request_metadata(&r.request_metadata, rec)?;
    md.principal()?;
    let required = |v: &Option<Cow<'_, str>>, name: &'static str| -> Result<(), XksError> {
        v.as_ref()
            .map(|_| ())
            .ok_or_else(|| XksError::Validation(Cow::Owned(format!("{name} is required"))))
    };
    required(&r.ciphertext, "ciphertext")?;
    required(&r.initialization_vector, "initializationVector")?;
    required(&r.authentication_tag, "authenticationTag")?;
    model::require_aes_gcm(&r.encryption_algorithm)?;
    let ct_b64 = r.ciphertext.as_deref().unwrap_or_default();
    let iv_b64 = r.initialization_vector.as_deref().unwrap_or_default();
    let tag_b64 = r.authentication_tag.as_deref().unwrap_or_default();
    let aad_b64 = r.additional_authenticated_data.as_deref().unwrap_or("");
    let ctm_b64 = r.ciphertext_metadata.as_deref();

    let key = lookup(store, id)?;
    if key.status == KeyStatus::Disabled {
        return Err(XksError::InvalidState("the external key is disabled"));
    }
    authorize(key, Op::Decrypt, md, rec)?;
    check_size("ciphertext", ct_b64, ctx.limits.max_data)?;
    check_size(
        "additionalAuthenticatedData",
        aad_b64,
        ctx.limits.max_aad.min(crypto::MAX_AAD),
    )?;

    // Small fields: decode into stack buffers; wrong lengths are invalid input.
    let (iv_buf, iv_len) = model::decode_small("initializationVector", check_small(iv_b64, 16)?)?;
    let bad_len = |what: &'static str| XksError::Validation(what.into());
    let iv = iv_buf
        .get(..iv_len)
        .ok_or_else(|| bad_len("initializationVector must be 12 or 16 bytes"))?;
    let (tag_buf, tag_len) = model::decode_small("authenticationTag", check_small(tag_b64, 16)?)?;
    let (ctm_buf, ctm_len) = match ctm_b64 {
        Some(c) => model::decode_small("ciphertextMetadata", check_small(c, 20)?)?,
        None => ([0; model::SMALL], 0),
    };
    // 21 bytes encode to the same 28 Base64 characters as 20: check the decoded length.
    if ctm_len > 20 {
        return Err(XksError::Validation(
            "ciphertextMetadata must be at most 20 bytes".into(),
        ));
    }
    let ctm = ctm_buf
        .get(..ctm_len)
        .ok_or_else(|| bad_len("ciphertextMetadata must be at most 20 bytes"))?;
    let tag: [u8; 16] = tag_buf
        .get(..tag_len)
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| bad_len("authenticationTag must be 16 bytes"))?;
    if iv.len() != 12 && iv.len() != 16 {
        return Err(XksError::Validation(
            "initializationVector must be 12 or 16 bytes".into(),
        ));
    }
    if !key.usage.can_decrypt() {
        return Err(XksError::InvalidKeyUsage("the key does not allow decrypt"));
    }
    with_scratch(|s| {
        let Scratch {
            data: buf,
            aad,
            gcm_aad: scratch,
            ..
        } = s;
        model::decode_into("ciphertext", ct_b64, buf)?;
        model::decode_into("additionalAuthenticatedData", aad_b64, aad)?;
        if buf.len() > ctx.limits.max_data || aad.len() > ctx.limits.max_aad.min(crypto::MAX_AAD) {
            return Err(XksError::UnsupportedOperation(
                "input larger than this proxy supports".into(),
            ));
        }

        // 8. Crypto: we only ever wrote 12-byte IVs and version-1 metadata naming the key
        // version that encrypted; every version a key has had still decrypts (rotation).
        const BAD: XksError =
            XksError::InvalidCiphertext("ciphertext, IV, tag, AAD or metadata do not authenticate");
        let iv: [u8; 12] = iv.try_into().map_err(|_| BAD)?;
        let version = crypto::parse_ctm(ctm).map_err(|_| BAD)?;
        let kek = key.kek_of(version).ok_or(BAD)?;
        crypto::decrypt(kek, aad, ctm, &iv, &tag, buf, scratch).map_err(|e| match e {
            CryptoError::AadTooLong => {
                XksError::UnsupportedOperation("AAD larger than 65535 bytes".into())
            }
            _ => BAD,
        })?;
        let mut out = Vec::with_capacity(model::b64_object_len(&[("plaintext", buf.len())]));
        out.push(b'{');
        model::write_b64_field(&mut out, true, "plaintext", buf);
        out.push(b'}');
        debug_assert_eq!(out.len(), out.capacity(), "the answer was sized exactly");
        Ok(Reply::ok(out))
    })
}
