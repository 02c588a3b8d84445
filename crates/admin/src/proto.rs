//! The admin API's wire format: one JSON request per HTTPS `POST /admin/v1`, tagged by `op`,
//! answered by `{"ok": true, "result": ...}` or `{"ok": false, "error": "one-line reason"}`.
//!
//! Secret fields (an imported key, a credential secret) travel only inside the mutual-TLS
//! channel, are held in [`SecretText`] (zeroized on drop, redacted in `Debug`) and never reach
//! the audit log.

use serde::{Deserialize, Serialize};

use keyward_keystore::{Grant, GrantOps, KeyStatus, KeyUsage};

/// The admin API path.
pub const PATH: &str = "/admin/v1";

/// The HTTP header naming the approval a request uses (`--approval ID`): kept out of the
/// JSON request so the request's hash (what the approval is bound to) is the request itself.
pub const APPROVAL_HEADER: &str = "x-keyward-approval";

/// Largest request body the admin server reads on [`PATH`].
pub const MAX_BODY: usize = 64 * 1024;

/// The admin API path for the requests that carry a whole file ([`Request::carries_file`]:
/// `backup rewrap`): the same JSON request and answer as [`PATH`], the same TLS, role and
/// approval checks, but a body cap of [`MAX_FILE_BODY`] and a longer body deadline. Every
/// other operation is refused there, so the larger cap buys nothing for them.
pub const FILE_PATH: &str = "/admin/v1/file";

/// Largest request body the admin server reads on [`FILE_PATH`]: a backup of about 100,000
/// keys (a backup holds about 0.6 KB per key, a little more once JSON-escaped).
pub const MAX_FILE_BODY: usize = 96 * 1024 * 1024;

/// A string that is a secret: zeroized on drop, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretText(pub zeroize::Zeroizing<String>);

impl SecretText {
    pub fn new(s: String) -> Self {
        SecretText(zeroize::Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretText::new)
    }
}

