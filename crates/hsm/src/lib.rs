//! PKCS#11 through cryptoki: the master key, the receipt-signing key and the in-HSM release
//! wrap of KRP/1 (docs/key-release.md section 8.4).
//!
//! Request path of one release, all inside the token:
//! 1. an ephemeral P-384 key pair (session objects);
//! 2. `C_DeriveKey(CKM_ECDH1_DERIVE, CKD_NULL, agent epk)` into a non-extractable AES-256 key
//!    with `CKA_DERIVE` (SoftHSMv2 2.6.1 accepts only `CKD_NULL`: the AES key is the last 32 bytes
//!    of the shared x-coordinate);
//! 3. a second derive binding the transcript T: `CKM_AES_CBC_ENCRYPT_DATA` with an all-zero IV
//!    over `SHA-256("KRP/1 wrap" || T)` (32 bytes, two blocks) into the final non-extractable
//!    AES-256 key with `CKA_WRAP`. cryptoki 0.12 has no `Mechanism` for
//!    `CKM_AES_ECB_ENCRYPT_DATA` (and no way to build its `MechanismType`), so the CBC variant
//!    is used; with a fresh key per release and a fixed input length it is just as good a PRF;
//! 4. `C_WrapKey(CKM_AES_KEY_WRAP)` (RFC 3394) of the master key;
//! 5. the session objects are destroyed.
//!
//! Receipts are signed with `CKM_ECDSA` over a SHA-384 digest computed outside the token
//! (SoftHSM has no `CKM_ECDSA_SHA384`); the result is the 96-byte `r || s`.
//!
//! Where the token lacks ECDH/ENCRYPT_DATA/KEY_WRAP, [`Hsm::export_master_for_fallback`] gives
//! the KRS the master key for one call (wrapped under a throw-away session key, unwrapped in
//! software, zeroized by the caller's wrapper); the KRS then seals it with HPKE.

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

/// DER of the P-384 curve OID (1.3.132.0.34), the `CKA_EC_PARAMS` value.
const P384_PARAMS: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Errors from the HSM layer. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The module could not be loaded; the cause is the `source()`.
    #[error("cannot load PKCS#11 module {path}")]
    Module {
        path: String,
        #[source]
        source: cryptoki::error::Error,
    },
    /// No slot holds a token with this label (the field is the configured label, no cause).
    #[error("no token labelled {0:?}")]
    NoToken(String),
    /// Where the PIN should come from is not set (the message says what to set; no cause).
    #[error("HSM PIN: {0}")]
    Pin(String),
    /// The PIN file could not be read; the cause is the `source()`.
    #[error("HSM PIN: reading {}", path.display())]
    PinFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PKCS#11 call failed: `op` names the function (`C_Login`, `C_WrapKey`, ...), the
    /// token's return value is the `source()` (a [`cryptoki::error::Error`]).
    #[error("PKCS#11 {op}")]
    Call {
        op: &'static str,
        #[source]
        source: cryptoki::error::Error,
    },
    /// The soft backend (`keyward demo`'s stand-in) could not read or write a key file.
    #[error("soft key file {}", path.display())]
    SoftKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No object with this label (the field is the label; no cause).
    #[error("key {0:?} not found in the token (run `keyward krs init`)")]
    MissingKey(String),
    /// An object with this label is already there (the field is the label; no cause).
    #[error("key {0:?} already exists in the token")]
    Exists(String),
    #[error("the token lacks mechanism {0}")]
    Mechanism(&'static str),
    #[error("malformed value from the token: {0}")]
    Malformed(&'static str),
}

fn p11<T>(op: &'static str, r: cryptoki::error::Result<T>) -> Result<T, HsmError> {
    r.map_err(|source| HsmError::Call { op, source })
}

/// Where the PIN comes from.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PinSource {
    /// A file holding the user PIN (trailing newline ignored).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// The name of an environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
}

