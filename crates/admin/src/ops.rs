//! The admin backend over the key [`Registry`]: each request becomes one registry call (durable
//! before it returns, live at once through the shared view), and each change or refusal becomes
//! one audit line naming the admin certificate's subject and what changed, never a secret.
//! The operator's role is enforced here, before anything is read or changed: a request the role
//! does not allow is refused (`403`, `forbidden: …`) and audited as a refusal. A request that
//! needs M-of-N approval ([`super::role::policy`]) runs only with an approved, unexpired,
//! unused approval bound to it ([`super::approval`]); without one it is refused and files a
//! request (kept in the key store, so every member of a fleet sees it).

use std::sync::Arc;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::approval::ApprovalPolicy;
use super::import::{ImportError, Importer};
use super::proto::{
    usage_str, BackupInfo, CredAdded, CredInfo, KeyInfo, KmsConfigFile, KmsCredential, Request,
    SecretText, StoreInfo, TlsInfo,
};
use super::role::{Operator, Roles};
use super::server::{AdminError, Backend};
use keyward_audit::AuditLog;
use keyward_keystore::{
    now_unix, KeystoreError, MasterKeySource, NewStore, Registry, Revoke, KMS_SERVICE,
};

/// The appliance-managed TLS identity as the admin API drives it (`tls show|csr|install`).
/// Implemented by the appliance, which owns the key and the listeners' certificate handle.
pub trait TlsAdmin: Send + Sync {
    /// What is served now.
    fn show(&self) -> Result<TlsInfo, AdminError>;
    /// A PEM PKCS#10 request for `names`, signed by the in-VM key; with `new_key`, by a new
    /// key kept pending (the current one stays served).
    fn csr(&self, names: &[String], new_key: bool) -> Result<String, AdminError>;
    /// Check a PEM chain for the current or the pending key, store it and serve it at once.
    fn install(&self, chain_pem: &str) -> Result<TlsInfo, AdminError>;
}

/// The fleet as the admin API lists it (`keyward admin fleet`). Implemented by the appliance,
/// which keeps the heartbeats.
pub trait FleetAdmin: Send + Sync {
    /// Every member seen lately, with its judged state, as JSON objects.
    fn members(&self) -> Result<Value, AdminError>;
}

/// What `GET /metrics` serves: OpenMetrics text. Implemented by the appliance, which knows
/// the fleet, the served certificate and the audit log's figures.
pub trait MetricsSource: Send + Sync {
    fn render(&self) -> Result<String, String>;
}

/// Admin requests carried out on a registry, audited.
pub struct RegistryBackend {
    registry: Arc<Registry>,
    audit: AuditLog,
    tls: Option<Arc<dyn TlsAdmin>>,
    fleet: Option<Arc<dyn FleetAdmin>>,
    metrics: Option<Arc<dyn MetricsSource>>,
    /// Where this boot's master key came from: `mk reseal` asks it for a newer version.
    master_keys: Option<Arc<dyn MasterKeySource>>,
    /// Wrapped import: tokens and their wrapping keys are sealed records of the key store.
    importer: Importer,
    approvals: ApprovalPolicy,
    /// Unix seconds now: the appliance passes its trusted clock (the KRS's signed time carried
    /// forward), so that the host's wall clock cannot revive an expired approval.
    clock: fn() -> u64,
}

impl RegistryBackend {
    pub fn new(registry: Arc<Registry>, audit: AuditLog) -> Self {
        RegistryBackend {
            registry,
            audit,
            tls: None,
            fleet: None,
            metrics: None,
            master_keys: None,
            importer: Importer,
            approvals: ApprovalPolicy::default(),
            clock: now_unix,
        }
    }

    /// Read time from `clock` (Unix seconds) instead of the wall clock: approval expiry and
    /// `schedule-destroy` dates.
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// Dual control: `policy.required` distinct operators (1: off) and the approval TTL.
    pub fn with_approvals(mut self, policy: ApprovalPolicy) -> Self {
        self.approvals = policy;
        self
    }

    /// `mk reseal` first asks `source` (the boot's attested release) for the newest
    /// master-key version when this boot holds none newer than the store's.
    pub fn with_master_key_source(mut self, source: Arc<dyn MasterKeySource>) -> Self {
        self.master_keys = Some(source);
        self
    }

