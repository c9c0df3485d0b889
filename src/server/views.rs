//! What `drctl schedule …` prints with `-o json` and the HTTP API returns:
//! one shape for both, built from the catalog.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, JobRow, ScheduleRow};
use crate::error::{Error, ErrorKind, Result};

/// A schedule in a listing.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    pub name: String,
    pub kind: &'static str,
    pub cron: String,
    pub time_zone: String,
    pub paused: bool,
    /// Who paused it from the CLI or API (absent: not paused, or paused in
    /// the configuration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_slot: Option<DateTime<Utc>>,
    /// The newest run's state (queued, running, succeeded, partial, failed,
    /// skipped, missed, interrupted) and when it was due.
    pub last_run: Option<RunBrief>,
    pub last_success: Option<DateTime<Utc>>,
    pub rpo_seconds: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct RunBrief {
    pub job: Uuid,
    pub state: String,
    pub scheduled_for: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One schedule in full: its listing, its configuration and its runs.
#[derive(Debug, Serialize)]
pub struct ScheduleDetail {
    #[serde(flatten)]
    pub view: ScheduleView,
    pub spec: crate::schedule::ScheduleSpec,
    pub runs: Vec<JobRow>,
}

fn view(
    row: &ScheduleRow,
    last: Option<&JobRow>,
    last_success: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> ScheduleView {
    let paused = row.paused;
    ScheduleView {
        name: row.name.clone(),
        kind: row.spec.source.kind(),
        cron: row.spec.cron.clone(),
        time_zone: row.spec.time_zone.clone(),
        paused,
        paused_by: row.paused_by.clone(),
        next_run: if paused {
            None
        } else {
            row.spec.validate().ok().and_then(|c| c.next_after(now))
        },
        last_slot: row.last_slot,
        last_run: last.map(|j| RunBrief {
            job: j.id,
            state: j.state.clone(),
            scheduled_for: j.scheduled_for,
            reason: j.reason.clone(),
        }),
        last_success,
        rpo_seconds: row.spec.rpo_seconds,
    }
}

/// Every schedule, with two queries however many there are.
pub async fn schedules(catalog: &Catalog, repo: Uuid) -> Result<Vec<ScheduleView>> {
    let now = Utc::now();
    let runs = catalog.latest_runs(repo, None).await?;
    Ok(catalog
        .schedules(repo, false)
        .await?
        .iter()
        .map(|row| {
            let run = runs.get(&row.name);
            view(row, run.map(|r| &r.0), run.and_then(|r| r.1), now)
        })
        .collect())
}

pub async fn describe(catalog: &Catalog, repo: Uuid, name: &str) -> Result<ScheduleDetail> {
    let row = catalog.schedule(repo, name).await?;
    let runs = catalog.jobs(repo, Some(name), 20).await?;
    let latest = catalog.latest_runs(repo, Some(name)).await?;
    let run = latest.get(name);
    Ok(ScheduleDetail {
        view: view(&row, run.map(|r| &r.0), run.and_then(|r| r.1), Utc::now()),
        spec: row.spec.clone(),
        runs,
    })
}

/// What `schedule run` did.
#[derive(Debug, Serialize)]
pub struct Enqueued {
    pub schedule: String,
    /// The new job; absent when a run of the schedule was already queued
    /// or running (one at a time).
    pub job: Option<Uuid>,
    pub message: String,
}

/// Enqueues a run of `name` now (trigger `manual`). A running server picks
/// it up; the command does not wait for it.
pub async fn run_now(catalog: &Catalog, repo: Uuid, name: &str) -> Result<Enqueued> {
    let row = catalog.schedule(repo, name).await?;
    if row.removed_at.is_some() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("schedule {name} was removed from the configuration"),
        ));
    }
    let job = catalog
        .enqueue_now(repo, "backup", Some(name), "manual")
        .await?;
    let message = match job {
        Some(id) => format!("run of {name} queued as job {id}; a running `drctl server` takes it"),
        None => format!("a run of {name} is already queued or running; nothing added"),
    };
    Ok(Enqueued {
        schedule: name.to_string(),
        job,
        message,
    })
}
