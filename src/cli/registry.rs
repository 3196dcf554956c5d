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
    /// Packages the search index (rebuilt by the `reindex` action) finds by a word.
    Search {
        term: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
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
