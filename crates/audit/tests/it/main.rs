//! The audit crate's integration tests (one binary).

mod chain;
mod faults;
