//! `drctl catalog rebuild`: the catalog database is lost, the bucket is not.
//! With the age identity, the catalog comes back from the bucket alone: the
//! same backups, restorable, and the next backup incremental against the
//! last one; forged manifests are reported and left out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::harness::{self, VolumeEnv, services};
use crate::tree::{build_rich_tree, snapshot};

/// The catalog database is lost: every table dropped, the schema created
/// again empty, as after restoring nothing into a new PostgreSQL.
async fn lose_catalog(env: &VolumeEnv) {
    for sql in ["DROP SCHEMA public CASCADE", "CREATE SCHEMA public"] {
        sqlx::query(sql).execute(&env.db.pool).await.unwrap();
    }
    env.ok(&["catalog", "migrate"]);
    assert_eq!(env.json(&["backup", "list"]), serde_json::json!([]));
}

/// `drctl --identity ID catalog rebuild -o json`, expected to succeed.
fn rebuild(env: &VolumeEnv) -> Value {
    env.json(&[
        "--identity",
        env.identity.to_str().unwrap(),
        "catalog",
        "rebuild",
    ])
}

/// Row counts of every table a rebuild writes.
async fn counts(env: &VolumeEnv) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for table in [
        "repositories",
        "backups",
        "backup_items",
        "packs",
        "chunks",
        "objects",
        "backup_packs",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&env.db.pool)
                .await
                .unwrap();
        out.insert(table, n);
    }
    out
}

/// An item row: backup, item, type, size, attrs.
type Item = (uuid::Uuid, String, String, i64, Value);
type ItemRows = Vec<Item>;

async fn items(env: &VolumeEnv) -> ItemRows {
    sqlx::query_as("SELECT backup_id, item, item_type, size, attrs FROM backup_items ORDER BY 1, 2")
        .fetch_all(&env.db.pool)
        .await
        .unwrap()
}

/// The packs the backups reference: (backup, pack key).
/// The data packs (not tree packs) of `packs`: those over 64 KiB here.
fn data_packs(env: &VolumeEnv, packs: &[(uuid::Uuid, String)]) -> Vec<(uuid::Uuid, String)> {
    packs
        .iter()
        .filter(|p| std::fs::metadata(env.repo().join(&p.1)).unwrap().len() > 64 << 10)
        .cloned()
        .collect()
}

async fn backup_packs(env: &VolumeEnv) -> Vec<(uuid::Uuid, String)> {
    sqlx::query_as("SELECT backup_id, pack_key FROM backup_packs ORDER BY 1, 2")
        .fetch_all(&env.db.pool)
        .await
        .unwrap()
}

