//! keyward-agent: the boot agent, the appliance's side of KRP/1. It gathers evidence from the
//! attesters bound to a fresh nonce and its ephemeral key ([`client::Agent`]), checks the KRS's
//! pinned TLS key and signed receipt, unwraps the master key, and retries with backoff
//! ([`source::ReleaseSource`]). [`anchor`] asks the KRS for the key store's newest head at every
//! open. It links no KRS code and no PKCS#11 loader: only `keyward-krp`'s wire formats.

pub mod anchor;
pub mod client;
pub mod source;
pub mod time;

pub use client::{Agent, AgentError, Released};
pub use source::{error_chain, ReleaseSource};