/// One admin operation. `store` may be omitted when exactly one key store exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Key stores with their prefixes and regions (`{"op":"stores"}` is the same).
    #[serde(alias = "stores")]
    StoresList,
    /// Create a key store (no keys, no credentials); it serves XKS requests at once.
    StoresCreate {
        name: String,
        #[serde(default)]
        uri_prefix: String,
        region: String,
        /// SigV4 service names accepted besides `kms-xks-proxy`.
        #[serde(default)]
        services: Vec<String>,
    },
    /// Remove a key store with its credentials; with keys only when `force` (they are
    /// destroyed).
    StoresRemove {
        name: String,
        #[serde(default)]
        force: bool,
    },
    /// The members of this appliance's fleet (heartbeats in the shared key store): id,
    /// label, version, last seen, KEKs, store record, judged state.
    Fleet,
    /// The appliance-managed TLS identity: SPKI hash, names, expiry, whether a chain is
    /// installed.
    TlsShow,
    /// A PKCS#10 request for `dns_names`, signed by the appliance's TLS key.
    TlsCsr {
        dns_names: Vec<String>,
        /// Generate a new in-VM key first (kept pending: served once a chain for it is
        /// installed) and sign the request with it.
        #[serde(default)]
        new_key: bool,
    },
    /// Install a PEM certificate chain (leaf first) for the appliance's TLS key.
    TlsInstall {
        chain_pem: String,
    },
    KeysCreate {
        store: Option<String>,
        id: String,
        usage: KeyUsage,
    },
    /// Import 32 raw key bytes sent in clear inside the admin TLS channel: unsafe (the
    /// material is in clear on the operator's machine), so refused unless
    /// `plaintext_key_material` is true. Prefer [`Request::KeysImportParams`] and
    /// [`Request::KeysImportWrapped`].
    KeysImport {
        store: Option<String>,
        id: String,
        usage: KeyUsage,
        /// Standard Base64 of the 32 raw key bytes.
        key_b64: SecretText,
        /// The explicit consent to the unsafe path (`--plaintext-key-material`).
        #[serde(default)]
        plaintext_key_material: bool,
    },
    /// A wrapping public key and an import token for [`Request::KeysImportWrapped`] (KMS
    /// `GetParametersForImport`). The private key stays in this appliance's memory.
    KeysImportParams {
        #[serde(default)]
        wrapping_algorithm: crate::import::WrappingAlgorithm,
        #[serde(default)]
        wrapping_key_spec: crate::import::WrappingKeySpec,
        /// Validity, seconds (default and at most 24 hours).
        #[serde(default)]
        valid_for_secs: Option<u64>,
    },
    /// Import key material wrapped to the public key of `import_token` (KMS
    /// `ImportKeyMaterial`); the token is used up by this request.
    KeysImportWrapped {
        store: Option<String>,
        id: String,
        usage: KeyUsage,
        import_token: String,
        #[serde(default)]
        wrapping_algorithm: crate::import::WrappingAlgorithm,
        /// Standard Base64 of the wrapped bytes.
        encrypted_key_material_b64: String,
    },
    KeysList {
        store: Option<String>,
    },
    KeysEnable {
        store: Option<String>,
        id: String,
    },
    KeysDisable {
        store: Option<String>,
        id: String,
    },
    /// A new KEK version becomes current for Encrypt; every earlier version still decrypts.
    KeysRotate {
        store: Option<String>,
        id: String,
    },
    /// Disable the key now and destroy every version of it after `days` (7-30, default 30).
    KeysScheduleDestroy {
        store: Option<String>,
        id: String,
        #[serde(default)]
        days: Option<u32>,
    },
    /// Every KEK version of one key wrapped to an escrow RSA public key (3072 or 4096 bits), in
    /// the layouts `keys import --wrapped` accepts ([`crate::export`]). Security role and M-of-N
    /// approval (the request hash covers the id, the escrow key's SPKI and the algorithm).
    KeysExport {
        store: Option<String>,
        id: String,
        #[serde(default)]
        wrapping_algorithm: crate::import::WrappingAlgorithm,
        /// The escrow key, DER SubjectPublicKeyInfo, standard Base64.
        wrapping_public_key_der_b64: String,
    },
    /// Cancel a scheduled destruction: the key gets back the status it had.
    KeysCancelDestroy {
        store: Option<String>,
        id: String,
    },
    /// Set (`every_secs`, at least a day) or clear (`None`) the key's rotation schedule.
    KeysRotation {
        store: Option<String>,
        id: String,
        #[serde(default)]
        every_secs: Option<u64>,
    },
    KeysGrant {
        store: Option<String>,
        id: String,
        grant: Grant,
    },
    /// Remove grants to `principal` (narrowed by the optional fields when given); with `ops`,
    /// remove only those operations from the matching grants.
    KeysRevoke {
        store: Option<String>,
        id: String,
        principal: String,
        ops: Option<GrantOps>,
        via_service: Option<String>,
        source_vpc: Option<String>,
        source_vpce: Option<String>,
    },
    CredsList {
        store: Option<String>,
    },
    /// Add a credential; without `secret_access_key` (and `access_key_id`) the server generates
    /// them and returns the secret once.
    CredsAdd {
        store: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<SecretText>,
    },
    CredsRemove {
        store: Option<String>,
        access_key_id: String,
    },
    /// Export the whole sealed key store as one backup file (`keyward admin backup`): header,
    /// every record verbatim (still sealed), the head, MACed under the master key's `backup`
    /// subkey. Security role. The answer carries the file's text (see [`BackupInfo`]).
    Backup,
    /// Re-wrap a backup under the newest master-key version this appliance holds (`keyward
    /// admin backup rewrap`): the file (its text, as `backup` returned it) is opened and
    /// verified exactly as a restore given the master key does, re-sealed under the current
    /// version and returned (see [`BackupInfo`]); nothing is restored. Security role. Sent
    /// to [`FILE_PATH`], whose cap is [`MAX_FILE_BODY`].
    BackupRewrap {
        file: String,
    },
    /// Master-key versions of the key store: the one it is sealed under, the newest released
    /// to this boot, and whether the KRS recorded the re-seal (`keyward admin mk status`).
    MkStatus,
    /// Re-seal the key store under the newest master-key version released to this boot, now
    /// (`keyward admin mk reseal`; done at boot anyway). Online: XKS requests keep being
    /// served.
    MkReseal,
    /// The JSON file the AWS KMS console accepts for a store (needs the secret: give the access
    /// key id whose secret to include, or the newest credential is used).
    KmsConfig {
        store: Option<String>,
        access_key_id: Option<String>,
    },
    /// Approval requests (M-of-N dual control): pending, approved, denied, used, expired.
    ApprovalsList,
    /// Approve a pending request filed by another operator (needs the role its action needs).
    ApprovalsApprove {
        id: String,
    },
    /// Deny a pending or approved request (its requester, or an operator with its role).
    ApprovalsDeny {
        id: String,
    },
}

