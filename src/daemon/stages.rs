//! The stages of the loop, each a task: monitor, analyze, plan, execute (with verification and learning after it); what each does with a cycle, and what it reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::reload::{Reload, Watch};
use super::{notify, supervise, Cycle, Runtime};
use crate::analyze;
use crate::execute::{self, Outcome};
use crate::keys::TrustStore;
use crate::monitor::{self, MonitorOutput, MonitorState};
use crate::plan::{self, CircuitChange, PlanContext, Planner};

fn stage_failed(rt: &Runtime, errors: &AtomicU64, stage: &str, error: &dyn std::fmt::Display) {
    errors.fetch_add(1, Ordering::SeqCst);
    rt.metrics.stage_errors.with_label_values(&[stage]).inc();
    tracing::error!(stage, %error, "stage failed; the cycle ends here and the next one retries");
}

fn observe(rt: &Runtime, stage: &str, started: Instant) {
    rt.metrics
        .stage_duration
        .with_label_values(&[stage])
        .observe(started.elapsed().as_secs_f64());
}

/// Reloads the trust store when its file changed; a bad file keeps the last good store.
fn refresh_trust(rt: &Runtime, current: &mut Arc<TrustStore>) {
    let Some(path) = &rt.trust_path else { return };
    match TrustStore::load(path) {
        Ok(t) if t.digest != current.digest => {
            tracing::info!(file = %path.display(), keys = t.keys.len(), "trust store reloaded");
            *current = Arc::new(t);
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "trust store unreadable; keeping the last good one");
        }
    }
}

pub(super) async fn monitor_task(
    rt: Arc<Runtime>,
    rx: supervise::Input<Cycle>,
    tx: mpsc::Sender<(Cycle, MonitorOutput)>,
    errors: Arc<AtomicU64>,
    cancel: CancellationToken,
    resync: supervise::Failure,
) {
    let mut rx = rx.lock().await;
    let mut state = MonitorState::new();
    state.retention = rt.retention;
    let mut trust = rt.trust.clone();
    loop {
        let cycle = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        if resync.resync.swap(false, Ordering::SeqCst) {
            // A stage was restarted: start over as at start-up, so that nothing it lost is missed.
            state = MonitorState::new();
            state.retention = rt.retention;
            tracing::warn!("a stage was restarted: the monitor starts over with a full scan");
        }
        if let Some(fault) = &rt.fault {
            fault("monitor");
        }
        let started = Instant::now();
        refresh_trust(&rt, &mut trust);
        let every = rt.full_scan_every.as_millis() as i64;
        let span = tracing::info_span!(parent: &cycle.span, "monitor", cycle = cycle.n);
        match monitor::cycle(
            &mut state,
            &rt.registry,
            &rt.store,
            &trust,
            rt.clock.now_ms(),
            every,
        )
        .instrument(span)
        .await
        {
            Ok(out) => {
                observe(&rt, "monitor", started);
                let scan = if out.full_scan { "full" } else { "incremental" };
                rt.metrics
                    .releases_scanned
                    .with_label_values(&[scan])
                    .inc_by(out.scanned as u64);
                rt.metrics
                    .observations
                    .with_label_values(&["registry"])
                    .inc_by(out.scanned as u64);
                rt.metrics
                    .signature_checks
                    .with_label_values(&["verified"])
                    .inc_by(out.verified as u64);
                rt.metrics
                    .signature_checks
                    .with_label_values(&["cache"])
                    .inc_by(out.cache_hits as u64);
                rt.metrics.source_reads.inc_by(out.registry.read as u64);
                rt.metrics.published(&out.registry.published);
                if let Some(why) = &out.unreachable {
                    tracing::error!(cycle = cycle.n, reason = %why, "registry unreachable: its findings are frozen and nothing is planned this cycle");
                }
                tracing::debug!(
                    cycle = cycle.n,
                    scan,
                    releases = out.scanned,
                    verified = out.verified,
                    "monitor pass"
                );
                if tx.send((cycle, out)).await.is_err() {
                    break;
                }
            }
            Err(e) => stage_failed(&rt, &errors, "monitor", &e),
        }
    }
}

