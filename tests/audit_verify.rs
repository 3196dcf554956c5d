//! `audit verify` from the store: the log read a page at a time (each page encoded by the database), checked through the head's signature or every entry's, on SQLite and PostgreSQL.

mod common;

use common::{store, NOW};
use mapek::keys::KeyPair;
use mapek::knowledge::audit::{self, AuditEntry, NewEntry};
use mapek::knowledge::chain::Signatures;
use mapek::knowledge::Store;

/// Appends `n` entries whose text exercises the page encoding: quotes, backslashes, newlines,
/// control characters, non-ASCII, an absent remediation id.
async fn write(store: &Store, key: &KeyPair, n: i64) -> Vec<AuditEntry> {
    let mut written = Vec::new();
    let mut tx = store.begin().await.expect("begin");
    for i in 0..n {
        written.push(
            audit::append(
                &mut tx,
                key,
                NewEntry {
                    at: NOW + i,
                    kind: mapek::model::AuditKind::RemediationExecuted,
                    actor: if i % 3 == 0 { "daemon" } else { "ana \"the maintainer\" ñ" }.into(),
                    subject: format!("pkg-{i}@1.0.0\\\n\t\u{1}é🦀"),
                    remediation_id: (i % 2 == 0).then(|| format!("rem-{i}")),
                    detail: serde_json::json!({"policy": "p", "note": format!("line\n{i}\u{7f}\"'")}),
                },
            )
            .await
            .expect("append"),
        );
    }
    tx.commit().await.expect("commit");
    written
}

async fn verify(
    store: &Store,
    key: &KeyPair,
    signatures: Signatures,
) -> Result<usize, (i64, String)> {
    store
        .verify_audit_paged(&key.public(), signatures, 7)
        .await
        .expect("the store answers")
        .map_err(|b| (b.seq, b.reason))
}

#[tokio::test]
async fn pages_read_back_exactly_what_was_written_and_the_chain_verifies_across_them() {
    let t = store().await;
    let key = KeyPair::from_seed("daemon", [4; 32]);
    let written = write(&t.store, &key, 45).await;
    // Byte for byte, across pages of 7 and the last, short one.
    let mut read = Vec::new();
    loop {
        let page = t
            .store
            .audit_page(read.last().map_or(0, |e: &AuditEntry| e.seq), 7)
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        read.extend(page);
    }
    assert_eq!(read, written);
    assert_eq!(t.store.audit_entries().await.expect("entries"), written);
    for signatures in [Signatures::Head, Signatures::Every] {
        assert_eq!(verify(&t.store, &key, signatures).await, Ok(45));
    }
    // Another key verifies nothing: the head's signature (or the first entry's) fails.
    let other = KeyPair::from_seed("other", [5; 32]);
    assert_eq!(
        verify(&t.store, &other, Signatures::Head)
            .await
            .map_err(|e| e.0),
        Err(45)
    );
    assert_eq!(
        verify(&t.store, &other, Signatures::Every)
            .await
            .map_err(|e| e.0),
        Err(1)
    );
}

#[tokio::test]
async fn an_entry_altered_or_removed_at_a_page_boundary_is_named_in_either_mode() {
    let t = store().await;
    let key = KeyPair::from_seed("daemon", [4; 32]);
    write(&t.store, &key, 30).await;
    // Entry 15 starts the third page of 7.
    sqlx::query("UPDATE audit_log SET subject = 'pkg-x@1.0.0' WHERE seq = 15")
        .execute(t.store.raw_pool())
        .await
        .expect("alter");
    for signatures in [Signatures::Head, Signatures::Every] {
        let (seq, why) = verify(&t.store, &key, signatures)
            .await
            .expect_err("altered");
        assert_eq!(seq, 15);
        assert!(why.contains("altered"), "{why}");
    }
    sqlx::query("DELETE FROM audit_log WHERE seq >= 14 AND seq <= 15")
        .execute(t.store.raw_pool())
        .await
        .expect("remove");
    for signatures in [Signatures::Head, Signatures::Every] {
        let (seq, why) = verify(&t.store, &key, signatures)
            .await
            .expect_err("removed");
        assert_eq!(seq, 14);
        assert!(why.contains("missing"), "{why}");
    }
}

