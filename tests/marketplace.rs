//! The ggen-marketplace backend on a copy of the real fixture: what its sensors judge, what it publishes, and bad input that changes nothing published.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture_catalog, fixture_copy};
use std::sync::Arc;

use mapek::keys::{verify_hex, KeyPair};
use mapek::model::FindingKind;
use mapek::registry::marketplace::{Marketplace, MarketplaceConfig};
use mapek::registry::{Refreshed, Registry, SqlRegistry};

struct Market {
    m: Arc<Marketplace>,
    t: common::TestStore,
    checkout: PathBuf,
    publish: PathBuf,
    key: KeyPair,
}

async fn market() -> Option<Market> {
    let t = common::store().await;
    let checkout = fixture_copy(t.dir.path())?;
    let publish = t.dir.path().join("www/index.json");
    let mut config = MarketplaceConfig::at(&checkout);
    config.publish = Some(publish.clone());
    config.watch = false;
    let key = KeyPair::from_seed("daemon", [9; 32]);
    let m = Marketplace::new(
        SqlRegistry::new(t.store.clone(), t.dir.path()),
        config,
        Some(Arc::new(key.clone())),
    )
    .expect("marketplace");
    Some(Market {
        m: Arc::new(m),
        t,
        checkout,
        publish,
        key,
    })
}

fn kinds(r: &Refreshed, kind: FindingKind) -> Vec<String> {
    r.problems
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| p.subject.to_string())
        .collect()
}

#[tokio::test]
async fn an_unchanged_checkout_is_published_byte_identical_and_signed() {
    let Some(mk) = market().await else { return };
    let r = mk.m.refresh(true, common::NOW).await.expect("refresh");
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    let published = std::fs::read(&mk.publish).expect("published");
    assert!(
        published == fixture_catalog(&mk.checkout),
        "published as the fixture"
    );
    let sig = std::fs::read_to_string(mk.publish.with_extension("json.sig")).expect("sig");
    assert!(verify_hex(&mk.key.public(), &published, sig.trim()));
    // The mirror holds the catalog's 48 packs, each one release at the catalog's version.
    assert_eq!(mk.m.counts().await.expect("counts").packages, 48);
    let r =
        mk.m.release("fastmcp-pack", "0.1.0")
            .await
            .expect("read")
            .expect("mirrored");
    assert!(r
        .artifact
        .as_deref()
        .is_some_and(|a| a.ends_with("dist/packs/fastmcp-pack-0.1.0.tar.gz")));
    assert!(!mk.m.signatures_required());
    // A second refresh of an unchanged checkout writes nothing.
    let seq = mk.m.change_seq().await.expect("seq");
    mk.m.refresh(true, common::NOW + 1).await.expect("again");
    assert_eq!(mk.m.change_seq().await.expect("seq"), seq);
}

#[tokio::test]
async fn content_changed_under_a_published_version_is_a_content_mismatch() {
    let Some(mk) = market().await else { return };
    mk.m.refresh(true, common::NOW).await.expect("refresh");
    let pack = mk.checkout.join("packs/fastmcp-pack");
    std::fs::write(pack.join("templates/fastmcp_server.py.tmpl"), "# changed\n").expect("edit");
    let manifest = std::fs::read_to_string(pack.join("pack.toml")).expect("toml");
    std::fs::write(
        mk.checkout
            .join("packs/ai-chatbot-shadcn-pack/ontology.ttl"),
        "@prefix x: <y> .\n",
    )
    .ok();
    let r = mk.m.refresh(true, common::NOW + 1).await.expect("refresh");
    let found: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.kind == FindingKind::ContentMismatch)
        .collect();
    let fast = found
        .iter()
        .find(|p| p.subject.to_string() == "fastmcp-pack@0.1.0")
        .expect("fastmcp-pack judged");
    assert_eq!(
        fast.labels["changed"],
        serde_json::json!(["templates/fastmcp_server.py.tmpl"])
    );
    assert_eq!(fast.labels["fields"], serde_json::json!(["archive"]));
    // The manifest, with the version left as it is.
    std::fs::write(
        pack.join("pack.toml"),
        manifest.replace("Ontology-driven", "Different"),
    )
    .expect("edit");
    let r = mk.m.refresh(true, common::NOW + 2).await.expect("refresh");
    let fast = r
        .problems
        .iter()
        .find(|p| p.kind == FindingKind::ContentMismatch && p.subject.package == "fastmcp-pack")
        .expect("judged");
    let fields = fast.labels["fields"].as_array().expect("fields");
    assert!(fields.contains(&"manifest_sha256".into()), "{fields:?}");
    // A version bump is a new release the catalog is merely behind on: no mismatch.
    std::fs::write(pack.join("pack.toml"), manifest.replace("0.1.0", "0.2.0")).expect("edit");
    let r = mk.m.refresh(true, common::NOW + 3).await.expect("refresh");
    assert!(!kinds(&r, FindingKind::ContentMismatch).contains(&"fastmcp-pack@0.1.0".to_string()));
}

