//! docs/runbook.md, run as written: each recipe's shell block is extracted
//! from the Markdown and run with bash against a scenario that needs it, so
//! the doc cannot drift from what works. (The namespace and etcd recipes
//! run in resources.rs and etcd.rs, beside their clusters.)

use crate::harness::{self, VolumeEnv, run_recipe};

/// One file of a volume is corrupted: the recipe puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_file_corrupted() {
    let env = VolumeEnv::new().await;
    let data = env.ws.path("data");
    std::fs::create_dir_all(data.join("conf")).unwrap();
    std::fs::write(data.join("conf/app.conf"), b"threads = 8\n").unwrap();
    std::fs::write(data.join("other"), crate::tree::noise(3, 50_000)).unwrap();
    env.json(&[
        "backup",
        "volume",
        "--path",
        data.to_str().unwrap(),
        "--name",
        "web",
    ]);
    std::fs::write(data.join("conf/app.conf"), b"thr\0\0\0garbage").unwrap();
    let scratch = env.ws.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    let (out, stdout, stderr) = run_recipe(
        "file-corrupted",
        &env.config,
        &env.identity,
        &[
            ("VOLUME", "web"),
            ("SCRATCH", scratch.to_str().unwrap()),
            ("DATA", data.to_str().unwrap()),
            ("FILE", "conf/app.conf"),
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        std::fs::read(data.join("conf/app.conf")).unwrap(),
        b"threads = 8\n"
    );
    // The file alone was restored, not the volume.
    assert!(scratch.join("web-restored/conf/app.conf").exists());
    assert!(!scratch.join("web-restored/other").exists());
}

/// The catalog is lost (an empty database in its place): the recipe lists
/// from the bucket, rebuilds, and the backups are back in the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_catalog_lost() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::tree::noise(4, 20_000)).unwrap();
    let b = env.backup(&src, "web");
    let short = &b["backup_id"].as_str().unwrap().replace('-', "")[24..];
    let fresh = harness::database().await;
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.db.url, &fresh.url);
    let config = env.ws.write("new-catalog.yaml", &config);

    let (out, stdout, stderr) = run_recipe("catalog-lost", &config, &env.identity, &[]);
    assert!(out.status.success(), "{stdout}{stderr}");
    // Listed twice: from the bucket, then from the rebuilt catalog.
    assert_eq!(stdout.matches(short).count(), 2, "{stdout}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM backups")
        .fetch_one(&fresh.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

/// Bucket credentials leaked and were used to add a version on top of a
/// manifest: the recipe's check finds it (exit 6) and names what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_credentials_leaked() {
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&harness::services().s3_endpoint, &bucket.name, 1).await;
    let src = env.ws.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::tree::noise(5, 20_000)).unwrap();
    let b = env.backup(&src, "web");
    let (out, stdout, stderr) = run_recipe("credentials-leaked", &env.config, &env.identity, &[]);
    assert!(out.status.success(), "a clean bucket: {stdout}{stderr}");

    // The attacker, with the leaked keys and the SDK.
    let key = format!("manifests/{}", b["backup_id"].as_str().unwrap());
    bucket
        .client
        .put_object()
        .bucket(&bucket.name)
        .key(&key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"forged"))
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .send()
        .await
        .unwrap();
    let (out, stdout, stderr) = run_recipe("credentials-leaked", &env.config, &env.identity, &[]);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(&key),
        "{stdout}{stderr}"
    );
}
