//! Judging a finished simulation: every expectation passes or fails, with the evidence either way.

use serde::Serialize;
use std::collections::BTreeSet;
use wildmatch::WildMatch;

use super::scenario::{duration_ms, least, ExpectAction, ExpectFinding, Scenario};
use crate::clock::rfc3339;
use crate::knowledge::findings::Finding;
use crate::knowledge::remediations::{Remediation, Status};
use crate::knowledge::Store;
use crate::model::Action;
use crate::registry::{Registry, SqlRegistry};

/// One expectation's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judged {
    pub line: usize,
    pub kind: &'static str,
    pub expectation: String,
    pub pass: bool,
    pub evidence: String,
}

fn window(after: &str, within: Option<&String>, start: i64) -> (i64, i64) {
    let from = start + duration_ms(after).unwrap_or(0);
    let to = within
        .and_then(|w| duration_ms(w).ok())
        .map(|w| from + w)
        .unwrap_or(i64::MAX);
    (from, to)
}

/// Whether the count of `hits` is within `min..=max`, with the evidence either way: the first
/// hit, the closest miss (`closest`: the same subject otherwise matching), or the extra ones.
fn verdict<T>(
    hits: &[&T],
    closest: Option<&T>,
    min: u64,
    max: Option<u64>,
    show: impl Fn(&T) -> String,
    nothing: &str,
) -> (bool, String) {
    let n = hits.len() as u64;
    let pass = n >= min && max.is_none_or(|m| n <= m);
    let evidence = match (pass, hits.first(), closest) {
        (true, Some(first), _) => format!("{n} matching; first: {}", show(first)),
        (true, None, _) => "none, as expected".into(),
        (false, _, Some(c)) if n < min => format!("{n} of at least {min}; closest: {}", show(c)),
        (false, _, None) if n < min => format!("{n} of at least {min}; {nothing}"),
        (false, _, _) => {
            let extra: Vec<String> = hits.iter().take(3).map(|h| show(h)).collect();
            format!("{n}, more than {}: {}", max.unwrap_or(0), extra.join("; "))
        }
    };
    (pass, evidence)
}

/// " quality 60..=100", as a final expectation prints its bounds.
fn quality_text(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (None, None) => String::new(),
        (min, max) => format!(" quality {}..={}", min.unwrap_or(0.0), max.unwrap_or(100.0)),
    }
}

/// "after X within Y (min N, max M)", as expectations print their window and counts.
fn span_text(after: &str, within: Option<&String>, min: u64, max: Option<u64>) -> String {
    format!(
        "after {after}{} (min {min}{})",
        within.map(|w| format!(" within {w}")).unwrap_or_default(),
        max.map(|m| format!(", max {m}")).unwrap_or_default()
    )
}

/// Whether a remediation was recorded in the expectation's mode, and when. `executed` counts at
/// its execution; `pending` counts one that was recorded as waiting (for approval, a window or a
/// freeze) at the moment it was planned, whatever became of it later; the others when planned.
fn in_mode(r: &Remediation, mode: &str) -> Option<i64> {
    let waited = r.status == Status::Pending
        || r.expires_at.is_some()
        || (matches!(
            r.status,
            Status::Expired | Status::Refused | Status::Abandoned
        ) && matches!(
            r.gate,
            Some(
                crate::model::Gate::Approval
                    | crate::model::Gate::Window
                    | crate::model::Gate::Freeze
            )
        ));
    match mode {
        "executed" if r.status == Status::Executed => Some(r.updated_at),
        "dry_run" if r.status == Status::DryRun => Some(r.created_at),
        "suppressed" if r.status == Status::Suppressed => Some(r.created_at),
        "pending" if waited => Some(r.created_at),
        _ => None,
    }
}

fn describe(r: &Remediation) -> String {
    format!(
        "{} {} {} by `{}`: planned {}, {} at {} ({})",
        r.id,
        r.action,
        r.subject,
        r.policy,
        rfc3339(r.created_at),
        r.status.as_str(),
        rfc3339(r.updated_at),
        r.reason
    )
}

/// The newest version of `package` published by `at`.
async fn latest_at(registry: &SqlRegistry, package: &str, at: i64) -> Option<String> {
    let (all, _) = registry.releases_since(0).await.ok()?;
    all.into_iter()
        .filter(|r| r.package == package && r.published_at <= at)
        .filter_map(|r| {
            semver::Version::parse(&r.version)
                .ok()
                .map(|v| (v, r.version))
        })
        .max()
        .map(|(_, v)| v)
}

