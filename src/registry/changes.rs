//! Every change of the SQL registry (quarantine, yank, latest, deprecation, quality, reindex), each with its exact inverse, in the caller's transaction.

use sqlx::{Executor, Row};

use super::sql::next_seq;
use super::{Applied, Change, RegistryError};
use crate::knowledge::Conn;

fn unchanged(inverse: Change) -> Result<Applied, RegistryError> {
    Ok(Applied {
        changed: false,
        inverse,
    })
}

fn changed(inverse: Change) -> Result<Applied, RegistryError> {
    Ok(Applied {
        changed: true,
        inverse,
    })
}

async fn package_row(
    conn: &mut Conn,
    package: &str,
) -> Result<
    (
        String,
        Option<String>,
        Option<String>,
        Option<f64>,
        Option<String>,
    ),
    RegistryError,
> {
    let row = conn
        .fetch_optional(
            sqlx::query(
                "SELECT status, prior_status, latest, quality, deprecation FROM packages WHERE name = $1",
            )
            .bind(package.to_string()),
        )
        .await?
        .ok_or_else(|| RegistryError::NotFound {
            what: "package",
            name: package.to_string(),
        })?;
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
    ))
}

/// A boolean column of `releases` that a change sets.
#[derive(Debug, Clone, Copy)]
pub enum ReleaseFlag {
    Quarantined,
    Yanked,
}

/// The change that sets `flag` of a release to `to`.
fn flag_change(flag: ReleaseFlag, package: &str, version: &str, to: bool) -> Change {
    let (package, version) = (package.to_string(), version.to_string());
    match (flag, to) {
        (ReleaseFlag::Quarantined, true) => Change::QuarantineRelease { package, version },
        (ReleaseFlag::Quarantined, false) => Change::UnquarantineRelease { package, version },
        (ReleaseFlag::Yanked, true) => Change::YankRelease { package, version },
        (ReleaseFlag::Yanked, false) => Change::UnyankRelease { package, version },
    }
}

/// Sets a release's flag to `want`; the inverse sets it back.
pub async fn release_flag(
    conn: &mut Conn,
    flag: ReleaseFlag,
    package: &str,
    version: &str,
    want: bool,
) -> Result<Applied, RegistryError> {
    let inverse = flag_change(flag, package, version, !want);
    let column = match flag {
        ReleaseFlag::Quarantined => "quarantined",
        ReleaseFlag::Yanked => "yanked",
    };
    let row = conn
        .fetch_optional(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {column} FROM releases WHERE package = $1 AND version = $2"
            )))
            .bind(package.to_string())
            .bind(version.to_string()),
        )
        .await?
        .ok_or_else(|| RegistryError::NotFound {
            what: "release",
            name: format!("{package}@{version}"),
        })?;
    if (row.try_get::<i64, _>(0)? != 0) == want {
        return unchanged(inverse);
    }
    let seq = next_seq(conn).await?;
    conn.execute(
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE releases SET {column} = $3, change_seq = $4 WHERE package = $1 AND version = $2"
        )))
        .bind(package.to_string())
        .bind(version.to_string())
        .bind(i64::from(want))
        .bind(seq),
    )
    .await?;
    changed(inverse)
}

/// Applies a change of the SQL registry (the caller's transaction also holds its audit entry);
/// the inverse it returns puts back exactly what was there.
pub async fn apply(conn: &mut Conn, change: &Change) -> Result<Applied, RegistryError> {
    use ReleaseFlag::{Quarantined, Yanked};
    match change {
        Change::QuarantineRelease { package, version } => {
            release_flag(conn, Quarantined, package, version, true).await
        }
        Change::UnquarantineRelease { package, version } => {
            release_flag(conn, Quarantined, package, version, false).await
        }
        Change::YankRelease { package, version } => {
            release_flag(conn, Yanked, package, version, true).await
        }
        Change::UnyankRelease { package, version } => {
            release_flag(conn, Yanked, package, version, false).await
        }
        Change::QuarantinePackage { package } => package_quarantine(conn, package, true).await,
        Change::UnquarantinePackage { package } => package_quarantine(conn, package, false).await,
        Change::RestoreLatest { package } => latest(conn, package, None).await,
        Change::SetLatest {
            package,
            latest: to,
        } => latest(conn, package, Some(to.clone())).await,
        Change::Deprecate {
            package,
            reason,
            successor,
        } => deprecate(conn, package, reason, successor.as_deref()).await,
        Change::Undeprecate { package } => undeprecate(conn, package).await,
        Change::Reindex => reindex(conn).await,
        Change::SetQuality { package, score } => {
            quality(conn, package, |_| score.map(|s| s.clamp(0.0, 100.0))).await
        }
        Change::AdjustQuality { package, delta } => {
            quality(conn, package, |current| {
                Some((current.unwrap_or(0.0) + delta).clamp(0.0, 100.0))
            })
            .await
        }
    }
}

