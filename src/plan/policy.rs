//! Policy files: parse `policies/*.toml`, compile `when` once, and report every error with file, line and field.

use cel::{Env, Program};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::facts;
use super::guards::Guards;
use super::signing;
use super::window::Window;
use crate::keys::{line_of, toml_error, TrustStore};
use crate::model::{Action, FindingKind};

/// One problem in a policy set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {}{reason}", crate::located::about(.field))]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub reason: String,
}

pub use crate::model::Mode;

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A policy as written (the whole format of the spec, so unknown keys are refused).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    id: toml::Spanned<String>,
    #[serde(default)]
    description: String,
    on: toml::Spanned<OneOrMany>,
    when: Option<toml::Spanned<String>>,
    action: toml::Spanned<String>,
    #[serde(default)]
    params: toml::Table,
    mode: Option<toml::Spanned<Mode>>,
    #[serde(default)]
    priority: i64,
    cooldown: Option<toml::Spanned<String>>,
    max_per_hour: Option<toml::Spanned<u32>>,
    max_blast_radius: Option<toml::Spanned<u32>>,
    window: Option<toml::Spanned<String>>,
    approvers: Option<toml::Spanned<Vec<String>>>,
    min_approvals: Option<toml::Spanned<u32>>,
    approval_ttl: Option<toml::Spanned<String>>,
    verify_after: Option<toml::Spanned<String>>,
    max_attempts: Option<toml::Spanned<u32>>,
    escalate_to: Option<toml::Spanned<String>>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policy: Vec<RawPolicy>,
}

/// A loaded policy, its condition compiled.
#[derive(Debug)]
pub struct Policy {
    pub id: String,
    pub description: String,
    pub on: Vec<FindingKind>,
    pub when: Option<String>,
    pub program: Option<Program>,
    pub action: Action,
    pub params: serde_json::Value,
    pub mode: Mode,
    pub priority: i64,
    pub enabled: bool,
    pub file: PathBuf,
    pub cooldown_ms: Option<i64>,
    pub max_per_hour: Option<u32>,
    pub max_blast_radius: Option<u32>,
    pub window: Option<Window>,
    pub approvers: Vec<String>,
    pub min_approvals: u32,
    pub approval_ttl_ms: i64,
    pub verify_after_ms: Option<i64>,
    pub max_attempts: u32,
    pub escalate_to: Option<String>,
    /// The line of `escalate_to`, for errors found across policies.
    pub escalate_line: usize,
}

/// How long a remediation waits for approvals when the policy does not say.
pub const DEFAULT_APPROVAL_TTL_MS: i64 = 24 * 3_600_000;

/// All policies of a directory; the CEL environment is built once and shared.
pub struct PolicySet {
    pub policies: Vec<Policy>,
    pub guards: Guards,
    pub env: Arc<Env>,
    /// Which of the four variables any condition of the set reads; the others are not built.
    pub uses: facts::Uses,
    /// A digest of the files' content, to notice a change of policy.
    pub digest: String,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.policies)
            .field("guards", &self.guards)
            .field("digest", &self.digest)
            .finish()
    }
}

/// The actions this version can execute: the whole catalogue.
pub const SUPPORTED_ACTIONS: [Action; 11] = [
    Action::Quarantine,
    Action::ReleaseQuarantine,
    Action::Yank,
    Action::Unyank,
    Action::RestoreLatest,
    Action::Deprecate,
    Action::Undeprecate,
    Action::SetQuality,
    Action::AdjustQuality,
    Action::Reindex,
    Action::Notify,
];

/// Checks an action's params: what each action needs, of the right type.
fn check_params(action: Action, params: &toml::Table) -> Result<(), String> {
    let number = |k: &str| {
        params
            .get(k)
            .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
    };
    let text_ok = |k: &str| params.get(k).is_none_or(|v| v.is_str());
    match action {
        Action::SetQuality => match number("score") {
            Some(s) if (0.0..=100.0).contains(&s) => Ok(()),
            Some(s) => Err(format!("params.score {s} is not between 0 and 100")),
            None => Err("`set_quality` needs a number params.score (0 to 100)".into()),
        },
        Action::AdjustQuality => match number("delta") {
            Some(_) => Ok(()),
            None => Err("`adjust_quality` needs a number params.delta".into()),
        },
        Action::Deprecate if !text_ok("reason") || !text_ok("successor") => {
            Err("params.reason and params.successor are strings".into())
        }
        Action::Notify => match params.get("webhook") {
            None => Ok(()),
            Some(v) => match v.as_str() {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => Ok(()),
                _ => Err("params.webhook must be an http:// or https:// URL (without it: the configured notify_webhook)".into()),
            },
        },
        _ if params.contains_key("change") => Err("params.change is reserved for rollbacks".into()),
        _ => Ok(()),
    }
}

