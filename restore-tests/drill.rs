//! Restore drills as an operator and an auditor meet them: one drill over
//! an etcd, a resources and a volume backup (a PostgreSQL data directory,
//! with a probe that starts PostgreSQL on it) proves each restorable and
//! measures RTO and RPO; a tampered pack fails the drill at the stage that
//! read it; an objective set too low is a breach; scheduled drills run in
//! `drctl worker --drills` while `drctl server` never touches the identity.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::apiserver::Cluster;
use crate::harness::etcd::{Etcd, which};
use crate::harness::{self, VolumeEnv, run, services};

/// A value planted in every source: no report may contain it.
const PLANTED: &str = "planted-drill-secret-7f3a9c";
const ROWS: u64 = 1234;

/// A repository on the S3 server, a private etcd served by the stand-in API
/// server under `/registry/` (so an etcd backup holds Kubernetes objects),
/// a namespace `shop` with workloads and a Secret, and a stopped
/// PostgreSQL data directory with `ROWS` rows.
struct Setup {
    env: VolumeEnv,
    cluster: Cluster,
    _etcd: Etcd,
    pg: tempfile::TempDir,
}

impl Setup {
    async fn new(drills_yaml: &str) -> Setup {
        let bucket = harness::locked_bucket().await;
        let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
        let mut etcd = Etcd::start();
        etcd.ready(true).await;
        let cluster = Cluster::on(std::slice::from_ref(&etcd.client_url), "/registry/").await;
        let manifest = format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: shop}}
data: {{mode: production}}
---
apiVersion: v1
kind: Secret
metadata: {{name: db, namespace: shop}}
stringData: {{password: {PLANTED}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: nginx:1.27, env: [{{name: TOKEN, value: {PLANTED}}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}
"#
        );
        let file = env.ws.write("shop.yaml", &manifest);
        cluster.ok(&["apply", "-f", file.to_str().unwrap()]);
        let mut config = std::fs::read_to_string(&env.config).unwrap();
        config.push_str(&format!(
            "etcd:\n  endpoints: [{}]\n  insecure: true\nkubernetes:\n  kubeconfig: {}\n{drills_yaml}",
            etcd.client_url,
            cluster.running.kubeconfig.display()
        ));
        std::fs::write(&env.config, config).unwrap();
        let pg = postgres_data(ROWS);
        Setup {
            env,
            cluster,
            _etcd: etcd,
            pg,
        }
    }

    fn pg_data(&self) -> PathBuf {
        self.pg.path().join("data")
    }

    /// Backs up etcd, the `shop` namespace and the PostgreSQL directory;
    /// returns the three backup summaries.
    fn back_up(&self) -> [Value; 3] {
        let etcd = self.env.json(&["backup", "etcd", "--name", "etcd-nightly"]);
        let res = self.env.json(&[
            "backup",
            "resources",
            "--include-namespaces",
            "shop",
            "--name",
            "shop",
        ]);
        let vol = self.env.backup(&self.pg_data(), "pgdata");
        [etcd, res, vol]
    }

    /// `drctl drill ARGS --identity ID -o json`: the status, the report.
    fn drill(&self, args: &[&str]) -> (std::process::ExitStatus, Value, String) {
        let (out, stdout, stderr) = run(self
            .env
            .cmd(args)
            .args(["-o", "json", "--identity"])
            .arg(&self.env.identity));
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("drctl {args:?} did not print a JSON report ({e}):\n{stdout}\n{stderr}")
        });
        (out.status, report, stderr)
    }
}

