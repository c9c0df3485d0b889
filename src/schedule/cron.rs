//! When a schedule fires: a standard five-field cron expression (or
//! `@hourly`, `@daily`, …) read on the wall clock of an IANA time zone.
//!
//! Kubernetes CronJobs, crontab and Velero take the five-field form with
//! Sunday as 0 (and 7); the `cron` crate takes six or seven fields with
//! Sunday as 1. The expression is checked and translated here, so the
//! day-of-week numbers a user types mean what they mean everywhere else.
//!
//! The zone is compiled in (chrono-tz): the image needs no tzdata, and a
//! zone name that does not exist is refused when the configuration is
//! loaded, not at the first run.
//!
//! Daylight saving time follows Vixie cron, the behaviour operators know:
//! - a wall-clock time that does not exist (the hour skipped in spring)
//!   fires once, at the end of the gap (02:30 Europe/Berlin on the last
//!   Sunday of March fires at 03:00 CEST);
//! - in the repeated hour of autumn, a schedule with a fixed hour fires
//!   once, at the first pass; one whose hour field is a wildcard (`*`,
//!   `*/2`) fires in both passes, so "every five minutes" stays every five
//!   minutes of real time.
//!
//! Slots are computed on the naive wall clock with the `cron` crate and
//! mapped to instants here, rather than relying on the crate's own zone
//! handling, so these rules are ours, stated and tested.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::{Error, Result};

/// A parsed schedule expression in its time zone.
#[derive(Debug, Clone)]
pub struct Cron {
    expr: String,
    tz: Tz,
    schedule: cron::Schedule,
    /// The hour field is a wildcard: fires in both passes of a repeated hour.
    every_hour: bool,
}

/// How far apart a wall-clock time and its instant can be across a zone
/// change; slot searches look this far beyond their window. Real changes
/// are at most two hours.
const MARGIN_HOURS: i64 = 3;

