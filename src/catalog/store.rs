//! Repositories, packs and chunks in the catalog.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{Catalog, query_error};
use crate::error::Result;
use crate::repo::manifest::ChunkLocation;
use crate::repo::pack::IndexEntry;
use crate::repo::{ChunkId, RepoConfig};

impl Catalog {
    /// Registers the repository (idempotent) and returns its id.
    pub async fn ensure_repository(&self, config: &RepoConfig, location: &str) -> Result<Uuid> {
        sqlx::query(
            "INSERT INTO repositories (id, location, format_version) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(config.id)
        .bind(location)
        .bind(config.format_version as i32)
        .execute(self.pool())
        .await
        .map_err(query_error)?;
        Ok(config.id)
    }

    /// Every chunk id the repository has: the dedup index, in one query.
    pub async fn known_chunks(&self, repo: Uuid) -> Result<HashSet<ChunkId>> {
        let rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT id FROM chunks WHERE repository_id = $1")
                .bind(repo)
                .fetch_all(self.pool())
                .await
                .map_err(query_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.try_into().ok().map(ChunkId))
            .collect())
    }

    /// Records a stored pack and its chunks, in one transaction.
    pub async fn record_pack(
        &self,
        repo: Uuid,
        key: &str,
        size: u64,
        sha256: &[u8; 32],
        index: &[IndexEntry],
    ) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(query_error)?;
        sqlx::query(
            "INSERT INTO packs (repository_id, key, size, sha256) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(repo)
        .bind(key)
        .bind(size as i64)
        .bind(&sha256[..])
        .execute(&mut *tx)
        .await
        .map_err(query_error)?;
        let ids: Vec<Vec<u8>> = index.iter().map(|e| e.id.0.to_vec()).collect();
        let offsets: Vec<i32> = index.iter().map(|e| e.offset as i32).collect();
        let lengths: Vec<i32> = index.iter().map(|e| e.length as i32).collect();
        let raws: Vec<i32> = index.iter().map(|e| e.raw_length as i32).collect();
        sqlx::query(
            "INSERT INTO chunks (repository_id, id, pack_key, pack_offset, stored_length, raw_length) \
             SELECT $1, * FROM UNNEST($2::bytea[], $3::text[], $4::int[], $5::int[], $6::int[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(repo)
        .bind(&ids)
        .bind(vec![key.to_string(); index.len()])
        .bind(&offsets)
        .bind(&lengths)
        .bind(&raws)
        .execute(&mut *tx)
        .await
        .map_err(query_error)?;
        tx.commit().await.map_err(query_error)
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
