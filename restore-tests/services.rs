//! Each real service is really there and behaves as drctl relies on.

use std::time::Duration;

use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};
use drctl::config::EtcdConfig;

use crate::harness;

#[tokio::test]
async fn s3_server_enforces_object_lock() {
    let bucket = harness::locked_bucket().await;
    let s3 = &bucket.client;
    let until = chrono::Utc::now() + chrono::Duration::days(1);
    let put = s3
        .put_object()
        .bucket(&bucket.name)
        .key("packs/locked")
        .body(ByteStream::from_static(b"immutable bytes"))
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(DateTime::from_secs(until.timestamp()))
        .send()
        .await
        .expect("put a locked object");
    let version = put
        .version_id()
        .expect("a lock bucket is versioned")
        .to_string();

    let head = s3
        .head_object()
        .bucket(&bucket.name)
        .key("packs/locked")
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    assert_eq!(
        head.object_lock_retain_until_date().map(|d| d.secs()),
        Some(until.timestamp())
    );

    let deleted = s3
        .delete_object()
        .bucket(&bucket.name)
        .key("packs/locked")
        .version_id(&version)
        .send()
        .await;
    let err = deleted.expect_err("deleting a COMPLIANCE-locked version must be refused");
    let code = err.into_service_error().meta().code().map(str::to_string);
    assert_eq!(code.as_deref(), Some("AccessDenied"));

    let body = s3
        .get_object()
        .bucket(&bucket.name)
        .key("packs/locked")
        .version_id(&version)
        .send()
        .await
        .expect("the locked version is still there")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&body[..], b"immutable bytes");
}

#[tokio::test]
async fn s3_server_does_not_lock_objects_unless_asked() {
    // What a lock bucket does with a plain PUT: the object gets no lock unless
    // asked, so drctl must set the lock on every PUT itself.
    let bucket = harness::locked_bucket().await;
    let s3 = &bucket.client;
    s3.put_object()
        .bucket(&bucket.name)
        .key("plain")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    let head = s3
        .head_object()
        .bucket(&bucket.name)
        .key("plain")
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), None);
}

#[tokio::test]
async fn etcd_answers_kv_and_maintenance_through_etcd_client() {
    let cfg = EtcdConfig {
        endpoints: harness::services().etcd_endpoints.clone(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        insecure: true,
    };
    let mut client = drctl::source::etcd::connect(&cfg)
        .await
        .expect("connect to etcd");
    let prefix = harness::etcd_prefix();
    let key = format!("{prefix}registry/configmaps/default/a");
    client.put(key.as_str(), "value-1", None).await.unwrap();
    let got = client.get(key.as_str(), None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(kv.value(), b"value-1");

    let status = client.status().await.expect("maintenance status");
    assert!(
        status.version().starts_with("3."),
        "version {}",
        status.version()
    );
    assert!(status.db_size() > 0);
    assert!(got.header().unwrap().revision() >= kv.mod_revision());

    let hash = client.hash_kv(0).await.expect("hash_kv");
    assert!(hash.header().unwrap().revision() >= kv.mod_revision());
}

#[tokio::test]
async fn unreachable_etcd_is_reported_with_endpoint_and_guidance() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        ca_file: None,
        cert_file: None,
        key_file: None,
        insecure: true,
    };
    let result = tokio::time::timeout(Duration::from_secs(30), drctl::source::etcd::connect(&cfg))
        .await
        .expect("fails within the connect timeout");
    let Err(err) = result else {
        panic!("nothing listens on port {port}, yet connect succeeded")
    };
    assert_eq!(err.kind(), drctl::ErrorKind::Unavailable);
    assert!(err.what().contains(&format!("127.0.0.1:{port}")), "{err:?}");
    assert!(err.guidance().is_some_and(|g| g.contains("reachable")));
}