pub(super) async fn analyze_task(
    rt: Arc<Runtime>,
    rx: supervise::Input<(Cycle, MonitorOutput)>,
    tx: mpsc::Sender<(Cycle, bool)>,
    errors: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut rx = rx.lock().await;
    let mut analyzer = analyze::Analyzer::new(rt.rules.clone());
    loop {
        let (cycle, input) = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        if let Some(fault) = &rt.fault {
            fault("analyze");
        }
        let started = Instant::now();
        let span = tracing::info_span!(parent: &cycle.span, "analyze", cycle = cycle.n);
        let judged = analyzer
            .cycle(
                &rt.store,
                analyze::AnalyzeInput::from_monitor(&input),
                rt.clock.now_ms(),
            )
            .instrument(span.clone())
            .await;
        match judged {
            Ok(out) => {
                span.in_scope(|| {
                    observe(&rt, "analyze", started);
                    for f in &out.fired {
                        rt.metrics
                            .findings_fired
                            .with_label_values(&[f.kind.as_str(), f.severity.as_str()])
                            .inc();
                        tracing::warn!(kind = %f.kind, severity = f.severity.as_str(), subject = %f.subject, message = %f.message, "finding fired");
                    }
                    for f in &out.resolved {
                        tracing::info!(kind = %f.kind, subject = %f.subject, "finding resolved");
                    }
                    for kind in crate::model::FindingKind::ALL {
                        let n = out.open_by_kind.get(&kind).copied().unwrap_or(0);
                        rt.metrics
                            .findings_open
                            .with_label_values(&[kind.as_str()])
                            .set(n);
                    }
                });
                if tx.send((cycle, out.stale)).await.is_err() {
                    break;
                }
            }
            Err(e) => stage_failed(&rt, &errors, "analyze", &e),
        }
    }
}

/// Reloads the policies when asked (SIGHUP) or when their directory changed; logs and counts it.
pub fn reload_policies(rt: &Runtime, watch: &mut Watch) {
    if !watch.due(&rt.policies) {
        return;
    }
    notify::reloading();
    let result = rt.policies.reload();
    notify::ready("policies reloaded or kept");
    match result {
        Some(Reload::Loaded { policies }) => {
            rt.metrics
                .policy_reloads
                .with_label_values(&["success"])
                .inc();
            rt.metrics.policies_loaded.set(policies as i64);
            tracing::info!(policies, "policy set reloaded");
        }
        Some(Reload::Refused(errors)) => {
            rt.metrics
                .policy_reloads
                .with_label_values(&["failure"])
                .inc();
            for e in &errors {
                tracing::error!(error = %e, "policy reload refused");
            }
            tracing::error!(
                errors = errors.len(),
                "the new policy set is refused; the last good set stays in force"
            );
        }
        None => {}
    }
}

pub(super) async fn plan_task(
    rt: Arc<Runtime>,
    rx: supervise::Input<(Cycle, bool)>,
    tx: mpsc::Sender<(Cycle, bool)>,
    errors: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut rx = rx.lock().await;
    let mut planner = Planner::default();
    let mut watch = Watch::start(&rt.policies);
    let mut trust = rt.trust.clone();
    rt.metrics
        .policies_loaded
        .set(rt.policies.get().policies.len() as i64);
    loop {
        let (cycle, stale) = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        if let Some(fault) = &rt.fault {
            fault("plan");
        }
        if stale {
            // Never plan on stale facts; the cycle still ends (and is counted) in execute.
            if tx.send((cycle, true)).await.is_err() {
                break;
            }
            continue;
        }
        let started = Instant::now();
        reload_policies(&rt, &mut watch);
        refresh_trust(&rt, &mut trust);
        let policies = rt.policies.get();
        let ctx = PlanContext {
            policies: &policies,
            trust: &trust,
            key: &rt.key,
            daemon_dry_run: rt.dry_run,
            now: rt.clock.now_ms(),
        };
        let span = tracing::info_span!(parent: &cycle.span, "plan", cycle = cycle.n);
        match planner
            .cycle(&rt.store, &rt.registry, ctx)
            .instrument(span.clone())
            .await
        {
            Ok(out) => {
                observe(&rt, "plan", started);
                span.in_scope(|| report_plan(&rt, &out));
                if tx.send((cycle, false)).await.is_err() {
                    break;
                }
            }
            Err(e) => stage_failed(&rt, &errors, "plan", &e),
        }
    }
}

fn report_plan(rt: &Runtime, out: &plan::PlanOutput) {
    for e in &out.eval_errors {
        rt.metrics
            .policy_eval_errors
            .with_label_values(&[e.policy.as_str()])
            .inc();
        tracing::warn!(policy = %e.policy, finding = %e.finding, reason = %e.reason, "policy condition failed; counted as false");
    }
    for r in &out.remediations {
        rt.metrics
            .remediations
            .with_label_values(&[r.policy.as_str(), r.action.as_str(), r.status.as_str()])
            .inc();
        if let Some(gate) = &r.gate {
            rt.metrics
                .gate_stops
                .with_label_values(&[gate.as_str(), r.status.as_str()])
                .inc();
        }
        let _remediation = tracing::info_span!("remediation", id = %r.id, finding = r.finding_id.as_deref().unwrap_or("-"), policy = %r.policy, action = %r.action).entered();
        tracing::info!(id = %r.id, policy = %r.policy, action = %r.action, subject = %r.subject, status = r.status.as_str(), gate = r.gate.as_deref().unwrap_or("-"), reason = %r.reason, "remediation planned");
    }
    match &out.circuit {
        Some(CircuitChange::Opened(c)) => {
            tracing::error!(guard = %c.guard, reason = %c.reason, "circuit open: nothing executes until it closes")
        }
        Some(CircuitChange::Closed { reason }) => tracing::warn!(%reason, "circuit closed"),
        None => {}
    }
    rt.metrics.circuit_open.set(i64::from(out.circuit_open));
}

