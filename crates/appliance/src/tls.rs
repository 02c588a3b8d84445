//! The appliance-managed TLS identity: when `[xks]` (or `[admin]`) names no TLS files, the
//! listeners serve an ECDSA P-256 key that is generated inside the VM on first start, stored
//! sealed under the master key in the key store, and never leaves the VM. Only its certificate
//! chain comes from outside (`keyward admin tls csr` / `tls install`), so the live attestation's
//! claim about the TLS endpoint (the SHA-256 of the served SPKI) stays true.
//!
//! Until a chain is installed, the listeners serve a self-signed certificate for the key,
//! made in memory at each start (names from `[xks] tls_names`, else `keyward-appliance`).
//! An installed chain is checked ([`check_chain`]: it parses, its leaf holds this key, the leaf
//! is valid now, each certificate is issued by the next one and its signature verifies), kept
//! in the authenticated log, and swapped in live through the listeners' [`CertHandle`].

use std::sync::{Arc, Mutex};

use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::SignatureScheme;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use zeroize::Zeroizing;

use keyward_admin::proto::TlsInfo;
use keyward_admin::AdminError;
use keyward_admin::TlsAdmin;
use keyward_keystore::{KeystoreError, Registry};
use keyward_xks::CertHandle;

/// The name of the self-signed certificate when `[xks] tls_names` is empty.
pub(crate) const DEFAULT_NAME: &str = "keyward-appliance";

/// Most certificates a chain may hold.
const MAX_CHAIN: usize = 10;

/// Why a certificate chain is refused. Every message is one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("the file holds a private key: install only the certificate chain (the key never leaves the appliance)")]
    HoldsPrivateKey,
    #[error("no PEM certificate found (give the chain as PEM, leaf first)")]
    Empty,
    #[error("the chain holds {0} certificates; at most {MAX_CHAIN} are accepted")]
    TooLong(usize),
    #[error("certificate {index} does not parse: {why}")]
    Parse { index: usize, why: String },
    #[error("the certificate's public key is not this appliance's TLS key")]
    WrongKey,
    #[error("the certificate is not valid now (valid from {not_before} to {not_after}; this appliance's clock reads {now})")]
    NotValidNow {
        not_before: String,
        not_after: String,
        now: String,
    },
    #[error("certificate {index} is not issued by certificate {next}: issuer `{issuer}`, next subject `{subject}`")]
    NotIssuedByNext {
        index: usize,
        next: usize,
        issuer: String,
        subject: String,
    },
    #[error(
        "the signature of certificate {index} does not verify with the key of certificate {next}"
    )]
    BadSignature { index: usize, next: usize },
    #[error("the signature algorithm of certificate {index} is not supported (use RSA PKCS#1, ECDSA P-256/P-384 or Ed25519)")]
    UnsupportedSignature { index: usize },
}

/// Errors of the managed TLS identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsIdError {
    #[error("{0}")]
    Chain(#[from] ChainError),
    #[error("invalid dns name `{0}`: a DNS name or an IP address is needed")]
    BadName(String),
    #[error("name at least one --dns-name")]
    NoName,
    #[error("key store: {0}")]
    Keystore(#[from] KeystoreError),
    #[error("TLS key: stored key is not a P-256 PKCS#8 key: {0}")]
    NotP256(#[source] p256::pkcs8::Error),
    #[error("TLS key: {0}")]
    Spki(#[source] p256::pkcs8::spki::Error),
    #[error("TLS key: {0}")]
    Signer(#[source] rustls::Error),
    #[error("TLS key: {0}")]
    Encode(#[source] p256::pkcs8::Error),
    #[error("TLS key: the new TLS key was not stored")]
    NotStored,
    #[error("TLS key: the key store holds no TLS key")]
    NoKey,
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
}

impl From<TlsIdError> for AdminError {
    fn from(e: TlsIdError) -> Self {
        match e {
            TlsIdError::Chain(_) | TlsIdError::BadName(_) | TlsIdError::NoName => {
                AdminError::BadRequest(e.to_string())
            }
            TlsIdError::Keystore(k) => k.into(),
            other => {
                tracing::error!("appliance TLS identity: {other}");
                AdminError::Internal(other.to_string())
            }
        }
    }
}

/// One TLS key as the listeners use it: the signer (its private half only inside rustls/ring
/// and, sealed, in the key store) and its public key.
#[derive(Clone)]
struct Identity {
    key: Arc<dyn SigningKey>,
    /// DER SubjectPublicKeyInfo of the key.
    spki_der: Vec<u8>,
    /// Uncompressed SEC1 point (what rcgen signs certificates and CSRs with).
    public_point: Vec<u8>,
}

impl Identity {
    /// The identity of a PKCS#8 DER P-256 private key.
    fn of_pkcs8(pkcs8_der: &[u8]) -> Result<Identity, TlsIdError> {
        let secret = p256::SecretKey::from_pkcs8_der(pkcs8_der).map_err(TlsIdError::NotP256)?;
        let public = secret.public_key();
        drop(secret);
        let spki_der = public
            .to_public_key_der()
            .map_err(TlsIdError::Spki)?
            .as_bytes()
            .to_vec();
        let public_point = public.to_encoded_point(false).as_bytes().to_vec();
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(pkcs8_der),
        ))
        .map_err(TlsIdError::Signer)?;
        Ok(Identity {
            key,
            spki_der,
            public_point,
        })
    }

    fn spki_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.spki_der).into()
    }

    /// An rcgen key pair that signs through the rustls signer (rcgen never holds the private
    /// key).
    fn rcgen_key(&self) -> Result<rcgen::KeyPair, TlsIdError> {
        Ok(rcgen::KeyPair::from_remote(Box::new(RemoteSigner {
            key: self.key.clone(),
            public: self.public_point.clone(),
        }))?)
    }
}

/// What the listeners serve and what waits: changed together under one lock.
struct State {
    /// The key served now.
    current: Identity,
    /// When its chain was installed (`None`: a self-signed certificate is served).
    installed: Option<u64>,
    /// The key made by `tls csr --new-key`, served once a chain for it is installed.
    pending: Option<(Identity, u64)>,
    /// The key store's TLS material this state was last made from (what [`ManagedTls::follow`]
    /// compares with, so it rebuilds nothing while another member changed nothing).
    seen: Option<keyward_keystore::TlsMaterial>,
}

/// The appliance's TLS identity: the key served now (and a pending one after
/// `tls csr --new-key`), and the handle the listeners serve from.
pub(crate) struct ManagedTls {
    registry: Arc<Registry>,
    handle: CertHandle,
    /// The self-signed certificate's names (when the store holds no chain for the key).
    names: Vec<String>,
    /// Serialises csr --new-key, installs and follows (check, store, swap).
    state: Mutex<State>,
}

impl std::fmt::Debug for ManagedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedTls")
            .field("spki_sha256", &hex::encode(self.spki_sha256()))
            .finish_non_exhaustive()
    }
}

