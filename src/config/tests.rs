use super::*;

const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

fn no_env(_: &str) -> Option<String> {
    None
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn minimal(extra: &str) -> String {
    format!(
        "repository:\n  local:\n    path: repo\ncatalog:\n  url: postgres://u@h/d\n\
         encryption:\n  recipients: [{RECIPIENT}]\n{extra}"
    )
}

#[test]
fn defaults_are_applied() {
    let c = Config::parse(&format!(
        "repository:\n  s3:\n    bucket: b-1\ncatalog: {{}}\nencryption:\n  recipients: [{RECIPIENT}]\n"
    ))
    .unwrap();
    let s3 = c.repository.s3.as_ref().unwrap();
    assert_eq!(s3.lock_mode, LockMode::Compliance);
    assert_eq!(s3.retention_days, 30);
    assert!(!s3.force_path_style);
    assert_eq!(s3.key_prefix(), "");
}

#[test]
fn key_prefix_is_normalised() {
    let mut c = Config::parse(&format!(
        "repository:\n  s3:\n    bucket: b-1\n    prefix: a/b\nencryption:\n  recipients: [{RECIPIENT}]\n"
    ))
    .unwrap();
    assert_eq!(c.repository.s3.as_ref().unwrap().key_prefix(), "a/b/");
    c.repository.s3.as_mut().unwrap().prefix = "a/b/".into();
    assert_eq!(c.repository.s3.as_ref().unwrap().key_prefix(), "a/b/");
}

#[test]
fn unknown_nested_key_names_its_path() {
    let err = Config::parse(&minimal(
        "etcd:\n  endpoints: [https://e:2379]\n  insecur: true\n",
    ))
    .unwrap_err();
    assert_eq!(err.key, "etcd.insecur");
    assert!(err.message.contains("unknown field `insecur`"), "{err}");
}

#[test]
fn relative_paths_resolve_against_the_config_directory_and_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".kube")).unwrap();
    write(home.path(), ".kube/config", "apiVersion: v1\n");
    let path = write(
        dir.path(),
        "c.yaml",
        &minimal("kubernetes:\n  kubeconfig: ~/.kube/config\n"),
    );
    let home_str = home.path().to_str().unwrap().to_string();
    let loaded = Config::load_with_env(&path, |k| (k == "HOME").then(|| home_str.clone())).unwrap();
    let local = loaded.config.repository.local.as_ref().unwrap();
    assert_eq!(local.path, dir.path().join("repo"));
    assert_eq!(
        loaded.config.kubernetes.kubeconfig.as_deref(),
        Some(home.path().join(".kube/config").as_path())
    );
}

#[test]
fn environment_overrides_secrets_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let id = write(dir.path(), "id.txt", "AGE-SECRET-KEY-1\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = write(dir.path(), "c.yaml", &minimal(""));
    let id_str = id.to_str().unwrap().to_string();
    let loaded = Config::load_with_env(&path, |k| match k {
        "DRCTL_CATALOG_URL" => Some("postgres://x:pw@other/db".into()),
        "DRCTL_IDENTITY_FILE" => Some(id_str.clone()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        loaded.config.catalog.url().unwrap().expose(),
        "postgres://x:pw@other/db"
    );
    assert_eq!(
        loaded.config.encryption.identity_file.as_deref(),
        Some(id.as_path())
    );
    assert_eq!(
        loaded.overrides,
        vec![
            ("catalog.url".to_string(), "DRCTL_CATALOG_URL".to_string()),
            (
                "encryption.identity_file".to_string(),
                "DRCTL_IDENTITY_FILE".to_string()
            ),
        ]
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn a_restore_only_config_needs_no_recipients() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "id.txt", "AGE-SECRET-KEY-1\n");
    let body = "repository:\n  local:\n    path: repo\ncatalog:\n  url: postgres://u@h/d\n\
                encryption:\n  identity_file: id.txt\n";
    let path = write(dir.path(), "c.yaml", body);
    Config::load_with_env(&path, no_env).unwrap();

    let path = write(
        dir.path(),
        "c2.yaml",
        "repository:\n  local:\n    path: repo\ncatalog:\n  url: postgres://u@h/d\nencryption: {}\n",
    );
    let err = Config::load_with_env(&path, no_env).unwrap_err();
    assert!(err.what().contains("encryption.recipients"), "{err:?}");
}

#[test]
fn etcd_client_certificate_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.crt", "x");
    let path = write(
        dir.path(),
        "c.yaml",
        &minimal("etcd:\n  endpoints: [https://e:2379]\n  cert_file: c.crt\n"),
    );
    let err = Config::load_with_env(&path, no_env).unwrap_err();
    assert!(err.what().contains("etcd.key_file"), "{err:?}");
}

#[test]
fn bucket_names_follow_s3_rules() {
    for bad in ["ab", "Upper", "-lead", "trail-", "a..b", "under_score"] {
        assert!(validate_bucket_name(bad).is_err(), "{bad}");
    }
    for good in ["abc", "drctl-backups", "a.b-c.1"] {
        assert!(validate_bucket_name(good).is_ok(), "{good}");
    }
}

#[test]
fn a_secret_in_the_wrong_place_is_not_quoted() {
    // `catalog:` must be a mapping; written as a scalar, serde would quote
    // the whole URL, password and all.
    let text = minimal("").replace(
        "catalog:\n  url: postgres://u@h/d\n",
        "catalog: postgres://u:PLANTED-PASSWORD@db/x\n",
    );
    let err = Config::parse(&text).unwrap_err().to_string();
    assert!(!err.contains("PLANTED-PASSWORD"), "{err}");
    assert!(
        err.contains("catalog") && err.contains("value not shown"),
        "{err}"
    );
}

#[test]
fn quoted_values_are_hidden_escapes_and_all() {
    assert_eq!(
        hide_values(r#"invalid type: string "a\"b", expected struct X"#),
        "invalid type: a string (value not shown), expected struct X"
    );
    assert_eq!(hide_values("no value here"), "no value here");
}

/// A drill that cannot run is refused when the file is loaded, naming the
/// entry and what is wrong, not at 04:00 in the worker.
#[test]
fn drills_are_checked_when_the_file_loads() {
    let check = |drills: &str| {
        Config::parse(&minimal(drills))
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
    };
    let ok = "drills:\n  - name: nightly\n    cron: '0 4 * * *'\n    time_zone: Europe/Berlin\n    \
              targets: [{backup: etcd-hourly}]\n    checks: [file_digests, probe]\n";
    check(ok).unwrap();
    let c = Config::parse(&minimal(ok)).unwrap();
    assert_eq!(c.drills[0].cleanup.on_failure_keep_seconds, 86_400);
    assert_eq!(c.drills[0].pick, crate::drill::Pick::Latest);

    let err =
        check(&ok.replace("checks: [file_digests, probe]", "checks: [file_digest]")).unwrap_err();
    assert!(
        err.contains("drills[0]") && err.contains("unknown check \"file_digest\""),
        "{err}"
    );
    let err = check("drills:\n  - name: nightly\n    targets: []\n").unwrap_err();
    assert!(err.contains("no targets"), "{err}");
    let err = check(&format!("{ok}{}", ok.replace("drills:\n", ""))).unwrap_err();
    assert!(err.contains("used by two drills"), "{err}");
    let err = check(&ok.replace("0 4 * * *", "0 25 * * *")).unwrap_err();
    assert!(err.contains("drills[0]"), "{err}");
}
