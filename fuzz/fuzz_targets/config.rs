//! The configuration reader (mapek.toml): any text is a configuration or every problem located, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|src: &str| {
    let _ = mapek::config::Config::parse(std::path::Path::new("mapek.toml"), src);
});
