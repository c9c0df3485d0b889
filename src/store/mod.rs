//! Object storage: where repositories live.
//!
//! The trait is small on purpose and shaped by S3 with Object Lock, the
//! backend that matters: objects are written once (never overwritten), each
//! with a checksum and a retain-until date, and are read whole or by range.
//! The local-directory backend implements the same contract so that tests and
//! air-gapped copies behave like the bucket.
//!
//! Calls are blocking: the data path runs on pipeline threads that are busy
//! with CPU work (hashing, compression, encryption), and a blocking store keeps
//! that code straightforward. An async backend drives its own runtime.

pub mod local;
pub mod s3;
pub mod timed;

use std::ops::Range;

use chrono::{DateTime, Utc};

use crate::error::Result;

/// What a put carries besides the bytes.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// SHA-256 of the bytes; the backend refuses bytes that do not match.
    pub sha256: [u8; 32],
    /// Object Lock retain-until date; `None` only for backends without locks.
    pub retain_until: Option<DateTime<Utc>>,
}

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// The version written (S3 version id); `None` on unversioned stores.
    pub version_id: Option<String>,
    pub retain_until: Option<DateTime<Utc>>,
    /// Object Lock mode (`COMPLIANCE`, `GOVERNANCE`); `None` without a lock.
    pub lock_mode: Option<String>,
}

/// Something an interrupted write left in a store: see [`Store::debris`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debris {
    /// Names it for [`Store::remove_debris`] and for people: a temporary
    /// file's name, or `KEY?uploadId=ID` for an unfinished upload.
    pub id: String,
    /// Bytes it holds, where the store says (0 when it does not).
    pub size: u64,
}

/// One entry of an object's history on a versioned store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub meta: ObjectMeta,
    /// A delete marker: what a plain DELETE leaves on a versioned bucket. It
    /// hides the object from `get` and `list` but removes nothing.
    pub delete_marker: bool,
    /// When the version was written, where the store says.
    pub modified: Option<DateTime<Utc>>,
}

/// A place to keep objects. Keys are `/`-separated relative paths.
pub trait Store: Send + Sync {
    /// Writes `data` under `key` unless the key exists: put-once. Returns
    /// [`crate::ErrorKind::Integrity`] when `data` does not match
    /// `opts.sha256`. When the key exists, a versioned store compares the
    /// original with `data`: the same bytes are success (a retried put whose
    /// first answer was lost), other bytes an integrity error; a directory
    /// answers with an error whose kind is `Config`.
    fn put(&self, key: &str, data: &[u8], opts: &PutOptions) -> Result<ObjectMeta>;
    /// Reads a whole object. `NotFound` when absent.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Reads `range` of an object.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;
    /// Metadata of an object, `None` when absent.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Deletes an object, or one version of it (garbage collection only; a
    /// locked object refuses).
    fn delete(&self, key: &str, version: Option<&str>) -> Result<()>;
    /// Metadata of one version of an object (the object itself when
    /// `None`; a store without versions has one), `None` when absent.
    fn head_version(&self, key: &str, version: Option<&str>) -> Result<Option<ObjectMeta>> {
        let _ = version;
        self.head(key)
    }
    /// Reads one version of an object (on a versioned store; others have one).
    fn get_version(&self, key: &str, version: &str) -> Result<Vec<u8>> {
        let _ = version;
        self.get(key)
    }
    /// The history of `key`: its versions oldest first, then its delete
    /// markers. A store without versions answers with the object, if any.
    fn versions(&self, key: &str) -> Result<Vec<Version>> {
        Ok(self
            .head(key)?
            .into_iter()
            .map(|meta| Version {
                meta,
                delete_marker: false,
                modified: None,
            })
            .collect())
    }
    /// Reads `version` of `key` (the object itself when `None`), refusing
    /// more than `limit` bytes: whatever the server announces, no more is
    /// ever buffered.
    fn read(&self, key: &str, version: Option<&str>, limit: u64) -> Result<Vec<u8>> {
        let bytes = match version {
            Some(v) => self.get_version(key, v)?,
            None => self.get(key)?,
        };
        if bytes.len() as u64 > limit {
            return Err(too_large(key, bytes.len() as u64, limit));
        }
        Ok(bytes)
    }
    /// Makes the lock of an object (version) last at least until `until`,
    /// never shortening it, and returns the lock's end. `None` on stores
    /// without locks.
    fn extend_retention(
        &self,
        key: &str,
        version: Option<&str>,
        until: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let _ = (key, version, until);
        Ok(None)
    }
    /// Where this store is, for people and for the catalog
    /// (`file:///var/lib/drctl/repo`, `s3://bucket/prefix`).
    fn location(&self) -> String;
    /// What interrupted writes left behind: the temporary files of a killed
    /// backup (on a directory), the parts of a multipart upload it never
    /// completed (on S3). Nothing on stores that leave nothing. The store
    /// does not judge their age: gc does, from when it first saw them.
    fn debris(&self) -> Result<Vec<Debris>> {
        Ok(Vec::new())
    }
    /// Removes one piece of [`Store::debris`], by its id.
    fn remove_debris(&self, id: &str) -> Result<()> {
        Err(crate::error::Error::new(
            crate::error::ErrorKind::Failed,
            format!(
                "{} leaves no debris, so it cannot remove {id}",
                self.location()
            ),
        ))
    }
    /// Starts a content-addressed object written piece by piece: its key
    /// depends on the SHA-256 of all its bytes, so it is chosen when the
    /// object is finished. `buffer` is memory to reuse (from an earlier
    /// [`Finished`]), `size_hint` about how large the object will be.
    ///
    /// The default holds the object in memory and [`Store::put`]s it whole,
    /// which is what a store needs that takes the checksum before the bytes
    /// (S3 with Object Lock). A store that can write first and name the
    /// object after (a directory) streams it instead: a pack is then never
    /// held whole in memory, and is hashed once, as it is written.
    fn upload(&self, buffer: Vec<u8>, size_hint: usize) -> Result<Box<dyn Upload + '_>> {
        let mut data = buffer;
        data.clear();
        data.reserve(size_hint);
        Ok(Box::new(Buffered { store: self, data }))
    }
}

