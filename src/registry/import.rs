//! `mapek registry import`: ggen's formats (index.json, packages/, packs/, receipts/), detected by content, idempotent.

use serde::Serialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::sql::next_seq;
use super::{
    valid_package_name, Dependency, PackageRecord, RegistryError, ReleaseRecord, SqlRegistry,
};
use crate::knowledge::Store;

/// Descriptions beyond this many characters are cut, and the cut is reported.
pub const MAX_DESCRIPTION: usize = 4096;

/// One problem in the input: the rest is still imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    pub package: String,
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: package `{}`: field `{}`: {}",
            self.file.display(),
            self.package,
            self.field,
            self.reason
        )
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ImportReport {
    pub sources: Vec<String>,
    pub packages_seen: usize,
    pub packages_changed: usize,
    pub releases_seen: usize,
    pub releases_changed: usize,
    pub receipts_applied: usize,
    pub problems: Vec<Problem>,
}

/// Everything read, merged by package before anything is written.
#[derive(Default)]
struct Merged {
    packages: BTreeMap<String, PackageRecord>,
    releases: BTreeMap<(String, String), ReleaseRecord>,
    problems: Vec<Problem>,
    sources: Vec<String>,
    receipts: usize,
}

impl Merged {
    fn problem(&mut self, file: &Path, package: &str, field: &str, reason: impl Into<String>) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            package: package.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// Adds a package, filling only fields that earlier sources left empty.
    fn add_package(&mut self, p: PackageRecord) {
        match self.packages.get_mut(&p.name) {
            None => {
                self.packages.insert(p.name.clone(), p);
            }
            Some(e) => {
                if e.description.is_empty() {
                    e.description = p.description;
                }
                for (slot, new) in [
                    (&mut e.category, p.category),
                    (&mut e.author, p.author),
                    (&mut e.license, p.license),
                    (&mut e.repository, p.repository),
                    (&mut e.latest, p.latest),
                ] {
                    if slot.is_none() {
                        *slot = new;
                    }
                }
                if e.tags.is_empty() {
                    e.tags = p.tags;
                }
                if e.keywords.is_empty() {
                    e.keywords = p.keywords;
                }
                e.downloads = e.downloads.max(p.downloads);
                e.stars = e.stars.max(p.stars);
                e.production_ready |= p.production_ready;
            }
        }
    }

    fn add_release(&mut self, r: ReleaseRecord) {
        let key = (r.package.clone(), r.version.clone());
        match self.releases.get_mut(&key) {
            None => {
                self.releases.insert(key, r);
            }
            Some(e) => {
                for (slot, new) in [
                    (&mut e.checksum, r.checksum),
                    (&mut e.artifact, r.artifact),
                    (&mut e.signature, r.signature),
                    (&mut e.signer, r.signer),
                ] {
                    if slot.is_none() {
                        *slot = new;
                    }
                }
                if e.dependencies.is_empty() {
                    e.dependencies = r.dependencies;
                }
            }
        }
    }
}

/// The fields every format shares, read leniently: each wrong field is a problem, not a failure.
struct Fields<'a> {
    file: &'a Path,
    name: String,
}

fn text(v: Option<&Json>) -> Option<String> {
    v.and_then(|v| v.as_str()).map(str::to_string)
}

