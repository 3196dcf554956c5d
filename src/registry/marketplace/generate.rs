//! A generated ggen-marketplace checkout (packs, their archives, the catalog) for the demo, the benchmark and tests.

use std::path::Path;

use super::archive;
use super::catalog::{self, Catalog, Overlay};
use super::tree;

/// The files of generated pack number `i`.
fn pack_files(name: &str, i: usize) -> Vec<(String, Vec<u8>)> {
    let profile = i % 3;
    let mut files = vec![
        (
            "pack.toml".to_string(),
            format!(
                "[pack]\nname = \"{name}\"\nversion = \"1.{}.0\"\ndescription = \"Generated pack {i}: ontology-driven code generation for service {i}.\"\n",
                i % 7
            )
            .into_bytes(),
        ),
        (
            "ontology.ttl".to_string(),
            format!(
                "@prefix ex: <http://example.org/{name}#> .\nex:Service{i} a ex:Service ;\n  ex:name \"service-{i}\" .\n"
            )
            .into_bytes(),
        ),
        (
            "gates/010_admission.rq".to_string(),
            b"ASK { ?s a <http://example.org/Service> }\n".to_vec(),
        ),
        (
            "README.md".to_string(),
            format!("# {name}\n\nGenerated for tests and benchmarks.\n").into_bytes(),
        ),
    ];
    if profile >= 1 {
        files.push((
            "templates/service.rs.tmpl".to_string(),
            format!("// service {i}\npub fn name() -> &'static str {{ \"{{{{ name }}}}\" }}\n")
                .into_bytes(),
        ));
    }
    if profile == 2 {
        files.push((
            "ggen.toml".to_string(),
            b"[project]\nname = \"generated\"\n".to_vec(),
        ));
    }
    files
}

/// The name of generated pack `i`.
pub fn pack_name(i: usize) -> String {
    format!("gen-pack-{i:06}")
}

/// Writes a checkout of `packs` generated packs under `dir`: `marketplace.toml`,
/// `packs/<name>/`, `dist/packs/<name>-<version>.tar.gz` and `dist/site/index.json`, as the
/// marketplace's tool lays them out. Deterministic.
pub fn generate(dir: &Path, packs: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("dist/packs"))?;
    std::fs::create_dir_all(dir.join("dist/site"))?;
    std::fs::write(
        dir.join("marketplace.toml"),
        "[marketplace]\nversion = \"v1.0.0\"\n\n[source_authority]\nrepository = \"example/ggen-marketplace\"\n",
    )?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let per = packs.div_ceil(workers).max(1);
    let records = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..packs)
            .collect::<Vec<_>>()
            .chunks(per)
            .map(|part| {
                let part = part.to_vec();
                scope.spawn(move || -> std::io::Result<Vec<catalog::Record>> {
                    let mut out = Vec::with_capacity(part.len());
                    for i in part {
                        out.push(write_pack(dir, i)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(packs);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| std::io::Error::other("a writer panicked"))??,
            );
        }
        Ok::<_, std::io::Error>(all)
    })?;
    let mut top = serde_json::Map::new();
    top.insert("marketplace_version".into(), "v1.0.0".into());
    top.insert("schema".into(), catalog::SCHEMA.into());
    let mut records = records;
    records.sort_by(|a, b| a.name.cmp(&b.name));
    let c = Catalog::new(records, top);
    std::fs::write(
        dir.join("dist/site/index.json"),
        catalog::render(&c, &Overlay::default()),
    )
}

fn write_pack(dir: &Path, i: usize) -> std::io::Result<catalog::Record> {
    let name = pack_name(i);
    let root = dir.join("packs").join(&name);
    let files = pack_files(&name, i);
    for (path, bytes) in &files {
        let p = root.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, bytes)?;
    }
    let bytes = archive::build(&name, &files)?;
    let t = tree::read_pack(&root)?;
    let record = catalog::record_of(&t, &bytes, "example/ggen-marketplace")
        .ok_or_else(|| std::io::Error::other(format!("generated pack {name} is not admitted")))?;
    std::fs::write(dir.join("dist/packs").join(record.archive_name()), bytes)?;
    Ok(record)
}
