//! The integrity judgements of one observed release: checksum, signature, signer.

use super::lifecycle::Condition;
use crate::model::{FindingKind, Integrity, ReleaseObservation, Severity, SignatureState, Subject};

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
        SignatureState::Valid | SignatureState::Unsigned => (Some(None), Some(None), Some(None)),
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
