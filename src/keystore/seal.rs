//! Sealing under the master key: AES-256-GCM for secrets (KEKs, credential secrets, the header
//! check) and HMAC-SHA256 over every record, each with its own subkey derived from the master
//! key (`HMAC-SHA256(MK, label)`), so one key is never used by two algorithms.
//!
//! AADs are length-prefixed and domain-separated:
//! * KEK: `"keyward/kek" ‖ format ‖ u16 len ‖ store ‖ u16 len ‖ key id ‖ u32 version`
//! * credential secret: `"keyward/cred" ‖ format ‖ u16 len ‖ store ‖ u16 len ‖ access key id`
//! * appliance TLS private key: `"keyward/tls-key" ‖ format`
//! * header check: `"keyward/header" ‖ format ‖ store id`
//!
//! A sealed blob is `format ‖ IV (12, random) ‖ ciphertext ‖ tag (16)`.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::model::{Record, Sealed, FORMAT_VERSION};
use super::KeystoreError;
use crate::secret::{getrandom_fill, Key32};

type HmacSha256 = Hmac<Sha256>;

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The plaintext sealed in the header: opening it proves the master key.
const CHECK_PLAINTEXT: &[u8; 32] = b"keyward key store master check!!";

/// Seals and opens secrets and MACs records for one store.
pub(crate) struct Sealer {
    aead: Aes256Gcm,
    mac: HmacSha256,
    store_id: Vec<u8>,
}

/// Derive a purpose-bound subkey into locked memory.
fn subkey(master: &Key32, label: &[u8]) -> Result<Key32, KeystoreError> {
    let mut m =
        <HmacSha256 as Mac>::new_from_slice(master.expose()).map_err(|_| KeystoreError::Seal)?;
    m.update(label);
    let out = Zeroizing::new(<[u8; 32]>::from(m.finalize().into_bytes()));
    Ok(Key32::from_bytes(&out)?)
}

fn push_str(aad: &mut Vec<u8>, s: &str) {
    // Lengths are validated (ids <= 128, names <= 64) long before; clamp defensively.
    let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
    aad.extend_from_slice(&n.to_be_bytes());
    aad.extend_from_slice(s.as_bytes());
}

/// AAD for a KEK.
pub(crate) fn kek_aad(store: &str, id: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(24 + store.len() + id.len());
    aad.extend_from_slice(b"keyward/kek");
    aad.push(FORMAT_VERSION);
    push_str(&mut aad, store);
    push_str(&mut aad, id);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// AAD for a credential secret.
pub(crate) fn cred_aad(store: &str, access_key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(24 + store.len() + access_key_id.len());
    aad.extend_from_slice(b"keyward/cred");
    aad.push(FORMAT_VERSION);
    push_str(&mut aad, store);
    push_str(&mut aad, access_key_id);
    aad
}

/// AAD for the appliance TLS private key (a singleton: the record MAC binds it to this store).
pub(crate) fn tls_key_aad() -> Vec<u8> {
    let mut aad = b"keyward/tls-key".to_vec();
    aad.push(FORMAT_VERSION);
    aad
}

/// An `io::Write` that feeds an HMAC, so a record's JSON is MACed without a buffer.
struct MacWriter<'a>(&'a mut HmacSha256);

impl std::io::Write for MacWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sealer {
    /// Derive the subkeys for the store `store_id`.
    pub(crate) fn new(master: &Key32, store_id: &[u8]) -> Result<Sealer, KeystoreError> {
        let enc = subkey(master, b"keyward keystore v1 seal")?;
        let mac = subkey(master, b"keyward keystore v1 mac")?;
        let aead = Aes256Gcm::new_from_slice(enc.expose()).map_err(|_| KeystoreError::Seal)?;
        let mac =
            <HmacSha256 as Mac>::new_from_slice(mac.expose()).map_err(|_| KeystoreError::Seal)?;
        Ok(Sealer {
            aead,
            mac,
            store_id: store_id.to_vec(),
        })
    }

