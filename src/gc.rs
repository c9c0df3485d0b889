//! `drctl gc`: deletes what no live backup needs, in two phases.
//!
//! Mark: backups past their retain-until are expired (deleted from the
//! catalog), and every pack and manifest no live backup references is
//! marked. Marked packs stop being offered to new backups for dedup.
//!
//! Sweep: an object marked at least the grace period ago is deleted when no
//! backup that was already running at its marking still runs (such a backup
//! may have chosen its chunks before they were marked) and its lock has
//! expired. It is forgotten by the catalog first, under the same advisory
//! lock as the marking, and only then deleted from the store: a new backup
//! can never pick a chunk that is about to disappear. Every version of the
//! key goes, including any a writer slipped on top of it.
//!
//! Last, what interrupted writes left in the store and nothing touched for
//! the grace period goes too: a killed backup's temporary files, its
//! unfinished multipart uploads, and packs it stored but could not record
//! (the catalog was gone). Such an orphan pack is deleted only when the
//! catalog knows every backup whose manifest is in the store: a catalog
//! that lost rows (restored from an old dump) must be rebuilt first, or gc
//! would take packs that backups it no longer knows still need.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Backups past their retain-until, deleted in this run.
    pub expired: Vec<Uuid>,
    pub marked: u64,
    pub unmarked: u64,
    /// Objects deleted from the store.
    pub deleted: Vec<String>,
    pub freed_bytes: u64,
    /// Marked objects whose lock has not expired yet: deleted by a later run.
    pub locked: Vec<Locked>,
    /// Marked objects within the grace period, or held by a running backup.
    pub waiting: u64,
    /// Objects forgotten by the catalog that the store refused to delete.
    pub failed: Vec<Failed>,
    /// What interrupted writes left in the store (a killed backup's
    /// temporary files, unfinished multipart uploads), untouched for the
    /// grace period, removed.
    pub abandoned: Vec<String>,
    /// Packs in the store that neither the catalog nor any backup knows,
    /// older than the grace period, deleted.
    pub orphans: Vec<String>,
    /// Why orphan packs were not looked for, when they were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphans_skipped: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Locked {
    pub key: String,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct Failed {
    pub key: String,
    pub error: String,
}

/// Runs both phases for repository `repo`.
pub async fn gc(
    store: Arc<dyn Store>,
    catalog: &Catalog,
    repo: Uuid,
    grace: chrono::Duration,
) -> Result<GcReport> {
    let marked = catalog.gc_mark(repo).await?;
    let mut report = GcReport {
        expired: marked.expired,
        marked: marked.marked,
        unmarked: marked.unmarked,
        ..GcReport::default()
    };
    let (ready, waiting) = catalog.sweepable(repo, grace).await?;
    report.waiting = waiting;
    for obj in ready {
        // The store's lock is the truth; the catalog's date is a shortcut.
        let now = Utc::now();
        if let Some(until) = obj.retain_until.filter(|u| *u > now) {
            report.locked.push(Locked {
                key: obj.key,
                until,
            });
            continue;
        }
        let (s, key, version) = (store.clone(), obj.key.clone(), obj.version_id.clone());
        let head = blocking(move || s.head_version(&key, version.as_deref())).await?;
        if let Some(until) = head
            .as_ref()
            .and_then(|h| h.retain_until)
            .filter(|u| *u > now)
        {
            report.locked.push(Locked {
                key: obj.key,
                until,
            });
            continue;
        }
        if !catalog.gc_forget(repo, &obj.key).await? {
            report.unmarked += 1;
            continue;
        }
        let (s, key) = (store.clone(), obj.key.clone());
        let deleted = blocking(move || {
            let versions = s.versions(&key)?;
            delete_versions(&*s, &key, &versions)
        })
        .await;
        match deleted {
            Ok(()) => {
                tracing::info!(key = %obj.key, "deleted");
                report.freed_bytes += obj.size.max(0) as u64;
                report.deleted.push(obj.key);
            }
            Err(e) => report.failed.push(Failed {
                key: obj.key,
                error: e.report(),
            }),
        }
    }
    // An upload writes its temporary file as it goes: one untouched for the
    // grace period belongs to no running backup.
    let (s, before) = (store.clone(), Utc::now() - grace);
    for (name, size) in blocking(move || s.remove_abandoned(before)).await? {
        tracing::info!(%name, "removed an abandoned temporary file");
        report.freed_bytes += size;
        report.abandoned.push(name);
    }
    let (s, before) = (store.clone(), Utc::now() - grace);
    for key in blocking(move || s.abort_abandoned_uploads(before)).await? {
        tracing::info!(%key, "aborted an abandoned multipart upload");
        report.abandoned.push(key);
    }
    sweep_orphans(store, catalog, repo, grace, &mut report).await?;
    Ok(report)
}

