//! `drctl catalog rebuild`: the catalog again, from the bucket alone.
//!
//! The bucket is the source of truth; the catalog is an index of it. After
//! the catalog database is lost, the holder of the age identity rebuilds it:
//!
//! 1. `config` and `keys/repository` are recorded as objects.
//! 2. Every object under `packs/` is read whole, checked against its key
//!    (SHA-256) and its index decrypted ([`OpenPack::fetch`]); the pack and
//!    the chunks of its index are recorded, with the version id and lock the
//!    store reports. On a versioned bucket where a pack was replaced, the
//!    version that matches the key is the one recorded.
//! 3. Every manifest is authenticated and decrypted ([`Manifest::open`]),
//!    oldest first (backup ids are UUIDv7, so parents come before their
//!    children), and recorded: the backup, its items (with the stamps the
//!    next incremental compares), the packs it references, and the manifest
//!    object. A backup's retain-until is the lock of its manifest.
//!
//! What fails verification is reported and left out, never recorded: a
//! manifest that fails authentication (a forgery encrypted to the public
//! recipient by someone with write access to the bucket), a pack whose bytes
//! do not match their key. The rest is rebuilt.
//!
//! Rebuilding merges: a row the catalog has already (a backup, a pack, a
//! chunk) is left as it is, so a rebuild can run again, or against a catalog
//! that lost only part of the repository, without duplicating or changing
//! anything. Only lock ends move, and only later (as for every lock record).
//! The repository's gc lock is held throughout: packs are recorded before
//! the backups that reference them, and a gc in between would take them for
//! garbage. docs/catalog.md has the operator's view.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::rebuild::RebuiltBackup;
use crate::catalog::{Catalog, ItemRow};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::{EntryKind, Manifest, manifest_key};
use crate::repo::pack::{IndexEntry, OpenPack, pack_key};
use crate::repo::{CONFIG_KEY, Identity, Repository, SECRET_KEY};
use crate::store::{ObjectMeta, Store, sha256};

/// Packs read at once. Reading a pack is a download (S3) or a disk read,
/// then SHA-256 of 16 MiB and one age decryption; four keep two cores busy
/// while requests are in flight, with 64 MiB of packs in memory.
const PACK_READERS: usize = 4;

/// What a rebuild did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub repository: Uuid,
    pub location: String,
    /// Backups recorded from their manifests.
    pub backups_rebuilt: u64,
    /// Backups with an authentic manifest that the catalog had already:
    /// left as they were.
    pub backups_present: u64,
    /// Items of the rebuilt backups.
    pub items: u64,
    /// Packs verified and recorded (or found recorded).
    pub packs: u64,
    /// Chunks in the indexes of those packs.
    pub chunks: u64,
    /// Chunk rows the catalog did not have.
    pub chunks_added: u64,
    /// Other objects recorded: config, keys, manifests.
    pub objects: u64,
    /// Manifests that failed verification: not recorded.
    pub rejected_manifests: Vec<Rejected>,
    /// Packs that failed verification, or that backups reference and the
    /// bucket does not hold: not recorded.
    pub damaged_packs: Vec<Rejected>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl Report {
    /// Everything in the bucket verified and was recorded.
    pub fn is_clean(&self) -> bool {
        self.rejected_manifests.is_empty() && self.damaged_packs.is_empty()
    }
}

/// An object left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub key: String,
    pub reason: String,
}

/// Progress of a rebuild, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Reading this many packs.
    Packs(u64),
    /// Reading this many manifests.
    Manifests(u64),
    /// One more pack or manifest done.
    Done,
}

pub type Progress = Arc<dyn Fn(Step) + Send + Sync>;

/// Rebuilds the catalog of `repo`, which must be open with the identity.
pub async fn rebuild(
    repo: Arc<Repository>,
    catalog: &Catalog,
    progress: Progress,
) -> Result<Report> {
    let started = Instant::now();
    repo.identity()?;
    let location = repo.store.location();
    let repo_id = catalog.ensure_repository(&repo.config, &location).await?;
    // No gc while packs are recorded and the backups that need them not yet.
    let gc_lock = catalog.hold_gc_lock(repo_id).await?;
    tracing::info!(repository = %repo_id, %location, "catalog rebuild started");
    let mut report = Report {
        repository: repo_id,
        location,
        ..Report::default()
    };

    // What every backup needs besides its packs.
    for key in [CONFIG_KEY, SECRET_KEY] {
        let store = repo.store.clone();
        let found = blocking(move || -> Result<Option<(ObjectMeta, [u8; 32])>> {
            // The originals, which opening the repository checked.
            let Some(read) = crate::repo::read_root_object(&*store, key)? else {
                return Ok(None);
            };
            let meta = store.head_version(key, read.meta.version_id.as_deref())?;
            Ok(meta.map(|meta| (meta, sha256(&read.bytes))))
        })
        .await?;
        if let Some((meta, sha)) = found {
            catalog.record_object(repo_id, &meta, &sha).await?;
            report.objects += 1;
        }
    }

    let recorded = rebuild_packs(&repo, catalog, &mut report, &progress).await?;
    rebuild_backups(&repo, catalog, &recorded, &mut report, &progress).await?;
    gc_lock.release().await?;

    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        repository = %repo_id,
        backups = report.backups_rebuilt,
        present = report.backups_present,
        packs = report.packs,
        chunks = report.chunks,
        rejected_manifests = report.rejected_manifests.len(),
        damaged_packs = report.damaged_packs.len(),
        "catalog rebuild finished"
    );
    Ok(report)
}

