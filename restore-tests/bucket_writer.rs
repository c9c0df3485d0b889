//! What someone who can only write to the bucket (the backup writers'
//! credentials, or whoever steals them) can do to a repository on S3 with
//! Object Lock, and what drctl does about it. Object Lock keeps every
//! version; it does not stop a *new* version of a key or a delete marker
//! over it. The attacker here is the AWS SDK used directly, never drctl's
//! store: drctl must read the original of every key, report what was put
//! on top, and keep working.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use chrono::Utc;
use serde_json::Value;

use crate::harness::{self, TestBucket, VolumeEnv, services};
use crate::tree::noise;

/// Puts `body` as a new version of `key`, as any holder of write access can.
async fn put_version(bucket: &TestBucket, key: &str, body: Vec<u8>) {
    bucket
        .client
        .put_object()
        .bucket(&bucket.name)
        .key(key)
        .body(ByteStream::from(body))
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the attacker's put of {key}: {e:?}"));
}

/// A plain DELETE: on a versioned bucket it leaves a delete marker.
async fn delete_marker(bucket: &TestBucket, key: &str) {
    let out = bucket
        .client
        .delete_object()
        .bucket(&bucket.name)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the attacker's delete of {key}: {e:?}"));
    assert_eq!(out.delete_marker(), Some(true), "{key}: {out:?}");
}

/// Version ids of `key`, oldest first, as the server lists them.
async fn version_ids(bucket: &TestBucket, key: &str) -> Vec<String> {
    let list = bucket
        .client
        .list_object_versions()
        .bucket(&bucket.name)
        .prefix(key)
        .send()
        .await
        .unwrap();
    let mut v: Vec<_> = list
        .versions()
        .iter()
        .filter(|v| v.key() == Some(key))
        .map(|v| {
            (
                v.last_modified().cloned(),
                v.version_id().unwrap().to_string(),
            )
        })
        .collect();
    v.sort_by_key(|(t, _)| t.map(|t| (t.secs(), t.subsec_nanos())));
    v.into_iter().map(|(_, id)| id).collect()
}

/// A tree of a few files, backed up once to a fresh locked bucket.
async fn backed_up() -> (TestBucket, VolumeEnv, std::path::PathBuf, String) {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("data.bin"), noise(7, 3 << 20)).unwrap();
    std::fs::write(src.join("sub/note.txt"), b"precious\n").unwrap();
    let id = env.backup(&src, "v")["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    (bucket, env, src, id)
}

fn repository_id(env: &VolumeEnv) -> uuid::Uuid {
    let info = env.json(&["repo", "info"]);
    info["repository"]["id"].as_str().unwrap().parse().unwrap()
}

