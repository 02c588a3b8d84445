//! libFuzzer entry for `keyward_fuzz::policy_file` (see crates/fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz::policy_file(data));
