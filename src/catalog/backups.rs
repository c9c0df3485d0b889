//! Backups and their items in the catalog.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::Bounded as _;
use super::{Catalog, query_error};
use crate::error::Result;

/// A backup as the catalog knows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BackupRow {
    pub id: Uuid,
    pub repository_id: Uuid,
    pub kind: String,
    pub name: String,
    pub status: String,
    pub parent_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub manifest_key: Option<String>,
    /// Its objects stay locked (and the backup kept) until then; `None`:
    /// kept until deleted.
    pub retain_until: Option<DateTime<Utc>>,
    pub stats: serde_json::Value,
    pub error: Option<String>,
    /// A volume backup's top tree (hex), from which the next one starts.
    pub tree: Option<String>,
    /// When a drill last restored it and every check passed, and which.
    pub verified_at: Option<DateTime<Utc>>,
    pub verified_by: Option<Uuid>,
}

/// The columns of [`BackupRow`], as a literal so queries stay static strings.
macro_rules! columns {
    () => {
        "id, repository_id, kind, name, status, parent_id, started_at, finished_at, \
         manifest_key, retain_until, stats, error, tree, verified_at, verified_by"
    };
}
pub(super) use columns;

/// How a backup ended, for [`Catalog::finish_backup`].
#[derive(Clone, Copy)]
pub struct BackupEnd<'a> {
    /// `complete` or `partial`.
    pub status: &'a str,
    pub manifest_key: &'a str,
    pub stats: &'a serde_json::Value,
    pub error: Option<&'a str>,
    /// Objects the backup references stay locked at least this long.
    pub retain_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The packs it references.
    pub packs: &'a [String],
    /// A volume backup's top tree.
    pub tree: Option<&'a str>,
}

