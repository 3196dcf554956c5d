//! What the remediations in force change in the published catalog, read from the registry's state and the remediation that put each pack there.

use sqlx::Row;

use super::catalog::{Overlay, Withheld};
use crate::knowledge::Store;
use crate::registry::RegistryError;

/// The executed remediation that last put `package` (at `version`, or as a whole) in its state:
/// (id, reason, since).
async fn provenance(
    store: &Store,
    package: &str,
    version: Option<&str>,
    actions: &[&str],
) -> Result<Option<(String, String, i64)>, RegistryError> {
    let list = actions
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT id, params, reason, updated_at FROM remediations \
         WHERE status = 'executed' AND package = $1 AND (version = $2 OR version IS NULL) \
         AND action IN ({list}) AND inverse IS NOT NULL AND inverse <> 'null' \
         ORDER BY updated_at DESC, id DESC LIMIT 1"
    );
    let row = store
        .reads()
        .query_owned(sql)
        .bind(package.to_string())
        .bind(version.map(str::to_string))
        .fetch_optional()
        .await?;
    let Some(row) = row else { return Ok(None) };
    let params: String = row.try_get(1)?;
    let reason = serde_json::from_str::<serde_json::Value>(&params)
        .ok()
        .and_then(|p| p.get("reason").and_then(|r| r.as_str()).map(str::to_string))
        .unwrap_or(row.try_get(2)?);
    Ok(Some((row.try_get(0)?, reason, row.try_get(3)?)))
}

/// The overlay of the remediations in force on the releases and packages the registry holds.
pub async fn read(store: &Store) -> Result<Overlay, RegistryError> {
    let mut overlay = Overlay::default();
    // Each part reads an index (a partial one on the flag, or the status): the rows in force are
    // few, the registry may be large.
    let rows = store
        .reads()
        .query(
            "SELECT r.package, r.version, r.quarantined, r.yanked, p.status \
         FROM releases r JOIN packages p ON p.name = r.package WHERE r.quarantined = 1 \
         UNION SELECT r.package, r.version, r.quarantined, r.yanked, p.status \
         FROM releases r JOIN packages p ON p.name = r.package WHERE r.yanked = 1 \
         UNION SELECT r.package, r.version, r.quarantined, r.yanked, p.status \
         FROM packages p JOIN releases r ON r.package = p.name WHERE p.status = 'quarantined' \
         ORDER BY 1, 2",
        )
        .fetch_all()
        .await?;
    for row in rows {
        let package: String = row.try_get(0)?;
        let version: String = row.try_get(1)?;
        let quarantined =
            row.try_get::<i64, _>(2)? != 0 || row.try_get::<String, _>(4)? == "quarantined";
        let status = if quarantined { "quarantined" } else { "yanked" };
        let actions: &[&str] = if quarantined {
            &["quarantine"]
        } else {
            &["yank"]
        };
        let found = provenance(store, &package, Some(&version), actions).await?;
        let (remediation, reason, since) = match found {
            Some((id, reason, at)) => (Some(id), reason, Some(crate::clock::rfc3339(at))),
            None => (None, format!("{status} in the registry"), None),
        };
        overlay.withheld.insert(
            package,
            Withheld {
                version,
                status: status.into(),
                reason,
                remediation,
                since,
            },
        );
    }
    let rows = store
        .reads()
        .query(
            "SELECT name, status, deprecation, quality FROM packages WHERE status = 'deprecated' \
         UNION SELECT name, status, deprecation, quality FROM packages WHERE quality IS NOT NULL \
         ORDER BY 1",
        )
        .fetch_all()
        .await?;
    for row in rows {
        let name: String = row.try_get(0)?;
        let status: String = row.try_get(1)?;
        if status == "deprecated" {
            let note: Option<String> = row.try_get(2)?;
            let successor = note
                .and_then(|n| serde_json::from_str::<serde_json::Value>(&n).ok())
                .and_then(|n| n["successor"].as_str().map(str::to_string));
            overlay
                .deprecated
                .insert(name.clone(), successor.into_iter().collect());
        }
        if let Some(q) = row.try_get::<Option<f64>, _>(3)? {
            overlay.quality.insert(name, q);
        }
    }
    Ok(overlay)
}
