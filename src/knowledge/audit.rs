//! The audit log: an append-only hash chain of what the daemon did, each entry signed by the daemon.
//!
//! Chain rule: `hash = sha256(canonical)` in lower-case hex, where `canonical` is the compact JSON
//! object `{"seq","at","kind","actor","subject","remediation_id","detail","prev_hash"}` in exactly
//! that order (`detail` is the stored JSON text, as a string); `prev_hash` is the previous entry's
//! `hash`, or 64 zeros for entry 1; `signature` is Ed25519 over the ASCII bytes of `hash`.

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Executor, Row};

use super::{Conn, Store, StoreError};
use crate::keys::{verify_hex, KeyPair};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub remediation_id: Option<String>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    pub signature: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    at: i64,
    kind: &'a str,
    actor: &'a str,
    subject: &'a str,
    remediation_id: Option<&'a str>,
    detail: &'a str,
    prev_hash: &'a str,
}

impl AuditEntry {
    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::to_vec(&Canonical {
            seq: self.seq,
            at: self.at,
            kind: &self.kind,
            actor: &self.actor,
            subject: &self.subject,
            remediation_id: self.remediation_id.as_deref(),
            detail: &self.detail,
            prev_hash: &self.prev_hash,
        })
        .unwrap_or_default();
        hex::encode(Sha256::digest(&canonical))
    }
}

/// What is recorded; the chain fields are filled in by [`append`].
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub remediation_id: Option<String>,
    pub detail: serde_json::Value,
}

impl NewEntry {
    /// An entry of the daemon's about remediation `r` (its subject and id).
    pub fn about(
        r: &super::remediations::Remediation,
        now: i64,
        kind: &str,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            at: now,
            kind: kind.into(),
            actor: "daemon".into(),
            subject: r.subject.to_string(),
            remediation_id: Some(r.id.clone()),
            detail,
        }
    }
}

/// Appends an entry inside the caller's transaction, so it commits with the change it records.
pub async fn append(
    conn: &mut Conn,
    key: &KeyPair,
    new: NewEntry,
) -> Result<AuditEntry, StoreError> {
    let last = conn
        .fetch_optional(sqlx::query(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
        ))
        .await?;
    let (seq, prev_hash) = match last {
        Some(row) => (row.try_get::<i64, _>(0)? + 1, row.try_get::<String, _>(1)?),
        None => (1, GENESIS.to_string()),
    };
    let mut entry = AuditEntry {
        seq,
        at: new.at,
        kind: new.kind,
        actor: new.actor,
        subject: new.subject,
        remediation_id: new.remediation_id,
        detail: new.detail.to_string(),
        prev_hash,
        hash: String::new(),
        signature: String::new(),
    };
    entry.hash = entry.compute_hash();
    entry.signature = key.sign(entry.hash.as_bytes());
    conn.execute(
        sqlx::query(
            "INSERT INTO audit_log (seq, at, kind, actor, subject, remediation_id, detail, prev_hash, hash, signature) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        )
        .bind(entry.seq)
        .bind(entry.at)
        .bind(entry.kind.clone())
        .bind(entry.actor.clone())
        .bind(entry.subject.clone())
        .bind(entry.remediation_id.clone())
        .bind(entry.detail.clone())
        .bind(entry.prev_hash.clone())
        .bind(entry.hash.clone())
        .bind(entry.signature.clone()),
    )
    .await?;
    Ok(entry)
}

fn decode(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        subject: row.try_get("subject")?,
        remediation_id: row.try_get("remediation_id")?,
        detail: row.try_get("detail")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        signature: row.try_get("signature")?,
    })
}

impl Store {
    /// Appends one entry in a transaction of its own (an event that changes nothing else).
    pub async fn record(&self, key: &KeyPair, new: NewEntry) -> Result<AuditEntry, StoreError> {
        let mut tx = self.begin().await?;
        let entry = append(&mut tx, key, new).await?;
        tx.commit().await?;
        Ok(entry)
    }

    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, actor, subject, remediation_id, detail, prev_hash, hash, signature \
             FROM audit_log ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}

/// The first place where the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq}: {reason}")]
pub struct ChainBreak {
    pub seq: i64,
    pub reason: String,
}

/// What is wrong with one entry on its own (its hash or its signature), if anything.
fn check_entry(e: &AuditEntry, key: &VerifyingKey) -> Option<&'static str> {
    if e.compute_hash() != e.hash {
        return Some("altered: its content does not match its hash");
    }
    if !verify_hex(key, e.hash.as_bytes(), &e.signature) {
        return Some("its signature does not verify with the daemon's key");
    }
    None
}

