//! Tests of the typosquat detector: folding, distances, new packages ageing out, and the suspects kept up to date equal to the ones judged from scratch after any changes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::monitor::facts::testing::{facts, package};
use crate::monitor::facts::{next_build, ReleaseFacts};

const DAY: i64 = 86_400_000;

fn names(conditions: &[Condition]) -> Vec<String> {
    conditions
        .iter()
        .map(|c| c.subject.package.clone())
        .collect()
}

#[test]
fn suspects_hold_until_the_first_new_package_is_new_no_more() {
    let s = Settings::default();
    let t0 = 1_800_000_000_000;
    let mut popular = package("rest-api-template", t0 - 400 * DAY);
    popular.record.downloads = 50_000;
    popular.record.author = Some("alice".into());
    let mut squat = package("rest-api-templat", t0 - 400 * DAY);
    squat.record.created_at = t0 - 10 * DAY;
    squat.record.author = Some("mallory".into());
    let mut later = package("rest-api-tempIate", t0);
    later.record.created_at = t0 - 5 * DAY;
    later.record.author = Some("eve".into());
    let f = facts(vec![popular, squat, later], vec![0, 0, 0], 1);
    let until = t0 - 10 * DAY + s.typosquat_new_within_ms;
    let mut kept = Typosquats::default();
    // The same suspects at every time up to `until`, one fewer just after it, kept and judged
    // from scratch alike.
    for now in [t0, t0 + DAY, until - 1, until] {
        kept.update(&f, &s, now);
        assert_eq!(
            names(&kept.conditions()),
            ["rest-api-templat", "rest-api-tempIate"],
            "{now}"
        );
        assert_eq!(names(&typosquats(&f, &s, now)), names(&kept.conditions()));
    }
    kept.update(&f, &s, until + 1);
    assert_eq!(names(&kept.conditions()), ["rest-api-tempIate"]);
    assert_eq!(names(&typosquats(&f, &s, until + 1)), ["rest-api-tempIate"]);
}

#[test]
fn confusables_fold_to_the_same_name() {
    assert_eq!(fold_confusables("rest_api-1ib"), "rest-api-lib");
    assert_eq!(fold_confusables("modern"), fold_confusables("modem"));
    assert_ne!(
        fold_confusables("sparql-cli"),
        fold_confusables("sparql-cil")
    );
}

#[test]
fn short_names_allow_no_edits() {
    assert_eq!(allowed_distance(3, 2), 0);
    assert_eq!(allowed_distance(7, 2), 1);
    assert_eq!(allowed_distance(8, 2), 2);
    assert_eq!(allowed_distance(40, 2), 2);
}

/// Names near each other: several are within two edits, some fold to the same name.
const NAMES: [&str; 12] = [
    "rest-api",
    "rest_api",
    "rest-apl",
    "rest-ap1",
    "web-server",
    "web-servr",
    "web_server",
    "modern-cli",
    "modem-cli",
    "modern-c1i",
    "data-tool",
    "data-too1",
];

fn record(name: &str, rng: &mut ChaCha8Rng, now: i64) -> crate::registry::PackageRecord {
    let mut r = package(name, now).record;
    r.downloads = [0, 10, 999, 1_000, 5_000, 50_000][rng.random_range(0..6)];
    r.author =
        [None, Some("alice"), Some("bob"), Some(" ")][rng.random_range(0..4)].map(str::to_string);
    r.created_at = now - rng.random_range(0..60) * DAY;
    r
}

/// After any sequence of package changes, settings changes and time passing (forwards, and
/// now and then back), the suspects kept up to date equal the ones judged from scratch.
#[test]
fn suspects_kept_up_to_date_equal_the_ones_judged_from_scratch() {
    let mut kept_in_part = 0;
    let mut found = 0;
    for seed in 0..150u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut f = Facts::default();
        f.build = next_build();
        let mut s = Settings::default();
        let mut now = 1_800_000_000_000i64;
        let mut kept = Typosquats::default();
        for seq in 1..50 {
            match rng.random_range(0..10) {
                0..=5 => {
                    let name = NAMES[rng.random_range(0..NAMES.len())];
                    let r = record(name, &mut rng, now);
                    let releases = vec![ReleaseFacts {
                        version: "1.0.0".into(),
                        published_at: r.created_at,
                        yanked: false,
                        quarantined: false,
                        dependencies: vec![],
                    }];
                    f.update(name, Some(r), Some(releases), seq);
                }
                6..=7 => now += rng.random_range(0..20) * DAY,
                8 => now -= rng.random_range(0..3) * DAY,
                _ => {
                    s.typosquat_popular_downloads = [1_000, 5_000][rng.random_range(0..2)];
                    s.typosquat_new_within_ms = [10 * DAY, 30 * DAY][rng.random_range(0..2)];
                    s.typosquat_max_distance = rng.random_range(0..3);
                }
            }
            f.change_seq = seq;
            let before = kept.at;
            kept.update(&f, &s, now);
            kept_in_part +=
                before.is_some_and(|(b, _, k, t)| b == f.build && k == key(&s) && t <= now) as u32;
            let fresh = typosquats(&f, &s, now);
            found += fresh.len();
            let form = |v: &[Condition]| -> Vec<String> {
                v.iter()
                    .map(|c| format!("{:?} {} {} {:?}", c.subject, c.value, c.message, c.labels))
                    .collect()
            };
            assert_eq!(
                form(&kept.conditions()),
                form(&fresh),
                "seed {seed}, step {seq}"
            );
        }
    }
    assert!(kept_in_part > 4_000, "{kept_in_part} passes kept in part");
    assert!(found > 1_000, "{found} suspects found in all");
}