/// `verify --storage`: exit 6 and the problems, as (key, kind, text).
fn scrub_findings(env: &VolumeEnv) -> Vec<(String, String, String)> {
    let (out, stdout, stderr) = harness::run(&mut env.cmd(&["verify", "--storage", "-o", "json"]));
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap().to_string(),
                p["kind"].as_str().unwrap().to_string(),
                p["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The attacker replaces the repository secret with one of their own
/// (encrypted to the public recipient), the config with one that would make
/// every chunk its own object, and a backup's manifest with a forgery MAC'd
/// with their secret. Restore, verify, the next backup and `catalog
/// rebuild` all use the originals; the scrub names each new version.
#[tokio::test]
async fn new_versions_of_secret_config_and_manifest_are_never_trusted() {
    let (bucket, env, src, id) = backed_up().await;
    let repo_id = repository_id(&env);
    let manifest = format!("manifests/{id}");
    let originals = [
        (
            "keys/repository",
            version_ids(&bucket, "keys/repository").await,
        ),
        ("config", version_ids(&bucket, "config").await),
    ];

    let recipients =
        drctl::repo::Recipients::parse(std::slice::from_ref(&env.ws.recipient)).unwrap();
    let fake = drctl::repo::RepoSecret::generate(repo_id, [0; 32]).unwrap();
    put_version(
        &bucket,
        "keys/repository",
        recipients.encrypt(&fake.to_json()),
    )
    .await;
    let config: Value = serde_json::from_slice(
        &bucket
            .client
            .get_object()
            .bucket(&bucket.name)
            .key("config")
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes(),
    )
    .unwrap();
    let mut evil = config.clone();
    evil["pack_size"] = 1.into();
    put_version(&bucket, "config", serde_json::to_vec(&evil).unwrap()).await;
    let forged = drctl::repo::manifest::Manifest {
        format: drctl::repo::manifest::MANIFEST_FORMAT,
        backup_id: id.parse().unwrap(),
        repository_id: repo_id,
        kind: "volume".into(),
        name: "v".into(),
        created_at: Utc::now(),
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
    put_version(&bucket, &manifest, forged.seal(&fake, &recipients)).await;

    // Restore and verify read the originals.
    env.restore_equals(&serde_json::json!({ "backup_id": id }), &src);
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["verify", "--read-data", "-o", "json"])
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");

    // The next backup writes with the original config (a one-byte pack
    // size would make a pack per chunk) and locks the originals.
    std::fs::write(src.join("more.bin"), noise(8, 2 << 20)).unwrap();
    let next = env.backup(&src, "v");
    assert!(
        next["packs"].as_u64().unwrap() < 10,
        "packs of the original size: {next}"
    );
    env.restore_equals(&next, &src);

    // The rebuilt catalog records the original versions.
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["catalog", "rebuild", "-o", "json"])
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    for (key, versions) in &originals {
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT version_id FROM objects WHERE key = $1")
                .bind(key)
                .fetch_one(&env.db.pool)
                .await
                .unwrap();
        assert_eq!(recorded.as_deref(), Some(versions[0].as_str()), "{key}");
    }

    let findings = scrub_findings(&env);
    for key in ["keys/repository", "config", manifest.as_str()] {
        assert!(
            findings
                .iter()
                .any(|(k, kind, _)| k == key && kind == "extra_version"),
            "{key} not reported: {findings:?}"
        );
    }
    assert!(
        findings.iter().any(|(k, _, text)| k == "keys/repository"
            && text.contains("tried to replace the repository secret")),
        "{findings:?}"
    );
}

/// Plain DELETEs on the secret, the config, a manifest and a pack leave
/// delete markers. The locked originals are still there: restore reads
/// them and succeeds byte for byte, and the scrub names every marker.
#[tokio::test]
async fn delete_markers_hide_nothing_from_restore_and_are_reported() {
    let (bucket, env, src, id) = backed_up().await;
    let pack: String = sqlx::query_scalar("SELECT key FROM packs LIMIT 1")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let manifest = format!("manifests/{id}");
    let hidden = [
        "keys/repository",
        "config",
        manifest.as_str(),
        pack.as_str(),
    ];
    for key in hidden {
        delete_marker(&bucket, key).await;
    }
    env.restore_equals(&serde_json::json!({ "backup_id": id }), &src);
    // The structural verify finds every pack too.
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["verify", "-o", "json"])
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let findings = scrub_findings(&env);
    for key in hidden {
        assert!(
            findings
                .iter()
                .any(|(k, kind, _)| k == key && kind == "delete_marker"),
            "{key} not reported: {findings:?}"
        );
    }
}

/// Whoever can write the catalog raises a pack's recorded retain-until.
/// The next backup that reuses the pack still extends its real lock: what
/// is locked, and until when, is read from the store.
#[tokio::test]
async fn lock_extension_reads_the_store_not_the_catalog() {
    let (bucket, env, src, _) = backed_up().await;
    let (pack, version): (String, String) =
        sqlx::query_as("SELECT key, version_id FROM packs LIMIT 1")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    sqlx::query("UPDATE packs SET retain_until = now() + interval '10 years'")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let next = env.json(&[
        "backup",
        "volume",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "v",
        "--retention",
        "30d",
    ]);
    assert!(next["backup_id"].is_string(), "{next}");
    let head = bucket
        .client
        .head_object()
        .bucket(&bucket.name)
        .key(&pack)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    let until = head.object_lock_retain_until_date().unwrap();
    let until = chrono::DateTime::from_timestamp(until.secs(), 0).unwrap();
    assert!(
        until > Utc::now() + chrono::Duration::days(29),
        "the pack's lock was not extended: {until}"
    );
}

