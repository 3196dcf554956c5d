//! The projection of the input catalog and the overlay of the remediations in force: rendered a record at a time (each kept until its part of the overlay or the catalog changes), signed, written only when it moved.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::catalog::{self, Catalog, Overlay};
use super::publish::{self, Published};
use super::PublishReport;
use crate::keys::KeyPair;

/// A record's part of the overlay: whether it is deprecated (and for what), and its quality.
type Part = (Option<Vec<String>>, Option<u64>);

/// What was last published, and what it was made of.
#[derive(Debug, Default)]
pub struct Projection {
    /// The input catalog and overlay of the last publication.
    last: Option<([u8; 32], Overlay)>,
    /// The entity tag of what the file on disk holds, once this process wrote or checked it.
    on_disk: Option<String>,
    /// The input catalog the cached records were rendered from.
    rendered_from: Option<[u8; 32]>,
    /// Each record as rendered, with the part of the overlay it was rendered with.
    records: HashMap<String, (Part, Arc<str>)>,
}

impl Projection {
    /// The projection, signed, if it moved since the last publication; None when nothing moved.
    pub async fn prepare(
        &mut self,
        c: &Catalog,
        sha: [u8; 32],
        overlay: Overlay,
        key: &Arc<KeyPair>,
    ) -> std::io::Result<Option<(Arc<Published>, PublishReport)>> {
        if self
            .last
            .as_ref()
            .is_some_and(|(s, o)| *s == sha && *o == overlay)
        {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let bytes = self.render(c, sha, &overlay);
        let render_s = started.elapsed().as_secs_f64();
        let key = key.clone();
        let published = tokio::task::spawn_blocking(move || Published::new(bytes, &key))
            .await
            .map_err(std::io::Error::other)?;
        tracing::debug!(
            render_s,
            sign_s = started.elapsed().as_secs_f64() - render_s,
            "catalog projection timings"
        );
        let report = PublishReport {
            bytes: published.bytes.len(),
            packs: c.packs.len() - overlay.withheld.len().min(c.packs.len()),
            withheld: overlay.withheld.len(),
            written: false,
        };
        self.last = Some((sha, overlay));
        Ok(Some((Arc::new(published), report)))
    }

    /// Brings the file at `path` to `published`; true when it was written. The first time, the
    /// file on disk is read to compare (so a start converges whatever a crash left); after that
    /// this process knows what it holds.
    pub async fn write(
        &mut self,
        published: &Arc<Published>,
        path: &Path,
    ) -> std::io::Result<bool> {
        if self.on_disk.as_deref() == Some(published.etag.as_str()) {
            return Ok(false);
        }
        let (p, path, known) = (
            published.clone(),
            path.to_path_buf(),
            self.on_disk.is_some(),
        );
        // Whatever happens below, what is on disk is no longer known for sure.
        self.on_disk = None;
        let written = tokio::task::spawn_blocking(move || {
            if known {
                publish::write_both(&path, &p).map(|()| true)
            } else {
                publish::write(&path, &p)
            }
        })
        .await
        .map_err(std::io::Error::other)??;
        self.on_disk = Some(published.etag.clone());
        Ok(written)
    }

    /// The projection's bytes; a record is rendered again only when the input catalog or its part
    /// of the overlay changed.
    fn render(&mut self, c: &Catalog, sha: [u8; 32], overlay: &Overlay) -> Vec<u8> {
        if self.rendered_from != Some(sha) {
            self.records.clear();
            self.rendered_from = Some(sha);
        }
        let mut out = Vec::with_capacity(c.packs.len());
        for r in &c.packs {
            if overlay.withheld.contains_key(&r.name) {
                continue;
            }
            let part: Part = (
                overlay.deprecated.get(&r.name).cloned(),
                overlay.quality.get(&r.name).map(|q| q.to_bits()),
            );
            let text = match self.records.get(&r.name) {
                Some((p, text)) if *p == part => text.clone(),
                _ => {
                    let fields = catalog::project_record(r, overlay).unwrap_or_default();
                    let text: Arc<str> =
                        catalog::render_value(&serde_json::Value::Object(fields), 2).into();
                    self.records.insert(r.name.clone(), (part, text.clone()));
                    text
                }
            };
            out.push(text);
        }
        catalog::assemble(c, overlay, &out)
    }
}
