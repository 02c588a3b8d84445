//! Sealing under the master key: AES-256-GCM for secrets (KEKs, credential secrets, the header
//! check), chained HMAC-SHA256 over every record and HMAC-SHA256 over the sealed head, each with
//! its own subkey derived from the master key (`HMAC-SHA256(MK, label)`), so one key is never
//! used by two algorithms.
//!
//! AADs are length-prefixed and domain-separated:
//! * KEK: `"keyward/kek" ‖ format ‖ u16 len ‖ store ‖ u16 len ‖ key id ‖ u32 version`
//! * credential secret: `"keyward/cred" ‖ format ‖ u16 len ‖ store ‖ u16 len ‖ access key id`
//! * appliance TLS private key: `"keyward/tls-key" ‖ format`
//! * header check: `"keyward/header" ‖ format ‖ store id`
//!
//! A sealed blob is `format ‖ IV (12, random) ‖ ciphertext ‖ tag (16)`.
//!
//! MACs (log format 2; `id` = `u64 len ‖ store id`, integers big-endian):
//! * chain start: `"keyward/chain-start" ‖ 2 ‖ id`
//! * record: `"keyward/record" ‖ 2 ‖ id ‖ u64 seq ‖ u64 batch ‖ prev chain MAC ‖ JSON`
//! * checkpoint: `"keyward/checkpoint" ‖ 2 ‖ id ‖ u64 seq ‖ chain MAC ‖ u64 live count`
//! * live record: `"keyward/live" ‖ 2 ‖ id ‖ u64 seq ‖ u64 index ‖ previous live MAC ‖ JSON`
//!   (the first one's previous MAC is the checkpoint's)
//! * sealed head (head subkey): `"keyward/head" ‖ 2 ‖ id ‖ u64 seq ‖ chain MAC`
//! * backup file (backup subkey, `backup.rs`): `"keyward/backup" ‖ 2 ‖ id ‖ u32 backup version
//!   ‖ the body's bytes`
//!
//! Key schedules are wiped when the sealer is dropped: AES-GCM through the same wiped ring key
//! as the request path ([`GcmKey`]), HMAC through the `hmac`/`sha2` 0.11 generation, whose
//! states are wiped on drop (checked at compile time below).

use hmac13::{KeyInit, Mac};
use sha2_11::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::model::{Record, Sealed, FORMAT_VERSION, LOG_FORMAT};
use super::KeystoreError;
use keyward_secret::GcmKey;
use keyward_secret::{getrandom_fill, Key32};

type HmacSha256 = hmac13::Hmac<Sha256>;

// The HMAC key schedule (and every clone of it) is wiped on drop: `Hmac<Sha256>` is its two
// SHA-256 cores (the ipad and opad states) and a block buffer, each `ZeroizeOnDrop` with the
// `zeroize` features (`Hmac` itself does not carry the marker, so its parts are checked).
const _: fn() = || {
    fn wiped<T: zeroize::ZeroizeOnDrop>() {}
    wiped::<<Sha256 as hmac13::EagerHash>::Core>();
    wiped::<Sha256>(); // its core and its block buffer, the same buffer type as the HMAC's
};

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The plaintext sealed in the header: opening it proves the master key.
const CHECK_PLAINTEXT: &[u8; 32] = b"keyward key store master check!!";

/// A chain MAC.
pub(crate) type ChainMac = [u8; 32];

/// Seals and opens secrets and MACs records for one store.
pub(crate) struct Sealer {
    aead: GcmKey,
    mac: HmacSha256,
    head_mac: HmacSha256,
    backup_mac: HmacSha256,
    store_id: Vec<u8>,
    /// The master-key version these subkeys come from (recorded in the header and heads).
    mk_version: u32,
}

/// Derive a purpose-bound subkey into locked memory.
fn subkey(master: &Key32, label: &[u8]) -> Result<Key32, KeystoreError> {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(master.expose())
        .map_err(|_| KeystoreError::Seal)?;
    m.update(label);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&m.finalize().into_bytes());
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

/// AAD of the pending TLS key (`tls csr --new-key`): another context than the current key's,
/// so the two sealed blobs cannot be swapped.
pub(crate) fn tls_pending_key_aad() -> Vec<u8> {
    let mut aad = b"keyward/tls-key-pending".to_vec();
    aad.push(FORMAT_VERSION);
    aad
}

