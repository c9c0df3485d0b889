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
//!
//! Every key is written once, and what is read is its *original*: the
//! oldest version, whatever a bucket writer put on top of it or hid it under
//! ([`crate::store::original`]). The secret pins `config` by its SHA-256, so
//! neither can be swapped for one of an attacker's making without a reader
//! noticing; a reader may also pin the secret itself by its fingerprint.

pub mod chunker;
pub mod crypto;
pub mod grant;
pub mod manifest;
pub mod object_table;
pub mod pack;
pub mod tree;
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
/// The most a `config` object can be; anything larger is refused unread.
pub const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// The most a sealed `keys/repository` can be.
pub const MAX_SECRET_BYTES: u64 = 64 << 10;
/// The range of `pack_size` a config may set: outside it, a writer would
/// make an object per chunk or run out of memory.
pub const PACK_SIZE_RANGE: std::ops::RangeInclusive<usize> = (1 << 20)..=(256 << 20);
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
        // Any version counts, one hidden under a delete marker included.
        if crate::store::original(&*store, CONFIG_KEY)?.is_some()
            || crate::store::original(&*store, SECRET_KEY)?.is_some()
        {
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
        let json = serde_json::to_vec_pretty(&config).expect("config serialises");
        let secret = RepoSecret::generate(config.id, sha256(&json))?;
        // The secret first: a `config` without its key would be a repository
        // nobody can write to.
        put(&*store, SECRET_KEY, &recipients.encrypt(&secret.to_json()))?;
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
    ///
    /// A writer takes the secret from its file and never decrypts; a reader
    /// decrypts the original `keys/repository` with its identity, and when
    /// it also has a secret file, the two must be the same secret. Either
    /// way the original `config` must be the one the secret pins, and the
    /// secret the one `pin` names, when set.
    pub fn open(store: Arc<dyn Store>, keys: Keys, pin: Option<&str>) -> Result<Repository> {
        let (config, config_sha) = read_config(&*store)?;
        let secret = match (keys.secret, &keys.identity) {
            (Some(secret), None) => secret,
            (secret, Some(identity)) => {
                let stored = read_secret(&*store, identity)?;
                if let Some(configured) = secret
                    && configured.fingerprint() != stored.fingerprint()
                {
                    return Err(Error::new(
                        ErrorKind::Integrity,
                        format!(
                            "the repository secret in {} is not the one in encryption.repository_secret_file",
                            store.location()
                        ),
                    )
                    .with_guidance(
                        "someone with write access to the bucket may have replaced keys/repository, \
                         or the file belongs to another repository; run `drctl verify --storage`",
                    ));
                }
                stored
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
            .with_guidance("point encryption.repository_secret_file at this repository's secret"));
        }
        if secret.config_sha256 != config_sha {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "the repository config at {} is not the one its secret was made with",
                    store.location()
                ),
            )
            .with_guidance(
                "someone with write access to the bucket wrote a config of their own; nothing \
                 was read or written. Run `drctl verify --storage` to see every changed object",
            ));
        }
        if let Some(pin) = pin
            && pin != secret.fingerprint()
        {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "the repository secret at {} has fingerprint {}, not the {pin} this reader is pinned to",
                    store.location(),
                    secret.fingerprint()
                ),
            )
            .with_guidance(
                "the repository was replaced or this is another repository: check \
                 encryption.repository_fingerprint against `drctl repo info` on a trusted machine",
            ));
        }
        Ok(Repository {
            store,
            config,
            secret,
            recipients: keys.recipients,
            identity: keys.identity,
        })
    }

    /// The most a pack of this repository can be: its target size, the
    /// largest chunk that can overshoot it, and an index that, for packs of
    /// tiny chunks, can outgrow the chunks themselves.
    pub fn max_pack_bytes(&self) -> u64 {
        4 * self.config.pack_size as u64 + 2 * u64::from(chunker::CDC_MAX)
    }

    /// The recipients, for writing. Errors when the caller has none.
    pub fn recipients(&self) -> Result<&Recipients> {
        self.recipients.as_ref().ok_or_else(|| {
            Error::config("writing needs age recipients")
                .with_guidance("set encryption.recipients in the configuration")
        })
    }

    /// This repository read with `identity` instead (a node agent's
    /// restore grant).
    pub fn with_identity(&self, identity: Identity) -> Repository {
        Repository {
            store: self.store.clone(),
            config: self.config.clone(),
            secret: self.secret.clone(),
            recipients: self.recipients.clone(),
            identity: Some(identity),
        }
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

/// Reads the original `config` object and checks what can be checked
/// without the secret; returns it with its SHA-256 (for the secret's pin).
pub fn read_config(store: &dyn Store) -> Result<(RepoConfig, [u8; 32])> {
    let read =
        crate::store::read_original(store, CONFIG_KEY, "repository config", MAX_CONFIG_BYTES)
            .map_err(|e| {
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
    let bytes = read.bytes;
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
    if !PACK_SIZE_RANGE.contains(&config.pack_size) {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "the repository config at {} sets pack_size {}, outside what drctl writes",
                store.location(),
                config.pack_size
            ),
        )
        .with_guidance("run `drctl verify --storage`: the config may have been replaced"));
    }
    Ok((config, sha256(&bytes)))
}

/// The original of `config` or `keys/repository` as stored, within its
/// format limit; `None` when the repository has none. For what records and
/// locks these objects (a backup, `catalog rebuild`); opening the
/// repository is what checks them.
pub fn read_root_object(store: &dyn Store, key: &str) -> Result<Option<crate::store::Original>> {
    let limit = if key == CONFIG_KEY {
        MAX_CONFIG_BYTES
    } else {
        MAX_SECRET_BYTES
    };
    match crate::store::read_original(store, key, key, limit) {
        Ok(read) => Ok(Some(read)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Decrypts the original `keys/repository`.
fn read_secret(store: &dyn Store, identity: &Identity) -> Result<RepoSecret> {
    let sealed =
        crate::store::read_original(store, SECRET_KEY, "repository secret", MAX_SECRET_BYTES)?;
    let plain = identity.decrypt("the repository secret (keys/repository)", &sealed.bytes)?;
    RepoSecret::from_json(&plain).map_err(|e| {
        Error::new(ErrorKind::Integrity, "the repository secret does not parse").with_source(e)
    })
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
