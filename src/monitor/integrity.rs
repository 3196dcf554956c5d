//! Artifact integrity of one release: its bytes against the recorded checksum, its signature against the trust store.

use sha2::{Digest, Sha256};
use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::keys::{Trust, TrustStore};
use crate::knowledge::state::{verification_key, VerificationKey};
use crate::model::{Integrity, ReleaseObservation, SignatureState};
use crate::registry::{Registry, RegistryError, ReleaseRecord};

/// An observation, and the signature check behind it: (cache key, valid, was it a cache hit).
#[derive(Debug)]
pub struct Observed {
    pub observation: ReleaseObservation,
    pub verification: Option<(VerificationKey, bool, bool)>,
    /// The artifact's host could not be reached: the sensors are failing, and the observation
    /// must not be judged.
    pub unreachable: Option<String>,
}

/// Hashes the artifact and judges the signature. A signature is verified only on a cache miss
/// for (checksum of the actual bytes, signature, public key).
pub fn observe_release<R: Registry>(
    registry: &R,
    trust: &TrustStore,
    cache: &HashMap<VerificationKey, bool>,
    release: &ReleaseRecord,
    now: i64,
) -> Observed {
    let mut p = prepare(registry, trust, cache, release);
    let verdict = verdict(&mut p, false);
    finish(p, verdict, now)
}

/// Releases observed at most this many at a time: their signatures are verified in one batch.
pub const BATCH: usize = 64;

/// Time spent by the workers of a scan, summed over them: reading and hashing artifacts, and
/// verifying signatures.
#[derive(Debug, Default)]
pub struct WorkTimes {
    pub read_hash_ns: std::sync::atomic::AtomicU64,
    pub verify_ns: std::sync::atomic::AtomicU64,
}

impl WorkTimes {
    fn add(counter: &std::sync::atomic::AtomicU64, since: std::time::Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// (reading and hashing, verifying).
    pub fn totals(&self) -> (std::time::Duration, std::time::Duration) {
        let get = |c: &std::sync::atomic::AtomicU64| {
            std::time::Duration::from_nanos(c.load(std::sync::atomic::Ordering::Relaxed))
        };
        (get(&self.read_hash_ns), get(&self.verify_ns))
    }
}

/// What was found of one release before its signature was checked.
struct Prepared<'a> {
    release: &'a ReleaseRecord,
    integrity: Integrity,
    signature: SignatureState,
    unreachable: Option<String>,
    /// A signature the cache does not know: the key, the bytes, the signature (None: it does
    /// not decode, so it is invalid) and the cache key.
    check: Option<(VerifyingKey, Vec<u8>, Option<Signature>, VerificationKey)>,
    /// A verdict the cache knew: (cache key, valid).
    hit: Option<(VerificationKey, bool)>,
}

/// Observes `releases` (best [`BATCH`] at a time): reads and hashes each artifact, then verifies
/// the signatures the cache does not know in one Ed25519 batch; when the batch fails, each is
/// verified alone (as a batch of one) to tell which. Every verdict is that of the batch
/// equation, whatever else is in the batch: the same bytes are judged the same way always.
pub fn observe_batch<R: Registry>(
    registry: &R,
    trust: &TrustStore,
    cache: &HashMap<VerificationKey, bool>,
    releases: &[&ReleaseRecord],
    now: i64,
    times: &WorkTimes,
) -> Vec<Observed> {
    let started = std::time::Instant::now();
    let prepared: Vec<Prepared> = releases
        .iter()
        .map(|r| prepare(registry, trust, cache, r))
        .collect();
    WorkTimes::add(&times.read_hash_ns, started);
    let started = std::time::Instant::now();
    let mut messages: Vec<&[u8]> = Vec::new();
    let mut signatures = Vec::new();
    let mut keys = Vec::new();
    for p in &prepared {
        if let Some((key, bytes, Some(sig), _)) = &p.check {
            messages.push(bytes.as_slice());
            signatures.push(*sig);
            keys.push(*key);
        }
    }
    let batch_ok =
        messages.len() > 1 && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
    drop(messages);
    let seen = prepared
        .into_iter()
        .map(|mut p| {
            let verdict = verdict(&mut p, batch_ok);
            finish(p, verdict, now)
        })
        .collect();
    WorkTimes::add(&times.verify_ns, started);
    seen
}

