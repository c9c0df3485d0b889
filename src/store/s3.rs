//! A repository in an S3 bucket with Object Lock.
//!
//! Every object is written once (`If-None-Match: *`), with its SHA-256 as the
//! checksum header and a COMPLIANCE (or GOVERNANCE) retain-until: neither the
//! credentials drctl runs with nor anyone who steals them can delete or
//! alter it before that date. The bucket must have versioning (Object Lock
//! needs it), so a writer can still add a *new version* under an existing
//! key, or a delete marker over it. Reads therefore go through the version
//! list and take each key's original ([`super::original`]); `list` comes
//! from the version list too, so a delete marker hides nothing. A put that
//! finds its key taken (412, usually its own retry) compares the original
//! with what it meant to write.
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
/// The longest one request may take, all its attempts and their waits
/// included: past it the request fails. gc's minimum grace period is
/// derived from it (an upload this slow is still alive).
pub const LONGEST_REQUEST: Duration = Duration::from_secs(600);
/// Objects above this size go up in parts.
pub const MULTIPART_THRESHOLD: usize = 64 << 20;
/// Between a key and an upload id in the id of an unfinished upload.
const UPLOAD_ID: &str = "?uploadId=";
/// Part size of multipart uploads.
const PART_SIZE: usize = 16 << 20;

/// Where requests go, for errors and warnings that say which endpoint to
/// check.
#[derive(Debug, Clone)]
struct Endpoint {
    url: String,
    bucket: String,
    timeout_seconds: u32,
}

/// Logs a warning for every attempt that failed and will be retried: a
/// stalled or flaky server is visible while drctl waits on it, not only
/// when the request finally gives up.
#[derive(Debug)]
struct WarnOnRetry {
    url: String,
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for WarnOnRetry {
    fn name(&self) -> &'static str {
        "drctl::WarnOnRetry"
    }

    fn read_after_attempt(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> std::result::Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let attempt = cfg
            .load::<aws_smithy_runtime_api::client::retries::RequestAttempts>()
            .map_or(1, |a| a.attempts());
        if let Some(Err(e)) = context.output_or_error() {
            let timed_out =
                e.is_timeout_error() || e.as_connector_error().is_some_and(|c| c.is_timeout());
            let why = if timed_out {
                "no answer in time"
            } else if e.is_connector_error() {
                "the connection failed"
            } else if e.is_response_error() {
                "the response could not be read"
            } else {
                "an error the server may not repeat"
            };
            tracing::warn!(
                endpoint = %self.url,
                attempt,
                max_attempts = MAX_ATTEMPTS,
                "an S3 request failed ({why}); retrying unless it was the last attempt or time is up"
            );
        }
        Ok(())
    }
}

