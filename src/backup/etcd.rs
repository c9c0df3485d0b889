//! etcd backups: one member's snapshot, streamed through the pipeline, with
//! what a restored member must answer recorded beside it.
//!
//! The snapshot's revision comes from its own pages; the member is then asked
//! for the key count and `HashKV` at that revision. Both describe the
//! snapshot only if the member's compaction revision is still the
//! snapshot's: when a compaction ran in between, they are left unrecorded
//! (and said so) rather than recorded wrong.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, ItemRow};
use crate::config::EtcdConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::{
    ChunkLocation, Entry, EntryKind, EtcdSnapshot, Extent, Manifest, SNAPSHOT_ENTRY,
};
use crate::repo::{ChunkId, Repository};
use crate::source::etcd::{self, Member, snapshot};

/// What a finished etcd backup reports.
#[derive(Debug, Clone, Serialize)]
pub struct EtcdSummary {
    pub backup_id: Uuid,
    pub status: String,
    pub name: String,
    /// Where the data came from: the member streamed.
    pub source: String,
    #[serde(flatten)]
    pub snapshot: EtcdSnapshot,
    /// Why the key count and `HashKV` are not recorded, when they are not.
    pub unrecorded: Option<String>,
    /// Bytes streamed: the file and its 32-byte trailer.
    pub bytes: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    /// Bytes streamed per new byte stored.
    pub dedup_ratio: Option<f64>,
    pub compression_ratio: Option<f64>,
    pub chunks: u64,
    pub packs: u64,
    pub seconds: f64,
}

