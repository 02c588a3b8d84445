//! Integration tests of the PostgreSQL key store against a real server that each test starts
//! itself (`LocalPostgres`: initdb and pg_ctl on a loopback port) and tears down when it ends.
//! One binary; the modules below group the cases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backup;
mod common;
mod concurrency;
mod contract;
mod failover;
mod fleet;
mod local;
mod outage;
mod registry;
mod tls;
mod watcher;
