#![no_main]
//! Fuzz target `key_file`: see `outpost_tests::fuzz::key_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::key_file(data));
