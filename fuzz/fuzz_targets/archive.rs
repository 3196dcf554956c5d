//! The pack archive reader (.tar.gz): any bytes are the pack's files or an error, within its limits, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = mapek::registry::marketplace::archive::read(
        bytes,
        "pack",
        mapek::registry::marketplace::archive::ArchiveLimits::default(),
    );
});
