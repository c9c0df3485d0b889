//! The repository in S3 with Object Lock (moto, lock enforced): what an
//! attacker holding the bucket's credentials can and cannot do to backups,
//! and what `drctl repo init` accepts as a bucket.

use aws_sdk_s3::primitives::{ByteStream, DateTime as S3Time};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};
use chrono::{DateTime, Utc};

use crate::harness::{self, VolumeEnv, services};
use crate::tree::{build_rich_tree, noise};

/// A pack's row: key, version id, lock mode, retain-until.
type PackRow = (
    String,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
);

fn to_chrono(t: &S3Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.secs(), 0).unwrap()
}

/// Every object in the bucket: key, version id, lock mode and retain-until.
async fn locks(
    client: &aws_sdk_s3::Client,
    bucket: &str,
) -> Vec<(
    String,
    String,
    Option<ObjectLockMode>,
    Option<DateTime<Utc>>,
)> {
    let list = client
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .expect("list versions");
    let mut out = Vec::new();
    for v in list.versions() {
        let (key, version) = (v.key().unwrap(), v.version_id().unwrap());
        let head = client
            .head_object()
            .bucket(bucket)
            .key(key)
            .version_id(version)
            .send()
            .await
            .expect("head");
        out.push((
            key.to_string(),
            version.to_string(),
            head.object_lock_mode().cloned(),
            head.object_lock_retain_until_date().map(to_chrono),
        ));
    }
    out
}

async fn backup_retain_until(env: &VolumeEnv, id: &str) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT retain_until FROM backups WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&env.db.pool)
        .await
        .expect("backup row")
}

/// A backup to S3 restores byte for byte; every object drctl wrote is locked
/// in COMPLIANCE mode at least as long as the backup is kept, the catalog
/// knows each pack's version and lock, and deleting any object version
/// through an independent client is refused.
#[tokio::test]
async fn every_object_is_locked_and_deletes_are_refused() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 2).await;
    let src = env.ws.path("src");
    build_rich_tree(&src);
    let summary = env.backup(&src, "rich");
    assert_eq!(summary["status"], "complete", "{summary}");
    env.restore_equals(&summary, &src);

    let id = summary["backup_id"].as_str().unwrap();
    let until = backup_retain_until(&env, id).await;
    assert!(until > Utc::now() + chrono::Duration::hours(47), "{until}");
    let objects = locks(&bucket.client, &bucket.name).await;
    let keys: Vec<&str> = objects.iter().map(|o| o.0.as_str()).collect();
    assert!(
        keys.contains(&"config") && keys.contains(&"keys/repository"),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.starts_with("packs/")), "{keys:?}");
    assert!(
        keys.contains(&format!("manifests/{id}").as_str()),
        "{keys:?}"
    );
    for (key, version, mode, retain) in &objects {
        assert_eq!(mode.as_ref(), Some(&ObjectLockMode::Compliance), "{key}");
        let retain = retain.unwrap_or_else(|| panic!("{key} has no retain-until"));
        assert!(
            retain >= until - chrono::Duration::seconds(1),
            "{key}: {retain} < {until}"
        );
        let deleted = bucket
            .client
            .delete_object()
            .bucket(&bucket.name)
            .key(key)
            .version_id(version)
            .send()
            .await;
        assert!(deleted.is_err(), "deleting {key} {version} was allowed");
    }

    // The catalog holds what a scrub needs: version, lock mode, retain-until.
    let packs: Vec<PackRow> =
        sqlx::query_as("SELECT key, version_id, lock_mode, retain_until FROM packs")
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert!(!packs.is_empty());
    for (key, version, mode, retain) in packs {
        let (_, v, _, r) = objects.iter().find(|o| o.0 == key).expect("pack in bucket");
        assert_eq!(version.as_deref(), Some(v.as_str()), "{key}");
        assert_eq!(mode.as_deref(), Some("COMPLIANCE"), "{key}");
        assert!(
            retain.unwrap() <= r.unwrap() + chrono::Duration::seconds(1),
            "{key}"
        );
    }
    // And the manifest, the config and the keys.
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM objects WHERE version_id IS NOT NULL AND lock_mode = 'COMPLIANCE'",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 3, "manifest, config and keys are recorded");
}

