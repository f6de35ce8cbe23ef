#![no_main]
//! Fuzz target `key_body`: see `outpost_tests::fuzz::key_body`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::key_body(data));
