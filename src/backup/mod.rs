//! Backup runs: the catalog bookkeeping around the write pipeline.
//!
//! A backup is `running` in the catalog from its first byte; it becomes
//! `complete` (or `partial`, when some paths could not be read) only after
//! its manifest is stored, in the same transaction that records its items.
//! Any error before that marks it `failed`; a process killed outright leaves
//! it `running`, never usable. Packs stored before a failure stay recorded, so
//! the next backup reuses them.
//!
//! Each source has its module ([`volume`], [`etcd`], [`resources`]) that reads it through
//! the pipeline and builds the manifest; [`write_items`] and
//! [`seal_and_finish`] are the shared end: item rows, locks, manifest,
//! catalog.

pub mod etcd;
pub mod namespaces;
pub mod resources;
pub mod volume;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::catalog::{BackupEnd, Catalog, ItemRow, PendingItems};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::{ChunkLocation, Manifest, manifest_key};
use crate::repo::{ChunkId, Repository};

pub use etcd::{EtcdSummary, backup_etcd};
pub use namespaces::{SetOptions, SetSummary, backup_namespaces};
pub use resources::{ResourcesSummary, backup_resources};
pub use volume::{Summary, backup_volume};

/// What every backup writes with: the repository (recipients and secret,
/// never the identity), the zstd level, and until when the backup's objects
/// are locked.
pub struct Writer {
    pub repo: Arc<Repository>,
    pub zstd_level: i32,
    pub retain_until: Option<DateTime<Utc>>,
}

impl Writer {
    /// A writer at the configuration's zstd level (drctl's default when
    /// unset).
    pub fn new(
        repo: Arc<Repository>,
        config: &crate::config::Config,
        retain_until: Option<DateTime<Utc>>,
    ) -> Writer {
        Writer {
            repo,
            zstd_level: config
                .repository
                .zstd_level
                .unwrap_or(crate::repo::DEFAULT_ZSTD_LEVEL),
            retain_until,
        }
    }
}

/// Runs `body` for backup `id`, marking the backup failed when it fails.
async fn or_fail<T>(
    catalog: &Catalog,
    id: Uuid,
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match body.await {
        Ok(v) => Ok(v),
        Err(e) => {
            let e = e.context(format!("backup {id} failed"));
            if let Err(not_recorded) = catalog.fail_backup(id, &e.report()).await {
                tracing::warn!(backup = %id, error = %not_recorded.report(),
                    "the failure could not be recorded: the backup shows as running until its heartbeat is stale, then as interrupted");
            }
            Err(e)
        }
    }
}

/// Records in the catalog the stats a run knows only at its very end.
/// Best effort: the backup is complete and usable whether or not this
/// lands, so a failure is logged, not returned.
async fn final_stats(catalog: &Catalog, id: Uuid, more: serde_json::Value) {
    if let Err(e) = catalog.merge_stats(id, &more).await {
        tracing::warn!(backup = %id, error = %e.report(), "the backup's duration was not recorded");
    }
}

/// Records a backup of `kind` named `name` as running; returns its id.
async fn start(repo: &Repository, catalog: &Catalog, kind: &str, name: &str) -> Result<Uuid> {
    let repo_id = catalog
        .ensure_repository(&repo.config, &repo.store.location())
        .await?;
    let id = Uuid::now_v7();
    catalog.start_backup(id, repo_id, kind, name, None).await?;
    tracing::info!(backup = %id, %kind, %name, "backup started");
    Ok(id)
}

/// The catalog as the write pipeline's threads use them (they are not the
/// runtime's, so each call blocks on it): what the repository stores, for
/// dedup, one query per batch and no set of every chunk id in memory; where
/// chunks and trees are; and the record of each pack stored.
pub(crate) struct CatalogView<'a> {
    pub handle: &'a tokio::runtime::Handle,
    pub catalog: &'a Catalog,
    pub repo_id: Uuid,
}

impl crate::repo::writer::Stored for CatalogView<'_> {
    fn stored(&self, ids: &[ChunkId]) -> Result<std::collections::HashSet<ChunkId>> {
        self.handle
            .block_on(self.catalog.stored_chunks(self.repo_id, ids))
    }
}

