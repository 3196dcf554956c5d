//! The facts as CEL values, built straight into the interpreter's own types with only the fields some condition reads.
//!
//! Building every field of every variable for every finding was most of an evaluation's cost.
//! At load time [`Uses::of`] walks the compiled conditions and notes, per variable, which
//! fields are selected (`package.downloads`) or whether the variable is used whole (passed to a
//! function, iterated); the builders below then skip the rest.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use cel::common::traits::Indexer;
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, Type, MAP_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::{ExecutionError, Program};
use std::collections::{BTreeSet, HashMap};

use super::facts::PACKAGE_ALIAS;
use crate::knowledge::findings::Finding;
use crate::registry::{PackageRecord, RegistryCounts, ReleaseRecord};

const DAY_MS: i64 = 86_400_000;

/// A CEL value that may borrow from the facts (strings are not copied).
pub type V<'v> = Box<dyn Val + 'v>;

/// The fields of one variable that conditions read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fields {
    #[default]
    Unused,
    Some(BTreeSet<String>),
    All,
}

impl Fields {
    pub fn any(&self) -> bool {
        !matches!(self, Self::Unused)
    }
    fn add(&mut self, field: &str) {
        match self {
            Self::Unused => *self = Self::Some(BTreeSet::from([field.to_string()])),
            Self::Some(s) => {
                s.insert(field.to_string());
            }
            Self::All => {}
        }
    }
}

/// Per variable, what conditions read. The default reads everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uses {
    pub finding: Fields,
    pub package: Fields,
    pub release: Fields,
    pub registry: Fields,
}

impl Default for Uses {
    fn default() -> Self {
        Self {
            finding: Fields::All,
            package: Fields::All,
            release: Fields::All,
            registry: Fields::All,
        }
    }
}

impl Uses {
    fn none() -> Self {
        Self {
            finding: Fields::Unused,
            package: Fields::Unused,
            release: Fields::Unused,
            registry: Fields::Unused,
        }
    }

    fn slot(&mut self, variable: &str) -> Option<&mut Fields> {
        match variable {
            "finding" => Some(&mut self.finding),
            PACKAGE_ALIAS => Some(&mut self.package),
            "release" => Some(&mut self.release),
            "registry" => Some(&mut self.registry),
            _ => None,
        }
    }

    /// What these compiled conditions read.
    pub fn of<'a>(programs: impl Iterator<Item = &'a Program>) -> Self {
        let mut u = Self::none();
        for p in programs {
            u.walk(p.expression());
        }
        u
    }

    fn walk(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Ident(name) => {
                if let Some(f) = self.slot(name) {
                    *f = Fields::All;
                }
            }
            Expr::Select(s) => match &s.operand.expr {
                Expr::Ident(name) => {
                    if let Some(f) = self.slot(name) {
                        f.add(&s.field);
                    }
                }
                _ => self.walk(&s.operand),
            },
            // `release != null`: a presence test reads no field.
            Expr::Call(c)
                if (c.func_name == "_==_" || c.func_name == "_!=_")
                    && c.args.len() == 2
                    && presence(&c.args[0], &c.args[1]).is_some() =>
            {
                if let Some(name) = presence(&c.args[0], &c.args[1]) {
                    if let Some(f) = self.slot(name) {
                        if !f.any() {
                            *f = Fields::Some(BTreeSet::new());
                        }
                    }
                }
            }
            _ => {
                for child in super::cost::children(e) {
                    self.walk(child);
                }
            }
        }
    }
}

/// The variable compared with `null` in `a == null` / `null != a`, if that is what this is.
fn presence<'e>(a: &'e IdedExpr, b: &'e IdedExpr) -> Option<&'e str> {
    match (&a.expr, &b.expr) {
        (Expr::Ident(n), Expr::Literal(LiteralValue::Null))
        | (Expr::Literal(LiteralValue::Null), Expr::Ident(n)) => Some(n),
        _ => None,
    }
}

