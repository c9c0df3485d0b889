//! Which backups of a schedule are kept: grandfather-father-son.
//!
//! The rules are restic's `forget` rules, which operators already read
//! fluently: `keep_last` keeps the newest N successful backups; `hourly`,
//! `daily`, `weekly` (ISO weeks, Monday first), `monthly` and `yearly` keep,
//! for each of the newest N periods that hold a successful backup, the
//! newest backup of that period. The tiers are independent: one backup can
//! be the daily, the weekly and the monthly one at once. Periods are read
//! on the schedule's own time zone, so "daily" means the operator's day.
//! `keep_failed` keeps the newest N backups that did not complete (kept
//! for inspection, never restored from). A backup is kept if any rule
//! keeps it; `max_age` then caps all of it: nothing older is kept, whatever
//! the rules (absent: no cap).
//!
//! Two things no policy can do: delete the newest complete backup (the
//! only one a restore can rely on), and delete a backup that is still
//! being written. Both are kept with the reason said.
//!
//! The plan also says how long each kept backup will stay kept, assuming a
//! backup in every period to come: a backup kept as the 3rd of 12 monthly
//! ones stays until its month is 12 months old. Its objects' Object Lock
//! is extended to that time, so a backup promoted to a longer tier cannot
//! be deleted from the bucket before the catalog lets it go. Locks are
//! only ever extended: a later run that finds a backup kept longer than
//! planned extends again.

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A schedule's retention rules (`retention:` in its configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Policy {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
    #[serde(default)]
    pub keep_failed: u32,
    /// Seconds; nothing older is kept. `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
}

impl Policy {
    /// A policy that keeps nothing but the newest backup is almost always a
    /// mistake in a configuration file: said when it is loaded.
    pub fn keeps_history(&self) -> bool {
        self.keep_last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly > 1
    }
}

/// What retention knows of a backup.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: Uuid,
    pub created: DateTime<Utc>,
    pub state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Complete,
    /// Failed, interrupted or partial: never restored from.
    Failed,
    /// Still being written: never touched.
    Running,
}

/// The verdict on one backup, with every reason that applied.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub backup_id: Uuid,
    pub created: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<String>,
    /// For a kept backup: until when the rules that keep it will keep it
    /// (the Object Lock extension). `None`: kept by a rule with no end
    /// (the newest backup, or one still running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_until: Option<DateTime<Utc>>,
}

