//! Drill runs in the catalog: their reports, the backups they proved, the
//! scratch a failed run keeps, and what scheduling and metrics read.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row as _;
use uuid::Uuid;

use super::Bounded as _;
use super::{Catalog, query_error};
use crate::drill::report::{Report, TrendPoint, Verdict};
use crate::error::{Error, ErrorKind, Result};

/// One drill run, without its report.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DrillRunRow {
    pub id: Uuid,
    pub drill: String,
    pub trigger: String,
    pub job_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub verdict: String,
    pub failure_stage: Option<String>,
    pub rto_seconds: f64,
    pub rpo_seconds: f64,
    pub rto_objective_seconds: Option<f64>,
    pub rpo_objective_seconds: Option<f64>,
    pub backup_ids: Vec<Uuid>,
    pub report_key: Option<String>,
    /// Checks of the run that failed.
    pub checks_failed: i64,
}

macro_rules! run_columns {
    () => {
        "id, drill, trigger, job_id, started_at, finished_at, verdict, failure_stage, \
         rto_seconds, rpo_seconds, rto_objective_seconds, rpo_objective_seconds, backup_ids, \
         report_key, (SELECT count(*) FROM jsonb_array_elements(report->'checks') c \
           WHERE c->>'status' = 'failed') AS checks_failed"
    };
}

fn verdict(s: &str) -> Verdict {
    match s {
        "passed" => Verdict::Passed,
        "partially_failed" => Verdict::PartiallyFailed,
        _ => Verdict::Failed,
    }
}