pub struct S3Store {
    at: Endpoint,
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
        // The whole request, retries included, and how long one attempt
        // may go without an answer.
        let total = Duration::from_secs(u64::from(cfg.timeout_seconds)).min(LONGEST_REQUEST);
        let attempt = total / 3;
        let url = endpoint_url(cfg);
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
                        .connect_timeout(Duration::from_secs(10).min(attempt))
                        .read_timeout(attempt)
                        .operation_attempt_timeout(total)
                        .operation_timeout(total)
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
            b = b.interceptor(WarnOnRetry { url });
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
            at: Endpoint {
                url: endpoint_url(cfg),
                bucket: cfg.bucket.clone(),
                timeout_seconds: cfg.timeout_seconds,
            },
            client,
            bucket: cfg.bucket.clone(),
            prefix: normalise_prefix(&cfg.prefix),
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
                .map_err(|e| s3_error(&self.at, e, format!("cannot create bucket {bucket}")))?;
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
                    &self.at,
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
                    &self.at,
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
    ) -> Result<Put> {
        let out = self.call(async {
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
        });
        match out {
            Ok(out) => Ok(Put::Stored(out.version_id().map(str::to_string))),
            Err(e) => put_error(&self.at, e, full),
        }
    }

    fn put_multipart(
        &self,
        full: &str,
        data: &[u8],
        until: aws_sdk_s3::primitives::DateTime,
    ) -> Result<Put> {
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
            .map_err(|e| s3_error(&self.at, e, format!("cannot start the upload of {full}")))?;
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
                    .map_err(|e| {
                        s3_error(
                            &self.at,
                            e,
                            format!("cannot upload part {number} of {full}"),
                        )
                    })?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .checksum_sha256(checksum)
                        .build(),
                );
            }
            let done = self.call(async {
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
            });
            match done {
                Ok(done) => Ok(Put::Stored(done.version_id().map(str::to_string))),
                Err(e) => put_error(&self.at, e, full),
            }
        })();
        if !matches!(result, Ok(Put::Stored(_))) {
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
        limit: u64,
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
                    _ => s3_error(&self.at, e, format!("cannot read object {key}")),
                })?;
            // Into one buffer of the announced size as the body streams in:
            // collecting first and joining after would hold a pack twice.
            // Never more than `limit`, whatever the server announces.
            let announced = out.content_length().unwrap_or(0).max(0) as u64;
            if announced > limit {
                return Err(super::too_large(key, announced, limit));
            }
            let mut data = Vec::with_capacity(announced as usize);
            let mut body = out.body;
            let broke = |e: aws_sdk_s3::primitives::ByteStreamError| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("reading object {key} broke off"),
                )
                .with_source(e)
            };
            while let Some(piece) = body.try_next().await.map_err(broke)? {
                if (data.len() + piece.len()) as u64 > limit {
                    return Err(super::too_large(
                        key,
                        (data.len() + piece.len()) as u64,
                        limit,
                    ));
                }
                data.extend_from_slice(&piece);
            }
            Ok(data)
        })
    }

    /// The history of every key under `prefix` (only of `exact` when set),
    /// by key: versions oldest first, then delete markers.
    fn history(
        &self,
        prefix: &str,
        exact: Option<&str>,
    ) -> Result<Vec<(String, Vec<super::Version>)>> {
        use std::collections::BTreeMap;
        let full = self.full_key(prefix);
        let exact = exact.map(|k| self.full_key(k));
        // Per key: (last modified, position in the answer, version).
        type Seen = Vec<(Option<DateTime<Utc>>, usize, super::Version)>;
        let mut keys: BTreeMap<String, (Seen, Vec<super::Version>)> = BTreeMap::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        let mut position = 0usize;
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
                .map_err(|e| {
                    s3_error(&self.at, e, format!("cannot list the versions of {prefix}"))
                })?;
            let wanted = |k: &str| exact.as_deref().is_none_or(|e| e == k);
            for v in page.versions() {
                let Some(k) = v.key().filter(|k| wanted(k)) else {
                    continue;
                };
                let key = self.strip(k).to_string();
                position += 1;
                let version = super::Version {
                    meta: ObjectMeta {
                        key: key.clone(),
                        size: v.size().unwrap_or(0).max(0) as u64,
                        version_id: v.version_id().map(str::to_string),
                        retain_until: None,
                        lock_mode: None,
                    },
                    delete_marker: false,
                    modified: v.last_modified().and_then(from_s3_time),
                };
                let modified = version.modified;
                keys.entry(key)
                    .or_default()
                    .0
                    .push((modified, position, version));
            }
            for m in page.delete_markers() {
                let Some(k) = m.key().filter(|k| wanted(k)) else {
                    continue;
                };
                let key = self.strip(k).to_string();
                let marker = super::Version {
                    meta: ObjectMeta {
                        key: key.clone(),
                        size: 0,
                        version_id: m.version_id().map(str::to_string),
                        retain_until: None,
                        lock_mode: None,
                    },
                    delete_marker: true,
                    modified: m.last_modified().and_then(from_s3_time),
                };
                keys.entry(key).or_default().1.push(marker);
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                version_marker = page.next_version_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        Ok(keys
            .into_iter()
            .map(|(key, (mut seen, markers))| {
                // S3 lists a key's versions newest first; the dates decide,
                // the listing's order breaks ties.
                seen.sort_by_key(|(modified, position, _)| {
                    (*modified, std::cmp::Reverse(*position))
                });
                let mut all: Vec<super::Version> = seen.into_iter().map(|(_, _, v)| v).collect();
                all.extend(markers);
                (key, all)
            })
            .collect())
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
            Err(e) => Err(s3_error(
                &self.at,
                e,
                format!("cannot read the metadata of {key}"),
            )),
        }
    }
}

