//! The incident path: what on-call meets at 3 a.m. (issue 17). A stalled
//! store ends a command with an error naming it; a backup whose process died
//! does not stay `running`; `backup list` and `describe` answer from the
//! catalog alone, and `--from-bucket` from the bucket alone; short ids and
//! `NAME@latest` name backups; an ambiguous reference lists what it could
//! mean.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::fault_proxy::{FaultProxy, Faults};
use crate::harness::{self, VolumeEnv, services};

/// A drctl started with its output in files under a directory (a pipe
/// nobody reads fills up and blocks it).
struct Started {
    child: std::process::Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

fn start_logged(cmd: &mut std::process::Command, dir: &std::path::Path) -> Started {
    let name = harness::unique("run-");
    let (stdout, stderr) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    let child = cmd
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("drctl starts");
    Started {
        child,
        stdout,
        stderr,
    }
}

/// Waits for `started` to end, killing it (and failing the test) if it has
/// not after `limit`: a liveness guard, not a timing assertion.
fn finish_or_hang(mut started: Started, limit: Duration) -> (Option<i32>, String, String) {
    let since = Instant::now();
    let status = loop {
        if let Some(status) = started.child.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > limit {
            let _ = started.child.kill();
            let _ = started.child.wait();
            panic!(
                "drctl hung for {limit:?}:\n{}",
                std::fs::read_to_string(&started.stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    (status.code(), read(&started.stdout), read(&started.stderr))
}

fn run_or_hang(
    cmd: &mut std::process::Command,
    dir: &std::path::Path,
    limit: Duration,
) -> (Option<i32>, String, String) {
    finish_or_hang(start_logged(cmd, dir), limit)
}

/// 3,000 files of 20 kB in `dir`: a backup of them runs long enough to be
/// caught while running.
fn many_files(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..3000 {
        std::fs::write(dir.join(format!("n{i}")), crate::tree::noise(i, 20_000)).unwrap();
    }
}

/// Waits until the catalog (read directly) shows one running backup;
/// false if `child` ended first.
async fn caught_running(env: &VolumeEnv, child: &mut std::process::Child) -> bool {
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM backups WHERE status = 'running'")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
        if n == 1 {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A repository behind a proxy, with `timeout_seconds`.
async fn s3_env(proxy: &FaultProxy, timeout: u32) -> VolumeEnv {
    let bucket = harness::locked_bucket().await;
    let repo = format!(
        "  s3:\n    endpoint: {}\n    bucket: {}\n    force_path_style: true\n    \
         retention_days: 1\n    timeout_seconds: {timeout}\n",
        proxy.endpoint, bucket.name
    );
    VolumeEnv::with_repository(harness::Workspace::new(), &repo, &[]).await
}

/// A stalled S3 server (it accepts connections and never answers) ends a
/// backup with an error naming the endpoint and the setting, warning on the
/// way; the catalog-only views keep answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_ends_a_backup_with_an_error_naming_it() {
    let proxy = FaultProxy::start(&services().s3_endpoint, Faults::none());
    let env = s3_env(&proxy, 6).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::tree::noise(5, 100_000)).unwrap();
    let first = env.backup(&src, "web");

    proxy.stall(true);
    let (code, stdout, stderr) = run_or_hang(
        env.cmd(&[
            "backup",
            "volume",
            "--path",
            src.to_str().unwrap(),
            "--name",
            "web",
        ])
        .env("DRCTL_LOG", "warn"),
        env.ws.dir.path(),
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(4), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("{} did not answer within 6 s", proxy.endpoint)),
        "{stderr}"
    );
    assert!(stderr.contains("repository.s3.timeout_seconds"), "{stderr}");
    assert!(
        stderr.contains("an S3 request failed (no answer in time)"),
        "{stderr}"
    );

    // The catalog answers without the store.
    let (code, stdout, stderr) = run_or_hang(
        &mut env.cmd(&["backup", "list", "-o", "json"]),
        env.ws.dir.path(),
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["id"], first["backup_id"], "{listed}");
    let (code, stdout, stderr) = run_or_hang(
        &mut env.cmd(&["backup", "describe", "web@latest"]),
        env.ws.dir.path(),
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("volume backup `web`"), "{stdout}");
    proxy.stall(false);
}

/// A backup whose process was killed stops being `running` once its
/// heartbeat is stale: it is marked `interrupted` with the reason, can be
/// deleted, and restore says what it is instead of "no such backup".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backup_is_marked_interrupted_and_can_be_deleted() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::tree::noise(6, 50_000)).unwrap();
    let good = env.backup(&src, "db");
    // Many files, so the backup is still running when it is killed.
    many_files(&src);
    let mut child = env
        .cmd(&[
            "backup",
            "volume",
            "--path",
            src.to_str().unwrap(),
            "--name",
            "db",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = caught_running(&env, &mut child).await;
    assert!(running, "the backup ended before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM backups WHERE status = 'running'")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();

    // Within the heartbeat window it is still running, and cannot go.
    let (out, stdout, stderr) = harness::run(&mut env.cmd(&["backup", "delete", &id.to_string()]));
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("still running"), "{stderr}");

    // Ten minutes without a heartbeat.
    sqlx::query(
        "UPDATE backups SET heartbeat_at = now() - interval '10 minutes', \
         started_at = now() - interval '11 minutes' WHERE id = $1",
    )
    .bind(id)
    .execute(&env.db.pool)
    .await
    .unwrap();
    let listed = env.json(&["backup", "list", "--name", "db"]);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id.to_string())
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(row["status"], "interrupted", "{row}");
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("no heartbeat since"),
        "{row}"
    );

    // Restore says what it is, and what to restore instead.
    let (out, stdout, stderr) = env.restore(&id.to_string(), &env.ws.path("r"));
    assert_eq!(out.status.code(), Some(7), "{stdout}{stderr}");
    assert!(stderr.contains("is interrupted"), "{stderr}");
    assert!(
        stderr.contains("drctl restore volume db@latest"),
        "{stderr}"
    );
    // And db@latest is the good one.
    let (out, stdout, stderr) = env.restore("db@latest", &env.ws.path("latest"));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(good["backup_id"].as_str().unwrap()),
        "{stdout}"
    );

    env.ok(&["backup", "delete", &id.to_string()]);
    let listed = env.json(&["backup", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

/// Short ids (the random tail) name backups; a reference that could mean
/// several lists them; the catalog records how long a backup took; the
/// list filters and fits 100 columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_named_by_short_ids_and_listed_for_people() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::tree::noise(7, 300_000)).unwrap();
    let a = env.backup(&src, "app-with-a-rather-long-name");
    std::fs::write(src.join("g"), b"more").unwrap();
    let b = env.backup(&src, "other");
    let (a_id, b_id) = (
        a["backup_id"].as_str().unwrap().to_string(),
        b["backup_id"].as_str().unwrap().to_string(),
    );

    let listed = env.json(&["backup", "list"]);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let short = rows[0]["short_id"].as_str().unwrap();
    assert_eq!(short.len(), 8);
    assert!(a_id.replace('-', "").ends_with(short), "{a_id} {short}");
    // The catalog says what the command said.
    assert!(rows[0]["seconds"].as_f64().unwrap() > 0.0, "{listed}");
    assert_eq!(rows[0]["bytes"], a["bytes"], "{listed}");
    assert_eq!(rows[0]["source"], a["source"], "{listed}");

    // The short id works anywhere a backup is named.
    let d = env.json(&["backup", "describe", short]);
    assert_eq!(d["id"], a_id.as_str());
    let (out, stdout, stderr) = env.restore(short, &env.ws.path("by-short"));
    assert!(out.status.success(), "{stdout}{stderr}");

    // Two backups of the same minute share their first digits: the
    // reference is ambiguous, and the error lists both.
    let common: String = a_id
        .chars()
        .zip(b_id.chars())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    assert!(common.len() >= 4, "{a_id} {b_id}");
    let (out, stdout, stderr) = harness::run(&mut env.cmd(&["backup", "describe", &common]));
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("could mean 2 backups"), "{stderr}");
    assert!(stderr.contains(&a_id) && stderr.contains(&b_id), "{stderr}");
    let (out, stdout, stderr) = env.restore(&common, &env.ws.path("ambiguous"));
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("could mean 2 backups"), "{stderr}");

    // Filters.
    let only = env.json(&["backup", "list", "--name", "other"]);
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
    let latest = env.json(&["backup", "list", "--latest", "1"]);
    assert_eq!(latest[0]["id"], b_id.as_str(), "{latest}");
    let none = env.json(&["backup", "list", "--status", "failed"]);
    assert_eq!(none.as_array().unwrap().len(), 0, "{none}");

    // The table for people fits 100 columns, with human sizes.
    let text = env.ok(&["backup", "list"]);
    for line in text.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    assert!(text.contains("KiB"), "{text}");
    assert!(text.contains("app-with-a-rath…"), "{text}");
    // The page for people.
    let page = env.ok(&["backup", "describe", "other@latest"]);
    for what in ["volume backup `other`", "took", "2 files", "no lock"] {
        assert!(page.contains(what), "{what}: {page}");
    }
}

/// With the catalog down, the backups are listed from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_listed_from_the_bucket_when_the_catalog_is_down() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::tree::noise(8, 10_000)).unwrap();
    let a = env.backup(&src, "web");
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.db.url, "postgres://nobody@127.0.0.1:1/gone");
    let down = env.ws.write("down.yaml", &config);
    let cmd = |args: &[&str]| {
        let mut c = harness::drctl();
        c.arg("--config").arg(&down).args(args);
        c
    };
    let (out, stdout, stderr) = harness::run(&mut cmd(&["backup", "list"]));
    assert_eq!(out.status.code(), Some(4), "{stdout}{stderr}");
    let (out, stdout, stderr) = harness::run(
        cmd(&["backup", "list", "--from-bucket", "-o", "json"])
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["id"], a["backup_id"], "{listed}");
    assert_eq!(listed[0]["name"], "web");
    assert_eq!(listed[0]["bytes"], a["bytes"], "{listed}");
}