#[tokio::test]
async fn a_changed_ontology_is_a_content_mismatch_naming_the_fingerprint() {
    let Some(mk) = market().await else { return };
    let ttl = mk.checkout.join("packs/fastmcp-pack/ontology.ttl");
    let mut text = std::fs::read_to_string(&ttl).expect("ttl");
    text.push_str("\n# one more line\n");
    std::fs::write(&ttl, text).expect("edit");
    let r = mk.m.refresh(true, common::NOW).await.expect("refresh");
    let p = r
        .problems
        .iter()
        .find(|p| p.kind == FindingKind::ContentMismatch)
        .expect("judged");
    assert_eq!(p.subject.to_string(), "fastmcp-pack@0.1.0");
    let fields = p.labels["fields"].as_array().expect("fields");
    assert!(
        fields.contains(&"ontology_fingerprint_sha256".into()),
        "{fields:?}"
    );
    assert!(p.message.contains("fingerprints to"), "{}", p.message);
}

#[tokio::test]
async fn packs_the_admission_rules_refuse_are_named_with_their_file() {
    let Some(mk) = market().await else { return };
    let packs = mk.checkout.join("packs");
    std::fs::write(packs.join("fastmcp-pack/pack.toml"), "[pack\nname = ").expect("bad toml");
    std::fs::write(
        packs.join("fortune5-deployment-blocks-pack/gates/notes.txt"),
        "x",
    )
    .expect("gate");
    std::os::unix::fs::symlink("/etc/passwd", packs.join("crown-conjecture-pack/link.ttl"))
        .expect("link");
    let dangling = packs.join("clap-noun-verb-crate-pack/pack.toml");
    let text = std::fs::read_to_string(&dangling).expect("toml");
    std::fs::write(
        &dangling,
        text.replacen("[pack]\n", "[pack]\nsuperseded_by = \"no-such-pack\"\n", 1),
    )
    .expect("edit");
    let r = mk.m.refresh(true, common::NOW).await.expect("refresh");
    let refused: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.kind == FindingKind::PackRefused)
        .collect();
    let msg = |name: &str| {
        refused
            .iter()
            .find(|p| p.subject.package == name)
            .map(|p| p.message.clone())
            .unwrap_or_else(|| panic!("{name} is not refused: {refused:#?}"))
    };
    assert!(msg("fastmcp-pack").contains("MANIFEST_INVALID: fastmcp-pack/pack.toml:1:"));
    assert!(msg("fortune5-deployment-blocks-pack").contains("GATE_SOURCE_EXTENSION"));
    assert!(
        msg("crown-conjecture-pack").contains("PACK_SYMLINK: packs/crown-conjecture-pack/link.ttl")
    );
    assert_eq!(refused.len(), 3, "{refused:#?}");
    assert_eq!(
        kinds(&r, FindingKind::SuccessorMissing),
        ["clap-noun-verb-crate-pack"]
    );
    // Nothing of this changes what is published: no remediation is in force.
    assert!(std::fs::read(&mk.publish).expect("published") == fixture_catalog(&mk.checkout));
}

