//! Fleet membership: the appliances that serve one shared key store, as each of them reports
//! itself (a heartbeat into the store's database) and as GetHealthStatus and `keyward admin
//! fleet` show them.
//!
//! A heartbeat is trusted for nothing but the health report: the database (and whoever runs it)
//! can forge, hide or age any member's row. What it cannot do is make a member serve a key
//! state it should not: that is the chained store and the KRS-held head.

use serde::Serialize;

/// One member as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Stable per boot: the instance id and a boot nonce (at most 64 characters).
    pub id: String,
    /// The keyward version it runs.
    pub version: String,
    /// Where it runs: availability zone and host name, as configured or discovered.
    pub label: String,
    /// Its last heartbeat, Unix seconds (the database's clock).
    pub last_seen: u64,
    /// KEKs it holds unsealed.
    pub keks: u64,
    /// The store record it has applied (its head's `seq`).
    pub seq: u64,
}

/// Where members record their heartbeat and read everyone's. Blocking I/O: call it from a
/// blocking task, never from the XKS request path.
pub trait FleetBoard: Send + Sync {
    /// Record (insert or refresh) `member`'s row; `last_seen` is set by the board.
    fn beat(&self, member: &Member) -> Result<(), crate::KeystoreError>;

    /// Every member seen within `within_secs`, newest first, and the board's clock (Unix
    /// seconds) to judge them by.
    fn members(&self, within_secs: u64) -> Result<(Vec<Member>, u64), crate::KeystoreError>;

    /// Remove `id`'s row (a clean shutdown).
    fn leave(&self, id: &str) -> Result<(), crate::KeystoreError>;
}
