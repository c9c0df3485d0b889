//! The object store: the bucket as `drctl repo init` requires it, and this
//! machine's clock against the store's.
//!
//! The clock matters because every Object Lock date drctl sets is computed
//! here (`now + retention`) and enforced by the store on its own clock: a
//! machine whose clock runs behind the store's locks every object shorter
//! than asked, by the difference. The store's time is the `Date` header of
//! an answer (any answer, a refusal included), compared with the middle of
//! the request on this clock: one HEAD of the bucket, nothing written.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region, retry::RetryConfig};
use aws_sdk_s3::error::SdkError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use chrono::{DateTime, Utc};

use super::{Check, describe};
use crate::config::{Config, S3Config};
use crate::error::ErrorKind;

/// The largest difference between this machine's clock and the store's
/// that passes. A lock of days does not care about seconds; past half a
/// minute the clock is not synchronised at all, and the difference only
/// grows.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// The bucket and clock checks; both skip for a local repository.
pub(super) async fn checks(config: &Config) -> (Check, Check) {
    match super::s3(config) {
        None => (
            Check::skip(
                "bucket",
                "does not apply: repository.local has no Object Lock (tests, demos, \
                 air-gapped copies)",
            ),
            Check::skip(
                "clock",
                "does not apply: a local repository sets no lock dates",
            ),
        ),
        Some(s3) => tokio::join!(bucket(s3), clock(s3)),
    }
}

/// The bucket exists, has Object Lock and versioning, and no default
/// retention: `S3Store::check_bucket`, the check `drctl repo init` makes.
async fn bucket(s3: &S3Config) -> Check {
    const NAME: &str = "bucket";
    let cfg = s3.clone();
    let checked = tokio::task::spawn_blocking(move || {
        crate::store::s3::S3Store::connect(&cfg)?.check_bucket(false)
    })
    .await;
    let location = crate::store::s3::location(&s3.bucket, &s3.prefix);
    match checked {
        Err(e) => Check::fail(
            NAME,
            format!("the bucket check did not finish: {e}"),
            "run `drctl repo info` to see the error",
        ),
        Ok(Ok(())) => Check::pass(
            NAME,
            format!(
                "{location}: Object Lock enabled, versioning enabled, no default retention \
                 (drctl locks each object itself, {} for {} days)",
                match s3.lock_mode {
                    crate::config::LockMode::Compliance => "COMPLIANCE",
                    crate::config::LockMode::Governance => "GOVERNANCE",
                },
                s3.retention_days
            ),
        ),
        // Reading a bucket's configuration takes permissions a writer's
        // policy does not need (docs/storage.md lists those): not knowing
        // is not the same as a bucket without locks.
        Ok(Err(e)) if e.kind() == ErrorKind::Permission => Check::warn(
            NAME,
            format!("{location}: could not be checked: {}", describe(&e)),
            "run `drctl doctor` once with credentials that have s3:GetBucketObjectLockConfiguration \
             and s3:GetBucketVersioning on the bucket",
        ),
        Ok(Err(e)) => Check::from_error(
            NAME,
            &e,
            "check repository.s3 (endpoint, bucket) and the S3 credentials",
        ),
    }
}

/// This machine's clock against the store's `Date` header.
async fn clock(s3: &S3Config) -> Check {
    const NAME: &str = "clock";
    let endpoint = s3
        .endpoint
        .clone()
        .unwrap_or_else(|| "the S3 endpoint".to_string());
    let recorder = DateRecorder::default();
    let answer = client(s3)
        .await
        .head_bucket()
        .bucket(&s3.bucket)
        .customize()
        .interceptor(recorder.clone())
        .send()
        .await;
    let seen = recorder.0.lock().expect("not poisoned").clone();
    let (Some(sent), Some((received, date))) = (seen.sent, seen.received) else {
        let why = match &answer {
            Err(SdkError::TimeoutError(_)) => {
                format!("no answer within {} s", s3.timeout_seconds)
            }
            Err(SdkError::DispatchFailure(_)) => "it could not be reached".to_string(),
            _ => "no answer".to_string(),
        };
        return Check::skip(
            NAME,
            format!("the store's clock could not be read from {endpoint}: {why} (see bucket)"),
        );
    };
    let Some(date) = date.as_deref().and_then(parse_http_date) else {
        return Check::warn(
            NAME,
            format!("{endpoint} sends no readable Date header, so its clock cannot be compared"),
            "check this machine's clock against NTP (`chronyc tracking` or `timedatectl`)",
        );
    };
    let skew = skew(sent, received, date);
    let secs = skew.num_milliseconds() as f64 / 1000.0;
    let (ahead, behind) = ("ahead of", "behind");
    let relation = if secs >= 0.0 { behind } else { ahead };
    let detail = if secs.abs() < 1.0 {
        format!(
            "this machine's clock is within a second of the store's ({endpoint}); the limit is {} s",
            MAX_CLOCK_SKEW.as_secs()
        )
    } else {
        format!(
            "this machine's clock is {:.0} s {relation} the store's ({endpoint}); the limit is {} s",
            secs.abs(),
            MAX_CLOCK_SKEW.as_secs()
        )
    };
    if secs.abs() <= MAX_CLOCK_SKEW.as_secs_f64() {
        return Check::pass(NAME, detail);
    }
    let effect = if relation == behind {
        format!(
            "every Object Lock drctl sets ends {:.0} s early",
            secs.abs()
        )
    } else {
        format!(
            "every Object Lock drctl sets lasts {:.0} s longer than asked",
            secs.abs()
        )
    };
    Check::fail(
        NAME,
        format!("{detail}: {effect} (lock dates are computed on this clock)"),
        "sync the clock with NTP (chrony or systemd-timesyncd: `chronyc tracking`, \
         `timedatectl`), here or on the store, whichever is wrong",
    )
}

