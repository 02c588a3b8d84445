//! [`PgKeyStore`]: the [`KeyStore`] seam over PostgreSQL, shared by every member of a fleet.
//!
//! Writes never lose an update: an append is one transaction that first moves the head row's
//! `tip` from `first - 1` to `last` (a compare-and-set: a member that computed its records from
//! an older view updates no row and gets [`KeystoreError::Conflict`]), then inserts the records
//! under the `(seq, pos)` primary key (a duplicate is a conflict too), then `NOTIFY`s the other
//! members, then commits. It does not rely on SERIALIZABLE isolation: the row lock on the head
//! orders the writers at any isolation level. An error on the way (the connection, the commit)
//! is [`KeystoreError::Unavailable`]: the outcome of a failed commit is unknown and the registry
//! re-reads.
//!
//! The log has a generation (`keyward_head.generation`): a re-seal ([`KeyStore::reseal`])
//! replaces every record in one transaction and moves it, and the append's compare-and-set
//! checks it too (`WHERE tip = first - 1 AND generation = <the one this member loaded>`), so
//! a member that has not noticed the re-seal cannot chain a record sealed under the old
//! master-key version onto the new generation, although the tip did not move: it gets
//! [`KeystoreError::Conflict`], re-reads and retries. [`KeyStore::tip`] reads the generation
//! with the tip, so a follower polling the tip notices a re-seal ([`KeyStore::rewritten`]).
//!
//! The connection is made again lazily when it broke (a database restart or fail-over needs no
//! appliance restart); a read on a connection found broken is retried once on a new one, a write
//! only when it failed before its transaction began.
//!
//! A transaction the server aborted with a serialization failure or a deadlock (SQLSTATE 40001,
//! 40P01: a DBA set `default_transaction_isolation = 'serializable'` or `'repeatable read'`,
//! and another member updated the head row first) is run again from its start, up to
//! [`SERIALIZATION_RETRIES`] times: the server rolled all of it back, so nothing of it was
//! applied, and the retry's compare-and-set then sees the other member's tip and reports a
//! plain [`KeystoreError::Conflict`], as at READ COMMITTED. A read that already handed records
//! to its caller is never run again.

use keyward_keystore::{Header, SealedHead, SignedRecord};
use keyward_keystore::{KeyStore, KeystoreError};
use postgres::error::SqlState;
use postgres::{Client, IsolationLevel};

use crate::config::Connector;
use crate::PgConfig;

/// The channel every write `NOTIFY`s (payload: the new tip) and [`crate::Watcher`] listens on.
pub const NOTIFY_CHANNEL: &str = "keyward_store";

/// Rows fetched per round trip by [`KeyStore::load`].
const LOAD_BATCH: i32 = 5000;
/// Records inserted per statement by `compact` and `rewrite`.
const INSERT_BATCH: usize = 1000;
/// How many times a transaction aborted by a serialization failure or a deadlock is run again.
pub(crate) const SERIALIZATION_RETRIES: u32 = 8;

/// Whether the server aborted the transaction for a serialization failure or a deadlock (it
/// was rolled back whole; running it again is safe).
fn serialization_failure(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// A short pause before running an aborted transaction again: grows with `n`, with a jitter
/// from the clock so that members aborted together do not collide again in step.
fn serialization_pause(n: u32) {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos() % 4000));
    let base = 2u64.saturating_mul(1u64 << n.min(6));
    std::thread::sleep(std::time::Duration::from_micros(
        base * 1000 + jitter * (u64::from(n) + 1),
    ));
}

/// The key store in a PostgreSQL database.
pub struct PgKeyStore {
    conn: Connector,
    client: Option<Client>,
    /// Records held: as of the last load, plus appends since.
    records: usize,
    /// The last sealed head handed to [`KeyStore::store_head`]: written with the header by
    /// `init` and `rewrite` when it belongs to that header's store (see there).
    pending_head: Option<SealedHead>,
    /// The log generation the records this process holds came from (the last full load, its
    /// own init or re-seal); `None` until one (then appends do not check it).
    generation: Option<i64>,
    /// The generation the last [`KeyStore::tip`] found.
    seen_generation: Option<i64>,
}

