//! What a producer binds its evidence to: the one value the KRS (or an auditor) expects back.

/// What the caller binds the evidence to. Each attester maps it to its own field:
/// SNP REPORT_DATA (64 bytes), NitroTPM `nonce`/`public_key`/`user_data`, TPM qualifying data.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The 64 bytes for SNP REPORT_DATA.
    pub report_data: [u8; 64],
    /// Digest for TPM qualifying data and NitroTPM `user_data` (e.g. the KRP/1 transcript T).
    pub user_data: Vec<u8>,
    /// NitroTPM `nonce` (the KRS's challenge nonce), if any.
    pub nonce: Option<Vec<u8>>,
    /// NitroTPM `public_key` (DER SPKI of the agent's ephemeral key), if any.
    pub public_key: Option<Vec<u8>>,
}
