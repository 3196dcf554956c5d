//! `mapek bench --execute` and `--audit`: executor throughput with signatures and audit entries, and `audit verify` over a long log, on SQLite or PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bench::median;
use crate::clock::{Clock, SystemClock};
use crate::execute::{self, Outcome};
use crate::keys::KeyPair;
use crate::knowledge::audit::{self, verify_chain, NewEntry};
use crate::knowledge::chain::Signatures;
use crate::knowledge::remediations::{self, Remediation, Status};
use crate::knowledge::Store;
use crate::model::{Action, Subject};
use crate::registry::generate::{self, GenerateSpec};
use crate::registry::{Registry, SqlRegistry};

/// A fresh store for one run: a SQLite file in `dir`, or a new database on the PostgreSQL
/// server of `pg` (dropped by the caller).
pub(super) async fn fresh_store(
    dir: &std::path::Path,
    pg: Option<&str>,
    run: usize,
) -> anyhow::Result<(Store, Option<String>)> {
    match pg {
        None => Ok((
            Store::open(&dir.join("bench.db").display().to_string()).await?,
            None,
        )),
        Some(base) => {
            let name = format!("mapek_bench_{}_{run}", std::process::id());
            crate::knowledge::create_database(base, &name).await?;
            if let Ok(mut made) = MADE.lock() {
                made.push((base.to_string(), name.clone()));
            }
            let (prefix, _) = base
                .rsplit_once('/')
                .ok_or_else(|| anyhow::anyhow!("--pg {base}: the URL has no database path"))?;
            // As the daemon writes on PostgreSQL: every transaction fenced by the leader's lease.
            let store = Store::open(&format!("{prefix}/{name}")).await?.fenced();
            let token = store
                .try_acquire(crate::knowledge::lease::LEADER, "bench", 0, i64::MAX / 2)
                .await?
                .ok_or_else(|| anyhow::anyhow!("a fresh database has no free lease"))?;
            store.set_fence(token);
            Ok((store, Some(name)))
        }
    }
}

/// The databases the bench made and has not dropped yet: (server URL, name).
static MADE: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Drops every database the bench made and has not dropped (after Ctrl-C); a failure is said,
/// with the command that finishes the job.
pub(super) async fn drop_bench_databases() {
    let made = MADE
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default();
    for (base, name) in made {
        if let Err(e) = crate::knowledge::drop_database(&base, &name).await {
            eprintln!("could not drop database {name} ({e}): run `DROP DATABASE {name}` on {base}");
        }
    }
}

pub(super) async fn drop_store(
    store: Store,
    pg: Option<&str>,
    name: Option<String>,
) -> anyhow::Result<()> {
    store.close().await;
    if let (Some(base), Some(name)) = (pg, name) {
        crate::knowledge::drop_database(base, &name).await?;
        if let Ok(mut made) = MADE.lock() {
            made.retain(|(_, n)| *n != name);
        }
    }
    Ok(())
}

/// `n` ready remediations, one quarantine per release, signed by `key`.
fn remediations(releases: &[(String, String)], key: &KeyPair, now: i64) -> Vec<Remediation> {
    releases
        .iter()
        .enumerate()
        .map(|(i, (p, v))| {
            let mut r = Remediation {
                id: format!("rem-bench-{i:08}"),
                idempotency_key: format!("bench-{i}"),
                finding_id: None,
                policy: "bench".into(),
                action: Action::Quarantine,
                params: serde_json::json!({ "reason": "bench" }),
                subject: Subject {
                    package: p.clone(),
                    version: Some(v.clone()),
                },
                mode: crate::model::Mode::Enforce,
                status: Status::Ready,
                reason: String::new(),
                created_at: now,
                updated_at: now,
                signature: String::new(),
                inverse: None,
                gate: None,
                expires_at: None,
                attempt: 1,
                verify_after_ms: None,
                verify_at: None,
                verdict: None,
            };
            r.signature = key.sign(&r.signing_bytes());
            r
        })
        .collect()
}