impl PinSource {
    fn read(&self) -> Result<AuthPin, HsmError> {
        if let Some(f) = &self.pin_file {
            let s = std::fs::read_to_string(f).map_err(|source| HsmError::PinFile {
                path: f.clone(),
                source,
            })?;
            return Ok(AuthPin::new(s.trim_end_matches(['\n', '\r']).into()));
        }
        if let Some(v) = &self.pin_env {
            let s = std::env::var(v).map_err(|_| HsmError::Pin(format!("${v} is not set")))?;
            return Ok(AuthPin::new(s.into()));
        }
        Err(HsmError::Pin("set pin_file or pin_env".into()))
    }
}

/// How to reach the token and which objects to use.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Token label (slot ids are not stable; SoftHSM assigns random ones).
    pub token_label: String,
    #[serde(flatten)]
    pub pin: PinSource,
    /// Label of the AES-256 master key.
    #[serde(default = "default_mk_label")]
    pub master_key_label: String,
    /// Label of the P-384 receipt-signing key pair.
    #[serde(default = "default_receipt_label")]
    pub receipt_key_label: String,
}

fn default_mk_label() -> String {
    "keyward-master".into()
}
fn default_receipt_label() -> String {
    "keyward-receipt".into()
}

/// The label of master-key version `version`: version 1 is the configured label itself (the
/// key `krs init` made, so deployments from before rotation keep working unchanged); version
/// N >= 2 is `LABEL.vN`. Its `CKA_ID` is `keyward-mk-N`.
pub fn mk_label(base: &str, version: u32) -> String {
    if version <= 1 {
        base.to_string()
    } else {
        format!("{base}.v{version}")
    }
}

/// The version a master-key label names under `base` (see [`mk_label`]).
pub fn mk_version_of(base: &str, label: &str) -> Option<u32> {
    if label == base {
        return Some(1);
    }
    let v: u32 = label.strip_prefix(base)?.strip_prefix(".v")?.parse().ok()?;
    (v >= 2 && label == mk_label(base, v)).then_some(v)
}

/// What the token can do for KRP/1, found with `C_GetMechanismInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub ecdh_derive: bool,
    pub aes_encrypt_data_derive: bool,
    pub aes_key_wrap: bool,
    pub ecdsa: bool,
}

impl Capabilities {
    /// True when the whole release can happen inside the token.
    pub fn in_hsm_wrap(&self) -> bool {
        self.ecdh_derive && self.aes_encrypt_data_derive && self.aes_key_wrap
    }
}

/// The result of an in-HSM release.
pub struct HsmWrap {
    /// The HSM's ephemeral public key, SEC1 uncompressed (97 bytes).
    pub hsm_epk: Vec<u8>,
    /// RFC 3394 wrap of the master key (40 bytes).
    pub wrapped: Vec<u8>,
}

/// What the KRS needs from whatever holds its keys: a PKCS#11 token ([`Hsm`]) or, for the
/// demo on machines without SoftHSM, the software stand-in in `release::softkeys`.
pub trait KeyBackend: Send {
    /// Mechanisms available for the release wrap.
    fn capabilities(&self) -> Capabilities;
    /// The master key's identifier (label).
    fn master_key_id(&self) -> &str;
    /// The receipt public key, SEC1 uncompressed.
    fn receipt_public_key(&self) -> Result<Vec<u8>, HsmError>;
    /// Sign a SHA-384 digest with the receipt key: 96 bytes `r || s`.
    fn sign_digest(&self, digest: &[u8; 48]) -> Result<Vec<u8>, HsmError>;
    /// Wrap the master key to `agent_epk`, bound to `transcript`.
    fn release_wrap(&self, agent_epk: &[u8], transcript: &[u8]) -> Result<HsmWrap, HsmError>;
    /// The HPKE fallback's one-call export of the master key.
    fn export_master_for_fallback(&self) -> Result<Zeroizing<[u8; 32]>, HsmError>;
    /// The master-key versions present in the token, ascending (default: version 1 only).
    fn master_key_versions(&self) -> Result<Vec<u32>, HsmError> {
        Ok(vec![1])
    }
    /// [`KeyBackend::release_wrap`] of master-key version `version`.
    fn release_wrap_version(
        &self,
        version: u32,
        agent_epk: &[u8],
        transcript: &[u8],
    ) -> Result<HsmWrap, HsmError> {
        match version {
            1 => self.release_wrap(agent_epk, transcript),
            v => Err(HsmError::MissingKey(mk_label(self.master_key_id(), v))),
        }
    }
    /// [`KeyBackend::export_master_for_fallback`] of master-key version `version`.
    fn export_master_version(&self, version: u32) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        match version {
            1 => self.export_master_for_fallback(),
            v => Err(HsmError::MissingKey(mk_label(self.master_key_id(), v))),
        }
    }
}