impl Catalog {
    /// Records a finished drill, and marks the backups of a passed one
    /// verified by it, in one transaction. `scratch` is what a failed run
    /// kept, removed after `cleanup_due`.
    pub async fn record_drill(
        &self,
        repo: Uuid,
        report: &Report,
        report_key: Option<&str>,
        scratch: &[String],
        cleanup_due: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(query_error)?;
        let backups: Vec<Uuid> = report.backups.iter().map(|b| b.backup_id).collect();
        sqlx::query(
            "INSERT INTO drill_runs (id, repository_id, drill, trigger, job_id, started_at, \
               finished_at, verdict, failure_stage, rto_seconds, rpo_seconds, \
               rto_objective_seconds, rpo_objective_seconds, backup_ids, report, report_key, \
               scratch, cleanup_due_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(report.drill_id)
        .bind(repo)
        .bind(&report.drill)
        .bind(&report.trigger)
        .bind(report.job_id)
        .bind(report.started_at)
        .bind(report.finished_at)
        .bind(report.verdict.as_str())
        .bind(report.failure.as_ref().map(|f| f.stage.as_str()))
        .bind(report.rto.seconds)
        .bind(report.rpo.seconds)
        .bind(report.rto.objective_seconds)
        .bind(report.rpo.objective_seconds)
        .bind(&backups)
        .bind(serde_json::to_value(report).expect("reports serialise"))
        .bind(report_key)
        .bind(serde_json::to_value(scratch).expect("names serialise"))
        .bind(cleanup_due)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        if report.verdict == Verdict::Passed {
            sqlx::query(
                "UPDATE backups SET verified_at = $3, verified_by = $2 \
                 WHERE repository_id = $1 AND id = ANY($4)",
            )
            .bind(repo)
            .bind(report.drill_id)
            .bind(report.finished_at)
            .bind(&backups)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(query_error)?;
        }
        tx.commit().await.map_err(query_error)?;
        Ok(())
    }

    /// Drill runs, newest first; of one drill when `drill` is given.
    pub async fn drill_runs(
        &self,
        repo: Uuid,
        drill: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DrillRunRow>> {
        sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            " FROM drill_runs WHERE repository_id = $1 AND ($2::text IS NULL OR drill = $2) \
             ORDER BY started_at DESC, id DESC LIMIT $3"
        ))
        .bind(repo)
        .bind(drill)
        .bind(limit)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)
    }

    /// Runs that finished after `after` (all when `None`), oldest first: what
    /// the server's metrics have not counted yet.
    pub async fn drill_runs_after(
        &self,
        repo: Uuid,
        after: Option<DateTime<Utc>>,
    ) -> Result<Vec<DrillRunRow>> {
        sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            " FROM drill_runs WHERE repository_id = $1 AND ($2::timestamptz IS NULL OR finished_at > $2) \
             ORDER BY finished_at, id LIMIT 10000"
        ))
        .bind(repo)
        .bind(after)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)
    }

    /// The report of the run `given` names: its id, or the first or last
    /// hex digits of it (at least four).
    pub async fn drill_report(&self, repo: Uuid, given: &str) -> Result<Report> {
        let hex: String = given.chars().filter(|c| *c != '-').collect();
        if hex.len() < 4 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{given:?} is not a drill run id"),
            )
            .with_guidance("give the id `drctl drill list` prints (at least 4 hex digits)"));
        }
        let hex = hex.to_ascii_lowercase();
        let rows = sqlx::query(
            "SELECT id, report FROM drill_runs WHERE repository_id = $1 \
               AND (replace(id::text, '-', '') LIKE $2 || '%' OR replace(id::text, '-', '') LIKE '%' || $2) \
             ORDER BY started_at DESC LIMIT 2",
        )
        .bind(repo)
        .bind(&hex)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        match rows.as_slice() {
            [one] => serde_json::from_value(one.get("report")).map_err(|e| {
                Error::new(
                    ErrorKind::Integrity,
                    format!("the catalog's report of drill {given} does not parse"),
                )
                .with_source(e)
            }),
            [] => Err(Error::new(
                ErrorKind::NotFound,
                format!("no drill run {given} in the catalog"),
            )
            .with_guidance("`drctl drill list` lists the runs")),
            [a, b, ..] => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{given} names more than one drill run ({} and {})",
                    a.get::<Uuid, _>("id"),
                    b.get::<Uuid, _>("id")
                ),
            )
            .with_guidance("give more digits")),
        }
    }

    /// The last `limit` runs of `drill`, oldest first, for the trend.
    pub async fn drill_trend(
        &self,
        repo: Uuid,
        drill: &str,
        limit: i64,
    ) -> Result<Vec<TrendPoint>> {
        let mut rows = self.drill_runs(repo, Some(drill), limit).await?;
        rows.reverse();
        Ok(rows
            .into_iter()
            .map(|r| TrendPoint {
                drill_id: r.id,
                started_at: r.started_at,
                rto_seconds: r.rto_seconds,
                rpo_seconds: r.rpo_seconds,
                verdict: verdict(&r.verdict),
            })
            .collect())
    }

    /// The largest gap between consecutive complete backups named `name`
    /// that started in `[since, until]`, and when it ended.
    pub async fn max_backup_gap(
        &self,
        repo: Uuid,
        name: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<(f64, DateTime<Utc>)>> {
        let row = sqlx::query(
            "SELECT extract(epoch FROM started_at - prev)::float8 AS gap, started_at FROM ( \
               SELECT started_at, lag(started_at) OVER (ORDER BY started_at) AS prev \
               FROM backups WHERE repository_id = $1 AND name = $2 AND status = 'complete' \
                 AND deleted_at IS NULL AND started_at >= $3 AND started_at <= $4) g \
             WHERE prev IS NOT NULL ORDER BY started_at - prev DESC LIMIT 1",
        )
        .bind(repo)
        .bind(name)
        .bind(since)
        .bind(until)
        .fetch_optional(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(row.map(|r| (r.get("gap"), r.get("started_at"))))
    }

    /// The newest complete backup named `name` no passed drill has proved.
    pub async fn latest_unverified(&self, repo: Uuid, name: &str) -> Result<Option<Uuid>> {
        let row = sqlx::query(
            "SELECT id FROM backups WHERE repository_id = $1 AND name = $2 \
               AND status = 'complete' AND deleted_at IS NULL AND verified_at IS NULL \
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(repo)
        .bind(name)
        .fetch_optional(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(row.map(|r| r.get("id")))
    }

    /// Scratch kept by failed runs whose keeping time is over.
    pub async fn due_cleanups(&self, repo: Uuid) -> Result<Vec<(Uuid, Vec<String>)>> {
        let rows = sqlx::query(
            "SELECT id, scratch FROM drill_runs WHERE repository_id = $1 \
               AND cleanup_due_at IS NOT NULL AND cleanup_due_at <= now() ORDER BY cleanup_due_at",
        )
        .bind(repo)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let scratch: serde_json::Value = r.get("scratch");
                (
                    r.get("id"),
                    serde_json::from_value(scratch).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// The scratch of run `id` is gone.
    pub async fn scratch_removed(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE drill_runs SET cleanup_due_at = NULL, scratch = '[]' WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
        Ok(())
    }

    /// Keeps the newest `keep` runs of `drill` in the catalog (those with
    /// scratch still kept stay until it is removed). The reports in the
    /// bucket stay under their locks.
    pub async fn prune_drill_runs(&self, repo: Uuid, drill: &str, keep: i64) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM drill_runs WHERE repository_id = $1 AND drill = $2 \
               AND cleanup_due_at IS NULL AND id NOT IN (SELECT id FROM drill_runs \
                 WHERE repository_id = $1 AND drill = $2 ORDER BY started_at DESC LIMIT $3)",
        )
        .bind(repo)
        .bind(drill)
        .bind(keep)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(r.rows_affected())
    }
}
