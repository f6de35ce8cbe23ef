#![no_main]
//! Fuzz target `frame_codec`: see `outpost_tests::fuzz::frame_codec`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost_tests::fuzz::frame_codec(data));
