//! A ggen-marketplace checkout: each pack's files, the spec's admission rules, and what the catalog records of a pack's tree.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file of a pack: its path relative to the pack (POSIX), the SHA-256 of its bytes, its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    pub path: String,
    pub sha256: [u8; 32],
    pub len: u64,
}

/// Why the spec's admission rules refuse a pack: a code (the reference tool's) and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// The `[pack]` table as a pack writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub name: Option<String>,
    pub version: Option<String>,
    /// Trimmed.
    pub description: Option<String>,
    pub deprecated: bool,
    pub superseded_by: Option<String>,
}

/// One `packs/<dir>/` as it is on disk, judged by the admission rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackTree {
    /// The directory's name (what the pack must be called).
    pub dir: String,
    pub manifest: Manifest,
    /// SHA-256 hex of `pack.toml`; None when it is missing.
    pub manifest_sha256: Option<String>,
    pub ontology_fingerprint_sha256: String,
    pub ontology_files: usize,
    pub templates: usize,
    pub native_gates: usize,
    pub verifier_gates: usize,
    /// `project` (has `ggen.toml`), `projection` (has templates) or `semantic`.
    pub profile: &'static str,
    /// Every file an archive of the pack holds, in relative-path order.
    pub files: Vec<FileDigest>,
    /// Empty when the pack is admitted.
    pub refusals: Vec<Refusal>,
}

impl PackTree {
    pub fn admitted(&self) -> bool {
        self.refusals.is_empty()
    }
}

/// The extensions a template may have, and the gate sources.
const TEMPLATE_SUFFIXES: [&str; 3] = [".tmpl", ".tera", ".eex"];

/// The `[pack]` keys ggen's loader takes.
pub const PACK_KEYS: [&str; 5] = [
    "name",
    "version",
    "description",
    "deprecated",
    "superseded_by",
];

/// A relative path of the spec's archive: no component starting with `.`, none `__pycache__`.
pub fn visible(relative: &str) -> bool {
    relative
        .split('/')
        .all(|c| !c.starts_with('.') && c != "__pycache__")
}

/// Regular files (relative path, path) and symbolic links (relative path) of a directory.
type Walked = (Vec<(String, PathBuf)>, Vec<String>);

/// Every regular file under `dir` (not following symbolic links), with its path relative to
/// `dir` in POSIX form, in that path's order; the symbolic links met, relative to `dir`.
fn walk(dir: &Path) -> std::io::Result<Walked> {
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                links.push(relative);
            } else if kind.is_dir() {
                stack.push((entry.path(), relative));
            } else if kind.is_file() {
                files.push((relative, entry.path()));
            }
        }
    }
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    links.sort_unstable();
    Ok((files, links))
}

/// The spec's ontology fingerprint: SHA-256 over the files in relative-path order, each fed as
/// the 8-byte big-endian length of its path, the path, the 8-byte length of its bytes, the bytes.
pub fn ontology_fingerprint<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (path, bytes) in files {
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

fn is_ontology(relative: &str) -> bool {
    relative.ends_with(".ttl") && (!relative.contains('/') || relative.starts_with("ontology/"))
}

/// SemVer as the reference tool checks it (no leading zeros, optional pre-release and build).
pub fn is_semver(v: &str) -> bool {
    semver::Version::parse(v).is_ok()
}

/// Reads `pack.toml`'s `[pack]` table, or says why it cannot.
fn read_manifest(dir: &str, src: &[u8]) -> (Manifest, Vec<Refusal>) {
    let refuse = |code, detail: String| Refusal { code, detail };
    let mut m = Manifest::default();
    let mut refusals = Vec::new();
    let text = match std::str::from_utf8(src) {
        Ok(t) => t,
        Err(e) => {
            return (
                m,
                vec![refuse(
                    "MANIFEST_INVALID",
                    format!("{dir}/pack.toml: not UTF-8: {e}"),
                )],
            )
        }
    };
    let doc: toml::Table = match toml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let (line, reason) = crate::located::toml_error(text, &e);
            return (
                m,
                vec![refuse(
                    "MANIFEST_INVALID",
                    format!("{dir}/pack.toml:{line}: {reason}"),
                )],
            );
        }
    };
    let Some(toml::Value::Table(pack)) = doc.get("pack") else {
        return (
            m,
            vec![refuse(
                "MANIFEST_PACK_TABLE",
                format!("{dir}/pack.toml: no [pack] table"),
            )],
        );
    };
    let text_of = |k: &str| pack.get(k).and_then(|v| v.as_str()).map(str::to_string);
    match text_of("name") {
        Some(n) if !n.trim().is_empty() => {
            if n != dir {
                refusals.push(refuse(
                    "PACK_DIRECTORY_IDENTITY",
                    format!("directory={dir},name={n}"),
                ));
            }
            m.name = Some(n);
        }
        _ => refusals.push(refuse(
            "PACK_NAME",
            format!("{dir}/pack.toml: field `name` is missing or empty"),
        )),
    }
    match text_of("version") {
        Some(v) if is_semver(&v) => m.version = Some(v),
        other => refusals.push(refuse(
            "PACK_VERSION_SEMVER",
            format!(
                "{dir}/pack.toml: field `version` {} is not SemVer",
                other
                    .map(|v| format!("`{v}`"))
                    .unwrap_or_else(|| "(missing)".into())
            ),
        )),
    }
    match text_of("description") {
        Some(d) if !d.trim().is_empty() => m.description = Some(d.trim().to_string()),
        _ => refusals.push(refuse(
            "PACK_DESCRIPTION",
            format!("{dir}/pack.toml: field `description` is missing or empty"),
        )),
    }
    m.deprecated = pack
        .get("deprecated")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    m.superseded_by = text_of("superseded_by");
    (m, refusals)
}