/// The store's clock minus this machine's, from a request sent at `sent`
/// and answered at `received` (this clock) with `Date: server`. `Date` is
/// the server's time cut to the second, so its middle is half a second on;
/// the answer was made, at best guess, halfway through the request.
/// Positive: the store is ahead (this machine behind).
pub fn skew(
    sent: DateTime<Utc>,
    received: DateTime<Utc>,
    server: DateTime<Utc>,
) -> chrono::Duration {
    let middle = sent + (received - sent) / 2;
    server + chrono::Duration::milliseconds(500) - middle
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110's IMF-fixdate, which RFC 2822
/// parsing accepts).
fn parse_http_date(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(text.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// A client for the one HEAD: the repository's endpoint, region and
/// addressing, the standard credential chain, and no retries (the first
/// answer is the measurement).
async fn client(s3: &S3Config) -> aws_sdk_s3::Client {
    let total = Duration::from_secs(u64::from(s3.timeout_seconds));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10).min(total))
                .operation_timeout(total)
                .build(),
        );
    if let Some(r) = &s3.region {
        loader = loader.region(Region::new(r.clone()));
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared).force_path_style(s3.force_path_style);
    if shared.region().is_none() {
        b = b.region(Region::new("us-east-1"));
    }
    if let Some(e) = &s3.endpoint {
        b = b.endpoint_url(e);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// When the request left, when its answer came, and the answer's `Date`.
#[derive(Debug, Clone, Default)]
struct Seen {
    sent: Option<DateTime<Utc>>,
    received: Option<(DateTime<Utc>, Option<String>)>,
}

/// Records [`Seen`] from inside the SDK: the answer's headers are not part
/// of a HEAD's output, and a refusal (403) tells the time as well.
#[derive(Debug, Clone, Default)]
struct DateRecorder(Arc<Mutex<Seen>>);

impl Intercept for DateRecorder {
    fn name(&self) -> &'static str {
        "drctl::doctor::DateRecorder"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.0.lock().expect("not poisoned").sent = Some(Utc::now());
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let now = Utc::now();
        let date = context.response().headers().get("date").map(str::to_string);
        self.0.lock().expect("not poisoned").received = Some((now, date));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn skew_is_measured_from_the_middle_of_the_request() {
        // Sent at :00.0, answered at :00.4: the middle is :00.2, and a
        // Date of :00 means :00.5 at best guess.
        let s = skew(
            at("2026-01-01T10:00:00.0Z"),
            at("2026-01-01T10:00:00.4Z"),
            at("2026-01-01T10:00:00Z"),
        );
        assert_eq!(s.num_milliseconds(), 300);
        // The store two minutes ahead.
        let s = skew(
            at("2026-01-01T10:00:00.0Z"),
            at("2026-01-01T10:00:00.2Z"),
            at("2026-01-01T10:02:00Z"),
        );
        assert_eq!(s.num_seconds(), 120);
        // The store behind.
        let s = skew(
            at("2026-01-01T10:00:00.0Z"),
            at("2026-01-01T10:00:00.0Z"),
            at("2026-01-01T09:59:00Z"),
        );
        assert_eq!(s.num_milliseconds(), -59_500);
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at("1994-11-06T08:49:37Z"))
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
