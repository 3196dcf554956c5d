//! Monitor: read the registry (incrementally by cursor), hash artifacts, verify signatures, emit observations.

pub mod events;
pub mod facts;
pub mod intake;
mod integrity;
mod pass;

pub use integrity::observe_release;
use integrity::Observed;
pub use integrity::WorkTimes;
use integrity::{observe_batch, BATCH};
use pass::registry_pass;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::keys::TrustStore;
use crate::knowledge::state::VerificationKey;
use crate::knowledge::telemetry::TelemetryDelta;
use crate::knowledge::{Store, StoreError};
use crate::model::ReleaseObservation;
use crate::registry::{Registry, RegistryError, ReleaseRecord};
use facts::{Facts, FactsCache};

const CURSOR: &str = "monitor.releases";

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored cursor `{0}` is not a number")]
    Cursor(String),
    #[error("artifact worker failed: {0}")]
    Worker(String),
}

/// What one monitor pass saw.
#[derive(Debug, Default, Clone)]
pub struct MonitorOutput {
    /// What analysis is to judge: every release looked at in an incremental pass; in a full
    /// scan, those whose observation changed and those that are not healthy (an unchanged,
    /// healthy release tells analysis nothing).
    pub observations: Vec<ReleaseObservation>,
    /// Releases looked at (every known one in a full scan).
    pub scanned: usize,
    pub full_scan: bool,
    pub verified: usize,
    pub cache_hits: usize,
    /// The registry's facts now; None when it could not be read.
    pub facts: Option<Arc<Facts>>,
    /// Telemetry written since the last pass (everything kept, on the first pass).
    pub telemetry: TelemetryDelta,
    /// Why the registry could not be read: the facts of this pass are stale.
    pub unreachable: Option<String>,
    /// What the registry's backend judges by its own rules (a marketplace's admission and
    /// content checks): the kinds and everything that holds of them now.
    pub registry: crate::registry::Refreshed,
    /// Where the registry pass's time went.
    pub timings: PassTimings,
}

/// Where a registry pass's time went: wall-clock times of its steps, and the time its workers
/// spent reading and hashing artifacts and verifying signatures (summed over the workers).
#[derive(Debug, Default, Clone, Copy)]
pub struct PassTimings {
    /// Reading changed records from the registry.
    pub read: std::time::Duration,
    /// Bringing the facts up to date (package records, dependencies).
    pub facts: std::time::Duration,
    /// Looking at the releases: artifacts read, hashed, signatures verified.
    pub check: std::time::Duration,
    pub read_hash_cpu: std::time::Duration,
    pub verify_cpu: std::time::Duration,
    /// Writing what changed (observations, verdicts, the cursor).
    pub write: std::time::Duration,
}

/// How long telemetry is kept, in ms: minute buckets, hour buckets, reports.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub minutes_ms: i64,
    pub hours_ms: i64,
    pub reports_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            minutes_ms: 7 * events::HOUR,
            hours_ms: 96 * events::HOUR,
            reports_ms: 30 * 24 * events::HOUR,
        }
    }
}

/// Every release record is read from the registry again at least this often; in between, a full
/// scan hashes the releases the change sequence has told the monitor about.
const FULL_READ_EVERY_MS: i64 = 24 * events::HOUR;

/// Retention (folding old minute batches into an hour batch) is applied at most this often.
const PRUNE_EVERY_MS: i64 = events::HOUR;

/// The monitor's memory between cycles: its cursor, the verification cache, when it last looked at
/// everything, and which trust store it judged with.
#[derive(Debug, Default)]
pub struct MonitorState {
    cursor: Option<i64>,
    cache: Arc<HashMap<VerificationKey, bool>>,
    cache_loaded: bool,
    last_full_scan: Option<i64>,
    trust_digest: String,
    /// Moves on with every change of trust store, so a judgement made under another is not reused.
    trust_generation: u64,
    facts: FactsCache,
    telemetry_cursor: i64,
    pub retention: Retention,
    last_prune: Option<i64>,
    /// Every release the monitor knows, as the change sequence left it, in the registry's
    /// order: what a full scan hashes again.
    known: Arc<BTreeMap<(String, String), Known>>,
    /// When every release record was last read from the registry, not only the changed ones.
    last_full_read: Option<i64>,
    /// The last observation of each release that is not healthy (handed to analysis again at
    /// every full scan).
    unhealthy: BTreeMap<(String, String), ReleaseObservation>,
    /// The registry's artifact generation and the trust generation under which every known
    /// release was last judged: while both stay, a full scan would judge each the same again.
    all_judged: Option<(u64, u64)>,
}

/// A release as the monitor knows it, and what its last observation was judged from.
#[derive(Debug, Clone)]
struct Known {
    record: ReleaseRecord,
    judged: Option<Judged>,
    /// What the store holds of its observation (integrity, signature, signer), so that a full
    /// scan writes only the releases whose observation changed. Kept here rather than in a map
    /// of its own: at a million packages a map per package cost a third of a gigabyte.
    recorded: Option<Seen>,
}

/// The inputs of a release's last observation: while the registry vouches that the artifact's
/// bytes hash the same and the trust store is the same, the observation is the same, and a full
/// scan need not make it again.
#[derive(Debug, Clone, Copy)]
struct Judged {
    digest: [u8; 32],
    trust_generation: u64,
}

/// An observation without its time: what decides whether it is written again.
type Seen = (
    crate::model::Integrity,
    crate::model::SignatureState,
    Option<String>,
);

fn healthy(o: &ReleaseObservation) -> bool {
    o.integrity == crate::model::Integrity::Ok
        && matches!(
            o.signature,
            crate::model::SignatureState::Valid | crate::model::SignatureState::Unsigned
        )
}

