//! `drctl server`: the control plane. Any number of replicas against one
//! catalog; one leads (a lease row in PostgreSQL) and turns due schedule
//! slots into jobs; every replica works jobs from the queue.
//!
//! ```text
//! config (schedules) ──sync──> catalog.schedules
//! leader loop: lease → reap dead jobs → tick each schedule → jobs (queued)
//! worker loop: claim (SKIP LOCKED) → heartbeat → backup → retention → finish (fenced)
//! http: /healthz /readyz /metrics /api/v1/…
//! ```
//!
//! The server holds what writers hold (recipients and the repository
//! secret), never the age identity: nothing that runs on a schedule can
//! decrypt a backup.

mod http;
pub mod metrics;
mod tls;
mod ui;
pub mod views;
pub(crate) mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::catalog::{Catalog, Lease};
use crate::config::{Config, Loaded};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::schedule::{self, Cursor};

/// The name of the scheduler's lease row.
pub const LEADER_LEASE: &str = "scheduler";

/// The scheduler's clock: real time, unless the environment sets
/// `DRCTL_TEST_CLOCK=BASE:SCALE` (tests only: from the Unix time BASE, time
/// runs SCALE times as fast, so fifty minutes of one-minute slots pass in
/// fifty seconds). Only slot decisions read it; leases, heartbeats and
/// every catalog time are the database's real clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: i64,
    scale: i64,
}

impl Clock {
    pub const ENV: &str = "DRCTL_TEST_CLOCK";

    pub fn from_env() -> Result<Clock> {
        let Ok(v) = std::env::var(Self::ENV) else {
            return Ok(Clock { base: 0, scale: 1 });
        };
        let parsed = v
            .split_once(':')
            .and_then(|(b, s)| Some((b.parse::<i64>().ok()?, s.parse::<i64>().ok()?)))
            .filter(|&(_, s)| (1..=3600).contains(&s));
        let (base, scale) = parsed.ok_or_else(|| {
            Error::config(format!(
                "{}={v:?} is not BASE_UNIX_SECONDS:SCALE",
                Self::ENV
            ))
            .with_guidance(format!("unset {}: it is for tests", Self::ENV))
        })?;
        tracing::warn!(
            base,
            scale,
            "{} is set: schedules run on a test clock",
            Self::ENV
        );
        Ok(Clock { base, scale })
    }

    pub fn now(&self) -> chrono::DateTime<Utc> {
        let real = Utc::now();
        if self.scale == 1 {
            return real;
        }
        let base = chrono::DateTime::from_timestamp(self.base, 0).unwrap_or(real);
        base + (real - base) * (self.scale as i32)
    }
}

/// What the server's tasks share.
pub struct Shared {
    pub catalog: Catalog,
    pub repo: Arc<Repository>,
    pub repo_id: Uuid,
    pub config: std::sync::RwLock<Arc<Config>>,
    pub config_path: PathBuf,
    /// This replica's name in leases and job rows.
    pub holder: String,
    pub leader: AtomicBool,
    pub shutting_down: AtomicBool,
    /// Cancelled at the shutdown deadline: running jobs stop where they are.
    pub abort: CancellationToken,
    pub metrics: metrics::Metrics,
    pub clock: Clock,
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }
}