/// With `-o json`, a command line clap refuses is a JSON error on stdout
/// too; the usage line never shows the global options as required (here
/// `--config`, set through DRCTL_CONFIG, and `--format`).
#[test]
fn usage_errors_follow_the_output_format() {
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .args(["backup", "describe", "-o", "json"])
            .env("DRCTL_CONFIG", "/nonexistent.yaml"),
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON error");
    assert_eq!(v["error"]["kind"], "usage", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("<BACKUP>"),
        "{v}"
    );
    let usage = v["error"]["guidance"].as_str().unwrap();
    assert!(usage.contains("drctl backup describe <BACKUP>"), "{usage}");

    let (out, _, stderr) = harness::run(
        harness::drctl()
            .args(["backup", "describe"])
            .env("DRCTL_CONFIG", "/nonexistent.yaml"),
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Usage: drctl backup describe <BACKUP>"),
        "{stderr}"
    );
}

/// A catalog database that does not exist is a configuration error that
/// says so, once.
#[tokio::test]
async fn a_missing_catalog_database_is_named_once() {
    let env = VolumeEnv::new().await;
    let url = services().pg_url.clone();
    let (base, _) = url.rsplit_once('/').unwrap();
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.db.url, &format!("{base}/drctl_no_such_db"));
    let bad = env.ws.write("bad.yaml", &config);
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .arg("--config")
            .arg(&bad)
            .args(["backup", "list"]),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stderr.contains("the catalog database does not exist"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("does not exist").count(),
        1,
        "said once: {stderr}"
    );
}

