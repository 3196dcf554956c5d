//! The catalog ggen clients install from (`index.json`, schema catalog/v2): read, built from a checkout, projected with the remediations in force, and written as the reference tool writes it.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::tree::PackTree;

pub const SCHEMA: &str = "https://ggen.dev/marketplace/catalog/v2";

/// Why a catalog is refused: the file's line and column where JSON itself is broken, or the
/// record and field that break the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("line {line}, column {column}: not JSON: {reason}")]
    Json {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("field `{field}`: {reason}")]
    Top { field: String, reason: String },
    #[error("packs[{index}] field `{field}`: {reason}")]
    Record {
        index: usize,
        field: String,
        reason: String,
    },
}

/// One pack's record as the catalog has it: the keys mapek reads, and every key as it was
/// (unknown ones included), so that writing it back changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    pub version: String,
    /// SHA-256 hex of the archive (the catalog's `digest` without `sha256:`).
    pub sha256: String,
    pub size_bytes: u64,
    pub fields: Map<String, Value>,
}

impl Record {
    /// The archive's file name in the archives folder or under the archives URL.
    pub fn archive_name(&self) -> String {
        format!("{}-{}.tar.gz", self.name, self.version)
    }
    fn text(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(|v| v.as_str())
    }
    pub fn manifest_sha256(&self) -> Option<&str> {
        self.text("manifest_sha256")
    }
    pub fn ontology_fingerprint(&self) -> Option<&str> {
        self.text("ontology_fingerprint_sha256")
    }
    pub fn description(&self) -> &str {
        self.text("description").unwrap_or_default()
    }
}

/// A catalog: its records in name order and every other top-level key as it was.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    pub packs: Vec<Record>,
    /// `marketplace_version`, `schema` and anything else, as read.
    pub top: Map<String, Value>,
    /// Each record's place in `packs`, by name.
    index: std::collections::HashMap<String, usize>,
}

impl Catalog {
    pub fn new(packs: Vec<Record>, top: Map<String, Value>) -> Self {
        let index = packs
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        Self { packs, top, index }
    }

    /// The record of pack `name`.
    pub fn get(&self, name: &str) -> Option<&Record> {
        self.index.get(name).map(|&i| &self.packs[i])
    }
}

/// A pack name as ggen names them, safe to join to a folder or a URL.
pub fn safe_name(name: &str) -> bool {
    crate::registry::valid_package_name(name)
}

/// A version safe in a file name: SemVer.
fn safe_version(v: &str) -> bool {
    super::tree::is_semver(v)
}

fn record(index: usize, value: Value) -> Result<Record, CatalogError> {
    let bad = |field: &str, reason: &str| CatalogError::Record {
        index,
        field: field.into(),
        reason: reason.into(),
    };
    let Value::Object(fields) = value else {
        return Err(bad("-", "not an object"));
    };
    let text = |k: &str| -> Result<String, CatalogError> {
        fields
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| bad(k, "missing or not a string"))
    };
    let name = text("name")?;
    if !safe_name(&name) {
        return Err(bad(
            "name",
            &format!("`{name}` is not a ggen pack name (lower case [a-z0-9._-], no `..`)"),
        ));
    }
    let version = text("version")?;
    if !safe_version(&version) {
        return Err(bad("version", &format!("`{version}` is not SemVer")));
    }
    let digest = text("digest")?;
    let sha256 = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            bad(
                "digest",
                &format!("`{digest}` is not sha256:<64 hex digits>"),
            )
        })?
        .to_ascii_lowercase();
    let size_bytes = fields
        .get("size_bytes")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("size_bytes", "missing or not a whole number"))?;
    Ok(Record {
        name,
        version,
        sha256,
        size_bytes,
        fields,
    })
}

/// Reads a catalog, refusing anything that is not catalog/v2 or whose records could not be
/// acted on safely (a name or version that could leave the archives folder).
pub fn parse(bytes: &[u8]) -> Result<Catalog, CatalogError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| CatalogError::Json {
        line: e.line(),
        column: e.column(),
        reason: e.to_string(),
    })?;
    let Value::Object(mut top) = value else {
        return Err(CatalogError::Top {
            field: "-".into(),
            reason: "the catalog is not a JSON object".into(),
        });
    };
    match top.get("schema").and_then(|s| s.as_str()) {
        Some(SCHEMA) => {}
        other => {
            return Err(CatalogError::Top {
                field: "schema".into(),
                reason: format!(
                    "{} is not `{SCHEMA}`",
                    other
                        .map(|s| format!("`{s}`"))
                        .unwrap_or_else(|| "missing".into())
                ),
            })
        }
    }
    let Some(Value::Array(list)) = top.remove("packs") else {
        return Err(CatalogError::Top {
            field: "packs".into(),
            reason: "missing or not an array".into(),
        });
    };
    let mut packs = Vec::with_capacity(list.len());
    let mut seen = std::collections::HashSet::new();
    for (i, v) in list.into_iter().enumerate() {
        let r = record(i, v)?;
        if !seen.insert(r.name.clone()) {
            return Err(CatalogError::Record {
                index: i,
                field: "name".into(),
                reason: format!("`{}` is listed twice", r.name),
            });
        }
        packs.push(r);
    }
    Ok(Catalog::new(packs, top))
}

