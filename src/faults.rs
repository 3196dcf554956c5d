//! Fault points for the crash and outage tests: `MAPEK_TEST_CRASH_AT=POINT:N` SIGKILLs the process the N-th time it reaches POINT, and a test may set a hook called at each point; otherwise nothing happens.
//!
//! The points are the executor's commit boundaries: `intents` (every intent committed, no
//! effect yet), `before_commit` (a group's effects, audit entries and outcomes written but not
//! committed) and `after_commit` (a group committed); and the published catalog's:
//! `publish_before_rename` (the new catalog written and synced beside the old one) and
//! `publish_after_rename` (the catalog in place, its signature not yet). `MAPEK_TEST_STALL_AT=POINT` instead
//! makes the executor hang at POINT (as on an action that never answers), for the shutdown
//! tests. `MAPEK_TEST_FAIL_AT=POINT:N` makes the first N passages at POINT fail as a transient
//! error would (the executor's `execute`: its stage run errs and is counted). `MAPEK_TEST_*`
//! variables are not settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn plan() -> &'static Option<(String, u64)> {
    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let v = std::env::var("MAPEK_TEST_CRASH_AT").ok()?;
        let (point, n) = v.split_once(':')?;
        Some((point.to_string(), n.parse().ok()?))
    })
}

type Hook = Box<dyn Fn(&str) + Send + Sync>;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Sets the process's one fault hook (a test's); false if one was set already.
pub fn set_hook(hook: Hook) -> bool {
    HOOK.set(hook).is_ok()
}

/// Hangs here for an hour, without blocking a thread, when `MAPEK_TEST_STALL_AT` names this
/// point; says so on stderr first, so that a test knows the stage is stuck.
pub async fn stall(name: &str) {
    static STALL: OnceLock<Option<String>> = OnceLock::new();
    let planned = STALL.get_or_init(|| std::env::var("MAPEK_TEST_STALL_AT").ok());
    if planned.as_deref() == Some(name) {
        eprintln!("mapek test: stalled at {name}");
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// Dies here, by SIGKILL (no destructor, no flush, no rollback but the database's own), when
/// this is the planned point and its planned passage.
pub fn point(name: &str) {
    static PASSED: AtomicU64 = AtomicU64::new(0);
    if let Some(hook) = HOOK.get() {
        hook(name);
    }
    let Some((point, n)) = plan() else { return };
    if point != name || PASSED.fetch_add(1, Ordering::SeqCst) + 1 != *n {
        return;
    }
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    std::process::abort();
}

/// Some(reason) the first N times this point is reached when `MAPEK_TEST_FAIL_AT=POINT:N`
/// names it: the caller fails as on a transient error.
pub fn fails(name: &str) -> Option<String> {
    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSED: AtomicU64 = AtomicU64::new(0);
    let (point, n) = PLAN
        .get_or_init(|| {
            let v = std::env::var("MAPEK_TEST_FAIL_AT").ok()?;
            let (point, n) = v.split_once(':')?;
            Some((point.to_string(), n.parse().ok()?))
        })
        .as_ref()?;
    (point == name && PASSED.fetch_add(1, Ordering::SeqCst) < *n)
        .then(|| format!("injected fault at {name} (MAPEK_TEST_FAIL_AT)"))
}
