//! The command line: arguments turned into a validated form, then one function per command.

mod audit;
mod bench;
mod bench_analyze;
mod bench_execute;
mod bench_latency;
mod bench_marketplace;
mod demo;
mod policy;
mod registry;
mod remote;
mod replay;
mod run;
mod simulate;
mod validate;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "mapek",
    version,
    about = "The autonomic control plane of the ggen marketplace"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command that touches the stores.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Configuration file (see deploy/mapek.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Database URL: a SQLite path or sqlite:// URL, or postgres://. Overrides the configuration.
    #[arg(
        long,
        global = true,
        env = "MAPEK_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Use the demo's store under ./mapek-demo (created on first use).
    #[arg(long, global = true)]
    pub demo: bool,
    /// Use the marketplace demo under ./mapek-demo-marketplace (created on first use): a
    /// generated ggen-marketplace checkout with one tampered archive, its catalog published at
    /// ./mapek-demo-marketplace/www/index.json and http://127.0.0.1:9700/catalog/index.json.
    #[arg(long, global = true, conflicts_with = "demo")]
    pub demo_marketplace: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run(run::RunArgs),
    /// The managed registry.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Ed25519 keys.
    #[command(subcommand)]
    Keys(registry::KeysCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Policy files: check, sign, verify, test.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Remediations waiting for approval, a window or a freeze; approve or reject them.
    #[command(subcommand)]
    Plans(policy::PlansCommand),
    /// The circuit breaker of the global guards.
    #[command(subcommand)]
    Circuit(policy::CircuitCommand),
    /// Findings and remediations at a glance.
    Status,
    /// Why mapek did what it did: a finding, a remediation (`rem-…`) or an audit entry (its
    /// number): what was observed, the finding's life, the policy and its condition, the gate,
    /// the decisions, the signature, the audit entries, the verification.
    Explain {
        /// A finding's id, a remediation's id or an audit entry's number.
        id: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Undo an executed remediation: its recorded inverse, applied, signed and audited.
    Rollback {
        /// The remediation's id (see `mapek status` or `mapek audit log`).
        id: String,
        /// Who asks, for the audit log.
        #[arg(long, default_value = "cli")]
        by: String,
    },
    /// Run scenarios against a simulated registry on a virtual clock; judge their expectations.
    Simulate(simulate::SimulateArgs),
    /// Check a configuration, the policies, keys and stores it names; report every problem.
    Validate,
    /// Run a proposed policy set over the findings of a period; print every decision that
    /// would differ from what was done.
    Replay(replay::ReplayArgs),
    /// Time a full and an unchanged cycle on a generated registry, and report peak memory.
    Bench(bench::BenchArgs),
}

pub const DEMO_DIR: &str = "mapek-demo";
pub const DEMO_MARKETPLACE_DIR: &str = "mapek-demo-marketplace";

impl Global {
    /// The configuration these options select.
    pub fn config(&self) -> anyhow::Result<Config> {
        let config = if self.demo {
            Config::demo(Path::new(DEMO_DIR))
        } else if self.demo_marketplace {
            Config::demo_marketplace(Path::new(DEMO_MARKETPLACE_DIR))
        } else if let Some(path) = &self.config {
            Config::load(path)?
        } else {
            Config::defaults(Path::new("."))
        };
        let mut config = crate::config::env::apply(config, std::env::vars())?;
        if let Some(url) = &self.database_url {
            config.database_url = url.clone();
        }
        config.load_secrets()?;
        Ok(config)
    }
}

/// Logs only (the commands other than `run`).
pub fn init_logging(format: LogFormat) {
    let _ = crate::traces::init(format, None);
}

/// Runs a command and maps its outcome to an exit code.
/// An error and its causes on one line, each cause once: an error whose message already
/// carries its source (`daemon.key: cannot read: No such file…`) does not repeat it.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(&cli.global, args).await,
            Command::Registry(c) => registry::registry(&cli.global, c).await,
            Command::Keys(c) => registry::keys(c),
            Command::Audit(c) => audit::audit(&cli.global, c).await,
            Command::Policy(policy::PolicyCommand::Enable { id, key }) => {
                policy::enable(&cli.global, &id, &key).await
            }
            Command::Policy(c) => policy::policy(&cli.global, c),
            Command::Plans(c) => policy::plans(&cli.global, c).await,
            Command::Circuit(c) => policy::circuit(&cli.global, c).await,
            Command::Status => audit::status(&cli.global).await,
            Command::Explain { id, json } => audit::explain(&cli.global, &id, json).await,
            Command::Simulate(args) => simulate::simulate(args).await,
            Command::Rollback { id, by } => audit::rollback(&cli.global, &id, &by).await,
            Command::Bench(args) => bench::bench(args, cli.global.database_url.as_deref()).await,
            Command::Validate => validate::validate(&cli.global).await,
            Command::Replay(args) => replay::replay(&cli.global, args).await,
        }
    })
}

#[cfg(test)]
mod describe_tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let key = crate::keys::KeyError::Read {
            file: "daemon.key".into(),
            source: io,
        };
        let e = anyhow::Error::new(key).context("starting");
        assert_eq!(
            super::describe(&e),
            "starting: daemon.key: cannot read: No such file or directory"
        );
    }
}
