//! Policy files: parse `policies/*.toml`, compile `when` once, and report every error with file, line and field.

use cel::{Env, Program};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::facts;
use crate::config::field_of;
use crate::keys::{line_of, toml_error};
use crate::model::{Action, FindingKind};

/// One problem in a policy set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: field `{field}`: {reason}")]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    DryRun,
    Approve,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::DryRun => "dry_run",
            Self::Approve => "approve",
        }
    }
}

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
}

/// All policies of a directory; the CEL environment is built once and shared.
pub struct PolicySet {
    pub policies: Vec<Policy>,
    pub env: Arc<Env>,
    /// A digest of the files' content, to notice a change of policy.
    pub digest: String,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.policies)
            .field("digest", &self.digest)
            .finish()
    }
}

/// The actions this version can execute; the others are refused at load time rather than ignored.
pub const SUPPORTED_ACTIONS: [Action; 2] = [Action::Quarantine, Action::ReleaseQuarantine];

impl PolicySet {
    pub fn empty() -> Self {
        Self {
            policies: Vec::new(),
            env: Arc::new(Env::stdlib()),
            digest: String::new(),
        }
    }

    /// Loads every `*.toml` of `dir` in name order (test files `*.test.toml` and `guards.toml`
    /// and `quality.toml` excepted). Collects every error rather than stopping at the first.
    pub fn load_dir(dir: &Path) -> Result<Self, Vec<PolicyError>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![PolicyError {
                file: dir.to_path_buf(),
                line: 0,
                field: "-".into(),
                reason: format!("cannot read policy directory: {e}"),
            }]
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                p.extension().is_some_and(|e| e == "toml")
                    && !name.as_deref().is_some_and(|n| {
                        n.ends_with(".test.toml") || n == "guards.toml" || n == "quality.toml"
                    })
            })
            .collect();
        files.sort();
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(src) => sources.push((f, src)),
                Err(e) => errors.push(PolicyError {
                    file: f,
                    line: 0,
                    field: "-".into(),
                    reason: format!("cannot read: {e}"),
                }),
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

    /// Loads policies from (file name, content) pairs.
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Self, Vec<PolicyError>> {
        use sha2::Digest;
        let env = Arc::new(Env::stdlib());
        let mut hasher = sha2::Sha256::new();
        let mut policies = Vec::new();
        let mut errors = Vec::new();
        let mut ids = BTreeSet::new();
        for (file, src) in sources {
            hasher.update(file.to_string_lossy().as_bytes());
            hasher.update(src.as_bytes());
            let raw: RawFile = match toml::from_str(src) {
                Ok(r) => r,
                Err(e) => {
                    let (line, reason) = toml_error(src, &e);
                    errors.push(PolicyError {
                        file: file.clone(),
                        line,
                        field: field_of(&reason),
                        reason,
                    });
                    continue;
                }
            };
            for p in raw.policy {
                match compile(&env, file, src, p) {
                    Ok(policy) => {
                        if !ids.insert(policy.id.clone()) {
                            errors.push(PolicyError {
                                file: file.clone(),
                                line: 0,
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
        if errors.is_empty() {
            Ok(Self {
                policies,
                env,
                digest: hex::encode(hasher.finalize()),
            })
        } else {
            Err(errors)
        }
    }
}

fn compile(
    env: &Arc<Env>,
    file: &Path,
    src: &str,
    p: RawPolicy,
) -> Result<Policy, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let err = |field: &str, span: std::ops::Range<usize>, reason: String| PolicyError {
        file: file.to_path_buf(),
        line: line_of(src, span.start),
        field: field.into(),
        reason,
    };
    let id = p.id.get_ref().clone();
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !id_ok {
        errors.push(err(
            "id",
            p.id.span(),
            format!("`{id}` must be 1 to 64 characters of [a-z0-9-]"),
        ));
    }
    let names = match p.on.get_ref() {
        OneOrMany::One(s) => vec![s.clone()],
        OneOrMany::Many(v) => v.clone(),
    };
    let mut on = Vec::new();
    for n in &names {
        match FindingKind::parse(n) {
            Some(k) => on.push(k),
            None => errors.push(err(
                "on",
                p.on.span(),
                format!("unknown finding kind `{n}`"),
            )),
        }
    }
    if names.is_empty() {
        errors.push(err("on", p.on.span(), "names no finding kind".into()));
    }
    let action = match Action::parse(p.action.get_ref()) {
        Some(a) if SUPPORTED_ACTIONS.contains(&a) => Some(a),
        Some(a) => {
            errors.push(err(
                "action",
                p.action.span(),
                format!("action `{a}` is in the catalogue but this version cannot execute it yet"),
            ));
            None
        }
        None => {
            errors.push(err(
                "action",
                p.action.span(),
                format!("unknown action `{}`", p.action.get_ref()),
            ));
            None
        }
    };
    let mode = p
        .mode
        .as_ref()
        .map(|m| *m.get_ref())
        .unwrap_or(Mode::DryRun);
    if mode == Mode::Approve {
        if let Some(m) = &p.mode {
            errors.push(err(
                "mode",
                m.span(),
                "mode `approve` is not supported by this version yet".into(),
            ));
        }
    }
    // Gates of the format that this version does not enforce yet are refused, never ignored.
    let unsupported: [(&str, Option<std::ops::Range<usize>>); 10] = [
        ("cooldown", p.cooldown.as_ref().map(|s| s.span())),
        ("max_per_hour", p.max_per_hour.as_ref().map(|s| s.span())),
        (
            "max_blast_radius",
            p.max_blast_radius.as_ref().map(|s| s.span()),
        ),
        ("window", p.window.as_ref().map(|s| s.span())),
        ("approvers", p.approvers.as_ref().map(|s| s.span())),
        ("min_approvals", p.min_approvals.as_ref().map(|s| s.span())),
        ("approval_ttl", p.approval_ttl.as_ref().map(|s| s.span())),
        ("verify_after", p.verify_after.as_ref().map(|s| s.span())),
        ("max_attempts", p.max_attempts.as_ref().map(|s| s.span())),
        ("escalate_to", p.escalate_to.as_ref().map(|s| s.span())),
    ];
    for (field, span) in unsupported {
        if let Some(span) = span {
            errors.push(err(
                field,
                span,
                format!("`{field}` is part of the policy format but not enforced by this version yet; remove it rather than have it ignored"),
            ));
        }
    }
    let mut program = None;
    if let Some(when) = &p.when {
        match facts::compile_condition(env, when.get_ref()) {
            Ok(prog) => program = Some(prog),
            Err(reason) => errors.push(err("when", when.span(), reason)),
        }
    }
    let params = serde_json::to_value(&p.params).unwrap_or(serde_json::Value::Null);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Policy {
        id,
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