/// Reads and judges one pack directory. An I/O error (the directory vanished mid-read) is an
/// error; everything the rules refuse is in `refusals`.
pub fn read_pack(dir: &Path) -> std::io::Result<PackTree> {
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (all, links) = walk(dir)?;
    let mut tree = PackTree {
        dir: dir_name.clone(),
        ..Default::default()
    };
    for l in links {
        tree.refusals.push(Refusal {
            code: "PACK_SYMLINK",
            detail: format!("packs/{dir_name}/{l}"),
        });
    }
    let mut ontology: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut manifest_bytes = None;
    for (relative, path) in &all {
        let bytes = std::fs::read(path)?;
        if relative == "pack.toml" {
            manifest_bytes = Some(bytes.clone());
        }
        if relative == "ggen.toml" {
            tree.profile = "project";
        }
        if visible(relative) {
            if let Some(t) = relative.strip_prefix("templates/") {
                tree.templates += 1;
                if !TEMPLATE_SUFFIXES.iter().any(|s| t.ends_with(s)) {
                    tree.refusals.push(Refusal {
                        code: "TEMPLATE_EXTENSION",
                        detail: format!("packs/{dir_name}/{relative}"),
                    });
                }
            }
            if let Some(g) = relative.strip_prefix("gates/") {
                match Path::new(g).extension().and_then(|e| e.to_str()) {
                    Some("rq") => tree.native_gates += 1,
                    Some("py") => tree.verifier_gates += 1,
                    _ => tree.refusals.push(Refusal {
                        code: "GATE_SOURCE_EXTENSION",
                        detail: format!("packs/{dir_name}/{relative}"),
                    }),
                }
            }
        }
        if is_ontology(relative) {
            ontology.push((relative.as_str(), bytes.clone()));
        }
        if visible(relative) {
            tree.files.push(FileDigest {
                path: relative.clone(),
                sha256: Sha256::digest(&bytes).into(),
                len: bytes.len() as u64,
            });
        }
    }
    if tree.profile.is_empty() {
        tree.profile = if tree.templates > 0 {
            "projection"
        } else {
            "semantic"
        };
    }
    tree.ontology_files = ontology.len();
    tree.ontology_fingerprint_sha256 =
        ontology_fingerprint(ontology.iter().map(|(p, b)| (*p, b.as_slice())));
    if ontology.is_empty() {
        tree.refusals.push(Refusal {
            code: "ONTOLOGY_SOURCE_MISSING",
            detail: dir_name.clone(),
        });
    }
    match manifest_bytes {
        None => tree.refusals.insert(
            0,
            Refusal {
                code: "MANIFEST_MISSING",
                detail: dir_name.clone(),
            },
        ),
        Some(bytes) => {
            tree.manifest_sha256 = Some(hex::encode(Sha256::digest(&bytes)));
            let (manifest, refusals) = read_manifest(&dir_name, &bytes);
            tree.manifest = manifest;
            for (i, r) in refusals.into_iter().enumerate() {
                tree.refusals.insert(i, r);
            }
        }
    }
    Ok(tree)
}

