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
//! Last, what interrupted writes left in the store goes too: a killed
//! backup's temporary files, its unfinished multipart uploads, and packs it
//! stored but could not record (the catalog was gone). Their age is gc's
//! own: the catalog records when gc first saw each one, and it is removed
//! once seen for the whole grace period and after every backup still
//! running started. A store's timestamps are never trusted for this (its
//! clock may be skewed). An orphan pack is deleted only when the catalog
//! knows every backup whose manifest is in the store: a catalog that lost
//! rows (restored from an old dump) must be rebuilt first, or gc would take
//! packs that backups it no longer knows still need.
//!
//! The grace period cannot be shorter than [`MIN_GRACE`]: well beyond the
//! longest a single store request may take with all its retries
//! ([`crate::store::s3::LONGEST_REQUEST`]), so an upload that is slow but
//! alive is never taken for an abandoned one.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;

/// The shortest grace period gc accepts.
pub const MIN_GRACE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const _: () = assert!(crate::store::s3::LONGEST_REQUEST.as_secs() * 3 / 2 <= MIN_GRACE.as_secs());

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
    if grace.to_std().map_or(true, |g| g < MIN_GRACE) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "a grace period of {}s is shorter than the minimum, {} minutes",
                grace.num_seconds(),
                MIN_GRACE.as_secs() / 60
            ),
        )
        .with_guidance(
            "a shorter grace could delete the work of a backup whose upload is slow but alive; \
             use --grace 15m or longer (the default is 1h)",
        ));
    }
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
    sweep_debris(store, catalog, repo, grace, &mut report).await?;
    Ok(report)
}

/// Removes what interrupted writes left (debris, orphan packs) once gc has
/// seen it for the whole grace period, after every backup still running
/// started, and its locks have expired.
async fn sweep_debris(
    store: Arc<dyn Store>,
    catalog: &Catalog,
    repo: Uuid,
    grace: chrono::Duration,
    report: &mut GcReport,
) -> Result<()> {
    let s = store.clone();
    let debris = blocking(move || s.debris()).await?;
    let orphans = orphan_packs(&store, catalog, repo, report).await?;
    let seen: Vec<String> = debris
        .iter()
        .map(|d| d.id.clone())
        .chain(orphans.iter().map(|o| o.key.clone()))
        .collect();
    let ripe: std::collections::HashSet<String> = catalog
        .sight(repo, &seen, grace)
        .await?
        .into_iter()
        .collect();
    report.waiting += (seen.len() - ripe.len()) as u64;
    for d in debris.into_iter().filter(|d| ripe.contains(&d.id)) {
        let (s, id) = (store.clone(), d.id.clone());
        match blocking(move || s.remove_debris(&id)).await {
            Ok(()) => {
                tracing::info!(id = %d.id, "removed what an interrupted write left");
                report.freed_bytes += d.size;
                report.abandoned.push(d.id);
            }
            Err(e) => report.failed.push(Failed {
                key: d.id,
                error: e.report(),
            }),
        }
    }
    for pack in orphans.into_iter().filter(|o| ripe.contains(&o.key)) {
        let (s, key) = (store.clone(), pack.key.clone());
        // One listing of the pack's versions serves the locks and the
        // deletion.
        let outcome = blocking(move || -> Result<Orphan> {
            let versions = s.versions(&key)?;
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

/// Packs in the store the catalog does not know. None when the store holds
/// manifests the catalog does not know: those backups' packs would look
/// like orphans (the reason goes into the report).
async fn orphan_packs(
    store: &Arc<dyn Store>,
    catalog: &Catalog,
    repo: Uuid,
    report: &mut GcReport,
) -> Result<Vec<crate::store::ObjectMeta>> {
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
        return Ok(Vec::new());
    }
    let s = store.clone();
    let packs = blocking(move || s.list("packs/")).await?;
    Ok(packs
        .into_iter()
        .filter(|p| !known.packs.contains(&p.key))
        .collect())
}

/// What became of an orphan pack.
enum Orphan {
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
