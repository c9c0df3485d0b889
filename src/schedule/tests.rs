//! The scheduler's rules under an injected clock: the leader calls
//! [`tick`] about once a second; here a loop does, with time it chooses.

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn spec(cron: &str, tz: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: "test".into(),
        cron: cron.into(),
        time_zone: tz.into(),
        paused: false,
        skip_immediately: true,
        starting_deadline_seconds: 60,
        catch_up: CatchUp::Latest,
        source: SourceSpec::Etcd {},
        retention: Policy::default(),
        min_lock_days: None,
        rpo_seconds: None,
    }
}

/// Ticks every `step` from `from` to `to`; a run is done before the next
/// tick unless `busy_for` says how many ticks it stays busy.
fn run(
    spec: &ScheduleSpec,
    cursor: &mut Cursor,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: Duration,
    paused: impl Fn(DateTime<Utc>) -> bool,
) -> Vec<Decision> {
    let cron = spec.validate().unwrap();
    let mut all = Vec::new();
    let mut now = from;
    while now <= to {
        let (d, c) = tick(spec, &cron, paused(now), *cursor, None, now);
        all.extend(d);
        *cursor = c;
        now += step;
    }
    all
}

fn runs(d: &[Decision]) -> Vec<DateTime<Utc>> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Run { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect()
}

#[test]
fn a_day_of_every_five_minutes_runs_288_times_each_once() {
    let s = spec("*/5 * * * *", "UTC");
    let start = at("2026-12-01T00:00:00Z");
    let mut cursor = Cursor::activated(&s, start);
    let d = run(
        &s,
        &mut cursor,
        start,
        at("2026-12-02T00:00:30Z"),
        Duration::seconds(7),
        |_| false,
    );
    let r = runs(&d);
    assert_eq!(r.len(), 288);
    assert_eq!(d.len(), 288, "nothing missed or skipped: {d:?}");
    assert!(r.windows(2).all(|w| w[1] - w[0] == Duration::minutes(5)));
}

#[test]
fn the_repeated_hour_of_berlin_is_run_twice_by_an_interval_schedule() {
    // 25 hours on 2026-10-25 in Berlin: 50 half hours.
    let s = spec("*/30 * * * *", "Europe/Berlin");
    let start = at("2026-10-24T22:00:00Z"); // 00:00 CEST
    let mut cursor = Cursor::activated(&s, start);
    let d = run(
        &s,
        &mut cursor,
        start,
        at("2026-10-25T23:00:00Z"),
        Duration::seconds(20),
        |_| false,
    );
    assert_eq!(runs(&d).len(), 50);
    let fixed = spec("30 2 * * *", "Europe/Berlin");
    let mut cursor = Cursor::activated(&fixed, start);
    let d = run(
        &fixed,
        &mut cursor,
        start,
        at("2026-10-25T23:00:00Z"),
        Duration::seconds(20),
        |_| false,
    );
    assert_eq!(runs(&d), [at("2026-10-25T00:30:00Z")]);
}

#[test]
fn the_skipped_hour_of_berlin_runs_its_slot_at_three() {
    let s = spec("30 2 * * *", "Europe/Berlin");
    let start = at("2026-03-28T23:00:00Z"); // 00:00 CET, 29 March
    let mut cursor = Cursor::activated(&s, start);
    let d = run(
        &s,
        &mut cursor,
        start,
        at("2026-03-29T22:00:00Z"),
        Duration::seconds(20),
        |_| false,
    );
    assert_eq!(runs(&d), [at("2026-03-29T01:00:00Z")]); // 03:00 CEST
}

/// A server down from 00:03 to 00:21:30 misses the slots 00:05, 00:10,
/// 00:15 and 00:20: all four past the 60 s deadline when it is back.
#[test]
fn after_an_outage_each_catch_up_policy_does_what_it_says() {
    let start = at("2026-12-01T00:00:00Z");
    let down = (at("2026-12-01T00:03:00Z"), at("2026-12-01T00:21:30Z"));
    for (policy, expect_runs, expect_missed) in [
        (CatchUp::None, vec!["00:25"], 4),
        (CatchUp::Latest, vec!["00:20", "00:25"], 3),
    ] {
        let mut s = spec("*/5 * * * *", "UTC");
        s.catch_up = policy;
        let mut cursor = Cursor::activated(&s, start);
        let cron = s.validate().unwrap();
        let mut d = run(
            &s,
            &mut cursor,
            start,
            down.0,
            Duration::seconds(10),
            |_| false,
        );
        d.extend(run(
            &s,
            &mut cursor,
            down.1,
            at("2026-12-01T00:26:00Z"),
            Duration::seconds(10),
            |_| false,
        ));
        let after: Vec<String> = runs(&d)
            .iter()
            .map(|t| t.format("%H:%M").to_string())
            .collect();
        assert_eq!(after, expect_runs, "{policy:?}");
        let missed: Vec<&Decision> = d
            .iter()
            .filter(|d| matches!(d, Decision::Missed { .. }))
            .collect();
        assert_eq!(missed.len(), expect_missed, "{policy:?}: {d:?}");
        if let Decision::Missed { reason, .. } = missed[0] {
            assert!(reason.contains("starting deadline (60s)"), "{reason}");
        }
        // A tick straight after decides nothing twice.
        let (again, _) = tick(&s, &cron, false, cursor, None, at("2026-12-01T00:26:01Z"));
        assert!(again.is_empty());
    }
}

