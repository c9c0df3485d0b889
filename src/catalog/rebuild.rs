//! The SQL of `drctl catalog rebuild` ([`crate::rebuild`]): rows read back
//! from the bucket, merged into the catalog without duplicating or changing
//! what it already holds.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Bounded as _;
use super::{Catalog, ItemRow, query_error};
use crate::error::Result;

/// A backup as its manifest describes it, for [`Catalog::rebuild_backup`].
pub struct RebuiltBackup<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub name: &'a str,
    /// `complete` or `partial`.
    pub status: &'a str,
    pub parent: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The lock of the manifest object (`None` without locks).
    pub retain_until: Option<DateTime<Utc>>,
    pub manifest_key: &'a str,
    pub stats: &'a serde_json::Value,
    pub error: Option<&'a str>,
    /// The packs it references (only packs the catalog has are linked).
    pub packs: &'a [String],
    /// A volume backup's top tree (hex).
    pub tree: Option<&'a str>,
}

/// The garbage-collection lock of a repository, held by a rebuild for as
/// long as it runs (see [`Catalog::hold_gc_lock`]).
pub struct GcLock(Option<sqlx::PgConnection>);

impl GcLock {
    /// Releases the lock. Dropping it does too: the connection closes, and
    /// PostgreSQL releases the session's locks.
    pub async fn release(mut self) -> Result<()> {
        if let Some(mut conn) = self.0.take() {
            sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut conn)
                .bounded()
                .await
                .map_err(query_error)?;
            sqlx::Connection::close(conn)
                .bounded()
                .await
                .map_err(query_error)?;
        }
        Ok(())
    }
}

impl Catalog {
    /// Takes the repository's garbage-collection lock for a session: `gc`
    /// (marking, forgetting) waits until it is released.
    /// A rebuild records packs before the backups that reference them; a
    /// `gc` in between would see those packs unreferenced and, on a store
    /// without locks, could delete them. The key is the one `gc` takes per
    /// transaction (`catalog::gc`); session and transaction advisory locks on
    /// one key exclude each other. Waits while a `gc` transaction runs.
    pub async fn hold_gc_lock(&self, repo: Uuid) -> Result<GcLock> {
        let mut conn = self
            .pool()
            .acquire()
            .bounded()
            .await
            .map_err(query_error)?
            .detach();
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1::text, 7342))")
            .bind(repo)
            .execute(&mut conn)
            .bounded()
            .await
            .map_err(query_error)?;
        Ok(GcLock(Some(conn)))
    }

    /// Ids of the backups the catalog has for `repo`, whatever their status.
    pub async fn backup_ids(&self, repo: Uuid) -> Result<HashSet<Uuid>> {
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM backups WHERE repository_id = $1")
            .bind(repo)
            .fetch_all(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
        Ok(ids.into_iter().collect())
    }

    /// Records a backup read from its manifest, with its items and the packs
    /// it references, in one transaction, unless the catalog has a backup
    /// with this id already (then nothing is changed and `false` returned).
    /// A parent the catalog does not have is recorded as none.
    pub async fn rebuild_backup(
        &self,
        repo: Uuid,
        b: &RebuiltBackup<'_>,
        items: &[ItemRow],
    ) -> Result<bool> {
        let mut tx = self.pool().begin().bounded().await.map_err(query_error)?;
        let inserted = sqlx::query(
            "INSERT INTO backups (id, repository_id, kind, name, status, parent_id, started_at, \
               finished_at, retain_until, manifest_key, stats, error, tree) \
             VALUES ($1, $2, $3, $4, $5, \
               (SELECT id FROM backups WHERE id = $6 AND repository_id = $2), \
               $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(b.id)
        .bind(repo)
        .bind(b.kind)
        .bind(b.name)
        .bind(b.status)
        .bind(b.parent)
        .bind(b.started_at)
        .bind(b.finished_at)
        .bind(b.retain_until)
        .bind(b.manifest_key)
        .bind(b.stats)
        .bind(b.error)
        .bind(b.tree)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().bounded().await.map_err(query_error)?;
            return Ok(false);
        }
        super::backups::insert_items(&mut tx, b.id, items).await?;
        sqlx::query(LINK_PACKS)
            .bind(b.id)
            .bind(repo)
            .bind(b.packs)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(query_error)?;
        tx.commit().bounded().await.map_err(query_error)?;
        Ok(true)
    }

    /// Links a usable, not deleted backup the catalog has to those of
    /// `packs` it is not linked to yet (and the catalog has). Adds rows only.
    pub async fn link_backup_packs(
        &self,
        repo: Uuid,
        backup: Uuid,
        packs: &[String],
    ) -> Result<u64> {
        Ok(sqlx::query(LINK_PACKS)
            .bind(backup)
            .bind(repo)
            .bind(packs)
            .execute(self.pool())
            .bounded()
            .await
            .map_err(query_error)?
            .rows_affected())
    }
}

/// `backup_packs` rows for backup `$1` of repository `$2` and the packs `$3`
/// that the catalog has, when the backup is usable and not deleted (gc
/// unlinks deleted backups from their packs).
const LINK_PACKS: &str = "INSERT INTO backup_packs (backup_id, repository_id, pack_key) \
     SELECT $1, $2, k FROM UNNEST($3::text[]) AS k \
     WHERE EXISTS (SELECT 1 FROM packs p WHERE p.repository_id = $2 AND p.key = k) \
       AND EXISTS (SELECT 1 FROM backups b WHERE b.id = $1 AND b.repository_id = $2 \
         AND b.status IN ('complete', 'partial') AND b.deleted_at IS NULL) \
     ON CONFLICT DO NOTHING";
