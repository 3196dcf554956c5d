//! The quality model of `policies/quality.toml`: guard weights, critical guards and bands; each package's guard results, score and band.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

use crate::located::{line_of, toml_error};
use crate::monitor::facts::PackageFacts;

/// A quality file that cannot be used: `file:line: field: reason`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {field}: {reason}")]
pub struct QualityError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    quality: Spanned<Section>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    guards: Spanned<HashMap<String, Spanned<f64>>>,
    #[serde(default)]
    critical: Vec<Spanned<String>>,
    #[serde(default)]
    bands: HashMap<String, Spanned<f64>>,
}

/// Guard weights, the guards a production-ready package must pass, and bands (best first).
#[derive(Debug, Clone, PartialEq)]
pub struct QualityModel {
    pub guards: Vec<(String, f64)>,
    pub critical: Vec<String>,
    pub bands: Vec<(String, f64)>,
    /// Bit `i`: guard `i` is critical.
    critical_mask: u128,
}

/// At most this many guards (a package's failed guards are kept as a bit mask).
pub const MAX_GUARDS: usize = 128;

/// A score as [`QualityModel::tally`] gives it: the band as its rank, the failed guards as bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tally {
    pub score: f64,
    pub band: usize,
    pub failed: u128,
}

/// The band below every configured one.
pub const LOWEST_BAND: &str = "not_ready";

/// The spec's example model: mapek's own guards.
pub const DEFAULT_MODEL: &str = r#"
[quality]
guards = { signed = 20, checksum = 20, license = 8, readme = 7, tests = 8, metadata = 10, maintained = 10, adoption = 7, no_install_failures = 10 }
critical = ["signed", "checksum", "license", "metadata"]
bands = { production_ready = 95, needs_improvement = 80 }
"#;

/// A package's score under the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub score: f64,
    pub band: String,
    pub failed: Vec<String>,
}

impl Default for QualityModel {
    fn default() -> Self {
        Self::parse(Path::new("(built-in quality model)"), DEFAULT_MODEL)
            .expect("the built-in quality model parses")
    }
}

