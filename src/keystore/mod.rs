//! The key store: sealed KEK records on disk (AES-256-GCM under the master key), their
//! in-memory view for the request path, and atomic persistence.
//!
//! Owner: platform helper. [`view`] is the CONTRACT read by `xks` on every request.

pub mod view;