/// Why a step failed: the client's error (mapped to `Unavailable` with the operation's name),
/// a failure before the transaction began (safe to retry on a new connection), or a verdict.
enum Fail {
    Pg(postgres::Error),
    Begin(postgres::Error),
    Ks(KeystoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<KeystoreError> for Fail {
    fn from(e: KeystoreError) -> Fail {
        Fail::Ks(e)
    }
}

fn to_i64(seq: u64) -> Result<i64, KeystoreError> {
    i64::try_from(seq).map_err(|_| KeystoreError::Invalid {
        what: "record seq",
        why: format!("{seq} is beyond what the database stores"),
    })
}

fn to_u64(v: i64, what: &'static str) -> Result<u64, KeystoreError> {
    u64::try_from(v).map_err(|_| KeystoreError::Format(format!("{what} is negative ({v})")))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, KeystoreError> {
    serde_json::to_string(v).map_err(|_| KeystoreError::Seal)
}

/// The `(seq, pos)` of each record of a replacement log: `pos` counts records sharing a `seq`
/// (a checkpoint's live records).
fn positions(recs: &[SignedRecord]) -> Vec<(i64, i32, &SignedRecord)> {
    let mut out = Vec::with_capacity(recs.len());
    let mut last: Option<(u64, i32)> = None;
    for r in recs {
        let pos = match last {
            Some((s, p)) if s == r.seq => p.saturating_add(1),
            _ => 0,
        };
        last = Some((r.seq, pos));
        // Range checked by the caller.
        out.push((r.seq as i64, pos, r));
    }
    out
}

/// Insert `recs` (a whole replacement log: positions run across statements) in statements of
/// [`INSERT_BATCH`].
fn insert_all(tx: &mut postgres::Transaction<'_>, recs: &[SignedRecord]) -> Result<(), Fail> {
    let rows = positions(recs);
    for chunk in rows.chunks(INSERT_BATCH) {
        let mut seqs = Vec::with_capacity(chunk.len());
        let mut poss = Vec::with_capacity(chunk.len());
        let mut jsons = Vec::with_capacity(chunk.len());
        for (s, p, r) in chunk {
            seqs.push(*s);
            poss.push(*p);
            jsons.push(json(*r)?);
        }
        tx.execute(
            "INSERT INTO keyward_records (seq, pos, rec) \
             SELECT s, p, r::json FROM unnest($1::bigint[], $2::int[], $3::text[]) AS t(s, p, r)",
            &[&seqs, &poss, &jsons],
        )?;
    }
    Ok(())
}

/// Collect a replacement log, checking its order and range (positions continue across
/// insert batches, so they are computed over the whole log).
fn collect(
    records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
) -> Result<Vec<SignedRecord>, KeystoreError> {
    let mut out: Vec<SignedRecord> = Vec::new();
    for r in records {
        let r = r?;
        to_i64(r.seq)?;
        if out.last().is_some_and(|p| p.seq > r.seq) {
            return Err(KeystoreError::Invalid {
                what: "records",
                why: format!("seq {} after a higher one: not in order", r.seq),
            });
        }
        out.push(r);
    }
    Ok(out)
}

fn notify(tx: &mut postgres::Transaction<'_>, tip: i64) -> Result<(), Fail> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&NOTIFY_CHANNEL, &tip.to_string()],
    )?;
    Ok(())
}

impl PgKeyStore {
    /// Connect to the database in `cfg` and bring its schema up to date (see [`crate::migrate`]).
    pub fn connect(cfg: &PgConfig) -> Result<PgKeyStore, KeystoreError> {
        let conn = Connector::new(cfg)?;
        let mut client = conn.connect()?;
        crate::schema::run(&conn, &mut client)?;
        Ok(PgKeyStore {
            conn,
            client: Some(client),
            records: 0,
            pending_head: None,
            generation: None,
            seen_generation: None,
        })
    }

    /// Run `f` on a connection (made now if there is none or it broke). When `f` fails and the
    /// connection turns out broken, it is dropped (the next call connects again); if it was an
    /// old connection and the failure is safe to retry (`retry_any` for reads, or a failure
    /// before the transaction began), `f` runs once more on a new one.
    fn run<T>(
        &mut self,
        what: &'static str,
        retry_any: bool,
        mut f: impl FnMut(&mut Client, &mut Option<SealedHead>) -> Result<T, Fail>,
    ) -> Result<T, KeystoreError> {
        let mut tried = false;
        let mut serial = 0u32;
        loop {
            let fresh = match &self.client {
                Some(c) if !c.is_closed() => false,
                _ => {
                    self.client = None;
                    self.client = Some(self.conn.connect()?);
                    true
                }
            };
            let Some(client) = self.client.as_mut() else {
                return Err(KeystoreError::Format("no database connection".into()));
            };
            let (e, retryable) = match f(client, &mut self.pending_head) {
                Ok(v) => return Ok(v),
                Err(Fail::Ks(e)) => return Err(e),
                Err(Fail::Begin(e)) => (e, true),
                Err(Fail::Pg(e)) => (e, retry_any),
            };
            let broken = client.is_closed() || e.is_closed();
            if broken {
                self.client = None;
            }
            if !broken && serialization_failure(&e) && serial < SERIALIZATION_RETRIES {
                // Rolled back whole by the server: run it again from its start.
                serial += 1;
                tracing::debug!(
                    database = %self.conn.location(),
                    operation = what,
                    error = %e,
                    attempt = serial,
                    "the key store transaction was aborted by a serialization failure; running it again"
                );
                serialization_pause(serial);
                continue;
            }
            if broken && retryable && !fresh && !tried {
                tried = true;
                tracing::debug!(
                    database = %self.conn.location(),
                    operation = what,
                    error = %e,
                    "the key store database connection broke; connecting again"
                );
                continue;
            }
            return Err(self.conn.unavailable(what, e));
        }
    }

    /// The head row's `tip`, or `None` when there is no head row.
    fn read_tip(client: &mut Client) -> Result<Option<u64>, Fail> {
        match client.query_opt("SELECT tip FROM keyward_head", &[])? {
            Some(row) => Ok(Some(to_u64(row.try_get(0)?, "the head's tip")?)),
            None => Ok(None),
        }
    }

    /// After a lost compare-and-set: the store's tip now, as a [`KeystoreError::Conflict`].
    fn conflict(client: &mut Client, expected: u64) -> Result<KeystoreError, Fail> {
        match Self::read_tip(client)? {
            Some(found) => Ok(KeystoreError::Conflict { expected, found }),
            None => Ok(KeystoreError::Format(
                "the key store is not initialised (no head row)".into(),
            )),
        }
    }

    /// The sealed head to write with `header` in `init` or `rewrite`: the pending one if it
    /// belongs to this store and is not older than the stored one (of the same store).
    fn head_for(
        pending: &Option<SealedHead>,
        header: &Header,
        stored: Option<&SealedHead>,
    ) -> Option<SealedHead> {
        let p = pending.as_ref().filter(|p| p.store_id == header.store_id)?;
        match stored {
            Some(s) if s.store_id == p.store_id && s.seq > p.seq => None,
            _ => Some(p.clone()),
        }
    }

    /// Replace the log with `recs` in `tx` and set the tip to the last one's `seq`.
    fn replace(tx: &mut postgres::Transaction<'_>, recs: &[SignedRecord]) -> Result<i64, Fail> {
        tx.execute("DELETE FROM keyward_records", &[])?;
        insert_all(tx, recs)?;
        let tip = recs.last().map_or(0, |r| r.seq as i64);
        tx.execute("UPDATE keyward_head SET tip = $1", &[&tip])?;
        notify(tx, tip)?;
        Ok(tip)
    }

    /// Visit the records from `from` on (by seq), in order, in one read-only snapshot;
    /// returns how many.
    /// Also returns the log's generation in that snapshot.
    fn load_from(
        &mut self,
        from: i64,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(usize, i64), KeystoreError> {
        let mut count = 0usize;
        let conn = self.conn.clone();
        let generation = self.run("load records", true, |c, _| {
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(Fail::Begin)?;
            let generation: i64 = match tx
                .query_opt("SELECT generation FROM keyward_head", &[])
                .map_err(Fail::Begin)?
            {
                Some(r) => r.try_get(0)?,
                None => 0,
            };
            let portal = tx.bind(
                "SELECT seq, rec::text FROM keyward_records WHERE seq >= $1 ORDER BY seq, pos",
                &[&from],
            )?;
            loop {
                let rows = tx.query_portal(&portal, LOAD_BATCH).map_err(|e| {
                    // Records already visited cannot be taken back: no retry after the first
                    // (a verdict, so that `run` does not run this again).
                    if count == 0 {
                        Fail::Begin(e)
                    } else {
                        Fail::Ks(conn.unavailable("load records", e))
                    }
                })?;
                if rows.is_empty() {
                    break;
                }
                for row in rows {
                    let seq: i64 = row.try_get(0)?;
                    let text: &str = row.try_get(1)?;
                    let rec: SignedRecord =
                        serde_json::from_str(text).map_err(|_| KeystoreError::Tampered {
                            record: format!("seq {seq}"),
                            why: "record does not parse",
                        })?;
                    if i64::try_from(rec.seq).ok() != Some(seq) {
                        return Err(Fail::Ks(KeystoreError::Tampered {
                            record: format!("seq {seq}"),
                            why: "the row's seq is not the record's (record moved)",
                        }));
                    }
                    visit(rec)?;
                    count += 1;
                }
            }
            tx.commit().map_err(|e| {
                if count == 0 {
                    Fail::Pg(e)
                } else {
                    Fail::Ks(conn.unavailable("load records", e))
                }
            })?;
            Ok(generation)
        })?;
        Ok((count, generation))
    }
}

impl KeyStore for PgKeyStore {
    fn location(&self) -> String {
        self.conn.location().to_owned()
    }

    fn header(&mut self) -> Result<Option<Header>, KeystoreError> {
        let text = self.run("read header", true, |c, _| {
            Ok(c.query_opt("SELECT header::text FROM keyward_header", &[])?
                .map(|r| r.try_get::<_, String>(0))
                .transpose()?)
        })?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| {
                KeystoreError::Format(format!("{}: header unreadable: {e}", self.location()))
            })
        })
        .transpose()
    }

