//! `keyward krs heads show|set`: the operator's view of the store heads the KRS holds, and the
//! disaster-recovery override.
//!
//! Every boot refuses a store older than the head the KRS holds for its deployment (the
//! rollback the anchor exists to stop), and refuses a missing one. So after the store is lost
//! and restored from a backup (`keyward store restore`), its appliances stay down until the KRS
//! operator, who holds the HSM, decides that the backup's head is the one to hold:
//! `heads set --backup FILE`. That decision throws away every change acknowledged after the
//! backup (new keys, and also disabled keys, revoked grants and removed credentials, which come
//! back), so it is asked for loudly, and recorded like every other decision of the KRS: a
//! receipt signed in the HSM (decision `head-set`) appended to the release log, before the head
//! book is changed. The KRS must be stopped meanwhile (the state directory lock).
//!
//! The backup's MAC cannot be checked here (it is keyed by the master key, which never leaves
//! the HSM in clear); its SHA-256 and structure are. A head that does not match the restored
//! store only makes the next boot refuse it (a fork or a rollback): the KRS trusts the backup
//! for nothing but the head to hold.

use keyward_keystore::now_unix;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use sha2::Digest;

use crate::config::KrsConfig;
use crate::heads::HeadBook;
use crate::log::ReleaseLog;
use crate::service::KEY_VERSION;
use keyward_hsm::Hsm;
use keyward_keystore::backup;
use keyward_krp::messages::{StoreHead, VERSION};
use keyward_krp::Receipt;

/// The release log's decision for an operator's head override.
pub(crate) const DECISION: &str = "head-set";

/// `keyward krs heads set`'s arguments.
#[derive(Debug, Clone)]
pub(crate) struct SetArgs {
    pub config: PathBuf,
    pub deployment: String,
    pub backup: PathBuf,
    pub new_store: bool,
    pub yes: bool,
}

fn head_json(h: &Option<StoreHead>) -> serde_json::Value {
    match h {
        Some(h) => serde_json::json!({
            "store_id": hex::encode(&h.store_id),
            "seq": h.seq,
            "chain_mac": hex::encode(&h.chain_mac),
            "mk_version": h.mk_version,
        }),
        None => serde_json::Value::Null,
    }
}

