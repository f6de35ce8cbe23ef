#![no_main]
//! Fuzz target `certificate`: see `outpost_tests::fuzz::certificate`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::certificate(data));
