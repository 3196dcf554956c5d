//! Plan: match firing findings against policies (CEL), resolve conflicts, pass the gates, sign remediations.

pub mod approve;
mod cost;
pub mod decide;
pub mod facts;
pub mod gates;
pub mod graph;
pub mod guards;
pub mod policy;
pub mod replay;
pub mod signing;
pub mod testing;
pub mod values;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;

use crate::keys::{KeyPair, TrustStore};
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::findings::{self, Finding, PlanState};
use crate::knowledge::remediations::{self, Remediation, Status};
use crate::knowledge::{Conn, Store, StoreError};
use crate::model::FindingKind;
use crate::registry::{Registry, RegistryError};
use decide::{Candidate, Decision};
use gates::{GateInput, Gatekeeper, Ledger};
pub use graph::DependencyGraph;
use guards::Circuit;
use policy::PolicySet;

const POLICY_DIGEST: &str = "plan.policy_digest";
const CIRCUIT: &str = "plan.circuit";
const DAY_MS: i64 = 86_400_000;

pub use crate::model::daemon_subject;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A condition that failed at run time (counted as false).
#[derive(Debug, Clone)]
pub struct EvalError {
    pub policy: String,
    pub finding: String,
    pub reason: String,
}

/// The circuit breaker moved this cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum CircuitChange {
    Opened(Circuit),
    Closed { reason: String },
}

#[derive(Debug, Default)]
pub struct PlanOutput {
    /// Every remediation recorded or moved this cycle, whatever its status.
    pub remediations: Vec<Remediation>,
    pub unmatched: usize,
    pub eval_errors: Vec<EvalError>,
    pub circuit: Option<CircuitChange>,
    /// Whether the circuit is open at the end of the cycle.
    pub circuit_open: bool,
    /// Nothing was waiting: no unplanned finding, no pending remediation, the circuit closed.
    /// Until findings, remediations or the circuit change, another pass would do nothing.
    pub idle: bool,
}

/// What the planner needs besides the stores.
#[derive(Clone)]
pub struct PlanContext<'a> {
    pub policies: &'a PolicySet,
    pub trust: &'a TrustStore,
    pub key: &'a KeyPair,
    /// `--dry-run` or the configuration's `dry_run`.
    pub daemon_dry_run: bool,
    pub now: i64,
    /// The registry's facts as the monitor left them this cycle: the dependency graph is read
    /// from them. None: it is read from the registry.
    pub facts: Option<Arc<crate::monitor::facts::Facts>>,
}

/// The plan stage with what it keeps between cycles: the dependency graph read from the
/// registry when no facts come with the cycle, read again only when the registry changed.
#[derive(Debug, Default)]
pub struct Planner {
    graph: Option<(i64, Arc<DependencyGraph>)>,
}

impl Planner {
    async fn graph<R: Registry>(
        &mut self,
        registry: &R,
        facts: Option<&Arc<crate::monitor::facts::Facts>>,
    ) -> Result<Arc<DependencyGraph>, PlanError> {
        if let Some(facts) = facts {
            // Kept for this pass only: the facts are updated in place next cycle.
            self.graph = None;
            return Ok(Arc::new(DependencyGraph::from_facts(Arc::clone(facts))));
        }
        let seq = registry.change_seq().await?;
        if let Some((at, g)) = &self.graph {
            if *at == seq {
                return Ok(g.clone());
            }
        }
        let g = Arc::new(DependencyGraph::build(&registry.dependency_edges().await?));
        self.graph = Some((seq, g.clone()));
        Ok(g)
    }