    /// Insert `header` if there is none, with the head row at tip 0 (and the sealed head given
    /// to `store_head` just before, if it is this store's), in one transaction. If another
    /// member initialised the store first: [`KeystoreError::Conflict`] `{ expected: 0, found: 0 }`
    /// (re-open it).
    fn init(&mut self, header: &Header) -> Result<(), KeystoreError> {
        let h = json(header)?;
        self.run("initialise", false, |c, pending| {
            let mut tx = c.transaction().map_err(Fail::Begin)?;
            let n = tx.execute(
                "INSERT INTO keyward_header (one, header) VALUES (true, $1::text::json) \
                 ON CONFLICT DO NOTHING",
                &[&h],
            )?;
            if n == 0 {
                tx.rollback()?;
                return Err(Fail::Ks(KeystoreError::Conflict {
                    expected: 0,
                    found: 0,
                }));
            }
            let busy: bool = tx
                .query_one("SELECT EXISTS (SELECT 1 FROM keyward_records)", &[])?
                .try_get(0)?;
            if busy {
                tx.rollback()?;
                return Err(Fail::Ks(KeystoreError::Format(
                    "the database holds key store records but no header: refusing to \
                     initialise over them"
                        .into(),
                )));
            }
            let sealed = Self::head_for(pending, header, None);
            let sealed_json = sealed.as_ref().map(json).transpose()?;
            let sealed_seq = sealed.as_ref().map(|s| to_i64(s.seq)).transpose()?;
            tx.execute(
                "INSERT INTO keyward_head (one, tip, sealed, sealed_seq) \
                 VALUES (true, 0, $1::text::json, $2) \
                 ON CONFLICT (one) DO UPDATE SET tip = 0, \
                   sealed = COALESCE(EXCLUDED.sealed, keyward_head.sealed), \
                   sealed_seq = CASE WHEN EXCLUDED.sealed IS NULL \
                     THEN keyward_head.sealed_seq ELSE EXCLUDED.sealed_seq END",
                &[&sealed_json, &sealed_seq],
            )?;
            let generation: i64 = tx
                .query_one("SELECT generation FROM keyward_head", &[])?
                .try_get(0)?;
            notify(&mut tx, 0)?;
            tx.commit()?;
            Ok(generation)
        })
        .map(|g| {
            self.generation = Some(g);
            self.seen_generation = Some(g);
        })?;
        self.records = 0;
        Ok(())
    }