/// The server stores a PUT and its answer is lost on the way back; the
/// SDK retries and gets 412 (the key is taken, by this very put). The
/// backup reads back the original, finds the same bytes, and completes.
#[tokio::test]
async fn a_put_whose_answer_is_lost_does_not_fail_the_backup() {
    use crate::harness::fault_proxy::{FaultProxy, Faults};
    let bucket = harness::locked_bucket().await;
    let proxy = FaultProxy::start(&services().s3_endpoint, Faults::none());
    let env = VolumeEnv::s3(&proxy.endpoint, &bucket.name, 1).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), noise(31, 1 << 20)).unwrap();
    // The first object the backup puts: its first pack.
    proxy.lose_put_answers(1);
    let summary = env.backup(&src, "v");
    assert!(proxy.stats().dropped >= 1, "{:?}", proxy.stats());
    env.restore_equals(&summary, &src);
}

/// Other bytes under a key drctl is about to write are an integrity error,
/// never "exists already, nothing to do".
#[tokio::test]
async fn a_taken_key_with_other_bytes_is_an_integrity_error() {
    use drctl::store::{PutOptions, Store as _, sha256};
    let bucket = harness::locked_bucket().await;
    put_version(&bucket, "manifests/taken", b"the attacker's".to_vec()).await;
    let cfg: drctl::config::S3Config = serde_yaml_ng::from_str(&format!(
        "endpoint: {}\nbucket: {}\nforce_path_style: true\n",
        services().s3_endpoint,
        bucket.name
    ))
    .unwrap();
    let store = drctl::store::s3::S3Store::with_client(harness::s3_client(), &cfg).unwrap();
    let err = tokio::task::spawn_blocking(move || {
        let data = b"drctl's own".to_vec();
        let opts = PutOptions {
            sha256: sha256(&data),
            retain_until: None,
        };
        store.put("manifests/taken", &data, &opts).unwrap_err()
    })
    .await
    .unwrap();
    assert_eq!(err.kind(), drctl::ErrorKind::Integrity, "{err:?}");
    assert!(
        err.what().contains("someone else wrote it first"),
        "{err:?}"
    );
}

/// A repository whose original config is larger than a config can be is
/// refused with an integrity error before the object is downloaded.
#[tokio::test]
async fn an_object_larger_than_the_format_allows_is_refused_unread() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&services().s3_endpoint, &bucket.name, 1).await;
    // A second repository under a prefix, whose config the attacker
    // planted first: 4 MiB of JSON-looking bytes.
    let mut big = b"{\"pad\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 4 << 20));
    big.extend(b"\"}");
    put_version(&bucket, "other/config", big).await;
    let config = env.ws.write(
        "other.yaml",
        &std::fs::read_to_string(&env.config).unwrap().replace(
            "force_path_style: true",
            "force_path_style: true\n    prefix: other/",
        ),
    );
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .arg("--config")
            .arg(&config)
            .args(["repo", "info"]),
    );
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stderr.contains("refusing to read config") && stderr.contains("4194315 bytes"),
        "{stderr}"
    );
}

/// `prefix: cluster-1` puts every key under `cluster-1/`, as the
/// configuration reference says, so an IAM policy on `cluster-1/*` covers
/// them all.
#[tokio::test]
async fn a_prefix_is_a_folder() {
    let bucket = harness::locked_bucket().await;
    let repo = format!(
        "  s3:\n    endpoint: {}\n    bucket: {}\n    force_path_style: true\n    \
         retention_days: 1\n    prefix: cluster-1\n",
        services().s3_endpoint,
        bucket.name
    );
    let env = VolumeEnv::with_repository(harness::Workspace::new(), &repo, &[]).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let summary = env.backup(&src, "v");
    env.restore_equals(&summary, &src);
    let list = bucket
        .client
        .list_objects_v2()
        .bucket(&bucket.name)
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = list.contents().iter().filter_map(|o| o.key()).collect();
    assert!(keys.contains(&"cluster-1/config"), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("cluster-1/")), "{keys:?}");
}