/// A fresh ECDSA P-256 private key as PKCS#8 DER (zeroized on drop).
fn generate_pkcs8() -> Result<Zeroizing<Vec<u8>>, TlsIdError> {
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let doc = secret.to_pkcs8_der().map_err(TlsIdError::Encode)?;
    Ok(Zeroizing::new(doc.as_bytes().to_vec()))
}

/// Days left until the `notAfter` of the DER certificate `leaf`, at Unix time `now` (rounded
/// down; negative once expired). `None` when it does not parse.
pub(crate) fn days_to_expiry_of(leaf: &[u8], now: i64) -> Option<i64> {
    let (_, c) = X509Certificate::from_der(leaf).ok()?;
    Some(
        c.validity()
            .not_after
            .timestamp()
            .saturating_sub(now)
            .div_euclid(86_400),
    )
}

/// Days left at which the expiry check logs a warning.
pub(crate) const EXPIRY_WARN_DAYS: i64 = 30;
/// Days left at which the expiry check logs an error.
pub(crate) const EXPIRY_ERROR_DAYS: i64 = 10;

impl ManagedTls {
    /// Load the identity from the key store, or generate and store it (sealed) on first start;
    /// serve the installed chain, or a self-signed certificate for `names` until there is one.
    /// Call after the key store is unsealed; does blocking I/O on first start.
    pub(crate) fn open(
        registry: Arc<Registry>,
        names: &[String],
    ) -> Result<ManagedTls, TlsIdError> {
        let material = match registry.tls_material() {
            Some(m) => m,
            None => {
                registry.set_tls_key(generate_pkcs8()?)?;
                tracing::info!("generated the appliance TLS key (ECDSA P-256), stored sealed");
                registry.tls_material().ok_or(TlsIdError::NotStored)?
            }
        };
        let current = Identity::of_pkcs8(&material.pkcs8_der)?;
        let pending = match &material.pending_pkcs8_der {
            Some(k) => Some((
                Identity::of_pkcs8(k)?,
                material.pending_created.unwrap_or(0),
            )),
            None => None,
        };

        let mut names: Vec<String> = names.to_vec();
        if names.is_empty() {
            names.push(DEFAULT_NAME.into());
        }
        let (served, installed) = match &material.chain_pem {
            Some(pem) => match certs_of(pem).and_then(|c| {
                leaf_matches(&c, &current.spki_der)?;
                Ok(c)
            }) {
                Ok(chain) => {
                    if let Err(e) = check_chain(pem, &current.spki_der, now_unix()) {
                        tracing::warn!("the installed TLS certificate chain: {e}; serving it anyway: install a new one with `keyward admin tls install`");
                    }
                    (chain, material.chain_installed.or(Some(0)))
                }
                Err(e) => {
                    tracing::error!("the installed TLS certificate chain is unusable ({e}); serving a self-signed certificate");
                    (vec![self_signed(&current, &names)?], None)
                }
            },
            None => (vec![self_signed(&current, &names)?], None),
        };
        let handle = CertHandle::new(CertifiedKey::new(served, current.key.clone()));
        Ok(ManagedTls {
            registry,
            handle,
            names,
            state: Mutex::new(State {
                current,
                installed,
                pending,
                seen: Some(material),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle the XKS (and admin) listeners serve from.
    pub(crate) fn handle(&self) -> CertHandle {
        self.handle.clone()
    }

    /// SHA-256 of the served key's DER SubjectPublicKeyInfo (what the live attestation binds,
    /// and what an admin profile's `server_spki_sha256` pins). Changes when a chain for the
    /// pending key is installed.
    pub(crate) fn spki_sha256(&self) -> [u8; 32] {
        self.lock().current.spki_sha256()
    }

    /// SHA-256 of the pending key's SPKI, when `tls csr --new-key` made one.
    #[cfg(test)]
    pub(crate) fn pending_spki_sha256(&self) -> Option<[u8; 32]> {
        self.lock().pending.as_ref().map(|(p, _)| p.spki_sha256())
    }

    /// A PEM PKCS#10 request for `names`, signed by the in-VM key. With `new_key`, a new key
    /// is generated first and stored sealed as the pending key (replacing an earlier pending
    /// one); the request is signed by it, and the current key and chain stay served until a
    /// chain for the new key is installed. Without, the request is for the current key.
    pub(crate) fn csr(&self, names: &[String], new_key: bool) -> Result<String, TlsIdError> {
        check_names(names)?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let mut state = self.lock();
        let signer = if new_key {
            let pkcs8 = generate_pkcs8()?;
            let id = Identity::of_pkcs8(&pkcs8)?;
            self.registry.set_tls_pending_key(pkcs8)?;
            state.seen = self.registry.tls_material();
            tracing::info!(
                "generated a new appliance TLS key (pending, spki_sha256={}), stored sealed; served once a chain for it is installed",
                hex::encode(id.spki_sha256())
            );
            state.pending = Some((id.clone(), u64::try_from(now_unix()).unwrap_or(0)));
            id
        } else {
            state.current.clone()
        };
        drop(state);
        let kp = signer.rcgen_key()?;
        Ok(params.serialize_request(&kp)?.pem()?)
    }

    /// Check `chain_pem`, store it (authenticated log) and serve it at once: a chain for the
    /// current key replaces its chain; a chain for the pending key makes that key the current
    /// one (the old key is dropped from the store) and the live attestation follows it.
    pub(crate) fn install(&self, chain_pem: &str) -> Result<TlsInfo, TlsIdError> {
        let mut state = self.lock();
        // The key store decides which keys a chain may be for (on a fleet another member may
        // have made the pending key, or already made it current); this member's state is
        // changed only once the chain is stored.
        let material = self.registry.tls_material().ok_or(TlsIdError::NoKey)?;
        let stored_current = Identity::of_pkcs8(&material.pkcs8_der)?;
        let stored_pending = match &material.pending_pkcs8_der {
            Some(k) => Some((
                Identity::of_pkcs8(k)?,
                material.pending_created.unwrap_or(0),
            )),
            None => None,
        };
        let leaf_spki = certs_of(chain_pem).ok().and_then(|c| {
            let (_, x) = X509Certificate::from_der(c.first()?.as_ref()).ok()?;
            Some(x.public_key().raw.to_vec())
        });
        let pending = stored_pending.as_ref().map(|(p, _)| p).filter(|p| {
            leaf_spki.as_deref() == Some(p.spki_der.as_slice())
                && p.spki_der != stored_current.spki_der
        });
        let (served, pending_after) = match pending {
            Some(pending) => {
                let certs = check_chain(chain_pem, &pending.spki_der, now_unix())?;
                self.registry.promote_tls_pending(&pem_of(&certs))?;
                self.handle
                    .install_certified(CertifiedKey::new(certs, pending.key.clone()));
                tracing::info!(
                    "xks tls key spki_sha256={}: the new key is served now (the previous key {} is dropped)",
                    hex::encode(pending.spki_sha256()),
                    hex::encode(stored_current.spki_sha256())
                );
                (pending.clone(), None)
            }
            None => {
                let certs = check_chain(chain_pem, &stored_current.spki_der, now_unix())?;
                // Stored re-encoded: certificates only, whatever else the file held.
                self.registry.install_tls_chain(&pem_of(&certs))?;
                self.handle
                    .install_certified(CertifiedKey::new(certs, stored_current.key.clone()));
                if stored_current.spki_der != state.current.spki_der {
                    tracing::info!(
                        "xks tls key spki_sha256={}: the key another member made current is served now",
                        hex::encode(stored_current.spki_sha256())
                    );
                }
                (stored_current, stored_pending)
            }
        };
        state.current = served;
        state.pending = pending_after;
        state.installed = Some(u64::try_from(now_unix()).unwrap_or(0));
        state.seen = self.registry.tls_material();
        let info = self.info_of(&state);
        drop(state);
        self.check_expiry();
        Ok(info)
    }

    /// Follow the key store: when another member of a fleet changed the TLS identity (a new
    /// pending key, a chain installed, a pending key promoted), serve what the store holds now
    /// on both listeners (the [`CertHandle`] is swapped: new handshakes get it, open
    /// connections keep theirs) and the live attestation follows, without a restart. Called by
    /// the fleet's follow loop after each re-read; cheap when nothing changed. A stored chain
    /// that is not for the stored key is not served (logged; the current one stays). Returns
    /// whether the served certificate changed.
    pub(crate) fn follow(&self) -> Result<bool, TlsIdError> {
        let Some(material) = self.registry.tls_material() else {
            return Ok(false);
        };
        let mut state = self.lock();
        if state.seen.as_ref() == Some(&material) {
            return Ok(false);
        }
        let parsed = Identity::of_pkcs8(&material.pkcs8_der).and_then(|c| {
            let p = match &material.pending_pkcs8_der {
                Some(k) => Some((
                    Identity::of_pkcs8(k)?,
                    material.pending_created.unwrap_or(0),
                )),
                None => None,
            };
            Ok((c, p))
        });
        let (stored_current, pending) = match parsed {
            Ok(x) => x,
            Err(e) => {
                // Once per change, not at every poll.
                state.seen = Some(material);
                return Err(e);
            }
        };
        let served = self.handle.current();
        let (certs, installed) = match &material.chain_pem {
            Some(pem) => match certs_of(pem).and_then(|c| {
                leaf_matches(&c, &stored_current.spki_der)?;
                Ok(c)
            }) {
                Ok(c) => (c, material.chain_installed.or(Some(0))),
                Err(e) => {
                    tracing::error!(
                        "the TLS certificate chain another member stored is not served ({e}); \
                         the current one stays"
                    );
                    state.pending = pending;
                    state.seen = Some(material);
                    return Ok(false);
                }
            },
            None if stored_current.spki_der == state.current.spki_der => {
                (served.cert.clone(), state.installed)
            }
            None => (vec![self_signed(&stored_current, &self.names)?], None),
        };
        let changed = stored_current.spki_der != state.current.spki_der || certs != served.cert;
        if changed {
            self.handle
                .install_certified(CertifiedKey::new(certs, stored_current.key.clone()));
            tracing::info!(
                "xks tls key spki_sha256={}: serving the TLS key and chain the shared key store \
                 holds now (changed by another member)",
                hex::encode(stored_current.spki_sha256())
            );
        }
        state.current = stored_current;
        state.installed = installed;
        state.pending = pending;
        state.seen = Some(material);
        drop(state);
        if changed {
            self.check_expiry();
        }
        Ok(changed)
    }

    /// When the certificate served now expires (Unix seconds; `None` if it does not parse).
    pub(crate) fn not_after_unix(&self) -> Option<i64> {
        leaf_not_after_unix(self.handle.current().cert.first()?.as_ref())
    }

    /// What is served now (and what is pending).
    pub(crate) fn show(&self) -> TlsInfo {
        let state = self.lock();
        self.info_of(&state)
    }

    /// Days left until the served leaf's `notAfter` (rounded down; negative once expired):
    /// for a metrics gauge.
    pub(crate) fn days_to_expiry(&self) -> Option<i64> {
        let current = self.handle.current();
        days_to_expiry_of(current.cert.first()?.as_ref(), now_unix())
    }

    /// Log the served certificate's expiry: an error with [`EXPIRY_ERROR_DAYS`] days or fewer
    /// left, a warning with [`EXPIRY_WARN_DAYS`] or fewer. Returns the days left.
    pub(crate) fn check_expiry(&self) -> Option<i64> {
        let days = self.days_to_expiry()?;
        let not_after = self.show().not_after;
        if days <= EXPIRY_ERROR_DAYS {
            tracing::error!(
                days_left = days,
                "the XKS TLS certificate expires in {days} days ({not_after}): renew it now (keyward admin tls csr, tls install)"
            );
        } else if days <= EXPIRY_WARN_DAYS {
            tracing::warn!(
                days_left = days,
                "the XKS TLS certificate expires in {days} days ({not_after}): renew it (keyward admin tls csr, tls install)"
            );
        }
        Some(days)
    }

    fn info_of(&self, state: &State) -> TlsInfo {
        let current = self.handle.current();
        let installed = state.installed;
        let mut info = TlsInfo {
            spki_sha256: hex::encode(state.current.spki_sha256()),
            subject: String::new(),
            issuer: String::new(),
            names: Vec::new(),
            not_after: String::new(),
            chain_installed: installed.is_some(),
            chain_len: current.cert.len(),
            installed_at: installed
                .filter(|t| *t > 0)
                .map(keyward_keystore::unix_rfc3339),
            days_left: None,
            pending_spki_sha256: state
                .pending
                .as_ref()
                .map(|(p, _)| hex::encode(p.spki_sha256())),
            pending_created: state
                .pending
                .as_ref()
                .map(|(_, t)| *t)
                .filter(|t| *t > 0)
                .map(keyward_keystore::unix_rfc3339),
        };
        if let Some(leaf) = current.cert.first() {
            if let Ok((_, c)) = X509Certificate::from_der(leaf.as_ref()) {
                info.subject = c.subject().to_string();
                info.issuer = c.issuer().to_string();
                info.names = san_names(&c);
                info.not_after = asn1_rfc3339(&c.validity().not_after);
            }
            info.days_left = days_to_expiry_of(leaf.as_ref(), now_unix());
        }
        info
    }
}

/// How often [`expiry_loop`] checks the served certificate's expiry.
pub(crate) const EXPIRY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Check the served certificate's expiry now and then every [`EXPIRY_CHECK_EVERY`] until
/// `stop` changes ([`ManagedTls::check_expiry`] logs it).
pub(crate) async fn expiry_loop(
    tls: Arc<ManagedTls>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tls.check_expiry();
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

impl TlsAdmin for ManagedTls {
    fn show(&self) -> Result<TlsInfo, AdminError> {
        Ok(ManagedTls::show(self))
    }
    fn csr(&self, names: &[String], new_key: bool) -> Result<String, AdminError> {
        Ok(ManagedTls::csr(self, names, new_key)?)
    }
    fn install(&self, chain_pem: &str) -> Result<TlsInfo, AdminError> {
        Ok(ManagedTls::install(self, chain_pem)?)
    }
}

/// rcgen's view of the in-VM key: signs with ECDSA P-256 SHA-256 through rustls (ring).
struct RemoteSigner {
    key: Arc<dyn SigningKey>,
    public: Vec<u8>,
}

impl rcgen::RemoteKeyPair for RemoteSigner {
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or(rcgen::Error::RemoteKeyError)?;
        signer.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The self-signed certificate served until a chain is installed.
fn self_signed(id: &Identity, names: &[String]) -> Result<CertificateDer<'static>, TlsIdError> {
    let kp = id.rcgen_key()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "keyward appliance (self-signed)",
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    Ok(params.self_signed(&kp)?.der().clone())
}

fn check_names(names: &[String]) -> Result<(), TlsIdError> {
    if names.is_empty() {
        return Err(TlsIdError::NoName);
    }
    match names.iter().find(|n| !keyward_config::valid_tls_name(n)) {
        Some(bad) => Err(TlsIdError::BadName(bad.clone())),
        None => Ok(()),
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A certificate time as RFC 3339.
fn asn1_rfc3339(t: &x509_parser::time::ASN1Time) -> String {
    t.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The DNS names and IP addresses of a certificate's SAN extension.
/// The expiry (Unix seconds) of a DER certificate.
pub(crate) fn leaf_not_after_unix(der: &[u8]) -> Option<i64> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(c.validity().not_after.timestamp())
}

/// The expiry (Unix seconds) of the first certificate of a PEM file.
pub(crate) fn pem_file_not_after_unix(path: &std::path::Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next()?.ok()?;
    leaf_not_after_unix(der.as_ref())
}

fn san_names(c: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The PEM certificates of `pem`, in order (other PEM items are skipped).
fn certs_of(pem: &str) -> Result<Vec<CertificateDer<'static>>, ChainError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .enumerate()
        .map(|(i, c)| {
            c.map_err(|e| ChainError::Parse {
                index: i + 1,
                why: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(certs)
}

fn leaf_matches(certs: &[CertificateDer<'_>], spki_der: &[u8]) -> Result<(), ChainError> {
    let leaf = certs.first().ok_or(ChainError::Empty)?;
    let (_, c) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| ChainError::Parse {
        index: 1,
        why: e.to_string(),
    })?;
    if c.public_key().raw != spki_der {
        return Err(ChainError::WrongKey);
    }
    Ok(())
}

/// How far in the future a leaf's `notBefore` may lie and still be installed (clock skew
/// between the signing CA and this VM).
pub(crate) const NOT_BEFORE_SLACK_SECS: i64 = 300;

/// Check a PEM chain (leaf first) for the key whose DER SPKI is `spki_der`, at Unix time
/// `now`: it parses, it holds no private key, the leaf's public key is this key, the leaf is
/// valid at `now` (its `notBefore` may be up to [`NOT_BEFORE_SLACK_SECS`] ahead), and each
/// certificate names the next as its issuer and its signature verifies with the next one's key.
/// The last certificate's own issuer (a root the clients trust) need not be included. Returns
/// the certificates.
pub fn check_chain(
    chain_pem: &str,
    spki_der: &[u8],
    now: i64,
) -> Result<Vec<CertificateDer<'static>>, ChainError> {
    if chain_pem.contains("PRIVATE KEY") {
        return Err(ChainError::HoldsPrivateKey);
    }
    let certs = certs_of(chain_pem)?;
    if certs.len() > MAX_CHAIN {
        return Err(ChainError::TooLong(certs.len()));
    }
    let parsed = certs
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der.as_ref())
                .map(|(_, c)| c)
                .map_err(|e| ChainError::Parse {
                    index: i + 1,
                    why: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = &parsed[0];
    if leaf.public_key().raw != spki_der {
        return Err(ChainError::WrongKey);
    }
    let at = x509_parser::time::ASN1Time::from_timestamp(now).map_err(|e| ChainError::Parse {
        index: 1,
        why: format!("time: {e}"),
    })?;
    // The signer's clock and ours differ: a VM's clock starts from a whole-second RTC and a
    // CA stamps `notBefore` with its own "now", so a certificate issued a moment ago can look
    // a second (or, without time sync, minutes) early here. Allow that much, as browsers do;
    // expiry is checked without slack.
    let early =
        x509_parser::time::ASN1Time::from_timestamp(now.saturating_add(NOT_BEFORE_SLACK_SECS))
            .map_err(|e| ChainError::Parse {
                index: 1,
                why: format!("time: {e}"),
            })?;
    let validity = leaf.validity();
    if validity.not_before > early || validity.not_after < at {
        return Err(ChainError::NotValidNow {
            not_before: asn1_rfc3339(&validity.not_before),
            not_after: asn1_rfc3339(&validity.not_after),
            now: asn1_rfc3339(&at),
        });
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        let (cert, next) = (&pair[0], &pair[1]);
        if cert.issuer().as_raw() != next.subject().as_raw() {
            return Err(ChainError::NotIssuedByNext {
                index: i + 1,
                next: i + 2,
                issuer: cert.issuer().to_string(),
                subject: next.subject().to_string(),
            });
        }
        match cert.verify_signature(Some(next.public_key())) {
            Ok(()) => {}
            Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
                return Err(ChainError::UnsupportedSignature { index: i + 1 })
            }
            Err(_) => {
                return Err(ChainError::BadSignature {
                    index: i + 1,
                    next: i + 2,
                })
            }
        }
    }
    Ok(certs)
}

/// DER certificates as PEM.
fn pem_of(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            // Base64 output is ASCII.
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_admin::Ca;
    use keyward_secret::Key32;

    fn registry(dir: &std::path::Path, mk: u8) -> Arc<Registry> {
        Arc::new(Registry::open_dir(dir, Key32::from_bytes(&[mk; 32]).unwrap()).unwrap())
    }

    fn leaf_for(ca: &Ca, tls: &ManagedTls, names: &[&str], days: i64) -> String {
        let csr = tls
            .csr(
                &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                false,
            )
            .unwrap();
        ca.sign_csr(&csr, days).unwrap()
    }

    #[test]
    fn key_is_created_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = ManagedTls::open(registry(dir.path(), 1), &[]).unwrap();
        let spki = a.spki_sha256();
        // The self-signed certificate holds exactly this SPKI (what attestation binds).
        let leaf = a.handle().current().cert[0].clone();
        assert_eq!(
            keyward_attest::live::spki_sha256_of_cert(leaf.as_ref()).unwrap(),
            spki
        );
        let info = a.show();
        assert_eq!(info.names, vec![DEFAULT_NAME.to_string()]);
        assert!(!info.chain_installed);
        drop(a);
        let b = ManagedTls::open(registry(dir.path(), 1), &["x.example".into()]).unwrap();
        assert_eq!(b.spki_sha256(), spki);
        assert_eq!(b.show().names, vec!["x.example".to_string()]);
        // Nothing on disk holds a private key in clear.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let text = std::fs::read(e.unwrap().path()).unwrap();
            assert!(!String::from_utf8_lossy(&text).contains("PRIVATE KEY"));
        }
    }

    #[test]
    fn csr_install_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let tls = ManagedTls::open(registry(dir.path(), 2), &[]).unwrap();
        let chain = leaf_for(&ca, &tls, &["xks.example.com", "127.0.0.1"], 30);
        let full = format!("{chain}{}", ca.cert_pem());
        let info = tls.install(&full).unwrap();
        assert!(info.chain_installed);
        assert_eq!(info.chain_len, 2);
        assert_eq!(info.names, vec!["xks.example.com", "127.0.0.1"]);
        assert!(info.issuer.contains("test CA"), "{info:?}");
        assert_eq!(info.spki_sha256, hex::encode(tls.spki_sha256()));
        let spki = tls.spki_sha256();
        // Compaction rewrites the log with the live records: the TLS identity among them.
        tls.registry.compact().unwrap();
        drop(tls);
        let again = ManagedTls::open(registry(dir.path(), 2), &[]).unwrap();
        assert_eq!(again.spki_sha256(), spki);
        let info = again.show();
        assert!(info.chain_installed && info.chain_len == 2, "{info:?}");
        assert_eq!(info.names[0], "xks.example.com");
    }

    #[test]
    fn another_master_key_cannot_open_the_sealed_key() {
        let dir = tempfile::tempdir().unwrap();
        let _ = ManagedTls::open(registry(dir.path(), 3), &[]).unwrap();
        assert!(matches!(
            Registry::open_dir(dir.path(), Key32::from_bytes(&[4; 32]).unwrap()),
            Err(KeystoreError::WrongMasterKey)
        ));
    }

    #[test]
    fn chain_checks_refuse_with_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let other_ca = Ca::new("other CA").unwrap();
        let tls = ManagedTls::open(registry(dir.path(), 5), &[]).unwrap();
        let spki = tls.lock().current.spki_der.clone();
        let now = now_unix();
        let good = leaf_for(&ca, &tls, &["a.example"], 30);
        assert_eq!(check_chain(&good, &spki, now).unwrap().len(), 1);
        let full = format!("{good}{}", ca.cert_pem());
        assert_eq!(check_chain(&full, &spki, now).unwrap().len(), 2);

        // Another key's certificate.
        let stranger = ca.server(&["a.example"], 30).unwrap().cert_pem;
        let e = check_chain(&stranger, &spki, now).unwrap_err();
        assert_eq!(e, ChainError::WrongKey);
        assert_eq!(
            e.to_string(),
            "the certificate's public key is not this appliance's TLS key"
        );
        // Expired.
        assert!(matches!(
            check_chain(&good, &spki, now + 40 * 86400),
            Err(ChainError::NotValidNow { .. })
        ));
        // Not yet valid: a clock a little behind the CA's is tolerated, minutes are not.
        let nb = {
            let der = certs_of(&good).unwrap();
            let (_, c) = X509Certificate::from_der(der[0].as_ref()).unwrap();
            c.validity().not_before.timestamp()
        };
        assert!(check_chain(&good, &spki, nb - 2).is_ok());
        assert!(check_chain(&good, &spki, nb - NOT_BEFORE_SLACK_SECS).is_ok());
        assert!(matches!(
            check_chain(&good, &spki, nb - NOT_BEFORE_SLACK_SECS - 1),
            Err(ChainError::NotValidNow { .. })
        ));
        // The next certificate is not the issuer.
        assert!(matches!(
            check_chain(&format!("{good}{}", other_ca.cert_pem()), &spki, now),
            Err(ChainError::NotIssuedByNext {
                index: 1,
                next: 2,
                ..
            })
        ));
        // Same name, other key: the signature does not verify.
        let impostor = Ca::new("test CA").unwrap();
        assert!(matches!(
            check_chain(&format!("{good}{}", impostor.cert_pem()), &spki, now),
            Err(ChainError::BadSignature { index: 1, next: 2 })
        ));
        // Garbage, private keys, nothing.
        assert_eq!(check_chain("hello", &spki, now), Err(ChainError::Empty));
        let with_key = format!("{good}{}", ca.key_pem().as_str());
        assert_eq!(
            check_chain(&with_key, &spki, now),
            Err(ChainError::HoldsPrivateKey)
        );
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            check_chain(broken, &spki, now),
            Err(ChainError::Parse { index: 1, .. })
        ));
        for e in [
            check_chain(&stranger, &spki, now).unwrap_err(),
            check_chain(&good, &spki, now + 40 * 86400).unwrap_err(),
        ] {
            assert_eq!(e.to_string().lines().count(), 1);
        }

        // A refused install changes nothing; a good one is served at once.
        let before = tls.handle().current().cert.clone();
        assert!(tls.install(&stranger).is_err());
        assert_eq!(tls.handle().current().cert, before);
        tls.install(&full).unwrap();
        assert_ne!(tls.handle().current().cert, before);
    }

    #[test]
    fn csr_names_are_checked_and_signed_by_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ManagedTls::open(registry(dir.path(), 6), &[]).unwrap();
        assert!(matches!(tls.csr(&[], false), Err(TlsIdError::NoName)));
        assert!(matches!(
            tls.csr(&["bad name".into()], false),
            Err(TlsIdError::BadName(_))
        ));
        let pem = tls.csr(&["a.example".into()], false).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        // Parsing verifies the CSR's signature.
        let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(
            params.public_key.der_bytes(),
            tls.lock().current.public_point.as_slice(),
            "the CSR carries the in-VM key"
        );
    }
    #[test]
    fn new_key_is_pending_until_its_chain_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let tls = ManagedTls::open(registry(dir.path(), 7), &[]).unwrap();
        let old = tls.spki_sha256();
        let old_chain = leaf_for(&ca, &tls, &["a.example"], 30);
        tls.install(&old_chain).unwrap();
        let served = tls.handle().current().cert.clone();

        let csr = tls.csr(&["a.example".into()], true).unwrap();
        let new = tls.pending_spki_sha256().expect("a pending key");
        assert_ne!(new, old);
        // Still served: the old key and its chain.
        assert_eq!(tls.spki_sha256(), old);
        assert_eq!(tls.handle().current().cert, served);
        let info = tls.show();
        assert_eq!(info.pending_spki_sha256, Some(hex::encode(new)));
        assert_eq!(info.spki_sha256, hex::encode(old));
        // The store holds both, and a reopen finds the pending key again.
        let m = tls.registry.tls_material().unwrap();
        assert!(m.pending_pkcs8_der.is_some());
        drop(tls);
        let tls = ManagedTls::open(registry(dir.path(), 7), &[]).unwrap();
        assert_eq!(tls.spki_sha256(), old);
        assert_eq!(tls.pending_spki_sha256(), Some(new));

        // A chain for neither key is refused; the old chain still installs for the old key.
        let stranger = ca.server(&["a.example"], 30).unwrap().cert_pem;
        assert!(matches!(
            tls.install(&stranger),
            Err(TlsIdError::Chain(ChainError::WrongKey))
        ));
        tls.install(&old_chain).unwrap();
        assert_eq!(tls.spki_sha256(), old);
        assert_eq!(tls.pending_spki_sha256(), Some(new));

        // The chain for the new key: served at once, the old key dropped.
        let leaf = ca.sign_csr(&csr, 30).unwrap();
        let info = tls.install(&leaf).unwrap();
        assert_eq!(info.spki_sha256, hex::encode(new));
        assert_eq!(info.pending_spki_sha256, None);
        assert_eq!(tls.spki_sha256(), new);
        assert_eq!(
            keyward_attest::live::spki_sha256_of_cert(tls.handle().current().cert[0].as_ref())
                .unwrap(),
            new
        );
        let m = tls.registry.tls_material().unwrap();
        assert!(m.pending_pkcs8_der.is_none());
        assert_eq!(Identity::of_pkcs8(&m.pkcs8_der).unwrap().spki_sha256(), new);
        // The old key's chain is refused now.
        assert!(tls.install(&old_chain).is_err());
        tls.registry.compact().unwrap();
        drop(tls);
        let tls = ManagedTls::open(registry(dir.path(), 7), &[]).unwrap();
        assert_eq!(tls.spki_sha256(), new);
        assert_eq!(tls.pending_spki_sha256(), None);
        assert!(tls.show().chain_installed);
    }

    #[test]
    fn days_to_expiry_counts_down() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let tls = ManagedTls::open(registry(dir.path(), 8), &[]).unwrap();
        // The self-signed certificate: ten years.
        assert!(tls.days_to_expiry().unwrap() > 3000);
        let leaf = leaf_for(&ca, &tls, &["a.example"], 5);
        tls.install(&leaf).unwrap();
        let d = tls.days_to_expiry().unwrap();
        assert!((4..=5).contains(&d), "{d}");
        assert_eq!(tls.show().days_left, Some(d));
        let der = certs_of(&leaf).unwrap();
        let now = now_unix();
        assert_eq!(
            days_to_expiry_of(der[0].as_ref(), now + 40 * 86400).map(|x| x < 0),
            Some(true)
        );
        assert_eq!(days_to_expiry_of(b"junk", now), None);
    }
    #[test]
    fn install_follows_the_key_store_not_a_stale_member() {
        // Two identities over one key store: members of a fleet.
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let reg = registry(dir.path(), 9);
        let a = ManagedTls::open(reg.clone(), &[]).unwrap();
        let b = ManagedTls::open(reg.clone(), &[]).unwrap();
        let old = a.spki_sha256();
        let old_chain = leaf_for(&ca, &a, &["a.example"], 30);
        // A makes the new key; B installs its chain and serves it.
        let csr = a.csr(&["a.example".into()], true).unwrap();
        let new = a.pending_spki_sha256().unwrap();
        assert_eq!(b.pending_spki_sha256(), None, "B has not seen it");
        b.install(&ca.sign_csr(&csr, 30).unwrap()).unwrap();
        assert_eq!(b.spki_sha256(), new);
        // A still serves the old key, but a chain for it is refused: the store dropped it.
        assert_eq!(a.spki_sha256(), old);
        assert!(matches!(
            a.install(&old_chain),
            Err(TlsIdError::Chain(ChainError::WrongKey))
        ));
        assert_eq!(a.spki_sha256(), old, "a refused install changes nothing");
        // A chain for the store's current key brings A onto it.
        let csr = b.csr(&["a.example".into()], false).unwrap();
        a.install(&ca.sign_csr(&csr, 30).unwrap()).unwrap();
        assert_eq!(a.spki_sha256(), new);
        assert_eq!(
            keyward_attest::live::spki_sha256_of_cert(a.handle().current().cert[0].as_ref())
                .unwrap(),
            new
        );
    }

    #[test]
    fn follow_serves_what_another_member_installed() {
        // Two identities over one key store, as two members of a fleet after a re-read.
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let reg = registry(dir.path(), 10);
        let a = ManagedTls::open(reg.clone(), &[]).unwrap();
        let b = ManagedTls::open(reg.clone(), &[]).unwrap();
        let old = b.spki_sha256();
        assert!(!b.follow().unwrap(), "nothing changed");
        // A chain for the current key, installed through A: B serves the same chain.
        a.install(&leaf_for(&ca, &a, &["a.example"], 30)).unwrap();
        assert_ne!(b.handle().current().cert, a.handle().current().cert);
        assert!(b.follow().unwrap());
        assert_eq!(b.handle().current().cert, a.handle().current().cert);
        assert!(b.show().chain_installed);
        assert!(!b.follow().unwrap(), "a second follow changes nothing");
        // A new pending key: B knows it, still serves the old key.
        let csr = a.csr(&["a.example".into()], true).unwrap();
        let served = b.handle().current().cert.clone();
        assert!(!b.follow().unwrap());
        assert_eq!(b.pending_spki_sha256(), a.pending_spki_sha256());
        assert_eq!(b.handle().current().cert, served);
        assert_eq!(b.spki_sha256(), old);
        // Its chain installed through A: B serves the new key, and its SPKI (what the live
        // attestation binds) follows.
        a.install(&ca.sign_csr(&csr, 30).unwrap()).unwrap();
        assert!(b.follow().unwrap());
        let new = a.spki_sha256();
        assert_ne!(new, old);
        assert_eq!(b.spki_sha256(), new);
        assert_eq!(b.pending_spki_sha256(), None);
        assert_eq!(
            keyward_attest::live::spki_sha256_of_cert(b.handle().current().cert[0].as_ref())
                .unwrap(),
            new
        );
        assert_eq!(b.show().spki_sha256, hex::encode(new));
    }
}