/// `heads show`: one JSON line per deployment the config names or the book knows. Read only
/// (the book is replaced atomically, so reading it while the KRS runs is safe).
pub(crate) fn show(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = KrsConfig::load(config)?;
    let book = HeadBook::open(&cfg.heads_file())?;
    let listed = book.list();
    let mut names: Vec<String> = cfg.deployments.iter().map(|d| d.name.clone()).collect();
    for e in &listed {
        if !names.contains(&e.name) {
            names.push(e.name.clone());
        }
    }
    for name in names {
        let e = listed.iter().find(|e| e.name == name);
        println!(
            "{}",
            serde_json::json!({
                "deployment": name,
                "configured": cfg.deployments.iter().any(|d| d.name == name),
                "head": head_json(&e.and_then(|e| e.head.clone())),
                "boot_keys": e.map_or(0, |e| e.boot_keys),
                "last_release": e.and_then(|e| e.last_release),
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The text the operator confirms.
fn warning(
    a: &SetArgs,
    held: &Option<StoreHead>,
    next: &StoreHead,
    b: &backup::Body,
    file_sha: &str,
) -> String {
    let id = |h: &StoreHead| hex::encode(&h.store_id);
    let mut t = String::new();
    t += &format!(
        "\n!!! keyward krs heads set: MOVING THE STORE HEAD OF DEPLOYMENT {:?} !!!\n\n",
        a.deployment
    );
    match held {
        Some(h) => t += &format!("  held now : store {} record {}\n", id(h), h.seq),
        None => t += "  held now : no head (no store anchored yet)\n",
    }
    t += &format!(
        "  new head : store {} record {} (backup {}, made {} by keyward {})\n  backup sha256: {file_sha}\n\n",
        id(next),
        next.seq,
        a.backup.display(),
        keyward_keystore::unix_rfc3339(b.created),
        b.keyward_version
    );
    match held {
        Some(h) if h.store_id == next.store_id && h.seq > next.seq => {
            t += &format!(
            "This is the rollback the KRS otherwise refuses. The {} change(s) acknowledged after \
                 record {} (records {}..{}) are LOST FOR GOOD: keys created since are gone with \
                 the data they protect, and keys disabled, grants revoked and credentials removed \
                 since are IN FORCE AGAIN.\n",
            h.seq - next.seq,
            next.seq,
            next.seq + 1,
            h.seq
        )
        }
        Some(h) if h.store_id == next.store_id => {
            t += &format!(
                "The backup is not older than the head held (record {}): appliances will open \
                 only a store at exactly record {}.\n",
                h.seq, next.seq
            )
        }
        Some(_) => {
            t += "The backup is of ANOTHER STORE (--new-store): the deployment's current store \
                  and every key in it are abandoned for good.\n"
        }
        None => {}
    }
    t += &format!(
        "From now on the appliances of {:?} open only the store restored from this backup; one \
         still serving a newer store cannot record heads any more (restart it on the restored \
         store). Restore the store first (keyward store restore --config CONFIG {}).\n",
        a.deployment,
        a.backup.display()
    );
    t
}

/// `heads set`: check, confirm, log, then move the head.
pub(crate) fn set(a: &SetArgs) -> anyhow::Result<ExitCode> {
    let cfg = KrsConfig::load(&a.config)?;
    if !cfg.deployments.iter().any(|d| d.name == a.deployment) {
        let names: Vec<&str> = cfg.deployments.iter().map(|d| d.name.as_str()).collect();
        bail!(
            "--deployment {:?}: {} has no [[deployment]] of that name (it has: {})",
            a.deployment,
            a.config.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    let shown = a.backup.display().to_string();
    let bytes = {
        use std::io::Read;
        let f = std::fs::File::open(&a.backup).with_context(|| format!("backup {shown}"))?;
        let mut v = Vec::new();
        f.take(backup::MAX_BACKUP_BYTES as u64 + 1)
            .read_to_end(&mut v)
            .with_context(|| format!("reading backup {shown}"))?;
        v
    };
    let parsed = backup::parse(&bytes).map_err(|e| anyhow::anyhow!("backup {shown}: {e}"))?;
    let file_sha = hex::encode(sha2::Sha256::digest(&bytes));
    let next = parsed.head().clone();

    let _state = crate::state_lock::lock(&cfg.state_dir)?;
    let book = HeadBook::open(&cfg.heads_file())?;
    let held = book.head(&a.deployment);
    if held.as_ref() == Some(&next) {
        println!(
            "{}",
            serde_json::json!({"deployment": a.deployment, "head": head_json(&held),
                "changed": false, "backup": a.backup, "backup_sha256": file_sha})
        );
        eprintln!(
            "keyward: deployment {:?} already holds this backup's head; nothing changed",
            a.deployment
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(h) = &held {
        if h.store_id != next.store_id && !a.new_store {
            bail!(
                "refused: backup {shown} is of key store {}, but deployment {:?}'s head names key \
                 store {}: a backup of another store (another appliance's, or one re-created \
                 since). Pass --new-store to make the backup's store the deployment's (every \
                 appliance of it must then be restored from this backup)",
                hex::encode(&next.store_id),
                a.deployment,
                hex::encode(&h.store_id)
            );
        }
    }
    eprint!("{}", warning(a, &held, &next, parsed.body(), &file_sha));
    if !a.yes {
        eprint!(
            "\nType the deployment name ({}) to move its head; anything else stops: ",
            a.deployment
        );
        std::io::stderr().flush().ok();
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the confirmation (or pass --yes)")?;
        if line.trim() != a.deployment {
            eprintln!("keyward: not confirmed; nothing changed");
            return Ok(ExitCode::from(1));
        }
    }

    // The decision goes into the release log first (a receipt signed in the HSM), then the book:
    // a crash in between leaves the decision logged and the head unmoved (run it again).
    let hsm = Hsm::open(&cfg.hsm)?;
    let policy_digest = policy_digest(&cfg)?;
    let mut log = ReleaseLog::open(&cfg.log_file())?;
    log.repair_head(&|d| hsm.sign_digest(d))?;
    let time = now_unix();
    let receipt = Receipt {
        v: VERSION,
        decision: DECISION.into(),
        code: None,
        session_id: vec![],
        t: vec![],
        mode: None,
        hsm_epk: vec![],
        wrapped_digest: vec![],
        evidence_digest: vec![],
        policy_digest: policy_digest.to_vec(),
        key_id: hsm.master_key_id().to_string(),
        key_version: KEY_VERSION,
        time,
        log_index: log.next_index(),
        head: Some(next.clone()),
        boot_key_id: vec![],
        nonce: vec![],
        also: vec![],
    };
    let held_text = match &held {
        Some(h) => format!("store {} seq {}", hex::encode(&h.store_id), h.seq),
        None => "none".into(),
    };
    let detail = format!(
        "operator: deployment {}: store head set from {held_text} to store {} seq {} (backup \
         sha256 {file_sha}, made {}{})",
        a.deployment,
        hex::encode(&next.store_id),
        next.seq,
        keyward_keystore::unix_rfc3339(parsed.body().created),
        if a.new_store { ", --new-store" } else { "" }
    );
    let index =
        crate::log::append_operator_action(&mut log, &receipt, detail, &policy_digest, &|d| {
            hsm.sign_digest(d)
        })?;
    let old = book.set(&a.deployment, &next)?;
    println!(
        "{}",
        serde_json::json!({
            "deployment": a.deployment,
            "changed": true,
            "from": head_json(&old),
            "head": head_json(&Some(next)),
            "backup": a.backup,
            "backup_sha256": file_sha,
            "log_index": index,
        })
    );
    eprintln!(
        "keyward: deployment {:?} now holds store {} record {}; start the KRS, then the \
         appliances on the restored store",
        a.deployment,
        hex::encode(&parsed.head().store_id),
        parsed.head().seq
    );
    Ok(ExitCode::SUCCESS)
}

/// The digest of the signed policy in force (receipts name it), its signature checked.
fn policy_digest(cfg: &KrsConfig) -> anyhow::Result<[u8; 48]> {
    let pem = std::fs::read_to_string(&cfg.admin_public_key)
        .with_context(|| format!("reading {}", cfg.admin_public_key.display()))?;
    let admin = crate::policy::admin_public_key(&pem)?;
    Ok(crate::policy::load(&cfg.policy_file, &admin)?.digest)
}
