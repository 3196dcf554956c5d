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
    let mut valid = [false];
    if let Some((key, bytes, Some(sig), _)) = &p.check {
        verify_each(
            &[bytes.as_slice()],
            std::slice::from_ref(sig),
            std::slice::from_ref(key),
            &mut valid,
        );
    }
    let verdict = verdict(&mut p, valid[0]);
    finish(p, verdict, now)
}

/// Releases handed to [`observe_batch`] at a time. Ed25519 batch verification costs less per
/// signature the larger the batch (a one-off timing here: ~20 us a signature in batches of 64,
/// ~15 us in batches of 512, ~42 us alone).
pub const BATCH: usize = 512;

/// A batch's signatures are verified once the artifacts read for them reach this many bytes, so
/// that large artifacts do not hold a batch's worth of memory per worker.
const BATCH_BYTES: usize = 8 << 20;

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

/// Observes `releases`: reads and hashes each artifact, then verifies the signatures the cache
/// does not know in Ed25519 batches (up to [`BATCH_BYTES`] of artifacts each). A batch that fails
/// is split in halves until the bad signatures are named, so one bad signature costs a few
/// batches, not one check per signature. Every verdict is that of the batch equation, whatever
/// else is in the batch: the same bytes are judged the same way always.
pub fn observe_batch<R: Registry>(
    registry: &R,
    trust: &TrustStore,
    cache: &HashMap<VerificationKey, bool>,
    releases: &[&ReleaseRecord],
    now: i64,
    times: &WorkTimes,
) -> Vec<Observed> {
    let mut seen = Vec::with_capacity(releases.len());
    let mut pending: Vec<Prepared> = Vec::new();
    let mut bytes = 0;
    for r in releases {
        let started = std::time::Instant::now();
        let p = prepare(registry, trust, cache, r);
        WorkTimes::add(&times.read_hash_ns, started);
        bytes += p.check.as_ref().map_or(0, |c| c.1.len());
        pending.push(p);
        if bytes >= BATCH_BYTES {
            settle(&mut pending, now, times, &mut seen);
            bytes = 0;
        }
    }
    settle(&mut pending, now, times, &mut seen);
    seen
}

/// Verifies the signatures `pending` needs in one batch and turns each into its observation.
fn settle(pending: &mut Vec<Prepared>, now: i64, times: &WorkTimes, seen: &mut Vec<Observed>) {
    let started = std::time::Instant::now();
    let mut messages: Vec<&[u8]> = Vec::new();
    let mut signatures = Vec::new();
    let mut keys = Vec::new();
    for p in pending.iter() {
        if let Some((key, bytes, Some(sig), _)) = &p.check {
            messages.push(bytes.as_slice());
            signatures.push(*sig);
            keys.push(*key);
        }
    }
    let mut valid = vec![false; messages.len()];
    verify_each(&messages, &signatures, &keys, &mut valid);
    drop(messages);
    let mut verdicts = valid.into_iter();
    seen.extend(pending.drain(..).map(|mut p| {
        let decoded = matches!(&p.check, Some((_, _, Some(_), _)));
        let valid = decoded && verdicts.next().unwrap_or(false);
        let verdict = verdict(&mut p, valid);
        finish(p, verdict, now)
    }));
    WorkTimes::add(&times.verify_ns, started);
}

/// Sets `valid[i]` for each signature: true where a batch holding it held. A batch that fails is
/// split in halves; a batch of one that fails names its signature.
fn verify_each(
    messages: &[&[u8]],
    signatures: &[Signature],
    keys: &[VerifyingKey],
    valid: &mut [bool],
) {
    if messages.is_empty() {
        return;
    }
    if ed25519_dalek::verify_batch(messages, signatures, keys).is_ok() {
        valid.fill(true);
        return;
    }
    if messages.len() == 1 {
        valid[0] = false;
        return;
    }
    let mid = messages.len() / 2;
    let (left, right) = valid.split_at_mut(mid);
    verify_each(&messages[..mid], &signatures[..mid], &keys[..mid], left);
    verify_each(&messages[mid..], &signatures[mid..], &keys[mid..], right);
}

/// The signature's verdict, if it needed one: known from the cache, or `valid` (what the batches
/// found of it; false for a signature that does not decode).
fn verdict(p: &mut Prepared, valid: bool) -> Option<(VerificationKey, bool, bool)> {
    match p.check.take() {
        Some((_, _, _, cache_key)) => Some((cache_key, valid, false)),
        None => p.hit.take().map(|(k, valid)| (k, valid, true)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// `n` signed messages by three keys, the ones in `bad` signed over other bytes.
    fn signed(n: usize, bad: &[usize]) -> (Vec<Vec<u8>>, Vec<Signature>, Vec<VerifyingKey>) {
        let keys: Vec<SigningKey> = (1..=3u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let messages: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("artifact {i}").into_bytes())
            .collect();
        let signatures = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let k = &keys[i % 3];
                if bad.contains(&i) {
                    k.sign(b"other bytes")
                } else {
                    k.sign(m)
                }
            })
            .collect();
        let public = (0..n).map(|i| keys[i % 3].verifying_key()).collect();
        (messages, signatures, public)
    }

    fn verdicts(n: usize, bad: &[usize]) -> Vec<usize> {
        let (m, s, k) = signed(n, bad);
        let messages: Vec<&[u8]> = m.iter().map(|m| m.as_slice()).collect();
        let mut valid = vec![false; n];
        verify_each(&messages, &s, &k, &mut valid);
        (0..n).filter(|&i| !valid[i]).collect()
    }

    #[test]
    fn a_batch_that_holds_vouches_for_every_signature() {
        assert_eq!(verdicts(300, &[]), Vec::<usize>::new());
        assert_eq!(verdicts(1, &[]), Vec::<usize>::new());
    }

    #[test]
    fn a_failed_batch_is_split_until_exactly_the_bad_signatures_are_named() {
        assert_eq!(verdicts(300, &[0, 17, 299]), vec![0, 17, 299]);
        assert_eq!(verdicts(2, &[1]), vec![1]);
        assert_eq!(verdicts(1, &[0]), vec![0]);
        let all: Vec<usize> = (0..9).collect();
        assert_eq!(verdicts(9, &all), all);
    }
}
