//! The fault-injecting proxy of the harness, against the real S3 server: it
//! is transparent when it injects nothing, each fault reaches the AWS SDK as
//! the failure it stands for, and the SDK's retries get through it. Tests of
//! drctl under faults rely on all three.

use std::io::{Read, Write};
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;

use crate::harness::fault_proxy::{FaultProxy, FaultStats, Faults};
use crate::harness::{self, TestBucket};

/// An S3 client for the test server through `proxy`, like `harness::s3_client`.
fn client_via(proxy: &FaultProxy, retry: RetryConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&proxy.endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "drctl-tests"))
        .retry_config(retry)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn proxy(faults: Faults) -> FaultProxy {
    FaultProxy::start(&harness::services().s3_endpoint, faults)
}

async fn put(
    s3: &aws_sdk_s3::Client,
    bucket: &TestBucket,
    key: &str,
    bytes: &[u8],
) -> Result<(), SdkError<aws_sdk_s3::operation::put_object::PutObjectError>> {
    s3.put_object()
        .bucket(&bucket.name)
        .key(key)
        .body(ByteStream::from(bytes.to_vec()))
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .map(drop)
}

async fn get(s3: &aws_sdk_s3::Client, bucket: &TestBucket, key: &str) -> Vec<u8> {
    s3.get_object()
        .bucket(&bucket.name)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
        .body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("read {key}: {e:?}"))
        .into_bytes()
        .to_vec()
}

/// Bytes that differ per object and are not all alike.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(131)) as u8)
        .collect()
}

/// Without faults the proxy changes nothing a signed S3 request carries: puts
/// with checksums to an Object Lock bucket and gets return the same bytes, on
/// one kept-alive connection like the SDK uses against real S3.
#[tokio::test]
async fn without_faults_objects_round_trip_through_the_proxy() {
    let bucket = harness::locked_bucket().await;
    let proxy = proxy(Faults::none());
    let s3 = client_via(&proxy, RetryConfig::disabled());
    let objects: Vec<(String, Vec<u8>)> = [0, 1, 100_000, 3 << 20]
        .into_iter()
        .enumerate()
        .map(|(i, len)| (format!("packs/{i:02}"), payload(i, len)))
        .collect();
    for (key, bytes) in &objects {
        put(&s3, &bucket, key, bytes)
            .await
            .unwrap_or_else(|e| panic!("put {key} through the proxy: {e:?}"));
    }
    for (key, bytes) in &objects {
        let got = get(&s3, &bucket, key).await;
        assert!(
            got == *bytes,
            "{key}: {} bytes back, not the {} put",
            got.len(),
            bytes.len()
        );
    }
    // What went through the proxy is really on the server.
    for (key, bytes) in &objects {
        assert!(
            get(&bucket.client, &bucket, key).await == *bytes,
            "{key} on the server"
        );
    }

    let stats = proxy.stats();
    let n = 2 * objects.len() as u64;
    assert_eq!(
        stats,
        FaultStats {
            connections: stats.connections,
            requests: n,
            forwarded: n,
            ..FaultStats::default()
        }
    );
    assert!(
        stats.connections < stats.requests,
        "the client's connection is kept alive: {stats:?}"
    );
}

/// `503 SlowDown` and `500 InternalError` reach the SDK as S3 service errors
/// with their code and status — what drctl's retry and error reporting see
/// from real S3 under load.
#[tokio::test]
async fn injected_s3_errors_reach_the_sdk_with_code_and_status() {
    let bucket = harness::locked_bucket().await;

    let slow = proxy(Faults {
        slow_down: 1.0,
        ..Faults::none()
    });
    let err = put(
        &client_via(&slow, RetryConfig::disabled()),
        &bucket,
        "k",
        b"x",
    )
    .await
    .expect_err("every request is slowed down");
    assert_eq!(err.code(), Some("SlowDown"), "{err:?}");
    assert_eq!(err.message(), Some("Please reduce your request rate."));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(slow.stats().slow_down, 1);
    assert_eq!(slow.stats().forwarded, 0);

    let broken = proxy(Faults {
        internal_error: 1.0,
        ..Faults::none()
    });
    let s3 = client_via(&broken, RetryConfig::disabled());
    let err = s3
        .get_object()
        .bucket(&bucket.name)
        .key("k")
        .send()
        .await
        .expect_err("every request fails");
    assert_eq!(err.code(), Some("InternalError"), "{err:?}");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    let err = put(&s3, &bucket, "k", b"x")
        .await
        .expect_err("puts fail too");
    assert_eq!(err.code(), Some("InternalError"), "{err:?}");
    assert_eq!(broken.stats().internal_error, 2);
    assert_eq!(broken.stats().forwarded, 0);

    // Nothing reached the server.
    let listed = bucket
        .client
        .list_objects_v2()
        .bucket(&bucket.name)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(0));
}

