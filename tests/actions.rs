//! The action catalogue on a real store: each change applied, applied again (nothing changes), and undone by its recorded inverse.

mod common;

use common::{world, NOW};
use mapek::registry::{Change, Registry};

async fn apply(w: &common::World, c: &Change) -> mapek::registry::Applied {
    let mut tx = w.t.store.begin().await.unwrap();
    let a = w.registry.apply(&mut tx, c, NOW).await.unwrap();
    tx.commit().await.unwrap();
    a
}

async fn package(w: &common::World, name: &str) -> mapek::registry::PackageRecord {
    w.registry
        .package(name)
        .await
        .unwrap()
        .expect("the package exists")
}

/// Applies `c`, applies it again (no change), then its inverse, and
/// returns the inverse's own inverse.
async fn round_trip(w: &common::World, c: Change) -> Change {
    let done = apply(w, &c).await;
    assert!(done.changed, "{c:?}");
    assert!(
        !apply(w, &c).await.changed,
        "applying {c:?} twice changes nothing"
    );
    let undone = apply(w, &done.inverse).await;
    assert!(undone.changed, "{:?}", done.inverse);
    undone.inverse
}

#[tokio::test]
async fn yank_and_unyank_are_each_others_inverse() {
    let w = world(6).await;
    let (p, v) = ("pkg-00001".to_string(), "1.0.0".to_string());
    let yank = Change::YankRelease {
        package: p.clone(),
        version: v.clone(),
    };
    let done = apply(&w, &yank).await;
    assert!(w.registry.release(&p, &v).await.unwrap().unwrap().yanked);
    assert!(!apply(&w, &yank).await.changed);
    apply(&w, &done.inverse).await;
    assert!(!w.registry.release(&p, &v).await.unwrap().unwrap().yanked);
}

#[tokio::test]
async fn restore_latest_skips_yanked_and_quarantined_releases_and_its_inverse_puts_latest_back() {
    let w = world(30).await;
    // A package with at least two releases.
    let (all, _) = w.registry.releases_since(0).await.unwrap();
    let name = all
        .iter()
        .find(|r| r.version == "1.1.0")
        .map(|r| r.package.clone())
        .expect("some package has two releases");
    let before = package(&w, &name).await.latest.unwrap();
    apply(
        &w,
        &Change::YankRelease {
            package: name.clone(),
            version: before.clone(),
        },
    )
    .await;
    let restore = Change::RestoreLatest {
        package: name.clone(),
    };
    let done = apply(&w, &restore).await;
    assert!(done.changed);
    let now_latest = package(&w, &name).await.latest.unwrap();
    assert_ne!(now_latest, before);
    assert!(
        semver::Version::parse(&now_latest).unwrap() < semver::Version::parse(&before).unwrap()
    );
    assert_eq!(
        done.inverse,
        Change::SetLatest {
            package: name.clone(),
            latest: Some(before.clone())
        }
    );
    apply(&w, &done.inverse).await;
    assert_eq!(package(&w, &name).await.latest, Some(before));
}

#[tokio::test]
async fn deprecation_keeps_its_reason_for_the_inverse_and_restores_the_status() {
    let w = world(6).await;
    let p = "pkg-00002".to_string();
    let deprecate = Change::Deprecate {
        package: p.clone(),
        reason: "superseded".into(),
        successor: Some("pkg-00003".into()),
    };
    let again = round_trip(&w, deprecate.clone()).await;
    assert_eq!(
        again, deprecate,
        "undeprecating records the deprecation it undid"
    );
    assert_eq!(package(&w, &p).await.status, "active");
}

#[tokio::test]
async fn quality_changes_clamp_and_their_inverse_restores_the_exact_score() {
    let w = world(6).await;
    let p = "pkg-00004".to_string();
    let set = apply(
        &w,
        &Change::SetQuality {
            package: p.clone(),
            score: Some(42.0),
        },
    )
    .await;
    assert_eq!(
        set.inverse,
        Change::SetQuality {
            package: p.clone(),
            score: None
        }
    );
    let adjust = apply(
        &w,
        &Change::AdjustQuality {
            package: p.clone(),
            delta: 70.0,
        },
    )
    .await;
    assert_eq!(package(&w, &p).await.quality, Some(100.0));
    apply(&w, &adjust.inverse).await;
    assert_eq!(package(&w, &p).await.quality, Some(42.0));
    apply(&w, &set.inverse).await;
    assert_eq!(package(&w, &p).await.quality, None);
}

#[test]
fn action_params_are_checked_at_load_time() {
    use mapek::plan::policy::PolicySet;
    let policy = |action: &str, params: &str| {
        format!("[[policy]]\nid = \"x\"\non = \"checksum_mismatch\"\naction = \"{action}\"\nparams = {params}\n")
    };
    let load = |src: String| PolicySet::from_sources(&[(std::path::PathBuf::from("a.toml"), src)]);
    assert!(load(policy("set_quality", "{ score = 40 }")).is_ok());
    assert!(load(policy("adjust_quality", "{ delta = -10.5 }")).is_ok());
    assert!(load(policy(
        "notify",
        "{ webhook = \"https://hooks.example/x\" }"
    ))
    .is_ok());
    assert!(load(policy("notify", "{}")).is_ok());
    assert!(load(policy("reindex", "{}")).is_ok());
    assert!(load(policy(
        "deprecate",
        "{ reason = \"old\", successor = \"new\" }"
    ))
    .is_ok());
    for (action, params, says) in [
        ("set_quality", "{}", "needs a number params.score"),
        ("set_quality", "{ score = 140 }", "not between 0 and 100"),
        ("adjust_quality", "{ delta = \"up\" }", "params.delta"),
        ("deprecate", "{ reason = 3 }", "strings"),
        (
            "notify",
            "{ webhook = \"ftp://x\" }",
            "http:// or https:// URL",
        ),
        ("notify", "{ webhook = 3 }", "http:// or https:// URL"),
    ] {
        let e = load(policy(action, params)).unwrap_err();
        assert!(
            e.iter().any(|e| e.reason.contains(says)),
            "{action} {params}: {e:?}"
        );
    }
}
