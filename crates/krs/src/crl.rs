//! The KRS's AMD CRLs: the configured `crl_files` (DER, or PEM holding any number of
//! `X509 CRL` blocks), loaded at start (an unreadable file stops the KRS), re-read whenever a
//! file changes (one `stat` per file per appraisal, so `keyward krs crl fetch`, a cron job or
//! an operator's copy takes effect at the next appraisal without a restart), and handed to
//! the verifier with every appraisal. A file that becomes unreadable fails every appraisal
//! closed until it is fixed. Their age (thisUpdate/nextUpdate per CRL) is reported at start,
//! at each reload, hourly, and by `keyward krs crl status`.

use keyward_keystore::now_unix;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keyward_verify::snp::check_crl_signature;
use keyward_verify::snp::{fmt_time, split_crl_input, Crl};
use keyward_verify::Policy;

/// Errors loading CRL files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CrlError {
    /// The file could not be read.
    #[error("CRL file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM or DER CRLs.
    #[error("CRL file {}", path.display())]
    Split {
        path: PathBuf,
        #[source]
        source: keyward_verify::snp::CertError,
    },
    /// CRL number `index` (from 0) of the file does not parse.
    #[error("CRL file {}: CRL #{index}", path.display())]
    Parse {
        path: PathBuf,
        index: usize,
        #[source]
        source: keyward_verify::snp::CertError,
    },
}

/// What identifies a file's content cheaply: (inode, size, mtime s, mtime ns); None = absent.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// One loaded CRL and the file it came from.
#[derive(Debug, Clone)]
pub(crate) struct LoadedCrl {
    pub file: PathBuf,
    pub der: Vec<u8>,
}

/// Read one CRL file: every CRL in it must parse.
pub(crate) fn read_crl_file(p: &Path) -> Result<Vec<Vec<u8>>, CrlError> {
    let path = || p.to_path_buf();
    let bytes = std::fs::read(p).map_err(|source| CrlError::Read {
        path: path(),
        source,
    })?;
    let ders = split_crl_input(&bytes).map_err(|source| CrlError::Split {
        path: path(),
        source,
    })?;
    for (index, d) in ders.iter().enumerate() {
        Crl::from_der(d).map_err(|source| CrlError::Parse {
            path: path(),
            index,
            source,
        })?;
    }
    Ok(ders)
}

struct State {
    stamps: Vec<Stamp>,
    crls: Arc<Vec<LoadedCrl>>,
    /// Set when the last reload failed: every appraisal fails until the files are fixed.
    error: Option<String>,
}

/// The configured CRL files, kept current.
pub(crate) struct CrlStore {
    files: Vec<PathBuf>,
    state: Mutex<State>,
}

fn load_all(files: &[PathBuf]) -> Result<(Vec<Stamp>, Vec<LoadedCrl>), CrlError> {
    let mut stamps = Vec::with_capacity(files.len());
    let mut out = Vec::new();
    for p in files {
        // Stamp before reading: a change during the read is picked up next time.
        stamps.push(stamp(p));
        for der in read_crl_file(p)? {
            out.push(LoadedCrl {
                file: p.clone(),
                der,
            });
        }
    }
    Ok((stamps, out))
}

impl CrlStore {
    /// Load every file now; any unreadable or unparsable file is an error.
    pub(crate) fn open(files: &[PathBuf]) -> Result<CrlStore, CrlError> {
        let (stamps, crls) = load_all(files)?;
        Ok(CrlStore {
            files: files.to_vec(),
            state: Mutex::new(State {
                stamps,
                crls: Arc::new(crls),
                error: None,
            }),
        })
    }

    /// The CRLs as of now (re-read when any file changed). `Err` when a file is unreadable:
    /// the caller fails the appraisal.
    pub(crate) fn current(&self) -> Result<Arc<Vec<LoadedCrl>>, String> {
        let now: Vec<Stamp> = self.files.iter().map(|p| stamp(p)).collect();
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now != g.stamps {
            match load_all(&self.files) {
                Ok((stamps, crls)) => {
                    let n = crls.len();
                    g.stamps = stamps;
                    g.crls = Arc::new(crls);
                    g.error = None;
                    tracing::info!(crls = n, "CRL files changed; reloaded");
                    for s in status_of(&g.crls, None, now_unix()) {
                        tracing::info!("{}", s.line());
                    }
                }
                Err(e) => {
                    let e = keyward_keystore::error_chain(&e);
                    tracing::error!("CRL reload failed, every appraisal fails until fixed: {e}");
                    g.stamps = now;
                    g.error = Some(e);
                }
            }
        }
        match &g.error {
            Some(e) => Err(e.clone()),
            None => Ok(g.crls.clone()),
        }
    }

    /// Status of each CRL (signature checked against the ARKs `policy` pins, when given).
    pub(crate) fn status(&self, policy: Option<&Policy>) -> Result<Vec<CrlStatus>, String> {
        let crls = self.current()?;
        Ok(status_of(&crls, policy, now_unix()))
    }
}

/// The age of one CRL.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct CrlStatus {
    pub file: String,
    pub issuer: String,
    pub this_update: String,
    pub next_update: Option<String>,
    /// Seconds since thisUpdate.
    pub age_secs: i64,
    /// Seconds until nextUpdate (negative: past it).
    pub expires_in_secs: Option<i64>,
    /// Past nextUpdate (the policy's grace may still accept it for a while).
    pub stale: bool,
    pub revoked: usize,
    /// The pinned root whose signature verified (`None` when not checked), or the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_error: Option<String>,
}