impl KeyBackend for Hsm {
    fn capabilities(&self) -> Capabilities {
        Hsm::capabilities(self)
    }
    fn master_key_id(&self) -> &str {
        Hsm::master_key_id(self)
    }
    fn receipt_public_key(&self) -> Result<Vec<u8>, HsmError> {
        Hsm::receipt_public_key(self)
    }
    fn sign_digest(&self, digest: &[u8; 48]) -> Result<Vec<u8>, HsmError> {
        Hsm::sign_digest(self, digest)
    }
    fn release_wrap(&self, agent_epk: &[u8], transcript: &[u8]) -> Result<HsmWrap, HsmError> {
        Hsm::release_wrap(self, agent_epk, transcript)
    }
    fn export_master_for_fallback(&self) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        Hsm::export_master_for_fallback(self)
    }
    fn master_key_versions(&self) -> Result<Vec<u32>, HsmError> {
        Hsm::master_key_versions(self)
    }
    fn release_wrap_version(
        &self,
        version: u32,
        agent_epk: &[u8],
        transcript: &[u8],
    ) -> Result<HsmWrap, HsmError> {
        Hsm::release_wrap_version(self, version, agent_epk, transcript)
    }
    fn export_master_version(&self, version: u32) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        Hsm::export_master_version(self, version)
    }
}

/// An open, logged-in session on the KRS token.
pub struct Hsm {
    // Field order matters: the session must close before the context finalizes.
    session: Session,
    slot: Slot,
    ctx: Pkcs11,
    cfg: HsmConfig,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("token", &self.cfg.token_label)
            .finish()
    }
}