/// Runs the server until SIGTERM or SIGINT: applies pending migrations,
/// mirrors the schedules, then leads (when elected), works jobs and serves
/// HTTP. `repo` is opened for writing by the caller.
pub async fn run(loaded: Loaded, catalog: Catalog, repo: Repository) -> Result<()> {
    let applied = catalog.migrate().await?;
    for m in applied.iter().filter(|m| m.applied) {
        tracing::info!(version = m.version, migration = %m.description, "catalog migrated");
    }
    let repo = Arc::new(repo);
    let repo_id = catalog
        .ensure_repository(&repo.config, &repo.store.location())
        .await?;
    let holder = format!(
        "{}-{}-{}",
        hostname(),
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..6]
    );
    let config = Arc::new(loaded.config);
    let shared = Arc::new(Shared {
        catalog,
        repo,
        repo_id,
        config: std::sync::RwLock::new(config.clone()),
        config_path: loaded.path.clone(),
        holder,
        leader: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        abort: CancellationToken::new(),
        metrics: metrics::Metrics::new(),
        clock: Clock::from_env()?,
    });
    sync_schedules(&shared, &config).await?;

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .map_err(|e| {
            Error::io(
                e,
                ErrorKind::Config,
                format!("cannot listen on {} (server.listen)", config.server.listen),
            )
            .with_guidance("pick a free port, or stop what holds this one")
        })?;
    let tls = config.server.tls.as_ref().map(tls::acceptor).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = listener.local_addr().ok();
    tracing::info!(
        listen = ?addr,
        holder = %shared.holder,
        schedules = config.schedules.len(),
        "drctl server started"
    );
    // Scripts and tests read the address from here (with port 0, the
    // kernel picks one).
    if let Some(addr) = addr {
        println!("listening on {scheme}://{addr}");
    }
    let http = tracker.spawn(http::serve(shared.clone(), listener, tls, stop.clone()));
    tracker.spawn(lead(shared.clone(), stop.clone()));
    let jobs = TaskTracker::new();
    for n in 0..config.server.workers {
        tracker.spawn(worker::work(shared.clone(), stop.clone(), jobs.clone(), n));
    }
    tracker.close();

    signals(&shared, &stop).await;
    // Shutting down: readiness off, no new claims, jobs get the deadline.
    shared.shutting_down.store(true, Ordering::SeqCst);
    stop.cancel();
    let deadline = Duration::from_secs(config.server.shutdown_seconds);
    jobs.close();
    if tokio::time::timeout(deadline, jobs.wait()).await.is_err() {
        // Marked first, so the row says why; then the jobs are dropped.
        let n = shared
            .catalog
            .interrupt_jobs_of(
                &shared.holder,
                &format!(
                    "the server stopped (SIGTERM) and the job did not finish within \
                     server.shutdown_seconds ({}s)",
                    deadline.as_secs()
                ),
            )
            .await
            .unwrap_or(0);
        shared.abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), jobs.wait()).await;
        tracing::warn!(
            jobs = n,
            "jobs still running at the shutdown deadline: marked interrupted"
        );
    }
    if shared.leader.load(Ordering::SeqCst) {
        let _ = shared
            .catalog
            .release_lease(LEADER_LEASE, &shared.holder)
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    tracing::info!("drctl server stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; reloads the configuration on SIGHUP.
async fn signals(shared: &Arc<Shared>, stop: &CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        stop.cancelled().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return; }
            _ = hup.recv() => {
                match reload(shared).await {
                    Ok(()) => tracing::info!("SIGHUP: configuration reloaded"),
                    Err(e) => tracing::error!(error = %e.report(), "SIGHUP: configuration not reloaded; the old one stays"),
                }
            }
        }
    }
}

/// Reads the configuration file again and mirrors its schedules. A file
/// that does not load changes nothing.
async fn reload(shared: &Arc<Shared>) -> Result<()> {
    let loaded = Config::load(&shared.config_path)?;
    let config = Arc::new(loaded.config);
    sync_schedules(shared, &config).await?;
    *shared.config.write().unwrap() = config;
    Ok(())
}

async fn sync_schedules(shared: &Shared, config: &Config) -> Result<()> {
    let (created, updated, removed) = shared
        .catalog
        .sync_schedules(shared.repo_id, &config.schedules, shared.clock.now())
        .await?;
    tracing::info!(
        ?created,
        ?updated,
        ?removed,
        "schedules mirrored from the configuration"
    );
    Ok(())
}

/// The leader loop: about once a second, take or renew the lease; while
/// leading, give dead jobs back, and enqueue what is due.
async fn lead(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut crons = Crons::new();
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ttl = Duration::from_secs(shared.config().server.leader_lease_seconds);
        let lease = match shared
            .catalog
            .acquire_lease(LEADER_LEASE, &shared.holder, ttl)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the catalog for the leader lease");
                None
            }
        };
        let was = shared.leader.swap(lease.is_some(), Ordering::SeqCst);
        shared.metrics.set_leader(lease.is_some());
        let Some(lease) = lease else {
            if was {
                tracing::warn!("lost the scheduler lease; another replica leads");
            }
            continue;
        };
        if !was {
            tracing::info!(generation = lease.generation, "leading the scheduler");
        }
        ticks += 1;
        if let Err(e) = lead_once(&shared, lease, &mut crons, ticks % 10 == 1).await {
            tracing::warn!(error = %e.report(), "scheduler tick failed; retried in a second");
        }
    }
}

/// Parsed expressions by (expression, zone): a tick reads every schedule
/// every second, and parsing a thousand of them each time would be most of
/// an idle server's CPU.
type Crons = std::collections::HashMap<(String, String), schedule::Cron>;

/// The parsed `expr` in `zone` from `crons`, parsed (and kept) on first use.
fn cached(
    crons: &mut Crons,
    expr: &str,
    zone: &str,
    parse: impl FnOnce() -> Result<schedule::Cron>,
) -> Result<schedule::Cron> {
    let key = (expr.to_string(), zone.to_string());
    if let Some(c) = crons.get(&key) {
        return Ok(c.clone());
    }
    let c = parse()?;
    crons.insert(key, c.clone());
    Ok(c)
}

