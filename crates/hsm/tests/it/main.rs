//! The integration tests of keyward-hsm, one binary with a module per area: they run against a
//! real SoftHSMv2 token in a directory of their own (this process's `SOFTHSM2_CONF`).

mod softhsm_errors;
