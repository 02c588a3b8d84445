//! keyward-krp: KRP/1, the key-release protocol (docs/key-release.md section 8), as bytes and
//! crypto only: deterministic CBOR ([`cbor`]), length-prefixed frames ([`wire`]), the messages
//! ([`messages`]), the transcript hash T ([`transcript`]), signed receipts ([`receipt`]), the
//! store-head exchange ([`headproto`]), both ends of the master-key wrap ([`wrap`]) and the
//! pinned TLS 1.3 set-up ([`tls`]). The server (`keyward-krs`) and the client (`keyward-agent`)
//! are separate crates on top of this one, as rustls keeps `msgs/` apart from its state
//! machines: the agent never links the KRS or the PKCS#11 loader.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod cbor;
pub mod headproto;
pub mod messages;
pub mod receipt;
pub mod tls;
pub mod transcript;
pub mod wire;
pub mod wrap;

/// Master key version named in receipts (one master key per token label for now).
pub const KEY_VERSION: u32 = 1;
