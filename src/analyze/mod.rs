//! Analyze: turn observations into findings, deduplicated by fingerprint, through the lifecycle.

pub mod lifecycle;

use std::collections::{BTreeMap, HashMap};

use lifecycle::{Condition, Timing, Transition};

use crate::knowledge::findings::{self, Finding, FindingState};
use crate::knowledge::{Store, StoreError};
use crate::model::{FindingKind, Integrity, ReleaseObservation, Severity, SignatureState, Subject};

/// The kinds the integrity detector owns.
pub const INTEGRITY_KINDS: [FindingKind; 4] = [
    FindingKind::ChecksumMismatch,
    FindingKind::SignatureInvalid,
    FindingKind::SignatureMissing,
    FindingKind::SignerUntrusted,
];

/// Lifecycle timing per kind. Integrity failures are facts, not noise: they fire at once.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub timing: HashMap<FindingKind, Timing>,
}

impl Rules {
    pub fn timing(&self, kind: FindingKind) -> Timing {
        self.timing.get(&kind).copied().unwrap_or_default()
    }
}

/// What changed in one analysis pass.
#[derive(Debug, Default, Clone)]
pub struct AnalyzeOutput {
    pub fired: Vec<Finding>,
    pub resolved: Vec<Finding>,
    pub open_by_kind: BTreeMap<FindingKind, i64>,
}

/// The integrity conditions an observation shows: `Some(Some(c))` holds, `Some(None)` is clear,
/// and `None` means "cannot tell" (the artifact was unreadable): an open finding of that kind is
/// frozen, neither updated nor resolved.
pub type Judgement = Option<Option<Condition>>;

pub fn integrity_conditions(o: &ReleaseObservation) -> Vec<(FindingKind, Judgement)> {
    let subject = Subject {
        package: o.package.clone(),
        version: Some(o.version.clone()),
    };
    let make = |kind, severity, message: String, labels: Vec<(&str, String)>| Condition {
        kind,
        severity,
        subject: subject.clone(),
        value: 1.0,
        message,
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
            .collect(),
    };
    let unreadable = matches!(o.integrity, Integrity::Unreadable { .. });
    let checksum: Judgement = match &o.integrity {
        Integrity::Mismatch { recorded, computed } => Some(Some(make(
            FindingKind::ChecksumMismatch,
            Severity::Critical,
            format!("{subject}: artifact hashes to {computed}, recorded checksum is {recorded}"),
            vec![
                ("recorded", recorded.clone()),
                ("computed", computed.clone()),
            ],
        ))),
        Integrity::Unreadable { .. } => None,
        _ => Some(None),
    };
    let signer = o.signer.clone().unwrap_or_default();
    let (invalid, missing, untrusted): (Judgement, Judgement, Judgement) = match o.signature {
        SignatureState::Valid => (Some(None), Some(None), Some(None)),
        SignatureState::Invalid => (
            Some(Some(make(
                FindingKind::SignatureInvalid,
                Severity::Critical,
                format!("{subject}: signature by `{signer}` does not verify"),
                vec![("signer", signer.clone())],
            ))),
            Some(None),
            Some(None),
        ),
        SignatureState::Missing => (
            Some(None),
            Some(Some(make(
                FindingKind::SignatureMissing,
                Severity::Warning,
                format!("{subject}: release is not signed"),
                vec![],
            ))),
            Some(None),
        ),
        SignatureState::UnknownKey | SignatureState::RevokedKey => {
            let why = if o.signature == SignatureState::RevokedKey {
                "revoked"
            } else {
                "unknown"
            };
            (
                // Whether the bytes verify is moot when the key is not trusted.
                if unreadable { None } else { Some(None) },
                Some(None),
                Some(Some(make(
                    FindingKind::SignerUntrusted,
                    Severity::Critical,
                    format!("{subject}: signed by {why} key `{signer}`"),
                    vec![("signer", signer.clone()), ("reason", why.to_string())],
                ))),
            )
        }
        SignatureState::Unverifiable => (None, Some(None), Some(None)),
    };
    vec![
        (FindingKind::ChecksumMismatch, checksum),
        (FindingKind::SignatureInvalid, invalid),
        (FindingKind::SignatureMissing, missing),
        (FindingKind::SignerUntrusted, untrusted),
    ]
}

/// One analysis pass over the observations of this cycle, plus the passage of time for open findings.
pub async fn cycle(
    store: &Store,
    observations: &[ReleaseObservation],
    rules: &Rules,
    now: i64,
) -> Result<AnalyzeOutput, StoreError> {
    let open = store.open_findings().await?;
    let mut by_fingerprint: HashMap<String, Finding> = open
        .into_iter()
        .map(|f| (f.fingerprint.clone(), f))
        .collect();
    let mut transitions = Vec::new();
    for o in observations {
        let subject = Subject {
            package: o.package.clone(),
            version: Some(o.version.clone()),
        };
        for (kind, judgement) in integrity_conditions(o) {
            let fingerprint = Finding::fingerprint_of(kind, &subject);
            let timing = rules.timing(kind);
            let existing = by_fingerprint.remove(&fingerprint);
            let t = match (existing, judgement) {
                (Some(f), Some(Some(c))) => Some(lifecycle::holds(f, c, timing, now)),
                (None, Some(Some(c))) => Some(lifecycle::open(c, timing, now)),
                // Cannot tell: the finding stays as it is, and out of the time-only pass.
                (Some(_), None) => None,
                (Some(f), Some(None)) => Some(lifecycle::clears(f, timing, now)),
                (None, _) => None,
            };
            transitions.extend(t);
        }
    }
    // Findings not observed this cycle move with time only.
    for f in by_fingerprint.values() {
        transitions.extend(lifecycle::tick(f, rules.timing(f.kind), now));
    }
    let mut out = AnalyzeOutput::default();
    if !transitions.is_empty() {
        let mut tx = store.begin().await?;
        for t in transitions {
            match t {
                Transition::Opened(f) => {
                    findings::insert(&mut tx, &f).await?;
                    if f.state == FindingState::Firing {
                        out.fired.push(f);
                    }
                }
                Transition::Fired(f) => {
                    findings::update(&mut tx, &f).await?;
                    out.fired.push(f);
                }
                Transition::Updated(f) => findings::update(&mut tx, &f).await?,
                Transition::Resolved(f) => {
                    findings::update(&mut tx, &f).await?;
                    out.resolved.push(f);
                }
            }
        }
        tx.commit().await?;
    }
    for f in store.open_findings().await? {
        *out.open_by_kind.entry(f.kind).or_default() += 1;
    }
    Ok(out)
}