/// Where a variable's fields come from.
#[derive(Debug, Clone, Copy)]
enum Source<'v> {
    Finding(&'v Finding, i64),
    Package(&'v PackageRecord, i64, i64, i64),
    Release(&'v ReleaseRecord),
    Registry(RegistryCounts, i64),
}

const FINDING_FIELDS: [&str; 7] = [
    "kind",
    "severity",
    "value",
    "threshold",
    "age_s",
    "count",
    "labels",
];
const PACKAGE_FIELDS: [&str; 12] = [
    "name",
    "category",
    "author",
    "license",
    "downloads",
    "stars",
    "status",
    "quality",
    "dependents",
    "transitive_dependents",
    "age_days",
    "days_since_release",
];
const RELEASE_FIELDS: [&str; 6] = [
    "version",
    "published_at",
    "signed",
    "signer",
    "yanked",
    "quarantined",
];
const REGISTRY_FIELDS: [&str; 3] = ["packages", "quarantined", "now"];

/// The fields conditions select that the fact schema (docs/policies.md) does not have, as
/// `variable.field`, with the fields the variable does have: a misspelt `finding.severty` is a
/// load error, not a condition that is quietly never true.
pub fn unknown_fields(uses: &Uses) -> Vec<String> {
    let mut out = Vec::new();
    for (variable, fields, known) in [
        ("finding", &uses.finding, &FINDING_FIELDS[..]),
        ("package", &uses.package, &PACKAGE_FIELDS[..]),
        ("release", &uses.release, &RELEASE_FIELDS[..]),
        ("registry", &uses.registry, &REGISTRY_FIELDS[..]),
    ] {
        if let Fields::Some(selected) = fields {
            for f in selected.iter().filter(|f| !known.contains(&f.as_str())) {
                out.push(format!(
                    "`{variable}.{f}` is not a field of `{variable}` (its fields: {})",
                    known.join(", ")
                ));
            }
        }
    }
    out
}

impl<'v> Source<'v> {
    fn names(&self) -> &'static [&'static str] {
        match self {
            Self::Finding(..) => &FINDING_FIELDS,
            Self::Package(..) => &PACKAGE_FIELDS,
            Self::Release(..) => &RELEASE_FIELDS,
            Self::Registry(..) => &REGISTRY_FIELDS,
        }
    }

    /// One field's value, computed when asked.
    fn field(&self, name: &str) -> Option<V<'v>> {
        Some(match *self {
            Self::Finding(f, now) => match name {
                "kind" => text(f.kind.as_str()),
                "severity" => text(f.severity.as_str()),
                "value" => Box::new(CelDouble::from(f.value)),
                "threshold" => Box::new(CelDouble::from(0.0)),
                "age_s" => int((now - f.first_seen) / 1000),
                "count" => int(1),
                "labels" => {
                    let mut labels: HashMap<CelMapKey<'v>, V<'v>> =
                        HashMap::with_capacity(f.labels.len());
                    for (k, v) in &f.labels {
                        let v: V<'v> = match v {
                            serde_json::Value::String(s) => text(s),
                            other => Box::new(CelString::from(other.to_string())),
                        };
                        labels.insert(CelMapKey::from(k.as_str()), v);
                    }
                    Box::new(CelMap::from(labels))
                }
                _ => return None,
            },
            Self::Package(p, dependents, transitive, now) => match name {
                "name" => text(&p.name),
                "category" => opt_text(&p.category),
                "author" => opt_text(&p.author),
                "license" => opt_text(&p.license),
                "downloads" => int(p.downloads),
                "stars" => int(p.stars),
                "status" => text(&p.status),
                "quality" => match p.quality {
                    Some(q) => Box::new(CelDouble::from(q)),
                    None => Box::new(CelNull),
                },
                "dependents" => int(dependents),
                "transitive_dependents" => int(transitive),
                "age_days" => int((now - p.created_at) / DAY_MS),
                "days_since_release" => int((now - p.updated_at) / DAY_MS),
                _ => return None,
            },
            Self::Release(r) => match name {
                "version" => text(&r.version),
                "published_at" => ts(r.published_at),
                "signed" => Box::new(CelBool::from(r.signature.is_some())),
                "signer" => opt_text(&r.signer),
                "yanked" => Box::new(CelBool::from(r.yanked)),
                "quarantined" => Box::new(CelBool::from(r.quarantined)),
                _ => return None,
            },
            Self::Registry(counts, now) => match name {
                "packages" => int(counts.packages),
                "quarantined" => int(counts.quarantined),
                "now" => ts(now),
                _ => return None,
            },
        })
    }

    /// The variable as conditions need it: a whole map when some condition uses it whole, a
    /// lazy map that computes a field when selected otherwise.
    fn value(self, fields: &Fields) -> V<'v> {
        match fields {
            Fields::All => {
                let names = self.names();
                let mut map: HashMap<CelMapKey<'v>, V<'v>> = HashMap::with_capacity(names.len());
                for name in names {
                    if let Some(v) = self.field(name) {
                        map.insert(CelMapKey::from(*name), v);
                    }
                }
                Box::new(CelMap::from(map))
            }
            _ => Box::new(Lazy(self)),
        }
    }
}

/// A map-typed value whose fields are computed when a condition selects them
/// (`package.downloads`, `has(package.quality)`); conditions that use the variable otherwise
/// get a whole [`CelMap`] instead (see [`Uses`]).
#[derive(Debug, Clone, Copy)]
struct Lazy<'v>(Source<'v>);

impl Val for Lazy<'_> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn into_indexer<'w>(self: Box<Self>) -> Option<Box<dyn Indexer + 'w>>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(*self)
    }
}

impl Indexer for Lazy<'_> {
    fn get<'b, 'w>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        let name = idx
            .downcast_ref::<CelString>()
            .map(|s| s.inner().to_string());
        match name.as_deref().and_then(|n| self.0.field(n)) {
            Some(v) => Ok(CowVal::Owned(v)),
            None => Err(ExecutionError::NoSuchKey(std::sync::Arc::new(
                name.unwrap_or_default(),
            ))),
        }
    }

    fn steal<'w>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