/// One scheduler tick. `gauges`: also refresh every schedule's gauges
/// (next run, interval, paused), which the leader does every few seconds.
async fn lead_once(shared: &Shared, lease: Lease, crons: &mut Crons, gauges: bool) -> Result<()> {
    for job in shared.catalog.reap_jobs(shared.repo_id).await? {
        tracing::warn!(job = %job.id, schedule = ?job.schedule, state = %job.state,
            reason = ?job.reason, "job of a dead worker given back");
    }
    let now = shared.clock.now();
    let rows = shared.catalog.schedules(shared.repo_id, false).await?;
    if crons.len() > 4 * rows.len() + 64 {
        crons.clear();
    }
    // First in memory: which schedules have a slot due. Only those are
    // asked about (one query) and recorded (one transaction).
    let mut due = Vec::new();
    for row in rows {
        let parsed = cached(crons, &row.spec.cron, &row.spec.time_zone, || {
            row.spec.validate()
        });
        let cron = match parsed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(schedule = %row.name, error = %e.report(), "schedule skipped");
                continue;
            }
        };
        let cursor = Cursor {
            last_slot: row.last_slot,
        };
        let (decisions, next) = schedule::tick(&row.spec, &cron, row.paused, cursor, None, now);
        let is_due = !(decisions.is_empty() && next == cursor);
        if gauges || is_due {
            shared.metrics.schedule(&row, &cron, now);
        }
        if is_due {
            due.push((row, cron, cursor, decisions, next));
        }
    }
    if !due.is_empty() {
        let names: Vec<String> = due.iter().map(|d| d.0.name.clone()).collect();
        let busy = shared.catalog.busy_jobs(shared.repo_id, &names).await?;
        let mut ticks = Vec::with_capacity(due.len());
        for (row, cron, cursor, decisions, next) in due {
            let (decisions, next) = match busy.get(&row.name) {
                Some(j) => {
                    let run = format!("{} (slot {})", j.id, j.scheduled_for.to_rfc3339());
                    schedule::tick(&row.spec, &cron, row.paused, cursor, Some(&run), now)
                }
                None => (decisions, next),
            };
            for d in &decisions {
                match d {
                    schedule::Decision::Missed { .. } => shared.metrics.missed(&row.name),
                    schedule::Decision::Skipped { reason, .. } => {
                        tracing::warn!(schedule = %row.name, %reason, "slot skipped")
                    }
                    schedule::Decision::Run { slot, trigger } => {
                        tracing::info!(schedule = %row.name, slot = %slot, trigger, "run enqueued")
                    }
                }
            }
            ticks.push(crate::catalog::Tick {
                schedule: row.name,
                decisions,
                cursor: next,
            });
        }
        shared
            .catalog
            .record_ticks(
                shared.repo_id,
                (LEADER_LEASE, &shared.holder, lease),
                &ticks,
            )
            .await?;
    }
    if let Some(gc) = shared.config().server.gc_cron.clone() {
        let cron = cached(crons, &gc, "UTC", || schedule::Cron::parse(&gc, "UTC"))?;
        worker::enqueue_gc_if_due(shared, &cron, now).await?;
    }
    enqueue_drills(shared, crons, now).await
}

/// Enqueues the newest due slot of each scheduled drill (older missed
/// slots are not run: one drill of the newest backup proves as much), for
/// `drctl worker --drills` to claim. Never one beside a drill of the same
/// name still queued or running.
async fn enqueue_drills(
    shared: &Shared,
    crons: &mut Crons,
    now: chrono::DateTime<Utc>,
) -> Result<()> {
    let config = shared.config();
    for d in config.drills.iter().filter(|d| !d.paused) {
        let Some(expr) = &d.cron else { continue };
        let cron = match cached(crons, expr, &d.time_zone, || {
            d.validate()
                .map(|c| c.expect("a drill with a cron parses to one"))
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(drill = %d.name, error = %e.report(), "drill not scheduled");
                continue;
            }
        };
        let last = shared
            .catalog
            .last_slot(shared.repo_id, "drill", &d.name)
            .await?;
        let due = match last {
            Some(last) => cron.slots(last, now).last().copied(),
            None => cron.latest_at_or_before(now, chrono::Duration::days(367)),
        };
        let Some(slot) = due else { continue };
        if let Some(id) = shared
            .catalog
            .enqueue_slot(shared.repo_id, "drill", &d.name, slot, "schedule")
            .await?
        {
            tracing::info!(drill = %d.name, job = %id, slot = %slot, "drill enqueued");
        }
    }
    Ok(())
}

pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "drctl".into())
}
