//! Working the job queue: claim, heartbeat, run, finish (fenced).
//!
//! A job runs beside its heartbeat. When a heartbeat finds the lease gone
//! (the catalog unreachable past the lease, or the job given to another
//! worker), the job is dropped here and its row is left to the worker that
//! holds it now; the backup it was writing stays `running` without a
//! heartbeat and is marked interrupted, never complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::Shared;
use crate::catalog::{Claim, ListFilter};
use crate::error::{Error, ErrorKind, Result};
use crate::retention::{Candidate, State};
use crate::schedule::{ScheduleSpec, SourceSpec};

/// The kinds of job a server replica works.
const KINDS: &[&str] = &["backup", "retention", "gc"];

pub async fn work(shared: Arc<Shared>, stop: CancellationToken, jobs: TaskTracker, n: usize) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let ttl = Duration::from_secs(shared.config().server.job_lease_seconds);
        match shared
            .catalog
            .claim_job(shared.repo_id, &shared.holder, KINDS, ttl)
            .await
        {
            Ok(Some(claim)) => {
                tracing::info!(worker = n, job = %claim.job.id, kind = %claim.job.kind,
                    schedule = ?claim.job.schedule, attempt = claim.job.attempt, "job claimed");
                // Tracked, so shutdown waits for it up to its deadline.
                let _ = jobs.spawn(run(shared.clone(), claim, ttl)).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a job; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// What a job did: its end state, reason, backup and result.
struct Outcome {
    state: &'static str,
    reason: Option<String>,
    backup_id: Option<Uuid>,
    result: serde_json::Value,
}

async fn run(shared: Arc<Shared>, claim: Claim, ttl: Duration) {
    let started = Instant::now();
    let beat = async {
        loop {
            tokio::time::sleep(ttl / 3).await;
            if let Err(e) = shared.catalog.heartbeat_job(&claim, ttl).await {
                return e;
            }
        }
    };
    // The backup pipeline's futures are not `Send` (they borrow across
    // awaits in ways the compiler cannot prove general), so the job runs
    // on a blocking thread of its own, driven by the runtime's handle, and
    // is cancelled through a token: dropped at its next await.
    let cancel = CancellationToken::new();
    let mut job = {
        let (shared, claim, cancel) = (shared.clone(), claim.clone(), cancel.clone());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                tokio::select! {
                    o = execute(&shared, &claim) => Some(o),
                    _ = cancel.cancelled() => None,
                }
            })
        })
    };
    let outcome = tokio::select! {
        o = &mut job => o,
        lost = beat => {
            tracing::error!(job = %claim.job.id, error = %lost, "job abandoned: its lease is gone");
            cancel.cancel();
            let _ = job.await;
            return;
        }
        _ = shared.abort.cancelled() => {
            tracing::warn!(job = %claim.job.id, "job stopped at the shutdown deadline");
            cancel.cancel();
            let _ = job.await;
            return;
        }
    };
    let outcome = match outcome {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => Err(Error::new(ErrorKind::Failed, "the job panicked").with_source(e)),
    };
    let outcome = outcome.unwrap_or_else(|e| Outcome {
        state: if e.kind() == ErrorKind::Partial {
            "partial"
        } else {
            "failed"
        },
        reason: Some(e.report().trim_end().to_string()),
        backup_id: None,
        result: e.to_json(),
    });
    if claim.job.kind == "backup"
        && let Some(schedule) = &claim.job.schedule
    {
        shared.metrics.backup_done(
            schedule,
            outcome.state,
            started.elapsed().as_secs_f64(),
            &outcome.result,
        );
    }
    match shared
        .catalog
        .finish_job(
            &claim,
            outcome.state,
            outcome.reason.as_deref(),
            outcome.backup_id,
            Some(&outcome.result),
        )
        .await
    {
        Ok(()) => tracing::info!(job = %claim.job.id, state = outcome.state, "job finished"),
        Err(e) => tracing::error!(job = %claim.job.id, error = %e, "job result not recorded"),
    }
    // Retention runs right after every backup run, never on a sweep.
    if claim.job.kind == "backup"
        && let Some(schedule) = &claim.job.schedule
        && let Err(e) = shared
            .catalog
            .enqueue_now(shared.repo_id, "retention", Some(schedule), "after_backup")
            .await
    {
        tracing::error!(schedule, error = %e, "retention not enqueued");
    }
}

