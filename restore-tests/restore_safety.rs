//! What a careless invocation or a hostile backup must not be able to do to
//! the machine or the cluster it runs against.

use crate::harness::{self, VolumeEnv};

/// A writer never reads the age identity, even when the configuration (or
/// DRCTL_IDENTITY_FILE) names one, so a broken or hostile identity file
/// cannot stop backups, and `--identity` on a backup is refused.
#[tokio::test]
async fn writers_never_load_the_identity() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let bad = env.ws.path("not-an-identity.txt");
    std::fs::write(&bad, b"this is not an age identity\n").unwrap();
    let (out, stdout, stderr) = harness::run(
        env.cmd(&[
            "backup",
            "volume",
            "--path",
            src.to_str().unwrap(),
            "-o",
            "json",
        ])
        .env("DRCTL_IDENTITY_FILE", &bad),
    );
    assert!(out.status.success(), "{stdout}{stderr}");

    let (out, stdout, stderr) = harness::run(
        env.cmd(&["backup", "volume", "--path", src.to_str().unwrap()])
            .arg("--identity")
            .arg(&env.identity),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stderr.contains("backups never load the identity"),
        "{stderr}"
    );
}

/// A backup id is hexadecimal digits and dashes: `%` and `_` are refused
/// before any query, instead of matching every backup in a LIKE.
#[tokio::test]
async fn backup_ids_are_validated_before_any_query() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let id = env.backup(&src, "v")["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (args, what) in [
        (["backup", "describe", "%"], "describe"),
        (["backup", "delete", "_"], "delete"),
        (["backup", "delete", "%"], "delete"),
    ] {
        let (out, stdout, stderr) = harness::run(&mut env.cmd(&args));
        assert_eq!(out.status.code(), Some(3), "{what}: {stdout}{stderr}");
        assert!(stderr.contains("is not a backup reference"), "{stderr}");
    }
    let listed = env.json(&["backup", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == id.as_str()),
        "the backup survived: {listed}"
    );
}

/// A manifest of `entries`, sealed with the repository's real secret (the
/// attacker is a compromised writer, who holds it) and stored as a new
/// backup of the local repository; returns its id.
fn plant(env: &VolumeEnv, entries: Vec<drctl::repo::manifest::Entry>) -> String {
    plant_with(env, entries, vec![])
}

fn plant_with(
    env: &VolumeEnv,
    entries: Vec<drctl::repo::manifest::Entry>,
    chunks: Vec<drctl::repo::manifest::ChunkLocation>,
) -> String {
    use drctl::repo::manifest::Manifest;
    let secret = drctl::repo::RepoSecret::from_json(
        &std::fs::read(env.ws.path("repo-secret.json")).unwrap(),
    )
    .unwrap();
    let recipients =
        drctl::repo::Recipients::parse(std::slice::from_ref(&env.ws.recipient)).unwrap();
    let id = uuid::Uuid::now_v7();
    let m = Manifest {
        format: drctl::repo::manifest::MANIFEST_FORMAT,
        backup_id: id,
        repository_id: secret.repository_id,
        kind: "volume".into(),
        name: "hostile".into(),
        created_at: chrono::Utc::now(),
        parent: None,
        source: "/".into(),
        status: "complete".into(),
        problems: vec![],
        entries,
        chunks,
        etcd: None,
        objects: Vec::new(),
        object_table: None,
        tree: None,
        packs: Vec::new(),
        totals: None,
        members: Vec::new(),
    };
    std::fs::create_dir_all(env.repo().join("manifests")).unwrap();
    std::fs::write(
        env.repo().join(format!("manifests/{id}")),
        m.seal(&secret, &recipients),
    )
    .unwrap();
    id.to_string()
}

fn entry(path: &str, kind: &str, mode: u32, target: Option<&str>) -> drctl::repo::manifest::Entry {
    serde_json::from_value(serde_json::json!({
        "path": path, "kind": kind, "mode": mode, "uid": 0, "gid": 0,
        "mtime_ns": 1_700_000_000_000_000_000i64, "size": 0, "target": target,
    }))
    .unwrap()
}

