//! PEM files in, rustls DER types out: a certificate chain (leaf first) and the first private
//! key (PKCS#8, SEC1 or PKCS#1). The file bytes of a key are zeroized once parsed.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate found", path.display())]
    NoCert { path: PathBuf },
    #[error("{}: no PEM private key (PKCS#8, SEC1 or PKCS#1) found", path.display())]
    NoKey { path: PathBuf },
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, PemError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| PemError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Every certificate in a PEM file, leaf first; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = read(path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(k)) => Ok(k),
        _ => Err(PemError::NoKey {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_path_once() {
        let e = load_certs(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert_eq!(e.to_string(), "cannot read /nonexistent/ca.pem");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn a_file_without_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("kw-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.pem");
        std::fs::write(&f, b"not pem").unwrap();
        assert!(matches!(load_certs(&f), Err(PemError::NoCert { .. })));
        assert!(matches!(load_key(&f), Err(PemError::NoKey { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