/// The record the reference tool writes for an admitted pack, given its archive's bytes.
pub fn record_of(tree: &PackTree, archive: &[u8], repository: &str) -> Option<Record> {
    use sha2::{Digest, Sha256};
    let name = tree.manifest.name.clone()?;
    let version = tree.manifest.version.clone()?;
    let sha256 = hex::encode(Sha256::digest(archive));
    let mut f = Map::new();
    let mut put = |k: &str, v: Value| {
        f.insert(k.into(), v);
    };
    put("description", tree.manifest.description.clone()?.into());
    put("digest", format!("sha256:{sha256}").into());
    put(
        "download_url",
        format!("https://github.com/{repository}/releases/download/packs/{name}-{version}.tar.gz")
            .into(),
    );
    put("manifest_sha256", tree.manifest_sha256.clone()?.into());
    put("name", name.clone().into());
    put("native_gates", tree.native_gates.into());
    put("ontology_files", tree.ontology_files.into());
    put(
        "ontology_fingerprint_sha256",
        tree.ontology_fingerprint_sha256.clone().into(),
    );
    put("path", format!("packs/{name}").into());
    put("profile", tree.profile.into());
    put("size_bytes", archive.len().into());
    put("templates", tree.templates.into());
    put("verifier_gates", tree.verifier_gates.into());
    put("version", version.clone().into());
    Some(Record {
        name,
        version,
        sha256,
        size_bytes: archive.len() as u64,
        fields: f,
    })
}

/// A pack the remediations in force keep from users: left out of `packs`, listed in `withheld`.
#[derive(Debug, Clone, PartialEq)]
pub struct Withheld {
    pub version: String,
    /// `quarantined` or `yanked`.
    pub status: String,
    pub reason: String,
    pub remediation: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
}

/// What the remediations in force change in the catalog, by pack name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    pub withheld: BTreeMap<String, Withheld>,
    /// Deprecated packs and their successors.
    pub deprecated: BTreeMap<String, Vec<String>>,
    pub quality: BTreeMap<String, f64>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.withheld.is_empty() && self.deprecated.is_empty() && self.quality.is_empty()
    }
}

/// One record as the overlay leaves it; None when it is withheld.
pub fn project_record(r: &Record, overlay: &Overlay) -> Option<Map<String, Value>> {
    if overlay.withheld.contains_key(&r.name) {
        return None;
    }
    let mut f = r.fields.clone();
    if let Some(successors) = overlay.deprecated.get(&r.name) {
        f.insert("deprecated".into(), true.into());
        f.insert("status".into(), "deprecated".into());
        f.insert(
            "successors".into(),
            successors
                .iter()
                .cloned()
                .map(Value::from)
                .collect::<Vec<_>>()
                .into(),
        );
    }
    if let Some(q) = overlay.quality.get(&r.name) {
        if let Some(n) = serde_json::Number::from_f64(*q) {
            f.insert("quality".into(), Value::Number(n));
        }
    }
    Some(f)
}

/// The `withheld` array: one entry a pack, in name order.
pub fn withheld_value(overlay: &Overlay) -> Value {
    overlay
        .withheld
        .iter()
        .map(|(name, w)| {
            let mut m = Map::new();
            m.insert("name".into(), name.clone().into());
            m.insert("reason".into(), w.reason.clone().into());
            m.insert(
                "remediation".into(),
                w.remediation
                    .clone()
                    .map(Value::from)
                    .unwrap_or(Value::Null),
            );
            m.insert(
                "since".into(),
                w.since.clone().map(Value::from).unwrap_or(Value::Null),
            );
            m.insert("status".into(), w.status.clone().into());
            m.insert("version".into(), w.version.clone().into());
            Value::Object(m)
        })
        .collect::<Vec<_>>()
        .into()
}

/// Writes the catalog as the reference tool does (two-space indent, keys sorted, non-ASCII as
/// UTF-8, one trailing newline), with the overlay applied: with an empty overlay the bytes are
/// the input's.
pub fn render(catalog: &Catalog, overlay: &Overlay) -> Vec<u8> {
    let records: Vec<std::sync::Arc<str>> = catalog
        .packs
        .iter()
        .filter_map(|r| project_record(r, overlay))
        .map(|f| render_value(&Value::Object(f), 2).into())
        .collect();
    assemble(catalog, overlay, &records)
}

