#![no_main]
//! Fuzz target `key_archive`: see `outpost_tests::fuzz::key_archive`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::key_archive(data));
