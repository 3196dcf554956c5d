//! `mapek bench latency`: a running daemon (ticker set to an hour) driven with events, one at a time, each timed from its arrival to the commit of the remediation it leads to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::daemon::{self, RunOptions, Runtime};
use crate::keys::KeyPair;
use crate::knowledge::remediations::Status;
use crate::plan::policy::PolicySet;
use crate::registry::generate::{self, GenerateSpec};
use crate::registry::{Managed, Registry as _, SqlRegistry};

const INTAKE_TOKEN: &str = "bench-intake-token-0123456789";

/// The bench's policies: quarantine what fails its integrity check and what corroborated
/// malware reports name, with no gate that would delay the decision (the target is the loop's
/// own latency: rate limits, approvals and windows hold decisions back by design).
const GUARDS: &str = r#"
[guards]
max_actions_per_cycle = 100000
max_actions_per_hour = 100000000
max_registry_fraction_per_day = 1.0
"#;

const POLICIES: &str = r#"
[[policy]]
id = "quarantine-tampered"
description = "Quarantine a release whose artifact no longer matches its checksum (bench)"
on = ["checksum_mismatch", "signature_invalid"]
when = "finding.severity == 'critical'"
action = "quarantine"
params = { reason = "artifact integrity check failed" }
mode = "enforce"
priority = 100

[[policy]]
id = "quarantine-reported"
description = "Quarantine a release named by corroborated malware reports (bench)"
on = ["reported"]
when = "finding.severity == 'critical'"
action = "quarantine"
params = { reason = "corroborated malware reports" }
mode = "enforce"
priority = 90
"#;

/// What one event was.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An artifact's file rewritten behind the registry's back.
    Tamper,
    /// Two malware reports from two reporters, in one intake request.
    Reports,
}