fn ts(ms: i64) -> V<'static> {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => Box::new(CelTimestamp::from(t.fixed_offset())),
        None => Box::new(CelNull),
    }
}

fn int(i: i64) -> V<'static> {
    Box::new(CelInt::from(i))
}

fn text(s: &str) -> V<'_> {
    Box::new(CelString::from(s))
}

fn opt_text(s: &Option<String>) -> V<'_> {
    match s {
        Some(s) => text(s),
        None => Box::new(CelNull),
    }
}

/// The `finding` variable.
pub fn finding<'v>(f: &'v Finding, now: i64, fields: &Fields) -> V<'v> {
    Source::Finding(f, now).value(fields)
}

/// The `package` variable (null when the package is unknown).
pub fn package<'v>(
    p: Option<&'v PackageRecord>,
    dependents: i64,
    transitive: i64,
    now: i64,
    fields: &Fields,
) -> V<'v> {
    match p {
        Some(p) => Source::Package(p, dependents, transitive, now).value(fields),
        None => Box::new(CelNull),
    }
}

/// The `release` variable (null where the finding is package-wide).
pub fn release<'v>(r: Option<&'v ReleaseRecord>, fields: &Fields) -> V<'v> {
    match r {
        Some(r) => Source::Release(r).value(fields),
        None => Box::new(CelNull),
    }
}

/// The `registry` variable.
pub fn registry(counts: RegistryCounts, now: i64, fields: &Fields) -> V<'static> {
    Source::Registry(counts, now).value(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::facts::{self, Facts};
    use crate::plan::policy::PolicySet;
    use cel::Env;
    use std::path::PathBuf;

    /// Lazily built facts must give every condition the same answer as whole maps.
    #[test]
    fn lazy_facts_answer_exactly_as_whole_maps() {
        let conditions = [
            "package.downloads > 100 && release.signed",
            "release != null && !release.quarantined",
            "null == release || release.signer == 'pub-1'",
            "has(package.quality) && package.quality > 50.0",
            "finding.labels.exists(k, k == 'source') && finding.severity == 'critical'",
            "registry.now > release.published_at && registry.packages > 1",
            "package.license == null && package.age_days >= 0",
        ];
        use crate::plan::facts::{sample_finding, sample_package, sample_release};
        let finding = Finding {
            labels: [("source".to_string(), serde_json::Value::from("x"))]
                .into_iter()
                .collect(),
            ..sample_finding()
        };
        let package = PackageRecord {
            license: None,
            downloads: 500,
            ..sample_package()
        };
        let release = ReleaseRecord {
            signer: Some("pub-1".into()),
            ..sample_release()
        };
        for src in conditions {
            let policy = format!(
                "[[policy]]\nid = \"x\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nwhen = \"{src}\"\n"
            );
            let set = PolicySet::from_sources(&[(PathBuf::from("x.toml"), policy)]).expect(src);
            let program = set.policies[0].program.as_ref().expect("a condition");
            for rel in [Some(&release), None] {
                let f = Facts {
                    finding: &finding,
                    package: Some(&package),
                    release: rel,
                    dependents: 1,
                    transitive_dependents: 2,
                    registry: RegistryCounts {
                        packages: 10,
                        quarantined: 0,
                    },
                    now: 1_000_000,
                };
                let whole = facts::run(program, &facts::context(&set.env, &f));
                let lazy = facts::run(program, &facts::context_for(&set.env, &f, &set.uses));
                assert_eq!(
                    whole.is_ok(),
                    lazy.is_ok(),
                    "{src} ({rel:?}): {whole:?} vs {lazy:?}"
                );
                if let (Ok(a), Ok(b)) = (&whole, &lazy) {
                    assert_eq!(a, b, "{src}");
                }
            }
        }
    }

    fn uses(src: &str) -> Uses {
        let env = Env::stdlib();
        let p = env
            .compile(&super::super::facts::rename_package(src))
            .expect("compiles");
        Uses::of(std::iter::once(&p))
    }

    #[test]
    fn only_selected_fields_are_wanted_and_a_variable_used_whole_wants_all() {
        let u = uses("package.downloads > 1 && release.signed && has(package.quality)");
        assert_eq!(
            u.package,
            Fields::Some(BTreeSet::from([
                "downloads".to_string(),
                "quality".to_string()
            ]))
        );
        assert_eq!(
            u.release,
            Fields::Some(BTreeSet::from(["signed".to_string()]))
        );
        assert_eq!((u.finding.any(), u.registry.any()), (false, false));
        let u = uses("release != null && size(package) > 0");
        assert_eq!(u.package, Fields::All);
        assert_eq!(u.release, Fields::Some(BTreeSet::new()));
        let u = uses("release == release");
        assert_eq!(u.release, Fields::All);
        let u = uses("finding.labels.exists(k, k == 'x')");
        assert_eq!(
            u.finding,
            Fields::Some(BTreeSet::from(["labels".to_string()]))
        );
    }
}