/// The largest policy file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// How a directory is checked besides parsing: signatures against a trust store.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    pub trust: Option<&'a TrustStore>,
    /// An unsigned file refuses the whole set.
    pub require_signed: bool,
}

fn problem(file: &Path, field: &str, reason: String) -> PolicyError {
    PolicyError {
        file: file.to_path_buf(),
        line: 0,
        field: field.into(),
        reason,
    }
}

/// Reads a file of a policy directory, refusing what is too big to be a policy.
pub fn read_bounded(file: &Path) -> Result<String, PolicyError> {
    let meta =
        std::fs::metadata(file).map_err(|e| problem(file, "-", format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(problem(
            file,
            "-",
            format!(
                "is {} bytes; a policy file may be at most {MAX_FILE_BYTES}",
                meta.len()
            ),
        ));
    }
    std::fs::read_to_string(file).map_err(|e| problem(file, "-", format!("cannot read: {e}")))
}

/// The files of a policy directory that the daemon loads: every `*.toml` but the tests, in name order.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| problem(dir, "-", format!("cannot read policy directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            p.extension().is_some_and(|e| e == "toml")
                && !name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(".test.toml") || n == "quality.toml")
        })
        .collect();
    files.sort();
    Ok(files)
}

impl PolicySet {
    /// Loads every policy file of `dir` in name order, and `guards.toml`; checks signatures as
    /// `opts` asks. All or nothing: every error is collected and none of the set is returned.
    pub fn load_dir(dir: &Path, opts: LoadOptions<'_>) -> Result<Self, Vec<PolicyError>> {
        let files = policy_files(dir).map_err(|e| vec![e])?;
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match read_bounded(&f) {
                Ok(src) => {
                    if let Err(e) = signing::check_file(&f, src.as_bytes(), opts) {
                        errors.push(e);
                    }
                    sources.push((f, src));
                }
                Err(e) => errors.push(e),
            }
        }
        let loaded = Self::from_sources(&sources);
        match (loaded, errors.is_empty()) {
            (Ok(set), true) => Ok(set),
            (Ok(_), false) => Err(errors),
            (Err(mut e), _) => {
                errors.append(&mut e);
                Err(errors)
            }
        }
    }

    /// Loads policies from (file name, content) pairs; a file named `guards.toml` holds the guards.
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Self, Vec<PolicyError>> {
        use sha2::Digest;
        let env = stdlib();
        let mut hasher = sha2::Sha256::new();
        let mut policies = Vec::new();
        let mut guards = Guards::default();
        let mut errors = Vec::new();
        let mut ids = BTreeSet::new();
        for (file, src) in sources {
            hasher.update(file.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(src.as_bytes());
            hasher.update([0]);
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".test.toml") || name == "quality.toml" {
                continue; // policy tests and the quality model are not policies
            }
            if name == "guards.toml" {
                match Guards::parse(file, src) {
                    Ok(g) => guards = g,
                    Err(mut e) => errors.append(&mut e),
                }
                continue;
            }
            let raw: RawFile = match toml::from_str(src) {
                Ok(r) => r,
                Err(e) => {
                    let (line, reason) = toml_error(src, &e);
                    errors.push(PolicyError {
                        file: file.clone(),
                        line,
                        field: crate::located::field_at(src, line, &reason),
                        reason,
                    });
                    continue;
                }
            };
            for p in raw.policy {
                let line = line_of(src, p.id.span().start);
                match compile(&env, file, src, p) {
                    Ok(policy) => {
                        if !ids.insert(policy.id.clone()) {
                            errors.push(PolicyError {
                                file: file.clone(),
                                line,
                                field: "id".into(),
                                reason: format!("policy id `{}` is used twice", policy.id),
                            });
                        }
                        policies.push(policy);
                    }
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        errors.extend(check_escalations(&policies));
        if errors.is_empty() {
            Ok(Self {
                uses: facts::Uses::of(policies.iter().filter_map(|p| p.program.as_ref())),
                policies,
                guards,
                env,
                digest: hex::encode(hasher.finalize()),
            })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, id: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.id == id)
    }
}

/// `escalate_to` must name a policy, and escalations must not go round in a cycle.
fn check_escalations(policies: &[Policy]) -> Vec<PolicyError> {
    use petgraph::graphmap::DiGraphMap;
    let mut errors = Vec::new();
    let ids: BTreeSet<&str> = policies.iter().map(|p| p.id.as_str()).collect();
    let mut graph: DiGraphMap<&str, ()> = DiGraphMap::new();
    for p in policies {
        graph.add_node(p.id.as_str());
        if let Some(to) = &p.escalate_to {
            if ids.contains(to.as_str()) {
                graph.add_edge(p.id.as_str(), to.as_str(), ());
            } else {
                errors.push(PolicyError {
                    file: p.file.clone(),
                    line: p.escalate_line,
                    field: "escalate_to".into(),
                    reason: format!("names no policy: there is no policy `{to}`"),
                });
            }
        }
    }
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() > 1 || self_loop {
            let mut names: Vec<&str> = scc.clone();
            names.sort();
            if let Some(first) = policies.iter().find(|p| p.id == names[0]) {
                errors.push(PolicyError {
                    file: first.file.clone(),
                    line: first.escalate_line,
                    field: "escalate_to".into(),
                    reason: format!(
                        "escalations go round in a cycle through {}",
                        names.join(", ")
                    ),
                });
            }
        }
    }
    errors
}

/// Collects a policy's errors, each with its file, line and field.
struct Check<'a> {
    file: &'a Path,
    src: &'a str,
    errors: Vec<PolicyError>,
}

