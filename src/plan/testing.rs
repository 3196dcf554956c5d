//! Policy tests: `NAME.test.toml` cases (a finding, its facts, the expected outcome) run by `mapek policy test`.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::decide::{matching, rank};
use super::facts::Facts;
use super::policy::{PolicyError, PolicySet};
use crate::knowledge::findings::{Finding, FindingState, PlanState};
use crate::located::{line_of, toml_error};
use crate::model::{FindingKind, Severity, Subject};
use crate::registry::{PackageRecord, RegistryCounts, ReleaseRecord};

const DAY_MS: i64 = 86_400_000;
/// The time every case runs at, so cases do not depend on the day they run.
const NOW: i64 = 1_800_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    case: Vec<toml::Spanned<Case>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    finding: FindingFacts,
    #[serde(default)]
    package: PackageFacts,
    release: Option<ReleaseFacts>,
    #[serde(default)]
    registry: RegistryFacts,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingFacts {
    kind: String,
    #[serde(default = "warning")]
    severity: String,
    #[serde(default)]
    value: f64,
    #[serde(default)]
    age_s: i64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn warning() -> String {
    "warning".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageFacts {
    #[serde(default = "pkg_name")]
    name: String,
    category: Option<String>,
    author: Option<String>,
    license: Option<String>,
    #[serde(default)]
    downloads: i64,
    #[serde(default)]
    stars: i64,
    #[serde(default = "active")]
    status: String,
    quality: Option<f64>,
    #[serde(default)]
    dependents: i64,
    #[serde(default)]
    transitive_dependents: i64,
    #[serde(default)]
    age_days: i64,
    #[serde(default)]
    days_since_release: i64,
}

impl Default for PackageFacts {
    fn default() -> Self {
        Self {
            name: pkg_name(),
            category: None,
            author: None,
            license: None,
            downloads: 0,
            stars: 0,
            status: active(),
            quality: None,
            dependents: 0,
            transitive_dependents: 0,
            age_days: 0,
            days_since_release: 0,
        }
    }
}

fn pkg_name() -> String {
    "example".into()
}
fn active() -> String {
    "active".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseFacts {
    #[serde(default = "version")]
    version: String,
    #[serde(default)]
    published_days_ago: i64,
    #[serde(default = "yes")]
    signed: bool,
    signer: Option<String>,
    #[serde(default)]
    yanked: bool,
    #[serde(default)]
    quarantined: bool,
}

fn version() -> String {
    "1.0.0".into()
}
fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RegistryFacts {
    #[serde(default)]
    packages: i64,
    #[serde(default)]
    quarantined: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `false`: no policy matches.
    #[serde(rename = "match", default = "yes")]
    matches: bool,
    policy: Option<String>,
    action: Option<String>,
    mode: Option<String>,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    /// None: passed; Some: why not.
    pub failure: Option<String>,
    /// The policies that won: one per subject their actions work on (a release's yank and its
    /// package's `restore_latest` both win, as in the planner).
    pub winners: Vec<String>,
    /// The policy the case expects to win (`expect.policy`), if it names one.
    pub expected: Option<String>,
}

/// All results of a directory's test files, and the policies no case expects.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
    pub untested: Vec<String>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.failure.is_some()).count()
    }
}

