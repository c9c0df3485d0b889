//! Backups made before volume listings moved into tree objects (manifest
//! format 1, a catalog row per file), brought over to this drctl.
//!
//! `fixtures/format1.tar.gz` is a repository written by drctl at 9b7f733: two
//! backups of a small tree (a hard link, a symlink, an empty directory, an
//! incompressible file), the identity and repository secret of that test
//! repository, and copies of the tree as each backup saw it.

use std::path::Path;
use std::process::Command;

use crate::harness::{database, drctl, run};
use crate::tree::assert_same;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/restore-tests/fixtures/format1.tar.gz"
);

fn ok(config: &Path, args: &[&str]) -> String {
    let (out, stdout, stderr) = run(drctl().arg("--config").arg(config).args(args));
    assert!(
        out.status.success(),
        "drctl {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[tokio::test]
async fn format_1_backups_restore_and_the_next_backup_builds_on_them() {
    let db = database().await;
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("xzf")
        .arg(FIXTURE)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(status.success());
    let f = dir.path().join("format1");
    let yaml = std::fs::read_to_string(f.join("drctl.yaml"))
        .unwrap()
        .replace("REPO", &f.join("repo").display().to_string())
        .replace("CATALOG", &db.url)
        .replace("SECRET", &f.join("repo-secret.json").display().to_string());
    let config = f.join("run.yaml");
    std::fs::write(&config, yaml).unwrap();
    let identity = f.join("identity.txt");
    let id_of = |name: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.join(name)).unwrap()).unwrap();
        v["backup_id"].as_str().unwrap().to_string()
    };
    let (first, second) = (id_of("first.json"), id_of("second.json"));

    // From the bucket alone, with no catalog at all.
    for (id, source) in [(&first, "source-1"), (&second, "source-2")] {
        let to = dir.path().join(format!("restored-{source}"));
        let (out, stdout, stderr) = run(drctl()
            .arg("--config")
            .arg(&config)
            .arg("--identity")
            .arg(&identity)
            .args(["restore", "volume", id, "--to"])
            .arg(&to));
        assert!(out.status.success(), "restore of {id}:\n{stdout}{stderr}");
        assert_same(&f.join(source), &to);
    }

    // The upgraded catalog (rebuilt here from the bucket) knows them; the
    // next backup of the volume is incremental on the old one, reads every
    // file once (an old backup has no trees to compare with) and stores
    // nothing it already holds.
    ok(&config, &["catalog", "migrate"]);
    ok(
        &config,
        &[
            "--identity",
            identity.to_str().unwrap(),
            "catalog",
            "rebuild",
        ],
    );
    let src = dir.path().join("src");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(f.join("source-2"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(cp.success());
    let backup = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(
            &config,
            &[
                "backup",
                "volume",
                "--path",
                path.to_str().unwrap(),
                "--name",
                "legacy",
                "-o",
                "json",
            ],
        ))
        .unwrap()
    };
    let third = backup(&src);
    assert_eq!(third["parent"].as_str(), Some(second.as_str()), "{third}");
    assert_eq!(third["files_read"], 4, "{third}");
    assert_eq!(
        third["new_bytes"], 0,
        "every chunk was stored by the old backups: {third}"
    );
    let fourth = backup(&src);
    assert_eq!(fourth["files_read"], 0, "{fourth}");
    assert_eq!(fourth["files_unchanged"], 4, "{fourth}");
    let to = dir.path().join("restored-new");
    let (out, stdout, stderr) = run(drctl()
        .arg("--config")
        .arg(&config)
        .arg("--identity")
        .arg(&identity)
        .args([
            "restore",
            "volume",
            fourth["backup_id"].as_str().unwrap(),
            "--to",
        ])
        .arg(&to));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_same(&src, &to);

    // Listing an old backup says why it cannot, and what to do.
    let (out, _, stderr) = run(drctl()
        .arg("--config")
        .arg(&config)
        .arg("--identity")
        .arg(&identity)
        .args(["backup", "ls", &first]));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("before drctl kept listings in trees"),
        "{stderr}"
    );
}