fn list(v: Option<&Json>) -> Vec<String> {
    v.and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn toml_to_json(v: toml::Value) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// Builds package and release records from one entry of any format (already as JSON). A format
/// without authors and licences (a catalog v2) does not report them missing.
fn read_entry(m: &mut Merged, file: &Path, entry: &Json, now: i64) {
    read_entry_of(m, file, entry, now, true)
}

fn read_entry_of(m: &mut Merged, file: &Path, entry: &Json, now: i64, has_authors: bool) {
    let name = match text(entry.get("name")) {
        Some(n) => n,
        None => {
            m.problem(file, "?", "name", "missing: the entry is skipped");
            return;
        }
    };
    if !valid_package_name(&name) {
        m.problem(
            file,
            &name,
            "name",
            "not a valid ggen package name (lower case [a-z0-9._-], 1-200 chars, no leading or trailing - or ., no ..): the entry is skipped",
        );
        return;
    }
    let f = Fields { file, name };
    let latest = package_of(m, &f, entry, now, has_authors);
    let Some(version) = latest else { return };
    let mut checksum = text(entry.get("checksum"));
    if let Some(c) = &checksum {
        if c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            m.problem(
                f.file,
                &f.name,
                "checksum",
                format!("`{c}` is not SHA-256 hex; dropped"),
            );
            checksum = None;
        }
    }
    let mut dependencies = dependencies_of(m, &f, entry);
    // Stored dependencies are unique by name and read back sorted: compare like with like.
    dependencies.sort_by(|a, b| a.name.cmp(&b.name));
    dependencies.dedup_by(|a, b| a.name == b.name);
    m.add_release(ReleaseRecord {
        package: f.name.clone(),
        version,
        published_at: now,
        checksum,
        artifact: text(entry.get("download_url")).or_else(|| text(entry.get("artifact"))),
        signature: text(entry.get("signature")),
        signer: text(entry.get("signer")),
        yanked: false,
        quarantined: false,
        dependencies,
    });
}

/// The package record of an entry; its latest version, when it names a usable one.
fn package_of(
    m: &mut Merged,
    f: &Fields<'_>,
    entry: &Json,
    now: i64,
    has_authors: bool,
) -> Option<String> {
    let mut description = text(entry.get("description")).unwrap_or_default();
    if description.is_empty() {
        m.problem(f.file, &f.name, "description", "missing or empty");
    }
    if description.chars().count() > MAX_DESCRIPTION {
        let n = description.chars().count();
        description = description.chars().take(MAX_DESCRIPTION).collect();
        m.problem(
            f.file,
            &f.name,
            "description",
            format!("{n} characters; cut to {MAX_DESCRIPTION}"),
        );
    }
    let author = text(entry.get("author"));
    if author.is_none() && has_authors {
        m.problem(f.file, &f.name, "author", "missing");
    }
    let license = text(entry.get("license"));
    if license.is_none() && has_authors {
        m.problem(f.file, &f.name, "license", "missing");
    }
    let int = |m: &mut Merged, key: &str| -> i64 {
        match entry.get(key) {
            None | Some(Json::Null) => 0,
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => n,
                _ => {
                    m.problem(
                        f.file,
                        &f.name,
                        key,
                        format!("`{v}` is not a count; 0 is used"),
                    );
                    0
                }
            },
        }
    };
    let downloads = int(m, "downloads");
    let stars = int(m, "stars");
    let production_ready = entry
        .get("production_ready")
        .or_else(|| {
            entry
                .get("marketplace")
                .and_then(|x| x.get("production_ready"))
        })
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let version = text(entry.get("version"));
    let mut latest = None;
    match &version {
        None => m.problem(
            f.file,
            &f.name,
            "version",
            "missing: no release is imported",
        ),
        Some(v) => {
            if semver::Version::parse(v).is_err() {
                m.problem(
                    f.file,
                    &f.name,
                    "version",
                    format!("`{v}` is not SemVer; kept as written"),
                );
            }
            latest = Some(v.clone());
        }
    }
    m.add_package(PackageRecord {
        name: f.name.clone(),
        description,
        category: text(entry.get("category")),
        author,
        license,
        repository: text(entry.get("repository")),
        tags: list(entry.get("tags")),
        keywords: list(entry.get("keywords")),
        downloads,
        stars,
        status: "active".into(),
        latest: latest.clone(),
        quality: None,
        quality_detail: None,
        production_ready,
        created_at: now,
        updated_at: now,
    });
    latest
}

