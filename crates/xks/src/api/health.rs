//! `POST /kms/xks/v1/health`: the deep health check. Needs `requestMetadata` like every API but
//! is never subject to grants (the contract's MUST); the answer comes from [`crate::health`].

use crate::error::XksError;
use crate::handlers::{Ctx, Reply};
use crate::model::{self, MetadataRequest};
use keyward_audit::XksRecord;

pub(crate) fn handle(ctx: &Ctx, body: &[u8], rec: &mut XksRecord) -> Result<Reply, XksError> {
    let r: MetadataRequest = model::parse(body)?;
    super::request_metadata(&r.request_metadata, rec)?;
    // Never subject to grants (spec: MUST).
    Ok(Reply::ok(ctx.health.answer_for(ctx.audit.failing())))
}
