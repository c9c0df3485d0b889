//! drctl: backup and disaster recovery for Kubernetes.
//!
//! Three sources (the etcd keyspace, the API resources of chosen namespaces and
//! the contents of persistent volumes) flow one way through a pipeline
//! (chunk → keyed id → dedup → zstd → age → pack) into object storage that
//! cannot be rewritten, with a PostgreSQL catalog of everything stored. The
//! modules mirror that flow; `../DESIGN.md` in the shared folder and `docs/`
//! describe the invariants.
//!
//! - [`config`]: the configuration file, validated before anything runs.
//! - [`catalog`]: the PostgreSQL catalog and its migrations.
//! - [`source`]: where backups come from (etcd, …).
//! - [`error`]: the one public error type, with guidance and exit codes.
//! - [`cli`]: the `drctl` command line, a thin layer over the above.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod error;
pub mod keys;
pub mod source;

pub use error::{Error, ErrorKind, Result};

/// Version of the on-storage repository format this build reads and writes.
/// Bumped on any incompatible change to `config`, packs or manifests.
pub const REPOSITORY_FORMAT_VERSION: u32 = 1;

/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
