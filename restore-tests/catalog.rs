//! The catalog schema in a real PostgreSQL: migrations apply, and the
//! invariants a bug must not break are enforced by the database itself.

use drctl::catalog::Catalog;

use crate::harness;

#[tokio::test]
async fn migrations_apply_once_and_enforce_backup_invariants() {
    let db = harness::database().await;
    let catalog = Catalog::from_pool(db.pool.clone());

    let before = catalog.status().await.unwrap();
    assert!(
        before.iter().all(|m| !m.applied),
        "a fresh database has no migrations"
    );
    assert!(catalog.require_current().await.is_err());

    let applied = catalog.migrate().await.unwrap();
    assert_eq!(
        applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        before.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    assert!(
        catalog.migrate().await.unwrap().is_empty(),
        "second run applies nothing"
    );
    catalog.require_current().await.unwrap();

    let repo = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO repositories (id, location, format_version) VALUES ($1, $2, 1)")
        .bind(repo)
        .bind("file:///var/lib/drctl/repo")
        .execute(&db.pool)
        .await
        .unwrap();
    let backup = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO backups (id, repository_id, kind, name) VALUES ($1, $2, 'volume', 'data-0')",
    )
    .bind(backup)
    .bind(repo)
    .execute(&db.pool)
    .await
    .unwrap();

    // A backup cannot be marked complete without its manifest...
    let err =
        sqlx::query("UPDATE backups SET status = 'complete', finished_at = now() WHERE id = $1")
            .bind(backup)
            .execute(&db.pool)
            .await
            .expect_err("complete without a manifest is refused");
    assert!(
        err.to_string().contains("usable_backups_have_a_manifest"),
        "{err}"
    );
    // ...nor failed without a reason.
    let err =
        sqlx::query("UPDATE backups SET status = 'failed', finished_at = now() WHERE id = $1")
            .bind(backup)
            .execute(&db.pool)
            .await
            .expect_err("failed without a reason is refused");
    assert!(err.to_string().contains("failed_backups_say_why"), "{err}");

    sqlx::query(
        "UPDATE backups SET status = 'complete', finished_at = now(), manifest_key = 'manifests/x' \
         WHERE id = $1",
    )
    .bind(backup)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO backup_items (backup_id, item, item_type, size) VALUES ($1, 'a/b', 'file', 3)",
    )
    .bind(backup)
    .execute(&db.pool)
    .await
    .unwrap();
    let (status, items): (String, i64) = sqlx::query_as(
        "SELECT b.status, count(i.item) FROM backups b JOIN backup_items i ON i.backup_id = b.id \
         WHERE b.id = $1 GROUP BY b.status",
    )
    .bind(backup)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), items), ("complete", 1));
}

#[tokio::test]
async fn cli_migrates_and_reports_status() {
    let db = harness::database().await;
    let ws = harness::Workspace::new();
    let config = ws.config(&db.url);

    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .args(["catalog", "status"])
            .arg("--config")
            .arg(&config),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("pending; run `drctl catalog migrate`"),
        "{stdout}"
    );

    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .args(["catalog", "migrate", "--config"])
            .arg(&config),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("applied 1 catalog"), "{stdout}");

    let (out, stdout, _) = harness::run(
        harness::drctl()
            .args(["catalog", "status", "-o", "json", "--config"])
            .arg(&config),
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["pending"], 0);
    assert!(
        v["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["applied"] == true)
    );
}

#[tokio::test]
async fn unreachable_catalog_fails_with_exit_4_and_no_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = harness::Workspace::new();
    let config = ws.config(&format!(
        "postgres://drctl:pw-never-shown@127.0.0.1:{port}/drctl"
    ));
    let (out, stdout, stderr) = harness::run(
        harness::drctl()
            .args(["catalog", "migrate", "--config"])
            .arg(&config),
    );
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to the catalog at postgres://drctl:****@127.0.0.1:{port}/drctl"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    harness::assert_no_secret(&format!("{stdout}{stderr}"), &["pw-never-shown"]);
}

/// Processes that start together (a node agent on every node, server
/// replicas) register the repository at once: none may fail on another's
/// row. (They did: a conflict on the location index was not absorbed.)
#[tokio::test(flavor = "multi_thread")]
async fn processes_starting_together_all_register_the_repository() {
    let db = harness::database().await;
    let catalog = Catalog::from_pool(db.pool.clone());
    catalog.migrate().await.unwrap();
    let config = |id: uuid::Uuid| -> drctl::repo::RepoConfig {
        serde_json::from_value(serde_json::json!({
            "format_version": drctl::REPOSITORY_FORMAT_VERSION,
            "id": id,
            "created_at": "2026-12-01T00:00:00Z",
            "chunker": {"algorithm": "fastcdc", "min": 1, "avg": 2, "max": 4, "block_chunk": 4},
            "pack_size": 1,
            "recipients": [],
        }))
        .unwrap()
    };
    for round in 0..20 {
        let cfg = config(uuid::Uuid::new_v4());
        let location = format!("file:///race/{round}");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (c, cfg, l) = (catalog.clone(), cfg.clone(), location.clone());
                tokio::spawn(async move { c.ensure_repository(&cfg, &l).await })
            })
            .collect();
        for t in tasks {
            let id = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {}", e.report()));
            assert_eq!(id, cfg.id);
        }
    }
    // Another repository at a location taken is refused, and says why.
    let err = catalog
        .ensure_repository(&config(uuid::Uuid::new_v4()), "file:///race/0")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), drctl::ErrorKind::Config);
    assert!(
        err.what().contains("another repository"),
        "{}",
        err.report()
    );
}
