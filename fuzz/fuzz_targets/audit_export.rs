//! The audit export reader and the chain check over what it read: never a panic, whatever the file.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(entries) = mapek::knowledge::audit::parse_export(text) {
        let key = mapek::keys::KeyPair::from_seed("fuzz", [1; 32]).public();
        let _ = mapek::knowledge::audit::verify_chain(&entries, &key);
    }
});
