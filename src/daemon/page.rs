//! The status page at `/`: open findings, remediations waiting for approval (with the command
//! that approves them), the latest remediations, the circuit, the leader and the loop's last
//! cycle, rendered on the server from one template; readable without a token, showing no secret.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::status::{StatusReport, StatusView};
use super::Runtime;
use crate::knowledge::remediations::Status;
use crate::model::Gate;

/// How often the page reloads itself, in seconds.
pub const REFRESH_S: u64 = 10;

const TEMPLATE: &str = include_str!("templates/status.html");
/// The page when there is nothing to show: the store is down, or the page failed.
const UNAVAILABLE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{{ refresh_s }}\"><title>mapek: {{ title }}</title></head>\
<body><h1>mapek: {{ title }}</h1><p>{{ why }}</p><p>This page refreshes every {{ refresh_s }} s.</p></body></html>";

/// The template, parsed once; `.html` turns on HTML escaping of every value.
fn env() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        // The template is part of the binary: a syntax error in it is a build defect, caught by
        // the page's tests, and rendering reports it as a 500 rather than panicking here.
        for (name, source) in [("status.html", TEMPLATE), ("unavailable.html", UNAVAILABLE)] {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(error = %e, template = name, "a status page template does not parse");
            }
        }
        env
    })
}

#[derive(Serialize)]
struct Leader {
    holder: String,
    token: i64,
    until: String,
}

#[derive(Serialize)]
struct Waiting {
    id: String,
    action: String,
    subject: String,
    policy: String,
    reason: String,
    approvers: Vec<String>,
}

#[derive(Serialize)]
struct Finding {
    kind: String,
    severity: String,
    state: &'static str,
    subject: String,
    handled_by: Option<String>,
}

#[derive(Serialize)]
struct Recent {
    id: String,
    at: String,
    action: String,
    subject: String,
    status: String,
    policy: String,
}

#[derive(Serialize)]
struct LastCycle {
    at: String,
    duration_ms: u64,
    failed: Option<String>,
}

#[derive(Serialize)]
struct Circuit {
    guard: String,
    reason: String,
    opened_at: String,
}

#[derive(Serialize)]
struct Paused {
    by: String,
    at: String,
}

/// Everything the template shows.
#[derive(Serialize)]
struct Page {
    headline: &'static str,
    refresh_s: u64,
    now: String,
    role: String,
    holder: String,
    leader: Option<Leader>,
    last_cycle: Option<LastCycle>,
    cycles: u64,
    policies: usize,
    dry_run: bool,
    circuit_open: bool,
    circuit: Circuit,
    paused: Option<Paused>,
    pending: Vec<Waiting>,
    findings_total: usize,
    findings: Vec<Finding>,
    recent: Vec<Recent>,
}

fn at(ms: i64) -> String {
    crate::clock::rfc3339(ms)
}

async fn gather(rt: &Runtime) -> Result<Page, crate::knowledge::StoreError> {
    let policies = rt.policies.get();
    let now = rt.clock.now_ms();
    let view = StatusView {
        role: rt.leadership.role().as_str(),
        holder: &rt.leadership.holder,
        policies: policies.policies.len(),
        dry_run: rt.dry_run,
        window_ms: i64::try_from(rt.learning.window.as_millis()).unwrap_or(i64::MAX),
        now,
    };
    let report = StatusReport::read(&rt.store, view).await?;
    let pending = rt
        .store
        .remediations_with_status(Status::Pending)
        .await?
        .into_iter()
        .filter(|r| r.gate == Some(Gate::Approval))
        .map(|r| Waiting {
            approvers: policies
                .get(&r.policy)
                .map(|p| p.approvers.clone())
                .unwrap_or_default(),
            id: r.id,
            action: r.action.as_str().to_string(),
            subject: r.subject.to_string(),
            policy: r.policy,
            reason: r.reason,
        })
        .collect();
    let last_cycle = rt
        .metrics
        .last
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .map(|l| LastCycle {
            at: at(l.at_ms),
            duration_ms: l.duration_ms,
            failed: l.failed,
        });
    Ok(page_of(
        report,
        pending,
        last_cycle,
        rt.metrics.cycles.get(),
        now,
    ))
}

fn page_of(
    report: StatusReport,
    pending: Vec<Waiting>,
    last_cycle: Option<LastCycle>,
    cycles: u64,
    now: i64,
) -> Page {
    let headline = if report.circuit.open {
        "circuit open"
    } else if report.paused.is_some() {
        "execution paused"
    } else {
        "watching"
    };
    Page {
        headline,
        refresh_s: REFRESH_S,
        now: at(now),
        leader: report.lease.as_ref().map(|l| Leader {
            holder: l.holder.clone(),
            token: l.token,
            until: at(l.expires_at),
        }),
        role: report.role,
        holder: report.holder,
        last_cycle,
        cycles,
        policies: report.policies,
        dry_run: report.dry_run,
        circuit_open: report.circuit.open,
        circuit: Circuit {
            guard: report.circuit.guard.clone(),
            reason: report.circuit.reason.clone(),
            opened_at: at(report.circuit.opened_at),
        },
        paused: report.paused.map(|p| Paused {
            by: p.by,
            at: at(p.at),
        }),
        pending,
        findings_total: report.findings_open_total,
        findings: report
            .findings
            .iter()
            .map(|f| Finding {
                kind: f.kind.as_str().to_string(),
                severity: f.severity.as_str().to_string(),
                state: f.state_word(),
                subject: f.subject.clone(),
                handled_by: f.handled_by.clone(),
            })
            .collect(),
        recent: report
            .recent
            .into_iter()
            .map(|r| Recent {
                id: r.id,
                at: at(r.created_at),
                action: r.action.as_str().to_string(),
                subject: r.subject.to_string(),
                status: r.status.as_str().to_string(),
                policy: r.policy,
            })
            .collect(),
    }
}

fn html(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The short page that says why there is no status page; escaped like the page itself.
fn unavailable(code: StatusCode, title: &str, why: &str) -> Response {
    let ctx = minijinja::context! { refresh_s => REFRESH_S, title => title, why => why };
    let body = env()
        .get_template("unavailable.html")
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|_| format!("mapek: {title}"));
    html(code, body)
}

/// `GET /`: the page, or a short one saying why there is none (the store is down: 503).
pub async fn handler(State(rt): State<Arc<Runtime>>) -> Response {
    if let Some(why) = rt.store_health.down() {
        let why = format!("The knowledge store is unreachable: {why}.");
        return unavailable(StatusCode::SERVICE_UNAVAILABLE, "store unreachable", &why);
    }
    let page = match gather(&rt).await {
        Ok(p) => p,
        Err(e) => {
            let why = format!("The knowledge store could not be read: {e}.");
            return unavailable(StatusCode::SERVICE_UNAVAILABLE, "store unreachable", &why);
        }
    };
    match env()
        .get_template("status.html")
        .and_then(|t| t.render(&page))
    {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => unavailable(
            StatusCode::INTERNAL_SERVER_ERROR,
            "page failed",
            &format!("The status page could not be rendered: {e}."),
        ),
    }
}
