//! Scheduled key rotation and destruction: once a minute, rotate every key whose schedule says
//! its current version is old enough, and destroy every key whose destruction date has come. On a fleet every member runs this loop; the rotation is decided
//! under the registry's write lock after catching up with the shared store, and the append is
//! a compare-and-set, so a key is rotated once per period however many members see it due.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use keyward_audit::AuditLog;
use keyward_keystore::Registry;

/// How often the schedule is looked at.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Trusted time (the KRS's signed time carried forward), or the wall clock without a KRS: a
/// host that moves the wall clock cannot rotate or destroy a key early.
fn now_unix() -> u64 {
    keyward_agent::clock().now_or_wall()
}

/// Rotate what is due now; returns how many keys this call rotated. Blocking.
pub(crate) fn rotate_due(registry: &Registry, audit: &AuditLog, now: u64) -> usize {
    let mut rotated = 0;
    for (store, id, version) in registry.rotations_due(now) {
        let due = |k: &keyward_keystore::LiveKey| {
            k.version == version
                && k.rotate_every_secs
                    .is_some_and(|e| now >= k.version_created.saturating_add(e))
        };
        let detail = format!("store={store} key={id} scheduled");
        match registry.rotate_key_if(Some(&store), &id, due) {
            Ok((info, true)) => {
                rotated += 1;
                tracing::info!(store = %store, key = %id, version = info.version, "key rotated by its schedule");
                audit.admin("keyward (rotation schedule)", "keys_rotate", &detail, true);
            }
            // Another member rotated it first: nothing to do.
            Ok((_, false)) => {}
            Err(e) => {
                tracing::warn!(store = %store, key = %id, "scheduled rotation failed: {e}; retried in a minute");
                audit.admin(
                    "keyward (rotation schedule)",
                    "keys_rotate",
                    &format!("{detail}; refused: {e}"),
                    false,
                );
            }
        }
    }
    for (store, id) in registry.destructions_due(now) {
        let detail = format!("store={store} key={id} scheduled destruction");
        match registry.destroy_due(Some(&store), &id, now) {
            Ok(true) => {
                tracing::warn!(store = %store, key = %id, "key destroyed: every version's KEK erased");
                audit.admin(
                    "keyward (destruction schedule)",
                    "keys_destroy",
                    &detail,
                    true,
                );
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(store = %store, key = %id, "scheduled destruction failed: {e}; retried in a minute");
                audit.admin(
                    "keyward (destruction schedule)",
                    "keys_destroy",
                    &format!("{detail}; refused: {e}"),
                    false,
                );
            }
        }
    }
    rotated
}

/// [`rotate_due`] every [`CHECK_EVERY`] until `stop`.
pub(crate) async fn rotation_loop(
    registry: Arc<Registry>,
    audit: AuditLog,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
        let (r, a) = (registry.clone(), audit.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || rotate_due(&r, &a, now_unix())).await {
            tracing::error!("rotation schedule task failed: {e}");
        }
    }
}
