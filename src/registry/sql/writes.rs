//! The registry's writes in SQL: package and release upserts, bulk inserts, signatures, removals.

use sqlx::Executor;

use super::{
    decode_package, decode_release, load_dependencies, next_seq, SqlRegistry, PACKAGE_COLUMNS,
    RELEASE_COLUMNS,
};
use crate::knowledge::{insert_rows, Conn, Param};
use crate::registry::{PackageRecord, RegistryError, ReleaseRecord};

fn package_params(p: &PackageRecord, seq: i64) -> Vec<Param> {
    vec![
        Param::Text(p.name.clone()),
        Param::Text(p.description.clone()),
        Param::OptText(p.category.clone()),
        Param::OptText(p.author.clone()),
        Param::OptText(p.license.clone()),
        Param::OptText(p.repository.clone()),
        Param::Text(serde_json::to_string(&p.tags).unwrap_or_default()),
        Param::Text(serde_json::to_string(&p.keywords).unwrap_or_default()),
        Param::Int(p.downloads),
        Param::Int(p.stars),
        Param::Text(p.status.clone()),
        Param::OptText(p.latest.clone()),
        Param::OptFloat(p.quality),
        Param::OptText(p.quality_detail.clone()),
        Param::Int(i64::from(p.production_ready)),
        Param::Int(p.created_at),
        Param::Int(p.updated_at),
        Param::Int(seq),
    ]
}

fn release_params(r: &ReleaseRecord, seq: i64) -> Vec<Param> {
    vec![
        Param::Text(r.package.clone()),
        Param::Text(r.version.clone()),
        Param::Int(r.published_at),
        Param::OptText(r.checksum.clone()),
        Param::OptText(r.artifact.clone()),
        Param::OptText(r.signature.clone()),
        Param::OptText(r.signer.clone()),
        Param::Int(i64::from(r.yanked)),
        Param::Int(i64::from(r.quarantined)),
        Param::Int(seq),
    ]
}

const PACKAGE_INSERT: [&str; 18] = [
    "name",
    "description",
    "category",
    "author",
    "license",
    "repository",
    "tags",
    "keywords",
    "downloads",
    "stars",
    "status",
    "latest",
    "quality",
    "quality_detail",
    "production_ready",
    "created_at",
    "updated_at",
    "change_seq",
];
const RELEASE_INSERT: [&str; 10] = [
    "package",
    "version",
    "published_at",
    "checksum",
    "artifact",
    "signature",
    "signer",
    "yanked",
    "quarantined",
    "change_seq",
];

impl SqlRegistry {
    /// Inserts or updates a package; false when the stored one already says the same. The
    /// daemon-owned `status` and the creation time are never overwritten by an import.
    pub async fn upsert_package(
        conn: &mut Conn,
        p: &PackageRecord,
        seq: i64,
    ) -> Result<bool, RegistryError> {
        let sql = format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE name = $1");
        let existing = conn
            .fetch_optional(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(p.name.clone()))
            .await?;
        if let Some(row) = existing {
            let mut old = decode_package(&row)?;
            old.created_at = p.created_at;
            old.updated_at = p.updated_at;
            old.status = p.status.clone();
            if &old == p {
                return Ok(false);
            }
        }
        insert_rows(
            conn,
            "packages",
            &PACKAGE_INSERT,
            &[package_params(p, seq)],
            "ON CONFLICT (name) DO UPDATE SET description = excluded.description, \
             category = excluded.category, author = excluded.author, license = excluded.license, \
             repository = excluded.repository, tags = excluded.tags, keywords = excluded.keywords, \
             downloads = excluded.downloads, stars = excluded.stars, latest = excluded.latest, \
             quality = excluded.quality, quality_detail = excluded.quality_detail, \
             production_ready = excluded.production_ready, updated_at = excluded.updated_at, \
             change_seq = excluded.change_seq",
        )
        .await?;
        Ok(true)
    }

    /// Inserts or updates a release and its dependencies; false when nothing differs. An update
    /// keeps the daemon-owned `yanked` and `quarantined` flags and the publication time.
    pub async fn upsert_release(
        conn: &mut Conn,
        r: &ReleaseRecord,
        seq: i64,
    ) -> Result<bool, RegistryError> {
        let sql =
            format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE package = $1 AND version = $2");
        let existing = conn
            .fetch_optional(
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(r.package.clone())
                    .bind(r.version.clone()),
            )
            .await?;
        if let Some(row) = existing {
            let mut old = decode_release(&row)?;
            old.dependencies = load_dependencies(conn, &r.package, &r.version).await?;
            old.yanked = r.yanked;
            old.quarantined = r.quarantined;
            old.published_at = r.published_at;
            if &old == r {
                return Ok(false);
            }
        }
        conn.execute(
            sqlx::query("DELETE FROM dependencies WHERE package = $1 AND version = $2")
                .bind(r.package.clone())
                .bind(r.version.clone()),
        )
        .await?;
        insert_rows(
            conn,
            "releases",
            &RELEASE_INSERT,
            &[release_params(r, seq)],
            "ON CONFLICT (package, version) DO UPDATE SET checksum = excluded.checksum, \
             artifact = excluded.artifact, signature = excluded.signature, \
             signer = excluded.signer, change_seq = excluded.change_seq",
        )
        .await?;
        insert_rows(
            conn,
            "dependencies",
            &["package", "version", "dependency", "requirement"],
            &dependency_rows(r),
            "ON CONFLICT (package, version, dependency) DO NOTHING",
        )
        .await?;
        Ok(true)
    }

