//! The CEL side of policies: compile and type-check a `when`, and build its variables from the facts.

use cel::{Context, Env, Program, Value};
use std::sync::Arc;

pub use super::values::{self, Uses};
use crate::knowledge::findings::Finding;
use crate::registry::{PackageRecord, RegistryCounts, ReleaseRecord};

pub const VARIABLES: [&str; 4] = ["finding", "package", "release", "registry"];

/// `package` is a reserved word in CEL, but it is the spec's name for the package variable. A
/// condition's identifier `package` is renamed to this (same length, so error columns hold)
/// before it is compiled, and the variable is bound under it.
pub(crate) const PACKAGE_ALIAS: &str = "__pkg__";

/// Renames the identifier `package` (not a field `x.package`, not inside a string) to the alias.
pub fn rename_package(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut quote: Option<(char, bool)> = None; // (quote char, triple)
    while i < chars.len() {
        let c = chars[i];
        if let Some((q, triple)) = quote {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == q {
                if !triple {
                    quote = None;
                } else if chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) {
                    out.push(q);
                    out.push(q);
                    i += 3;
                    quote = None;
                    continue;
                }
            }
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            let triple = chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c);
            quote = Some((c, triple));
            out.push(c);
            if triple {
                out.push(c);
                out.push(c);
                i += 3;
            } else {
                i += 1;
            }
            continue;
        }
        let word = "package";
        let ends = i + word.len();
        let is_word = ends <= chars.len() && chars[i..ends].iter().copied().eq(word.chars());
        let before_ok = i == 0
            || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == '.');
        let after_ok =
            ends >= chars.len() || !(chars[ends].is_alphanumeric() || chars[ends] == '_');
        if is_word && before_ok && after_ok {
            out.push_str(PACKAGE_ALIAS);
            i = ends;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

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

/// The evaluation context of one set of facts: built once, shared by every policy's condition.
pub fn context<'v>(env: &Arc<Env>, f: &Facts<'v>) -> Context<'v, 'v> {
    context_for(env, f, &Uses::default())
}

/// The context with only the variables and fields that `uses` names: no condition reads the others.
pub fn context_for<'v>(env: &Arc<Env>, f: &Facts<'v>, uses: &Uses) -> Context<'v, 'v> {
    let mut ctx = Context::with_env(Arc::clone(env));
    bind(&mut ctx, f, uses);
    ctx
}

/// Binds the facts' variables in an existing context, replacing the previous ones (the planner
/// reuses one context for a whole pass).
pub fn bind<'v>(ctx: &mut Context<'v, 'v>, f: &Facts<'v>, uses: &Uses) {
    if uses.finding.any() {
        ctx.add_variable_as_val("finding", values::finding(f.finding, f.now, &uses.finding));
    }
    if uses.package.any() {
        ctx.add_variable_as_val(
            PACKAGE_ALIAS,
            values::package(
                f.package,
                f.dependents,
                f.transitive_dependents,
                f.now,
                &uses.package,
            ),
        );
    }
    if uses.release.any() {
        ctx.add_variable_as_val("release", values::release(f.release, &uses.release));
    }
    if uses.registry.any() {
        ctx.add_variable_as_val(
            "registry",
            values::registry(f.registry, f.now, &uses.registry),
        );
    }
}

/// Evaluates a compiled condition; an error or a non-boolean result is an `Err` with the reason.
pub fn evaluate(env: &Arc<Env>, program: &Program, facts: &Facts<'_>) -> Result<bool, String> {
    run(program, &context(env, facts))
}

/// Runs a compiled condition in a prepared context.
pub fn run(program: &Program, ctx: &Context<'_, '_>) -> Result<bool, String> {
    match program.execute(ctx) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("gave {:?}, not a bool", other.type_of())),
        Err(e) => Err(e.to_string()),
    }
}

