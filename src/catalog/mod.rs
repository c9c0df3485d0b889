//! The PostgreSQL catalog: backups, their items, and (in later migrations)
//! packs, chunks, schedules, runs and drills.
//!
//! The schema lives in `migrations/`, embedded into the binary at build time,
//! so a deployed drctl always carries the schema it expects. The server applies
//! pending migrations at start; the CLI refuses to work on a schema that is
//! behind (it never migrates behind an operator's back) and says how to fix it.

/// A `running` backup counts as alive while its heartbeat is younger than
/// this (ten beats): one whose process died (a crash leaves it `running`)
/// stops blocking collection and is marked `interrupted`; one that runs
/// for days stays protected.
macro_rules! alive_within {
    () => {
        "5 minutes"
    };
}

/// SQL: a running backup of repository `$1` that started at or before
/// `$since` (a column) and is still alive exists. What such a backup may
/// still record or dedup against is held back from gc.
macro_rules! held_by_live_backup {
    ($since:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM backups r WHERE r.repository_id = $1 \
               AND r.status = 'running' AND r.started_at <= ",
            $since,
            " AND COALESCE(r.heartbeat_at, r.started_at) > now() - interval '",
            alive_within!(),
            "')"
        )
    };
}

mod backups;
mod drills;
mod gc;
mod jobs;
pub mod rebuild;
mod sets;
mod store;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::config::SecretUrl;
use crate::error::{Error, ErrorKind, Result};

pub use backups::{BackupEnd, BackupRow, ItemRow, ListFilter, PendingItems};
pub use drills::DrillRunRow;
pub use jobs::{Claim, JobRow, Lease, ScheduleRow, Tick};
pub use sets::NodeJob;

/// The longest one catalog call may take, in seconds
/// (`catalog.timeout_seconds`, set at connect). A PostgreSQL that stops
/// answering mid-query (stopped, a network that drops packets silently) is
/// given up on after it: the kernel keeps acknowledging a stopped server's
/// socket, so only a timeout in drctl can tell.
static CALL_TIMEOUT_SECS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_CALL_TIMEOUT_SECS);

/// `catalog.timeout_seconds` when not set.
pub const DEFAULT_CALL_TIMEOUT_SECS: u64 = 60;

/// A catalog call, bounded by [`CALL_TIMEOUT_SECS`]: past it, the call
/// fails as a timed-out I/O error (and so as "unavailable").
pub(crate) trait Bounded<T>:
    std::future::Future<Output = std::result::Result<T, sqlx::Error>> + Sized
{
    fn bounded(
        self,
    ) -> impl std::future::Future<Output = std::result::Result<T, sqlx::Error>> + Send
    where
        Self: Send,
        T: Send,
    {
        async move {
            let secs = CALL_TIMEOUT_SECS.load(std::sync::atomic::Ordering::Relaxed);
            match tokio::time::timeout(Duration::from_secs(secs), self).await {
                Ok(r) => r,
                Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the catalog did not answer within {secs} s (catalog.timeout_seconds)"),
                ))),
            }
        }
    }
}

impl<T, F> Bounded<T> for F where
    F: std::future::Future<Output = std::result::Result<T, sqlx::Error>>
{
}

/// The catalog schema, from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// An open connection pool to the catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    pool: PgPool,
}

/// One migration and whether the catalog has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

impl Catalog {
    /// Connects to the catalog at `url`. Fails fast (10 s) when the server is
    /// unreachable, so an operator is not left staring at a silent terminal.
    pub async fn connect(url: &SecretUrl) -> Result<Self> {
        Self::connect_with_timeout(url, DEFAULT_CALL_TIMEOUT_SECS).await
    }

    /// [`Catalog::connect`], with every later call bounded by
    /// `timeout_secs`.
    pub async fn connect_with_timeout(url: &SecretUrl, timeout_secs: u64) -> Result<Self> {
        CALL_TIMEOUT_SECS.store(timeout_secs, std::sync::atomic::Ordering::Relaxed);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url.expose())
            .await
            .map_err(|e| connect_error(url, e))?;
        Ok(Catalog { pool })
    }

    /// Wraps an existing pool (tests, embedding).
    pub fn from_pool(pool: PgPool) -> Self {
        Catalog { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies every pending migration; returns the versions it applied.
    /// Concurrent callers are serialised by sqlx's advisory lock.
    pub async fn migrate(&self) -> Result<Vec<MigrationState>> {
        let before = self.status().await?;
        MIGRATOR.run(&self.pool).await.map_err(|e| {
            Error::new(ErrorKind::Failed, "applying catalog migrations failed")
                .with_source(e)
                .with_guidance(
                    "the catalog was left at the last migration that succeeded; \
                     fix the cause and run `drctl catalog migrate` again",
                )
        })?;
        Ok(before.into_iter().filter(|m| !m.applied).collect())
    }

    /// Every migration this build knows, and whether the catalog has it.
    pub async fn status(&self) -> Result<Vec<MigrationState>> {
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&self.pool)
                .bounded()
                .await
                .map_err(query_error)?;
        let applied: Vec<i64> = match table {
            Some(_) => sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .bounded()
                .await
                .map_err(query_error)?,
            None => Vec::new(),
        };
        Ok(MIGRATOR
            .iter()
            .map(|m| MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied: applied.contains(&m.version),
            })
            .collect())
    }

    /// Fails unless every migration of this build is applied.
    pub async fn require_current(&self) -> Result<()> {
        let pending: Vec<_> = self
            .status()
            .await?
            .into_iter()
            .filter(|m| !m.applied)
            .map(|m| format!("{} {}", m.version, m.description))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "the catalog schema is behind this drctl: pending migrations {}",
                pending.join(", ")
            ),
        )
        .with_guidance("run `drctl catalog migrate` (the server does this at start)"))
    }
}

fn connect_error(url: &SecretUrl, e: sqlx::Error) -> Error {
    let auth = matches!(&e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("28P01" | "28000")));
    let missing = matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"));
    if missing {
        return Error::new(
            ErrorKind::Config,
            format!("the catalog database does not exist at {}", url.redacted()),
        )
        .with_guidance(
            "PostgreSQL answered, but has no database of that name: check the database name in \
             catalog.url (or DRCTL_CATALOG_URL), or create it (`createdb NAME`) and run \
             `drctl catalog migrate`",
        );
    }
    let (kind, hint) = if auth {
        (
            ErrorKind::Permission,
            "the server refused the credentials; check the user and password in catalog.url \
             or DRCTL_CATALOG_URL",
        )
    } else {
        (
            ErrorKind::Unavailable,
            "check that PostgreSQL is running and reachable at the host and port of catalog.url \
             (or DRCTL_CATALOG_URL), and that the database exists",
        )
    };
    Error::new(
        kind,
        format!("cannot connect to the catalog at {}", url.redacted()),
    )
    .with_source(e)
    .with_guidance(hint)
}

pub(crate) fn query_error(e: sqlx::Error) -> Error {
    let timed_out = matches!(&e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
        || matches!(&e, sqlx::Error::PoolTimedOut);
    let err = Error::new(ErrorKind::Unavailable, "a catalog query failed").with_source(e);
    if timed_out {
        err.with_guidance(
            "check that PostgreSQL (catalog.url) is up and answering; a backup that was running \
             is marked failed, or interrupted once its heartbeat is stale",
        )
    } else {
        err
    }
}
