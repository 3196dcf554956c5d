//! `mapek replay --since 7d --policies DIR`: a proposed policy set over the recorded findings of a period, every decision that would differ printed beside what was done.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

use super::Global;
use crate::clock::{rfc3339, Clock, SystemClock};
use crate::daemon::reload::PolicySource;
use crate::knowledge::Store;
use crate::plan::replay::{self, Actual, Proposed};
use crate::registry::SqlRegistry;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// How far back: the findings that fired in this period (`7d`, `36h`).
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// The proposed policy directory (its signatures are checked as the daemon would).
    #[arg(long)]
    pub policies: PathBuf,
    /// Every replayed finding as a JSON line, not only the differing ones.
    #[arg(long)]
    pub json: bool,
}

fn done(a: &Option<Actual>) -> String {
    match a {
        None => "nothing".into(),
        Some(a) => format!(
            "{} by {} ({}{})",
            a.action,
            a.policy,
            a.status,
            a.gate.map(|g| format!(" at {g}")).unwrap_or_default()
        ),
    }
}

fn would(p: &Option<Proposed>) -> String {
    match p {
        None => "nothing".into(),
        Some(p) => format!("{} by {} ({})", p.action, p.policy, p.mode),
    }
}

pub async fn replay(global: &Global, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    let period = humantime::parse_duration(&args.since)
        .map_err(|e| anyhow::anyhow!("--since `{}`: not a duration: {e}", args.since))?;
    let proposed = PolicySource::load(
        &args.policies,
        &config.trusted_keys,
        config.require_signed_policies,
    )
    .map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!(
            "the proposed policy set is refused:\n  {}",
            lines.join("\n  ")
        )
    })?;
    let now = SystemClock.now_ms();
    let since = now.saturating_sub(i64::try_from(period.as_millis()).unwrap_or(i64::MAX));
    let store = Store::open(&config.database_url).await?;
    let registry = SqlRegistry::new(store.clone(), config.artifact_root.clone());
    let result = replay::replay(&store, &registry, &proposed, since).await;
    store.close().await;
    let result = result?;
    if args.json {
        for line in &result.lines {
            println!("{}", serde_json::to_string(line)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let differing: Vec<_> = result.differing().collect();
    println!(
        "replayed {} findings that fired since {} against {}: {} decisions would differ",
        result.lines.len(),
        rfc3339(since),
        args.policies.display(),
        differing.len()
    );
    if !differing.is_empty() {
        println!(
            "{:<22} {:<20} {:<22} {:<44} PROPOSED",
            "FIRED", "KIND", "SUBJECT", "DONE"
        );
    }
    for l in differing {
        println!(
            "{:<22} {:<20} {:<22} {:<44} {}",
            rfc3339(l.fired_at),
            l.kind,
            l.subject,
            done(&l.actual),
            would(&l.proposed)
        );
        if let Some(why) = &l.differs {
            println!("    {why}  (finding {})", l.finding);
        }
    }
    for e in &result.eval_errors {
        eprintln!(
            "condition of `{}` failed on finding {}: {} (counted as false)",
            e.policy, e.finding, e.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}