impl Request {
    /// Short operation name for logs and audit (`keys_create`, ...).
    /// Whether this request carries a whole file, and so goes to [`FILE_PATH`].
    pub fn carries_file(&self) -> bool {
        matches!(self, Request::BackupRewrap { .. })
    }

    pub fn op(&self) -> &'static str {
        match self {
            Request::StoresList => "stores_list",
            Request::StoresCreate { .. } => "stores_create",
            Request::StoresRemove { .. } => "stores_remove",
            Request::Fleet => "fleet",
            Request::TlsShow => "tls_show",
            Request::TlsCsr { .. } => "tls_csr",
            Request::TlsInstall { .. } => "tls_install",
            Request::KeysCreate { .. } => "keys_create",
            Request::KeysImport { .. } => "keys_import",
            Request::KeysImportParams { .. } => "keys_import_params",
            Request::KeysImportWrapped { .. } => "keys_import_wrapped",
            Request::KeysList { .. } => "keys_list",
            Request::KeysEnable { .. } => "keys_enable",
            Request::KeysDisable { .. } => "keys_disable",
            Request::KeysRotate { .. } => "keys_rotate",
            Request::KeysScheduleDestroy { .. } => "keys_schedule_destroy",
            Request::KeysExport { .. } => "keys_export",
            Request::KeysCancelDestroy { .. } => "keys_cancel_destroy",
            Request::KeysRotation { .. } => "keys_rotation",
            Request::KeysGrant { .. } => "keys_grant",
            Request::KeysRevoke { .. } => "keys_revoke",
            Request::CredsList { .. } => "creds_list",
            Request::CredsAdd { .. } => "creds_add",
            Request::CredsRemove { .. } => "creds_remove",
            Request::KmsConfig { .. } => "kms_config",
            Request::Backup => "backup",
            Request::BackupRewrap { .. } => "backup_rewrap",
            Request::ApprovalsList => "approvals_list",
            Request::ApprovalsApprove { .. } => "approvals_approve",
            Request::ApprovalsDeny { .. } => "approvals_deny",
            Request::MkStatus => "mk_status",
            Request::MkReseal => "mk_reseal",
        }
    }

    /// Whether the operation changes state (and so is audited as a change).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Request::StoresList
                | Request::Fleet
                | Request::TlsShow
                | Request::TlsCsr { .. }
                | Request::KeysList { .. }
                | Request::CredsList { .. }
                | Request::KmsConfig { .. }
                | Request::KeysExport { .. }
                | Request::Backup
                | Request::ApprovalsList
                | Request::MkStatus
        )
    }
}

/// The envelope of every answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A key store as `stores` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreInfo {
    pub name: String,
    pub uri_prefix: String,
    pub region: String,
    pub keys: usize,
    pub credentials: usize,
}

/// The appliance-managed TLS identity as `tls show` (and `tls install`) report it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsInfo {
    /// SHA-256 of the key's DER SubjectPublicKeyInfo, hex (what the live attestation binds
    /// and `server_spki_sha256` pins).
    pub spki_sha256: String,
    /// Subject of the certificate served now (RFC 4514).
    pub subject: String,
    /// Its issuer (the subject again for the self-signed one).
    pub issuer: String,
    /// Its SAN DNS names and IP addresses.
    pub names: Vec<String>,
    /// Its notAfter, RFC 3339.
    pub not_after: String,
    /// Whether a chain was installed (otherwise a self-signed certificate is served).
    pub chain_installed: bool,
    /// Certificates served.
    pub chain_len: usize,
    /// When the chain was installed, RFC 3339.
    #[serde(default)]
    pub installed_at: Option<String>,
    /// Days left until the served leaf's notAfter (rounded down).
    #[serde(default)]
    pub days_left: Option<i64>,
    /// SHA-256 of the pending key's SPKI (`tls csr --new-key`), hex: served once a chain for
    /// it is installed.
    #[serde(default)]
    pub pending_spki_sha256: Option<String>,
    /// When the pending key was made, RFC 3339.
    #[serde(default)]
    pub pending_created: Option<String>,
}

