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
    /// The most packages a generated registry may have (docs/simulation.md).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_packages: usize,
    /// The most cycles (duration / tick) a run may make.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_ticks: i64,
}

/// Exit 0 when every expectation holds, 1 when one fails, 2 when a file is invalid.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut scenarios = Vec::new();
    let mut invalid = false;
    let limits = sim::scenario::Limits {
        max_packages: args.max_packages,
        max_ticks: args.max_ticks,
        ..Default::default()
    };
    for f in &args.files {
        match Scenario::load_with(f, &limits) {
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
        let Some(report) = run_one(&args, s).await else {
            return Ok(ExitCode::from(2));
        };
        if args.json {
            println!("{}", report.to_json());
        } else {
            print_report(s, &report);
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

/// Runs one scenario, showing its progress: a bar on a terminal, a line every tenth of a long
/// run otherwise. None when it could not run (said on stderr).
async fn run_one(args: &SimulateArgs, s: &Scenario) -> Option<sim::report::Report> {
    let terminal = std::io::stderr().is_terminal();
    let mut shown = -1i64;
    let started = std::time::Instant::now();
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
        } else if !terminal && pct / 10 != shown / 10 && started.elapsed().as_secs() >= 5 {
            shown = pct;
            eprintln!(
                "{}: {pct}% after {:.0} s",
                s.name,
                started.elapsed().as_secs_f64()
            );
        }
    })
    .await;
    if terminal {
        eprintln!();
    }
    match report {
        Ok((r, timings)) => {
            if args.timings {
                eprintln!("{}: where the time went\n{}", s.name, timings.render());
            }
            Some(r)
        }
        Err(e) => {
            eprintln!("{}: {e:#}", s.file.display());
            None
        }
    }
}

fn print_report(s: &Scenario, report: &sim::report::Report) {
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
