#![no_main]
//! Fuzz target `config`: see `outpost_tests::fuzz::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::config(data));