async fn execute(shared: &Shared, claim: &Claim) -> Result<Outcome> {
    match claim.job.kind.as_str() {
        "backup" => {
            let name = claim.job.schedule.as_deref().unwrap_or_default();
            let row = shared.catalog.schedule(shared.repo_id, name).await?;
            backup(shared, &row.spec).await
        }
        "retention" => {
            let name = claim.job.schedule.as_deref().unwrap_or_default();
            let row = shared.catalog.schedule(shared.repo_id, name).await?;
            let plan = apply_retention(shared, &row.spec, Utc::now()).await?;
            Ok(Outcome {
                state: "succeeded",
                reason: None,
                backup_id: None,
                result: serde_json::to_value(plan).expect("serialises"),
            })
        }
        "gc" => {
            let report = crate::gc::gc(
                shared.repo.store.clone(),
                &shared.catalog,
                shared.repo_id,
                chrono::Duration::hours(1),
            )
            .await?;
            shared.metrics.gc_done(&report);
            Ok(Outcome {
                state: "succeeded",
                reason: None,
                backup_id: None,
                result: serde_json::to_value(&report).expect("serialises"),
            })
        }
        other => Err(Error::new(
            ErrorKind::Failed,
            format!("job kind {other} is not worked by drctl server"),
        )),
    }
}

/// How long a scheduled backup's objects are locked when written: the
/// bucket's `retention_days` or the schedule's `min_lock_days`, the longer.
/// Retention extends it for backups kept longer.
fn lock_until(config: &crate::config::Config, spec: &ScheduleSpec) -> Option<DateTime<Utc>> {
    let bucket = config.repository.s3.as_ref().map(|s3| s3.retention_days);
    let days = match (bucket, spec.min_lock_days) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }?;
    Some(Utc::now() + chrono::Duration::days(i64::from(days)))
}

async fn backup(shared: &Shared, spec: &ScheduleSpec) -> Result<Outcome> {
    let config = shared.config();
    let writer =
        crate::backup::Writer::new(shared.repo.clone(), &config, lock_until(&config, spec));
    let quiet: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
    let (id, status, result) = match &spec.source {
        SourceSpec::Volume { path } => {
            let s = crate::backup::backup_volume(
                writer,
                &shared.catalog,
                &spec.name,
                crate::source::volume::Source::Dir(path.clone()),
                quiet,
            )
            .await?;
            (s.backup_id, s.status.clone(), serde_json::to_value(&s))
        }
        SourceSpec::Etcd {} => {
            let cfg = config
                .etcd
                .clone()
                .ok_or_else(|| Error::config("the configuration has no `etcd:` section"))?;
            let s = crate::backup::backup_etcd(writer, &shared.catalog, &cfg, &spec.name, quiet)
                .await?;
            (s.backup_id, s.status.clone(), serde_json::to_value(&s))
        }
        SourceSpec::Namespaces {
            agent_timeout_seconds,
            helper_image,
            ..
        } => {
            let scope = spec
                .source
                .scope()?
                .expect("a namespaces source has a scope");
            let cluster = crate::cluster::Cluster::connect(&crate::cluster::ConnectOptions {
                kubeconfig: config.kubernetes.kubeconfig.clone(),
                context: None,
            })
            .await?;
            let s = crate::backup::backup_namespaces(
                shared.repo.clone(),
                &config,
                &shared.catalog,
                &cluster,
                &scope,
                &spec.name,
                crate::backup::SetOptions {
                    agent_timeout: std::time::Duration::from_secs(*agent_timeout_seconds),
                    pod_timeout: std::time::Duration::from_secs(300),
                    timeout: std::time::Duration::from_secs(6 * 3600),
                    retain_until: lock_until(&config, spec),
                    helper_image: helper_image
                        .clone()
                        .unwrap_or_else(|| crate::agent::helper::DEFAULT_IMAGE.into()),
                },
            )
            .await?;
            (s.backup_id, s.status.clone(), serde_json::to_value(&s))
        }
        SourceSpec::Resources { .. } => {
            let scope = spec
                .source
                .scope()?
                .expect("a resources source has a scope");
            let cluster = crate::cluster::Cluster::connect(&crate::cluster::ConnectOptions {
                kubeconfig: config.kubernetes.kubeconfig.clone(),
                context: None,
            })
            .await?;
            let s = crate::backup::backup_resources(
                writer,
                &shared.catalog,
                &cluster,
                &scope,
                &spec.name,
                quiet,
            )
            .await?;
            (s.backup_id, s.status.clone(), serde_json::to_value(&s))
        }
    };
    let result = result.expect("summaries serialise");
    let (state, reason) = match status.as_str() {
        "complete" => ("succeeded", None),
        "partial" => ("partial", Some(format!("backup {id} is partial"))),
        other => ("failed", Some(format!("backup {id} ended {other}"))),
    };
    Ok(Outcome {
        state,
        reason,
        backup_id: Some(id),
        result,
    })
}