/// Entries whose signatures are checked together in one batch equation.
const BATCH: usize = 128;

/// The first entry of `part` that is wrong on its own, as (index in `part`, why). Hashes are
/// checked one by one; signatures in batches (about twice as fast as one by one), and a batch
/// that fails is checked again entry by entry to name the first bad one.
fn first_bad(part: &[AuditEntry], key: &VerifyingKey) -> Option<(usize, &'static str)> {
    for (b, batch) in part.chunks(BATCH).enumerate() {
        let mut signatures = Vec::with_capacity(batch.len());
        let mut suspect = false;
        for e in batch {
            if e.compute_hash() != e.hash {
                suspect = true;
                break;
            }
            let decoded = hex::decode(e.signature.trim())
                .ok()
                .and_then(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok());
            match decoded {
                Some(s) => signatures.push(s),
                None => {
                    suspect = true;
                    break;
                }
            }
        }
        if !suspect {
            let messages: Vec<&[u8]> = batch.iter().map(|e| e.hash.as_bytes()).collect();
            let keys = vec![*key; batch.len()];
            suspect = ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_err();
        }
        if suspect {
            if let Some((i, why)) = batch
                .iter()
                .enumerate()
                .find_map(|(i, e)| check_entry(e, key).map(|why| (i, why)))
            {
                return Some((b * BATCH + i, why));
            }
        }
    }
    None
}

/// Checks sequence, links, hashes and signatures; returns how many entries verified, or the
/// first entry (by sequence) where the chain breaks. Hashes and signatures are independent per
/// entry and are checked on every core; the links are then followed in order.
pub fn verify_chain(entries: &[AuditEntry], key: &VerifyingKey) -> Result<usize, ChainBreak> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let chunk = entries.len().div_ceil(threads).max(1);
    let first_bad: Option<(usize, &'static str)> = std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || first_bad(part, key).map(|(i, why)| (c * chunk + i, why)))
            })
            .collect();
        // A checking thread that died proves nothing: its whole part counts as unverified.
        handles
            .into_iter()
            .enumerate()
            .filter_map(|(c, h)| {
                h.join().unwrap_or(Some((
                    c * chunk,
                    "could not be checked (a verifier thread failed)",
                )))
            })
            .min_by_key(|(i, _)| *i)
    });
    let mut prev = GENESIS;
    for (i, e) in entries.iter().enumerate() {
        let expected_seq = i as i64 + 1;
        if e.seq != expected_seq {
            return Err(ChainBreak {
                seq: expected_seq,
                reason: format!("missing (the next entry present is {})", e.seq),
            });
        }
        if e.prev_hash != prev {
            return Err(ChainBreak {
                seq: e.seq,
                reason: "does not link to the entry before it (that entry was altered or removed)"
                    .into(),
            });
        }
        if let Some((bad, why)) = first_bad {
            if bad == i {
                return Err(ChainBreak {
                    seq: e.seq,
                    reason: why.into(),
                });
            }
        }
        prev = &e.hash;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid chain of `n` entries, built in memory.
    fn chain(key: &KeyPair, n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = AuditEntry {
                    seq,
                    at: seq,
                    kind: "remediation.executed".into(),
                    actor: "daemon".into(),
                    subject: format!("pkg-{seq}@1.0.0"),
                    remediation_id: None,
                    detail: "{}".into(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                    signature: String::new(),
                };
                e.hash = e.compute_hash();
                e.signature = key.sign(e.hash.as_bytes());
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn a_bad_signature_deep_in_a_batch_is_named_and_a_good_chain_passes() {
        let key = KeyPair::from_seed("daemon", [3; 32]);
        let mut entries = chain(&key, 700);
        assert_eq!(verify_chain(&entries, &key.public()), Ok(700));
        // A signature by another key over the right hash: only the signature check catches it,
        // in a batch of its own and on whichever thread holds entry 517.
        let other = KeyPair::from_seed("other", [4; 32]);
        entries[516].signature = other.sign(entries[516].hash.as_bytes());
        entries[600].signature = "not hex".into();
        let b = verify_chain(&entries, &key.public()).expect_err("forged");
        assert_eq!(b.seq, 517);
        assert!(b.reason.contains("signature"), "{b}");
    }
}
