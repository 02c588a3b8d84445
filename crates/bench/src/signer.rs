//! SigV4 signing as AWS KMS does it, with the `aws-sigv4` crate: independent of keyward's own
//! verifier, so a bug there cannot hide itself by being mirrored here.
//!
//! Service `kms-xks-proxy`, signed headers `content-type;host;x-amz-date`, and the body hash
//! taken from the pre-built body (computed once in `payload`), so per request only the
//! canonical request, the string to sign and the HMAC chain are computed.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http_body_util::Full;

use super::payload::Prepared;

/// The SigV4 service name AWS KMS signs XKS requests with.
pub(crate) const SERVICE: &str = "kms-xks-proxy";

/// Signing failed (never expected with valid settings; reported, not panicked on).
#[derive(Debug, thiserror::Error)]
#[error("signing request: {0}")]
pub struct SignError(String);

/// Signs requests for one target with one credential.
pub struct Signer {
    identity: Identity,
    region: String,
    authority: String,
    host_value: HeaderValue,
}

impl Signer {
    pub fn new(
        access_key_id: &str,
        secret_access_key: &str,
        region: &str,
        authority: &str,
    ) -> Result<Signer, SignError> {
        let creds = Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "keyward-bench",
        );
        let host_value =
            HeaderValue::from_str(authority).map_err(|e| SignError(format!("host: {e}")))?;
        Ok(Signer {
            identity: creds.into(),
            region: region.to_string(),
            authority: authority.to_string(),
            host_value,
        })
    }

    /// A signed `POST` of the prepared body, dated `now`.
    pub fn request(
        &self,
        p: &Prepared,
        now: SystemTime,
    ) -> Result<http::Request<Full<Bytes>>, SignError> {
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(SERVICE)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SignError(e.to_string()))?
            .into();
        let headers = [
            ("host", self.authority.as_str()),
            ("content-type", "application/json"),
        ];
        let signable = SignableRequest::new(
            "POST",
            p.path.as_str(),
            headers.into_iter(),
            SignableBody::Precomputed(p.body_sha256_hex.clone()),
        )
        .map_err(|e| SignError(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| SignError(e.to_string()))?
            .into_parts();
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(p.path.as_str())
            .header(HOST, self.host_value.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(p.body.clone()))
            .map_err(|e| SignError(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut req);
        Ok(req)
    }
}