    /// Serve `GET /metrics` from `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn MetricsSource>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serve `fleet` from the appliance's heartbeats (a shared key store).
    pub fn with_fleet(mut self, fleet: Arc<dyn FleetAdmin>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Serve `tls show|csr|install` with the appliance-managed TLS identity.
    pub fn with_tls(mut self, tls: Arc<dyn TlsAdmin>) -> Self {
        self.tls = Some(tls);
        self
    }

    fn tls(&self) -> Result<&dyn TlsAdmin, AdminError> {
        self.tls.as_deref().ok_or_else(|| {
            AdminError::BadRequest(
                "the appliance-managed TLS key is not in use: the listeners' TLS comes from \
                 files ([xks] tls_cert_chain_file, tls_key_file)"
                    .into(),
            )
        })
    }
}

impl From<KeystoreError> for AdminError {
    fn from(e: KeystoreError) -> Self {
        match e {
            KeystoreError::Invalid { .. } | KeystoreError::StoreRequired(_) => {
                AdminError::BadRequest(e.to_string())
            }
            KeystoreError::UnknownStore(_)
            | KeystoreError::UnknownKey { .. }
            | KeystoreError::UnknownCredential { .. }
            | KeystoreError::NoMatchingGrant { .. } => AdminError::NotFound(e.to_string()),
            KeystoreError::DuplicateStore(_)
            | KeystoreError::DuplicatePrefix { .. }
            | KeystoreError::DuplicateKey { .. }
            | KeystoreError::DuplicateCredential(_)
            | KeystoreError::StoreNotEmpty { .. } => AdminError::Conflict(e.to_string()),
            KeystoreError::Conflict { .. } => AdminError::Raced(e.to_string()),
            KeystoreError::Unavailable { .. } | KeystoreError::NotAnchored(_) => {
                tracing::warn!("admin request: {}", keyward_keystore::error_chain(&e));
                AdminError::Unavailable(e.to_string())
            }
            other => {
                tracing::error!("admin request failed in the key store: {other}");
                AdminError::Internal(format!("key store: {other}"))
            }
        }
    }
}

/// How often a write that lost a race with another appliance of the fleet is tried again (each
/// try starts from the store as the winner left it).
const RACE_RETRIES: usize = 4;

impl RegistryBackend {
    /// [`RegistryBackend::apply`], tried again when another member of the fleet wrote first.
    fn apply_retrying(&self, req: Request) -> Result<Value, AdminError> {
        let mut tries = 1;
        loop {
            match self.apply(req.clone()) {
                Err(AdminError::Raced(why)) if tries < RACE_RETRIES => {
                    tracing::info!(
                        tries,
                        "admin write lost a race in the shared key store: {why}"
                    );
                    tries += 1;
                }
                r => return r,
            }
        }
    }
}

impl RegistryBackend {
    /// Before a re-seal: when this boot holds no newer master-key version than the store's, a
    /// fresh attested release from the KRS (the current version), added to the key set.
    /// `Some(version)`: the version released now; `None`: nothing asked (already held, or
    /// a key file). A deny leaves everything as it was (XKS serves from memory) and is
    /// refused with the KRS's code, which the audit line records.
    fn learn_newer_master_key(&self) -> Result<Option<u32>, AdminError> {
        let st = self.registry.mk_status();
        let Some(source) = self.master_keys.as_ref().filter(|s| s.attested()) else {
            return Ok(None);
        };
        if st.current > st.sealed {
            return Ok(None);
        }
        let keys = source.obtain_more(&[]).map_err(|e| {
            let why = keyward_keystore::error_chain(&e);
            tracing::error!(
                "mk reseal: the fresh master-key release from the key-release service failed: \
                 {why}; serving goes on under master-key version {}",
                st.sealed
            );
            AdminError::Unavailable(format!(
                "master key: a fresh release from the key-release service failed: {why}"
            ))
        })?;
        let released = keys.current_version();
        self.registry.learn_master_keys(keys)?;
        Ok(Some(released))
    }

