//! `mapek audit log`, `mapek audit verify` and `mapek status`.

use anyhow::Context as _;
use clap::Subcommand;
use std::process::ExitCode;

use super::Global;
use crate::clock::rfc3339;
use crate::daemon::status::StatusReport;
use crate::keys::{parse_public_hex, KeyPair};
use crate::knowledge::chain::{verify_chain_with, Signatures};
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
    /// Check every link and hash of the chain and the head's signature (which the chain extends
    /// to every entry); exit 1 naming the first entry altered, removed or added.
    Verify {
        /// Check every entry's own signature too (slower: one Ed25519 check an entry).
        #[arg(long)]
        every_signature: bool,
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

/// An entry of `audit log --json`: its `detail` as the JSON object it is, not a string of it
/// (`audit export` keeps the stored text, which the hash covers).
fn log_line(e: &crate::knowledge::audit::AuditEntry) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(e)?;
    if let Ok(detail) = serde_json::from_str::<serde_json::Value>(&e.detail) {
        v["detail"] = detail;
    }
    Ok(serde_json::to_string(&v)?)
}

/// Reads an exported log, naming the line of anything that is not an entry.
fn read_export(path: &std::path::Path) -> anyhow::Result<Vec<crate::knowledge::audit::AuditEntry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    crate::knowledge::audit::parse_export(&text)
        .map_err(|(line, e)| anyhow::anyhow!("{}:{line}: not an audit entry: {e}", path.display()))
}

pub async fn audit(global: &Global, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    // An export is checked on its own: whoever checks it (a third party) has no store.
    let store = match &command {
        AuditCommand::Verify { file: Some(_), .. } => None,
        _ => Some(Store::open(&config.database_url).await?),
    };
    let result = run(&config, store.as_ref(), command).await;
    if let Some(store) = store {
        store.close().await;
    }
    result
}

async fn run(
    config: &crate::config::Config,
    store: Option<&Store>,
    command: AuditCommand,
) -> anyhow::Result<ExitCode> {
    let stored = || store.context("the audit log's store is not open");
    match command {
        AuditCommand::Log { json, limit } => {
            let entries = stored()?.audit_entries().await?;
            let skip = limit.map(|l| entries.len().saturating_sub(l)).unwrap_or(0);
            for e in &entries[skip..] {
                if json {
                    println!("{}", log_line(e)?);
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
            let entries = stored()?.audit_entries().await?;
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
        AuditCommand::Verify {
            public_key,
            file,
            every_signature,
        } => {
            let key = match public_key {
                Some(hex) => {
                    parse_public_hex(&hex).map_err(|e| anyhow::anyhow!("--public-key: {e}"))?
                }
                None => KeyPair::load(&config.key_file)
                    .context("no --public-key given and the daemon's key file is unreadable")?
                    .public(),
            };
            let signatures = if every_signature {
                Signatures::Every
            } else {
                Signatures::Head
            };
            let verdict = match &file {
                Some(path) => verify_chain_with(&read_export(path)?, &key, signatures),
                None => stored()?.verify_audit(&key, signatures).await?,
            };
            match verdict {
                Ok(n) => {
                    println!(
                        "audit log intact: {n} entries; every link and hash verified, and {}",
                        match signatures {
                            Signatures::Every => "every entry's signature",
                            Signatures::Head => "the head's signature, which covers them all",
                        }
                    );
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

/// `mapek status`: from the running daemon's admin API when `admin_url` is configured (the
/// store is read directly when it cannot be reached), from the store otherwise.
pub async fn status(global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    if let Some(remote) = super::remote::Remote::of(&config)? {
        match remote
            .call(reqwest::Method::GET, "/v1/admin/status", None)
            .await
        {
            Ok(Ok(body)) => {
                let report: StatusReport = serde_json::from_value(body)
                    .with_context(|| format!("the status from {}", remote.url()))?;
                println!("(from the daemon at {})", remote.url());
                print!("{report}");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Err(refused)) => {
                eprintln!("refused: {refused}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => eprintln!("{e:#}; reading the store directly instead"),
        }
    }
    let store = Store::open(&config.database_url).await?;
    let view = crate::daemon::status::StatusView {
        role: "read from the store (no daemon asked)",
        holder: "",
        policies: crate::daemon::reload::PolicySource::load(
            &config.policies,
            &config.trusted_keys,
            config.require_signed_policies,
        )
        .map(|p| p.policies.len())
        .unwrap_or(0),
        dry_run: config.dry_run,
        window_ms: i64::try_from(config.learning.window.as_millis()).unwrap_or(i64::MAX),
        now: crate::clock::Clock::now_ms(&crate::clock::SystemClock),
    };
    let report = StatusReport::read(&store, view).await;
    store.close().await;
    print!("{}", report?);
    Ok(ExitCode::SUCCESS)
}

/// `mapek explain ID`: from the running daemon when `admin_url` is configured, from the store
/// otherwise (with the policies of the configuration and the daemon's key to check signatures).
pub async fn explain(global: &Global, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    use crate::daemon::explain::{ExplainError, Explanation};
    let config = global.config()?;
    let show = |x: &Explanation| -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(x)?);
        } else {
            print!("{x}");
        }
        Ok(())
    };
    if let Some(remote) = super::remote::Remote::of(&config)? {
        // A finding's id holds `#` and `:`: sent as one path segment.
        let segment: String = id
            .bytes()
            .map(|b| match b {
                b'a'..=b'z'
                | b'A'..=b'Z'
                | b'0'..=b'9'
                | b'-'
                | b'.'
                | b'_'
                | b'~'
                | b':'
                | b'@' => char::from(b).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        let path = format!("/v1/admin/explain/{segment}");
        match remote.call(reqwest::Method::GET, &path, None).await {
            Ok(Ok(body)) => {
                let x: Explanation = serde_json::from_value(body)
                    .with_context(|| format!("the explanation from {}", remote.url()))?;
                show(&x)?;
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Err(refused)) => {
                eprintln!("refused: {refused}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => eprintln!("{e:#}; reading the store directly instead"),
        }
    }
    let store = Store::open(&config.database_url).await?;
    let policies = crate::daemon::reload::PolicySource::load(
        &config.policies,
        &config.trusted_keys,
        config.require_signed_policies,
    )
    .or_else(|_| crate::plan::policy::PolicySet::from_sources(&[]))
    .map_err(|e| anyhow::anyhow!("no policy set: {e:?}"))?;
    let key = KeyPair::load(&config.key_file).ok().map(|k| k.public());
    let read = Explanation::read(&store, &policies, key.as_ref(), id).await;
    store.close().await;
    match read {
        Ok(x) => {
            show(&x)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ExplainError::NotFound(_)) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
        Err(ExplainError::Store(e)) => Err(e.into()),
    }
}

/// `mapek rollback ID`: undo an executed remediation by applying its recorded inverse.
pub async fn rollback(global: &Global, id: &str, by: &str) -> anyhow::Result<ExitCode> {
    use crate::clock::{Clock, SystemClock};
    use crate::execute::rollback::rollback;
    let config = global.config()?;
    let key = KeyPair::load(&config.key_file)?;
    let store = Store::open(&config.database_url).await?;
    let registry = super::run::managed_registry(&config, &store, &key)?;
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
