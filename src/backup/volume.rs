//! Volume backups: a directory tree or a block image, incremental against
//! the previous backup of the same volume.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, ItemRow};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::{EntryKind, Extent, Manifest};
use crate::repo::writer::{WriteStats, write};
use crate::repo::{ChunkId, Repository};
use crate::source::volume::{self, Ref, Source, Stamp, StampExtent};

/// What a finished backup reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub backup_id: Uuid,
    pub status: String,
    pub parent: Option<Uuid>,
    /// Where the data came from: the directory or block file.
    pub source: String,
    pub files: u64,
    pub files_read: u64,
    pub files_unchanged: u64,
    pub bytes_read: u64,
    /// Size of the files (the source), whether read or unchanged.
    pub bytes: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    /// Bytes read per new (not yet stored) byte; `None` when nothing was read.
    pub dedup_ratio: Option<f64>,
    /// New bytes per byte stored (zstd, less the encryption overhead);
    /// `None` when nothing new was stored.
    pub compression_ratio: Option<f64>,
    pub packs: u64,
    pub problems: Vec<crate::repo::manifest::Problem>,
    pub skipped_special: u64,
    pub seconds: f64,
}

/// Backs up a volume. `progress` is told of bytes read as they are.
pub async fn backup_volume(
    writer: super::Writer,
    catalog: &Catalog,
    name: &str,
    source: Source,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Summary> {
    let super::Writer {
        repo,
        zstd_level,
        retain_until,
    } = writer;
    let started = Instant::now();
    let repo_id = catalog
        .ensure_repository(&repo.config, &repo.store.location())
        .await?;
    let parent = catalog.latest_backup(repo_id, "volume", name).await?;
    let mut stamps = HashMap::new();
    if let Some(p) = &parent {
        for (item, attrs) in catalog
            .items_of_type(p.id, EntryKind::File.as_str())
            .await?
        {
            if let Ok(stamp) = serde_json::from_str::<Stamp>(&attrs) {
                stamps.insert(item, stamp);
            }
        }
    }
    let known = catalog.known_chunks(repo_id).await?;
    let id = Uuid::now_v7();
    catalog
        .start_backup(id, repo_id, "volume", name, parent.as_ref().map(|p| p.id))
        .await?;
    tracing::info!(backup = %id, %name, source = %source.path().display(), "backup started");

    let run = super::or_fail(
        catalog,
        id,
        run_volume(
            repo.clone(),
            catalog,
            id,
            name,
            &source,
            stamps,
            known,
            zstd_level,
            retain_until,
            parent.as_ref().map(|p| p.id),
            progress,
        ),
    )
    .await;
    let mut summary = run?;
    summary.seconds = started.elapsed().as_secs_f64();
    super::final_stats(
        catalog,
        id,
        serde_json::json!({ "seconds": summary.seconds }),
    )
    .await;
    tracing::info!(backup = %id, status = %summary.status, "backup finished");
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn run_volume(
    repo: Arc<Repository>,
    catalog: &Catalog,
    id: Uuid,
    name: &str,
    source: &Source,
    stamps: HashMap<String, Stamp>,
    known: HashSet<ChunkId>,
    zstd_level: i32,
    retain_until: Option<DateTime<Utc>>,
    parent: Option<Uuid>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Summary> {
    let handle = tokio::runtime::Handle::current();
    let (repo2, catalog2, source2) = (repo.clone(), catalog.clone(), source.clone());
    let repo_id = repo.config.id;
    let (mut scan, written, stats) = tokio::task::spawn_blocking(move || {
        let on_pack = super::record_packs(&handle, &catalog2, repo_id);
        let seed = repo2.secret.chunker_seed();
        write(&repo2, known, zstd_level, retain_until, &on_pack, |sink| {
            volume::read(&source2, &stamps, seed, sink, &*progress)
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Failed, "the backup worker panicked").with_source(e))??;
    crate::sys::release_free_memory();

    tracing::info!(
        backup = %id,
        chunks = stats.chunks,
        new_chunks = stats.new_chunks,
        packs = stats.packs,
        "data stored"
    );
    // Name every chunk, then look up where each one is.
    let by_tag: HashMap<u64, ChunkId> = written.iter().map(|w| (w.tag, w.id)).collect();
    let resolve = |r: &Ref| match r {
        Ref::Known(id) => *id,
        Ref::Tag(t) => by_tag[t],
    };
    let mut list = super::ChunkList::default();
    for refs in &scan.refs {
        for (_, _, rs) in refs {
            for r in rs {
                list.add(resolve(r));
            }
        }
    }
    // The catalog's rows first: they go to PostgreSQL while the chunks are
    // located and the manifest is sealed.
    let items = scan
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let attrs = match e.kind {
                EntryKind::File => serde_json::to_value(Stamp {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    ctime_ns: scan.stamps[i].0,
                    ino: scan.stamps[i].1,
                    extents: scan.refs[i]
                        .iter()
                        .map(|(offset, length, rs)| StampExtent {
                            offset: *offset,
                            length: *length,
                            chunks: rs.iter().map(&resolve).collect(),
                        })
                        .collect(),
                })
                .expect("stamps serialise"),
                _ => serde_json::json!({}),
            };
            ItemRow {
                from_parent: scan.unchanged.contains(&e.path),
                item: e.path.clone(),
                item_type: e.kind.as_str().to_string(),
                size: e.size as i64,
                attrs,
            }
        })
        .collect();
    let items = super::write_items(catalog, id, parent, items);

    let chunks = super::locate(catalog, repo_id, &list.order).await?;
    let mut entries = std::mem::take(&mut scan.entries);
    for (e, refs) in entries.iter_mut().zip(&scan.refs) {
        e.extents = refs
            .iter()
            .map(|(offset, length, rs)| Extent {
                offset: *offset,
                length: *length,
                chunks: rs.iter().map(|r| list.index_of(&resolve(r))).collect(),
            })
            .collect();
    }

    let status = if scan.problems.is_empty() {
        "complete"
    } else {
        "partial"
    };
    let manifest = Manifest {
        format: crate::repo::manifest::MANIFEST_FORMAT,
        backup_id: id,
        repository_id: repo_id,
        kind: "volume".into(),
        name: name.to_string(),
        created_at: chrono::Utc::now(),
        parent,
        source: source.path().display().to_string(),
        status: status.into(),
        problems: scan.problems.clone(),
        entries,
        chunks,
        etcd: None,
        objects: Vec::new(),
        object_table: None,
    };
    let summary = summarize(id, status, parent, &manifest, &scan, &stats);
    let error = (!scan.problems.is_empty()).then(|| {
        format!(
            "{} path(s) could not be backed up, first: {}: {}",
            scan.problems.len(),
            scan.problems[0].path,
            scan.problems[0].error
        )
    });
    let stats_json = serde_json::to_value(&summary).expect("summary serialises");
    super::seal_and_finish(
        &repo,
        catalog,
        manifest,
        &[],
        items,
        &stats_json,
        error.as_deref(),
        retain_until,
    )
    .await?;
    Ok(summary)
}

fn summarize(
    id: Uuid,
    status: &str,
    parent: Option<Uuid>,
    m: &Manifest,
    scan: &volume::Scan,
    s: &WriteStats,
) -> Summary {
    use crate::repo::manifest::EntryKind;
    Summary {
        backup_id: id,
        status: status.into(),
        parent,
        source: m.source.clone(),
        files: m
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Block))
            .count() as u64,
        files_read: scan.files_read,
        files_unchanged: scan.files_unchanged,
        bytes_read: s.bytes,
        bytes: m.entries.iter().map(|e| e.size).sum(),
        new_bytes: s.new_bytes,
        stored_bytes: s.stored_bytes,
        dedup_ratio: s.dedup_ratio(),
        compression_ratio: s.compression_ratio(),
        packs: s.packs,
        problems: scan.problems.clone(),
        skipped_special: scan.skipped_special,
        seconds: 0.0,
    }
}
