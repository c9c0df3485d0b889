//! A drill as configured (`drills:`), or as `drctl drill run` builds one
//! from its flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::Cron;

/// The checks a drill's `checks` can choose from.
pub const CHECKS: &[&str] = &[
    "api_object_counts",
    "object_digests",
    "readiness",
    "file_digests",
    "probe",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillSpec {
    /// Unique among drills; names its runs and metrics.
    pub name: String,
    /// When `drctl server` runs it (five fields or a macro); absent: only
    /// on demand (`drctl drill run NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default = "utc")]
    pub time_zone: String,
    #[serde(default)]
    pub paused: bool,
    /// The backups to restore, one per target.
    pub targets: Vec<TargetSpec>,
    /// Which backup of a target's name: the newest, or the newest no
    /// passed drill has proved yet.
    #[serde(default)]
    pub pick: Pick,
    #[serde(default)]
    pub objectives: Objectives,
    /// The checks to run, of [`CHECKS`]; absent: all. Restoring is never
    /// optional, and etcd's keyspace comparison always runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    /// A drill still running after this is stopped and failed.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default)]
    pub cleanup: CleanupSpec,
    /// Runs kept in the catalog (the bucket keeps every report under its
    /// lock).
    #[serde(default = "default_history")]
    pub history_limit: u32,
    /// How long to wait for restored workloads to become ready where the
    /// cluster runs controllers; past it without any controller answering,
    /// readiness is "not observable".
    #[serde(default = "default_readiness")]
    pub readiness_timeout_seconds: u64,
    /// The cluster resources are restored into (scratch namespaces
    /// `drill-<ns>-<short id>`); absent: `kubernetes.kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Where scratch directories go; absent: the system's temporary
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_dir: Option<PathBuf>,
}

/// One backup of a drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// A backup name (a schedule's name: `pick` chooses which of its
    /// backups), `NAME@latest`, or a backup id.
    pub backup: String,
    /// For volume backups: a command run on the restored directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

/// A command that proves a restored volume works, not only that its bytes
/// are right: it gets the restored directory as `{path}` in its arguments
/// and as `DRCTL_RESTORED_PATH`, and passes by exiting 0 in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub command: Vec<String>,
    #[serde(default = "default_probe_timeout")]
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    #[default]
    Latest,
    LatestUnverified,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    /// Most seconds a restore may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<u64>,
    /// Most data age, in seconds; absent: the smallest `rpo_seconds` of
    /// the targets' schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupSpec {
    /// Remove the scratch of a passed drill (default) or keep it as long
    /// as a failed one's.
    #[serde(default = "yes")]
    pub on_success_remove: bool,
    /// How long a failed drill's scratch is kept for inspection, then
    /// removed by the next drill run or `drctl worker --drills`.
    #[serde(default = "default_keep")]
    pub on_failure_keep_seconds: u64,
}

impl Default for CleanupSpec {
    fn default() -> Self {
        CleanupSpec {
            on_success_remove: true,
            on_failure_keep_seconds: default_keep(),
        }
    }
}

fn utc() -> String {
    "UTC".into()
}
fn yes() -> bool {
    true
}
fn default_timeout() -> u64 {
    3600
}
fn default_history() -> u32 {
    52
}
fn default_readiness() -> u64 {
    10
}
fn default_probe_timeout() -> u64 {
    120
}
fn default_keep() -> u64 {
    86_400
}

impl DrillSpec {
    /// A drill of the backups given on the command line.
    pub fn manual(targets: Vec<TargetSpec>) -> DrillSpec {
        DrillSpec {
            name: "manual".into(),
            cron: None,
            time_zone: utc(),
            paused: false,
            targets,
            pick: Pick::Latest,
            objectives: Objectives::default(),
            checks: None,
            timeout_seconds: default_timeout(),
            cleanup: CleanupSpec::default(),
            history_limit: default_history(),
            readiness_timeout_seconds: default_readiness(),
            kubeconfig: None,
            scratch_dir: None,
        }
    }

    /// Checks what can be checked without services; the cron, parsed,
    /// when there is one.
    pub fn validate(&self) -> Result<Option<Cron>> {
        let bad = |what: &str| Error::config(format!("drill {:?}: {what}", self.name));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad("a name is letters, digits, '-', '_' and '.'"));
        }
        if self.targets.is_empty() {
            return Err(bad("no targets: name at least one backup to restore")
                .with_guidance("targets: [{backup: etcd-hourly}]"));
        }
        for t in &self.targets {
            if t.backup.trim().is_empty() {
                return Err(bad("a target has an empty `backup`"));
            }
            if let Some(p) = &t.probe
                && p.command.is_empty()
            {
                return Err(bad("a probe has an empty command"));
            }
        }
        for c in self.checks.iter().flatten() {
            if !CHECKS.contains(&c.as_str()) {
                return Err(bad(&format!("unknown check {c:?}"))
                    .with_guidance(format!("checks are {}", CHECKS.join(", "))));
            }
        }
        self.cron
            .as_deref()
            .map(|c| {
                Cron::parse(c, &self.time_zone)
                    .map_err(|e| e.context(format!("drill {:?}", self.name)))
            })
            .transpose()
    }
}
