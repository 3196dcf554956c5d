//! The marketplace catalog reader (catalog/v2): any bytes are a catalog or an error, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = mapek::registry::marketplace::catalog::parse(bytes);
});
