//! `drctl doctor` against the real services: a healthy setup passes every
//! check that applies, and each mistake an operator makes fails its own
//! check, with a fix, without printing a secret.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::apiserver::Cluster;
use crate::harness::{self, VolumeEnv, services};

/// `drctl --config CONFIG doctor ARGS -o json`, with no Kubernetes
/// credentials from this machine (HOME is the test's workspace), run: the
/// exit code, the report, stderr.
fn doctor(env: &VolumeEnv, args: &[&str]) -> (i32, Value, String) {
    doctor_with(env, args, |_| {})
}

fn doctor_with(
    env: &VolumeEnv,
    args: &[&str],
    setup: impl FnOnce(&mut Command),
) -> (i32, Value, String) {
    let mut cmd = env.cmd(&["doctor"]);
    cmd.args(args)
        .args(["-o", "json"])
        .env("HOME", env.ws.dir.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST");
    setup(&mut cmd);
    let (out, stdout, stderr) = harness::run(&mut cmd);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// The check `name` of a report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

/// Each check's status, by name, in order.
fn statuses(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Replaces the configuration's `repository:` section with `repo`
/// (indented YAML), keeping the rest.
fn set_repository(env: &VolumeEnv, repo: &str) {
    let config = std::fs::read_to_string(&env.config).unwrap();
    let rest = &config[config.find("catalog:").expect("a catalog section")..];
    std::fs::write(&env.config, format!("repository:\n{repo}{rest}")).unwrap();
}

fn append(env: &VolumeEnv, yaml: &str) {
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(yaml);
    std::fs::write(&env.config, config).unwrap();
}

/// A repository in a locked bucket on the S3 server, the catalog migrated,
/// the shared etcd and a stand-in API server configured: every check of
/// every role passes or does not apply, and the text form is the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_s3_setup_passes_every_check() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 2).await;
    let cluster = Cluster::start().await;
    append(
        &env,
        &format!(
            "etcd:\n  endpoints: [{}]\n  insecure: true\nkubernetes:\n  kubeconfig: {}\n",
            services().etcd_endpoints.join(", "),
            cluster.running.kubeconfig.display()
        ),
    );

    let (code, report, stderr) = doctor(&env, &[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["role"], "server");
    assert_eq!(report["ok"], true);
    assert_eq!(
        statuses(&report),
        expect(&[
            ("configuration", "pass"),
            ("catalog", "pass"),
            ("bucket", "pass"),
            ("clock", "pass"),
            ("etcd", "pass"),
            ("kubernetes", "pass"),
            ("identity", "pass"),
        ]),
        "{report:#}"
    );
    for c in report["checks"].as_array().unwrap() {
        assert!(c["fix"].is_null(), "{c}");
    }
    let bucket_detail = check(&report, "bucket")["detail"].as_str().unwrap();
    assert!(
        bucket_detail.contains(&bucket.name) && bucket_detail.contains("Object Lock enabled"),
        "{bucket_detail}"
    );
    let k8s = check(&report, "kubernetes")["detail"].as_str().unwrap();
    assert!(
        k8s.contains("all 99 permissions of drctl-server-read-builtin"),
        "{k8s}"
    );
    let clock = check(&report, "clock")["detail"].as_str().unwrap();
    assert!(clock.contains("the limit is 30 s"), "{clock}");

    // The agent: no etcd; its three permissions.
    let (code, report, stderr) = doctor(&env, &["--role", "agent"]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(check(&report, "etcd")["status"], "skip", "{report:#}");
    assert!(
        check(&report, "kubernetes")["detail"]
            .as_str()
            .unwrap()
            .contains("all 3 permissions of drctl-agent"),
        "{report:#}"
    );

    // The drill worker and a restore, with the identity.
    for role in ["worker", "restore"] {
        let (code, report, stderr) = doctor(
            &env,
            &["--role", role, "--identity", env.identity.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{role}: {report:#}\n{stderr}");
        assert_eq!(check(&report, "identity")["status"], "pass", "{report:#}");
        assert_eq!(check(&report, "etcd")["status"], "skip", "{report:#}");
        assert_eq!(check(&report, "kubernetes")["status"], "pass", "{report:#}");
    }

    // Text: the table, a line per check.
    let mut cmd = env.cmd(&["doctor"]);
    cmd.env("HOME", env.ws.dir.path());
    let (out, stdout, stderr) = harness::run(&mut cmd);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("CHECK"), "{stdout}");
    for name in [
        "configuration",
        "catalog",
        "bucket",
        "clock",
        "etcd",
        "kubernetes",
        "identity",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains("PASS")),
            "{name}:\n{stdout}"
        );
    }
    assert!(stdout.contains("7 passed, 0 failed"), "{stdout}");
}

/// A bucket made without Object Lock: the bucket check fails with the
/// command that fixes it, the others still run, the exit code is 1.
#[tokio::test]
async fn a_bucket_without_object_lock_fails_the_bucket_check() {
    let env = VolumeEnv::new().await;
    let client = harness::s3_client();
    let name = harness::unique("drctl-t-");
    client
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create a bucket without Object Lock");
    set_repository(
        &env,
        &format!(
            "  s3:\n    endpoint: {}\n    bucket: {name}\n    force_path_style: true\n",
            services().s3_endpoint
        ),
    );

    let (code, report, stderr) = doctor(&env, &[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    assert_eq!(report["ok"], false);
    let bucket = check(&report, "bucket");
    assert_eq!(bucket["status"], "fail", "{report:#}");
    let detail = bucket["detail"].as_str().unwrap();
    assert!(
        detail.contains(&name) && detail.contains("does not have Object Lock enabled"),
        "{detail}"
    );
    let fix = bucket["fix"].as_str().unwrap();
    assert!(fix.contains("put-object-lock-configuration"), "{fix}");
    assert!(!fix.contains('\n'), "one line: {fix}");
    // The rest was checked all the same.
    assert_eq!(check(&report, "catalog")["status"], "pass", "{report:#}");
    assert_eq!(check(&report, "clock")["status"], "pass", "{report:#}");
    assert!(stderr.contains("1 of 7 checks failed: bucket"), "{stderr}");
}

/// A catalog URL with a password, at a port nothing listens on: the
/// catalog check fails and names the catalog, with the password redacted
/// in the JSON, the table and the error.
#[tokio::test]
async fn a_closed_catalog_port_fails_the_catalog_check_without_the_password() {
    let env = VolumeEnv::new().await;
    let port = closed_port();
    let password = "hunter2-doctor-secret";
    let config = std::fs::read_to_string(&env.config).unwrap();
    let url = format!("postgres://drctl:{password}@127.0.0.1:{port}/drctl");
    let config = config.replace(&env.db.url, &url);
    assert!(config.contains(password));
    std::fs::write(&env.config, config).unwrap();

    let mut cmd = env.cmd(&["doctor", "-o", "json"]);
    cmd.env("HOME", env.ws.dir.path());
    let mut text = env.cmd(&["doctor"]);
    text.env("HOME", env.ws.dir.path());
    // Both at once: each waits out the catalog's connect timeout.
    let (json, text) = std::thread::scope(|s| {
        let j = s.spawn(|| harness::run(&mut cmd));
        let t = s.spawn(|| harness::run(&mut text));
        (j.join().unwrap(), t.join().unwrap())
    });
    let (out, stdout, stderr) = json;
    harness::assert_no_secret(&format!("{stdout}{stderr}"), &[password]);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let catalog = check(&report, "catalog");
    assert_eq!(catalog["status"], "fail", "{report:#}");
    let detail = catalog["detail"].as_str().unwrap();
    assert!(
        detail.contains("cannot connect to the catalog")
            && detail.contains(&format!("postgres://drctl:****@127.0.0.1:{port}/drctl")),
        "{detail}"
    );
    assert!(
        catalog["fix"].as_str().unwrap().contains("PostgreSQL"),
        "{catalog}"
    );
    assert_eq!(check(&report, "configuration")["status"], "pass");

    let (out, stdout, stderr) = text;
    harness::assert_no_secret(&format!("{stdout}{stderr}"), &[password]);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("catalog") && l.contains("FAIL")),
        "{stdout}"
    );
    assert!(stdout.contains("fix: check that PostgreSQL"), "{stdout}");
}

/// The server and the agents are writers: an identity configured for them
/// in any of the three ways fails, saying which way and how to undo it.
#[tokio::test]
async fn the_server_must_not_hold_the_identity() {
    let env = VolumeEnv::new().await;
    let identity = env.identity.to_str().unwrap();
    let key = std::fs::read_to_string(&env.identity).unwrap();
    let secret_lines: Vec<&str> = key
        .lines()
        .filter(|l| l.starts_with("AGE-SECRET-KEY"))
        .collect();

    let (code, report, stderr) = doctor(&env, &["--role", "server"]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(check(&report, "identity")["status"], "pass");

    // --identity
    let (code, report, stderr) = doctor(&env, &["--role", "server", "--identity", identity]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let c = check(&report, "identity");
    assert_eq!(c["status"], "fail", "{report:#}");
    assert!(
        c["detail"].as_str().unwrap().contains(identity),
        "{report:#}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("drop --identity"),
        "{report:#}"
    );
    harness::assert_no_secret(&format!("{report}{stderr}"), &secret_lines);

    // DRCTL_IDENTITY_FILE, as the worker's Deployment sets it.
    let (code, report, _) = doctor_with(&env, &["--role", "agent"], |c| {
        c.env("DRCTL_IDENTITY_FILE", identity);
    });
    assert_eq!(code, 1, "{report:#}");
    let c = check(&report, "identity");
    assert_eq!(c["status"], "fail", "{report:#}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("$DRCTL_IDENTITY_FILE")
            && c["fix"]
                .as_str()
                .unwrap()
                .contains("unset DRCTL_IDENTITY_FILE in drctl agent's environment"),
        "{report:#}"
    );

    // encryption.identity_file
    append(&env, &format!("  identity_file: {identity}\n"));
    let (code, report, stderr) = doctor(&env, &[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let c = check(&report, "identity");
    assert_eq!(c["status"], "fail", "{report:#}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("remove encryption.identity_file from drctl server's configuration"),
        "{report:#}"
    );
    // Only the identity failed.
    let failed: Vec<_> = statuses(&report)
        .into_iter()
        .filter(|(_, s)| s == "fail")
        .collect();
    assert_eq!(failed, expect(&[("identity", "fail")]), "{report:#}");
    harness::assert_no_secret(&format!("{report}{stderr}"), &secret_lines);
}

/// The drill worker must hold the identity, readable, and by nobody else.
#[tokio::test]
async fn the_worker_needs_its_identity_readable_by_it_alone() {
    let env = VolumeEnv::new().await;
    let (code, report, stderr) = doctor(&env, &["--role", "worker"]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let c = check(&report, "identity");
    assert_eq!(c["status"], "fail", "{report:#}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("no age identity configured"),
        "{report:#}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("DRCTL_IDENTITY_FILE"),
        "{report:#}"
    );

    let identity = env.identity.to_str().unwrap();
    let worker = |mode: u32| {
        std::fs::set_permissions(&env.identity, std::fs::Permissions::from_mode(mode)).unwrap();
        doctor_with(&env, &["--role", "worker"], |c| {
            c.env("DRCTL_IDENTITY_FILE", identity);
        })
    };

    // Readable by every user.
    let (code, report, _) = worker(0o644);
    assert_eq!(code, 1, "{report:#}");
    let c = check(&report, "identity");
    assert_eq!(c["status"], "fail", "{report:#}");
    assert!(
        c["detail"].as_str().unwrap().contains("every user"),
        "{report:#}"
    );
    assert_eq!(c["fix"], format!("chmod 600 {identity}"), "{report:#}");

    // Readable by the file's group, which is this process's own: as a
    // Secret volume with fsGroup is. A warning, not a failure.
    let (code, report, _) = worker(0o640);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(check(&report, "identity")["status"], "warn", "{report:#}");

    // As it should be.
    let (code, report, stderr) = worker(0o600);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(check(&report, "identity")["status"], "pass", "{report:#}");
    assert_eq!(
        check(&report, "kubernetes")["status"],
        "skip",
        "no cluster here: {report:#}"
    );

    // A file that is not an identity, and one that is not there.
    let other = env.ws.write("not-an-identity.txt", "hello\n");
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (path, words) in [
        (other.as_path(), "holds no age X25519 identity"),
        (Path::new("/nonexistent/identity.txt"), "cannot read"),
    ] {
        let (code, report, _) = doctor_with(&env, &["--role", "worker"], |c| {
            c.env("DRCTL_IDENTITY_FILE", path);
        });
        assert_eq!(code, 1, "{report:#}");
        let c = check(&report, "identity");
        assert_eq!(c["status"], "fail", "{report:#}");
        assert!(c["detail"].as_str().unwrap().contains(words), "{report:#}");
    }
}

/// A store whose clock is five minutes ahead of this machine's (the test
/// S3 server behind a proxy that shifts its answers' `Date`): the clock
/// check fails, says which way and what it does to the locks, and says to
/// sync the clock; everything else about the bucket passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_clock_minutes_off_fails_the_clock_check() {
    let bucket = harness::locked_bucket().await;
    let proxy = crate::harness::fault_proxy::FaultProxy::start(
        &services().s3_endpoint,
        crate::harness::fault_proxy::Faults::none(),
    );
    let env = VolumeEnv::s3(&proxy.endpoint, &bucket.name, 2).await;
    proxy.shift_clock(300);
    let (code, report, stderr) = doctor(&env, &["--role", "agent"]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let clock = check(&report, "clock");
    assert_eq!(clock["status"], "fail", "{report:#}");
    let detail = clock["detail"].as_str().unwrap();
    assert!(
        detail.contains("behind the store's") && detail.contains("s early"),
        "{detail}"
    );
    assert!(clock["fix"].as_str().unwrap().contains("chrony"), "{clock}");
    assert_eq!(check(&report, "bucket")["status"], "pass", "{report:#}");
    assert!(stderr.contains("1 of 7 checks failed: clock"), "{stderr}");
}

/// A kubeconfig whose server does not answer fails the permission check,
/// naming the server.
#[tokio::test]
async fn an_unreachable_api_server_fails_the_kubernetes_check() {
    let env = VolumeEnv::new().await;
    let server = format!("http://127.0.0.1:{}", closed_port());
    let kubeconfig = env.ws.write(
        "kubeconfig",
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        })
        .to_string(),
    );
    let (code, report, stderr) = doctor(
        &env,
        &[
            "--role",
            "agent",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let c = check(&report, "kubernetes");
    assert_eq!(c["status"], "fail", "{report:#}");
    assert!(
        c["detail"].as_str().unwrap().contains(&server),
        "{report:#}"
    );
    assert!(c["fix"].is_string(), "{report:#}");
}
