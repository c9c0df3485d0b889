//! The control plane's tables: schedules mirrored from the configuration,
//! the job queue, and leases.
//!
//! The queue is a table claimed with `FOR UPDATE SKIP LOCKED`: any number
//! of workers, no broker. A claim takes a lease (an expiry, renewed by
//! heartbeats) and a new generation; every later write of the worker names
//! that generation, so one that lost its lease (paused, partitioned, its
//! job handed to another) changes nothing. All times are the database's.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{Bounded, Catalog, query_error};
use crate::error::{Error, ErrorKind, Result};
use crate::schedule::{Cursor, Decision, ScheduleSpec};

/// A schedule as the catalog holds it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub spec: ScheduleSpec,
    /// Paused in the configuration or from the CLI.
    pub paused: bool,
    pub paused_by: Option<String>,
    pub last_slot: Option<DateTime<Utc>>,
    pub removed_at: Option<DateTime<Utc>>,
}

/// A job row.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: Uuid,
    pub kind: String,
    pub schedule: Option<String>,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    pub state: String,
    pub reason: Option<String>,
    pub attempt: i32,
    pub lease_owner: Option<String>,
    #[serde(skip)]
    pub lease_generation: i64,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub backup_id: Option<Uuid>,
    pub result: Option<serde_json::Value>,
}

/// The columns `job_row` reads, spliced into queries with `concat!` so the
/// SQL stays a `&'static str` that sqlx accepts without an audit wrapper.
macro_rules! job_columns {
    () => {
        "id, kind, schedule, scheduled_for, trigger, state, reason, attempt, \
         lease_owner, lease_generation, queued_at, started_at, finished_at, backup_id, result"
    };
}

fn job_row(r: &sqlx::postgres::PgRow) -> JobRow {
    JobRow {
        id: r.get("id"),
        kind: r.get("kind"),
        schedule: r.get("schedule"),
        scheduled_for: r.get("scheduled_for"),
        trigger: r.get("trigger"),
        state: r.get("state"),
        reason: r.get("reason"),
        attempt: r.get("attempt"),
        lease_owner: r.get("lease_owner"),
        lease_generation: r.get("lease_generation"),
        queued_at: r.get("queued_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        backup_id: r.get("backup_id"),
        result: r.get("result"),
    }
}

/// What one tick decided for one schedule.
#[derive(Debug, Clone)]
pub struct Tick {
    pub schedule: String,
    pub decisions: Vec<Decision>,
    pub cursor: Cursor,
}

/// A claimed job: the row and the lease generation that fences its writes.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: JobRow,
    pub generation: i64,
    pub owner: String,
}

/// A lease held: its generation fences the holder's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub generation: i64,
}

/// The lease lost: another holder took it, or it expired.
pub(super) fn lost(what: &str) -> Error {
    Error::new(
        ErrorKind::Failed,
        format!("{what}: the lease was lost (expired or taken by another replica)"),
    )
}

impl Catalog {
    // --- Schedules ---------------------------------------------------------

