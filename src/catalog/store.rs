//! Repositories, packs and chunks in the catalog.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::Bounded as _;
use super::{Catalog, query_error};
use crate::error::Result;
use crate::repo::manifest::ChunkLocation;
use crate::repo::pack::IndexEntry;
use crate::repo::{ChunkId, RepoConfig};
use crate::store::ObjectMeta;

impl Catalog {
    /// Registers the repository (idempotent) and returns its id.
    pub async fn ensure_repository(&self, config: &RepoConfig, location: &str) -> Result<Uuid> {
        // Any conflict, not only on the id: processes starting together
        // (agents, replicas) insert the same row at once, and a conflict
        // on the location index is then the other's row, not an error.
        sqlx::query(
            "INSERT INTO repositories (id, location, format_version) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(config.id)
        .bind(location)
        .bind(config.format_version as i32)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        let known: Option<Uuid> = sqlx::query_scalar("SELECT id FROM repositories WHERE id = $1")
            .bind(config.id)
            .fetch_optional(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
        if known.is_none() {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::Config,
                format!(
                    "the catalog records another repository at {location} (not {})",
                    config.id
                ),
            )
            .with_guidance(
                "the bucket was initialised again under the same location; point catalog.url at \
                 this repository's catalog, or rebuild one from the bucket (`drctl catalog rebuild`)",
            ));
        }
        Ok(config.id)
    }

    /// The id of the repository the catalog records at `location`, if any:
    /// what lets catalog-only commands (`backup list`) run without the
    /// object store.
    pub async fn repository_at(&self, location: &str) -> Result<Option<Uuid>> {
        sqlx::query_scalar("SELECT id FROM repositories WHERE location = $1")
            .bind(location)
            .fetch_optional(self.pool())
            .bounded()
            .await
            .map_err(query_error)
    }

    /// Of `ids`, those the repository holds and gc will not delete (their
    /// pack is no candidate): the dedup check, one query per batch.
    pub async fn stored_chunks(&self, repo: Uuid, ids: &[ChunkId]) -> Result<HashSet<ChunkId>> {
        let mut out = HashSet::new();
        for batch in ids.chunks(10_000) {
            let keys: Vec<Vec<u8>> = batch.iter().map(|c| c.0.to_vec()).collect();
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT id FROM chunks WHERE repository_id = $1 AND id = ANY($2) AND pack_key NOT IN \
                     (SELECT key FROM gc_candidates WHERE repository_id = $1)",
            )
            .bind(repo)
            .bind(&keys)
            .fetch_all(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
            out.extend(
                rows.into_iter()
                    .filter_map(|r| r.try_into().ok().map(ChunkId)),
            );
        }
        Ok(out)
    }