    /// Every record in `(seq, pos)` order, from one consistent snapshot (a read-only
    /// REPEATABLE READ transaction), fetched [`LOAD_BATCH`] rows per round trip through a portal.
    fn load(
        &mut self,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let (count, generation) = self.load_from(0, visit)?;
        self.records = count;
        self.generation = Some(generation);
        self.seen_generation = Some(generation);
        Ok(())
    }

    fn load_after(
        &mut self,
        seq: u64,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let after = to_i64(seq)?;
        let (n, _) = self.load_from(after.saturating_add(1), visit)?;
        self.records = self.records.saturating_add(n);
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    /// The tip and (kept for [`KeyStore::rewritten`]) the generation, in one read.
    fn tip(&mut self) -> Result<Option<u64>, KeystoreError> {
        let (tip, generation) = self.run("read tip", true, |c, _| {
            match c.query_opt("SELECT tip, generation FROM keyward_head", &[])? {
                Some(row) => Ok((
                    to_u64(row.try_get(0)?, "the head's tip")?,
                    Some(row.try_get::<_, i64>(1)?),
                )),
                None => Ok((0, None)),
            }
        })?;
        if generation.is_some() {
            self.seen_generation = generation;
        }
        Ok(Some(tip))
    }

    fn rewritten(&self) -> bool {
        matches!((self.generation, self.seen_generation), (Some(a), Some(b)) if a != b)
    }

    fn append(&mut self, rec: &SignedRecord) -> Result<(), KeystoreError> {
        self.append_batch(std::slice::from_ref(rec))
    }

    /// One transaction: `UPDATE keyward_head SET tip = last WHERE tip = first - 1 AND
    /// generation = <loaded>` (no row: [`KeystoreError::Conflict`]), the records, `NOTIFY`,
    /// commit.
    fn append_batch(&mut self, recs: &[SignedRecord]) -> Result<(), KeystoreError> {
        let (Some(first), Some(last)) = (recs.first(), recs.last()) else {
            return Ok(());
        };
        let (first, last) = (first.seq, last.seq);
        if first == 0 || recs.iter().zip(first..).any(|(r, s)| r.seq != s) {
            return Err(KeystoreError::Invalid {
                what: "records",
                why: "an append must be contiguous sequence numbers from 1 up".into(),
            });
        }
        let (prev, last_i) = (to_i64(first - 1)?, to_i64(last)?);
        let seqs: Vec<i64> = (prev + 1..=last_i).collect();
        let jsons = recs.iter().map(json).collect::<Result<Vec<_>, _>>()?;
        let generation = self.generation;
        self.run("append", false, |c, _| {
            let mut tx = c.transaction().map_err(Fail::Begin)?;
            let n = tx.execute(
                "UPDATE keyward_head SET tip = $1 \
                 WHERE tip = $2 AND ($3::bigint IS NULL OR generation = $3)",
                &[&last_i, &prev, &generation],
            )?;
            if n == 0 {
                tx.rollback()?;
                return Err(Fail::Ks(Self::conflict(c, first)?));
            }
            let inserted = tx.execute(
                "INSERT INTO keyward_records (seq, pos, rec) \
                 SELECT s, 0, r::json FROM unnest($1::bigint[], $2::text[]) AS t(s, r)",
                &[&seqs, &jsons],
            );
            match inserted {
                Ok(_) => {}
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    // A record with this seq exists past the tip (the tip was put back by hand,
                    // or a truncation raced): nothing of this write is kept.
                    tx.rollback()?;
                    return Err(Fail::Ks(Self::conflict(c, first)?));
                }
                Err(e) => return Err(Fail::Pg(e)),
            }
            notify(&mut tx, last_i)?;
            tx.commit()?;
            Ok(())
        })?;
        self.records += recs.len();
        Ok(())
    }