/// A reader pinned to the secret's fingerprint (printed by `repo init` and
/// `repo info`) opens the repository; pinned to another, it refuses.
#[tokio::test]
async fn a_reader_pinned_to_the_secret_fingerprint_refuses_another() {
    let (_bucket, env, src, id) = backed_up().await;
    let info = env.json(&["repo", "info"]);
    let fingerprint = info["secret_fingerprint"].as_str().unwrap().to_string();
    assert!(fingerprint.starts_with("drs1-"), "{info}");
    let yaml = std::fs::read_to_string(&env.config).unwrap();
    let pinned = |pin: &str| {
        env.ws.write(
            &format!("pinned-{pin}.yaml"),
            &yaml.replace(
                "encryption:\n",
                &format!("encryption:\n  repository_fingerprint: {pin}\n"),
            ),
        )
    };
    let restore = |config: &std::path::Path, to: &str| {
        harness::run(
            harness::drctl()
                .arg("--config")
                .arg(config)
                .args(["restore", "volume", &id, "--to"])
                .arg(env.ws.path(to))
                .arg("--identity")
                .arg(&env.identity),
        )
    };
    let (out, stdout, stderr) = restore(&pinned(&fingerprint), "good");
    assert!(out.status.success(), "{stdout}{stderr}");
    crate::tree::assert_same(&src, &env.ws.path("good"));
    let (out, stdout, stderr) = restore(&pinned("drs1-00000000000000000000000000000000"), "bad");
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(stderr.contains("not the drs1-0000"), "{stderr}");
    assert!(!env.ws.path("bad").exists());
}

/// `gc` aborts multipart uploads a killed backup left, and deletes packs
/// that neither the catalog nor any manifest knows (a backup that stored
/// them lost its catalog); the packs live backups need stay.
#[tokio::test]
async fn gc_collects_abandoned_uploads_and_orphan_packs() {
    let (bucket, env, src, id) = backed_up().await;
    let upload = bucket
        .client
        .create_multipart_upload()
        .bucket(&bucket.name)
        .key("packs/ab/abandoned")
        .send()
        .await
        .unwrap();
    bucket
        .client
        .upload_part()
        .bucket(&bucket.name)
        .key("packs/ab/abandoned")
        .upload_id(upload.upload_id().unwrap())
        .part_number(1)
        .body(ByteStream::from(noise(3, 1 << 20)))
        .send()
        .await
        .unwrap();
    let orphan_bytes = noise(4, 4096);
    let orphan = {
        let h = hex::encode(drctl::store::sha256(&orphan_bytes));
        format!("packs/{}/{h}", &h[..2])
    };
    put_version(&bucket, &orphan, orphan_bytes).await;
    // gc sees them first; they stay for the grace period, measured from
    // that sighting on the catalog's clock.
    let seen = env.json(&["gc"]);
    assert!(seen["abandoned"].as_array().unwrap().is_empty(), "{seen}");
    assert!(seen["orphans"].as_array().unwrap().is_empty(), "{seen}");
    assert!(seen["waiting"].as_u64().unwrap() >= 2, "{seen}");
    assert!(!version_ids(&bucket, &orphan).await.is_empty());
    env.age_gc("2 hours").await;

    let report = env.json(&["gc"]);
    assert!(
        report["abandoned"].as_array().unwrap().iter().any(|k| k
            .as_str()
            .unwrap()
            .starts_with("packs/ab/abandoned?uploadId=")),
        "{report}"
    );
    assert_eq!(report["orphans"], serde_json::json!([orphan]), "{report}");
    let uploads = bucket
        .client
        .list_multipart_uploads()
        .bucket(&bucket.name)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{uploads:?}");
    assert!(version_ids(&bucket, &orphan).await.is_empty());
    env.restore_equals(&serde_json::json!({ "backup_id": id }), &src);
}
