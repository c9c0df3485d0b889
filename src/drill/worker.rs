//! `drctl worker --drills`: claims the drill jobs `drctl server` enqueues
//! and runs them. The only long-running process that holds the age
//! identity; it runs nothing else.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::DrillSpec;
use crate::catalog::{Catalog, Claim};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::store::timed::Timed;

/// What the worker holds.
pub struct Worker {
    pub catalog: Catalog,
    pub repo: Arc<Repository>,
    pub timed: Arc<Timed>,
    pub repo_id: Uuid,
    pub config: Arc<Config>,
    pub holder: String,
}

/// Claims and runs drill jobs until `stop`; a drill running then is let
/// finish (it has its own timeout).
pub async fn work(w: Arc<Worker>, stop: CancellationToken) -> Result<()> {
    let ttl = Duration::from_secs(w.config.server.job_lease_seconds);
    tracing::info!(holder = %w.holder, drills = w.config.drills.len(), "drill worker started");
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        match w
            .catalog
            .claim_job(w.repo_id, &w.holder, &["drill"], ttl)
            .await
        {
            Ok(Some(claim)) => {
                tracing::info!(job = %claim.job.id, drill = ?claim.job.schedule, "drill claimed");
                run(w.clone(), claim, ttl).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a drill job; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn run(w: Arc<Worker>, claim: Claim, ttl: Duration) {
    let name = claim.job.schedule.clone().unwrap_or_default();
    let spec = w.config.drills.iter().find(|d| d.name == name).cloned();
    let beat = {
        let (w, claim) = (w.clone(), claim.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if let Err(e) = w.catalog.heartbeat_job(&claim, ttl).await {
                    tracing::error!(job = %claim.job.id, error = %e, "drill job lease lost");
                    return;
                }
            }
        })
    };
    let result = match spec {
        None => Err(Error::config(format!(
            "drill {name:?} is not in this worker's configuration"
        ))
        .with_guidance("give the worker the same configuration file as the server")),
        Some(spec) => {
            let (w2, job) = (w.clone(), claim.job.id);
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || run_blocking(&w2, &spec, job, &handle))
                .await
                .unwrap_or_else(|e| {
                    Err(Error::new(ErrorKind::Failed, "the drill panicked").with_source(e))
                })
        }
    };
    beat.abort();
    let (state, reason, value) = match &result {
        Ok(r) => {
            let state = match r.verdict {
                super::report::Verdict::Passed => "succeeded",
                super::report::Verdict::PartiallyFailed => "partial",
                super::report::Verdict::Failed => "failed",
            };
            let reason = super::verdict_error(r).map(|e| e.what().to_string());
            let value = serde_json::json!({
                "drill_id": r.drill_id,
                "verdict": r.verdict,
                "rto_seconds": r.rto.seconds,
                "rpo_seconds": r.rpo.seconds,
            });
            (state, reason, value)
        }
        Err(e) => (
            "failed",
            Some(e.report().trim_end().to_string()),
            e.to_json(),
        ),
    };
    match w
        .catalog
        .finish_job(&claim, state, reason.as_deref(), None, Some(&value))
        .await
    {
        Ok(()) => tracing::info!(job = %claim.job.id, state, "drill job finished"),
        Err(e) => tracing::error!(job = %claim.job.id, error = %e, "drill job result not recorded"),
    }
}

fn run_blocking(
    w: &Worker,
    spec: &DrillSpec,
    job: Uuid,
    handle: &tokio::runtime::Handle,
) -> Result<super::Report> {
    let say = |line: &str| tracing::info!(drill = %spec.name, "{line}");
    let env = super::Env {
        repo: &w.repo,
        timed: &w.timed,
        catalog: &w.catalog,
        repo_id: w.repo_id,
        config: &w.config,
        handle,
        trigger: "scheduled",
        job_id: Some(job),
        run_by: w.holder.clone(),
        say: &say,
    };
    super::run(&env, spec)
}
