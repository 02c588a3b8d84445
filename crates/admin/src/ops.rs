//! The admin backend over the key [`Registry`]: each request becomes one registry call (durable
//! before it returns, live at once through the shared view), and each change or refusal becomes
//! one audit line naming the admin certificate's subject and what changed, never a secret.
//! The operator's role is enforced here, before anything is read or changed: a request the role
//! does not allow is refused (`403`, `forbidden: …`) and audited as a refusal.

use std::sync::Arc;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::proto::{
    usage_str, BackupInfo, CredAdded, CredInfo, KeyInfo, KmsConfigFile, KmsCredential, Request,
    SecretText, StoreInfo, TlsInfo,
};
use super::role::{Operator, Role};
use super::server::{AdminError, Backend};
use keyward_audit::AuditLog;
use keyward_keystore::{KeystoreError, NewStore, Registry, Revoke, KMS_SERVICE};

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
}

impl RegistryBackend {
    pub fn new(registry: Arc<Registry>, audit: AuditLog) -> Self {
        RegistryBackend {
            registry,
            audit,
            tls: None,
            fleet: None,
            metrics: None,
        }
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
                tracing::warn!("admin request: {e}");
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

impl Backend for RegistryBackend {
    fn handle(&self, operator: &Operator, req: Request) -> Result<Value, AdminError> {
        // Every request is audited, reads too: `kms-config` discloses a credential.
        let actor = operator.subject.as_str();
        let op = req.op();
        let what = describe(&req);
        let result = match &operator.role {
            Ok(role) if super::role::allows(*role, &req) => self.apply_retrying(req),
            Ok(role) => Err(AdminError::Forbidden(format!(
                "forbidden: the client certificate's role is {role}, and {op} needs admin \
                 (a certificate with the SAN URI {})",
                Role::Admin.uri()
            ))),
            Err(why) => Err(AdminError::Forbidden(format!("forbidden: {why}"))),
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
        } => format!("store={} key={id} usage={} imported", s(store), usage_str(*usage)),
        Request::KeysScheduleDestroy { store, id, days } => format!(
            "store={} key={id} days={}",
            s(store),
            days.unwrap_or(keyward_keystore::DEFAULT_DESTROY_DAYS)
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

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, AdminError> {
    serde_json::to_value(v).map_err(|e| AdminError::Internal(e.to_string()))
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

impl RegistryBackend {
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
            Request::Backup => {
                use sha2::Digest;
                let e = r.export()?;
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
            Request::MkStatus => to_json(&r.mk_status()),
            Request::MkReseal => {
                let head = r.reseal()?;
                let st = r.mk_status();
                Ok(json!({
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
            Request::KeysImport {
                store,
                id,
                usage,
                key_b64,
            } => {
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
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                to_json(&key_info(r.schedule_destroy(
                    store.as_deref(),
                    &id,
                    days.unwrap_or(keyward_keystore::DEFAULT_DESTROY_DAYS),
                    now,
                )?))
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
