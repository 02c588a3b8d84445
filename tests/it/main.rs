//! The workspace-wide integration tests of the `keyward` binary and the flows that cross
//! crates (release end to end, the KRS against SoftHSM, serve, demo, the CLI), in one test
//! binary with a module per area, as rustls does: one link instead of one per file.
//!
//! Kept as binaries of their own (`tests/*.rs`): the tests that need a process to themselves:
//! in-process SoftHSM (one PKCS#11 module per process: `hsm_softhsm`, `release_embedded`),
//! whole-process memory figures (`keystore_bench`, `secret_memory`), and the connection floods
//! (`xks_flood`, `krs_flood`), whose file-descriptor and CPU use would disturb their neighbours.

mod boot_kill;
mod clock_jumps;
mod common;
mod fips;
mod serve_common;
mod tools;
mod xks_common;

mod admin_approvals;
mod admin_ca_once;
mod admin_cli;
mod admin_import;
mod admin_roles;
mod admin_tls;
mod admin_trust;
mod attest_demo_live;
mod attest_live_cli;
mod attest_serve;
mod backup;
mod bench_loop;
mod cfn;
mod config_check;
mod demo_run;
mod doc_blocks;
mod fleet;
mod image_pins;
mod image_units;
mod krs_crl_policy;
mod krs_deployments;
mod krs_heads;
mod krs_hsm_faults;
mod krs_log_rollback;
mod krs_misbehaving;
mod krs_mk_rotation;
mod krs_refusals;
mod measure_cli;
mod metrics_scrape;
mod nitro_verify_cli;
mod release_config;
mod release_e2e;
mod release_rollback;
mod release_serve;
mod release_tpm;
mod serve_crash;
mod serve_legacy;
mod serve_notify;
mod tpm_quote;
mod tpm_verify_cli;
mod verify_cli;
mod verify_signed;
mod xks_conformance;
mod xks_demo;
