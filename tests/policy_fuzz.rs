//! Fuzz-like input for the policy loader: random, truncated, huge, deep and unbounded policies are refused or bounded, never a panic.

use std::path::{Path, PathBuf};

use mapek::daemon::reload::{PolicySource, Reload};
use mapek::plan::policy::PolicySet;
use rand::{Rng, SeedableRng};

fn load(src: &str) -> Result<PolicySet, Vec<mapek::plan::policy::PolicyError>> {
    PolicySet::from_sources(&[(PathBuf::from("f.toml"), src.to_string())])
}

fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/integrity.toml"))
        .expect("the shipped policies")
}

#[test]
fn every_truncation_of_a_real_policy_file_loads_or_is_refused_with_a_located_error() {
    let src = shipped();
    let mut refused = 0;
    for end in (0..src.len()).filter(|i| src.is_char_boundary(*i)) {
        if let Err(errors) = load(&src[..end]) {
            refused += 1;
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(e.line <= src[..end].lines().count() + 1, "{e}");
                assert!(!e.field.is_empty());
            }
        }
    }
    assert!(
        refused > 500,
        "truncations inside policies break the file: {refused}"
    );
}

#[test]
fn random_bytes_and_mutations_never_panic_the_loader() {
    let src = shipped();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let alphabet: Vec<char> = "[]{}=\"'\n #.,:0123456789abcdefghijklmnopqrstuvwxyz_-+*/()!&|<>?"
        .chars()
        .collect();
    for _ in 0..500 {
        let len = rng.random_range(0..400);
        let noise: String = (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        let _ = load(&noise);
        let mut bytes: Vec<char> = src.chars().collect();
        for _ in 0..rng.random_range(1..8) {
            let i = rng.random_range(0..bytes.len());
            bytes[i] = alphabet[rng.random_range(0..alphabet.len())];
        }
        let mutated: String = bytes.into_iter().collect();
        let _ = load(&mutated);
    }
}

fn with_when(when: &str) -> String {
    format!(
        "[[policy]]\nid = \"x\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nwhen = '''{when}'''\n"
    )
}

#[test]
fn huge_deep_and_unbounded_conditions_are_refused() {
    let huge = format!("{} true", "finding.value > 0.0 && ".repeat(1000));
    let deep = format!("{}true{}", "(".repeat(5000), ")".repeat(5000));
    let list = format!("[{}]", vec!["1"; 300].join(","));
    let cubic = format!("{list}.all(a, {list}.all(b, {list}.all(c, a * b * c >= 0)))");
    let concat = format!("size({}) > 0", vec![list.as_str(); 60].join(" + "));
    for (name, when) in [
        ("huge", huge),
        ("deep", deep),
        ("cubic", cubic),
        ("concat", concat),
    ] {
        let errors = load(&with_when(&when)).expect_err(name);
        assert!(
            errors.iter().all(|e| e.field == "when" && e.line == 5),
            "{name}: {errors:?}"
        );
    }
    // Deeply nested TOML is refused by the TOML parser, not by a stack overflow.
    let nested = format!("x = {}1{}", "[".repeat(20_000), "]".repeat(20_000));
    assert!(load(&nested).is_err());
    // A reasonable macro over labels stays within the budget.
    assert!(load(&with_when("finding.labels.exists(k, k.startsWith('x'))")).is_ok());
}

#[test]
fn oversized_files_are_refused_before_they_are_read_and_the_good_set_stays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.toml"), shipped()).unwrap();
    std::fs::write(d.join("trusted-keys.toml"), "").unwrap();
    let trust = d.join("trusted-keys.toml");
    let good = PolicySource::load(d, &trust, false).expect("loads");
    let source = PolicySource::watched(good, d.to_path_buf(), trust, false);
    std::fs::write(d.join("big.toml"), "# padding\n".repeat(200_000)).unwrap();
    match source.reload() {
        Some(Reload::Refused(e)) => assert!(e[0].reason.contains("at most"), "{e:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(source.get().policies.len(), 3);
}
