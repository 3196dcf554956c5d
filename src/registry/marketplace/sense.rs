//! The marketplace's sensors: a pack's tree and archive read and compared, and the problems the spec names judged from them.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

use super::archive::{self, ArchiveError, ArchiveLimits};
use super::catalog::Record;
use super::tree::{FileDigest, PackTree};
use super::Archives;
use crate::model::{FindingKind, Severity, Subject};
use crate::registry::fetch::{FetchError, Fetched, Fetcher};
use crate::registry::Problem;

/// A detached signature of an archive: the key that made it and the signature (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSignature {
    pub signer: String,
    pub signature: String,
}

/// What was read of a pack's archive.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchiveSeen {
    Read {
        sha256: [u8; 32],
        size: u64,
        /// The files it unpacks to, or why it does not unpack.
        content: Result<Vec<FileDigest>, ArchiveError>,
        signature: Option<ArchiveSignature>,
    },
    /// It could not be read (missing, 404, too large): nothing is judged of it.
    Unreadable(String),
}

/// Where a pack's archive is: a path under the archives folder, or a URL.
pub fn location(archives: &Archives, record: &Record) -> String {
    match archives {
        Archives::Dir(d) => d.join(record.archive_name()).display().to_string(),
        Archives::Url(base) => format!("{}/{}", base.trim_end_matches('/'), record.archive_name()),
    }
}

/// Parses a detached signature: `<key id> <signature hex>` on its first line.
pub fn parse_signature(text: &str) -> Option<ArchiveSignature> {
    let mut words = text.split_whitespace();
    let (signer, signature) = (words.next()?, words.next()?);
    (!signer.is_empty() && signature.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
        ArchiveSignature {
            signer: signer.to_string(),
            signature: signature.to_ascii_lowercase(),
        }
    })
}