/// The plan for a schedule's backups at `now`, newest first.
/// `interval` is the schedule's expected interval (what `keep_last`'s
/// horizon is measured in).
pub fn plan(
    policy: &Policy,
    tz: Tz,
    interval: Duration,
    backups: &[Candidate],
    now: DateTime<Utc>,
) -> Vec<Verdict> {
    let mut order: Vec<&Candidate> = backups.iter().collect();
    order.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
    let mut out: Vec<Verdict> = order
        .iter()
        .map(|c| Verdict {
            backup_id: c.id,
            created: c.created,
            keep: false,
            reasons: Vec::new(),
            keep_until: None,
        })
        .collect();
    let keep = |v: &mut Verdict, why: String, until: Option<DateTime<Utc>>| {
        v.keep = true;
        v.reasons.push(why);
        v.keep_until = match (v.keep_until, until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    };

    let complete: Vec<usize> = (0..order.len())
        .filter(|&i| order[i].state == State::Complete)
        .collect();
    for (n, &i) in complete.iter().take(policy.keep_last as usize).enumerate() {
        let until = order[i].created + interval * (policy.keep_last as i32);
        keep(
            &mut out[i],
            format!("last {}/{}", n + 1, policy.keep_last),
            Some(until),
        );
    }
    for tier in Tier::ALL {
        let count = tier.count(policy);
        let mut seen: Option<i64> = None;
        let mut n = 0;
        for &i in &complete {
            if n >= count {
                break;
            }
            let local = order[i].created.with_timezone(&tz);
            let bucket = tier.bucket(&local);
            if seen == Some(bucket) {
                continue; // an older backup of a period already kept
            }
            seen = Some(bucket);
            n += 1;
            let until = tier.end_of_keep(&local, count, tz);
            keep(
                &mut out[i],
                format!("{} {n}/{count} ({})", tier.name(), tier.label(&local)),
                Some(until),
            );
        }
    }
    let failed = (0..order.len()).filter(|&i| order[i].state == State::Failed);
    for (n, i) in failed.take(policy.keep_failed as usize).enumerate() {
        keep(
            &mut out[i],
            format!("failed {}/{}", n + 1, policy.keep_failed),
            None,
        );
    }
    if let Some(max) = policy.max_age_seconds {
        let max = Duration::seconds(max.min(i64::MAX as u64 / 2) as i64);
        for v in out.iter_mut() {
            if now - v.created > max {
                v.keep = false;
                v.keep_until = None;
                v.reasons = vec![format!("older than max_age ({})", human(max))];
            } else if let Some(until) = v.keep_until {
                v.keep_until = Some(until.min(v.created + max));
            }
        }
    }
    for (i, v) in out.iter_mut().enumerate() {
        if order[i].state == State::Running {
            v.keep = true;
            v.keep_until = None;
            v.reasons = vec!["still running".into()];
        }
    }
    if let Some(&newest) = complete.first()
        && !out[newest].keep
    {
        let v = &mut out[newest];
        v.keep = true;
        v.reasons
            .push("the newest complete backup is always kept".into());
    }
    for v in &mut out {
        if !v.keep && v.reasons.is_empty() {
            v.reasons.push("no rule keeps it".into());
        }
    }
    out
}

fn human(d: Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s => format!("{s}s"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Tier {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Tier {
    const ALL: [Tier; 5] = [
        Tier::Hourly,
        Tier::Daily,
        Tier::Weekly,
        Tier::Monthly,
        Tier::Yearly,
    ];

    fn name(self) -> &'static str {
        match self {
            Tier::Hourly => "hourly",
            Tier::Daily => "daily",
            Tier::Weekly => "weekly",
            Tier::Monthly => "monthly",
            Tier::Yearly => "yearly",
        }
    }

    fn count(self, p: &Policy) -> usize {
        (match self {
            Tier::Hourly => p.hourly,
            Tier::Daily => p.daily,
            Tier::Weekly => p.weekly,
            Tier::Monthly => p.monthly,
            Tier::Yearly => p.yearly,
        }) as usize
    }

    /// A number that is the same for two times in the same period.
    fn bucket(self, t: &DateTime<Tz>) -> i64 {
        let day = t.date_naive().num_days_from_ce() as i64;
        match self {
            Tier::Hourly => day * 24 + t.hour() as i64,
            Tier::Daily => day,
            Tier::Weekly => {
                let w = t.iso_week();
                w.year() as i64 * 100 + w.week() as i64
            }
            Tier::Monthly => t.year() as i64 * 12 + t.month0() as i64,
            Tier::Yearly => t.year() as i64,
        }
    }

    fn label(self, t: &DateTime<Tz>) -> String {
        match self {
            Tier::Hourly => t.format("%Y-%m-%d %H:00").to_string(),
            Tier::Daily => t.format("%Y-%m-%d").to_string(),
            Tier::Weekly => {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
            Tier::Monthly => t.format("%Y-%m").to_string(),
            Tier::Yearly => t.format("%Y").to_string(),
        }
    }

    /// When a backup of `t`'s period falls out of the newest `count`
    /// periods, if a backup is taken in every period after it.
    fn end_of_keep(self, t: &DateTime<Tz>, count: usize, tz: Tz) -> DateTime<Utc> {
        let n = count as u32;
        let date = t.date_naive();
        let start_of = |d: NaiveDate| -> DateTime<Utc> {
            let naive = d.and_hms_opt(0, 0, 0).expect("midnight exists");
            tz.from_local_datetime(&naive)
                .earliest()
                .unwrap_or_else(|| tz.from_utc_datetime(&naive))
                .with_timezone(&Utc)
        };
        match self {
            Tier::Hourly => {
                let hour = t
                    .with_minute(0)
                    .and_then(|t| t.with_second(0))
                    .unwrap_or(*t);
                (hour + Duration::hours(n as i64)).with_timezone(&Utc)
            }
            Tier::Daily => start_of(date + Duration::days(n as i64)),
            Tier::Weekly => {
                let monday = date - Duration::days(date.weekday().num_days_from_monday() as i64);
                start_of(monday + Duration::weeks(n as i64))
            }
            Tier::Monthly => {
                let first = date.with_day(1).expect("day 1");
                start_of(first + Months::new(n))
            }
            Tier::Yearly => {
                let first = NaiveDate::from_ymd_opt(date.year(), 1, 1).expect("1 January");
                start_of(first + Months::new(12 * n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn daily_backups(from: &str, days: i64) -> Vec<Candidate> {
        (0..days)
            .map(|d| Candidate {
                id: Uuid::from_u128(d as u128 + 1),
                created: at(from) + Duration::days(d),
                state: State::Complete,
            })
            .collect()
    }

    fn kept_days(v: &[Verdict]) -> Vec<String> {
        let mut days: Vec<String> = v
            .iter()
            .filter(|v| v.keep)
            .map(|v| v.created.format("%m-%d").to_string())
            .collect();
        days.sort();
        days
    }

    /// A year of daily backups at 01:00 UTC, kept 7 daily, 4 weekly, 12
    /// monthly, 2 yearly: the table worked out by hand from a calendar of
    /// 2026 (28 December is a Monday).
    #[test]
    fn a_year_of_daily_backups_keeps_the_hand_computed_set() {
        let backups = daily_backups("2026-01-01T01:00:00Z", 365);
        let policy = Policy {
            daily: 7,
            weekly: 4,
            monthly: 12,
            yearly: 2,
            ..Policy::default()
        };
        let v = plan(
            &policy,
            Tz::UTC,
            Duration::days(1),
            &backups,
            at("2026-12-31T12:00:00Z"),
        );
        let expected = [
            // monthly: the last day of January to November
            "01-31", "02-28", "03-31", "04-30", "05-31", "06-30", "07-31", "08-31", "09-30",
            "10-31", "11-30", // weekly: the Sundays ending the weeks before the current
            "12-13",
            "12-20", // daily: the last 7 days (31 Dec is also weekly, monthly, yearly)
            "12-25", "12-26", "12-27", "12-28", "12-29", "12-30", "12-31",
        ];
        assert_eq!(kept_days(&v), expected);
        let newest = &v[0];
        assert_eq!(newest.created, at("2026-12-31T01:00:00Z"));
        assert_eq!(
            newest.reasons,
            [
                "daily 1/7 (2026-12-31)",
                "weekly 1/4 (2026-W53)",
                "monthly 1/12 (2026-12)",
                "yearly 1/2 (2026)"
            ]
        );
        // Kept as a yearly backup: locked until 2028 begins.
        assert_eq!(newest.keep_until, Some(at("2028-01-01T00:00:00Z")));
        let june = v
            .iter()
            .find(|v| v.created == at("2026-06-30T01:00:00Z"))
            .unwrap();
        assert_eq!(june.keep_until, Some(at("2027-06-01T00:00:00Z")));
        let dropped = v
            .iter()
            .find(|v| v.created == at("2026-06-29T01:00:00Z"))
            .unwrap();
        assert!(!dropped.keep);
        assert_eq!(dropped.reasons, ["no rule keeps it"]);
    }

    #[test]
    fn days_are_the_schedules_days() {
        // 23:30 UTC is the next day in Berlin: two backups, one Berlin day.
        let backups = vec![
            Candidate {
                id: Uuid::from_u128(1),
                created: at("2026-12-01T23:30:00Z"),
                state: State::Complete,
            },
            Candidate {
                id: Uuid::from_u128(2),
                created: at("2026-12-02T12:00:00Z"),
                state: State::Complete,
            },
        ];
        let policy = Policy {
            daily: 2,
            ..Policy::default()
        };
        let utc = plan(
            &policy,
            Tz::UTC,
            Duration::days(1),
            &backups,
            at("2026-12-03T00:00:00Z"),
        );
        assert_eq!(utc.iter().filter(|v| v.keep).count(), 2);
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let local = plan(
            &policy,
            berlin,
            Duration::days(1),
            &backups,
            at("2026-12-03T00:00:00Z"),
        );
        assert_eq!(local.iter().filter(|v| v.keep).count(), 1);
    }

    #[test]
    fn max_age_caps_and_the_newest_complete_backup_stays() {
        let mut backups = daily_backups("2026-12-01T01:00:00Z", 10);
        backups.push(Candidate {
            id: Uuid::from_u128(99),
            created: at("2026-12-11T02:00:00Z"),
            state: State::Failed,
        });
        backups.push(Candidate {
            id: Uuid::from_u128(98),
            created: at("2026-12-11T03:00:00Z"),
            state: State::Running,
        });
        let policy = Policy {
            keep_last: 5,
            keep_failed: 1,
            max_age_seconds: Some(3 * 86400),
            ..Policy::default()
        };
        let v = plan(
            &policy,
            Tz::UTC,
            Duration::days(1),
            &backups,
            at("2026-12-11T12:00:00Z"),
        );
        assert_eq!(kept_days(&v), ["12-09", "12-10", "12-11", "12-11"]);
        let old = v
            .iter()
            .find(|v| v.created == at("2026-12-06T01:00:00Z"))
            .unwrap();
        assert_eq!(old.reasons, ["older than max_age (3d)"]);
        let running = v
            .iter()
            .find(|v| v.backup_id == Uuid::from_u128(98))
            .unwrap();
        assert!(running.keep && running.reasons == ["still running"]);
        // A policy that keeps nothing still keeps the newest complete backup.
        let v = plan(
            &Policy::default(),
            Tz::UTC,
            Duration::days(1),
            &backups,
            at("2026-12-11T12:00:00Z"),
        );
        let kept: Vec<_> = v.iter().filter(|v| v.keep).map(|v| v.backup_id).collect();
        assert_eq!(kept, [Uuid::from_u128(98), Uuid::from_u128(10)]);
    }
}
