//! `mapek simulate FILE... [--report DIR] [--json]`: run scenarios on a virtual clock and judge them.

use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::sim::{self, scenario::Scenario};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Scenario files (see docs/simulation.md).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write report.json, report.md and timeline.svg here (one folder per scenario when several).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print each report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Call the planner, the executor and verification in every cycle, as the daemon does,
    /// rather than only when something they read changed: slower, and the same report.
    #[arg(long)]
    pub every_cycle: bool,
    /// Print where each run's wall time went (setup, each stage, the report) on stderr.
    #[arg(long)]
    pub timings: bool,
}

/// Exit 0 when every expectation holds, 1 when one fails, 2 when a file is invalid.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut scenarios = Vec::new();
    let mut invalid = false;
    for f in &args.files {
        match Scenario::load(f) {
            Ok(s) => scenarios.push(s),
            Err(errors) => {
                invalid = true;
                for e in errors {
                    eprintln!("{e}");
                }
            }
        }
    }
    if invalid {
        return Ok(ExitCode::from(2));
    }
    let several = scenarios.len() > 1;
    let mut failed = false;
    for s in &scenarios {
        let terminal = std::io::stderr().is_terminal();
        let mut shown = -1i64;
        let schedule = if args.every_cycle {
            sim::Schedule::EveryCycle
        } else {
            sim::Schedule::OnChange
        };
        let report = sim::run_with(s, schedule, |done| {
            let pct = (done * 100.0) as i64;
            if terminal && pct != shown {
                shown = pct;
                eprint!(
                    "\r{} [{:<50}] {pct:>3}%",
                    s.name,
                    "#".repeat((pct / 2) as usize)
                );
                let _ = std::io::stderr().flush();
            }
        })
        .await;
        if terminal {
            eprintln!();
        }
        let report = match report {
            Ok((r, timings)) => {
                if args.timings {
                    eprintln!("{}: where the time went\n{}", s.name, timings.render());
                }
                r
            }
            Err(e) => {
                eprintln!("{}: {e:#}", s.file.display());
                return Ok(ExitCode::from(2));
            }
        };
        if args.json {
            println!("{}", report.to_json());
        } else {
            println!(
                "{} ({}): {} passed, {} failed",
                report.scenario,
                s.file.display(),
                report.passed,
                report.failed
            );
            for j in &report.expectations {
                println!(
                    "  {} {}:{} {} {}\n      {}",
                    if j.pass { "pass" } else { "FAIL" },
                    s.file.display(),
                    j.line,
                    j.kind,
                    j.expectation,
                    j.evidence
                );
            }
            for n in &report.notes {
                println!("  note: {n}");
            }
        }
        if let Some(dir) = &args.report {
            let dir = if several {
                dir.join(s.file.file_stem().unwrap_or_default())
            } else {
                dir.clone()
            };
            report.write(&dir)?;
        }
        failed |= !report.all_passed();
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