/// A restore host's configuration needs no catalog and no kubeconfig: the
/// sections are required by the commands that use them. (A kubeconfig that
/// does not exist used to block every command.)
#[tokio::test]
async fn a_restore_needs_neither_the_catalog_nor_a_kubeconfig() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"payload").unwrap();
    let b = env.backup(&src, "web");
    let config = std::fs::read_to_string(&env.config).unwrap();
    let catalog_line = format!("catalog:\n  url: {}\n", env.db.url);
    assert!(config.contains(&catalog_line), "{config}");
    let config =
        config.replace(&catalog_line, "") + "kubernetes:\n  kubeconfig: /nonexistent/kubeconfig\n";
    let restore_only = env.ws.write("restore-only.yaml", &config);
    let to = env.ws.path("restored");
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .arg("--config")
            .arg(&restore_only)
            .args([
                "restore",
                "volume",
                b["backup_id"].as_str().unwrap(),
                "--to",
            ])
            .arg(&to)
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(std::fs::read(to.join("f")).unwrap(), b"payload");
    // A command that needs the catalog says so.
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .arg("--config")
            .arg(&restore_only)
            .args(["backup", "list"]),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("catalog.url is not set"), "{stderr}");
}

/// `restore --force` over a directory with contents keeps what the backup
/// does not hold, and says so.
#[tokio::test]
async fn a_forced_restore_says_what_it_left_in_place() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"from the backup").unwrap();
    let b = env.backup(&src, "web");
    let to = env.ws.path("target");
    std::fs::create_dir_all(to.join("d")).unwrap();
    std::fs::write(to.join("d/f"), b"old").unwrap();
    std::fs::write(to.join("d/stray.log"), b"not in the backup").unwrap();
    let id = b["backup_id"].as_str().unwrap();
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["restore", "volume", id, "--force", "--to"])
            .arg(&to)
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("1 entry already in the target and not in the backup was left as it was (e.g. d/stray.log)"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(to.join("d/f")).unwrap(), b"from the backup");
    assert!(to.join("d/stray.log").exists());
}

