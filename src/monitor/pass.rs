//! The registry part of a monitor pass: which releases to look at (all of them at a full scan, the changed ones otherwise), looking at them, and writing down only what changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::integrity::WorkTimes;
use super::{
    forget, healthy, scan, Judged, Known, Looked, MonitorError, MonitorOutput, MonitorState, Seen,
    CURSOR, FULL_READ_EVERY_MS,
};
use crate::keys::TrustStore;
use crate::knowledge::state::VerificationKey;
use crate::knowledge::Store;
use crate::model::ReleaseObservation;
use crate::registry::{Registry, RegistryError, ReleaseRecord};

/// What a pass decided to do before reading anything.
struct Plan {
    full_scan: bool,
    full_read: bool,
    cursor: i64,
}

/// What was read of the registry.
struct Read {
    releases: Vec<ReleaseRecord>,
    /// The change sequence the releases were read up to.
    head: i64,
    /// The change sequence before they were read (what the facts are built at).
    seq: i64,
}

/// The registry part of a pass. A full scan (every release known, hashed again) happens on the
/// first pass, when the trust store changed, and every `full_scan_every_ms`; otherwise only
/// releases changed since the cursor. Records are read in full on the first full scan and, unless
/// the registry's records always follow its change sequence, once a day; in between only the
/// changed ones.
pub(super) async fn registry_pass<R: Registry>(
    state: &mut MonitorState,
    registry: &Arc<R>,
    store: &Store,
    trust: &Arc<TrustStore>,
    now: i64,
    full_scan_every_ms: i64,
) -> Result<MonitorOutput, MonitorError> {
    let plan = prepare(
        state,
        registry.as_ref(),
        store,
        trust,
        now,
        full_scan_every_ms,
    )
    .await?;
    let t_read = std::time::Instant::now();
    // A registry with a source of record of its own (a marketplace checkout) brings its records
    // up to date first; what it judges by its own rules comes with them.
    let refreshed = registry.refresh(plan.full_scan, now).await?;
    forget(state, &refreshed.removed);
    let mut read = read(registry.as_ref(), &plan, &refreshed.changed).await?;
    let read_took = t_read.elapsed();
    let t_facts = std::time::Instant::now();
    state.facts.note_releases(&mut read.releases);
    let facts = state
        .facts
        .facts(registry.as_ref(), read.seq, plan.full_read)
        .await?;
    let nothing_read = read.releases.is_empty();
    // A full scan looks at every known release: the records read are moved in, not copied (at
    // a million releases the copy was most of a gigabyte held through the scan).
    let releases = update_known(state, read.releases, plan.full_read, !plan.full_scan);
    let mut output = MonitorOutput {
        full_scan: plan.full_scan,
        facts: Some(facts),
        registry: refreshed,
        ..Default::default()
    };
    output.timings.read = read_took;
    output.timings.facts = t_facts.elapsed();
    let t_check = std::time::Instant::now();
    let generation = registry.artifacts_generation();
    // When no record changed, the registry vouches that no artifact's bytes changed, and the
    // trust store is the same, every release would be judged as it was: only the unhealthy
    // ones are handed on again, without looking at each.
    let unchanged = nothing_read
        && generation.is_some_and(|g| state.all_judged == Some((g, state.trust_generation)));
    let times = Arc::new(WorkTimes::default());
    let looked = look(
        state,
        registry,
        trust,
        &plan,
        unchanged,
        releases,
        &mut output,
        now,
        &times,
    )
    .await?;
    output.timings.check = t_check.elapsed();
    (output.timings.read_hash_cpu, output.timings.verify_cpu) = times.totals();
    let t_write = std::time::Instant::now();
    let (observed, fresh) = take_looked(state, looked, &mut output, now);
    if plan.full_scan && !unchanged {
        let trust_generation = state.trust_generation;
        let every = state.known.values().all(|k| {
            k.judged
                .is_some_and(|j| j.trust_generation == trust_generation)
        });
        state.all_judged = generation.filter(|_| every).map(|g| (g, trust_generation));
    }
    store.cache_verifications(&fresh, now).await?;
    if !fresh.is_empty() {
        Arc::make_mut(&mut state.cache).extend(fresh);
    }
    record(state, store, observed, &mut output, plan.full_scan).await?;
    if read.head != plan.cursor {
        store.set_cursor(CURSOR, &read.head.to_string()).await?;
    }
    output.timings.write = t_write.elapsed();
    let t = output.timings;
    tracing::debug!(
        releases = output.scanned,
        read_s = t.read.as_secs_f64(),
        facts_s = t.facts.as_secs_f64(),
        check_s = t.check.as_secs_f64(),
        write_s = t.write.as_secs_f64(),
        "monitor pass timings"
    );
    state.cursor = Some(read.head);
    if plan.full_scan {
        state.last_full_scan = Some(now);
        state.trust_digest = trust.digest.clone();
    }
    if plan.full_read {
        state.last_full_read = Some(now);
    }
    Ok(output)
}

