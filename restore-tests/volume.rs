//! Volume backup and restore through the real binary: round trips, the
//! incremental path, block images, tampering, crashes and bad input.

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{self, VolumeEnv};
use crate::tree::{assert_same, build_rich_tree, noise};

#[tokio::test]
async fn round_trip_keeps_every_byte_and_all_metadata() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    build_rich_tree(&src);
    let (out, stdout, stderr) = harness::run(&mut env.cmd(&[
        "backup",
        "volume",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "rich",
        "-o",
        "json",
    ]));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("special file skipped"),
        "the fifo is reported:\n{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["status"], "complete");
    // The copy of random.bin and the hard link are stored once.
    assert!(summary["new_bytes"].as_u64().unwrap() < summary["bytes_read"].as_u64().unwrap());
    // Holes are not read.
    assert!(
        summary["bytes_read"].as_u64().unwrap() < 20 << 20,
        "{summary}"
    );

    let id = summary["backup_id"].as_str().unwrap();
    let dst = env.ws.path("restored");
    let (out, stdout, stderr) = env.restore(id, &dst);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_same(&src, &dst);
    // Holes stay holes.
    let sparse = std::fs::metadata(dst.join("data/sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < 4 << 20,
        "sparse file restored dense: {} blocks",
        sparse.blocks()
    );
}

#[tokio::test]
async fn incremental_reads_only_what_changed_and_restores_the_new_state() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i:02}")), noise(i, 200_000)).unwrap();
    }
    let first = env.backup(&src, "inc");
    assert_eq!(first["files_read"], 20);

    let noop = env.backup(&src, "inc");
    assert_eq!(noop["files_read"], 0, "{noop}");
    assert_eq!(noop["files_unchanged"], 20);
    assert_eq!(noop["stored_bytes"], 0);
    assert_eq!(noop["parent"], first["backup_id"]);

    std::fs::write(src.join("f07"), noise(99, 300_000)).unwrap();
    std::fs::write(src.join("new"), b"new file").unwrap();
    std::fs::remove_file(src.join("f03")).unwrap();
    let changed = env.backup(&src, "inc");
    assert_eq!(changed["files_read"], 2, "{changed}");
    assert_eq!(changed["files_unchanged"], 18);

    env.restore_equals(&changed, &src);

    // The first backup still restores its own state.
    let old = env.ws.path("old");
    let (out, _, stderr) = env.restore(first["backup_id"].as_str().unwrap(), &old);
    assert!(out.status.success(), "{stderr}");
    assert!(old.join("f03").exists() && !old.join("new").exists());
}

#[tokio::test]
async fn block_image_round_trip() {
    let env = VolumeEnv::new().await;
    let img = env.ws.path("disk.img");
    let mut data = noise(5, 5 << 20);
    data.extend(vec![0u8; 3 << 20]);
    data.extend(noise(6, 123_457));
    std::fs::write(&img, &data).unwrap();
    let s = env.json(&[
        "backup",
        "volume",
        "--block",
        img.to_str().unwrap(),
        "--name",
        "disk",
    ]);
    assert_eq!(s["status"], "complete");
    let out_img = env.ws.path("restored.img");
    let (out, _, stderr) = harness::run(
        env.cmd(&[
            "restore",
            "volume",
            s["backup_id"].as_str().unwrap(),
            "--block",
        ])
        .arg(&out_img)
        .arg("--identity")
        .arg(&env.identity),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(&out_img).unwrap(), data);
}

fn packs(env: &VolumeEnv) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let root = env.repo().join("packs");
    for d in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            if !f.file_name().to_string_lossy().starts_with(".tmp") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// Starts `drctl backup volume` of `src` and returns once `packs` packs are
