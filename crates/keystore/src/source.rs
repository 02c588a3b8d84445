//! Where the master key comes from: the seam between the boot stages that obtain it (a key file,
//! or the attested release from the KRS) and the key store that it unseals. The XKS request path
//! never sees this.

use std::collections::BTreeMap;

use keyward_secret::Key32;

use crate::Freshness;

/// The master keys one boot holds, by version: the current one (new stores and re-seals use
/// it) and any older version the key-release service still released because the store may
/// be sealed under it. Versions start at 1 (a key file, or a KRS that never rotated).
pub struct MasterKeys {
    current: u32,
    keys: BTreeMap<u32, Key32>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys")
            .field("current", &self.current)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MasterKeys {
    /// One key, version 1 (a key file, or an agent or KRS from before rotation).
    pub fn single(key: Key32) -> Self {
        Self::new(crate::model::MK_VERSION_1, key)
    }

    /// `key` as the current version `version`.
    pub fn new(version: u32, key: Key32) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(version, key);
        MasterKeys {
            current: version,
            keys,
        }
    }

    /// Add an older (or, for tests, any other) version.
    pub fn insert(&mut self, version: u32, key: Key32) {
        self.keys.insert(version, key);
    }

    /// The current version.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// The key of `version`, if this boot holds it.
    pub fn get(&self, version: u32) -> Option<&Key32> {
        self.keys.get(&version)
    }

    /// The versions held, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }
}

/// Errors while obtaining the master key: what failed, with the cause as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The key file cannot be read or written.
    #[error("master key file {}", path.display())]
    FileIo {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file is there but unusable (its mode, its length).
    #[error("master key file {}: {why}", path.display())]
    FileRefused {
        path: std::path::PathBuf,
        why: String,
    },
    /// Locked memory for the key could not be had.
    #[error("master key memory")]
    Memory(#[from] keyward_secret::SecretError),
    /// The attested key release failed (the boot agent's error, or a configuration it needs).
    #[error("key release")]
    Release(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// This source holds one master key and cannot release another version while running.
    #[error(
        "master_key.source = {0} holds a single master-key version: no other version can be \
         obtained while running"
    )]
    NoMoreVersions(&'static str),
}

/// Where the master key comes from. The XKS request path never sees this.
pub trait MasterKeySource: Send + Sync {
    /// Human-readable name for logs (`file`, `release`).
    fn name(&self) -> &'static str;
    /// Obtain the 32-byte master key.
    fn obtain(&self) -> Result<Key32, MasterKeyError>;
    /// Obtain the master key and how the key store's freshness is checked with it: the floor
    /// and anchor at the KRS that released it, or none (a key file: development only).
    fn obtain_fresh(&self) -> Result<(Key32, Freshness), MasterKeyError> {
        Ok((self.obtain()?, Freshness::Unanchored))
    }
    /// Obtain every master-key version released to this boot (the current one and the one
    /// the store may still be sealed under) with the freshness. Default: [`Self::obtain_fresh`]
    /// as version 1.
    fn obtain_keys(&self) -> Result<(MasterKeys, Freshness), MasterKeyError> {
        let (k, f) = self.obtain_fresh()?;
        Ok((MasterKeys::single(k), f))
    }
    /// Whether this source attests and releases (phases `attest` and `release` run) or simply
    /// reads a key (they are skipped, and the log says so).
    fn attested(&self) -> bool {
        false
    }
    /// While the appliance runs: obtain the master keys again (for an attested release, a
    /// fresh KRP/1 session with fresh evidence, judged by the KRS exactly as at boot), asking
    /// for the current version and the versions in `wanted`. The caller adds them to its key
    /// set ([`crate::Registry::learn_master_keys`]). Default: this source cannot (a key file
    /// holds one version).
    fn obtain_more(&self, wanted: &[u32]) -> Result<MasterKeys, MasterKeyError> {
        let _ = wanted;
        Err(MasterKeyError::NoMoreVersions(self.name()))
    }
}
