//! Deleting backups and the bookkeeping of garbage collection.
//!
//! A backup is *live* while it is usable (`complete` or `partial`), not
//! deleted, and not past its retain-until. Whatever no live backup
//! references is marked; a marked object is deleted only after the grace
//! period, once no backup that could have picked it for dedup before it was
//! marked is still running (see [`Catalog::sweepable`]).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Bounded as _;
use super::{BackupRow, Catalog, query_error};
use crate::error::{Error, ErrorKind, Result};

/// How often a running backup records that it is alive.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);

/// A marked object that may be deleted now, with what the catalog knows of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Sweepable {
    pub key: String,
    pub version_id: Option<String>,
    pub retain_until: Option<DateTime<Utc>>,
    pub size: i64,
}

/// What the mark phase did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Marked {
    /// Backups that reached their retain-until, now deleted.
    pub expired: Vec<Uuid>,
    /// Objects marked in this run.
    pub marked: u64,
    /// Objects marked before and referenced again: unmarked.
    pub unmarked: u64,
}

/// Serialises garbage collection of one repository (a transaction-scoped
/// advisory lock keyed by the repository).
async fn gc_lock(tx: &mut sqlx::PgConnection, repo: Uuid) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7342))")
        .bind(repo)
        .execute(tx)
        .bounded()
        .await
        .map_err(query_error)?;
    Ok(())
}

/// Packs referenced by a live backup, as an SQL condition on `p`.
macro_rules! pack_is_live {
    () => {
        "EXISTS (SELECT 1 FROM backup_packs bp JOIN backups b ON b.id = bp.backup_id \
           WHERE bp.repository_id = p.repository_id AND bp.pack_key = p.key \
             AND b.status IN ('complete', 'partial') AND b.deleted_at IS NULL \
             AND (b.retain_until IS NULL OR b.retain_until > now()))"
    };
}

