//! Restore drills: prove a backup restores, and measure how long it takes.
//!
//! A drill picks backups (one per target), restores each into scratch
//! space — a throwaway etcd on a Unix socket, namespaces renamed
//! `drill-<ns>-<short id>`, a scratch directory — checks that what came
//! back equals what was backed up and works, and writes a [`Report`]: RTO
//! in phases that tile the drill's wall time, RPO against the backups'
//! snapshot times, a verdict. The report goes to the catalog and, sealed
//! and locked like a manifest, to `reports/<id>` in the bucket.
//!
//! Drills decrypt, so they run only where the age identity is: `drctl
//! drill run` on an operator's machine, or `drctl worker --drills` for
//! the runs `drctl server` schedules (the server never holds it).
//!
//! Stages run one after the other and the stopwatch assigns every moment
//! to one phase, so the phases add up to the RTO by construction; the only
//! overlap is inside a volume restore, split by the [`Timed`] store into
//! reading (a read in flight) and the rest.

mod etcd;
pub mod render;
pub mod report;
mod resources;
pub mod spec;
mod volume;
pub mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use self::report::Report;
use self::report::{
    BackupUnderTest, Check, CheckStatus, Cleanup, Failure, Objective, Phases, Rpo, Rto, TrendPoint,
    Verdict,
};
pub use self::spec::{DrillSpec, Pick, Probe, TargetSpec};
use crate::catalog::{BackupRow, Catalog};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::repo::manifest::Manifest;
use crate::store::timed::Timed;

/// What a drill runs with.
pub struct Env<'a> {
    /// Opened with the identity (to decrypt) and the recipients (to seal
    /// the report), its store wrapped in `timed`.
    pub repo: &'a Repository,
    pub timed: &'a Timed,
    pub catalog: &'a Catalog,
    pub repo_id: Uuid,
    pub config: &'a Config,
    pub handle: &'a tokio::runtime::Handle,
    /// `manual` or `scheduled`.
    pub trigger: &'a str,
    pub job_id: Option<Uuid>,
    pub run_by: String,
    /// One line per step, for a terminal.
    pub say: &'a (dyn Fn(&str) + Sync),
}

/// The phases, as the stopwatch assigns time to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Plan,
    FetchDecrypt,
    Write,
    Start,
    Checks,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::FetchDecrypt => "fetch_decrypt",
            Phase::Write => "write",
            Phase::Start => "start",
            Phase::Checks => "checks",
        }
    }
}

/// Assigns every moment since the drill's start to one phase.
pub(crate) struct Stopwatch {
    last: Instant,
    phases: Phases,
}

impl Stopwatch {
    fn new(start: Instant) -> Stopwatch {
        Stopwatch {
            last: start,
            phases: Phases::default(),
        }
    }

    /// The time since the last lap was spent in `phase`.
    pub(crate) fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        let s = (now - self.last).as_secs_f64();
        self.last = now;
        *self.slot(phase) += s;
    }

    /// The time since the last lap was a restore: `reading` of it had a
    /// read of the store in flight, the rest was writing.
    pub(crate) fn split(&mut self, reading: Duration) {
        let now = Instant::now();
        let all = (now - self.last).as_secs_f64();
        self.last = now;
        let read = reading.as_secs_f64().min(all);
        self.phases.fetch_decrypt += read;
        self.phases.write += all - read;
    }

    fn slot(&mut self, phase: Phase) -> &mut f64 {
        match phase {
            Phase::Plan => &mut self.phases.plan,
            Phase::FetchDecrypt => &mut self.phases.fetch_decrypt,
            Phase::Write => &mut self.phases.write,
            Phase::Start => &mut self.phases.start,
            Phase::Checks => &mut self.phases.checks,
        }
    }
}

/// A backup chosen and opened.
pub(crate) struct Target {
    /// For a volume backup: the probe its target names.
    pub probe: Option<Probe>,
    pub row: BackupRow,
    pub manifest: Manifest,
    pub under_test: BackupUnderTest,
}