fn files_under(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += files_under(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// Restores `id` into a new directory and returns the directory.
fn restore(env: &VolumeEnv, id: &Value) -> std::path::PathBuf {
    let id = id.as_str().unwrap();
    let dst = env.ws.path(&format!("restored-{id}"));
    let (out, stdout, stderr) = env.restore(id, &dst);
    assert!(out.status.success(), "restore {id}:\n{stdout}{stderr}");
    dst
}

/// The catalog rows of two backups of a rich tree (the second
/// incremental), the trees as they were at each backup, and the rows.
struct TwoBackups {
    env: VolumeEnv,
    src: std::path::PathBuf,
    second: Value,
    states: [BTreeMap<Vec<u8>, crate::tree::Node>; 2],
    listed: Value,
    items: ItemRows,
    packs: Vec<(uuid::Uuid, String)>,
    counts: BTreeMap<&'static str, i64>,
}

async fn two_backups_then_lose_the_catalog() -> TwoBackups {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    build_rich_tree(&src);
    let first = env.backup(&src, "rich");
    let state1 = snapshot(&src);
    std::fs::write(src.join("etc/new.conf"), b"added = yes\n").unwrap();
    std::fs::write(src.join("data/deep/er/still/leaf"), b"leaf, changed").unwrap();
    let second = env.backup(&src, "rich");
    assert_eq!(second["parent"], first["backup_id"], "{second}");
    assert!(second["files_unchanged"].as_u64().unwrap() > 0, "{second}");
    let state2 = snapshot(&src);
    let listed = env.json(&["backup", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let (items, packs, counts) = (
        items(&env).await,
        backup_packs(&env).await,
        counts(&env).await,
    );
    lose_catalog(&env).await;
    TwoBackups {
        env,
        src,
        second,
        states: [state1, state2],
        listed,
        items,
        packs,
        counts,
    }
}

/// An item's attributes without the file's change time and inode.
fn without_change_stamp(mut row: Item) -> Item {
    if let Some(o) = row.4.as_object_mut() {
        o.remove("ctime_ns");
        o.remove("ino");
    }
    row
}

/// Two backups; the catalog is lost; the rebuild brings back the same
/// backups (ids, names, statuses, parents, times), the same items and chunk
/// lists, the same packs per backup; each restores to its own state, found
/// by its rebuilt id; a second rebuild changes nothing; and the next backup
/// is a child of the last rebuilt one that stores only what changed.
#[tokio::test]
async fn rebuilt_catalog_has_the_same_backups() {
    let t = two_backups_then_lose_the_catalog().await;
    let env = &t.env;
    let report = rebuild(env);
    assert_eq!(report["backups_rebuilt"], 2, "{report}");
    assert_eq!(report["backups_present"], 0, "{report}");
    assert_eq!(
        report["rejected_manifests"],
        serde_json::json!([]),
        "{report}"
    );
    assert_eq!(report["damaged_packs"], serde_json::json!([]), "{report}");
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    let packs_stored = files_under(&env.repo().join("packs"));
    assert_eq!(report["packs"], packs_stored, "{report}");
    assert_eq!(
        report["objects"], 4,
        "config, keys, two manifests: {report}"
    );
    assert!(report["chunks"].as_u64().unwrap() > 0, "{report}");

    // The same backups, in the same order.
    let rebuilt = env.json(&["backup", "list"]);
    let (was, now) = (t.listed.as_array().unwrap(), rebuilt.as_array().unwrap());
    assert_eq!(was.len(), now.len(), "{rebuilt}");
    for (a, b) in was.iter().zip(now) {
        for field in [
            "id",
            "repository_id",
            "kind",
            "name",
            "status",
            "parent_id",
            "manifest_key",
            "error",
        ] {
            assert_eq!(a[field], b[field], "{field}: {a} vs {b}");
        }
        let drift = (time(&a["started_at"]) - time(&b["started_at"])).abs();
        assert!(drift < chrono::Duration::seconds(2), "{a} vs {b}");
        assert!(b["finished_at"].is_string(), "{b}");
        assert_eq!(a["stats"]["bytes"], b["stats"]["bytes"], "{b}");
        assert_eq!(a["stats"]["files"], b["stats"]["files"], "{b}");
    }
    // The same items, types, sizes, mtimes and chunk lists, and the same
    // packs per backup.
    let items_after = items(env).await;
    assert_eq!(t.items.len(), items_after.len());
    for (a, b) in t.items.iter().zip(&items_after) {
        assert_eq!(
            without_change_stamp(a.clone()),
            without_change_stamp(b.clone()),
            "item differs after the rebuild"
        );
    }
    assert_eq!(t.packs, backup_packs(env).await);
    // The same rows, and the config and the keys recorded as objects too (a
    // backup to a local directory records only its manifest; there is no
    // lock to keep track of).
    let mut expected = t.counts.clone();
    *expected.get_mut("objects").unwrap() += 2;
    assert_eq!(expected, counts(env).await);
    let objects: Vec<String> = sqlx::query_scalar("SELECT key FROM objects ORDER BY key")
        .fetch_all(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(objects[..2], ["config", "keys/repository"], "{objects:?}");

    // Each backup restores to its own state, found by the rebuilt ids.
    assert_eq!(snapshot(&restore(env, &now[0]["id"])), t.states[0]);
    assert_eq!(snapshot(&restore(env, &now[1]["id"])), t.states[1]);

    // Rebuilding again duplicates and changes nothing.
    let again = rebuild(env);
    assert_eq!(again["backups_rebuilt"], 0, "{again}");
    assert_eq!(again["backups_present"], 2, "{again}");
    assert_eq!(again["chunks_added"], 0, "{again}");
    assert_eq!(expected, counts(env).await);
    assert_eq!(items_after, items(env).await);

    // The next backup follows the last rebuilt one, and the rebuilt chunk
    // index deduplicates: only the changed file's bytes are new.
    std::fs::write(t.src.join("etc/new.conf"), b"added = again\n").unwrap();
    let third = env.backup(&t.src, "rich");
    assert_eq!(third["parent"], t.second["backup_id"], "{third}");
    assert!(third["new_bytes"].as_u64().unwrap() < 1024, "{third}");
    env.restore_equals(&third, &t.src);
}

/// After a rebuild, the items carry the very stamps the backups recorded
/// (size, mtime, ctime, inode, chunks), so the next backup of the volume is
/// incremental against the last rebuilt one: unchanged files are not read.
#[tokio::test]
async fn after_a_rebuild_unchanged_files_are_not_read_again() {
    let t = two_backups_then_lose_the_catalog().await;
    let env = &t.env;
    rebuild(env);
    let items_after = items(env).await;
    assert_eq!(t.items.len(), items_after.len());
    for (a, b) in t.items.iter().zip(&items_after) {
        assert_eq!(a, b, "item differs after the rebuild");
    }

    std::fs::write(t.src.join("etc/new.conf"), b"added = again\n").unwrap();
    let third = env.backup(&t.src, "rich");
    assert_eq!(third["parent"], t.second["backup_id"], "{third}");
    assert_eq!(third["files_read"], 1, "{third}");
    assert!(third["files_unchanged"].as_u64().unwrap() > 5, "{third}");
    assert!(third["bytes_read"].as_u64().unwrap() < 1024, "{third}");
    env.restore_equals(&third, &t.src);
}

/// A repository in S3 with Object Lock: the rebuilt rows carry what the
/// bucket reports (version ids, lock modes and retain-until dates of packs,
/// manifest, config and keys, the backup's retain-until from its manifest's
/// lock), the storage scrub finds the rebuilt catalog consistent with the
/// bucket, and the backup restores.
#[tokio::test]
async fn s3_rebuild_records_versions_and_locks() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 2).await;
    let src = env.ws.path("src");
    build_rich_tree(&src);
    let summary = env.backup(&src, "rich");
    assert_eq!(summary["status"], "complete", "{summary}");
    let id = summary["backup_id"].as_str().unwrap().to_string();
    let retain_before: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT retain_until FROM backups WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    let retain_before = retain_before.expect("an S3 backup has a retain-until");

    lose_catalog(&env).await;
    let report = rebuild(&env);
    assert_eq!(report["backups_rebuilt"], 1, "{report}");
    assert_eq!(report["objects"], 3, "{report}");

    let listed = bucket
        .client
        .list_objects_v2()
        .bucket(&bucket.name)
        .prefix("packs/")
        .send()
        .await
        .unwrap();
    let in_bucket: Vec<String> = listed
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_string())
        .collect();
    assert!(!in_bucket.is_empty());
    type Row = (
        String,
        i64,
        Option<String>,
        Option<String>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT key, size, version_id, lock_mode, retain_until FROM packs ORDER BY key",
    )
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        in_bucket
    );
    assert_eq!(report["packs"], rows.len(), "{report}");
    let heads = |key: String| {
        let client = bucket.client.clone();
        let name = bucket.name.clone();
        async move {
            client
                .head_object()
                .bucket(name)
                .key(key)
                .send()
                .await
                .unwrap()
        }
    };
    let close = |a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= chrono::Duration::seconds(1),
        _ => false,
    };
    let to_chrono = |t: Option<&aws_sdk_s3::primitives::DateTime>| {
        t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
    };
    for (key, size, version, mode, retain) in &rows {
        let head = heads(key.clone()).await;
        assert_eq!(head.version_id(), version.as_deref(), "{key}");
        assert!(version.is_some(), "{key}");
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            mode.as_deref(),
            "{key}"
        );
        assert_eq!(mode.as_deref(), Some("COMPLIANCE"), "{key}");
        assert!(
            close(*retain, to_chrono(head.object_lock_retain_until_date())),
            "{key}: {retain:?} vs {:?}",
            head.object_lock_retain_until_date()
        );
        assert_eq!(Some(*size), head.content_length(), "{key}");
    }
    // The manifest, the config and the keys, each with its version and lock.
    type ObjectRow = (String, Option<String>, Option<String>);
    let objects: Vec<ObjectRow> =
        sqlx::query_as("SELECT key, version_id, lock_mode FROM objects ORDER BY key")
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    let manifest = format!("manifests/{id}");
    assert_eq!(
        objects.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
        ["config", "keys/repository", manifest.as_str()]
    );
    for (key, version, mode) in &objects {
        let head = heads(key.clone()).await;
        assert_eq!(head.version_id(), version.as_deref(), "{key}");
        assert_eq!(mode.as_deref(), Some("COMPLIANCE"), "{key}");
    }
    // The backup is kept as long as its manifest is locked.
    let retain_after: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT retain_until FROM backups WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    let manifest_lock = to_chrono(
        heads(manifest.clone())
            .await
            .object_lock_retain_until_date(),
    );
    assert!(close(retain_after, manifest_lock), "{retain_after:?}");
    assert!(close(retain_after, Some(retain_before)), "{retain_after:?}");

    // The scrub finds every rebuilt record true of the bucket.
    env.ok(&["verify", "--storage"]);
    env.restore_equals(&summary, &src);
}

