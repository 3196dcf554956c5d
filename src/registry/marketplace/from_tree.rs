//! The catalog the marketplace's own CI would build from a checkout, for comparison with the published one.

use super::catalog::{self, Catalog};
use super::{tree, Archives, MarketplaceConfig};
use crate::registry::fetch::Fetcher;

/// The catalog the marketplace's own tool would build from the checkout: every admitted pack's
/// record, its digest and size from its archive. A refused pack is left out, as the tool
/// leaves it; a pack whose archive cannot be read is an error.
pub async fn catalog_from_tree(config: &MarketplaceConfig) -> Result<Catalog, String> {
    let checkout = config.checkout.clone();
    let archives = config.archives.clone();
    let fetcher = match &archives {
        Archives::Url(_) => Some(Fetcher::new(config.fetch)?),
        Archives::Dir(_) => None,
    };
    let repository = config.repository();
    let max = config.fetch.max_bytes;
    tokio::task::spawn_blocking(move || {
        let trees =
            tree::read_checkout(&checkout).map_err(|e| format!("{}: {e}", checkout.display()))?;
        let mut packs = Vec::new();
        for t in trees.values().filter(|t| t.admitted()) {
            let (Some(name), Some(version)) = (&t.manifest.name, &t.manifest.version) else {
                continue;
            };
            let file = format!("{name}-{version}.tar.gz");
            let bytes = match &archives {
                Archives::Dir(d) => std::fs::read(d.join(&file))
                    .map_err(|e| format!("{}: {e}", d.join(&file).display()))?,
                Archives::Url(base) => {
                    let f = fetcher.as_ref().ok_or("no HTTP client")?;
                    f.get_blocking(&format!("{base}/{file}"))
                        .map_err(|e| e.to_string())?
                        .0
                }
            };
            if bytes.len() as u64 > max {
                return Err(format!("{file}: larger than {max} bytes"));
            }
            packs.extend(catalog::record_of(t, &bytes, &repository));
        }
        packs.sort_by(|a, b| a.name.cmp(&b.name));
        let version = std::fs::read_to_string(checkout.join("marketplace.toml"))
            .ok()
            .and_then(|s| toml::from_str::<toml::Table>(&s).ok())
            .and_then(|t| {
                t.get("marketplace")?
                    .get("version")?
                    .as_str()
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                format!(
                    "{}: no [marketplace] version",
                    checkout.join("marketplace.toml").display()
                )
            })?;
        let mut top = serde_json::Map::new();
        top.insert("marketplace_version".into(), version.into());
        top.insert("schema".into(), catalog::SCHEMA.into());
        Ok(Catalog::new(packs, top))
    })
    .await
    .map_err(|e| e.to_string())?
}
