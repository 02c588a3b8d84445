//! `POST /kms/xks/v1/keys/{id}/encrypt`: parse (plaintext, AAD, algorithm, optional CDIV
//! algorithm) -> key lookup and state -> grants -> sizes -> usage -> AES-256-GCM with a fresh
//! 12-byte IV and the key's version-1 `ciphertextMetadata` in the AAD, the CDIV computed from the
//! output before a verify-decrypt (spec Appendix C). The answer is written straight into one
//! exactly sized buffer.

use crate::crypto;
use crate::error::XksError;
use crate::grants::Op;
use crate::handlers::{Ctx, Reply};
use crate::model::{self, EncryptRequest};
use keyward_audit::XksRecord;
use keyward_keystore::{KeyStatus, StoreView};

use super::{authorize, check_size, lookup, with_scratch, Scratch};

pub(crate) fn handle(
    ctx: &Ctx,
    store: &StoreView,
    id: &str,
    body: &[u8],
    rec: &mut XksRecord,
) -> Result<Reply, XksError> {
    let r: EncryptRequest = model::parse(body)?;
    let md = super::request_metadata(&r.request_metadata, rec)?;
    md.principal()?;
    let pt_b64 = r
        .plaintext
        .as_deref()
        .ok_or_else(|| XksError::Validation("plaintext is required".into()))?;
    model::require_aes_gcm(&r.encryption_algorithm)?;
    let want_cdiv = match r.ciphertext_data_integrity_value_algorithm.as_deref() {
        None => false,
        Some("SHA_256") => true,
        Some(_) => {
            return Err(XksError::Validation(
                "ciphertextDataIntegrityValueAlgorithm must be SHA_256".into(),
            ))
        }
    };
    let key = lookup(store, id)?;
    if key.status == KeyStatus::Disabled {
        return Err(XksError::InvalidState("the external key is disabled"));
    }
    authorize(key, Op::Encrypt, md, rec)?;
    let aad_b64 = r.additional_authenticated_data.as_deref().unwrap_or("");
    check_size("plaintext", pt_b64, ctx.limits.max_data)?;
    check_size(
        "additionalAuthenticatedData",
        aad_b64,
        ctx.limits.max_aad.min(crypto::MAX_AAD),
    )?;
    if !key.usage.can_encrypt() {
        return Err(XksError::InvalidKeyUsage("the key does not allow encrypt"));
    }
    if want_cdiv && !key.usage.can_decrypt() {
        return Err(XksError::InvalidKeyUsage(
            "a data integrity value needs a verify-decrypt, which the key does not allow",
        ));
    }

    with_scratch(|s| {
        let Scratch {
            data: buf,
            check,
            aad,
            gcm_aad: scratch,
        } = s;
        model::decode_into("plaintext", pt_b64, buf)?;
        model::decode_into("additionalAuthenticatedData", aad_b64, aad)?;
        if buf.len() > ctx.limits.max_data || aad.len() > ctx.limits.max_aad.min(crypto::MAX_AAD) {
            return Err(XksError::UnsupportedOperation(
                "input larger than this proxy supports".into(),
            ));
        }

        let ctm = crypto::ctm_v1(key.version);
        let (iv, tag) = crypto::encrypt(&key.kek, aad, &ctm, buf, scratch)
            .map_err(|_| XksError::Internal("encryption failed"))?;
        let cdiv = if want_cdiv {
            // Computed from the encrypt output BEFORE the verify-decrypt (spec Appendix C).
            let v = crypto::cdiv(aad, &ctm, &iv, buf, &tag);
            check.extend_from_slice(buf);
            crypto::decrypt(&key.kek, aad, &ctm, &iv, &tag, check, scratch)
                .map_err(|_| XksError::Internal("verify-decrypt of the new ciphertext failed"))?;
            Some(v)
        } else {
            None
        };

        let fields = [
            ("ciphertext", buf.len()),
            ("initializationVector", iv.len()),
            ("authenticationTag", tag.len()),
            ("ciphertextMetadata", ctm.len()),
            ("ciphertextDataIntegrityValue", 32),
        ];
        let (with_cdiv, without_cdiv) =
            (&fields[..], fields.split_last().map_or(&[][..], |(_, f)| f));
        let sized = if cdiv.is_some() {
            with_cdiv
        } else {
            without_cdiv
        };
        let mut out = Vec::with_capacity(model::b64_object_len(sized));
        out.push(b'{');
        model::write_b64_field(&mut out, true, "ciphertext", buf);
        model::write_b64_field(&mut out, false, "initializationVector", &iv);
        model::write_b64_field(&mut out, false, "authenticationTag", &tag);
        model::write_b64_field(&mut out, false, "ciphertextMetadata", &ctm);
        if let Some(v) = cdiv {
            model::write_b64_field(&mut out, false, "ciphertextDataIntegrityValue", &v);
        }
        out.push(b'}');
        debug_assert_eq!(out.len(), out.capacity(), "the answer was sized exactly");
        Ok(Reply::ok(out))
    })
}
