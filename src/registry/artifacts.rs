//! Artifact bytes kept in memory, for a registry that lives only in the process (the simulator's): each hashed once, as it is written.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// An artifact's bytes and the SHA-256 taken when they were written.
type Blob = (Arc<[u8]>, [u8; 32]);

/// Artifacts by location, each with the SHA-256 of its bytes taken when they were written.
#[derive(Debug, Default)]
pub struct MemoryArtifacts {
    blobs: RwLock<HashMap<String, Blob>>,
    /// Moves on with every write.
    writes: AtomicU64,
}

impl MemoryArtifacts {
    pub fn write(&self, location: &str, bytes: Vec<u8>) {
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Ok(mut blobs) = self.blobs.write() {
            blobs.insert(location.to_string(), (bytes.into(), digest));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
    }

    /// How many writes there have been: while it stays the same, no artifact changed.
    pub fn generation(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    pub fn read(&self, location: &str) -> Option<Arc<[u8]>> {
        let blobs = self.blobs.read().ok()?;
        blobs.get(location).map(|(b, _)| Arc::clone(b))
    }

    /// What the bytes at `location` hash to, without hashing them again.
    pub fn digest(&self, location: &str) -> Option<[u8; 32]> {
        let blobs = self.blobs.read().ok()?;
        blobs.get(location).map(|(_, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_follows_every_write() {
        let a = MemoryArtifacts::default();
        assert_eq!(a.digest("x"), None);
        a.write("x", b"one".to_vec());
        let (first, generation) = (a.digest("x"), a.generation());
        assert_eq!(first, Some(Sha256::digest(b"one").into()));
        a.write("x", b"two".to_vec());
        assert_ne!(a.digest("x"), first);
        assert!(a.generation() > generation);
        assert_eq!(a.read("x").as_deref(), Some(&b"two"[..]));
    }
}