impl Check<'_> {
    fn err(&mut self, field: &str, span: std::ops::Range<usize>, reason: String) {
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line: line_of(self.src, span.start),
            field: field.into(),
            reason,
        });
    }

    fn id(&mut self, p: &RawPolicy) -> String {
        let id = p.id.get_ref().clone();
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            self.err(
                "id",
                p.id.span(),
                format!("`{id}` must be 1 to 64 characters of [a-z0-9-]"),
            );
        }
        id
    }

    fn kinds(&mut self, p: &RawPolicy) -> Vec<FindingKind> {
        let names = match p.on.get_ref() {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        if names.is_empty() {
            self.err("on", p.on.span(), "names no finding kind".into());
        }
        let mut on = Vec::new();
        for n in &names {
            match FindingKind::parse(n) {
                Some(k) => on.push(k),
                None => self.err("on", p.on.span(), format!("unknown finding kind `{n}`")),
            }
        }
        on
    }

    fn action(&mut self, p: &RawPolicy) -> Option<Action> {
        match Action::parse(p.action.get_ref()) {
            Some(a) if SUPPORTED_ACTIONS.contains(&a) => Some(a),
            Some(a) => {
                self.err(
                    "action",
                    p.action.span(),
                    format!(
                        "action `{a}` is in the catalogue but this version cannot execute it yet"
                    ),
                );
                None
            }
            None => {
                self.err(
                    "action",
                    p.action.span(),
                    format!("unknown action `{}`", p.action.get_ref()),
                );
                None
            }
        }
    }

    fn duration(&mut self, field: &str, v: &Option<toml::Spanned<String>>) -> Option<i64> {
        let v = v.as_ref()?;
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Ok(_) => {
                self.err(field, v.span(), "must be longer than zero".into());
                None
            }
            Err(e) => {
                self.err(
                    field,
                    v.span(),
                    format!(
                        "`{}` is not a duration (90s, 15m, 6h, 7d): {e}",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn window(&mut self, p: &RawPolicy) -> Option<Window> {
        let w = p.window.as_ref()?;
        match Window::parse(w.get_ref()) {
            Ok(w) => Some(w),
            Err(reason) => {
                self.err("window", w.span(), reason);
                None
            }
        }
    }

    /// The approvers (each once), someone to approve where approval can be needed, and a
    /// number of approvals that can be given.
    fn approvers(&mut self, p: &RawPolicy, mode: Mode) -> Vec<String> {
        let approvers: Vec<String> = p
            .approvers
            .as_ref()
            .map(|a| a.get_ref().clone())
            .unwrap_or_default();
        let mut seen = BTreeSet::new();
        for a in &approvers {
            if !seen.insert(a) {
                if let Some(span) = p.approvers.as_ref().map(|s| s.span()) {
                    self.err("approvers", span, format!("`{a}` is listed twice"));
                }
            }
        }
        let needs_approvers = mode == Mode::Approve || p.max_blast_radius.is_some();
        if needs_approvers && approvers.is_empty() {
            let (field, span) = match (&p.mode, &p.max_blast_radius) {
                (Some(m), _) if mode == Mode::Approve => ("mode", m.span()),
                (_, Some(r)) => ("max_blast_radius", r.span()),
                _ => ("approvers", p.id.span()),
            };
            self.err(
                field,
                span,
                "needs `approvers`: a remediation that waits for approval must have someone who can give it".into(),
            );
        }
        if let Some(m) = &p.min_approvals {
            if *m.get_ref() == 0 || *m.get_ref() as usize > approvers.len().max(1) {
                self.err(
                    "min_approvals",
                    m.span(),
                    format!(
                        "{} approvals can never be given by {} approver(s)",
                        m.get_ref(),
                        approvers.len()
                    ),
                );
            }
        }
        approvers
    }

    /// Counts that cannot be zero.
    fn counts(&mut self, p: &RawPolicy) {
        if let Some(m) = p.max_attempts.as_ref().filter(|m| *m.get_ref() == 0) {
            self.err("max_attempts", m.span(), "must be at least 1".into());
        }
        if let Some(m) = p.max_per_hour.as_ref().filter(|m| *m.get_ref() == 0) {
            self.err(
                "max_per_hour",
                m.span(),
                "0 would suppress every remediation; use `enabled = false`".into(),
            );
        }
    }
}

fn compile(
    env: &Arc<Env>,
    file: &Path,
    src: &str,
    p: RawPolicy,
) -> Result<Policy, Vec<PolicyError>> {
    let mut c = Check {
        file,
        src,
        errors: Vec::new(),
    };
    let id = c.id(&p);
    let on = c.kinds(&p);
    let action = c.action(&p);
    let mode = p
        .mode
        .as_ref()
        .map(|m| *m.get_ref())
        .unwrap_or(Mode::DryRun);
    let cooldown_ms = c.duration("cooldown", &p.cooldown);
    let approval_ttl_ms = c
        .duration("approval_ttl", &p.approval_ttl)
        .unwrap_or(DEFAULT_APPROVAL_TTL_MS);
    let verify_after_ms = c.duration("verify_after", &p.verify_after);
    let window = c.window(&p);
    let approvers = c.approvers(&p, mode);
    let min_approvals = p.min_approvals.as_ref().map(|m| *m.get_ref()).unwrap_or(1);
    c.counts(&p);
    let max_attempts = p.max_attempts.as_ref().map(|m| *m.get_ref()).unwrap_or(3);
    let mut program = None;
    if let Some(when) = &p.when {
        match facts::compile_condition(env, when.get_ref()) {
            Ok(prog) => program = Some(prog),
            Err(reason) => c.err("when", when.span(), reason),
        }
    }
    if let Some(a) = action {
        if let Err(reason) = check_params(a, &p.params) {
            c.err("params", p.action.span(), reason);
        }
    }
    let params = serde_json::to_value(&p.params).unwrap_or(serde_json::Value::Null);
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Policy {
        id,
        cooldown_ms,
        max_per_hour: p.max_per_hour.map(|m| m.into_inner()),
        max_blast_radius: p.max_blast_radius.map(|m| m.into_inner()),
        window,
        approvers,
        min_approvals,
        approval_ttl_ms,
        verify_after_ms,
        max_attempts,
        escalate_to: p.escalate_to.as_ref().map(|e| e.get_ref().clone()),
        escalate_line: p
            .escalate_to
            .as_ref()
            .map(|e| line_of(src, e.span().start))
            .unwrap_or(0),
        description: p.description,
        on,
        when: p.when.map(|w| w.into_inner()),
        program,
        action: action.unwrap_or(Action::Notify),
        params,
        mode,
        priority: p.priority,
        enabled: p.enabled,
        file: file.to_path_buf(),
    })
}

/// The CEL environment every policy set compiles and evaluates in: built once per process and
/// shared (it holds only the standard functions; building it for every load or reload is work
/// thrown away).
fn stdlib() -> Arc<Env> {
    static STDLIB: std::sync::LazyLock<Arc<Env>> =
        std::sync::LazyLock::new(|| Arc::new(Env::stdlib()));
    STDLIB.clone()
}
