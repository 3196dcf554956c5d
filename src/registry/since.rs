//! Package records from the SQL registry: every one (a page of JSON at a time, for a full read) or those changed since a change sequence (by index).

use sqlx::Row;

use super::sql::{decode_package, PACKAGE_COLUMNS};
use super::{PackageRecord, RegistryError, SqlRegistry};
use crate::knowledge::{Backend, StoreError};

/// The packages changed after `$1`. Sorted by the caller: with `ORDER BY name` SQLite walked
/// the name index past every package instead of using the change sequence's index.
pub const PACKAGES_SINCE: &str = "packages WHERE change_seq > $1";

impl SqlRegistry {
    /// Package records with a change sequence after `cursor` (the `packages_change_seq` index).
    pub(super) async fn packages_changed_since(
        &self,
        cursor: i64,
    ) -> Result<Vec<PackageRecord>, RegistryError> {
        let sql = format!("SELECT {PACKAGE_COLUMNS} FROM {PACKAGES_SINCE}");
        let rows = self
            .store
            .reads()
            .query_owned(sql)
            .bind(cursor)
            .fetch_all()
            .await?;
        let mut out = rows
            .iter()
            .map(decode_package)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// A package row as the database encodes it in a page (a JSON array, in [`PACKAGE_COLUMNS`]'s
/// order).
#[derive(serde::Deserialize)]
struct PackageRow(
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<f64>,
    Option<String>,
    i64,
    i64,
    i64,
);

/// Packages are read this many at a time.
const PACKAGE_PAGE: i64 = 20_000;

impl SqlRegistry {
    /// Every package record, by name, a page at a time, each page one JSON array (decoding
    /// sqlx rows one by one cost about three times as much on a full read).
    pub(super) async fn all_packages(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        const COLUMNS: &str = "name, description, category, author, license, repository, tags, \
            keywords, downloads, stars, status, latest, quality, quality_detail, \
            production_ready, created_at, updated_at";
        let sql = match self.store.backend {
            Backend::Sqlite => format!(
                "SELECT json_group_array(json_array({COLUMNS}) ORDER BY name) \
                 FROM (SELECT * FROM packages WHERE name > $1 ORDER BY name LIMIT $2) AS page"
            ),
            Backend::Postgres => format!(
                "SELECT COALESCE(json_agg(json_build_array({COLUMNS}) ORDER BY name), \
                 '[]'::json)::text \
                 FROM (SELECT * FROM packages WHERE name > $1 ORDER BY name LIMIT $2) AS page"
            ),
        };
        let list = |s: &str| serde_json::from_str::<Vec<String>>(s).unwrap_or_default();
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let text: String = self
                .store
                .reads()
                .query_owned(sql.clone())
                .bind(after.clone())
                .bind(PACKAGE_PAGE)
                .fetch_one()
                .await?
                .try_get(0)?;
            let rows: Vec<PackageRow> = serde_json::from_str(&text).map_err(|e| {
                RegistryError::Store(StoreError::Corrupt(format!(
                    "packages after `{after}`: a page of packages: {e}"
                )))
            })?;
            let full = rows.len() as i64 == PACKAGE_PAGE;
            for r in rows {
                out.push(PackageRecord {
                    tags: list(&r.6),
                    keywords: list(&r.7),
                    name: r.0,
                    description: r.1,
                    category: r.2,
                    author: r.3,
                    license: r.4,
                    repository: r.5,
                    downloads: r.8,
                    stars: r.9,
                    status: r.10,
                    latest: r.11,
                    quality: r.12,
                    quality_detail: r.13,
                    production_ready: r.14 != 0,
                    created_at: r.15,
                    updated_at: r.16,
                });
            }
            match out.last() {
                Some(last) if full => after = last.name.clone(),
                _ => break,
            }
        }
        Ok(out)
    }
}