impl Catalog {
    /// Deletes a backup from the catalog (its objects are left to `gc`).
    pub async fn delete_backup(&self, repo: Uuid, id: &str) -> Result<BackupRow> {
        let row = self.find_backup(repo, id).await?;
        if row.status == "running" {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "backup {} is still running (its heartbeat is fresh)",
                    row.id
                ),
            )
            .with_guidance(
                "wait for it to end; if its process is gone, it is marked interrupted \
                 within 5 minutes of its last heartbeat and can be deleted then",
            ));
        }
        // A set goes with its members.
        sqlx::query(
            "UPDATE backups SET deleted_at = now() \
             WHERE (id = $1 OR set_id = $1) AND deleted_at IS NULL",
        )
        .bind(row.id)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(row)
    }

    /// Phase one: expires backups past their retain-until, and marks every
    /// pack and manifest no live backup references (unmarking those
    /// referenced again).
    pub async fn gc_mark(&self, repo: Uuid) -> Result<Marked> {
        self.mark_interrupted(repo).await?;
        let mut tx = self.pool().begin().bounded().await.map_err(query_error)?;
        gc_lock(&mut tx, repo).await?;
        let expired: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE backups SET deleted_at = now() WHERE repository_id = $1 AND deleted_at IS NULL \
             AND status IN ('complete', 'partial') AND retain_until <= now() RETURNING id",
        )
        .bind(repo)
        .fetch_all(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        // A deleted backup references nothing.
        sqlx::query(
            "DELETE FROM backup_packs WHERE backup_id IN \
             (SELECT id FROM backups WHERE repository_id = $1 AND deleted_at IS NOT NULL)",
        )
        .bind(repo)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        let unmarked = sqlx::query(concat!(
            "DELETE FROM gc_candidates c USING packs p WHERE c.repository_id = $1 \
             AND p.repository_id = c.repository_id AND p.key = c.key AND ",
            pack_is_live!()
        ))
        .bind(repo)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?
        .rows_affected();
        let packs = sqlx::query(concat!(
            "INSERT INTO gc_candidates (repository_id, key) \
             SELECT p.repository_id, p.key FROM packs p WHERE p.repository_id = $1 AND NOT ",
            pack_is_live!(),
            " ON CONFLICT DO NOTHING"
        ))
        .bind(repo)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?
        .rows_affected();
        // Failed backups may have no manifest; deleted ones leave theirs.
        let manifests = sqlx::query(
            "INSERT INTO gc_candidates (repository_id, key) \
             SELECT repository_id, manifest_key FROM backups \
             WHERE repository_id = $1 AND deleted_at IS NOT NULL AND manifest_key IS NOT NULL \
             ON CONFLICT DO NOTHING",
        )
        .bind(repo)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?
        .rows_affected();
        tx.commit().bounded().await.map_err(query_error)?;
        Ok(Marked {
            expired,
            marked: packs + manifests,
            unmarked,
        })
    }

    /// Phase two's list: objects marked at least `grace` ago, when no backup
    /// that was running at their marking (and so may have chosen them for
    /// dedup) still runs. Returns them and the number still in their grace
    /// period or held back by a running backup.
    pub async fn sweepable(
        &self,
        repo: Uuid,
        grace: chrono::Duration,
    ) -> Result<(Vec<Sweepable>, u64)> {
        let all: i64 =
            sqlx::query_scalar("SELECT count(*) FROM gc_candidates WHERE repository_id = $1")
                .bind(repo)
                .fetch_one(self.pool())
                .bounded()
                .await
                .map_err(query_error)?;
        let ready: Vec<Sweepable> = sqlx::query_as(concat!(
            "SELECT c.key, COALESCE(p.version_id, o.version_id) AS version_id, \
               COALESCE(p.retain_until, o.retain_until) AS retain_until, \
               COALESCE(p.size, o.size, 0) AS size \
             FROM gc_candidates c \
             LEFT JOIN packs p ON p.repository_id = c.repository_id AND p.key = c.key \
             LEFT JOIN objects o ON o.repository_id = c.repository_id AND o.key = c.key \
             WHERE c.repository_id = $1 AND c.marked_at <= now() - $2 AND NOT ",
            held_by_live_backup!("c.marked_at"),
            " ORDER BY c.key"
        ))
        .bind(repo)
        .bind(grace)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        let waiting = (all as u64).saturating_sub(ready.len() as u64);
        Ok((ready, waiting))
    }

    /// Forgets a marked object before it is deleted from the store, if it is
    /// still unreferenced; returns whether it was. A swept manifest takes
    /// its deleted backup's rows with it.
    pub async fn gc_forget(&self, repo: Uuid, key: &str) -> Result<bool> {
        let mut tx = self.pool().begin().bounded().await.map_err(query_error)?;
        gc_lock(&mut tx, repo).await?;
        let live: bool = sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM packs p WHERE p.repository_id = $1 AND p.key = $2 AND ",
            pack_is_live!(),
            ") OR EXISTS (SELECT 1 FROM backups WHERE repository_id = $1 AND manifest_key = $2 \
               AND deleted_at IS NULL)"
        ))
        .bind(repo)
        .bind(key)
        .fetch_one(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        let still_marked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM gc_candidates WHERE repository_id = $1 AND key = $2)",
        )
        .bind(repo)
        .bind(key)
        .fetch_one(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        if live || !still_marked {
            sqlx::query("DELETE FROM gc_candidates WHERE repository_id = $1 AND key = $2")
                .bind(repo)
                .bind(key)
                .execute(&mut *tx)
                .bounded()
                .await
                .map_err(query_error)?;
            tx.commit().bounded().await.map_err(query_error)?;
            return Ok(false);
        }
        for sql in [
            "DELETE FROM chunks WHERE repository_id = $1 AND pack_key = $2",
            "DELETE FROM backup_packs WHERE repository_id = $1 AND pack_key = $2",
            "DELETE FROM packs WHERE repository_id = $1 AND key = $2",
            "DELETE FROM objects WHERE repository_id = $1 AND key = $2",
            "UPDATE backups SET parent_id = NULL WHERE parent_id IN \
               (SELECT id FROM backups WHERE repository_id = $1 AND manifest_key = $2)",
            "DELETE FROM backups WHERE repository_id = $1 AND manifest_key = $2 \
               AND deleted_at IS NOT NULL",
            "DELETE FROM gc_candidates WHERE repository_id = $1 AND key = $2",
        ] {
            sqlx::query(sql)
                .bind(repo)
                .bind(key)
                .execute(&mut *tx)
                .bounded()
                .await
                .map_err(query_error)?;
        }
        tx.commit().bounded().await.map_err(query_error)?;
        Ok(true)
    }

    /// Records that gc saw `keys` (debris and orphan packs) in the store
    /// now, forgets sightings of keys no longer among them, and returns the
    /// keys that are ripe: first seen at least `grace` ago, and seen after
    /// every backup still running started (one that started earlier may be
    /// about to complete or record them).
    pub async fn sight(
        &self,
        repo: Uuid,
        keys: &[String],
        grace: chrono::Duration,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool().begin().bounded().await.map_err(query_error)?;
        gc_lock(&mut tx, repo).await?;
        sqlx::query("DELETE FROM gc_sightings WHERE repository_id = $1 AND NOT (key = ANY($2))")
            .bind(repo)
            .bind(keys)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(query_error)?;
        sqlx::query(
            "INSERT INTO gc_sightings (repository_id, key) SELECT $1, unnest($2::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(repo)
        .bind(keys)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        let ripe: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT s.key FROM gc_sightings s \
             WHERE s.repository_id = $1 AND s.first_seen_at <= now() - $2 AND NOT ",
            held_by_live_backup!("s.first_seen_at"),
            " ORDER BY s.key"
        ))
        .bind(repo)
        .bind(grace)
        .fetch_all(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        tx.commit().bounded().await.map_err(query_error)?;
        Ok(ripe)
    }

    /// What the catalog knows, for finding orphans in the store: every pack
    /// key it records and every backup id it has a row for (any status).
    pub async fn known_objects(&self, repo: Uuid) -> Result<KnownObjects> {
        let packs: Vec<String> =
            sqlx::query_scalar("SELECT key FROM packs WHERE repository_id = $1")
                .bind(repo)
                .fetch_all(self.pool())
                .bounded()
                .await
                .map_err(query_error)?;
        let backups: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM backups WHERE repository_id = $1")
                .bind(repo)
                .fetch_all(self.pool())
                .bounded()
                .await
                .map_err(query_error)?;
        Ok(KnownObjects {
            packs: packs.into_iter().collect(),
            backups: backups.into_iter().collect(),
        })
    }
}

/// See [`Catalog::known_objects`].
#[derive(Debug, Default)]
pub struct KnownObjects {
    pub packs: std::collections::HashSet<String>,
    pub backups: std::collections::HashSet<Uuid>,
}