    /// One planning pass: waiting remediations first, then the firing findings not yet planned.
    pub async fn cycle<R: Registry>(
        &mut self,
        store: &Store,
        registry: &Arc<R>,
        ctx: PlanContext<'_>,
    ) -> Result<PlanOutput, PlanError> {
        let started = std::time::Instant::now();
        let now = ctx.now;
        let policies = ctx.policies;
        if store.cursor(POLICY_DIGEST).await?.as_deref() != Some(policies.digest.as_str()) {
            store.replan_unmatched(&policies.digest).await?;
        }
        let stored_circuit: Circuit = match store.cursor(CIRCUIT).await? {
            Some(s) => serde_json::from_str(&s)
                .map_err(|_| StoreError::Corrupt(format!("circuit state `{s}`")))?,
            None => Circuit::default(),
        };
        let candidates = store.unplanned_findings().await?;
        let pending = store.remediations_with_status(Status::Pending).await?;
        let mut out = PlanOutput {
            circuit_open: stored_circuit.open,
            ..PlanOutput::default()
        };
        if candidates.is_empty() && pending.is_empty() && !stored_circuit.quiet_enough(now) {
            out.idle = !stored_circuit.open;
            return Ok(out);
        }
        // The monitor's facts hold the counts (kept as packages change); counting rows instead
        // cost tens of milliseconds a pass at a million packages.
        let counts = match &ctx.facts {
            Some(facts) => facts.counts(),
            None => registry.counts().await?,
        };
        let graph = self.graph(registry.as_ref(), ctx.facts.as_ref()).await?;
        let mut keeper = gatekeeper(store, &ctx, &stored_circuit, counts, &mut out).await?;
        let gates_s = started.elapsed().as_secs_f64();
        let moved = regate(store, &ctx, &graph, &mut keeper, pending).await?;
        let regate_s = started.elapsed().as_secs_f64() - gates_s;
        let (cands, on_hold) = candidates_of(store, registry.as_ref(), &graph, candidates).await?;
        let candidates_s = started.elapsed().as_secs_f64() - gates_s - regate_s;
        let decided = decide::decide(policies, &cands, counts, &mut keeper, now);
        let decide_s = started.elapsed().as_secs_f64() - gates_s - regate_s - candidates_s;
        out.eval_errors = decided.eval_errors;
        out.unmatched = decided.unmatched.len();
        if keeper.circuit.open
            && (!stored_circuit.open || keeper.circuit.opened_at != stored_circuit.opened_at)
        {
            out.circuit = Some(CircuitChange::Opened(keeper.circuit.clone()));
        }
        out.circuit_open = keeper.circuit.open;
        let record = Record {
            unmatched: decided.unmatched,
            on_hold,
            moved,
            decisions: decided.decisions,
        };
        let before_commit = started.elapsed().as_secs_f64();
        commit(
            store,
            &ctx,
            &keeper.circuit,
            &stored_circuit,
            record,
            &mut out,
        )
        .await?;
        tracing::debug!(
            candidates = cands.len(),
            gates_s,
            regate_s,
            candidates_s,
            decide_s,
            commit_s = started.elapsed().as_secs_f64() - before_commit,
            "plan pass"
        );
        Ok(out)
    }
}

/// What a planning pass writes.
struct Record {
    unmatched: Vec<String>,
    on_hold: Vec<String>,
    moved: Vec<Remediation>,
    decisions: Vec<Decision>,
}

/// The gates as they stand: the guards, the ledger of recent actions, the circuit (closed here
/// when it has been quiet long enough), the demoted policies.
async fn gatekeeper<'a>(
    store: &Store,
    ctx: &PlanContext<'a>,
    stored_circuit: &Circuit,
    counts: crate::registry::RegistryCounts,
    out: &mut PlanOutput,
) -> Result<Gatekeeper<'a>, PlanError> {
    let now = ctx.now;
    let longest_cooldown = ctx
        .policies
        .policies
        .iter()
        .filter_map(|p| p.cooldown_ms)
        .max()
        .unwrap_or(0);
    let acted = store
        .acted_since(now - longest_cooldown.max(DAY_MS))
        .await?;
    let mut circuit = stored_circuit.clone();
    if circuit.quiet_enough(now) {
        out.circuit = Some(CircuitChange::Closed {
            reason: format!(
                "no new pressure for {}",
                humantime::format_duration(std::time::Duration::from_millis(
                    circuit.quiet_ms.max(0) as u64
                ))
            ),
        });
        circuit = Circuit::default();
    }
    Ok(Gatekeeper {
        guards: &ctx.policies.guards,
        daemon_dry_run: ctx.daemon_dry_run,
        ledger: Ledger::from_acted(&acted, now),
        circuit,
        registry_packages: counts.packages.max(0) as u64,
        memo: Default::default(),
        demoted: store.demoted_policies().await?.into_iter().collect(),
    })
}