impl QualityModel {
    /// `DIR/quality.toml`, or the built-in model when there is none.
    pub fn load(dir: &Path) -> Result<Self, QualityError> {
        let file = dir.join("quality.toml");
        match std::fs::read_to_string(&file) {
            Ok(src) => Self::parse(&file, &src),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(QualityError {
                file,
                line: 0,
                field: "-".into(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }

    pub fn parse(file: &Path, src: &str) -> Result<Self, QualityError> {
        let err = |at: usize, field: &str, reason: String| QualityError {
            file: file.to_path_buf(),
            line: line_of(src, at),
            field: field.into(),
            reason,
        };
        let parsed: File = toml::from_str(src).map_err(|e| {
            let (line, reason) = toml_error(src, &e);
            QualityError {
                file: file.to_path_buf(),
                line,
                field: crate::located::field_at(src, line, &reason),
                reason,
            }
        })?;
        let section = parsed.quality.into_inner();
        let guards_at = section.guards.span().start;
        let mut guards: Vec<(String, f64)> = Vec::new();
        for (name, w) in section.guards.into_inner() {
            let weight = *w.get_ref();
            if !weight.is_finite() || weight < 0.0 {
                return Err(err(
                    w.span().start,
                    &format!("quality.guards.{name}"),
                    format!("weight {weight} must be a number of at least 0"),
                ));
            }
            guards.push((name, weight));
        }
        guards.sort_by(|a, b| a.0.cmp(&b.0));
        if guards.len() > MAX_GUARDS {
            return Err(err(
                guards_at,
                "quality.guards",
                format!("{} guards; at most {MAX_GUARDS}", guards.len()),
            ));
        }
        if guards.iter().map(|g| g.1).sum::<f64>() <= 0.0 {
            return Err(err(
                guards_at,
                "quality.guards",
                "the weights must not all be zero".into(),
            ));
        }
        let mut critical = Vec::new();
        for c in section.critical {
            if !guards.iter().any(|g| &g.0 == c.get_ref()) {
                return Err(err(
                    c.span().start,
                    "quality.critical",
                    format!("`{}` is not one of the guards", c.get_ref()),
                ));
            }
            critical.push(c.into_inner());
        }
        let mut bands = Vec::new();
        for (name, t) in section.bands {
            let v = *t.get_ref();
            if !(0.0..=100.0).contains(&v) {
                return Err(err(
                    t.span().start,
                    &format!("quality.bands.{name}"),
                    format!("{v} is outside 0-100"),
                ));
            }
            if name == LOWEST_BAND {
                return Err(err(
                    t.span().start,
                    &format!("quality.bands.{name}"),
                    format!("`{LOWEST_BAND}` is the name of the band below all others"),
                ));
            }
            bands.push((name, v));
        }
        bands.sort_by(|a, b| b.1.total_cmp(&a.1));
        let critical_mask = guards
            .iter()
            .enumerate()
            .filter(|(_, g)| critical.contains(&g.0))
            .fold(0u128, |m, (i, _)| m | 1 << i);
        Ok(Self {
            guards,
            critical,
            bands,
            critical_mask,
        })
    }

    /// score = 100 * (weights of passed guards) / (all weights); the band is the best one whose
    /// threshold the score reaches, except that the best band also needs every critical guard.
    pub fn score(&self, passed: impl Fn(&str) -> bool) -> Score {
        let t = self.tally(|i| passed(&self.guards[i].0));
        Score {
            score: t.score,
            band: self.band_name(t.band).to_string(),
            failed: self.failed_names(t.failed),
        }
    }

    /// [`QualityModel::score`] without allocating, for scoring every package every cycle:
    /// `passed(i)` judges the model's guard `i`.
    pub fn tally(&self, passed: impl Fn(usize) -> bool) -> Tally {
        let (mut total, mut got, mut failed) = (0.0, 0.0, 0u128);
        for (i, (_, w)) in self.guards.iter().enumerate() {
            total += w;
            if passed(i) {
                got += w;
            } else {
                failed |= 1 << i;
            }
        }
        let score = 100.0 * got / total;
        let critical_ok = failed & self.critical_mask == 0;
        let band = self
            .bands
            .iter()
            .enumerate()
            .position(|(i, (_, t))| score >= *t && (i > 0 || critical_ok))
            .unwrap_or(self.bands.len());
        Tally {
            score,
            band,
            failed,
        }
    }

    /// The name of band `rank` (as [`QualityModel::band_rank`] counts).
    pub fn band_name(&self, rank: usize) -> &str {
        self.bands.get(rank).map_or(LOWEST_BAND, |b| b.0.as_str())
    }

    /// The names of the guards in `failed`, in the model's order.
    pub fn failed_names(&self, failed: u128) -> Vec<String> {
        self.failed_iter(failed).map(str::to_string).collect()
    }

    /// Whether `names` are exactly the guards in `failed`, in the model's order.
    pub fn failed_are(&self, failed: u128, names: &[String]) -> bool {
        self.failed_iter(failed)
            .eq(names.iter().map(String::as_str))
    }

    fn failed_iter(&self, failed: u128) -> impl Iterator<Item = &str> {
        self.guards
            .iter()
            .enumerate()
            .filter(move |(i, _)| failed & (1 << i) != 0)
            .map(|(_, g)| g.0.as_str())
    }

    /// How each guard is judged, in the model's order.
    pub fn checks(&self) -> Vec<Check> {
        self.guards.iter().map(|g| Check::of(&g.0)).collect()
    }

    /// How good a band is: 0 for the best, larger below.
    pub fn band_rank(&self, band: &str) -> usize {
        self.bands
            .iter()
            .position(|b| b.0 == band)
            .unwrap_or(self.bands.len())
    }
}

/// What the registry and the telemetry say of one package, beyond its record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence {
    /// The latest release's signature verified against a trusted key (None: not observed yet).
    pub signed: Option<bool>,
    /// The latest release's artifact matches its checksum (None: not observed yet).
    pub checksum: Option<bool>,
    pub dependents: u32,
    pub days_since_release: Option<f64>,
    /// Install success over the last 3 days (None: no installs).
    pub install_success: Option<f64>,
}

/// Packages with at least this many downloads count as adopted even with no dependents.
pub const ADOPTION_DOWNLOADS: i64 = 100;

/// How the daemon judges a guard from registry facts and telemetry (a receipt may still say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Signed,
    Checksum,
    License,
    Metadata,
    Maintained,
    Adoption,
    NoInstallFailures,
    /// A guard only a receipt can judge.
    Receipt,
}

impl Check {
    pub fn of(guard: &str) -> Self {
        match guard {
            "signed" => Self::Signed,
            "checksum" => Self::Checksum,
            "license" => Self::License,
            "metadata" => Self::Metadata,
            "maintained" => Self::Maintained,
            "adoption" => Self::Adoption,
            "no_install_failures" => Self::NoInstallFailures,
            _ => Self::Receipt,
        }
    }
}

/// One guard's result. A ggen receipt's result wins for the guards it covers (it saw the
/// package's files, which the daemon does not); the others are judged on registry facts by their
/// [`Check`]; a guard neither can judge counts as failed.
pub fn check_passed(
    guard: &str,
    check: Check,
    p: &PackageFacts,
    e: &Evidence,
    slo: f64,
    unmaintained_days: f64,
) -> bool {
    if !p.receipt.is_empty() {
        if let Some(r) = p.receipt.get(guard) {
            return r;
        }
    }
    let filled = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
    let rec = &p.record;
    match check {
        Check::Signed => e.signed == Some(true),
        Check::Checksum => e.checksum == Some(true),
        Check::License => filled(&rec.license),
        Check::Metadata => {
            !rec.description.trim().is_empty()
                && filled(&rec.author)
                && filled(&rec.license)
                && filled(&rec.category)
                && p.latest().is_some()
        }
        Check::Maintained => e.days_since_release.is_some_and(|d| d <= unmaintained_days),
        Check::Adoption => e.dependents > 0 || rec.downloads >= ADOPTION_DOWNLOADS,
        Check::NoInstallFailures => e.install_success.is_none_or(|s| s >= slo),
        Check::Receipt => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggen_weights_reproduce_a_receipt_score() {
        let m = QualityModel::parse(
            Path::new("q.toml"),
            "[quality]\nguards = { metadata = 10, license = 8, readme = 7, tests = 8, chicago_compliance = 15 }\ncritical = [\"metadata\", \"license\", \"readme\", \"tests\", \"chicago_compliance\"]\nbands = { production_ready = 95, needs_improvement = 80 }\n",
        )
        .unwrap();
        let s = m.score(|g| g == "tests" || g == "chicago_compliance");
        assert!((s.score - 47.91666666666667).abs() < 1e-12);
        assert_eq!(s.band, LOWEST_BAND);
        assert_eq!(m.score(|_| true).band, "production_ready");
    }

    #[test]
    fn a_failed_critical_guard_keeps_a_package_out_of_the_best_band() {
        let m = QualityModel::parse(
            Path::new("q.toml"),
            "[quality]\nguards = { a = 1, b = 99 }\ncritical = [\"a\"]\nbands = { top = 95, mid = 80 }\n",
        )
        .unwrap();
        let s = m.score(|g| g == "b");
        assert_eq!(s.score, 99.0);
        assert_eq!(s.band, "mid");
        assert_eq!(s.failed, vec!["a".to_string()]);
        let t = m.tally(|i| m.guards[i].0 == "b");
        assert_eq!((t.band, m.band_name(t.band)), (1, "mid"));
        assert!(m.failed_are(t.failed, &s.failed));
        assert!(!m.failed_are(t.failed, &[]));
        assert!(!m.failed_are(0b11, &s.failed));
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = QualityModel::parse(
            Path::new("q.toml"),
            "[quality]\nguards = { a = 1 }\ncritical = [\"b\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "q.toml:3: quality.critical: `b` is not one of the guards"
        );
        let e = QualityModel::parse(Path::new("q.toml"), "[quality]\nguards = { a = -1 }\n")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("q.toml:2: quality.guards.a"),
            "{e}"
        );
        let many: Vec<String> = (0..=MAX_GUARDS).map(|i| format!("g{i} = 1")).collect();
        let e = QualityModel::parse(
            Path::new("q.toml"),
            &format!("[quality]\nguards = {{ {} }}\n", many.join(", ")),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("q.toml:2: quality.guards: 129 guards; at most 128"),
            "{e}"
        );
        let e = QualityModel::parse(Path::new("q.toml"), "[quality]\nguardz = {}\n").unwrap_err();
        assert!(e.to_string().contains("guardz"), "{e}");
    }
}
