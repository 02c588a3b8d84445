//! `keyward krs mk list|rotate|retire`: master-key rotation at the KRS.
//!
//! Versions live in the token: version 1 is the configured `master_key_label` (the key `krs
//! init` made), version N >= 2 is `LABEL.vN` (`keyward_hsm::mk_label`), generated with the
//! same attributes (sensitive, extractable only by wrapping). The newest version present is
//! current: new stores and re-seals use it. Each release carries the current version and the
//! version the deployment's store head is sealed under (service.rs), so appliances re-seal at
//! their next boot and the head book learns it from their head updates.
//!
//! `retire VERSION` destroys the version in the token (`C_DestroyObject`) and refuses while it
//! is the current one, while any deployment's held head is still sealed under it, or without
//! `--backups-moved` (the operator's word that every backup kept was taken under a newer
//! version: `keyward admin backup` after the re-seal; a backup records its version). Rotation
//! and retirement are decisions in the release log (`mk-rotate`, `mk-retire`: a receipt signed
//! in the HSM), logged before the token changes. Both take the KRS state lock: the KRS must be
//! stopped (its appliances keep serving XKS meanwhile; only boots and admin writes wait).
//!
//! `STATE/mk-versions.json` keeps when each version was made and retired (the token keeps no
//! dates), for `list`.

use keyward_keystore::now_unix;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::config::KrsConfig;
use crate::heads::HeadBook;
use crate::log::ReleaseLog;
use keyward_hsm::{mk_label, Hsm};
use keyward_krp::messages::VERSION;
use keyward_krp::Receipt;

/// Release-log decisions.
pub(crate) const DECISION_ROTATE: &str = "mk-rotate";
pub(crate) const DECISION_RETIRE: &str = "mk-retire";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionDates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dates {
    v: u32,
    versions: BTreeMap<u32, VersionDates>,
}

fn dates_path(cfg: &KrsConfig) -> PathBuf {
    cfg.state_dir.join("mk-versions.json")
}

fn load_dates(cfg: &KrsConfig) -> anyhow::Result<Dates> {
    let p = dates_path(cfg);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Dates {
            v: 1,
            ..Dates::default()
        }),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_dates(cfg: &KrsConfig, d: &Dates) -> anyhow::Result<()> {
    let p = dates_path(cfg);
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(d)?)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &p))
        .with_context(|| format!("writing {}", p.display()))
}

/// One version as `list` prints it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VersionLine {
    pub version: u32,
    pub label: String,
    pub created: Option<u64>,
    /// `current`, `previous` or `retired`.
    pub state: &'static str,
    pub retired: Option<u64>,
    /// Deployments whose held store head is sealed under this version.
    pub deployments: Vec<String>,
}

fn lines(cfg: &KrsConfig, hsm: &Hsm, book: &HeadBook) -> anyhow::Result<Vec<VersionLine>> {
    let present = hsm.master_key_versions()?;
    let dates = load_dates(cfg)?;
    let current = present.last().copied();
    let mut all: Vec<u32> = present.clone();
    all.extend(dates.versions.keys().copied());
    all.sort_unstable();
    all.dedup();
    Ok(all
        .into_iter()
        .map(|v| {
            let d = dates.versions.get(&v).cloned().unwrap_or_default();
            VersionLine {
                version: v,
                label: mk_label(&cfg.hsm.master_key_label, v),
                created: d.created,
                state: if Some(v) == current {
                    "current"
                } else if present.contains(&v) {
                    "previous"
                } else {
                    "retired"
                },
                retired: d.retired,
                deployments: book.sealed_under(v),
            }
        })
        .collect())
}

