//! The import's readers: a registry index, a catalog v2 or a receipt (JSON), a package.toml and a pack.toml; the first byte picks which.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else { return };
    let Ok(src) = std::str::from_utf8(rest) else { return };
    let name = match first % 3 {
        0 => "index.json",
        1 => "package.toml",
        _ => "pack.toml",
    };
    let _ = mapek::registry::import::read_source(name, src, 1_795_000_000_000);
});
