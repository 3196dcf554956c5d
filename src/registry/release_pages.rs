//! Reading releases by change sequence a page at a time, each page encoded by the database as one JSON array.

use sqlx::Row;

use super::{Dependency, RegistryError, ReleaseRecord, SqlRegistry};
use crate::knowledge::{Backend, Fetch, StoreError};

/// What a page of releases selects, with each release's dependencies, as one JSON array.
macro_rules! page_select {
    (sqlite) => {
        "SELECT json_group_array(json_array(package, version, published_at, checksum, \
         artifact, signature, signer, yanked, quarantined, \
         json((SELECT json_group_array(json_array(d.dependency, d.requirement) \
         ORDER BY d.dependency) FROM dependencies d \
         WHERE d.package = page.package AND d.version = page.version))) \
         ORDER BY package, version) FROM "
    };
    (postgres) => {
        "SELECT COALESCE(json_agg(json_build_array(package, version, published_at, \
         checksum, artifact, signature, signer, yanked, quarantined, \
         (SELECT COALESCE(json_agg(json_build_array(d.dependency, d.requirement) \
         ORDER BY d.dependency), '[]'::json) FROM dependencies d \
         WHERE d.package = page.package AND d.version = page.version)) \
         ORDER BY package, version), '[]'::json)::text FROM "
    };
}

/// The page itself, the same on both backends: the releases changed in `($1, $2]` after
/// (`$3`, `$4`), at most `$5`; or every release after (`$1`, `$2`), at most `$3`.
macro_rules! page_from {
    (changed) => {
        "(SELECT * FROM releases WHERE change_seq > $1 AND change_seq <= $2 \
         AND (package > $3 OR (package = $3 AND version > $4)) \
         ORDER BY package, version LIMIT $5) AS page"
    };
    (full) => {
        "(SELECT * FROM releases WHERE (package, version) > ($1, $2) \
         ORDER BY package, version LIMIT $3) AS page"
    };
}

/// A page of releases changed in `($1, $2]` after (`$3`, `$4`) by package and version, at most
/// `$5`, each with its dependencies (found by the dependency table's primary key). A `full`
/// read takes every release after (`$1`, `$2`), at most `$3`, walking the releases' primary key
/// from the last page's end (a release written since the read began may come with it, and again
/// with the next read of what changed); a read of what changed searches the change sequence's
/// index (walking that for a full read visited every release again for every page).
pub fn release_page_sql(backend: Backend, full: bool) -> &'static str {
    match (backend, full) {
        (Backend::Sqlite, false) => concat!(page_select!(sqlite), page_from!(changed)),
        (Backend::Sqlite, true) => concat!(page_select!(sqlite), page_from!(full)),
        (Backend::Postgres, false) => concat!(page_select!(postgres), page_from!(changed)),
        (Backend::Postgres, true) => concat!(page_select!(postgres), page_from!(full)),
    }
}

impl SqlRegistry {
    /// The releases with `cursor < change_seq <= head`, ordered by package and version, with
    /// their dependencies (by name), read `page` at a time (so a full scan holds one page of
    /// JSON, not the whole table, and never reads the dependency table apart).
    pub async fn releases_between(
        &self,
        conn: &mut impl Fetch,
        cursor: i64,
        head: i64,
        page: i64,
    ) -> Result<Vec<ReleaseRecord>, RegistryError> {
        // A page of releases comes back as one JSON array, which costs about a third of
        // decoding its rows one by one through sqlx (a full scan reads every release).
        let full = cursor == 0;
        let sql = release_page_sql(self.store.backend, full);
        type Columns = (
            String,
            String,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Vec<(String, String)>,
        );
        let mut releases = Vec::new();
        let mut after = (String::new(), String::new());
        loop {
            let q = if full {
                crate::knowledge::read(sql)
                    .bind(after.0.clone())
                    .bind(after.1.clone())
                    .bind(page)
            } else {
                crate::knowledge::read(sql)
                    .bind(cursor)
                    .bind(head)
                    .bind(after.0.clone())
                    .bind(after.1.clone())
                    .bind(page)
            };
            let text: String = conn.fetch_row(q).await?.try_get(0)?;
            let rows: Vec<Columns> = serde_json::from_str(&text).map_err(|e| {
                RegistryError::Store(StoreError::Corrupt(format!(
                    "releases after {}@{}: a page of releases: {e}",
                    after.0, after.1
                )))
            })?;
            let full = rows.len() as i64 == page;
            for (
                package,
                version,
                published_at,
                checksum,
                artifact,
                signature,
                signer,
                y,
                q,
                deps,
            ) in rows
            {
                releases.push(ReleaseRecord {
                    package,
                    version,
                    published_at,
                    checksum,
                    artifact,
                    signature,
                    signer,
                    yanked: y != 0,
                    quarantined: q != 0,
                    dependencies: deps
                        .into_iter()
                        .map(|(name, requirement)| Dependency { name, requirement })
                        .collect(),
                });
            }
            match releases.last() {
                Some(last) if full => after = (last.package.clone(), last.version.clone()),
                _ => break,
            }
        }
        Ok(releases)
    }
}