/// A stopped PostgreSQL data directory with table `t` of `rows` rows,
/// owned by PostgreSQL's user (initdb refuses root).
pub(crate) fn postgres_data(rows: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bindir = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| {
            let mut v: Vec<PathBuf> = d.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).collect();
            v.sort();
            v.pop()
        })
        .filter(|b| b.join("initdb").exists())
        .unwrap_or_else(|| panic!("PostgreSQL server binaries not found under /usr/lib/postgresql: install the Debian package postgresql (./scripts/setup does)"));
    let script = format!(
        r#"set -eu
dir={dir}; bin={bin}
chmod 755 "$dir"
runas=""
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; runas="setpriv --reuid=postgres --regid=postgres --init-groups"; fi
$runas "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
$runas "$bin/pg_ctl" -D "$dir/data" -w -l "$dir/log" -o "-c listen_addresses='' -k $dir -p 5432" start >/dev/null
$runas "$bin/psql" -h "$dir" -p 5432 -U postgres -q -c "CREATE TABLE t (i int, note text); INSERT INTO t SELECT g, '{PLANTED}' FROM generate_series(1, {rows}) g;" postgres
$runas "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
rm -f "$dir/log"
"#,
        dir = dir.path().display(),
        bin = bindir.display(),
    );
    let (out, stdout, stderr) = run(Command::new("sh").args(["-c", &script]));
    assert!(
        out.status.success(),
        "making a PostgreSQL data directory failed:\n{stdout}\n{stderr}"
    );
    dir
}

fn probe_command() -> String {
    format!(
        "[{}, \"{{path}}\", t, \"{ROWS}\"]",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/restore-tests/fixtures/pg-probe.sh"
        )
    )
}

fn drills_yaml(extra: &str) -> String {
    format!(
        "drills:\n  - name: nightly\n    targets:\n      - backup: etcd-nightly\n      - backup: shop\n      \
         - backup: pgdata\n        probe: {{command: {probe}, timeout_seconds: 120}}\n    \
         readiness_timeout_seconds: 1\n{extra}",
        probe = probe_command()
    )
}

fn check<'a>(report: &'a Value, source: &str, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == source && c["name"] == name)
        .unwrap_or_else(|| panic!("no {source} check {name} in {report:#}"))
}

