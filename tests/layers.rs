//! The layers hold by construction: every `crate::` path of every source file goes to a module its layer may use, as the table in docs/architecture.md says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The allowed graph, read from docs/architecture.md: module -> the modules it may use.
fn allowed() -> BTreeMap<String, BTreeSet<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .expect("docs/architecture.md");
    let table = doc
        .split("## The layers")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a `## The layers` section");
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split(',')
            .map(|c| c.trim().trim_matches('`').to_string())
            .filter(|c| !c.is_empty())
            .collect()
    };
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            (
                cells[1].trim().trim_matches('`').to_string(),
                names(cells[2]),
            )
        })
        .collect()
}

/// The top-level module a source file belongs to (`src/plan/gates.rs` -> `plan`).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// Every `crate::NAME` a source text uses, outside comments.
fn uses(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            walk(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

#[test]
fn no_module_uses_one_its_layer_may_not() {
    let allowed = allowed();
    assert!(allowed.len() > 10, "the table was read: {allowed:?}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let relative = f.strip_prefix(&src).expect("under src");
        let Some(module) = module_of(relative) else {
            continue;
        };
        let Some(may) = allowed.get(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is not in docs/architecture.md",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("source");
        for used in uses(&text) {
            if used != module && !may.contains(&used) {
                wrong.push(format!("{}: `{module}` uses `{used}`", relative.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "edges outside the allowed graph:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn nothing_outside_the_knowledge_store_reaches_its_pool() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let reaching: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("knowledge")))
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("raw_pool(")))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        reaching.is_empty(),
        "writes go through Store::begin: {reaching:?}"
    );
}

#[test]
fn no_sql_outside_the_knowledge_store_and_the_registry_backends() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let with_sql: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("knowledge")) && !f.starts_with(src.join("registry")))
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| {
                t.contains("sqlx::query")
                    || t.contains("AssertSqlSafe")
                    || t.contains(".reads().query")
            })
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        with_sql.is_empty(),
        "SQL lives in knowledge/ and registry/: {with_sql:?}"
    );
}

#[test]
fn the_check_sees_an_edge_the_table_does_not_allow() {
    // The reader finds paths in `use` lines and in code, and not in comments.
    let found = uses("use crate::plan::policy::PolicySet;\nlet s = crate::model::daemon_subject(); // crate::daemon\n");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["model", "plan"]);
    let allowed = allowed();
    assert!(
        !allowed["monitor"].contains("plan"),
        "monitor may not use plan"
    );
    assert!(!allowed["knowledge"].contains("monitor"));
}
