//! etcd backups against a real etcd 3.4 of each test's own: the snapshot
//! restores with etcd's own tool (hash check on) to the same keys, values and
//! revision, and the recorded `HashKV` is what the restored member answers.

use std::path::Path;
use std::process::Command;

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, Txn, TxnOp};

use crate::harness::etcd::{Etcd, keyspace, which};
use crate::harness::flip_proxy::FlipProxy;
use crate::harness::{self, VolumeEnv};

/// Deterministic bytes: the same seed gives the same value.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half text-like, half noise: compressible like real objects.
            if i % 2 == 0 {
                b'a' + (x % 16) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

/// Puts `kvs` in transactions of up to 100 operations and ~1 MiB.
async fn put_all(c: &mut Client, kvs: Vec<(String, Vec<u8>)>) {
    let mut ops = Vec::new();
    let mut size = 0;
    for (k, v) in kvs {
        if !ops.is_empty() && (ops.len() == 100 || size + v.len() > (1 << 20)) {
            c.txn(Txn::new().and_then(std::mem::take(&mut ops)))
                .await
                .expect("txn");
            size = 0;
        }
        size += v.len();
        ops.push(TxnOp::put(k, v, None));
    }
    if !ops.is_empty() {
        c.txn(Txn::new().and_then(ops)).await.expect("txn");
    }
}

fn key(i: usize) -> String {
    format!("/registry/kind-{}/ns-{}/object-{i:05}", i % 7, i % 13)
}

/// Thousands of keys, values from 1 B to 1 MiB, several revisions of some,
/// deletions, a compaction, and writes after it.
async fn load(c: &mut Client) {
    let size = |i: usize| match i {
        _ if i % 1000 == 7 => 1 << 20,
        _ if i % 100 == 3 => 64 << 10,
        _ => 1 + (i * 37) % 2000,
    };
    put_all(
        c,
        (0..3000)
            .map(|i| (key(i), bytes(i as u64, size(i))))
            .collect(),
    )
    .await;
    // Second and third revisions of every fifth key.
    for round in 1..3u64 {
        put_all(
            c,
            (0..3000)
                .step_by(5)
                .map(|i| (key(i), bytes(i as u64 * 31 + round, size(i) / 2 + 1)))
                .collect(),
        )
        .await;
    }
    let middle = c.status().await.unwrap().header().unwrap().revision();
    for chunk in (0..3000).step_by(7).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk.iter().map(|&i| TxnOp::delete(key(i), None)).collect();
        c.txn(Txn::new().and_then(ops)).await.expect("delete txn");
    }
    c.compact(middle, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    put_all(
        c,
        (3000..3300)
            .map(|i| (key(i), bytes(i as u64, size(i))))
            .collect(),
    )
    .await;
    // A deletion as the very last write: the newest revision is a tombstone.
    c.delete(key(3001), None).await.expect("delete");
}

/// An etcd of the test's own holding keys `0..n`, key `i` with `size(i)`
/// bytes, and a client to it.
async fn etcd_with(n: usize, size: impl Fn(usize) -> usize) -> (Etcd, Client) {
    let mut etcd = Etcd::start();
    etcd.ready(true).await;
    let mut live = etcd.client().await;
    put_all(
        &mut live,
        (0..n).map(|i| (key(i), bytes(i as u64, size(i)))).collect(),
    )
    .await;
    (etcd, live)
}

/// A local repository with an `etcd:` section for `endpoints`.
pub(crate) async fn env_for(endpoints: &[&str]) -> VolumeEnv {
    with_etcd(VolumeEnv::new().await, endpoints)
}

fn with_etcd(env: VolumeEnv, endpoints: &[&str]) -> VolumeEnv {
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "etcd:\n  endpoints: [{}]\n  insecure: true\n",
        endpoints.join(", ")
    ));
    std::fs::write(&env.config, config).unwrap();
    env
}

fn etcdctl() -> std::path::PathBuf {
    which("etcdctl").unwrap_or_else(|| {
        panic!("etcdctl not found on PATH: install the Debian package `etcd-client` (./scripts/setup does)")
    })
}

