//! `mapek policy check|sign|verify|test|enable`, `mapek plans list|approve|reject`, `mapek circuit status|close`.

use anyhow::Context as _;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::Global;
use crate::clock::{rfc3339, Clock, SystemClock};
use crate::daemon::reload::PolicySource;
use crate::keys::{KeyPair, Role, Trust, TrustStore};
use crate::knowledge::approvals::Decision;
use crate::knowledge::remediations::Status;
use crate::knowledge::Store;
use crate::plan::policy::{policy_files, LoadOptions, PolicySet};
use crate::plan::signing::{self, Signer};
use crate::plan::{self, approve, testing};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load, type-check and verify a directory without running anything; report every error.
    Check {
        dir: PathBuf,
        /// Trust store for the signatures (default: the configured one, when it exists).
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
        /// Refuse unsigned files (default: the configuration's `require_signed_policies`).
        #[arg(long)]
        require_signed: bool,
    },
    /// Sign a policy file with a maintainer key: writes FILE.sig. Given a directory, signs
    /// every policy file of it (`guards.toml` included; not tests or `quality.toml`).
    Sign {
        file: PathBuf,
        /// The maintainer's secret key file (from `mapek keys generate`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check the signature of every signed policy file of a directory and name the unsigned
    /// ones; exit 1 on a bad signature, or on an unsigned file with --require-signed.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
        /// Fail on unsigned files too, as a daemon with `require_signed_policies = true` would.
        #[arg(long)]
        require_signed: bool,
    },
    /// Let a policy demoted for being ineffective act again (signed by a maintainer key,
    /// audited); its figures count afresh from now.
    Enable {
        /// The policy's id.
        id: String,
        /// The maintainer's secret key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Run the cases of every `*.test.toml` in a directory; exit 1 if one fails.
    Test {
        dir: PathBuf,
        /// Also fail when a policy is the expected winner of no case.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Remediations waiting: for approval, a window or a freeze.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Approve a waiting remediation with a maintainer key named in the policy's approvers.
    Approve {
        id: String,
        #[arg(long)]
        key: PathBuf,
    },
    /// Reject a waiting remediation; one rejection by an approver refuses it.
    Reject {
        id: String,
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CircuitCommand {
    /// Whether the circuit breaker is open, since when and why.
    Status,
    /// Close the circuit by hand (a maintainer key, audited).
    Close {
        #[arg(long)]
        key: PathBuf,
    },
}

fn print_errors(errors: &[crate::plan::policy::PolicyError]) -> ExitCode {
    for e in errors {
        eprintln!("{e}");
    }
    eprintln!("{} error(s)", errors.len());
    ExitCode::from(1)
}

fn trust_for(global: &Global, explicit: Option<PathBuf>) -> anyhow::Result<Option<TrustStore>> {
    let path = match explicit {
        Some(p) => p,
        None => {
            let p = global.config()?.trusted_keys;
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    Ok(Some(TrustStore::load(&path)?))
}

pub fn policy(global: &Global, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check {
            dir,
            trusted_keys,
            require_signed,
        } => check(global, &dir, trusted_keys, require_signed),
        PolicyCommand::Sign { file, key } => {
            let key = KeyPair::load(&key)?;
            let files = if file.is_dir() {
                policy_files(&file).map_err(|e| anyhow::anyhow!("{e}"))?
            } else {
                vec![file]
            };
            for file in files {
                let sig = signing::sign_file(&file, &key)
                    .with_context(|| format!("signing {}", file.display()))?;
                println!("wrote {} (signed by `{}`)", sig.display(), key.key_id);
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Verify {
            dir,
            trusted_keys,
            require_signed,
        } => verify(global, &dir, trusted_keys, require_signed),
        PolicyCommand::Enable { .. } => {
            anyhow::bail!("`policy enable` talks to the store: it runs through `policy::enable`")
        }
        PolicyCommand::Test { dir, strict } => test(&dir, strict),
    }
}

/// `mapek policy check`: the directory loads, type-checks and (with a trust store) verifies.
fn check(
    global: &Global,
    dir: &Path,
    trusted_keys: Option<PathBuf>,
    require_signed: bool,
) -> anyhow::Result<ExitCode> {
    let require_signed = require_signed || global.config()?.require_signed_policies;
    let trust = trust_for(global, trusted_keys)?;
    let opts = LoadOptions {
        trust: trust.as_ref(),
        require_signed,
    };
    // The quality model lives next to the policies: a bad one would stop the daemon.
    if let Err(e) = crate::analyze::quality::QualityModel::load(dir) {
        eprintln!("{e}");
        return Ok(ExitCode::from(1));
    }
    match PolicySet::load_dir(dir, opts) {
        Ok(set) => {
            let signatures = if trust.is_some() {
                ", signatures checked"
            } else {
                ""
            };
            println!(
                "{}: {} policies, the guards and the quality model, all valid{signatures}",
                dir.display(),
                set.policies.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => Ok(print_errors(&errors)),
    }
}

/// `mapek policy verify`: each file's signature.
fn verify(
    global: &Global,
    dir: &Path,
    trusted_keys: Option<PathBuf>,
    require_signed: bool,
) -> anyhow::Result<ExitCode> {
    let trust = trust_for(global, trusted_keys)?
        .context("no trust store: pass --trusted-keys or configure `trusted_keys`")?;
    let files = policy_files(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut good, mut bad, mut unsigned) = (0, 0, Vec::new());
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let sig = std::fs::read_to_string(signing::sig_path(f)).ok();
        let verdict = signing::signer(&bytes, sig.as_deref(), &trust);
        let line = match &verdict {
            Signer::Maintainer(k) => format!("ok    {}  signed by `{k}`", f.display()),
            Signer::NotMaintainer(k) => format!(
                "FAIL  {}  signed by `{k}`, not a maintainer key: sign it again with a key of the `maintainer` role",
                f.display()
            ),
            Signer::Revoked(k) => format!(
                "FAIL  {}  signed by `{k}`, a revoked key: sign it again with a trusted maintainer key",
                f.display()
            ),
            Signer::Unknown => format!(
                "FAIL  {}  bad signature (changed after signing, or an unknown key): review the change, then `mapek policy sign {} --key KEY`",
                f.display(),
                f.display()
            ),
            Signer::Unsigned => format!(
                "{}  {}  unsigned: `mapek policy sign {} --key KEY`",
                if require_signed { "FAIL" } else { "--  " },
                f.display(),
                f.display()
            ),
        };
        match verdict {
            Signer::Maintainer(_) => good += 1,
            Signer::Unsigned => unsigned.push(f.display().to_string()),
            _ => bad += 1,
        }
        println!("{line}");
    }
    println!(
        "{} file(s): {good} signed and good, {bad} with a bad signature, {} unsigned",
        files.len(),
        unsigned.len()
    );
    if !unsigned.is_empty() {
        println!(
            "a daemon with `require_signed_policies = true` refuses the set while any file is unsigned; `mapek policy sign {} --key KEY` signs them all",
            dir.display()
        );
    }
    Ok(if bad > 0 || (require_signed && !unsigned.is_empty()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `mapek policy test`: every case of the directory's `*.test.toml`.
fn test(dir: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let set = match PolicySet::load_dir(dir, LoadOptions::default()) {
        Ok(s) => s,
        Err(errors) => return Ok(print_errors(&errors)),
    };
    let report = match testing::run_dir(dir, &set) {
        Ok(r) => r,
        Err(errors) => return Ok(print_errors(&errors)),
    };
    for r in &report.results {
        match &r.failure {
            None => println!("ok    {}:{}  {}", r.file.display(), r.line, r.name),
            Some(why) => {
                println!("FAIL  {}:{}  {}: {why}", r.file.display(), r.line, r.name)
            }
        }
    }
    if !report.untested.is_empty() {
        println!(
            "policies no passing case expects to win (add a case with `expect = {{ policy = \"ID\" }}`{}): {}",
            if strict { "; --strict fails on them" } else { "" },
            report.untested.join(", ")
        );
    }
    let failed = report.failed();
    println!(
        "{} case(s): {} passed, {failed} failed",
        report.results.len(),
        report.results.len() - failed
    );
    let bad = failed > 0 || (strict && !report.untested.is_empty());
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(super) fn maintainer(trust: &TrustStore, key: &Path) -> anyhow::Result<KeyPair> {
    let key = KeyPair::load(key)?;
    match trust.trust(&key.key_id) {
        Trust::Trusted(k) if k.has_role(Role::Maintainer) && k.public == key.public() => Ok(key),
        Trust::Trusted(k) if k.public != key.public() => {
            anyhow::bail!(
                "key `{}` does not match the trusted key of that id",
                key.key_id
            )
        }
        Trust::Trusted(_) => {
            anyhow::bail!("key `{}` is trusted but not as a maintainer", key.key_id)
        }
        Trust::Revoked => anyhow::bail!("key `{}` is revoked", key.key_id),
        Trust::Unknown => anyhow::bail!("key `{}` is not in the trust store", key.key_id),
    }
}

/// Prints waiting remediations (as the admin API or the store gives them).
pub fn print_pending(pending: &[serde_json::Value], json: bool) -> anyhow::Result<()> {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    for r in pending {
        if json {
            println!("{}", serde_json::to_string(r)?);
            continue;
        }
        let expires = r["expires_at"]
            .as_i64()
            .map(|t| format!(" expires={}", rfc3339(t)))
            .unwrap_or_default();
        let subject = match r["subject"]["version"].as_str() {
            Some(v) => format!("{}@{v}", text(&r["subject"]["package"])),
            None => text(&r["subject"]["package"]),
        };
        println!(
            "{}  {}  {} {subject}  policy={} gate={}{expires}\n    {}",
            text(&r["id"]),
            r["created_at"].as_i64().map(rfc3339).unwrap_or_default(),
            text(&r["action"]),
            text(&r["policy"]),
            text(&r["gate"]),
            text(&r["reason"])
        );
    }
    if !json {
        println!("{} waiting", pending.len());
    }
    Ok(())
}

pub async fn plans(global: &Global, command: PlansCommand) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    if let Some(remote) = super::remote::Remote::of(&config)? {
        return super::remote::plans(&remote, &config, command).await;
    }
    let store = Store::open(&config.database_url).await?;
    let result = plans_with(&store, &config, command).await;
    store.close().await;
    result
}

async fn plans_with(
    store: &Store,
    config: &crate::config::Config,
    command: PlansCommand,
) -> anyhow::Result<ExitCode> {
    let (id, key, decision) = match command {
        PlansCommand::List { json } => {
            let pending = store.remediations_with_status(Status::Pending).await?;
            let pending: Vec<serde_json::Value> = pending
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            print_pending(&pending, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        PlansCommand::Approve { id, key } => (id, key, Decision::Approve),
        PlansCommand::Reject { id, key } => (id, key, Decision::Reject),
    };
    let trust = TrustStore::load(&config.trusted_keys)?;
    let policies = PolicySource::load(
        &config.policies,
        &config.trusted_keys,
        config.require_signed_policies,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "the policy set is refused: {}",
            e.first().map(|e| e.to_string()).unwrap_or_default()
        )
    })?;
    let daemon_key = KeyPair::load(&config.key_file)?;
    let maintainer = maintainer(&trust, &key)?;
    let now = SystemClock.now_ms();
    match approve::decide(
        store,
        &policies,
        &trust,
        &daemon_key,
        &maintainer,
        &id,
        decision,
        now,
    )
    .await
    {
        Ok(a) => {
            println!(
                "{} recorded: `{}` on {id}; the daemon applies it at its next cycle",
                a.decision.as_str(),
                a.key_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("refused: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `mapek policy enable ID --key FILE`.
pub async fn enable(global: &Global, id: &str, key: &Path) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    let trust = TrustStore::load(&config.trusted_keys)?;
    let maintainer = maintainer(&trust, key)?;
    let daemon_key = KeyPair::load(&config.key_file)?;
    let store = Store::open(&config.database_url).await?;
    let result = crate::execute::learn::enable(
        &store,
        &daemon_key,
        id,
        &maintainer.key_id,
        SystemClock.now_ms(),
    )
    .await;
    store.close().await;
    if result? {
        println!(
            "policy `{id}` re-enabled by `{}`: it acts in its own mode again",
            maintainer.key_id
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("refused: policy `{id}` is not demoted");
        Ok(ExitCode::from(1))
    }
}

pub async fn circuit(global: &Global, command: CircuitCommand) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    let store = Store::open(&config.database_url).await?;
    let result = async {
        match command {
            CircuitCommand::Status => {
                let c = plan::circuit(&store).await?;
                if c.open {
                    println!(
                        "open since {} by guard {}: {}\nlast pressure {}; closes by itself after {} without new pressure",
                        rfc3339(c.opened_at),
                        c.guard,
                        c.reason,
                        rfc3339(c.last_pressure),
                        humantime::format_duration(std::time::Duration::from_millis(c.quiet_ms.max(0) as u64))
                    );
                } else {
                    println!("closed");
                }
                Ok(ExitCode::SUCCESS)
            }
            CircuitCommand::Close { key } => {
                let trust = TrustStore::load(&config.trusted_keys)?;
                let maintainer = maintainer(&trust, &key)?;
                let daemon_key = KeyPair::load(&config.key_file)?;
                let now = SystemClock.now_ms();
                if plan::close_circuit_by_hand(&store, &daemon_key, &maintainer.key_id, now).await? {
                    println!("circuit closed by `{}`", maintainer.key_id);
                } else {
                    println!("the circuit is not open");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
    .await;
    store.close().await;
    result
}
