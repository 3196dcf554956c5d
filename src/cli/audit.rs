//! `mapek audit log`, `mapek audit verify` and `mapek status`.

use anyhow::Context as _;
use clap::Subcommand;
use std::process::ExitCode;

use super::Global;
use crate::clock::rfc3339;
use crate::keys::{parse_public_hex, KeyPair};
use crate::knowledge::audit::verify_chain;
use crate::knowledge::Store;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// What the daemon did and why, oldest first.
    Log {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only the last N entries.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Check the hash chain and every signature; exit 1 naming the first entry altered or removed.
    Verify {
        /// The daemon's public key (hex); by default, the public half of the configured key file.
        #[arg(long)]
        public_key: Option<String>,
        /// Verify an exported log (JSON lines from `mapek audit export`) instead of the store.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Write the whole log as JSON lines that anyone can verify with the daemon's public key
    /// alone (docs/audit.md gives the encoding and the chain rule).
    Export {
        /// Where to write (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// Reads an exported log, naming the line of anything that is not an entry.
fn read_export(path: &std::path::Path) -> anyhow::Result<Vec<crate::knowledge::audit::AuditEntry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut entries = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        entries.push(
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not an audit entry", path.display(), i + 1))?,
        );
    }
    Ok(entries)
}

pub async fn audit(global: &Global, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    let store = Store::open(&config.database_url).await?;
    let entries = store.audit_entries().await;
    store.close().await;
    let entries = entries?;
    match command {
        AuditCommand::Log { json, limit } => {
            let skip = limit.map(|l| entries.len().saturating_sub(l)).unwrap_or(0);
            for e in &entries[skip..] {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    let detail: serde_json::Value =
                        serde_json::from_str(&e.detail).unwrap_or_default();
                    let field = |k: &str| {
                        detail
                            .get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or("-")
                            .to_string()
                    };
                    println!(
                        "{:>6}  {}  {:<22} {:<28} policy={} action={} finding={} remediation={}",
                        e.seq,
                        rfc3339(e.at),
                        e.kind,
                        e.subject,
                        field("policy"),
                        field("action"),
                        field("finding"),
                        e.remediation_id.as_deref().unwrap_or("-"),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { out } => {
            let mut text = String::new();
            for e in &entries {
                text.push_str(&serde_json::to_string(e)?);
                text.push('\n');
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    let head = entries
                        .last()
                        .map(|e| format!("seq {} hash {}", e.seq, e.hash));
                    eprintln!(
                        "wrote {} entries to {}; head: {}",
                        entries.len(),
                        path.display(),
                        head.unwrap_or_else(|| "empty".into())
                    );
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { public_key, file } => {
            let entries = match &file {
                Some(path) => read_export(path)?,
                None => entries,
            };
            let key = match public_key {
                Some(hex) => {
                    parse_public_hex(&hex).map_err(|e| anyhow::anyhow!("--public-key: {e}"))?
                }
                None => KeyPair::load(&config.key_file)
                    .context("no --public-key given and the daemon's key file is unreadable")?
                    .public(),
            };
            match verify_chain(&entries, &key) {
                Ok(n) => {
                    println!("audit log intact: {n} entries, chain and signatures verified");
                    Ok(ExitCode::SUCCESS)
                }
                Err(b) => {
                    eprintln!("audit log broken: {b}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

pub async fn status(global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    let store = Store::open(&config.database_url).await?;
    let open = store.open_findings().await?;
    let counts = store.remediation_counts().await?;
    let recent = store.recent_remediations(10).await?;
    let window = i64::try_from(config.learning.window.as_millis()).unwrap_or(i64::MAX);
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let outcomes = store.policy_outcomes(now.saturating_sub(window)).await?;
    let notices = store.notice_counts().await?;
    store.close().await;
    println!("open findings: {}", open.len());
    for f in open.iter().take(20) {
        println!(
            "  {:<20} {:<9} {:<8} {}",
            f.kind.as_str(),
            f.severity.as_str(),
            f.state.as_str(),
            f.subject
        );
    }
    println!("remediations by status:");
    for (status, n) in counts {
        println!("  {status:<12} {n}");
    }
    if !notices.is_empty() {
        println!("notices (notify) by status:");
        for (status, n) in notices {
            println!("  {status:<12} {n}");
        }
    }
    println!(
        "policies over the last {} (executed, effective, failed verification, rolled back, superseded):",
        humantime::format_duration(config.learning.window)
    );
    for o in &outcomes {
        println!(
            "  {:<32} {:>5} {:>5} {:>5} {:>5} {:>5}{}",
            o.policy,
            o.executed,
            o.effective,
            o.failed_verification,
            o.rolled_back,
            o.superseded,
            o.demoted
                .as_ref()
                .map(|r| format!("  DEMOTED to dry_run: {r}"))
                .unwrap_or_default()
        );
    }
    println!("latest remediations:");
    for r in recent {
        println!(
            "  {}  {}  {:<28} {:<12} {:<10} {}",
            r.id,
            rfc3339(r.created_at),
            r.subject.to_string(),
            r.action.as_str(),
            r.status.as_str(),
            r.policy
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mapek rollback ID`: undo an executed remediation by applying its recorded inverse.
pub async fn rollback(global: &Global, id: &str, by: &str) -> anyhow::Result<ExitCode> {
    use crate::clock::{Clock, SystemClock};
    use crate::execute::rollback::rollback;
    use crate::registry::SqlRegistry;
    let config = global.config()?;
    let key = KeyPair::load(&config.key_file)?;
    let store = Store::open(&config.database_url).await?;
    let registry = std::sync::Arc::new(SqlRegistry::new(
        store.clone(),
        config.artifact_root.clone(),
    ));
    let result = rollback(&store, &registry, &key, id, by, SystemClock.now_ms()).await;
    store.close().await;
    match result {
        Ok((r, outcome)) => {
            println!(
                "{id} rolled back by {}: {} {} ({outcome:?})",
                r.id, r.action, r.subject
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("refused: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
