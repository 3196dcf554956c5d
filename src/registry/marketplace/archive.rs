//! A pack archive (`<name>-<version>.tar.gz`): unpacked in memory into its file list and digests, refusing what a pack archive must not hold.

use sha2::{Digest, Sha256};
use std::io::Read;

use super::tree::FileDigest;

/// What one archive may hold at most, unpacked.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 256 << 20,
            max_entries: 100_000,
        }
    }
}

/// Why an archive cannot be the pack it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a gzip file")]
    NotGzip,
    #[error("not a tar archive: {0}")]
    NotTar(String),
    #[error("entry `{0}` leaves the pack's directory (an absolute path or `..`)")]
    Traversal(String),
    #[error("entry `{entry}` is not under `{pack}/`")]
    OutsidePack { entry: String, pack: String },
    #[error("entry `{entry}` is a {kind}, not a regular file")]
    NotAFile { entry: String, kind: String },
    #[error("entry `{0}` appears twice")]
    Duplicate(String),
    #[error("unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("holds more than {0} entries")]
    TooManyEntries(usize),
}

/// The files of an archive of pack `name`, relative to `name/`, in path order. Nothing is
/// written to disk; a path that would leave the pack is refused, not followed.
pub fn read(
    bytes: &[u8],
    name: &str,
    limits: ArchiveLimits,
) -> Result<Vec<FileDigest>, ArchiveError> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Err(ArchiveError::NotGzip);
    }
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut tar = tar::Archive::new(gz);
    let entries = tar
        .entries()
        .map_err(|e| ArchiveError::NotTar(e.to_string()))?;
    let prefix = format!("{name}/");
    let mut files = Vec::new();
    let mut total: u64 = 0;
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::NotTar(e.to_string()))?;
        count += 1;
        if count > limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&raw).into_owned();
        if path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains('\\') {
            return Err(ArchiveError::Traversal(path));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(ArchiveError::NotAFile {
                entry: path,
                kind: format!("{kind:?}").to_lowercase(),
            });
        }
        let Some(relative) = path.strip_prefix(&prefix).filter(|r| !r.is_empty()) else {
            return Err(ArchiveError::OutsidePack {
                entry: path,
                pack: name.to_string(),
            });
        };
        let relative = relative.trim_start_matches("./").to_string();
        let mut h = Sha256::new();
        let mut buf = [0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| ArchiveError::NotTar(format!("entry `{path}`: {e}")))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            total += n as u64;
            if total > limits.max_unpacked_bytes {
                return Err(ArchiveError::TooLarge(limits.max_unpacked_bytes));
            }
            h.update(&buf[..n]);
        }
        files.push(FileDigest {
            path: relative,
            sha256: h.finalize().into(),
            len,
        });
    }
    files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    for w in files.windows(2) {
        if w[0].path == w[1].path {
            return Err(ArchiveError::Duplicate(w[0].path.clone()));
        }
    }
    Ok(files)
}

/// The spec's deterministic archive of a pack's files: a PAX tar of `<name>/<path>` entries (mode
/// 0644, uid and gid 0, no owner names, mtime 0), gzipped at level 9 with header mtime 0. The
/// bytes follow this crate's gzip encoder, not Python's: the same content, not the same digest as
/// the reference tool's archive.
pub fn build(name: &str, files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, bytes) in sorted {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("{name}/{path}"), bytes.as_slice())?;
    }
    tar.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, kind, bytes) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            // Written raw, so that a hostile name is not refused on the way in.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            tar.append(&h, *bytes).expect("append");
        }
        tar.into_inner().expect("tar").finish().expect("gzip")
    }

    #[test]
    fn what_build_writes_read_gives_back() {
        let files = vec![
            ("templates/b.tmpl".to_string(), b"bee".to_vec()),
            ("ontology.ttl".to_string(), b"@prefix".to_vec()),
        ];
        let bytes = build("p", &files).expect("build");
        assert_eq!(build("p", &files).expect("build"), bytes, "deterministic");
        let read = read(&bytes, "p", ArchiveLimits::default()).expect("read");
        let paths: Vec<_> = read.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["ontology.ttl", "templates/b.tmpl"]);
        assert_eq!(read[1].sha256, <[u8; 32]>::from(Sha256::digest(b"bee")));
    }

    #[test]
    fn hostile_archives_are_refused_by_name() {
        let limits = ArchiveLimits::default();
        assert_eq!(read(b"plain text", "p", limits), Err(ArchiveError::NotGzip));
        let mut not_tar = Vec::new();
        {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(&mut not_tar, flate2::Compression::fast());
            gz.write_all(&[7u8; 1024]).expect("write");
            gz.finish().expect("finish");
        }
        assert!(matches!(
            read(&not_tar, "p", limits),
            Err(ArchiveError::NotTar(_))
        ));
        let up = tar_with(&[("p/../../etc/passwd", tar::EntryType::Regular, b"x")]);
        assert!(
            matches!(read(&up, "p", limits), Err(ArchiveError::Traversal(e)) if e.contains(".."))
        );
        let abs = tar_with(&[("/etc/passwd", tar::EntryType::Regular, b"x")]);
        assert!(matches!(
            read(&abs, "p", limits),
            Err(ArchiveError::Traversal(_))
        ));
        let other = tar_with(&[("q/a.ttl", tar::EntryType::Regular, b"x")]);
        assert!(matches!(
            read(&other, "p", limits),
            Err(ArchiveError::OutsidePack { .. })
        ));
        let link = tar_with(&[("p/l", tar::EntryType::Symlink, b"")]);
        assert!(matches!(
            read(&link, "p", limits),
            Err(ArchiveError::NotAFile { .. })
        ));
        let big = tar_with(&[("p/a", tar::EntryType::Regular, &[0u8; 4096])]);
        let small = ArchiveLimits {
            max_unpacked_bytes: 100,
            ..limits
        };
        assert_eq!(read(&big, "p", small), Err(ArchiveError::TooLarge(100)));
        let twice = tar_with(&[
            ("p/a", tar::EntryType::Regular, b"1"),
            ("p/a", tar::EntryType::Regular, b"2"),
        ]);
        assert_eq!(
            read(&twice, "p", limits),
            Err(ArchiveError::Duplicate("a".into()))
        );
    }
}
