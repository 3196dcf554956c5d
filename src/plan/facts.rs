//! The CEL side of policies: compile and type-check a `when`, and build its variables from the facts.

use cel::{Context, Env, Program, Value};
use std::collections::HashMap;
use std::sync::Arc;

use crate::knowledge::findings::Finding;
use crate::registry::{PackageRecord, RegistryCounts, ReleaseRecord};

pub const VARIABLES: [&str; 4] = ["finding", "package", "release", "registry"];

const DAY_MS: i64 = 86_400_000;

/// What a condition may look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub finding: &'a Finding,
    pub package: Option<&'a PackageRecord>,
    pub release: Option<&'a ReleaseRecord>,
    pub dependents: i64,
    pub transitive_dependents: i64,
    pub registry: RegistryCounts,
    pub now: i64,
}

fn ts(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::Timestamp(t.fixed_offset()))
        .unwrap_or(Value::Null)
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let m: HashMap<String, Value> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    m.into()
}

fn opt_str(s: &Option<String>) -> Value {
    s.as_ref()
        .map(|s| Value::from(s.as_str()))
        .unwrap_or(Value::Null)
}

/// The four variables of the spec, for one evaluation.
pub fn variables(f: &Facts<'_>) -> [(&'static str, Value); 4] {
    let finding = f.finding;
    let labels: HashMap<String, Value> = finding
        .labels
        .iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => Value::from(s.as_str()),
                other => Value::from(other.to_string()),
            };
            (k.clone(), v)
        })
        .collect();
    let finding_v = map(vec![
        ("kind", finding.kind.as_str().into()),
        ("severity", finding.severity.as_str().into()),
        ("value", Value::Float(finding.value)),
        ("threshold", Value::Float(0.0)),
        ("age_s", Value::Int((f.now - finding.first_seen) / 1000)),
        ("count", Value::Int(1)),
        ("labels", labels.into()),
    ]);
    let package_v = match f.package {
        Some(p) => map(vec![
            ("name", p.name.as_str().into()),
            ("category", opt_str(&p.category)),
            ("author", opt_str(&p.author)),
            ("license", opt_str(&p.license)),
            ("downloads", Value::Int(p.downloads)),
            ("stars", Value::Int(p.stars)),
            ("status", p.status.as_str().into()),
            (
                "quality",
                p.quality.map(Value::Float).unwrap_or(Value::Null),
            ),
            ("dependents", Value::Int(f.dependents)),
            ("transitive_dependents", Value::Int(f.transitive_dependents)),
            ("age_days", Value::Int((f.now - p.created_at) / DAY_MS)),
            (
                "days_since_release",
                Value::Int((f.now - p.updated_at) / DAY_MS),
            ),
        ]),
        None => Value::Null,
    };
    let release_v = match f.release {
        Some(r) => map(vec![
            ("version", r.version.as_str().into()),
            ("published_at", ts(r.published_at)),
            ("signed", Value::Bool(r.signature.is_some())),
            ("signer", opt_str(&r.signer)),
            ("yanked", Value::Bool(r.yanked)),
            ("quarantined", Value::Bool(r.quarantined)),
        ]),
        None => Value::Null,
    };
    let registry_v = map(vec![
        ("packages", Value::Int(f.registry.packages)),
        ("quarantined", Value::Int(f.registry.quarantined)),
        ("now", ts(f.now)),
    ]);
    [
        ("finding", finding_v),
        ("package", package_v),
        ("release", release_v),
        ("registry", registry_v),
    ]
}

/// Evaluates a compiled condition; an error or a non-boolean result is an `Err` with the reason.
pub fn evaluate(env: &Arc<Env>, program: &Program, facts: &Facts<'_>) -> Result<bool, String> {
    let mut ctx = Context::with_env(Arc::clone(env));
    for (name, value) in variables(facts) {
        ctx.add_variable_from_value(name, value);
    }
    match program.execute(&ctx) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("gave {:?}, not a bool", other.type_of())),
        Err(e) => Err(e.to_string()),
    }
}

