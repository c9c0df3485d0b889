//! Backup runs: the catalog bookkeeping around the write pipeline.
//!
//! A backup is `running` in the catalog from its first byte; it becomes
//! `complete` (or `partial`, when some paths could not be read) only after
//! its manifest is stored, in the same transaction that records its items.
//! Any error before that marks it `failed`; a process killed outright leaves
//! it `running`, never usable. Packs stored before a failure stay recorded, so
//! the next backup reuses them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{BackupEnd, Catalog, ItemRow};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::{ChunkLocation, Extent, Manifest, manifest_key};
use crate::repo::writer::{WriteStats, write};
use crate::repo::{ChunkId, Repository};
use crate::source::volume::{self, Ref, Source, Stamp, StampExtent};

/// What a finished backup reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub backup_id: Uuid,
    pub status: String,
    pub parent: Option<Uuid>,
    pub files: u64,
    pub files_read: u64,
    pub files_unchanged: u64,
    pub bytes_read: u64,
    pub bytes_total: u64,
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
    repo: Arc<Repository>,
    catalog: &Catalog,
    name: &str,
    source: Source,
    zstd_level: i32,
    retain_until: Option<DateTime<Utc>>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Summary> {
    let started = Instant::now();
    let repo_id = catalog
        .ensure_repository(&repo.config, &repo.store.location())
        .await?;
    let parent = catalog.latest_backup(repo_id, "volume", name).await?;
    let mut stamps = HashMap::new();
    if let Some(p) = &parent {
        for (item, attrs) in catalog.items(p.id).await? {
            if let Ok(stamp) = serde_json::from_value::<Stamp>(attrs) {
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

    let run = run_volume(
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
    )
    .await;
    match run {
        Ok(mut summary) => {
            summary.seconds = started.elapsed().as_secs_f64();
            tracing::info!(backup = %id, status = %summary.status, "backup finished");
            Ok(summary)
        }
        Err(e) => {
            let _ = catalog.fail_backup(id, &e.report()).await;
            Err(e)
        }
    }
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
        let on_pack = |pack: &crate::repo::pack::SealedPack, meta: &crate::store::ObjectMeta| {
            handle
                .block_on(catalog2.record_pack(repo_id, meta, &pack.sha256, &pack.index))
                .map(drop)
        };
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
    let mut order: Vec<ChunkId> = Vec::new();
    let mut index: HashMap<ChunkId, u32> = HashMap::new();
    for refs in &scan.refs {
        for (_, _, rs) in refs {
            for r in rs {
                let id = resolve(r);
                index.entry(id).or_insert_with(|| {
                    order.push(id);
                    (order.len() - 1) as u32
                });
            }
        }
    }
    let locations = catalog.chunk_locations(repo_id, &order).await?;
    let chunks: Vec<ChunkLocation> = order
        .iter()
        .map(|id| {
            locations.get(id).cloned().ok_or_else(|| {
                Error::new(
                    ErrorKind::Integrity,
                    format!("chunk {} is referenced but not stored", id.to_hex()),
                )
                .with_guidance("the catalog lost a chunk record; run `drctl verify`")
            })
        })
        .collect::<Result<_>>()?;

    let mut entries = std::mem::take(&mut scan.entries);
    let mut items = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter_mut().enumerate() {
        let refs = &scan.refs[i];
        e.extents = refs
            .iter()
            .map(|(offset, length, rs)| Extent {
                offset: *offset,
                length: *length,
                chunks: rs.iter().map(|r| index[&resolve(r)]).collect(),
            })
            .collect();
        let attrs = match e.kind {
            crate::repo::manifest::EntryKind::File => serde_json::to_value(Stamp {
                size: e.size,
                mtime_ns: e.mtime_ns,
                ctime_ns: scan.stamps[i].0,
                ino: scan.stamps[i].1,
                extents: refs
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
        items.push(ItemRow {
            from_parent: scan.unchanged.contains(&e.path),
            item: e.path.clone(),
            item_type: e.kind.as_str().to_string(),
            size: e.size as i64,
            attrs,
        });
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
    };
    // Everything the backup needs stays locked as long as the backup is kept:
    // the packs it shares with older backups, the config and the keys.
    let mut packs: Vec<String> = manifest.chunks.iter().map(|c| c.pack.clone()).collect();
    packs.sort();
    packs.dedup();
    if let Some(until) = retain_until {
        extend_locks(&repo, catalog, repo_id, &packs, until).await?;
    }
    let sealed = manifest.seal(&repo.secret, repo.recipients()?);
    let key = manifest_key(id);
    let sha = crate::store::sha256(&sealed);
    let meta = {
        let (repo, key) = (repo.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            repo.store.put(
                &key,
                &sealed,
                &crate::store::PutOptions {
                    sha256: sha,
                    retain_until,
                },
            )
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Failed, "manifest upload panicked").with_source(e))??
    };
    catalog.record_object(repo_id, &meta, &sha).await?;

    tracing::info!(backup = %id, key = %key, "manifest stored");
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
    let end = BackupEnd {
        status,
        manifest_key: &key,
        stats: &stats_json,
        error: error.as_deref(),
        parent,
        retain_until,
        packs: &packs,
    };
    catalog.finish_backup(id, &end, &items).await?;
    Ok(summary)
}

/// Makes the locks of `packs` (those the catalog knows as shorter), the
/// repository config and its keys last until `until`. Extend-only: a lock is
/// never shortened.
async fn extend_locks(
    repo: &Arc<Repository>,
    catalog: &Catalog,
    repo_id: Uuid,
    packs: &[String],
    until: DateTime<Utc>,
) -> Result<()> {
    let short = catalog.packs_locked_short(repo_id, packs, until).await?;
    if !short.is_empty() {
        tracing::info!(packs = short.len(), until = %until, "extending the locks of reused packs");
    }
    for (key, version) in short {
        let store = repo.store.clone();
        let k = key.clone();
        let locked = tokio::task::spawn_blocking(move || {
            store.extend_retention(&k, version.as_deref(), until)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Failed, "lock extension panicked").with_source(e))??;
        if let Some(end) = locked {
            catalog.pack_locked_until(repo_id, &key, end).await?;
        }
    }
    for key in [crate::repo::CONFIG_KEY, crate::repo::SECRET_KEY] {
        let store = repo.store.clone();
        let recorded = tokio::task::spawn_blocking(move || -> Result<_> {
            let Some(head) = store.head(key)? else {
                return Ok(None);
            };
            let end = store.extend_retention(key, head.version_id.as_deref(), until)?;
            let bytes = store.get(key)?;
            Ok(Some((head, end, crate::store::sha256(&bytes))))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Failed, "lock extension panicked").with_source(e))??;
        if let Some((mut head, end, sha)) = recorded {
            head.retain_until = end.or(head.retain_until);
            catalog.record_object(repo_id, &head, &sha).await?;
        }
    }
    Ok(())
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
        files: m
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Block))
            .count() as u64,
        files_read: scan.files_read,
        files_unchanged: scan.files_unchanged,
        bytes_read: s.bytes,
        bytes_total: m.entries.iter().map(|e| e.size).sum(),
        new_bytes: s.new_bytes,
        stored_bytes: s.stored_bytes,
        dedup_ratio: (s.bytes > 0).then(|| s.bytes as f64 / s.new_bytes.max(1) as f64),
        compression_ratio: (s.stored_bytes > 0).then(|| s.new_bytes as f64 / s.stored_bytes as f64),
        packs: s.packs,
        problems: scan.problems.clone(),
        skipped_special: scan.skipped_special,
        seconds: 0.0,
    }
}
