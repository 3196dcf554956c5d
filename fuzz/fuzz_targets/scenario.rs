//! The scenario reader, limits included: any text is a scenario or located errors, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|src: &str| {
    let _ = mapek::sim::scenario::Scenario::parse(std::path::Path::new("s.toml"), src);
});
