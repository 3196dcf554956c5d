//! The store's mirror of the catalog's packs and releases (what the loop reads, where remediations land), written only where the catalog and the archives moved.

use std::collections::{BTreeSet, HashMap};

use super::catalog::{Catalog, Record};
use super::sense::ArchiveSeen;
use super::{Marketplace, State};
use crate::registry::sql::next_seq;
use crate::registry::{PackageRecord, Registry, RegistryError, ReleaseRecord, SqlRegistry};

/// What the store holds of the marketplace, as last read or written.
#[derive(Debug, Default)]
pub struct Mirror {
    packages: HashMap<String, PackageRecord>,
    releases: HashMap<String, Vec<ReleaseRecord>>,
}

/// The fields a catalog record gives a package; what mapek owns (status, quality, latest once
/// set) stays as the mirror has it.
fn package_of(
    r: &Record,
    repository: &str,
    old: Option<&PackageRecord>,
    now: i64,
) -> PackageRecord {
    match old {
        Some(p) => PackageRecord {
            updated_at: if p.description == r.description()
                && p.latest.as_deref() == Some(&r.version)
            {
                p.updated_at
            } else {
                now
            },
            description: r.description().to_string(),
            repository: Some(repository.to_string()),
            latest: Some(r.version.clone()),
            ..p.clone()
        },
        None => PackageRecord {
            name: r.name.clone(),
            description: r.description().to_string(),
            category: None,
            author: None,
            license: None,
            repository: Some(repository.to_string()),
            tags: Vec::new(),
            keywords: Vec::new(),
            downloads: 0,
            stars: 0,
            status: "active".into(),
            latest: Some(r.version.clone()),
            quality: None,
            quality_detail: None,
            production_ready: false,
            created_at: now,
            updated_at: now,
        },
    }
}

/// The fields a catalog record and its archive give a release; its flags stay as they are.
fn release_of(
    r: &Record,
    location: String,
    archive: Option<&ArchiveSeen>,
    old: Option<&ReleaseRecord>,
    now: i64,
) -> ReleaseRecord {
    let text = |k: &str| r.fields.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (signature, signer) = match archive {
        Some(ArchiveSeen::Read {
            signature: Some(s), ..
        }) => (Some(s.signature.clone()), Some(s.signer.clone())),
        _ => (text("signature"), text("signer")),
    };
    ReleaseRecord {
        package: r.name.clone(),
        version: r.version.clone(),
        published_at: old.map(|o| o.published_at).unwrap_or(now),
        checksum: Some(r.sha256.clone()),
        artifact: Some(location),
        signature,
        signer,
        yanked: old.is_some_and(|o| o.yanked),
        quarantined: old.is_some_and(|o| o.quarantined),
        dependencies: Vec::new(),
    }
}

impl Marketplace {
    /// Brings the mirror to the catalog for `names` (every pack when `everything`): new packs
    /// and releases inserted, changed ones updated, releases the catalog no longer lists removed
    /// (returned). One transaction, or none.
    pub(super) async fn sync_mirror(
        &self,
        st: &mut State,
        catalog: &Catalog,
        names: &BTreeSet<String>,
        everything: bool,
        now: i64,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        if st.mirror.is_none() {
            let mut m = Mirror::default();
            for p in self.sql.packages().await? {
                m.packages.insert(p.name.clone(), p);
            }
            for r in self.sql.releases_since(0).await?.0 {
                m.releases.entry(r.package.clone()).or_default().push(r);
            }
            st.mirror = Some(m);
        }
        let Some(mirror) = st.mirror.as_mut() else {
            return Ok(Vec::new());
        };
        let mut scope: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        if everything {
            scope.extend(catalog.packs.iter().map(|r| r.name.as_str()));
            scope.extend(mirror.releases.keys().map(String::as_str));
        }
        let (mut new_p, mut new_r, mut upd_p, mut upd_r) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut removed = Vec::new();
        for name in scope {
            let old_releases = mirror.releases.get(name).cloned().unwrap_or_default();
            let Some(r) = catalog.get(name) else {
                removed.extend(
                    old_releases
                        .iter()
                        .map(|o| (o.package.clone(), o.version.clone())),
                );
                continue;
            };
            let old_p = mirror.packages.get(name);
            let p = package_of(r, &self.repository, old_p, now);
            match old_p {
                None => new_p.push(p),
                Some(o) if *o != p => upd_p.push(p),
                Some(_) => {}
            }
            let old_r = old_releases.iter().find(|o| o.version == r.version);
            let rel = release_of(r, self.location(r), st.archives.get(name), old_r, now);
            match old_r {
                None => new_r.push(rel),
                Some(o) if *o != rel => upd_r.push(rel),
                Some(_) => {}
            }
            removed.extend(
                old_releases
                    .iter()
                    .filter(|o| o.version != r.version)
                    .map(|o| (o.package.clone(), o.version.clone())),
            );
        }
        if new_p.is_empty()
            && new_r.is_empty()
            && upd_p.is_empty()
            && upd_r.is_empty()
            && removed.is_empty()
        {
            return Ok(Vec::new());
        }
        let mut tx = self.sql.store.begin().await?;
        let seq = next_seq(&mut tx).await?;
        SqlRegistry::insert_new(&mut tx, &new_p, &new_r, seq).await?;
        for p in &upd_p {
            SqlRegistry::update_described(&mut tx, p, seq).await?;
        }
        for r in &upd_r {
            SqlRegistry::upsert_release(&mut tx, r, seq).await?;
        }
        for (p, v) in &removed {
            SqlRegistry::remove_release(&mut tx, p, v).await?;
        }
        tx.commit().await.map_err(RegistryError::from)?;
        tracing::debug!(
            inserted = new_r.len(),
            updated = upd_r.len(),
            removed = removed.len(),
            "marketplace mirror brought up to date"
        );
        for p in new_p.into_iter().chain(upd_p) {
            mirror.packages.insert(p.name.clone(), p);
        }
        for (p, v) in &removed {
            if let Some(list) = mirror.releases.get_mut(p) {
                list.retain(|r| &r.version != v);
            }
        }
        for r in new_r.into_iter().chain(upd_r) {
            let list = mirror.releases.entry(r.package.clone()).or_default();
            list.retain(|o| o.version != r.version);
            list.push(r);
        }
        Ok(removed)
    }
}
