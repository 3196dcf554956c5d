//! `mapek run`: open the stores, load keys and policies, start the loop and the HTTP listener, stop on a signal.

use anyhow::Context as _;
use clap::Args;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::{demo, Global};
use crate::analyze::quality::QualityModel;
use crate::analyze::Rules;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::daemon::http::IntakeConfig;
use crate::daemon::metrics::Metrics;
use crate::daemon::reload::PolicySource;
use crate::daemon::{self, RunOptions, Runtime};
use crate::keys::{KeyPair, TrustStore};
use crate::knowledge::{redact, Store};
use crate::monitor::intake::Intake;
use crate::registry::marketplace::Marketplace;
use crate::registry::{Managed, SqlRegistry};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run one full cycle and exit.
    #[arg(long, conflicts_with = "cycles")]
    pub once: bool,
    /// Run this many cycles and exit.
    #[arg(long)]
    pub cycles: Option<u64>,
    /// Plan and record what would be done; execute nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the daemon reads before it touches anything: its key, the trust store, the policies
/// and the quality model. Loaded first, so that a missing or refused one stops `mapek run`
/// before a database file or a lock is created.
pub struct Inputs {
    key: KeyPair,
    trust: TrustStore,
    policies: crate::plan::policy::PolicySet,
    quality: QualityModel,
}

impl Inputs {
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let key = KeyPair::load(&config.key_file).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nthe daemon needs its signing key; create one with `mapek keys generate --id daemon --out {}`",
                config
                    .key_file
                    .parent()
                    .map(|p| p.display().to_string())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| ".".into())
            )
        })?;
        let trust = TrustStore::load(&config.trusted_keys).map_err(|e| {
            anyhow::anyhow!("{e}\nthe daemon will not judge signatures without a trust store")
        })?;
        let policies = PolicySource::load(
            &config.policies,
            &config.trusted_keys,
            config.require_signed_policies,
        )
        .map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("the policy set is refused:\n  {}", lines.join("\n  "))
        })?;
        let quality = QualityModel::load(&config.policies)?;
        Ok(Self {
            key,
            trust,
            policies,
            quality,
        })
    }
}

/// Builds the shared runtime of the stages from a configuration and its loaded inputs.
/// `intake` is the telemetry writer, when the daemon serves `POST /v1/events`.
pub async fn runtime(
    config: &Config,
    inputs: Inputs,
    dry_run: bool,
    intake: Option<Intake>,
) -> anyhow::Result<Runtime> {
    let Inputs {
        key,
        trust,
        policies,
        quality,
    } = inputs;
    let store = Store::open(&config.database_url).await?;
    // On PostgreSQL every transaction of the loop is fenced by the leader's lease.
    let store = match store.backend {
        crate::knowledge::Backend::Postgres => store.fenced().with_lease_ttl(config.lease_ttl),
        crate::knowledge::Backend::Sqlite => store,
    };
    let intake = match (intake, &config.intake_token) {
        (Some(writer), Some(token)) => Some(IntakeConfig {
            writer,
            token: token.clone(),
            max_body: config.intake_max_body,
            horizon: config.horizon,
        }),
        _ => None,
    };
    let registry = managed_registry(config, &store, &key)?;
    Ok(Runtime {
        registry,
        store,
        key,
        policies: PolicySource::watched(
            policies,
            config.policies.clone(),
            config.trusted_keys.clone(),
            config.require_signed_policies,
        ),
        trust: Arc::new(trust),
        trust_path: Some(config.trusted_keys.clone()),
        clock: Arc::new(SystemClock),
        metrics: Arc::new(Metrics::new()?),
        dry_run: dry_run || config.dry_run,
        full_scan_every: config.full_scan_interval,
        rules: Rules {
            settings: config.detectors.clone(),
            quality,
        },
        learning: config.learning.clone(),
        compaction: config.compaction.clone(),
        notifier: Some(Arc::new(
            crate::execute::notify::Notifier::new(config.notify.clone())
                .map_err(anyhow::Error::msg)?,
        )),
        retention: config.retention(),
        intake,
        leadership: Arc::new(crate::daemon::lead::Leadership::new(config.lease_ttl)),
        admin_token: config.admin_token.clone(),
        on_task_failure: config.on_task_failure,
        fault: None,
        store_health: Default::default(),
        wake: Default::default(),
    })
}

/// The registry the configuration names: the SQL registry (its `http(s)://` artifacts fetched
/// with the configured limits), or a ggen marketplace checkout mirrored in `store`, whose
/// catalog `key` signs.
pub fn managed_registry(
    config: &Config,
    store: &Store,
    key: &KeyPair,
) -> anyhow::Result<Arc<Managed>> {
    let sql = SqlRegistry::new(store.clone(), config.artifact_root.clone())
        .with_fetcher(config.registry.fetch)
        .map_err(anyhow::Error::msg)?;
    Ok(Arc::new(
        match config.registry.marketplace().map_err(anyhow::Error::msg)? {
            None => Managed::from(sql),
            Some(m) => {
                if !m.checkout.join("packs").is_dir() {
                    anyhow::bail!(
                        "[registry] checkout {}: no packs/ folder: not a ggen-marketplace checkout",
                        m.checkout.display()
                    );
                }
                Managed::from(Marketplace::new(sql, m, Some(Arc::new(key.clone())))?)
            }
        },
    ))
}