/// A connection closed without an answer is a dispatch failure, not a
/// response, and the next request gets a fresh connection that works: the
/// SDK's pooled connections survive a peer hanging up.
#[tokio::test]
async fn a_dropped_connection_is_a_dispatch_failure_and_the_next_request_works() {
    let bucket = harness::locked_bucket().await;
    let proxy = proxy(Faults {
        drop: 1.0,
        seed: 3,
        ..Faults::none()
    });
    let s3 = client_via(&proxy, RetryConfig::disabled());

    proxy.set_enabled(false);
    put(&s3, &bucket, "before", b"first")
        .await
        .expect("injection is off");
    proxy.set_enabled(true);

    // On the kept-alive connection of the put, then with a body to send.
    let err = s3
        .get_object()
        .bucket(&bucket.name)
        .key("before")
        .send()
        .await
        .expect_err("the connection is dropped");
    let SdkError::DispatchFailure(failure) = &err else {
        panic!("a dropped connection is not a dispatch failure: {err:?}")
    };
    assert!(err.raw_response().is_none());
    // A close with nothing to read is hyper's IncompleteMessage, which the SDK
    // classifies "other", kind transient; a reset (unread request body) is
    // "io". Both are retried. (The SDK does not re-export `ErrorKind`.)
    assert!(
        failure.is_io() || format!("{:?}", failure.as_other()) == "Some(TransientError)",
        "a dropped connection is not retryable: {failure:?}"
    );
    let err = put(&s3, &bucket, "during", &payload(1, 200_000))
        .await
        .expect_err("the connection is dropped");
    assert!(
        matches!(err, SdkError::DispatchFailure(_)),
        "a dropped put is not a dispatch failure: {err:?}"
    );

    proxy.set_enabled(false);
    assert_eq!(get(&s3, &bucket, "before").await, b"first");
    put(&s3, &bucket, "after", b"second")
        .await
        .expect("put after the drops");
    assert_eq!(get(&bucket.client, &bucket, "after").await, b"second");

    let stats = proxy.stats();
    assert_eq!(stats.dropped, 2, "{stats:?}");
    assert_eq!(stats.forwarded, 3, "{stats:?}");
    assert!(
        stats.connections >= 3,
        "each drop costs a connection: {stats:?}"
    );
}

/// With a share of every fault, the SDK's standard retries get every put
/// through: faults of all kinds happen and none is fatal. This is the path
/// drctl's S3 repository takes when S3 throttles or the network hiccups.
#[tokio::test]
async fn standard_retries_get_every_put_through_a_faulty_proxy() {
    let bucket = harness::locked_bucket().await;
    let proxy = proxy(Faults {
        slow_down: 0.1,
        internal_error: 0.1,
        drop: 0.1,
        delay: 0.3,
        seed: 42,
    });
    // The standard policy; a short first backoff keeps the test quick.
    let retry = RetryConfig::standard()
        .with_max_attempts(10)
        .with_initial_backoff(Duration::from_millis(50));
    let s3 = client_via(&proxy, retry);

    let mut puts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (s3, name) = (s3.clone(), bucket.name.clone());
        puts.spawn(async move {
            let key = format!("packs/{i:02}");
            s3.put_object()
                .bucket(&name)
                .key(&key)
                .body(ByteStream::from(payload(i, 10_000 + i * 1000)))
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {key} despite retries: {e:?}"));
        });
    }
    while let Some(done) = puts.join_next().await {
        done.expect("a put task");
    }

    // At least 20 requests were made, and with seed 42 the fates of the first
    // 20 include every kind: these counts do not depend on timing.
    let stats = proxy.stats();
    assert!(stats.slow_down > 0, "{stats:?}");
    assert!(stats.internal_error > 0, "{stats:?}");
    assert!(stats.dropped > 0, "{stats:?}");
    assert!(stats.delayed > 0, "{stats:?}");
    assert_eq!(stats.upstream_errors, 0, "{stats:?}");
    assert_eq!(
        stats.requests,
        stats.forwarded + stats.faults(),
        "{stats:?}"
    );
    assert!(stats.forwarded >= 20, "{stats:?}");

    // Every object is there, whole.
    proxy.set_enabled(false);
    for i in 0..20 {
        let got = get(&s3, &bucket, &format!("packs/{i:02}")).await;
        assert!(got == payload(i, 10_000 + i * 1000), "packs/{i:02}");
    }
}

/// The proxy forwards the request target and every header verbatim —
/// `Host` above all, which SigV4 signs (moto does not check signatures, so
/// this is shown with a server that echoes what it got) — and drops only
/// the headers about the connection itself. It also starts from sync code.
#[test]
fn forwards_host_path_query_and_headers_verbatim() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            conn.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let mut body = vec![0u8; 5];
        conn.read_exact(&mut body).unwrap();
        head.extend_from_slice(&body);
        write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-echo: yes\r\nconnection: close\r\n\r\n",
            head.len()
        )
        .unwrap();
        conn.write_all(&head).unwrap();
    });

    let proxy = FaultProxy::start(&upstream_url, Faults::none());
    let addr = proxy.endpoint.trim_start_matches("http://");
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    client
        .write_all(
            b"PUT /bucket/a%2Fkey?x-id=PutObject&partNumber=2 HTTP/1.1\r\n\
              Host: bucket.s3.example.com:9000\r\n\
              X-Amz-Date: 20250101T000000Z\r\n\
              Authorization: AWS4-HMAC-SHA256 Credential=test\r\n\
              Keep-Alive: timeout=5\r\n\
              Content-Length: 5\r\n\
              Connection: close\r\n\r\nhello",
        )
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    echo.join().unwrap();

    let (head, echoed) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok"), "{answer}");
    assert!(head.contains("x-echo: yes"), "{answer}");
    let echoed = echoed.to_ascii_lowercase();
    assert!(
        echoed.starts_with("put /bucket/a%2fkey?x-id=putobject&partnumber=2 http/1.1\r\n"),
        "{echoed}"
    );
    for line in [
        "host: bucket.s3.example.com:9000\r\n",
        "x-amz-date: 20250101t000000z\r\n",
        "authorization: aws4-hmac-sha256 credential=test\r\n",
        "content-length: 5\r\n",
    ] {
        assert!(echoed.contains(line), "{line:?} not forwarded:\n{echoed}");
    }
    assert!(!echoed.contains("keep-alive"), "{echoed}");
    assert!(echoed.ends_with("\r\n\r\nhello"), "{echoed}");
    assert_eq!(proxy.stats().forwarded, 1);
}
