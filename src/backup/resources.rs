//! Resource backups: the API objects of a scope, each object's JSON one
//! chunk through the pipeline.
//!
//! One chunk per object makes an object's digest its chunk id: an object
//! that did not change since the last backup (same JSON, same
//! resourceVersion) is a chunk already stored, so a backup of an unchanged
//! cluster stores only its manifest. Objects stream from the lists into the
//! pipeline as they arrive; only their names and sizes are kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, ItemRow};
use crate::cluster::Cluster;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::chunker::{Chunking, Cutter};
use crate::repo::manifest::{ChunkLocation, KubeObject, Manifest};
use crate::repo::object_table::ObjectTable;
use crate::repo::writer::Job;
use crate::repo::{ChunkId, Repository};
use crate::resources::scope::{Scope, TypeName};
use crate::source::resources::{self as source, Listed};

/// What a finished resource backup reports.
#[derive(Debug, Clone, Serialize)]
pub struct ResourcesSummary {
    pub backup_id: Uuid,
    pub status: String,
    pub name: String,
    /// The API server read.
    pub server: String,
    /// Where the data came from: the namespaces and the server.
    pub source: String,
    pub objects: u64,
    /// Objects whose JSON was not stored yet (new or changed).
    pub new_objects: u64,
    /// Resource types read.
    pub types: usize,
    pub namespaces: usize,
    /// Namespaces left out by their `drctl.io/exclude-from-backup` label.
    pub opted_out_namespaces: Vec<String>,
    pub bytes: u64,
    pub new_bytes: u64,
    /// Bytes of packs stored (new objects and object table chunks,
    /// compressed and encrypted).
    pub stored_bytes: u64,
    /// Size of the object table (see `repo::object_table`), and how much of
    /// it was not stored yet.
    pub table_bytes: u64,
    pub table_new_bytes: u64,
    pub manifest_bytes: u64,
    /// Everything this backup put in the bucket: packs and manifest.
    pub uploaded_bytes: u64,
    pub packs: u64,
    pub seconds: f64,
    pub objects_per_second: f64,
}

/// Backs up the objects of `scope` on `cluster`.
pub async fn backup_resources(
    writer: super::Writer,
    catalog: &Catalog,
    cluster: &Cluster,
    scope: &Scope,
    name: &str,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<ResourcesSummary> {
    let super::Writer {
        repo,
        zstd_level,
        retain_until,
    } = writer;
    let started = Instant::now();
    // Check the scope against the server before recording anything: a
    // typo in a namespace leaves no failed backup behind, only the error.
    let reading = source::prepare(cluster, scope).await?;
    if reading.namespaces.is_empty() && !scope.all_namespaces() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no namespace on {} matches the --include-namespaces patterns{}",
                cluster.url,
                if reading.opted_out_namespaces.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (opted out by label: {})",
                        reading.opted_out_namespaces.join(", ")
                    )
                }
            ),
        )
        .with_guidance("check the patterns against `kubectl get namespaces`"));
    }
    tracing::info!(
        server = %cluster.url,
        types = reading.types.len(),
        namespaces = reading.namespaces.len(),
        "resources to back up resolved"
    );
    let id = super::start(&repo, catalog, "resources", name).await?;
    let run = run(
        repo,
        catalog,
        cluster,
        scope,
        reading,
        id,
        name,
        zstd_level,
        retain_until,
        progress,
    );
    let mut summary = super::or_fail(catalog, id, run).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.objects_per_second = summary.objects as f64 / summary.seconds.max(1e-9);
    super::final_stats(
        catalog,
        id,
        serde_json::json!({
            "seconds": summary.seconds,
            "objects_per_second": summary.objects_per_second,
            "uploaded_bytes": summary.uploaded_bytes,
        }),
    )
    .await;
    tracing::info!(backup = %id, objects = summary.objects, new = summary.new_objects, "backup finished");
    Ok(summary)
}

/// An object as recorded while its JSON goes through the pipeline.
struct Seen {
    ty: usize,
    namespace: Option<String>,
    name: String,
    size: usize,
}

