//! KRP/1 (key-release.md section 8): the key-release service in front of the HSM (`krs`), the
//! boot agent that talks to it (`agent`), and the pieces both share: deterministic CBOR
//! messages, the transcript hash T, signed policies, receipts and the hash-chained release log.
//!
//! Request path on the KRS: `tls` accepts, `wire` reads a frame, `krs::Service` handles a
//! `Hello` (pins checked, `session` created, `Challenge` returned) or an `Evidence` (session
//! consumed, T recomputed by `transcript`, evidence appraised, `hsm` wraps, `receipt` signed,
//! `log` appended and fsynced) and answers `Release` or `Deny`.

pub mod agent;
pub mod anchor;
pub mod cbor;
pub mod cli;
pub mod config;
pub mod crl;
pub mod crl_fetch;
pub mod deployment;
pub mod embedded;
pub mod headproto;
pub mod heads;
pub mod krs;
pub mod limits;
pub mod log;
pub mod messages;
pub mod policy;
pub mod receipt;
pub mod session;
pub mod softkeys;
pub mod source;
pub mod tls;
pub mod transcript;
pub mod unwrap;
pub mod wire;