/// AAD of a wrapped-import token's wrapping private key: bound to the token's hash, so a
/// sealed key cannot be moved to another token's record.
pub(crate) fn import_key_aad(token_sha256: &str) -> Vec<u8> {
    let mut aad = b"keyward/import-key".to_vec();
    aad.push(FORMAT_VERSION);
    push_str(&mut aad, token_sha256);
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

/// Decode a hex MAC; `None` if it is not 32 bytes of hex.
pub(crate) fn decode_mac(hex_mac: &str) -> Option<ChainMac> {
    let mut tag = [0u8; 32];
    hex::decode_to_slice(hex_mac, &mut tag).ok()?;
    Some(tag)
}

/// Constant-time comparison of a computed MAC with a stored hex one.
pub(crate) fn mac_matches(computed: &ChainMac, stored_hex: &str) -> bool {
    decode_mac(stored_hex).is_some_and(|t| bool::from(t.ct_eq(computed)))
}

fn out32(m: HmacSha256) -> ChainMac {
    let mut out = [0u8; 32];
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

impl Sealer {
    /// Derive the subkeys for the store `store_id` (master-key version 1).
    #[cfg(test)]
    pub(crate) fn new(master: &Key32, store_id: &[u8]) -> Result<Sealer, KeystoreError> {
        Self::versioned(master, store_id, super::model::MK_VERSION_1)
    }

    /// [`Sealer::new`] for master-key version `mk_version`.
    pub(crate) fn versioned(
        master: &Key32,
        store_id: &[u8],
        mk_version: u32,
    ) -> Result<Sealer, KeystoreError> {
        let enc = subkey(master, b"keyward keystore v1 seal")?;
        let mac = subkey(master, b"keyward keystore v1 mac")?;
        let head = subkey(master, b"keyward keystore v2 head")?;
        let backup = subkey(master, b"keyward keystore v2 backup")?;
        let aead = GcmKey::new(&enc).map_err(|_| KeystoreError::Seal)?;
        let mac = <HmacSha256 as KeyInit>::new_from_slice(mac.expose())
            .map_err(|_| KeystoreError::Seal)?;
        let head_mac = <HmacSha256 as KeyInit>::new_from_slice(head.expose())
            .map_err(|_| KeystoreError::Seal)?;
        let backup_mac = <HmacSha256 as KeyInit>::new_from_slice(backup.expose())
            .map_err(|_| KeystoreError::Seal)?;
        Ok(Sealer {
            aead,
            mac,
            head_mac,
            backup_mac,
            store_id: store_id.to_vec(),
            mk_version,
        })
    }

    /// The master-key version these subkeys come from.
    pub(crate) fn mk_version(&self) -> u32 {
        self.mk_version
    }

    /// The store id this sealer binds.
    pub(crate) fn store_id(&self) -> &[u8] {
        &self.store_id
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
            .seal(
                iv,
                aad,
                out.get_mut(1 + IV_LEN..).ok_or(KeystoreError::Seal)?,
            )
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
        const WRONG_LENGTH: &str = "sealed value has the wrong length";
        let b = &sealed.0;
        if b.len() != 1 + IV_LEN + out.len() + TAG_LEN {
            return Err(WRONG_LENGTH);
        }
        let (version, rest) = b.split_first().ok_or(WRONG_LENGTH)?;
        if *version != FORMAT_VERSION {
            return Err("sealed value has an unknown format version");
        }
        let (iv, rest) = rest.split_first_chunk::<IV_LEN>().ok_or(WRONG_LENGTH)?;
        let (ct, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or(WRONG_LENGTH)?;
        let (iv, tag) = (*iv, *tag);
        out.copy_from_slice(ct);
        let r = self.aead.open(iv, aad, &tag, out);
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

    /// A MAC state with `label`, `format` and the store id absorbed.
    fn start(&self, key: &HmacSha256, label: &[u8], format: u8) -> HmacSha256 {
        let mut m = key.clone();
        m.update(label);
        m.update(&[format]);
        m.update(&(self.store_id.len() as u64).to_be_bytes());
        m.update(&self.store_id);
        m
    }

    fn absorb(m: &mut HmacSha256, rec: &Record) -> Result<(), KeystoreError> {
        serde_json::to_writer(MacWriter(m), rec).map_err(|_| KeystoreError::Seal)
    }

    /// Format 1: check a record's MAC (constant time). Read only, for migration.
    pub(crate) fn verify_record_v1(
        &self,
        seq: u64,
        rec: &Record,
        mac_hex: &str,
    ) -> Result<bool, KeystoreError> {
        let Some(tag) = decode_mac(mac_hex) else {
            return Ok(false);
        };
        let mut m = self.start(&self.mac, b"keyward/record", FORMAT_VERSION);
        m.update(&seq.to_be_bytes());
        Self::absorb(&mut m, rec)?;
        Ok(m.verify_slice(&tag).is_ok())
    }

    /// The chain's start value (the "chain MAC" of an empty store).
    pub(crate) fn chain_start(&self) -> ChainMac {
        out32(self.start(&self.mac, b"keyward/chain-start", LOG_FORMAT))
    }

    /// The chain MAC of the record at `seq` written in a batch of `batch` (1 unless it is the
    /// first record of a larger write), after `prev`.
    pub(crate) fn chain_mac(
        &self,
        seq: u64,
        batch: u64,
        prev: &ChainMac,
        rec: &Record,
    ) -> Result<ChainMac, KeystoreError> {
        let mut m = self.start(&self.mac, b"keyward/record", LOG_FORMAT);
        m.update(&seq.to_be_bytes());
        m.update(&batch.to_be_bytes());
        m.update(prev);
        Self::absorb(&mut m, rec)?;
        Ok(out32(m))
    }

    /// The MAC of a checkpoint standing for the head (`seq`, `chain`) followed by `live` records.
    pub(crate) fn checkpoint_mac(&self, seq: u64, chain: &ChainMac, live: u64) -> ChainMac {
        let mut m = self.start(&self.mac, b"keyward/checkpoint", LOG_FORMAT);
        m.update(&seq.to_be_bytes());
        m.update(chain);
        m.update(&live.to_be_bytes());
        out32(m)
    }

    /// The MAC of the `index`-th (from 1) live record after the checkpoint at `seq`.
    pub(crate) fn live_mac(
        &self,
        seq: u64,
        index: u64,
        prev: &ChainMac,
        rec: &Record,
    ) -> Result<ChainMac, KeystoreError> {
        let mut m = self.start(&self.mac, b"keyward/live", LOG_FORMAT);
        m.update(&seq.to_be_bytes());
        m.update(&index.to_be_bytes());
        m.update(prev);
        Self::absorb(&mut m, rec)?;
        Ok(out32(m))
    }

    /// The sealed head's MAC over (`seq`, `chain`).
    pub(crate) fn head_mac(&self, seq: u64, chain: &ChainMac) -> ChainMac {
        let mut m = self.start(&self.head_mac, b"keyward/head", LOG_FORMAT);
        m.update(&seq.to_be_bytes());
        m.update(chain);
        out32(m)
    }

    /// The MAC of a backup file's body (its exact bytes), backup format `version`.
    pub(crate) fn backup_mac(&self, version: u32, body: &[u8]) -> ChainMac {
        let mut m = self.start(&self.backup_mac, b"keyward/backup", LOG_FORMAT);
        m.update(&version.to_be_bytes());
        m.update(body);
        out32(m)
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
    fn chain_mac_binds_seq_batch_prev_store_and_content() {
        let s = sealer(1, b"id1");
        let rec = Record::RemoveStore { name: "a".into() };
        let prev = s.chain_start();
        let mac = s.chain_mac(5, 1, &prev, &rec).unwrap();
        assert!(mac_matches(&mac, &hex::encode(mac)));
        assert_ne!(s.chain_mac(6, 1, &prev, &rec).unwrap(), mac);
        assert_ne!(s.chain_mac(5, 2, &prev, &rec).unwrap(), mac);
        assert_ne!(s.chain_mac(5, 1, &mac, &rec).unwrap(), mac);
        assert_ne!(sealer(1, b"id2").chain_mac(5, 1, &prev, &rec).unwrap(), mac);
        assert_ne!(sealer(2, b"id1").chain_mac(5, 1, &prev, &rec).unwrap(), mac);
        let other = Record::RemoveStore { name: "b".into() };
        assert_ne!(s.chain_mac(5, 1, &prev, &other).unwrap(), mac);
        assert!(!mac_matches(&mac, "zz"));
        // Each MAC kind is domain-separated from the others, and the chain starts per store.
        assert_ne!(s.live_mac(5, 1, &prev, &rec).unwrap(), mac);
        assert_ne!(s.head_mac(5, &mac), s.checkpoint_mac(5, &mac, 0));
        assert_ne!(s.backup_mac(1, b"x"), sealer(1, b"id2").backup_mac(1, b"x"));
        assert_ne!(s.backup_mac(1, b"x"), s.backup_mac(2, b"x"));
        assert_ne!(s.backup_mac(1, b"x"), sealer(2, b"id1").backup_mac(1, b"x"));
        assert_ne!(s.chain_start(), sealer(1, b"id2").chain_start());
    }

    #[test]
    fn format_1_record_macs_still_verify() {
        // HMAC-SHA256(subkey, "keyward/record" || 1 || u64 len || id || u64 seq || JSON), the
        // previous release's MAC, computed independently with the hmac 0.12 generation.
        use hmac::{Hmac, Mac as _};
        let master = Key32::from_bytes(&[1; 32]).unwrap();
        let s = Sealer::new(&master, b"id1").unwrap();
        let mut k = <Hmac<sha2::Sha256>>::new_from_slice(&[1; 32]).unwrap();
        k.update(b"keyward keystore v1 mac");
        let sub = k.finalize().into_bytes();
        let rec = Record::RemoveStore { name: "a".into() };
        let mut m = <Hmac<sha2::Sha256>>::new_from_slice(&sub).unwrap();
        m.update(b"keyward/record");
        m.update(&[1]);
        m.update(&3u64.to_be_bytes());
        m.update(b"id1");
        m.update(&7u64.to_be_bytes());
        m.update(&serde_json::to_vec(&rec).unwrap());
        let mac = hex::encode(m.finalize().into_bytes());
        assert!(s.verify_record_v1(7, &rec, &mac).unwrap());
        assert!(!s.verify_record_v1(8, &rec, &mac).unwrap());
    }
}
