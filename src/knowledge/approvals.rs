//! Maintainers' decisions on waiting remediations: signed approvals and rejections, each key once.

use serde::Serialize;
use sqlx::{Executor, Row};
use std::collections::HashMap;

use super::{Conn, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Self::Approve),
            "reject" => Some(Self::Reject),
            _ => None,
        }
    }
}

/// One maintainer's signed decision on one remediation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Approval {
    pub remediation_id: String,
    pub key_id: String,
    pub decision: Decision,
    pub at: i64,
    pub signature: String,
}

impl Approval {
    /// The bytes a maintainer signs: the decision bound to the remediation's identity and its
    /// daemon signature, so an approval cannot be moved to another remediation.
    pub fn signing_bytes(
        decision: Decision,
        remediation_id: &str,
        remediation_signature: &str,
        key_id: &str,
        at: i64,
    ) -> Vec<u8> {
        format!(
            "mapek-approval\n{}\n{remediation_id}\n{remediation_signature}\n{key_id}\n{at}",
            decision.as_str()
        )
        .into_bytes()
    }
}

/// Records a decision; false when this key already decided on this remediation.
pub async fn insert(conn: &mut Conn, a: &Approval) -> Result<bool, StoreError> {
    let done = conn
        .execute(
            sqlx::query(
                "INSERT INTO approvals (remediation_id, key_id, decision, at, signature) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (remediation_id, key_id) DO NOTHING",
            )
            .bind(a.remediation_id.clone())
            .bind(a.key_id.clone())
            .bind(a.decision.as_str())
            .bind(a.at)
            .bind(a.signature.clone()),
        )
        .await?;
    super::announce(conn).await?;
    Ok(done.rows_affected() == 1)
}

impl Store {
    /// Every decision recorded on one remediation, in the order they came.
    pub async fn approvals_of(&self, remediation_id: &str) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query(
            "SELECT remediation_id, key_id, decision, at, signature FROM approvals \
             WHERE remediation_id = $1 ORDER BY at, key_id",
        )
        .bind(remediation_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let decision: String = r.try_get(2)?;
                Ok(Approval {
                    remediation_id: r.try_get(0)?,
                    key_id: r.try_get(1)?,
                    decision: Decision::parse(&decision).ok_or_else(|| {
                        StoreError::Corrupt(format!("approval decision `{decision}`"))
                    })?,
                    at: r.try_get(3)?,
                    signature: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Every decision on remediations that wait for approval, by remediation id.
    pub async fn pending_approvals(&self) -> Result<HashMap<String, Vec<Approval>>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.remediation_id, a.key_id, a.decision, a.at, a.signature FROM approvals a \
             JOIN remediations r ON r.id = a.remediation_id WHERE r.status = 'pending' \
             ORDER BY a.remediation_id, a.at, a.key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<String, Vec<Approval>> = HashMap::new();
        for r in rows {
            let decision: String = r.try_get(2)?;
            let a = Approval {
                remediation_id: r.try_get(0)?,
                key_id: r.try_get(1)?,
                decision: Decision::parse(&decision).ok_or_else(|| {
                    StoreError::Corrupt(format!("approval decision `{decision}`"))
                })?,
                at: r.try_get(3)?,
                signature: r.try_get(4)?,
            };
            out.entry(a.remediation_id.clone()).or_default().push(a);
        }
        Ok(out)
    }
}