/// What the checks of one target found, and where it stopped.
#[derive(Default)]
pub(crate) struct Outcome {
    /// The checks the drill runs (`drills[].checks`); `None`: all.
    pub selected: Option<Vec<String>>,
    pub checks: Vec<Check>,
    pub failure: Option<Failure>,
    /// Scratch it made: `dir:PATH` and `namespace:NAME`.
    pub scratch: Vec<String>,
    pub bytes: u64,
    pub objects: u64,
}

impl Outcome {
    pub(crate) fn check(
        &mut self,
        t: &Target,
        name: &str,
        status: CheckStatus,
        began: Instant,
        summary: String,
        evidence: serde_json::Value,
    ) {
        self.checks.push(Check {
            backup_id: t.row.id,
            source: t.row.kind.clone(),
            name: name.into(),
            status,
            seconds: began.elapsed().as_secs_f64(),
            summary,
            evidence,
        });
    }

    /// Whether check `name` runs; one that does not is listed as skipped.
    pub(crate) fn wants(&mut self, t: &Target, name: &str) -> bool {
        let wanted = self
            .selected
            .as_ref()
            .is_none_or(|s| s.iter().any(|c| c == name));
        if !wanted {
            self.check(
                t,
                name,
                CheckStatus::Skipped,
                Instant::now(),
                "not selected (the drill's `checks`)".into(),
                serde_json::Value::Null,
            );
        }
        wanted
    }

    pub(crate) fn fail(&mut self, t: &Target, phase: Phase, e: &Error) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                stage: phase.name().into(),
                backup_id: Some(t.row.id),
                kind: kind_name(e.kind()).into(),
                reason: e.report().trim_end().to_string(),
            });
        }
    }

    fn passed(&self) -> bool {
        self.failure.is_none()
            && self.checks.iter().all(|c| {
                matches!(
                    c.status,
                    CheckStatus::Passed | CheckStatus::NotObservable | CheckStatus::Skipped
                )
            })
    }
}

fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::Config => "config",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Permission => "permission",
        ErrorKind::Integrity => "integrity",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Partial => "partial",
        _ => "failed",
    }
}