/// stored, asserting it is still running then (so a kill lands mid-backup).
fn backup_until_packs(
    env: &VolumeEnv,
    src: &std::path::Path,
    name: &str,
    packs_stored: usize,
) -> std::process::Child {
    let mut child = env
        .cmd(&[
            "backup",
            "volume",
            "--path",
            src.to_str().unwrap(),
            "--name",
            name,
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while packs(env).len() < packs_stored {
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before {packs_stored} pack(s)"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "backup finished before {packs_stored} pack(s)"
    );
    child
}

/// Replaces a (read-only) repository object with `bytes`, as an attacker
/// with write access to the storage could.
fn overwrite(path: &std::path::Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn tampering_is_detected_and_never_restored() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Two volumes, so two packs with valid but different contents.
    std::fs::write(src.join("a.bin"), noise(10, 3 << 20)).unwrap();
    let a = env.backup(&src, "a");
    // Data packs: each backup has a small tree pack too (its listing).
    let data = |env: &VolumeEnv| -> Vec<std::path::PathBuf> {
        packs(env)
            .into_iter()
            .filter(|p| std::fs::metadata(p).unwrap().len() > 64 << 10)
            .collect()
    };
    let pack_a = data(&env)[0].clone();
    let src_b = env.ws.path("src-b");
    std::fs::create_dir_all(&src_b).unwrap();
    std::fs::write(src_b.join("b.bin"), noise(11, 3 << 20)).unwrap();
    env.backup(&src_b, "b");
    let pack_b = data(&env).into_iter().find(|p| *p != pack_a).unwrap();
    let original = std::fs::read(&pack_a).unwrap();
    let id = a["backup_id"].as_str().unwrap();

    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x01;
    let truncated = original[..original.len() - 100].to_vec();
    let replaced = std::fs::read(&pack_b).unwrap();
    for (what, bytes) in [
        ("flipped byte", flipped),
        ("truncated", truncated),
        ("replaced by another valid pack", replaced),
    ] {
        overwrite(&pack_a, &bytes);
        let dst = env.ws.path(&format!("out-{}", what.replace(' ', "-")));
        let (out, stdout, stderr) = env.restore(id, &dst);
        assert_eq!(
            out.status.code(),
            Some(6),
            "{what}: restore must fail as an integrity error:\n{stdout}{stderr}"
        );
        assert!(
            stderr.contains("does not match its key"),
            "{what}:\n{stderr}"
        );
        let restored = std::fs::read(dst.join("a.bin")).unwrap_or_default();
        assert_ne!(restored, noise(10, 3 << 20), "{what}: data restored anyway");

        let (out, stdout, stderr) = harness::run(
            env.cmd(&["verify", "--read-data", "-o", "json"])
                .arg("--identity")
                .arg(&env.identity),
        );
        assert_eq!(
            out.status.code(),
            Some(6),
            "{what}: verify must fail:\n{stdout}{stderr}"
        );
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let damaged = &report["damaged_packs"][0];
        assert!(
            damaged["pack"]
                .as_str()
                .unwrap()
                .ends_with(&*pack_a.file_name().unwrap().to_string_lossy())
        );
        assert_eq!(
            damaged["affected"][id],
            serde_json::json!(["a.bin"]),
            "{what}: {report}"
        );
    }
    overwrite(&pack_a, &original);
    let (out, _, stderr) = env.restore(id, &env.ws.path("out-good"));
    assert!(
        out.status.success(),
        "the untouched pack restores: {stderr}"
    );
}

#[tokio::test]
async fn forged_manifest_is_rejected_and_wrong_identity_refused() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("real"), b"real data").unwrap();
    let s = env.backup(&src, "v");
    let id: uuid::Uuid = s["backup_id"].as_str().unwrap().parse().unwrap();

    // The attacker knows the public recipient and the repository id (both
    // public), but not the manifest MAC key.
    let key_path = env.repo().join(format!("manifests/{id}"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("config")).unwrap()).unwrap();
    let repo_id: uuid::Uuid = config["id"].as_str().unwrap().parse().unwrap();
    let fake_secret = drctl::repo::RepoSecret::generate(repo_id, [0; 32]).unwrap();
    let recipients =
        drctl::repo::Recipients::parse(std::slice::from_ref(&env.ws.recipient)).unwrap();
    let forged = drctl::repo::manifest::Manifest {
        format: drctl::repo::manifest::MANIFEST_FORMAT,
        backup_id: id,
        repository_id: repo_id,
        kind: "volume".into(),
        name: "v".into(),
        created_at: chrono::Utc::now(),
        parent: None,
        source: "/".into(),
        status: "complete".into(),
        problems: vec![],
        entries: vec![],
        chunks: vec![],
        etcd: None,
        objects: Vec::new(),
        object_table: None,
        tree: None,
        packs: Vec::new(),
        totals: None,
        members: Vec::new(),
    };
    overwrite(&key_path, &forged.seal(&fake_secret, &recipients));
    let (out, _, stderr) = env.restore(&id.to_string(), &env.ws.path("out"));
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("failed authentication"), "{stderr}");

    // An identity that is not a recipient.
    let other = env.ws.path("other-identity.txt");
    drctl::keys::generate(&other).unwrap();
    let (out, _, stderr) = harness::run(
        env.cmd(&["restore", "volume", &id.to_string(), "--to"])
            .arg(env.ws.path("out2"))
            .arg("--identity")
            .arg(&other),
    );
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("identity does not decrypt"), "{stderr}");

    // No identity at all.
    let (out, _, stderr) = harness::run(
        env.cmd(&["restore", "volume", &id.to_string(), "--to"])
            .arg(env.ws.path("out3")),
    );
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("--identity"), "{stderr}");
}

#[tokio::test]
async fn a_killed_backup_is_never_complete_and_the_next_one_reuses_its_packs() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        std::fs::write(src.join(format!("part{i}")), noise(100 + i, 16 << 20)).unwrap();
    }
    // Kill points: at once, after the first pack is stored, after three.
    for packs_before_kill in [0usize, 1, 3] {
        let mut child = backup_until_packs(&env, &src, "killed", packs_before_kill);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let usable: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM backups WHERE status IN ('complete', 'partial')",
        )
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
        assert_eq!(
            usable, 0,
            "killed after {packs_before_kill} pack(s): a backup is marked usable"
        );
    }
    let stored_before = packs(&env).len();
    assert!(stored_before >= 3);
    let s = env.backup(&src, "killed");
    assert_eq!(s["status"], "complete");
    let total = s["bytes_read"].as_u64().unwrap();
    let new = s["new_bytes"].as_u64().unwrap();
    assert!(new < total, "nothing reused: {s}");
    env.restore_equals(&s, &src);
}

