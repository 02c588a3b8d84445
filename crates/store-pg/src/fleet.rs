//! [`PgFleetBoard`]: the fleet's heartbeats in the `keyward_members` table, on a connection of
//! its own (so a heartbeat never waits behind a store load). `last_seen` is the database's
//! clock, so members' clocks need not agree.

use std::sync::Mutex;

use keyward_keystore::KeystoreError;
use keyward_keystore::{FleetBoard, Member};
use postgres::Client;

use crate::config::Connector;
use crate::PgConfig;

/// Longest member id accepted (see [`Member::id`]).
const MAX_ID: usize = 64;
/// Longest version or label accepted.
const MAX_TEXT: usize = 256;
/// `members(within)` is capped at ten years (the interval arithmetic stays in range).
const MAX_WITHIN: u64 = 10 * 365 * 86_400;

/// Members' heartbeats in the shared database.
pub struct PgFleetBoard {
    conn: Connector,
    client: Mutex<Option<Client>>,
}

impl PgFleetBoard {
    /// Connect to the database in `cfg` and bring its schema up to date.
    pub fn connect(cfg: &PgConfig) -> Result<PgFleetBoard, KeystoreError> {
        let conn = Connector::new(cfg)?;
        let mut client = conn.connect()?;
        crate::schema::run(&conn, &mut client)?;
        Ok(PgFleetBoard {
            conn,
            client: Mutex::new(Some(client)),
        })
    }

    /// Run `f` on the board's connection, connecting again when it broke (each call is
    /// idempotent, so one retry on a new connection is safe).
    fn run<T>(
        &self,
        what: &'static str,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, KeystoreError> {
        let mut guard = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let mut tried = false;
        loop {
            let fresh = match guard.as_ref() {
                Some(c) if !c.is_closed() => false,
                _ => {
                    *guard = None;
                    *guard = Some(self.conn.connect()?);
                    true
                }
            };
            let Some(client) = guard.as_mut() else {
                return Err(KeystoreError::Format("no database connection".into()));
            };
            match f(client) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let broken = client.is_closed() || e.is_closed();
                    if broken {
                        *guard = None;
                        if !fresh && !tried {
                            tried = true;
                            continue;
                        }
                    }
                    return Err(self.conn.unavailable(what, e));
                }
            }
        }
    }
}

fn check_len(what: &'static str, v: &str, max: usize) -> Result<(), KeystoreError> {
    if v.is_empty() && what == "member id" {
        return Err(KeystoreError::Invalid {
            what,
            why: "empty".into(),
        });
    }
    if v.chars().count() > max {
        return Err(KeystoreError::Invalid {
            what,
            why: format!("longer than {max} characters"),
        });
    }
    Ok(())
}

fn to_i64(v: u64, what: &'static str) -> Result<i64, KeystoreError> {
    i64::try_from(v).map_err(|_| KeystoreError::Invalid {
        what,
        why: format!("{v} is out of range"),
    })
}

impl FleetBoard for PgFleetBoard {
    fn beat(&self, m: &Member) -> Result<(), KeystoreError> {
        check_len("member id", &m.id, MAX_ID)?;
        check_len("member version", &m.version, MAX_TEXT)?;
        check_len("member label", &m.label, MAX_TEXT)?;
        let keks = to_i64(m.keks, "member KEK count")?;
        let seq = to_i64(m.seq, "member seq")?;
        self.run("heartbeat", |c| {
            c.execute(
                "INSERT INTO keyward_members (id, version, label, last_seen, keks, seq) \
                 VALUES ($1, $2, $3, now(), $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, \
                   label = EXCLUDED.label, last_seen = now(), keks = EXCLUDED.keks, \
                   seq = EXCLUDED.seq",
                &[&m.id, &m.version, &m.label, &keks, &seq],
            )
        })?;
        Ok(())
    }

    fn members(&self, within_secs: u64) -> Result<(Vec<Member>, u64), KeystoreError> {
        let within = within_secs.min(MAX_WITHIN) as i64;
        let (rows, now) = self.run("list members", |c| {
            let now: i64 = c
                .query_one("SELECT extract(epoch FROM now())::bigint", &[])?
                .try_get(0)?;
            let rows = c.query(
                "SELECT id, version, label, extract(epoch FROM last_seen)::bigint, keks, seq \
                 FROM keyward_members \
                 WHERE last_seen >= now() - ($1::bigint * interval '1 second') \
                 ORDER BY last_seen DESC, id",
                &[&within],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(Member {
                    id: r.try_get(0)?,
                    version: r.try_get(1)?,
                    label: r.try_get(2)?,
                    last_seen: u64::try_from(r.try_get::<_, i64>(3)?).unwrap_or(0),
                    keks: u64::try_from(r.try_get::<_, i64>(4)?).unwrap_or(0),
                    seq: u64::try_from(r.try_get::<_, i64>(5)?).unwrap_or(0),
                });
            }
            Ok((out, now))
        })?;
        Ok((rows, u64::try_from(now).unwrap_or(0)))
    }

    fn leave(&self, id: &str) -> Result<(), KeystoreError> {
        self.run("leave", |c| {
            c.execute("DELETE FROM keyward_members WHERE id = $1", &[&id])
        })?;
        Ok(())
    }
}
