//! The simulator: the daemon's own stages against a simulated registry on a virtual clock, checked against a scenario's expectations.

pub mod expect;
pub mod registry;
pub mod report;
pub mod scenario;
pub mod telemetry;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::analyze::{self, Rules};
use crate::execute;
use crate::execute::learn::LearningSettings;
use crate::keys::{KeyPair, Role, TrustStore};
use crate::knowledge::approvals::Decision;
use crate::knowledge::remediations::Status;
use crate::knowledge::Store;
use crate::monitor::{self, MonitorState};
use crate::plan::facts::Uses;
use crate::plan::policy::{policy_files, read_bounded, PolicySet};
use crate::plan::{approve, PlanContext, Planner};
use crate::registry::artifacts::MemoryArtifacts;
use crate::registry::generate::{self, derived_key, GenerateSpec};
use crate::registry::{Registry, SqlRegistry};
use registry::SimRegistry;
use report::{Report, Sample};
use scenario::{EventKind, Scenario, Source};
use telemetry::{Background, Telemetry};

/// Virtual time zero: 2026-01-05T00:00:00Z, a Monday.
pub const START_MS: i64 = 1_767_571_200_000;

/// The loop's world during a run.
struct World {
    /// Holds the store's directory: removed when the run ends.
    _dir: tempfile::TempDir,
    url: String,
    store: Store,
    registry: Arc<SimRegistry>,
    trust: Arc<TrustStore>,
    key: KeyPair,
    policies: PolicySet,
    seed: u64,
    notes: Vec<String>,
    telemetry: Telemetry,
    /// The registry's change sequence when the background traffic last learnt each latest.
    background_seq: i64,
}

fn digest(trust: &mut TrustStore) {
    trust.digest = hex::encode(Sha256::digest(trust.to_toml().as_bytes()));
}

