//! Shared helpers: a server per test, records and headers the backend only stores (it never
//! checks MACs), and a direct SQL client for tampering.

use std::ops::{Deref, DerefMut};

use keyward_keystore::KeyStore;
use keyward_keystore::{Header, Record, Sealed, SealedHead, SignedRecord};
use keyward_store_pg::local::{LocalOptions, LocalPostgres};
use keyward_store_pg::{PgConfig, PgKeyStore};

/// A server in a temporary directory; the server stops before the directory goes.
pub(crate) struct Server {
    pub pg: LocalPostgres,
    _dir: tempfile::TempDir,
}

impl Deref for Server {
    type Target = LocalPostgres;
    fn deref(&self) -> &LocalPostgres {
        &self.pg
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut LocalPostgres {
        &mut self.pg
    }
}

pub(crate) fn server() -> Server {
    server_with(LocalOptions::default())
}

/// The pristine data directory every plain server starts from (initdb once per target dir).
fn template() -> std::path::PathBuf {
    static T: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        LocalPostgres::template(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap()
    })
    .clone()
}

pub(crate) fn server_with(mut opts: LocalOptions) -> Server {
    if opts.password.is_none() {
        opts.template = Some(template());
    }
    let dir = tempfile::tempdir().unwrap();
    let pg = LocalPostgres::start_with(dir.path(), opts).unwrap();
    Server { pg, _dir: dir }
}

pub(crate) fn connect(s: &Server) -> PgKeyStore {
    PgKeyStore::connect(&s.config()).unwrap()
}

/// A direct SQL session (to tamper, or to look).
pub(crate) fn sql(s: &Server) -> postgres::Client {
    postgres::Client::connect(&s.url(), postgres::NoTls).unwrap()
}

pub(crate) fn header(id: &str) -> Header {
    Header {
        format: 2,
        store_id: id.into(),
        check: Sealed(vec![1, 2, 3, 4]),
        mk_version: 1,
    }
}

pub(crate) fn rec(seq: u64, tag: &str) -> SignedRecord {
    SignedRecord {
        seq,
        mac: tag.into(),
        batch: None,
        rec: Record::RemoveStore { name: tag.into() },
    }
}

pub(crate) fn sealed(id: &str, seq: u64) -> SealedHead {
    SealedHead {
        format: 2,
        store_id: id.into(),
        seq,
        chain_mac: format!("{seq:064x}"),
        mac: "00".into(),
        mk_version: 1,
    }
}

pub(crate) fn loaded(ks: &mut dyn KeyStore) -> Vec<SignedRecord> {
    let mut v = Vec::new();
    ks.load(&mut |r| {
        v.push(r);
        Ok(())
    })
    .unwrap();
    v
}

/// An initialised store (header `id`, sealed head 0).
pub(crate) fn initialised(s: &Server, id: &str) -> PgKeyStore {
    let mut ks = connect(s);
    ks.store_head(&sealed(id, 0)).unwrap();
    ks.init(&header(id)).unwrap();
    ks.load(&mut |_| Ok(())).unwrap();
    ks
}

pub(crate) fn cfg(s: &Server) -> PgConfig {
    s.config()
}
