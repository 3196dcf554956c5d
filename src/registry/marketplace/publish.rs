//! The published catalog on disk: written atomically (temporary file, fsync, rename, fsync of the folder) with its detached signature beside it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::keys::KeyPair;

/// A catalog as published: its bytes, the daemon's signature over them (hex), and the entity
/// tag HTTP clients revalidate with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Shared with every response that serves it (a clone is a reference count).
    pub bytes: bytes::Bytes,
    pub signature: String,
    pub etag: String,
}

impl Published {
    /// Signs the bytes and hashes them for the entity tag, on two threads (both read every byte).
    pub fn new(bytes: Vec<u8>, key: &KeyPair) -> Self {
        let (signature, digest) = std::thread::scope(|s| {
            let sha = s.spawn(|| Sha256::digest(&bytes));
            let signature = key.sign(&bytes);
            (
                signature,
                sha.join().unwrap_or_else(|_| Sha256::digest(&bytes)),
            )
        });
        let etag = format!("\"{}\"", hex::encode(digest));
        Self {
            bytes: bytes.into(),
            signature,
            etag,
        }
    }
}

/// The signature file beside `path` (`index.json.sig`).
pub fn signature_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".sig");
    PathBuf::from(s)
}

/// The lock file beside `path` (`.index.json.lock`), held while a publication is made.
pub fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.lock"))
}

/// Takes the exclusive lock on publishing `path` (an advisory lock on the lock file beside it,
/// released when the returned file is dropped), waiting for another process that holds it.
pub async fn lock(path: &Path) -> std::io::Result<std::fs::File> {
    let lock = lock_path(path);
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)?;
        f.lock()?;
        Ok(f)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same folder, fsynced, renamed over `path`, then the folder fsynced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "catalog".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        crate::faults::point("publish_before_rename");
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes temporary files an earlier process left beside `path` when it was killed mid-write.
pub fn remove_leftovers(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefixes = [
        format!(".{}.tmp-", name.to_string_lossy()),
        format!(".{}.sig.tmp-", name.to_string_lossy()),
    ];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `path` and its signature file, the catalog first, without reading what is there.
pub fn write_both(path: &Path, published: &Published) -> std::io::Result<()> {
    write_atomically(path, &published.bytes)?;
    crate::faults::point("publish_after_rename");
    write_atomically(
        &signature_path(path),
        format!("{}\n", published.signature).as_bytes(),
    )
}

/// Brings `path` and its signature file to `published`, writing only what differs; true when
/// something was written. The catalog goes first, its signature after: a reader that finds a
/// signature that does not verify reads both again.
pub fn write(path: &Path, published: &Published) -> std::io::Result<bool> {
    let mut wrote = false;
    let current = std::fs::read(path).ok();
    if current.as_deref() != Some(&published.bytes[..]) {
        write_atomically(path, &published.bytes)?;
        wrote = true;
        crate::faults::point("publish_after_rename");
    }
    let sig_path = signature_path(path);
    let sig = format!("{}\n", published.signature);
    if std::fs::read(&sig_path).ok().as_deref() != Some(sig.as_bytes()) {
        write_atomically(&sig_path, sig.as_bytes())?;
        wrote = true;
    }
    Ok(wrote)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_second_publisher_waits_for_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.json");
        let first = super::lock(&path).await.expect("lock");
        let waiting = tokio::spawn({
            let path = path.clone();
            async move { super::lock(&path).await.map(|_| std::time::Instant::now()) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "the second waits while the first holds the lock"
        );
        let released = std::time::Instant::now();
        drop(first);
        let took = waiting.await.expect("join").expect("lock");
        assert!(took >= released);
    }

    use super::*;

    #[test]
    fn a_write_replaces_the_file_and_signs_it_and_a_second_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("site").join("index.json");
        let key = KeyPair::from_seed("daemon", [7; 32]);
        let p = Published::new(b"{}\n".to_vec(), &key);
        assert!(write(&path, &p).expect("write"));
        assert_eq!(std::fs::read(&path).expect("read"), b"{}\n");
        let sig = std::fs::read_to_string(signature_path(&path)).expect("sig");
        assert!(crate::keys::verify_hex(&key.public(), b"{}\n", sig.trim()));
        assert!(!write(&path, &p).expect("again"), "nothing differs");
        std::fs::write(dir.path().join("site/.index.json.tmp-1"), b"half").expect("leftover");
        remove_leftovers(&path);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("site"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