    /// Mirrors the configured schedules: new ones are created (their cursor
    /// per `skip_immediately`), changed ones updated, ones no longer
    /// configured marked removed (history kept). Returns the names created,
    /// updated and removed.
    pub async fn sync_schedules(
        &self,
        repo: Uuid,
        specs: &[ScheduleSpec],
        now: DateTime<Utc>,
    ) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let mut tx = self.pool().begin().bounded().await.map_err(query_error)?;
        let existing = sqlx::query(
            "SELECT name, spec, removed_at FROM schedules WHERE repository_id = $1 FOR UPDATE",
        )
        .bind(repo)
        .fetch_all(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        let mut created = Vec::new();
        let mut updated = Vec::new();
        let mut removed = Vec::new();
        for spec in specs {
            let json = serde_json::to_value(spec).expect("a spec serialises");
            let old = existing
                .iter()
                .find(|r| r.get::<String, _>("name") == spec.name);
            match old {
                None => {
                    let cursor = Cursor::activated(spec, now);
                    sqlx::query(
                        "INSERT INTO schedules (repository_id, name, spec, last_slot) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(repo)
                    .bind(&spec.name)
                    .bind(&json)
                    .bind(cursor.last_slot)
                    .execute(&mut *tx)
                    .bounded()
                    .await
                    .map_err(query_error)?;
                    created.push(spec.name.clone());
                }
                Some(r) => {
                    let was_removed = r.get::<Option<DateTime<Utc>>, _>("removed_at").is_some();
                    if r.get::<serde_json::Value, _>("spec") == json && !was_removed {
                        continue;
                    }
                    // A schedule that comes back is activated again.
                    let cursor = Cursor::activated(spec, now);
                    sqlx::query(
                        "UPDATE schedules SET spec = $3, removed_at = NULL, updated_at = now(), \
                         last_slot = CASE WHEN $4 THEN $5 ELSE last_slot END \
                         WHERE repository_id = $1 AND name = $2",
                    )
                    .bind(repo)
                    .bind(&spec.name)
                    .bind(&json)
                    .bind(was_removed)
                    .bind(cursor.last_slot)
                    .execute(&mut *tx)
                    .bounded()
                    .await
                    .map_err(query_error)?;
                    updated.push(spec.name.clone());
                }
            }
        }
        for r in &existing {
            let name: String = r.get("name");
            let gone = r.get::<Option<DateTime<Utc>>, _>("removed_at").is_none()
                && !specs.iter().any(|s| s.name == name);
            if gone {
                sqlx::query(
                    "UPDATE schedules SET removed_at = now() WHERE repository_id = $1 AND name = $2",
                )
                .bind(repo)
                .bind(&name)
                .execute(&mut *tx)
                .bounded()
                .await
                .map_err(query_error)?;
                removed.push(name);
            }
        }
        tx.commit().bounded().await.map_err(query_error)?;
        Ok((created, updated, removed))
    }

    /// The schedules (removed ones too when `all`), by name.
    pub async fn schedules(&self, repo: Uuid, all: bool) -> Result<Vec<ScheduleRow>> {
        self.schedule_rows(repo, all, None).await
    }

    /// One schedule that is not removed; a worker reads its spec per job.
    pub async fn schedule(&self, repo: Uuid, name: &str) -> Result<ScheduleRow> {
        self.schedule_rows(repo, false, Some(name))
            .await?
            .pop()
            .ok_or_else(|| {
                Error::new(ErrorKind::NotFound, format!("no schedule named {name}"))
                    .with_guidance("`drctl schedule list` shows the schedules the server loaded")
            })
    }

    /// Schedule rows, all of them or the one `name`.
    async fn schedule_rows(
        &self,
        repo: Uuid,
        all: bool,
        name: Option<&str>,
    ) -> Result<Vec<ScheduleRow>> {
        let rows = sqlx::query(
            "SELECT name, spec, paused_by, last_slot, removed_at FROM schedules \
             WHERE repository_id = $1 AND ($2 OR removed_at IS NULL) \
               AND ($3::text IS NULL OR name = $3) ORDER BY name",
        )
        .bind(repo)
        .bind(all)
        .bind(name)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        rows.iter()
            .map(|r| {
                let name: String = r.get("name");
                let spec: ScheduleSpec = serde_json::from_value(r.get("spec")).map_err(|e| {
                    Error::new(
                        ErrorKind::Integrity,
                        format!("schedule {name} in the catalog does not parse: {e}"),
                    )
                    .with_guidance("restart `drctl server` to mirror the configuration again")
                })?;
                let paused_by: Option<String> = r.get("paused_by");
                Ok(ScheduleRow {
                    paused: spec.paused || paused_by.is_some(),
                    name,
                    spec,
                    paused_by,
                    last_slot: r.get("last_slot"),
                    removed_at: r.get("removed_at"),
                })
            })
            .collect()
    }

    /// `drctl schedule pause`: kept until `resume`, across reloads.
    pub async fn pause_schedule(&self, repo: Uuid, name: &str, by: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE schedules SET paused_by = $3, paused_at = now(), updated_at = now() \
             WHERE repository_id = $1 AND name = $2 AND removed_at IS NULL AND paused_by IS NULL",
        )
        .bind(repo)
        .bind(name)
        .bind(by)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        if r.rows_affected() == 0 {
            self.schedule(repo, name).await?; // says so when there is none
        }
        Ok(r.rows_affected() == 1)
    }