    /// Seal `plain` with `aad`.
    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Sealed, KeystoreError> {
        let mut iv = [0u8; IV_LEN];
        getrandom_fill(&mut iv)?;
        let mut out = Vec::with_capacity(1 + IV_LEN + plain.len() + TAG_LEN);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&iv), aad, &mut out[1 + IV_LEN..])
            .map_err(|_| KeystoreError::Seal)?;
        out.extend_from_slice(&tag);
        Ok(Sealed(out))
    }

    /// Open a sealed blob into `out` (exactly its plaintext length). `Err(why)` when it does not
    /// authenticate.
    pub(crate) fn open_into(
        &self,
        sealed: &Sealed,
        aad: &[u8],
        out: &mut [u8],
    ) -> Result<(), &'static str> {
        let b = &sealed.0;
        if b.len() != 1 + IV_LEN + out.len() + TAG_LEN {
            return Err("sealed value has the wrong length");
        }
        if b[0] != FORMAT_VERSION {
            return Err("sealed value has an unknown format version");
        }
        let iv = &b[1..1 + IV_LEN];
        let ct = &b[1 + IV_LEN..b.len() - TAG_LEN];
        let tag = &b[b.len() - TAG_LEN..];
        out.copy_from_slice(ct);
        let r = self.aead.decrypt_in_place_detached(
            Nonce::from_slice(iv),
            aad,
            out,
            Tag::from_slice(tag),
        );
        if r.is_err() {
            out.iter_mut().for_each(|b| *b = 0);
            return Err("sealed value does not authenticate (AES-GCM tag mismatch)");
        }
        Ok(())
    }

    /// Seal a KEK.
    pub(crate) fn seal_kek(
        &self,
        store: &str,
        id: &str,
        version: u32,
        kek: &Key32,
    ) -> Result<Sealed, KeystoreError> {
        self.seal(kek.expose(), &kek_aad(store, id, version))
    }

    /// Open a KEK straight into locked memory.
    pub(crate) fn open_kek(
        &self,
        store: &str,
        id: &str,
        version: u32,
        sealed: &Sealed,
    ) -> Result<Result<Key32, &'static str>, KeystoreError> {
        let mut buf = Zeroizing::new([0u8; 32]);
        match self.open_into(sealed, &kek_aad(store, id, version), &mut buf[..]) {
            Ok(()) => Ok(Ok(Key32::from_bytes(&buf)?)),
            Err(why) => Ok(Err(why)),
        }
    }

    /// The header's check value.
    pub(crate) fn seal_check(&self) -> Result<Sealed, KeystoreError> {
        self.seal(CHECK_PLAINTEXT, &self.header_aad())
    }

    /// Whether the header's check value opens (the master key is right).
    pub(crate) fn verify_check(&self, check: &Sealed) -> bool {
        let mut buf = [0u8; 32];
        self.open_into(check, &self.header_aad(), &mut buf).is_ok() && &buf == CHECK_PLAINTEXT
    }

    fn header_aad(&self) -> Vec<u8> {
        let mut aad = b"keyward/header".to_vec();
        aad.push(FORMAT_VERSION);
        aad.extend_from_slice(&self.store_id);
        aad
    }

    fn mac_state(&self, seq: u64, rec: &Record) -> Result<HmacSha256, KeystoreError> {
        let mut m = self.mac.clone();
        m.update(b"keyward/record");
        m.update(&[FORMAT_VERSION]);
        m.update(&(self.store_id.len() as u64).to_be_bytes());
        m.update(&self.store_id);
        m.update(&seq.to_be_bytes());
        serde_json::to_writer(MacWriter(&mut m), rec).map_err(|_| KeystoreError::Seal)?;
        Ok(m)
    }

    /// The MAC of a record at `seq`, hex.
    pub(crate) fn mac_record(&self, seq: u64, rec: &Record) -> Result<String, KeystoreError> {
        Ok(hex::encode(
            self.mac_state(seq, rec)?.finalize().into_bytes(),
        ))
    }

    /// Check a record's MAC (constant time).
    pub(crate) fn verify_record(
        &self,
        seq: u64,
        rec: &Record,
        mac_hex: &str,
    ) -> Result<bool, KeystoreError> {
        let mut tag = [0u8; 32];
        if hex::decode_to_slice(mac_hex, &mut tag).is_err() {
            return Ok(false);
        }
        Ok(self.mac_state(seq, rec)?.verify_slice(&tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(k: u8, id: &[u8]) -> Sealer {
        Sealer::new(&Key32::from_bytes(&[k; 32]).unwrap(), id).unwrap()
    }

    #[test]
    fn kek_round_trip_and_aad_binding() {
        let s = sealer(1, b"store-a");
        let kek = Key32::from_bytes(&[9; 32]).unwrap();
        let sealed = s.seal_kek("default", "k1", 1, &kek).unwrap();
        assert_eq!(sealed.0.len(), 1 + 12 + 32 + 16);
        assert!(!sealed.0.windows(32).any(|w| w == [9; 32]), "KEK in clear");
        let back = s.open_kek("default", "k1", 1, &sealed).unwrap().unwrap();
        assert_eq!(back.expose(), kek.expose());
        // Any change of id, store or version is refused.
        assert!(s.open_kek("default", "k2", 1, &sealed).unwrap().is_err());
        assert!(s.open_kek("other", "k1", 1, &sealed).unwrap().is_err());
        assert!(s.open_kek("default", "k1", 2, &sealed).unwrap().is_err());
        // AAD fields are length-prefixed: moving a character between fields is refused.
        assert_ne!(kek_aad("ab", "c", 1), kek_aad("a", "bc", 1));
        // Another master key cannot open it.
        assert!(sealer(2, b"store-a")
            .open_kek("default", "k1", 1, &sealed)
            .unwrap()
            .is_err());
        // A flipped byte anywhere is refused.
        for i in 0..sealed.0.len() {
            let mut t = sealed.clone();
            t.0[i] ^= 1;
            assert!(
                s.open_kek("default", "k1", 1, &t).unwrap().is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn fresh_iv_each_time() {
        let s = sealer(1, b"x");
        let kek = Key32::from_bytes(&[9; 32]).unwrap();
        let a = s.seal_kek("d", "k", 1, &kek).unwrap();
        let b = s.seal_kek("d", "k", 1, &kek).unwrap();
        assert_ne!(a.0[1..13], b.0[1..13]);
    }

    #[test]
    fn header_check_needs_the_right_master_key_and_store() {
        let s = sealer(1, b"id1");
        let c = s.seal_check().unwrap();
        assert!(s.verify_check(&c));
        assert!(!sealer(2, b"id1").verify_check(&c));
        assert!(!sealer(1, b"id2").verify_check(&c));
    }

    #[test]
    fn record_mac_binds_seq_store_and_content() {
        let s = sealer(1, b"id1");
        let rec = Record::RemoveStore { name: "a".into() };
        let mac = s.mac_record(5, &rec).unwrap();
        assert!(s.verify_record(5, &rec, &mac).unwrap());
        assert!(!s.verify_record(6, &rec, &mac).unwrap());
        assert!(!sealer(1, b"id2").verify_record(5, &rec, &mac).unwrap());
        assert!(!sealer(2, b"id1").verify_record(5, &rec, &mac).unwrap());
        let other = Record::RemoveStore { name: "b".into() };
        assert!(!s.verify_record(5, &other, &mac).unwrap());
        assert!(!s.verify_record(5, &rec, "zz").unwrap());
    }
}
