//! The gates' unit tests: each gate stops what it should, with its reason, and lets the rest through.

use super::*;
use crate::plan::policy::PolicySet;
use std::path::PathBuf;

const NOW: i64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z, a Friday

fn policy(extra: &str) -> PolicySet {
    let src = format!(
        "[[policy]]\nid = \"p\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nmode = \"enforce\"\n{extra}"
    );
    PolicySet::from_sources(&[(PathBuf::from("p.toml"), src)]).expect("loads")
}

fn subject(n: u32) -> Subject {
    Subject {
        package: format!("pkg-{n}"),
        version: Some("1.0.0".into()),
    }
}

fn keeper(guards: &Guards) -> Gatekeeper<'_> {
    Gatekeeper {
        guards,
        daemon_dry_run: false,
        ledger: Ledger::default(),
        circuit: Circuit::default(),
        registry_packages: 1000,
        memo: Memo::default(),
        demoted: Default::default(),
    }
}

fn run(
    k: &mut Gatekeeper<'_>,
    set: &PolicySet,
    s: &Subject,
    radius: i64,
    a: &Approvals,
    now: i64,
) -> Verdict {
    k.decide(&GateInput {
        policy: &set.policies[0],
        subject: s,
        radius,
        approvals: a,
        created_at: NOW,
        now,
        retry: false,
    })
}

#[test]
fn enforce_with_no_limits_is_ready() {
    let set = policy("");
    let g = Guards::default();
    let v = run(
        &mut keeper(&g),
        &set,
        &subject(1),
        0,
        &Approvals::default(),
        NOW,
    );
    assert_eq!((v.status, v.gate), (Status::Ready, None));
}

#[test]
fn outside_the_window_it_waits_and_inside_it_runs() {
    let set = policy("window = \"0 * 9-17 * * Mon-Fri\"\n");
    let g = Guards::default();
    let mut k = keeper(&g);
    let v = run(&mut k, &set, &subject(1), 0, &Approvals::default(), NOW);
    assert_eq!((v.status, v.gate), (Status::Pending, Some(Gate::Window)));
    assert!(
        v.reason.contains("opens at 2027-01-15T09:00:00Z"),
        "{}",
        v.reason
    );
    let v = run(
        &mut k,
        &set,
        &subject(1),
        0,
        &Approvals::default(),
        NOW + 3_600_000,
    );
    assert_eq!(v.status, Status::Ready);
}

#[test]
fn cooldown_suppresses_a_repeat_on_the_same_subject_only() {
    let set = policy("cooldown = \"1h\"\n");
    let g = Guards::default();
    let mut k = keeper(&g);
    assert_eq!(
        run(&mut k, &set, &subject(1), 0, &Approvals::default(), NOW).status,
        Status::Ready
    );
    let v = run(
        &mut k,
        &set,
        &subject(1),
        0,
        &Approvals::default(),
        NOW + 1_000,
    );
    assert_eq!(
        (v.status, v.gate),
        (Status::Suppressed, Some(Gate::Cooldown))
    );
    assert_eq!(
        run(&mut k, &set, &subject(2), 0, &Approvals::default(), NOW).status,
        Status::Ready
    );
    let later = run(
        &mut k,
        &set,
        &subject(1),
        0,
        &Approvals::default(),
        NOW + 3_600_000,
    );
    assert_eq!(later.status, Status::Ready);
}

#[test]
fn a_retry_after_failed_verification_is_not_held_by_cooldown_but_still_by_the_rate_limit() {
    let set = policy("cooldown = \"1h\"\nmax_per_hour = 2\n");
    let g = Guards::default();
    let mut k = keeper(&g);
    let input = |now, retry| GateInput {
        policy: &set.policies[0],
        subject: &SUBJECT,
        radius: 0,
        approvals: &NO_APPROVALS,
        created_at: NOW,
        now,
        retry,
    };
    assert_eq!(k.decide(&input(NOW, false)).status, Status::Ready);
    let repeat = k.decide(&input(NOW + 1_000, false));
    assert_eq!(repeat.gate, Some(Gate::Cooldown));
    assert_eq!(k.decide(&input(NOW + 2_000, true)).status, Status::Ready);
    let third = k.decide(&input(NOW + 3_000, true));
    assert_eq!(
        (third.status, third.gate),
        (Status::Suppressed, Some(Gate::MaxPerHour))
    );
}

