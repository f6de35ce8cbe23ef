#![no_main]
//! Fuzz target `envelope`: see `outpost_tests::fuzz::envelope`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::envelope(data));
