//! Volume backups: a directory tree or a block image, incremental against
//! the previous backup of the same volume.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::Manifest;
use crate::repo::tree::TreeReader;
use crate::repo::writer::WriteStats;
use crate::repo::{ChunkId, Repository};
use crate::source::volume::{self, Source};

/// What a finished backup reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub backup_id: Uuid,
    pub status: String,
    pub parent: Option<Uuid>,
    /// Where the data came from: the directory or block file.
    pub source: String,
    /// Entries in the listing: directories, files, links.
    pub entries: u64,
    pub directories: u64,
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
    /// Directories whose listing changed (a tree object stored).
    pub trees_new: u64,
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
    // A parent made before trees existed has none: every file is read once.
    let parent_top = parent
        .as_ref()
        .and_then(|p| p.tree.as_deref())
        .and_then(ChunkId::from_hex);
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
            parent.as_ref().map(|p| p.id),
            parent_top,
            zstd_level,
            retain_until,
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

/// References sent to the pack locator in batches of this many.
const REF_BATCH: usize = 10_000;

#[allow(clippy::too_many_arguments)]
async fn run_volume(
    repo: Arc<Repository>,
    catalog: &Catalog,
    id: Uuid,
    name: &str,
    source: &Source,
    parent: Option<Uuid>,
    parent_top: Option<ChunkId>,
    zstd_level: i32,
    retain_until: Option<DateTime<Utc>>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Summary> {
    let handle = tokio::runtime::Handle::current();
    let (repo2, catalog2, source2) = (repo.clone(), catalog.clone(), source.clone());
    let repo_id = repo.config.id;
    // The packs the backup uses, found while it runs: every chunk and tree
    // it references is looked up in the catalog, a batch at a time. Those
    // not recorded yet (in packs being written) are asked again later.
    // Unbounded: the walk sends a batch per 10,000 references and the
    // locator answers each with one query, so it keeps up; a bound would
    // let a slow catalog stall the pipeline's uploader, which also sends.
    let (refs_tx, refs_rx) = tokio::sync::mpsc::unbounded_channel::<Located>();
    let stored_tx = refs_tx.clone();
    let locator = tokio::spawn(locate_packs(catalog.clone(), repo_id, refs_rx));
    let (walked, _, stats) = tokio::task::spawn_blocking(move || {
        let view = super::CatalogView {
            handle: &handle,
            catalog: &catalog2,
            repo_id,
        };
        // Packs this backup stored: the locator learns which ids they hold.
        let recorded = |p: &crate::repo::pack::StoredPack| {
            let ids = p.index.iter().map(|e| e.id).collect();
            let _ = stored_tx.send(Located::Stored(p.key.clone(), ids));
        };
        let reader = TreeReader::new(&*repo2.store, &repo2.secret, &view, repo2.max_pack_bytes());
        super::write_recorded(&view, &repo2, zstd_level, retain_until, &recorded, |sink| {
            let mut batch: Vec<ChunkId> = Vec::new();
            let mut refs = |ids: Vec<ChunkId>| {
                batch.extend(ids);
                if batch.len() >= REF_BATCH {
                    // A closed locator reports its own error.
                    let _ = refs_tx.send(Located::Refs(std::mem::take(&mut batch)));
                }
            };
            let parent = parent_top.map(|top| volume::Parent {
                reader: &reader,
                top,
            });
            let walked = volume::read(&source2, parent, &repo2.secret, sink, &mut refs, &*progress);
            let _ = refs_tx.send(Located::Refs(batch));
            drop(refs_tx);
            walked
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Failed, "the backup worker panicked").with_source(e))??;
    crate::sys::release_free_memory();
    let top = walked
        .top
        .ok_or_else(|| Error::new(ErrorKind::Failed, "the walk ended without a listing"))?;
    let packs = locator
        .await
        .map_err(|e| Error::new(ErrorKind::Failed, "the pack locator panicked").with_source(e))??;
    let packs: Vec<String> = packs.into_iter().collect();

    tracing::info!(
        backup = %id,
        chunks = stats.chunks,
        new_chunks = stats.new_chunks,
        trees = stats.trees,
        packs = stats.packs,
        "data stored"
    );
    let status = if walked.problems.is_empty() {
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
        problems: walked.problems.clone(),
        entries: Vec::new(),
        chunks: Vec::new(),
        etcd: None,
        objects: Vec::new(),
        object_table: None,
        tree: Some(top),
        packs,
        totals: Some(crate::repo::manifest::Totals {
            entries: walked.entries,
            files: walked.files,
            bytes: walked.bytes,
        }),
        members: Vec::new(),
    };
    let summary = summarize(id, status, parent, &manifest, &walked, &stats);
    let error = (!walked.problems.is_empty()).then(|| {
        format!(
            "{} path(s) could not be backed up, first: {}: {}",
            walked.problems.len(),
            walked.problems[0].path,
            walked.problems[0].error
        )
    });
    let stats_json = serde_json::to_value(&summary).expect("summary serialises");
    super::seal_and_finish(
        &repo,
        catalog,
        manifest,
        &[],
        // Its listing is in trees: no item rows.
        None,
        &stats_json,
        error.as_deref(),
        retain_until,
    )
    .await?;
    Ok(summary)
}

/// What the locator is told: a batch of references, or a pack this backup
/// stored (with the chunks in it).
enum Located {
    Refs(Vec<ChunkId>),
    Stored(String, Vec<ChunkId>),
}

/// The packs holding the chunks and trees sent as [`Located::Refs`], found
/// while the backup runs: the catalog is asked once per batch. An id it
/// does not know is in a pack of this backup not stored yet; it waits until
/// that pack is ([`Located::Stored`]), so what waits is at most the chunks
/// of the packs in flight. One still unknown at the end (asked once more)
/// is an integrity error, never a backup whose packs gc could take.
async fn locate_packs(
    catalog: Catalog,
    repo_id: Uuid,
    mut events: tokio::sync::mpsc::UnboundedReceiver<Located>,
) -> Result<BTreeSet<String>> {
    let mut packs = BTreeSet::new();
    let mut missing: std::collections::HashSet<ChunkId> = Default::default();
    while let Some(event) = events.recv().await {
        match event {
            // Every pack the backup stores holds chunks it uses.
            Located::Stored(key, ids) => {
                for id in &ids {
                    missing.remove(id);
                }
                packs.insert(key);
            }
            Located::Refs(mut ids) => {
                ids.sort_unstable();
                ids.dedup();
                let found = catalog.packs_of(repo_id, &ids).await?;
                let known: std::collections::HashSet<ChunkId> =
                    found.iter().map(|(id, _)| *id).collect();
                packs.extend(found.into_iter().map(|(_, p)| p));
                missing.extend(ids.into_iter().filter(|i| !known.contains(i)));
            }
        }
    }
    if !missing.is_empty() {
        let ids: Vec<ChunkId> = missing.iter().copied().collect();
        for (id, pack) in catalog.packs_of(repo_id, &ids).await? {
            missing.remove(&id);
            packs.insert(pack);
        }
    }
    if let Some(first) = missing.iter().next() {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "{} chunk(s) the backup references are not stored, first {}",
                missing.len(),
                first.to_hex()
            ),
        )
        .with_guidance("the catalog lost chunk records; run `drctl verify`"));
    }
    Ok(packs)
}

fn summarize(
    id: Uuid,
    status: &str,
    parent: Option<Uuid>,
    m: &Manifest,
    scan: &volume::Walked,
    s: &WriteStats,
) -> Summary {
    Summary {
        backup_id: id,
        status: status.into(),
        parent,
        source: m.source.clone(),
        entries: scan.entries,
        directories: scan.directories,
        files: scan.files,
        files_read: scan.files_read,
        files_unchanged: scan.files_unchanged,
        bytes_read: s.bytes,
        bytes: scan.bytes,
        trees_new: scan.trees_new,
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