    fn record_count(&self) -> usize {
        self.records
    }

    /// Replace the records with `records` (a checkpoint and the live records), keeping the
    /// header, in one transaction; only if the log still ends where the checkpoint says (no
    /// member appended since), else [`KeystoreError::Conflict`].
    fn compact(
        &mut self,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        let recs = collect(records)?;
        let end = recs.last().map_or(0, |r| r.seq);
        self.run("compact", false, |c, _| {
            let mut tx = c.transaction().map_err(Fail::Begin)?;
            if tx.query_opt("SELECT 1 FROM keyward_header", &[])?.is_none() {
                tx.rollback()?;
                return Err(Fail::Ks(KeystoreError::Format(
                    "store not initialised".into(),
                )));
            }
            let tip = match tx.query_opt("SELECT tip FROM keyward_head FOR UPDATE", &[])? {
                Some(r) => to_u64(r.try_get(0)?, "the head's tip")?,
                None => 0,
            };
            if tip != end {
                tx.rollback()?;
                return Err(Fail::Ks(KeystoreError::Conflict {
                    expected: end,
                    found: tip,
                }));
            }
            Self::replace(&mut tx, &recs)?;
            tx.commit()?;
            Ok(())
        })?;
        self.records = recs.len();
        Ok(())
    }

    /// Replace the header and all records in one transaction (a format migration, or a restore
    /// into an empty store); the tip becomes the last record's `seq`. The sealed head given to
    /// `store_head` just before is written with it when it is this header's store's.
    fn rewrite(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        let recs = collect(records)?;
        let h = json(header)?;
        self.run("rewrite", false, |c, pending| {
            let mut tx = c.transaction().map_err(Fail::Begin)?;
            tx.execute(
                "INSERT INTO keyward_head (one, tip) VALUES (true, 0) ON CONFLICT DO NOTHING",
                &[],
            )?;
            let stored: Option<String> = tx
                .query_one("SELECT sealed::text FROM keyward_head FOR UPDATE", &[])?
                .try_get(0)?;
            let stored: Option<SealedHead> = stored.and_then(|s| serde_json::from_str(&s).ok());
            tx.execute(
                "INSERT INTO keyward_header (one, header) VALUES (true, $1::text::json) \
                 ON CONFLICT (one) DO UPDATE SET header = EXCLUDED.header",
                &[&h],
            )?;
            if let Some(s) = Self::head_for(pending, header, stored.as_ref()) {
                tx.execute(
                    "UPDATE keyward_head SET sealed = $1::text::json, sealed_seq = $2",
                    &[&json(&s)?, &to_i64(s.seq)?],
                )?;
            }
            Self::replace(&mut tx, &recs)?;
            tx.commit()?;
            Ok(())
        })?;
        self.records = recs.len();
        Ok(())
    }