/// Runs one drill and records it (catalog and bucket). Returns the report;
/// the caller turns a verdict other than passed into its exit code with
/// [`verdict_error`]. Blocking: call it where blocking is allowed.
pub fn run(env: &Env, spec: &DrillSpec) -> Result<Report> {
    let drill_id = Uuid::now_v7();
    let started_at = Utc::now();
    let start = Instant::now();
    let mut watch = Stopwatch::new(start);
    let short = short_id(drill_id);
    sweep_kept_scratch(env, spec);
    let scratch_root = spec
        .scratch_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("drctl-drill-{short}"));
    make_private_dir(&scratch_root, 0o711)?;
    let deadline = start + Duration::from_secs(spec.timeout_seconds);

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut targets = Vec::new();
    let mut plan_failure: Option<Failure> = None;
    for t in &spec.targets {
        (env.say)(&format!("plan: {}", t.backup));
        match plan_target(env, spec, t) {
            Ok(planned) => targets.extend(planned),
            Err(e) => {
                plan_failure.get_or_insert(Failure {
                    stage: "plan".into(),
                    backup_id: None,
                    kind: kind_name(e.kind()).into(),
                    reason: format!("target {:?}: {}", t.backup, e.report().trim_end()),
                });
            }
        }
    }
    watch.lap(Phase::Plan);

    for t in &targets {
        let mut out = Outcome {
            selected: spec.checks.clone(),
            ..Outcome::default()
        };
        if Instant::now() > deadline {
            out.failure = Some(Failure {
                stage: "timeout".into(),
                backup_id: Some(t.row.id),
                kind: "failed".into(),
                reason: format!(
                    "the drill ran past its timeout ({} s) before restoring this backup",
                    spec.timeout_seconds
                ),
            });
            outcomes.push(out);
            continue;
        }
        let dir = scratch_root.join(format!("{}-{}", t.row.kind, short_id(t.row.id)));
        (env.say)(&format!(
            "restore: {} backup {} ({})",
            t.row.kind, t.row.id, t.row.name
        ));
        let mode = if t.row.kind == "volume" { 0o711 } else { 0o700 };
        match make_private_dir(&dir, mode) {
            Ok(()) => match t.row.kind.as_str() {
                "etcd" => etcd::drill(env, t, &dir, &mut watch, &mut out),
                "resources" => resources::drill(env, spec, t, drill_id, &mut watch, &mut out),
                "volume" => volume::drill(env, t, &dir, &mut watch, &mut out),
                other => out.fail(
                    t,
                    Phase::Plan,
                    &Error::config(format!("backup kind {other} cannot be drilled")),
                ),
            },
            Err(e) => out.fail(t, Phase::Write, &e),
        }
        outcomes.push(out);
    }
    let rto_seconds = watch.phases.total();
    let finished_at = Utc::now();

    // Verdict: objectives, then targets.
    let mut backups: Vec<BackupUnderTest> = Vec::new();
    let mut checks = Vec::new();
    let mut scratch = vec![format!("dir:{}", scratch_root.display())];
    let (mut bytes, mut objects) = (0, 0);
    let mut failure = plan_failure;
    let mut passed_targets = 0;
    let mut restore_failed = failure.is_some();
    for (t, o) in targets.iter().zip(outcomes) {
        let mut b = t.under_test.clone();
        b.bytes = o.bytes;
        b.objects = o.objects;
        backups.push(b);
        bytes += o.bytes;
        objects += o.objects;
        if o.passed() {
            passed_targets += 1;
        }
        restore_failed |= o.failure.is_some();
        if failure.is_none() {
            failure = o.failure.clone().or_else(|| {
                o.checks
                    .iter()
                    .find(|c| c.status == CheckStatus::Failed)
                    .map(|c| Failure {
                        stage: "checks".into(),
                        backup_id: Some(c.backup_id),
                        kind: "integrity".into(),
                        reason: format!("{} check {}: {}", c.source, c.name, c.summary),
                    })
            });
        }
        checks.extend(o.checks);
        scratch.extend(o.scratch);
    }
    let rpo_seconds = backups
        .iter()
        .map(|b| (started_at - b.snapshot_time).num_milliseconds() as f64 / 1000.0)
        .fold(0.0, f64::max);
    let rpo_objective = spec
        .objectives
        .rpo_seconds
        .or_else(|| {
            env.config
                .schedules
                .iter()
                .filter(|s| backups.iter().any(|b| b.name == s.name))
                .filter_map(|s| s.rpo_seconds)
                .min()
        })
        .map(|s| s as f64);
    let rto_objective = spec.objectives.rto_seconds.map(|s| s as f64);
    let (max_gap, max_gap_name, max_gap_ended_at) = max_gap(env, &backups, started_at);
    let rpo = Rpo {
        seconds: rpo_seconds,
        objective_seconds: rpo_objective,
        result: Objective::of(rpo_seconds, rpo_objective),
        max_gap_30d_seconds: max_gap,
        max_gap_name,
        max_gap_ended_at,
    };
    let rto = Rto {
        seconds: rto_seconds,
        objective_seconds: rto_objective,
        result: Objective::of(rto_seconds, rto_objective),
        phases: watch.phases,
        bytes,
        objects,
        bytes_per_second: bytes as f64 / rto_seconds.max(1e-9),
        objects_per_second: objects as f64 / rto_seconds.max(1e-9),
    };
    let breach = [
        (&rto.result, "RTO", rto_seconds, rto_objective),
        (&rpo.result, "RPO", rpo_seconds, rpo_objective),
    ]
    .into_iter()
    .find(|(r, ..)| **r == Objective::Breach)
    .map(|(_, what, got, want)| Failure {
        stage: "objectives".into(),
        backup_id: None,
        kind: "failed".into(),
        reason: format!(
            "{what} {:.1} s is over its objective of {:.0} s",
            got,
            want.unwrap_or_default()
        ),
    });
    let all = targets.len();
    let verdict = if failure.is_none() && breach.is_none() && passed_targets == all {
        Verdict::Passed
    } else if !restore_failed && breach.is_none() && passed_targets > 0 {
        Verdict::PartiallyFailed
    } else {
        Verdict::Failed
    };
    let failure = failure.or(breach);

    // Cleanup.
    let keep = verdict != Verdict::Passed || !spec.cleanup.on_success_remove;
    let cleanup = if keep && spec.cleanup.on_failure_keep_seconds > 0 {
        Cleanup {
            result: "kept".into(),
            kept_until: Some(
                finished_at
                    + chrono::Duration::seconds(spec.cleanup.on_failure_keep_seconds as i64),
            ),
            scratch: scratch.clone(),
            errors: Vec::new(),
        }
    } else {
        let errors = remove_scratch(env, spec, &scratch);
        Cleanup {
            result: if errors.is_empty() {
                "removed"
            } else {
                "failed"
            }
            .into(),
            kept_until: None,
            scratch: scratch.clone(),
            errors,
        }
    };

    let mut trend = env
        .handle
        .block_on(env.catalog.drill_trend(env.repo_id, &spec.name, 19))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no trend: the catalog did not answer");
            Vec::new()
        });
    trend.push(TrendPoint {
        drill_id,
        started_at,
        rto_seconds,
        rpo_seconds,
        verdict,
    });
    let report = Report {
        schema: report::SCHEMA.into(),
        drill_id,
        drill: spec.name.clone(),
        trigger: env.trigger.into(),
        job_id: env.job_id,
        run_by: env.run_by.clone(),
        drctl_version: crate::VERSION.into(),
        repository: env.repo.store.location(),
        started_at,
        finished_at,
        backups,
        rpo,
        rto,
        checks,
        verdict,
        failure,
        cleanup,
        trend,
    };
    record(env, spec, &report)?;
    Ok(report)
}