static SUBJECT: std::sync::LazyLock<Subject> = std::sync::LazyLock::new(|| subject(1));
static NO_APPROVALS: std::sync::LazyLock<Approvals> = std::sync::LazyLock::new(Approvals::default);

#[test]
fn a_demoted_policy_only_records_what_it_would_do_and_says_how_to_re_enable_it() {
    let set = policy("");
    let g = Guards::default();
    let mut k = keeper(&g);
    k.demoted.insert("p".into());
    let v = run(&mut k, &set, &subject(1), 0, &Approvals::default(), NOW);
    assert_eq!((v.status, v.gate), (Status::DryRun, Some(Gate::Demoted)));
    assert!(v.reason.contains("mapek policy enable p"), "{}", v.reason);
    assert_eq!(k.mode_of(&set.policies[0]), Mode::DryRun);
    k.demoted.clear();
    let v = run(&mut k, &set, &subject(2), 0, &Approvals::default(), NOW);
    assert_eq!(v.status, Status::Ready);
}

#[test]
fn cooldown_counts_what_acted_in_earlier_cycles() {
    let set = policy("cooldown = \"1h\"\n");
    let g = Guards::default();
    let mut k = keeper(&g);
    k.ledger = Ledger::from_acted(
        &[Acted {
            policy: "p".into(),
            subject: subject(1),
            at: NOW - 60_000,
            notice: false,
        }],
        NOW,
    );
    let v = run(&mut k, &set, &subject(1), 0, &Approvals::default(), NOW);
    assert_eq!(v.gate, Some(Gate::Cooldown));
}

#[test]
fn max_per_hour_caps_the_policy_across_subjects() {
    let set = policy("max_per_hour = 2\n");
    let g = Guards::default();
    let mut k = keeper(&g);
    let statuses: Vec<_> = (0..4)
        .map(|i| run(&mut k, &set, &subject(i), 0, &Approvals::default(), NOW))
        .map(|v| (v.status, v.gate))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (Status::Ready, None),
            (Status::Ready, None),
            (Status::Suppressed, Some(Gate::MaxPerHour)),
            (Status::Suppressed, Some(Gate::MaxPerHour)),
        ]
    );
}

#[test]
fn over_the_blast_radius_an_enforce_policy_needs_approval() {
    let set = policy("max_blast_radius = 10\napprovers = [\"alice\", \"bob\"]\nmin_approvals = 2\napproval_ttl = \"1h\"\n");
    let g = Guards::default();
    let mut k = keeper(&g);
    assert_eq!(
        run(&mut k, &set, &subject(1), 10, &Approvals::default(), NOW).status,
        Status::Ready
    );
    let v = run(&mut k, &set, &subject(2), 11, &Approvals::default(), NOW);
    assert_eq!((v.status, v.gate), (Status::Pending, Some(Gate::Approval)));
    assert_eq!(v.expires_at, Some(NOW + 3_600_000));
    let one = Approvals {
        approved_by: vec!["alice".into()],
        rejected_by: None,
    };
    assert_eq!(
        run(&mut k, &set, &subject(2), 11, &one, NOW).status,
        Status::Pending
    );
    let two = Approvals {
        approved_by: vec!["alice".into(), "bob".into()],
        rejected_by: None,
    };
    let v = run(&mut k, &set, &subject(2), 11, &two, NOW);
    assert_eq!(v.status, Status::Ready, "{}", v.reason);
    let late = run(&mut k, &set, &subject(3), 11, &one, NOW + 3_600_000);
    assert_eq!(
        (late.status, late.gate),
        (Status::Expired, Some(Gate::Approval))
    );
    let no = Approvals {
        approved_by: vec!["alice".into(), "bob".into()],
        rejected_by: Some("bob".into()),
    };
    assert_eq!(
        run(&mut k, &set, &subject(4), 11, &no, NOW).status,
        Status::Refused
    );
}

