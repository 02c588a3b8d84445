//! The mutual-TLS admin API and its client.

pub mod cli;
