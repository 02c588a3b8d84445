//! keyward: a confidential key appliance for AWS KMS External Key Stores (the xksv2 design).
//!
//! The module tree follows the boot pipeline, then the request path:
//!
//! * [`attest`]: evidence producers (SEV-SNP device, TPM 2.0, NitroTPM, simulated SNP).
//! * [`verify`]: the verifier library shared by the key-release service and `keyward verify`.
//! * [`hsm`] and [`release`]: KRP/1, the key-release service (KRS) in front of the HSM and the
//!   boot agent that talks to it.
//! * [`secret`]: locked, non-dumpable, zeroized memory and process hardening.
//! * [`keystore`]: sealed KEK records, their in-memory view, atomic persistence.
//! * [`xks`]: the XKS Proxy API request path (route, SigV4, JSON, grants, AES-256-GCM).
//! * [`admin`]: the mutual-TLS admin API and its client.
//! * [`appliance`]: the boot pipeline `attest → release → unseal → serve`.
//! * [`measure`]: reference values (PCR 4/7/11/12/15, SEV-SNP) of the appliance image.
//! * [`config`], [`audit`], [`demo`], [`bench`]: configuration, the audit log, embedded
//!   defaults for `make run`, and the load generator.
//! * [`fdlimit`]: the descriptor budget that sizes every listener's connection cap.
//!
//! Dependency rules (see `docs/architecture.md`): `xks` never reaches `attest`, `verify`,
//! `release` or `hsm`; `verify` never reaches `xks`, `keystore`, `release` or `hsm`.

pub mod admin;
pub mod appliance;
pub mod attest;
pub mod audit;
pub mod bench;
pub mod config;
pub mod demo;
pub mod fdlimit;
pub mod hsm;
pub mod keystore;
pub mod measure;
pub mod release;
pub mod secret;
pub mod tlspin;
pub mod verify;
pub mod xks;
