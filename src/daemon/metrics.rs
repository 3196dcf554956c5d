//! The Prometheus metrics of the loop (`mapek_` namespace, bounded labels: never a package name).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let buckets = vec![
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let m = Self {
            cycles: IntCounter::new("mapek_cycles_total", "Loop cycles completed")?,
            stage_duration: HistogramVec::new(
                HistogramOpts::new(
                    "mapek_stage_duration_seconds",
                    "Duration of each stage of a cycle (stage=cycle for the whole cycle)",
                )
                .buckets(buckets),
                &["stage"],
            )?,
            stage_errors: IntCounterVec::new(
                Opts::new("mapek_stage_errors_total", "Stage runs that failed"),
                &["stage"],
            )?,
            findings_open: IntGaugeVec::new(
                Opts::new("mapek_findings_open", "Findings pending or firing, by kind"),
                &["kind"],
            )?,
            findings_fired: IntCounterVec::new(
                Opts::new("mapek_findings_fired_total", "Findings that started firing"),
                &["kind", "severity"],
            )?,
            remediations: IntCounterVec::new(
                Opts::new(
                    "mapek_remediations_total",
                    "Remediations by policy, action and outcome",
                ),
                &["policy", "action", "outcome"],
            )?,
            releases_scanned: IntCounterVec::new(
                Opts::new(
                    "mapek_releases_scanned_total",
                    "Releases observed by the monitor",
                ),
                &["scan"],
            )?,
            signature_checks: IntCounterVec::new(
                Opts::new(
                    "mapek_signature_checks_total",
                    "Signature checks, verified or answered from the cache",
                ),
                &["source"],
            )?,
            policy_eval_errors: IntCounterVec::new(
                Opts::new(
                    "mapek_policy_eval_errors_total",
                    "Policy conditions that failed at run time (counted as false)",
                ),
                &["policy"],
            )?,
            policy_reloads: IntCounterVec::new(
                Opts::new(
                    "mapek_policy_reloads_total",
                    "Policy set reloads; a failed one keeps the last good set",
                ),
                &["result"],
            )?,
            policies_loaded: IntGauge::new("mapek_policies_loaded", "Policies in force")?,
            gate_stops: IntCounterVec::new(
                Opts::new(
                    "mapek_gate_stops_total",
                    "Remediations stopped or held by a gate, by gate and status",
                ),
                &["gate", "status"],
            )?,
            circuit_open: IntGauge::new(
                "mapek_circuit_open",
                "1 while the circuit breaker is open and nothing executes",
            )?,
            intake_requests: IntCounterVec::new(
                Opts::new(
                    "mapek_intake_requests_total",
                    "Requests to POST /v1/events, by result (ok, unauthorized, too_large, invalid, store_failed)",
                ),
                &["result"],
            )?,
            intake_events: IntCounterVec::new(
                Opts::new(
                    "mapek_intake_events_total",
                    "Telemetry events accepted (stored) and refused (invalid lines)",
                ),
                &["result"],
            )?,
            verifications: IntCounterVec::new(
                Opts::new(
                    "mapek_verifications_total",
                    "Remediations verified after verify_after, by verdict (effective, unverifiable, retry, escalated, gave_up)",
                ),
                &["verdict"],
            )?,
            notices: IntCounterVec::new(
                Opts::new(
                    "mapek_notices_total",
                    "Webhook delivery attempts of notify notices, by result (delivered, retry, failed)",
                ),
                &["result"],
            )?,
            policy_outcomes: IntGaugeVec::new(
                Opts::new(
                    "mapek_policy_remediations",
                    "A policy's remediations in the learning window, by outcome (executed, effective, failed_verification, rolled_back, superseded)",
                ),
                &["policy", "outcome"],
            )?,
            policy_demoted: IntGaugeVec::new(
                Opts::new(
                    "mapek_policy_demoted",
                    "1 while a policy is demoted to dry run for being ineffective",
                ),
                &["policy"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.cycles.clone()))?;
        m.registry.register(Box::new(m.stage_duration.clone()))?;
        m.registry.register(Box::new(m.stage_errors.clone()))?;
        m.registry.register(Box::new(m.findings_open.clone()))?;
        m.registry.register(Box::new(m.findings_fired.clone()))?;
        m.registry.register(Box::new(m.remediations.clone()))?;
        m.registry.register(Box::new(m.releases_scanned.clone()))?;
        m.registry.register(Box::new(m.signature_checks.clone()))?;
        m.registry
            .register(Box::new(m.policy_eval_errors.clone()))?;
        m.registry.register(Box::new(m.policy_reloads.clone()))?;
        m.registry.register(Box::new(m.policies_loaded.clone()))?;
        m.registry.register(Box::new(m.gate_stops.clone()))?;
        m.registry.register(Box::new(m.circuit_open.clone()))?;
        m.registry.register(Box::new(m.intake_requests.clone()))?;
        m.registry.register(Box::new(m.intake_events.clone()))?;
        m.registry.register(Box::new(m.verifications.clone()))?;
        m.registry.register(Box::new(m.notices.clone()))?;
        for result in ["delivered", "retry", "failed"] {
            m.notices.with_label_values(&[result]).inc_by(0);
        }
        m.registry.register(Box::new(m.policy_outcomes.clone()))?;
        m.registry.register(Box::new(m.policy_demoted.clone()))?;
        for verdict in ["effective", "unverifiable", "retry", "escalated", "gave_up"] {
            m.verifications.with_label_values(&[verdict]).inc_by(0);
        }
        for result in ["accepted", "refused"] {
            m.intake_events.with_label_values(&[result]).inc_by(0);
        }
        for result in ["success", "failure"] {
            m.policy_reloads.with_label_values(&[result]).inc_by(0);
        }
        for kind in FindingKind::ALL {
            m.findings_open.with_label_values(&[kind.as_str()]).set(0);
        }
        Ok(m)
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