#[tokio::test]
async fn a_catalog_that_is_not_json_or_of_another_schema_is_refused_and_nothing_published_changes()
{
    let Some(mk) = market().await else { return };
    mk.m.refresh(true, common::NOW).await.expect("refresh");
    let before = std::fs::read(&mk.publish).expect("published");
    let catalog = mk.checkout.join("dist/site/index.json");
    let good = std::fs::read_to_string(&catalog).expect("catalog");
    for (bad, expect) in [
        ("{\n  \"packs\": [\n    oops\n", "line 3"),
        (
            &good.replace("catalog/v2", "catalog/v3")[..],
            "field `schema`",
        ),
        (
            &good.replacen(
                "\"name\": \"ai-chatbot-shadcn-pack\"",
                "\"name\": \"../../etc\"",
                1,
            )[..],
            "packs[0] field `name`",
        ),
    ] {
        std::fs::write(&catalog, bad).expect("write");
        let e =
            mk.m.refresh(true, common::NOW + 1)
                .await
                .expect_err("refused");
        let text = e.to_string();
        assert!(text.contains(&catalog.display().to_string()), "{text}");
        assert!(text.contains(expect), "{text}");
        assert!(std::fs::read(&mk.publish).expect("published") == before);
        assert!(
            mk.m.published().expect("served").bytes == before,
            "the served copy stays"
        );
    }
    std::fs::write(&catalog, good).expect("restore");
    mk.m.refresh(true, common::NOW + 2)
        .await
        .expect("good again");
}

