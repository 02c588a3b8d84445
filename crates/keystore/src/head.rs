//! Freshness of a key store: its head, and the anchor outside the disk that holds it.
//!
//! Records are chained (each MAC covers the previous one), so the last record's sequence number
//! and chain MAC name the whole history before it. A host that holds the disk can still show an
//! older prefix of that history (a restored copy, a truncated log); only a party outside the
//! disk that remembers the newest head can tell. That party is the key-release service: it must
//! be online for every boot anyway, it signs in the HSM, and it is told each new head before an
//! admin write is acknowledged ([`HeadAnchor::advance`]). At boot the release receipt carries
//! the head the KRS holds (the floor), and the registry refuses a store older than it.
//!
//! The KRS cannot compute chain MACs (they are keyed by the master key); it only compares:
//! `advance` is a compare-and-set (`prev` must be the head it holds), so a fleet of appliances
//! sharing one store uses the same mechanism, and a lost race is a refusal, never a fork.

use serde::{Deserialize, Serialize};

/// The head of a store: its id, the sequence number of its last acknowledged record and that
/// record's chain MAC (which covers every record before it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHead {
    /// The store id from the header (16 bytes).
    #[serde(with = "serde_bytes")]
    pub store_id: Vec<u8>,
    /// Sequence number of the last record (0: an empty store).
    pub seq: u64,
    /// Chain MAC of the last record (32 bytes; for an empty store, the chain's start value).
    #[serde(with = "serde_bytes")]
    pub chain_mac: Vec<u8>,
    /// The master-key version the store is sealed under at this head (absent: 1, so heads and
    /// receipts from before master-key rotation encode exactly as before). A re-seal moves it
    /// forward at the same `seq` and chain MAC; it never moves back.
    #[serde(
        default = "crate::model::mk_v1",
        skip_serializing_if = "crate::model::is_mk_v1"
    )]
    pub mk_version: u32,
}

impl std::fmt::Debug for StoreHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoreHead(store {}, seq {}, mac {}, mk v{})",
            hex::encode(&self.store_id),
            self.seq,
            hex::encode(self.chain_mac.get(..8).unwrap_or(&self.chain_mac)),
            self.mk_version
        )
    }
}

/// Why an anchor did not record a head.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The anchor answered and refused (its head is not `prev`, or the caller is not allowed):
    /// nothing was recorded.
    #[error("the key-release service refused the new store head: {0}")]
    Refused(String),
    /// The anchor could not be reached, or its answer was lost or not verifiable: the head may
    /// or may not have been recorded.
    #[error("the key-release service could not be reached: {0}")]
    Unreachable(String),
}

/// Where store heads are recorded outside the disk (the KRS, through the boot agent's per-boot
/// key). Calls are blocking network I/O: the registry makes them from admin writes only, never
/// from the XKS request path.
pub trait HeadAnchor: Send + Sync {
    /// Record `next` if the anchor's current head is `prev` (`None`: it holds none yet for this
    /// deployment). `Ok` when recorded, or when `next` is already exactly the head it holds.
    fn advance(&self, prev: Option<&StoreHead>, next: &StoreHead) -> Result<(), AnchorError>;

    /// The head the anchor holds now (used to settle an `Unreachable` outcome).
    fn current(&self) -> Result<Option<StoreHead>, AnchorError>;
}

/// How a store's freshness is checked when it is opened and kept when it is written.
#[derive(Clone, Default)]
pub enum Freshness {
    /// No anchor (`master_key.source = "file"`): a whole older copy of the store cannot be told
    /// from the newest. Development only; the appliance warns at start.
    #[default]
    Unanchored,
    /// Anchored at the KRS.
    Anchored {
        /// The head the KRS held at release (`None`: it holds none yet: first boot).
        floor: Option<StoreHead>,
        /// Where new heads are recorded before an admin write is acknowledged.
        anchor: std::sync::Arc<dyn HeadAnchor>,
    },
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Freshness::Unanchored => f.write_str("Unanchored"),
            Freshness::Anchored { floor, .. } => {
                f.debug_struct("Anchored").field("floor", floor).finish()
            }
        }
    }
}
