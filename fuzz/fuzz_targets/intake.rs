//! The intake's line parser (POST /v1/events bodies): every line is an event or a refusal with its number, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|body: &str| {
    let (events, refused) = mapek::monitor::events::parse_lines(
        body,
        1_795_000_000_000,
        mapek::monitor::events::Horizon::default(),
    );
    assert!(events.len() + refused.len() <= body.lines().count());
});