/// A directory name that stays a directory of `packs/` when joined to it.
pub fn safe_dir(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Every pack directory of `checkout/packs`, by name.
pub fn pack_dirs(checkout: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(checkout.join("packs"))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() || kind.is_symlink() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Reads every pack of a checkout; a symbolic link in place of a pack directory is a pack of its
/// own, refused. A duplicate `[pack] name` refuses the later one.
pub fn read_checkout(checkout: &Path) -> std::io::Result<BTreeMap<String, PackTree>> {
    let mut packs = BTreeMap::new();
    for name in pack_dirs(checkout)? {
        let path = checkout.join("packs").join(&name);
        let tree = read_pack_or_link(&path, &name)?;
        packs.insert(name, tree);
    }
    refuse_duplicates(&mut packs);
    Ok(packs)
}

/// Reads `path` as pack `name`, refusing it when the directory itself is a symbolic link.
pub fn read_pack_or_link(path: &Path, name: &str) -> std::io::Result<PackTree> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Ok(PackTree {
            dir: name.to_string(),
            profile: "semantic",
            refusals: vec![Refusal {
                code: "PACK_SYMLINK",
                detail: format!("packs/{name}"),
            }],
            ..Default::default()
        });
    }
    read_pack(path)
}

/// Two directories whose `pack.toml` give one name: the later (by directory) is refused.
pub fn refuse_duplicates(packs: &mut BTreeMap<String, PackTree>) {
    let mut seen = std::collections::HashSet::new();
    for tree in packs.values_mut() {
        tree.refusals.retain(|r| r.code != "DUPLICATE_PACK_NAME");
        if let Some(n) = &tree.manifest.name {
            if !seen.insert(n.clone()) {
                tree.refusals.push(Refusal {
                    code: "DUPLICATE_PACK_NAME",
                    detail: n.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_components_and_pycache_are_not_archived() {
        assert!(visible("templates/a.tmpl"));
        assert!(!visible(".git/config"));
        assert!(!visible("gates/__pycache__/x.pyc"));
        assert!(!visible("templates/.hidden.tmpl"));
    }

    #[test]
    fn ontology_files_are_top_level_ttl_and_anything_under_ontology() {
        assert!(is_ontology("ontology.ttl"));
        assert!(is_ontology("ontology/deep/x.ttl"));
        assert!(!is_ontology("templates/x.ttl"));
        assert!(!is_ontology("ontology.ttl.bak"));
    }

    #[test]
    fn the_fingerprint_frames_each_path_and_body_by_length() {
        // Moving a byte from a path to a body changes the fingerprint.
        let a = ontology_fingerprint([("ab", b"c".as_slice())]);
        let b = ontology_fingerprint([("a", b"bc".as_slice())]);
        assert_ne!(a, b);
        assert_eq!(ontology_fingerprint([]), hex::encode(Sha256::digest(b"")));
    }

    #[test]
    fn a_manifest_that_is_not_toml_is_refused_with_its_line() {
        let (_, r) = read_manifest("p", b"[pack\nname = 1");
        assert_eq!(r[0].code, "MANIFEST_INVALID");
        assert!(r[0].detail.starts_with("p/pack.toml:1:"), "{}", r[0].detail);
    }

    #[test]
    fn a_manifest_is_judged_field_by_field() {
        let (m, r) = read_manifest(
            "p",
            b"[pack]\nname = \"q\"\nversion = \"01.0.0\"\ndescription = \"  \"\n",
        );
        let codes: Vec<_> = r.iter().map(|r| r.code).collect();
        assert_eq!(
            codes,
            [
                "PACK_DIRECTORY_IDENTITY",
                "PACK_VERSION_SEMVER",
                "PACK_DESCRIPTION"
            ]
        );
        assert_eq!(m.name.as_deref(), Some("q"));
        let (m, r) = read_manifest(
            "p",
            b"[pack]\nname = \"p\"\nversion = \"1.0.0-rc.1\"\ndescription = \" d \"\nsuperseded_by = \"x\"\n",
        );
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(m.description.as_deref(), Some("d"));
        assert_eq!(m.superseded_by.as_deref(), Some("x"));
    }
}