impl Cron {
    /// Parses `expr` (five fields, or a macro) in the zone `time_zone`.
    pub fn parse(expr: &str, time_zone: &str) -> Result<Cron> {
        let tz = Tz::from_str(time_zone).map_err(|_| {
            Error::config(format!("time zone {time_zone:?} is not an IANA zone name"))
                .with_guidance("use a name such as UTC, Europe/Berlin or America/New_York")
        })?;
        let bad = |why: String| {
            Error::config(format!("schedule {expr:?}: {why}")).with_guidance(
                "use five fields (minute hour day-of-month month day-of-week, as in a \
                 Kubernetes CronJob) or one of @hourly, @daily, @weekly, @monthly, @yearly",
            )
        };
        let standard = match expr.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other if other.starts_with('@') => return Err(bad(format!("unknown macro {other}"))),
            other => other,
        };
        let fields: Vec<&str> = standard.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(bad(format!(
                "{} fields; a schedule has five (seconds are not taken)",
                fields.len()
            )));
        };
        let any = |f: &str| f == "*" || f == "?";
        if !any(dom) && !any(dow) {
            // Standard cron fires when either matches, the `cron` crate
            // only when both do: refused rather than guessed.
            return Err(bad(
                "both day-of-month and day-of-week are restricted; crontab reads that as \
                 either, other schedulers as both: restrict one of them"
                    .into(),
            ));
        }
        let dow = if any(dow) {
            "*".to_string()
        } else {
            days_of_week(dow).map_err(&bad)?
        };
        let six = format!("0 {minute} {hour} {dom} {month} {dow}");
        let schedule = cron::Schedule::from_str(&six).map_err(|e| bad(e.to_string()))?;
        Ok(Cron {
            expr: expr.trim().to_string(),
            tz,
            schedule,
            every_hour: hour.starts_with('*'),
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The slots in `(after, until]`, oldest first.
    pub fn slots(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        if until <= after {
            return out;
        }
        let margin = Duration::hours(MARGIN_HOURS);
        let start = after.with_timezone(&self.tz).naive_local() - margin;
        let end = until.with_timezone(&self.tz).naive_local() + margin;
        for naive in self.schedule.after(&Utc.from_utc_datetime(&start)) {
            let naive = naive.naive_utc();
            if naive > end {
                break;
            }
            self.instants(naive, |t| {
                if t > after && t <= until {
                    out.push(t);
                }
            });
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first slot after `after`; `None` for an expression that never
    /// fires again (30 February).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let margin = Duration::hours(MARGIN_HOURS);
        let start = after.with_timezone(&self.tz).naive_local() - margin;
        let mut best: Option<DateTime<Utc>> = None;
        for naive in self.schedule.after(&Utc.from_utc_datetime(&start)) {
            let naive = naive.naive_utc();
            if let Some(b) = best
                && naive > b.with_timezone(&self.tz).naive_local() + margin
            {
                break;
            }
            self.instants(naive, |t| {
                if t > after && best.is_none_or(|b| t < b) {
                    best = Some(t);
                }
            });
        }
        best
    }

    /// The latest slot at or before `at`, looking back at most `window`.
    pub fn latest_at_or_before(
        &self,
        at: DateTime<Utc>,
        window: Duration,
    ) -> Option<DateTime<Utc>> {
        self.slots(at - window, at).pop()
    }

    /// The time between two consecutive slots after `at`: what a missed
    /// backup is measured against (`drctl_schedule_expected_interval_seconds`).
    pub fn interval_after(&self, at: DateTime<Utc>) -> Option<Duration> {
        let a = self.next_after(at)?;
        let b = self.next_after(a)?;
        Some(b - a)
    }

    /// The instants at which the wall-clock time `naive` fires.
    fn instants(&self, naive: NaiveDateTime, mut emit: impl FnMut(DateTime<Utc>)) {
        match self.tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => emit(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, second) => {
                emit(first.with_timezone(&Utc));
                if self.every_hour {
                    emit(second.with_timezone(&Utc));
                }
            }
            LocalResult::None => {
                // In a gap: the first wall-clock minute after it.
                let mut m = naive;
                for _ in 0..(48 * 60) {
                    m += Duration::minutes(1);
                    if let Some(t) = self.tz.from_local_datetime(&m).earliest() {
                        emit(t.with_timezone(&Utc));
                        return;
                    }
                }
            }
        }
    }
}

/// The day-of-week field with Sunday as 0 or 7 (crontab, Kubernetes),
/// as a list of names the `cron` crate reads without a numbering of its own.
fn days_of_week(field: &str) -> std::result::Result<String, String> {
    const NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    let day = |s: &str| -> std::result::Result<u32, String> {
        if let Ok(n) = s.parse::<u32>() {
            return if n <= 7 {
                Ok(n % 7)
            } else {
                Err(format!(
                    "day of week {n} is out of range (0-7, Sunday is 0 or 7)"
                ))
            };
        }
        NAMES
            .iter()
            .position(|d| d.eq_ignore_ascii_case(s))
            .map(|i| i as u32)
            .ok_or_else(|| format!("{s:?} is not a day of the week (0-7 or SUN-SAT)"))
    };
    let mut set = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|&s| s > 0).ok_or_else(|| {
                    format!("step {s:?} in the day of week is not a positive number")
                })?;
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            // 7 as the end of a range is Sunday after Saturday (5-7).
            let lo = day(a)?;
            let hi = if b == "7" { 7 } else { day(b)? };
            if hi < lo {
                return Err(format!("day-of-week range {range} runs backwards"));
            }
            (lo, hi)
        } else {
            let d = day(range)?;
            (d, if item.contains('/') { 6 } else { d })
        };
        let mut d = lo;
        while d <= hi {
            set[(d % 7) as usize] = true;
            d += step;
        }
    }
    let names: Vec<&str> = (0..7).filter(|&i| set[i]).map(|i| NAMES[i]).collect();
    if names.is_empty() {
        return Err("the day-of-week field names no day".into());
    }
    Ok(names.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(c: &Cron, slots: &[DateTime<Utc>]) -> Vec<String> {
        slots
            .iter()
            .map(|t| {
                t.with_timezone(&c.time_zone())
                    .format("%H:%M %Z")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn every_five_minutes_for_a_day_is_288_slots() {
        let c = Cron::parse("*/5 * * * *", "UTC").unwrap();
        let s = c.slots(at("2026-12-01T00:00:00Z"), at("2026-12-02T00:00:00Z"));
        assert_eq!(s.len(), 288);
        assert_eq!(s[0], at("2026-12-01T00:05:00Z"));
        assert_eq!(*s.last().unwrap(), at("2026-12-02T00:00:00Z"));
        assert!(s.windows(2).all(|w| w[1] - w[0] == Duration::minutes(5)));
    }

    #[test]
    fn sunday_is_zero_and_seven_as_in_crontab() {
        // 2026-12-06 is a Sunday.
        for expr in ["0 3 * * 0", "0 3 * * 7", "0 3 * * SUN", "0 3 * * sun"] {
            let c = Cron::parse(expr, "UTC").unwrap();
            assert_eq!(
                c.next_after(at("2026-12-01T00:00:00Z")),
                Some(at("2026-12-06T03:00:00Z")),
                "{expr}"
            );
        }
        let weekdays = Cron::parse("0 3 * * 1-5", "UTC").unwrap();
        assert_eq!(
            weekdays.next_after(at("2026-12-05T12:00:00Z")), // Saturday
            Some(at("2026-12-07T03:00:00Z"))                 // Monday
        );
        let weekend = Cron::parse("0 3 * * 6-7", "UTC").unwrap();
        let s = weekend.slots(at("2026-11-30T00:00:00Z"), at("2026-12-07T00:00:00Z"));
        assert_eq!(
            s,
            vec![at("2026-12-05T03:00:00Z"), at("2026-12-06T03:00:00Z")]
        );
    }

    #[test]
    fn macros_are_the_kubernetes_ones() {
        let hourly = Cron::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            hourly.interval_after(at("2026-12-01T00:00:00Z")),
            Some(Duration::hours(1))
        );
        let weekly = Cron::parse("@weekly", "UTC").unwrap();
        assert_eq!(
            weekly.next_after(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-06T00:00:00Z"))
        );
        let daily = Cron::parse("@daily", "Europe/Berlin").unwrap();
        assert_eq!(
            daily.next_after(at("2026-12-01T12:00:00Z")),
            Some(at("2026-12-01T23:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (expr, tz, says) in [
            ("0 0 * * * *", "UTC", "6 fields"),
            ("@sometimes", "UTC", "unknown macro"),
            ("0 0 1 * 1", "UTC", "both day-of-month and day-of-week"),
            ("0 0 * * 8", "UTC", "out of range"),
            ("0 25 * * *", "UTC", "schedule"),
            ("0 0 * * *", "Mars/Olympus", "not an IANA zone"),
        ] {
            let err = Cron::parse(expr, tz).unwrap_err().to_string();
            assert!(err.contains(says), "{expr}: {err}");
        }
    }

    /// 2026-03-29: Europe/Berlin goes from 02:00 CET to 03:00 CEST.
    #[test]
    fn the_skipped_hour_fires_once_at_its_end() {
        let c = Cron::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let s = c.slots(at("2026-03-28T00:00:00Z"), at("2026-03-31T00:00:00Z"));
        assert_eq!(local(&c, &s), ["02:30 CET", "03:00 CEST", "02:30 CEST"]);
        let every5 = Cron::parse("*/5 * * * *", "Europe/Berlin").unwrap();
        let s = every5.slots(at("2026-03-29T00:50:00Z"), at("2026-03-29T01:10:00Z"));
        // 01:55 CET, then the gap (02:00-02:55 do not exist) is one run at
        // 03:00 CEST, then every five minutes.
        assert_eq!(
            local(&every5, &s),
            ["01:55 CET", "03:00 CEST", "03:05 CEST", "03:10 CEST"]
        );
    }

    /// 2026-10-25: Europe/Berlin goes from 03:00 CEST back to 02:00 CET.
    #[test]
    fn the_repeated_hour_fires_fixed_times_once_and_intervals_twice() {
        let c = Cron::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let s = c.slots(at("2026-10-24T00:00:00Z"), at("2026-10-27T00:00:00Z"));
        assert_eq!(local(&c, &s), ["02:30 CEST", "02:30 CEST", "02:30 CET"]);
        assert_eq!(s[1], at("2026-10-25T00:30:00Z"));
        let every30 = Cron::parse("*/30 * * * *", "Europe/Berlin").unwrap();
        let s = every30.slots(at("2026-10-24T23:45:00Z"), at("2026-10-25T02:15:00Z"));
        assert_eq!(
            local(&every30, &s),
            [
                "02:00 CEST",
                "02:30 CEST",
                "02:00 CET",
                "02:30 CET",
                "03:00 CET"
            ]
        );
        assert!(s.windows(2).all(|w| w[1] - w[0] == Duration::minutes(30)));
        // next_after walks the same slots.
        let mut t = at("2026-10-24T23:45:00Z");
        let mut walked = Vec::new();
        while let Some(n) = every30
            .next_after(t)
            .filter(|&n| n <= at("2026-10-25T02:15:00Z"))
        {
            walked.push(n);
            t = n;
        }
        assert_eq!(walked, s);
    }
}