/// The answer to `backup`: the backup file's text (one JSON line, to be written as is: its MAC
/// covers its exact bytes) and the head it ends in.
#[derive(Clone, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The file.
    pub file: String,
    /// The store id (hex).
    pub store_id: String,
    /// The head's record (the RPO point: changes after it are not in this backup).
    pub seq: u64,
    /// Records in the file.
    pub records: usize,
    /// When it was made, RFC 3339.
    pub created: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The master-key version the backup is sealed under: restoring it needs that version,
    /// so keep it un-retired at the KRS while the backup is kept (absent from appliances
    /// before master-key rotation: 1).
    #[serde(default = "mk_v1")]
    pub mk_version: u32,
}

fn mk_v1() -> u32 {
    1
}

impl std::fmt::Debug for BackupInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupInfo")
            .field("file", &format_args!("{} bytes", self.file.len()))
            .field("store_id", &self.store_id)
            .field("seq", &self.seq)
            .field("records", &self.records)
            .finish()
    }
}

/// An approval request as `approvals list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalInfo {
    pub id: String,
    /// The admin operation it is for.
    pub op: String,
    /// What it changes or reveals (names and ids).
    pub what: String,
    /// pending, approved, denied, used or expired.
    pub state: String,
    pub requester: String,
    /// Approvers (subjects), in order.
    pub approvers: Vec<String>,
    /// Approvers needed besides the requester.
    pub needed: u32,
    /// The role an approver needs.
    pub role: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub expires: String,
    /// SHA-256 of the canonical request JSON it is bound to, hex.
    pub request_sha256: String,
}

/// A key as `keys list` shows it (never key bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub usage: KeyUsage,
    pub status: KeyStatus,
    pub version: u32,
    pub grants: Vec<Grant>,
    /// RFC 3339 creation time.
    pub created: String,
    /// Every version kept, current first: `{version, since}` (RFC 3339).
    #[serde(default)]
    pub versions: Vec<KeyVersion>,
    /// The rotation schedule in seconds (absent: by hand only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_every_secs: Option<u64>,
    /// Scheduled for destruction at this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_at: Option<String>,
}

/// One version of a key, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyVersion {
    pub version: u32,
    /// When it became current, RFC 3339.
    pub since: String,
}

/// A credential as `creds list` shows it (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredInfo {
    pub access_key_id: String,
    /// RFC 3339 time it was added, when known.
    #[serde(default)]
    pub created: Option<String>,
}

/// The answer to `creds add`: the secret is shown this once.
#[derive(Debug, Serialize, Deserialize)]
pub struct CredAdded {
    pub store: String,
    pub access_key_id: String,
    pub secret_access_key: SecretText,
}

/// The AWS KMS console's proxy configuration file.
#[derive(Debug, Serialize, Deserialize)]
pub struct KmsConfigFile {
    #[serde(rename = "XksProxyUriPath")]
    pub xks_proxy_uri_path: String,
    #[serde(rename = "XksProxyAuthenticationCredential")]
    pub credential: KmsCredential,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KmsCredential {
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    #[serde(rename = "RawSecretAccessKey")]
    pub raw_secret_access_key: SecretText,
}

/// Parse a usage word as the CLI and the API spell it.
pub fn parse_usage(s: &str) -> Result<KeyUsage, String> {
    let mut parts: Vec<&str> = s.split(',').map(str::trim).collect();
    parts.sort_unstable();
    parts.dedup();
    match parts.as_slice() {
        ["decrypt", "encrypt"] => Ok(KeyUsage::EncryptDecrypt),
        ["encrypt"] => Ok(KeyUsage::EncryptOnly),
        ["decrypt"] => Ok(KeyUsage::DecryptOnly),
        ["none"] => Ok(KeyUsage::None),
        _ => Err(format!(
            "unknown usage `{s}`: use encrypt,decrypt or encrypt or decrypt or none"
        )),
    }
}

/// The CLI's spelling of a usage.
pub fn usage_str(u: KeyUsage) -> &'static str {
    match u {
        KeyUsage::EncryptDecrypt => "encrypt,decrypt",
        KeyUsage::EncryptOnly => "encrypt",
        KeyUsage::DecryptOnly => "decrypt",
        KeyUsage::None => "none",
    }
}

