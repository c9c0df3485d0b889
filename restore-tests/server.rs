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
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(env: &VolumeEnv) -> Server {
        let mut child = env
            .cmd(&["server", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(env.ws.path("server.log")).expect("log file"),
            ))
            .spawn()
            .expect("start drctl server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "drctl server did not say where it listens: {line:?}\n{}",
                    std::fs::read_to_string(env.ws.path("server.log")).unwrap_or_default()
                )
            })
            .to_string();
        Server { child, addr }
    }

    /// One HTTP/1.1 request; returns the status and the body.
    fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
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
}

fn dechunk(mut body: &str) -> String {
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

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Polls `f` every 250 ms until it returns Some, or panics after `secs`.
fn wait_for<T>(
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
    assert!(stopping.elapsed() < Duration::from_secs(10));
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT holder FROM leases WHERE name = 'scheduler' AND expires_at > now()",
    )
    .fetch_optional(&env.db.pool)
    .await
    .expect("read the lease");
    assert_eq!(holder, None, "leadership released at shutdown");
}