/// Someone with write access to the bucket plants manifests: one sealed
/// with a repository secret of their own (valid age encryption to the
/// public recipient, wrong MAC), one a real manifest copied under another
/// id. The rebuild reports both (key and reason) and exits 8 (partial); the
/// real backup is rebuilt and restores; the forgeries are not listed.
#[tokio::test]
async fn forged_manifests_are_reported_and_left_out() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("real"), b"real data").unwrap();
    let real = env.backup(&src, "v");
    let real_id: uuid::Uuid = real["backup_id"].as_str().unwrap().parse().unwrap();

    // The attacker knows the public recipient and the repository id, not
    // the manifest MAC key.
    let config: Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("config")).unwrap()).unwrap();
    let repo_id: uuid::Uuid = config["id"].as_str().unwrap().parse().unwrap();
    let fake_secret = drctl::repo::RepoSecret::generate(repo_id, [0; 32]).unwrap();
    let recipients =
        drctl::repo::Recipients::parse(std::slice::from_ref(&env.ws.recipient)).unwrap();
    let forged_id = uuid::Uuid::now_v7();
    let forged = drctl::repo::manifest::Manifest {
        format: drctl::repo::manifest::MANIFEST_FORMAT,
        backup_id: forged_id,
        repository_id: repo_id,
        kind: "volume".into(),
        name: "v".into(),
        created_at: Utc::now(),
        parent: Some(real_id),
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
    let forged_key = format!("manifests/{forged_id}");
    std::fs::write(
        env.repo().join(&forged_key),
        forged.seal(&fake_secret, &recipients),
    )
    .unwrap();
    let copied_id = uuid::Uuid::now_v7();
    let copied_key = format!("manifests/{copied_id}");
    std::fs::copy(
        env.repo().join(format!("manifests/{real_id}")),
        env.repo().join(&copied_key),
    )
    .unwrap();

    lose_catalog(&env).await;
    let (out, stdout, stderr) = harness::run(&mut env.cmd(&[
        "--identity",
        env.identity.to_str().unwrap(),
        "catalog",
        "rebuild",
        "-o",
        "json",
    ]));
    assert_eq!(out.status.code(), Some(8), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("the report is printed");
    assert_eq!(report["backups_rebuilt"], 1, "{report}");
    let rejected = report["rejected_manifests"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{report}");
    for key in [&forged_key, &copied_key] {
        let r = rejected
            .iter()
            .find(|r| r["key"] == key.as_str())
            .unwrap_or_else(|| panic!("{key} is not reported: {report}"));
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("failed authentication"),
            "{r}"
        );
    }
    assert!(stderr.contains("failed verification"), "{stderr}");

    let listed = env.json(&["backup", "list"]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [real_id.to_string()], "{listed}");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM objects WHERE key = ANY($1)")
        .bind([&forged_key, &copied_key])
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "forged manifests are not recorded as objects");
    env.restore_equals(&real, &src);

    // The text form names them too, and again exits 8.
    let (out, stdout, stderr) = harness::run(&mut env.cmd(&[
        "--identity",
        env.identity.to_str().unwrap(),
        "catalog",
        "rebuild",
    ]));
    assert_eq!(out.status.code(), Some(8), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("REJECTED {forged_key}: ")),
        "{stdout}"
    );
    assert!(stdout.contains("failed authentication"), "{stdout}");
    assert!(
        stdout.contains("0 rebuilt, 1 already in the catalog"),
        "{stdout}"
    );
}

