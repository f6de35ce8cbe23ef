#![no_main]
//! Fuzz target `token`: see `outpost_tests::fuzz::token`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::token(data));