/// Waiting remediations, through the gates again: those whose verdict moved.
async fn regate(
    store: &Store,
    ctx: &PlanContext<'_>,
    graph: &DependencyGraph,
    keeper: &mut Gatekeeper<'_>,
    pending: Vec<Remediation>,
) -> Result<Vec<Remediation>, PlanError> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    // One query for the findings still open, rather than one per waiting remediation.
    let approvals = store.pending_approvals().await?;
    let open_findings = store.open_findings().await?;
    let open: std::collections::HashSet<&str> =
        open_findings.iter().map(|f| f.id.as_str()).collect();
    let abandoned = |reason: String| gates::Verdict {
        status: Status::Abandoned,
        gate: None,
        reason,
        expires_at: None,
    };
    let mut moved = Vec::new();
    for mut r in pending {
        let v = match ctx.policies.get(&r.policy) {
            None => abandoned(format!("policy `{}` is no longer loaded", r.policy)),
            Some(_)
                if r.finding_id
                    .as_ref()
                    .is_some_and(|id| !open.contains(id.as_str())) =>
            {
                abandoned("its finding resolved before it could run".into())
            }
            Some(p) => {
                let list = approvals.get(&r.id).map(Vec::as_slice).unwrap_or(&[]);
                let valid = approve::valid(&r, &p.approvers, list, ctx.trust);
                let (_, radius) = graph.dependents(&r.subject.package);
                keeper.decide(&GateInput {
                    policy: p,
                    subject: &r.subject,
                    radius,
                    approvals: &valid,
                    created_at: r.created_at,
                    now: ctx.now,
                    retry: r.attempt > 1,
                })
            }
        };
        let changed = v.status != r.status || v.gate != r.gate || v.reason != r.reason;
        if changed {
            r.status = v.status;
            r.gate = v.gate;
            r.reason = v.reason;
            r.expires_at = v.expires_at.or(r.expires_at);
            r.updated_at = ctx.now;
            moved.push(r);
        }
    }
    Ok(moved)
}

/// The new findings as the policies see them (package, release, dependents, handover); a
/// package the daemon gave up on is held until a person acts (or its finding resolves), and
/// the finding about that stays plannable.
async fn candidates_of<R: Registry>(
    store: &Store,
    registry: &R,
    graph: &DependencyGraph,
    candidates: Vec<Finding>,
) -> Result<(Vec<Candidate>, Vec<String>), PlanError> {
    let (held, handovers) = if candidates.is_empty() {
        Default::default()
    } else {
        (store.held_packages().await?, store.handovers().await?)
    };
    let mut packages = HashMap::new();
    let mut cands = Vec::with_capacity(candidates.len());
    let mut on_hold = Vec::new();
    for finding in candidates {
        if finding.kind != FindingKind::PolicyIneffective && held.contains(&finding.subject.package)
        {
            on_hold.push(finding.id);
            continue;
        }
        let name = finding.subject.package.clone();
        if !packages.contains_key(&name) {
            packages.insert(name.clone(), registry.package(&name).await?);
        }
        let release = match &finding.subject.version {
            Some(v) => registry.release(&name, v).await?,
            None => None,
        };
        let (dependents, transitive) = graph.dependents(&name);
        cands.push(Candidate {
            package: packages.get(&name).cloned().flatten(),
            release,
            dependents,
            transitive_dependents: transitive,
            handover: handovers
                .get(&finding.id)
                .map(|(policy, attempts)| decide::Handover {
                    policy: policy.clone(),
                    attempts: *attempts,
                }),
            finding,
        });
    }
    Ok((cands, on_hold))
}