impl S3Store {
    /// A put-once found `key` taken (HTTP 412). Usually it is this very put,
    /// retried after its first answer was lost on the way back, or the same
    /// pack written by another backup: the original version holding the
    /// same bytes is success (its lock made to last until `until`). Other
    /// bytes mean someone else wrote the key first.
    fn put_existing(
        &self,
        key: &str,
        data: &[u8],
        opts: &PutOptions,
        until: DateTime<Utc>,
    ) -> Result<ObjectMeta> {
        let taken = || {
            Error::new(
                ErrorKind::Integrity,
                format!(
                    "object {key} exists already with other content; drctl writes every key once, \
                     so someone else wrote it first"
                ),
            )
            .with_guidance(
                "run `drctl verify --storage` and check who holds write access to the bucket",
            )
        };
        let Some(original) = super::original(self, key)? else {
            return Err(taken());
        };
        if original.size != data.len() as u64
            || sha256(&self.read(key, original.version_id.as_deref(), original.size)?)
                != opts.sha256
        {
            return Err(taken());
        }
        let version = original.version_id.as_deref();
        let end = self.extend_retention(key, version, until)?;
        let head = self.head_object(key, version)?;
        tracing::debug!(%key, "put found the same bytes stored already");
        Ok(ObjectMeta {
            retain_until: end,
            lock_mode: head.and_then(|h| h.lock_mode),
            ..original
        })
    }
}

/// What a put-once was answered.
enum Put {
    Stored(Option<String>),
    /// The key was taken (HTTP 412).
    Exists,
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
            let Put::Stored(version) = self.put_multipart(&full, data, until_s3)? else {
                return self.put_existing(key, data, opts, until);
            };
            // The lock requested when the upload started is checked on the
            // object it became, and set if the server left it off (moto does;
            // S3 does not): no object drctl writes goes unlocked.
            self.extend_retention(key, version.as_deref(), until)?;
            version
        } else {
            match self.put_single(&full, data, &b64(&opts.sha256), until_s3)? {
                Put::Stored(version) => version,
                Put::Exists => return self.put_existing(key, data, opts, until),
            }
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
        self.get_object(key, None, None, u64::MAX)
    }

    fn get_version(&self, key: &str, version: &str) -> Result<Vec<u8>> {
        self.get_object(key, Some(version), None, u64::MAX)
    }

    fn read(&self, key: &str, version: Option<&str>, limit: u64) -> Result<Vec<u8>> {
        self.get_object(key, version, None, limit)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let len = range.end - range.start;
        self.get_object(key, None, Some(range), len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.head_object(key, None)
    }

    fn head_version(&self, key: &str, version: Option<&str>) -> Result<Option<ObjectMeta>> {
        self.head_object(key, version)
    }

    /// Keys with at least one version, each described by its original
    /// ([`super::original`]): a delete marker hides nothing from drctl.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out: Vec<ObjectMeta> = Vec::new();
        for (key, versions) in self.history(prefix, None)? {
            if let Some(v) = versions.into_iter().find(|v| !v.delete_marker) {
                debug_assert_eq!(v.meta.key, key);
                out.push(v.meta);
            }
        }
        Ok(out)
    }

    fn versions(&self, key: &str) -> Result<Vec<super::Version>> {
        Ok(self
            .history(key, Some(key))?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_default())
    }

    fn debris(&self) -> Result<Vec<super::Debris>> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .call(async {
                    self.client
                        .list_multipart_uploads()
                        .bucket(&self.bucket)
                        .prefix(&self.prefix)
                        .set_key_marker(key_marker.clone())
                        .set_upload_id_marker(id_marker.clone())
                        .send()
                        .await
                })
                .map_err(|e| s3_error(&self.at, e, "cannot list unfinished uploads".into()))?;
            for u in page.uploads() {
                if let (Some(full), Some(id)) = (u.key(), u.upload_id()) {
                    found.push(super::Debris {
                        id: format!("{}{UPLOAD_ID}{id}", self.strip(full)),
                        size: 0,
                    });
                }
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        Ok(found)
    }

    fn remove_debris(&self, id: &str) -> Result<()> {
        let Some((key, upload)) = id.rsplit_once(UPLOAD_ID) else {
            return Err(Error::new(
                ErrorKind::Failed,
                format!("{id:?} does not name an unfinished upload"),
            ));
        };
        let full = self.full_key(key);
        self.call(async {
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload)
                .send()
                .await
        })
        .map_err(|e| s3_error(&self.at, e, format!("cannot abort the upload of {key}")))?;
        Ok(())
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
        .map_err(|e| s3_error(&self.at, e, format!("cannot delete {key}")))?;
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
        .map_err(|e| s3_error(&self.at, e, format!("cannot extend the lock of {key}")))?;
        Ok(Some(until))
    }

    fn location(&self) -> String {
        location(&self.bucket, &self.prefix)
    }
}