/// Runs blocking store and crypto work off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Failed, "a rebuild worker panicked").with_source(e))?
}

/// Whether `e` condemns one object (reported, the rebuild goes on) rather
/// than the run (a store or the catalog unavailable: the rebuild stops, and
/// can be run again).
fn condemns_object(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Integrity | ErrorKind::Permission | ErrorKind::NotFound | ErrorKind::Config
    )
}

/// One line: the error and its causes.
fn reason(e: &Error) -> String {
    std::iter::once(e.what().to_string())
        .chain(e.causes())
        .collect::<Vec<_>>()
        .join(": ")
}

/// What one pack reader found.
enum PackOutcome {
    Recorded {
        chunks: u64,
        added: u64,
        warning: Option<String>,
    },
    Damaged(Rejected),
}

/// Records every pack in the bucket that verifies; returns their keys.
async fn rebuild_packs(
    repo: &Arc<Repository>,
    catalog: &Catalog,
    report: &mut Report,
    progress: &Progress,
) -> Result<HashSet<String>> {
    let store = repo.store.clone();
    let listed = blocking(move || store.list("packs/")).await?;
    tracing::info!(packs = listed.len(), "reading packs");
    progress(Step::Packs(listed.len() as u64));
    let repo_id = report.repository;
    let handle = tokio::runtime::Handle::current();
    let (repo2, catalog2, progress2) = (repo.clone(), catalog.clone(), progress.clone());
    let outcomes = blocking(move || {
        let identity = repo2.identity()?;
        let results: Mutex<Vec<(String, PackOutcome)>> = Mutex::new(Vec::new());
        crate::parallel::try_for_each(
            listed,
            PACK_READERS,
            || (),
            |_, object| {
                let key = object.key;
                let outcome = read_pack(&*repo2.store, identity, &key, repo2.max_pack_bytes())
                    .and_then(|p| {
                        let added = handle.block_on(
                            catalog2.record_pack(repo_id, &p.meta, &p.sha256, &p.index),
                        )?;
                        Ok(PackOutcome::Recorded {
                            chunks: p.index.len() as u64,
                            added,
                            warning: p.warning,
                        })
                    });
                let outcome = match outcome {
                    Ok(o) => o,
                    Err(e) if condemns_object(&e) => {
                        tracing::warn!(pack = %key, error = %e.what(), "pack left out");
                        PackOutcome::Damaged(Rejected {
                            key: key.clone(),
                            reason: reason(&e),
                        })
                    }
                    Err(e) => return Err(e),
                };
                results.lock().unwrap().push((key, outcome));
                progress2(Step::Done);
                Ok(())
            },
        )?;
        Ok(results.into_inner().unwrap())
    })
    .await?;

    let mut recorded = HashSet::new();
    let mut outcomes = outcomes;
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, outcome) in outcomes {
        match outcome {
            PackOutcome::Recorded {
                chunks,
                added,
                warning,
            } => {
                report.packs += 1;
                report.chunks += chunks;
                report.chunks_added += added;
                report.warnings.extend(warning);
                recorded.insert(key);
            }
            PackOutcome::Damaged(r) => report.damaged_packs.push(r),
        }
    }
    tracing::info!(
        packs = report.packs,
        chunks = report.chunks,
        damaged = report.damaged_packs.len(),
        "packs recorded"
    );
    Ok(recorded)
}

/// A pack read back and verified.
struct FoundPack {
    /// Of the version that matches the key.
    meta: ObjectMeta,
    sha256: [u8; 32],
    index: Vec<IndexEntry>,
    /// Set when a newer version replaced it.
    warning: Option<String>,
}

