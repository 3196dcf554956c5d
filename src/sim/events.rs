//! A scenario's events applied to its world: publications, tampering, keys, telemetry streams, reports, approvals.

use anyhow::Context as _;
use std::sync::Arc;

use super::scenario::EventKind;
use super::world::{digest, World};
use crate::keys::Role;
use crate::knowledge::approvals::Decision;
use crate::knowledge::remediations::Status;
use crate::plan::approve;
use crate::registry::generate::{self, derived_key};
use crate::registry::Registry;

async fn latest(w: &World, package: &str, version: &str) -> anyhow::Result<String> {
    if version != "latest" {
        return Ok(version.to_string());
    }
    w.registry
        .inner
        .package(package)
        .await?
        .and_then(|p| p.latest)
        .with_context(|| format!("package `{package}` has no latest release"))
}

/// The release an event names (`latest` resolved), which must exist.
async fn release_of(
    w: &World,
    package: &str,
    version: &str,
) -> anyhow::Result<(String, crate::registry::ReleaseRecord)> {
    let v = latest(w, package, version).await?;
    let r = w
        .registry
        .inner
        .release(package, &v)
        .await?
        .with_context(|| format!("no release {package}@{v}"))?;
    Ok((v, r))
}

pub(super) async fn apply(w: &mut World, kind: &EventKind, now: i64) -> anyhow::Result<()> {
    match kind {
        EventKind::Publish { .. } => publish(w, kind, now).await?,
        EventKind::InstallOutcomes {
            package,
            version,
            per_hour,
            failure_ratio,
            for_ms,
        } => {
            let v = latest(w, package, version).await?;
            w.telemetry
                .installs(package, &v, *per_hour, *failure_ratio, now, *for_ms);
        }
        EventKind::Downloads {
            package,
            per_hour,
            for_ms,
        } => {
            let v = latest(w, package, "latest").await?;
            w.telemetry.downloads(package, &v, *per_hour, now, *for_ms);
        }
        EventKind::LookupLatency { p99_ms, for_ms } => w.telemetry.lookups(*p99_ms, now, *for_ms),
        EventKind::Report {
            package,
            version,
            reporter,
            category,
        } => {
            let v = latest(w, package, version).await?;
            w.telemetry.report(crate::monitor::events::Report {
                package: package.clone(),
                version: v,
                reporter: reporter.clone(),
                category: category.clone(),
                at: now,
            });
        }
        EventKind::TamperArtifact { package, version } => tamper(w, package, version).await?,
        EventKind::CorruptSignature { package, version } => {
            let (v, r) = release_of(w, package, version).await?;
            let signer = r.signer.unwrap_or_else(|| "pub-0".into());
            let key = derived_key(w.seed, &signer);
            w.registry
                .inner
                .set_signature(package, &v, &key.sign(b"not these bytes"), &signer)
                .await?;
        }
        EventKind::RevokeKey { .. } | EventKind::TrustKey { .. } => trust(w, kind),
        EventKind::RotateKey { key, new_key } => rotate(w, key, new_key).await?,
        EventKind::Approve {
            policy,
            package,
            key,
        } => approve(w, policy, package, key, now).await?,
        EventKind::Pause { by } => {
            let paused = crate::knowledge::control::Paused {
                by: by.clone(),
                at: now,
            };
            pause(w, Some(&paused)).await?;
        }
        EventKind::Resume => pause(w, None).await?,
        EventKind::RegistryOutage { .. } | EventKind::StoreOutage { .. } => {}
    }
    Ok(())
}

/// Execution paused or resumed, as the admin API does it.
async fn pause(
    w: &World,
    paused: Option<&crate::knowledge::control::Paused>,
) -> anyhow::Result<()> {
    let mut tx = w.store.begin().await?;
    crate::knowledge::control::set_paused(&mut tx, paused).await?;
    tx.commit().await?;
    Ok(())
}

async fn publish(w: &mut World, kind: &EventKind, now: i64) -> anyhow::Result<()> {
    let EventKind::Publish {
        package,
        version,
        signed,
        signer,
        dependencies,
        license,
        readme,
        tests,
    } = kind
    else {
        return Ok(());
    };
    let key = signer.clone().unwrap_or_else(|| "pub-0".to_string());
    let key = derived_key(w.seed, &key);
    let contents = generate::Contents {
        license: *license,
        readme: *readme,
        tests: *tests,
    };
    generate::publish(
        &w.registry.inner,
        package,
        version,
        signed.then_some(&key),
        dependencies,
        contents,
        now,
    )
    .await?;
    Ok(())
}

async fn tamper(w: &mut World, package: &str, version: &str) -> anyhow::Result<()> {
    let (v, r) = release_of(w, package, version).await?;
    match &w.registry.virtual_artifacts {
        Some(tampered) => {
            if let Ok(mut t) = tampered.lock() {
                t.insert((package.to_string(), v.clone()));
            }
            // Judged in this tick, as a watched file would be.
            if let Some(location) = &r.artifact {
                w.registry.inner.artifact_changes.note(location);
            }
        }
        None => {
            let file = r.artifact.context("the release has no artifact")?;
            w.registry.inner.tamper_artifact(&file)?;
        }
    }
    Ok(())
}

/// A key revoked, or trusted as a publisher's.
fn trust(w: &mut World, kind: &EventKind) {
    let mut t = (*w.trust).clone();
    match kind {
        EventKind::RevokeKey { key } => {
            if !t.revoked.contains(key) {
                t.revoked.push(key.clone());
            }
        }
        EventKind::TrustKey { key } => {
            t.add(
                &derived_key(w.seed, key),
                "trusted by event",
                vec![Role::Publisher],
            );
            t.revoked.retain(|k| k != key);
        }
        _ => return,
    }
    digest(&mut t);
    w.trust = Arc::new(t);
}

/// Every release signed by `key` signed again by `new_key`.
async fn rotate(w: &mut World, key: &str, new_key: &str) -> anyhow::Result<()> {
    let reg = &w.registry.inner;
    let new = derived_key(w.seed, new_key);
    let (all, _) = reg.releases_since(0).await?;
    for r in all.iter().filter(|r| r.signer.as_deref() == Some(key)) {
        if let Some(file) = &r.artifact {
            let bytes = reg.read_artifact(file)?;
            reg.set_signature(&r.package, &r.version, &new.sign(&bytes), new_key)
                .await?;
        }
    }
    Ok(())
}

/// A maintainer's approval of the remediation of `policy` on `package` that waits for one.
async fn approve(
    w: &mut World,
    policy: &str,
    package: &str,
    key: &str,
    now: i64,
) -> anyhow::Result<()> {
    let pending = w.store.remediations_with_status(Status::Pending).await?;
    let target = pending.iter().find(|r| {
        r.policy == policy
            && r.subject.package == package
            && r.gate == Some(crate::model::Gate::Approval)
    });
    let Some(r) = target else {
        w.notes.push(format!(
            "{}: approve: no remediation of `{policy}` on `{package}` waits for approval",
            crate::clock::rfc3339(now)
        ));
        return Ok(());
    };
    let maintainer = derived_key(w.seed, key);
    if let Err(e) = approve::decide(
        &w.store,
        &w.policies,
        &w.trust,
        &w.key,
        &maintainer,
        &r.id,
        Decision::Approve,
        now,
    )
    .await
    {
        w.notes.push(format!(
            "{}: approval by `{key}` refused: {e}",
            crate::clock::rfc3339(now)
        ));
    }
    Ok(())
}