/// When a backup reuses packs of an older one and is kept longer, the old
/// packs' locks are extended to the new backup's retain-until (as S3
/// reports them); a backup kept for less never shortens a lock, and the
/// store refuses to shorten one when asked directly.
#[tokio::test]
async fn reused_packs_get_longer_locks_never_shorter() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), noise(11, 3 << 20)).unwrap();
    let first = env.backup(&src, "v");
    let before = locks(&bucket.client, &bucket.name).await;
    let pack_keys: Vec<&String> = before
        .iter()
        .filter(|o| o.0.starts_with("packs/"))
        .map(|o| &o.0)
        .collect();
    assert!(!pack_keys.is_empty());

    // Same data under a new name: nothing new to store, every pack reused.
    let second = env.json(&[
        "backup",
        "volume",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "v-kept-longer",
        "--retention",
        "5d",
    ]);
    assert_eq!(second["new_bytes"], 0, "{second}");
    let until = backup_retain_until(&env, second["backup_id"].as_str().unwrap()).await;
    assert!(until > Utc::now() + chrono::Duration::days(4));
    let after = locks(&bucket.client, &bucket.name).await;
    for key in &pack_keys {
        let (_, _, _, r) = after.iter().find(|o| &&o.0 == key).unwrap();
        assert!(
            r.unwrap() >= until - chrono::Duration::seconds(1),
            "{key} was not extended to {until}: {r:?}"
        );
    }
    // The config and the keys too: every backup needs them.
    for key in ["config", "keys/repository"] {
        let (_, _, _, r) = after.iter().find(|o| o.0 == key).unwrap();
        assert!(r.unwrap() >= until - chrono::Duration::seconds(1), "{key}");
    }

    // A backup kept one hour reuses the same packs: no lock gets shorter.
    env.json(&[
        "backup",
        "volume",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "v-short",
        "--retention",
        "1h",
    ]);
    let later = locks(&bucket.client, &bucket.name).await;
    for key in &pack_keys {
        let (_, _, _, r) = later.iter().find(|o| &&o.0 == key).unwrap();
        assert!(
            r.unwrap() >= until - chrono::Duration::seconds(1),
            "{key} shortened"
        );
    }

    // Asked directly, the store keeps the later date (the test server itself
    // would allow the shortening).
    use drctl::store::Store as _;
    let cfg: drctl::config::S3Config = serde_yaml_ng::from_str(&format!(
        "endpoint: {}\nbucket: {}\nforce_path_style: true\n",
        services().s3_endpoint,
        bucket.name
    ))
    .unwrap();
    let store = ::drctl::store::s3::S3Store::with_client(harness::s3_client(), &cfg).unwrap();
    let (key, version) = {
        let o = later.iter().find(|o| &o.0 == pack_keys[0]).unwrap();
        (o.0.clone(), o.1.clone())
    };
    let earlier = Utc::now() + chrono::Duration::hours(2);
    let kept =
        tokio::task::spawn_blocking(move || store.extend_retention(&key, Some(&version), earlier))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    assert!(kept >= until - chrono::Duration::seconds(1), "{kept}");
    let head = bucket
        .client
        .head_object()
        .bucket(&bucket.name)
        .key(pack_keys[0])
        .send()
        .await
        .unwrap();
    assert!(
        to_chrono(head.object_lock_retain_until_date().unwrap())
            >= until - chrono::Duration::seconds(1)
    );
    let _ = first;
}