/// Compiles a `when` and checks it: it must be short enough, parse, stay within the cost budget,
/// name only the spec's variables, and give a boolean on representative facts.
pub fn compile_condition(env: &Arc<Env>, src: &str) -> Result<Program, String> {
    if src.len() > super::cost::MAX_LEN {
        return Err(format!(
            "is {} bytes long; a condition may be at most {} bytes",
            src.len(),
            super::cost::MAX_LEN
        ));
    }
    let program = env
        .compile(&rename_package(src))
        .map_err(|e| format!("does not compile: {}", e.to_string().trim()))?;
    let references = program.references();
    let mut bound = std::collections::BTreeSet::new();
    super::cost::bound_names(program.expression(), &mut bound);
    let mut unknown: Vec<String> = references
        .variables()
        .into_iter()
        .filter(|v| !VARIABLES.contains(v) && *v != PACKAGE_ALIAS && !bound.contains(*v))
        .map(|v| v.to_string())
        .collect();
    unknown.sort();
    if !unknown.is_empty() {
        return Err(format!(
            "refers to unknown variable(s) {}; the variables are finding, package, release and registry",
            unknown.join(", ")
        ));
    }
    let unknown = values::unknown_fields(&Uses::of(std::iter::once(&program)));
    if !unknown.is_empty() {
        return Err(unknown.join("; "));
    }
    let steps = super::cost::steps(program.expression());
    if steps > super::cost::BUDGET {
        return Err(format!(
            "may take up to {steps} evaluation steps, over the budget of {}; iterate over less",
            super::cost::BUDGET
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
    let ctx = context(env, &facts);
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

/// Representative facts: what conditions are type-checked on at load time, and what tests start from.
pub(crate) fn sample_finding() -> Finding {
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

pub(crate) fn sample_package() -> PackageRecord {
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

pub(crate) fn sample_release() -> ReleaseRecord {
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
    fn a_misspelt_field_is_refused_with_the_fields_there_are() {
        let e = compile_condition(&env(), "finding.severty == 'critical'").unwrap_err();
        assert!(
            e.contains("`finding.severty` is not a field of `finding`"),
            "{e}"
        );
        assert!(e.contains("severity"), "{e}");
        let e = compile_condition(&env(), "package.download > 10 && release.signed").unwrap_err();
        assert!(e.contains("`package.download`"), "{e}");
        // Every documented field of every variable compiles; labels' keys are free.
        assert!(compile_condition(
            &env(),
            "finding.kind == 'x' && finding.value >= finding.threshold && finding.age_s >= 0 \
             && finding.count > 0 && finding.labels.signer == 'a' && package.name != '' \
             && package.category == null && package.author == null && package.license == null \
             && package.downloads > 0 && package.stars >= 0 && package.status == 'active' \
             && package.quality == null && package.dependents >= 0 \
             && package.transitive_dependents >= 0 && package.age_days >= 0 \
             && package.days_since_release >= 0 && release.version != '' \
             && release.published_at < registry.now && release.signed && release.signer != '' \
             && !release.yanked && !release.quarantined && registry.packages > 0 \
             && registry.quarantined >= 0"
        )
        .is_ok());
    }

    #[test]
    fn macro_variables_are_not_unknown_variables() {
        assert!(compile_condition(&env(), "finding.labels.all(k, k != 'x')").is_ok());
        let e = compile_condition(&env(), "[1].all(k, k > nope)").unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn non_boolean_conditions_are_refused() {
        let e = compile_condition(&env(), "package.downloads + 1").unwrap_err();
        assert!(e.contains("not boolean"), "{e}");
    }

    #[test]
    fn the_spec_variable_package_is_usable_though_cel_reserves_the_word() {
        assert_eq!(
            rename_package("package.name == 'package' && x.package == \"a package\""),
            "__pkg__.name == 'package' && x.package == \"a package\""
        );
        assert_eq!(
            rename_package("packages + package_x"),
            "packages + package_x"
        );
    }

    #[test]
    fn oversized_and_unbounded_conditions_are_refused_before_they_run() {
        let long = format!("{} == 1", "1 + ".repeat(2000));
        assert!(compile_condition(&env(), &long)
            .unwrap_err()
            .contains("at most"));
        let list = format!("[{}]", vec!["1"; 200].join(","));
        let deep = format!("{list}.all(a, {list}.all(b, {list}.all(c, a + b + c > 0)))");
        let e = compile_condition(&env(), &deep).unwrap_err();
        assert!(e.contains("budget"), "{e}");
        let nested = format!("{}true{}", "(".repeat(500), ")".repeat(500));
        assert!(compile_condition(&env(), &nested).is_err());
    }

    #[test]
    fn syntax_errors_are_refused() {
        assert!(compile_condition(&env(), "finding.severity == ").is_err());
    }
}

#[cfg(test)]
mod eval_tests {
    use super::*;

    #[test]
    fn conditions_see_the_package_release_and_finding_facts() {
        let env = Arc::new(Env::stdlib());
        let finding = sample_finding();
        let package = sample_package();
        let release = sample_release();
        let facts = Facts {
            finding: &finding,
            package: Some(&package),
            release: Some(&release),
            dependents: 3,
            transitive_dependents: 7,
            registry: RegistryCounts {
                packages: 100,
                quarantined: 1,
            },
            now: 1_800_000_000_000,
        };
        let check = |src: &str| evaluate(&env, &compile_condition(&env, src).unwrap(), &facts);
        assert_eq!(
            check("package.downloads == 10 && package.transitive_dependents == 7"),
            Ok(true)
        );
        assert_eq!(check("package.downloads > 10"), Ok(false));
        assert_eq!(
            check("release.signed && finding.kind == 'checksum_mismatch'"),
            Ok(true)
        );
        assert_eq!(check("registry.now > release.published_at"), Ok(true));
        // A run-time error (a missing label) is an error, which the planner counts as false.
        assert!(check("finding.labels.nope == 'x'").is_err());
    }
}
