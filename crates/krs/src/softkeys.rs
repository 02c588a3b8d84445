//! The software stand-in for the HSM, for `keyward demo` on machines without SoftHSMv2 only.
//! It keeps the master key and the receipt key in files (mode 0600) under the demo's state
//! directory and performs the same wrap as the HSM (ECDH P-384 with CKD_NULL semantics, the
//! T-binding AES step, RFC 3394 key wrap) in software, so the agent's side is unchanged. It
//! protects nothing: the master key is a file. Never used by `keyward krs serve`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use p384::ecdsa::signature::hazmat::PrehashSigner;
use zeroize::Zeroizing;

use keyward_hsm::{Capabilities, HsmError, HsmWrap, KeyBackend};
use keyward_krp::derive_wrap_key;

/// Keys in files under a directory.
pub struct SoftKeys {
    mk: Zeroizing<[u8; 32]>,
    receipt: p384::ecdsa::SigningKey,
    id: String,
}

fn io(p: &Path, source: std::io::Error) -> HsmError {
    HsmError::SoftKeyFile {
        path: p.to_path_buf(),
        source,
    }
}

fn create_0600(p: &Path, bytes: &[u8]) -> Result<(), HsmError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| io(p, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io(p, e))
}

impl SoftKeys {
    /// Load the keys from `dir`, creating them on first use.
    pub fn open_or_create(dir: &Path) -> Result<Self, HsmError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mk_path: PathBuf = dir.join("soft-master.key");
        let rk_path: PathBuf = dir.join("soft-receipt.key");
        if !mk_path.exists() {
            let mut k = Zeroizing::new([0u8; 32]);
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k[..]);
            create_0600(&mk_path, &k[..])?;
        }
        if !rk_path.exists() {
            let sk = p384::SecretKey::random(&mut rand_core::OsRng);
            create_0600(&rk_path, &sk.to_bytes())?;
        }
        let mkb = Zeroizing::new(std::fs::read(&mk_path).map_err(|e| io(&mk_path, e))?);
        let rkb = Zeroizing::new(std::fs::read(&rk_path).map_err(|e| io(&rk_path, e))?);
        let mut mk = Zeroizing::new([0u8; 32]);
        if mkb.len() != 32 {
            return Err(HsmError::Malformed("soft master key is not 32 bytes"));
        }
        mk.copy_from_slice(&mkb);
        let receipt = p384::ecdsa::SigningKey::from_slice(&rkb)
            .map_err(|_| HsmError::Malformed("soft receipt key"))?;
        Ok(Self {
            mk,
            receipt,
            id: "keyward-master".into(),
        })
    }
}

impl KeyBackend for SoftKeys {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ecdh_derive: true,
            aes_encrypt_data_derive: true,
            aes_key_wrap: true,
            ecdsa: true,
        }
    }
    fn master_key_id(&self) -> &str {
        &self.id
    }
    fn receipt_public_key(&self) -> Result<Vec<u8>, HsmError> {
        Ok(self
            .receipt
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec())
    }
    fn sign_digest(&self, digest: &[u8; 48]) -> Result<Vec<u8>, HsmError> {
        let sig: p384::ecdsa::Signature = self
            .receipt
            .sign_prehash(digest)
            .map_err(|_| HsmError::Malformed("soft sign"))?;
        Ok(sig.to_bytes().to_vec())
    }
    fn release_wrap(&self, agent_epk: &[u8], transcript: &[u8]) -> Result<HsmWrap, HsmError> {
        use p384::elliptic_curve::sec1::ToEncodedPoint;
        let peer = p384::PublicKey::from_sec1_bytes(agent_epk)
            .map_err(|_| HsmError::Malformed("agent epk"))?;
        let eph = p384::SecretKey::random(&mut rand_core::OsRng);
        let shared = p384::ecdh::diffie_hellman(eph.to_nonzero_scalar(), peer.as_affine());
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&shared.raw_secret_bytes()[16..]);
        let kw = derive_wrap_key(&k, transcript);
        let mut wrapped = vec![0u8; 40];
        aes_kw::KekAes256::from(*kw)
            .wrap(&self.mk[..], &mut wrapped)
            .map_err(|_| HsmError::Malformed("soft wrap"))?;
        Ok(HsmWrap {
            hsm_epk: eph.public_key().to_encoded_point(false).as_bytes().to_vec(),
            wrapped,
        })
    }
    fn export_master_for_fallback(&self) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        Ok(self.mk.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_krp::EphemeralKey;

    #[test]
    fn soft_wrap_round_trips_and_persists() {
        let d = tempfile::tempdir().unwrap();
        let s = SoftKeys::open_or_create(d.path()).unwrap();
        let a = EphemeralKey::generate();
        let w = s.release_wrap(&a.public_sec1(), &[1; 48]).unwrap();
        let mk = a.unwrap_hsm(&w.hsm_epk, &[1; 48], &w.wrapped).unwrap();
        let again = SoftKeys::open_or_create(d.path()).unwrap();
        assert_eq!(*again.export_master_for_fallback().unwrap(), *mk);
        assert_eq!(
            again.receipt_public_key().unwrap(),
            s.receipt_public_key().unwrap()
        );
    }
}