pub(crate) fn free_peer_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// `etcdctl snapshot restore` with the hash check on (no --skip-hash-check).
fn etcdctl_restore(file: &Path, data_dir: &Path, name: &str, peer_url: &str) {
    let out = Command::new(etcdctl())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--name", name])
        .args(["--initial-cluster", &format!("{name}={peer_url}")])
        .args(["--initial-advertise-peer-urls", peer_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl snapshot restore refused drctl's file:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl VolumeEnv {
    /// `drctl --identity ID restore etcd BACKUP args…`
    fn restore_etcd(&self, backup: &str, args: &[&str]) -> (std::process::Output, String, String) {
        let mut all = vec!["restore", "etcd", backup];
        all.extend(args);
        harness::run(self.cmd(&all).arg("--identity").arg(&self.identity))
    }
}

#[tokio::test]
async fn etcd_backup_restores_with_etcdctl_to_the_same_keyspace_revision_and_hash() {
    let mut etcd = Etcd::start();
    etcd.ready(true).await;
    let mut live = etcd.client().await;
    load(&mut live).await;
    let env = env_for(&[&etcd.client_url]).await;

    let summary = env.json(&["backup", "etcd"]);
    assert_eq!(summary["status"], "complete", "{summary}");
    let revision = summary["revision"].as_i64().unwrap();
    let (now, original) = keyspace(&mut live, 0).await;
    assert_eq!(revision, now, "nothing wrote since the load: {summary}");
    assert!(original.len() > 2500, "{} keys", original.len());
    assert_eq!(summary["key_count"].as_i64(), Some(original.len() as i64));
    let live_hash = live.hash_kv(revision).await.unwrap().hash();
    assert_eq!(summary["hash_kv"].as_u64(), Some(u64::from(live_hash)));
    assert!(
        summary["compact_revision"].as_i64().unwrap() > 1,
        "{summary}"
    );
    assert_eq!(
        summary["bytes"].as_u64().unwrap(),
        summary["db_size"].as_u64().unwrap() + 32,
        "the trailer is kept"
    );
    let id = summary["backup_id"].as_str().unwrap();

    // The file, byte for byte as etcd streamed it: etcdctl checks its hash.
    // Someone planted a link under the helper file's name: it is not
    // followed. And the snapshot, every Secret of the cluster, is readable
    // by its owner only, whatever the umask (022 here).
    let file = env.ws.path("snapshot.db");
    let victim = env.ws.path("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    std::os::unix::fs::symlink(&victim, env.ws.path(".snapshot.db.drctl-part")).unwrap();
    let (out, stdout, stderr) = env.restore_etcd(id, &["--output", file.to_str().unwrap()]);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "snapshot mode {mode:o}");
    let status = Command::new(etcdctl())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["revision"].as_i64(), Some(revision), "{status}");
    let data = env.ws.path("restored-data");
    let peer = free_peer_url();
    etcdctl_restore(&file, &data, "restored", &peer);

    // A member on the restored data has every key, value and revision.
    etcd.stop();
    drop(live);
    let mut restored = Etcd::start_on(&data, "restored", &peer, env.ws.dir.path());
    restored.ready(true).await;
    let mut c = restored.client().await;
    let (rev, keys) = keyspace(&mut c, 0).await;
    assert_eq!(rev, revision);
    assert!(keys == original, "the restored keyspace differs");
    let hash = c.hash_kv(revision).await.unwrap().hash();
    assert_eq!(u64::from(hash), summary["hash_kv"].as_u64().unwrap());

    // The catalog holds what the backup recorded.
    let row: (serde_json::Value,) = sqlx::query_as(
        "SELECT attrs FROM backup_items WHERE backup_id = $1::uuid AND item = 'snapshot.db'",
    )
    .bind(id)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(row.0["revision"].as_i64(), Some(revision));
    assert_eq!(row.0["hash_kv"], summary["hash_kv"]);
    assert_eq!(row.0["member_id"], summary["member_id"]);
}

#[tokio::test]
async fn restore_makes_a_data_dir_and_verify_proves_the_keyspace() {
    let (etcd, mut live) = etcd_with(500, |i| 100 + i).await;
    let env = env_for(&[&etcd.client_url]).await;
    let summary = env.json(&["backup", "etcd", "--name", "prod-etcd"]);
    let id = summary["backup_id"].as_str().unwrap();
    let (_, original) = keyspace(&mut live, 0).await;

    // --verify: a throwaway etcd on the restored data answers as recorded.
    let (out, stdout, stderr) = env.restore_etcd(id, &["--verify", "-o", "json"]);
    assert!(out.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|c| c["outcome"] == "match"), "{report}");

    // --data-dir: a member's directory, and the steps after it.
    let dir = env.ws.path("member-1");
    let peer = free_peer_url();
    let (out, stdout, stderr) = env.restore_etcd(
        id,
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "--name",
            "m1",
            "--initial-cluster",
            &format!("m1={peer},m2=http://127.0.0.1:1,m3=http://127.0.0.1:2"),
            "--initial-advertise-peer-urls",
            &peer,
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("next steps"), "{stdout}");
    assert!(stdout.contains("other 2 members"), "{stdout}");
    assert!(dir.join("member").is_dir(), "{stdout}");

    // Into a directory that is not empty: refused, and it is left alone.
    let busy = env.ws.path("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), "old member data").unwrap();
    let (out, _, stderr) = env.restore_etcd(
        id,
        &[
            "--data-dir",
            busy.to_str().unwrap(),
            "--name",
            "m1",
            "--initial-cluster",
            &format!("m1={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(busy.join("keep")).unwrap(),
        "old member data"
    );
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    // Member flags that do not fit together are refused before any work.
    let (out, _, stderr) = env.restore_etcd(
        id,
        &[
            "--data-dir",
            env.ws.path("m9").to_str().unwrap(),
            "--name",
            "m9",
            "--initial-cluster",
            &format!("m1={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("does not list --name m9"), "{stderr}");

    // A volume restore of an etcd backup says which command to use.
    let (out, _, stderr) = env.restore(id, &env.ws.path("as-volume"));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("drctl restore etcd"), "{stderr}");

    // A single-member data dir starts with the keyspace (a member of
    // three would wait for the other two).
    etcd.stop();
    let single = env.ws.path("single");
    let peer2 = free_peer_url();
    let (out, stdout, stderr) = env.restore_etcd(
        id,
        &[
            "--data-dir",
            single.to_str().unwrap(),
            "--name",
            "s1",
            "--initial-cluster",
            &format!("s1={peer2}"),
            "--initial-advertise-peer-urls",
            &peer2,
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let mut s1 = Etcd::start_on(&single, "s1", &peer2, env.ws.dir.path());
    s1.ready(true).await;
    let (_, keys) = keyspace(&mut s1.client().await, 0).await;
    assert!(keys == original, "the restored keyspace differs");
}

/// The throwaway etcd of `--verify` holds every Secret of the cluster and
/// has no authentication: it must listen on no TCP port (any local user
/// could read it) and live in a directory only its owner can enter. An
/// `etcd` wrapper first on PATH records how it was started, then runs the
/// real one.
#[tokio::test]
async fn verify_runs_its_throwaway_etcd_on_unix_sockets_in_a_private_directory() {
    let (etcd, _live) = etcd_with(20, |_| 10).await;
    let env = env_for(&[&etcd.client_url]).await;
    let id = env.json(&["backup", "etcd"])["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let bin = env.ws.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = env.ws.path("etcd-started.txt");
    let wrapper = bin.join("etcd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{{ stat -c %a .; for a in \"$@\"; do echo \"$a\"; done; }} > {}\nexec {} \"$@\"\n",
            record.display(),
            harness::etcd::etcd_binary().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let (out, stdout, stderr) = harness::run(
        env.cmd(&["restore", "etcd", &id, "--verify", "-o", "json"])
            .arg("--identity")
            .arg(&env.identity)
            .env("PATH", path),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");

    let started = std::fs::read_to_string(&record).expect("the wrapper ran");
    let mut lines = started.lines();
    assert_eq!(
        lines.next(),
        Some("700"),
        "scratch directory mode: {started}"
    );
    let args: Vec<&str> = lines.collect();
    for flag in [
        "--listen-client-urls",
        "--listen-peer-urls",
        "--advertise-client-urls",
    ] {
        let at = args.iter().position(|a| *a == flag).expect(flag);
        assert!(
            args[at + 1].starts_with("unix://"),
            "{flag} {}: {started}",
            args[at + 1]
        );
    }
    assert!(
        !args
            .iter()
            .any(|a| a.contains("http://") || a.contains("https://")),
        "a TCP endpoint: {started}"
    );
}

#[tokio::test]
async fn verify_reports_a_keyspace_that_differs_from_the_record() {
    let (etcd, _live) = etcd_with(50, |_| 10).await;
    let env = env_for(&[&etcd.client_url]).await;
    let summary = env.json(&["backup", "etcd"]);
    let id: uuid::Uuid = summary["backup_id"].as_str().unwrap().parse().unwrap();

    // An authentic manifest (sealed with the repository's secret) whose
    // record disagrees with its snapshot: verify must say so.
    let secret = drctl::repo::RepoSecret::from_json(
        &std::fs::read(env.ws.path("repo-secret.json")).unwrap(),
    )
    .unwrap();
    let identity = drctl::repo::Identity::from_file(&env.identity).unwrap();
    let sealed = std::fs::read(env.repo().join(format!("manifests/{id}"))).unwrap();
    let mut m = drctl::repo::manifest::Manifest::open(id, &sealed, &secret, &identity).unwrap();
    let other = uuid::Uuid::now_v7();
    m.backup_id = other;
    let info = m.etcd.as_mut().unwrap();
    info.hash_kv = info.hash_kv.map(|h| h ^ 1);
    let recipients =
        drctl::repo::Recipients::parse(std::slice::from_ref(&env.ws.recipient)).unwrap();
    std::fs::write(
        env.repo().join(format!("manifests/{other}")),
        m.seal(&secret, &recipients),
    )
    .unwrap();
    let (out, stdout, stderr) = env.restore_etcd(&other.to_string(), &["--verify"]);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(stdout.contains("mismatch"), "{stdout}");
    assert!(
        stderr.contains("does not restore to what it recorded"),
        "{stderr}"
    );
}

// Multi-threaded: the proxy runs while this thread waits for drctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_stream_fails_the_backup() {
    let (etcd, _live) = etcd_with(300, |_| 4000).await;
    let upstream = etcd.client_url.trim_start_matches("http://").to_string();
    let proxy = FlipProxy::start(&upstream, 16 * 1024).await;
    let env = env_for(&[&proxy.url]).await;

    let (out, stdout, stderr) = harness::run(&mut env.cmd(&["backup", "etcd"]));
    assert_eq!(
        proxy.flipped(),
        1,
        "the proxy flipped no byte: {stdout}{stderr}"
    );
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(stderr.contains("SHA-256"), "{stderr}");
    assert!(stderr.contains("marked failed"), "{stderr}");

    let rows = env.json(&["backup", "list"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["status"], "failed");
    assert!(rows[0]["error"].as_str().unwrap().contains("SHA-256"));
    let manifests = std::fs::read_dir(env.repo().join("manifests"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(manifests, 0, "a failed backup stored a manifest");

    // Straight to etcd, the same backup completes.
    let env2 = env_for(&[&etcd.client_url]).await;
    assert_eq!(env2.json(&["backup", "etcd"])["status"], "complete");
}

#[tokio::test]
async fn consecutive_snapshots_of_a_slowly_changing_keyspace_share_most_chunks() {
    let n = 20_000;
    let (etcd, mut live) = etcd_with(n, |i| 500 + (i * 7) % 2500).await;
    let env = env_for(&[&etcd.client_url]).await;
    let first = env.json(&["backup", "etcd"]);
    // 1% of the keys change.
    put_all(
        &mut live,
        (0..n)
            .step_by(100)
            .map(|i| (key(i), bytes(i as u64 + 7, 500 + (i * 7) % 2500)))
            .collect(),
    )
    .await;
    let second = env.json(&["backup", "etcd"]);
    let (bytes_, new) = (
        second["bytes"].as_f64().unwrap(),
        second["new_bytes"].as_f64().unwrap(),
    );
    let shared = 1.0 - new / bytes_;
    eprintln!(
        "etcd dedup: DB {} MiB, second snapshot after 1% of keys changed: {:.1}% new, dedup ratio {:.2}",
        first["db_size"].as_u64().unwrap() >> 20,
        100.0 * new / bytes_,
        second["dedup_ratio"].as_f64().unwrap()
    );
    assert!(shared > 0.5, "only {:.0}% shared: {second}", shared * 100.0);
    assert!(second["revision"].as_i64() > first["revision"].as_i64());
}

#[tokio::test]
async fn members_that_cannot_be_backed_up_are_named_with_the_reason() {
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    // Nothing answers: an error that names the endpoint, and no backup.
    let env = env_for(&[&dead]).await;
    let (out, _, stderr) = harness::run(&mut env.cmd(&["backup", "etcd"]));
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&dead) && stderr.contains("unreachable"),
        "{stderr}"
    );
    assert_eq!(env.json(&["backup", "list"]).as_array().unwrap().len(), 0);

    // A member with a CORRUPT alarm is not snapshotted; NOSPACE is (the
    // data is sound, and a backup is most wanted then).
    let mut etcd = Etcd::start();
    etcd.ready(true).await;
    let mut c = etcd.client().await;
    let id = c.status().await.unwrap().header().unwrap().member_id();
    let env = env_for(&[&etcd.client_url]).await;
    c.alarm(
        AlarmAction::Activate,
        AlarmType::Nospace,
        Some({
            let mut o = AlarmOptions::new();
            o.with_member(id);
            o
        }),
    )
    .await
    .unwrap();
    let s = env.json(&["backup", "etcd"]);
    assert_eq!(s["status"], "complete", "{s}");
    c.alarm(
        AlarmAction::Activate,
        AlarmType::Corrupt,
        Some({
            let mut o = AlarmOptions::new();
            o.with_member(id);
            o
        }),
    )
    .await
    .unwrap();
    let (out, _, stderr) = harness::run(&mut env.cmd(&["backup", "etcd"]));
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("CORRUPT alarm"), "{stderr}");
    assert!(stderr.contains(&etcd.client_url), "{stderr}");
    drop(etcd);

    // A member of two whose peer died: it answers, but sees no leader.
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_peer_url(), free_peer_url());
    let cluster = format!("a={p1},b={p2}");
    let mut a = Etcd::spawn("a", &dir.path().join("a"), &p1, &cluster, dir.path(), &[]);
    let mut b = Etcd::spawn("b", &dir.path().join("b"), &p2, &cluster, dir.path(), &[]);
    a.ready(true).await;
    b.ready(true).await;
    b.stop();
    let mut c = a.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while c.status().await.unwrap().leader() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a kept a leader alone"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let env = env_for(&[&a.client_url]).await;
    let (out, _, stderr) = harness::run(&mut env.cmd(&["backup", "etcd"]));
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("sees no leader"), "{stderr}");
    assert_eq!(env.json(&["backup", "list"]).as_array().unwrap().len(), 0);

    // A dead endpoint listed first: the healthy one is used.
    let mut etcd = Etcd::start();
    etcd.ready(true).await;
    let env = env_for(&[&dead, &etcd.client_url]).await;
    let s = env.json(&["backup", "etcd"]);
    assert_eq!(s["endpoint"], etcd.client_url.as_str());

    // No etcd section at all.
    let env = VolumeEnv::new().await;
    let (out, _, stderr) = harness::run(&mut env.cmd(&["backup", "etcd"]));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no `etcd:` section"), "{stderr}");
}

/// `openssl` with `args`, in `dir`; fails the test with its output.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(which("openssl").expect("openssl on PATH (Debian package openssl)"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir`, and a certificate it signs for `leaf` with
/// the extensions `ext` (an openssl extfile line).
pub(crate) fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
        ],
    );
}

pub(crate) fn signed(dir: &Path, ca: &str, leaf: &str, ext: &str) {
    std::fs::write(dir.join(format!("{leaf}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
            "-subj",
            &format!("/CN={leaf}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{leaf}.crt"),
            "-extfile",
            &format!("{leaf}.ext"),
        ],
    );
}

#[tokio::test]
async fn tls_failures_name_the_file_and_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other-ca");
    signed(
        d,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
    let p = |f: &str| d.join(f).display().to_string();
    let peer = free_peer_url();
    let mut etcd = Etcd::spawn(
        "tls",
        &d.join("data"),
        &peer,
        &format!("tls={peer}"),
        d,
        &[
            "--cert-file".into(),
            p("server.crt"),
            "--key-file".into(),
            p("server.key"),
            "--trusted-ca-file".into(),
            p("ca.crt"),
            "--client-cert-auth".into(),
            "--test-client-cert".into(),
            p("client.crt"),
            "--test-client-key".into(),
            p("client.key"),
        ],
    );
    etcd.ready(true).await;
    let env = VolumeEnv::new().await;
    let base = std::fs::read_to_string(&env.config).unwrap();
    let configure = |ca: &str, cert: &str, key: &str| {
        let mut c = base.clone();
        c.push_str(&format!(
            "etcd:\n  endpoints: [{}]\n  ca_file: {}\n  cert_file: {}\n  key_file: {}\n",
            etcd.client_url,
            p(ca),
            p(cert),
            p(key)
        ));
        std::fs::write(&env.config, c).unwrap();
    };

    // The right files: a backup over TLS with a client certificate.
    configure("ca.crt", "client.crt", "client.key");
    let s = env.json(&["backup", "etcd"]);
    assert_eq!(s["status"], "complete", "{s}");
    assert!(s["endpoint"].as_str().unwrap().starts_with("https://"));

    // A CA that did not sign the server: which file, which check.
    configure("other-ca.crt", "client.crt", "client.key");
    let (out, _, stderr) = harness::run(&mut env.cmd(&["backup", "etcd"]));
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("not signed by etcd.ca_file") && stderr.contains(&p("other-ca.crt")),
        "{stderr}"
    );

    // A key given as the certificate: refused by name before connecting.
    configure("ca.crt", "client.key", "client.key");
    let (out, _, stderr) = harness::run(&mut env.cmd(&["backup", "etcd"]));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("etcd.cert_file") && stderr.contains("holds no PEM CERTIFICATE"),
        "{stderr}"
    );
    let key = std::fs::read_to_string(d.join("client.key")).unwrap();
    let lines: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    harness::assert_no_secret(&stderr, &lines);

    // A client certificate etcd does not trust (signed by another CA).
    signed(d, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n");
    configure("ca.crt", "stranger.crt", "stranger.key");
    let (out, _, stderr) = harness::run(&mut env.cmd(&["backup", "etcd"]));
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        // Refused in the handshake (an alert) or at the first request (a
        // closed connection, with TLS 1.3): the error names the file either way.
        stderr.contains("client certificate")
            && stderr.contains(&format!("etcd.cert_file {}", p("stranger.crt"))),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_etcd_backup_in_s3_is_locked_and_verifies() {
    let (etcd, _live) = etcd_with(200, |_| 3000).await;
    let bucket = harness::locked_bucket().await;
    let env = VolumeEnv::s3(&harness::services().s3_endpoint, &bucket.name, 2).await;
    let env = with_etcd(env, &[&etcd.client_url]);
    let s = env.json(&["backup", "etcd"]);
    assert_eq!(s["status"], "complete", "{s}");

    // Every object, manifest and packs alike, locked past the retention.
    let list = bucket
        .client
        .list_object_versions()
        .bucket(&bucket.name)
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = list.versions().iter().filter_map(|v| v.key()).collect();
    assert!(keys.iter().any(|k| k.starts_with("manifests/")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("packs/")), "{keys:?}");
    let floor = chrono::Utc::now() + chrono::Duration::hours(47);
    for v in list.versions() {
        let head = bucket
            .client
            .head_object()
            .bucket(&bucket.name)
            .key(v.key().unwrap())
            .version_id(v.version_id().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode(),
            Some(&aws_sdk_s3::types::ObjectLockMode::Compliance),
            "{:?}",
            v.key()
        );
        let until = head.object_lock_retain_until_date().unwrap();
        assert!(
            until.secs() > floor.timestamp(),
            "{:?} locked too short",
            v.key()
        );
    }
    env.ok(&["verify", "--storage"]);
    let (out, stdout, stderr) = env.restore_etcd(s["backup_id"].as_str().unwrap(), &["--verify"]);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("equals the backed-up one"), "{stdout}");
}

/// docs/runbook.md's "etcd is lost", run as written: the backup is proven,
/// then a member's data directory is made from it.
#[tokio::test]
async fn recipe_etcd_lost() {
    let (etcd, _live) = etcd_with(30, |_| 50).await;
    let env = env_for(&[&etcd.client_url]).await;
    env.json(&["backup", "etcd", "--name", "prod-etcd"]);
    let scratch = env.ws.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let peer = free_peer_url();
    let (out, stdout, stderr) = harness::run_recipe(
        "etcd-lost",
        &env.config,
        &env.identity,
        &[
            ("ETCD", "prod-etcd"),
            ("SCRATCH", scratch.to_str().unwrap()),
            ("PEER_URL", &peer),
        ],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("match"), "{stdout}");
    assert!(scratch.join("member-1/member/snap/db").exists(), "{stdout}");
}
