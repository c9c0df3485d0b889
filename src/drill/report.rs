//! The drill report: what a drill proved, measured and left behind.
//!
//! JSON is the canonical form (schema [`SCHEMA`], documented in
//! docs/drills.md): it is what the catalog and the bucket keep and what
//! `drctl drill report -o json` prints. Markdown and HTML are rendered from
//! it ([`super::render`]), never from the run itself, so the three always
//! say the same. Nothing in a report is a value read from the backed-up
//! data: names, counts, sizes, timings, digests of non-secret objects and
//! verdicts only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema id of the JSON form; bumped on an incompatible change.
pub const SCHEMA: &str = "drctl.drill-report/v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: String,
    /// This run's id (UUIDv7): `reports/<drill_id>` in the bucket.
    pub drill_id: Uuid,
    /// The drill's name: a configured drill's, or `manual` for a drill of
    /// backups named on the command line.
    pub drill: String,
    /// `scheduled` (enqueued by `drctl server`) or `manual`.
    pub trigger: String,
    /// The job that ran it, for scheduled drills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// Who ran it: `user@host` for manual drills, the worker for scheduled.
    pub run_by: String,
    pub drctl_version: String,
    /// Where the backups were read from (`s3://bucket/prefix`).
    pub repository: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The backups under test, one per target.
    pub backups: Vec<BackupUnderTest>,
    pub rpo: Rpo,
    pub rto: Rto,
    /// Every check of every target, in the order run.
    pub checks: Vec<Check>,
    pub verdict: Verdict,
    /// Why the drill did not pass: the first stage that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    pub cleanup: Cleanup,
    /// The previous runs of the same drill, oldest first, and this one
    /// last: what the HTML trend draws.
    #[serde(default)]
    pub trend: Vec<TrendPoint>,
}

/// One backup a drill restored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupUnderTest {
    pub backup_id: Uuid,
    /// Its name (the schedule's, for scheduled backups).
    pub name: String,
    /// `etcd`, `resources` or `volume`.
    pub kind: String,
    /// When the backup started reading its source: the data is at least
    /// this new.
    pub snapshot_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_revision: Option<i64>,
    /// SHA-256 of the sealed manifest object as stored (hex).
    pub manifest_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<DateTime<Utc>>,
    /// Data restored: bytes and objects (files, keys or API objects).
    pub bytes: u64,
    pub objects: u64,
}

/// Pass or breach against an objective; `none` when there is none.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    Pass,
    Breach,
    None,
}

impl Objective {
    pub fn of(seconds: f64, objective: Option<f64>) -> Objective {
        match objective {
            None => Objective::None,
            Some(o) if seconds <= o => Objective::Pass,
            Some(_) => Objective::Breach,
        }
    }
}

/// Data age: how much would have been lost had the disaster struck when
/// the drill started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rpo {
    /// Drill start minus the oldest snapshot time of the backups tested.
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_seconds: Option<f64>,
    pub result: Objective,
    /// The largest gap between consecutive successful backups of any
    /// tested backup's name over the 30 days before the drill, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap_30d_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap_ended_at: Option<DateTime<Utc>>,
}

/// Time to restore: the drill's start to all checks done, in phases that
/// add up to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rto {
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_seconds: Option<f64>,
    pub result: Objective,
    pub phases: Phases,
    pub bytes: u64,
    pub objects: u64,
    pub bytes_per_second: f64,
    pub objects_per_second: f64,
}

/// Wall time per phase, seconds. Together they are the RTO.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Phases {
    /// Finding the backups, reading manifests, planning.
    pub plan: f64,
    /// Reading packs from the store (wall time with a read in flight) and
    /// decrypting what no write overlapped.
    pub fetch_decrypt: f64,
    /// Writing files, restoring etcd's data directory, applying objects.
    pub write: f64,
    /// Starting what was restored: the throwaway etcd, the stand-in API
    /// server over it.
    pub start: f64,
    /// Comparing what was restored with what was backed up, probes,
    /// readiness.
    pub checks: f64,
}

impl Phases {
    pub fn total(&self) -> f64 {
        self.plan + self.fetch_decrypt + self.write + self.start + self.checks
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Passed,
    Failed,
    /// The cluster cannot show it (no controllers to make workloads
    /// ready); not a failure.
    NotObservable,
    /// Not run: an earlier stage of the same target failed.
    Skipped,
}

impl CheckStatus {
    /// Passed when `ok`, failed otherwise.
    pub fn of(ok: bool) -> CheckStatus {
        if ok {
            CheckStatus::Passed
        } else {
            CheckStatus::Failed
        }
    }
}

/// One check of one target, with evidence that holds no secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub backup_id: Uuid,
    /// `etcd`, `resources` or `volume`.
    pub source: String,
    /// e.g. `revision`, `hashkv`, `api_object_counts`, `object_digests`,
    /// `readiness`, `file_digests`, `probe`.
    pub name: String,
    pub status: CheckStatus,
    pub seconds: f64,
    /// One line for people.
    pub summary: String,
    /// Names, counts and digests: never a value from the data.
    #[serde(default)]
    pub evidence: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    /// Some targets passed every check, others did not.
    PartiallyFailed,
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::PartiallyFailed => "partially_failed",
            Verdict::Failed => "failed",
        }
    }
}

/// Where a drill stopped passing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    /// `plan`, `fetch_decrypt`, `write`, `start`, `checks` or `objectives`.
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<Uuid>,
    /// The error kind (`integrity`, `unavailable`, …) as exit codes name it.
    pub kind: String,
    pub reason: String,
}

/// What was done with the scratch space.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cleanup {
    /// `removed`, `kept` (until `kept_until`) or `failed`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_until: Option<DateTime<Utc>>,
    /// Scratch directories and namespaces (names only).
    pub scratch: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One run of a drill, for the trend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrendPoint {
    pub drill_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub rto_seconds: f64,
    pub rpo_seconds: f64,
    pub verdict: Verdict,
}

/// Where a report is kept in the bucket.
pub fn report_key(id: Uuid) -> String {
    format!("reports/{id}")
}

/// The MAC domain of reports: a manifest cannot pass for a report.
const DOMAIN: &[u8] = b"drctl drill report v1";

/// Serialises, authenticates (with the repository's manifest MAC key, in a
/// domain of its own) and encrypts a report, as manifests are: a bucket
/// writer can neither read one nor plant one.
pub fn seal(
    report: &Report,
    secret: &crate::repo::RepoSecret,
    recipients: &crate::repo::Recipients,
) -> Vec<u8> {
    let json = serde_json::to_vec(report).expect("reports serialise");
    crate::repo::manifest::seal(DOMAIN, report.drill_id, &json, secret, recipients)
}

/// Decrypts and authenticates the report of drill run `id`.
pub fn open(
    id: Uuid,
    sealed: &[u8],
    secret: &crate::repo::RepoSecret,
    identity: &crate::repo::Identity,
) -> crate::Result<Report> {
    use crate::error::{Error, ErrorKind};
    let what = format!("the report of drill {id}");
    let json = crate::repo::manifest::open(DOMAIN, id, sealed, secret, identity, &what, 64 << 20)?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Integrity,
                format!(
                    "{what} failed authentication: it was not written by this repository's drills"
                ),
            )
            .with_guidance(
                "someone with write access to the bucket may have planted it; read the catalog's copy",
            )
        })?;
    serde_json::from_slice(&json).map_err(|e| {
        Error::new(ErrorKind::Integrity, format!("{what} does not parse")).with_source(e)
    })
}