/// An object being written; see [`Store::upload`]. Dropped unfinished, it
/// leaves nothing under any key.
pub trait Upload: Send {
    /// Appends `bytes` to the object.
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Stores the object, put-once, under `key(SHA-256 of its bytes)`.
    fn finish(
        self: Box<Self>,
        key: &dyn Fn(&[u8; 32]) -> String,
        retain_until: Option<DateTime<Utc>>,
    ) -> Result<Finished>;
}

/// A finished [`Upload`].
pub struct Finished {
    pub meta: ObjectMeta,
    pub sha256: [u8; 32],
    /// The upload's memory, for the next one.
    pub buffer: Vec<u8>,
}

/// [`Store::upload`] for stores that need an object whole.
struct Buffered<'a, S: ?Sized> {
    store: &'a S,
    data: Vec<u8>,
}

impl<S: Store + ?Sized> Upload for Buffered<'_, S> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.data.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(
        self: Box<Self>,
        key: &dyn Fn(&[u8; 32]) -> String,
        retain_until: Option<DateTime<Utc>>,
    ) -> Result<Finished> {
        let sha = sha256(&self.data);
        let opts = PutOptions {
            sha256: sha,
            retain_until,
        };
        let meta = self.store.put(&key(&sha), &self.data, &opts)?;
        Ok(Finished {
            meta,
            sha256: sha,
            buffer: self.data,
        })
    }
}

/// The authentic version of `key`, which drctl writes once: the oldest
/// version that is not a delete marker. Object Lock keeps a version from
/// being deleted or overwritten, but anyone who can write to the bucket can
/// put a *new* version over it or hide it under a delete marker; neither is
/// ever read.
pub fn original(store: &dyn Store, key: &str) -> Result<Option<ObjectMeta>> {
    Ok(store
        .versions(key)?
        .into_iter()
        .find(|v| !v.delete_marker)
        .map(|v| v.meta))
}

/// An object read through [`read_original`] or [`read_first_matching`].
#[derive(Debug)]
pub struct Original {
    /// Of the version read.
    pub meta: ObjectMeta,
    pub bytes: Vec<u8>,
    /// Versions of the key other than the one read, and delete markers: each
    /// is a sign that someone used write access against the repository.
    pub others: usize,
}

/// Reads the authentic version of `key` ([`original`]), refusing it before
/// the download when it is larger than `limit`, the most a `what` can be.
/// `NotFound` when the key has no version.
pub fn read_original(store: &dyn Store, key: &str, what: &str, limit: u64) -> Result<Original> {
    let versions = store.versions(key)?;
    let others = versions.len().saturating_sub(1);
    let Some(meta) = versions
        .into_iter()
        .find(|v| !v.delete_marker)
        .map(|v| v.meta)
    else {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::NotFound,
            format!("object {key} does not exist"),
        ));
    };
    if meta.size > limit {
        return Err(too_large(key, meta.size, limit).with_guidance(format!(
            "a {what} is never that large: this object was not written by drctl; \
             run `drctl verify --storage` and check who holds write access to the bucket"
        )));
    }
    let bytes = store.read(key, meta.version_id.as_deref(), limit)?;
    Ok(Original {
        meta,
        bytes,
        others,
    })
}

/// Reads the versions of the content-addressed `key`, oldest first, and
/// returns the first whose bytes `matches` accepts, skipping (unread) those
/// larger than `limit`. A pack is named by its own hash, so any version that
/// hashes to its key is the pack; the search stops at the first.
pub fn read_first_matching(
    store: &dyn Store,
    key: &str,
    limit: u64,
    matches: &dyn Fn(&[u8]) -> bool,
) -> Result<Option<Original>> {
    let versions = store.versions(key)?;
    let others = versions.len().saturating_sub(1);
    for v in versions {
        if v.delete_marker || v.meta.size > limit {
            continue;
        }
        let bytes = store.read(key, v.meta.version_id.as_deref(), limit)?;
        if matches(&bytes) {
            return Ok(Some(Original {
                meta: v.meta,
                bytes,
                others,
            }));
        }
    }
    Ok(None)
}

fn too_large(key: &str, size: u64, limit: u64) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::ErrorKind::Integrity,
        format!(
            "refusing to read {key}: it is {size} bytes, more than the {limit} its kind can be"
        ),
    )
}

/// Refuses bytes that do not match the checksum their put carries: the
/// contract of [`Store::put`], checked by each backend before it writes.
pub(crate) fn check_checksum(key: &str, data: &[u8], opts: &PutOptions) -> Result<()> {
    if sha256(data) != opts.sha256 {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::Integrity,
            format!("refusing to store {key}: its bytes do not match their checksum"),
        ));
    }
    Ok(())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