pub async fn run(global: &Global, args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = global.config()?;
    // Held to the end: dropping it flushes the spans still buffered to the collector.
    let _traces = crate::traces::init(
        config.log_format,
        crate::traces::endpoint(config.otlp_endpoint.as_deref()),
    );
    if global.demo {
        demo::prepare(&config).await?;
    }
    if global.demo_marketplace {
        demo::prepare_marketplace(&config).await?;
    }
    // Everything the daemon reads is checked before it creates or opens anything.
    let inputs = Inputs::load(&config)?;
    let cancel = CancellationToken::new();
    let cycles = if args.once { Some(1) } else { args.cycles };
    let serving = cycles.is_none() && config.listen.is_some();
    // The intake writer outlives the HTTP listener, so that every request it answered is stored.
    let intake_stop = CancellationToken::new();
    let mut writer = None;
    let intake = if serving && config.intake_token.is_some() {
        let store = Store::open(&config.database_url).await?;
        let (intake, task) = Intake::start(store, intake_stop.clone());
        writer = Some(task);
        Some(intake)
    } else {
        None
    };
    // A second daemon on one SQLite file refuses to start; held until the process ends.
    let _single = daemon::lead::single_replica(&config.database_url)?;
    let rt = Arc::new(runtime(&config, inputs, args.dry_run, intake).await?);
    tracing::info!(
        database = %redact(&config.database_url),
        policies = rt.policies.get().policies.len(),
        trusted_keys = rt.trust.keys.len(),
        dry_run = rt.dry_run,
        interval = ?config.interval,
        "mapek starting"
    );
    let mut http = None;
    if cycles.is_none() {
        if let Some(addr) = config.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(
                %addr,
                intake = rt.intake.is_some(),
                "serving /metrics, /healthz, /readyz and POST /v1/events"
            );
            http = Some(tokio::spawn(daemon::http::serve(
                listener,
                rt.clone(),
                cancel.clone(),
            )));
        }
        tokio::spawn(stop_on_signal(cancel.clone()));
        tokio::spawn(reload_on_hangup(rt.clone(), cancel.clone()));
    }
    // What wakes the loop besides its own calls; the watchers stop when this is dropped.
    let _watching = daemon::wake::start(
        &rt,
        &daemon::wake::Sources {
            database_url: config.database_url.clone(),
            reloads: vec![config.policies.clone(), config.trusted_keys.clone()],
        },
        &cancel,
    );
    let summary = daemon::lead::run(
        rt.clone(),
        RunOptions {
            cycles,
            interval: config.interval,
            grace: config.shutdown_grace,
        },
        cancel.clone(),
    )
    .await?;
    cancel.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    intake_stop.cancel();
    if let Some(w) = writer {
        let _ = w.await;
    }
    // A stage cut off by the grace period may still hold a connection, and closing the pool
    // waits for every connection: the process ends without it (the database lets them go).
    if summary.cut_off.is_empty() {
        rt.store.close().await;
    }
    tracing::info!(
        cycles = summary.cycles,
        stage_errors = summary.stage_errors,
        cut_off = ?summary.cut_off,
        "mapek stopped"
    );
    // A daemon's stage errors are transient by design (logged, counted, retried next cycle):
    // a stop within the grace period is a clean stop. A counted run (`--once`, `--cycles`,
    // from cron) reports them in its status, since nobody retries it.
    let counted_run_failed = cycles.is_some() && summary.stage_errors > 0;
    Ok(if counted_run_failed || !summary.cut_off.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// SIGHUP asks the plan stage to reload the policies before its next cycle. The handler is
/// installed before this returns (not when the task first runs): READY is sent soon after, and
/// a SIGHUP that arrived before the handler would take the default action and end the daemon.
fn reload_on_hangup(
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hup = match hup {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGHUP; policies reload on directory changes only");
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    got = hup.recv() => {
                        if got.is_none() { return }
                        tracing::info!("SIGHUP: reloading policies now");
                        rt.policies.request();
                        rt.wake.ring(daemon::wake::Reason::Reload);
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (rt, cancel);
        }
    }
}

/// Cancels on Ctrl-C or SIGTERM; the stages finish their current work and stop. As with
/// SIGHUP, the handlers are installed before this returns.
fn stop_on_signal(cancel: CancellationToken) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        {
            let (mut term, mut int) = match handlers {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM or SIGINT");
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = int.recv() => tracing::info!("interrupt: stopping; the stages finish their current work (a second signal exits at once)"),
                _ = term.recv() => tracing::info!("SIGTERM: stopping; the stages finish their current work (a second signal exits at once)"),
                _ = cancel.cancelled() => return,
            }
            crate::daemon::notify::stopping();
            cancel.cancel();
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::warn!("second signal: exiting at once");
            std::process::exit(130);
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            cancel.cancel();
        }
    }
}
