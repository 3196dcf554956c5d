//! The audit log: an append-only hash chain of what the daemon did, each entry signed by the daemon.
//!
//! Chain rule: `hash = sha256(canonical)` in lower-case hex, where `canonical` is the compact JSON
//! object `{"seq","at","kind","actor","subject","remediation_id","detail","prev_hash"}` in exactly
//! that order (`detail` is the stored JSON text, as a string); `prev_hash` is the previous entry's
//! `hash`, or 64 zeros for entry 1; `signature` is Ed25519 over the ASCII bytes of `hash`.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Executor, Row};

use super::{Backend, Conn, Store, StoreError};
use crate::keys::KeyPair;
use crate::model::AuditKind;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields are in the order of the table's columns: [`Store::audit_page`] reads each entry
/// as an array in this order.
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
    pub kind: AuditKind,
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
        kind: AuditKind,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            at: now,
            kind,
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
        kind: new.kind.to_string(),
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

impl Store {
    /// Appends one entry in a transaction of its own (an event that changes nothing else).
    pub async fn record(&self, key: &KeyPair, new: NewEntry) -> Result<AuditEntry, StoreError> {
        let mut tx = self.begin().await?;
        let entry = append(&mut tx, key, new).await?;
        tx.commit().await?;
        Ok(entry)
    }

    /// The whole log, oldest first, read a page at a time.
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        loop {
            let after = entries.last().map_or(0, |e| e.seq);
            let page = self.audit_page(after, PAGE).await?;
            if page.is_empty() {
                return Ok(entries);
            }
            entries.extend(page);
        }
    }

    /// Up to `limit` entries after sequence `after`, in order. The database encodes the page
    /// as one JSON array: reading rows one by one costs ~15 us each through the driver, a
    /// page ~1 us an entry.
    pub async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT json_group_array(json_array(seq, at, kind, actor, subject, remediation_id, \
                 detail, prev_hash, hash, signature) ORDER BY seq) \
                 FROM (SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2)"
            }
            Backend::Postgres => {
                "SELECT COALESCE(json_agg(json_build_array(seq, at, kind, actor, subject, \
                 remediation_id, detail, prev_hash, hash, signature) ORDER BY seq), '[]'::json)::text \
                 FROM (SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2) AS page"
            }
        };
        let row = sqlx::query(sql)
            .bind(after)
            .bind(limit)
            .fetch_one(&self.pool)
            .await?;
        let text: String = row.try_get(0)?;
        // Each entry is an array of the columns in the order of AuditEntry's fields, which
        // serde reads into the struct as it is.
        serde_json::from_str(&text).map_err(|e| {
            StoreError::Corrupt(format!(
                "audit_log after seq {after}: a page of entries: {e}"
            ))
        })
    }
}

impl Store {
    /// The entries about one remediation (its plan, execution, verification, approvals,
    /// rollback), oldest first, at most 1,000 (for `mapek explain`).
    pub async fn audit_entries_of(
        &self,
        remediation_id: &str,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_where("remediation_id = $1", remediation_id.to_string())
            .await
    }

    /// One entry by its sequence number.
    pub async fn audit_entry(&self, seq: i64) -> Result<Option<AuditEntry>, StoreError> {
        let page = self.audit_page(seq - 1, 1).await?;
        Ok(page.into_iter().find(|e| e.seq == seq))
    }

    async fn audit_where(
        &self,
        clause: &str,
        value: String,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => format!(
                "SELECT json_group_array(json_array(seq, at, kind, actor, subject, remediation_id, \
                 detail, prev_hash, hash, signature) ORDER BY seq) \
                 FROM (SELECT * FROM audit_log WHERE {clause} ORDER BY seq LIMIT 1000)"
            ),
            Backend::Postgres => format!(
                "SELECT COALESCE(json_agg(json_build_array(seq, at, kind, actor, subject, \
                 remediation_id, detail, prev_hash, hash, signature) ORDER BY seq), '[]'::json)::text \
                 FROM (SELECT * FROM audit_log WHERE {clause} ORDER BY seq LIMIT 1000) AS page"
            ),
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_one(&self.pool)
            .await?;
        let text: String = row.try_get(0)?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("audit_log where {clause}: {e}")))
    }
}

/// Entries read per query when the log is read whole.
pub const PAGE: i64 = 20_000;

pub use super::chain::{verify_chain, ChainBreak};

/// The entries of an exported log (JSON lines, `mapek audit export`); blank lines are skipped.
/// A line that is not an entry is refused with its number (1-based) and why.
pub fn parse_export(text: &str) -> Result<Vec<AuditEntry>, (usize, String)> {
    let mut entries = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        entries.push(serde_json::from_str(line).map_err(|e| (i + 1, e.to_string()))?);
    }
    Ok(entries)
}