    /// Bulk load of a fresh registry (generated ones): no comparison, one sequence number.
    pub async fn insert_all(
        &self,
        packages: &[PackageRecord],
        releases: &[ReleaseRecord],
    ) -> Result<(), RegistryError> {
        let mut tx = self.store.begin().await?;
        let seq = next_seq(&mut tx).await?;
        let rows: Vec<_> = packages.iter().map(|p| package_params(p, seq)).collect();
        insert_rows(&mut tx, "packages", &PACKAGE_INSERT, &rows, "").await?;
        let rows: Vec<_> = releases.iter().map(|r| release_params(r, seq)).collect();
        insert_rows(&mut tx, "releases", &RELEASE_INSERT, &rows, "").await?;
        let deps: Vec<_> = releases.iter().flat_map(dependency_rows).collect();
        insert_rows(
            &mut tx,
            "dependencies",
            &["package", "version", "dependency", "requirement"],
            &deps,
            "ON CONFLICT (package, version, dependency) DO NOTHING",
        )
        .await?;
        tx.commit().await.map_err(RegistryError::from)?;
        Ok(())
    }

    /// Inserts packages and releases the store does not hold yet (a mirror's first sync), in the
    /// caller's transaction, at sequence `seq`.
    pub async fn insert_new(
        conn: &mut Conn,
        packages: &[PackageRecord],
        releases: &[ReleaseRecord],
        seq: i64,
    ) -> Result<(), RegistryError> {
        let rows: Vec<_> = packages.iter().map(|p| package_params(p, seq)).collect();
        insert_rows(conn, "packages", &PACKAGE_INSERT, &rows, "").await?;
        let rows: Vec<_> = releases.iter().map(|r| release_params(r, seq)).collect();
        insert_rows(conn, "releases", &RELEASE_INSERT, &rows, "").await?;
        let deps: Vec<_> = releases.iter().flat_map(dependency_rows).collect();
        insert_rows(
            conn,
            "dependencies",
            &["package", "version", "dependency", "requirement"],
            &deps,
            "ON CONFLICT (package, version, dependency) DO NOTHING",
        )
        .await?;
        Ok(())
    }

    /// Updates what a registry of record says of a package (description, repository, latest),
    /// leaving what mapek owns (status, quality) as it is.
    pub async fn update_described(
        conn: &mut Conn,
        p: &PackageRecord,
        seq: i64,
    ) -> Result<(), RegistryError> {
        conn.execute(
            sqlx::query(
                "UPDATE packages SET description = $2, repository = $3, latest = $4, \
                 updated_at = $5, change_seq = $6 WHERE name = $1",
            )
            .bind(p.name.clone())
            .bind(p.description.clone())
            .bind(p.repository.clone())
            .bind(p.latest.clone())
            .bind(p.updated_at)
            .bind(seq),
        )
        .await?;
        Ok(())
    }

    /// Removes a release that left a mirrored registry of record, with its dependencies.
    pub async fn remove_release(
        conn: &mut Conn,
        package: &str,
        version: &str,
    ) -> Result<(), RegistryError> {
        for table in ["dependencies", "releases"] {
            conn.execute(
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE package = $1 AND version = $2"
                )))
                .bind(package.to_string())
                .bind(version.to_string()),
            )
            .await?;
        }
        Ok(())
    }

    /// Overwrites a release's signature (used to plant problems in demo and test registries).
    pub async fn set_signature(
        &self,
        package: &str,
        version: &str,
        signature: &str,
        signer: &str,
    ) -> Result<(), RegistryError> {
        let mut tx = self.store.begin().await?;
        let seq = next_seq(&mut tx).await?;
        tx.execute(
            sqlx::query(
                "UPDATE releases SET signature = $3, signer = $4, change_seq = $5 \
                 WHERE package = $1 AND version = $2",
            )
            .bind(package.to_string())
            .bind(version.to_string())
            .bind(signature.to_string())
            .bind(signer.to_string())
            .bind(seq),
        )
        .await?;
        tx.commit().await.map_err(RegistryError::from)?;
        Ok(())
    }
}

fn dependency_rows(r: &ReleaseRecord) -> Vec<Vec<Param>> {
    r.dependencies
        .iter()
        .map(|d| {
            vec![
                Param::Text(r.package.clone()),
                Param::Text(r.version.clone()),
                Param::Text(d.name.clone()),
                Param::Text(d.requirement.clone()),
            ]
        })
        .collect()
}