/// The signature's verdict, if it needed one: known from the cache, vouched for by a batch that
/// held, or checked alone.
fn verdict(p: &mut Prepared, batch_ok: bool) -> Option<(VerificationKey, bool, bool)> {
    match p.check.take() {
        Some((key, bytes, sig, cache_key)) => {
            let valid = match sig {
                Some(_) if batch_ok => true,
                Some(sig) => verify_one(&key, &bytes, &sig),
                None => false,
            };
            Some((cache_key, valid, false))
        }
        None => p.hit.take().map(|(k, valid)| (k, valid, true)),
    }
}

/// One signature, by the same (batch) equation as the others.
fn verify_one(key: &VerifyingKey, bytes: &[u8], sig: &Signature) -> bool {
    ed25519_dalek::verify_batch(
        &[bytes],
        std::slice::from_ref(sig),
        std::slice::from_ref(key),
    )
    .is_ok()
}

/// Reads and hashes a release's artifact and judges all but a signature the cache does not know.
fn prepare<'a, R: Registry>(
    registry: &R,
    trust: &TrustStore,
    cache: &HashMap<VerificationKey, bool>,
    release: &'a ReleaseRecord,
) -> Prepared<'a> {
    let vouched = registry.vouched_digest(release);
    // Without bytes (a vouched digest) a signature cannot be checked.
    let have_bytes = vouched.is_none();
    let mut unreachable = None;
    let bytes = match (&vouched, &release.artifact) {
        (Some(_), _) => Ok(Vec::new()),
        (None, Some(location)) => registry.read_artifact(location).map_err(|e| {
            if let RegistryError::Unavailable(why) = &e {
                unreachable = Some(why.clone());
            }
            e.to_string()
        }),
        (None, None) => Err("the release names no artifact".to_string()),
    };
    let computed = match vouched {
        Some(d) => Some(d),
        None => bytes.as_ref().ok().map(|b| hex::encode(Sha256::digest(b))),
    };
    let integrity = match (&bytes, &computed, &release.checksum) {
        (Err(reason), _, _) => Integrity::Unreadable {
            reason: reason.clone(),
        },
        (Ok(_), _, None) => Integrity::NoChecksum,
        (Ok(_), Some(c), Some(recorded)) if c.eq_ignore_ascii_case(recorded.trim()) => {
            Integrity::Ok
        }
        (Ok(_), Some(c), Some(recorded)) => Integrity::Mismatch {
            recorded: recorded.clone(),
            computed: c.clone(),
        },
        (Ok(_), None, Some(_)) => Integrity::NoChecksum,
    };
    let mut p = Prepared {
        release,
        integrity,
        signature: SignatureState::Unverifiable,
        unreachable,
        check: None,
        hit: None,
    };
    p.signature = match (&release.signature, &release.signer) {
        (None, _) if !registry.signatures_required() => SignatureState::Unsigned,
        (None, _) => SignatureState::Missing,
        (Some(_), None) => SignatureState::UnknownKey,
        (Some(sig), Some(signer)) => match trust.trust(signer) {
            Trust::Revoked => SignatureState::RevokedKey,
            Trust::Unknown => SignatureState::UnknownKey,
            Trust::Trusted(key) => match (bytes, &computed) {
                (Ok(bytes), Some(checksum)) if have_bytes => {
                    let cache_key = verification_key(checksum, sig, &key.public_hex);
                    match cache.get(&cache_key) {
                        Some(&valid) => p.hit = Some((cache_key, valid)),
                        None => {
                            let decoded = hex::decode(sig.trim())
                                .ok()
                                .and_then(|b| Signature::from_slice(&b).ok());
                            p.check = Some((key.public, bytes, decoded, cache_key));
                        }
                    }
                    // Judged when the verdict is known.
                    SignatureState::Unverifiable
                }
                _ => SignatureState::Unverifiable,
            },
        },
    };
    p
}

/// The observation, with the signature's verdict where one was needed.
fn finish(p: Prepared, verdict: Option<(VerificationKey, bool, bool)>, now: i64) -> Observed {
    let signature = match &verdict {
        Some((_, true, _)) => SignatureState::Valid,
        Some((_, false, _)) => SignatureState::Invalid,
        None => p.signature,
    };
    Observed {
        observation: ReleaseObservation {
            package: p.release.package.clone(),
            version: p.release.version.clone(),
            observed_at: now,
            integrity: p.integrity,
            signature,
            signer: p.release.signer.clone(),
        },
        verification: verdict,
        unreachable: p.unreachable,
    }
}
