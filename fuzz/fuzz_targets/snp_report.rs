//! libFuzzer entry for `keyward_fuzz::snp_report` (see crates/fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz::snp_report(data));