/// Someone with write access puts a new version under a pack's key (a
/// versioned bucket allows it; the lock protects only the old version). A
/// restore never uses it: it reads the version that matches the key's hash
/// and says the pack was replaced.
#[tokio::test]
async fn a_new_version_under_a_pack_key_is_never_restored() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), noise(5, 2 << 20)).unwrap();
    std::fs::write(src.join("small.txt"), b"precious\n").unwrap();
    let summary = env.backup(&src, "v");
    let objects = locks(&bucket.client, &bucket.name).await;
    let pack = &objects
        .iter()
        .find(|o| o.0.starts_with("packs/"))
        .unwrap()
        .0;
    // Whichever pack it is (data or the listing's tree pack), the original
    // is what is read.
    let until = S3Time::from_secs((Utc::now() + chrono::Duration::days(1)).timestamp());
    bucket
        .client
        .put_object()
        .bucket(&bucket.name)
        .key(pack)
        .body(ByteStream::from(noise(99, 4096)))
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(until)
        .send()
        .await
        .expect("the attacker's new version");

    let id = summary["backup_id"].as_str().unwrap();
    let dst = env.ws.path("restored");
    let (out, stdout, stderr) = env.restore(id, &dst);
    assert!(out.status.success(), "{stdout}{stderr}");
    crate::tree::assert_same(&src, &dst);
    assert!(
        stderr.contains("replaced"),
        "the replacement is reported:\n{stderr}"
    );
}

/// `repo init` accepts only a bucket that can keep backups immutable, and
/// says how to fix one that cannot; `--create-bucket` makes a correct one.
#[tokio::test]
async fn repo_init_checks_the_bucket() {
    let client = harness::s3_client();
    let endpoint = &services().s3_endpoint;

    // No Object Lock: refused with the command that fixes it.
    let plain = harness::unique("drctl-t-");
    client.create_bucket().bucket(&plain).send().await.unwrap();
    let ws = harness::Workspace::new();
    let db = harness::database().await;
    let config = ws.write(
        "drctl.yaml",
        &format!(
            "repository:\n  s3:\n    endpoint: {endpoint}\n    bucket: {plain}\n    force_path_style: true\n\
             catalog:\n  url: {}\nencryption:\n  recipients: [{}]\n",
            db.url, ws.recipient
        ),
    );
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .arg("--config")
            .arg(&config)
            .args(["repo", "init"]),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("does not have Object Lock"), "{stderr}");
    assert!(stderr.contains("put-object-lock-configuration"), "{stderr}");
    let listed = client
        .list_objects_v2()
        .bucket(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.key_count(),
        Some(0),
        "nothing written to a refused bucket"
    );

    // A default retention rule: refused too.
    let defaulted = harness::locked_bucket().await;
    client
        .put_object_lock_configuration()
        .bucket(&defaulted.name)
        .object_lock_configuration(
            aws_sdk_s3::types::ObjectLockConfiguration::builder()
                .object_lock_enabled(aws_sdk_s3::types::ObjectLockEnabled::Enabled)
                .rule(
                    aws_sdk_s3::types::ObjectLockRule::builder()
                        .default_retention(
                            aws_sdk_s3::types::DefaultRetention::builder()
                                .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Governance)
                                .days(1)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let config = ws.write(
        "drctl.yaml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace(&plain, &defaulted.name),
    );
    let (out, _, stderr) = harness::run(
        harness::drctl()
            .arg("--config")
            .arg(&config)
            .args(["repo", "init"]),
    );
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("default retention"), "{stderr}");

    // A bucket that does not exist: named, and created with --create-bucket.
    let missing = harness::unique("drctl-t-");
    let config = ws.write(
        "drctl.yaml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace(&defaulted.name, &missing),
    );
    let (out, _, stderr) = harness::run(
        harness::drctl()
            .arg("--config")
            .arg(&config)
            .args(["repo", "init"]),
    );
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("does not exist") && stderr.contains("--create-bucket"),
        "{stderr}"
    );
    let (out, stdout, stderr) = harness::run(harness::drctl().arg("--config").arg(&config).args([
        "repo",
        "init",
        "--create-bucket",
    ]));
    assert!(out.status.success(), "{stdout}{stderr}");
    let lock = client
        .get_object_lock_configuration()
        .bucket(&missing)
        .send()
        .await
        .unwrap();
    assert_eq!(
        lock.object_lock_configuration()
            .unwrap()
            .object_lock_enabled()
            .unwrap()
            .as_str(),
        "Enabled"
    );
}

