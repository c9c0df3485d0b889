//! A volume backup's listing as tree objects: partial restores, `backup ls`,
//! `backup diff`, point-in-time references, what a no-op incremental costs
//! the catalog, and trees that were tampered with.

use std::path::Path;

use crate::harness::{VolumeEnv, run};
use crate::tree::{assert_same, noise};

/// `dirs` directories of `files` small text files each, plus `big.bin`.
fn many_files(root: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::write(
                dir.join(format!("f{f:03}.txt")),
                format!("directory {d}, file {f}\n").repeat(1 + f % 7),
            )
            .unwrap();
        }
    }
    std::fs::write(root.join("big.bin"), noise(7, 3 << 20)).unwrap();
}

/// Every path under `root`, relative, sorted.
fn paths(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn restore_args(env: &VolumeEnv, args: &[&str]) -> (std::process::Output, String, String) {
    run(env.cmd(args).arg("--identity").arg(&env.identity))
}

#[tokio::test]
async fn one_path_or_a_glob_restores_alone_and_a_pattern_matching_nothing_says_so() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    many_files(&src, 12, 150);
    let b = env.backup(&src, "web");
    let id = b["backup_id"].as_str().unwrap();

    let one = env.ws.path("one");
    let (out, stdout, stderr) = restore_args(
        &env,
        &[
            "restore",
            "volume",
            id,
            "--to",
            one.to_str().unwrap(),
            "--include",
            "d07/f123.txt",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(paths(&one), ["d07", "d07/f123.txt"]);
    assert_eq!(
        std::fs::read(one.join("d07/f123.txt")).unwrap(),
        std::fs::read(src.join("d07/f123.txt")).unwrap()
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["files"], 1, "{summary}");

    // A glob: `*` stays within its directory.
    let some = env.ws.path("some");
    let (out, stdout, stderr) = restore_args(
        &env,
        &[
            "restore",
            "volume",
            id,
            "--to",
            some.to_str().unwrap(),
            "--include",
            "d1*/f00?.txt",
            "--include",
            "big.bin",
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let got = paths(&some);
    assert_eq!(got.len(), 1 + 2 + 2 * 10, "{got:?}");
    assert!(got.contains(&"d11/f009.txt".to_string()), "{got:?}");
    assert_eq!(
        std::fs::read(some.join("big.bin")).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );

    // A whole directory.
    let dir = env.ws.path("dir");
    let (out, stdout, stderr) = restore_args(
        &env,
        &[
            "restore",
            "volume",
            id,
            "--to",
            dir.to_str().unwrap(),
            "--include",
            "d03",
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_same(&src.join("d03"), &dir.join("d03"));

    // Nothing matches: exit 7, the pattern named, how to look.
    let none = env.ws.path("none");
    let (out, stdout, stderr) = restore_args(
        &env,
        &[
            "restore",
            "volume",
            id,
            "--to",
            none.to_str().unwrap(),
            "--include",
            "d07/nope",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{stdout}{stderr}");
    assert!(
        stderr.contains("nothing in backup") && stderr.contains("d07/nope"),
        "{stderr}"
    );
    assert!(stderr.contains("drctl backup ls"), "{stderr}");
    assert!(
        !none.exists(),
        "a restore that matched nothing created its target"
    );

    // Outside the backup: refused before anything is read.
    let (out, _, stderr) = restore_args(
        &env,
        &[
            "restore",
            "volume",
            id,
            "--to",
            none.to_str().unwrap(),
            "--include",
            "../etc",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("not a path inside the backup"), "{stderr}");
}

#[tokio::test]
async fn backup_ls_lists_a_directory_a_file_or_everything_beneath() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    many_files(&src, 3, 20);
    std::os::unix::fs::symlink("d00/f001.txt", src.join("link")).unwrap();
    let b = env.backup(&src, "web");
    let id = b["backup_id"].as_str().unwrap();
    let ls = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["backup", "ls", id];
        all.extend(args);
        all.extend(["--identity", env.identity.to_str().unwrap()]);
        env.json(&all).as_array().unwrap().clone()
    };
    let root: Vec<String> = ls(&[])
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(root, ["big.bin", "d00", "d01", "d02", "link"]);
    let d01 = ls(&["d01"]);
    assert_eq!(d01.len(), 20);
    assert_eq!(d01[3]["path"], "d01/f003.txt");
    assert_eq!(d01[3]["type"], "file");
    assert_eq!(
        d01[3]["size"].as_u64().unwrap(),
        std::fs::metadata(src.join("d01/f003.txt")).unwrap().len()
    );
    let one = ls(&["/d02/f019.txt"]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["path"], "d02/f019.txt");
    assert_eq!(ls(&["-r"]).len(), 5 + 3 * 20);
    let link = ls(&["link"]);
    assert_eq!(link[0]["type"], "symlink");
    assert_eq!(link[0]["target"], "d00/f001.txt");

    let (out, _, stderr) = run(env
        .cmd(&["backup", "ls", id, "d09"])
        .arg("--identity")
        .arg(&env.identity));
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("d09 is not in this backup"), "{stderr}");

    // Text: one line per entry, type and mode first.
    let text = env.ok(&[
        "backup",
        "ls",
        id,
        "d00",
        "--identity",
        env.identity.to_str().unwrap(),
    ]);
    assert_eq!(text.lines().count(), 20, "{text}");
    assert!(text.lines().all(|l| l.starts_with("-0644")), "{text}");
}

#[tokio::test]
async fn backup_diff_names_exactly_what_changed() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    many_files(&src, 4, 10);
    let a = env.backup(&src, "web");
    std::fs::write(src.join("d00/new.txt"), "new\n").unwrap();
    std::fs::remove_file(src.join("d01/f004.txt")).unwrap();
    std::fs::write(src.join("d02/f002.txt"), "rewritten, longer than before\n").unwrap();
    crate::tree::chmod(&src.join("d03/f000.txt"), 0o600);
    std::fs::create_dir(src.join("added")).unwrap();
    std::fs::write(src.join("added/x"), "x").unwrap();
    std::fs::remove_dir_all(src.join("d01")).unwrap_or(());
    let b = env.backup(&src, "web");
    let d = env.json(&[
        "backup",
        "diff",
        a["backup_id"].as_str().unwrap(),
        b["backup_id"].as_str().unwrap(),
        "--identity",
        env.identity.to_str().unwrap(),
    ]);
    let got: Vec<(String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("added", "added"),
        ("d00/new.txt", "added"),
        ("d01", "removed"),
        ("d02/f002.txt", "modified"),
        ("d03/f000.txt", "metadata"),
    ]
    .iter()
    .map(|(p, c)| (p.to_string(), c.to_string()))
    .collect();
    // Directories whose entries changed have a new mtime: metadata lines
    // for them too, and for the root.
    let files: Vec<_> = got
        .iter()
        .filter(|(p, c)| !(c == "metadata" && ["d00", "d02", ""].contains(&p.as_str())))
        .cloned()
        .collect();
    assert_eq!(files, want, "{d}");
    assert_eq!(
        (d["added"].as_u64(), d["removed"].as_u64()),
        (Some(2), Some(1))
    );

    // The same backup twice: nothing.
    let same = env.json(&[
        "backup",
        "diff",
        a["backup_id"].as_str().unwrap(),
        a["backup_id"].as_str().unwrap(),
        "--identity",
        env.identity.to_str().unwrap(),
    ]);
    assert_eq!(same["changes"], serde_json::json!([]));
}

/// Bytes of every table of the catalog.
async fn catalog_bytes(env: &VolumeEnv) -> i64 {
    sqlx::query_scalar(
        "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r'",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_noop_incremental_stores_no_tree_and_no_row_per_file() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    many_files(&src, 20, 100);
    let first = env.backup(&src, "web");
    assert_eq!(first["files"], 2001);
    let before = catalog_bytes(&env).await;
    let noop = env.backup(&src, "web");
    assert_eq!(noop["files_unchanged"], 2001, "{noop}");
    assert_eq!(noop["trees_new"], 0, "{noop}");
    assert_eq!(noop["bytes_read"], 0, "{noop}");
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM backup_items")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(items, 0, "volume backups keep no row per file");
    // PostgreSQL grows in pages, so this is an upper bound: a row for the
    // backup and one per pack it uses, whatever the number of files.
    let grown = catalog_bytes(&env).await - before;
    assert!(
        grown <= 64 << 10,
        "the catalog grew {grown} bytes for a no-op backup"
    );
    env.restore_equals(&noop, &src);

    // NAME@TIME: the backup as of a moment, in UTC.
    // Whole seconds on either side: the reference is to the second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let after_first = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(src.join("d00/f000.txt"), "changed\n").unwrap();
    let third = env.backup(&src, "web");
    let at = format!("web@{}", after_first.format("%Y-%m-%dT%H:%M:%S"));
    let listed = env.json(&[
        "backup",
        "ls",
        &at,
        "d00/f000.txt",
        "--identity",
        env.identity.to_str().unwrap(),
    ]);
    assert_eq!(listed[0]["size"].as_u64().unwrap(), 20, "{listed}");
    let latest = env.json(&[
        "backup",
        "ls",
        "web@latest",
        "d00/f000.txt",
        "--identity",
        env.identity.to_str().unwrap(),
    ]);
    assert_eq!(latest[0]["size"].as_u64().unwrap(), 8, "{latest}");
    let (out, _, stderr) = run(env
        .cmd(&["backup", "ls", "web@2001-01-01", "--identity"])
        .arg(&env.identity));
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    drop(third);
}

#[tokio::test]
async fn an_incremental_over_trees_spread_over_many_packs_reads_nothing_again() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    many_files(&src, 8, 30);
    env.backup(&src, "web");
    // Each round changes one directory: the newest backup's trees end up
    // in as many tree packs as there were rounds.
    for d in 0..7 {
        std::fs::write(src.join(format!("d{d:02}/round.txt")), format!("round {d}")).unwrap();
        let b = env.backup(&src, "web");
        assert_eq!(b["files_read"], 1, "{b}");
    }
    let noop = env.backup(&src, "web");
    assert_eq!(noop["files_read"], 0, "{noop}");
    assert_eq!(noop["files_unchanged"], 8 * 30 + 7 + 1, "{noop}");
    assert_eq!(noop["trees_new"], 0, "{noop}");
    env.restore_equals(&noop, &src);
}

/// The key of the pack holding a backup's top tree, and the tree rows in it
/// (id, offset, stored length, raw length), smallest first.
async fn tree_rows(env: &VolumeEnv, backup: &str) -> (String, Vec<(Vec<u8>, i32, i32, i32)>) {
    let top: String = sqlx::query_scalar("SELECT tree FROM backups WHERE id = $1::uuid")
        .bind(backup)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let pack: String = sqlx::query_scalar("SELECT pack_key FROM chunks WHERE id = $1")
        .bind(hex::decode(&top).unwrap())
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let rows = sqlx::query_as(
        "SELECT id, pack_offset, stored_length, raw_length FROM chunks WHERE pack_key = $1 \
         ORDER BY raw_length",
    )
    .bind(&pack)
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    (pack, rows)
}

#[tokio::test]
async fn a_tree_swapped_or_damaged_is_an_integrity_error_naming_the_directory() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    for d in 0..10 {
        std::fs::create_dir_all(src.join(format!("dir{d}"))).unwrap();
        std::fs::write(src.join(format!("dir{d}/a")), format!("{d}")).unwrap();
    }
    let first = env.backup(&src, "web");
    std::fs::write(src.join("dir4/a"), "changed").unwrap();
    let second = env.backup(&src, "web");
    let id = second["backup_id"].as_str().unwrap();
    // The second backup stored three trees: the top (one node), dir4 (one
    // file) and the root (ten directories), in one tree pack.
    let (pack, rows) = tree_rows(&env, id).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let (top, dir4) = (&rows[0], &rows[1]);
    // The catalog now says dir4's tree is where the top tree is.
    sqlx::query(
        "UPDATE chunks SET pack_offset = $2, stored_length = $3, raw_length = $4 WHERE id = $1",
    )
    .bind(&dir4.0)
    .bind(top.1)
    .bind(top.2)
    .bind(top.3)
    .execute(&env.db.pool)
    .await
    .unwrap();
    let to = env.ws.path("swapped");
    let (out, stdout, stderr) = env.restore(id, &to);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stderr.contains("the listing of directory dir4") && stderr.contains("damaged"),
        "{stderr}"
    );
    let verify = run(env
        .cmd(&["verify", id, "-o", "json"])
        .arg("--identity")
        .arg(&env.identity));
    assert!(
        verify.1.contains("the listing of directory dir4"),
        "{}{}",
        verify.1,
        verify.2
    );
    // The first backup's trees are elsewhere: it restores.
    let old = env.ws.path("old");
    let (o, s, e) = env.restore(first["backup_id"].as_str().unwrap(), &old);
    assert!(o.status.success(), "{s}{e}");
    assert_eq!(std::fs::read_to_string(old.join("dir4/a")).unwrap(), "4");

    // A tree pack flipped on disk: its hash no longer matches its key.
    let file = env.repo().join(&pack);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 1;
    let _ = std::fs::remove_file(&file);
    std::fs::write(&file, &bytes).unwrap();
    let (out, stdout, stderr) = env.restore(id, &env.ws.path("flipped"));
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stderr.contains("the listing of") && stderr.contains(&pack),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_hard_link_whose_first_name_is_not_included_is_left_out_not_an_error() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha\n").unwrap();
    std::fs::hard_link(src.join("a.txt"), src.join("d/hard.txt")).unwrap();
    std::fs::write(src.join("d/own.txt"), "own\n").unwrap();
    let b = env.backup(&src, "web");
    let id = b["backup_id"].as_str().unwrap();
    let to = env.ws.path("d-only");
    let (out, stdout, stderr) = restore_args(
        &env,
        &[
            "restore",
            "volume",
            id,
            "--to",
            to.to_str().unwrap(),
            "--include",
            "d",
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(paths(&to), ["d", "d/own.txt"]);
    assert!(stderr.contains("hard link left out"), "{stderr}");
    // With its first name included, the link is restored as a link.
    let both = env.ws.path("both");
    let (out, stdout, stderr) = restore_args(
        &env,
        &[
            "restore",
            "volume",
            id,
            "--to",
            both.to_str().unwrap(),
            "--include",
            "d",
            "--include",
            "a.txt",
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(both.join("d/hard.txt")).unwrap().nlink(),
        2
    );
}