#[test]
fn a_new_schedule_runs_at_once_unless_skip_immediately() {
    let mut s = spec("0 3 * * *", "UTC");
    let now = at("2026-12-01T12:00:00Z");
    s.skip_immediately = false;
    let cron = s.validate().unwrap();
    let (d, cursor) = tick(&s, &cron, false, Cursor::activated(&s, now), None, now);
    assert_eq!(
        d,
        [Decision::Run {
            slot: at("2026-12-01T03:00:00Z"),
            trigger: "activation"
        }]
    );
    assert_eq!(cursor.last_slot, Some(at("2026-12-01T03:00:00Z")));
    s.skip_immediately = true;
    let (d, _) = tick(&s, &cron, false, Cursor::activated(&s, now), None, now);
    assert!(d.is_empty());
}

#[test]
fn pause_and_resume_with_and_without_skip_immediately() {
    let start = at("2026-12-01T00:00:00Z");
    let paused =
        |t: DateTime<Utc>| t >= at("2026-12-01T00:12:00Z") && t < at("2026-12-01T00:33:00Z");
    // Paused 00:12-00:33: without skip_immediately, resuming is catching
    // up after an outage: the newest slot missed while paused (00:30) runs
    // at once; 00:15, 00:20 and 00:25 are recorded missed.
    let s = spec("*/5 * * * *", "UTC");
    let mut cursor = Cursor::activated(&s, start);
    let d = run(
        &s,
        &mut cursor,
        start,
        at("2026-12-01T00:36:00Z"),
        Duration::seconds(10),
        paused,
    );
    let times: Vec<String> = runs(&d)
        .iter()
        .map(|t| t.format("%H:%M").to_string())
        .collect();
    assert_eq!(times, ["00:05", "00:10", "00:30", "00:35"]);
    assert!(d.contains(&Decision::Run {
        slot: at("2026-12-01T00:30:00Z"),
        trigger: "catch_up"
    }));
    assert_eq!(
        d.iter()
            .filter(|d| matches!(d, Decision::Missed { .. }))
            .count(),
        3
    );
    // With skip_immediately, resuming moves the cursor to the resume time:
    // nothing paused is caught up, nothing is recorded missed.
    let mut cursor = Cursor::activated(&s, start);
    let mut d = run(
        &s,
        &mut cursor,
        start,
        at("2026-12-01T00:12:00Z"),
        Duration::seconds(10),
        |_| false,
    );
    cursor = Cursor::activated(&s, at("2026-12-01T00:31:00Z"));
    d.extend(run(
        &s,
        &mut cursor,
        at("2026-12-01T00:31:00Z"),
        at("2026-12-01T00:36:00Z"),
        Duration::seconds(10),
        |_| false,
    ));
    let times: Vec<String> = runs(&d)
        .iter()
        .map(|t| t.format("%H:%M").to_string())
        .collect();
    assert_eq!(times, ["00:05", "00:10", "00:35"]);
    assert_eq!(d.len(), 3);
}

#[test]
fn a_slot_that_finds_the_previous_run_going_is_skipped_with_the_reason() {
    let s = spec("*/5 * * * *", "UTC");
    let cron = s.validate().unwrap();
    let cursor = Cursor {
        last_slot: Some(at("2026-12-01T00:00:00Z")),
    };
    let (d, cursor) = tick(
        &s,
        &cron,
        false,
        cursor,
        Some("7f3a…(slot 00:00)"),
        at("2026-12-01T00:05:01Z"),
    );
    match &d[..] {
        [Decision::Skipped { slot, reason }] => {
            assert_eq!(*slot, at("2026-12-01T00:05:00Z"));
            assert!(
                reason.contains("7f3a…(slot 00:00) is still going"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cursor.last_slot, Some(at("2026-12-01T00:05:00Z")));
}