/// After execution: verify what is due, then count every policy's outcomes and demote those
/// that keep failing.
async fn follow_up(rt: &Runtime, errors: &AtomicU64) {
    let now = rt.clock.now_ms();
    let policies = rt.policies.get();
    match execute::verify::cycle(&rt.store, &policies, &rt.key, now).await {
        Ok(out) => {
            for (r, v) in &out.verdicts {
                rt.metrics
                    .verifications
                    .with_label_values(&[v.label()])
                    .inc();
                match v {
                    execute::verify::Verdict::Effective => {
                        tracing::info!(id = %r.id, policy = %r.policy, subject = %r.subject, "remediation verified: its finding cleared")
                    }
                    other => {
                        tracing::warn!(id = %r.id, policy = %r.policy, subject = %r.subject, attempt = r.attempt, verdict = ?other, "remediation verified: its finding has not cleared")
                    }
                }
            }
            for p in &out.released {
                tracing::info!(package = %p, "hold released: its finding resolved");
            }
        }
        Err(e) => stage_failed(rt, errors, "verify", &e),
    }
    match execute::learn::cycle(&rt.store, &rt.key, &rt.learning, now).await {
        Ok(out) => {
            rt.metrics.set_outcomes(&out.outcomes);
            for p in &out.demoted {
                tracing::error!(policy = %p, "policy demoted to dry run: its remediations keep failing or being rolled back; `mapek policy enable {p}` re-enables it");
            }
        }
        Err(e) => stage_failed(rt, errors, "learn", &e),
    }
}

pub(super) async fn execute_task(
    rt: Arc<Runtime>,
    rx: supervise::Input<(Cycle, bool)>,
    errors: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut rx = rx.lock().await;
    loop {
        let (cycle, stale) = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        if let Some(fault) = &rt.fault {
            fault("execute");
        }
        let started = Instant::now();
        let paused = match rt.store.paused().await {
            Ok(p) => p,
            Err(e) => {
                stage_failed(&rt, &errors, "execute", &e);
                None
            }
        };
        rt.metrics.paused.set(i64::from(paused.is_some()));
        let span = tracing::info_span!(parent: &cycle.span, "execute", cycle = cycle.n);
        let executed = if stale {
            // The registry cannot be read: nothing is applied to it either.
            Ok(execute::ExecuteOutput::default())
        } else if let Some(p) = &paused {
            tracing::info!(by = %p.by, "execution is paused: nothing is applied this cycle");
            Ok(execute::ExecuteOutput::default())
        } else {
            execute::cycle(&rt.store, &rt.registry, &rt.key, rt.clock.now_ms())
                .instrument(span.clone())
                .await
        };
        match executed {
            Ok(out) => {
                observe(&rt, "execute", started);
                rt.metrics.published(&out.published);
                for (r, outcome) in &out.results {
                    // A span per remediation, carrying its id (the audit entry's remediation_id).
                    let _remediation = tracing::info_span!(parent: &span, "remediation", id = %r.id, policy = %r.policy, action = %r.action).entered();
                    let label = match outcome {
                        Outcome::Executed { .. } => "executed",
                        Outcome::Refused => "refused",
                        Outcome::Failed(_) => "failed",
                        Outcome::Retry(_) => "retry",
                    };
                    rt.metrics
                        .remediations
                        .with_label_values(&[r.policy.as_str(), r.action.as_str(), label])
                        .inc();
                    match outcome {
                        Outcome::Executed { changed } => {
                            tracing::warn!(id = %r.id, policy = %r.policy, action = %r.action, subject = %r.subject, changed, "remediation executed")
                        }
                        other => {
                            tracing::error!(id = %r.id, policy = %r.policy, action = %r.action, subject = %r.subject, outcome = ?other, "remediation not executed")
                        }
                    }
                }
            }
            Err(e) => stage_failed(&rt, &errors, "execute", &e),
        }
        if !stale {
            follow_up(&rt, &errors).await;
        }
        let probe = Instant::now();
        match rt.store.ping().await {
            Ok(()) => rt
                .metrics
                .store_latency
                .observe(probe.elapsed().as_secs_f64()),
            Err(_) => rt.metrics.store_errors.inc(),
        }
        rt.metrics.cycles.inc();
        rt.metrics.last_cycle.set(rt.clock.now_ms() as f64 / 1000.0);
        observe(&rt, "cycle", cycle.started);
        notify::watchdog();
        completed.fetch_add(1, Ordering::SeqCst);
    }
}