/// The policy set of a scenario: its directory, `[guards]` instead of guards.toml when given,
/// and its own `[[policy]]` tables, which replace loaded policies of the same id.
pub fn policies_of(s: &Scenario) -> anyhow::Result<PolicySet> {
    let files = policy_files(&s.policies_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut sources = Vec::new();
    for f in files {
        let is_guards = f.file_name().is_some_and(|n| n == "guards.toml");
        if is_guards && s.guards.is_some() {
            continue;
        }
        sources.push((
            f.clone(),
            read_bounded(&f).map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
    }
    if let Some(g) = &s.guards {
        sources.push((PathBuf::from("guards.toml"), g.clone()));
    }
    let refused = |e: Vec<crate::plan::policy::PolicyError>| {
        anyhow::anyhow!(
            "the policy set is refused:\n  {}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    };
    let mut set = PolicySet::from_sources(&sources).map_err(refused)?;
    if let Some(extra) = &s.policies {
        let own = PolicySet::from_sources(&[(s.file.clone(), extra.clone())]).map_err(refused)?;
        set.policies
            .retain(|p| !own.policies.iter().any(|o| o.id == p.id));
        set.policies.extend(own.policies);
        set.uses = Uses::of(set.policies.iter().filter_map(|p| p.program.as_ref()));
        set.digest = format!("{}+{}", set.digest, own.digest);
    }
    Ok(set)
}

async fn setup(s: &Scenario) -> anyhow::Result<World> {
    let policies = policies_of(s)?;
    let dir = private_dir()?;
    let url = dir.path().join("sim.db").display().to_string();
    let store = Store::open(&url).await?;
    let artifacts = Arc::new(MemoryArtifacts::default());
    let inner = SqlRegistry::in_memory(store.clone(), artifacts.clone());
    let mut trust = match &s.source {
        Source::Generate(g) => {
            let spec = GenerateSpec {
                packages: g.packages,
                mean_dependencies: g.mean_dependencies,
                publishers: g.publishers,
                max_releases: g.max_releases,
                signed_fraction: g.signed_fraction,
                unmaintained_fraction: g.unmaintained_fraction,
                cycles: g.cycles,
                seed: s.seed,
            };
            generate::generate(&inner, &spec, START_MS).await?.trust
        }
        Source::Import(path) => {
            let report = crate::registry::import::import(&store, path, START_MS)
                .await
                .with_context(|| format!("importing {}", path.display()))?;
            anyhow::ensure!(
                report.packages_seen > 0,
                "{}: importing {} found no package",
                s.file.display(),
                path.display()
            );
            TrustStore::default()
        }
    };
    let virtual_artifacts = matches!(s.source, Source::Import(_))
        .then(|| Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new())));
    // Every approver named by a policy or an approve event is a trusted maintainer.
    let mut approvers: Vec<String> = policies
        .policies
        .iter()
        .flat_map(|p| p.approvers.clone())
        .collect();
    approvers.extend(s.events.iter().filter_map(|e| match &e.kind {
        EventKind::Approve { key, .. } => Some(key.clone()),
        _ => None,
    }));
    approvers.sort();
    approvers.dedup();
    for a in approvers {
        trust.add(
            &derived_key(s.seed, &a),
            "simulated maintainer",
            vec![Role::Maintainer],
        );
    }
    digest(&mut trust);
    let mut telemetry = Telemetry::default();
    if let Some(b) = s.background {
        telemetry.background = Some(Background::new(
            by_popularity(inner.packages().await?),
            b.downloads_per_hour,
            b.installs_per_hour,
        ));
    }
    let background_seq = inner.change_seq().await?;
    Ok(World {
        registry: Arc::new(SimRegistry {
            inner,
            down: Arc::new(AtomicBool::new(false)),
            virtual_artifacts,
        }),
        _dir: dir,
        url,
        store,
        trust: Arc::new(trust),
        key: derived_key(s.seed, "daemon"),
        policies,
        seed: s.seed,
        notes: Vec::new(),
        telemetry,
        background_seq,
    })
}

/// A private directory for the run's store: in memory (`/dev/shm`) where there is one, since
/// nothing of it outlives the run; otherwise the system's temporary directory.
fn private_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("mapek-sim");
        b
    };
    if shm.is_dir() {
        if let Ok(dir) = builder().tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder().tempdir()
}

/// Packages with their latest release, most downloaded first (by name on a tie).
fn by_popularity(
    mut packages: Vec<crate::registry::PackageRecord>,
) -> Vec<(String, Option<String>)> {
    packages.sort_by(|a, b| b.downloads.cmp(&a.downloads).then(a.name.cmp(&b.name)));
    packages.into_iter().map(|p| (p.name, p.latest)).collect()
}

/// Background traffic follows `latest` as the daemon's actions and publications move it.
async fn follow_latest(w: &mut World) -> anyhow::Result<()> {
    let Some(b) = &mut w.telemetry.background else {
        return Ok(());
    };
    let seq = w.registry.inner.change_seq().await?;
    if seq != w.background_seq {
        let changed = sqlx::query("SELECT name, latest FROM packages WHERE change_seq > $1")
            .bind(w.background_seq)
            .fetch_all(&w.store.pool)
            .await?;
        for row in changed {
            use sqlx::Row as _;
            b.set_latest(row.try_get(0)?, row.try_get(1)?);
        }
        w.background_seq = seq;
    }
    Ok(())
}

async fn latest(w: &World, package: &str, version: &str) -> anyhow::Result<String> {
    if version != "latest" {
        return Ok(version.to_string());
    }
    w.registry
        .inner
        .package(package)
        .await?
        .and_then(|p| p.latest)
        .with_context(|| format!("package `{package}` has no latest release"))
}

async fn apply(w: &mut World, kind: &EventKind, now: i64) -> anyhow::Result<()> {
    let reg = &w.registry.inner;
    match kind {
        EventKind::Publish {
            package,
            version,
            signed,
            signer,
            dependencies,
            license,
            readme,
            tests,
        } => {
            let key = signer.clone().unwrap_or_else(|| "pub-0".to_string());
            let key = derived_key(w.seed, &key);
            let contents = generate::Contents {
                license: *license,
                readme: *readme,
                tests: *tests,
            };
            generate::publish(
                reg,
                package,
                version,
                signed.then_some(&key),
                dependencies,
                contents,
                now,
            )
            .await?;
        }
        EventKind::InstallOutcomes {
            package,
            version,
            per_hour,
            failure_ratio,
            for_ms,
        } => {
            let v = latest(w, package, version).await?;
            w.telemetry
                .installs(package, &v, *per_hour, *failure_ratio, now, *for_ms);
        }
        EventKind::Downloads {
            package,
            per_hour,
            for_ms,
        } => {
            let v = latest(w, package, "latest").await?;
            w.telemetry.downloads(package, &v, *per_hour, now, *for_ms);
        }
        EventKind::LookupLatency { p99_ms, for_ms } => w.telemetry.lookups(*p99_ms, now, *for_ms),
        EventKind::Report {
            package,
            version,
            reporter,
            category,
        } => {
            let v = latest(w, package, version).await?;
            w.telemetry.report(crate::monitor::events::Report {
                package: package.clone(),
                version: v,
                reporter: reporter.clone(),
                category: category.clone(),
                at: now,
            });
        }
        EventKind::TamperArtifact { package, version } => {
            let v = latest(w, package, version).await?;
            let r = reg
                .release(package, &v)
                .await?
                .with_context(|| format!("no release {package}@{v}"))?;
            match &w.registry.virtual_artifacts {
                Some(tampered) => {
                    if let Ok(mut t) = tampered.lock() {
                        t.insert((package.clone(), v.clone()));
                    }
                }
                None => {
                    let file = r.artifact.context("the release has no artifact")?;
                    reg.tamper_artifact(&file)?;
                }
            }
        }
        EventKind::CorruptSignature { package, version } => {
            let v = latest(w, package, version).await?;
            let r = reg
                .release(package, &v)
                .await?
                .with_context(|| format!("no release {package}@{v}"))?;
            let signer = r.signer.unwrap_or_else(|| "pub-0".into());
            let key = derived_key(w.seed, &signer);
            reg.set_signature(package, &v, &key.sign(b"not these bytes"), &signer)
                .await?;
        }
        EventKind::RevokeKey { key } => {
            let mut t = (*w.trust).clone();
            if !t.revoked.contains(key) {
                t.revoked.push(key.clone());
            }
            digest(&mut t);
            w.trust = Arc::new(t);
        }
        EventKind::TrustKey { key } => {
            let mut t = (*w.trust).clone();
            t.add(
                &derived_key(w.seed, key),
                "trusted by event",
                vec![Role::Publisher],
            );
            t.revoked.retain(|k| k != key);
            digest(&mut t);
            w.trust = Arc::new(t);
        }
        EventKind::RotateKey { key, new_key } => {
            let new = derived_key(w.seed, new_key);
            let (all, _) = reg.releases_since(0).await?;
            for r in all
                .iter()
                .filter(|r| r.signer.as_deref() == Some(key.as_str()))
            {
                if let Some(file) = &r.artifact {
                    let bytes = reg.read_artifact(file)?;
                    reg.set_signature(&r.package, &r.version, &new.sign(&bytes), new_key)
                        .await?;
                }
            }
        }
        EventKind::Approve {
            policy,
            package,
            key,
        } => {
            let pending = w.store.remediations_with_status(Status::Pending).await?;
            let target = pending.iter().find(|r| {
                r.policy == *policy
                    && r.subject.package == *package
                    && r.gate.as_deref() == Some("approval")
            });
            match target {
                Some(r) => {
                    let maintainer = derived_key(w.seed, key);
                    if let Err(e) = approve::decide(
                        &w.store,
                        &w.policies,
                        &w.trust,
                        &w.key,
                        &maintainer,
                        &r.id,
                        Decision::Approve,
                        now,
                    )
                    .await
                    {
                        w.notes.push(format!(
                            "{}: approval by `{key}` refused: {e}",
                            crate::clock::rfc3339(now)
                        ));
                    }
                }
                None => w.notes.push(format!(
                    "{}: approve: no remediation of `{policy}` on `{package}` waits for approval",
                    crate::clock::rfc3339(now)
                )),
            }
        }
        EventKind::RegistryOutage { .. } | EventKind::StoreOutage { .. } => {}
    }
    Ok(())
}

/// Runs one scenario to its end and judges it. `progress` is called with the share done.
pub async fn run(s: &Scenario, mut progress: impl FnMut(f64)) -> anyhow::Result<Report> {
    let mut w = setup(s).await?;
    let mut monitor_state = MonitorState::new();
    let mut planner = Planner::default();
    let rules = Rules {
        quality: crate::analyze::quality::QualityModel::load(&s.policies_dir)?,
        ..Rules::default()
    };
    let mut analyzer = analyze::Analyzer::new(rules);
    let ticks = (s.duration_ms / s.tick_ms).max(1);
    let sample_every = (ticks / 240).max(1);
    let mut next_event = 0;
    let (mut registry_back, mut store_back) = (i64::MIN, i64::MIN);
    let mut store_down = false;
    let mut stage_errors = 0u64;
    let mut samples = Vec::new();
    for tick in 0..=ticks {
        let t = tick * s.tick_ms;
        let now = START_MS + t;
        while next_event < s.events.len() && s.events[next_event].at_ms <= t {
            let e = s.events[next_event].clone();
            next_event += 1;
            match &e.kind {
                EventKind::RegistryOutage { for_ms } => {
                    registry_back = registry_back.max(t + for_ms);
                    w.registry.down.store(true, Ordering::SeqCst);
                }
                EventKind::StoreOutage { for_ms } => {
                    store_back = store_back.max(t + for_ms);
                    if !store_down {
                        w.store.close().await;
                        store_down = true;
                    }
                }
                kind if !store_down => apply(&mut w, kind, now)
                    .await
                    .with_context(|| format!("{}:{}: event", s.file.display(), e.line))?,
                _ => w.notes.push(format!(
                    "{}: event of line {} not applied: the store is down",
                    crate::clock::rfc3339(now),
                    e.line
                )),
            }
        }
        if w.registry.down.load(Ordering::SeqCst) && t >= registry_back {
            w.registry.down.store(false, Ordering::SeqCst);
        }
        if t > 0 {
            w.telemetry.advance(now - s.tick_ms, now);
        }
        if store_down && t >= store_back {
            w.store = Store::open(&w.url).await?;
            let inner = SqlRegistry {
                store: w.store.clone(),
                ..w.registry.inner.clone()
            };
            w.registry = Arc::new(SimRegistry {
                inner,
                down: w.registry.down.clone(),
                virtual_artifacts: w.registry.virtual_artifacts.clone(),
            });
            store_down = false;
        }
        if !store_down {
            // What the intake would have committed during the tick, written as it writes it.
            let (batch, dropped) = w.telemetry.take(now);
            if dropped > 0 {
                w.notes.push(format!(
                    "{}: {dropped} telemetry buckets older than the intake's horizon dropped after the store outage",
                    crate::clock::rfc3339(now)
                ));
            }
            if batch.events > 0 {
                if let Err(e) = w.store.write_telemetry(&batch).await {
                    w.notes.push(format!(
                        "{}: telemetry not written, kept for the next tick: {e}",
                        crate::clock::rfc3339(now)
                    ));
                    w.telemetry.keep(batch);
                }
            }
        }
        // The daemon's four stages, in its order; a failed stage ends the cycle, as in the daemon.
        let cycle = async {
            let m = monitor::cycle(
                &mut monitor_state,
                &w.registry,
                &w.store,
                &w.trust,
                now,
                3_600_000,
            )
            .await?;
            let judged = analyzer
                .cycle(&w.store, analyze::AnalyzeInput::from_monitor(&m), now)
                .await?;
            if judged.stale {
                // As in the daemon: nothing is planned or executed on stale facts.
                return anyhow::Ok(());
            }
            let ctx = PlanContext {
                policies: &w.policies,
                trust: &w.trust,
                key: &w.key,
                daemon_dry_run: false,
                now,
            };
            planner.cycle(&w.store, &w.registry, ctx).await?;
            execute::cycle(&w.store, &w.registry, &w.key, now).await?;
            let verified = execute::verify::cycle(&w.store, &w.policies, &w.key, now).await?;
            if !verified.verdicts.is_empty() {
                execute::learn::cycle(&w.store, &w.key, &LearningSettings::default(), now).await?;
            }
            anyhow::Ok(())
        };
        if cycle.await.is_err() {
            stage_errors += 1;
        }
        if !store_down {
            follow_latest(&mut w).await?;
        }
        if (tick % sample_every == 0 || tick == ticks) && !store_down {
            samples.push(sample(&w, now, t).await);
        }
        progress(tick as f64 / ticks as f64);
    }
    let judged = expect::judge(s, &w.store, &w.registry.inner, START_MS).await?;
    let report = Report::new(
        s,
        ticks as u64 + 1,
        stage_errors,
        judged,
        samples,
        w.notes.clone(),
    );
    w.store.close().await;
    Ok(report)
}

async fn sample(w: &World, now: i64, t: i64) -> Sample {
    use sqlx::Row as _;
    let pool = &w.store.pool;
    let counts = w.registry.inner.counts().await.ok();
    let open = w.store.open_findings().await.map(|f| f.len() as i64).ok();
    let deprecated = sqlx::query("SELECT COUNT(*) FROM packages WHERE status = 'deprecated'")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .ok();
    let mut actions = std::collections::BTreeMap::new();
    if let Ok(rows) = sqlx::query(
        "SELECT action, COUNT(*) FROM remediations WHERE status = 'executed' GROUP BY action",
    )
    .fetch_all(pool)
    .await
    {
        for r in rows {
            if let (Ok(a), Ok(n)) = (r.try_get::<String, _>(0), r.try_get::<i64, _>(1)) {
                actions.insert(a, n);
            }
        }
    }
    // Two decimals, so the report stays byte-identical across platforms' float printing.
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let mean_quality = sqlx::query("SELECT AVG(score) FROM quality_scores")
        .fetch_one(pool)
        .await
        .ok()
        .and_then(|r| r.try_get::<Option<f64>, _>(0).ok().flatten())
        .map(round);
    let install_failure_ratio = Some(round(w.telemetry.install_failure_ratio(now)));
    Sample {
        t_s: t / 1000,
        quarantined: counts.map(|c| c.quarantined),
        deprecated,
        mean_quality,
        install_failure_ratio,
        open_findings: open,
        actions: (!actions.is_empty() || counts.is_some()).then_some(actions),
    }
}