/// The dependencies an entry lists (names, or name and requirement), each bad one a problem.
fn dependencies_of(m: &mut Merged, f: &Fields<'_>, entry: &Json) -> Vec<Dependency> {
    let mut dependencies = Vec::new();
    match entry.get("dependencies") {
        None | Some(Json::Null) => {}
        Some(Json::Array(items)) => {
            for d in items {
                match d {
                    Json::String(s) => dependencies.push(Dependency {
                        name: s.clone(),
                        requirement: "*".into(),
                    }),
                    Json::Object(o) => match o.get("name").and_then(|n| n.as_str()) {
                        Some(n) => dependencies.push(Dependency {
                            name: n.to_string(),
                            requirement: o
                                .get("version")
                                .and_then(|v| v.as_str())
                                .unwrap_or("*")
                                .to_string(),
                        }),
                        None => m.problem(f.file, &f.name, "dependencies", "an entry has no name"),
                    },
                    other => m.problem(
                        f.file,
                        &f.name,
                        "dependencies",
                        format!("entry `{other}` is not a name"),
                    ),
                }
            }
        }
        Some(Json::Object(o)) => {
            for (n, req) in o {
                dependencies.push(Dependency {
                    name: n.clone(),
                    requirement: req.as_str().unwrap_or("*").to_string(),
                });
            }
        }
        Some(other) => m.problem(
            f.file,
            &f.name,
            "dependencies",
            format!("`{other}` is not a list"),
        ),
    }
    dependencies
}

fn read_index(m: &mut Merged, file: &Path, doc: &Json, now: i64) {
    m.sources.push(format!("index {}", file.display()));
    match doc.get("packages").and_then(|p| p.as_array()) {
        Some(entries) => {
            for e in entries {
                read_entry(m, file, e, now);
            }
        }
        None => m.problem(file, "-", "packages", "not a list"),
    }
}

/// A ggen marketplace catalog (schema catalog/v2): each record a package with one release, its
/// archive at `download_url` with the catalog's `digest` as checksum.
fn read_catalog(m: &mut Merged, file: &Path, doc: &Json, now: i64) {
    m.sources.push(format!("catalog v2 {}", file.display()));
    let Some(records) = doc.get("packs").and_then(|p| p.as_array()) else {
        m.problem(file, "-", "packs", "not a list");
        return;
    };
    for (i, r) in records.iter().enumerate() {
        let Some(obj) = r.as_object() else {
            m.problem(file, &format!("packs[{i}]"), "-", "not an object: skipped");
            continue;
        };
        let mut entry = obj.clone();
        match obj.get("digest").and_then(|d| d.as_str()) {
            Some(d) => match d.strip_prefix("sha256:") {
                Some(hex) => {
                    entry.insert("checksum".into(), hex.into());
                }
                None => m.problem(
                    file,
                    obj.get("name").and_then(|n| n.as_str()).unwrap_or("?"),
                    "digest",
                    format!("`{d}` is not sha256:<hex>; no checksum"),
                ),
            },
            None => m.problem(
                file,
                obj.get("name").and_then(|n| n.as_str()).unwrap_or("?"),
                "digest",
                "missing: no checksum",
            ),
        }
        read_entry_of(m, file, &Json::Object(entry), now, false);
    }
}

/// `<dir>/<name>/<manifest>` where the manifest's `[table]` holds the package fields.
fn read_manifests(m: &mut Merged, dir: &Path, manifest: &str, table: &str, now: i64) {
    m.sources
        .push(format!("{manifest} files in {}", dir.display()));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join(manifest)))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    for path in paths {
        let folder = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&path) {
            Ok(src) => read_manifest(m, &path, &folder, &src, table, now),
            Err(e) => m.problem(&path, &folder, "-", format!("cannot read: {e}")),
        }
    }
}

