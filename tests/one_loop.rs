//! One loop for every driver: the daemon (woken by its ticker, every stage every cycle) and the simulator's schedule (stages called when what they read changed) take the same decisions on the same inputs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{default_policies, world, World, NOW};
use mapek::cycle::{Context, Loop, Schedule, Settings};
use mapek::daemon::reload::PolicySource;
use mapek::daemon::{self, RunOptions};

/// What the registry and the knowledge say was decided, without times or ids.
async fn decisions(w: &World) -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
    let mut remediations: Vec<String> = Vec::new();
    for status in mapek::knowledge::remediations::Status::ALL {
        for r in
            w.t.store
                .remediations_with_status(*status)
                .await
                .expect("read")
        {
            remediations.push(format!(
                "{} {} {} {}",
                r.policy,
                r.action,
                r.subject,
                status.as_str()
            ));
        }
    }
    remediations.sort();
    let mut findings: Vec<String> =
        w.t.store
            .recent_findings(1000)
            .await
            .expect("findings")
            .into_iter()
            .map(|f| format!("{} {} {:?}", f.kind, f.subject, f.state))
            .collect();
    findings.sort();
    (remediations, findings, w.quarantined().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_the_simulator_take_the_same_decisions_on_the_same_inputs() {
    // The same generated registry with the same planted problems, twice.
    let (a, b) = (world(40).await, world(40).await);
    a.plant_problems().await;
    b.plant_problems().await;

    // The daemon: its ticker, its loop task, three cycles.
    let rt = Arc::new(a.runtime(PolicySource::fixed(default_policies())));
    let summary = daemon::run(
        rt,
        RunOptions {
            cycles: Some(3),
            interval: Duration::from_millis(10),
            grace: Duration::from_secs(30),
        },
        Default::default(),
    )
    .await
    .expect("the daemon runs");
    assert_eq!(summary.cycles, 3);

    // The simulator's way: the same loop, stages called only when they have work.
    let mut l = Loop::new(
        Default::default(),
        Settings {
            schedule: Schedule::OnChange,
            ..Settings::default()
        },
    );
    let policies = default_policies();
    for n in 0..3 {
        let ctx = Context {
            store: &b.t.store,
            registry: &b.registry,
            policies: &policies,
            trust: &b.trust,
            key: &b.key,
            now: NOW + n * 60_000,
        };
        let step = l.step(&ctx, &mut ()).await;
        assert!(step.failed.is_none(), "{:?}", step.failed);
    }
    let (da, fa, qa) = decisions(&a).await;
    let (db, fb, qb) = decisions(&b).await;
    assert!(
        !da.is_empty() && !qa.is_empty(),
        "something was decided: {da:#?}"
    );
    assert_eq!(da, db, "the same remediations, in the same states");
    assert_eq!(fa, fb, "the same findings, in the same states");
    assert_eq!(qa, qb, "the same releases quarantined");
}
