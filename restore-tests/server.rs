//! `drctl server` as an operator runs it: schedules from the configuration
//! fire on their own, retention follows every run and extends the locks of
//! what it keeps, the API answers by role, /metrics says what happened, and
//! SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, VolumeEnv, services};

/// A running `drctl server`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn start(env: &VolumeEnv) -> Server {
        Self::start_with(env, "server.log", &[])
    }

    /// A server logging to `log` in the workspace, with `vars` set.
    pub(crate) fn start_with(env: &VolumeEnv, log: &str, vars: &[(&str, &str)]) -> Server {
        let log = env.ws.path(log);
        let mut child = env
            .cmd(&["server", "--listen", "127.0.0.1:0"])
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .spawn()
            .expect("start drctl server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| {
                panic!(
                    "drctl server did not say where it listens: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Server { child, addr }
    }

    /// One HTTP/1.1 request; returns the status and the body.
    pub(crate) fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).expect("connect to the server");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read the answer");
        answer(&raw)
    }
}

/// The status and body of a whole HTTP/1.1 answer.
fn answer(raw: &str) -> (u16, String) {
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Small bodies come in one chunk or none; undo the framing.
    let body = if raw
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// `n` incompressible bytes from a xorshift generator at `seed`.
fn random_bytes(seed: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

pub(crate) fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

pub(crate) fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Polls `f` every 250 ms until it returns Some, or panics after `secs`.
pub(crate) fn wait_for<T>(
    secs: u64,
    what: &str,
    log: &std::path::Path,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            panic!(
                "{what}: not within {secs}s; server log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The successful backup runs of `schedule`, as `schedule describe` says.
fn succeeded(env: &VolumeEnv, schedule: &str) -> Vec<serde_json::Value> {
    let d = env.json(&["schedule", "describe", schedule]);
    d["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["kind"] == "backup" && r["state"] == "succeeded")
        .cloned()
        .collect()
}

/// The samples of one `/metrics` of a server started for it on `env`.
pub(crate) fn scrape_once(env: &VolumeEnv) -> Vec<prometheus_parse::Sample> {
    let server = Server::start_with(env, "scrape.log", &[]);
    let (status, text) = server.call("GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("a Prometheus text scrape")
        .samples
}

fn metric(families: &prometheus_parse::Scrape, name: &str, schedule: Option<&str>) -> Option<f64> {
    families
        .samples
        .iter()
        .find(|s| {
            s.metric == name && schedule.is_none_or(|want| s.labels.get("schedule") == Some(want))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_backs_up_on_schedule_keeps_what_retention_says_and_answers_by_role() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("a.txt"), "first\n").unwrap();
    std::fs::write(src.join("d/b.bin"), vec![7u8; 300_000]).unwrap();
    let tokens = env.ws.write(
        "tokens",
        &format!(
            "# role sha256(token)\nviewer {}\noperator {}\n",
            sha256_hex("viewer-token"),
            sha256_hex("operator-token")
        ),
    );
    // An hourly schedule: its latest slot runs when the server first sees
    // it (no skip_immediately), later runs are triggered by hand. Kept:
    // the last two, and one a day for three days (longer than the bucket's
    // one-day lock: promoted backups get their locks extended).
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "server:\n  tokens_file: {tokens}\n  leader_lease_seconds: 3\n  job_lease_seconds: 6\n  \
         shutdown_seconds: 5\n\
         schedules:\n  - name: vol\n    cron: \"@hourly\"\n    time_zone: Europe/Berlin\n    \
         source:\n      volume:\n        path: {src}\n    \
         retention:\n      keep_last: 2\n      daily: 3\n",
        tokens = tokens.display(),
        src = src.display(),
    ));
    std::fs::write(&env.config, config).unwrap();
    let log = env.ws.path("server.log");

    let server = Server::start(&env);
    let (status, body) = server.call("GET", "/healthz", None);
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // The latest slot runs on its own.
    let first = wait_for(120, "the first scheduled backup", &log, || {
        let runs = succeeded(&env, "vol");
        (!runs.is_empty()).then(|| runs[0].clone())
    });
    assert_eq!(first["trigger"], "activation", "{first}");
    let first_backup = first["backup_id"]
        .as_str()
        .expect("a backup id")
        .to_string();
    wait_for(30, "ready", &log, || {
        (server.call("GET", "/readyz", None).0 == 200).then_some(())
    });

    // The API: no token, a wrong token and a viewer are refused where
    // they must be; an operator triggers a run.
    assert_eq!(server.call("GET", "/api/v1/schedules", None).0, 401);
    assert_eq!(server.call("GET", "/api/v1/schedules", Some("nope")).0, 401);
    assert_eq!(
        server
            .call("GET", "/api/v1/schedules/vol/run", Some("viewer-token"))
            .0,
        405,
        "run is a POST"
    );
    let (status, body) = server.call("POST", "/api/v1/schedules/vol/run", Some("viewer-token"));
    assert_eq!(status, 403, "a viewer may not run: {body}");
    let (status, body) = server.call("GET", "/api/v1/schedules", Some("viewer-token"));
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed[0]["name"], "vol");
    assert_eq!(listed[0]["time_zone"], "Europe/Berlin");
    let cli: serde_json::Value = env.json(&["schedule", "list"]);
    assert_eq!(
        cli[0]["name"], listed[0]["name"],
        "the API's JSON is the CLI's"
    );
    assert_eq!(cli[0]["last_run"], listed[0]["last_run"]);

    std::fs::write(src.join("a.txt"), "second\n").unwrap();
    let (status, body) = server.call("POST", "/api/v1/schedules/vol/run", Some("operator-token"));
    assert_eq!(status, 202, "{body}");
    wait_for(120, "the second backup", &log, || {
        (succeeded(&env, "vol").len() >= 2).then_some(())
    });
    // And from the CLI.
    std::fs::write(src.join("a.txt"), "third\n").unwrap();
    let queued = env.json(&["schedule", "run", "vol"]);
    assert!(queued["job"].is_string(), "{queued}");
    wait_for(120, "the third backup", &log, || {
        (succeeded(&env, "vol").len() >= 3).then_some(())
    });

    // Retention ran after each: the last two are kept, and the first (the
    // day's daily backup is the newest) is gone from the listing.
    let kept = wait_for(60, "retention after the third run", &log, || {
        let list = env.json(&["backup", "list", "--name", "vol"]);
        let ids: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect();
        (ids.len() == 2).then_some(ids)
    });
    assert!(
        !kept.contains(&first_backup),
        "the oldest run expired: {kept:?}"
    );
    let (status, body) = server.call("GET", "/api/v1/backups?name=vol", Some("viewer-token"));
    assert_eq!(status, 200, "{body}");
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cli = env.json(&["backup", "list", "--name", "vol"]);
    assert_eq!(api, cli, "the API's backups are `backup list -o json`");
    let plan = env.json(&["retention", "plan", "vol"]);
    let plan_kept: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["keep"] == true)
        .map(|v| v["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        plan_kept.len(),
        2,
        "retention plan says what happened: {plan}"
    );
    for id in &kept {
        assert!(
            plan_kept.contains(&id.as_str()),
            "{id} kept but not planned: {plan}"
        );
    }

    // The newest is the daily one, kept for three days: its manifest's lock
    // (read from the bucket by the SDK, not drctl) reaches past the
    // bucket's one-day default.
    let newest = &kept[0];
    let manifest: String =
        sqlx::query_scalar("SELECT manifest_key FROM backups WHERE id = $1::uuid")
            .bind(newest)
            .fetch_one(&env.db.pool)
            .await
            .expect("manifest key");
    let head = bucket
        .client
        .head_object()
        .bucket(&bucket.name)
        .key(&manifest)
        .send()
        .await
        .expect("read the manifest's lock");
    let until = head
        .object_lock_retain_until_date()
        .expect("a retain-until date")
        .secs();
    let now = chrono::Utc::now().timestamp();
    assert!(
        until > now + 2 * 86_400,
        "the daily backup is locked until {until}, not past two days from {now}"
    );

    // /metrics, parsed as Prometheus parses it, once the queue is empty
    // (retention's job after the third run may still be finishing).
    let (text, scrape) = wait_for(30, "an empty queue in /metrics", &log, || {
        let (status, text) = server.call("GET", "/metrics", None);
        assert_eq!(status, 200);
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text scrape");
        let idle = metric(&scrape, "drctl_jobs_running", None) == Some(0.0)
            && metric(&scrape, "drctl_jobs_queued", None) == Some(0.0);
        idle.then_some((text, scrape))
    });
    assert_eq!(
        metric(&scrape, "drctl_backup_success_total", Some("vol")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&scrape, "drctl_backup_attempt_total", Some("vol")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&scrape, "drctl_backup_failure_total", Some("vol")),
        None,
        "{text}"
    );
    assert_eq!(metric(&scrape, "drctl_leader", None), Some(1.0), "{text}");
    assert_eq!(
        metric(&scrape, "drctl_schedule_paused", Some("vol")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &scrape,
            "drctl_schedule_expected_interval_seconds",
            Some("vol")
        ),
        Some(3600.0),
        "{text}"
    );
    assert_eq!(
        metric(&scrape, "drctl_storage_available", None),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&scrape, "drctl_backup_bytes_read_total", Some("vol")).unwrap_or(0.0) >= 300_000.0,
        "{text}"
    );
    // What the alerts measure comes from the catalog, so every replica
    // (and a restarted one) says the same.
    let (created, last): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT s.created_at, (SELECT max(finished_at) FROM jobs WHERE schedule = 'vol' \
               AND kind = 'backup' AND state = 'succeeded') FROM schedules s WHERE name = 'vol'",
        )
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(
        metric(
            &scrape,
            "drctl_schedule_created_timestamp_seconds",
            Some("vol")
        ),
        Some(created.timestamp() as f64),
        "{text}"
    );
    assert_eq!(
        metric(
            &scrape,
            "drctl_backup_last_success_timestamp_seconds",
            Some("vol")
        ),
        Some(last.timestamp() as f64),
        "{text}"
    );
    assert_eq!(
        metric(&scrape, "drctl_schedule_rpo_objective_seconds", Some("vol")),
        None,
        "no objective configured: {text}"
    );

    // Paused from the CLI: the API says so, and a pause survives until resumed.
    env.ok(&["schedule", "pause", "vol"]);
    let (_, body) = server.call("GET", "/api/v1/schedules/vol", Some("viewer-token"));
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["paused"], true, "{d}");
    assert!(
        d["next_run"].is_null(),
        "a paused schedule has no next run: {d}"
    );

    // SIGTERM: a clean exit well within the shutdown deadline.
    let stopping = Instant::now();
    let pid = server.child.id();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut server = server;
    let status = wait_for(20, "exit after SIGTERM", &log, || {
        server.child.try_wait().unwrap()
    });
    assert!(status.success(), "exit status {status:?}");
    assert!(stopping.elapsed() < Duration::from_secs(15));
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT holder FROM leases WHERE name = 'scheduler' AND expires_at > now()",
    )
    .fetch_optional(&env.db.pool)
    .await
    .expect("read the lease");
    assert_eq!(holder, None, "leadership released at shutdown");
}

