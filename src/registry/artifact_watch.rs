//! Which artifacts of the SQL registry were written since the last look: from filesystem notifications under `artifact_root`, and from the registry's own writes (in-memory artifacts), so that a changed artifact is hashed in the cycle its write wakes, whether or not its record moved.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{RecursiveMode, Watcher as _};

/// What was written since the last [`ArtifactChanges::take`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// Notifications were lost: every artifact may have changed (the next full scan says).
    pub all: bool,
    /// Locations as a release may name them (a relative path, an absolute one, a `file://` URL).
    pub locations: BTreeSet<String>,
}

/// Where writes are noted, and how the loop is told.
#[derive(Debug, Default)]
pub struct ArtifactChanges {
    written: Mutex<Written>,
    /// Notified on every write, so that a waiting loop wakes.
    pub wake: tokio::sync::Notify,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl ArtifactChanges {
    /// Notes that the artifact at `location` was written.
    pub fn note(&self, location: &str) {
        if let Ok(mut w) = self.written.lock() {
            w.locations.insert(location.to_string());
        }
        self.wake.notify_one();
    }

    fn note_path(&self, root: &Path, path: &Path) {
        if let Ok(mut w) = self.written.lock() {
            w.locations.insert(path.display().to_string());
            w.locations.insert(format!("file://{}", path.display()));
            if let Ok(rel) = path.strip_prefix(root) {
                w.locations.insert(rel.display().to_string());
            }
        }
        self.wake.notify_one();
    }

    fn lost(&self) {
        if let Ok(mut w) = self.written.lock() {
            w.all = true;
        }
        self.wake.notify_one();
    }

    /// What was written since the last call.
    pub fn take(&self) -> Written {
        self.written
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or(Written {
                all: true,
                ..Default::default()
            })
    }

    /// Whether a filesystem watcher is running.
    pub fn watching(&self) -> bool {
        self.watcher.lock().map(|w| w.is_some()).unwrap_or(false)
    }

    /// Watches `root` (recursively) for writes; stops when `self` is dropped.
    pub fn watch(self: &Arc<Self>, root: PathBuf) -> notify::Result<()> {
        let me = Arc::downgrade(self);
        let base = root.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Some(me) = me.upgrade() else { return };
                match event {
                    Ok(e) if e.need_rescan() => me.lost(),
                    Ok(e) => {
                        if matches!(
                            e.kind,
                            notify::EventKind::Access(_) | notify::EventKind::Remove(_)
                        ) {
                            return;
                        }
                        for p in &e.paths {
                            me.note_path(&base, p);
                        }
                    }
                    Err(_) => me.lost(),
                }
            })?;
        watcher.watch(&root, RecursiveMode::Recursive)?;
        if let Ok(mut slot) = self.watcher.lock() {
            *slot = Some(watcher);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_noted_under_every_name_a_release_may_give_it() {
        let c = ArtifactChanges::default();
        c.note_path(Path::new("/srv/a"), Path::new("/srv/a/pkg/1.0.0.tar"));
        let w = c.take();
        assert!(!w.all);
        assert_eq!(
            w.locations.into_iter().collect::<Vec<_>>(),
            [
                "/srv/a/pkg/1.0.0.tar",
                "file:///srv/a/pkg/1.0.0.tar",
                "pkg/1.0.0.tar"
            ]
        );
        assert_eq!(c.take(), Written::default(), "taken once");
    }
}
