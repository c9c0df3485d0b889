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

/// A place to keep objects. Keys are `/`-separated relative paths.
pub trait Store: Send + Sync {
    /// Writes `data` under `key` unless the key exists: put-once. Returns
    /// [`crate::ErrorKind::Integrity`] when `data` does not match
    /// `opts.sha256`, and an error whose kind is `Config` when the key exists.
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
    /// Metadata of one version of an object (on a versioned store; others
    /// have one), `None` when absent.
    fn head_version(&self, key: &str, version: &str) -> Result<Option<ObjectMeta>> {
        let _ = version;
        self.head(key)
    }
    /// Reads one version of an object (on a versioned store; others have one).
    fn get_version(&self, key: &str, version: &str) -> Result<Vec<u8>> {
        let _ = version;
        self.get(key)
    }
    /// Every version of the object `key`, newest first. Empty on stores
    /// without versions.
    fn versions(&self, key: &str) -> Result<Vec<ObjectMeta>> {
        let _ = key;
        Ok(Vec::new())
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
    /// Removes what interrupted writes left behind and nothing has touched
    /// since `before` (the temporary files of a killed backup, on a
    /// directory); returns what was removed and its size. Nothing on stores
    /// that leave nothing.
    fn remove_abandoned(&self, before: DateTime<Utc>) -> Result<Vec<(String, u64)>> {
        let _ = before;
        Ok(Vec::new())
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
