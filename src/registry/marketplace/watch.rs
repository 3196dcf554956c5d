//! Filesystem notifications for a marketplace checkout: which packs, archives and catalog changed since the last look.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use notify::{RecursiveMode, Watcher as _};

/// What changed since the last [`Changes::take`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Notifications were lost (the kernel's queue overflowed, the watcher failed): read all.
    pub all: bool,
    pub catalog: bool,
    /// Pack directories under `packs/`.
    pub packs: BTreeSet<String>,
    /// Archive file names without `.tar.gz` (and `.sig`): `<name>-<version>`.
    pub archives: BTreeSet<String>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        !self.all && !self.catalog && self.packs.is_empty() && self.archives.is_empty()
    }
}

/// Where the watcher's callback leaves what it saw, and how the loop is told.
#[derive(Debug, Default)]
pub struct Changes {
    dirty: Mutex<Dirty>,
    /// Notified on every change, so that a loop waiting on it wakes.
    pub wake: tokio::sync::Notify,
    /// Notifications taken in, for the metrics.
    pub events: AtomicU64,
}

impl Changes {
    pub fn take(&self) -> Dirty {
        self.dirty
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or(Dirty {
                all: true,
                ..Default::default()
            })
    }

    fn note(&self, f: impl FnOnce(&mut Dirty)) {
        if let Ok(mut d) = self.dirty.lock() {
            f(&mut d);
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Everything must be read again (a lost notification, a test).
    pub fn mark_all(&self) {
        self.note(|d| d.all = true);
    }
}

/// The paths a checkout's watcher classifies.
#[derive(Debug, Clone)]
pub struct Watched {
    pub packs: PathBuf,
    pub catalog: PathBuf,
    pub archives: Option<PathBuf>,
}

impl Watched {
    fn classify(&self, path: &Path, d: &mut Dirty) {
        if let Ok(rest) = path.strip_prefix(&self.packs) {
            if let Some(first) = rest.components().next() {
                d.packs
                    .insert(first.as_os_str().to_string_lossy().into_owned());
            } else {
                d.all = true;
            }
            return;
        }
        if path == self.catalog {
            d.catalog = true;
            return;
        }
        if let Some(dir) = &self.archives {
            if path.parent() == Some(dir.as_path()) {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let stem = name.strip_suffix(".sig").unwrap_or(&name);
                if let Some(stem) = stem.strip_suffix(".tar.gz") {
                    d.archives.insert(stem.to_string());
                }
            }
        }
    }
}

/// Starts watching; the watcher stops when the returned value is dropped.
pub fn start(
    watched: Watched,
    changes: std::sync::Arc<Changes>,
) -> notify::Result<notify::RecommendedWatcher> {
    let w = watched.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.need_rescan() => changes.mark_all(),
            Ok(e) => {
                if matches!(e.kind, notify::EventKind::Access(_)) {
                    return;
                }
                changes.note(|d| {
                    for p in &e.paths {
                        w.classify(p, d);
                    }
                })
            }
            Err(_) => changes.mark_all(),
        })?;
    watcher.watch(&watched.packs, RecursiveMode::Recursive)?;
    if let Some(dir) = watched.catalog.parent() {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    if let Some(dir) = &watched.archives {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified_as_packs_catalog_or_archives() {
        let w = Watched {
            packs: "/c/packs".into(),
            catalog: "/c/dist/site/index.json".into(),
            archives: Some("/c/dist/packs".into()),
        };
        let mut d = Dirty::default();
        w.classify(Path::new("/c/packs/a-pack/templates/x.tmpl"), &mut d);
        w.classify(Path::new("/c/dist/site/index.json"), &mut d);
        w.classify(Path::new("/c/dist/site/other.json"), &mut d);
        w.classify(Path::new("/c/dist/packs/a-pack-1.0.0.tar.gz"), &mut d);
        w.classify(Path::new("/c/dist/packs/b-2.0.0.tar.gz.sig"), &mut d);
        w.classify(Path::new("/c/dist/packs/notes.txt"), &mut d);
        assert!(d.catalog && !d.all);
        assert_eq!(d.packs.into_iter().collect::<Vec<_>>(), ["a-pack"]);
        assert_eq!(
            d.archives.into_iter().collect::<Vec<_>>(),
            ["a-pack-1.0.0", "b-2.0.0"]
        );
    }
}