    /// Of `ids`, those the catalog knows, with the pack holding each.
    pub async fn packs_of(&self, repo: Uuid, ids: &[ChunkId]) -> Result<Vec<(ChunkId, String)>> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|c| c.0.to_vec()).collect();
        let rows: Vec<(Vec<u8>, String)> = sqlx::query_as(
            "SELECT id, pack_key FROM chunks WHERE repository_id = $1 AND id = ANY($2)",
        )
        .bind(repo)
        .bind(&keys)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, p)| id.try_into().ok().map(|id| (ChunkId(id), p)))
            .collect())
    }

    /// Records a stored pack and the chunks of its index, in one
    /// transaction: after a backup stores it, or when a rebuild finds it in
    /// the bucket. A pack the catalog has already keeps its row; only a later
    /// lock end, or a version or lock mode it lacked, is taken from `meta`.
    /// Chunks it has already keep their location. Returns the number of
    /// chunk rows added.
    pub async fn record_pack(
        &self,
        repo: Uuid,
        meta: &ObjectMeta,
        sha256: &[u8; 32],
        index: &[IndexEntry],
    ) -> Result<u64> {
        let key = meta.key.as_str();
        let mut tx = self.pool().begin().bounded().await.map_err(query_error)?;
        sqlx::query(
            "INSERT INTO packs (repository_id, key, size, sha256, version_id, lock_mode, retain_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (repository_id, key) DO UPDATE SET \
               retain_until = GREATEST(packs.retain_until, EXCLUDED.retain_until), \
               version_id = COALESCE(packs.version_id, EXCLUDED.version_id), \
               lock_mode = COALESCE(packs.lock_mode, EXCLUDED.lock_mode)",
        )
        .bind(repo)
        .bind(key)
        .bind(meta.size as i64)
        .bind(&sha256[..])
        .bind(&meta.version_id)
        .bind(&meta.lock_mode)
        .bind(meta.retain_until)
        .execute(&mut *tx)
        .bounded().await
        .map_err(query_error)?;
        let mut added = 0;
        for batch in index.chunks(10_000) {
            let ids: Vec<Vec<u8>> = batch.iter().map(|e| e.id.0.to_vec()).collect();
            let offsets: Vec<i32> = batch.iter().map(|e| e.offset as i32).collect();
            let lengths: Vec<i32> = batch.iter().map(|e| e.length as i32).collect();
            let raws: Vec<i32> = batch.iter().map(|e| e.raw_length as i32).collect();
            added += sqlx::query(
                "INSERT INTO chunks (repository_id, id, pack_key, pack_offset, stored_length, raw_length) \
                 SELECT $1, u.id, $2, u.o, u.l, u.r \
                 FROM UNNEST($3::bytea[], $4::int[], $5::int[], $6::int[]) AS u(id, o, l, r) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(repo)
            .bind(key)
            .bind(&ids)
            .bind(&offsets)
            .bind(&lengths)
            .bind(&raws)
            .execute(&mut *tx)
            .bounded().await
            .map_err(query_error)?
            .rows_affected();
        }
        tx.commit().bounded().await.map_err(query_error)?;
        Ok(added)
    }

    /// Records an object that is not a pack (config, keys, a manifest), or
    /// its lock's new end.
    pub async fn record_object(
        &self,
        repo: Uuid,
        meta: &ObjectMeta,
        sha256: &[u8; 32],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO objects (repository_id, key, size, sha256, version_id, lock_mode, retain_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (repository_id, key) DO UPDATE SET \
               retain_until = GREATEST(objects.retain_until, EXCLUDED.retain_until), \
               version_id = COALESCE(objects.version_id, EXCLUDED.version_id), \
               lock_mode = COALESCE(objects.lock_mode, EXCLUDED.lock_mode)",
        )
        .bind(repo)
        .bind(&meta.key)
        .bind(meta.size as i64)
        .bind(&sha256[..])
        .bind(&meta.version_id)
        .bind(&meta.lock_mode)
        .bind(meta.retain_until)
        .execute(self.pool())
        .bounded().await
        .map_err(query_error)?;
        Ok(())
    }

    /// Every object recorded for the repository, with the latest
    /// retain-until of the usable backups that need it, sorted by key.
    pub async fn recorded_objects(
        &self,
        repo: Uuid,
    ) -> Result<Vec<crate::verify::storage::Recorded>> {
        sqlx::query_as(
            "SELECT p.key, p.size, p.sha256, p.version_id, p.lock_mode, p.retain_until, \
               (SELECT max(b.retain_until) FROM backup_packs bp JOIN backups b ON b.id = bp.backup_id \
                 WHERE bp.repository_id = p.repository_id AND bp.pack_key = p.key \
                   AND b.status IN ('complete', 'partial')) AS needed_until \
             FROM packs p WHERE p.repository_id = $1 \
             UNION ALL \
             SELECT o.key, o.size, o.sha256, o.version_id, o.lock_mode, o.retain_until, \
               (SELECT max(b.retain_until) FROM backups b WHERE b.repository_id = o.repository_id \
                 AND b.manifest_key = o.key AND b.status IN ('complete', 'partial')) \
             FROM objects o WHERE o.repository_id = $1 \
             ORDER BY 1",
        )
        .bind(repo)
        .fetch_all(self.pool())
        .bounded().await
        .map_err(query_error)
    }

    /// Records that a pack's lock now lasts until `until` (never earlier
    /// than recorded).
    pub async fn pack_locked_until(
        &self,
        repo: Uuid,
        key: &str,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE packs SET retain_until = GREATEST(COALESCE(retain_until, $3), $3) \
             WHERE repository_id = $1 AND key = $2",
        )
        .bind(repo)
        .bind(key)
        .bind(until)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(())
    }

    /// Locations of `ids`, in batches (not one query per chunk).
    pub async fn chunk_locations(
        &self,
        repo: Uuid,
        ids: &[ChunkId],
    ) -> Result<HashMap<ChunkId, ChunkLocation>> {
        let mut out = HashMap::with_capacity(ids.len());
        for batch in ids.chunks(10_000) {
            let keys: Vec<Vec<u8>> = batch.iter().map(|c| c.0.to_vec()).collect();
            let rows: Vec<(Vec<u8>, String, i32, i32, i32)> = sqlx::query_as(
                "SELECT id, pack_key, pack_offset, stored_length, raw_length FROM chunks \
                 WHERE repository_id = $1 AND id = ANY($2)",
            )
            .bind(repo)
            .bind(&keys)
            .fetch_all(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
            for (id, pack, offset, length, raw) in rows {
                let Ok(id) = id.try_into().map(ChunkId) else {
                    continue;
                };
                out.insert(
                    id,
                    ChunkLocation {
                        id,
                        pack,
                        offset: offset as u32,
                        length: length as u32,
                        raw_length: raw as u32,
                    },
                );
            }
        }
        Ok(out)
    }
}
