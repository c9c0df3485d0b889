//! `drctl doctor`: the things an operator gets wrong, checked in one go.
//!
//! Every other command stops at the first problem it meets, which is right
//! for a backup and wrong for someone setting drctl up: they fix the
//! configuration, then meet the catalog, then the bucket, then RBAC, one
//! failed start at a time. The doctor runs every check that can run, says
//! for each one pass, fail, warn or skip, and gives every failure a one-line
//! fix. The checks depend on the process they are run for ([`Role`]): the
//! server must *not* hold the age identity, the drill worker must.
//!
//! The checks reuse what the commands themselves do (configuration loading,
//! `Catalog::require_current`, `S3Store::check_bucket`, the etcd member
//! choice of `backup etcd`, the API server client), so a pass means the real
//! command gets past the same point. Nothing is written anywhere: the
//! doctor only reads and asks.
//!
//! Nothing secret is printed: URLs are redacted, identities and tokens are
//! named by path and kind only (docs/doctor.md).

mod identity;
mod permissions;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, Loaded, Repository};
use crate::error::Error;

pub use permissions::{Rule, rules};
pub use store::{MAX_CLOCK_SKEW, skew};

/// Which process the checks are for: what it must reach, what it must be
/// allowed, and whether it must hold the identity or must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `drctl server`: backups, schedules, retention, gc. A writer: no identity.
    Server,
    /// `drctl worker --drills`: drills. The one process that holds the identity.
    Worker,
    /// `drctl agent`: claims' data on its node. A writer: no identity.
    Agent,
    /// A person's or a job's `drctl restore`: needs the identity and the
    /// (unbound) `drctl-restore` ClusterRole; the catalog is optional.
    Restore,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Worker => "worker",
            Role::Agent => "agent",
            Role::Restore => "restore",
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// Works, but should be looked at; does not fail the run.
    Warn,
    Fail,
    /// Does not apply to this configuration or role, or could not run
    /// because an earlier check failed; the detail says which.
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One check: what was checked, how it went, and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// One line; set for every failure and warning.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure described by a drctl error: its message and causes as the
    /// detail, its guidance (or `fix`) as the fix. drctl errors carry no
    /// secret (crate::error), so both can be printed.
    fn from_error(name: &'static str, e: &Error, fix: &str) -> Check {
        Check::fail(name, describe(e), e.guidance().unwrap_or(fix).to_string())
    }
}