/// Retention for one schedule: plans, deletes what no rule keeps, and
/// extends the locks of what is kept longer than it is locked. Returns the
/// plan as applied.
pub async fn apply_retention(
    shared: &Shared,
    spec: &ScheduleSpec,
    now: DateTime<Utc>,
) -> Result<Vec<crate::retention::Verdict>> {
    let (rows, plan) = plan_retention(&shared.catalog, shared.repo_id, spec, now).await?;
    let config = shared.config();
    // A schedule can have thousands of backups: find each by id, not by scan.
    let by_id: std::collections::HashMap<Uuid, &crate::catalog::BackupRow> =
        rows.iter().map(|r| (r.id, r)).collect();
    for v in &plan {
        let row = by_id[&v.backup_id];
        if !v.keep {
            shared
                .catalog
                .delete_backup(shared.repo_id, &row.id.to_string())
                .await?;
            tracing::info!(backup = %row.id, schedule = %spec.name, reason = ?v.reasons, "backup expired by retention");
            continue;
        }
        if row.status != "complete" {
            continue;
        }
        // Kept with an end: locked (and expired by gc) at that end. Kept
        // with none (the newest): never expired by the catalog, and locked
        // for the lock period from when it became the newest.
        let Some(until) = v.keep_until.or_else(|| lock_until(&config, spec)) else {
            continue;
        };
        if row.retain_until.is_some_and(|r| r >= until) {
            continue;
        }
        // A set is kept with its members: their packs and manifests too.
        let mut kept = vec![(row.id, row.manifest_key.clone())];
        if row.kind == "namespaces" {
            for m in shared.catalog.set_members(row.id).await? {
                kept.push((m.id, m.manifest_key));
            }
        }
        let mut keys = Vec::new();
        for (id, manifest) in &kept {
            keys.extend(shared.catalog.backup_pack_keys(*id).await?);
            keys.extend(manifest.clone());
        }
        keys.sort();
        keys.dedup();
        crate::backup::extend_locks(&shared.repo, &shared.catalog, shared.repo_id, &keys, until)
            .await
            .inspect_err(|_| shared.metrics.lock_extend_failed())?;
        for (id, _) in &kept {
            shared
                .catalog
                .set_retain_until(*id, v.keep_until.map(|_| until))
                .await?;
        }
        tracing::info!(backup = %row.id, until = %until, reason = ?v.reasons, "backup kept: locks extended");
    }
    Ok(plan)
}

/// The retention plan of a schedule's backups at `now`, changing nothing
/// (`drctl retention plan`).
pub async fn plan_retention(
    catalog: &crate::catalog::Catalog,
    repo_id: Uuid,
    spec: &ScheduleSpec,
    now: DateTime<Utc>,
) -> Result<(
    Vec<crate::catalog::BackupRow>,
    Vec<crate::retention::Verdict>,
)> {
    let cron = spec.validate()?;
    let rows = catalog
        .list_backups(
            repo_id,
            &ListFilter {
                kind: Some(spec.source.kind().to_string()),
                name: Some(spec.name.clone()),
                status: None,
                since: None,
                latest: None,
            },
        )
        .await?;
    let candidates: Vec<Candidate> = rows
        .iter()
        .map(|r| Candidate {
            id: r.id,
            created: r.started_at,
            state: match r.status.as_str() {
                "complete" => State::Complete,
                "running" => State::Running,
                _ => State::Failed,
            },
        })
        .collect();
    let interval = cron
        .interval_after(now)
        .unwrap_or_else(|| chrono::Duration::days(1));
    let plan = crate::retention::plan(
        &spec.retention,
        cron.time_zone(),
        interval,
        &candidates,
        now,
    );
    Ok((rows, plan))
}

/// Enqueues a gc job when the `server.gc_cron` slot since the last gc job
/// has come.
pub async fn enqueue_gc_if_due(
    shared: &Shared,
    cron: &crate::schedule::Cron,
    now: DateTime<Utc>,
) -> Result<()> {
    let last = shared
        .catalog
        .jobs_of_kind(shared.repo_id, "gc", 1)
        .await?
        .first()
        .map(|j| j.queued_at);
    let due = match last {
        Some(last) => cron.next_after(last).is_some_and(|n| n <= now),
        None => true,
    };
    if due
        && let Some(id) = shared
            .catalog
            .enqueue_now(shared.repo_id, "gc", None, "schedule")
            .await?
    {
        tracing::info!(job = %id, "gc enqueued");
    }
    Ok(())
}
