//! libFuzzer entry for `keyward_fuzz::backup_file` (see crates/fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz::backup_file(data));
