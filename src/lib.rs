//! drctl: backup and disaster recovery for Kubernetes.
//!
//! Three sources (the etcd keyspace, the API resources of chosen namespaces and
//! the contents of persistent volumes) flow one way through a pipeline
//! (chunk → keyed id → dedup → zstd → encrypt → pack, the keys sealed with
//! age) into object storage that cannot be rewritten, with a PostgreSQL
//! catalog of everything stored. The
//! modules mirror that flow; `../DESIGN.md` in the shared folder and `docs/`
//! describe the invariants.
//!
//! - [`config`]: the configuration file, validated before anything runs.
//! - [`source`]: where backups come from (volumes, etcd, API resources).
//! - [`cluster`]: the Kubernetes API server: credentials, discovery, lists.
//! - [`resources`]: what a resource backup or restore covers (scope,
//!   selectors, namespace mappings).
//! - [`repo`]: the repository format and the write pipeline
//!   (chunker, crypto, pack, manifest, writer).
//! - [`store`]: object storage backends (local directory; S3 next).
//! - [`backup`], [`restore`], [`verify`]: the operations on top.
//! - [`catalog`]: the PostgreSQL catalog and its migrations.
//! - [`error`]: the one public error type, with guidance and exit codes.
//! - [`cli`]: the `drctl` command line, a thin layer over the above.

pub mod agent;
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod doctor;
pub mod drill;
pub mod error;
pub mod gc;
pub mod keys;
mod parallel;
pub mod rebuild;
pub mod reference;
pub mod repo;
pub mod resources;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod server;
pub mod source;
pub mod store;
mod sys;
pub mod verify;

pub use error::{Error, ErrorKind, Result};

/// Version of the on-storage repository format this build reads and writes.
/// Bumped on any incompatible change to `config`, packs or manifests.
pub const REPOSITORY_FORMAT_VERSION: u32 = 2;

/// Chooses rustls' crypto provider for the process (ring). Both providers
/// are compiled in through dependencies, and rustls refuses to guess; the
/// kube client's TLS needs one. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