/// Everything under `dir`: path, mode and content, for "nothing changed".
fn snapshot(dir: &std::path::Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let content = if m.is_file() {
            std::fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            m.permissions().mode(),
            content,
        ));
        if m.is_dir() {
            out.extend(snapshot(&e.path()));
        }
    }
    out.sort();
    out
}

/// Hostile manifests, sealed with the real secret, try to reach outside an
/// empty restore target: through a symlink they create first, through a
/// hard link to one, and by listing a setuid file and a symlink under the
/// same name so that setting the file's mode follows the link. Each is
/// refused before anything is written, and nothing outside changes (run as
/// root, where it would matter most).
#[tokio::test]
async fn a_hostile_volume_backup_cannot_write_outside_the_target() {
    let env = VolumeEnv::new().await;
    let outside = env.ws.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("interpreter"), b"#!/bin/sh\n").unwrap();
    let o = outside.to_str().unwrap().to_string();
    let before = snapshot(&outside);
    let attacks = [
        (
            "an entry below a symlink",
            vec![
                entry("", "dir", 0o40755, None),
                entry("a", "symlink", 0o120777, Some(&o)),
                entry("a/planted", "symlink", 0o120777, Some("/anything")),
            ],
        ),
        (
            "a hard link below a symlink",
            vec![
                entry("", "dir", 0o40755, None),
                entry("f", "file", 0o100644, None),
                entry("a", "symlink", 0o120777, Some(&o)),
                entry("a/y", "hardlink", 0o100644, Some("f")),
            ],
        ),
        (
            "a hard link to a symlink",
            vec![
                entry("", "dir", 0o40755, None),
                entry("a", "symlink", 0o120777, Some(&format!("{o}/interpreter"))),
                entry("y", "hardlink", 0o100644, Some("a")),
            ],
        ),
        (
            "a setuid file and a symlink of the same name",
            vec![
                entry("", "dir", 0o40755, None),
                entry("l", "file", 0o104755, None),
                entry("l", "symlink", 0o120777, Some(&format!("{o}/interpreter"))),
            ],
        ),
    ];
    for (what, entries) in attacks {
        let id = plant(&env, entries);
        let target = env.ws.path(&format!("target-{}", id));
        let (out, stdout, stderr) = env.restore(&id, &target);
        assert_eq!(out.status.code(), Some(6), "{what}: {stdout}{stderr}");
        assert_eq!(snapshot(&outside), before, "{what}: outside changed");
        assert!(
            !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
            "{what}: something was restored"
        );
    }
}

/// With --force, a target that already holds a link out of it (planted
/// by whoever could write there) is not followed: the restore replaces the
/// link with the directory the backup holds.
#[tokio::test]
async fn a_link_already_in_a_forced_target_is_replaced_not_followed() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"restored").unwrap();
    let id = env.backup(&src, "v")["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let outside = env.ws.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = env.ws.path("target");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("d")).unwrap();
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["restore", "volume", &id, "--force", "--to"])
            .arg(&target)
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    crate::tree::assert_same(&src, &target);
}

/// `--no-setuid` restores a setuid file without the bit, and says so; a
/// plain restore keeps it.
#[tokio::test]
async fn no_setuid_leaves_out_setuid_bits_and_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let id = env.backup(&src, "v")["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let plain = env.ws.path("plain");
    let (out, _, stderr) = env.restore(&id, &plain);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(mode(&plain.join("tool")), 0o4755);
    let safe = env.ws.path("safe");
    let (out, stdout, stderr) = harness::run(
        env.cmd(&[
            "restore",
            "volume",
            &id,
            "--no-setuid",
            "-o",
            "json",
            "--to",
        ])
        .arg(&safe)
        .arg("--identity")
        .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(mode(&safe.join("tool")), 0o755);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        summary["dropped"],
        serde_json::json!(["tool: setuid bit"]),
        "{summary}"
    );
}