/// Through a proxy that answers 503 and 500, delays and drops a share of the
/// requests, backups complete thanks to retries, or fail cleanly: never is a
/// backup marked complete with an object missing, and every complete one
/// restores byte for byte.
#[tokio::test]
async fn backups_ride_out_a_faulty_network() {
    use crate::harness::fault_proxy::{FaultProxy, Faults};
    let bucket = harness::locked_bucket().await;
    let proxy = FaultProxy::start(
        &services().s3_endpoint,
        Faults {
            slow_down: 0.08,
            internal_error: 0.08,
            delay: 0.1,
            drop: 0.05,
            seed: 20261127,
        },
    );
    let env = VolumeEnv::s3(&proxy.endpoint, &bucket.name, 1).await;
    let mut outcomes = Vec::new();
    for round in 0..3u64 {
        let src = env.ws.path(&format!("src-{round}"));
        std::fs::create_dir_all(&src).unwrap();
        // About two packs of new data per round, and small files.
        std::fs::write(src.join("big.bin"), noise(100 + round, 24 << 20)).unwrap();
        for i in 0..20 {
            std::fs::write(
                src.join(format!("f{i}.txt")),
                format!("round {round} file {i}\n"),
            )
            .unwrap();
        }
        let (out, stdout, stderr) = harness::run(&mut env.cmd(&[
            "backup",
            "volume",
            "--path",
            src.to_str().unwrap(),
            "--name",
            &format!("r{round}"),
            "-o",
            "json",
        ]));
        outcomes.push((src, out.status.success(), stdout, stderr));
    }
    proxy.set_enabled(false);
    let stats = proxy.stats();
    assert!(stats.faults() > 0, "no fault was injected: {stats:?}");

    let rows: Vec<(uuid::Uuid, String, String)> =
        sqlx::query_as("SELECT id, name, status FROM backups ORDER BY name")
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    for (round, (src, ok, stdout, stderr)) in outcomes.iter().enumerate() {
        let (id, _, status) = rows
            .iter()
            .find(|r| r.1 == format!("r{round}"))
            .unwrap_or_else(|| panic!("round {round} left no catalog row:\n{stderr}"));
        if !ok {
            // A clean failure: recorded as failed, with the reason.
            assert_eq!(status, "failed", "round {round}:\n{stderr}");
            continue;
        }
        assert_eq!(status, "complete", "round {round}");
        // Every object the backup needs is in the bucket.
        let packs: Vec<String> =
            sqlx::query_scalar("SELECT pack_key FROM backup_packs WHERE backup_id = $1")
                .bind(id)
                .fetch_all(&env.db.pool)
                .await
                .unwrap();
        assert!(!packs.is_empty());
        for key in packs.iter().chain([&format!("manifests/{id}")]) {
            bucket
                .client
                .head_object()
                .bucket(&bucket.name)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{key} of complete backup {id} is missing: {e:?}"));
        }
        let summary: serde_json::Value = serde_json::from_str(stdout).unwrap();
        env.restore_equals(&summary, src);
    }
    assert!(
        outcomes.iter().any(|o| o.1),
        "no backup got through a 30% fault rate with retries: {stats:?}\n{}",
        outcomes.iter().map(|o| o.3.as_str()).collect::<String>()
    );
}

