//! A repository in an S3 bucket with Object Lock.
//!
//! Every object is written once (`If-None-Match: *`), with its SHA-256 as the
//! checksum header and a COMPLIANCE (or GOVERNANCE) retain-until: neither the
//! credentials drctl runs with nor anyone who steals them can delete or
//! alter it before that date. The bucket must have versioning (Object Lock
//! needs it), so a writer can still add a *new version* under an existing
//! key; reads therefore check every object against its hash, and a pack whose
//! newest version does not match is read from the version that does.
//!
//! Retries are the AWS SDK's standard mode (exponential backoff with full
//! jitter on throttling, 5xx, timeouts and connection errors), with more
//! attempts than its default: a backup should ride out a flaky network, not
//! fail on the third 503. Concurrency is bounded by a semaphore shared by all
//! callers.
//!
//! The [`Store`] trait is blocking; this backend drives its own small tokio
//! runtime. Each call blocks on it from a scoped thread, so it is safe from
//! any caller, async ones included.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode,
};
use base64::Engine;
use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

use super::{ObjectMeta, PutOptions, Store, sha256};
use crate::config::{LockMode, S3Config};
use crate::error::{Error, ErrorKind, Result};

/// Requests in flight at once, across all callers.
const MAX_IN_FLIGHT: usize = 8;
/// Attempts per request (the first and the retries).
const MAX_ATTEMPTS: u32 = 10;
/// Objects above this size go up in parts.
pub const MULTIPART_THRESHOLD: usize = 64 << 20;
/// Part size of multipart uploads.
const PART_SIZE: usize = 16 << 20;

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    mode: LockMode,
    /// Lock length of an object put without a retain-until of its own.
    default_retention: chrono::Duration,
    multipart_threshold: usize,
    permits: Semaphore,
    rt: Option<tokio::runtime::Runtime>,
}