/// The most an archive file may be, read from a folder (as over HTTP).
fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > max {
        return Err(format!("{}: larger than {max} bytes", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Fetches `url` conditionally: None when the server says it is what it was (and `before` was
/// read from it); a 404 is `Ok(Some(Err))`.
fn fetch_if_changed(
    f: &Fetcher,
    url: &str,
    before: bool,
) -> Result<Option<Result<Vec<u8>, FetchError>>, FetchError> {
    match f.fetch_blocking(url, before) {
        Ok(Fetched::Unchanged { .. }) => Ok(None),
        Ok(Fetched::Fresh { bytes, .. }) => Ok(Some(Ok(bytes))),
        Err(e) if e.unreachable() => Err(e),
        Err(e) => Ok(Some(Err(e))),
    }
}

/// Reads and unpacks a pack's archive (blocking: a worker thread's work). Over HTTP, an archive
/// read before (`before`) is asked for conditionally and, when unchanged, kept as it was seen.
/// An unreachable host is an error: the sensors are failing.
pub fn read_archive(
    archives: &Archives,
    fetcher: Option<&Fetcher>,
    record: &Record,
    max_bytes: u64,
    limits: ArchiveLimits,
    before: Option<&ArchiveSeen>,
) -> Result<ArchiveSeen, FetchError> {
    let at = location(archives, record);
    let (bytes, signature) = match archives {
        Archives::Dir(_) => {
            let bytes = match read_limited(Path::new(&at), max_bytes) {
                Ok(b) => b,
                Err(reason) => return Ok(ArchiveSeen::Unreadable(reason)),
            };
            let sig = std::fs::read_to_string(format!("{at}.sig"))
                .ok()
                .and_then(|t| parse_signature(&t));
            (bytes, sig)
        }
        Archives::Url(_) => {
            let Some(f) = fetcher else {
                return Ok(ArchiveSeen::Unreadable(format!(
                    "{at}: no HTTP client is configured"
                )));
            };
            let known = matches!(before, Some(ArchiveSeen::Read { .. }));
            let bytes = match fetch_if_changed(f, &at, known)? {
                None => None,
                Some(Ok(b)) => Some(b),
                Some(Err(e)) => return Ok(ArchiveSeen::Unreadable(e.to_string())),
            };
            let sig = match fetch_if_changed(f, &format!("{at}.sig"), known)? {
                None => None,
                Some(Ok(b)) => Some(parse_signature(&String::from_utf8_lossy(&b))),
                Some(Err(_)) => Some(None),
            };
            match (bytes, before) {
                // Neither changed: what was seen stands.
                (None, Some(seen)) if sig.is_none() => return Ok(seen.clone()),
                (
                    None,
                    Some(ArchiveSeen::Read {
                        sha256,
                        size,
                        content,
                        signature,
                    }),
                ) => {
                    return Ok(ArchiveSeen::Read {
                        sha256: *sha256,
                        size: *size,
                        content: content.clone(),
                        signature: sig.unwrap_or_else(|| signature.clone()),
                    })
                }
                (Some(b), _) => (b, sig.flatten()),
                (None, _) => match f.get_blocking(&at) {
                    Ok((b, _)) => (b, sig.flatten()),
                    Err(e) if e.unreachable() => return Err(e),
                    Err(e) => return Ok(ArchiveSeen::Unreadable(e.to_string())),
                },
            }
        }
    };
    Ok(ArchiveSeen::Read {
        sha256: Sha256::digest(&bytes).into(),
        size: bytes.len() as u64,
        content: archive::read(&bytes, &record.name, limits),
        signature,
    })
}

fn labels(pairs: Vec<(&str, serde_json::Value)>) -> serde_json::Map<String, serde_json::Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// What differs between an archive's files and the tree's: (added, removed, changed) paths.
pub fn diff(
    archive: &[FileDigest],
    tree: &[FileDigest],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let a: BTreeMap<&str, &[u8; 32]> = archive
        .iter()
        .map(|f| (f.path.as_str(), &f.sha256))
        .collect();
    let t: BTreeMap<&str, &[u8; 32]> = tree.iter().map(|f| (f.path.as_str(), &f.sha256)).collect();
    let added = t
        .keys()
        .filter(|p| !a.contains_key(*p))
        .map(|p| p.to_string())
        .collect();
    let removed = a
        .keys()
        .filter(|p| !t.contains_key(*p))
        .map(|p| p.to_string())
        .collect();
    let changed = t
        .iter()
        .filter(|(p, d)| a.get(*p).is_some_and(|x| x != *d))
        .map(|(p, _)| p.to_string())
        .collect();
    (added, removed, changed)
}

/// A published release's content against its source: the catalog's manifest and ontology
/// fingerprints against the tree, and the archive's files against the tree's. Judged only when
/// the tree is at the record's version (otherwise the catalog is merely behind) and the archive is
/// the one the catalog vouches for (otherwise it is a tampered download, judged as such).
pub fn content_problem(record: &Record, tree: &PackTree, archive: &ArchiveSeen) -> Option<Problem> {
    if tree.manifest.version.as_deref() != Some(record.version.as_str()) {
        return None;
    }
    let mut reasons = Vec::new();
    let mut fields = Vec::new();
    if let (Some(r), Some(t)) = (record.manifest_sha256(), &tree.manifest_sha256) {
        if r != t {
            reasons.push(format!("pack.toml hashes to {t}, the catalog says {r}"));
            fields.push("manifest_sha256");
        }
    }
    if let Some(r) = record.ontology_fingerprint() {
        if r != tree.ontology_fingerprint_sha256 {
            reasons.push(format!(
                "the ontology fingerprints to {}, the catalog says {r}",
                tree.ontology_fingerprint_sha256
            ));
            fields.push("ontology_fingerprint_sha256");
        }
    }
    let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    if let ArchiveSeen::Read {
        sha256, content, ..
    } = archive
    {
        if hex::encode(sha256) == record.sha256 {
            match content {
                Ok(files) => {
                    (added, removed, changed) = diff(files, &tree.files);
                    if !(added.is_empty() && removed.is_empty() && changed.is_empty()) {
                        reasons.push(format!(
                            "the archive differs from the tree: {} changed, {} only in the tree, {} only in the archive",
                            changed.len(),
                            added.len(),
                            removed.len()
                        ));
                        fields.push("archive");
                    }
                }
                Err(e) => {
                    reasons.push(format!("the archive cannot be unpacked: {e}"));
                    fields.push("archive");
                }
            }
        }
    }
    if reasons.is_empty() {
        return None;
    }
    let subject = Subject {
        package: record.name.clone(),
        version: Some(record.version.clone()),
    };
    let take = |v: Vec<String>| {
        v.into_iter()
            .take(20)
            .map(serde_json::Value::from)
            .collect::<Vec<_>>()
    };
    Some(Problem {
        kind: FindingKind::ContentMismatch,
        severity: Severity::Critical,
        message: format!(
            "{subject}: published content no longer matches packs/{}: {}",
            tree.dir,
            reasons.join("; ")
        ),
        subject,
        value: fields.len() as f64,
        labels: labels(vec![
            (
                "fields",
                fields
                    .into_iter()
                    .map(serde_json::Value::from)
                    .collect::<Vec<_>>()
                    .into(),
            ),
            ("changed", take(changed).into()),
            ("only_in_tree", take(added).into()),
            ("only_in_archive", take(removed).into()),
        ]),
    })
}

/// A pack the admission rules refuse.
pub fn refused_problem(tree: &PackTree) -> Option<Problem> {
    if tree.admitted() {
        return None;
    }
    let codes: Vec<serde_json::Value> = tree.refusals.iter().map(|r| r.code.into()).collect();
    let details: Vec<String> = tree.refusals.iter().map(|r| r.to_string()).collect();
    Some(Problem {
        kind: FindingKind::PackRefused,
        severity: Severity::Warning,
        subject: Subject {
            package: tree.dir.clone(),
            version: None,
        },
        value: details.len() as f64,
        message: format!(
            "packs/{}: refused by the admission rules: {}",
            tree.dir,
            details.join("; ")
        ),
        labels: labels(vec![
            ("codes", codes.into()),
            (
                "refusals",
                details
                    .into_iter()
                    .map(serde_json::Value::from)
                    .collect::<Vec<_>>()
                    .into(),
            ),
        ]),
    })
}

/// A `superseded_by` that names no pack of the checkout, or the pack itself.
pub fn successor_problem(tree: &PackTree, exists: impl Fn(&str) -> bool) -> Option<Problem> {
    let successor = tree.manifest.superseded_by.as_deref()?;
    let own = tree.manifest.name.as_deref().unwrap_or(&tree.dir);
    let why = if successor == own {
        "names the pack itself"
    } else if !exists(successor) {
        "names no pack of the checkout"
    } else {
        return None;
    };
    Some(Problem {
        kind: FindingKind::SuccessorMissing,
        severity: Severity::Warning,
        subject: Subject {
            package: tree.dir.clone(),
            version: None,
        },
        value: 1.0,
        message: format!("packs/{}: superseded_by = \"{successor}\" {why}", tree.dir),
        labels: labels(vec![
            ("successor", successor.into()),
            ("reason", why.into()),
        ]),
    })
}