/// Deletes packs the catalog does not know, written before the grace period
/// and before every backup still running started, once their locks expired.
async fn sweep_orphans(
    store: Arc<dyn Store>,
    catalog: &Catalog,
    repo: Uuid,
    grace: chrono::Duration,
    report: &mut GcReport,
) -> Result<()> {
    let known = catalog.known_objects(repo).await?;
    let s = store.clone();
    let manifests = blocking(move || s.list("manifests/")).await?;
    let unknown: Vec<&str> = manifests
        .iter()
        .filter_map(|m| m.key.strip_prefix("manifests/"))
        .filter(|id| {
            id.parse()
                .is_ok_and(|id: Uuid| !known.backups.contains(&id))
        })
        .collect();
    if !unknown.is_empty() {
        let why = format!(
            "the store holds {} manifest(s) the catalog does not know (e.g. backup {}); \
             run `drctl catalog rebuild` so gc can tell orphans from the packs they need",
            unknown.len(),
            unknown[0]
        );
        tracing::warn!(reason = %why, "orphan packs not collected");
        report.orphans_skipped = Some(why);
        return Ok(());
    }
    let s = store.clone();
    let packs = blocking(move || s.list("packs/")).await?;
    // Old enough: written before the grace period and before every backup
    // still running started (one that started earlier may be about to
    // record it).
    let cutoff = known
        .running_since
        .iter()
        .fold(Utc::now() - grace, |c, started| c.min(*started));
    for pack in packs {
        if known.packs.contains(&pack.key) {
            continue;
        }
        let (s, key) = (store.clone(), pack.key.clone());
        // One listing of the pack's versions serves the age, the locks and
        // the deletion.
        let outcome = blocking(move || -> Result<Orphan> {
            let versions = s.versions(&key)?;
            let written = versions
                .iter()
                .find(|v| !v.delete_marker)
                .and_then(|v| v.modified);
            match written {
                None => return Ok(Orphan::Unknown),
                Some(w) if w >= cutoff => return Ok(Orphan::Young),
                Some(_) => {}
            }
            let now = Utc::now();
            let mut locked = None;
            for v in versions.iter().filter(|v| !v.delete_marker) {
                let head = s.head_version(&key, v.meta.version_id.as_deref())?;
                locked = locked.max(head.and_then(|h| h.retain_until).filter(|u| *u > now));
            }
            if let Some(until) = locked {
                return Ok(Orphan::Locked(until));
            }
            Ok(match delete_versions(&*s, &key, &versions) {
                Ok(()) => Orphan::Deleted,
                Err(e) => Orphan::Failed(e.report()),
            })
        })
        .await?;
        match outcome {
            Orphan::Unknown => {}
            Orphan::Young => report.waiting += 1,
            Orphan::Locked(until) => report.locked.push(Locked {
                key: pack.key,
                until,
            }),
            Orphan::Deleted => {
                tracing::info!(key = %pack.key, "deleted an orphan pack");
                report.freed_bytes += pack.size;
                report.orphans.push(pack.key);
            }
            Orphan::Failed(error) => report.failed.push(Failed {
                key: pack.key,
                error,
            }),
        }
    }
    Ok(())
}

/// What became of an orphan pack.
enum Orphan {
    /// The store does not say when it was written: left alone.
    Unknown,
    /// Within the grace period, or a running backup may record it.
    Young,
    Locked(DateTime<Utc>),
    Deleted,
    Failed(String),
}

/// Deletes every version of `key` listed in `versions` (delete markers
/// included), or the object itself on a store without versions.
fn delete_versions(store: &dyn Store, key: &str, versions: &[crate::store::Version]) -> Result<()> {
    if versions.is_empty() {
        return store.delete(key, None);
    }
    for v in versions {
        store.delete(key, v.meta.version_id.as_deref())?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Failed, "a storage call panicked").with_source(e))?
}
