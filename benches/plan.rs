//! Benchmark of the plan stage: decisions per second on a 50,000-package registry with every gate on, and CEL against Rego (regorus RVM).
//!
//! `cargo bench --bench plan` measures the planner; `cargo bench --bench plan --features rego`
//! adds the side-by-side of one condition in CEL and in Rego on regorus's compiled (RVM) path.
//! One thread throughout: the figures are per core. Medians of several runs are printed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mapek::keys::KeyPair;
use mapek::knowledge::findings::{Finding, FindingState, PlanState};
use mapek::model::{FindingKind, Severity, Subject};
use mapek::plan::decide::{self, Candidate};
use mapek::plan::facts::{self, Facts};
use mapek::plan::gates::{Gatekeeper, Ledger};
use mapek::plan::guards::Circuit;
use mapek::plan::policy::PolicySet;
use mapek::plan::DependencyGraph;
use mapek::registry::{PackageRecord, RegistryCounts, ReleaseRecord};
use rand::{Rng, SeedableRng};

const PACKAGES: usize = 50_000;
const DEFAULT_FINDINGS: usize = 100_000;
const DEFAULT_RUNS: usize = 5;

/// `MAPEK_BENCH_FINDINGS` and `MAPEK_BENCH_RUNS` shrink the run (for callgrind, say).
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const NOW: i64 = 1_800_000_000_000;

/// Every gate of the format on: window, cooldown, rate limit, blast radius with approvers.
const POLICIES: &str = r#"
[[policy]]
id = "quarantine-tampered"
on = ["checksum_mismatch", "signature_invalid"]
when = "finding.severity == 'critical' && package.downloads >= 0 && (release == null || !release.quarantined)"
action = "quarantine"
mode = "enforce"
priority = 100
cooldown = "1h"
max_per_hour = 1000000
max_blast_radius = 200
window = "0 * * * * *"
approvers = ["maint-alice", "maint-bob"]
approval_ttl = "24h"

[[policy]]
id = "quarantine-untrusted"
on = "signer_untrusted"
when = "release != null && release.signer != 'pub-0' && package.transitive_dependents < 10000"
action = "quarantine"
mode = "enforce"
priority = 90
cooldown = "1h"
max_per_hour = 1000000
max_blast_radius = 25
window = "0 * * * * *"
approvers = ["maint-alice"]

[[policy]]
id = "unsigned-dry-run"
on = "signature_missing"
when = "release != null && !release.quarantined && package.status == 'active'"
action = "quarantine"
mode = "dry_run"
priority = 10
cooldown = "6h"

[[policy]]
id = "popular-tampered-approve"
on = ["checksum_mismatch"]
when = "package.downloads > 5000 && finding.labels.exists(k, k == 'source')"
action = "release_quarantine"
mode = "approve"
priority = 100
approvers = ["maint-alice"]
"#;

const GUARDS: &str =
    "[guards]\nmax_actions_per_cycle = 100000000\nmax_actions_per_hour = 100000000\n\
                      max_registry_fraction_per_day = 1.0\nfreeze = [\"0 0 0 29 2 *\"]\n";

struct World {
    packages: Vec<PackageRecord>,
    edges: Vec<(String, String)>,
    candidates: Vec<Candidate>,
}