/// Executes `n` remediations (each: signature verified, intent committed, effect with its
/// signed audit entry committed) per run; prints the median throughput.
pub async fn execute(n: usize, runs: usize, pg: Option<&str>) -> anyhow::Result<()> {
    let key = KeyPair::from_seed("daemon", [7; 32]);
    let mut times = Vec::new();
    for run in 0..runs.max(1) {
        let dir = tempfile::Builder::new().prefix("mapek-bench").tempdir()?;
        let (store, name) = fresh_store(dir.path(), pg, run).await?;
        let registry = Arc::new(SqlRegistry::new(
            store.clone(),
            dir.path().join("artifacts"),
        ));
        let spec = GenerateSpec {
            packages: n,
            max_releases: 1,
            seed: 3,
            ..GenerateSpec::default()
        };
        let now = SystemClock.now_ms();
        generate::generate(&registry, &spec, now).await?;
        let (all, _) = registry.releases_since(0).await?;
        let releases: Vec<_> = all.into_iter().map(|r| (r.package, r.version)).collect();
        let mut tx = store.begin().await?;
        for r in remediations(&releases, &key, now) {
            remediations::insert(&mut tx, &r).await?;
        }
        tx.commit().await?;
        let t = Instant::now();
        let out = execute::cycle(&store, &registry, &key, now).await?;
        let took = t.elapsed();
        let executed = out
            .results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Executed { changed: true }))
            .count();
        anyhow::ensure!(
            executed == releases.len(),
            "executed {executed} of {}",
            releases.len()
        );
        let entries = store.audit_entries().await?;
        anyhow::ensure!(
            verify_chain(&entries, &key.public()).is_ok(),
            "the audit chain breaks"
        );
        eprintln!(
            "run {}: {executed} remediations in {:.3} s: {:.0}/s",
            run + 1,
            took.as_secs_f64(),
            executed as f64 / took.as_secs_f64()
        );
        times.push(took);
        drop_store(store, pg, name).await?;
    }
    let m = median(times);
    println!(
        "executor on {}: {n} remediations (quarantines, each signature verified, intent and effect with a signed audit entry committed): median {:.3} s, {:.0} remediations/s",
        if pg.is_some() { "PostgreSQL" } else { "SQLite" },
        m.as_secs_f64(),
        n as f64 / m.as_secs_f64()
    );
    Ok(())
}

/// Appends `n` audit entries, then times what `mapek audit verify` does: read the log and
/// check every link, hash and signature.
pub async fn audit(n: usize, runs: usize, pg: Option<&str>) -> anyhow::Result<()> {
    let key = KeyPair::from_seed("daemon", [7; 32]);
    let dir = tempfile::Builder::new().prefix("mapek-bench").tempdir()?;
    let (store, name) = fresh_store(dir.path(), pg, 0).await?;
    let now = SystemClock.now_ms();
    let t = Instant::now();
    let mut written = 0;
    while written < n {
        let mut tx = store.begin().await?;
        for i in written..(written + 5_000).min(n) {
            audit::append(
                &mut tx,
                &key,
                NewEntry {
                    at: now + i as i64,
                    kind: crate::model::AuditKind::RemediationExecuted,
                    actor: "daemon".into(),
                    subject: format!("pkg-{:05}@1.0.0", i % 50_000),
                    remediation_id: Some(format!("rem-{i:016x}")),
                    detail: serde_json::json!({"policy": "quarantine-tampered", "action": "quarantine", "changed": true}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        written = (written + 5_000).min(n);
    }
    eprintln!("wrote {n} entries in {:.1} s", t.elapsed().as_secs_f64());
    let backend = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    for (signatures, what) in [
        (
            Signatures::Head,
            "every link and hash, the head's signature",
        ),
        (Signatures::Every, "every link, hash and signature"),
    ] {
        let mut times: Vec<Duration> = Vec::new();
        for run in 0..runs.max(1) {
            let t = Instant::now();
            let verified = store
                .verify_audit(&key.public(), signatures)
                .await?
                .map_err(|b| anyhow::anyhow!("the chain breaks: {b}"))?;
            anyhow::ensure!(verified == n, "verified {verified} of {n}");
            let took = t.elapsed();
            eprintln!(
                "{signatures:?} run {}: {:.3} s",
                run + 1,
                took.as_secs_f64()
            );
            times.push(took);
        }
        println!(
            "audit verify on {backend}: {n} entries read and checked ({what}): median {:.3} s",
            median(times).as_secs_f64()
        );
    }
    drop_store(store, pg, name).await
}
