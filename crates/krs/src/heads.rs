//! The KRS's book of store heads (`STATE/heads.json`): per deployment, the newest store head an
//! attested appliance recorded and the per-boot keys registered at release (the newest
//! [`KEEP_BOOT_KEYS`]).
//!
//! Every change is written to a temporary file, fsynced, renamed over the book and the
//! directory fsynced before the caller answers, so an acknowledged head survives a crash. A
//! book that cannot be read refuses the KRS's start: forgetting heads would let an older store
//! copy open again.
//!
//! [`HeadBook::set`] is the operator's override (`keyward krs heads set`, after a restore from a
//! backup): it moves a head anywhere, backwards included, and is taken only with the KRS
//! stopped (the state directory's lock, `state_lock.rs`), after the decision is in the release
//! log.
//!
//! A fleet sharing one store is one deployment with several registered boot keys: every
//! appliance advances the same head by compare-and-set on `prev`, so two writers never fork it
//! (the loser is refused, reloads and retries).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use keyward_krp::boot_key_id;
use keyward_krp::messages::StoreHead;

/// Boot keys kept per deployment (the newest; older boots can no longer advance the head).
pub(crate) const KEEP_BOOT_KEYS: usize = 32;

/// Errors reading or writing the book.
#[derive(Debug, thiserror::Error)]
pub enum HeadBookError {
    /// Reading or writing the book's file failed.
    #[error("head book {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The book could not be encoded as JSON.
    #[error("head book {}: encoding", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The file is not the book's JSON.
    #[error(
        "head book {} is not readable; refusing to start without the heads it holds",
        path.display()
    )]
    CorruptJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The JSON holds a value that is not a head (the message names it; no cause).
    #[error("head book {0} is not readable ({1}); refusing to start without the heads it holds")]
    Corrupt(String, String),
}

/// Why an update was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another store than the one this deployment holds a head for.
    OtherStore,
    /// `prev` is not the head held (a lost race, or an older store).
    NotExtending,
    /// The new head does not move forward.
    NotForward,
    /// The new head names an older master-key version than the one held (a store copy from
    /// before a re-seal).
    OlderMasterKey,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::OtherStore => "another store than the one this deployment's head names",
            Refusal::NotExtending => "prev is not the head the KRS holds (does not extend it)",
            Refusal::NotForward => "the new head's seq is not above the one held",
            Refusal::OlderMasterKey => {
                "the new head names an older master-key version than the one held"
            }
        })
    }
}

/// Outcome of [`HeadBook::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advanced {
    /// Recorded (and on disk).
    Recorded,
    /// `next` was already the head held (an idempotent retry).
    AlreadyHeld,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct HeadJson {
    store_id: String,
    seq: u64,
    chain_mac: String,
    /// The master-key version the store is sealed under (absent: 1, as in books written
    /// before master-key rotation).
    #[serde(default = "mk_v1", skip_serializing_if = "is_mk_v1")]
    mk_version: u32,
}

