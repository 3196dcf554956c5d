//! Policy reload: on SIGHUP or a change to the policy directory, all or nothing, keeping the last good set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::keys::TrustStore;
use crate::plan::policy::{LoadOptions, PolicyError, PolicySet};

/// Where the policies come from and the set in force.
pub struct PolicySource {
    current: RwLock<Arc<PolicySet>>,
    /// None: a fixed set (tests, the simulator); no reloads.
    pub dir: Option<PathBuf>,
    pub trust_path: Option<PathBuf>,
    pub require_signed: bool,
    /// Set by SIGHUP (or the admin API): reload at the next cycle even if nothing looks changed.
    pub requested: AtomicBool,
}

/// What a reload attempt did.
#[derive(Debug)]
pub enum Reload {
    Loaded {
        policies: usize,
    },
    /// The set is refused; the last good one stays in force.
    Refused(Vec<PolicyError>),
}

/// A cheap fingerprint of a directory: every entry's name, size and modification time.
pub fn fingerprint(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::from("unreadable");
    };
    let mut parts: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let meta = e.metadata().ok();
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let modified = meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}:{len}:{modified}", e.file_name().to_string_lossy())
        })
        .collect();
    parts.sort();
    parts.join("|")
}

impl PolicySource {
    pub fn fixed(set: PolicySet) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
            dir: None,
            trust_path: None,
            require_signed: false,
            requested: AtomicBool::new(false),
        }
    }

    pub fn watched(
        set: PolicySet,
        dir: PathBuf,
        trust_path: PathBuf,
        require_signed: bool,
    ) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
            dir: Some(dir),
            trust_path: Some(trust_path),
            require_signed,
            requested: AtomicBool::new(false),
        }
    }

    /// The set in force.
    pub fn get(&self) -> Arc<PolicySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the directory as the daemon does at start: signatures checked against the trust
    /// store when one is readable, required when so configured.
    pub fn load(
        dir: &Path,
        trust_path: &Path,
        require_signed: bool,
    ) -> Result<PolicySet, Vec<PolicyError>> {
        let trust = match TrustStore::load(trust_path) {
            Ok(t) => Some(t),
            Err(e) if require_signed => {
                return Err(vec![PolicyError {
                    file: trust_path.to_path_buf(),
                    line: 0,
                    field: "-".into(),
                    reason: format!(
                        "signed policies are required but the trust store is unreadable: {e}"
                    ),
                }])
            }
            Err(_) => None,
        };
        PolicySet::load_dir(
            dir,
            LoadOptions {
                trust: trust.as_ref(),
                require_signed,
            },
        )
    }

    /// Tries a reload; on success the new set is in force, on failure the old one stays.
    pub fn reload(&self) -> Option<Reload> {
        let (dir, trust) = (self.dir.as_ref()?, self.trust_path.as_ref()?);
        Some(match Self::load(dir, trust, self.require_signed) {
            Ok(set) => {
                let policies = set.policies.len();
                match self.current.write() {
                    Ok(mut g) => *g = Arc::new(set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
                }
                Reload::Loaded { policies }
            }
            Err(errors) => Reload::Refused(errors),
        })
    }

    /// Asks for a reload at the next cycle.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }
}

/// Decides when to reload: on request, or when the directory's fingerprint moved.
#[derive(Debug, Default)]
pub struct Watch {
    seen: Option<String>,
}

impl Watch {
    /// A watch that takes the directory as it is now as seen (the set in force was just loaded
    /// from it). A reload requested before it starts (a SIGHUP between READY and the plan
    /// stage's first cycle) stays requested.
    pub fn start(source: &PolicySource) -> Self {
        Self {
            seen: source.dir.as_deref().map(fingerprint),
        }
    }

    /// Whether the plan stage should try a reload before this cycle.
    pub fn due(&mut self, source: &PolicySource) -> bool {
        let Some(dir) = &source.dir else {
            return false;
        };
        let now = fingerprint(dir);
        let changed = match &self.seen {
            None => false, // the first look: the set in force was just loaded from it
            Some(prev) => *prev != now,
        };
        self.seen = Some(now);
        let requested = source.requested.swap(false, Ordering::SeqCst);
        changed || requested
    }
}