/// An identity others can read is warned about once, when it is used,
/// however it was given (config or --identity).
#[tokio::test]
async fn a_readable_identity_is_warned_about_once() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let b = env.backup(&src, "web");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env.identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (out, stdout, stderr) = env.restore(b["backup_id"].as_str().unwrap(), &env.ws.path("r"));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stderr.matches("can be read by other users").count(),
        1,
        "{stderr}"
    );
}

/// A catalog that stops answering in the middle of a backup (PostgreSQL
/// stopped: connections stay open, nothing comes back) ends the backup
/// with an error naming the catalog and the setting, within
/// `catalog.timeout_seconds`, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_catalog_ends_a_backup_with_an_error() {
    let env = VolumeEnv::new().await;
    let url = url::Url::parse(&env.db.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let proxy = crate::harness::tcp_stall::TcpStall::start(&upstream);
    let mut via = url.clone();
    via.set_port(Some(
        proxy.addr.rsplit_once(':').unwrap().1.parse().unwrap(),
    ))
    .unwrap();
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.db.url, via.as_str())
        .replace("catalog:\n", "catalog:\n  timeout_seconds: 5\n");
    let stalling = env.ws.write("stalling.yaml", &config);
    let src = env.ws.path("src");
    many_files(&src);
    let mut cmd = harness::drctl();
    cmd.arg("--config").arg(&stalling).args([
        "backup",
        "volume",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "db",
    ]);
    let mut started = start_logged(&mut cmd, env.ws.dir.path());
    // Stall once the backup is recorded as running (seen directly, not
    // through the proxy).
    assert!(caught_running(&env, &mut started.child).await);
    proxy.stall(true);
    let (code, _, stderr) = finish_or_hang(started, Duration::from_secs(120));
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("the catalog did not answer within 5 s"),
        "{stderr}"
    );
    assert!(stderr.contains("catalog.timeout_seconds"), "{stderr}");
    // The files the stopped backup never reached are one line, not one each.
    assert!(stderr.lines().count() < 20, "{stderr}");
    proxy.stall(false);
}
