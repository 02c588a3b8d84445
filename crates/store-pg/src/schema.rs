//! The database schema, versioned: the migrations in order, recorded in `keyward_schema`, run
//! under a transaction-scoped advisory lock so that members starting together apply each one
//! exactly once. Run at every connect and by [`migrate`] (`keyward admin store migrate`).
//!
//! Tables (version 1):
//! * `keyward_header`: one row, the store's [`keyward_keystore::Header`] JSON.
//! * `keyward_records`: the [`keyward_keystore::SignedRecord`]s, JSON exactly as they
//!   serialize, keyed by `(seq, pos)`. `pos` is 0 for every record of the chain, so the primary
//!   key makes a second record with the same `seq` impossible; only the live records after a
//!   compaction checkpoint (which all carry the checkpoint's `seq`) have `pos` 1, 2, ...
//! * `keyward_head`: one row: `tip` (the newest record's `seq`: the compare-and-set of every
//!   append) and the [`keyward_keystore::SealedHead`] JSON with its `seq`.
//! * `keyward_members`: the fleet's heartbeats.
//!
//! Version 2: `keyward_head.generation` (counts whole-log replacements: a fleet re-seal moves
//! it, and every append's compare-and-set checks it, so a member whose view is of an older
//! generation cannot append after the tip of the new one) and `keyward_head.mk_version` (the
//! master-key version the current generation is sealed under, for operators and followers).

use keyward_keystore::KeystoreError;
use postgres::Client;
use serde::Serialize;

use crate::config::Connector;
use crate::PgConfig;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 2;

/// Key of the advisory lock held while migrating ("keyward\0").
const MIGRATION_LOCK: i64 = 0x6b65_7977_6172_6400;

/// The migrations, `(version, SQL)`, in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE keyward_header (
         one boolean PRIMARY KEY DEFAULT true CHECK (one),
         header json NOT NULL
     );
     CREATE TABLE keyward_records (
         seq bigint NOT NULL CHECK (seq >= 0),
         pos integer NOT NULL DEFAULT 0 CHECK (pos >= 0),
         rec json NOT NULL,
         PRIMARY KEY (seq, pos)
     );
     CREATE TABLE keyward_head (
         one boolean PRIMARY KEY DEFAULT true CHECK (one),
         tip bigint NOT NULL CHECK (tip >= 0),
         sealed json,
         sealed_seq bigint
     );
     CREATE TABLE keyward_members (
         id text PRIMARY KEY,
         version text NOT NULL,
         label text NOT NULL,
         last_seen timestamptz NOT NULL,
         keks bigint NOT NULL,
         seq bigint NOT NULL
     );",
    ),
    (
        2,
        "ALTER TABLE keyward_head
             ADD COLUMN generation bigint NOT NULL DEFAULT 0 CHECK (generation >= 0),
             ADD COLUMN mk_version integer NOT NULL DEFAULT 1 CHECK (mk_version >= 1);",
    ),
];

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateReport {
    /// The database, without credentials.
    pub location: String,
    /// Schema version before (0: no keyward tables).
    pub from: i32,
    /// Schema version now ([`SCHEMA_VERSION`]).
    pub to: i32,
    /// The versions applied now (empty: it was up to date).
    pub applied: Vec<i32>,
}

/// Bring the database's schema up to [`SCHEMA_VERSION`] (idempotent; safe while other members
/// do the same). Refuses a database whose schema is newer than this build's.
pub fn migrate(cfg: &PgConfig) -> Result<MigrateReport, KeystoreError> {
    let conn = Connector::new(cfg)?;
    let mut client = conn.connect()?;
    run(&conn, &mut client)
}

/// Migrate over `client`.
pub(crate) fn run(conn: &Connector, client: &mut Client) -> Result<MigrateReport, KeystoreError> {
    let err = |e: postgres::Error| conn.unavailable("migrate schema", e);
    let mut tx = client.transaction().map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS keyward_schema (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now()
         )",
    )
    .map_err(err)?;
    let from: i32 = tx
        .query_one("SELECT COALESCE(max(version), 0) FROM keyward_schema", &[])
        .and_then(|r| r.try_get(0))
        .map_err(err)?;
    if from > SCHEMA_VERSION {
        return Err(KeystoreError::Format(format!(
            "the key store database {} has schema version {from}, newer than this build's \
             {SCHEMA_VERSION}: upgrade keyward",
            conn.location()
        )));
    }
    let mut applied = Vec::new();
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        tx.batch_execute(sql).map_err(err)?;
        tx.execute("INSERT INTO keyward_schema (version) VALUES ($1)", &[v])
            .map_err(err)?;
        applied.push(*v);
    }
    tx.commit().map_err(err)?;
    if !applied.is_empty() {
        tracing::info!(
            database = %conn.location(),
            from,
            to = SCHEMA_VERSION,
            "key store database schema migrated"
        );
    }
    Ok(MigrateReport {
        location: conn.location().to_owned(),
        from,
        to: SCHEMA_VERSION,
        applied,
    })
}