    /// For `backup rewrap`: the master keys to open a backup sealed under `version` and
    /// re-seal it under the current one: a fresh attested release from the KRS of the current
    /// version and `version` (a retired version is not released: the refusal names it), or
    /// the key file's one version.
    fn master_keys_for_backup(
        &self,
        version: u32,
    ) -> Result<keyward_keystore::MasterKeys, AdminError> {
        let Some(source) = self.master_keys.as_ref() else {
            return Err(AdminError::Unavailable(
                "backup rewrap: this appliance has no master-key source to ask".into(),
            ));
        };
        let keys = if source.attested() {
            source.obtain_more(&[version])
        } else {
            source.obtain_keys().map(|(k, _)| k)
        }
        .map_err(|e| {
            AdminError::Unavailable(format!(
                "file: the backup is sealed under master-key version {version}, which the \
                 key-release service did not release (retired?): {}",
                keyward_keystore::error_chain(&e)
            ))
        })?;
        if keys.get(version).is_none() {
            return Err(AdminError::Conflict(format!(
                "file: the backup is sealed under master-key version {version}, which this \
                 appliance does not hold (retired at the key-release service?)"
            )));
        }
        Ok(keys)
    }
}

impl RegistryBackend {
    /// An approval-store write, tried again when another member of the fleet wrote first.
    fn update_approval(
        &self,
        id: &str,
        change: impl Fn(
            Option<&keyward_keystore::ApprovalRecord>,
        ) -> Result<keyward_keystore::ApprovalRecord, AdminError>,
    ) -> Result<keyward_keystore::ApprovalRecord, AdminError> {
        let mut tries = 1;
        loop {
            match self.registry.update_approval(id, &change) {
                Err(AdminError::Raced(why)) if tries < RACE_RETRIES => {
                    tracing::info!(tries, "approval write lost a race: {why}");
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    /// The approvals requests themselves (list, approve, deny).
    fn approvals_op(
        &self,
        operator: &Operator,
        roles: Roles,
        req: &Request,
    ) -> Result<Value, AdminError> {
        let now = (self.clock)();
        match req {
            Request::ApprovalsApprove { id } => {
                let r = self.update_approval(id, |cur| {
                    super::approval::approve(cur, id, operator, roles, now)
                });
                if let Err(AdminError::Forbidden(why)) = &r {
                    if why.contains("expired") {
                        self.audit_expired(operator, id, why);
                    }
                }
                let r = r?;
                to_json(&super::approval::info(&r, now))
            }
            Request::ApprovalsDeny { id } => {
                let r = self.update_approval(id, |cur| {
                    super::approval::deny(cur, id, operator, roles, now)
                })?;
                to_json(&super::approval::info(&r, now))
            }
            _ => {
                let list: Vec<_> = self
                    .registry
                    .approvals()?
                    .iter()
                    .map(|a| super::approval::info(a, now))
                    .collect();
                to_json(&list)
            }
        }
    }

    fn audit_expired(&self, operator: &Operator, id: &str, why: &str) {
        self.audit.admin(
            &operator.subject,
            "approval_expired",
            &format!("approval={id}; refused: {why}"),
            false,
        );
    }

    /// A request that needs approval: without one, file a request and refuse; with one,
    /// consume it (once, bound to this exact request) and run the request.
    fn gated(
        &self,
        operator: &Operator,
        req: Request,
        approval: Option<String>,
        need: super::role::Need,
    ) -> Result<Value, AdminError> {
        let op = req.op();
        let what = describe(&req);
        let sha = super::approval::request_sha256(&req)?;
        let now = (self.clock)();
        let Some(id) = approval else {
            let filed = super::approval::file(op, &what, sha, need, operator, self.approvals, now)?;
            let id = filed.id.clone();
            let rec = self.update_approval(&id, |cur| match cur {
                None => Ok(filed.clone()),
                Some(_) => Err(AdminError::Conflict("approval: id taken".into())),
            })?;
            self.audit.admin(
                &operator.subject,
                "approval_filed",
                &format!(
                    "approval={id} for {op} {what}; needs {} approver(s) with the {} role;                      request_sha256={}",
                    rec.needed, rec.role, rec.request_sha256
                ),
                true,
            );
            return Err(AdminError::Forbidden(format!(
                "approval required: request {id}, expires {}; {} more operator(s) with the {}                  role run `keyward admin approvals approve {id}`, then re-run this command with                  --approval {id}",
                keyward_keystore::unix_rfc3339(rec.expires),
                rec.needed,
                rec.role
            )));
        };
        let consumed = self.update_approval(&id, |cur| {
            super::approval::consume(cur, &id, operator, &sha, now)
        });
        let consumed = match consumed {
            Ok(c) => c,
            Err(e) => {
                if e.to_string().contains("expired") {
                    self.audit_expired(operator, &id, &e.to_string());
                }
                return Err(e);
            }
        };
        self.audit.admin(
            &operator.subject,
            "approval_used",
            &format!(
                "approval={id} for {op} {what}; approved by {}",
                consumed
                    .approvers
                    .iter()
                    .map(|a| a.subject.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            true,
        );
        let result = self.apply_retrying(req);
        if let Err(e) = &result {
            // The request did not run: give the approval back (once more usable, until it
            // expires). If this write fails too, a new request has to be filed.
            let back = self.update_approval(&id, |cur| match cur {
                Some(c) if c.state == keyward_keystore::ApprovalState::Used => {
                    let mut c = c.clone();
                    c.state = keyward_keystore::ApprovalState::Approved;
                    c.closed_by = None;
                    c.closed = None;
                    Ok(c)
                }
                _ => Err(AdminError::Conflict("approval changed meanwhile".into())),
            });
            self.audit.admin(
                &operator.subject,
                "approval_restored",
                &format!(
                    "approval={id}: {op} failed ({e}); approval {}",
                    if back.is_ok() {
                        "usable again"
                    } else {
                        "stays used"
                    }
                ),
                back.is_ok(),
            );
        }
        result
    }
}

impl Backend for RegistryBackend {
    fn handle(&self, operator: &Operator, req: Request) -> Result<Value, AdminError> {
        self.handle_approved(operator, req, None)
    }

    fn handle_approved(
        &self,
        operator: &Operator,
        req: Request,
        approval: Option<String>,
    ) -> Result<Value, AdminError> {
        // Every request is audited, reads too: `kms-config` discloses a credential.
        let actor = operator.subject.as_str();
        let op = req.op();
        let what = describe(&req);
        let policy = super::role::policy(&req);
        let gated = policy.approval && self.approvals.required > 1;
        let result = match &operator.role {
            Ok(roles) if !roles.satisfy(policy.need) => Err(AdminError::Forbidden(format!(
                "forbidden: the client certificate's role is {roles}, and {op} needs {} (a \
                 certificate with the SAN URI {})",
                policy.need.role(),
                policy.need.role().uri()
            ))),
            Err(why) => Err(AdminError::Forbidden(format!("forbidden: {why}"))),
            Ok(_) if approval.is_some() && !gated => Err(AdminError::BadRequest(format!(
                "approval: {op} needs no approval; run it without --approval"
            ))),
            Ok(_) if gated => self.gated(operator, req, approval, policy.need),
            Ok(roles)
                if matches!(
                    req,
                    Request::ApprovalsList
                        | Request::ApprovalsApprove { .. }
                        | Request::ApprovalsDeny { .. }
                ) =>
            {
                self.approvals_op(operator, *roles, &req)
            }
            Ok(_) => self
                .unwrap_import(req)
                .and_then(|req| self.apply_retrying(req)),
        };
        {
            let detail = match &result {
                // A generated credential: name its id (never the secret).
                Ok(v) if op == "creds_add" => format!(
                    "{what}; access_key_id={}",
                    v.get("access_key_id")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                ),
                Ok(_) if op == "kms_config" => format!("{what}; secret disclosed to the admin"),
                Ok(v) if op == "keys_export" => format!(
                    "{what}; versions={}",
                    v.get("versions")
                        .and_then(Value::as_array)
                        .map(|vs| vs
                            .iter()
                            .filter_map(|x| x.get("version").and_then(Value::as_u64))
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default()
                ),
                Ok(v) if op == "keys_import_params" => format!(
                    "{what}; import_token_sha256={} valid_to={}",
                    token_ref(v.get("import_token").and_then(Value::as_str).unwrap_or("")),
                    v.get("parameters_valid_to")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                ),
                Ok(_) => what,
                Err(e) => format!("{what}; refused: {e}"),
            };
            self.audit.admin(actor, op, &detail, result.is_ok());
        }
        result
    }

    /// Every role may read the metrics (they hold no secret); a certificate whose role claim
    /// is unknown may not.
    fn metrics(&self, operator: &Operator) -> Result<String, AdminError> {
        if let Err(why) = &operator.role {
            return Err(AdminError::Forbidden(format!("forbidden: {why}")));
        }
        let m = self
            .metrics
            .as_ref()
            .ok_or_else(|| AdminError::NotFound("metrics are not served here".into()))?;
        m.render().map_err(AdminError::Internal)
    }
}

/// What a request changes, for the audit line: names and ids, never key bytes or secrets.
fn describe(req: &Request) -> String {
    let s = |store: &Option<String>| store.clone().unwrap_or_else(|| "(only)".into());
    match req {
        Request::KeysCreate { store, id, usage } => {
            format!("store={} key={id} usage={}", s(store), usage_str(*usage))
        }
        Request::KeysImport {
            store, id, usage, ..
        } => format!(
            "store={} key={id} usage={} imported from plaintext key material",
            s(store),
            usage_str(*usage)
        ),
        Request::KeysImportParams {
            wrapping_algorithm,
            wrapping_key_spec,
            valid_for_secs,
        } => format!(
            "wrapping_algorithm={wrapping_algorithm} wrapping_key_spec={} valid_for={}s",
            wrapping_key_spec.as_str(),
            valid_for_secs.unwrap_or(super::import::MAX_VALIDITY.as_secs())
        ),
        Request::KeysImportWrapped {
            store,
            id,
            usage,
            import_token,
            wrapping_algorithm,
            ..
        } => format!(
            "store={} key={id} usage={} imported wrapped ({wrapping_algorithm}) with import_token_sha256={}",
            s(store),
            usage_str(*usage),
            token_ref(import_token)
        ),
        Request::KeysScheduleDestroy { store, id, days } => format!(
            "store={} key={id} days={}",
            s(store),
            days.unwrap_or(keyward_keystore::DEFAULT_DESTROY_DAYS)
        ),
        Request::KeysExport {
            store,
            id,
            wrapping_algorithm,
            wrapping_public_key_der_b64,
        } => format!(
            "store={} key={id} export wrapped ({wrapping_algorithm}) to escrow_spki_sha256={}",
            s(store),
            super::export::escrow_key(wrapping_public_key_der_b64)
                .map_or_else(|_| "(not a usable key)".to_string(), |(_, sha)| sha)
        ),
        Request::KeysEnable { store, id }
        | Request::KeysDisable { store, id }
        | Request::KeysRotate { store, id }
        | Request::KeysCancelDestroy { store, id } => {
            format!("store={} key={id}", s(store))
        }
        Request::KeysRotation {
            store,
            id,
            every_secs,
        } => format!(
            "store={} key={id} every={}",
            s(store),
            every_secs.map_or("off".to_string(), |e| format!("{e}s"))
        ),
        Request::KeysGrant { store, id, grant } => format!(
            "store={} key={id} grant={}",
            s(store),
            serde_json::to_string(grant).unwrap_or_default()
        ),
        Request::KeysRevoke {
            store,
            id,
            principal,
            ops,
            via_service,
            source_vpc,
            source_vpce,
        } => format!(
            "store={} key={id} principal={principal} ops={} via_service={} source_vpc={} source_vpce={}",
            s(store),
            ops.as_ref().map(super::proto::ops_str).unwrap_or_else(|| "all".into()),
            via_service.as_deref().unwrap_or("-"),
            source_vpc.as_deref().unwrap_or("-"),
            source_vpce.as_deref().unwrap_or("-"),
        ),
        Request::CredsAdd {
            store,
            access_key_id,
            ..
        } => format!(
            "store={} access_key_id={}",
            s(store),
            access_key_id.as_deref().unwrap_or("(generated)")
        ),
        Request::CredsRemove {
            store,
            access_key_id,
        } => format!("store={} access_key_id={access_key_id}", s(store)),
        Request::StoresList => "read".into(),
        Request::StoresCreate {
            name,
            uri_prefix,
            region,
            services,
        } => format!(
            "store={name} uri_prefix={uri_prefix:?} region={region} services={}",
            services.join(",")
        ),
        Request::StoresRemove { name, force } => format!("store={name} force={force}"),
        Request::TlsShow | Request::Fleet => "read".into(),
        Request::TlsCsr { dns_names, new_key } => format!(
            "csr for {}{}",
            dns_names.join(","),
            if *new_key { " with a new key" } else { "" }
        ),
        Request::TlsInstall { chain_pem } => {
            format!("certificate chain of {} bytes", chain_pem.len())
        }
        Request::KeysList { store } | Request::CredsList { store } => {
            format!("store={} read", s(store))
        }
        Request::Backup => "export of the whole sealed key store".into(),
        Request::BackupRewrap { file } => format!(
            "re-wrap of a backup of {} bytes under the newest master key",
            file.len()
        ),
        Request::ApprovalsList => "read".into(),
        Request::ApprovalsApprove { id } | Request::ApprovalsDeny { id } => {
            format!("approval={id}")
        }
        Request::MkStatus => "read".into(),
        Request::MkReseal => "re-seal of the key store under the newest master key".into(),
        Request::KmsConfig {
            store,
            access_key_id,
        } => format!(
            "store={} credential {} for the KMS console",
            s(store),
            access_key_id.as_deref().unwrap_or("(newest)")
        ),
    }
}

/// A backup file as `backup` and `backup rewrap` answer it: the file and what it holds.
fn backup_info(e: keyward_keystore::backup::Export) -> Result<Value, AdminError> {
    use sha2::Digest;
    let sha256 = hex::encode(sha2::Sha256::digest(&e.bytes));
    let file = String::from_utf8(e.bytes)
        .map_err(|_| AdminError::Internal("the backup is not UTF-8".into()))?;
    to_json(&BackupInfo {
        file,
        store_id: hex::encode(&e.head.store_id),
        seq: e.head.seq,
        records: e.records,
        created: keyward_keystore::unix_rfc3339(e.created),
        sha256,
        mk_version: e.head.mk_version,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, AdminError> {
    serde_json::to_value(v).map_err(|source| AdminError::Json {
        what: "encoding the answer",
        source,
    })
}

fn key_info(k: keyward_keystore::KeyInfo) -> KeyInfo {
    KeyInfo {
        created: k.created_rfc3339(),
        versions: k
            .versions
            .iter()
            .map(|v| super::proto::KeyVersion {
                version: v.version,
                since: keyward_keystore::unix_rfc3339(v.created),
            })
            .collect(),
        rotate_every_secs: k.rotate_every_secs,
        destroy_at: k.destroy_at.map(keyward_keystore::unix_rfc3339),
        id: k.id,
        usage: k.usage,
        status: k.status,
        version: k.version,
        grants: k.grants,
    }
}

impl From<super::export::ExportError> for AdminError {
    fn from(e: super::export::ExportError) -> Self {
        match e {
            // The answer's one line keeps the cause (`...: not an RSA SubjectPublicKeyInfo: ...`).
            super::export::ExportError::PublicKey(_)
            | super::export::ExportError::PublicKeyDer(_) => {
                AdminError::BadRequest(keyward_keystore::error_chain(&e))
            }
            _ => AdminError::Internal(keyward_keystore::error_chain(&e)),
        }
    }
}

impl From<ImportError> for AdminError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::KeyGen(_)
            | ImportError::KeyEncode(_)
            | ImportError::PublicKeyEncode(_)
            | ImportError::TokenId(_)
            | ImportError::StoredKey(_)
            | ImportError::StoredKeyDer(_) => {
                AdminError::Internal(keyward_keystore::error_chain(&e))
            }
            ImportError::TooMany => AdminError::Conflict(e.to_string()),
            ImportError::Store(e) => AdminError::from(e),
            _ => AdminError::BadRequest(e.to_string()),
        }
    }
}

impl RegistryBackend {
    /// A wrapped import becomes a plaintext import of the unwrapped bytes, once, before the
    /// registry write (which may be tried again after a lost race: the token is used here, not
    /// on each try). The key id is checked first, so a taken id does not use up the token.
    fn unwrap_import(&self, req: Request) -> Result<Request, AdminError> {
        let Request::KeysImportWrapped {
            store,
            id,
            usage,
            import_token,
            wrapping_algorithm,
            encrypted_key_material_b64,
        } = req
        else {
            return Ok(req);
        };
        let wrapped = base64::engine::general_purpose::STANDARD
            .decode(encrypted_key_material_b64.trim())
            .map_err(|_| {
                AdminError::BadRequest("encrypted_key_material_b64 is not standard Base64".into())
            })?;
        match self.registry.key_info(store.as_deref(), &id) {
            Ok(_) => {
                return Err(KeystoreError::DuplicateKey {
                    store: self.store_name(&store)?,
                    id,
                }
                .into())
            }
            Err(KeystoreError::UnknownKey { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let key = self.importer.unwrap(
            &self.registry,
            (self.clock)(),
            &import_token,
            wrapping_algorithm,
            &wrapped,
        )?;
        Ok(Request::KeysImport {
            store,
            id,
            usage,
            key_b64: SecretText::new(base64::engine::general_purpose::STANDARD.encode(&key[..])),
            plaintext_key_material: true,
        })
    }

    /// The store name a request refers to (resolving "the only store").
    fn store_name(&self, store: &Option<String>) -> Result<String, AdminError> {
        if let Some(s) = store {
            return Ok(s.clone());
        }
        let stores = self.registry.list_stores();
        match stores.as_slice() {
            [only] => Ok(only.name.clone()),
            _ => Err(KeystoreError::StoreRequired(stores.len()).into()),
        }
    }

    fn apply(&self, req: Request) -> Result<Value, AdminError> {
        let r = &self.registry;
        match req {
            Request::StoresCreate {
                name,
                uri_prefix,
                region,
                services,
            } => {
                let s = r.create_store(NewStore {
                    name,
                    uri_prefix,
                    region,
                    extra_services: services.into_iter().filter(|s| s != KMS_SERVICE).collect(),
                })?;
                to_json(&StoreInfo {
                    credentials: s.access_key_ids.len(),
                    name: s.name,
                    uri_prefix: s.uri_prefix,
                    region: s.region,
                    keys: s.keys,
                })
            }
            Request::StoresRemove { name, force } => {
                let keys = r
                    .list_stores()
                    .into_iter()
                    .find(|s| s.name == name)
                    .map(|s| s.keys)
                    .unwrap_or(0);
                r.remove_store(&name, force)?;
                Ok(json!({ "removed": name, "keys_destroyed": keys }))
            }
            Request::Fleet => match &self.fleet {
                Some(f) => Ok(json!({ "shared": true, "members": f.members()? })),
                // One appliance on its own store: itself only.
                None => Ok(json!({
                    "shared": false,
                    "members": [],
                    "store_seq": r.head().seq,
                })),
            },
            Request::Backup => backup_info(r.export()?),
            Request::BackupRewrap { file } => {
                let bad = |e: keyward_keystore::backup::BackupError| match e {
                    keyward_keystore::backup::BackupError::Keystore(k) => AdminError::from(k),
                    e => AdminError::BadRequest(format!("file: {e}")),
                };
                let bytes = file.as_bytes();
                let version = keyward_keystore::backup::parse(bytes)
                    .map_err(bad)?
                    .mk_version();
                let keys = self.master_keys_for_backup(version)?;
                let e = keyward_keystore::backup::rewrap(bytes, keys).map_err(bad)?;
                tracing::info!(
                    from = version,
                    to = e.head.mk_version,
                    seq = e.head.seq,
                    "re-wrapped a backup under the newest master-key version"
                );
                backup_info(e)
            }
            Request::MkStatus => to_json(&r.mk_status()),
            Request::MkReseal => {
                let released = self.learn_newer_master_key()?;
                let head = r.reseal()?;
                let st = r.mk_status();
                Ok(json!({
                    "released": released,
                    "resealed": head.is_some(),
                    "sealed": st.sealed,
                    "current": st.current,
                    "krs_recorded": st.krs_recorded,
                    "store_seq": r.head().seq,
                }))
            }
            Request::TlsShow => to_json(&self.tls()?.show()?),
            Request::TlsCsr { dns_names, new_key } => {
                Ok(json!({ "csr_pem": self.tls()?.csr(&dns_names, new_key)? }))
            }
            Request::TlsInstall { chain_pem } => to_json(&self.tls()?.install(&chain_pem)?),
            Request::StoresList => {
                let out: Vec<StoreInfo> = r
                    .list_stores()
                    .into_iter()
                    .map(|s| StoreInfo {
                        credentials: s.access_key_ids.len(),
                        name: s.name,
                        uri_prefix: s.uri_prefix,
                        region: s.region,
                        keys: s.keys,
                    })
                    .collect();
                to_json(&out)
            }
            Request::KeysCreate { store, id, usage } => {
                let k = r.create_key(store.as_deref(), &id, usage)?;
                to_json(&key_info(k))
            }
            Request::KeysImportParams {
                wrapping_algorithm,
                wrapping_key_spec,
                valid_for_secs,
            } => to_json(&self.importer.issue(
                r,
                (self.clock)(),
                wrapping_algorithm,
                wrapping_key_spec,
                valid_for_secs.map(std::time::Duration::from_secs),
            )?),
            // Unwrapped (and turned into a plaintext import) by `unwrap_import` before.
            Request::KeysImportWrapped { .. } => Err(AdminError::Internal(
                "a wrapped import reached the registry unwrapped".into(),
            )),
            Request::KeysImport {
                store,
                id,
                usage,
                key_b64,
                plaintext_key_material,
            } => {
                if !plaintext_key_material {
                    return Err(AdminError::BadRequest(
                        "plaintext_key_material: importing raw key bytes puts them in clear on \
                         the operator's machine and is refused unless asked for explicitly \
                         (`--plaintext-key-material`); import wrapped key material instead \
                         (`keys import-params`, then `keys import --wrapped`)"
                            .into(),
                    ));
                }
                let raw = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(key_b64.expose())
                        .map_err(|_| {
                            AdminError::BadRequest("key_b64 is not standard Base64".into())
                        })?,
                );
                let mut bytes = Zeroizing::new([0u8; 32]);
                if raw.len() != 32 {
                    return Err(AdminError::BadRequest(format!(
                        "an imported key is exactly 32 bytes, got {}",
                        raw.len()
                    )));
                }
                bytes.copy_from_slice(&raw);
                let k = r.import_key(store.as_deref(), &id, usage, bytes)?;
                to_json(&key_info(k))
            }
            Request::KeysList { store } => {
                let keys: Vec<KeyInfo> = r
                    .list_keys(store.as_deref())?
                    .into_iter()
                    .map(key_info)
                    .collect();
                to_json(&keys)
            }
            Request::KeysEnable { store, id } => {
                to_json(&key_info(r.enable_key(store.as_deref(), &id)?))
            }
            Request::KeysDisable { store, id } => {
                to_json(&key_info(r.disable_key(store.as_deref(), &id)?))
            }
            Request::KeysRotate { store, id } => {
                to_json(&key_info(r.rotate_key(store.as_deref(), &id)?))
            }
            Request::KeysScheduleDestroy { store, id, days } => {
                let now = (self.clock)();
                to_json(&key_info(r.schedule_destroy(
                    store.as_deref(),
                    &id,
                    days.unwrap_or(keyward_keystore::DEFAULT_DESTROY_DAYS),
                    now,
                )?))
            }
            Request::KeysExport {
                store,
                id,
                wrapping_algorithm,
                wrapping_public_key_der_b64,
            } => {
                let (escrow, spki_sha) = super::export::escrow_key(&wrapping_public_key_der_b64)?;
                let name = self.store_name(&store)?;
                let snap = r.snapshot();
                let sv = snap
                    .stores
                    .get(&name)
                    .ok_or_else(|| AdminError::from(KeystoreError::UnknownStore(name.clone())))?;
                if sv.destroyed.contains_key(&id) {
                    return Err(AdminError::Conflict(format!(
                        "id: key {id} is destroyed; there is nothing to export"
                    )));
                }
                let k = sv.keys.get(&id).ok_or_else(|| {
                    AdminError::from(KeystoreError::UnknownKey {
                        store: name.clone(),
                        id: id.clone(),
                    })
                })?;
                if k.destroy_at.is_some() {
                    return Err(AdminError::Conflict(format!(
                        "id: key {id} is scheduled for destruction; cancel-destroy it first to \
                         export it"
                    )));
                }
                let mut versions: Vec<(u32, &keyward_secret::Key32)> = k
                    .older
                    .iter()
                    .map(|o| (o.version, &o.kek))
                    .chain(std::iter::once((k.version, &k.kek)))
                    .collect();
                versions.sort_by_key(|(v, _)| *v);
                let mut out = Vec::with_capacity(versions.len());
                for (version, kek) in versions {
                    let w = super::export::wrap(&escrow, wrapping_algorithm, kek.expose())?;
                    out.push(super::export::ExportedVersion {
                        version,
                        wrapped: base64::engine::general_purpose::STANDARD.encode(w),
                    });
                }
                to_json(&super::export::ExportFile {
                    key_id: id,
                    store: name,
                    wrapping_algorithm,
                    escrow_spki_sha256: spki_sha,
                    versions: out,
                })
            }
            Request::KeysCancelDestroy { store, id } => {
                to_json(&key_info(r.cancel_destroy(store.as_deref(), &id)?))
            }
            Request::KeysRotation {
                store,
                id,
                every_secs,
            } => to_json(&key_info(r.set_rotation(
                store.as_deref(),
                &id,
                every_secs,
            )?)),
            Request::KeysGrant { store, id, grant } => {
                to_json(&key_info(r.grant(store.as_deref(), &id, grant)?))
            }
            Request::KeysRevoke {
                store,
                id,
                principal,
                ops,
                via_service,
                source_vpc,
                source_vpce,
            } => {
                let before = r.key_info(store.as_deref(), &id)?.grants;
                let after = r
                    .revoke(
                        store.as_deref(),
                        &id,
                        &Revoke {
                            principal,
                            ops,
                            via_service,
                            source_vpc,
                            source_vpce,
                        },
                    )?
                    .grants;
                let changed = before.iter().filter(|g| !after.contains(g)).count();
                Ok(json!({ "removed": changed, "grants": after }))
            }
            Request::CredsList { store } => {
                let creds: Vec<CredInfo> = r
                    .list_credentials(store.as_deref())?
                    .into_iter()
                    .map(|c| CredInfo {
                        access_key_id: c.access_key_id,
                        created: Some(keyward_keystore::unix_rfc3339(c.created)),
                    })
                    .collect();
                to_json(&creds)
            }
            Request::CredsAdd {
                store,
                access_key_id,
                secret_access_key,
            } => {
                let name = self.store_name(&store)?;
                let (akid, secret) = match (access_key_id, secret_access_key) {
                    (Some(a), Some(s)) => (a, SecretString::from(s.expose().to_string())),
                    (None, None) => keyward_keystore::generate_credential()?,
                    (Some(a), None) => {
                        let (_, s) = keyward_keystore::generate_credential()?;
                        (a, s)
                    }
                    (None, Some(_)) => {
                        return Err(AdminError::BadRequest(
                            "a secret needs its access key id".into(),
                        ))
                    }
                };
                let shown = SecretText::new(secret.expose_secret().to_string());
                r.add_credential(Some(&name), &akid, secret)?;
                to_json(&CredAdded {
                    store: name,
                    access_key_id: akid,
                    secret_access_key: shown,
                })
            }
            Request::CredsRemove {
                store,
                access_key_id,
            } => {
                r.remove_credential(store.as_deref(), &access_key_id)?;
                Ok(json!({ "removed": access_key_id }))
            }
            Request::ApprovalsList
            | Request::ApprovalsApprove { .. }
            | Request::ApprovalsDeny { .. } => Err(AdminError::Internal(
                "approvals are not registry requests".into(),
            )),
            Request::KmsConfig {
                store,
                access_key_id,
            } => {
                let name = self.store_name(&store)?;
                let snap = r.snapshot();
                let sv = snap
                    .stores
                    .get(&name)
                    .ok_or_else(|| AdminError::from(KeystoreError::UnknownStore(name.clone())))?;
                // Default: the newest credential (the one KMS should be switched to).
                let wanted = match &access_key_id {
                    Some(a) => Some(a.clone()),
                    None => r
                        .list_credentials(Some(&name))?
                        .into_iter()
                        .max_by_key(|c| c.created)
                        .map(|c| c.access_key_id),
                };
                let cred = wanted
                    .as_ref()
                    .and_then(|a| sv.credentials.iter().find(|c| &c.access_key_id == a))
                .ok_or_else(|| {
                    AdminError::NotFound(match &access_key_id {
                        Some(a) => format!("no credential {a} in key store {name}"),
                        None => format!(
                            "key store {name} has no credential: add one with `creds add --store {name}`"
                        ),
                    })
                })?;
                to_json(&KmsConfigFile {
                    xks_proxy_uri_path: format!("{}/kms/xks/v1", sv.uri_prefix),
                    credential: KmsCredential {
                        access_key_id: cred.access_key_id.clone(),
                        raw_secret_access_key: SecretText::new(
                            cred.secret_access_key.expose_secret().to_string(),
                        ),
                    },
                })
            }
        }
    }
}

/// How the audit log names an import token: the first 8 bytes of its SHA-256 in hex. The
/// token is a bearer secret until used (anyone with an admin certificate and the token could
/// import with it), so the log, which more people read, never holds it.
fn token_ref(token: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(token.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn an_answer_that_does_not_encode_keeps_the_serde_error() {
        // JSON object keys must be strings: a map keyed by pairs does not encode.
        let v: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let e = to_json(&v).unwrap_err();
        assert!(matches!(e, AdminError::Json { .. }), "{e:?}");
        assert_eq!(e.to_string(), "encoding the answer");
        let src = e
            .source()
            .and_then(|s| s.downcast_ref::<serde_json::Error>());
        assert!(src.is_some(), "{e:?}");
        // The API's one-line answer (what the server sends) still shows the cause.
        let line = keyward_keystore::error_chain(&e);
        assert!(line.starts_with("encoding the answer: "), "{line}");
    }
}