/// `verify --read-data` reads every chunk where the manifests say it is, so
/// a manifest that places a chunk where its pack holds none is reported,
/// even though the pack agrees with its own index.
#[tokio::test]
async fn verify_reads_chunks_where_the_manifests_place_them() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::tree::noise(3, 100_000)).unwrap();
    env.backup(&src, "v");
    let pack = std::fs::read_dir(env.repo().join("packs"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .next()
        .unwrap();
    let pack = pack
        .strip_prefix(env.repo())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut file = entry("f", "file", 0o100644, None);
    file.size = 10;
    file.extents = vec![drctl::repo::manifest::Extent {
        offset: 0,
        length: 10,
        chunks: vec![0],
    }];
    let chunk: drctl::repo::manifest::ChunkLocation = serde_json::from_value(serde_json::json!({
        "id": "ab".repeat(32), "pack": pack, "offset": 0, "length": 10, "raw_length": 10,
    }))
    .unwrap();
    let id = plant_with(
        &env,
        vec![entry("", "dir", 0o40755, None), file],
        vec![chunk],
    );
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["verify", &id, "--read-data", "-o", "json"])
            .arg("--identity")
            .arg(&env.identity),
    );
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(stdout.contains("does not hold chunk"), "{stdout}");
}

/// A restore that stops midway leaves a marker in its target, so its files
/// (created at full size before their data) are never taken for a good
/// restore; running it again needs --force, which starts clean, and a
/// finished restore leaves no marker.
#[tokio::test]
async fn an_interrupted_restore_is_marked_and_restarts_clean() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), crate::tree::noise(5, 1 << 20)).unwrap();
    let id = env.backup(&src, "v")["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The data packs: the listing (a tree pack, small) stays readable, so
    // the restore starts and fails midway.
    let packs: Vec<_> = std::fs::read_dir(env.repo().join("packs"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 64 << 10)
        .collect();
    assert!(!packs.is_empty());
    let moved: Vec<_> = packs
        .iter()
        .map(|p| {
            let to = p.with_extension("away");
            std::fs::rename(p, &to).unwrap();
            (p.clone(), to)
        })
        .collect();
    let target = env.ws.path("target");
    let (out, _, stderr) = env.restore(&id, &target);
    assert!(!out.status.success(), "{stderr}");
    let marker = std::fs::read_to_string(target.join(".drctl-restore-incomplete")).unwrap();
    assert!(marker.contains(&id), "{marker}");
    std::fs::write(target.join("stray"), b"left by someone").unwrap();

    let (out, _, stderr) = env.restore(&id, &target);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("did not finish"), "{stderr}");

    for (p, to) in moved {
        std::fs::rename(to, p).unwrap();
    }
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["restore", "volume", &id, "--force", "--to"])
            .arg(&target)
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    crate::tree::assert_same(&src, &target);
}

