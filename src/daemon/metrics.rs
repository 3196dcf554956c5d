//! The Prometheus metrics of the loop (`mapek_` namespace, bounded labels: never a package name).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::FindingKind;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub cycles: IntCounter,
    pub stage_duration: HistogramVec,
    pub stage_errors: IntCounterVec,
    pub findings_open: IntGaugeVec,
    pub findings_fired: IntCounterVec,
    pub remediations: IntCounterVec,
    pub releases_scanned: IntCounterVec,
    pub signature_checks: IntCounterVec,
    pub policy_eval_errors: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policies_loaded: IntGauge,
    pub gate_stops: IntCounterVec,
    pub circuit_open: IntGauge,
    pub intake_requests: IntCounterVec,
    pub intake_events: IntCounterVec,
    pub verifications: IntCounterVec,
    pub notices: IntCounterVec,
    pub policy_outcomes: IntGaugeVec,
    pub policy_demoted: IntGaugeVec,
    pub leader: IntGauge,
    pub lease_acquisitions: IntCounter,
    pub paused: IntGauge,
    pub admin_requests: IntCounterVec,
    pub task_restarts: IntCounterVec,
    pub store_latency: Histogram,
    pub event_to_remediation: Histogram,
    pub wakeups: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub observations: IntCounterVec,
    pub last_cycle: prometheus::Gauge,
    pub store_errors: IntCounter,
    pub catalog_publications: IntCounterVec,
    pub catalog_withheld: IntGauge,
    pub source_reads: IntCounter,
    /// The name of every metric, for the catalogue's test.
    pub names: Vec<String>,
    /// The loop's last completed cycle, for the status page.
    pub last: std::sync::Arc<std::sync::Mutex<Option<LastCycle>>>,
}

/// When the loop last completed a cycle, how long it took, and the stage error that ended it early.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastCycle {
    pub at_ms: i64,
    pub duration_ms: u64,
    pub failed: Option<String>,
}

fn counter(name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    IntCounter::new(name, help)
}

fn gauge(name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    IntGauge::new(name, help)
}