/// `mk list`: one JSON line per version. Read only.
pub(crate) fn list(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = KrsConfig::load(config)?;
    let hsm = Hsm::open(&cfg.hsm)?;
    let book = HeadBook::open(&cfg.heads_file())?;
    for l in lines(&cfg, &hsm, &book)? {
        println!("{}", serde_json::to_string(&l)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Append an operator decision about master-key version `version` to the release log (a
/// receipt signed in the HSM). Returns its index.
fn log_decision(
    cfg: &KrsConfig,
    hsm: &Hsm,
    decision: &str,
    version: u32,
    detail: String,
) -> anyhow::Result<u64> {
    let pem = std::fs::read_to_string(&cfg.admin_public_key)
        .with_context(|| format!("reading {}", cfg.admin_public_key.display()))?;
    let admin = crate::policy::admin_public_key(&pem)?;
    let policy_digest = crate::policy::load(&cfg.policy_file, &admin)?.digest;
    let mut log = ReleaseLog::open(&cfg.log_file())?;
    log.repair_head(&|d| hsm.sign_digest(d))?;
    let time = now_unix();
    let receipt = Receipt {
        v: VERSION,
        decision: decision.into(),
        code: None,
        session_id: vec![],
        t: vec![],
        mode: None,
        hsm_epk: vec![],
        wrapped_digest: vec![],
        evidence_digest: vec![],
        policy_digest: policy_digest.to_vec(),
        key_id: mk_label(&cfg.hsm.master_key_label, version),
        key_version: version,
        time,
        log_index: log.next_index(),
        head: None,
        boot_key_id: vec![],
        nonce: vec![],
        also: vec![],
    };
    Ok(crate::log::append_operator_action(
        &mut log,
        &receipt,
        detail,
        &policy_digest,
        &|d| hsm.sign_digest(d),
    )?)
}

/// `mk rotate`: make version N+1 in the token; it is current from the KRS's next start.
pub(crate) fn rotate(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = KrsConfig::load(config)?;
    let _state = crate::state_lock::lock(&cfg.state_dir)?;
    let hsm = Hsm::open(&cfg.hsm)?;
    let present = hsm.master_key_versions()?;
    let Some(&newest) = present.last() else {
        bail!("no master key in the token (run `keyward krs init`)");
    };
    let next = newest + 1;
    let index = log_decision(
        &cfg,
        &hsm,
        DECISION_ROTATE,
        next,
        format!(
            "operator: master key version {next} ({}) generated; version {newest} becomes \
             previous",
            mk_label(&cfg.hsm.master_key_label, next)
        ),
    )?;
    let made = hsm.rotate_master()?;
    if made != next {
        bail!("the token made version {made}, expected {next}");
    }
    let mut dates = load_dates(&cfg)?;
    dates.versions.entry(next).or_default().created = Some(now_unix());
    save_dates(&cfg, &dates)?;
    println!(
        "{}",
        serde_json::json!({"rotated": true, "version": next,
            "label": mk_label(&cfg.hsm.master_key_label, next), "previous": newest,
            "log_index": index})
    );
    eprintln!(
        "keyward: master key version {next} is current once the KRS starts again; appliances \
         re-seal their stores at their next boot (check with `keyward krs mk list`), then \
         take new backups and retire version {newest} with `keyward krs mk retire {newest} \
         --backups-moved`"
    );
    Ok(ExitCode::SUCCESS)
}

/// `mk retire VERSION`: destroy a previous version once nothing needs it.
pub(crate) fn retire(config: &Path, version: u32, backups_moved: bool) -> anyhow::Result<ExitCode> {
    let cfg = KrsConfig::load(config)?;
    let _state = crate::state_lock::lock(&cfg.state_dir)?;
    let hsm = Hsm::open(&cfg.hsm)?;
    let book = HeadBook::open(&cfg.heads_file())?;
    let present = hsm.master_key_versions()?;
    if !present.contains(&version) {
        bail!("refused: master key version {version} is not in the token (already retired, or never made)");
    }
    if present.last() == Some(&version) {
        bail!(
            "refused: master key version {version} is the current one; `keyward krs mk rotate` \
             first"
        );
    }
    let waiting = book.sealed_under(version);
    if !waiting.is_empty() {
        bail!(
            "refused: the store head of deployment(s) {} is still sealed under master key \
             version {version}: boot (or restart) their appliances so they re-seal, and check \
             `keyward krs mk list`",
            waiting.join(", ")
        );
    }
    if !backups_moved {
        bail!(
            "refused: --backups-moved not given: a backup made before the re-seal is sealed \
             under version {version} and cannot be restored once it is retired; take new \
             backups (`keyward admin backup`, their `mk_version` is newer), then pass \
             --backups-moved"
        );
    }
    let index = log_decision(
        &cfg,
        &hsm,
        DECISION_RETIRE,
        version,
        format!(
            "operator: master key version {version} ({}) retired: destroyed in the token \
             (no deployment's head is sealed under it; backups moved, said the operator)",
            mk_label(&cfg.hsm.master_key_label, version)
        ),
    )?;
    hsm.destroy_master(version)?;
    let mut dates = load_dates(&cfg)?;
    dates.versions.entry(version).or_default().retired = Some(now_unix());
    save_dates(&cfg, &dates)?;
    println!(
        "{}",
        serde_json::json!({"retired": true, "version": version, "log_index": index})
    );
    Ok(ExitCode::SUCCESS)
}