/// Secrets planted everywhere drctl could leak them from (the catalog
/// URL's password, the S3 secret key, the repository secret's keys, the age
/// identity) appear in no output: not in config errors, not in logs at
/// trace level, not in any `-o json` answer, over a backup, a restore, the
/// verifications, gc and the informational commands.
#[tokio::test]
async fn no_secret_reaches_any_output() {
    const PG_PASSWORD: &str = "PLANTED-pg-password-7f3a";
    const AWS_SECRET: &str = "PLANTED-aws-secret-9c1d";
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&crate::harness::services().s3_endpoint, &bucket.name, 1).await;
    let yaml = std::fs::read_to_string(&env.config).unwrap();
    let url = url::Url::parse(&env.db.url).unwrap();
    let mut with_password = url.clone();
    with_password.set_password(Some(PG_PASSWORD)).unwrap();
    std::fs::write(
        &env.config,
        yaml.replace(url.as_str(), with_password.as_str()),
    )
    .unwrap();
    let secret: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.ws.path("repo-secret.json")).unwrap()).unwrap();
    let identity = std::fs::read_to_string(&env.identity).unwrap();
    let age_key = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let planted = [
        PG_PASSWORD.to_string(),
        AWS_SECRET.to_string(),
        secret["chunk_id_key"].as_str().unwrap().to_string(),
        secret["manifest_mac_key"].as_str().unwrap().to_string(),
        age_key.clone(),
        age_key.to_lowercase(),
    ];
    let planted: Vec<&str> = planted.iter().map(String::as_str).collect();

    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let traced = |args: &[&str], identity: bool| {
        let mut cmd = env.cmd(args);
        cmd.args(["-o", "json"])
            .env("DRCTL_LOG", "trace")
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET);
        if identity {
            cmd.arg("--identity").arg(&env.identity);
        }
        let (out, stdout, stderr) = harness::run(&mut cmd);
        harness::assert_no_secret(&format!("{stdout}\n{stderr}"), &planted);
        (out, stdout, stderr)
    };
    let (out, stdout, stderr) = traced(
        &["backup", "volume", "--path", src.to_str().unwrap()],
        false,
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.lines().count() > 20,
        "trace logs were written: {stderr}"
    );
    let id = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let to = env.ws.path("restored");
    for (args, identity) in [
        (vec!["config", "check"], false),
        (vec!["repo", "info"], false),
        (vec!["backup", "list"], false),
        (vec!["backup", "describe", &id], false),
        (
            vec!["restore", "volume", &id, "--to", to.to_str().unwrap()],
            true,
        ),
        (vec!["verify", "--read-data"], true),
        (vec!["verify", "--storage"], false),
        (vec!["gc"], false),
        (vec!["catalog", "status"], false),
    ] {
        let (out, stdout, stderr) = traced(&args, identity);
        assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
    }

    // A configuration error that would quote the URL.
    let broken = env.ws.write(
        "broken.yaml",
        &std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("catalog:\n  url: ", "catalog: "),
    );
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .arg("--config")
            .arg(&broken)
            .args(["-o", "json", "config", "check"])
            .env("DRCTL_LOG", "trace"),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    harness::assert_no_secret(&format!("{stdout}\n{stderr}"), &planted);
}

/// gc holds back what a running backup may need for as long as that backup
/// is alive (its heartbeat is fresh), not for a fixed day after its start:
/// a backup running for three days still protects what it may dedup
/// against; once its heartbeat stops, collection goes on.
#[tokio::test]
async fn gc_protects_a_long_running_backup_while_its_heartbeat_lives() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::tree::noise(9, 100_000)).unwrap();
    let old = env.backup(&src, "old")["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["backup", "delete", &old]);
    // A backup that started three days ago and is still alive.
    let repo: uuid::Uuid = sqlx::query_scalar("SELECT id FROM repositories LIMIT 1")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let long = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO backups (id, repository_id, kind, name, started_at, heartbeat_at) \
         VALUES ($1, $2, 'volume', 'long', now() - interval '3 days', now())",
    )
    .bind(long)
    .bind(repo)
    .execute(&env.db.pool)
    .await
    .unwrap();
    let packs = || {
        std::fs::read_dir(env.repo().join("packs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = packs();
    assert!(before > 0);
    // No grace period shorter than the longest plausible upload.
    for short in ["0s", "1s", "14m"] {
        let (out, stdout, stderr) = harness::run(&mut env.cmd(&["gc", "--grace", short]));
        assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
        assert!(stderr.contains("minimum grace period, 15m"), "{stderr}");
    }
    env.json(&["gc"]);
    env.age_gc("2 hours").await;
    let held = env.json(&["gc"]);
    assert!(held["waiting"].as_u64().unwrap() > 0, "{held}");
    assert!(held["deleted"].as_array().unwrap().is_empty(), "{held}");
    assert_eq!(packs(), before);

    // Its process died: no heartbeat for ten minutes.
    sqlx::query("UPDATE backups SET heartbeat_at = now() - interval '10 minutes' WHERE id = $1")
        .bind(long)
        .execute(&env.db.pool)
        .await
        .unwrap();
    let swept = env.json(&["gc"]);
    assert!(!swept["deleted"].as_array().unwrap().is_empty(), "{swept}");
}
