//! The file implementation of [`KeyStore`]: one directory holding an append-only log of
//! JSON lines (header first, then one [`SignedRecord`] per line), compacted by rewriting.
//!
//! Durability: an append is `write` + `fdatasync`; a compaction (and the first header) is a
//! temp file, `fsync`, `rename`, `fsync` of the directory. A `kill -9` can only leave a torn last
//! line, which was never acknowledged; it is cut off when the store is next opened. An exclusive
//! `flock` on a lock file keeps a second process from writing the same store.

use std::path::{Path, PathBuf};

use super::model::{Header, KeyStore, SignedRecord};
use super::KeystoreError;

/// A key store in a directory.
pub struct FileKeyStore {
    dir: PathBuf,
}

impl FileKeyStore {
    /// Open the store in `dir`, creating the directory (mode 0700) if missing, and take its lock.
    pub fn open(dir: &Path) -> Result<FileKeyStore, KeystoreError> {
        let _ = dir;
        todo!()
    }
}

impl KeyStore for FileKeyStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }
    fn header(&mut self) -> Result<Option<Header>, KeystoreError> {
        todo!()
    }
    fn init(&mut self, header: &Header) -> Result<(), KeystoreError> {
        let _ = header;
        todo!()
    }
    fn load(
        &mut self,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let _ = visit;
        todo!()
    }
    fn append(&mut self, rec: &SignedRecord) -> Result<(), KeystoreError> {
        let _ = rec;
        todo!()
    }
    fn record_count(&self) -> usize {
        todo!()
    }
    fn compact(
        &mut self,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        let _ = records;
        todo!()
    }
}