/// The error a drill that did not pass exits with: integrity when data did
/// not verify (exit 6), partial when some targets passed (8), failed else.
pub fn verdict_error(report: &Report) -> Option<Error> {
    if report.verdict == Verdict::Passed {
        return None;
    }
    let f = report.failure.as_ref();
    let kind = if f.is_some_and(|f| f.kind == "integrity")
        || report
            .checks
            .iter()
            .any(|c| c.status == CheckStatus::Failed)
    {
        ErrorKind::Integrity
    } else if report.verdict == Verdict::PartiallyFailed {
        ErrorKind::Partial
    } else {
        ErrorKind::Failed
    };
    let at = f
        .map(|f| format!(" at {}: {}", f.stage, f.reason))
        .unwrap_or_default();
    Some(
        Error::new(
            kind,
            format!(
                "drill {} {}{at}",
                report.drill_id,
                report.verdict.as_str().replace('_', " ")
            ),
        )
        .with_guidance(format!(
            "read the report: `drctl drill report {} -o md`; the scratch space is {}",
            report.drill_id,
            match report.cleanup.kept_until {
                Some(t) => format!("kept until {} for inspection", t.to_rfc3339()),
                None => "removed".into(),
            }
        )),
    )
}

/// Chooses and opens the backup a target names.
/// The backups a target names, opened: one, or a namespace set's members
/// (its resources and every claim's volume; a probe applies to none of
/// them, since it names no claim).
fn plan_target(env: &Env, spec: &DrillSpec, t: &TargetSpec) -> Result<Vec<Target>> {
    let given = t.backup.trim();
    // `NAME@latest`, `NAME@TIME` or an id: that backup. A plain name: the
    // one `pick` chooses among that name's backups.
    let row = if given.contains('@') || looks_like_id(given) {
        env.handle
            .block_on(env.catalog.find_backup(env.repo_id, given))?
    } else {
        match spec.pick {
            Pick::Latest => env.handle.block_on(
                env.catalog
                    .find_backup(env.repo_id, &format!("{given}@latest")),
            )?,
            Pick::LatestUnverified => {
                let id = env
                    .handle
                    .block_on(env.catalog.latest_unverified(env.repo_id, given))?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::NotFound,
                            format!("no complete backup named {given:?} is left unverified"),
                        )
                        .with_guidance("take a new backup, or drill with `pick: latest`")
                    })?;
                env.handle
                    .block_on(env.catalog.find_backup(env.repo_id, &id.to_string()))?
            }
        }
    };
    if row.kind == "namespaces" {
        let members = env.handle.block_on(env.catalog.set_members(row.id))?;
        if row.status != "complete" {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("set {} is {}, not complete", row.id, row.status),
            )
            .with_guidance("drill a complete set, or its members one by one with --backup"));
        }
        return members
            .into_iter()
            .map(|m| open_target(env, m, None))
            .collect();
    }
    Ok(vec![open_target(env, row, t.probe.clone())?])
}