impl Hsm {
    /// Load the module, find the token by label, open a R/W session and log in.
    pub fn open(cfg: &HsmConfig) -> Result<Self, HsmError> {
        let ctx = Pkcs11::new(&cfg.module).map_err(|source| HsmError::Module {
            path: cfg.module.display().to_string(),
            source,
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            // Another Hsm in this process already initialized the library.
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(source) => {
                return Err(HsmError::Call {
                    op: "C_Initialize",
                    source,
                })
            }
        }
        let mut found = None;
        for slot in p11("C_GetSlotList", ctx.get_slots_with_token())? {
            let info = p11("C_GetTokenInfo", ctx.get_token_info(slot))?;
            if info.label().trim_end() == cfg.token_label {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| HsmError::NoToken(cfg.token_label.clone()))?;
        let session = p11("C_OpenSession", ctx.open_rw_session(slot))?;
        let pin = cfg.pin.read()?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(source) => {
                return Err(HsmError::Call {
                    op: "C_Login",
                    source,
                })
            }
        }
        Ok(Self {
            session,
            slot,
            ctx,
            cfg: cfg.clone(),
        })
    }

    /// Probe the mechanisms KRP/1 needs.
    pub fn capabilities(&self) -> Capabilities {
        let info = |m: MechanismType| self.ctx.get_mechanism_info(self.slot, m).ok();
        Capabilities {
            ecdh_derive: info(MechanismType::ECDH1_DERIVE).is_some_and(|i| i.derive()),
            aes_encrypt_data_derive: info(MechanismType::AES_CBC_ENCRYPT_DATA)
                .is_some_and(|i| i.derive()),
            aes_key_wrap: info(MechanismType::AES_KEY_WRAP).is_some_and(|i| i.wrap()),
            ecdsa: info(MechanismType::ECDSA).is_some_and(|i| i.sign()),
        }
    }

    fn find(&self, class: ObjectClass, label: &str) -> Result<Option<ObjectHandle>, HsmError> {
        let objs = p11(
            "C_FindObjects",
            self.session.find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ]),
        )?;
        Ok(objs.into_iter().next())
    }

    fn need(&self, class: ObjectClass, label: &str) -> Result<ObjectHandle, HsmError> {
        self.find(class, label)?
            .ok_or_else(|| HsmError::MissingKey(label.to_string()))
    }

    /// Create the master key (AES-256, sensitive, extractable only by wrapping) and the P-384
    /// receipt key pair as token objects. Refuses to overwrite existing keys.
    pub fn init_keys(&self) -> Result<(), HsmError> {
        let mk = &self.cfg.master_key_label;
        let rk = &self.cfg.receipt_key_label;
        if self.find(ObjectClass::SECRET_KEY, mk)?.is_some() {
            return Err(HsmError::Exists(mk.clone()));
        }
        if self.find(ObjectClass::PRIVATE_KEY, rk)?.is_some() {
            return Err(HsmError::Exists(rk.clone()));
        }
        self.generate_master(1)?;
        p11(
            "C_GenerateKeyPair(receipt)",
            self.session.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::EcParams(P384_PARAMS.to_vec()),
                    Attribute::Verify(true),
                    Attribute::Label(rk.as_bytes().to_vec()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::Label(rk.as_bytes().to_vec()),
                ],
            ),
        )?;
        Ok(())
    }

    /// Generate master-key version `version` (AES-256, sensitive, extractable only by
    /// wrapping: the attributes `krs init` gives version 1). Refuses an existing label.
    fn generate_master(&self, version: u32) -> Result<(), HsmError> {
        let label = mk_label(&self.cfg.master_key_label, version);
        if self.find(ObjectClass::SECRET_KEY, &label)?.is_some() {
            return Err(HsmError::Exists(label));
        }
        p11(
            "C_GenerateKey(master)",
            self.session.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(false),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(format!("keyward-mk-{version}").into_bytes()),
                ],
            ),
        )?;
        Ok(())
    }

    /// The master-key versions present in the token (objects labelled per [`mk_label`]),
    /// ascending.
    pub fn master_key_versions(&self) -> Result<Vec<u32>, HsmError> {
        let objs = p11(
            "C_FindObjects",
            self.session
                .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)]),
        )?;
        let mut out = Vec::new();
        for o in objs {
            let attrs = p11(
                "C_GetAttributeValue(CKA_LABEL)",
                self.session.get_attributes(o, &[AttributeType::Label]),
            )?;
            for a in attrs {
                if let Attribute::Label(l) = a {
                    if let Some(v) = std::str::from_utf8(&l)
                        .ok()
                        .and_then(|l| mk_version_of(&self.cfg.master_key_label, l))
                    {
                        out.push(v);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Make master-key version N+1 (N the newest present) in the token; returns N+1.
    pub fn rotate_master(&self) -> Result<u32, HsmError> {
        let newest = self
            .master_key_versions()?
            .last()
            .copied()
            .ok_or_else(|| HsmError::MissingKey(self.cfg.master_key_label.clone()))?;
        let next = newest + 1;
        self.generate_master(next)?;
        Ok(next)
    }

    /// Destroy master-key version `version` (`C_DestroyObject`): everything sealed under it
    /// only is gone for good.
    pub fn destroy_master(&self, version: u32) -> Result<(), HsmError> {
        let mk = self.need(
            ObjectClass::SECRET_KEY,
            &mk_label(&self.cfg.master_key_label, version),
        )?;
        p11("C_DestroyObject(master)", self.session.destroy_object(mk))
    }

    /// The master key's identifier (label) and version.
    pub fn master_key_id(&self) -> &str {
        &self.cfg.master_key_label
    }

    /// Try to read the master key's `CKA_VALUE`; succeeds only on a misconfigured token.
    /// Exists so tests and `krs init` can prove the key is not readable.
    pub fn try_read_master_value(&self) -> Result<Vec<u8>, HsmError> {
        let mk = self.need(ObjectClass::SECRET_KEY, &self.cfg.master_key_label)?;
        let attrs = p11(
            "C_GetAttributeValue(CKA_VALUE)",
            self.session.get_attributes(mk, &[AttributeType::Value]),
        )?;
        for a in attrs {
            if let Attribute::Value(v) = a {
                return Ok(v);
            }
        }
        Err(HsmError::Malformed("CKA_VALUE not returned"))
    }

    /// The master key's `CKA_SENSITIVE` flag.
    pub fn master_is_sensitive(&self) -> Result<bool, HsmError> {
        let mk = self.need(ObjectClass::SECRET_KEY, &self.cfg.master_key_label)?;
        let attrs = p11(
            "C_GetAttributeValue(CKA_SENSITIVE)",
            self.session.get_attributes(mk, &[AttributeType::Sensitive]),
        )?;
        Ok(attrs
            .iter()
            .any(|a| matches!(a, Attribute::Sensitive(true))))
    }

    /// The receipt public key as SEC1 uncompressed bytes (97).
    pub fn receipt_public_key(&self) -> Result<Vec<u8>, HsmError> {
        let pk = self.need(ObjectClass::PUBLIC_KEY, &self.cfg.receipt_key_label)?;
        self.ec_point(pk)
    }

    fn ec_point(&self, obj: ObjectHandle) -> Result<Vec<u8>, HsmError> {
        let attrs = p11(
            "C_GetAttributeValue(CKA_EC_POINT)",
            self.session.get_attributes(obj, &[AttributeType::EcPoint]),
        )?;
        for a in attrs {
            if let Attribute::EcPoint(v) = a {
                return unwrap_ec_point(&v);
            }
        }
        Err(HsmError::Malformed("CKA_EC_POINT not returned"))
    }

    /// Sign a SHA-384 digest with the receipt key: 96 bytes `r || s`.
    pub fn sign_digest(&self, digest: &[u8; 48]) -> Result<Vec<u8>, HsmError> {
        let sk = self.need(ObjectClass::PRIVATE_KEY, &self.cfg.receipt_key_label)?;
        let sig = p11(
            "C_Sign(CKM_ECDSA)",
            self.session.sign(&Mechanism::Ecdsa, sk, digest),
        )?;
        if sig.len() != 96 {
            return Err(HsmError::Malformed("ECDSA signature is not 96 bytes"));
        }
        Ok(sig)
    }

    /// The in-HSM release: wrap the master key to a key derived from ECDH with the agent's
    /// ephemeral key `agent_epk` (SEC1 uncompressed) and bound to `transcript` (T).
    pub fn release_wrap(&self, agent_epk: &[u8], transcript: &[u8]) -> Result<HsmWrap, HsmError> {
        self.release_wrap_version(1, agent_epk, transcript)
    }

    /// [`Hsm::release_wrap`] of master-key version `version`.
    pub fn release_wrap_version(
        &self,
        version: u32,
        agent_epk: &[u8],
        transcript: &[u8],
    ) -> Result<HsmWrap, HsmError> {
        let caps = self.capabilities();
        if !caps.in_hsm_wrap() {
            return Err(HsmError::Mechanism(
                "ECDH1_DERIVE + AES_CBC_ENCRYPT_DATA + AES_KEY_WRAP",
            ));
        }
        let mk = self.need(
            ObjectClass::SECRET_KEY,
            &mk_label(&self.cfg.master_key_label, version),
        )?;
        let (epub, epriv) = p11(
            "C_GenerateKeyPair(ephemeral)",
            self.session.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(false),
                    Attribute::EcParams(P384_PARAMS.to_vec()),
                ],
                &[
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Derive(true),
                ],
            ),
        )?;
        let mut temps = vec![epub, epriv];
        let result = self.release_steps(mk, epub, epriv, agent_epk, transcript, &mut temps);
        for h in temps {
            // Session objects vanish with the session anyway; a failed destroy is not fatal.
            let _ = self.session.destroy_object(h);
        }
        result
    }

    fn release_steps(
        &self,
        mk: ObjectHandle,
        epub: ObjectHandle,
        epriv: ObjectHandle,
        agent_epk: &[u8],
        transcript: &[u8],
        temps: &mut Vec<ObjectHandle>,
    ) -> Result<HsmWrap, HsmError> {
        let hsm_epk = self.ec_point(epub)?;
        let aes_template = |derive: bool, wrap: bool| {
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Derive(derive),
                Attribute::Wrap(wrap),
            ]
        };
        let k_ecdh = p11(
            "C_DeriveKey(CKM_ECDH1_DERIVE)",
            self.session.derive_key(
                &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), agent_epk)),
                epriv,
                &aes_template(true, false),
            ),
        )?;
        temps.push(k_ecdh);
        let bind = keyward_krp::wrap_binding(transcript);
        let k_wrap = p11(
            "C_DeriveKey(CKM_AES_CBC_ENCRYPT_DATA)",
            self.session.derive_key(
                &Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new([0u8; 16], &bind)),
                k_ecdh,
                &aes_template(false, true),
            ),
        )?;
        temps.push(k_wrap);
        let wrapped = p11(
            "C_WrapKey(CKM_AES_KEY_WRAP)",
            self.session.wrap_key(&Mechanism::AesKeyWrap, k_wrap, mk),
        )?;
        Ok(HsmWrap { hsm_epk, wrapped })
    }

    /// The documented fallback for tokens that cannot wrap to an external EC key: the master
    /// key comes into this process for one call. It is wrapped under a throw-away session AES
    /// key whose value is read back, then unwrapped in software.
    pub fn export_master_for_fallback(&self) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        self.export_master_version(1)
    }

    /// [`Hsm::export_master_for_fallback`] of master-key version `version`.
    pub fn export_master_version(&self, version: u32) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        if !self.capabilities().aes_key_wrap {
            return Err(HsmError::Mechanism("AES_KEY_WRAP"));
        }
        let mk = self.need(
            ObjectClass::SECRET_KEY,
            &mk_label(&self.cfg.master_key_label, version),
        )?;
        let tk = p11(
            "C_GenerateKey(transport)",
            self.session.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                    Attribute::Wrap(true),
                ],
            ),
        )?;
        let out = (|| {
            let wrapped = p11(
                "C_WrapKey(transport)",
                self.session.wrap_key(&Mechanism::AesKeyWrap, tk, mk),
            )?;
            let attrs = p11(
                "C_GetAttributeValue(transport)",
                self.session.get_attributes(tk, &[AttributeType::Value]),
            )?;
            let mut tkv = Zeroizing::new([0u8; 32]);
            for a in attrs {
                if let Attribute::Value(mut v) = a {
                    if v.len() == 32 {
                        tkv.copy_from_slice(&v);
                    }
                    zeroize::Zeroize::zeroize(&mut v);
                }
            }
            let kek = aes_kw::KekAes256::from(*tkv);
            let mut mkv = Zeroizing::new([0u8; 32]);
            kek.unwrap(&wrapped, &mut mkv[..])
                .map_err(|_| HsmError::Malformed("transport unwrap failed"))?;
            Ok(mkv)
        })();
        let _ = self.session.destroy_object(tk);
        out
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the SEC1 point; some tokens return it raw.
fn unwrap_ec_point(v: &[u8]) -> Result<Vec<u8>, HsmError> {
    match v {
        [0x04, 0x61, rest @ ..] if rest.len() == 0x61 => Ok(rest.to_vec()),
        [0x04, 0x81, 0x61, rest @ ..] if rest.len() == 0x61 => Ok(rest.to_vec()),
        [0x04, ..] if v.len() == 97 => Ok(v.to_vec()),
        _ => Err(HsmError::Malformed("CKA_EC_POINT is not a P-384 point")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mk_labels_round_trip() {
        assert_eq!(mk_label("keyward-master", 1), "keyward-master");
        assert_eq!(mk_label("keyward-master", 3), "keyward-master.v3");
        assert_eq!(mk_version_of("keyward-master", "keyward-master"), Some(1));
        assert_eq!(
            mk_version_of("keyward-master", "keyward-master.v3"),
            Some(3)
        );
        for bad in [
            "keyward-master.v1",
            "keyward-master.v03",
            "keyward-masterx",
            "other",
        ] {
            assert_eq!(mk_version_of("keyward-master", bad), None, "{bad}");
        }
    }

    #[test]
    fn ec_point_forms() {
        let mut raw = vec![0x04];
        raw.extend([7u8; 96]);
        let mut der = vec![0x04, 0x61];
        der.extend(&raw);
        assert_eq!(unwrap_ec_point(&der).unwrap(), raw);
        assert_eq!(unwrap_ec_point(&raw).unwrap(), raw);
        assert!(unwrap_ec_point(&raw[..50]).is_err());
    }

    #[test]
    fn a_failed_call_keeps_the_token_error_as_its_source() {
        use cryptoki::context::Function;
        use cryptoki::error::{Error, RvError};
        use std::error::Error as _;
        let e = p11::<()>(
            "C_WrapKey",
            Err(Error::Pkcs11(RvError::SessionClosed, Function::WrapKey)),
        )
        .unwrap_err();
        // The message names the call once; the token's answer is the source, not a copy.
        assert_eq!(e.to_string(), "PKCS#11 C_WrapKey");
        let src = e.source().and_then(|s| s.downcast_ref::<Error>());
        assert!(
            matches!(src, Some(Error::Pkcs11(RvError::SessionClosed, _))),
            "{src:?}"
        );
    }

    #[test]
    fn a_module_that_does_not_load_keeps_the_loader_error() {
        use std::error::Error as _;
        let cfg = HsmConfig {
            module: "/nonexistent/libnothing.so".into(),
            token_label: "t".into(),
            pin: PinSource::default(),
            master_key_label: default_mk_label(),
            receipt_key_label: default_receipt_label(),
        };
        let Err(e) = Hsm::open(&cfg) else {
            panic!("a missing module opened")
        };
        assert!(matches!(e, HsmError::Module { .. }), "{e}");
        assert!(!e.to_string().contains("No such file"), "{e}");
        let src = e
            .source()
            .and_then(|s| s.downcast_ref::<cryptoki::error::Error>());
        assert!(
            matches!(src, Some(cryptoki::error::Error::LibraryLoading(_))),
            "{src:?}"
        );
    }

    #[test]
    fn an_unreadable_pin_file_keeps_the_io_error() {
        use std::error::Error as _;
        let pin = PinSource {
            pin_file: Some("/nonexistent/pin".into()),
            pin_env: None,
        };
        let Err(e) = pin.read() else {
            panic!("a missing PIN file was read")
        };
        assert_eq!(e.to_string(), "HSM PIN: reading /nonexistent/pin");
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound),
            "{io:?}"
        );
    }
}
