//! NitroTPM attestation document verifier (placeholder, filled below).