/// Parse `encrypt,decrypt,metadata` (any subset, at least one).
pub fn parse_ops(s: &str) -> Result<GrantOps, String> {
    let mut ops = GrantOps::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "encrypt" => ops.encrypt = true,
            "decrypt" => ops.decrypt = true,
            "metadata" => ops.metadata = true,
            other => {
                return Err(format!(
                    "unknown operation `{other}`: use encrypt, decrypt, metadata"
                ))
            }
        }
    }
    if ops == GrantOps::default() {
        return Err("name at least one of encrypt, decrypt, metadata".into());
    }
    Ok(ops)
}

/// The CLI's spelling of grant operations.
pub fn ops_str(o: &GrantOps) -> String {
    let mut v = Vec::new();
    if o.encrypt {
        v.push("encrypt");
    }
    if o.decrypt {
        v.push("decrypt");
    }
    if o.metadata {
        v.push("metadata");
    }
    v.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_ops_parse() {
        assert_eq!(
            parse_usage("decrypt,encrypt").unwrap(),
            KeyUsage::EncryptDecrypt
        );
        assert_eq!(parse_usage("none").unwrap(), KeyUsage::None);
        assert!(parse_usage("sign").is_err());
        let o = parse_ops("encrypt,metadata").unwrap();
        assert!(o.encrypt && o.metadata && !o.decrypt);
        assert!(parse_ops("").is_err());
        assert!(parse_ops("delete").is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let r = Request::CredsAdd {
            store: None,
            access_key_id: None,
            secret_access_key: Some(SecretText::new("topsecretvalue".into())),
        };
        assert!(!format!("{r:?}").contains("topsecretvalue"));
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"op\":\"creds_add\""));
    }

    #[test]
    fn import_ops_parse_with_kms_names_and_viewers_may_not_use_them() {
        use crate::import::{WrappingAlgorithm, WrappingKeySpec};
        use crate::role::{allows, Role, Roles};
        let p: Request = serde_json::from_str(r#"{"op":"keys_import_params"}"#).unwrap();
        assert!(matches!(
            p,
            Request::KeysImportParams {
                wrapping_algorithm: WrappingAlgorithm::RsaesOaepSha256,
                wrapping_key_spec: WrappingKeySpec::Rsa3072,
                valid_for_secs: None
            }
        ));
        let w: Request = serde_json::from_str(
            r#"{"op":"keys_import_wrapped","store":null,"id":"k","usage":"encrypt_decrypt",
                "import_token":"t","wrapping_algorithm":"RSA_AES_KEY_WRAP_SHA_256",
                "encrypted_key_material_b64":"AAAA"}"#,
        )
        .unwrap();
        assert!(matches!(
            w,
            Request::KeysImportWrapped {
                wrapping_algorithm: WrappingAlgorithm::RsaAesKeyWrapSha256,
                ..
            }
        ));
        assert!(serde_json::from_str::<Request>(
            r#"{"op":"keys_import_params","wrapping_algorithm":"RSAES_OAEP_SHA_1"}"#
        )
        .is_err());
        // The raw path defaults to refused; its bytes never show in Debug.
        let r: Request = serde_json::from_str(
            r#"{"op":"keys_import","store":null,"id":"k","usage":"encrypt_decrypt","key_b64":"c2VjcmV0a2V5Ynl0ZXM="}"#,
        )
        .unwrap();
        assert!(matches!(
            r,
            Request::KeysImport {
                plaintext_key_material: false,
                ..
            }
        ));
        assert!(!format!("{r:?}").contains("c2VjcmV0a2V5Ynl0ZXM="));
        for req in [&p, &w, &r] {
            assert!(!allows(Roles::of(Role::Viewer), req), "{req:?}");
            assert!(allows(Roles::of(Role::Operator), req));
            assert!(!allows(Roles::of(Role::Security), req), "{req:?}");
        }
    }

    #[test]
    fn the_old_stores_op_still_lists() {
        let r: Request = serde_json::from_str(r#"{"op":"stores"}"#).unwrap();
        assert!(matches!(r, Request::StoresList));
        let r: Request = serde_json::from_str(r#"{"op":"stores_list"}"#).unwrap();
        assert!(matches!(r, Request::StoresList) && !r.is_change());
        let r: Request =
            serde_json::from_str(r#"{"op":"stores_create","name":"a","region":"us-east-1"}"#)
                .unwrap();
        assert!(r.is_change());
        assert!(serde_json::from_str::<Request>(r#"{"op":"stores_remove"}"#).is_err());
    }
}