/// The cursor and the verification cache on the first pass; whether this pass is a full scan
/// and whether it reads every record again.
async fn prepare<R: Registry>(
    state: &mut MonitorState,
    registry: &R,
    store: &Store,
    trust: &TrustStore,
    now: i64,
    full_scan_every_ms: i64,
) -> Result<Plan, MonitorError> {
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
    if state.trust_digest != trust.digest {
        state.trust_generation += 1;
    }
    let full_scan = state
        .last_full_scan
        .is_none_or(|t| now - t >= full_scan_every_ms)
        || state.trust_digest != trust.digest;
    // Release records follow the change sequence; they are all read again on the first pass
    // and once a day, in case something changed a row without moving the sequence.
    let full_read = full_scan
        && match state.last_full_read {
            None => true,
            Some(t) => !registry.records_follow_sequence() && now - t >= FULL_READ_EVERY_MS,
        };
    Ok(Plan {
        full_scan,
        full_read,
        cursor: state.cursor.unwrap_or(0),
    })
}

/// The releases changed since the cursor (all of them on a full read), and those whose
/// artifact the registry saw change under an unchanged record.
async fn read<R: Registry>(
    registry: &R,
    plan: &Plan,
    changed: &[(String, String)],
) -> Result<Read, MonitorError> {
    let since = if plan.full_read { 0 } else { plan.cursor };
    let seq = registry.change_seq().await?;
    let (mut releases, head) = if since < seq {
        registry.releases_since(since).await?
    } else {
        (Vec::new(), seq)
    };
    for (p, v) in changed {
        if !releases.iter().any(|r| &r.package == p && &r.version == v) {
            releases.extend(registry.release(p, v).await?);
        }
    }
    Ok(Read {
        releases,
        head,
        seq,
    })
}

/// Keeps the releases read; on a full read, forgets those no longer there. Gives the records
/// back when `give_back` (an incremental pass looks at them), otherwise keeps them without a copy.
fn update_known(
    state: &mut MonitorState,
    releases: Vec<ReleaseRecord>,
    full_read: bool,
    give_back: bool,
) -> Vec<ReleaseRecord> {
    let known = Arc::make_mut(&mut state.known);
    if full_read {
        let read: std::collections::HashSet<(&str, &str)> = releases
            .iter()
            .map(|r| (r.package.as_str(), r.version.as_str()))
            .collect();
        known.retain(|(p, v), _| read.contains(&(p.as_str(), v.as_str())));
        state
            .unhealthy
            .retain(|(p, v), _| read.contains(&(p.as_str(), v.as_str())));
    }
    let mut back = Vec::new();
    for r in releases {
        if give_back {
            back.push(r.clone());
        }
        let key = (r.package.clone(), r.version.clone());
        match known.get_mut(&key) {
            // An unchanged record keeps what its observation was judged from.
            Some(k) if k.record == r => {}
            Some(k) => {
                k.record = r;
                k.judged = None;
            }
            None => {
                known.insert(
                    key,
                    Known {
                        record: r,
                        judged: None,
                        recorded: None,
                    },
                );
            }
        }
    }
    back
}

/// Looks at what this pass is to look at: every known release at a full scan (or only the
/// unhealthy ones when nothing can have changed), the changed ones otherwise. An artifact host
/// that cannot be reached fails the whole pass: nothing is judged, and the cursor stays.
#[allow(clippy::too_many_arguments)]
async fn look<R: Registry>(
    state: &MonitorState,
    registry: &Arc<R>,
    trust: &Arc<TrustStore>,
    plan: &Plan,
    unchanged: bool,
    releases: Vec<ReleaseRecord>,
    output: &mut MonitorOutput,
    now: i64,
    times: &Arc<WorkTimes>,
) -> Result<Vec<Vec<Looked>>, MonitorError> {
    let (g, unhealthy) = (state.trust_generation, &state.unhealthy);
    let looked: Vec<Vec<Looked>> = if plan.full_scan && unchanged {
        output.scanned = state.known.len();
        vec![unhealthy.keys().cloned().map(Looked::Again).collect()]
    } else if plan.full_scan {
        output.scanned = state.known.len();
        scan(
            registry,
            trust,
            &state.cache,
            &state.known,
            unhealthy,
            g,
            now,
            times,
        )
        .await?
    } else if releases.is_empty() {
        Vec::new()
    } else {
        output.scanned = releases.len();
        let changed: BTreeMap<(String, String), Known> = releases
            .into_iter()
            .map(|r| {
                let key = (r.package.clone(), r.version.clone());
                let known = Known {
                    record: r,
                    judged: None,
                    recorded: None,
                };
                (key, known)
            })
            .collect();
        scan(
            registry,
            trust,
            &state.cache,
            &Arc::new(changed),
            unhealthy,
            g,
            now,
            times,
        )
        .await?
    };
    if let Some(why) = looked.iter().flatten().find_map(|l| match l {
        Looked::Observed(o, _) => o.unreachable.clone(),
        Looked::Again(_) => None,
    }) {
        return Err(MonitorError::Registry(RegistryError::Unavailable(why)));
    }
    Ok(looked)
}