impl S3Store {
    /// Builds a client from the configuration and the standard AWS chain
    /// (environment, profile, web identity, instance metadata).
    pub fn connect(cfg: &S3Config) -> Result<S3Store> {
        let rt = runtime()?;
        let region = cfg.region.clone();
        let endpoint = cfg.endpoint.clone();
        let path_style = cfg.force_path_style;
        let client = in_thread(&rt, async move {
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .retry_config(
                    RetryConfig::standard()
                        .with_max_attempts(MAX_ATTEMPTS)
                        .with_initial_backoff(Duration::from_millis(100))
                        .with_max_backoff(Duration::from_secs(10)),
                )
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .read_timeout(Duration::from_secs(60))
                        .operation_attempt_timeout(Duration::from_secs(300))
                        .build(),
                );
            if let Some(r) = region {
                loader = loader.region(Region::new(r));
            }
            let shared = loader.load().await;
            let mut b = aws_sdk_s3::config::Builder::from(&shared).force_path_style(path_style);
            if shared.region().is_none() {
                // S3-compatible servers mostly ignore it; the SDK needs one.
                b = b.region(Region::new("us-east-1"));
            }
            if let Some(e) = endpoint {
                b = b.endpoint_url(e);
            }
            Client::from_conf(b.build())
        });
        Ok(S3Store::new(client, cfg, rt))
    }

    /// A store on a client built elsewhere (its own credentials, retries).
    pub fn with_client(client: Client, cfg: &S3Config) -> Result<S3Store> {
        let rt = runtime()?;
        Ok(S3Store::new(client, cfg, rt))
    }

    fn new(client: Client, cfg: &S3Config, rt: tokio::runtime::Runtime) -> S3Store {
        S3Store {
            client,
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            mode: cfg.lock_mode,
            default_retention: chrono::Duration::days(i64::from(cfg.retention_days)),
            multipart_threshold: MULTIPART_THRESHOLD,
            permits: Semaphore::new(MAX_IN_FLIGHT),
            rt: Some(rt),
        }
    }

    /// Objects above `bytes` go up in parts (tests make it small).
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(self.prefix.as_str()).unwrap_or(full)
    }

    fn lock_mode(&self) -> ObjectLockMode {
        match self.mode {
            LockMode::Compliance => ObjectLockMode::Compliance,
            LockMode::Governance => ObjectLockMode::Governance,
        }
    }

    /// Runs `f` on the runtime with a permit, from a scoped thread.
    fn call<T: Send, F: Future<Output = T> + Send>(&self, f: F) -> T {
        let rt = self
            .rt
            .as_ref()
            .expect("runtime lives as long as the store");
        in_thread(rt, async {
            let _permit = self.permits.acquire().await.expect("never closed");
            f.await
        })
    }

    /// Checks that the bucket can hold a repository: Object Lock and
    /// versioning on, and no default retention (it would lock objects for a
    /// period drctl does not choose, keeping garbage past its time, or
    /// shorter than a backup's). With `create`, a missing bucket is created
    /// correctly.
    pub fn check_bucket(&self, create: bool) -> Result<()> {
        let bucket = self.bucket.clone();
        let lock = self.call(async {
            self.client
                .get_object_lock_configuration()
                .bucket(&bucket)
                .send()
                .await
        });
        let lock = match lock {
            Ok(out) => out,
            Err(e) if e.code() == Some("NoSuchBucket") && create => {
                self.call(async {
                    self.client
                        .create_bucket()
                        .bucket(&bucket)
                        .object_lock_enabled_for_bucket(true)
                        .send()
                        .await
                })
                .map_err(|e| s3_error(e, format!("cannot create bucket {bucket}")))?;
                tracing::info!(bucket = %bucket, "created the bucket with Object Lock");
                return self.check_bucket(false);
            }
            Err(e) if e.code() == Some("NoSuchBucket") => {
                return Err(Error::config(format!("bucket {bucket} does not exist"))
                    .with_guidance(format!(
                        "run `drctl repo init --create-bucket` to create it with Object Lock, or: \
                         aws s3api create-bucket --bucket {bucket} --object-lock-enabled-for-bucket"
                    )));
            }
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => {
                return Err(Error::config(format!(
                    "bucket {bucket} does not have Object Lock enabled; its objects could be deleted or overwritten"
                ))
                .with_guidance(format!(
                    "enable versioning, then Object Lock: aws s3api put-bucket-versioning --bucket {bucket} \
                     --versioning-configuration Status=Enabled && aws s3api put-object-lock-configuration \
                     --bucket {bucket} --object-lock-configuration '{{\"ObjectLockEnabled\":\"Enabled\"}}'"
                )));
            }
            Err(e) => {
                return Err(s3_error(
                    e,
                    format!("cannot read the Object Lock configuration of bucket {bucket}"),
                ));
            }
        };
        let cfg = lock.object_lock_configuration();
        let enabled = cfg
            .and_then(|c| c.object_lock_enabled())
            .is_some_and(|s| s.as_str() == "Enabled");
        if !enabled {
            return Err(Error::config(format!(
                "bucket {bucket} does not have Object Lock enabled"
            ))
            .with_guidance(format!(
                "aws s3api put-object-lock-configuration --bucket {bucket} \
                 --object-lock-configuration '{{\"ObjectLockEnabled\":\"Enabled\"}}'"
            )));
        }
        if let Some(rule) = cfg.and_then(|c| c.rule()) {
            let days = rule.default_retention().map(|d| {
                format!(
                    "{} {} days / {} years",
                    d.mode().map(|m| m.as_str()).unwrap_or("?"),
                    d.days().unwrap_or(0),
                    d.years().unwrap_or(0)
                )
            });
            return Err(Error::config(format!(
                "bucket {bucket} has a default retention ({}); drctl sets each object's lock itself",
                days.unwrap_or_default()
            ))
            .with_guidance(format!(
                "remove the default rule (Object Lock stays on): aws s3api put-object-lock-configuration \
                 --bucket {bucket} --object-lock-configuration '{{\"ObjectLockEnabled\":\"Enabled\"}}'"
            )));
        }
        let status = match self.call(async {
            self.client
                .get_bucket_versioning()
                .bucket(&bucket)
                .send()
                .await
        }) {
            Ok(v) => v.status().map(|s| s.as_str().to_string()),
            // Some S3-compatible servers (moto among them) name the root
            // element of this answer differently, which the SDK refuses:
            // read the status from the body itself.
            Err(e) if e.raw_response().is_some_and(|r| r.status().is_success()) => {
                let raw = e.raw_response().expect("checked above");
                let body = raw
                    .body()
                    .bytes()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                tracing::debug!(code = ?e.code(), "versioning answer not understood by the SDK; reading it directly");
                body.split_once("<Status>")
                    .and_then(|(_, rest)| rest.split_once("</Status>"))
                    .map(|(s, _)| s.to_string())
            }
            Err(e) => {
                return Err(s3_error(
                    e,
                    format!("cannot read the versioning of bucket {bucket}"),
                ));
            }
        };
        if status.as_deref() != Some("Enabled") {
            return Err(Error::config(format!("bucket {bucket} does not have versioning enabled"))
                .with_guidance(format!(
                    "aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled"
                )));
        }
        Ok(())
    }

    fn put_single(
        &self,
        full: &str,
        data: &[u8],
        checksum: &str,
        until: aws_sdk_s3::primitives::DateTime,
    ) -> std::result::Result<Option<String>, Error> {
        let out = self
            .call(async {
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .body(ByteStream::from(data.to_vec()))
                    .if_none_match("*")
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .checksum_sha256(checksum)
                    .object_lock_mode(self.lock_mode())
                    .object_lock_retain_until_date(until)
                    .send()
                    .await
            })
            .map_err(|e| put_error(e, full))?;
        Ok(out.version_id().map(str::to_string))
    }

    fn put_multipart(
        &self,
        full: &str,
        data: &[u8],
        until: aws_sdk_s3::primitives::DateTime,
    ) -> std::result::Result<Option<String>, Error> {
        let created = self
            .call(async {
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .object_lock_mode(self.lock_mode())
                    .object_lock_retain_until_date(until)
                    .send()
                    .await
            })
            .map_err(|e| s3_error(e, format!("cannot start the upload of {full}")))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = (|| {
            let mut parts = Vec::new();
            for (i, part) in data.chunks(PART_SIZE).enumerate() {
                let number = i as i32 + 1;
                let checksum = b64(&sha256(part));
                let out = self
                    .call(async {
                        self.client
                            .upload_part()
                            .bucket(&self.bucket)
                            .key(full)
                            .upload_id(&upload_id)
                            .part_number(number)
                            .body(ByteStream::from(part.to_vec()))
                            .checksum_algorithm(ChecksumAlgorithm::Sha256)
                            .checksum_sha256(&checksum)
                            .send()
                            .await
                    })
                    .map_err(|e| s3_error(e, format!("cannot upload part {number} of {full}")))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .checksum_sha256(checksum)
                        .build(),
                );
            }
            let done = self
                .call(async {
                    self.client
                        .complete_multipart_upload()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(&upload_id)
                        .if_none_match("*")
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .set_parts(Some(parts))
                                .build(),
                        )
                        .send()
                        .await
                })
                .map_err(|e| put_error(e, full))?;
            Ok(done.version_id().map(str::to_string))
        })();
        if result.is_err() {
            let _ = self.call(async {
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .send()
                    .await
            });
        }
        result
    }

    fn get_object(
        &self,
        key: &str,
        version: Option<&str>,
        range: Option<Range<u64>>,
    ) -> Result<Vec<u8>> {
        let full = self.full_key(key);
        self.call(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .set_version_id(version.map(str::to_string))
                .set_range(
                    range
                        .as_ref()
                        .map(|r| format!("bytes={}-{}", r.start, r.end.saturating_sub(1))),
                )
                .send()
                .await
                .map_err(|e| match e.code() {
                    Some("NoSuchKey") | Some("NoSuchVersion") => {
                        Error::new(ErrorKind::NotFound, format!("object {key} does not exist"))
                    }
                    _ => s3_error(e, format!("cannot read object {key}")),
                })?;
            // Into one buffer of the announced size as the body streams in:
            // collecting first and joining after would hold a pack twice.
            let mut data = Vec::with_capacity(out.content_length().unwrap_or(0).max(0) as usize);
            let mut body = out.body;
            let broke = |e: aws_sdk_s3::primitives::ByteStreamError| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("reading object {key} broke off"),
                )
                .with_source(e)
            };
            while let Some(piece) = body.try_next().await.map_err(broke)? {
                data.extend_from_slice(&piece);
            }
            Ok(data)
        })
    }

    fn head_object(&self, key: &str, version: Option<&str>) -> Result<Option<ObjectMeta>> {
        let full = self.full_key(key);
        let out = self.call(async {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .set_version_id(version.map(str::to_string))
                .send()
                .await
        });
        match out {
            Ok(h) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: h.content_length().unwrap_or(0).max(0) as u64,
                version_id: h.version_id().map(str::to_string),
                retain_until: h.object_lock_retain_until_date().and_then(from_s3_time),
                lock_mode: h.object_lock_mode().map(|m| m.as_str().to_string()),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(s3_error(e, format!("cannot read the metadata of {key}"))),
        }
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for S3Store {
    fn put(&self, key: &str, data: &[u8], opts: &PutOptions) -> Result<ObjectMeta> {
        super::check_checksum(key, data, opts)?;
        let until = opts
            .retain_until
            .unwrap_or_else(|| Utc::now() + self.default_retention);
        let until_s3 = to_s3_time(until);
        let full = self.full_key(key);
        let version = if data.len() > self.multipart_threshold {
            let version = self.put_multipart(&full, data, until_s3)?;
            // The lock requested when the upload started is checked on the
            // object it became, and set if the server left it off (moto does;
            // S3 does not): no object drctl writes goes unlocked.
            self.extend_retention(key, version.as_deref(), until)?;
            version
        } else {
            self.put_single(&full, data, &b64(&opts.sha256), until_s3)?
        };
        Ok(ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            version_id: version,
            retain_until: Some(until),
            lock_mode: Some(self.lock_mode().as_str().to_string()),
        })
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.get_object(key, None, None)
    }

    fn get_version(&self, key: &str, version: &str) -> Result<Vec<u8>> {
        self.get_object(key, Some(version), None)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        self.get_object(key, None, Some(range))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.head_object(key, None)
    }

    fn head_version(&self, key: &str, version: &str) -> Result<Option<ObjectMeta>> {
        self.head_object(key, Some(version))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(async {
                    self.client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(&full)
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                })
                .map_err(|e| {
                    s3_error(e, format!("cannot list {prefix} in bucket {}", self.bucket))
                })?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                out.push(ObjectMeta {
                    key: self.strip(k).to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    version_id: None,
                    retain_until: None,
                    lock_mode: None,
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn versions(&self, key: &str) -> Result<Vec<ObjectMeta>> {
        let full = self.full_key(key);
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .call(async {
                    self.client
                        .list_object_versions()
                        .bucket(&self.bucket)
                        .prefix(&full)
                        .set_key_marker(key_marker.clone())
                        .set_version_id_marker(version_marker.clone())
                        .send()
                        .await
                })
                .map_err(|e| s3_error(e, format!("cannot list the versions of {key}")))?;
            for v in page.versions() {
                if v.key() != Some(full.as_str()) {
                    continue;
                }
                out.push((
                    v.last_modified().and_then(from_s3_time),
                    ObjectMeta {
                        key: key.to_string(),
                        size: v.size().unwrap_or(0).max(0) as u64,
                        version_id: v.version_id().map(str::to_string),
                        retain_until: None,
                        lock_mode: None,
                    },
                ));
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                version_marker = page.next_version_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        out.sort_by_key(|v| std::cmp::Reverse(v.0));
        Ok(out.into_iter().map(|(_, m)| m).collect())
    }

    fn delete(&self, key: &str, version: Option<&str>) -> Result<()> {
        let full = self.full_key(key);
        self.call(async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .set_version_id(version.map(str::to_string))
                .send()
                .await
        })
        .map_err(|e| s3_error(e, format!("cannot delete {key}")))?;
        Ok(())
    }

    fn extend_retention(
        &self,
        key: &str,
        version: Option<&str>,
        until: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let Some(head) = self.head_object(key, version)? else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("cannot extend the lock of {key}: it does not exist"),
            ));
        };
        let current = head.retain_until;
        // Extend only: the test server lets COMPLIANCE locks be shortened,
        // S3 does not, and drctl never asks.
        if current.is_some_and(|c| c >= until) {
            return Ok(current);
        }
        let mode = match head
            .lock_mode
            .as_deref()
            .unwrap_or(self.lock_mode().as_str())
        {
            "GOVERNANCE" => ObjectLockRetentionMode::Governance,
            _ => ObjectLockRetentionMode::Compliance,
        };
        let full = self.full_key(key);
        self.call(async {
            self.client
                .put_object_retention()
                .bucket(&self.bucket)
                .key(&full)
                .set_version_id(version.map(str::to_string))
                .retention(
                    ObjectLockRetention::builder()
                        .mode(mode)
                        .retain_until_date(to_s3_time(until))
                        .build(),
                )
                .send()
                .await
        })
        .map_err(|e| s3_error(e, format!("cannot extend the lock of {key}")))?;
        Ok(Some(until))
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("drctl-s3")
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Failed, "cannot start the S3 runtime").with_source(e))
}