/// A whole package quarantined (its status kept to come back to) or back to that status.
async fn package_quarantine(
    conn: &mut Conn,
    package: &str,
    quarantine: bool,
) -> Result<Applied, RegistryError> {
    let (status, prior, _, _, _) = package_row(conn, package).await?;
    let package = package.to_string();
    let inverse = if quarantine {
        Change::UnquarantinePackage {
            package: package.clone(),
        }
    } else {
        Change::QuarantinePackage {
            package: package.clone(),
        }
    };
    if (status == "quarantined") == quarantine {
        return unchanged(inverse);
    }
    let seq = next_seq(conn).await?;
    let (new_status, new_prior) = if quarantine {
        ("quarantined".to_string(), Some(status))
    } else {
        (prior.unwrap_or_else(|| "active".into()), None)
    };
    conn.execute(
        sqlx::query(
            "UPDATE packages SET status = $2, prior_status = $3, change_seq = $4 WHERE name = $1",
        )
        .bind(package)
        .bind(new_status)
        .bind(new_prior)
        .bind(seq),
    )
    .await?;
    changed(inverse)
}

/// The newest release that is neither yanked nor quarantined.
async fn newest_available(conn: &mut Conn, package: &str) -> Result<Option<String>, RegistryError> {
    let rows = conn
        .fetch_all(
            sqlx::query(
                "SELECT version FROM releases WHERE package = $1 AND yanked = 0 AND quarantined = 0",
            )
            .bind(package.to_string()),
        )
        .await?;
    let mut best: Option<(semver::Version, String)> = None;
    for r in rows {
        let v: String = r.try_get(0)?;
        if let Ok(parsed) = semver::Version::parse(&v) {
            if best.as_ref().is_none_or(|(b, _)| parsed > *b) {
                best = Some((parsed, v));
            }
        }
    }
    Ok(best.map(|(_, v)| v))
}

/// `latest` set to `to`, or (None) back to the newest available release.
async fn latest(
    conn: &mut Conn,
    package: &str,
    to: Option<Option<String>>,
) -> Result<Applied, RegistryError> {
    let (_, _, current, _, _) = package_row(conn, package).await?;
    let target = match to {
        Some(t) => t,
        None => newest_available(conn, package).await?,
    };
    let inverse = Change::SetLatest {
        package: package.to_string(),
        latest: current.clone(),
    };
    if target == current {
        return unchanged(inverse);
    }
    let seq = next_seq(conn).await?;
    conn.execute(
        sqlx::query("UPDATE packages SET latest = $2, change_seq = $3 WHERE name = $1")
            .bind(package.to_string())
            .bind(target)
            .bind(seq),
    )
    .await?;
    changed(inverse)
}

async fn deprecate(
    conn: &mut Conn,
    package: &str,
    reason: &str,
    successor: Option<&str>,
) -> Result<Applied, RegistryError> {
    let (status, _, _, _, _) = package_row(conn, package).await?;
    let inverse = Change::Undeprecate {
        package: package.to_string(),
    };
    if status == "deprecated" {
        return unchanged(inverse);
    }
    let note = serde_json::json!({ "reason": reason, "successor": successor }).to_string();
    let seq = next_seq(conn).await?;
    conn.execute(
        sqlx::query(
            "UPDATE packages SET status = 'deprecated', prior_status = $2, deprecation = $3, \
             change_seq = $4 WHERE name = $1",
        )
        .bind(package.to_string())
        .bind(status)
        .bind(note)
        .bind(seq),
    )
    .await?;
    changed(inverse)
}

