//! The `keyward` binary's own surface, run as a process (`CARGO_BIN_EXE_keyward`): argument
//! parsing, exit codes, one-line errors and output of `config check`, `verify`, `measure`,
//! `admin`, the FIPS build, and the image files the binary and its scripts read. One test
//! binary with a module per area. The flows that cross crates (release, KRS, serve, fleet,
//! backup, ...) are in `crates/integration-tests`, whose library holds the fixtures used here.

// The fixtures, at the paths the modules name them by (`crate::tools`, ...).
use keyward_integration_tests::{serve_common, tools};

mod admin_cli;
mod attest_live_cli;
mod cfn;
mod config_check;
mod fips;
mod image_pins;
mod image_units;
mod measure_cli;
mod nitro_verify_cli;
mod release_config;
mod tpm_verify_cli;
mod verify_cli;
mod verify_signed;