/// Compiles a `when` and checks it: it must parse, name only the spec's variables, and give a
/// boolean on representative facts.
pub fn compile_condition(env: &Arc<Env>, src: &str) -> Result<Program, String> {
    let program = env
        .compile(src)
        .map_err(|e| format!("does not compile: {}", e.to_string().trim()))?;
    let references = program.references();
    let mut unknown: Vec<String> = references
        .variables()
        .into_iter()
        .filter(|v| !VARIABLES.contains(v))
        .map(|v| v.to_string())
        .collect();
    unknown.sort();
    if !unknown.is_empty() {
        return Err(format!(
            "refers to unknown variable(s) {}; the variables are finding, package, release and registry",
            unknown.join(", ")
        ));
    }
    let sample = sample_finding();
    let package = sample_package();
    let release = sample_release();
    let facts = Facts {
        finding: &sample,
        package: Some(&package),
        release: Some(&release),
        dependents: 1,
        transitive_dependents: 2,
        registry: RegistryCounts {
            packages: 100,
            quarantined: 1,
        },
        now: 1_800_000_000_000,
    };
    let mut ctx = Context::with_env(Arc::clone(env));
    for (name, value) in variables(&facts) {
        ctx.add_variable_from_value(name, value);
    }
    match program.execute(&ctx) {
        Ok(Value::Bool(_)) => Ok(program),
        Ok(other) => Err(format!(
            "is not boolean: it gives a value of type {:?}",
            other.type_of()
        )),
        // A run-time error on sample facts (a missing label, say) is not a type error.
        Err(_) => Ok(program),
    }
}

fn sample_finding() -> Finding {
    use crate::knowledge::findings::{FindingState, PlanState};
    use crate::model::{FindingKind, Severity, Subject};
    Finding {
        id: "sample".into(),
        fingerprint: "sample".into(),
        kind: FindingKind::ChecksumMismatch,
        severity: Severity::Critical,
        subject: Subject {
            package: "sample".into(),
            version: Some("1.0.0".into()),
        },
        state: FindingState::Firing,
        value: 1.0,
        message: String::new(),
        labels: Default::default(),
        first_seen: 1_799_999_000_000,
        fired_at: None,
        last_seen: 1_800_000_000_000,
        cleared_at: None,
        resolved_at: None,
        plan_state: PlanState::New,
    }
}

fn sample_package() -> PackageRecord {
    PackageRecord {
        name: "sample".into(),
        description: String::new(),
        category: Some("web".into()),
        author: Some("someone".into()),
        license: Some("MIT".into()),
        repository: None,
        tags: vec![],
        keywords: vec![],
        downloads: 10,
        stars: 1,
        status: "active".into(),
        latest: Some("1.0.0".into()),
        quality: Some(90.0),
        quality_detail: None,
        production_ready: true,
        created_at: 1_700_000_000_000,
        updated_at: 1_790_000_000_000,
    }
}

fn sample_release() -> ReleaseRecord {
    ReleaseRecord {
        package: "sample".into(),
        version: "1.0.0".into(),
        published_at: 1_790_000_000_000,
        checksum: None,
        artifact: None,
        signature: Some(String::new()),
        signer: Some("k".into()),
        yanked: false,
        quarantined: false,
        dependencies: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Arc<Env> {
        Arc::new(Env::stdlib())
    }

    #[test]
    fn a_boolean_condition_on_known_variables_compiles() {
        assert!(compile_condition(
            &env(),
            "finding.severity == 'critical' && package.downloads >= 0"
        )
        .is_ok());
    }

    #[test]
    fn unknown_variables_are_refused() {
        let e = compile_condition(&env(), "pkg.downloads > 1").unwrap_err();
        assert!(e.contains("unknown variable(s) pkg"), "{e}");
    }

    #[test]
    fn non_boolean_conditions_are_refused() {
        let e = compile_condition(&env(), "package.downloads + 1").unwrap_err();
        assert!(e.contains("not boolean"), "{e}");
    }

    #[test]
    fn syntax_errors_are_refused() {
        assert!(compile_condition(&env(), "finding.severity == ").is_err());
    }
}