async fn action(
    e: &ExpectAction,
    line: usize,
    all: &[Remediation],
    registry: &SqlRegistry,
    start: i64,
) -> Judged {
    let (from, to) = window(&e.after, e.within.as_ref(), start);
    let pattern = WildMatch::new(&e.package);
    let version = match e.version.as_deref() {
        Some("latest") => latest_at(registry, &e.package, from).await,
        other => other.map(str::to_string),
    };
    let about = |r: &&Remediation| {
        // `*` is any change to the registry: a notice is matched by `notify` alone, so that
        // "nothing else was done" still holds when the default library notifies a person.
        (if e.action == "*" {
            r.action != Action::Notify
        } else {
            r.action.as_str() == e.action
        }) && pattern.matches(&r.subject.package)
            && version
                .as_ref()
                .is_none_or(|v| r.subject.version.as_deref() == Some(v.as_str()))
    };
    let hits: Vec<&Remediation> = all
        .iter()
        .filter(about)
        .filter(|r| in_mode(r, &e.mode).is_some_and(|at| at >= from && at <= to))
        .collect();
    let min = least(e.min, e.max);
    let (pass, evidence) = verdict(
        &hits,
        all.iter().find(about),
        min,
        e.max,
        describe,
        "no remediation of that action and subject at all",
    );
    let version_text = version.map(|v| format!("@{v}")).unwrap_or_default();
    Judged {
        line,
        kind: "action",
        expectation: format!(
            "{} {}{version_text} {} {}",
            e.action,
            e.package,
            e.mode,
            span_text(&e.after, e.within.as_ref(), min, e.max)
        ),
        pass,
        evidence,
    }
}

fn finding(e: &ExpectFinding, line: usize, all: &[Finding], start: i64) -> Judged {
    let (from, to) = window(&e.after, e.within.as_ref(), start);
    let pattern = WildMatch::new(e.package.as_deref().unwrap_or("*"));
    let about = |f: &&Finding| f.kind.as_str() == e.kind && pattern.matches(&f.subject.package);
    let hits: Vec<&Finding> = all
        .iter()
        .filter(about)
        .filter(|f| f.fired_at.is_some_and(|t| t >= from && t <= to))
        .collect();
    let show = |f: &Finding| {
        format!(
            "{} {} on {} fired at {}: {}",
            f.severity.as_str(),
            f.kind,
            f.subject,
            f.fired_at.map(rfc3339).unwrap_or_else(|| "never".into()),
            f.message
        )
    };
    let min = least(e.min, e.max);
    let (pass, evidence) = verdict(
        &hits,
        all.iter().find(about),
        min,
        e.max,
        show,
        "no such finding at all",
    );
    Judged {
        line,
        kind: "finding",
        expectation: format!(
            "{} on {} {}",
            e.kind,
            e.package.as_deref().unwrap_or("*"),
            span_text(&e.after, e.within.as_ref(), min, e.max)
        ),
        pass,
        evidence,
    }
}

/// Judges every expectation of `s` against what the run left in the store and the registry.
pub async fn judge(
    s: &Scenario,
    store: &Store,
    registry: &SqlRegistry,
    start: i64,
) -> anyhow::Result<Vec<Judged>> {
    let mut remediations = store.recent_remediations(i64::MAX).await?;
    remediations.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let mut findings = store.recent_findings(i64::MAX).await?;
    findings.sort_by(|a, b| a.first_seen.cmp(&b.first_seen).then(a.id.cmp(&b.id)));
    let mut out = Vec::new();
    for (line, e) in &s.expect_action {
        out.push(action(e, *line, &remediations, registry, start).await);
    }
    for (line, e) in &s.expect_finding {
        out.push(finding(e, *line, &findings, start));
    }
    let scores = if s
        .expect_final
        .iter()
        .any(|(_, e)| e.quality_min.is_some() || e.quality_max.is_some())
    {
        store.quality_states().await?
    } else {
        Default::default()
    };
    for (line, e) in &s.expect_final {
        out.push(final_state(e, *line, registry, &scores).await?);
    }
    if let Some((line, t)) = &s.expect_totals {
        out.push(totals(t, *line, &remediations, registry).await?);
    }
    // In the file's order, as a maintainer reads it.
    out.sort_by_key(|j| j.line);
    Ok(out)
}