/// Where test artifacts (screenshots) are kept: beside the build, so CI on
/// the same machine keeps them.
pub(crate) fn artifacts() -> PathBuf {
    let dir = std::env::var_os("DRCTL_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_drctl"))
                .parent()
                .unwrap()
                .join("test-artifacts")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_over_etcd_resources_and_postgres_passes_with_real_numbers() {
    let s = Setup::new(&drills_yaml("")).await;
    let backups = s.back_up();
    let (status, report, stderr) = s.drill(&["drill", "run", "nightly"]);
    assert!(status.success(), "the drill failed:\n{report:#}\n{stderr}");
    assert_eq!(report["schema"], "drctl.drill-report/v1");
    assert_eq!(report["verdict"], "passed", "{report:#}");
    assert_eq!(report["trigger"], "manual");

    // Every check ran and says what it saw.
    let keyspace = check(&report, "etcd", "keyspace");
    assert_eq!(keyspace["status"], "passed", "{keyspace:#}");
    assert_eq!(
        keyspace["evidence"]["revision"]["recorded"], backups[0]["revision"],
        "{keyspace:#}"
    );
    let counts = check(&report, "etcd", "api_object_counts");
    assert_eq!(counts["status"], "passed", "{counts:#}");
    assert_eq!(
        counts["evidence"]["served"]["apps/deployments"], 1,
        "{counts:#}"
    );
    assert_eq!(
        counts["evidence"]["served"]["core/secrets"], 1,
        "{counts:#}"
    );
    let digests = check(&report, "resources", "object_digests");
    assert_eq!(digests["status"], "passed", "{digests:#}");
    assert!(
        digests["evidence"]["matched"].as_u64().unwrap() >= 4,
        "{digests:#}"
    );
    let ready = check(&report, "resources", "readiness");
    assert_eq!(ready["status"], "not_observable", "{ready:#}");
    assert!(
        ready["summary"]
            .as_str()
            .unwrap()
            .contains("not observable")
    );
    let files = check(&report, "volume", "file_digests");
    assert_eq!(files["status"], "passed", "{files:#}");
    let probe = check(&report, "volume", "probe");
    assert_eq!(probe["status"], "passed", "{probe:#}");

    // RTO is the phases' sum; RPO is the drill's start minus the oldest
    // backup's snapshot time.
    let rto = report["rto"]["seconds"].as_f64().unwrap();
    let phases: f64 = ["plan", "fetch_decrypt", "write", "start", "checks"]
        .iter()
        .map(|p| report["rto"]["phases"][p].as_f64().unwrap())
        .sum();
    assert!((rto - phases).abs() < 0.001, "RTO {rto} vs phases {phases}");
    for p in ["fetch_decrypt", "write", "start", "checks"] {
        assert!(
            report["rto"]["phases"][p].as_f64().unwrap() > 0.0,
            "phase {p} is 0"
        );
    }
    let started =
        chrono::DateTime::parse_from_rfc3339(report["started_at"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(report["finished_at"].as_str().unwrap()).unwrap();
    let wall = (finished - started).as_seconds_f64();
    assert!(
        rto <= wall + 0.05 && rto > wall * 0.5,
        "RTO {rto} vs wall {wall}"
    );
    let listed = s.env.json(&["backup", "list"]);
    let oldest = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| chrono::DateTime::parse_from_rfc3339(b["started_at"].as_str().unwrap()).unwrap())
        .min()
        .unwrap();
    let rpo = report["rpo"]["seconds"].as_f64().unwrap();
    assert!(
        ((started - oldest).as_seconds_f64() - rpo).abs() < 0.01,
        "RPO {rpo}"
    );
    assert!(report["rto"]["bytes"].as_u64().unwrap() > 1 << 20);

    // The backups are verified, by this drill.
    for b in listed.as_array().unwrap() {
        assert_eq!(b["verified_by"], report["drill_id"], "{b:#}");
    }
    let table = s.env.ok(&["backup", "list"]);
    assert_eq!(table.matches(" verified ").count(), 3, "{table}");
    let page = s.env.ok(&["backup", "describe", "pgdata@latest"]);
    assert!(
        page.contains(&format!(
            "by drill {}",
            report["drill_id"].as_str().unwrap()
        )),
        "{page}"
    );

    // Cleanup: scratch namespaces and directories gone.
    assert_eq!(report["cleanup"]["result"], "removed", "{report:#}");
    let namespaces = s.cluster.ok(&["get", "namespaces", "-o", "name"]);
    assert!(!namespaces.contains("drill-"), "{namespaces}");
    for sc in report["cleanup"]["scratch"].as_array().unwrap() {
        if let Some(d) = sc.as_str().unwrap().strip_prefix("dir:") {
            assert!(!Path::new(d).exists(), "{d} left behind");
        }
    }

    // Listed, and the report in three forms, none with the planted value.
    let id = report["drill_id"].as_str().unwrap();
    let runs = s.env.json(&["drill", "list"]);
    assert_eq!(runs[0]["id"], id);
    assert_eq!(runs[0]["verdict"], "passed");
    let json = s.env.ok(&["drill", "report", id, "-o", "json"]);
    let md = s.env.ok(&["drill", "report", id, "-o", "md"]);
    let html_path = s.env.ws.path("report.html");
    s.env.ok(&[
        "drill",
        "report",
        &id[id.len() - 8..],
        "-o",
        "html",
        "--output",
        html_path.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&html_path).unwrap();
    for (what, text) in [
        ("json", &json),
        ("md", &md),
        ("html", &html),
        ("run", &report.to_string()),
    ] {
        assert!(
            !text.contains(PLANTED),
            "the {what} report holds the planted secret"
        );
    }
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), report);
    assert!(
        md.contains("PASSED") && md.contains("object_digests"),
        "{md}"
    );

    // The bucket's sealed copy, read back and authenticated, is the same.
    let from_bucket = s.env.ok(&[
        "drill",
        "report",
        id,
        "--from-bucket",
        "-o",
        "json",
        "--identity",
        s.env.identity.to_str().unwrap(),
    ]);
    assert_eq!(serde_json::from_str::<Value>(&from_bucket).unwrap(), report);
    // ... locked, as manifests are.
    let bucket = services_bucket(&s.env);
    let client = harness::s3_client();
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(format!("reports/{id}"))
        .send()
        .await
        .expect("the report is in the bucket");
    assert_eq!(
        head.object_lock_mode().map(|m| m.as_str()),
        Some("COMPLIANCE"),
        "{head:?}"
    );
    assert!(head.object_lock_retain_until_date().is_some(), "{head:?}");

    // The HTML renders in a real browser.
    screenshot(&html_path, "drill-report.png");
}