    /// Delete every record after `seq` and lower the tip to it, in one transaction.
    fn truncate_after(&mut self, seq: u64) -> Result<(), KeystoreError> {
        let s = to_i64(seq)?;
        let removed = self.run("truncate", false, |c, _| {
            let mut tx = c.transaction().map_err(Fail::Begin)?;
            tx.query_opt("SELECT tip FROM keyward_head FOR UPDATE", &[])?;
            let n = tx.execute("DELETE FROM keyward_records WHERE seq > $1", &[&s])?;
            tx.execute("UPDATE keyward_head SET tip = LEAST(tip, $1)", &[&s])?;
            notify(&mut tx, s)?;
            tx.commit()?;
            Ok(n)
        })?;
        self.records = self
            .records
            .saturating_sub(usize::try_from(removed).unwrap_or(usize::MAX));
        Ok(())
    }

    fn load_head(&mut self) -> Result<Option<SealedHead>, KeystoreError> {
        let text = self.run("read sealed head", true, |c, _| {
            Ok(c.query_opt("SELECT sealed::text FROM keyward_head", &[])?
                .map(|r| r.try_get::<_, Option<String>>(0))
                .transpose()?
                .flatten())
        })?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|_| KeystoreError::Tampered {
                record: "sealed head".into(),
                why: "the sealed head does not parse",
            })
        })
        .transpose()
    }

    /// One transaction: lock the head row; refuse ([`KeystoreError::Conflict`]) unless the tip
    /// is still `head.seq` and the generation the one this member loaded; replace the header and
    /// every record; write the sealed head (same `seq`, the new version: [`KeyStore::store_head`]
    /// would not, as it only moves forward by `seq`), the new `mk_version` and the next
    /// generation; `NOTIFY`; commit. A crash or a lost connection before the commit leaves the
    /// old generation as it was (PostgreSQL rolls the transaction back).
    fn reseal(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
        head: &SealedHead,
    ) -> Result<(), KeystoreError> {
        let recs = collect(records)?;
        let end = recs.last().map_or(0, |r| r.seq);
        if end != head.seq || header.mk_version != head.mk_version {
            return Err(KeystoreError::Invalid {
                what: "re-seal",
                why: "the new generation must end at the head, sealed under the header's version"
                    .into(),
            });
        }
        let h = json(header)?;
        let sealed = json(head)?;
        let seq = to_i64(head.seq)?;
        let version = i32::try_from(header.mk_version).map_err(|_| KeystoreError::Invalid {
            what: "mk_version",
            why: format!("{} is beyond what the database stores", header.mk_version),
        })?;
        let loaded = self.generation;
        let generation = self.run("re-seal", false, |c, _| {
            let mut tx = c.transaction().map_err(Fail::Begin)?;
            let row = tx
                .query_opt("SELECT tip, generation FROM keyward_head FOR UPDATE", &[])?
                .ok_or_else(|| {
                    KeystoreError::Format("the key store is not initialised (no head row)".into())
                })?;
            let tip = to_u64(row.try_get(0)?, "the head's tip")?;
            let generation: i64 = row.try_get(1)?;
            if tip != head.seq || loaded.is_some_and(|g| g != generation) {
                tx.rollback()?;
                return Err(Fail::Ks(KeystoreError::Conflict {
                    expected: head.seq,
                    found: tip,
                }));
            }
            tx.execute("UPDATE keyward_header SET header = $1::text::json", &[&h])?;
            tx.execute("DELETE FROM keyward_records", &[])?;
            insert_all(&mut tx, &recs)?;
            let next = generation.saturating_add(1);
            tx.execute(
                "UPDATE keyward_head SET tip = $1, generation = $2, mk_version = $3, \
                 sealed = $4::text::json, sealed_seq = $5",
                &[&seq, &next, &version, &sealed, &seq],
            )?;
            notify(&mut tx, seq)?;
            crate::crash_point("pg-reseal-uncommitted");
            tx.commit()?;
            Ok(next)
        })?;
        self.generation = Some(generation);
        self.seen_generation = Some(generation);
        self.records = recs.len();
        self.pending_head = Some(head.clone());
        Ok(())
    }

    /// Write `head` only if it is newer than the stored one (or there is none), so a slow
    /// member never puts back an older head. Idempotent, so retried once on a broken
    /// connection.
    fn store_head(&mut self, head: &SealedHead) -> Result<(), KeystoreError> {
        let j = json(head)?;
        let seq = to_i64(head.seq)?;
        self.pending_head = Some(head.clone());
        self.run("store head", true, |c, _| {
            c.execute(
                "INSERT INTO keyward_head (one, tip, sealed, sealed_seq) \
                 VALUES (true, 0, $1::text::json, $2) \
                 ON CONFLICT (one) DO UPDATE SET sealed = EXCLUDED.sealed, \
                   sealed_seq = EXCLUDED.sealed_seq \
                 WHERE keyward_head.sealed_seq IS NULL \
                    OR keyward_head.sealed_seq < EXCLUDED.sealed_seq",
                &[&j, &seq],
            )?;
            Ok(())
        })
    }
}
