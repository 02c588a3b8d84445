//! `POST /kms/xks/v1/keys/{id}/metadata` (GetKeyMetadata): parse, look the key up, check the
//! grants, answer its spec, usage and status. A disabled key still answers (status DISABLED).

use crate::error::XksError;
use crate::grants::Op;
use crate::handlers::Reply;
use crate::model::{self, MetadataRequest};
use keyward_audit::XksRecord;
use keyward_keystore::{KeyStatus, KeyUsage, StoreView};

use super::{authorize, lookup};

pub(crate) fn handle(
    store: &StoreView,
    id: &str,
    body: &[u8],
    rec: &mut XksRecord,
) -> Result<Reply, XksError> {
    let r: MetadataRequest = model::parse(body)?;
    let md = super::request_metadata(&r.request_metadata, rec)?;
    md.principal()?;
    let key = lookup(store, id)?;
    authorize(key, Op::Metadata, md, rec)?;
    let resp = model::MetadataResponse {
        key_spec: "AES_256",
        key_usage: match key.usage {
            KeyUsage::EncryptDecrypt => &["ENCRYPT", "DECRYPT"],
            KeyUsage::EncryptOnly => &["ENCRYPT"],
            KeyUsage::DecryptOnly => &["DECRYPT"],
            KeyUsage::None => &[],
        },
        key_status: match key.status {
            KeyStatus::Enabled => "ENABLED",
            KeyStatus::Disabled => "DISABLED",
        },
    };
    let body =
        serde_json::to_vec(&resp).map_err(|_| XksError::Internal("cannot serialize the answer"))?;
    Ok(Reply::ok(body))
}