/// Opens backup `row` for a drill.
fn open_target(env: &Env, row: BackupRow, probe: Option<Probe>) -> Result<Target> {
    if row.status != "complete" {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("backup {} is {}, not complete", row.id, row.status),
        )
        .with_guidance("drill a complete backup"));
    }
    let sealed = crate::repo::manifest::read_sealed(&*env.repo.store, row.id)?;
    let manifest_sha256 = hex::encode(crate::store::sha256(&sealed.bytes));
    let mut manifest = Manifest::open(
        row.id,
        &sealed.bytes,
        &env.repo.secret,
        env.repo.identity()?,
    )?;
    crate::repo::object_table::expand(env.repo, &mut manifest)?;
    let under_test = BackupUnderTest {
        backup_id: row.id,
        name: row.name.clone(),
        kind: row.kind.clone(),
        snapshot_time: row.started_at,
        etcd_revision: manifest.etcd.as_ref().map(|e| e.revision),
        manifest_sha256,
        retain_until: row.retain_until,
        bytes: 0,
        objects: 0,
    };
    Ok(Target {
        probe,
        row,
        manifest,
        under_test,
    })
}

fn looks_like_id(s: &str) -> bool {
    s.len() >= 8 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The largest gap between successful backups of the tested names over the
/// 30 days before `at`.
fn max_gap(
    env: &Env,
    backups: &[BackupUnderTest],
    at: DateTime<Utc>,
) -> (Option<f64>, Option<String>, Option<DateTime<Utc>>) {
    let mut best: (Option<f64>, Option<String>, Option<DateTime<Utc>>) = (None, None, None);
    for b in backups {
        let gap = env.handle.block_on(env.catalog.max_backup_gap(
            env.repo_id,
            &b.name,
            at - chrono::Duration::days(30),
            at,
        ));
        match gap {
            Ok(Some((g, end))) if best.0.is_none_or(|x| g > x) => {
                best = (Some(g), Some(b.name.clone()), Some(end));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "largest backup gap not computed"),
        }
    }
    best
}

/// Reads a volume backup's listing from its trees (in packs: fetching and
/// decrypting, as the data is), the catalog locating them when it can.
pub(crate) fn fill_listing(env: &Env, manifest: &mut Manifest) -> Result<()> {
    if manifest.tree.is_none() {
        return Ok(());
    }
    let packs = manifest.packs.clone();
    crate::backup::with_locate(env.handle, Some(env.catalog), env.repo, packs, |locate| {
        crate::repo::tree::fill(env.repo, manifest, locate, &crate::repo::tree::All)
    })
}

/// Seals the report into the bucket (locked like manifests) and records it
/// in the catalog, with the scratch a failed run keeps.
fn record(env: &Env, spec: &DrillSpec, report: &Report) -> Result<()> {
    let key = report::report_key(report.drill_id);
    let sealed = report::seal(report, &env.repo.secret, env.repo.recipients()?);
    let retain_until = env
        .config
        .repository
        .s3
        .as_ref()
        .map(|s3| Utc::now() + chrono::Duration::days(i64::from(s3.retention_days)));
    env.repo.store.put(
        &key,
        &sealed,
        &crate::store::PutOptions {
            sha256: crate::store::sha256(&sealed),
            retain_until,
        },
    )?;
    let kept = report.cleanup.kept_until;
    let scratch: &[String] = if kept.is_some() {
        &report.cleanup.scratch
    } else {
        &[]
    };
    env.handle.block_on(env.catalog.record_drill(
        env.repo_id,
        report,
        Some(&key),
        scratch,
        kept,
    ))?;
    if let Err(e) = env.handle.block_on(env.catalog.prune_drill_runs(
        env.repo_id,
        &spec.name,
        i64::from(spec.history_limit.max(1)),
    )) {
        tracing::warn!(error = %e, "old drill runs not pruned");
    }
    Ok(())
}

/// Removes the scratch of earlier failed runs whose keeping time is over.
fn sweep_kept_scratch(env: &Env, spec: &DrillSpec) {
    let due = match env.handle.block_on(env.catalog.due_cleanups(env.repo_id)) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "kept drill scratch not swept");
            return;
        }
    };
    for (id, scratch) in due {
        let errors = remove_scratch(env, spec, &scratch);
        if errors.is_empty() {
            let _ = env.handle.block_on(env.catalog.scratch_removed(id));
            tracing::info!(drill = %id, "kept drill scratch removed");
        } else {
            tracing::warn!(drill = %id, ?errors, "kept drill scratch not removed");
        }
    }
}