fn mk_v1() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_mk_v1(v: &u32) -> bool {
    *v == 1
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootKeyJson {
    /// Hex SEC1 public key.
    public_key: String,
    /// Unix seconds of the release that registered it.
    registered: u64,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentJson {
    #[serde(default)]
    head: Option<HeadJson>,
    /// Oldest first.
    #[serde(default)]
    boot_keys: Vec<BootKeyJson>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BookJson {
    v: u32,
    deployments: BTreeMap<String, DeploymentJson>,
}

#[derive(Clone)]
struct BootKeyEntry {
    id: [u8; 32],
    public: Vec<u8>,
    registered: u64,
}

#[derive(Clone, Default)]
struct DeploymentHeads {
    head: Option<StoreHead>,
    boot_keys: Vec<BootKeyEntry>,
}

/// One deployment as [`HeadBook::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentEntry {
    /// The deployment's name.
    pub name: String,
    /// The head held (`None`: no store anchored yet).
    pub head: Option<StoreHead>,
    /// Boot keys registered (the newest [`KEEP_BOOT_KEYS`]).
    pub boot_keys: usize,
    /// When the newest was registered, Unix seconds.
    pub last_release: Option<u64>,
}

/// The book, in memory and on disk.
pub struct HeadBook {
    path: PathBuf,
    state: Mutex<BTreeMap<String, DeploymentHeads>>,
}

fn to_json(m: &BTreeMap<String, DeploymentHeads>) -> BookJson {
    BookJson {
        v: 1,
        deployments: m
            .iter()
            .map(|(k, d)| {
                (
                    k.clone(),
                    DeploymentJson {
                        head: d.head.as_ref().map(|h| HeadJson {
                            store_id: hex::encode(&h.store_id),
                            seq: h.seq,
                            chain_mac: hex::encode(&h.chain_mac),
                            mk_version: h.mk_version,
                        }),
                        boot_keys: d
                            .boot_keys
                            .iter()
                            .map(|b| BootKeyJson {
                                public_key: hex::encode(&b.public),
                                registered: b.registered,
                            })
                            .collect(),
                    },
                )
            })
            .collect(),
    }
}

fn from_json(b: BookJson) -> Result<BTreeMap<String, DeploymentHeads>, String> {
    if b.v != 1 {
        return Err(format!("version {}", b.v));
    }
    let mut out = BTreeMap::new();
    for (name, d) in b.deployments {
        let head = match d.head {
            Some(h) => Some(StoreHead {
                store_id: hex::decode(&h.store_id).map_err(|_| format!("{name}: store_id"))?,
                seq: h.seq,
                chain_mac: hex::decode(&h.chain_mac).map_err(|_| format!("{name}: chain_mac"))?,
                mk_version: h.mk_version,
            }),
            None => None,
        };
        let mut boot_keys = Vec::new();
        for k in d.boot_keys {
            let public = hex::decode(&k.public_key).map_err(|_| format!("{name}: boot key"))?;
            boot_keys.push(BootKeyEntry {
                id: boot_key_id(&public),
                public,
                registered: k.registered,
            });
        }
        out.insert(name, DeploymentHeads { head, boot_keys });
    }
    Ok(out)
}

impl HeadBook {
    /// Open the book at `path` (empty when the file does not exist).
    pub fn open(path: &Path) -> Result<Self, HeadBookError> {
        let shown = path.display().to_string();
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let j: BookJson = serde_json::from_slice(&bytes).map_err(|source| {
                    HeadBookError::CorruptJson {
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
                from_json(j).map_err(|e| HeadBookError::Corrupt(shown.clone(), e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(HeadBookError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeploymentHeads>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write `m` durably: temp file, fsync, rename, fsync the directory.
    fn persist(&self, m: &BTreeMap<String, DeploymentHeads>) -> Result<(), HeadBookError> {
        use std::io::Write;
        let io = |source: std::io::Error| HeadBookError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes =
            serde_json::to_vec_pretty(&to_json(m)).map_err(|source| HeadBookError::Encode {
                path: self.path.clone(),
                source,
            })?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// The head held for `deployment`.
    pub fn head(&self, deployment: &str) -> Option<StoreHead> {
        self.lock().get(deployment).and_then(|d| d.head.clone())
    }

    /// Every deployment the book knows, by name.
    pub fn list(&self) -> Vec<DeploymentEntry> {
        self.lock()
            .iter()
            .map(|(name, d)| DeploymentEntry {
                name: name.clone(),
                head: d.head.clone(),
                boot_keys: d.boot_keys.len(),
                last_release: d.boot_keys.iter().map(|k| k.registered).max(),
            })
            .collect()
    }

    /// Set `deployment`'s head to `next` unconditionally (the operator's override after a
    /// restore; backwards or to another store), durably before `Ok`; the head it replaces. The
    /// registered boot keys stay: a running appliance still holding the newer store cannot
    /// advance from it (its `prev` is not the head held any more).
    pub fn set(
        &self,
        deployment: &str,
        next: &StoreHead,
    ) -> Result<Option<StoreHead>, HeadBookError> {
        let mut m = self.lock();
        let mut updated = m.clone();
        let d = updated.entry(deployment.to_string()).or_default();
        let old = d.head.replace(next.clone());
        self.persist(&updated)?;
        *m = updated;
        Ok(old)
    }

    /// Register a boot key for `deployment` (durably; the oldest beyond [`KEEP_BOOT_KEYS`] are
    /// forgotten) and return the head held for it, both under one lock.
    pub fn register(
        &self,
        deployment: &str,
        public_sec1: &[u8],
        now: u64,
    ) -> Result<Option<StoreHead>, HeadBookError> {
        let mut m = self.lock();
        let mut next = m.clone();
        let d = next.entry(deployment.to_string()).or_default();
        let id = boot_key_id(public_sec1);
        d.boot_keys.retain(|k| k.id != id);
        d.boot_keys.push(BootKeyEntry {
            id,
            public: public_sec1.to_vec(),
            registered: now,
        });
        let extra = d.boot_keys.len().saturating_sub(KEEP_BOOT_KEYS);
        d.boot_keys.drain(..extra);
        let head = d.head.clone();
        self.persist(&next)?;
        *m = next;
        Ok(head)
    }

    /// The deployment and SEC1 public key of a registered boot key.
    pub fn lookup(&self, id: &[u8]) -> Option<(String, Vec<u8>)> {
        let m = self.lock();
        m.iter().find_map(|(name, d)| {
            d.boot_keys
                .iter()
                .find(|k| k.id[..] == *id)
                .map(|k| (name.clone(), k.public.clone()))
        })
    }

    /// The deployments whose held head is sealed under master-key version `version` (what
    /// `krs mk retire` checks before destroying it).
    pub fn sealed_under(&self, version: u32) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, d)| d.head.as_ref().is_some_and(|h| h.mk_version == version))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Compare-and-set `deployment`'s head from `prev` to `next`, durably before `Ok`. A head
    /// moves forward in `seq`, or stays at the same `seq` and chain MAC under a newer
    /// master-key version (a re-seal); it never moves to an older master-key version.
    pub fn advance(
        &self,
        deployment: &str,
        prev: Option<&StoreHead>,
        next: &StoreHead,
    ) -> Result<Result<Advanced, Refusal>, HeadBookError> {
        let mut m = self.lock();
        let held = m.get(deployment).and_then(|d| d.head.clone());
        if held.as_ref() == Some(next) {
            return Ok(Ok(Advanced::AlreadyHeld));
        }
        if let Some(h) = &held {
            if h.store_id != next.store_id {
                return Ok(Err(Refusal::OtherStore));
            }
            if next.mk_version < h.mk_version {
                return Ok(Err(Refusal::OlderMasterKey));
            }
            // A re-seal: the same head under a newer master-key version.
            let reseal = h.seq == next.seq
                && h.chain_mac == next.chain_mac
                && next.mk_version > h.mk_version;
            if h.seq >= next.seq && !reseal {
                return Ok(Err(Refusal::NotForward));
            }
        }
        if held.as_ref() != prev {
            return Ok(Err(Refusal::NotExtending));
        }
        let mut updated = m.clone();
        updated.entry(deployment.to_string()).or_default().head = Some(next.clone());
        self.persist(&updated)?;
        *m = updated;
        Ok(Ok(Advanced::Recorded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(id: u8, seq: u64) -> StoreHead {
        StoreHead {
            store_id: vec![id; 16],
            seq,
            chain_mac: vec![seq as u8; 32],
            mk_version: 1,
        }
    }

    #[test]
    fn a_reseal_moves_the_version_forward_only() {
        let dir = tempfile::tempdir().unwrap();
        let b = HeadBook::open(&dir.path().join("heads.json")).unwrap();
        b.advance("d", None, &head(1, 5)).unwrap().unwrap();
        let v2 = StoreHead {
            mk_version: 2,
            ..head(1, 5)
        };
        assert_eq!(
            b.advance("d", Some(&head(1, 5)), &v2).unwrap(),
            Ok(Advanced::Recorded)
        );
        assert_eq!(b.sealed_under(1), Vec::<String>::new());
        assert_eq!(b.sealed_under(2), vec!["d".to_string()]);
        // Persisted with its version; the old-version head is never taken back.
        let b = HeadBook::open(&dir.path().join("heads.json")).unwrap();
        assert_eq!(b.head("d"), Some(v2.clone()));
        assert_eq!(
            b.advance("d", Some(&v2), &head(1, 6)).unwrap(),
            Err(Refusal::OlderMasterKey)
        );
        // A re-seal must keep seq and chain MAC.
        let forged = StoreHead {
            chain_mac: vec![9; 32],
            mk_version: 3,
            ..head(1, 5)
        };
        assert_eq!(
            b.advance("d", Some(&v2), &forged).unwrap(),
            Err(Refusal::NotForward)
        );
    }

    #[test]
    fn compare_and_set_persists_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("heads.json");
        let b = HeadBook::open(&p).unwrap();
        assert_eq!(b.register("d", &[4; 97], 1).unwrap(), None);
        assert_eq!(b.lookup(&boot_key_id(&[4; 97])).unwrap().0, "d");
        assert!(b.lookup(&[0; 32]).is_none());
        // prev must be what is held: None first.
        assert_eq!(
            b.advance("d", Some(&head(1, 1)), &head(1, 2)).unwrap(),
            Err(Refusal::NotExtending)
        );
        assert_eq!(
            b.advance("d", None, &head(1, 1)).unwrap(),
            Ok(Advanced::Recorded)
        );
        assert_eq!(
            b.advance("d", None, &head(1, 1)).unwrap(),
            Ok(Advanced::AlreadyHeld)
        );
        assert_eq!(
            b.advance("d", None, &head(1, 2)).unwrap(),
            Err(Refusal::NotExtending)
        );
        assert_eq!(
            b.advance("d", Some(&head(1, 1)), &head(2, 2)).unwrap(),
            Err(Refusal::OtherStore)
        );
        assert_eq!(
            b.advance("d", Some(&head(1, 1)), &head(1, 1)).unwrap(),
            Ok(Advanced::AlreadyHeld)
        );
        let mut rewound = head(1, 0);
        rewound.chain_mac = vec![9; 32];
        assert_eq!(
            b.advance("d", Some(&head(1, 1)), &rewound).unwrap(),
            Err(Refusal::NotForward)
        );
        assert_eq!(
            b.advance("d", Some(&head(1, 1)), &head(1, 2)).unwrap(),
            Ok(Advanced::Recorded)
        );
        // Survives a reopen; a new boot key sees the head at registration.
        let b = HeadBook::open(&p).unwrap();
        assert_eq!(b.head("d"), Some(head(1, 2)));
        assert_eq!(b.register("d", &[5; 97], 2).unwrap(), Some(head(1, 2)));
        assert!(b.lookup(&boot_key_id(&[4; 97])).is_some());
        // Bounded.
        for i in 0..(KEEP_BOOT_KEYS as u8 + 3) {
            b.register("d", &[i; 65], 3).unwrap();
        }
        assert!(b.lookup(&boot_key_id(&[4; 97])).is_none());
        assert!(b
            .lookup(&boot_key_id(&[KEEP_BOOT_KEYS as u8 + 2; 65]))
            .is_some());
        // The operator's override: backwards, durably, boot keys kept; CAS continues from it.
        assert_eq!(b.set("d", &head(1, 1)).unwrap(), Some(head(1, 2)));
        let b = HeadBook::open(&p).unwrap();
        assert_eq!(b.head("d"), Some(head(1, 1)));
        assert_eq!(
            b.advance("d", Some(&head(1, 2)), &head(1, 3)).unwrap(),
            Err(Refusal::NotExtending)
        );
        assert_eq!(
            b.advance("d", Some(&head(1, 1)), &head(1, 2)).unwrap(),
            Ok(Advanced::Recorded)
        );
        let l = b.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].head, Some(head(1, 2)));
        assert_eq!(l[0].boot_keys, KEEP_BOOT_KEYS);
        assert_eq!(l[0].last_release, Some(3));
        // A damaged book refuses to open.
        std::fs::write(&p, b"{not json").unwrap();
        let Err(e) = HeadBook::open(&p) else {
            panic!("a damaged book opened")
        };
        assert!(matches!(e, HeadBookError::CorruptJson { .. }), "{e}");
        // The JSON error is the source, not a copy in the message.
        use std::error::Error as _;
        assert!(
            e.source()
                .and_then(|s| s.downcast_ref::<serde_json::Error>())
                .is_some(),
            "{e:?}"
        );
        assert!(!e.to_string().contains("line 1"), "{e}");
    }
}
