//! The `drctl` binary as an operator runs it: version, help, config check.

use crate::harness::{self, Workspace, assert_no_secret};

const FILE_PASSWORD: &str = "file-pw-Xq7";
const ENV_PASSWORD: &str = "env-pw-Zr9";

#[test]
fn version_names_the_repository_format() {
    let (out, stdout, _) = harness::run(harness::drctl().args(["version", "-o", "json"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["repository_format"], drctl::REPOSITORY_FORMAT_VERSION);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    let (out, stdout, _) = harness::run(harness::drctl().arg("version"));
    assert!(out.status.success());
    assert!(
        stdout.contains(&format!(
            "repository format {}",
            drctl::REPOSITORY_FORMAT_VERSION
        )),
        "{stdout}"
    );
}

#[test]
fn help_lists_the_commands() {
    let (out, stdout, _) = harness::run(harness::drctl().arg("--help"));
    assert!(out.status.success());
    for cmd in ["version", "config", "catalog", "key"] {
        assert!(stdout.contains(cmd), "{cmd} missing from:\n{stdout}");
    }
}

#[test]
fn config_check_prints_resolved_config_without_secrets() {
    let ws = Workspace::new();
    std::fs::write(ws.path("ca.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let config = ws.write(
        "drctl.yaml",
        &format!(
            "repository:
  s3:
    endpoint: http://127.0.0.1:9000
    bucket: drctl-backups
    prefix: cluster-1/
    region: us-east-1
    force_path_style: true
    lock_mode: GOVERNANCE
    retention_days: 14
catalog:
  url: postgres://drctl:{FILE_PASSWORD}@127.0.0.1:5432/drctl
encryption:
  recipients: [{r}]
  identity_file: identity.txt
etcd:
  endpoints: [https://10.0.0.1:2379]
  ca_file: ca.crt
",
            r = ws.recipient
        ),
    );

    // From the file.
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .args(["config", "check", "--config"])
            .arg(&config),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(
        stdout.contains("postgres://drctl:****@127.0.0.1:5432/drctl"),
        "{stdout}"
    );
    assert!(stdout.contains("lock_mode: GOVERNANCE"), "{stdout}");
    // Relative paths resolve against the config file's directory.
    assert!(
        stdout.contains(&ws.path("ca.crt").display().to_string()),
        "{stdout}"
    );
    assert_no_secret(&format!("{stdout}{stderr}"), &[FILE_PASSWORD]);

    // Overridden from the environment, as a Kubernetes Secret would, in JSON.
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .args(["config", "check", "-o", "json"])
            .env("DRCTL_CONFIG", &config)
            .env(
                "DRCTL_CATALOG_URL",
                format!("postgres://ops:{ENV_PASSWORD}@db.internal/drctl?password={ENV_PASSWORD}"),
            ),
    );
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["overrides"][0]["key"], "catalog.url");
    assert_eq!(v["overrides"][0]["env"], "DRCTL_CATALOG_URL");
    assert_eq!(
        v["config"]["catalog"]["url"],
        "postgres://ops:****@db.internal/drctl?password=****"
    );
    assert_eq!(v["config"]["repository"]["s3"]["retention_days"], 14);
    assert_no_secret(&format!("{stdout}{stderr}"), &[FILE_PASSWORD, ENV_PASSWORD]);
}

#[test]
fn config_check_names_the_bad_key_and_exits_3() {
    let ws = Workspace::new();
    let good_s3 = "  s3:\n    bucket: drctl-backups\n    region: us-east-1\n";
    let catalog = format!("catalog:\n  url: postgres://drctl:{FILE_PASSWORD}@127.0.0.1/drctl\n");
    let enc = format!("encryption:\n  recipients: [{}]\n", ws.recipient);
    // (file body, what the error must name)
    let cases: Vec<(String, &[&str])> = vec![
        (
            format!("repository:\n  s3:\n    bukcet: drctl-backups\n{catalog}{enc}"),
            &["repository.s3", "unknown field `bukcet`", "expected one of"],
        ),
        (
            format!("repository:\n  s3:\n    region: us-east-1\n{catalog}{enc}"),
            &["repository.s3", "missing field `bucket`"],
        ),
        (
            format!("repository:\n{good_s3}    lock_mode: STRICT\n{catalog}{enc}"),
            &[
                "repository.s3.lock_mode",
                "STRICT",
                "COMPLIANCE",
                "GOVERNANCE",
            ],
        ),
        (
            format!("repository:\n{good_s3}    retention_days: thirty\n{catalog}{enc}"),
            &["repository.s3.retention_days", "u32"],
        ),
        (
            format!("repository:\n{good_s3}    retention_days: 0\n{catalog}{enc}"),
            &["repository.s3.retention_days", "1 to 36500"],
        ),
        (
            format!("repository:\n{good_s3}  local:\n    path: /x\n{catalog}{enc}"),
            &["`repository`", "both s3 and local"],
        ),
        (
            format!("repository:\n{good_s3}{enc}"),
            &["catalog.url", "DRCTL_CATALOG_URL"],
        ),
        (
            format!("repository:\n{good_s3}catalog:\n  url: mysql://u:{FILE_PASSWORD}@h/d\n{enc}"),
            &["catalog.url", "scheme `mysql`"],
        ),
        (
            format!("repository:\n{good_s3}{catalog}encryption:\n  recipients: [age1nope]\n"),
            &["encryption.recipients[0]", "age1nope", "drctl key generate"],
        ),
        (
            format!(
                "repository:\n{good_s3}{catalog}{enc}etcd:\n  endpoints: [http://10.0.0.1:2379]\n"
            ),
            &["etcd.endpoints[0]", "plain http", "insecure: true"],
        ),
        (
            format!(
                "repository:\n{good_s3}{catalog}{enc}etcd:\n  endpoints: [https://e:2379]\n  ca_file: missing.crt\n"
            ),
            &["etcd.ca_file", "missing.crt"],
        ),
        (
            format!("repository:\n{good_s3}{catalog}{enc}surprise: true\n"),
            &["unknown field `surprise`"],
        ),
        (format!("repository: [\n{catalog}"), &["line"]),
        (String::new(), &["empty"]),
    ];
    for (i, (body, must_name)) in cases.iter().enumerate() {
        let path = ws.write(&format!("case-{i}.yaml"), body);
        let (out, stdout, stderr) = harness::run(
            harness::drctl()
                .args(["config", "check", "--config"])
                .arg(&path),
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "case {i} should fail:\n{body}\n{stdout}{stderr}"
        );
        assert!(
            stderr.contains(&path.display().to_string()),
            "case {i}: file not named:\n{stderr}"
        );
        for needle in *must_name {
            assert!(
                stderr.contains(needle),
                "case {i}: {needle:?} missing from:\n{stderr}"
            );
        }
        assert!(stderr.contains("hint:"), "case {i}: no guidance:\n{stderr}");
        assert_no_secret(&format!("{stdout}{stderr}"), &[FILE_PASSWORD]);

        let (out, stdout, _) = harness::run(
            harness::drctl()
                .args(["config", "check", "-o", "json", "--config"])
                .arg(&path),
        );
        assert_eq!(out.status.code(), Some(3));
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["error"]["kind"], "config", "case {i}");
        assert_no_secret(&stdout, &[FILE_PASSWORD]);
    }
}

#[test]
fn missing_config_file_says_how_to_pass_one() {
    let ws = Workspace::new();
    let (out, _, stderr) = harness::run(
        harness::drctl()
            .args(["config", "check", "--config"])
            .arg(ws.path("nope.yaml")),
    );
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("nope.yaml") && stderr.contains("DRCTL_CONFIG"),
        "{stderr}"
    );
}

#[test]
fn key_generate_writes_a_private_identity_and_never_overwrites() {
    let ws = Workspace::new();
    let path = ws.path("new-identity.txt");
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .args(["key", "generate", "-o", "json"])
            .arg(&path),
    );
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let recipient = v["recipient"].as_str().unwrap();
    assert!(recipient.starts_with("age1"));
    let secret = std::fs::read_to_string(&path).unwrap();
    let secret_line = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    assert_no_secret(&format!("{stdout}{stderr}"), &[secret_line]);

    let (out, _, stderr) = harness::run(harness::drctl().args(["key", "generate"]).arg(&path));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret);
}