impl CrlStatus {
    /// One log line.
    pub(crate) fn line(&self) -> String {
        format!(
            "CRL {} from CN={}: thisUpdate {} (age {} s), nextUpdate {}{}{}",
            self.file,
            self.issuer,
            self.this_update,
            self.age_secs,
            self.next_update.as_deref().unwrap_or("none"),
            match self.expires_in_secs {
                Some(s) if s < 0 => format!(" (STALE by {} s)", -s),
                Some(s) => format!(" (in {s} s)"),
                None => " (no nextUpdate: refused by the verifier)".into(),
            },
            match (&self.signed_by, &self.signature_error) {
                (_, Some(e)) => format!("; signature: {e}"),
                (Some(r), None) => format!("; signed by {r}"),
                _ => String::new(),
            }
        )
    }
}

fn status_of(crls: &[LoadedCrl], policy: Option<&Policy>, now: u64) -> Vec<CrlStatus> {
    crls.iter()
        .filter_map(|c| {
            let crl = Crl::from_der(&c.der).ok()?;
            let (signed_by, signature_error) = match policy.map(|p| check_crl_signature(&c.der, p))
            {
                None => (None, None),
                Some(Ok(f)) => (Some(f.root), None),
                Some(Err(e)) => (None, Some(e)),
            };
            let tu = crl.this_update();
            let nu = crl.next_update();
            Some(CrlStatus {
                file: c.file.display().to_string(),
                issuer: crl.issuer_cn(),
                this_update: fmt_time(tu),
                next_update: nu.map(fmt_time),
                age_secs: now as i64 - tu as i64,
                expires_in_secs: nu.map(|n| n as i64 - now as i64),
                stale: nu.is_none_or(|n| now > n),
                revoked: crl.tbs().revoked_certificates.as_ref().map_or(0, Vec::len),
                signed_by,
                signature_error,
            })
        })
        .collect()
}

/// Log the status of `store` once an hour, forever (a thread started by `krs serve`).
pub(crate) fn spawn_status_logger(store: Arc<CrlStore>, policy: Arc<Policy>) {
    let _ = std::thread::Builder::new()
        .name("krs-crl-status".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            match store.status(Some(&policy)) {
                Ok(list) => {
                    for s in list {
                        if s.stale {
                            tracing::warn!("{}", s.line());
                        } else {
                            tracing::info!("{}", s.line());
                        }
                    }
                }
                Err(e) => tracing::error!("CRLs unusable: {e}"),
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_verify::testsign::{CrlSpec, TestCa};
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_crl_file_that_does_not_parse_keeps_the_cert_error() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crl");
        let e = read_crl_file(&missing).unwrap_err();
        assert_eq!(e.to_string(), format!("CRL file {}", missing.display()));
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound));
        // A DER that is no CRL: the parse error is the source, with the CRL's number.
        let bad = dir.path().join("bad.crl");
        std::fs::write(&bad, [0x30, 0x03, 0x02, 0x01, 0x01]).unwrap();
        let e = read_crl_file(&bad).unwrap_err();
        assert!(matches!(e, CrlError::Parse { index: 0, .. }), "{e:?}");
        assert!(
            e.source()
                .and_then(|s| s.downcast_ref::<keyward_verify::snp::CertError>())
                .is_some(),
            "{e:?}"
        );
    }

    fn crl(revoked: Vec<Vec<u8>>, next_in: i64) -> Vec<u8> {
        let now = SystemTime::now();
        let nu = if next_in >= 0 {
            now + Duration::from_secs(next_in as u64)
        } else {
            now - Duration::from_secs((-next_in) as u64)
        };
        TestCa::load()
            .unwrap()
            .crl(
                &CrlSpec {
                    revoked,
                    this_update: now - Duration::from_secs(7200),
                    next_update: nu,
                },
                None,
            )
            .unwrap()
    }

    #[test]
    fn reloads_on_change_and_fails_closed_on_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("amd.crl");
        std::fs::write(&f, crl(vec![], 3600)).unwrap();
        assert!(CrlStore::open(&[dir.path().join("missing.crl")]).is_err());
        let s = CrlStore::open(std::slice::from_ref(&f)).unwrap();
        assert_eq!(s.current().unwrap().len(), 1);
        let st = s.status(None).unwrap();
        assert!(!st[0].stale && st[0].revoked == 0, "{st:?}");
        assert!(st[0].age_secs >= 7200);
        // Replaced (PEM, two CRLs, one stale): picked up without a restart.
        let pem = |d: &[u8]| der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, d);
        let two = pem(&crl(vec![vec![0]], 3600)).unwrap() + &pem(&crl(vec![], -60)).unwrap();
        let tmp = dir.path().join("amd.crl.tmp");
        std::fs::write(&tmp, two).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        let st = s.status(None).unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].revoked, 1);
        assert!(st[1].stale && st[1].line().contains("STALE"));
        // Garbage: every call fails until fixed.
        std::fs::write(&tmp, b"not a crl").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert!(s.current().is_err());
        assert!(s.current().is_err());
        std::fs::write(&tmp, crl(vec![], 3600)).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(s.current().unwrap().len(), 1);
    }
}
