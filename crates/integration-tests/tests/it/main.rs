//! The cross-crate flows of keyward (release end to end, the KRS against SoftHSM and swtpm,
//! serve, demo, fleet, backup, the admin flows, the docs' runnable blocks), in one test binary
//! with a module per area, as rustls does: one link instead of one per file. They run the real
//! `keyward` binary (`keyward_integration_tests::keyward_bin`: build it first, `make test`
//! does); the fixtures are this crate's library. The binary's own CLI surface is tested in the
//! root package's `tests/it/`.
//!
//! Kept as binaries of their own (`tests/*.rs`): the tests that need a process to themselves:
//! in-process SoftHSM (one PKCS#11 module per process: `hsm_softhsm`, `release_embedded`),
//! whole-process memory figures (`keystore_bench`, `secret_memory`), and the connection floods
//! (`xks_flood`, `krs_flood`), whose file-descriptor and CPU use would disturb their neighbours.

// The library's fixtures, at the paths the modules name them by (`crate::common`, ...).
use keyward_integration_tests::{common, serve_common, tools, xks_common};

mod admin_approvals;
mod admin_ca_once;
mod admin_import;
mod admin_roles;
mod admin_tls;
mod admin_trust;
mod attest_demo_live;
mod attest_serve;
mod backup;
mod bench_loop;
mod boot_kill;
mod clock_jumps;
mod demo_run;
mod doc_blocks;
mod fleet;
mod krs_crl_policy;
mod krs_deployments;
mod krs_heads;
mod krs_hsm_faults;
mod krs_log_rollback;
mod krs_misbehaving;
mod krs_mk_rotation;
mod krs_refusals;
mod metrics_scrape;
mod release_e2e;
mod release_rollback;
mod release_serve;
mod release_tpm;
mod serve_crash;
mod serve_legacy;
mod serve_notify;
mod tpm_quote;
mod xks_conformance;
mod xks_demo;