/// An observation, and whether the store does not hold it yet (it is to be written).
type Made = (ReleaseObservation, bool);

/// What an observation says that the store keeps (its time aside).
fn seen(o: &ReleaseObservation) -> Seen {
    (o.integrity.clone(), o.signature, o.signer.clone())
}

/// Whether the store does not hold `o` yet, noting that it does; and the release it is of.
fn note<'a>(
    known: &'a mut BTreeMap<(String, String), Known>,
    key: &(String, String),
    o: &ReleaseObservation,
) -> (bool, Option<&'a mut Known>) {
    match known.get_mut(key) {
        Some(k) => {
            let s = seen(o);
            let new = k.recorded.as_ref() != Some(&s);
            if new {
                k.recorded = Some(s);
            }
            (new, Some(k))
        }
        None => (true, None),
    }
}

/// The observations made (each with whether the store does not hold it yet, which is noted as
/// held: [`record`] takes it back if the write fails), and the signature checks to cache; what
/// each release was judged from is kept, and whether it is healthy.
fn take_looked(
    state: &mut MonitorState,
    looked: Vec<Vec<Looked>>,
    output: &mut MonitorOutput,
    now: i64,
) -> (Vec<Made>, Vec<(VerificationKey, bool)>) {
    let mut fresh = Vec::new();
    let mut observed = Vec::with_capacity(looked.iter().map(Vec::len).sum());
    let known = Arc::make_mut(&mut state.known);
    // A worker's part at a time, each freed once taken (at a first scan of two million
    // releases, holding every part through the loop held a second copy of every observation).
    for l in looked.into_iter().flatten() {
        match l {
            Looked::Again(key) => {
                if let Some(o) = state.unhealthy.get(&key) {
                    let o = ReleaseObservation {
                        observed_at: now,
                        ..o.clone()
                    };
                    let (new, _) = note(known, &key, &o);
                    observed.push((o, new));
                }
            }
            Looked::Observed(r, digest) => {
                match r.verification {
                    Some((_, _, true)) => output.cache_hits += 1,
                    Some((key, valid, false)) => {
                        output.verified += 1;
                        fresh.push((key, valid));
                    }
                    None => {}
                }
                let o = r.observation;
                let key = (o.package.clone(), o.version.clone());
                if healthy(&o) {
                    state.unhealthy.remove(&key);
                } else {
                    state.unhealthy.insert(key.clone(), o.clone());
                }
                let (new, k) = note(known, &key, &o);
                if let (Some(digest), Some(k)) = (digest, k) {
                    k.judged = Some(Judged {
                        digest,
                        trust_generation: state.trust_generation,
                    });
                }
                observed.push((o, new));
            }
        }
    }
    (observed, fresh)
}

/// Writes only the observations that changed (on an unchanged registry a full scan writes
/// nothing; `observed_at` is when a release was first seen as it is now), and hands analysis
/// what it is to judge: at a full scan what changed and what is not healthy, otherwise
/// everything looked at (their records changed).
async fn record(
    state: &mut MonitorState,
    store: &Store,
    observed: Vec<Made>,
    output: &mut MonitorOutput,
    full_scan: bool,
) -> Result<(), MonitorError> {
    // The new ones are written from where they are (a first scan of two million releases made
    // a copy of every observation here).
    let news: Vec<&ReleaseObservation> = observed
        .iter()
        .filter_map(|(o, new)| new.then_some(o))
        .collect();
    if let Err(e) = store.record_observations(&news).await {
        // Not written: not held by the store, so written at the next pass.
        let known = Arc::make_mut(&mut state.known);
        for o in news {
            if let Some(k) = known.get_mut(&(o.package.clone(), o.version.clone())) {
                k.recorded = None;
            }
        }
        return Err(e.into());
    }
    drop(news);
    output.observations.extend(
        observed
            .into_iter()
            .filter_map(|(o, n)| (!full_scan || !healthy(&o) || n).then_some(o)),
    );
    Ok(())
}