/// Writes the pass in one transaction: plan states, moved and new remediations (a dry run
/// audited), the circuit and its audit entries.
async fn commit(
    store: &Store,
    ctx: &PlanContext<'_>,
    circuit: &Circuit,
    stored_circuit: &Circuit,
    record: Record,
    out: &mut PlanOutput,
) -> Result<(), PlanError> {
    let now = ctx.now;
    let circuit_findings = match &out.circuit {
        Some(CircuitChange::Closed { .. }) => circuit_findings(store).await?,
        _ => Vec::new(),
    };
    let mut tx = store.begin().await?;
    for id in &record.unmatched {
        findings::set_plan_state(&mut tx, id, PlanState::Unmatched).await?;
    }
    for id in &record.on_hold {
        findings::set_plan_state(&mut tx, id, PlanState::Held).await?;
    }
    for r in record.moved {
        if remediations::regate(&mut tx, &r, Status::Pending, now).await? {
            out.remediations.push(r);
        }
    }
    for d in record.decisions {
        let r = remediation(&d, ctx.key, now);
        if remediations::insert(&mut tx, &r).await? {
            if r.status == Status::DryRun {
                audit_remediation(
                    &mut tx,
                    ctx.key,
                    &r,
                    crate::model::AuditKind::RemediationDryRun,
                    now,
                )
                .await?;
            }
            out.remediations.push(r);
        }
        findings::set_plan_state(&mut tx, &d.finding_id, PlanState::Planned).await?;
    }
    if circuit != stored_circuit {
        let json = serde_json::to_string(circuit).unwrap_or_default();
        crate::knowledge::state::set_cursor(&mut tx, CIRCUIT, &json).await?;
    }
    match &out.circuit {
        Some(CircuitChange::Opened(c)) => open_circuit(&mut tx, ctx.key, c, now).await?,
        Some(CircuitChange::Closed { reason }) if !circuit.open => {
            close_circuit(&mut tx, circuit_findings, ctx.key, "daemon", reason, now).await?
        }
        _ => {}
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// The remediation a decision records, signed by the daemon's key.
pub fn remediation(d: &Decision, key: &KeyPair, now: i64) -> Remediation {
    let mut r = Remediation {
        id: format!("rem-{}", &d.idempotency_key[..16]),
        idempotency_key: d.idempotency_key.clone(),
        finding_id: Some(d.finding_id.clone()),
        policy: d.policy.clone(),
        action: d.action,
        params: d.params.clone(),
        subject: d.subject.clone(),
        mode: d.mode,
        status: d.verdict.status,
        reason: d.verdict.reason.clone(),
        created_at: now,
        updated_at: now,
        signature: String::new(),
        inverse: None,
        gate: d.verdict.gate,
        expires_at: d.verdict.expires_at,
        attempt: d.attempt,
        verify_after_ms: d.verify_after_ms,
        verify_at: None,
        verdict: None,
    };
    r.signature = key.sign(&r.signing_bytes());
    r
}

async fn audit_remediation(
    tx: &mut Conn,
    key: &KeyPair,
    r: &Remediation,
    kind: crate::model::AuditKind,
    now: i64,
) -> Result<(), StoreError> {
    audit::append(
        tx,
        key,
        NewEntry::about(
            r,
            now,
            kind,
            serde_json::json!({
                "policy": r.policy,
                "action": r.action.as_str(),
                "finding": r.finding_id,
                "reason": r.reason,
            }),
        ),
    )
    .await?;
    Ok(())
}

/// Records the circuit opening: its finding (firing at once) and an audit entry.
async fn open_circuit(
    tx: &mut Conn,
    key: &KeyPair,
    c: &Circuit,
    now: i64,
) -> Result<(), StoreError> {
    let subject = daemon_subject();
    let fingerprint = Finding::fingerprint_of(FindingKind::CircuitOpen, &subject);
    let mut labels = serde_json::Map::new();
    labels.insert("guard".into(), c.guard.clone().into());
    let f = Finding::raised(
        FindingKind::CircuitOpen,
        subject.clone(),
        fingerprint,
        format!(
            "circuit open: guard {}: {}; nothing executes",
            c.guard, c.reason
        ),
        labels,
        now,
    );
    findings::insert(tx, &f).await?;
    audit::append(
        tx,
        key,
        NewEntry {
            at: now,
            kind: crate::model::AuditKind::CircuitOpen,
            actor: "daemon".into(),
            subject: subject.to_string(),
            remediation_id: None,
            detail: serde_json::json!({ "guard": c.guard, "reason": c.reason }),
        },
    )
    .await?;
    Ok(())
}

/// Closes the circuit: resolves its finding and records who closed it and why.
async fn close_circuit(
    tx: &mut Conn,
    open: Vec<Finding>,
    key: &KeyPair,
    actor: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    for mut f in open {
        f.resolve(now);
        findings::update(tx, &f).await?;
    }
    audit::append(
        tx,
        key,
        NewEntry {
            at: now,
            kind: crate::model::AuditKind::CircuitClose,
            actor: actor.into(),
            subject: daemon_subject().to_string(),
            remediation_id: None,
            detail: serde_json::json!({ "reason": reason }),
        },
    )
    .await?;
    Ok(())
}

async fn circuit_findings(store: &Store) -> Result<Vec<Finding>, StoreError> {
    Ok(store
        .open_findings()
        .await?
        .into_iter()
        .filter(|f| f.kind == FindingKind::CircuitOpen)
        .collect())
}

/// The circuit as stored (closed when never opened).
pub async fn circuit(store: &Store) -> Result<Circuit, StoreError> {
    match store.cursor(CIRCUIT).await? {
        Some(s) => serde_json::from_str(&s)
            .map_err(|_| StoreError::Corrupt(format!("circuit state `{s}`"))),
        None => Ok(Circuit::default()),
    }
}

/// A maintainer closes the circuit by hand (`mapek circuit close`).
pub async fn close_circuit_by_hand(
    store: &Store,
    key: &KeyPair,
    actor: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let c = circuit(store).await?;
    if !c.open {
        return Ok(false);
    }
    let open = circuit_findings(store).await?;
    let mut tx = store.begin().await?;
    let json = serde_json::to_string(&Circuit::default()).unwrap_or_default();
    crate::knowledge::state::set_cursor(&mut tx, CIRCUIT, &json).await?;
    close_circuit(&mut tx, open, key, actor, "closed by a maintainer", now).await?;
    tx.commit().await?;
    Ok(true)
}