impl crate::repo::tree::Locate for CatalogView<'_> {
    fn locate(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, ChunkLocation>> {
        self.handle
            .block_on(self.catalog.chunk_locations(self.repo_id, ids))
    }
}

/// Runs `f` with the fastest way to locate a backup's chunks and trees: the
/// catalog when there is one, the indexes of `packs` (the backup's) for
/// whatever it does not know. Locations are hints: what is read there is
/// checked against its id either way. Blocking.
pub(crate) fn with_locate<T>(
    handle: &tokio::runtime::Handle,
    catalog: Option<&Catalog>,
    repo: &Repository,
    packs: Vec<String>,
    f: impl FnOnce(&dyn crate::repo::tree::Locate) -> Result<T>,
) -> Result<T> {
    let by_catalog = catalog.map(|catalog| CatalogView {
        handle,
        catalog,
        repo_id: repo.config.id,
    });
    let by_index = crate::repo::tree::IndexLocate::new(repo, packs);
    let locate = crate::repo::tree::Fallback {
        first: by_catalog
            .as_ref()
            .map(|l| l as &dyn crate::repo::tree::Locate),
        then: &by_index,
    };
    f(&locate)
}

/// Runs the write pipeline of a backup, deduplicated against and recorded
/// in the catalog; `recorded` is told of each pack once the catalog has it.
/// From a blocking thread.
fn write_recorded<R: Send>(
    view: &CatalogView<'_>,
    repo: &Repository,
    zstd_level: i32,
    retain_until: Option<DateTime<Utc>>,
    recorded: &(dyn Fn(&crate::repo::pack::StoredPack) + Sync),
    produce: impl FnOnce(&crate::repo::writer::Sink) -> Result<R>,
) -> Result<(
    R,
    Vec<crate::repo::writer::Written>,
    crate::repo::writer::WriteStats,
)> {
    let on_pack = |pack: &crate::repo::pack::StoredPack, meta: &crate::store::ObjectMeta| {
        view.handle.block_on(view.catalog.record_pack(
            view.repo_id,
            meta,
            &pack.sha256,
            &pack.index,
        ))?;
        recorded(pack);
        Ok(())
    };
    crate::repo::writer::write(repo, view, zstd_level, retain_until, &on_pack, produce)
}

/// The chunks a manifest lists, each once, in first-use order; entries
/// point into the list by index.
#[derive(Default)]
struct ChunkList {
    order: Vec<ChunkId>,
    index: HashMap<ChunkId, u32>,
}

impl ChunkList {
    /// The index of `id`, added at the end when new.
    fn add(&mut self, id: ChunkId) -> u32 {
        let order = &mut self.order;
        *self.index.entry(id).or_insert_with(|| {
            order.push(id);
            (order.len() - 1) as u32
        })
    }
}

/// Where each of `order` is stored, from the catalog; a chunk the pipeline
/// wrote but the catalog lacks is an integrity error, never a dangling
/// manifest.
async fn locate(catalog: &Catalog, repo_id: Uuid, order: &[ChunkId]) -> Result<Vec<ChunkLocation>> {
    let locations: HashMap<ChunkId, ChunkLocation> =
        catalog.chunk_locations(repo_id, order).await?;
    order
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
        .collect()
}

/// Item rows being written on a task of their own; see [`write_items`].
struct ItemsWriting(tokio::task::JoinHandle<Result<PendingItems>>);

/// Starts writing a backup's item rows, uncommitted, as soon as they are
/// known: PostgreSQL inserts them while this process locates chunks and
/// seals and stores the manifest. For a volume of ten thousand files those
/// rows are most of a backup's end: a no-op incremental of the volume
/// benchmark's 9,665 entries took 0.35-0.45 s with them written last and
/// 0.27-0.33 s this way (and the parent's stamps read as text). Dropped,
/// the rows roll back.
fn write_items(
    catalog: &Catalog,
    id: Uuid,
    parent: Option<Uuid>,
    items: Vec<ItemRow>,
) -> ItemsWriting {
    let catalog = catalog.clone();
    ItemsWriting(tokio::spawn(async move {
        catalog.write_items(id, parent, &items).await
    }))
}

