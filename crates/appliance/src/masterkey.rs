//! `[master_key] source = "file"`: 32 raw bytes in a file that neither group nor others may
//! read. For development and for migrations; production appliances use attested release.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::{MasterKeyError, MasterKeySource};
use keyward_secret::Key32;

/// The master key in a file.
#[derive(Debug, Clone)]
pub struct FileMasterKey {
    pub path: PathBuf,
}

impl MasterKeySource for FileMasterKey {
    fn name(&self) -> &'static str {
        "file"
    }

    fn obtain(&self) -> Result<Key32, MasterKeyError> {
        let io = |source| MasterKeyError::FileIo {
            path: self.path.clone(),
            source,
        };
        let refuse = |why: String| MasterKeyError::FileRefused {
            path: self.path.clone(),
            why,
        };
        let mut f = std::fs::File::open(&self.path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "accessible to group or others (mode {:o}); chmod 600 it",
                mode & 0o777
            )));
        }
        if meta.len() != 32 {
            return Err(refuse(format!(
                "holds {} bytes; a master key is exactly 32 raw bytes",
                meta.len()
            )));
        }
        let mut buf = Zeroizing::new([0u8; 32]);
        f.read_exact(&mut buf[..]).map_err(io)?;
        Ok(Key32::from_bytes(&buf)?)
    }
}

/// Create a new random master key file (mode 0600) unless one exists. For the demo and tests.
#[cfg(test)]
pub(crate) fn create_if_missing(path: &std::path::Path) -> Result<bool, MasterKeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(false);
    }
    let key = Key32::random()?;
    let io = |source| MasterKeyError::FileIo {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(key.expose())
        .and_then(|_| f.sync_all())
        .map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_readable_or_short_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mk");
        assert!(create_if_missing(&p).unwrap());
        assert!(!create_if_missing(&p).unwrap());
        let src = FileMasterKey { path: p.clone() };
        let k1 = src.obtain().unwrap();
        assert_eq!(k1.expose(), src.obtain().unwrap().expose());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(src.obtain().unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, [1u8; 31]).unwrap();
        assert!(src.obtain().unwrap_err().to_string().contains("31 bytes"));
    }
}
