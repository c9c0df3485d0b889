//! Schedules: what to back up, when, and for how long to keep it.
//!
//! Declared in the configuration file (`schedules:`, the GitOps source of
//! truth), mirrored into the catalog by `drctl server` at start and on
//! SIGHUP. The leader turns due slots into jobs with [`tick`], a pure
//! function of the schedule, what the catalog remembers of it and the
//! time, so every rule here is tested under an injected clock.

pub mod cron;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

pub use self::cron::Cron;
use crate::error::{Error, Result};
use crate::retention::Policy;

/// One schedule as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique; also the name of its backups (`NAME@latest`).
    pub name: String,
    /// Five-field cron expression or `@hourly`, `@daily`, ….
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[serde(default = "utc")]
    pub time_zone: String,
    #[serde(default)]
    pub paused: bool,
    /// No run when the schedule is created or resumed: the first run is
    /// the next slot. Without it, creating or resuming runs the latest slot
    /// at once.
    #[serde(default)]
    pub skip_immediately: bool,
    /// A slot not started within this many seconds of its time is missed.
    #[serde(default = "default_deadline")]
    pub starting_deadline_seconds: u64,
    /// What to do with slots missed while no server ran (or while paused).
    #[serde(default)]
    pub catch_up: CatchUp,
    /// `source: {volume: {path: …}}`, `{etcd: {}}` or `{resources: {…}}`:
    /// a one-key map, as people write YAML (not a `!volume` tag).
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    pub source: SourceSpec,
    #[serde(default)]
    pub retention: Policy,
    /// The least time its objects stay locked, whatever retention says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lock_days: Option<u32>,
    /// The recovery point objective: the most data, in seconds, the
    /// schedule may lose. Drills and alerts measure against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<u64>,
}

fn utc() -> String {
    "UTC".into()
}

fn default_deadline() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed slots are recorded as missed; the next slot runs on time.
    None,
    /// The newest missed slot runs at once; older ones are recorded missed.
    #[default]
    Latest,
}

/// What a schedule backs up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SourceSpec {
    /// The etcd of the configuration's `etcd:` section.
    Etcd {},
    /// API resources, with the scope flags of `drctl backup resources`.
    Resources {
        #[serde(default)]
        include_namespaces: Vec<String>,
        #[serde(default)]
        exclude_namespaces: Vec<String>,
        #[serde(default)]
        include_resources: Vec<String>,
        #[serde(default)]
        exclude_resources: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<String>,
    },
    /// A directory on the machine the server runs on.
    Volume { path: std::path::PathBuf },
    /// Namespaces with their data: a set of the resources and one volume
    /// backup per claim, each by the agent of its node (docs/agent.md).
    Namespaces {
        include_namespaces: Vec<String>,
        #[serde(default)]
        exclude_namespaces: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<String>,
        /// A claim's job waits this long for its node's agent.
        #[serde(default = "default_agent_timeout")]
        agent_timeout_seconds: u64,
        /// The image of the helper pods that mount claims no pod mounts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        helper_image: Option<String>,
    },
}

fn default_agent_timeout() -> u64 {
    60
}

impl SourceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Etcd {} => "etcd",
            SourceSpec::Resources { .. } => "resources",
            SourceSpec::Volume { .. } => "volume",
            SourceSpec::Namespaces { .. } => "namespaces",
        }
    }

    /// A resources or namespaces source's scope, as `drctl backup
    /// resources` builds it from its flags; `None` for the other sources.
    pub fn scope(&self) -> Result<Option<crate::resources::scope::Scope>> {
        let flags = match self {
            SourceSpec::Resources {
                include_namespaces,
                exclude_namespaces,
                include_resources,
                exclude_resources,
                selector,
            } => crate::resources::scope::ScopeFlags {
                include_namespaces: include_namespaces.clone(),
                exclude_namespaces: exclude_namespaces.clone(),
                include_resources: include_resources.clone(),
                exclude_resources: exclude_resources.clone(),
                selector: selector.clone(),
                cluster_resources: None,
            },
            SourceSpec::Namespaces {
                include_namespaces,
                exclude_namespaces,
                selector,
                ..
            } => {
                if include_namespaces.is_empty() {
                    return Err(Error::config(
                        "a namespaces source needs include_namespaces",
                    ));
                }
                crate::resources::scope::ScopeFlags {
                    include_namespaces: include_namespaces.clone(),
                    exclude_namespaces: exclude_namespaces.clone(),
                    include_resources: Vec::new(),
                    exclude_resources: Vec::new(),
                    selector: selector.clone(),
                    cluster_resources: None,
                }
            }
            _ => return Ok(None),
        };
        crate::resources::scope::Scope::new(&flags).map(Some)
    }
}