/// Where a repository in `bucket` under `prefix` is, as the catalog
/// records it: `s3://bucket/prefix/`.
pub fn location(bucket: &str, prefix: &str) -> String {
    format!("s3://{bucket}/{}", normalise_prefix(prefix))
}

/// `cluster-1` and `cluster-1/` name the same folder (docs/configuration.md):
/// keys go under `cluster-1/`, never `cluster-1config`, so an IAM policy
/// scoped to `cluster-1/*` covers every object.
fn normalise_prefix(prefix: &str) -> String {
    let p = prefix.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
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

/// The endpoint requests go to, as people know it.
fn endpoint_url(cfg: &S3Config) -> String {
    cfg.endpoint.clone().unwrap_or_else(|| match &cfg.region {
        Some(r) => format!("https://s3.{r}.amazonaws.com"),
        None => "AWS S3 (region from the AWS configuration)".into(),
    })
}

fn from_s3_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(e.code(), Some("NotFound") | Some("NoSuchKey"))
        || e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
}

fn put_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    at: &Endpoint,
    e: SdkError<E>,
    key: &str,
) -> Result<Put> {
    let status = e.raw_response().map(|r| r.status().as_u16());
    if e.code() == Some("PreconditionFailed") || status == Some(412) {
        return Ok(Put::Exists);
    }
    Err(s3_error(at, e, format!("cannot store {key}")))
}

/// An error from the SDK, described by its S3 code and message only: the
/// request (headers, signature) never reaches a log.
fn s3_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    at: &Endpoint,
    e: SdkError<E>,
    what: String,
) -> Error {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let detail = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => match &e {
            SdkError::DispatchFailure(_) => format!("{} could not be reached", at.url),
            SdkError::TimeoutError(_) => format!(
                "{} did not answer within {} s, retries included",
                at.url, at.timeout_seconds
            ),
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
    match (kind, e.code()) {
        (ErrorKind::Permission, _) => err.with_guidance(
            "check the credentials drctl runs with (AWS_PROFILE, AWS_ACCESS_KEY_ID, the pod's role) and their policy; \
             a locked object refuses deletion until its retain-until date",
        ),
        (ErrorKind::Config, Some("NoSuchBucket")) => err.with_guidance(format!(
            "{} has no bucket `{}`: check repository.s3.bucket (and repository.s3.endpoint); \
             `drctl repo init --create-bucket` creates one with Object Lock",
            at.url, at.bucket
        )),
        (ErrorKind::Unavailable, _) => err.with_guidance(format!(
            "check that {} (repository.s3.endpoint) is up and reachable from here; requests were \
             retried with backoff for up to repository.s3.timeout_seconds ({} s)",
            at.url, at.timeout_seconds
        )),
        _ => err,
    }
}