/// Item rows written and not yet committed; see [`Catalog::write_items`].
pub struct PendingItems(sqlx::Transaction<'static, sqlx::Postgres>);

/// One item to record with a finished backup.
pub struct ItemRow {
    /// Unchanged since the parent backup, which has the same row: copied in
    /// the database instead of sent again.
    pub from_parent: bool,
    pub item: String,
    pub item_type: String,
    pub size: i64,
    pub attrs: serde_json::Value,
}

impl Catalog {
    /// Records a backup as running.
    pub async fn start_backup(
        &self,
        id: Uuid,
        repo: Uuid,
        kind: &str,
        name: &str,
        parent: Option<Uuid>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO backups (id, repository_id, kind, name, parent_id, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, now())",
        )
        .bind(id)
        .bind(repo)
        .bind(kind)
        .bind(name)
        .bind(parent)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        // The heartbeat: while the row is `running` and this process lives.
        // It ends by itself when the backup is marked done or failed.
        let pool = self.pool().clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(super::gc::HEARTBEAT).await;
                let beat = sqlx::query(
                    "UPDATE backups SET heartbeat_at = now() WHERE id = $1 AND status = 'running'",
                )
                .bind(id)
                .execute(&pool)
                .bounded()
                .await;
                match beat {
                    Ok(r) if r.rows_affected() == 0 => break,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(backup = %id, error = %e, "heartbeat not recorded"),
                }
            }
        });
        Ok(())
    }

    /// Writes the item rows of backup `id` in a transaction that commits
    /// only with the backup's end ([`Catalog::finish_backup`]): dropped, it
    /// rolls back. Rows unchanged since `parent` are copied inside the
    /// database rather than sent again.
    pub async fn write_items(
        &self,
        id: Uuid,
        parent: Option<Uuid>,
        items: &[ItemRow],
    ) -> Result<PendingItems> {
        let mut tx = self.pool().begin().bounded().await.map_err(query_error)?;
        let (reused, sent): (Vec<&ItemRow>, Vec<&ItemRow>) = items
            .iter()
            .partition(|i| i.from_parent && parent.is_some());
        let mut to_send = sent;
        if let Some(parent) = parent
            && !reused.is_empty()
        {
            let names: Vec<&str> = reused.iter().map(|i| i.item.as_str()).collect();
            let copied = sqlx::query(
                "INSERT INTO backup_items (backup_id, item, item_type, size, attrs) \
                 SELECT $1, item, item_type, size, attrs FROM backup_items \
                 WHERE backup_id = $2 AND item = ANY($3)",
            )
            .bind(id)
            .bind(parent)
            .bind(&names)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(query_error)?
            .rows_affected();
            if copied != reused.len() as u64 {
                // The parent lacks some rows (it should not): send them all,
                // keeping what was copied.
                to_send.extend(reused);
            }
        }
        insert_items(&mut tx, id, &to_send).await?;
        Ok(PendingItems(tx))
    }

    /// Marks backup `id` usable, with the items written before, in one
    /// transaction.
    pub async fn finish_backup(
        &self,
        items: Option<PendingItems>,
        id: Uuid,
        end: &BackupEnd<'_>,
    ) -> Result<()> {
        let BackupEnd {
            status,
            manifest_key,
            stats,
            error,
            retain_until,
            packs,
            tree,
        } = *end;
        let mut tx = match items {
            Some(items) => items.0,
            None => self.pool().begin().bounded().await.map_err(query_error)?,
        };
        sqlx::query(
            "INSERT INTO backup_packs (backup_id, repository_id, pack_key) \
             SELECT $1, repository_id, UNNEST($2::text[]) FROM backups WHERE id = $1",
        )
        .bind(id)
        .bind(packs)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        sqlx::query(
            "UPDATE backups SET status = $2, manifest_key = $3, stats = $4, error = $5, \
             retain_until = $6, tree = $7, finished_at = now() WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .bind(status)
        .bind(manifest_key)
        .bind(stats)
        .bind(error)
        .bind(retain_until)
        .bind(tree)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        tx.commit().bounded().await.map_err(query_error)
    }

    /// Adds to a finished backup's stats what is known only once its run
    /// has ended (its duration, rates), so the catalog says what the
    /// command printed.
    pub async fn merge_stats(&self, id: Uuid, more: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE backups SET stats = stats || $2 WHERE id = $1")
            .bind(id)
            .bind(more)
            .execute(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
        Ok(())
    }

    /// Marks a running backup failed. Best effort: the caller is already
    /// reporting an error.
    pub async fn fail_backup(&self, id: Uuid, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE backups SET status = 'failed', error = $2, finished_at = now() \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .bind(error)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(())
    }

    /// The newest usable backup of `kind`/`name`: the base of an incremental.
    pub async fn latest_backup(
        &self,
        repo: Uuid,
        kind: &str,
        name: &str,
    ) -> Result<Option<BackupRow>> {
        sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM backups WHERE repository_id = $1 AND kind = $2 AND name = $3 \
             AND status IN ('complete', 'partial') AND deleted_at IS NULL \
             AND (retain_until IS NULL OR retain_until > now()) \
             ORDER BY started_at DESC LIMIT 1"
        ))
        .bind(repo)
        .bind(kind)
        .bind(name)
        .fetch_optional(self.pool())
        .bounded()
        .await
        .map_err(query_error)
    }

    /// The items of one type in a backup, with their attributes as JSON
    /// text, for the caller to parse into what it stored without a detour
    /// through `serde_json::Value` (an incremental reads ten thousand of
    /// them before it starts).
    pub async fn items_of_type(
        &self,
        backup: Uuid,
        item_type: &str,
    ) -> Result<Vec<(String, String)>> {
        sqlx::query_as(
            "SELECT item, attrs::text FROM backup_items WHERE backup_id = $1 AND item_type = $2",
        )
        .bind(backup)
        .bind(item_type)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)
    }

    /// Marks `interrupted` every running backup of `repo` whose heartbeat
    /// stopped (its process is gone), with the reason; returns their ids.
    /// Run by every command that looks at backups, so none stays `running`
    /// for ever.
    pub async fn mark_interrupted(&self, repo: Uuid) -> Result<Vec<Uuid>> {
        let ids: Vec<Uuid> = sqlx::query_scalar(concat!(
            "UPDATE backups SET status = 'interrupted', \
               finished_at = COALESCE(heartbeat_at, started_at), \
               error = 'its process stopped without ending it: no heartbeat since ' || \
                 to_char(COALESCE(heartbeat_at, started_at) AT TIME ZONE 'UTC', \
                   'YYYY-MM-DD HH24:MI:SS') || ' UTC (killed, or the catalog was unreachable); \
                 nothing of it is usable, and what it stored is collected by gc' \
             WHERE repository_id = $1 AND status = 'running' \
               AND COALESCE(heartbeat_at, started_at) <= now() - interval '",
            alive_within!(),
            "' RETURNING id"
        ))
        .bind(repo)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        for id in &ids {
            tracing::warn!(backup = %id, "a running backup stopped sending heartbeats: marked interrupted");
        }
        Ok(ids)
    }

    /// The backups of `repo` that `filter` selects, oldest first.
    pub async fn list_backups(&self, repo: Uuid, filter: &ListFilter) -> Result<Vec<BackupRow>> {
        self.mark_interrupted(repo).await?;
        let mut rows: Vec<BackupRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM backups WHERE repository_id = $1 AND deleted_at IS NULL \
               AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR name = $3) \
               AND ($4::text IS NULL OR status = $4) \
               AND ($5::timestamptz IS NULL OR started_at >= $5) \
             ORDER BY started_at DESC LIMIT $6"
        ))
        .bind(repo)
        .bind(filter.kind.as_deref())
        .bind(filter.name.as_deref())
        .bind(filter.status.as_deref())
        .bind(filter.since)
        .bind(filter.latest.map_or(i64::MAX, |n| n as i64))
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        rows.reverse();
        Ok(rows)
    }

    /// One page of backups, newest first, and how many match in all: what
    /// the dashboard shows (it never reads every row).
    pub async fn backups_page(
        &self,
        repo: Uuid,
        kind: Option<&str>,
        name: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<BackupRow>, i64)> {
        let rows: Vec<BackupRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM backups WHERE repository_id = $1 AND deleted_at IS NULL \
               AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR name = $3) \
             ORDER BY started_at DESC, id DESC OFFSET $4 LIMIT $5"
        ))
        .bind(repo)
        .bind(kind)
        .bind(name)
        .bind(offset)
        .bind(limit)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM backups WHERE repository_id = $1 AND deleted_at IS NULL \
               AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR name = $3)",
        )
        .bind(repo)
        .bind(kind)
        .bind(name)
        .fetch_one(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok((rows, total))
    }

    /// What a backup holds, from its items: for a resources backup the
    /// objects per namespace (`""`: cluster-scoped) and per kind; for a
    /// volume the files, directories and other entries.
    pub async fn contents(&self, row: &BackupRow) -> Result<serde_json::Value> {
        if row.kind == "namespaces" {
            // A set: its members as they stand now (one may have been
            // deleted since), and the claims it could not back up.
            let members = self.set_members(row.id).await?;
            return Ok(serde_json::json!({
                "members": members.iter().map(|m| serde_json::json!({
                    "backup_id": m.id,
                    "kind": m.kind,
                    "name": m.name,
                    "status": m.status,
                    "node": m.stats.get("node"),
                    "volume": m.stats.get("volume"),
                    "bytes": m.stats.get("bytes"),
                })).collect::<Vec<_>>(),
                "problems": row.stats.get("problems"),
            }));
        }
        if row.kind == "resources" {
            // One pass over the items: counts per (namespace, kind).
            let groups: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT COALESCE(attrs->>'namespace', ''), COALESCE(attrs->>'kind', '?'), count(*) \
                 FROM backup_items WHERE backup_id = $1 GROUP BY 1, 2",
            )
            .bind(row.id)
            .fetch_all(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
            let mut per_ns = std::collections::BTreeMap::<String, i64>::new();
            let mut per_kind = std::collections::BTreeMap::<String, i64>::new();
            for (ns, kind, n) in groups {
                *per_ns.entry(ns).or_default() += n;
                *per_kind.entry(kind).or_default() += n;
            }
            let objects: i64 = per_ns.values().sum();
            return Ok(serde_json::json!({
                "objects": objects,
                "namespaces": per_ns,
                "types": per_kind,
            }));
        }
        if row.tree.is_some() {
            // Its listing is in the repository; the run counted it.
            let n = |k: &str| row.stats.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            return Ok(serde_json::json!({
                "files": n("files"),
                "directories": n("directories"),
                "other": n("entries").saturating_sub(n("files") + n("directories")),
            }));
        }
        let per_type: Vec<(String, i64)> = sqlx::query_as(
            "SELECT item_type, count(*) FROM backup_items WHERE backup_id = $1 GROUP BY 1",
        )
        .bind(row.id)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        let count = |t: &[&str]| -> i64 {
            per_type
                .iter()
                .filter(|(k, _)| t.contains(&k.as_str()))
                .map(|(_, n)| n)
                .sum()
        };
        Ok(serde_json::json!({
            "files": count(&["file", "block"]),
            "directories": count(&["dir"]),
            "other": count(&["symlink", "hardlink"]),
        }))
    }

    /// The backup a reference names (see [`crate::reference`]): an id, a
    /// short id or another run of its first or last digits, `NAME@latest`.
    pub async fn find_backup(&self, repo: Uuid, given: &str) -> Result<BackupRow> {
        use crate::reference::Reference;
        let reference = Reference::parse(given)?;
        self.mark_interrupted(repo).await?;
        let rows: Vec<BackupRow> = match &reference {
            Reference::Id(id) => sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM backups WHERE repository_id = $1 AND deleted_at IS NULL AND id = $2"
            ))
            .bind(repo)
            .bind(id),
            // Hex digits only (checked by the parse): nothing LIKE could
            // read as a wildcard.
            Reference::Partial(hex) => sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM backups WHERE repository_id = $1 AND deleted_at IS NULL \
                   AND (replace(id::text, '-', '') LIKE $2 || '%' \
                     OR replace(id::text, '-', '') LIKE '%' || $2) \
                 ORDER BY started_at DESC"
            ))
            .bind(repo)
            .bind(hex),
            // The newest usable backup of that name, per kind: two kinds
            // sharing a name is ambiguous.
            Reference::Latest(name) => sqlx::query_as(concat!(
                "SELECT DISTINCT ON (kind) ",
                columns!(),
                " FROM backups WHERE repository_id = $1 AND deleted_at IS NULL \
                   AND name = $2 AND status IN ('complete', 'partial') \
                 ORDER BY kind, started_at DESC"
            ))
            .bind(repo)
            .bind(name),
            Reference::At(name, at) => sqlx::query_as(concat!(
                "SELECT DISTINCT ON (kind) ",
                columns!(),
                " FROM backups WHERE repository_id = $1 AND deleted_at IS NULL \
                   AND name = $2 AND status IN ('complete', 'partial') AND started_at <= $3 \
                 ORDER BY kind, started_at DESC"
            ))
            .bind(repo)
            .bind(name)
            .bind(at),
        }
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        let candidates = rows
            .iter()
            .map(|r| {
                (
                    r.id,
                    format!(
                        "{} {} {} {}",
                        r.kind,
                        r.name,
                        r.status,
                        r.started_at.format("%Y-%m-%d %H:%M:%S")
                    ),
                )
            })
            .collect();
        let id = reference.pick(given, candidates, "the catalog")?;
        Ok(rows
            .into_iter()
            .find(|r| r.id == id)
            .expect("picked from rows"))
    }
}

/// What `backup list` selects; `None` selects everything.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Only the newest N (after the other filters).
    pub latest: Option<u64>,
}

/// Inserts item rows of backup `id` in batches (rows it has already stay).
pub(super) async fn insert_items<T: std::borrow::Borrow<ItemRow>>(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    items: &[T],
) -> Result<()> {
    for batch in items.chunks(5_000) {
        let rows = || batch.iter().map(|i| i.borrow());
        let names: Vec<&str> = rows().map(|i| i.item.as_str()).collect();
        let types: Vec<&str> = rows().map(|i| i.item_type.as_str()).collect();
        let sizes: Vec<i64> = rows().map(|i| i.size).collect();
        let attrs: Vec<&serde_json::Value> = rows().map(|i| &i.attrs).collect();
        sqlx::query(
            "INSERT INTO backup_items (backup_id, item, item_type, size, attrs) \
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::jsonb[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&names)
        .bind(&types)
        .bind(&sizes)
        .bind(&attrs)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
    }
    Ok(())
}