async fn undeprecate(conn: &mut Conn, package: &str) -> Result<Applied, RegistryError> {
    let (status, prior, _, _, note) = package_row(conn, package).await?;
    let note: serde_json::Value = note
        .and_then(|n| serde_json::from_str(&n).ok())
        .unwrap_or_default();
    let inverse = Change::Deprecate {
        package: package.to_string(),
        reason: note["reason"].as_str().unwrap_or("deprecated").to_string(),
        successor: note["successor"].as_str().map(str::to_string),
    };
    if status != "deprecated" {
        return unchanged(inverse);
    }
    let seq = next_seq(conn).await?;
    conn.execute(
        sqlx::query(
            "UPDATE packages SET status = $2, prior_status = NULL, deprecation = NULL, \
             change_seq = $3 WHERE name = $1",
        )
        .bind(package.to_string())
        .bind(prior.unwrap_or_else(|| "active".into()))
        .bind(seq),
    )
    .await?;
    changed(inverse)
}

/// Sets a package's quality score to what `target` makes of the current one. The inverse
/// restores the previous score exactly (an opposite delta would not, once clamping moved the
/// score by less than the delta).
async fn quality(
    conn: &mut Conn,
    package: &str,
    target: impl FnOnce(Option<f64>) -> Option<f64>,
) -> Result<Applied, RegistryError> {
    let (_, _, _, current, _) = package_row(conn, package).await?;
    let wanted = target(current);
    let inverse = Change::SetQuality {
        package: package.to_string(),
        score: current,
    };
    if wanted == current {
        return unchanged(inverse);
    }
    let seq = next_seq(conn).await?;
    conn.execute(
        sqlx::query("UPDATE packages SET quality = $2, change_seq = $3 WHERE name = $1")
            .bind(package.to_string())
            .bind(wanted)
            .bind(seq),
    )
    .await?;
    changed(inverse)
}

/// The words a package is found by: its name's parts, its category, and the words of its
/// description, lower case, at least two characters.
pub fn terms(name: &str, category: Option<&str>, description: &str) -> Vec<String> {
    let mut out: Vec<String> = std::iter::once(name.to_string())
        .chain(name.split(['-', '_', '.']).map(str::to_string))
        .chain(category.map(str::to_lowercase))
        .chain(
            description
                .split(|c: char| !c.is_alphanumeric())
                .map(str::to_lowercase),
        )
        .filter(|t| t.chars().count() >= 2 && t.len() <= 100)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Rebuilds the search index in the caller's transaction: every package that is not
/// quarantined, by the terms it is found by.
async fn reindex(conn: &mut Conn) -> Result<Applied, RegistryError> {
    let rows = conn
        .fetch_all(sqlx::query(
            "SELECT name, category, description FROM packages WHERE status <> 'quarantined' ORDER BY name",
        ))
        .await?;
    conn.execute(sqlx::query("DELETE FROM search_index"))
        .await?;
    let mut params = Vec::new();
    for r in &rows {
        let name: String = r.try_get(0)?;
        let category: Option<String> = r.try_get(1)?;
        let description: String = r.try_get(2)?;
        for t in terms(&name, category.as_deref(), &description) {
            params.push(vec![
                crate::knowledge::Param::Text(t),
                crate::knowledge::Param::Text(name.clone()),
            ]);
        }
    }
    crate::knowledge::insert_rows(
        conn,
        "search_index",
        &["term", "package"],
        &params,
        "ON CONFLICT (term, package) DO NOTHING",
    )
    .await?;
    changed(Change::Reindex)
}

/// Packages found by `term` in the search index (the last `reindex`), most downloaded first;
/// a package quarantined since is never shown.
pub async fn search(
    store: &crate::knowledge::Store,
    term: &str,
    limit: i64,
) -> Result<Vec<String>, RegistryError> {
    let rows = store.reads().query("SELECT s.package FROM search_index s JOIN packages p ON p.name = s.package \
         WHERE s.term = $1 AND p.status <> 'quarantined' ORDER BY p.downloads DESC, s.package LIMIT $2",)
    .bind(term.to_lowercase())
    .bind(limit).fetch_all()
    .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}
