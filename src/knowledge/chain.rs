//! Verifying the audit chain: every sequence number, link and hash, and the signatures (the head's, which the chain extends to every entry before it, or every entry's own), streamed from the store a page at a time.

use super::audit::{AuditEntry, GENESIS, PAGE};
use super::{Store, StoreError};
use crate::keys::verify_hex;
use ed25519_dalek::VerifyingKey;

/// The first place where the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq}: {reason}")]
pub struct ChainBreak {
    pub seq: i64,
    pub reason: String,
}

/// Which signatures are checked besides every link and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    /// The last entry's. Its hash covers its content and the hash of the entry before it, and
    /// so on back to the first: a valid signature on it vouches for every entry, and any entry
    /// altered, removed or added since would break a hash, a link or that signature.
    Head,
    /// Every entry's own as well, so that each entry stands on its own (as in an excerpt);
    /// what this adds is naming an entry whose signature alone was damaged or forged.
    Every,
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

/// Entries whose signatures are checked together in one batch equation (above ~200 the
/// multi-scalar multiplication switches to Pippenger's method and gets cheaper per entry).
const BATCH: usize = 1024;

/// The first entry of `part` that is wrong on its own, as (index in `part`, why). Hashes are
/// checked one by one; with [`Signatures::Every`], signatures in batches (a batch that fails
/// is checked again entry by entry to name the first bad one).
fn first_bad(
    part: &[AuditEntry],
    key: &VerifyingKey,
    signatures: Signatures,
) -> Option<(usize, &'static str)> {
    if signatures == Signatures::Head {
        return part
            .iter()
            .position(|e| e.compute_hash() != e.hash)
            .map(|i| (i, "altered: its content does not match its hash"));
    }
    for (b, batch) in part.chunks(BATCH).enumerate() {
        let mut decoded = Vec::with_capacity(batch.len());
        let mut suspect = false;
        for e in batch {
            if e.compute_hash() != e.hash {
                suspect = true;
                break;
            }
            match hex::decode(e.signature.trim())
                .ok()
                .and_then(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
            {
                Some(s) => decoded.push(s),
                None => {
                    suspect = true;
                    break;
                }
            }
        }
        if !suspect {
            let messages: Vec<&[u8]> = batch.iter().map(|e| e.hash.as_bytes()).collect();
            let keys = vec![*key; batch.len()];
            suspect = ed25519_dalek::verify_batch(&messages, &decoded, &keys).is_err();
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

/// [`first_bad`] over `entries` split across every core.
fn first_bad_parallel(
    entries: &[AuditEntry],
    key: &VerifyingKey,
    signatures: Signatures,
) -> Option<(usize, &'static str)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let chunk = entries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    first_bad(part, key, signatures).map(|(i, why)| (c * chunk + i, why))
                })
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
    })
}

/// A chain checked in order, a page at a time; [`ChainCheck::finish`] gives the verdict.
pub struct ChainCheck {
    key: VerifyingKey,
    signatures: Signatures,
    checked: usize,
    prev: String,
    /// The last entry seen, whose signature vouches for the chain in [`Signatures::Head`].
    head: Option<(i64, String, String)>,
}

impl ChainCheck {
    pub fn new(key: VerifyingKey, signatures: Signatures) -> Self {
        Self {
            key,
            signatures,
            checked: 0,
            prev: GENESIS.to_string(),
            head: None,
        }
    }

