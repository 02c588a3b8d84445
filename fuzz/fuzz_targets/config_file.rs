//! libFuzzer entry for `keyward_fuzz::config_file` (see crates/fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz::config_file(data));
