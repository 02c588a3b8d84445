//! The types evidence producers (`keyward-attest`) and judges (`keyward-verify`, the KRS) share:
//! the evidence bundle and its parts, the [`Binding`] a producer maps into its report, and the
//! TPM wire structures (PCR banks, Names) both sides parse. Plain data and parsers, no I/O: like
//! trustee's `kbs-types`, this is the one crate the verifier may depend on.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod binding;
mod bundle;
pub mod tpm;

pub use binding::Binding;
pub use bundle::{
    b64, b64opt, b64vec, hexbytes, EvidenceBundle, NitroEvidence, PcrValue, SnpEvidence,
    TpmEvidence,
};
pub use tpm::{tpm_name, Bank, TpmParseError};