/// One manifest's text (`package.toml`, `pack.toml`) whose `[table]` holds the package fields.
fn read_manifest(m: &mut Merged, path: &Path, folder: &str, src: &str, table: &str, now: i64) {
    let doc: toml::Table = match toml::from_str(src) {
        Ok(d) => d,
        Err(e) => {
            let (line, reason) = crate::located::toml_error(src, &e);
            m.problem(path, folder, &format!("line {line}"), reason);
            return;
        }
    };
    let mut entry = match doc.get(table).cloned() {
        Some(t @ toml::Value::Table(_)) => toml_to_json(t),
        _ => {
            m.problem(path, folder, table, format!("no [{table}] table: skipped"));
            return;
        }
    };
    if let (Some(obj), Some(mk)) = (entry.as_object_mut(), doc.get("marketplace")) {
        obj.insert("marketplace".into(), toml_to_json(mk.clone()));
    }
    read_entry(m, path, &entry, now);
}

/// What reading one source found: packages, releases, problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSummary {
    pub packages: usize,
    pub releases: usize,
    pub problems: usize,
}

/// Reads one source's text as the import does a file of that name (`package.toml`,
/// `pack.toml`, or a JSON document: a registry index, a catalog v2, a receipt), without a store:
/// what it would import and how many problems it would report. For the fuzz targets and tests.
pub fn read_source(name: &str, src: &str, now: i64) -> Result<SourceSummary, RegistryError> {
    let mut m = Merged::default();
    let path = Path::new(name);
    match name {
        "package.toml" => read_manifest(&mut m, path, "p", src, "package", now),
        "pack.toml" => read_manifest(&mut m, path, "p", src, "pack", now),
        _ => read_json(&mut m, path, src, now)?,
    }
    Ok(SourceSummary {
        packages: m.packages.len(),
        releases: m.releases.len(),
        problems: m.problems.len(),
    })
}

/// A JSON document: a registry index, a catalog v2 or a validation receipt.
fn read_json(m: &mut Merged, path: &Path, src: &str, now: i64) -> Result<(), RegistryError> {
    let unreadable = |reason: String| RegistryError::Artifact {
        location: path.display().to_string(),
        reason,
    };
    let doc: Json = serde_json::from_str(src)
        .map_err(|e| unreadable(format!("line {}: not JSON: {e}", e.line())))?;
    if doc.get("schema").and_then(|s| s.as_str()) == Some(super::marketplace::catalog::SCHEMA) {
        read_catalog(m, path, &doc, now);
    } else if doc.get("packages").is_some() {
        read_index(m, path, &doc, now);
    } else if doc.get("guard_results").is_some() {
        read_receipt(m, path, &doc);
    } else {
        return Err(unreadable(
            "neither a registry index (`packages`), a catalog v2 nor a validation receipt (`guard_results`)"
                .into(),
        ));
    }
    Ok(())
}

fn read_receipt(m: &mut Merged, file: &Path, doc: &Json) {
    let package = text(doc.get("package_id")).unwrap_or_default();
    if package.is_empty() {
        m.problem(file, "?", "package_id", "missing: receipt skipped");
        return;
    }
    let Some(score) = doc.get("overall_score").and_then(|s| s.as_f64()) else {
        m.problem(
            file,
            &package,
            "overall_score",
            "missing or not a number: receipt skipped",
        );
        return;
    };
    if !(0.0..=100.0).contains(&score) {
        m.problem(
            file,
            &package,
            "overall_score",
            format!("{score} is outside 0-100: receipt skipped"),
        );
        return;
    }
    let Some(p) = m.packages.get_mut(&package) else {
        m.problem(
            file,
            &package,
            "package_id",
            "no such package in this import: receipt skipped",
        );
        return;
    };
    p.quality = Some(score);
    p.quality_detail = doc.get("guard_results").map(|g| g.to_string());
    m.receipts += 1;
}

fn read_receipts(m: &mut Merged, dir: &Path) {
    m.sources.push(format!("receipts in {}", dir.display()));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .flat_map(|e| {
            std::fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .filter_map(|f| f.ok())
        })
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        match std::fs::read_to_string(&f).map(|s| serde_json::from_str::<Json>(&s)) {
            Ok(Ok(doc)) => read_receipt(m, &f, &doc),
            Ok(Err(e)) => m.problem(&f, "?", &format!("line {}", e.line()), e.to_string()),
            Err(e) => m.problem(&f, "?", "-", format!("cannot read: {e}")),
        }
    }
}

