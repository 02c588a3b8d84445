//! keyward: a confidential key appliance for AWS KMS External Key Stores (the xksv2 design).
//!
//! The libraries live in `crates/`, one per stage or trust boundary (see
//! `docs/architecture.md`); the `keyward` binary (`src/main.rs`) dispatches to them. This library
//! target only re-exports them under the paths the workspace-wide integration tests in `tests/`
//! were written against; nothing in the binary goes through it.

#![forbid(unsafe_code)]

pub use keyward_admin as admin;
pub use keyward_appliance as appliance;
pub use keyward_attest as attest;
pub use keyward_audit as audit;
#[cfg(feature = "dev")]
pub use keyward_bench as bench;
pub use keyward_config as config;
#[cfg(feature = "krs")]
pub use keyward_hsm as hsm;
pub use keyward_keystore as keystore;
#[cfg(feature = "auditor")]
pub use keyward_measure as measure;
pub use keyward_pki as tlspin;
pub use keyward_secret as secret;
pub use keyward_secret::fdlimit;
pub use keyward_xks as xks;

/// The verifier, with the evidence types it judges at their former path.
#[cfg(feature = "auditor")]
pub mod verify {
    pub use keyward_evidence as evidence;
    pub use keyward_verify::*;
}

/// KRP/1 and both of its ends, at the paths of the former `release` module.
#[cfg(feature = "krs")]
pub mod release {
    pub use keyward_agent::{self as agent, self as anchor, self as source};
    pub use keyward_krp as unwrap;
    pub use keyward_krp::{self as headproto, self as receipt, self as tls};
    pub use keyward_krp::{cbor, messages, transcript, wire};
    pub use keyward_krs::service as krs;
    pub use keyward_krs::{
        cli, crl, crl_fetch, deployment, embedded, heads, limits, log, policy, session, softkeys,
    };

    /// The KRS configuration, and the agent's settings (now in `keyward_config::release`).
    pub mod config {
        pub use keyward_config::{parse_pin, AgentConfig};
        pub use keyward_krs::config::*;
    }
}
