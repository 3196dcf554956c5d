//! `mapek registry import` and `mapek keys generate`.

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{init_logging, Global};
use crate::clock::{Clock, SystemClock};
use crate::keys::KeyPair;
use crate::knowledge::Store;
use crate::registry::import;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Import ggen registry data: an index.json, a packages/ or packs/ folder, receipts/, or a
    /// folder holding several of them. Idempotent.
    Import {
        path: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the ggen-marketplace catalog that would be published: the input catalog with the
    /// remediations in force (none without a store), exactly as it would be written.
    Catalog(CatalogArgs),
    /// Packages the search index (rebuilt by the `reindex` action) finds by a word.
    Search {
        term: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    /// The marketplace checkout (default: the configuration's `[registry] checkout`).
    #[arg(long)]
    pub checkout: Option<PathBuf>,
    /// The input catalog (default: `<checkout>/dist/site/index.json`).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// The archives, a folder or an http(s) base URL (default: `<checkout>/dist/packs`); read
    /// only with `--from-tree`.
    #[arg(long)]
    pub archives: Option<String>,
    /// Build the catalog from the checkout's packs and archives, as the marketplace's own tool
    /// would, instead of reading the input catalog.
    #[arg(long)]
    pub from_tree: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write an Ed25519 key pair in ggen's hex format: ID.key (secret) and ID.pub (public).
    Generate {
        /// The key id (file stem), e.g. `daemon` or `maint-alice`.
        #[arg(long, default_value = "daemon")]
        id: String,
        /// The directory to write to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

pub async fn registry(global: &Global, command: RegistryCommand) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    init_logging(config.log_format);
    let (path, json) = match command {
        RegistryCommand::Import { path, json } => (path, json),
        RegistryCommand::Catalog(args) => return catalog(global, args).await,
        RegistryCommand::Search { term, limit } => {
            let store = Store::open(&config.database_url).await?;
            let found = crate::registry::changes::search(&store, &term, limit).await;
            store.close().await;
            for p in found? {
                println!("{p}");
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let store = Store::open(&config.database_url).await?;
    let report = import::import(&store, &path, SystemClock.now_ms()).await;
    store.close().await;
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for s in &report.sources {
            println!("read {s}");
        }
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!(
            "{} packages ({} changed), {} releases ({} changed), {} receipts applied, {} problems",
            report.packages_seen,
            report.packages_changed,
            report.releases_seen,
            report.releases_changed,
            report.receipts_applied,
            report.problems.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mapek registry catalog`: what would be published. A store is read (for the remediations in
/// force) only when one is named (`--database-url`, `--config`, `MAPEK_DATABASE_URL`).
async fn catalog(global: &Global, args: CatalogArgs) -> anyhow::Result<ExitCode> {
    use crate::registry::marketplace::{catalog, overlay, Archives, MarketplaceConfig};
    use std::io::Write as _;
    let with_store = global.database_url.is_some() || global.config.is_some();
    let config = global.config()?;
    let mut m = match (&args.checkout, config.registry.marketplace().map_err(anyhow::Error::msg)?) {
        (Some(dir), _) => MarketplaceConfig::at(dir),
        (None, Some(m)) => m,
        (None, None) => anyhow::bail!(
            "no marketplace: give --checkout DIR, or a configuration whose [registry] kind is \"ggen-marketplace\""
        ),
    };
    if let Some(c) = args.catalog {
        m.catalog = c;
    }
    if let Some(a) = &args.archives {
        m.archives = Archives::parse(a, std::path::Path::new("."));
    }
    let parsed = if args.from_tree {
        crate::registry::marketplace::catalog_from_tree(&m)
            .await
            .map_err(anyhow::Error::msg)?
    } else {
        let bytes = std::fs::read(&m.catalog)
            .map_err(|e| anyhow::anyhow!("{}: {e}", m.catalog.display()))?;
        catalog::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", m.catalog.display()))?
    };
    let overlay = if with_store {
        let store = Store::open(&config.database_url).await?;
        let o = overlay::read(&store).await;
        store.close().await;
        o?
    } else {
        catalog::Overlay::default()
    };
    std::io::stdout().write_all(&catalog::render(&parsed, &overlay))?;
    Ok(ExitCode::SUCCESS)
}

pub fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let KeysCommand::Generate { id, out } = command;
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!("key id `{id}` must be letters, digits, `-` or `_`");
    }
    std::fs::create_dir_all(&out)?;
    let key = KeyPair::generate(id)?;
    let (secret, public) = key.save(&out)?;
    println!(
        "wrote {} (secret) and {} (public)",
        secret.display(),
        public.display()
    );
    println!("\n# for trusted-keys.toml:\n[[trusted_keys]]\nkey_id = {:?}\npublic_key_hex = {:?}\nlabel = {:?}", key.key_id, key.public_hex(), key.key_id);
    Ok(ExitCode::SUCCESS)
}