/// Backs up etcd: picks a healthy member and streams its snapshot.
pub async fn backup_etcd(
    writer: super::Writer,
    catalog: &Catalog,
    cfg: &EtcdConfig,
    name: &str,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<EtcdSummary> {
    let super::Writer {
        repo,
        zstd_level,
        retain_until,
    } = writer;
    let started = Instant::now();
    // Choose the member before recording anything: a cluster that cannot
    // be backed up leaves no failed backup behind, only the error.
    let member = etcd::pick_member(cfg).await?;
    tracing::info!(
        endpoint = %member.status.endpoint,
        member = %member.status.member_id,
        version = %member.status.version,
        db_size = member.status.db_size,
        "etcd member chosen"
    );
    let id = super::start(&repo, catalog, "etcd", name).await?;
    let run = run(
        repo,
        catalog,
        id,
        name,
        member,
        zstd_level,
        retain_until,
        progress,
    );
    let mut summary = super::or_fail(catalog, id, run).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    super::final_stats(
        catalog,
        summary.backup_id,
        serde_json::json!({ "seconds": summary.seconds }),
    )
    .await;
    tracing::info!(backup = %id, revision = summary.snapshot.revision, "backup finished");
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    repo: Arc<Repository>,
    catalog: &Catalog,
    id: Uuid,
    name: &str,
    mut member: Member,
    zstd_level: i32,
    retain_until: Option<DateTime<Utc>>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<EtcdSummary> {
    let repo_id = repo.config.id;
    let endpoint = member.status.endpoint.clone();
    let stream = member.client.snapshot().await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("etcd member {endpoint} refused the snapshot: {e}"),
        )
    })?;
    let handle = tokio::runtime::Handle::current();
    let (repo2, catalog2, ep2) = (repo.clone(), catalog.clone(), endpoint.clone());
    let (streamed, written, stats) = tokio::task::spawn_blocking(move || {
        let view = super::CatalogView {
            handle: &handle,
            catalog: &catalog2,
            repo_id,
        };
        super::write_recorded(&view, &repo2, zstd_level, retain_until, &|_| {}, |sink| {
            snapshot::read(stream, &handle, &ep2, sink, &*progress)
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Failed, "the backup worker panicked").with_source(e))??;
    crate::sys::release_free_memory();
    let facts = streamed.facts;
    if facts.revision < member.status.revision {
        tracing::warn!(
            snapshot = facts.revision,
            before = member.status.revision,
            "the snapshot's pages give a revision below the member's before it started"
        );
    }

    // What a member started on this file must answer.
    let (key_count, hash_kv, unrecorded) = match member.key_count_and_hash(facts.revision).await {
        Ok((count, hash, live_compact)) => {
            let ours = facts.compact_revision.unwrap_or(-1);
            if live_compact.max(0) == ours.max(0) {
                (Some(count), Some(hash), None)
            } else {
                (
                    None,
                    None,
                    Some(format!(
                        "etcd compacted to revision {live_compact} while the snapshot (compacted at {ours}) streamed"
                    )),
                )
            }
        }
        Err(e) if e.what().contains("compacted") => (
            None,
            None,
            Some(format!(
                "etcd compacted past revision {} while the snapshot streamed",
                facts.revision
            )),
        ),
        Err(e) => return Err(e),
    };
    // Per resource type, for drills; a compaction that hid the revision
    // hides these too.
    let resource_counts = match (
        &unrecorded,
        member.count_by_type(facts.revision, "/registry/").await,
    ) {
        (None, Ok(c)) => Some(c),
        (_, Err(e)) if !e.what().contains("compacted") => return Err(e),
        _ => None,
    };
    if let Some(why) = &unrecorded {
        tracing::warn!(backup = %id, reason = %why, "key count and HashKV not recorded; drills check the revision only");
    }

    let by_tag: HashMap<u64, ChunkId> = written.iter().map(|w| (w.tag, w.id)).collect();
    let mut list = super::ChunkList::default();
    let refs: Vec<u32> = streamed
        .chunks
        .iter()
        .map(|(tag, _)| list.add(by_tag[tag]))
        .collect();
    let chunks: Vec<ChunkLocation> = super::locate(catalog, repo_id, &list.order).await?;
    let size = streamed.db_size + snapshot::TRAILER as u64;
    let info = EtcdSnapshot {
        endpoint: endpoint.clone(),
        member_id: member.status.member_id.clone(),
        version: member.status.version.clone(),
        revision: facts.revision,
        compact_revision: facts.compact_revision,
        key_count,
        hash_kv,
        db_size: streamed.db_size,
        resource_counts,
    };
    let entry = Entry {
        path: SNAPSHOT_ENTRY.into(),
        kind: EntryKind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime_ns: Utc::now().timestamp_nanos_opt().unwrap_or(0),
        size,
        target: None,
        xattrs: Vec::new(),
        extents: vec![Extent {
            offset: 0,
            length: size,
            chunks: refs,
        }],
        ctime_ns: None,
        ino: None,
    };
    let manifest = Manifest {
        format: crate::repo::manifest::MANIFEST_FORMAT,
        backup_id: id,
        repository_id: repo_id,
        kind: "etcd".into(),
        name: name.to_string(),
        created_at: Utc::now(),
        parent: None,
        source: endpoint,
        status: "complete".into(),
        problems: Vec::new(),
        entries: vec![entry],
        chunks,
        etcd: Some(info.clone()),
        objects: Vec::new(),
        object_table: None,
        tree: None,
        packs: Vec::new(),
        totals: None,
        members: Vec::new(),
    };
    let summary = EtcdSummary {
        backup_id: id,
        status: "complete".into(),
        name: name.to_string(),
        source: manifest.source.clone(),
        snapshot: info.clone(),
        unrecorded: unrecorded.clone(),
        bytes: stats.bytes,
        new_bytes: stats.new_bytes,
        stored_bytes: stats.stored_bytes,
        dedup_ratio: stats.dedup_ratio(),
        compression_ratio: stats.compression_ratio(),
        chunks: stats.chunks,
        packs: stats.packs,
        seconds: 0.0,
    };
    let items = super::write_items(catalog, id, None, vec![item(size, &info)]);
    let stats_json = serde_json::to_value(&summary).expect("summary serialises");
    super::seal_and_finish(
        &repo,
        catalog,
        manifest,
        &[],
        Some(items),
        &stats_json,
        None,
        retain_until,
    )
    .await?;
    Ok(summary)
}

/// The catalog item of a snapshot: its attributes are what it recorded.
pub fn item(size: u64, info: &EtcdSnapshot) -> ItemRow {
    ItemRow {
        from_parent: false,
        item: SNAPSHOT_ENTRY.into(),
        item_type: "etcd_snapshot".into(),
        size: size as i64,
        attrs: serde_json::to_value(info).expect("snapshot info serialises"),
    }
}