/// An error's message and causes, on one line.
fn describe(e: &Error) -> String {
    let mut text = e.what().to_string();
    for cause in e.causes() {
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// What `drctl doctor` is asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file.
    pub config: PathBuf,
    /// `--identity`, which counts as configuring the identity.
    pub identity: Option<PathBuf>,
    pub role: Role,
    /// `--kubeconfig`; else `kubernetes.kubeconfig`, `$KUBECONFIG`,
    /// `~/.kube/config`, the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// Every check, in the order they are printed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub role: Role,
    /// The configuration file checked.
    pub config: String,
    /// Whether no check failed (warnings and skips do not count).
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// The checks that failed.
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect()
    }

    /// How many checks ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}

/// Runs every check for `opts.role`. The configuration comes first: when it
/// does not load, nothing else can run and the rest are skipped. The checks
/// that talk to a service run at once, so a service that does not answer
/// costs its own timeout, not the sum of all of them.
pub async fn run(opts: &Options) -> Report {
    let (configuration, loaded) = configuration(opts);
    let mut checks = vec![configuration];
    match loaded {
        None => {
            let why = "needs a configuration that loads (see configuration)";
            for name in [
                "catalog",
                "bucket",
                "clock",
                "etcd",
                "kubernetes",
                "identity",
            ] {
                checks.push(Check::skip(name, why));
            }
        }
        Some(loaded) => {
            let config = &loaded.config;
            let (catalog, (bucket, clock), etcd, kubernetes) = tokio::join!(
                catalog(config, opts.role),
                store::checks(config),
                etcd(config, opts.role),
                permissions::check(config, opts),
            );
            checks.extend([catalog, bucket, clock, etcd, kubernetes]);
            checks.push(identity::check(&loaded, opts));
        }
    }
    let ok = !checks.iter().any(|c| c.status == Status::Fail);
    Report {
        role: opts.role,
        config: opts.config.display().to_string(),
        ok,
        checks,
    }
}

/// The configuration loads and validates, as `drctl config check` does;
/// its warnings make this a warning.
fn configuration(opts: &Options) -> (Check, Option<Loaded>) {
    const NAME: &str = "configuration";
    match Config::load(&opts.config) {
        Err(e) => (
            Check::from_error(
                NAME,
                &e,
                "fix the key it names; docs/configuration.md describes every key",
            ),
            None,
        ),
        Ok(loaded) => {
            let path = loaded.path.display();
            let check = if loaded.warnings.is_empty() {
                Check::pass(NAME, format!("{path}: valid"))
            } else {
                Check::warn(
                    NAME,
                    format!(
                        "{path}: valid, with warnings: {}",
                        loaded.warnings.join("; ")
                    ),
                    "each warning says what fixes it; `drctl config check` lists them",
                )
            };
            (check, Some(loaded))
        }
    }
}

/// The catalog answers, with the credentials of the URL, and has every
/// migration of this build: what every command that uses it checks first.
async fn catalog(config: &Config, role: Role) -> Check {
    const NAME: &str = "catalog";
    let url = match (&config.catalog.url, role) {
        (None, Role::Restore) => {
            return Check::skip(
                NAME,
                "catalog.url is not set; restores work without the catalog (from the bucket)",
            );
        }
        (None, _) => {
            let e = config.catalog.url().expect_err("no URL");
            return Check::from_error(NAME, &e, "set catalog.url or DRCTL_CATALOG_URL");
        }
        (Some(url), _) => url,
    };
    let catalog =
        match crate::catalog::Catalog::connect_with_timeout(url, config.catalog.timeout_seconds)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                return Check::from_error(
                    NAME,
                    &e,
                    "check that PostgreSQL is running and reachable at catalog.url",
                );
            }
        };
    if let Err(e) = catalog.require_current().await {
        return Check::from_error(NAME, &e, "run `drctl catalog migrate`");
    }
    let migrations = crate::catalog::MIGRATOR.iter().count();
    Check::pass(
        NAME,
        format!(
            "{}: reachable, schema current ({migrations} migrations)",
            url.redacted()
        ),
    )
}

/// etcd answers with its TLS files, and a member qualifies for a snapshot:
/// the member choice `drctl backup etcd` makes. Only the server reaches
/// etcd: a drill starts an etcd of its own, and the worker holds no etcd
/// client key (its configuration names empty placeholder files).
async fn etcd(config: &Config, role: Role) -> Check {
    const NAME: &str = "etcd";
    let Some(etcd) = &config.etcd else {
        return Check::skip(NAME, "no `etcd:` section: etcd is not backed up");
    };
    if role != Role::Server {
        return Check::skip(
            NAME,
            format!(
                "only drctl server reaches etcd; the {} does not",
                match role {
                    Role::Worker => "drill worker (etcd drills start their own)",
                    Role::Agent => "agent",
                    _ => "restore (it writes a snapshot file or a data directory)",
                }
            ),
        );
    }
    // pick_member probes every endpoint with a timeout of its own; this
    // bounds the whole.
    let picked = tokio::time::timeout(
        Duration::from_secs(60),
        crate::source::etcd::pick_member(etcd),
    )
    .await;
    match picked {
        Err(_) => Check::fail(
            NAME,
            format!(
                "etcd at {} did not answer within 60 s",
                etcd.endpoints.join(", ")
            ),
            "check that etcd.endpoints are reachable from here (network policies, firewalls)",
        ),
        Ok(Err(e)) => Check::from_error(
            NAME,
            &e,
            "check etcd.endpoints and the TLS files etcd.ca_file, cert_file, key_file",
        ),
        Ok(Ok(member)) => {
            let s = &member.status;
            Check::pass(
                NAME,
                format!(
                    "{} answers (member {}, etcd {}, revision {}){}",
                    s.endpoint,
                    s.member_id,
                    s.version,
                    s.revision,
                    if etcd.endpoints.iter().any(|e| e.starts_with("https://")) {
                        ", over TLS"
                    } else {
                        ", plain http (etcd.insecure)"
                    }
                ),
            )
        }
    }
}

/// Whether the configuration names an S3 repository (the bucket and clock
/// checks apply) or a local one (they do not).
fn s3(config: &Config) -> Option<&crate::config::S3Config> {
    match config.repository.backend() {
        Repository::S3(s3) => Some(s3),
        Repository::Local(_) => None,
    }
}
