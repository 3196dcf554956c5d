//! The facts as CEL values, built straight into the interpreter's own types with only the fields some condition reads.
//!
//! Building every field of every variable for every finding was most of an evaluation's cost.
//! At load time [`Uses::of`] walks the compiled conditions and notes, per variable, which
//! fields are selected (`package.downloads`) or whether the variable is used whole (passed to a
//! function, iterated); the builders below then skip the rest.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
};
use cel::common::value::Val;
use cel::Program;
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
    fn wants(&self, field: &str) -> bool {
        match self {
            Self::Unused => false,
            Self::Some(s) => s.contains(field),
            Self::All => true,
        }
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
            Expr::Unspecified | Expr::Literal(_) => {}
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
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    self.walk(t);
                }
                c.args.iter().for_each(|a| self.walk(a));
            }
            Expr::List(l) => l.elements.iter().for_each(|x| self.walk(x)),
            Expr::Map(m) => m.entries.iter().for_each(|x| self.entry(x)),
            Expr::Struct(s) => s.entries.iter().for_each(|x| self.entry(x)),
            Expr::Comprehension(c) => {
                for x in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    self.walk(x);
                }
            }
        }
    }

    fn entry(&mut self, e: &cel::common::ast::IdedEntryExpr) {
        match &e.expr {
            EntryExpr::StructField(f) => self.walk(&f.value),
            EntryExpr::MapEntry(m) => {
                self.walk(&m.key);
                self.walk(&m.value);
            }
        }
    }
}

/// A map of the wanted fields only; a field's value is computed only when wanted.
struct Builder<'v, 'f> {
    fields: &'f Fields,
    map: HashMap<CelMapKey<'v>, V<'v>>,
}

impl<'v, 'f> Builder<'v, 'f> {
    fn new(fields: &'f Fields) -> Self {
        let wanted = match fields {
            Fields::Unused => 0,
            Fields::Some(s) => s.len(),
            Fields::All => 12,
        };
        Self {
            fields,
            map: HashMap::with_capacity(wanted),
        }
    }
    fn put(&mut self, field: &'static str, value: impl FnOnce() -> V<'v>) {
        if self.fields.wants(field) {
            self.map.insert(CelMapKey::from(field), value());
        }
    }
    fn done(self) -> V<'v> {
        Box::new(CelMap::from(self.map))
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
    let mut b = Builder::new(fields);
    b.put("kind", || text(f.kind.as_str()));
    b.put("severity", || text(f.severity.as_str()));
    b.put("value", || Box::new(CelDouble::from(f.value)));
    b.put("threshold", || Box::new(CelDouble::from(0.0)));
    b.put("age_s", || int((now - f.first_seen) / 1000));
    b.put("count", || int(1));
    b.put("labels", || {
        let mut labels: HashMap<CelMapKey<'v>, V<'v>> = HashMap::with_capacity(f.labels.len());
        for (k, v) in &f.labels {
            let v: V<'v> = match v {
                serde_json::Value::String(s) => text(s),
                other => Box::new(CelString::from(other.to_string())),
            };
            labels.insert(CelMapKey::from(k.as_str()), v);
        }
        Box::new(CelMap::from(labels))
    });
    b.done()
}

/// The `package` variable (null when the package is unknown).
pub fn package<'v>(
    p: Option<&'v PackageRecord>,
    dependents: i64,
    transitive: i64,
    now: i64,
    fields: &Fields,
) -> V<'v> {
    let Some(p) = p else {
        return Box::new(CelNull);
    };
    let mut b = Builder::new(fields);
    b.put("name", || text(&p.name));
    b.put("category", || opt_text(&p.category));
    b.put("author", || opt_text(&p.author));
    b.put("license", || opt_text(&p.license));
    b.put("downloads", || int(p.downloads));
    b.put("stars", || int(p.stars));
    b.put("status", || text(&p.status));
    b.put("quality", || match p.quality {
        Some(q) => Box::new(CelDouble::from(q)),
        None => Box::new(CelNull),
    });
    b.put("dependents", || int(dependents));
    b.put("transitive_dependents", || int(transitive));
    b.put("age_days", || int((now - p.created_at) / DAY_MS));
    b.put("days_since_release", || int((now - p.updated_at) / DAY_MS));
    b.done()
}

/// The `release` variable (null where the finding is package-wide).
pub fn release<'v>(r: Option<&'v ReleaseRecord>, fields: &Fields) -> V<'v> {
    let Some(r) = r else {
        return Box::new(CelNull);
    };
    let mut b = Builder::new(fields);
    b.put("version", || text(&r.version));
    b.put("published_at", || ts(r.published_at));
    b.put("signed", || Box::new(CelBool::from(r.signature.is_some())));
    b.put("signer", || opt_text(&r.signer));
    b.put("yanked", || Box::new(CelBool::from(r.yanked)));
    b.put("quarantined", || Box::new(CelBool::from(r.quarantined)));
    b.done()
}

/// The `registry` variable.
pub fn registry(counts: RegistryCounts, now: i64, fields: &Fields) -> V<'static> {
    let mut b = Builder::new(fields);
    b.put("packages", || int(counts.packages));
    b.put("quarantined", || int(counts.quarantined));
    b.put("now", || ts(now));
    b.done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cel::Env;

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
        assert_eq!(u.release, Fields::All);
        let u = uses("finding.labels.exists(k, k == 'x')");
        assert_eq!(
            u.finding,
            Fields::Some(BTreeSet::from(["labels".to_string()]))
        );
    }
}