/// A package's or release's state at the end, and its quality score.
async fn final_state(
    e: &super::scenario::ExpectFinal,
    line: usize,
    registry: &SqlRegistry,
    scores: &std::collections::HashMap<String, crate::knowledge::learned::QualityState>,
) -> anyhow::Result<Judged> {
    let package = registry.package(&e.package).await?;
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    if let (Some(p), true) = (&package, e.quality_min.is_some() || e.quality_max.is_some()) {
        // The score the registry shows (set by import or a quality action), else the model's.
        match p
            .quality
            .map(|q| (q, "registry"))
            .or_else(|| scores.get(&p.name).map(|q| (q.score, "model")))
        {
            None => wrong.push("no quality score".into()),
            Some((q, from)) => {
                seen.push(format!("quality {q:.1} ({from})"));
                if e.quality_min.is_some_and(|m| q < m) || e.quality_max.is_some_and(|m| q > m) {
                    wrong.push(format!("quality is {q:.1} ({from})"));
                }
            }
        }
    }
    match (&package, &e.version) {
        (None, _) => wrong.push(format!("package `{}` does not exist", e.package)),
        (Some(p), None) => {
            seen.push(format!("status {}", p.status));
            if e.status.as_ref().is_some_and(|s| *s != p.status) {
                wrong.push(format!("status is {}", p.status));
            }
            seen.push(format!("latest {}", p.latest.as_deref().unwrap_or("-")));
            if e.latest.is_some() && e.latest != p.latest {
                wrong.push(format!("latest is {}", p.latest.as_deref().unwrap_or("-")));
            }
        }
        (Some(p), Some(v)) => {
            let v = if v == "latest" {
                p.latest.clone().unwrap_or_default()
            } else {
                v.clone()
            };
            match registry.release(&e.package, &v).await? {
                None => wrong.push(format!("no release {}@{v}", e.package)),
                Some(r) => {
                    let status = if r.quarantined {
                        "quarantined"
                    } else if r.yanked {
                        "yanked"
                    } else {
                        "active"
                    };
                    seen.push(format!("{}@{v} {status}", e.package));
                    if e.status.as_deref().is_some_and(|s| s != status) {
                        wrong.push(format!("{}@{v} is {status}", e.package));
                    }
                }
            }
        }
    }
    Ok(Judged {
        line,
        kind: "final",
        expectation: format!(
            "{}{}{}{}{}",
            e.package,
            e.version
                .as_ref()
                .map(|v| format!("@{v}"))
                .unwrap_or_default(),
            e.status
                .as_ref()
                .map(|s| format!(" status {s}"))
                .unwrap_or_default(),
            e.latest
                .as_ref()
                .map(|l| format!(" latest {l}"))
                .unwrap_or_default(),
            quality_text(e.quality_min, e.quality_max),
        ),
        pass: wrong.is_empty(),
        evidence: if wrong.is_empty() {
            seen.join(", ")
        } else {
            wrong.join("; ")
        },
    })
}

/// The totals of the run: actions, quarantined releases, the share of the registry touched.
/// Notices change nothing in the registry: they count for neither, as for the global guards.
async fn totals(
    t: &super::scenario::ExpectTotals,
    line: usize,
    remediations: &[Remediation],
    registry: &SqlRegistry,
) -> anyhow::Result<Judged> {
    let executed: Vec<&Remediation> = remediations
        .iter()
        .filter(|r| r.status == Status::Executed && r.action != Action::Notify)
        .collect();
    let counts = registry.counts().await?;
    let packages: BTreeSet<&str> = executed
        .iter()
        .map(|r| r.subject.package.as_str())
        .collect();
    let fraction = packages.len() as f64 / counts.packages.max(1) as f64;
    let mut checks = Vec::new();
    if let Some(m) = t.max_actions {
        checks.push((
            executed.len() as u64 <= m,
            format!("actions {} (max {m})", executed.len()),
        ));
    }
    if let Some(m) = t.max_quarantined {
        checks.push((
            counts.quarantined as u64 <= m,
            format!("quarantined {} (max {m})", counts.quarantined),
        ));
    }
    if let Some(m) = t.max_registry_fraction {
        checks.push((
            fraction <= m,
            format!("registry fraction {fraction:.4} (max {m})"),
        ));
    }
    let expectation = [
        t.max_actions.map(|m| format!("max_actions {m}")),
        t.max_quarantined.map(|m| format!("max_quarantined {m}")),
        t.max_registry_fraction
            .map(|m| format!("max_registry_fraction {m}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    Ok(Judged {
        line,
        kind: "totals",
        expectation,
        pass: checks.iter().all(|(ok, _)| *ok),
        evidence: checks
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join(", "),
    })
}
