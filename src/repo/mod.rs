//! The repository: the format on object storage and the access to it.
//!
//! ```text
//! config              format version, chunker, pack size, recipients' fingerprints (plain JSON)
//! keys/repository     the repository secret, age-encrypted to the recipients
//! packs/xx/<sha256>   chunks (see pack)
//! manifests/<id>      one per backup (see manifest)
//! ```
//! Who can do what is decided by what they hold: writers hold recipients and
//! the repository secret; readers (restore, drills, verify) hold an identity,
//! which also unlocks the secret from `keys/repository`.

pub mod chunker;
pub mod crypto;
pub mod manifest;
pub mod object_table;
pub mod pack;
pub mod writer;

/// Deterministic incompressible bytes for tests (xorshift).
#[cfg(test)]
pub(crate) fn test_noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crypto::{ChunkId, DataKey, Identity, Recipients, RepoSecret};

use crate::error::{Error, ErrorKind, Result};
use crate::store::{PutOptions, Store, sha256};

pub const CONFIG_KEY: &str = "config";
pub const SECRET_KEY: &str = "keys/repository";
/// Target size of a pack. 16 MiB: large enough that per-object costs (a PUT,
/// a lock, a catalog row) vanish, small enough that a backup holds few in
/// memory and a restore of one file reads little more than it needs.
pub const PACK_SIZE: usize = 16 << 20;
/// zstd level when the configuration does not set one. Level 1, chosen by
/// the volume benchmark (docs/benchmarks.md): against level 3 it took a
/// fifth less CPU time, and left the repository within 1% of restic's
/// (level 3: 2% under it). Level 3 stores churned database files about 15%
/// smaller, for those who pay more for storage than for backup windows.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// The plain `config` object of a repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u32,
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub chunker: ChunkerConfig,
    pub pack_size: usize,
    /// Short fingerprints of the recipients the repository was created for.
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkerConfig {
    pub algorithm: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub block_chunk: usize,
}

/// What the caller holds; decides what the opened repository can do.
#[derive(Default)]
pub struct Keys {
    pub recipients: Option<Recipients>,
    pub secret: Option<RepoSecret>,
    pub identity: Option<Identity>,
}

/// An open repository.
pub struct Repository {
    pub store: Arc<dyn Store>,
    pub config: RepoConfig,
    pub secret: RepoSecret,
    recipients: Option<Recipients>,
    identity: Option<Identity>,
}

impl Repository {
    /// Creates a repository in `store`. Refuses when one exists.
    pub fn init(store: Arc<dyn Store>, recipients: Recipients) -> Result<Repository> {
        if store.head(CONFIG_KEY)?.is_some() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("a repository exists already at {}", store.location()),
            )
            .with_guidance(
                "drctl never overwrites a repository; use `drctl repo info` to see it",
            ));
        }
        let config = RepoConfig {
            format_version: crate::REPOSITORY_FORMAT_VERSION,
            id: Uuid::new_v4(),
            created_at: Utc::now(),
            chunker: ChunkerConfig {
                algorithm: "fastcdc-2020".into(),
                min: chunker::CDC_MIN,
                avg: chunker::CDC_AVG,
                max: chunker::CDC_MAX,
                block_chunk: chunker::BLOCK_CHUNK,
            },
            pack_size: PACK_SIZE,
            recipients: recipients.fingerprints(),
        };
        let secret = RepoSecret::generate(config.id)?;
        // The secret first: a `config` without its key would be a repository
        // nobody can write to.
        put(&*store, SECRET_KEY, &recipients.encrypt(&secret.to_json()))?;
        let json = serde_json::to_vec_pretty(&config).expect("config serialises");
        put(&*store, CONFIG_KEY, &json)?;
        Ok(Repository {
            store,
            config,
            secret,
            recipients: Some(recipients),
            identity: None,
        })
    }

    /// Opens the repository in `store` with the keys the caller holds.
    pub fn open(store: Arc<dyn Store>, keys: Keys) -> Result<Repository> {
        let config = read_config(&*store)?;
        let secret = match (keys.secret, &keys.identity) {
            (Some(secret), _) => {
                if secret.repository_id != config.id {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "the repository secret belongs to repository {}, not to {} at {}",
                            secret.repository_id,
                            config.id,
                            store.location()
                        ),
                    )
                    .with_guidance(
                        "point encryption.repository_secret_file at this repository's secret",
                    ));
                }
                secret
            }
            (None, Some(identity)) => {
                let sealed = store.get(SECRET_KEY)?;
                let plain = identity.decrypt("the repository secret (keys/repository)", &sealed)?;
                RepoSecret::from_json(&plain).map_err(|e| {
                    Error::new(ErrorKind::Integrity, "the repository secret does not parse")
                        .with_source(e)
                })?
            }
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Permission,
                    "no key to open the repository with",
                )
                .with_guidance(
                    "writers need encryption.repository_secret_file (written by `drctl repo init`); \
                     readers need the age identity (--identity FILE or DRCTL_IDENTITY_FILE)",
                ));
            }
        };
        Ok(Repository {
            store,
            config,
            secret,
            recipients: keys.recipients,
            identity: keys.identity,
        })
    }

    /// The recipients, for writing. Errors when the caller has none.
    pub fn recipients(&self) -> Result<&Recipients> {
        self.recipients.as_ref().ok_or_else(|| {
            Error::config("writing needs age recipients")
                .with_guidance("set encryption.recipients in the configuration")
        })
    }

    /// The identity, for reading. Errors when the caller has none.
    pub fn identity(&self) -> Result<&Identity> {
        self.identity.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Permission,
                "reading backups needs the age identity",
            )
            .with_guidance(
                "pass --identity FILE, set DRCTL_IDENTITY_FILE, or set encryption.identity_file",
            )
        })
    }
}

/// Reads and checks the `config` object.
pub fn read_config(store: &dyn Store) -> Result<RepoConfig> {
    let bytes = store.get(CONFIG_KEY).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::new(
                ErrorKind::NotFound,
                format!("there is no repository at {}", store.location()),
            )
            .with_guidance(
                "check repository in the configuration, or create one with `drctl repo init`",
            )
        } else {
            e
        }
    })?;
    let config: RepoConfig = serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            format!(
                "the repository config at {} does not parse",
                store.location()
            ),
        )
        .with_source(e)
    })?;
    if config.format_version != crate::REPOSITORY_FORMAT_VERSION {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "the repository at {} has format version {}; this drctl reads version {}",
                store.location(),
                config.format_version,
                crate::REPOSITORY_FORMAT_VERSION
            ),
        )
        .with_guidance(
            "use the drctl release that matches the repository format (drctl version)",
        ));
    }
    Ok(config)
}

/// Put-once with a checksum and no lock date (the caller adds one on S3).
pub fn put(store: &dyn Store, key: &str, data: &[u8]) -> Result<()> {
    store.put(
        key,
        data,
        &PutOptions {
            sha256: sha256(data),
            retain_until: None,
        },
    )?;
    Ok(())
}
