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
// The TPM 2.0 wire constants and their reader, used as a namespace (`tpm::TPM_ALG_RSA`,
// `tpm::Reader`) by the attester that builds quotes and the verifier that parses them.
pub mod tpm;

// What a producer binds into its report.
pub use binding::Binding;
// The bundle and its parts, with the serde helpers of their byte fields.
pub use bundle::{
    b64, b64opt, b64vec, hexbytes, EvidenceBundle, NitroEvidence, PcrValue, SnpEvidence,
    TpmEvidence,
};
// The TPM types both sides name most: PCR banks, Names, the parse error.
pub use tpm::{tpm_name, Bank, TpmParseError};
