//! The words the stages exchange about a remediation: its policy's mode, the gate that holds it, what verification found.
//!
//! Each is an enum with one spelling, shared by serde (JSON, TOML), `Display`, `FromStr` and
//! the store's columns: a misspelt mode or gate is a compile error, not a silent mismatch.

use serde::{Deserialize, Serialize};

/// Generates the conversions every vocabulary enum has: `as_str`, `parse`, `ALL`.
macro_rules! words {
    ($t:ty) => {
        impl $t {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;
            /// The one spelling of this value.
            pub fn as_str(self) -> &'static str {
                self.into()
            }
            /// The value spelt `s`, if any.
            pub fn parse(s: &str) -> Option<Self> {
                s.parse().ok()
            }
        }
    };
}
pub(crate) use words;

/// What a policy does with its remediations.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Mode {
    /// Applies them.
    Enforce,
    /// Records them without applying.
    DryRun,
    /// Holds them until enough maintainers approve.
    Approve,
}
words!(Mode);

/// The gate that stopped or holds a remediation (see docs/policies.md, "Gates").
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Gate {
    /// Waiting for, or rejected by, maintainers.
    Approval,
    /// The policy or the daemon is in dry run.
    DryRun,
    /// Outside the policy's `window`.
    Window,
    /// The policy acted on this subject within its `cooldown`.
    Cooldown,
    /// The policy's `max_per_hour` is spent.
    MaxPerHour,
    /// A freeze of the guards is on.
    Freeze,
    /// The circuit breaker is open.
    Circuit,
    /// A global guard (blast radius, actions per cycle, packages per day) refused it.
    Guards,
    /// The policy was demoted to dry run by learning.
    Demoted,
}
words!(Gate);

/// What verification found of an executed remediation, as stored.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Verification {
    /// Its finding cleared.
    Effective,
    /// Its finding had not cleared.
    Ineffective,
    /// Nothing to judge it by: its finding is gone, or it had none.
    Unverifiable,
}
words!(Verification);

/// A call of the admin API, as audited and counted (`admin.<call>` entries,
/// `mapek_admin_requests_total{endpoint}`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AdminCall {
    Status,
    Pause,
    Resume,
    Reload,
    Plans,
    Decide,
    Rollback,
    CircuitClose,
    Explain,
}
words!(AdminCall);

/// What an audit entry records: its `kind` column. Entries already stored keep their text
/// (an older daemon may have written a kind this one does not know); new ones are written only
/// through this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// A remediation's effect was applied.
    RemediationExecuted,
    /// A remediation was recorded without being applied.
    RemediationDryRun,
    /// The executor refused a remediation (its signature does not verify).
    RemediationRefused,
    /// Applying a remediation failed.
    RemediationFailed,
    /// Verification judged a remediation.
    RemediationVerified,
    /// A remediation was undone by `mapek rollback`.
    RemediationRollback,
    /// A maintainer approved a remediation.
    RemediationApprove,
    /// A maintainer rejected a remediation.
    RemediationReject,
    /// Learning demoted a policy to dry run.
    PolicyDemoted,
    /// A demoted policy was enabled again.
    PolicyEnabled,
    /// The circuit breaker opened.
    CircuitOpen,
    /// The circuit breaker was closed.
    CircuitClose,
    /// A hold on a package ended.
    HoldReleased,
    /// This daemon became the leader.
    LeaderAcquired,
    /// Old telemetry was compacted.
    RetentionCompacted,
    /// A notice was delivered.
    NoticeDelivered,
    /// A notice could not be delivered, for good.
    NoticeFailed,
    /// A call of the admin API.
    Admin(AdminCall),
}

impl AuditKind {
    /// The kinds with no parameter, for listing and tests.
    pub const FIXED: [Self; 17] = [
        Self::RemediationExecuted,
        Self::RemediationDryRun,
        Self::RemediationRefused,
        Self::RemediationFailed,
        Self::RemediationVerified,
        Self::RemediationRollback,
        Self::RemediationApprove,
        Self::RemediationReject,
        Self::PolicyDemoted,
        Self::PolicyEnabled,
        Self::CircuitOpen,
        Self::CircuitClose,
        Self::HoldReleased,
        Self::LeaderAcquired,
        Self::RetentionCompacted,
        Self::NoticeDelivered,
        Self::NoticeFailed,
    ];

    /// The kind as the `kind` column holds it.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        let fixed = match self {
            Self::RemediationExecuted => "remediation.executed",
            Self::RemediationDryRun => "remediation.dry_run",
            Self::RemediationRefused => "remediation.refused",
            Self::RemediationFailed => "remediation.failed",
            Self::RemediationVerified => "remediation.verified",
            Self::RemediationRollback => "remediation.rollback",
            Self::RemediationApprove => "remediation.approve",
            Self::RemediationReject => "remediation.reject",
            Self::PolicyDemoted => "policy.demoted",
            Self::PolicyEnabled => "policy.enabled",
            Self::CircuitOpen => "circuit.open",
            Self::CircuitClose => "circuit.close",
            Self::HoldReleased => "hold.released",
            Self::LeaderAcquired => "leader.acquired",
            Self::RetentionCompacted => "retention.compacted",
            Self::NoticeDelivered => "notice.delivered",
            Self::NoticeFailed => "notice.failed",
            Self::Admin(call) => return format!("admin.{call}").into(),
        };
        fixed.into()
    }

    /// The kind a `kind` column holds, if this daemon knows it.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(call) = s.strip_prefix("admin.") {
            return AdminCall::parse(call).map(Self::Admin);
        }
        Self::FIXED.into_iter().find(|k| k.name() == s)
    }
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for AuditKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for AuditKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown audit kind `{s}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_has_one_spelling_for_serde_display_and_parse() {
        for m in Mode::ALL {
            let json = serde_json::to_string(m).unwrap_or_default();
            assert_eq!(json, format!("\"{m}\""));
            assert_eq!(Mode::parse(m.as_str()), Some(*m));
        }
        for g in Gate::ALL {
            let json = serde_json::to_string(g).unwrap_or_default();
            assert_eq!(json, format!("\"{g}\""));
            assert_eq!(Gate::parse(&g.to_string()), Some(*g));
        }
        for v in Verification::ALL {
            assert_eq!(Verification::parse(v.as_str()), Some(*v));
        }
        assert_eq!(Gate::MaxPerHour.as_str(), "max_per_hour");
        assert_eq!(Mode::DryRun.as_str(), "dry_run");
        assert_eq!(Gate::parse("windows"), None);
        for k in AuditKind::FIXED
            .into_iter()
            .chain(AdminCall::ALL.iter().map(|c| AuditKind::Admin(*c)))
        {
            assert_eq!(AuditKind::parse(&k.to_string()), Some(k), "{k}");
        }
        assert_eq!(
            AuditKind::Admin(AdminCall::CircuitClose).to_string(),
            "admin.circuit_close"
        );
        assert_eq!(AuditKind::parse("remediation.executd"), None);
    }
}
