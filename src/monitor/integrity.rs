//! Artifact integrity of one release: its bytes against the recorded checksum, its signature against the trust store.

use sha2::{Digest, Sha256};
use std::collections::HashMap;

use crate::keys::{verify_hex, Trust, TrustStore};
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
    let mut verification = None;
    let signature = match (&release.signature, &release.signer) {
        (None, _) if !registry.signatures_required() => SignatureState::Unsigned,
        (None, _) => SignatureState::Missing,
        (Some(_), None) => SignatureState::UnknownKey,
        (Some(sig), Some(signer)) => match trust.trust(signer) {
            Trust::Revoked => SignatureState::RevokedKey,
            Trust::Unknown => SignatureState::UnknownKey,
            Trust::Trusted(key) => match (&bytes, &computed) {
                (Ok(bytes), Some(checksum)) if have_bytes => {
                    let cache_key = verification_key(checksum, sig, &key.public_hex);
                    let (valid, hit) = match cache.get(&cache_key) {
                        Some(v) => (*v, true),
                        None => (verify_hex(&key.public, bytes, sig), false),
                    };
                    verification = Some((cache_key, valid, hit));
                    if valid {
                        SignatureState::Valid
                    } else {
                        SignatureState::Invalid
                    }
                }
                _ => SignatureState::Unverifiable,
            },
        },
    };
    Observed {
        observation: ReleaseObservation {
            package: release.package.clone(),
            version: release.version.clone(),
            observed_at: now,
            integrity,
            signature,
            signer: release.signer.clone(),
        },
        verification,
        unreachable,
    }
}