#[tokio::test]
async fn vanished_files_make_a_partial_backup_that_still_restores() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Read in name order: the big file first, while the test removes others.
    std::fs::write(src.join("a-big"), noise(7, 96 << 20)).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("z{i:02}")), format!("small {i}")).unwrap();
    }
    crate::tree::set_mtime(&src, 1_700_000_000, 0);
    let child = backup_until_packs(&env, &src, "p", 1);
    for i in 40..50 {
        std::fs::remove_file(src.join(format!("z{i:02}"))).unwrap();
    }
    // The backup saw the directory before the removals; so will the comparison.
    crate::tree::set_mtime(&src, 1_700_000_000, 0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(8),
        "partial exit code:\n{stdout}{stderr}"
    );
    assert!(stdout.contains("\"status\": \"partial\""), "{stdout}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let problems: Vec<&str> = s["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 10, "{problems:?}");
    assert!(problems.iter().all(|p| p.starts_with("z4")));
    let status: String = sqlx::query_scalar("SELECT status FROM backups")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "partial");
    env.restore_equals(&s, &src);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_nothing_half_written() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let s = env.backup(&src, "v");
    let id = s["backup_id"].as_str().unwrap();

    // A non-empty target is refused without --force, and left alone.
    let busy = env.ws.path("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"mine").unwrap();
    let (out, _, stderr) = env.restore(id, &busy);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!busy.join("f").exists());
    let (out, _, stderr) = harness::run(
        env.cmd(&["restore", "volume", id, "--force", "--to"])
            .arg(&busy)
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(busy.join("keep")).unwrap(), b"mine");
    assert_eq!(std::fs::read(busy.join("f")).unwrap(), b"x");

    // An unwritable target.
    let file = env.ws.path("a-file");
    std::fs::write(&file, b"").unwrap();
    let (out, _, stderr) = env.restore(id, &file.join("sub"));
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("cannot create restore target"), "{stderr}");

    // A source that does not exist.
    let (out, _, stderr) = harness::run(&mut env.cmd(&[
        "backup",
        "volume",
        "--path",
        "/nonexistent/dir",
        "--name",
        "x",
    ]));
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("/nonexistent/dir"), "{stderr}");
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM backups WHERE status = 'failed'")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(failed, 1, "the failed backup is recorded as failed");

    // An unknown backup.
    let (out, _, stderr) = env.restore("0000", &env.ws.path("none"));
    assert_eq!(out.status.code(), Some(7), "{stderr}");

    // Another format version.
    let cfg_path = env.repo().join("config");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["format_version"] = 99.into();
    overwrite(&cfg_path, &serde_json::to_vec(&cfg).unwrap());
    let (out, _, stderr) =
        harness::run(&mut env.cmd(&["backup", "volume", "--path", src.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("format version 99"), "{stderr}");

    // No repository at all.
    std::fs::remove_dir_all(env.repo()).unwrap();
    let (out, _, stderr) = env.restore(id, &env.ws.path("none2"));
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("there is no repository") && stderr.contains("drctl repo init"),
        "{stderr}"
    );
}

#[tokio::test]
async fn repo_init_refuses_to_overwrite() {
    let env = VolumeEnv::new().await;
    let before = std::fs::read(env.repo().join("config")).unwrap();
    let (out, _, stderr) = harness::run(&mut env.cmd(&["repo", "init"]));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("exists already"), "{stderr}");
    assert_eq!(std::fs::read(env.repo().join("config")).unwrap(), before);
    let info = env.json(&["repo", "info"]);
    assert_eq!(info["repository"]["format_version"], 2);
}

#[tokio::test]
async fn forced_restore_never_writes_through_links_in_the_target() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/file"), b"restored").unwrap();
    std::fs::write(src.join("top"), b"top").unwrap();
    let s = env.backup(&src, "v");

    // A target whose `data` and `top` are links to a place outside it.
    let outside = env.ws.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("file"), b"precious").unwrap();
    std::fs::write(outside.join("victim"), b"precious").unwrap();
    let target = env.ws.path("target");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("data")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), target.join("top")).unwrap();

    let (out, _, stderr) = harness::run(
        env.cmd(&[
            "restore",
            "volume",
            s["backup_id"].as_str().unwrap(),
            "--force",
            "--to",
        ])
        .arg(&target)
        .arg("--identity")
        .arg(&env.identity),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(outside.join("file")).unwrap(), b"precious");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
    assert_eq!(
        std::fs::read(target.join("data/file")).unwrap(),
        b"restored"
    );
    assert_eq!(std::fs::read(target.join("top")).unwrap(), b"top");
    assert!(
        !std::fs::symlink_metadata(target.join("data"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
