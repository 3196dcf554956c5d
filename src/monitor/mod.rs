//! Monitor: read the registry (incrementally by cursor), hash artifacts, verify signatures, emit observations.

pub mod events;
pub mod facts;
pub mod intake;
mod integrity;

pub use integrity::observe_release;

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
    pub observations: Vec<ReleaseObservation>,
    pub full_scan: bool,
    pub verified: usize,
    pub cache_hits: usize,
    /// The registry's facts now; None when it could not be read.
    pub facts: Option<Arc<Facts>>,
    /// Telemetry written since the last pass (everything kept, on the first pass).
    pub telemetry: TelemetryDelta,
    /// Why the registry could not be read: the facts of this pass are stale.
    pub unreachable: Option<String>,
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

/// Retention is applied at most this often.
const PRUNE_EVERY_MS: i64 = 10 * events::MINUTE;

/// The monitor's memory between cycles: its cursor, the verification cache, when it last looked at
/// everything, and which trust store it judged with.
#[derive(Debug, Default)]
pub struct MonitorState {
    cursor: Option<i64>,
    cache: Arc<HashMap<VerificationKey, bool>>,
    cache_loaded: bool,
    last_full_scan: Option<i64>,
    trust_digest: String,
    facts: FactsCache,
    telemetry_cursor: i64,
    pub retention: Retention,
    last_prune: Option<i64>,
    /// What the store holds of each release's observation (integrity, signature, signer), so
    /// that a full scan writes only the releases whose observation changed.
    recorded: HashMap<String, HashMap<String, Seen>>,
    /// Every release the monitor knows, as the change sequence left it, in the registry's
    /// order: what a full scan hashes again.
    known: Arc<BTreeMap<(String, String), ReleaseRecord>>,
    /// When every release record was last read from the registry, not only the changed ones.
    last_full_read: Option<i64>,
}

/// An observation without its time: what decides whether it is written again.
type Seen = (
    crate::model::Integrity,
    crate::model::SignatureState,
    Option<String>,
);

impl MonitorState {
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

/// The registry part of a pass. A full scan (every release known, hashed again) happens on the
/// first pass, when the trust store changed, and every `full_scan_every_ms`; otherwise only
/// releases changed since the cursor. Records are read in full on the first full scan and once
/// a day; in between only the changed ones.
async fn registry_pass<R: Registry>(
    state: &mut MonitorState,
    registry: &Arc<R>,
    store: &Store,
    trust: &Arc<TrustStore>,
    now: i64,
    full_scan_every_ms: i64,
) -> Result<MonitorOutput, MonitorError> {
    if state.cursor.is_none() {
        state.cursor = match store.cursor(CURSOR).await? {
            Some(v) => Some(v.parse().map_err(|_| MonitorError::Cursor(v))?),
            None => Some(0),
        };
    }
    if !state.cache_loaded {
        state.cache = Arc::new(store.verification_cache().await?);
        state.cache_loaded = true;
    }
    let full_scan = state
        .last_full_scan
        .is_none_or(|t| now - t >= full_scan_every_ms)
        || state.trust_digest != trust.digest;
    // Release records follow the change sequence; they are all read again on the first pass
    // and once a day, in case something changed a row without moving the sequence.
    let full_read = full_scan
        && state
            .last_full_read
            .is_none_or(|t| now - t >= FULL_READ_EVERY_MS);
    let since = if full_read {
        0
    } else {
        state.cursor.unwrap_or(0)
    };
    let t_read = std::time::Instant::now();
    let seq = registry.change_seq().await?;
    let (releases, head) = registry.releases_since(since).await?;
    state.facts.note_releases(&releases);
    let facts = state.facts.facts(registry.as_ref(), seq).await?;
    let known = Arc::make_mut(&mut state.known);
    if full_read {
        known.clear();
    }
    for r in &releases {
        known.insert((r.package.clone(), r.version.clone()), r.clone());
    }
    let read_s = t_read.elapsed().as_secs_f64();
    let t_check = std::time::Instant::now();

    let registry2 = Arc::clone(registry);
    let trust2 = Arc::clone(trust);
    let cache = Arc::clone(&state.cache);
    // A full scan hashes every known release again; another pass only the changed ones.
    let everything = full_scan.then(|| Arc::clone(&state.known));
    let results = tokio::task::spawn_blocking(move || {
        let scanned: Vec<&ReleaseRecord> = match &everything {
            Some(known) => known.values().collect(),
            None => releases.iter().collect(),
        };
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let chunk = scanned.len().div_ceil(workers).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = scanned
                .chunks(chunk)
                .map(|part| {
                    let (registry, trust, cache) = (&registry2, &trust2, &cache);
                    scope.spawn(move || {
                        part.iter()
                            .map(|r| observe_release(registry.as_ref(), trust, cache, r, now))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect::<Vec<_>>()
        })
    })
    .await
    .map_err(|e| MonitorError::Worker(e.to_string()))?;

    let check_s = t_check.elapsed().as_secs_f64();
    let t_write = std::time::Instant::now();
    let mut output = MonitorOutput {
        full_scan,
        facts: Some(facts),
        ..Default::default()
    };
    let mut fresh = Vec::new();
    for r in results {
        match r.verification {
            Some((_, _, true)) => output.cache_hits += 1,
            Some((key, valid, false)) => {
                output.verified += 1;
                fresh.push((key, valid));
            }
            None => {}
        }
        output.observations.push(r.observation);
    }
    store.cache_verifications(&fresh, now).await?;
    if !fresh.is_empty() {
        let cache = Arc::make_mut(&mut state.cache);
        cache.extend(fresh);
    }
    let cache_s = t_write.elapsed().as_secs_f64();
    let t_obs = std::time::Instant::now();
    // Only what changed is written: on an unchanged registry a full scan writes nothing, and
    // `observed_at` is when the release was first seen as it is now.
    let news: Vec<ReleaseObservation> = output
        .observations
        .iter()
        .filter(|o| {
            let seen = state
                .recorded
                .get(o.package.as_str())
                .and_then(|v| v.get(o.version.as_str()));
            !matches!(seen, Some((i, s, g)) if *i == o.integrity && *s == o.signature && *g == o.signer)
        })
        .cloned()
        .collect();
    store.record_observations(&news).await?;
    for o in news {
        state
            .recorded
            .entry(o.package)
            .or_default()
            .insert(o.version, (o.integrity, o.signature, o.signer));
    }
    store.set_cursor(CURSOR, &head.to_string()).await?;
    tracing::debug!(
        releases = output.observations.len(),
        read_s,
        check_s,
        cache_s,
        observations_s = t_obs.elapsed().as_secs_f64(),
        "monitor pass timings"
    );
    state.cursor = Some(head);
    if full_scan {
        state.last_full_scan = Some(now);
        state.trust_digest = trust.digest.clone();
    }
    if full_read {
        state.last_full_read = Some(now);
    }
    Ok(output)
}
