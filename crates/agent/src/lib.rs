//! keyward-agent: the boot agent, the appliance's side of KRP/1. It gathers evidence from the
//! attesters bound to a fresh nonce and its ephemeral key ([`Agent`]), checks the KRS's
//! pinned TLS key and signed receipt, unwraps the master key, and retries with backoff
//! ([`ReleaseSource`]). [`KrsAnchor`] asks the KRS for the key store's newest head at every
//! open. It links no KRS code and no PKCS#11 loader: only `keyward-krp`'s wire formats.

mod anchor;
mod client;
mod source;
mod time;

// One release: the agent, its KRP/1 client and the steps of a session.
pub use client::{
    accept_release, check_challenge, denied, parse_pins, Agent, AgentError, Client, Released,
};
// The release source of the boot pipeline: retries with backoff and reports its status.
pub use source::{error_chain, product_release, ReleaseSource, Retry, StatusFn};
// The store-head anchor asked at every open of the key store.
pub use anchor::KrsAnchor;
// The trusted time the agent learns from the KRS, and how far the host's clock is from it.
pub use time::{clock, Skew, TrustedClock};