/// Without the identity nothing can be read: a clear error, exit 5, and
/// the catalog untouched. An identity that is not a recipient: the same.
#[tokio::test]
async fn rebuild_needs_the_identity() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    env.backup(&src, "v");
    lose_catalog(&env).await;

    let (out, stdout, stderr) = harness::run(&mut env.cmd(&["catalog", "rebuild"]));
    assert_eq!(out.status.code(), Some(5), "{stdout}{stderr}");
    assert!(stderr.contains("needs the age identity"), "{stderr}");
    assert!(stderr.contains("--identity"), "{stderr}");

    let other = env.ws.path("other-identity.txt");
    drctl::keys::generate(&other).unwrap();
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["catalog", "rebuild", "--identity"])
            .arg(&other)
            .args(["-o", "json"]),
    );
    assert_eq!(out.status.code(), Some(5), "{stdout}{stderr}");
    let err: Value = serde_json::from_str(&stdout).expect("a JSON error");
    assert_eq!(err["error"]["exit_code"], 5, "{err}");

    let c = counts(&env).await;
    assert!(c.values().all(|n| *n == 0), "{c:?}");
}

/// A pack whose bytes no longer match its key, and a pack that is gone: both
/// are reported (exit 8) and neither is recorded, so no new backup
/// deduplicates against them; the backups that need them are rebuilt with a
/// warning; a new backup of the same data stores it again and restores.
#[tokio::test]
async fn damaged_and_missing_packs_are_reported_and_not_trusted() {
    let env = VolumeEnv::new().await;
    let (a, b) = (env.ws.path("a"), env.ws.path("b"));
    for (dir, seed) in [(&a, 1), (&b, 2)] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("data.bin"), crate::tree::noise(seed, 2 << 20)).unwrap();
    }
    let backup_a = env.backup(&a, "a");
    env.backup(&b, "b");
    let packs = data_packs(&env, &backup_packs(&env).await);
    let pack_of = |id: &Value| {
        let id: uuid::Uuid = id.as_str().unwrap().parse().unwrap();
        packs.iter().find(|p| p.0 == id).unwrap().1.clone()
    };
    let damaged = pack_of(&backup_a["backup_id"]);
    let missing = packs.iter().find(|p| p.1 != damaged).unwrap().1.clone();
    let path = env.repo().join(&damaged);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(env.repo().join(&missing)).unwrap();

    lose_catalog(&env).await;
    let (out, stdout, stderr) = harness::run(&mut env.cmd(&[
        "--identity",
        env.identity.to_str().unwrap(),
        "catalog",
        "rebuild",
        "-o",
        "json",
    ]));
    assert_eq!(out.status.code(), Some(8), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["backups_rebuilt"], 2, "{report}");
    assert_eq!(report["packs"], 2, "the tree packs: {report}");
    let reported = report["damaged_packs"].as_array().unwrap();
    assert_eq!(reported.len(), 2, "{report}");
    let reason = |key: &str| {
        reported
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("{key} not reported: {report}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason(&damaged).contains("SHA-256"), "{report}");
    assert!(reason(&missing).contains("not in the bucket"), "{report}");
    assert_eq!(report["warnings"].as_array().unwrap().len(), 2, "{report}");
    // Only the two tree packs are recorded, each linked to its backup.
    let c = counts(&env).await;
    assert_eq!((c["packs"], c["backup_packs"]), (2, 2), "{c:?}");
    let data_chunks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chunks WHERE raw_length > 1000000")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(data_chunks, 0);

    // Nothing damaged is deduplicated against: the data is stored again.
    let again = env.backup(&a, "a");
    assert!(again["new_bytes"].as_u64().unwrap() >= 2 << 20, "{again}");
    env.restore_equals(&again, &a);
}

/// A rebuild holds the repository's gc lock: a `drctl gc` started meanwhile
/// waits (it would see the packs recorded before the backups that need them
/// as garbage) and runs once the lock is released.
#[tokio::test]
async fn gc_waits_for_a_rebuild() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    env.backup(&src, "v");
    let config: Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("config")).unwrap()).unwrap();
    let repo_id: uuid::Uuid = config["id"].as_str().unwrap().parse().unwrap();

    let catalog = drctl::catalog::Catalog::from_pool(env.db.pool.clone());
    let lock = catalog.hold_gc_lock(repo_id).await.unwrap();
    let mut gc = env
        .cmd(&["gc"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waiting = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
        n > 0
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !waiting().await {
        assert!(
            gc.try_wait().unwrap().is_none(),
            "gc ran while the lock was held"
        );
        assert!(std::time::Instant::now() < deadline, "gc never waited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gc.try_wait().unwrap().is_none());
    lock.release().await.unwrap();
    let out = gc.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pack the first rebuild could not read (here: moved away) is recorded by
/// a second rebuild once it is back, and the backup rebuilt the first time is
/// linked to it, so gc sees it referenced.
#[tokio::test]
async fn a_second_rebuild_completes_what_the_first_could_not_read() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), crate::tree::noise(3, 1 << 20)).unwrap();
    env.backup(&src, "v");
    let linked = backup_packs(&env).await;
    assert_eq!(linked.len(), 2, "a data pack and a tree pack: {linked:?}");
    let data = data_packs(&env, &linked);
    let pack = env.repo().join(&data[0].1);
    let aside = env.ws.path("pack-aside");
    std::fs::rename(&pack, &aside).unwrap();

    lose_catalog(&env).await;
    let mut cmd = env.cmd(&[
        "--identity",
        env.identity.to_str().unwrap(),
        "catalog",
        "rebuild",
        "-o",
        "json",
    ]);
    let (out, stdout, stderr) = harness::run(&mut cmd);
    assert_eq!(out.status.code(), Some(8), "{stdout}{stderr}");
    assert_eq!(backup_packs(&env).await.len(), 1, "the tree pack alone");

    std::fs::rename(&aside, &pack).unwrap();
    let report = rebuild(&env);
    assert_eq!(report["backups_present"], 1, "{report}");
    assert_eq!(report["packs"], 2, "{report}");
    assert_eq!(backup_packs(&env).await, linked);
}