impl MonitorState {
    /// When the next full scan is due (now, before the first one).
    pub fn next_full_scan(&self, every_ms: i64) -> i64 {
        self.last_full_scan
            .map_or(i64::MIN, |t| t.saturating_add(every_ms))
    }

    pub fn new() -> Self {
        Self::default()
    }
}

/// One monitor pass: the registry's releases (integrity) and facts, and the new telemetry. A
/// registry that cannot be read is reported in the output, not as an error, so that analysis
/// can freeze what depends on it; a knowledge store that fails is an error.
pub async fn cycle<R: Registry>(
    state: &mut MonitorState,
    registry: &Arc<R>,
    store: &Store,
    trust: &Arc<TrustStore>,
    now: i64,
    full_scan_every_ms: i64,
) -> Result<MonitorOutput, MonitorError> {
    let mut out = match registry_pass(state, registry, store, trust, now, full_scan_every_ms).await
    {
        Ok(out) => out,
        Err(MonitorError::Registry(e)) => MonitorOutput {
            unreachable: Some(e.to_string()),
            ..Default::default()
        },
        Err(e) => return Err(e),
    };
    out.telemetry = store.telemetry_since(state.telemetry_cursor).await?;
    state.telemetry_cursor = out.telemetry.head;
    if state.last_prune.is_none_or(|t| now - t >= PRUNE_EVERY_MS) {
        let r = state.retention;
        let removed = store
            .prune_telemetry(now - r.minutes_ms, now - r.hours_ms, now - r.reports_ms)
            .await?;
        tracing::debug!(removed, "telemetry retention applied");
        state.last_prune = Some(now);
    }
    Ok(out)
}

/// Forgets releases that left the registry: they are no longer scanned, and no observation of
/// them is kept.
fn forget(state: &mut MonitorState, removed: &[(String, String)]) {
    if removed.is_empty() {
        return;
    }
    state.facts.forget(removed);
    let known = Arc::make_mut(&mut state.known);
    for (p, v) in removed {
        let key = (p.clone(), v.clone());
        known.remove(&key);
        state.unhealthy.remove(&key);
    }
}

/// What a scan made of one release.
enum Looked {
    /// Judged before from the same bytes and trust, and not healthy: its last observation again.
    Again((String, String)),
    /// Observed now, with the digest the registry vouched for (to judge by next time).
    Observed(Observed, Option<[u8; 32]>),
}

/// Observes `releases` on worker threads (all cores); a release judged before from bytes the
/// registry vouches are the same, under the same trust store, is not observed again.
#[allow(clippy::too_many_arguments)]
async fn scan<R: Registry>(
    registry: &Arc<R>,
    trust: &Arc<TrustStore>,
    cache: &Arc<HashMap<VerificationKey, bool>>,
    releases: &Arc<BTreeMap<(String, String), Known>>,
    unhealthy: &BTreeMap<(String, String), ReleaseObservation>,
    trust_generation: u64,
    now: i64,
    times: &Arc<WorkTimes>,
) -> Result<Vec<Vec<Looked>>, MonitorError> {
    let (registry, trust, cache, releases, times) = (
        Arc::clone(registry),
        Arc::clone(trust),
        Arc::clone(cache),
        Arc::clone(releases),
        Arc::clone(times),
    );
    let unhealthy: std::collections::HashSet<(String, String)> =
        unhealthy.keys().cloned().collect();
    tokio::task::spawn_blocking(move || {
        let all: Vec<&Known> = releases.values().collect();
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let chunk = all.len().div_ceil(workers).max(1);
        let times = times.as_ref();
        // A release judged before from the same bytes, under the same trust, is not observed
        // again (only handed on when it is not healthy); the others are observed a batch at a
        // time, so that their signatures are verified together.
        let look = |part: &[&Known]| -> Vec<Looked> {
            let mut out = Vec::with_capacity(part.len());
            let mut due: Vec<(&Known, Option<[u8; 32]>)> = Vec::with_capacity(BATCH);
            let observe = |due: &mut Vec<(&Known, Option<[u8; 32]>)>, out: &mut Vec<Looked>| {
                let records: Vec<&ReleaseRecord> = due.iter().map(|(k, _)| &k.record).collect();
                let seen = observe_batch(registry.as_ref(), &trust, &cache, &records, now, times);
                out.extend(
                    seen.into_iter()
                        .zip(due.drain(..))
                        .map(|(o, (_, digest))| Looked::Observed(o, digest)),
                );
            };
            for &k in part {
                let digest = k
                    .record
                    .artifact
                    .as_deref()
                    .and_then(|a| registry.artifact_digest(a));
                if let (Some(d), Some(j)) = (digest, &k.judged) {
                    if j.digest == d && j.trust_generation == trust_generation {
                        let key = (k.record.package.clone(), k.record.version.clone());
                        if unhealthy.contains(&key) {
                            out.push(Looked::Again(key));
                        }
                        continue;
                    }
                }
                due.push((k, digest));
                if due.len() == BATCH {
                    observe(&mut due, &mut out);
                }
            }
            if !due.is_empty() {
                observe(&mut due, &mut out);
            }
            out
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = all
                .chunks(chunk)
                .map(|part| {
                    let look = &look;
                    scope.spawn(move || look(part))
                })
                .collect();
            // Each worker's part as it made it: joining them into one would copy every
            // observation of a first scan.
            // A worker that stopped fails the pass rather than leave its part unjudged.
            handles
                .into_iter()
                .map(|h| {
                    h.join().map_err(|_| {
                        MonitorError::Worker("a worker looking at releases stopped".into())
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
    })
    .await
    .map_err(|e| MonitorError::Worker(e.to_string()))?
}