#[test]
fn the_rate_guards_open_the_circuit_and_the_open_circuit_holds_everything() {
    let set = policy("");
    let g = Guards {
        max_actions_per_cycle: Some(2),
        ..Guards::default()
    };
    let mut k = keeper(&g);
    for i in 0..2 {
        assert_eq!(
            run(&mut k, &set, &subject(i), 0, &Approvals::default(), NOW).status,
            Status::Ready
        );
    }
    let v = run(&mut k, &set, &subject(2), 0, &Approvals::default(), NOW);
    assert_eq!((v.status, v.gate), (Status::Suppressed, Some(Gate::Guards)));
    assert!(k.circuit.open);
    k.ledger.this_cycle = 0; // a new cycle: the guard itself would pass, the circuit does not
    let v = run(
        &mut k,
        &set,
        &subject(3),
        0,
        &Approvals::default(),
        NOW + 60_000,
    );
    assert_eq!(
        (v.status, v.gate),
        (Status::Suppressed, Some(Gate::Circuit))
    );
    assert_eq!(k.circuit.last_pressure, NOW + 60_000);
}

#[test]
fn dry_run_and_freeze_stop_before_mode_and_a_dry_run_policy_never_trips_a_guard() {
    let set = policy("");
    let frozen = Guards {
        freeze: vec![crate::plan::window::Window::parse("0 0 0 15 1 *").expect("cron")],
        ..Guards::default()
    };
    let v = run(
        &mut keeper(&frozen),
        &set,
        &subject(1),
        0,
        &Approvals::default(),
        NOW,
    );
    assert_eq!((v.status, v.gate), (Status::Pending, Some(Gate::Freeze)));
    let dry = Guards {
        dry_run: true,
        ..Guards::default()
    };
    let v = run(
        &mut keeper(&dry),
        &set,
        &subject(1),
        0,
        &Approvals::default(),
        NOW,
    );
    assert_eq!((v.status, v.gate), (Status::DryRun, Some(Gate::DryRun)));
    let dry_policy = PolicySet::from_sources(&[(
        PathBuf::from("d.toml"),
        "[[policy]]\nid = \"d\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\n".into(),
    )])
    .expect("loads");
    let tight = Guards {
        max_actions_per_cycle: Some(0),
        ..Guards::default()
    };
    let mut k = keeper(&tight);
    let v = run(
        &mut k,
        &dry_policy,
        &subject(1),
        0,
        &Approvals::default(),
        NOW,
    );
    assert_eq!(v.status, Status::DryRun);
    assert!(!k.circuit.open);
}

#[test]
fn a_notice_passes_the_freeze_and_the_open_circuit_and_counts_for_no_guard() {
    let notify = PolicySet::from_sources(&[(
        PathBuf::from("n.toml"),
        "[[policy]]\nid = \"page\"\non = \"circuit_open\"\naction = \"notify\"\nmode = \"enforce\"\nmax_per_hour = 3\n".into(),
    )])
    .expect("loads");
    let g = Guards {
        max_actions_per_cycle: Some(1),
        freeze: vec![crate::plan::window::Window::parse("0 0 0 15 1 *").expect("cron")],
        ..Guards::default()
    };
    let mut k = keeper(&g);
    k.circuit.open = true;
    for i in 0..3 {
        let v = run(&mut k, &notify, &subject(i), 0, &Approvals::default(), NOW);
        assert_eq!((v.status, v.gate), (Status::Ready, None), "notice {i}");
    }
    // Its own rate limit still holds it.
    let v = run(&mut k, &notify, &subject(9), 0, &Approvals::default(), NOW);
    assert_eq!(v.gate, Some(Gate::MaxPerHour));
    // Three notices, and the guard of one action per cycle has not counted them.
    assert_eq!(k.ledger.this_cycle, 0);
    let acted: Vec<Acted> = (0..3)
        .map(|i| Acted {
            policy: "page".into(),
            subject: subject(i),
            at: NOW - 1000,
            notice: true,
        })
        .collect();
    let l = Ledger::from_acted(&acted, NOW);
    assert_eq!((l.hour, l.packages_day.len()), (0, 0));
    assert_eq!(l.per_policy_hour.get("page"), Some(&3));
    // A change is still frozen and held by the circuit.
    let set = policy("");
    k.circuit.open = false;
    let v = run(&mut k, &set, &subject(1), 0, &Approvals::default(), NOW);
    assert_eq!(v.gate, Some(Gate::Freeze));
}