/// `verify --storage` runs without the identity and finds what an attacker
/// with the bucket's credentials can do on a versioned bucket: a new version
/// over a pack, and (on a server that allows it, as the test server does) a
/// shortened lock. A clean repository passes.
#[tokio::test]
async fn storage_scrub_needs_no_identity_and_finds_tampering() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 2).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), noise(21, 3 << 20)).unwrap();
    std::fs::write(src.join("note.txt"), b"hello\n").unwrap();
    env.backup(&src, "v");

    // No identity anywhere in the config or the command line.
    let clean = env.json(&["verify", "--storage"]);
    let objects = clean["objects"].as_u64().unwrap();
    assert!(objects >= 4, "packs, manifest, config and keys: {clean}");
    assert_eq!(clean["problems"].as_array().unwrap().len(), 0, "{clean}");
    assert!(clean["bytes_read"].as_u64().unwrap() > 0, "{clean}");

    let all = locks(&bucket.client, &bucket.name).await;
    let (pack, pack_version) = all
        .iter()
        .find(|o| o.0.starts_with("packs/"))
        .map(|o| (o.0.clone(), o.1.clone()))
        .unwrap();
    let manifest = all
        .iter()
        .find(|o| o.0.starts_with("manifests/"))
        .unwrap()
        .clone();
    // A new version over the pack.
    bucket
        .client
        .put_object()
        .bucket(&bucket.name)
        .key(&pack)
        .body(ByteStream::from(noise(77, 1000)))
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .unwrap();
    // The manifest's lock cut to an hour (S3 refuses this for COMPLIANCE;
    // the test server does not, which is what the scrub is for).
    bucket
        .client
        .put_object_retention()
        .bucket(&bucket.name)
        .key(&manifest.0)
        .version_id(&manifest.1)
        .retention(
            aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Compliance)
                .retain_until_date(S3Time::from_secs(
                    (Utc::now() + chrono::Duration::hours(1)).timestamp(),
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();

    let (out, stdout, stderr) = harness::run(&mut env.cmd(&["verify", "--storage", "-o", "json"]));
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    let about = |key: &str| -> Vec<String> {
        problems
            .iter()
            .filter(|p| p["key"] == key)
            .map(|p| p["problem"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        about(&pack)
            .iter()
            .any(|p| p.contains("a new version") && p.contains("put other bytes")),
        "{report}"
    );
    assert!(
        about(&manifest.0)
            .iter()
            .any(|p| p.contains("before the backups that need it expire")
                || p.contains("earlier than")),
        "{report}"
    );
    // The recorded version is still the one restores read.
    assert!(!pack_version.is_empty());
}

/// `backup delete` and expiry only take backups out of the catalog; `gc`
/// then deletes their objects, but only once their locks have expired and
/// never anything a live backup needs.
#[tokio::test]
async fn gc_deletes_only_unneeded_objects_whose_lock_expired() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
    let dir = |name: &str, seed: u64| {
        let d = env.ws.path(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data.bin"), noise(seed, 2 << 20)).unwrap();
        d
    };
    let (a, b, c) = (dir("a", 41), dir("b", 42), dir("c", 43));
    let backup = |d: &std::path::Path, name: &str, extra: &[&str]| {
        let mut args = vec![
            "backup",
            "volume",
            "--path",
            d.to_str().unwrap(),
            "--name",
            name,
        ];
        args.extend(extra);
        env.json(&args)
    };
    let ba = backup(&a, "a", &["--retention", "3s"]);
    let bc = backup(&c, "c", &["--retention", "3s"]);
    let bb = backup(&b, "b", &[]);
    let packs_of = |id: &str| {
        let id: uuid::Uuid = id.parse().unwrap();
        let pool = env.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT pack_key FROM backup_packs WHERE backup_id = $1",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let a_packs = packs_of(ba["backup_id"].as_str().unwrap()).await;
    let c_packs = packs_of(bc["backup_id"].as_str().unwrap()).await;
    let b_packs = packs_of(bb["backup_id"].as_str().unwrap()).await;
    assert!(!a_packs.is_empty() && !b_packs.is_empty() && !c_packs.is_empty());

    env.ok(&["backup", "delete", ba["backup_id"].as_str().unwrap()]);
    let listed = env.json(&["backup", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // Still locked: marked, not deleted.
    env.json(&["gc"]);
    env.age_gc("2 hours").await;
    let first = env.json(&["gc"]);
    assert_eq!(first["deleted"].as_array().unwrap().len(), 0, "{first}");
    assert!(!first["locked"].as_array().unwrap().is_empty(), "{first}");

    // Once the locks expire, a's objects go; c expires, is marked, and
    // goes after its grace period.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let expiring = env.json(&["gc"]);
    assert_eq!(
        expiring["expired"].as_array().unwrap().len(),
        1,
        "{expiring}"
    );
    env.age_gc("2 hours").await;
    let second = env.json(&["gc"]);
    let deleted: Vec<&str> = [&expiring, &second]
        .iter()
        .flat_map(|r| r["deleted"].as_array().unwrap())
        .map(|v| v.as_str().unwrap())
        .collect();
    for key in a_packs.iter().chain(&c_packs) {
        assert!(
            deleted.contains(&key.as_str()),
            "{key} not deleted: {second}"
        );
        let versions = bucket
            .client
            .list_object_versions()
            .bucket(&bucket.name)
            .prefix(key)
            .send()
            .await
            .unwrap();
        assert!(versions.versions().is_empty(), "{key} still has versions");
    }
    for id in [&ba, &bc] {
        let key = format!("manifests/{}", id["backup_id"].as_str().unwrap());
        assert!(deleted.contains(&key.as_str()), "{key}: {second}");
    }
    // b is untouched and restores.
    for key in &b_packs {
        assert!(!deleted.contains(&key.as_str()));
        bucket
            .client
            .head_object()
            .bucket(&bucket.name)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    env.restore_equals(&bb, &b);
    let listed = env.json(&["backup", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // Nothing left to do.
    env.age_gc("2 hours").await;
    let third = env.json(&["gc"]);
    assert_eq!(third["deleted"].as_array().unwrap().len(), 0, "{third}");
}

/// Large objects go up in parts, and keep every rule of a single put: the
/// checksum, the lock, and put-once.
#[tokio::test]
async fn multipart_uploads_are_locked_checked_and_put_once() {
    use ::drctl::store::{PutOptions, Store as _, sha256};
    let bucket = harness::locked_bucket().await;
    let cfg: drctl::config::S3Config = serde_yaml_ng::from_str(&format!(
        "endpoint: {}\nbucket: {}\nforce_path_style: true\n",
        services().s3_endpoint,
        bucket.name
    ))
    .unwrap();
    let store = ::drctl::store::s3::S3Store::with_client(harness::s3_client(), &cfg)
        .unwrap()
        .with_multipart_threshold(1 << 20);
    // Two parts: 16 MiB and 4 MiB.
    let data = noise(61, 20 << 20);
    let until = Utc::now() + chrono::Duration::hours(3);
    let (meta, again, read) = tokio::task::spawn_blocking(move || {
        let opts = PutOptions {
            sha256: sha256(&data),
            retain_until: Some(until),
        };
        let meta = store.put("manifests/big", &data, &opts).unwrap();
        // The same bytes again (a retry whose first answer was lost): the
        // original is the answer, nothing new is written.
        let again = store.put("manifests/big", &data, &opts).unwrap();
        let read = store.get("manifests/big").unwrap();
        assert!(read == data, "the object reads back as written");
        (meta, again, read.len())
    })
    .await
    .unwrap();
    assert_eq!(read, 20 << 20);
    assert!(meta.version_id.is_some());
    assert_eq!(again.version_id, meta.version_id, "{again:?}");
    let head = bucket
        .client
        .head_object()
        .bucket(&bucket.name)
        .key("manifests/big")
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    assert!(
        to_chrono(head.object_lock_retain_until_date().unwrap())
            >= until - chrono::Duration::seconds(1)
    );
    let versions = bucket
        .client
        .list_object_versions()
        .bucket(&bucket.name)
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 1, "the second put wrote nothing");
}
