//! The policy compiler (TOML, CEL conditions, schedules): any text is a policy set or located errors, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|src: &str| {
    let _ = mapek::plan::policy::PolicySet::from_sources(&[("f.toml".into(), src.to_string())]);
});