/// Runs every `*.test.toml` of `dir` against `set`.
pub fn run_dir(dir: &Path, set: &PolicySet) -> Result<Report, Vec<PolicyError>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            vec![PolicyError {
                file: dir.to_path_buf(),
                line: 0,
                field: "-".into(),
                reason: format!("cannot read: {e}"),
            }]
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.toml"))
        .collect();
    files.sort();
    let mut report = Report::default();
    let mut errors = Vec::new();
    for f in files {
        match super::policy::read_bounded(&f) {
            Ok(src) => match run_source(&f, &src, set) {
                Ok(mut r) => report.results.append(&mut r),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Tested: the expected winner of a case that passes. A policy that only wins cases which
    // expect something else, or no match, is not.
    let tested: BTreeSet<&str> = report
        .results
        .iter()
        .filter(|r| r.failure.is_none())
        .filter_map(|r| r.expected.as_deref())
        .collect();
    report.untested = set
        .policies
        .iter()
        .filter(|p| !tested.contains(p.id.as_str()))
        .map(|p| p.id.clone())
        .collect();
    Ok(report)
}

/// Runs the cases of one test file.
pub fn run_source(
    file: &Path,
    src: &str,
    set: &PolicySet,
) -> Result<Vec<CaseResult>, Vec<PolicyError>> {
    let parsed: File = toml::from_str(src).map_err(|e| {
        let (line, reason) = toml_error(src, &e);
        vec![PolicyError {
            file: file.to_path_buf(),
            line,
            field: crate::located::field_at(src, line, &reason),
            reason,
        }]
    })?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for spanned in parsed.case {
        let line = line_of(src, spanned.span().start);
        let case = spanned.into_inner();
        match run_case(&case, set) {
            Ok((failure, winners)) => out.push(CaseResult {
                file: file.to_path_buf(),
                line,
                name: case.name,
                failure,
                winners,
                expected: case.expect.policy.clone(),
            }),
            Err((field, reason)) => errors.push(PolicyError {
                file: file.to_path_buf(),
                line,
                field,
                reason,
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

type CaseOutcome = (Option<String>, Vec<String>);

/// The firing finding a case describes.
fn finding_of(case: &Case) -> Result<Finding, (String, String)> {
    let kind = FindingKind::parse(&case.finding.kind).ok_or_else(|| {
        (
            "finding.kind".to_string(),
            format!("unknown finding kind `{}`", case.finding.kind),
        )
    })?;
    let severity = Severity::parse(&case.finding.severity).ok_or_else(|| {
        (
            "finding.severity".to_string(),
            format!(
                "`{}` is not info, warning or critical",
                case.finding.severity
            ),
        )
    })?;
    let subject = Subject {
        package: case.package.name.clone(),
        version: case.release.as_ref().map(|r| r.version.clone()),
    };
    Ok(Finding {
        id: format!("case:{}", case.name),
        fingerprint: Finding::fingerprint_of(kind, &subject),
        kind,
        severity,
        subject,
        state: FindingState::Firing,
        value: case.finding.value,
        message: String::new(),
        labels: case
            .finding
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
        first_seen: NOW - case.finding.age_s * 1000,
        fired_at: Some(NOW),
        last_seen: NOW,
        cleared_at: None,
        resolved_at: None,
        plan_state: PlanState::New,
    })
}

/// The package and release records a case describes.
fn records_of(case: &Case) -> (PackageRecord, Option<ReleaseRecord>) {
    let p = &case.package;
    let package = PackageRecord {
        name: p.name.clone(),
        description: String::new(),
        category: p.category.clone(),
        author: p.author.clone(),
        license: p.license.clone(),
        repository: None,
        tags: vec![],
        keywords: vec![],
        downloads: p.downloads,
        stars: p.stars,
        status: p.status.clone(),
        latest: case.release.as_ref().map(|r| r.version.clone()),
        quality: p.quality,
        quality_detail: None,
        production_ready: false,
        created_at: NOW - p.age_days * DAY_MS,
        updated_at: NOW - p.days_since_release * DAY_MS,
    };
    let release = case.release.as_ref().map(|r| ReleaseRecord {
        package: p.name.clone(),
        version: r.version.clone(),
        published_at: NOW - r.published_days_ago * DAY_MS,
        checksum: None,
        artifact: None,
        signature: r.signed.then(String::new),
        signer: r.signer.clone(),
        yanked: r.yanked,
        quarantined: r.quarantined,
        dependencies: vec![],
    });
    (package, release)
}

/// What is wrong with the policy that won (or with no winner), against the case's expectation.
fn judge_winner(e: &Expect, winner: Option<&super::policy::Policy>) -> Option<String> {
    match (e.matches, winner) {
        (false, None) => None,
        (false, Some(w)) => Some(format!(
            "expected no match, but policy `{}` matched ({} in {})",
            w.id,
            w.action,
            w.mode.as_str()
        )),
        (true, None) => Some("expected a match, but no policy matched".to_string()),
        (true, Some(w)) => {
            let mut wrong = Vec::new();
            if e.policy.as_deref().is_some_and(|x| x != w.id) {
                wrong.push(format!(
                    "policy `{}`, expected `{}`",
                    w.id,
                    e.policy.as_deref().unwrap_or_default()
                ));
            }
            if e.action.as_deref().is_some_and(|x| x != w.action.as_str()) {
                wrong.push(format!(
                    "action `{}`, expected `{}`",
                    w.action,
                    e.action.as_deref().unwrap_or_default()
                ));
            }
            if e.mode.as_deref().is_some_and(|x| x != w.mode.as_str()) {
                wrong.push(format!(
                    "mode `{}`, expected `{}`",
                    w.mode.as_str(),
                    e.mode.as_deref().unwrap_or_default()
                ));
            }
            (!wrong.is_empty()).then(|| format!("got {}", wrong.join("; ")))
        }
    }
}

fn run_case(case: &Case, set: &PolicySet) -> Result<CaseOutcome, (String, String)> {
    let finding = finding_of(case)?;
    let (package, release) = records_of(case);
    let p = &case.package;
    let facts = Facts {
        finding: &finding,
        package: Some(&package),
        release: release.as_ref(),
        dependents: p.dependents,
        transitive_dependents: p.transitive_dependents,
        registry: RegistryCounts {
            packages: case.registry.packages,
            quarantined: case.registry.quarantined,
        },
        now: NOW,
    };
    let (matched, errors) = matching(set, &facts);
    if let Some(e) = errors.first() {
        return Ok((
            Some(format!(
                "policy `{}`: condition failed: {}",
                e.policy, e.reason
            )),
            Vec::new(),
        ));
    }
    let mut ranked: Vec<_> = matched.iter().map(|p| (*p, &finding)).collect();
    rank(&mut ranked);
    // One winner per subject the actions work on, in rank order, as the planner decides.
    let mut winners: Vec<&super::policy::Policy> = Vec::new();
    let mut subjects = Vec::new();
    for (p, f) in &ranked {
        let target = p.action.target(&f.subject);
        if !subjects.contains(&target) {
            subjects.push(target);
            winners.push(p);
        }
    }
    // The expectation names a policy: judge the winner that is it, if one is; else the first.
    let judged = case
        .expect
        .policy
        .as_deref()
        .and_then(|id| winners.iter().find(|w| w.id == id))
        .or(winners.first())
        .copied();
    let failure = judge_winner(&case.expect, judged);
    Ok((failure, winners.iter().map(|w| w.id.clone()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> PolicySet {
        let src = r#"
[[policy]]
id = "q"
on = "checksum_mismatch"
when = "package.downloads > 100"
action = "quarantine"
mode = "enforce"
"#;
        PolicySet::from_sources(&[(PathBuf::from("p.toml"), src.into())]).expect("loads")
    }

    #[test]
    fn cases_pass_and_fail_on_the_outcome() {
        let tests = r#"
[[case]]
name = "popular"
finding = { kind = "checksum_mismatch", severity = "critical" }
package = { downloads = 500 }
release = { version = "1.0.0" }
expect = { policy = "q", action = "quarantine", mode = "enforce" }

[[case]]
name = "obscure"
finding = { kind = "checksum_mismatch" }
package = { downloads = 5 }
expect = { match = false }

[[case]]
name = "wrong expectation"
finding = { kind = "checksum_mismatch" }
package = { downloads = 500 }
expect = { action = "yank" }
"#;
        let r = run_source(Path::new("p.test.toml"), tests, &set()).expect("runs");
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].failure, None);
        assert_eq!(r[1].failure, None);
        let f = r[2].failure.as_deref().expect("fails");
        assert!(f.contains("action `quarantine`, expected `yank`"), "{f}");
        assert_eq!(r[2].line, 15);
    }

    #[test]
    fn a_release_and_its_package_each_have_a_winner_and_only_expected_winners_are_tested() {
        let src = r#"
[[policy]]
id = "yank"
on = "install_failure_burn"
action = "yank"
mode = "enforce"

[[policy]]
id = "restore"
on = "install_failure_burn"
action = "restore_latest"
mode = "enforce"

[[policy]]
id = "page"
on = "install_failure_burn"
action = "notify"
mode = "enforce"
"#;
        let set = PolicySet::from_sources(&[(PathBuf::from("p.toml"), src.into())]).expect("loads");
        let tests = r#"
[[case]]
name = "the yank of the release"
finding = { kind = "install_failure_burn", severity = "critical" }
release = { version = "2.0.0" }
expect = { policy = "yank", action = "yank" }

[[case]]
name = "and latest moved back on its package"
finding = { kind = "install_failure_burn", severity = "critical" }
release = { version = "2.0.0" }
expect = { policy = "restore", action = "restore_latest" }
"#;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p.test.toml"), tests).expect("write");
        let report = run_dir(dir.path(), &set).expect("runs");
        assert_eq!(report.failed(), 0, "{:?}", report.results);
        assert_eq!(report.results[0].winners, vec!["yank", "restore"]);
        // `page` loses on the release to the yank: it is the expected winner of nothing.
        assert_eq!(report.untested, vec!["page"]);
    }

    #[test]
    fn a_bad_case_names_its_line_and_field() {
        let tests = "[[case]]\nname = \"x\"\nfinding = { kind = \"nope\" }\nexpect = {}\n";
        let e = run_source(Path::new("p.test.toml"), tests, &set()).unwrap_err();
        assert_eq!((e[0].line, e[0].field.as_str()), (1, "finding.kind"));
        let e = run_source(Path::new("p.test.toml"), "[[case]]\nnam = 1\n", &set()).unwrap_err();
        assert!(e[0].reason.contains("unknown field"), "{:?}", e);
    }
}