/// The shared end of a backup: everything it references is locked until
/// `retain_until` (the packs it shares with older backups, the config and the
/// keys), its manifest is stored (locked too), and the catalog marks it
/// usable with its items in one transaction. `more` are chunks the backup
/// references outside the manifest (a resources backup's objects, listed in
/// its object table). Returns the manifest's stored
/// size (also added to the catalog's stats as `manifest_bytes`).
#[allow(clippy::too_many_arguments)]
async fn seal_and_finish(
    repo: &Arc<Repository>,
    catalog: &Catalog,
    manifest: Manifest,
    more: &[ChunkLocation],
    items: Option<ItemsWriting>,
    stats: &serde_json::Value,
    error: Option<&str>,
    retain_until: Option<DateTime<Utc>>,
) -> Result<u64> {
    let repo_id = manifest.repository_id;
    let id = manifest.backup_id;
    let mut packs: Vec<String> = manifest
        .chunks
        .iter()
        .chain(more)
        .map(|c| c.pack.clone())
        .chain(manifest.packs.iter().cloned())
        .collect();
    packs.sort();
    packs.dedup();
    if let Some(until) = retain_until {
        extend_locks(repo, catalog, repo_id, &packs, until).await?;
    }
    let sealed = manifest.seal(&repo.secret, repo.recipients()?);
    let sealed_len = sealed.len() as u64;
    let mut stats = stats.clone();
    if let Some(o) = stats.as_object_mut() {
        o.insert("manifest_bytes".into(), sealed_len.into());
    }
    let stats = &stats;
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
    let tree = manifest.tree.map(|t| t.to_hex());
    let end = BackupEnd {
        tree: tree.as_deref(),
        status: &manifest.status,
        manifest_key: &key,
        stats,
        error,
        retain_until,
        packs: &packs,
    };
    let items = match items {
        Some(writing) => Some(writing.0.await.map_err(|e| {
            Error::new(ErrorKind::Failed, "writing the backup's items panicked").with_source(e)
        })??),
        None => None,
    };
    catalog.finish_backup(items, id, &end).await?;
    Ok(sealed_len)
}

/// Makes the locks of `packs`, the repository config and its keys last
/// until `until`. Extend-only: a lock is never shortened. What is locked
/// and for how long is read from the store (the original version of each
/// key, its retain-until by HEAD), never from the catalog: whoever can write
/// the catalog could otherwise let locks lapse under backups that need them.
/// The catalog is told what the store now says.
pub(crate) async fn extend_locks(
    repo: &Arc<Repository>,
    catalog: &Catalog,
    repo_id: Uuid,
    packs: &[String],
    until: DateTime<Utc>,
) -> Result<()> {
    use futures::StreamExt;
    let extend = |key: String| {
        let store = repo.store.clone();
        async move {
            tokio::task::spawn_blocking(move || -> Result<(String, Option<DateTime<Utc>>)> {
                let original = crate::store::original(&*store, &key)?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("pack {key}, which this backup uses, is not in the store"),
                    )
                    .with_guidance("run `drctl verify` and `drctl catalog rebuild`")
                })?;
                let end = store.extend_retention(&key, original.version_id.as_deref(), until)?;
                Ok((key, end))
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Failed, "lock extension panicked").with_source(e))?
        }
    };
    // As many at once as the store allows requests in flight.
    let mut results = futures::stream::iter(packs.iter().cloned().map(extend)).buffer_unordered(8);
    let mut extended = 0usize;
    while let Some(done) = results.next().await {
        let (key, end) = done?;
        if let Some(end) = end {
            catalog.pack_locked_until(repo_id, &key, end).await?;
            extended += 1;
        }
    }
    tracing::debug!(packs = extended, until = %until, "locks of the backup's packs checked");
    for key in [crate::repo::CONFIG_KEY, crate::repo::SECRET_KEY] {
        let store = repo.store.clone();
        let recorded = tokio::task::spawn_blocking(move || -> Result<_> {
            let Some(read) = crate::repo::read_root_object(&*store, key)? else {
                return Ok(None);
            };
            let version = read.meta.version_id.clone();
            let end = store.extend_retention(key, version.as_deref(), until)?;
            let head = store.head_version(key, version.as_deref())?;
            Ok(head.map(|h| (h, end, crate::store::sha256(&read.bytes))))
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
