#![no_main]
//! Fuzz target `grant`: see `outpost_tests::fuzz::grant`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::grant(data));
