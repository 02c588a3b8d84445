//! keyward-krp: KRP/1, the key-release protocol (docs/key-release.md section 8), as bytes and
//! crypto only: deterministic CBOR ([`cbor`]), length-prefixed frames ([`wire`]), the messages
//! ([`messages`]), the transcript hash T ([`transcript`]), signed receipts ([`Receipt`]), the
//! store-head exchange ([`BootKey`]), both ends of the master-key wrap ([`EphemeralKey`]) and
//! the pinned TLS 1.3 set-up ([`server_config`], [`pinned_client_config`]). The server (`keyward-krs`) and the client (`keyward-agent`)
//! are separate crates on top of this one, as rustls keeps `msgs/` apart from its state
//! machines: the agent never links the KRS or the PKCS#11 loader.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

// The protocol's layers that callers use as namespaces (`cbor::to_canonical`,
// `messages::Hello`, `transcript::binding`, `wire::read_msg`): the encoding, the message types,
// the transcript hash and the framing.
pub mod cbor;
pub mod messages;
pub mod transcript;
pub mod wire;

mod headproto;
mod receipt;
mod tls;
mod wrap;

// The store-head exchange: the per-boot signing key and the digests it signs.
pub use headproto::{
    boot_key_id, query_digest, update_digest, verify as verify_boot_signature, well_formed, BootKey,
};
// Signed receipts and the deny codes they carry.
pub use receipt::{
    receipt_digest, spki_from_sec1, spki_pin, verify_receipt, DenyCode, Receipt, ReceiptError,
    ReleasedKey,
};
// The pinned TLS 1.3 set-up of both ends.
pub use tls::{generate_cert, pinned_client_config, server_config, TlsError};
// Both ends of the master-key wrap.
pub use wrap::{derive_wrap_key, hpke_aad, seal_hpke, wrap_binding, EphemeralKey, UnwrapError};

/// Master key version named in receipts (one master key per token label for now).
pub const KEY_VERSION: u32 = 1;