#[allow(clippy::too_many_arguments)]
async fn run(
    repo: Arc<Repository>,
    catalog: &Catalog,
    cluster: &Cluster,
    scope: &Scope,
    reading: source::Reading,
    id: Uuid,
    name: &str,
    zstd_level: i32,
    retain_until: Option<DateTime<Utc>>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<ResourcesSummary> {
    let repo_id = repo.config.id;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Listed>(256);
    let handle = tokio::runtime::Handle::current();
    let (repo2, catalog2) = (repo.clone(), catalog.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let view = super::CatalogView {
            handle: &handle,
            catalog: &catalog2,
            repo_id,
        };
        super::write_recorded(&view, &repo2, zstd_level, retain_until, &|_| {}, |sink| {
            let mut seen = Vec::new();
            while let Some(l) = rx.blocking_recv() {
                let tag = seen.len() as u64;
                seen.push(Seen {
                    ty: l.ty,
                    namespace: l.namespace,
                    name: l.name,
                    size: l.json.len(),
                });
                sink.send(Job { tag, data: l.json })?;
                progress(1);
            }
            Ok(seen)
        })
    });
    let read = source::read(cluster, scope, &reading, &tx).await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::new(ErrorKind::Failed, "the backup worker panicked").with_source(e))?;
    // The pipeline's own failure is the cause when both failed.
    let (seen, written, stats) = written?;
    read?;
    crate::sys::release_free_memory();

    let by_tag: HashMap<u64, ChunkId> = written.iter().map(|w| (w.tag, w.id)).collect();
    let mut order: Vec<usize> = (0..seen.len()).collect();
    let key = |i: &usize| {
        let s = &seen[*i];
        let t = &reading.types[s.ty];
        (
            t.group.as_str(),
            t.plural.as_str(),
            s.namespace.as_deref(),
            s.name.as_str(),
        )
    };
    order.sort_by(|a, b| key(a).cmp(&key(b)));
    let mut list = super::ChunkList::default();
    let mut objects = Vec::with_capacity(seen.len());
    for i in order {
        let s = &seen[i];
        let t = &reading.types[s.ty];
        objects.push(KubeObject {
            group: t.group.clone(),
            version: t.version.clone(),
            kind: t.kind.clone(),
            resource: t.plural.clone(),
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            chunk: list.add(by_tag[&(i as u64)]),
            size: s.size as u32,
        });
    }
    let chunks: Vec<ChunkLocation> = super::locate(catalog, repo_id, &list.order).await?;

    // The table of objects and their chunks, through the pipeline too: an
    // unchanged table is chunks already stored (see repo::object_table).
    let table = ObjectTable { objects, chunks };
    let table_json = serde_json::to_vec(&table).expect("the object table serialises");
    let table_bytes = table_json.len() as u64;
    let (repo2, catalog2) = (repo.clone(), catalog.clone());
    let handle = tokio::runtime::Handle::current();
    let (tags, table_written, table_stats) = tokio::task::spawn_blocking(move || {
        let view = super::CatalogView {
            handle: &handle,
            catalog: &catalog2,
            repo_id,
        };
        super::write_recorded(&view, &repo2, zstd_level, retain_until, &|_| {}, |sink| {
            let seed = repo2.secret.chunker_seed();
            let mut cutter = Cutter::new(Chunking::Cdc { seed });
            let mut tags = 0u64;
            let mut stopped = None;
            let cut = cutter.cut(&table_json[..], |c: &[u8]| {
                let mut data = sink.buffer();
                data.extend_from_slice(c);
                sink.send(Job { tag: tags, data }).map_err(|e| {
                    stopped = Some(e);
                    std::io::Error::other("the pipeline stopped")
                })?;
                tags += 1;
                Ok::<_, std::io::Error>(())
            });
            match (stopped, cut) {
                (Some(e), _) => Err(e),
                (None, Err(e)) => Err(Error::io(
                    e,
                    ErrorKind::Failed,
                    "cannot cut the object table",
                )),
                (None, Ok(_)) => Ok(tags),
            }
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Failed, "the backup worker panicked").with_source(e))??;
    let by_tag: HashMap<u64, ChunkId> = table_written.iter().map(|w| (w.tag, w.id)).collect();
    let mut table_list = super::ChunkList::default();
    let refs: Vec<u32> = (0..tags).map(|t| table_list.add(by_tag[&t])).collect();
    let table_chunks = super::locate(catalog, repo_id, &table_list.order).await?;

    let manifest = Manifest {
        format: crate::repo::manifest::MANIFEST_FORMAT,
        backup_id: id,
        repository_id: repo_id,
        kind: "resources".into(),
        name: name.to_string(),
        created_at: Utc::now(),
        parent: None,
        source: cluster.url.clone(),
        status: "complete".into(),
        problems: Vec::new(),
        entries: Vec::new(),
        chunks: table_chunks,
        etcd: None,
        objects: Vec::new(),
        object_table: Some(refs),
        tree: None,
        packs: Vec::new(),
        totals: None,
        members: Vec::new(),
    };
    let items = super::write_items(catalog, id, None, items(&table.objects, &table.chunks));
    let mut summary = ResourcesSummary {
        backup_id: id,
        status: "complete".into(),
        name: name.to_string(),
        server: cluster.url.clone(),
        source: format!(
            "{} on {}",
            if reading.namespaces.is_empty() {
                "cluster-scoped objects".to_string()
            } else {
                format!("namespaces {}", reading.namespaces.join(", "))
            },
            cluster.url
        ),
        objects: stats.chunks,
        new_objects: stats.new_chunks,
        types: reading.types.len(),
        namespaces: reading.namespaces.len(),
        opted_out_namespaces: reading.opted_out_namespaces.clone(),
        bytes: stats.bytes,
        new_bytes: stats.new_bytes,
        stored_bytes: stats.stored_bytes + table_stats.stored_bytes,
        table_bytes,
        table_new_bytes: table_stats.new_bytes,
        manifest_bytes: 0,
        uploaded_bytes: 0,
        packs: stats.packs + table_stats.packs,
        seconds: 0.0,
        objects_per_second: 0.0,
    };
    let stats_json = serde_json::to_value(&summary).expect("summary serialises");
    let manifest_bytes = super::seal_and_finish(
        &repo,
        catalog,
        manifest,
        &table.chunks,
        Some(items),
        &stats_json,
        None,
        retain_until,
    )
    .await?;
    summary.manifest_bytes = manifest_bytes;
    summary.uploaded_bytes = summary.stored_bytes + manifest_bytes;
    Ok(summary)
}

/// The catalog items of a resources backup: one per object, named
/// `resource.group/namespace/name`, with its type and digest (its chunk's
/// id; `chunks` is what `objects` index).
pub fn items(objects: &[KubeObject], chunks: &[ChunkLocation]) -> Vec<ItemRow> {
    objects
        .iter()
        .map(|o| {
            let qualified = if o.group.is_empty() {
                o.resource.clone()
            } else {
                format!("{}.{}", o.resource, o.group)
            };
            let item = match &o.namespace {
                Some(ns) => format!("{qualified}/{ns}/{}", o.name),
                None => format!("{qualified}/{}", o.name),
            };
            ItemRow {
                from_parent: false,
                item,
                item_type: "k8s_object".into(),
                size: o.size as i64,
                attrs: serde_json::json!({
                    "group": o.group,
                    "version": o.version,
                    "kind": o.kind,
                    "namespace": o.namespace,
                    "name": o.name,
                    "digest": chunks.get(o.chunk as usize).map(|c| c.id.to_hex()),
                }),
            }
        })
        .collect()
}

impl TypeName for KubeObject {
    fn group(&self) -> &str {
        &self.group
    }
    fn plural(&self) -> &str {
        &self.resource
    }
    fn kind(&self) -> &str {
        &self.kind
    }
}