/// Blocks on `f` from a scoped thread: `block_on` panics on a thread that
/// already runs async code, and the store's callers may.
fn in_thread<T: Send, F: Future<Output = T> + Send>(rt: &tokio::runtime::Runtime, f: F) -> T {
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(f))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// S3 dates have second precision: round up, so a lock is never shorter
/// than asked.
fn to_s3_time(t: DateTime<Utc>) -> aws_sdk_s3::primitives::DateTime {
    let secs = t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0);
    aws_sdk_s3::primitives::DateTime::from_secs(secs)
}

fn from_s3_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(e.code(), Some("NotFound") | Some("NoSuchKey"))
        || e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
}

fn put_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: SdkError<E>,
    key: &str,
) -> Error {
    let status = e.raw_response().map(|r| r.status().as_u16());
    if e.code() == Some("PreconditionFailed") || status == Some(412) {
        return Error::new(
            ErrorKind::Config,
            format!("object {key} exists already; objects are never overwritten"),
        );
    }
    s3_error(e, format!("cannot store {key}"))
}

/// An error from the SDK, described by its S3 code and message only: the
/// request (headers, signature) never reaches a log.
fn s3_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: SdkError<E>,
    what: String,
) -> Error {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let detail = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => match &e {
            SdkError::DispatchFailure(_) => "the S3 endpoint could not be reached".into(),
            SdkError::TimeoutError(_) => "the request timed out".into(),
            SdkError::ResponseError(_) => "the response could not be read".into(),
            _ => status.map_or_else(|| "request failed".into(), |s| format!("HTTP {s}")),
        },
    };
    let kind = match (e.code(), status) {
        (Some("AccessDenied"), _) | (_, Some(403)) => ErrorKind::Permission,
        (Some("NoSuchBucket"), _) => ErrorKind::Config,
        (_, Some(404)) => ErrorKind::NotFound,
        _ => ErrorKind::Unavailable,
    };
    let err = Error::new(kind, format!("{what} ({detail})"));
    match kind {
        ErrorKind::Permission => err.with_guidance(
            "check the credentials drctl runs with (AWS_PROFILE, AWS_ACCESS_KEY_ID, the pod's role) and their policy; \
             a locked object refuses deletion until its retain-until date",
        ),
        ErrorKind::Unavailable => err.with_guidance(
            "check that the endpoint (repository.s3.endpoint) is reachable; requests were retried with backoff",
        ),
        _ => err,
    }
}
