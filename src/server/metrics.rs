//! What `/metrics` shows, in the Prometheus text format (prometheus-client).
//!
//! Labels are bounded: `schedule` takes the configured schedule names, and
//! nothing takes a backup id, a path or an error message. Counters live in
//! this process (a replica counts what it ran); the queue gauges and
//! `drctl_storage_available` are read from the catalog and the store at
//! scrape time, so every replica reports the same queue.

use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::catalog::ScheduleRow;
use crate::schedule::Cron;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabel {
    pub schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    repository_format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillLabel {
    pub drill: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillResult {
    pub drill: String,
    /// passed, partially_failed or failed.
    pub result: String,
}

type PerSchedule<M> = Family<ScheduleLabel, M>;
type PerDrill<M> = Family<DrillLabel, M>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    // 1 s to ~4.5 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    attempt: PerSchedule<Counter>,
    success: PerSchedule<Counter>,
    partial: PerSchedule<Counter>,
    failure: PerSchedule<Counter>,
    duration: Family<ScheduleLabel, Histogram, fn() -> Histogram>,
    last_success: PerSchedule<FloatGauge>,
    bytes_read: PerSchedule<Counter>,
    bytes_written: PerSchedule<Counter>,
    expected_interval: PerSchedule<FloatGauge>,
    rpo_objective: PerSchedule<FloatGauge>,
    created: PerSchedule<FloatGauge>,
    gc_last_success: FloatGauge,
    gc_expected_interval: FloatGauge,
    next_run: PerSchedule<FloatGauge>,
    paused: PerSchedule<Gauge>,
    missed: PerSchedule<Counter>,
    gc_runs: Counter,
    gc_deleted: Counter,
    gc_freed: Counter,
    gc_expired: Counter,
    lock_extend_failures: Counter,
    jobs_queued: Gauge,
    jobs_running: Gauge,
    oldest_queued: FloatGauge,
    leader: Gauge,
    storage: Gauge,
    drill_runs: Family<DrillResult, Counter>,
    drill_last_success: PerDrill<FloatGauge>,
    drill_last_status: PerDrill<Gauge>,
    drill_rto: PerDrill<FloatGauge>,
    drill_rpo: PerDrill<FloatGauge>,
    drill_rto_objective: PerDrill<FloatGauge>,
    drill_rpo_objective: PerDrill<FloatGauge>,
    drill_checks_failed: PerDrill<Gauge>,
    /// The newest drill run counted: runs are read from the catalog (a
    /// drill worker records them), each counted once by this process.
    drills_seen: std::sync::Mutex<Option<DateTime<Utc>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("drctl");
        let m = Metrics {
            attempt: Default::default(),
            success: Default::default(),
            partial: Default::default(),
            failure: Default::default(),
            duration: Family::new_with_constructor(duration_histogram),
            last_success: Default::default(),
            bytes_read: Default::default(),
            bytes_written: Default::default(),
            expected_interval: Default::default(),
            rpo_objective: Default::default(),
            created: Default::default(),
            gc_last_success: Default::default(),
            gc_expected_interval: Default::default(),
            next_run: Default::default(),
            paused: Default::default(),
            missed: Default::default(),
            gc_runs: Default::default(),
            gc_deleted: Default::default(),
            gc_freed: Default::default(),
            gc_expired: Default::default(),
            lock_extend_failures: Default::default(),
            jobs_queued: Default::default(),
            jobs_running: Default::default(),
            oldest_queued: Default::default(),
            leader: Default::default(),
            storage: Default::default(),
            drill_runs: Default::default(),
            drill_last_success: Default::default(),
            drill_last_status: Default::default(),
            drill_rto: Default::default(),
            drill_rpo: Default::default(),
            drill_rto_objective: Default::default(),
            drill_rpo_objective: Default::default(),
            drill_checks_failed: Default::default(),
            drills_seen: Default::default(),
            registry: Registry::default(),
        };
        r.register(
            "drill_runs",
            "Drill runs recorded in the catalog, by verdict",
            m.drill_runs.clone(),
        );
        r.register(
            "drill_last_success_timestamp_seconds",
            "Unix time the drill last passed",
            m.drill_last_success.clone(),
        );
        r.register(
            "drill_last_status",
            "1 when the drill's last run passed, 0 when it did not",
            m.drill_last_status.clone(),
        );
        r.register(
            "drill_rto_seconds",
            "Measured time to restore of the drill's last run",
            m.drill_rto.clone(),
        );
        r.register(
            "drill_rpo_seconds",
            "Data age (drill start minus snapshot time) of the drill's last run",
            m.drill_rpo.clone(),
        );
        r.register(
            "drill_rto_objective_seconds",
            "The drill's RTO objective",
            m.drill_rto_objective.clone(),
        );
        r.register(
            "drill_rpo_objective_seconds",
            "The drill's RPO objective",
            m.drill_rpo_objective.clone(),
        );
        r.register(
            "drill_checks_failed",
            "Checks that failed in the drill's last run",
            m.drill_checks_failed.clone(),
        );
        r.register(
            "backup_attempt",
            "Scheduled backup runs started",
            m.attempt.clone(),
        );
        r.register(
            "backup_success",
            "Scheduled backup runs that completed",
            m.success.clone(),
        );
        r.register(
            "backup_partial_failure",
            "Scheduled backup runs that ended partial (some data left out)",
            m.partial.clone(),
        );
        r.register(
            "backup_failure",
            "Scheduled backup runs that failed",
            m.failure.clone(),
        );
        r.register(
            "backup_duration_seconds",
            "Wall time of scheduled backup runs",
            m.duration.clone(),
        );
        r.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last complete scheduled backup run",
            m.last_success.clone(),
        );
        r.register(
            "backup_bytes_read",
            "Bytes read from the source by scheduled backups",
            m.bytes_read.clone(),
        );
        r.register(
            "backup_bytes_written",
            "Bytes stored in the repository by scheduled backups",
            m.bytes_written.clone(),
        );
        r.register(
            "schedule_expected_interval_seconds",
            "Time between the schedule's next two slots (the RPO an alert compares with)",
            m.expected_interval.clone(),
        );
        r.register(
            "schedule_rpo_objective_seconds",
            "The schedule's RPO objective (rpo_seconds); absent when it has none",
            m.rpo_objective.clone(),
        );
        r.register(
            "schedule_created_timestamp_seconds",
            "When the schedule was first seen in the configuration (from the catalog)",
            m.created.clone(),
        );
        r.register(
            "schedule_next_run_timestamp_seconds",
            "Unix time of the schedule's next slot",
            m.next_run.clone(),
        );
        r.register(
            "schedule_paused",
            "1 when the schedule is paused",
            m.paused.clone(),
        );
        r.register(
            "schedule_missed_runs",
            "Slots that passed without a run (no server ran, or past the starting deadline)",
            m.missed.clone(),
        );
        r.register(
            "gc_runs",
            "Garbage collection runs finished",
            m.gc_runs.clone(),
        );
        r.register(
            "gc_last_success_timestamp_seconds",
            "When the newest successful gc run finished (from the catalog); absent until one has",
            m.gc_last_success.clone(),
        );
        r.register(
            "gc_expected_interval_seconds",
            "Time between the next two slots of server.gc_cron; absent without one",
            m.gc_expected_interval.clone(),
        );
        r.register(
            "gc_deleted_objects",
            "Objects garbage collection deleted from the store",
            m.gc_deleted.clone(),
        );
        r.register(
            "gc_freed_bytes",
            "Bytes garbage collection freed in the store",
            m.gc_freed.clone(),
        );
        r.register(
            "gc_expired_backups",
            "Backups past their retain-until that garbage collection deleted",
            m.gc_expired.clone(),
        );
        r.register(
            "object_lock_extend_failures",
            "Lock extensions of kept backups that failed",
            m.lock_extend_failures.clone(),
        );
        r.register(
            "jobs_queued",
            "Jobs waiting in the queue",
            m.jobs_queued.clone(),
        );
        r.register("jobs_running", "Jobs being worked", m.jobs_running.clone());
        r.register(
            "job_oldest_queued_age_seconds",
            "Age of the oldest queued job (0 when none waits)",
            m.oldest_queued.clone(),
        );
        r.register(
            "leader",
            "1 when this replica leads the scheduler",
            m.leader.clone(),
        );
        r.register(
            "storage_available",
            "1 when the repository's store answered the last check",
            m.storage.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::VERSION.to_string(),
                repository_format: crate::REPOSITORY_FORMAT_VERSION.to_string(),
            })
            .set(1);
        r.register("build_info", "The running drctl's version", build);
        Metrics { registry: r, ..m }
    }

    fn label(schedule: &str) -> ScheduleLabel {
        ScheduleLabel {
            schedule: schedule.to_string(),
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// What the leader knows of a schedule at each tick.
    pub fn schedule(&self, row: &ScheduleRow, cron: &Cron, now: DateTime<Utc>) {
        let l = Self::label(&row.name);
        self.paused.get_or_create(&l).set(i64::from(row.paused));
        if let Some(next) = cron.next_after(now) {
            self.next_run.get_or_create(&l).set(next.timestamp() as f64);
        }
        if let Some(every) = cron.interval_after(now) {
            self.expected_interval
                .get_or_create(&l)
                .set(every.num_seconds() as f64);
        }
        match row.spec.rpo_seconds {
            Some(o) => {
                self.rpo_objective.get_or_create(&l).set(o as f64);
            }
            None => {
                self.rpo_objective.remove(&l);
            }
        }
    }

    /// What the catalog says of the schedules and gc, read at scrape time
    /// ([`crate::catalog::Catalog::health_times`]): every replica reports
    /// the same, and a restarted one forgets nothing. `gc_every` is the
    /// interval of `server.gc_cron`.
    #[allow(clippy::type_complexity)]
    pub fn health(
        &self,
        schedules: &[(String, DateTime<Utc>, Option<DateTime<Utc>>)],
        gc_last: Option<DateTime<Utc>>,
        gc_every: Option<f64>,
    ) {
        for (name, created, last) in schedules {
            let l = Self::label(name);
            self.created
                .get_or_create(&l)
                .set(created.timestamp() as f64);
            if let Some(t) = last {
                self.last_success
                    .get_or_create(&l)
                    .set(t.timestamp() as f64);
            }
        }
        if let Some(t) = gc_last {
            self.gc_last_success.set(t.timestamp() as f64);
        }
        if let Some(every) = gc_every {
            self.gc_expected_interval.set(every);
        }
    }

    pub fn missed(&self, schedule: &str) {
        self.missed.get_or_create(&Self::label(schedule)).inc();
    }

    /// A scheduled backup run ended in `state` (succeeded, partial, failed).
    pub fn backup_done(
        &self,
        schedule: &str,
        state: &str,
        seconds: f64,
        result: &serde_json::Value,
    ) {
        let l = Self::label(schedule);
        self.attempt.get_or_create(&l).inc();
        self.duration.get_or_create(&l).observe(seconds);
        match state {
            "succeeded" => {
                self.success.get_or_create(&l).inc();
                self.last_success
                    .get_or_create(&l)
                    .set(Utc::now().timestamp() as f64);
            }
            "partial" => {
                self.partial.get_or_create(&l).inc();
            }
            _ => {
                self.failure.get_or_create(&l).inc();
            }
        }
        let n = |k: &str| result.get(k).and_then(serde_json::Value::as_u64);
        if let Some(read) = n("bytes_read").or_else(|| n("bytes")) {
            self.bytes_read.get_or_create(&l).inc_by(read);
        }
        if let Some(written) = n("stored_bytes") {
            self.bytes_written.get_or_create(&l).inc_by(written);
        }
    }

    pub fn gc_done(&self, report: &crate::gc::GcReport) {
        self.gc_runs.inc();
        self.gc_deleted
            .inc_by((report.deleted.len() + report.orphans.len()) as u64);
        self.gc_freed.inc_by(report.freed_bytes);
        self.gc_expired.inc_by(report.expired.len() as u64);
    }

    pub fn lock_extend_failed(&self) {
        self.lock_extend_failures.inc();
    }

    /// The queue as the catalog has it, read at scrape time.
    pub fn queue(&self, queued: i64, running: i64, oldest_queued: Option<f64>) {
        self.jobs_queued.set(queued);
        self.jobs_running.set(running);
        self.oldest_queued.set(oldest_queued.unwrap_or(0.0));
    }

    pub fn set_storage(&self, available: bool) {
        self.storage.set(i64::from(available));
    }

    /// The newest drill run counted so far.
    pub fn drills_seen(&self) -> Option<DateTime<Utc>> {
        *self.drills_seen.lock().unwrap()
    }

    /// Drill runs recorded since the last call, oldest first.
    pub fn drills(&self, runs: &[crate::catalog::DrillRunRow]) {
        let mut seen = self.drills_seen.lock().unwrap();
        for r in runs {
            if seen.is_some_and(|s| r.finished_at <= s) {
                continue;
            }
            *seen = Some(r.finished_at);
            let l = DrillLabel {
                drill: r.drill.clone(),
            };
            self.drill_runs
                .get_or_create(&DrillResult {
                    drill: r.drill.clone(),
                    result: r.verdict.clone(),
                })
                .inc();
            let passed = r.verdict == "passed";
            self.drill_last_status
                .get_or_create(&l)
                .set(i64::from(passed));
            if passed {
                self.drill_last_success
                    .get_or_create(&l)
                    .set(r.finished_at.timestamp() as f64);
            }
            self.drill_rto.get_or_create(&l).set(r.rto_seconds);
            self.drill_rpo.get_or_create(&l).set(r.rpo_seconds);
            if let Some(o) = r.rto_objective_seconds {
                self.drill_rto_objective.get_or_create(&l).set(o);
            }
            if let Some(o) = r.rpo_objective_seconds {
                self.drill_rpo_objective.get_or_create(&l).set(o);
            }
            self.drill_checks_failed
                .get_or_create(&l)
                .set(r.checks_failed);
        }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String does not fail");
        s
    }
}
