//! Shared by the xks benchmarks and `bench_xks_server`: an in-memory key store view with one
//! store (`/keyward`, us-east-1), one SigV4 credential and one enabled key granted to `*`.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use keyward_keystore::{
    Credential, Grant, KeyStatus, KeyUsage, LiveKey, SharedView, Snapshot, StoreView,
};
use keyward_secret::{Key32, MemoryPolicy};

pub const AK: &str = "AKIAKEYWARDBENCHTEST23";
pub const SK: &str = "Q3w9vJm2Xb7Lr5Tn8Pk4Hs6Yd1Fg0Zc2Ve5Ua7Ni3Ox";
pub const PREFIX: &str = "/keyward";
pub const REGION: &str = "us-east-1";
pub const KEY_ID: &str = "key-1";

/// Initialises locked memory (allowing unlocked for benchmarks) and builds the view.
pub fn view() -> SharedView {
    let _ = keyward_secret::init(MemoryPolicy {
        allow_unlocked: true,
    });
    let key = LiveKey {
        id: KEY_ID.into(),
        version: 1,
        usage: KeyUsage::EncryptDecrypt,
        status: KeyStatus::Enabled,
        grants: vec![Grant::open_to_all()],
        #[allow(clippy::expect_used)]
        kek: Key32::random().expect("random key"),
        version_created: 0,
        older: Vec::new(),
        rotate_every_secs: None,
        destroy_at: None,
        status_before_destroy: None,
    };
    let store = StoreView {
        name: "bench".into(),
        uri_prefix: PREFIX.into(),
        region: REGION.into(),
        services: vec!["kms-xks-proxy".into()],
        credentials: vec![Arc::new(Credential {
            access_key_id: AK.into(),
            secret_access_key: SK.to_string().into(),
        })],
        keys: HashMap::from([(KEY_ID.to_string(), Arc::new(key))]),
        destroyed: HashMap::new(),
    };
    Arc::new(ArcSwap::from_pointee(Snapshot {
        stores: HashMap::from([("bench".to_string(), Arc::new(store))]),
    }))
}