/// A backup job row: its slot, state, reason and backup.
type JobSlot = (
    chrono::DateTime<chrono::Utc>,
    String,
    Option<String>,
    Option<uuid::Uuid>,
);

/// The holder of the scheduler's lease, while it is held.
async fn leader(pool: &sqlx::PgPool) -> Option<String> {
    sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'scheduler' AND expires_at > now()")
        .fetch_optional(pool)
        .await
        .expect("read the lease")
}

/// The pid in a holder name (`HOST-PID-RANDOM`).
fn pid_of(holder: &str) -> u32 {
    let mut parts = holder.rsplitn(3, '-');
    parts.next();
    parts
        .next()
        .and_then(|p| p.parse().ok())
        .expect("HOST-PID-RANDOM")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_servers_one_leader_a_killed_leader_mid_backup_loses_no_slot_and_runs_none_twice() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Incompressible, so a run lasts long enough (a few hundred ms against
    // the S3 server) for the kill to land inside it.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..6 {
        let data = random_bytes(&mut seed, 1 << 20);
        std::fs::write(src.join(format!("f{i}")), data).unwrap();
    }
    // And new bytes every 200 ms (written beside and renamed, so a run reads
    // a whole file): every run has a megabyte to store, not a no-op.
    let churn_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (stop, src, aside) = (churn_stop.clone(), src.clone(), env.ws.path("next"));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = random_bytes(&mut seed, 1 << 20);
                std::fs::write(&aside, data).unwrap();
                std::fs::rename(&aside, src.join("f0")).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Every minute, on a clock sixty times as fast: a slot a second. A slot
    // may start up to ten (real) seconds late: the failover's slots run
    // late (or are skipped for the run that is still going), never missed.
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "server:\n  leader_lease_seconds: 3\n  job_lease_seconds: 6\n  shutdown_seconds: 5\n\
         schedules:\n  - name: ha\n    cron: \"* * * * *\"\n    starting_deadline_seconds: 600\n    \
         skip_immediately: true\n    \
         source:\n      volume:\n        path: {}\n    retention:\n      keep_last: 1000\n",
        src.display()
    ));
    std::fs::write(&env.config, config).unwrap();
    let base = chrono::Utc::now().timestamp().to_string();
    let clock = format!("{base}:60");
    let vars = [("DRCTL_TEST_CLOCK", clock.as_str())];
    let mut servers: Vec<Server> = (0..3)
        .map(|i| Server::start_with(&env, &format!("server-{i}.log"), &vars))
        .collect();
    let pool = env.db.pool.clone();
    let log = env.ws.path("server-0.log");

    // Exactly one leader, and every replica agrees which.
    let first = loop {
        if let Some(h) = leader(&pool).await {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leading: Vec<bool> = servers
        .iter()
        .map(|s| {
            let (_, text) = s.call("GET", "/metrics", None);
            text.lines().any(|l| l == "drctl_leader 1")
        })
        .collect();
    assert_eq!(
        leading.iter().filter(|l| **l).count(),
        1,
        "one leader: {leading:?}"
    );
    let at = servers
        .iter()
        .position(|s| s.child.id() == pid_of(&first))
        .expect("the leader is ours");
    assert!(
        leading[at],
        "the lease holder is the replica that says it leads"
    );

    // Wait for the leader to be mid-backup, then SIGKILL it.
    let started = Instant::now();
    let job: uuid::Uuid = loop {
        let running: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE kind = 'backup' AND state = 'running' AND lease_owner = $1",
        )
        .bind(&first)
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(id) = running {
            break id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the leader never ran a backup: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut dead = servers.remove(at);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let killed = Instant::now();

    // Another replica leads within the lease time (and a second's tick).
    let second = loop {
        match leader(&pool).await {
            Some(h) if h != first => break h,
            _ => {}
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3 + 2),
            "no new leader within the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(servers.iter().any(|s| s.child.id() == pid_of(&second)));

    // The killed run is retried by a live replica or marked, never left running.
    let (state, attempt, reason): (String, i32, Option<String>) = loop {
        let row: (String, i32, Option<String>) =
            sqlx::query_as("SELECT state, attempt, reason FROM jobs WHERE id = $1")
                .bind(job)
                .fetch_one(&pool)
                .await
                .unwrap();
        if matches!(row.0.as_str(), "succeeded" | "interrupted" | "failed") {
            break row;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the killed run stays {}",
            row.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        state == "succeeded" && attempt == 2 || state == "interrupted" && reason.is_some(),
        "the killed run: {state}, attempt {attempt}, {reason:?}"
    );

    // At least fifty slots decided.
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'backup'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n >= 55 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "only {n} slots in three minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    churn_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    for s in &servers {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &s.child.id().to_string()])
            .status();
    }
    for s in &mut servers {
        let st = wait_for(20, "exit after SIGTERM", &log, || {
            s.child.try_wait().unwrap()
        });
        assert!(st.success());
    }

    // Every slot from the first to the last has exactly one row, none is
    // missed, and nothing is left running or queued.
    let rows: Vec<JobSlot> = sqlx::query_as(
        "SELECT scheduled_for, state, reason, backup_id FROM jobs \
             WHERE kind = 'backup' AND schedule = 'ha' ORDER BY scheduled_for",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(rows.len() >= 50);
    for pair in rows.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            chrono::Duration::minutes(1),
            "consecutive slots: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let count = |s: &str| rows.iter().filter(|r| r.1 == s).count();
    assert_eq!(count("missed"), 0, "{rows:#?}");
    assert_eq!(count("running"), 0, "{rows:#?}");
    // A slot enqueued as the last replica stopped waits for the next server.
    assert!(
        rows.iter().rev().skip(1).all(|r| r.1 != "queued"),
        "only the newest slot may still be queued: {rows:#?}"
    );
    assert!(count("succeeded") >= 25, "most slots ran: {rows:#?}");
    for r in rows.iter().filter(|r| r.1 == "skipped") {
        let why = r.2.as_deref().unwrap_or_default();
        assert!(
            why.contains("concurrency: forbid"),
            "a skip says why: {why}"
        );
    }
    eprintln!(
        "{} slots: {} succeeded, {} skipped, {} interrupted, {} queued; the killed run: {state} \
         (attempt {attempt}); leader {first} -> {second}; killed {:?} ago",
        rows.len(),
        count("succeeded"),
        count("skipped"),
        count("interrupted"),
        count("queued"),
        killed.elapsed()
    );
    // Each succeeded run made one complete backup, of its own.
    let backups: Vec<uuid::Uuid> = rows
        .iter()
        .filter(|r| r.1 == "succeeded")
        .filter_map(|r| r.3)
        .collect();
    assert_eq!(backups.len(), count("succeeded"));
    let distinct: std::collections::HashSet<_> = backups.iter().collect();
    assert_eq!(
        distinct.len(),
        backups.len(),
        "no backup is claimed by two slots"
    );
    let complete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM backups WHERE id = ANY($1) AND status = 'complete'",
    )
    .bind(&backups)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(complete as usize, backups.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_backup_exits_within_the_deadline_and_marks_the_run() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Incompressible and large enough that the backup outlasts the deadline.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..6 {
        let data = random_bytes(&mut seed, 32 << 20);
        std::fs::write(src.join(format!("big{i}")), data).unwrap();
    }
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "server:\n  shutdown_seconds: 1\n\
         schedules:\n  - name: slow\n    cron: \"@daily\"\n    \
         source:\n      volume:\n        path: {}\n    retention:\n      keep_last: 3\n",
        src.display()
    ));
    std::fs::write(&env.config, config).unwrap();
    let log = env.ws.path("server.log");
    let mut server = Server::start(&env);
    let pool = env.db.pool.clone();
    let job: uuid::Uuid = loop {
        let running: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE kind = 'backup' AND state = 'running'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if let Some(id) = running {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_for(30, "exit after SIGTERM", &log, || {
        server.child.try_wait().unwrap()
    });
    let took = stopping.elapsed();
    assert!(status.success(), "exit status {status:?}");
    // The deadline (1 s), the abort and the lease release; a server that
    // waited for the backup to finish would take far longer.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let (state, reason): (String, Option<String>) =
        sqlx::query_as("SELECT state, reason FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "interrupted", "{reason:?}");
    assert!(
        reason
            .as_deref()
            .unwrap_or_default()
            .contains("shutdown_seconds"),
        "{reason:?}"
    );
    // Nothing half-recorded: no complete backup of the schedule.
    let complete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM backups WHERE name = 'slow' AND status = 'complete'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(complete, 0, "the interrupted run left no complete backup");
}

/// GET `path` over HTTPS, trusting only the CA in `ca`; the status and body.
fn https_get(addr: &str, path: &str, ca: &std::path::Path) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("a TLS handshake the CA vouches for");
    let mut raw = Vec::new();
    if let Err(e) = tls.read_to_end(&mut raw) {
        // A peer that closes without close_notify: what was read stands.
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
    answer(&String::from_utf8_lossy(&raw))
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_certificate_the_server_speaks_only_https() {
    let env = VolumeEnv::new().await;
    let dir = env.ws.path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    crate::etcd::ca(&dir, "ca");
    crate::etcd::signed(&dir, "ca", "server", "subjectAltName=IP:127.0.0.1\n");
    let base = std::fs::read_to_string(&env.config).unwrap();

    // A key that is not there: refused at start, naming the key.
    std::fs::write(
        &env.config,
        format!(
            "{base}server:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
            dir.join("server.crt").display(),
            dir.join("missing.key").display()
        ),
    )
    .unwrap();
    let (out, _, stderr) = harness::run(&mut env.cmd(&["server", "--listen", "127.0.0.1:0"]));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("server.tls.key_file"), "{stderr}");

    std::fs::write(
        &env.config,
        format!(
            "{base}server:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    let server = Server::start(&env);
    let (status, body) = https_get(&server.addr, "/healthz", &dir.join("ca.crt"));
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = https_get(&server.addr, "/api/v1/schedules", &dir.join("ca.crt"));
    assert_eq!(status, 403, "no tokens file: the API is off: {body}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(&server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = write!(
        plain,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(
        !String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_schedules_a_bad_file_changes_nothing_and_gc_runs_on_its_own() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "data\n").unwrap();
    let base = std::fs::read_to_string(&env.config).unwrap();
    let schedule = |name: &str| {
        format!(
            "  - name: {name}\n    cron: \"@daily\"\n    source:\n      volume:\n        path: {}\n    \
             retention:\n      keep_last: 5\n",
            src.display()
        )
    };
    std::fs::write(
        &env.config,
        format!("{base}schedules:\n{}", schedule("first")),
    )
    .unwrap();
    let log = env.ws.path("server.log");
    let server = Server::start(&env);
    let names = |env: &VolumeEnv| -> Vec<String> {
        env.json(&["schedule", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&env), ["first"]);
    let hup = || {
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &server.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        )
    };

    // A file that does not load: the old schedules stay, the server runs on.
    std::fs::write(
        &env.config,
        format!("{base}schedules:\n  - name: [broken\n"),
    )
    .unwrap();
    hup();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.call("GET", "/healthz", None).0, 200);
    // (The CLI reads the same broken file: ask the catalog directly.)
    let mirrored: Vec<String> =
        sqlx::query_scalar("SELECT name FROM schedules WHERE removed_at IS NULL ORDER BY name")
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(mirrored, ["first"]);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("configuration not reloaded"), "{logged}");

    // A second schedule and gc every minute: mirrored, run, collected.
    std::fs::write(
        &env.config,
        format!(
            "{base}server:\n  gc_cron: \"* * * * *\"\nschedules:\n{}{}",
            schedule("first"),
            schedule("second")
        ),
    )
    .unwrap();
    hup();
    wait_for(30, "the second schedule mirrored", &log, || {
        (names(&env) == ["first", "second"]).then_some(())
    });
    wait_for(60, "a run of the second schedule", &log, || {
        (!succeeded(&env, "second").is_empty()).then_some(())
    });
    let (text, scrape) = wait_for(60, "a gc run", &log, || {
        let (_, text) = server.call("GET", "/metrics", None);
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        (metric(&scrape, "drctl_gc_runs_total", None) >= Some(1.0)).then_some((text, scrape))
    });
    assert_eq!(
        metric(&scrape, "drctl_backup_success_total", Some("second")),
        Some(1.0),
        "{text}"
    );
    let gc: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT max(finished_at) FROM jobs WHERE kind = 'gc' AND state = 'succeeded'",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    let gc = gc.expect("a gc run succeeded");
    let (_, text) = server.call("GET", "/metrics", None);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(
        metric(&scrape, "drctl_gc_last_success_timestamp_seconds", None)
            >= Some(gc.timestamp() as f64),
        "{text}"
    );
    assert_eq!(
        metric(&scrape, "drctl_gc_expected_interval_seconds", None),
        Some(60.0),
        "gc_cron every minute: {text}"
    );

    // Gone from the file: no longer scheduled, its backups kept.
    std::fs::write(
        &env.config,
        format!("{base}schedules:\n{}", schedule("second")),
    )
    .unwrap();
    hup();
    wait_for(30, "the first schedule removed", &log, || {
        (names(&env) == ["second"]).then_some(())
    });
    let kept = env.json(&["backup", "list", "--name", "first"]);
    assert_eq!(kept.as_array().unwrap().len(), 1, "{kept}");
}

#[tokio::test]
async fn the_server_refuses_the_age_identity() {
    let env = VolumeEnv::new().await;
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["server", "--listen", "127.0.0.1:0"])
            .arg("--identity")
            .arg(&env.identity),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stderr.contains("backups never load the identity"),
        "{stderr}"
    );
    assert!(!stdout.contains("listening"), "it did not start: {stdout}");
}
