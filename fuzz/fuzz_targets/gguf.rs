#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| birdbone_fuzz_entry::gguf(data));