fn world() -> World {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let packages: Vec<PackageRecord> = (0..PACKAGES)
        .map(|i| PackageRecord {
            name: format!("pkg-{i:05}"),
            description: String::new(),
            category: Some("web".into()),
            author: Some(format!("author-{}", i % 700)),
            license: Some("MIT".into()),
            repository: None,
            tags: vec![],
            keywords: vec![],
            downloads: rng.random_range(0..20_000),
            stars: rng.random_range(0..500),
            status: "active".into(),
            latest: Some("1.0.0".into()),
            quality: Some(rng.random_range(40.0..100.0)),
            quality_detail: None,
            production_ready: true,
            created_at: NOW - rng.random_range(0..1000) * 86_400_000,
            updated_at: NOW - rng.random_range(0..400) * 86_400_000,
        })
        .collect();
    // Preferential dependencies: each package depends on up to 3 earlier ones, popular ones likelier.
    let mut edges = Vec::new();
    for i in 1..PACKAGES {
        for _ in 0..rng.random_range(0..4) {
            let j = (rng.random_range(0.0f64..1.0).powi(3) * i as f64) as usize;
            edges.push((packages[i].name.clone(), packages[j].name.clone()));
        }
    }
    let graph = DependencyGraph::build(&edges);
    let kinds = [
        FindingKind::ChecksumMismatch,
        FindingKind::SignatureInvalid,
        FindingKind::SignerUntrusted,
        FindingKind::SignatureMissing,
        FindingKind::DownloadAnomaly,
    ];
    let mut radius_cache = std::collections::HashMap::new();
    let candidates = (0..setting("MAPEK_BENCH_FINDINGS", DEFAULT_FINDINGS))
        .map(|n| {
            let p = &packages[rng.random_range(0..PACKAGES)];
            let kind = kinds[n % kinds.len()];
            let version = format!("1.{}.0", n % 7);
            let subject = Subject {
                package: p.name.clone(),
                version: Some(version.clone()),
            };
            let mut labels = serde_json::Map::new();
            labels.insert("source".into(), "monitor".into());
            let (dependents, transitive) = *radius_cache
                .entry(p.name.clone())
                .or_insert_with(|| graph.dependents(&p.name));
            Candidate {
                finding: Finding {
                    id: format!("f-{n}"),
                    fingerprint: Finding::fingerprint_of(kind, &subject),
                    kind,
                    severity: if n % 3 == 0 {
                        Severity::Warning
                    } else {
                        Severity::Critical
                    },
                    subject,
                    state: FindingState::Firing,
                    value: 1.0,
                    message: String::new(),
                    labels,
                    first_seen: NOW - 60_000,
                    fired_at: Some(NOW),
                    last_seen: NOW,
                    cleared_at: None,
                    resolved_at: None,
                    plan_state: PlanState::New,
                },
                package: Some(p.clone()),
                release: Some(ReleaseRecord {
                    package: p.name.clone(),
                    version,
                    published_at: NOW - 86_400_000,
                    checksum: None,
                    artifact: None,
                    signature: Some(String::new()),
                    signer: Some(format!("pub-{}", n % 5)),
                    yanked: false,
                    quarantined: false,
                    dependencies: vec![],
                }),
                dependents,
                transitive_dependents: transitive,
                handover: None,
            }
        })
        .collect();
    World {
        packages,
        edges,
        candidates,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let (findings, runs) = (
        setting("MAPEK_BENCH_FINDINGS", DEFAULT_FINDINGS),
        setting("MAPEK_BENCH_RUNS", DEFAULT_RUNS),
    );
    let policies = PolicySet::from_sources(&[
        (PathBuf::from("guards.toml"), GUARDS.into()),
        (PathBuf::from("bench.toml"), POLICIES.into()),
    ])
    .expect("bench policies load");
    let t = Instant::now();
    let w = world();
    eprintln!(
        "world: {} packages and their dependency graph, {} findings, built in {:.1} s",
        w.packages.len(),
        w.candidates.len(),
        t.elapsed().as_secs_f64()
    );
    let counts = RegistryCounts {
        packages: PACKAGES as i64,
        quarantined: 0,
    };
    let key = KeyPair::from_seed("daemon", [7; 32]);

    let (mut decide_times, mut signed_times, mut graph_times) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut summary = String::new();
    for _ in 0..runs {
        let mut keeper = Gatekeeper {
            guards: &policies.guards,
            daemon_dry_run: false,
            ledger: Ledger::default(),
            circuit: Circuit::default(),
            registry_packages: PACKAGES as u64,
            memo: Default::default(),
            demoted: Default::default(),
        };
        // The facts the planner looks up per finding: dependents on a freshly built graph.
        let graph = DependencyGraph::build(&w.edges);
        let t = Instant::now();
        let mut reach = 0i64;
        for c in &w.candidates {
            reach += graph.dependents(&c.finding.subject.package).1;
        }
        graph_times.push(t.elapsed());
        assert!(reach > 0);
        let t = Instant::now();
        let decided = decide::decide(&policies, &w.candidates, counts, &mut keeper, NOW);
        decide_times.push(t.elapsed());
        // What the stage does next with each decision: build and sign the remediation.
        let t = Instant::now();
        let mut signed = 0usize;
        for d in &decided.decisions {
            let r = mapek::plan::remediation(d, &key, NOW);
            signed += usize::from(!r.signature.is_empty());
        }
        signed_times.push(decide_times.last().copied().unwrap_or_default() + t.elapsed());
        let mut by_status = std::collections::BTreeMap::new();
        for d in &decided.decisions {
            *by_status.entry(d.verdict.status.as_str()).or_insert(0usize) += 1;
        }
        summary = format!(
            "{} remediations ({by_status:?}), {} unmatched, {} signed",
            decided.decisions.len(),
            decided.unmatched.len(),
            signed
        );
    }
    let g = median(graph_times);
    let d = median(decide_times);
    let s = median(signed_times);
    println!("plan stage, {PACKAGES} packages, {findings} findings, one thread, median of {runs}:");
    println!("  {summary}");
    println!(
        "  dependents of every finding's package (graph built fresh, memo cold): {:.3} s",
        g.as_secs_f64()
    );
    println!(
        "  match + conflicts + gates: {:.3} s, {:.0} decisions/s; with the dependents lookups: {:.0} decisions/s",
        d.as_secs_f64(),
        findings as f64 / d.as_secs_f64(),
        findings as f64 / (d + g).as_secs_f64()
    );
    println!(
        "  ... and every remediation built and signed (Ed25519): {:.3} s, {:.0} decisions/s",
        s.as_secs_f64(),
        findings as f64 / s.as_secs_f64()
    );
    conditions(&policies, &w, runs);
    breakdown(&policies, &w);
}

/// A rule as a one-policy set, so its facts are built as the planner builds them.
fn rule_set(rule: &str) -> PolicySet {
    PolicySet::from_sources(&[(
        PathBuf::from("rule.toml"),
        format!(
            "[[policy]]\nid = \"rule\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nwhen = \"{rule}\"\n"
        ),
    )])
    .expect("the rule loads")
}

/// One condition evaluated many times: CEL here, and the same rule in Rego with `--features rego`.
fn conditions(policies: &PolicySet, w: &World, runs: usize) {
    const RULE_CEL: &str =
        "finding.severity == 'critical' && package.downloads >= 100 && release.signed";
    let _ = policies;
    let one = rule_set(RULE_CEL);
    let env = Arc::clone(&one.env);
    let program = one.policies[0].program.as_ref().expect("a condition");
    let n = w.candidates.len();
    let counts = RegistryCounts {
        packages: PACKAGES as i64,
        quarantined: 0,
    };
    let mut times = Vec::new();
    let mut yes = 0;
    for _ in 0..runs {
        yes = 0;
        let t = Instant::now();
        for c in w.candidates.iter().cycle().take(n) {
            let ctx = facts::context_for(&env, &c.facts(counts, NOW), &one.uses);
            yes += usize::from(facts::run(program, &ctx) == Ok(true));
        }
        times.push(t.elapsed());
    }
    let cel = median(times);
    println!(
        "condition `{RULE_CEL}`, {n} evaluations, facts built per evaluation as the planner does:"
    );
    println!(
        "  CEL (cel 0.15): {:.3} s, {:.0} evaluations/s ({yes} true)",
        cel.as_secs_f64(),
        n as f64 / cel.as_secs_f64()
    );
    #[cfg(feature = "rego")]
    rego::compare(w, n, cel, runs);
    #[cfg(not(feature = "rego"))]
    println!("  Rego (regorus RVM): run with `--features rego` for the side-by-side");
}

#[cfg(feature = "rego")]
mod rego {
    use super::*;
    use regorus::languages::rego::compiler::Compiler;
    use regorus::rvm::vm::RegoVM;
    use regorus::{Engine, Rc, Value};

    const RULE_REGO: &str = r#"package mapek
import rego.v1
default allow := false
allow if {
    input.finding.severity == "critical"
    input.package.downloads >= 100
    input.release.signed
}
"#;

    pub fn compare(w: &World, n: usize, cel: Duration, runs: usize) {
        let mut engine = Engine::new();
        engine
            .add_policy("mapek.rego".into(), RULE_REGO.into())
            .expect("rego loads");
        let entry = Rc::from("data.mapek.allow");
        let compiled = engine.compile_with_entrypoint(&entry).expect("compiles");
        let program = Compiler::compile_from_policy(&compiled, &[entry.as_ref()]).expect("rvm");
        let mut vm = RegoVM::new();
        vm.load_program(program);
        let mut times = Vec::new();
        let mut yes = 0;
        for _ in 0..runs {
            yes = 0;
            let t = Instant::now();
            for c in w.candidates.iter().cycle().take(n) {
                // The same facts, built per evaluation as for CEL.
                let input = serde_json::json!({
                    "finding": { "kind": c.finding.kind.as_str(), "severity": c.finding.severity.as_str(), "value": c.finding.value },
                    "package": c.package.as_ref().map(|p| serde_json::json!({
                        "name": p.name, "downloads": p.downloads, "stars": p.stars, "status": p.status,
                        "dependents": c.dependents, "transitive_dependents": c.transitive_dependents,
                    })),
                    "release": c.release.as_ref().map(|r| serde_json::json!({
                        "version": r.version, "signed": r.signature.is_some(), "signer": r.signer,
                        "yanked": r.yanked, "quarantined": r.quarantined,
                    })),
                });
                vm.set_input(Value::from(input));
                let out = vm.execute().expect("rego runs");
                yes += usize::from(out == Value::from(true));
            }
            times.push(t.elapsed());
        }
        let rego = median(times);
        println!(
            "  Rego (regorus 0.14 RVM): {:.3} s, {:.0} evaluations/s ({yes} true)",
            rego.as_secs_f64(),
            n as f64 / rego.as_secs_f64()
        );
        println!(
            "  CEL / Rego speed ratio: {:.2}x",
            rego.as_secs_f64() / cel.as_secs_f64()
        );
    }
}

/// Where one evaluation's time goes: building the context from the facts, and running the
/// compiled program.
fn breakdown(policies: &PolicySet, w: &World) {
    const N: usize = 50_000;
    let _ = policies;
    let one =
        rule_set("finding.severity == 'critical' && package.downloads >= 100 && release.signed");
    let env = Arc::clone(&one.env);
    let program = one.policies[0].program.as_ref().expect("a condition");
    let counts = RegistryCounts {
        packages: PACKAGES as i64,
        quarantined: 0,
    };
    let all: Vec<Facts<'_>> = w
        .candidates
        .iter()
        .take(N)
        .map(|c| c.facts(counts, NOW))
        .collect();
    let t = Instant::now();
    let ctxs: Vec<_> = all
        .iter()
        .map(|f| facts::context_for(&env, f, &one.uses))
        .collect();
    let build = t.elapsed();
    let t = Instant::now();
    let yes = ctxs
        .iter()
        .filter(|c| facts::run(program, c) == Ok(true))
        .count();
    let run = t.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
    println!(
        "  per evaluation: facts into a CEL context {:.2} us, program run {:.2} us ({yes} of {N} true)",
        per(build),
        per(run)
    );
}