/// Rewrites the catalog's record of `pack` to vouch for `archive` (as if the tool had built the
/// catalog from it), so that what is judged is the archive's content, not its digest.
fn vouch_for(checkout: &Path, pack: &str, archive: &[u8]) {
    use sha2::{Digest, Sha256};
    let path = checkout.join("dist/site/index.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("catalog")).expect("json");
    for r in doc["packs"].as_array_mut().expect("packs") {
        if r["name"] == pack {
            r["digest"] = format!("sha256:{}", hex::encode(Sha256::digest(archive))).into();
            r["size_bytes"] = archive.len().into();
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
}

#[tokio::test]
async fn archives_that_are_not_gzip_not_tar_or_leave_the_pack_are_judged_by_name() {
    let Some(mk) = market().await else { return };
    let archive = mk.checkout.join("dist/packs/fastmcp-pack-0.1.0.tar.gz");
    let mut not_tar = Vec::new();
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(&mut not_tar, flate2::Compression::fast());
        gz.write_all(&[7u8; 2048]).expect("gz");
        gz.finish().expect("gz");
    }
    let traversal = {
        let gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        let body = b"owned";
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        let name = b"fastmcp-pack/../../../tmp/owned";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        tar.append(&h, &body[..]).expect("append");
        tar.into_inner().expect("tar").finish().expect("gz")
    };
    for (bytes, expect) in [
        (b"this is not gzip".to_vec(), "not a gzip file"),
        (not_tar, "not a tar archive"),
        (traversal, "leaves the pack's directory"),
    ] {
        std::fs::write(&archive, &bytes).expect("write");
        vouch_for(&mk.checkout, "fastmcp-pack", &bytes);
        let r = mk.m.refresh(true, common::NOW).await.expect("refresh");
        let p = r
            .problems
            .iter()
            .find(|p| p.kind == FindingKind::ContentMismatch && p.subject.package == "fastmcp-pack")
            .unwrap_or_else(|| panic!("judged: {:#?}", r.problems));
        assert!(p.message.contains(expect), "{}", p.message);
    }
    assert!(!Path::new("/tmp/owned").exists(), "nothing was extracted");
}

#[tokio::test]
async fn a_tampered_archive_is_a_checksum_mismatch_for_the_monitor() {
    let Some(mk) = market().await else { return };
    let archive = mk.checkout.join("dist/packs/fastmcp-pack-0.1.0.tar.gz");
    let mut bytes = std::fs::read(&archive).expect("archive");
    bytes[100] ^= 0x20;
    std::fs::write(&archive, &bytes).expect("tamper");
    let trust = Arc::new(mapek::keys::TrustStore::default());
    let mut state = mapek::monitor::MonitorState::new();
    let out = mapek::monitor::cycle(
        &mut state,
        &mk.m,
        &mk.t.store,
        &trust,
        common::NOW,
        3_600_000,
    )
    .await
    .expect("monitor");
    assert!(out.unreachable.is_none(), "{:?}", out.unreachable);
    let bad: Vec<_> = out
        .observations
        .iter()
        .filter(|o| o.integrity != mapek::model::Integrity::Ok)
        .map(|o| format!("{}@{}", o.package, o.version))
        .collect();
    assert_eq!(bad, ["fastmcp-pack@0.1.0"]);
    assert!(out
        .observations
        .iter()
        .all(|o| o.signature == mapek::model::SignatureState::Unsigned));
}

#[tokio::test]
async fn with_notifications_only_the_packs_that_changed_are_read_again() {
    let t = common::store().await;
    let Some(checkout) = fixture_copy(t.dir.path()) else {
        return;
    };
    let mut config = MarketplaceConfig::at(&checkout);
    config.watch = true;
    let m = Marketplace::new(
        SqlRegistry::new(t.store.clone(), t.dir.path()),
        config,
        Some(Arc::new(KeyPair::from_seed("daemon", [9; 32]))),
    )
    .expect("marketplace");
    assert!(m.watching(), "inotify is available here");
    let first = m.refresh(false, common::NOW).await.expect("first");
    assert_eq!(first.read, 48, "the first refresh reads everything");
    let quiet = m.refresh(false, common::NOW + 1).await.expect("quiet");
    assert_eq!(quiet.read, 0, "nothing changed, nothing read");
    let events = m.changes.events.load(std::sync::atomic::Ordering::SeqCst);
    std::fs::write(
        checkout.join("packs/fastmcp-pack/templates/fastmcp_server.py.tmpl"),
        "# changed under a published version\n",
    )
    .expect("edit");
    let start = std::time::Instant::now();
    while m.changes.events.load(std::sync::atomic::Ordering::SeqCst) == events {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no notification"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let r = m
        .refresh(false, common::NOW + 2)
        .await
        .expect("after the edit");
    assert_eq!(r.read, 1, "only fastmcp-pack is read again");
    assert_eq!(
        kinds(&r, FindingKind::ContentMismatch),
        ["fastmcp-pack@0.1.0"]
    );
    // A full scan, the safety net, reads everything again.
    assert_eq!(
        m.refresh(true, common::NOW + 3).await.expect("full").read,
        48
    );
}

#[tokio::test]
async fn an_unreachable_archive_host_is_the_sensors_failing_and_nothing_is_judged() {
    let t = common::store().await;
    let Some(checkout) = fixture_copy(t.dir.path()) else {
        return;
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut config = MarketplaceConfig::at(&checkout);
    config.watch = false;
    config.archives =
        mapek::registry::marketplace::Archives::Url(format!("http://127.0.0.1:{closed}/packs"));
    let m = Arc::new(
        Marketplace::new(
            SqlRegistry::new(t.store.clone(), t.dir.path()),
            config,
            Some(Arc::new(KeyPair::from_seed("daemon", [9; 32]))),
        )
        .expect("marketplace"),
    );
    let trust = Arc::new(mapek::keys::TrustStore::default());
    let mut state = mapek::monitor::MonitorState::new();
    let out = mapek::monitor::cycle(&mut state, &m, &t.store, &trust, common::NOW, 3_600_000)
        .await
        .expect("the monitor reports it, it does not fail");
    let why = out.unreachable.as_deref().expect("unreachable");
    assert!(why.contains(&format!("127.0.0.1:{closed}")), "{why}");
    let mut analyzer = mapek::analyze::Analyzer::new(Default::default());
    let judged = analyzer
        .cycle(
            &t.store,
            mapek::analyze::AnalyzeInput::from_monitor(&out),
            common::NOW,
        )
        .await
        .expect("analysis");
    assert!(judged.stale, "nothing is planned on stale facts");
    let open = t.store.open_findings().await.expect("findings");
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0].kind, FindingKind::RegistryUnreachable);
}