    /// Checks the next entries of the chain; the first break (by sequence) is the error.
    pub fn page(&mut self, entries: &[AuditEntry]) -> Result<(), ChainBreak> {
        let first_bad = first_bad_parallel(entries, &self.key, self.signatures);
        for (i, e) in entries.iter().enumerate() {
            let expected_seq = self.checked as i64 + 1;
            if e.seq != expected_seq {
                return Err(ChainBreak {
                    seq: expected_seq,
                    reason: format!("missing (the next entry present is {})", e.seq),
                });
            }
            if e.prev_hash != self.prev {
                return Err(ChainBreak {
                    seq: e.seq,
                    reason:
                        "does not link to the entry before it (that entry was altered or removed)"
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
            self.prev.clone_from(&e.hash);
            self.checked += 1;
        }
        if let Some(last) = entries.last() {
            self.head = Some((last.seq, last.hash.clone(), last.signature.clone()));
        }
        Ok(())
    }

    /// How many entries verified, once the head's signature is checked (in
    /// [`Signatures::Head`]; in [`Signatures::Every`] it already was).
    pub fn finish(self) -> Result<usize, ChainBreak> {
        if let (Signatures::Head, Some((seq, hash, signature))) = (self.signatures, &self.head) {
            if !verify_hex(&self.key, hash.as_bytes(), signature) {
                return Err(ChainBreak {
                    seq: *seq,
                    reason: "the head's signature does not verify with the daemon's key, so \
                             nothing before it is vouched for (`--every-signature` names the \
                             first entry whose own signature fails)"
                        .into(),
                });
            }
        }
        Ok(self.checked)
    }
}

/// Checks sequence, links, hashes and every entry's signature; returns how many entries
/// verified, or the first entry (by sequence) where the chain breaks.
pub fn verify_chain(entries: &[AuditEntry], key: &VerifyingKey) -> Result<usize, ChainBreak> {
    verify_chain_with(entries, key, Signatures::Every)
}

/// [`verify_chain`] with a choice of which signatures are checked.
pub fn verify_chain_with(
    entries: &[AuditEntry],
    key: &VerifyingKey,
    signatures: Signatures,
) -> Result<usize, ChainBreak> {
    let mut check = ChainCheck::new(*key, signatures);
    for page in entries.chunks(PAGE as usize) {
        check.page(page)?;
    }
    check.finish()
}

impl Store {
    /// Verifies the whole stored chain, reading the next page while the last one is checked;
    /// memory stays at two pages whatever the length of the log.
    pub async fn verify_audit(
        &self,
        key: &VerifyingKey,
        signatures: Signatures,
    ) -> Result<Result<usize, ChainBreak>, StoreError> {
        self.verify_audit_paged(key, signatures, PAGE).await
    }

    /// [`Store::verify_audit`] with pages of `page_size` entries.
    pub async fn verify_audit_paged(
        &self,
        key: &VerifyingKey,
        signatures: Signatures,
        page_size: i64,
    ) -> Result<Result<usize, ChainBreak>, StoreError> {
        type Checked = (ChainCheck, Result<(), ChainBreak>);
        let mut idle = Some(ChainCheck::new(*key, signatures));
        let mut running: Option<tokio::task::JoinHandle<Checked>> = None;
        let mut after = 0;
        loop {
            let page = self.audit_page(after, page_size.max(1)).await?;
            if let Some(h) = running.take() {
                match h.await {
                    Ok((check, Ok(()))) => idle = Some(check),
                    Ok((_, Err(b))) => return Ok(Err(b)),
                    Err(_) => {
                        return Ok(Err(ChainBreak {
                            seq: after,
                            reason: "could not be checked (a verifier thread failed)".into(),
                        }))
                    }
                }
            }
            let Some(last) = page.last() else { break };
            after = last.seq;
            let Some(mut check) = idle.take() else { break };
            running = Some(tokio::task::spawn_blocking(move || {
                let r = check.page(&page);
                (check, r)
            }));
        }
        Ok(match idle {
            Some(check) => check.finish(),
            None => Err(ChainBreak {
                seq: after,
                reason: "could not be checked".into(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;

    /// A valid chain of `n` entries, built in memory.
    fn chain(key: &KeyPair, n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = AuditEntry {
                    seq,
                    at: seq,
                    kind: crate::model::AuditKind::RemediationExecuted.to_string(),
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
        let mut entries = chain(&key, 2_500);
        assert_eq!(verify_chain(&entries, &key.public()), Ok(2_500));
        // A signature by another key over the right hash: only the signature check catches it,
        // in a batch of its own and on whichever thread holds entry 1517.
        let other = KeyPair::from_seed("other", [4; 32]);
        entries[1516].signature = other.sign(entries[1516].hash.as_bytes());
        entries[2100].signature = "not hex".into();
        let b = verify_chain(&entries, &key.public()).expect_err("forged");
        assert_eq!(b.seq, 1517);
        assert!(b.reason.contains("signature"), "{b}");
        // The head alone vouches for the content: that entry's content is intact, so only the
        // full check names it.
        assert_eq!(
            verify_chain_with(&entries, &key.public(), Signatures::Head),
            Ok(2_500)
        );
    }

    #[test]
    fn through_the_head_a_rewritten_tail_or_a_forged_head_is_caught() {
        let key = KeyPair::from_seed("daemon", [3; 32]);
        let other = KeyPair::from_seed("other", [4; 32]);
        let mut entries = chain(&key, 50);
        assert_eq!(
            verify_chain_with(&entries, &key.public(), Signatures::Head),
            Ok(50)
        );
        // Entry 20 altered and every hash after it recomputed (consistent links), re-signed by
        // someone without the daemon's key: only the head's signature can tell.
        entries[19].subject = "pkg-other@1.0.0".into();
        for i in 19..50 {
            if i > 19 {
                entries[i].prev_hash = entries[i - 1].hash.clone();
            }
            entries[i].hash = entries[i].compute_hash();
            entries[i].signature = other.sign(entries[i].hash.as_bytes());
        }
        let b = verify_chain_with(&entries, &key.public(), Signatures::Head).expect_err("forged");
        assert_eq!(b.seq, 50);
        assert!(b.reason.contains("head's signature"), "{b}");
        assert_eq!(
            verify_chain(&entries, &key.public()).map_err(|b| b.seq),
            Err(20)
        );
        // An entry altered in place is named by its hash in either mode.
        let mut altered = chain(&key, 50);
        altered[30].detail = "{\"changed\":false}".into();
        for signatures in [Signatures::Head, Signatures::Every] {
            let b = verify_chain_with(&altered, &key.public(), signatures).expect_err("altered");
            assert_eq!(b.seq, 31);
            assert!(b.reason.contains("altered"), "{b}");
        }
    }
}