#[tokio::test]
async fn a_damaged_signature_is_named_by_the_full_check_and_a_forged_head_by_either() {
    let t = store().await;
    let key = KeyPair::from_seed("daemon", [4; 32]);
    let written = write(&t.store, &key, 20).await;
    let other = KeyPair::from_seed("other", [5; 32]);
    // Entry 9's signature replaced by another key's over the same hash: its content is
    // intact, so the head still vouches for it; only the full check names it.
    sqlx::query("UPDATE audit_log SET signature = $1 WHERE seq = 9")
        .bind(other.sign(written[8].hash.as_bytes()))
        .execute(t.store.raw_pool())
        .await
        .expect("damage");
    assert_eq!(verify(&t.store, &key, Signatures::Head).await, Ok(20));
    let (seq, why) = verify(&t.store, &key, Signatures::Every)
        .await
        .expect_err("damaged");
    assert_eq!(seq, 9);
    assert!(why.contains("signature"), "{why}");
    // The head re-signed by someone else: nothing is vouched for, in either mode.
    sqlx::query("UPDATE audit_log SET signature = $1 WHERE seq = 20")
        .bind(other.sign(written[19].hash.as_bytes()))
        .execute(t.store.raw_pool())
        .await
        .expect("forge");
    let (seq, why) = verify(&t.store, &key, Signatures::Head)
        .await
        .expect_err("forged head");
    assert_eq!(seq, 20);
    assert!(why.contains("head's signature"), "{why}");
}

#[tokio::test]
async fn the_command_checks_the_head_by_default_and_every_signature_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    common::prepare_demo(dir.path(), "mapek-demo/mapek.db");
    let verify = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mapek"))
            .args(["--demo", "audit", "verify"])
            .args(extra)
            .current_dir(dir.path())
            .env("MAPEK_LOG", "warn")
            .output()
            .expect("audit verify runs")
    };
    let ok = verify(&[]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("the head's signature"));
    let full = verify(&["--every-signature"]);
    assert!(full.status.success(), "{full:?}");
    assert!(String::from_utf8_lossy(&full.stdout).contains("every entry's signature"));
    // The first entry's signature damaged (its content intact): only the full check names it.
    let store = Store::open(&dir.path().join("mapek-demo/mapek.db").display().to_string())
        .await
        .expect("the demo's store");
    let other = KeyPair::from_seed("other", [5; 32]);
    let first = &store.audit_page(0, 1).await.expect("page")[0];
    sqlx::query("UPDATE audit_log SET signature = $1 WHERE seq = 1")
        .bind(other.sign(first.hash.as_bytes()))
        .execute(store.raw_pool())
        .await
        .expect("damage");
    store.close().await;
    // A third party with the export and the public key alone: no store is opened or created.
    let export = dir.path().join("audit.jsonl");
    let exported = std::process::Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["--demo", "audit", "export", "--out"])
        .arg(&export)
        .current_dir(dir.path())
        .env("MAPEK_LOG", "warn")
        .status()
        .expect("audit export runs");
    assert!(exported.success());
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let public = KeyPair::load(&dir.path().join("mapek-demo/daemon.key"))
        .expect("the demo's key")
        .public_hex();
    let third = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mapek"))
            .args(["audit", "verify", "--public-key", &public, "--file"])
            .arg(&export)
            .args(extra)
            .current_dir(elsewhere.path())
            .env("MAPEK_LOG", "warn")
            .output()
            .expect("audit verify runs")
    };
    assert!(third(&[]).status.success(), "{:?}", third(&[]));
    assert_eq!(third(&["--every-signature"]).status.code(), Some(1));
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).expect("dir").count(),
        0,
        "nothing was created where the export was checked"
    );
    assert!(verify(&[]).status.success());
    let broken = verify(&["--every-signature"]);
    assert_eq!(broken.status.code(), Some(1), "{broken:?}");
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("audit entry 1: its signature"),
        "{broken:?}"
    );
}