/// Reads and verifies the pack `key`.
fn read_pack(store: &dyn Store, identity: &Identity, key: &str, limit: u64) -> Result<FoundPack> {
    let sha: [u8; 32] = key
        .rsplit('/')
        .next()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| b.try_into().ok())
        .filter(|sha| pack_key(sha) == key)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Integrity,
                format!("{key} is not a pack: its key is not packs/xx/<SHA-256>"),
            )
        })?;
    // The original: of the versions under the key, the first that hashes
    // to it. Whatever else is there was put by someone with write access.
    let mut open = OpenPack::fetch(store, key, identity, limit)?;
    let index = std::mem::take(&mut open.index.chunks);
    // The lock of the version read, for the catalog.
    let meta = store
        .head_version(key, open.meta.version_id.as_deref())?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("pack {key} vanished while the catalog was rebuilt"),
            )
        })?;
    let warning = (open.others > 0).then(|| {
        format!(
            "pack {key} has {} other version(s) or delete marker(s); the original version {} is recorded",
            open.others,
            meta.version_id.as_deref().unwrap_or("-")
        )
    });
    Ok(FoundPack {
        meta,
        sha256: sha,
        index,
        warning,
    })
}

/// Records the backup of every manifest that authenticates.
async fn rebuild_backups(
    repo: &Arc<Repository>,
    catalog: &Catalog,
    packs: &HashSet<String>,
    report: &mut Report,
    progress: &Progress,
) -> Result<()> {
    let repo_id = report.repository;
    let store = repo.store.clone();
    let listed = blocking(move || store.list("manifests/")).await?;
    let mut ids = Vec::with_capacity(listed.len());
    for object in listed {
        match object
            .key
            .strip_prefix("manifests/")
            .and_then(|s| s.parse::<Uuid>().ok())
        {
            Some(id) if manifest_key(id) == object.key => ids.push(id),
            _ => report.rejected_manifests.push(Rejected {
                reason: format!(
                    "{} is not a manifest: its key is not manifests/<backup id>",
                    object.key
                ),
                key: object.key,
            }),
        }
    }
    // UUIDv7: in the order the backups started, so parents come first.
    ids.sort();
    tracing::info!(manifests = ids.len(), "reading manifests");
    progress(Step::Manifests(ids.len() as u64));

    let mut known = catalog.backup_ids(repo_id).await?;
    let mut missing_packs: BTreeSet<String> = BTreeSet::new();
    for id in ids {
        let key = manifest_key(id);
        let opened = {
            let (repo, key) = (repo.clone(), key.clone());
            blocking(move || -> Result<(ObjectMeta, [u8; 32], Manifest)> {
                let read = crate::repo::manifest::read_sealed(&*repo.store, id)?;
                let (sealed, version) = (read.bytes, read.meta.version_id);
                // The lock of the version read, for the catalog.
                let meta = repo
                    .store
                    .head_version(&key, version.as_deref())?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::NotFound,
                            format!("{key} vanished while the catalog was rebuilt"),
                        )
                    })?;
                let mut manifest = Manifest::open(id, &sealed, &repo.secret, repo.identity()?)?;
                crate::repo::object_table::expand(&repo, &mut manifest)?;
                Ok((meta, sha256(&sealed), manifest))
            })
            .await
        };
        progress(Step::Done);
        let (meta, sha, manifest) = match opened {
            Ok(v) => v,
            Err(e) if condemns_object(&e) => {
                tracing::warn!(manifest = %key, error = %e.what(), "manifest rejected");
                report.rejected_manifests.push(Rejected {
                    key,
                    reason: reason(&e),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Err(why) = check(&manifest) {
            tracing::warn!(manifest = %key, error = %why, "manifest rejected");
            report
                .rejected_manifests
                .push(Rejected { key, reason: why });
            continue;
        }

        let referenced: BTreeSet<String> = manifest
            .chunks
            .iter()
            .map(|c| c.pack.clone())
            .chain(manifest.packs.iter().cloned())
            .collect();
        let absent: Vec<&String> = referenced.iter().filter(|p| !packs.contains(*p)).collect();
        if !absent.is_empty() {
            report.warnings.push(format!(
                "backup {id} references {} pack(s) that are damaged or missing: files in them \
                 will not restore",
                absent.len()
            ));
            missing_packs.extend(absent.into_iter().cloned());
        }
        let referenced: Vec<String> = referenced.into_iter().collect();
        if known.contains(&id) {
            // Left as it is, but linked to the packs it needs that an
            // earlier (partial) rebuild could not record: gc must see them
            // referenced.
            report.backups_present += 1;
            catalog.link_backup_packs(repo_id, id, &referenced).await?;
            catalog.record_object(repo_id, &meta, &sha).await?;
            report.objects += 1;
            continue;
        }

        let parent = match manifest.parent {
            Some(p) if !known.contains(&p) => {
                report.warnings.push(format!(
                    "backup {id}: its parent {p} has no authentic manifest; recorded without a \
                     parent"
                ));
                None
            }
            p => p,
        };
        let items = items(&manifest);
        let stats = stats(&manifest, referenced.len());
        let error = manifest.problems.first().map(|p| {
            format!(
                "{} path(s) could not be backed up, first: {}: {}",
                manifest.problems.len(),
                p.path,
                p.error
            )
        });
        // A backup whose packs are not all here is no base for the next
        // incremental: its files are read again, and what was lost stored.
        let tree = manifest
            .tree
            .filter(|_| !missing_packs.iter().any(|p| referenced.contains(p)))
            .map(|t| t.to_hex());
        let row = RebuiltBackup {
            id,
            kind: &manifest.kind,
            name: &manifest.name,
            status: &manifest.status,
            parent,
            started_at: started_at(id).unwrap_or(manifest.created_at),
            finished_at: manifest.created_at,
            retain_until: meta.retain_until,
            manifest_key: &key,
            stats: &stats,
            error: error.as_deref(),
            packs: &referenced,
            tree: tree.as_deref(),
        };
        if catalog.rebuild_backup(repo_id, &row, &items).await? {
            report.backups_rebuilt += 1;
            report.items += items.len() as u64;
            tracing::info!(backup = %id, name = %manifest.name, items = items.len(), "backup rebuilt");
        } else {
            // Recorded meanwhile (a backup finishing as we rebuild).
            report.backups_present += 1;
        }
        known.insert(id);
        catalog.record_object(repo_id, &meta, &sha).await?;
        report.objects += 1;
    }
    let damaged: HashSet<String> = report.damaged_packs.iter().map(|d| d.key.clone()).collect();
    for key in missing_packs {
        if !damaged.contains(&key) {
            report.damaged_packs.push(Rejected {
                reason: format!("{key} is referenced by a backup but not in the bucket"),
                key,
            });
        }
    }
    Ok(())
}

/// What an authentic manifest must also be for the catalog to take it.
fn check(m: &Manifest) -> std::result::Result<(), String> {
    if !["etcd", "resources", "volume"].contains(&m.kind.as_str()) {
        return Err(format!("backup kind `{}` is unknown to this drctl", m.kind));
    }
    if !["complete", "partial"].contains(&m.status.as_str()) {
        return Err(format!("backup status `{}` is not a usable one", m.status));
    }
    let n = m.chunks.len();
    if let Some(e) = m.entries.iter().find(|e| {
        e.extents
            .iter()
            .flat_map(|x| &x.chunks)
            .any(|&c| c as usize >= n)
    }) {
        return Err(format!(
            "entry {} references a chunk the manifest does not list",
            e.path
        ));
    }
    if let Some(o) = m.objects.iter().find(|o| o.chunk as usize >= n) {
        return Err(format!(
            "object {}/{} references a chunk the manifest does not list",
            o.resource, o.name
        ));
    }
    Ok(())
}

/// When backup `id` started: UUIDv7 carries its creation time.
fn started_at(id: Uuid) -> Option<DateTime<Utc>> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(secs as i64, nanos)
}

/// The catalog items of a manifest: an etcd snapshot's, a resources
/// backup's objects, a volume backup of format 1's entries. A volume backup
/// with trees has none: its listing is in the repository.
fn items(m: &Manifest) -> Vec<ItemRow> {
    if let (Some(info), [entry]) = (&m.etcd, m.entries.as_slice()) {
        return vec![crate::backup::etcd::item(entry.size, info)];
    }
    if m.kind == "resources" {
        return crate::backup::resources::items(&m.objects, &m.chunks);
    }
    m.entries
        .iter()
        .map(|e| ItemRow {
            from_parent: false,
            item: e.path.clone(),
            item_type: e.kind.as_str().to_string(),
            size: e.size as i64,
            attrs: serde_json::json!({}),
        })
        .collect()
}

/// The stats of a rebuilt backup: what its manifest tells (the run's own
/// counters, such as bytes read, died with the catalog).
fn stats(m: &Manifest, packs: usize) -> serde_json::Value {
    serde_json::json!({
        "backup_id": m.backup_id,
        "status": m.status,
        "parent": m.parent,
        "files": m.totals.as_ref().map_or_else(
            || m.entries
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Block))
                .count() as u64,
            |t| t.files,
        ),
        "bytes": m.totals.as_ref().map_or_else(|| m.entries.iter().map(|e| e.size).sum::<u64>(), |t| t.bytes),
        "objects": m.objects.len(),
        "chunks": m.chunks.len(),
        "packs": packs,
        "problems": m.problems,
        "rebuilt_from_manifest": true,
    })
}