/// Removes scratch directories and namespaces; returns what failed.
fn remove_scratch(env: &Env, spec: &DrillSpec, scratch: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    let namespaces: Vec<&str> = scratch
        .iter()
        .filter_map(|s| s.strip_prefix("namespace:"))
        .collect();
    if !namespaces.is_empty()
        && let Err(e) = env
            .handle
            .block_on(resources::delete_namespaces(env, spec, &namespaces))
    {
        errors.push(e.report().trim_end().to_string());
    }
    for d in scratch.iter().filter_map(|s| s.strip_prefix("dir:")) {
        let p = Path::new(d);
        if p.exists()
            && let Err(e) = std::fs::remove_dir_all(p)
        {
            errors.push(format!("cannot remove {d}: {e}"));
        }
    }
    errors
}

/// The last 8 hex digits of an id, as `backup list` shows them.
pub(crate) fn short_id(id: Uuid) -> String {
    let s = id.simple().to_string();
    s[s.len() - 8..].to_string()
}

/// A scratch directory. An etcd's and the root are owner-only except for
/// passing through (0711): a volume's restored tree keeps its own
/// permissions (a PostgreSQL data directory is 0700 and its user's), and a
/// probe running as that user must reach it; nobody else can list names.
fn make_private_dir(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| {
            Error::io(
                e,
                ErrorKind::Failed,
                format!(
                    "cannot create the drill's scratch directory {}",
                    dir.display()
                ),
            )
        })
}

/// Opens the repository for drills: the identity (to decrypt), the
/// recipients (to seal reports), the store wrapped to time its reads.
pub fn open_repository(
    config: &Config,
    store: Arc<dyn crate::store::Store>,
    identity_file: &Path,
) -> Result<(Repository, Arc<Timed>)> {
    let timed = Arc::new(Timed::new(store));
    let enc = &config.encryption;
    let secret = enc
        .repository_secret_file
        .as_deref()
        .map(crate::repo::RepoSecret::from_file)
        .transpose()?;
    let repo = Repository::open(
        timed.clone(),
        crate::repo::Keys {
            recipients: Some(crate::repo::Recipients::parse(&enc.recipients)?),
            secret,
            identity: Some(crate::repo::Identity::from_file(identity_file)?),
        },
        enc.repository_fingerprint.as_deref(),
    )?;
    Ok((repo, timed))
}

#[cfg(test)]
mod tests {
    use super::report::*;
    use super::*;