fn counters(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    /// Every remediation counted since start, whatever its policy, action and outcome.
    pub fn remediations_count(&self) -> u64 {
        use prometheus::core::Collector as _;
        self.remediations
            .collect()
            .iter()
            .flat_map(|m| m.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let buckets = vec![
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let mut m = Self {
            cycles: counter("mapek_cycles_total", "Loop cycles completed")?,
            stage_duration: HistogramVec::new(
                HistogramOpts::new(
                    "mapek_stage_duration_seconds",
                    "Duration of each stage of a cycle (stage=cycle for the whole cycle)",
                )
                .buckets(buckets),
                &["stage"],
            )?,
            stage_errors: counters("mapek_stage_errors_total", "Stage runs that failed", &["stage"])?,
            findings_open: gauges("mapek_findings_open", "Findings pending or firing, by kind", &["kind"])?,
            findings_fired: counters("mapek_findings_fired_total", "Findings that started firing", &["kind", "severity"])?,
            remediations: counters("mapek_remediations_total", "Remediations by policy, action and outcome", &["policy", "action", "outcome"])?,
            releases_scanned: counters("mapek_releases_scanned_total", "Releases observed by the monitor", &["scan"])?,
            signature_checks: counters("mapek_signature_checks_total", "Signature checks, verified or answered from the cache", &["source"])?,
            policy_eval_errors: counters("mapek_policy_eval_errors_total", "Policy conditions that failed at run time (counted as false)", &["policy"])?,
            policy_reloads: counters("mapek_policy_reloads_total", "Policy set reloads; a failed one keeps the last good set", &["result"])?,
            policies_loaded: gauge("mapek_policies_loaded", "Policies in force")?,
            gate_stops: counters("mapek_gate_stops_total", "Remediations stopped or held by a gate, by gate and status", &["gate", "status"])?,
            circuit_open: gauge("mapek_circuit_open", "1 while the circuit breaker is open and nothing executes")?,
            intake_requests: counters("mapek_intake_requests_total", "Requests to POST /v1/events, by result (ok, unauthorized, too_large, invalid, store_failed)", &["result"])?,
            intake_events: counters("mapek_intake_events_total", "Telemetry events accepted (stored), refused (invalid lines) and unknown (about a release the registry does not hold)", &["result"])?,
            verifications: counters("mapek_verifications_total", "Remediations verified after verify_after, by verdict (effective, unverifiable, retry, escalated, gave_up)", &["verdict"])?,
            notices: counters("mapek_notices_total", "Webhook delivery attempts of notify notices, by result (delivered, retry, failed)", &["result"])?,
            policy_outcomes: gauges("mapek_policy_remediations", "A policy's remediations in the learning window, by outcome (executed, effective, failed_verification, rolled_back, superseded)", &["policy", "outcome"])?,
            policy_demoted: gauges("mapek_policy_demoted", "1 while a policy is demoted to dry run for being ineffective", &["policy"])?,
            leader: gauge("mapek_leader", "1 while this replica holds the leader's lease (or is the one SQLite replica) and acts; 0 standing by")?,
            lease_acquisitions: counter("mapek_lease_acquisitions_total", "Times this replica took the leader's lease")?,
            paused: gauge("mapek_execution_paused", "1 while execution is paused through the admin API")?,
            admin_requests: counters("mapek_admin_requests_total", "Admin API requests, by endpoint and result (ok, refused, unauthorized, error)", &["endpoint", "result"])?,
            task_restarts: counters("mapek_task_restarts_total", "Daemon tasks restarted after they failed (panicked), by task", &["task"])?,
            store_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "mapek_store_latency_seconds",
                    "Round trip of a probe query to the knowledge store, once per cycle and per /readyz",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
                ]),
            )?,
            event_to_remediation: Histogram::with_opts(
                HistogramOpts::new(
                    "mapek_event_to_remediation_seconds",
                    "From the arrival of the event that woke a cycle (telemetry committed, a file written, a registry change, an admin call) to the commit of each remediation that cycle executed",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )?,
            wakeups: counters("mapek_wakeups_total", "Cycles started other than by the safety-net ticker: by an event (coalesced) or because something was due by time", &["cause"])?,
            build_info: gauges("mapek_build_info", "Always 1; the labels name the running build", &["version"])?,
            observations: counters("mapek_observations_total", "Observations taken in, by source (registry: releases the monitor observed; install, download, lookup, report: telemetry events accepted)", &["source"])?,
            last_cycle: prometheus::Gauge::new(
                "mapek_last_cycle_timestamp_seconds",
                "When the loop last completed a cycle (Unix time)",
            )?,
            store_errors: counter("mapek_store_errors_total", "Probe queries to the knowledge store that failed (once per cycle and per /readyz)")?,
            catalog_publications: counters("mapek_catalog_publications_total", "Times the published catalog was brought to the projection (written: the file changed; unchanged: it was already so; failed: it could not be written)", &["result"])?,
            catalog_withheld: gauge("mapek_catalog_withheld", "Packs the published catalog withholds (quarantined or yanked)")?,
            source_reads: counter("mapek_registry_source_reads_total", "Packs read again from the registry's source of record (a marketplace checkout and its archives)")?,
            names: Vec::new(),
            last: Default::default(),
            registry,
        };
        m.register()?;
        m.zero_series();
        Ok(m)
    }

    /// Registers every metric, and notes its name for the catalogue's test.
    fn register(&mut self) -> Result<(), prometheus::Error> {
        let m = &*self;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.cycles.clone()),
            Box::new(m.stage_duration.clone()),
            Box::new(m.stage_errors.clone()),
            Box::new(m.findings_open.clone()),
            Box::new(m.findings_fired.clone()),
            Box::new(m.remediations.clone()),
            Box::new(m.releases_scanned.clone()),
            Box::new(m.signature_checks.clone()),
            Box::new(m.policy_eval_errors.clone()),
            Box::new(m.policy_reloads.clone()),
            Box::new(m.policies_loaded.clone()),
            Box::new(m.gate_stops.clone()),
            Box::new(m.circuit_open.clone()),
            Box::new(m.intake_requests.clone()),
            Box::new(m.intake_events.clone()),
            Box::new(m.verifications.clone()),
            Box::new(m.notices.clone()),
            Box::new(m.policy_outcomes.clone()),
            Box::new(m.policy_demoted.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.lease_acquisitions.clone()),
            Box::new(m.paused.clone()),
            Box::new(m.admin_requests.clone()),
            Box::new(m.task_restarts.clone()),
            Box::new(m.store_latency.clone()),
            Box::new(m.event_to_remediation.clone()),
            Box::new(m.wakeups.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.observations.clone()),
            Box::new(m.last_cycle.clone()),
            Box::new(m.store_errors.clone()),
            Box::new(m.catalog_publications.clone()),
            Box::new(m.catalog_withheld.clone()),
            Box::new(m.source_reads.clone()),
        ];
        let mut names = Vec::new();
        for c in collectors {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            m.registry.register(c)?;
        }
        self.names = names;
        Ok(())
    }

    /// Every series of a bounded label set shows from the start, at zero.
    fn zero_series(&self) {
        let m = self;
        for source in ["registry", "install", "download", "lookup", "report"] {
            m.observations.with_label_values(&[source]).inc_by(0);
        }
        for result in ["delivered", "retry", "failed"] {
            m.notices.with_label_values(&[result]).inc_by(0);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for verdict in ["effective", "unverifiable", "retry", "escalated", "gave_up"] {
            m.verifications.with_label_values(&[verdict]).inc_by(0);
        }
        for result in ["accepted", "refused", "unknown"] {
            m.intake_events.with_label_values(&[result]).inc_by(0);
        }
        for result in ["success", "failure"] {
            m.policy_reloads.with_label_values(&[result]).inc_by(0);
        }
        for kind in FindingKind::ALL {
            m.findings_open.with_label_values(&[kind.as_str()]).set(0);
        }
        for result in ["written", "unchanged", "failed"] {
            m.catalog_publications
                .with_label_values(&[result])
                .inc_by(0);
        }
    }

    /// Counts a publication of the catalog, and logs one that failed.
    pub fn published(&self, published: &Option<Result<crate::registry::PublishReport, String>>) {
        match published {
            Some(Ok(p)) => {
                let result = if p.written { "written" } else { "unchanged" };
                self.catalog_publications.with_label_values(&[result]).inc();
                self.catalog_withheld.set(p.withheld as i64);
            }
            Some(Err(error)) => {
                self.catalog_publications
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(%error, "the catalog could not be published; the next cycle tries again");
            }
            None => {}
        }
    }

    /// Shows every policy's figures from a learning pass.
    pub fn set_outcomes(&self, outcomes: &[crate::knowledge::standing::Outcomes]) {
        for o in outcomes {
            for (outcome, n) in [
                ("executed", o.executed),
                ("effective", o.effective),
                ("failed_verification", o.failed_verification),
                ("rolled_back", o.rolled_back),
                ("superseded", o.superseded),
            ] {
                self.policy_outcomes
                    .with_label_values(&[o.policy.as_str(), outcome])
                    .set(n);
            }
            self.policy_demoted
                .with_label_values(&[o.policy.as_str()])
                .set(i64::from(o.demoted.is_some()));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
