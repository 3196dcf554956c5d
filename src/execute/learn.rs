//! Learning: how each policy's remediations turned out, and demotion to dry run of a policy whose remediations keep failing verification or being rolled back.

use crate::keys::KeyPair;
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::findings::{self, Finding};
use crate::knowledge::standing::{self, Outcomes};
use crate::knowledge::{Store, StoreError};
use crate::model::FindingKind;

/// When a policy is demoted (`[learning]` in the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct LearningSettings {
    /// Outcomes of remediations planned longer ago than this are forgotten.
    pub window: std::time::Duration,
    /// At least this many judged remediations (verified either way, or rolled back) before a
    /// policy can be demoted.
    pub min_judged: i64,
    /// Demoted when this fraction of its judged remediations failed verification or were
    /// rolled back.
    pub max_bad_fraction: f64,
    /// false: figures are kept and shown, nothing is demoted.
    pub demote: bool,
}

impl Default for LearningSettings {
    fn default() -> Self {
        Self {
            window: std::time::Duration::from_secs(30 * 86_400),
            min_judged: 3,
            max_bad_fraction: 0.5,
            demote: true,
        }
    }
}

impl LearningSettings {
    /// Whether these outcomes call for a demotion.
    pub fn should_demote(&self, o: &Outcomes) -> bool {
        self.demote
            && o.demoted.is_none()
            && o.judged() >= self.min_judged.max(1)
            && o.bad() as f64 >= self.max_bad_fraction * o.judged() as f64
    }
}

#[derive(Debug, Default)]
pub struct LearnOutput {
    /// Every policy's figures, after this pass.
    pub outcomes: Vec<Outcomes>,
    /// Policies demoted by this pass.
    pub demoted: Vec<String>,
}

fn fingerprint(policy: &str) -> String {
    format!("policy_ineffective:policy/{policy}")
}

/// Counts every policy's outcomes and demotes those that keep failing.
pub async fn cycle(
    store: &Store,
    key: &KeyPair,
    settings: &LearningSettings,
    now: i64,
) -> Result<LearnOutput, StoreError> {
    let window = i64::try_from(settings.window.as_millis()).unwrap_or(i64::MAX);
    let mut out = LearnOutput {
        outcomes: store.policy_outcomes(now.saturating_sub(window)).await?,
        ..LearnOutput::default()
    };
    for o in &mut out.outcomes {
        if !settings.should_demote(o) {
            continue;
        }
        let reason = format!(
            "{} of its last {} judged remediations failed verification ({}) or were rolled back ({})",
            o.bad(),
            o.judged(),
            o.failed_verification,
            o.rolled_back
        );
        let mut labels = serde_json::Map::new();
        labels.insert("policy".into(), o.policy.clone().into());
        labels.insert("effective".into(), o.effective.into());
        labels.insert("failed_verification".into(), o.failed_verification.into());
        labels.insert("rolled_back".into(), o.rolled_back.into());
        let finding = Finding::raised(
            FindingKind::PolicyIneffective,
            crate::model::daemon_subject(),
            fingerprint(&o.policy),
            format!(
                "policy `{}` is demoted to dry_run: {reason}; re-enable it with `mapek policy enable {}`",
                o.policy, o.policy
            ),
            labels,
            now,
        );
        let mut tx = store.begin().await?;
        standing::demote(&mut tx, &o.policy, &reason, now).await?;
        findings::insert(&mut tx, &finding).await?;
        audit::append(
            &mut tx,
            key,
            NewEntry {
                at: now,
                kind: crate::model::AuditKind::PolicyDemoted,
                actor: "daemon".into(),
                subject: format!("policy/{}", o.policy),
                remediation_id: None,
                detail: serde_json::to_value(&*o).unwrap_or_default(),
            },
        )
        .await?;
        tx.commit().await?;
        o.demoted = Some(reason);
        out.demoted.push(o.policy.clone());
    }
    Ok(out)
}

/// A maintainer re-enables a demoted policy (`mapek policy enable`): it acts again in its own
/// mode, its `policy_ineffective` finding resolves, and its outcomes count afresh. False when
/// it was not demoted.
pub async fn enable(
    store: &Store,
    key: &KeyPair,
    policy: &str,
    actor: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let open: Vec<Finding> = store
        .open_findings_of(FindingKind::PolicyIneffective)
        .await?
        .into_iter()
        .filter(|f| f.fingerprint == fingerprint(policy))
        .collect();
    let mut tx = store.begin().await?;
    if !standing::enable(&mut tx, policy, now).await? {
        return Ok(false);
    }
    for mut f in open {
        f.resolve(now);
        findings::update(&mut tx, &f).await?;
    }
    audit::append(
        &mut tx,
        key,
        NewEntry {
            at: now,
            kind: crate::model::AuditKind::PolicyEnabled,
            actor: actor.into(),
            subject: format!("policy/{policy}"),
            remediation_id: None,
            detail: serde_json::json!({ "reason": "re-enabled by a maintainer" }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