/// The figures, in milliseconds.
#[derive(Debug, serde::Serialize)]
struct Figures {
    store: &'static str,
    events: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    tamper_p50_ms: f64,
    reports_p50_ms: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Drives `events` events through a running daemon on a fresh store (SQLite, or a new
/// database on the PostgreSQL server of `pg`) and prints the quantiles.
pub async fn latency(events: usize, pg: Option<&str>, json: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("mapek-bench").tempdir()?;
    let (store, name) = super::bench_execute::fresh_store(dir.path(), pg, 0).await?;
    let registry = SqlRegistry::new(store.clone(), dir.path().join("artifacts"));
    let spec = GenerateSpec {
        packages: events.max(1) + 10,
        max_releases: 1,
        seed: 3,
        ..GenerateSpec::default()
    };
    eprintln!("generating {} packages", spec.packages);
    let generated = generate::generate(&registry, &spec, SystemClock.now_ms()).await?;
    let stop_intake = CancellationToken::new();
    let (writer, intake_task) =
        crate::monitor::intake::Intake::start(store.clone(), stop_intake.clone());
    let rt = Arc::new(runtime(registry, generated.trust, writer)?);
    let cancel = CancellationToken::new();
    let _watching = daemon::wake::start(
        &rt,
        &daemon::wake::Sources {
            database_url: pg.map(str::to_string).unwrap_or_default(),
            reloads: Vec::new(),
        },
        &cancel,
    );
    let (r, c) = (rt.clone(), cancel.clone());
    let looped = tokio::spawn(async move {
        daemon::run(
            r,
            RunOptions {
                cycles: None,
                interval: Duration::from_secs(3600),
                grace: Duration::from_secs(30),
            },
            c,
        )
        .await
    });
    while rt.metrics.cycles.get() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The intake over real HTTP on loopback, as a client would reach it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let intake_url = format!("http://{}/v1/events", listener.local_addr()?);
    let served = tokio::spawn(daemon::http::serve(listener, rt.clone(), cancel.clone()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let app = (client, intake_url);
    let mut all = Vec::with_capacity(events);
    let (mut tamper, mut reports) = (Vec::new(), Vec::new());
    for i in 0..events {
        let package = format!("pkg-{i:05}");
        let kind = if i % 2 == 0 {
            Kind::Tamper
        } else {
            Kind::Reports
        };
        let ms = one(&rt, &app, kind, &package).await?;
        all.push(ms);
        match kind {
            Kind::Tamper => tamper.push(ms),
            Kind::Reports => reports.push(ms),
        }
        if events >= 10 && (i + 1) % (events / 10) == 0 {
            eprintln!("  {} of {events} events", i + 1);
        }
    }
    cancel.cancel();
    looped.await??;
    let _ = served.await;
    stop_intake.cancel();
    let _ = intake_task.await;
    super::bench_execute::drop_store(store, pg, name).await?;
    for v in [&mut all, &mut tamper, &mut reports] {
        v.sort_by(f64::total_cmp);
    }
    let f = Figures {
        store: if pg.is_some() { "postgresql" } else { "sqlite" },
        events,
        p50_ms: quantile(&all, 0.5),
        p90_ms: quantile(&all, 0.9),
        p99_ms: quantile(&all, 0.99),
        max_ms: all.last().copied().unwrap_or(f64::NAN),
        tamper_p50_ms: quantile(&tamper, 0.5),
        reports_p50_ms: quantile(&reports, 0.5),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        println!(
            "event to remediation, {} events on {}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (tampered artifacts p50 {:.1} ms, corroborated reports p50 {:.1} ms)",
            f.events, f.store, f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms, f.tamper_p50_ms, f.reports_p50_ms
        );
    }
    Ok(())
}

/// One event, and the milliseconds from its arrival to its remediation's commit (the
/// remediation's recorded execution time, on the same clock).
async fn one(
    rt: &Runtime,
    app: &(reqwest::Client, String),
    kind: Kind,
    package: &str,
) -> anyhow::Result<f64> {
    let release = rt
        .registry
        .release(package, "1.0.0")
        .await?
        .ok_or_else(|| anyhow::anyhow!("{package}@1.0.0 is not in the generated registry"))?;
    let started = SystemClock.now_ms();
    let t0 = Instant::now();
    match kind {
        Kind::Tamper => {
            let path = rt
                .registry
                .sql()
                .artifact_root
                .join(release.artifact.as_deref().unwrap_or_default());
            let mut bytes = std::fs::read(&path)?;
            bytes.extend_from_slice(b"\n# tampered (bench)\n");
            std::fs::write(&path, bytes)?;
        }
        Kind::Reports => {
            let body = ["alice", "bob"]
                .iter()
                .map(|who| format!("{{\"type\":\"report\",\"package\":\"{package}\",\"version\":\"1.0.0\",\"reporter\":\"{who}\",\"category\":\"malware\"}}\n"))
                .collect::<String>();
            let answer = app
                .0
                .post(&app.1)
                .bearer_auth(INTAKE_TOKEN)
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "the intake refused: {}",
                answer.status()
            );
        }
    }
    loop {
        let recent = rt.store.recent_remediations(5).await?;
        if let Some(r) = recent
            .iter()
            .find(|r| r.subject.package == package && r.status == Status::Executed)
        {
            return Ok((r.updated_at - started).max(0) as f64);
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "{package}: no remediation within a minute of the event"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The daemon's runtime over the generated registry, as `mapek run` builds it.
fn runtime(
    registry: SqlRegistry,
    trust: crate::keys::TrustStore,
    writer: crate::monitor::intake::Intake,
) -> anyhow::Result<Runtime> {
    let policies = PolicySet::from_sources(&[
        ("guards.toml".into(), GUARDS.to_string()),
        ("bench.toml".into(), POLICIES.to_string()),
    ])
    .map_err(|e| anyhow::anyhow!("bench policies: {e:?}"))?;
    let store = registry.store.clone();
    let leadership = Arc::new(daemon::lead::Leadership::new(Duration::from_secs(15)));
    leadership.set(daemon::lead::Role::Standalone);
    Ok(Runtime {
        store,
        registry: Arc::new(Managed::from(registry)),
        key: KeyPair::from_seed("daemon", [7; 32]),
        policies: daemon::reload::PolicySource::fixed(policies),
        trust: Arc::new(trust),
        trust_path: None,
        clock: Arc::new(SystemClock),
        metrics: Arc::new(daemon::metrics::Metrics::new()?),
        dry_run: false,
        full_scan_every: Duration::from_secs(3600),
        rules: Default::default(),
        retention: Default::default(),
        intake: Some(daemon::http::IntakeConfig {
            writer,
            token: INTAKE_TOKEN.into(),
            max_body: 1 << 20,
            horizon: Default::default(),
        }),
        learning: Default::default(),
        compaction: Default::default(),
        notifier: None,
        leadership,
        admin_token: None,
        on_task_failure: Default::default(),
        fault: None,
        store_health: Default::default(),
        wake: Default::default(),
    })
}