/// The whole document around records already rendered at their depth (`render_value(_, 2)`).
pub fn assemble(catalog: &Catalog, overlay: &Overlay, records: &[std::sync::Arc<str>]) -> Vec<u8> {
    let mut top: BTreeMap<&str, Option<String>> = catalog
        .top
        .iter()
        .map(|(k, v)| (k.as_str(), Some(render_value(v, 1))))
        .collect();
    top.insert("packs", None);
    let withheld =
        (!overlay.withheld.is_empty()).then(|| render_value(&withheld_value(overlay), 1));
    if let Some(w) = &withheld {
        top.insert("withheld", Some(w.clone()));
    }
    let size: usize = records.iter().map(|r| r.len() + 8).sum::<usize>() + 4096;
    let mut out = String::with_capacity(size);
    out.push('{');
    let mut first = true;
    for (k, v) in &top {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str("\n  ");
        write_str(&mut out, k);
        out.push_str(": ");
        match v {
            Some(v) => out.push_str(v),
            None if records.is_empty() => out.push_str("[]"),
            None => {
                out.push('[');
                for (i, r) in records.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("\n    ");
                    out.push_str(r.as_ref());
                }
                out.push_str("\n  ]");
            }
        }
    }
    out.push_str("\n}\n");
    out.into_bytes()
}

/// A JSON value as Python's `json.dumps(indent=2, sort_keys=True, ensure_ascii=False)` writes it,
/// at nesting `depth` (its first line is not indented; the lines after it are).
pub fn render_value(v: &Value, depth: usize) -> String {
    let mut out = String::new();
    write_value(&mut out, v, depth);
    out
}

fn indent(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn write_value(out: &mut String, v: &Value, depth: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, depth + 1);
                write_value(out, x, depth + 1);
            }
            indent(out, depth);
            out.push(']');
        }
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, depth + 1);
                write_str(out, k);
                out.push_str(": ");
                write_value(out, &m[k], depth + 1);
            }
            indent(out, depth);
            out.push('}');
        }
    }
}

/// Python's float repr where it differs from Rust's: `1e+16`, and `.0` on whole numbers.
fn write_number(out: &mut String, n: &serde_json::Number) {
    if n.is_i64() || n.is_u64() {
        let _ = write!(out, "{n}");
        return;
    }
    let f = n.as_f64().unwrap_or(0.0);
    let r = format!("{f:?}");
    match r.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => {
            let _ = write!(out, "{m}e+{e:0>2}");
        }
        Some((m, e)) => {
            let _ = write!(out, "{m}e-{:0>2}", &e[1..]);
        }
        None => out.push_str(&r),
    }
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers_are_written_as_python_writes_them() {
        let v = serde_json::json!({"b": "é\"\\\n\u{1}", "a": [1, 2.5, 1e16, 1e-7, true, null], "c": {}, "d": []});
        assert_eq!(
            render_value(&v, 0),
            "{\n  \"a\": [\n    1,\n    2.5,\n    1e+16,\n    1e-07,\n    true,\n    null\n  ],\n  \"b\": \"é\\\"\\\\\\n\\u0001\",\n  \"c\": {},\n  \"d\": []\n}"
        );
    }

    #[test]
    fn a_catalog_of_another_schema_or_with_a_hostile_name_is_refused() {
        let other = br#"{"schema": "https://ggen.dev/marketplace/catalog/v1", "packs": []}"#;
        assert!(matches!(parse(other), Err(CatalogError::Top { field, .. }) if field == "schema"));
        assert!(matches!(
            parse(b"{\n  \"packs\": [,]\n}"),
            Err(CatalogError::Json { line: 2, .. })
        ));
        let hostile = format!(
            r#"{{"schema": "{SCHEMA}", "packs": [{{"name": "../etc", "version": "1.0.0", "digest": "sha256:{}", "size_bytes": 1}}]}}"#,
            "0".repeat(64)
        );
        let e = parse(hostile.as_bytes()).expect_err("refused");
        assert_eq!(e.to_string(), "packs[0] field `name`: `../etc` is not a ggen pack name (lower case [a-z0-9._-], no `..`)");
    }

    #[test]
    fn an_empty_overlay_writes_the_records_unchanged_and_no_withheld_key() {
        let src = format!(
            "{{\n  \"marketplace_version\": \"v1\",\n  \"packs\": [\n    {{\n      \"digest\": \"sha256:{}\",\n      \"name\": \"a\",\n      \"size_bytes\": 3,\n      \"version\": \"1.0.0\",\n      \"x-unknown\": [\n        1\n      ]\n    }}\n  ],\n  \"schema\": \"{SCHEMA}\"\n}}\n",
            "ab".repeat(32)
        );
        let c = parse(src.as_bytes()).expect("parse");
        assert_eq!(
            String::from_utf8(render(&c, &Overlay::default())).expect("utf8"),
            src
        );
        let mut o = Overlay::default();
        o.withheld.insert(
            "a".into(),
            Withheld {
                version: "1.0.0".into(),
                status: "quarantined".into(),
                reason: "tampered".into(),
                remediation: Some("rem-1".into()),
                since: None,
            },
        );
        let out = String::from_utf8(render(&c, &o)).expect("utf8");
        assert!(out.contains("\"packs\": [],"), "{out}");
        assert!(
            out.contains("\"withheld\": [\n    {\n      \"name\": \"a\""),
            "{out}"
        );
    }
}