    /// `drctl schedule resume`: the cursor as on creation (`skip_immediately`
    /// moves it to now; otherwise missed slots are caught up by policy).
    pub async fn resume_schedule(
        &self,
        repo: Uuid,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let row = self.schedule(repo, name).await?;
        if row.paused_by.is_none() {
            return Ok(false);
        }
        let skip = row.spec.skip_immediately;
        sqlx::query(
            "UPDATE schedules SET paused_by = NULL, paused_at = NULL, updated_at = now(), \
             last_slot = CASE WHEN $3 THEN $4 ELSE last_slot END \
             WHERE repository_id = $1 AND name = $2",
        )
        .bind(repo)
        .bind(name)
        .bind(skip)
        .bind(now)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(true)
    }

    /// Records a tick's decisions and moves the cursors of the schedules
    /// decided, in one transaction (three statements however many
    /// schedules: a thousand due at once are enqueued in milliseconds),
    /// only while `lease` still leads: a deposed leader enqueues nothing.
    /// Slots already recorded are left as they are. Returns the runs queued.
    pub async fn record_ticks(
        &self,
        repo: Uuid,
        lease: (&str, &str, Lease),
        ticks: &[Tick],
    ) -> Result<usize> {
        if ticks.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool().begin().bounded().await.map_err(query_error)?;
        let (lease_name, holder, Lease { generation }) = lease;
        let leads: Option<i64> = sqlx::query_scalar(
            "SELECT generation FROM leases WHERE name = $1 AND holder = $2 \
             AND generation = $3 AND expires_at > now() FOR SHARE",
        )
        .bind(lease_name)
        .bind(holder)
        .bind(generation)
        .fetch_optional(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        if leads.is_none() {
            return Err(lost("enqueue"));
        }
        let mut ids = Vec::new();
        let mut names = Vec::new();
        let mut slots = Vec::new();
        let mut triggers = Vec::new();
        let mut states = Vec::new();
        let mut reasons: Vec<Option<String>> = Vec::new();
        for t in ticks {
            for d in &t.decisions {
                let (state, trigger, reason) = match d {
                    Decision::Run { trigger, .. } => ("queued", *trigger, None),
                    Decision::Skipped { reason, .. } => {
                        ("skipped", "schedule", Some(reason.clone()))
                    }
                    Decision::Missed { reason, .. } => ("missed", "schedule", Some(reason.clone())),
                };
                ids.push(Uuid::now_v7());
                names.push(t.schedule.clone());
                slots.push(d.slot());
                triggers.push(trigger.to_string());
                states.push(state.to_string());
                reasons.push(reason);
            }
        }
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO jobs (id, repository_id, kind, schedule, scheduled_for, trigger, state, \
               reason, finished_at) \
             SELECT u.id, $1, 'backup', u.schedule, u.slot, u.trigger, u.state, u.reason, \
               CASE WHEN u.state = 'queued' THEN NULL ELSE now() END \
             FROM UNNEST($2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[]) \
               AS u(id, schedule, slot, trigger, state, reason) \
             ON CONFLICT DO NOTHING RETURNING state",
        )
        .bind(repo)
        .bind(&ids)
        .bind(&names)
        .bind(&slots)
        .bind(&triggers)
        .bind(&states)
        .bind(&reasons)
        .fetch_all(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        let cursor_names: Vec<String> = ticks.iter().map(|t| t.schedule.clone()).collect();
        let cursors: Vec<Option<DateTime<Utc>>> =
            ticks.iter().map(|t| t.cursor.last_slot).collect();
        sqlx::query(
            "UPDATE schedules s SET last_slot = u.last_slot \
             FROM UNNEST($2::text[], $3::timestamptz[]) AS u(name, last_slot) \
             WHERE s.repository_id = $1 AND s.name = u.name",
        )
        .bind(repo)
        .bind(&cursor_names)
        .bind(&cursors)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(query_error)?;
        tx.commit().bounded().await.map_err(query_error)?;
        Ok(inserted.iter().filter(|s| *s == "queued").count())
    }

    /// The schedules of `names` with a backup run queued or running
    /// (concurrency is forbid), each with its oldest such run, in one query.
    pub async fn busy_jobs(
        &self,
        repo: Uuid,
        names: &[String],
    ) -> Result<std::collections::HashMap<String, JobRow>> {
        if names.is_empty() {
            return Ok(Default::default());
        }
        let rows = sqlx::query(concat!(
            "SELECT DISTINCT ON (schedule) ",
            job_columns!(),
            " FROM jobs WHERE repository_id = $1 AND schedule = ANY($2) \
             AND kind = 'backup' AND state IN ('queued', 'running') ORDER BY schedule, scheduled_for"
        ))
        .bind(repo)
        .bind(names)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(rows
            .iter()
            .map(job_row)
            .map(|j| (j.schedule.clone().unwrap_or_default(), j))
            .collect())
    }

    /// Enqueues a job now (`drctl schedule run`, retention, gc). Returns
    /// `None` when one of the same kind and schedule is already queued or
    /// running.
    pub async fn enqueue_now(
        &self,
        repo: Uuid,
        kind: &str,
        schedule: Option<&str>,
        trigger: &str,
    ) -> Result<Option<Uuid>> {
        let id = Uuid::now_v7();
        let r = sqlx::query(
            "INSERT INTO jobs (id, repository_id, kind, schedule, scheduled_for, trigger, state) \
             SELECT $1, $2, $3, $4, now(), $5, 'queued' \
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE repository_id = $2 AND kind = $3 \
               AND schedule IS NOT DISTINCT FROM $4 AND state IN ('queued', 'running')) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(repo)
        .bind(kind)
        .bind(schedule)
        .bind(trigger)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok((r.rows_affected() == 1).then_some(id))
    }

    /// The slot of the newest job of `kind` for `schedule`.
    pub async fn last_slot(
        &self,
        repo: Uuid,
        kind: &str,
        schedule: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT max(scheduled_for) AS slot FROM jobs \
             WHERE repository_id = $1 AND kind = $2 AND schedule = $3",
        )
        .bind(repo)
        .bind(kind)
        .bind(schedule)
        .fetch_one(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(row.get("slot"))
    }

    /// Enqueues a job for one slot; `None` when that slot has a job already
    /// (enqueueing is idempotent per slot) or one of the same kind and name
    /// is still queued or running (then the slot is tried again later).
    pub async fn enqueue_slot(
        &self,
        repo: Uuid,
        kind: &str,
        schedule: &str,
        slot: DateTime<Utc>,
        trigger: &str,
    ) -> Result<Option<Uuid>> {
        let id = Uuid::now_v7();
        let r = sqlx::query(
            "INSERT INTO jobs (id, repository_id, kind, schedule, scheduled_for, trigger, state) \
             SELECT $1, $2, $3, $4, $5, $6, 'queued' \
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE repository_id = $2 AND kind = $3 \
               AND schedule = $4 AND state IN ('queued', 'running')) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(repo)
        .bind(kind)
        .bind(schedule)
        .bind(slot)
        .bind(trigger)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok((r.rows_affected() == 1).then_some(id))
    }

    // --- The queue ---------------------------------------------------------

    /// Claims the oldest queued job of `kinds`, for `ttl`.
    pub async fn claim_job(
        &self,
        repo: Uuid,
        owner: &str,
        kinds: &[&str],
        ttl: std::time::Duration,
    ) -> Result<Option<Claim>> {
        self.claim_job_on(repo, owner, kinds, None, ttl).await
    }

    /// Claims the oldest queued job of `kinds` (for `node`'s agent, when
    /// given: only that node's jobs), for `ttl`.
    pub async fn claim_job_on(
        &self,
        repo: Uuid,
        owner: &str,
        kinds: &[&str],
        node: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<Option<Claim>> {
        let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        let r = sqlx::query(concat!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = $2, \
               lease_generation = lease_generation + 1, \
               lease_expires_at = now() + make_interval(secs => $4), heartbeat_at = now(), \
               started_at = now(), reason = NULL \
             WHERE id = (SELECT id FROM jobs WHERE repository_id = $1 AND state = 'queued' \
               AND kind = ANY($3) AND ($5::text IS NULL OR node = $5) \
               ORDER BY queued_at, id FOR UPDATE SKIP LOCKED LIMIT 1) \
             RETURNING ",
            job_columns!(),
            ""
        ))
        .bind(repo)
        .bind(owner)
        .bind(&kinds)
        .bind(ttl.as_secs_f64())
        .bind(node)
        .fetch_optional(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(r.map(|r| {
            let job = job_row(&r);
            Claim {
                generation: job.lease_generation,
                owner: owner.to_string(),
                job,
            }
        }))
    }

    /// Renews a claim's lease; an error when it was lost.
    pub async fn heartbeat_job(&self, claim: &Claim, ttl: std::time::Duration) -> Result<()> {
        let r = sqlx::query(
            "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3), \
               heartbeat_at = now() \
             WHERE id = $1 AND lease_generation = $2 AND state = 'running' AND lease_expires_at > now()",
        )
        .bind(claim.job.id)
        .bind(claim.generation)
        .bind(ttl.as_secs_f64())
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        if r.rows_affected() == 0 {
            return Err(lost(&format!("job {}", claim.job.id)));
        }
        Ok(())
    }

    /// Ends a claimed job, fenced: only while its lease is still held.
    pub async fn finish_job(
        &self,
        claim: &Claim,
        state: &str,
        reason: Option<&str>,
        backup_id: Option<Uuid>,
        result: Option<&serde_json::Value>,
    ) -> Result<()> {
        let r = sqlx::query(
            "UPDATE jobs SET state = $3, reason = $4, backup_id = $5, result = $6, \
               finished_at = now(), lease_expires_at = NULL, key_offer = NULL, key_grant = NULL \
             WHERE id = $1 AND lease_generation = $2 AND state = 'running'",
        )
        .bind(claim.job.id)
        .bind(claim.generation)
        .bind(state)
        .bind(reason)
        .bind(backup_id)
        .bind(result)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        if r.rows_affected() == 0 {
            return Err(lost(&format!("job {}", claim.job.id)));
        }
        Ok(())
    }

    /// Jobs whose worker stopped renewing its lease: queued again while
    /// attempts are left, else marked interrupted, with the reason. Never
    /// left running. Returns the rows changed.
    pub async fn reap_jobs(&self, repo: Uuid) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(concat!("UPDATE jobs SET \
               state = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'interrupted' END, \
               reason = 'worker ' || COALESCE(lease_owner, '?') || ' stopped renewing its lease (last heartbeat ' \
                 || to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || ', attempt ' \
                 || attempt || ' of ' || max_attempts || ')', \
               finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE now() END, \
               lease_owner = NULL, lease_expires_at = NULL, key_offer = NULL, key_grant = NULL \
             WHERE repository_id = $1 AND state = 'running' AND lease_expires_at < now() \
             RETURNING ", job_columns!(), ""))
        .bind(repo)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(rows.iter().map(job_row).collect())
    }

    /// Marks the running jobs of `owner` interrupted (graceful shutdown past
    /// its deadline).
    pub async fn interrupt_jobs_of(&self, owner: &str, reason: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'interrupted', reason = $2, finished_at = now(), \
               lease_expires_at = NULL WHERE lease_owner = $1 AND state = 'running'",
        )
        .bind(owner)
        .bind(reason)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(r.rows_affected())
    }

    /// Jobs, newest slot first, optionally of one schedule.
    pub async fn jobs(
        &self,
        repo: Uuid,
        schedule: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE repository_id = $1 \
             AND ($2::text IS NULL OR schedule = $2) ORDER BY scheduled_for DESC, queued_at DESC LIMIT $3"))
        .bind(repo)
        .bind(schedule)
        .bind(limit)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(rows.iter().map(job_row).collect())
    }

    /// Per schedule (every one, or `schedule`), its newest backup run and
    /// when its newest successful one finished, in one query.
    pub async fn latest_runs(
        &self,
        repo: Uuid,
        schedule: Option<&str>,
    ) -> Result<std::collections::HashMap<String, (JobRow, Option<DateTime<Utc>>)>> {
        let rows = sqlx::query(concat!(
            "SELECT DISTINCT ON (schedule) ",
            job_columns!(),
            ", (SELECT max(finished_at) FROM jobs s WHERE s.repository_id = j.repository_id \
               AND s.schedule = j.schedule AND s.kind = 'backup' AND s.state = 'succeeded') \
               AS last_success \
             FROM jobs j WHERE repository_id = $1 AND kind = 'backup' AND schedule IS NOT NULL \
               AND ($2::text IS NULL OR schedule = $2) \
             ORDER BY schedule, scheduled_for DESC, queued_at DESC"
        ))
        .bind(repo)
        .bind(schedule)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let job = job_row(r);
                let last_success: Option<DateTime<Utc>> = r.get("last_success");
                (
                    job.schedule.clone().unwrap_or_default(),
                    (job, last_success),
                )
            })
            .collect())
    }

    /// What the alerts measure from the catalog, read at scrape time so
    /// every replica reports the same and a restart forgets nothing: per
    /// schedule in the configuration, when it was first seen and when its
    /// newest successful backup finished; when gc last succeeded.
    #[allow(clippy::type_complexity)]
    pub async fn health_times(
        &self,
        repo: Uuid,
    ) -> Result<(
        Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)>,
        Option<DateTime<Utc>>,
    )> {
        let rows: Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT s.name, s.created_at, (SELECT max(finished_at) FROM jobs j \
               WHERE j.repository_id = s.repository_id AND j.schedule = s.name \
               AND j.kind = 'backup' AND j.state = 'succeeded') \
             FROM schedules s WHERE s.repository_id = $1 AND s.removed_at IS NULL",
        )
        .bind(repo)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        let gc: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT max(finished_at) FROM jobs WHERE repository_id = $1 AND kind = 'gc' \
               AND state = 'succeeded'",
        )
        .bind(repo)
        .fetch_one(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok((rows, gc))
    }

    /// The newest jobs of one kind (gc's schedule reads its last run).
    pub async fn jobs_of_kind(&self, repo: Uuid, kind: &str, limit: i64) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE repository_id = $1 AND kind = $2 \
             ORDER BY queued_at DESC LIMIT $3"
        ))
        .bind(repo)
        .bind(kind)
        .bind(limit)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(rows.iter().map(job_row).collect())
    }

    /// Jobs queued, jobs running, and the age in seconds of the oldest
    /// queued one (database time).
    pub async fn queue_stats(&self, repo: Uuid) -> Result<(i64, i64, Option<f64>)> {
        let r = sqlx::query(
            "SELECT count(*) FILTER (WHERE state = 'queued') AS queued, \
                    count(*) FILTER (WHERE state = 'running') AS running, \
                    EXTRACT(EPOCH FROM now() - min(queued_at) FILTER (WHERE state = 'queued'))::float8 AS oldest \
             FROM jobs WHERE repository_id = $1 AND state IN ('queued', 'running')",
        )
        .bind(repo)
        .fetch_one(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok((r.get("queued"), r.get("running"), r.get("oldest")))
    }

    /// The pack keys a backup references (what its locks must cover).
    pub async fn backup_pack_keys(&self, backup: Uuid) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT pack_key FROM backup_packs WHERE backup_id = $1 ORDER BY pack_key",
        )
        .bind(backup)
        .fetch_all(self.pool())
        .bounded()
        .await
        .map_err(query_error)
    }

    /// Records when retention lets a kept backup go (its locks already
    /// extended that far in the store): never earlier than recorded.
    /// `None`: kept with no end (the newest backup), never expired by gc.
    pub async fn set_retain_until(&self, backup: Uuid, until: Option<DateTime<Utc>>) -> Result<()> {
        sqlx::query(
            "UPDATE backups SET retain_until = CASE WHEN $2::timestamptz IS NULL THEN NULL \
               ELSE GREATEST(COALESCE(retain_until, $2), $2) END WHERE id = $1",
        )
        .bind(backup)
        .bind(until)
        .execute(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(())
    }

    // --- Leases ------------------------------------------------------------

    /// Takes or renews the lease `name` for `holder`: taken when free or
    /// expired (by database time), renewed when held. `None`: another
    /// replica holds it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>> {
        let generation: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases AS l (name, holder, generation, acquired_at, renewed_at, expires_at) \
             VALUES ($1, $2, 1, now(), now(), now() + make_interval(secs => $3)) \
             ON CONFLICT (name) DO UPDATE SET \
               generation = CASE WHEN l.holder = $2 AND l.expires_at > now() THEN l.generation \
                                 ELSE l.generation + 1 END, \
               acquired_at = CASE WHEN l.holder = $2 AND l.expires_at > now() THEN l.acquired_at \
                                  ELSE now() END, \
               holder = $2, renewed_at = now(), expires_at = now() + make_interval(secs => $3) \
             WHERE l.holder = $2 OR l.expires_at <= now() \
             RETURNING generation",
        )
        .bind(name)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(generation.map(|generation| Lease { generation }))
    }

    /// Gives the lease up (shutdown), so another replica leads at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.pool())
            .bounded()
            .await
            .map_err(query_error)?;
        Ok(())
    }

    /// Who holds the lease `name` now, and its generation.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>> {
        let r = sqlx::query(
            "SELECT holder, generation FROM leases WHERE name = $1 AND expires_at > now()",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .bounded()
        .await
        .map_err(query_error)?;
        Ok(r.map(|r| (r.get("holder"), r.get("generation"))))
    }
}