fn has_child(dir: &Path, manifest: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|e| e.path().join(manifest).is_file())
}

fn has_receipts(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|e| {
            std::fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .filter_map(|f| f.ok())
                .any(|f| {
                    std::fs::read_to_string(f.path())
                        .ok()
                        .and_then(|s| serde_json::from_str::<Json>(&s).ok())
                        .is_some_and(|d| d.get("guard_results").is_some())
                })
        })
}

/// Reads a path of any supported format (or a folder holding several) into `m`.
fn read_path(m: &mut Merged, path: &Path, now: i64, depth: u8) -> Result<(), RegistryError> {
    let unreadable = |reason: String| RegistryError::Artifact {
        location: path.display().to_string(),
        reason,
    };
    if path.is_file() {
        let src = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
        return read_json(m, path, &src, now);
    }
    if !path.is_dir() {
        return Err(unreadable("no such file or directory".into()));
    }
    if has_child(path, "package.toml") {
        read_manifests(m, path, "package.toml", "package", now);
        return Ok(());
    }
    if has_child(path, "pack.toml") {
        read_manifests(m, path, "pack.toml", "pack", now);
        return Ok(());
    }
    if depth > 0 {
        return Ok(());
    }
    // A folder of several sources: indexes first, then manifests, then receipts (which need the
    // packages to be known).
    let mut children: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| unreadable(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    children.sort();
    let before = m.sources.len();
    for c in children
        .iter()
        .filter(|c| c.is_file() && c.extension().is_some_and(|e| e == "json"))
    {
        read_path(m, c, now, depth + 1)?;
    }
    let mut receipts = Vec::new();
    for c in children.iter().filter(|c| c.is_dir()) {
        if has_receipts(c) {
            receipts.push(c.clone());
        } else {
            read_path(m, c, now, depth + 1)?;
        }
    }
    for r in receipts {
        read_receipts(m, &r);
    }
    if m.sources.len() == before {
        return Err(unreadable("no ggen registry data found here".into()));
    }
    Ok(())
}

/// Imports `path` into the registry. Problems are reported and the rest is imported; a second
/// import of the same data changes nothing.
pub async fn import(store: &Store, path: &Path, now: i64) -> Result<ImportReport, RegistryError> {
    let mut m = Merged::default();
    read_path(&mut m, path, now, 0)?;
    let known: std::collections::BTreeSet<String> = {
        let registry = SqlRegistry::new(store.clone(), ".");
        let mut k: std::collections::BTreeSet<String> =
            registry.package_names().await?.into_iter().collect();
        k.extend(m.packages.keys().cloned());
        k
    };
    let mut missing = Vec::new();
    for r in m.releases.values() {
        for d in &r.dependencies {
            if !known.contains(&d.name) {
                missing.push((r.package.clone(), d.name.clone()));
            }
        }
    }
    for (package, dep) in missing {
        m.problem(
            path,
            &package,
            "dependencies",
            format!("depends on `{dep}`, which is not in the registry (kept)"),
        );
    }
    let mut report = ImportReport {
        sources: m.sources.clone(),
        packages_seen: m.packages.len(),
        releases_seen: m.releases.len(),
        receipts_applied: m.receipts,
        problems: m.problems.clone(),
        ..Default::default()
    };
    let mut tx = store.begin().await?;
    let seq = next_seq(&mut tx).await?;
    for p in m.packages.values() {
        if SqlRegistry::upsert_package(&mut tx, p, seq).await? {
            report.packages_changed += 1;
        }
    }
    for r in m.releases.values() {
        if SqlRegistry::upsert_release(&mut tx, r, seq).await? {
            report.releases_changed += 1;
        }
    }
    if report.packages_changed + report.releases_changed == 0 {
        // Nothing to record: leave the change sequence as it was.
        drop(tx);
    } else {
        tx.commit().await.map_err(RegistryError::from)?;
    }
    Ok(report)
}
