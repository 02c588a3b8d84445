//! The verifier library: pure functions from evidence bytes, a policy and a verification time
//! to a [`verdict::Verdict`]. Used by the key-release service and by `keyward verify` alike.
//!
//! It never reaches `xks`, `keystore`, `release` or `hsm`, and never touches the network: the
//! CLI fetches, this library judges. Owners: SNP, policy, verdict, evidence (verifier helper);
//! `tpm` and `nitro` (attester helper).

pub mod cli;
pub mod evidence;
pub mod nitro;
pub mod tpm;
pub mod verdict;