impl ScheduleSpec {
    /// Checks everything that can be checked without a cluster: the name,
    /// the expression and zone, the resource scope.
    pub fn validate(&self) -> Result<Cron> {
        let bad = |what: String| Error::config(format!("schedule {:?}: {what}", self.name));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad("a name is letters, digits, '-', '_' and '.'".into())
                .with_guidance("rename it, e.g. `etcd-hourly`"));
        }
        let cron = Cron::parse(&self.cron, &self.time_zone)
            .map_err(|e| e.context(format!("schedule {:?}", self.name)))?;
        self.source
            .scope()
            .map_err(|e| e.context(format!("schedule {:?}", self.name)))?;
        Ok(cron)
    }

    pub fn starting_deadline(&self) -> Duration {
        Duration::seconds(self.starting_deadline_seconds.min(i64::MAX as u64 / 2000) as i64)
    }
}

/// What the catalog remembers of a schedule between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The newest slot decided (run, skipped or missed). `None`: created or
    /// resumed without `skip_immediately`, so the latest slot runs at once.
    pub last_slot: Option<DateTime<Utc>>,
}

impl Cursor {
    /// The cursor of a schedule created (or resumed) at `now`.
    pub fn activated(spec: &ScheduleSpec, now: DateTime<Utc>) -> Cursor {
        Cursor {
            last_slot: spec.skip_immediately.then_some(now),
        }
    }
}

/// What happens to one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Enqueued. `trigger` says why: `schedule`, `catch_up` or `activation`.
    Run {
        slot: DateTime<Utc>,
        trigger: &'static str,
    },
    /// Not run: the reason is recorded on the slot's row.
    Skipped { slot: DateTime<Utc>, reason: String },
    /// Not started within the starting deadline.
    Missed { slot: DateTime<Utc>, reason: String },
}

impl Decision {
    pub fn slot(&self) -> DateTime<Utc> {
        match self {
            Decision::Run { slot, .. }
            | Decision::Skipped { slot, .. }
            | Decision::Missed { slot, .. } => *slot,
        }
    }
}

/// How far back a new schedule looks for the slot it runs at once: a
/// yearly schedule's latest slot is within a year and a day.
const ACTIVATION_LOOKBACK_DAYS: i64 = 367;

/// The decisions for the slots of `spec` due at `now`, oldest first, and
/// the cursor after them. `busy` names a run of the schedule still queued
/// or running (concurrency is forbid: a slot that finds one is skipped).
/// A paused schedule decides nothing and keeps its cursor: on resume, the
/// slots it missed are caught up by its policy, as after an outage.
pub fn tick(
    spec: &ScheduleSpec,
    cron: &Cron,
    paused: bool,
    cursor: Cursor,
    busy: Option<&str>,
    now: DateTime<Utc>,
) -> (Vec<Decision>, Cursor) {
    if paused {
        return (Vec::new(), cursor);
    }
    let (due, activation) = match cursor.last_slot {
        Some(last) => (cron.slots(last, now), false),
        None => (
            cron.latest_at_or_before(now, Duration::days(ACTIVATION_LOOKBACK_DAYS))
                .into_iter()
                .collect(),
            true,
        ),
    };
    let Some(&newest) = due.last() else {
        // A new schedule with no slot in the past: it starts from now.
        let last_slot = cursor.last_slot.or(Some(now));
        return (Vec::new(), Cursor { last_slot });
    };
    let deadline = spec.starting_deadline();
    let mut out = Vec::with_capacity(due.len());
    let mut runs = Vec::new();
    for &slot in &due {
        let late = now - slot;
        if activation {
            runs.push((slot, "activation"));
        } else if late <= deadline {
            runs.push((slot, "schedule"));
        } else if spec.catch_up == CatchUp::Latest && slot == newest {
            runs.push((slot, "catch_up"));
        } else {
            out.push(Decision::Missed {
                slot,
                reason: format!(
                    "not started within the starting deadline ({}s): {}s late{}",
                    deadline.num_seconds(),
                    late.num_seconds(),
                    match spec.catch_up {
                        CatchUp::Latest => "; a newer slot ran instead",
                        CatchUp::None => " (catch_up: none)",
                    }
                ),
            });
        }
    }
    // Forbid: at most one run at a time, the newest slot.
    if let Some(&(slot, trigger)) = runs.last() {
        for &(older, _) in &runs[..runs.len() - 1] {
            out.push(Decision::Skipped {
                slot: older,
                reason: format!(
                    "slot {} runs instead (concurrency: forbid)",
                    slot.to_rfc3339()
                ),
            });
        }
        out.push(match busy {
            Some(run) => Decision::Skipped {
                slot,
                reason: format!("the previous run {run} is still going (concurrency: forbid)"),
            },
            None => Decision::Run { slot, trigger },
        });
    }
    out.sort_by_key(Decision::slot);
    (
        out,
        Cursor {
            last_slot: Some(newest),
        },
    )
}

#[cfg(test)]
mod tests;
