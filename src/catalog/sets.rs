//! Namespace backup sets and the volume jobs of node agents.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row as _;
use uuid::Uuid;

use super::Bounded as _;
use super::{BackupRow, Catalog, Claim, query_error};
use crate::error::Result;

/// A volume job of a set, as the set's coordinator follows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeJob {
    pub id: Uuid,
    pub node: String,
    pub state: String,
    pub reason: Option<String>,
    pub attempt: i32,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub backup_id: Option<Uuid>,
    pub params: serde_json::Value,
}

impl Catalog {
    /// Queues a job of `kind` (`volume`, `volume-restore`) for the agent of
    /// `node`. `key` names it uniquely (`<set id>/<namespace>/<claim>`).
    pub async fn enqueue_node_job(
        &self,
        repo: Uuid,
        kind: &str,
        node: &str,
        key: &str,
        params: &serde_json::Value,
    ) -> Result<Uuid> {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO jobs (id, repository_id, kind, schedule, scheduled_for, trigger, state, \
               node, params) VALUES ($1, $2, $6, $3, now(), 'set', 'queued', $4, $5)",
        )
        .bind(id)
        .bind(repo)
        .bind(key)
        .bind(node)
        .bind(params)
        .bind(kind)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(id)
    }

    /// Claims the oldest queued job of `node` (a backup or a restore), for `ttl`, with its
    /// parameters.
    pub async fn claim_node_job(
        &self,
        repo: Uuid,
        owner: &str,
        node: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<(Claim, serde_json::Value)>> {
        let Some(claim) = self
            .claim_job_on(repo, owner, &["volume", "volume-restore"], Some(node), ttl)
            .await?
        else {
            return Ok(None);
        };
        let params = sqlx::query_scalar("SELECT params FROM jobs WHERE id = $1")
            .bind(claim.job.id)
            .fetch_one(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
        Ok(Some((claim, params)))
    }

    /// The volume jobs of `ids`, as they stand.
    pub async fn node_jobs(&self, ids: &[Uuid]) -> Result<Vec<NodeJob>> {
        let rows = sqlx::query(
            "SELECT id, node, state, reason, attempt, queued_at, started_at, finished_at, \
               backup_id, params \
             FROM jobs WHERE id = ANY($1) ORDER BY queued_at, id",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(rows
            .iter()
            .map(|r| NodeJob {
                id: r.get("id"),
                node: r.get("node"),
                state: r.get("state"),
                reason: r.get("reason"),
                attempt: r.get("attempt"),
                queued_at: r.get("queued_at"),
                started_at: r.get("started_at"),
                finished_at: r.get("finished_at"),
                backup_id: r.get("backup_id"),
                params: r.get("params"),
            })
            .collect())
    }

    /// Gives up on a volume job (fails it with `reason`): one no agent
    /// claimed, or the running ones when the set's time is up; false when
    /// it had ended meanwhile.
    pub async fn abandon_node_job(&self, id: Uuid, reason: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'failed', reason = $2, finished_at = now(), \
               key_offer = NULL, key_grant = NULL \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .bind(reason)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(r.rows_affected() == 1)
    }

    /// Makes backup `id` a member of set `set`, and adds `facts` (the claim
    /// it holds, its volume, node) to its stats.
    pub async fn join_set(&self, id: Uuid, set: Uuid, facts: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE backups SET set_id = $2, stats = stats || $3 WHERE id = $1")
            .bind(id)
            .bind(set)
            .bind(facts)
            .execute(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
        Ok(())
    }

    /// The members of set `set`.
    pub async fn set_members(&self, set: Uuid) -> Result<Vec<BackupRow>> {
        sqlx::query_as(concat!(
            "SELECT ",
            super::backups::columns!(),
            " FROM backups WHERE set_id = $1 AND deleted_at IS NULL ORDER BY kind DESC, name"
        ))
        .bind(set)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)
    }

    /// A restore job's agent offers `recipient`, a key made for this job
    /// alone, for the plaintexts the job needs (fenced by the lease).
    pub async fn offer_key(&self, claim: &Claim, recipient: &str) -> Result<()> {
        let r = sqlx::query(
            "UPDATE jobs SET key_offer = $3, key_grant = NULL \
             WHERE id = $1 AND lease_generation = $2 AND state = 'running'",
        )
        .bind(claim.job.id)
        .bind(claim.generation)
        .bind(recipient)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        if r.rows_affected() == 0 {
            return Err(super::jobs::lost(&format!("job {}", claim.job.id)));
        }
        Ok(())
    }

    /// The grant the coordinator left for a claimed restore job, once there.
    pub async fn key_grant(&self, claim: &Claim) -> Result<Option<Vec<u8>>> {
        let grant: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "SELECT key_grant FROM jobs \
             WHERE id = $1 AND lease_generation = $2 AND state = 'running'",
        )
        .bind(claim.job.id)
        .bind(claim.generation)
        .fetch_optional(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        match grant {
            Some(g) => Ok(g),
            None => Err(super::jobs::lost(&format!("job {}", claim.job.id))),
        }
    }

    /// The restore jobs of `ids` whose agent offered a key not answered yet:
    /// (job, lease generation, recipient).
    pub async fn open_offers(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, i64, String)>> {
        sqlx::query_as(
            "SELECT id, lease_generation, key_offer FROM jobs WHERE id = ANY($1) \
               AND state = 'running' AND key_offer IS NOT NULL AND key_grant IS NULL",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)
    }

    /// Answers an offer with `grant` (encrypted to the offered key); a no-op
    /// when the job has moved on (another attempt, another key).
    pub async fn answer_offer(
        &self,
        id: Uuid,
        generation: i64,
        recipient: &str,
        grant: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET key_grant = $4 WHERE id = $1 AND lease_generation = $2 \
               AND key_offer = $3 AND state = 'running'",
        )
        .bind(id)
        .bind(generation)
        .bind(recipient)
        .bind(grant)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(())
    }
}