    /// Laps and splits tile the time since the start: the phases add up to
    /// the wall time, whatever the order.
    #[test]
    fn the_stopwatch_tiles_the_wall_time() {
        let start = Instant::now();
        let mut w = Stopwatch::new(start);
        std::thread::sleep(Duration::from_millis(20));
        w.lap(Phase::Plan);
        std::thread::sleep(Duration::from_millis(30));
        // More reading than time passed is cut to the time passed.
        w.split(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
        w.lap(Phase::Checks);
        let wall = start.elapsed().as_secs_f64();
        let total = w.phases.total();
        assert!(total <= wall && wall - total < 0.005, "{total} vs {wall}");
        assert_eq!(w.phases.write, 0.0);
        assert!(w.phases.fetch_decrypt >= 0.03);
    }

    #[test]
    fn objectives_pass_at_the_objective_and_breach_past_it() {
        assert_eq!(Objective::of(10.0, Some(10.0)), Objective::Pass);
        assert_eq!(Objective::of(10.1, Some(10.0)), Objective::Breach);
        assert_eq!(Objective::of(10.1, None), Objective::None);
    }

    fn report(verdict: Verdict, failure: Option<(&str, &str)>) -> Report {
        let now = Utc::now();
        Report {
            schema: SCHEMA.into(),
            drill_id: Uuid::now_v7(),
            drill: "d".into(),
            trigger: "manual".into(),
            job_id: None,
            run_by: "t".into(),
            drctl_version: crate::VERSION.into(),
            repository: "file:///r".into(),
            started_at: now,
            finished_at: now,
            backups: Vec::new(),
            rpo: Rpo {
                seconds: 1.0,
                objective_seconds: None,
                result: Objective::None,
                max_gap_30d_seconds: None,
                max_gap_name: None,
                max_gap_ended_at: None,
            },
            rto: Rto {
                seconds: 1.0,
                objective_seconds: None,
                result: Objective::None,
                phases: Phases::default(),
                bytes: 0,
                objects: 0,
                bytes_per_second: 0.0,
                objects_per_second: 0.0,
            },
            checks: Vec::new(),
            verdict,
            failure: failure.map(|(stage, kind)| Failure {
                stage: stage.into(),
                backup_id: None,
                kind: kind.into(),
                reason: "r".into(),
            }),
            cleanup: Cleanup {
                result: "removed".into(),
                kept_until: None,
                scratch: Vec::new(),
                errors: Vec::new(),
            },
            trend: Vec::new(),
        }
    }

    /// Scripts branch on the exit code: damaged data is 6 whatever else
    /// happened, partial is 8, a breach is 1.
    #[test]
    fn verdicts_map_to_exit_codes() {
        assert!(verdict_error(&report(Verdict::Passed, None)).is_none());
        let code = |r: &Report| verdict_error(r).unwrap().kind().exit_code();
        assert_eq!(
            code(&report(
                Verdict::Failed,
                Some(("fetch_decrypt", "integrity"))
            )),
            6
        );
        assert_eq!(
            code(&report(Verdict::Failed, Some(("objectives", "failed")))),
            1
        );
        assert_eq!(
            code(&report(Verdict::Failed, Some(("start", "unavailable")))),
            1
        );
        assert_eq!(
            code(&report(Verdict::PartiallyFailed, Some(("write", "failed")))),
            8
        );
    }

    /// The sealed report opens with the repository's keys only, and a
    /// report sealed under another id (a bucket writer moving one) does not.
    #[test]
    fn sealed_reports_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::keys::generate(&dir.path().join("id.txt")).unwrap();
        let recipients = crate::repo::Recipients::parse(&[key.recipient]).unwrap();
        let identity = crate::repo::Identity::from_file(&dir.path().join("id.txt")).unwrap();
        let secret = crate::repo::RepoSecret::generate(Uuid::new_v4(), [0; 32]).unwrap();
        let r = report(Verdict::Passed, None);
        let sealed = seal(&r, &secret, &recipients);
        assert_eq!(open(r.drill_id, &sealed, &secret, &identity).unwrap(), r);
        let moved = open(Uuid::now_v7(), &sealed, &secret, &identity).unwrap_err();
        assert_eq!(moved.kind(), ErrorKind::Integrity);
        let other = crate::repo::RepoSecret::generate(Uuid::new_v4(), [1; 32]).unwrap();
        let forged = seal(&r, &other, &recipients);
        let err = open(r.drill_id, &forged, &secret, &identity).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
    }
}