/// The bucket of an S3 `VolumeEnv`, from its configuration.
fn services_bucket(env: &VolumeEnv) -> String {
    let config = std::fs::read_to_string(&env.config).unwrap();
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("bucket: "))
        .expect("an S3 configuration")
        .to_string()
}

/// Renders `html` in headless Chromium, keeps the screenshot as an
/// artifact, and checks the browser saw the verdict banner and both SVGs.
fn screenshot(html: &Path, name: &str) {
    let chromium = which("chromium").unwrap_or_else(|| {
        panic!(
            "chromium not found on PATH: install the Debian package chromium (./scripts/setup does)"
        )
    });
    let out = artifacts().join(name);
    let _ = std::fs::remove_file(&out);
    let profile = tempfile::tempdir().unwrap();
    let common = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .env("HOME", profile.path());
    };
    let mut shot = Command::new(&chromium);
    common(&mut shot);
    shot.arg(format!("--screenshot={}", out.display()))
        .arg("--window-size=1200,2400")
        .arg(format!("file://{}", html.display()));
    let (o, stdout, stderr) = run(&mut shot);
    assert!(
        o.status.success() && out.exists(),
        "chromium took no screenshot:\n{stdout}\n{stderr}"
    );
    assert!(
        std::fs::metadata(&out).unwrap().len() > 20_000,
        "a blank screenshot"
    );
    let mut dom = Command::new(&chromium);
    common(&mut dom);
    dom.arg("--dump-dom")
        .arg(format!("file://{}", html.display()));
    let (o, dumped, stderr) = run(&mut dom);
    assert!(o.status.success(), "{stderr}");
    for want in ["data-verdict=", "id=\"trend\"", "id=\"phases\"", "<circle"] {
        assert!(dumped.contains(want), "the rendered page has no {want}");
    }
    eprintln!("screenshot: {}", out.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_pack_fails_the_drill_at_fetch_with_exit_6_and_names_it() {
    let s = Setup::new("").await;
    // Governance mode: a bucket writer with s3:BypassGovernanceRetention
    // can remove an original. (In compliance mode nobody can, and a new
    // version under a pack's key is never read: drills pass.)
    let config = std::fs::read_to_string(&s.env.config).unwrap();
    let config = config.replace(
        "    force_path_style: true\n",
        "    force_path_style: true\n    lock_mode: GOVERNANCE\n",
    );
    std::fs::write(&s.env.config, config).unwrap();
    let vol = s.env.backup(&s.pg_data(), "pgdata");
    let id = vol["backup_id"].as_str().unwrap();
    // The attacker, with the AWS SDK: the biggest pack (data, not a tree)
    // read, its original version removed, other bytes put in its place.
    let bucket = services_bucket(&s.env);
    let client = harness::s3_client();
    let packs = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("packs/")
        .send()
        .await
        .unwrap();
    let biggest = packs
        .contents()
        .iter()
        .max_by_key(|o| o.size().unwrap_or(0))
        .expect("the backup wrote packs");
    let key = biggest.key().unwrap().to_string();
    let original = client
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let version = original.version_id().unwrap().to_string();
    let mut body = original.body.collect().await.unwrap().into_bytes().to_vec();
    let mid = body.len() / 2;
    body[mid] ^= 0x55;
    client
        .delete_object()
        .bucket(&bucket)
        .key(&key)
        .version_id(&version)
        .bypass_governance_retention(true)
        .send()
        .await
        .expect("governance mode lets the bypass delete the original");
    client
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(body.into())
        .send()
        .await
        .expect("other bytes under the pack's key");

    let (status, report, stderr) = s.drill(&["drill", "run", "--backup", id]);
    assert_eq!(status.code(), Some(6), "{report:#}\n{stderr}");
    assert_eq!(report["verdict"], "failed");
    let failure = &report["failure"];
    assert_eq!(failure["stage"], "fetch_decrypt", "{failure:#}");
    assert_eq!(failure["kind"], "integrity", "{failure:#}");
    let pack = key.rsplit('/').next().unwrap();
    assert!(
        failure["reason"].as_str().unwrap().contains(pack),
        "the reason does not name the pack {key}: {failure:#}"
    );
    // The backup is not marked verified; the failed scratch is kept.
    let listed = s.env.json(&["backup", "list"]);
    assert!(listed[0]["verified_at"].is_null());
    assert_eq!(report["cleanup"]["result"], "kept");
    assert!(report["cleanup"]["kept_until"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rto_objective_below_the_drill_is_a_breach_and_the_metric_shows_it() {
    let s = Setup::new("").await;
    let vol = s.env.backup(&s.pg_data(), "pgdata");
    let id = vol["backup_id"].as_str().unwrap();
    let (status, report, _) = s.drill(&["drill", "run", "--backup", id, "--rto-objective", "0"]);
    assert_eq!(status.code(), Some(1), "{report:#}");
    assert_eq!(report["verdict"], "failed");
    assert_eq!(report["rto"]["result"], "breach");
    assert_eq!(report["failure"]["stage"], "objectives", "{report:#}");
    assert!(
        report["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("RTO")
    );
    // Every check itself passed: the restore worked, it was too slow.
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "passed")
    );

    let metrics = crate::server::scrape_once(&s.env);
    let value = |name: &str| {
        metrics
            .iter()
            .find(|m| m.metric == name && m.labels.get("drill") == Some("manual"))
            .map(|m| match m.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name}{{drill=\"manual\"}} in /metrics"))
    };
    assert_eq!(value("drctl_drill_last_status"), 0.0);
    assert_eq!(value("drctl_drill_rto_objective_seconds"), 0.0);
    assert!(value("drctl_drill_rto_seconds") > 0.0);
    let failed = metrics
        .iter()
        .find(|m| m.metric == "drctl_drill_runs_total" && m.labels.get("result") == Some("failed"))
        .expect("drctl_drill_runs_total{result=\"failed\"}");
    assert!(
        matches!(failed.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v == 1.0),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_drill_runs_in_the_worker_and_the_server_never_opens_the_identity() {
    // The configuration names the identity file, as one shared by every
    // role would: the server must still never open it. The drill runs
    // daily, at a Berlin wall-clock minute twelve minutes from now.
    use chrono::Timelike as _;
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let slot = (chrono::Utc::now() + chrono::Duration::minutes(12))
        .with_timezone(&berlin)
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap();
    let extra = format!(
        "    cron: \"{} {} * * *\"\n    time_zone: Europe/Berlin\n    \
         checks: [api_object_counts, object_digests, file_digests, probe]\n",
        slot.minute(),
        slot.hour()
    );
    let rfc = |t: chrono::DateTime<chrono_tz::Tz>| {
        t.with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S+00:00")
            .to_string()
    };
    let (yesterday, today) = (rfc(slot - chrono::Duration::days(1)), rfc(slot));
    let s = Setup::new(&drills_yaml(&extra)).await;
    s.back_up();
    let mut config = std::fs::read_to_string(&s.env.config).unwrap();
    config = config.replace(
        "encryption:\n",
        &format!(
            "encryption:\n  identity_file: {}\n",
            s.env.identity.display()
        ),
    );
    std::fs::write(&s.env.config, config).unwrap();

    let watch = harness::open_watch::OpenWatch::new(&s.env.identity);
    // The test clock runs 60x from now: twelve minutes pass in twelve
    // seconds. A new drill runs its latest slot at once (yesterday's),
    // then the next on time.
    let clock = format!("{}:60", chrono::Utc::now().timestamp());
    let server = crate::server::Server::start_with(
        &s.env,
        "server.log",
        &[("DRCTL_TEST_CLOCK", clock.as_str())],
    );
    let first = wait_for(Duration::from_secs(60), || {
        let jobs = drill_jobs(&s.env);
        (!jobs.is_empty()).then_some(jobs)
    });
    assert_eq!(
        first,
        vec![(yesterday.clone(), "queued".to_string())],
        "yesterday's slot, enqueued once, waiting for a worker"
    );
    assert_eq!(watch.opens(), 0, "drctl server opened the identity file");

    let worker = s
        .env
        .cmd(&["worker", "--drills"])
        .stderr(std::fs::File::create(s.env.ws.path("worker.log")).unwrap())
        .spawn()
        .expect("start drctl worker --drills");
    let _worker = Killed(worker);
    let done = wait_for(Duration::from_secs(300), || {
        let jobs = drill_jobs(&s.env);
        (jobs.len() == 2
            && jobs
                .iter()
                .all(|(_, state)| state != "queued" && state != "running"))
        .then_some(jobs)
    });
    let log = std::fs::read_to_string(s.env.ws.path("worker.log")).unwrap_or_default();
    assert_eq!(
        done,
        vec![
            (yesterday, "succeeded".to_string()),
            (today, "succeeded".to_string()),
        ],
        "{log}"
    );
    assert!(
        watch.opens() > 0,
        "the watch saw no open: it proves nothing"
    );
    let runs = s.env.json(&["drill", "list"]);
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs:#}");
    for r in runs.as_array().unwrap() {
        assert_eq!(r["trigger"], "scheduled");
        assert_eq!(r["verdict"], "passed");
        assert_eq!(r["drill"], "nightly");
    }
    // Only the checks the drill chose ran; readiness is listed as skipped.
    let report: Value = serde_json::from_str(&s.env.ok(&[
        "drill",
        "report",
        runs[0]["id"].as_str().unwrap(),
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        check(&report, "resources", "readiness")["status"],
        "skipped"
    );
    assert_eq!(check(&report, "volume", "probe")["status"], "passed");
    assert!(report["job_id"].is_string(), "{report:#}");
    // The server still never opened it, and says what the worker did.
    drop(_worker);
    let samples = {
        let (status, text) = server.call("GET", "/metrics", None);
        assert_eq!(status, 200);
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap()
            .samples
    };
    let last = samples
        .iter()
        .find(|m| m.metric == "drctl_drill_last_status" && m.labels.get("drill") == Some("nightly"))
        .expect("drctl_drill_last_status{drill=\"nightly\"}");
    assert!(
        matches!(last.value, prometheus_parse::Value::Gauge(v) if v == 1.0),
        "{last:?}"
    );
    let opens_by_worker = watch.opens();
    drop(server);
    assert_eq!(
        watch.opens(),
        opens_by_worker,
        "the identity was opened after the worker stopped"
    );
}

/// The drill jobs' slots (RFC 3339, UTC) and states, oldest first.
fn drill_jobs(env: &VolumeEnv) -> Vec<(String, String)> {
    let slots = sqlx_rows(
        env,
        "SELECT to_char(scheduled_for AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"') \
         FROM jobs WHERE kind = 'drill' ORDER BY scheduled_for",
    );
    let states = sqlx_rows(
        env,
        "SELECT state FROM jobs WHERE kind = 'drill' ORDER BY scheduled_for",
    );
    slots.into_iter().zip(states).collect()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The first column of `sql`'s rows in the test's catalog, as text.
fn sqlx_rows(env: &VolumeEnv, sql: &'static str) -> Vec<String> {
    let pool = env.db.pool.clone();
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async move {
            use sqlx::Row as _;
            sqlx::query(sql)
                .fetch_all(&pool)
                .await
                .expect("query the catalog")
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect()
        })
    })
}
