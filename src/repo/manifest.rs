//! Manifests: what one backup holds, sealed so it can be trusted.
//!
//! A manifest carries the tree (for volumes: every entry with its metadata and
//! chunk list) and the pack location of every chunk it references, so a backup
//! restores from the bucket alone, with the catalog gone.
//!
//! ```text
//! object manifests/<backup-id> = age( MAC ‖ zstd(JSON) )
//! MAC = BLAKE3-keyed(manifest MAC key, "drctl manifest v1" ‖ backup-id ‖ zstd(JSON))
//! ```
//! The MAC binds the body to its backup id, so a manifest copied under another
//! id fails too.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto::{ChunkId, Identity, Recipients, RepoSecret};
use crate::error::{Error, ErrorKind, Result};

/// Format 2: a volume backup's listing is in tree objects ([`super::tree`]),
/// named by `tree`; its packs are listed in `packs`. Format 1 (every entry
/// and chunk location in the manifest) is still read.
pub const MANIFEST_FORMAT: u32 = 2;
/// The oldest format this drctl reads.
pub const OLDEST_FORMAT: u32 = 1;

/// The most a sealed manifest can be (its JSON may decompress to 1 GiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Reads the original of backup `id`'s sealed manifest (never a version put
/// over it later), refusing one larger than a manifest can be.
pub fn read_sealed(store: &dyn crate::store::Store, id: Uuid) -> Result<crate::store::Original> {
    let key = manifest_key(id);
    let read =
        crate::store::read_original(store, &key, "manifest", MAX_MANIFEST_BYTES).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::new(
                    ErrorKind::NotFound,
                    format!("backup {id} has no manifest in {}", store.location()),
                )
                .with_guidance("it may have failed or still be running: `drctl backup describe ID`")
            } else {
                e
            }
        })?;
    if read.others > 0 {
        tracing::warn!(
            manifest = %key,
            others = read.others,
            "this manifest has later versions or delete markers: someone with write access to \
             the bucket tried to replace or hide it; reading the original"
        );
    }
    Ok(read)
}

/// The object key of a backup's manifest.
pub fn manifest_key(id: Uuid) -> String {
    format!("manifests/{id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: Uuid,
    pub repository_id: Uuid,
    /// `volume`, `etcd`, `resources` or `namespaces` (a set).
    pub kind: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub parent: Option<Uuid>,
    /// What was read: a directory or a block image.
    pub source: String,
    /// `complete` or `partial`.
    pub status: String,
    #[serde(default)]
    pub problems: Vec<Problem>,
    pub entries: Vec<Entry>,
    /// Every chunk the entries reference; entries point into this list.
    pub chunks: Vec<ChunkLocation>,
    /// What an etcd backup recorded about its snapshot, so that a drill
    /// can prove a restore equal with the catalog gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSnapshot>,
    /// The objects of a resources backup, sorted by type, namespace and
    /// name; each object's JSON is one chunk. Stored in the object table,
    /// not here; here once the table is read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<KubeObject>,
    /// Where a resources backup keeps `objects` instead: indexes into
    /// `chunks` of the chunks of its object table, in order
    /// ([`super::object_table`]). Cleared by `object_table::expand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_table: Option<Vec<u32>>,
    /// A volume backup's top tree ([`super::tree`]): its listing. `entries`
    /// and `chunks` are then empty until [`super::tree::expand`] fills them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<ChunkId>,
    /// Every pack a volume backup with a `tree` references (data and trees).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<String>,
    /// What a volume backup with a `tree` holds, for listings that do not
    /// read its trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
    /// A namespace backup set's members (its resources backup and one
    /// volume backup per claim), so a set restores with the catalog gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Directories, files and links.
    pub entries: u64,
    /// Files (and block images) and their size.
    pub files: u64,
    pub bytes: u64,
}

/// One Kubernetes object of a resources backup. Its JSON (as the API
/// server listed it, with `apiVersion` and `kind`) is the chunk `chunk`;
/// that chunk's id is the object's digest, so an unchanged object is the
/// same chunk in every backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeObject {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The plural in URLs: `deployments`.
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// Index into [`Manifest::chunks`].
    pub chunk: u32,
    pub size: u32,
}

/// An etcd snapshot as backed up: the member it came from and what a member
/// started on the restored file must answer. The snapshot is stored whole,
/// SHA-256 trailer included, as the single entry `snapshot.db`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdSnapshot {
    pub endpoint: String,
    /// Member id in hex, as `etcdctl member list` prints it.
    pub member_id: String,
    /// etcd's version on that member.
    pub version: String,
    /// The snapshot's revision (from its own pages, see
    /// `source::etcd::bbolt`), and its compaction revision.
    pub revision: i64,
    pub compact_revision: Option<i64>,
    /// Keys at `revision`; `None` when a compaction during the backup
    /// made it unreadable.
    pub key_count: Option<i64>,
    /// `HashKV` at `revision`; `None` as for `key_count`.
    pub hash_kv: Option<u32>,
    /// Size of the bbolt file, without the 32-byte trailer.
    pub db_size: u64,
    /// Keys under `/registry/` at `revision` per resource type
    /// (`<group|core>/<plural>`), for drills. Absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_counts: Option<std::collections::BTreeMap<String, i64>>,
}

/// The name of an etcd backup's one entry.
pub const SNAPSHOT_ENTRY: &str = "snapshot.db";

/// A path that could not be backed up, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// Another name of a file earlier in the list (`target`).
    Hardlink,
    /// A raw block image.
    Block,
}

impl EntryKind {
    /// The name it has in manifests and in the catalog's `item_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Block => "block",
        }
    }
}

/// One entry of a volume tree. Paths are relative and escaped
/// ([`crate::source::volume::escape`]) so non-UTF-8 names survive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    pub size: u64,
    /// Symlink target, or the first name of a hard-linked file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Extended attributes: escaped name, hex value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, String)>,
    /// Data regions of a file; the rest of `size` is holes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extents: Vec<Extent>,
    /// Change time (nanoseconds since the epoch) and inode number when it
    /// was backed up: what the next incremental compares besides size and
    /// mtime. Not restored; kept so that a catalog rebuilt from manifests
    /// (`drctl catalog rebuild`) keeps backups incremental. Absent in
    /// manifests written before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    /// Indexes into [`Manifest::chunks`], in order.
    pub chunks: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkLocation {
    pub id: ChunkId,
    pub pack: String,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

impl Manifest {
    /// Serialises, authenticates and encrypts the manifest.
    pub fn seal(&self, secret: &RepoSecret, recipients: &Recipients) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("manifest serialises");
        seal(MANIFEST_DOMAIN, self.backup_id, &json, secret, recipients)
    }

    /// Decrypts and authenticates the manifest of backup `id`.
    pub fn open(
        id: Uuid,
        sealed: &[u8],
        secret: &RepoSecret,
        identity: &Identity,
    ) -> Result<Manifest> {
        let what = format!("the manifest of backup {id}");
        let forged = || {
            Error::new(
                ErrorKind::Integrity,
                format!(
                    "{what} failed authentication: it was not written by this repository's writers"
                ),
            )
            .with_guidance(
                "do not restore it; someone with write access to the bucket may have planted \
                 it. Other backups are unaffected",
            )
        };
        let json = open(
            MANIFEST_DOMAIN,
            id,
            sealed,
            secret,
            identity,
            &what,
            1 << 30,
        )?
        .ok_or_else(forged)?;
        let manifest: Manifest = serde_json::from_slice(&json).map_err(|e| {
            Error::new(ErrorKind::Integrity, format!("{what} does not parse")).with_source(e)
        })?;
        if !(OLDEST_FORMAT..=MANIFEST_FORMAT).contains(&manifest.format) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{what} has format {}, this drctl reads {MANIFEST_FORMAT}",
                    manifest.format
                ),
            )
            .with_guidance("use a drctl version that matches the repository"));
        }
        if manifest.backup_id != id || manifest.repository_id != secret.repository_id {
            return Err(forged());
        }
        Ok(manifest)
    }
}

const MANIFEST_DOMAIN: &[u8] = b"drctl manifest v1";

/// Seals `json` written once under `id` (a manifest, a drill report):
/// zstd, then a MAC under the repository's manifest key over `domain`, the
/// id and the body, then age to the recipients. Whoever holds only the
/// recipients (a bucket writer) can encrypt, but not authenticate: a
/// planted object fails [`open`].
pub fn seal(
    domain: &[u8],
    id: Uuid,
    json: &[u8],
    secret: &RepoSecret,
    recipients: &Recipients,
) -> Vec<u8> {
    let body = zstd::bulk::compress(json, 3).expect("zstd in memory");
    let mut plain = mac(domain, secret, id, &body).to_vec();
    plain.extend_from_slice(&body);
    recipients.encrypt(&plain)
}

/// Decrypts and authenticates what [`seal`] made under `domain` and `id`:
/// the JSON, or `None` when the MAC does not match (forged, or moved from
/// another id). At most `limit` bytes once decompressed.
pub fn open(
    domain: &[u8],
    id: Uuid,
    sealed: &[u8],
    secret: &RepoSecret,
    identity: &Identity,
    what: &str,
    limit: usize,
) -> Result<Option<Vec<u8>>> {
    let plain = identity.decrypt(what, sealed)?;
    if plain.len() < 32 {
        return Ok(None);
    }
    let (tag, body) = plain.split_at(32);
    // blake3::Hash compares in constant time.
    if blake3::Hash::from_bytes(tag.try_into().expect("32 bytes"))
        != blake3::Hash::from_bytes(mac(domain, secret, id, body))
    {
        return Ok(None);
    }
    zstd::bulk::decompress(body, limit).map(Some).map_err(|e| {
        Error::new(ErrorKind::Integrity, format!("{what} does not decompress")).with_source(e)
    })
}

fn mac(domain: &[u8], secret: &RepoSecret, id: Uuid, body: &[u8]) -> [u8; 32] {
    let mut input = Vec::with_capacity(body.len() + domain.len() + 16);
    input.extend_from_slice(domain);
    input.extend_from_slice(id.as_bytes());
    input.extend_from_slice(body);
    secret.manifest_mac(&input)
}

#[cfg(test)]
mod tests {
    use super::EntryKind;

    #[test]
    fn kind_names_are_the_serialised_ones() {
        use EntryKind::*;
        for k in [Dir, File, Symlink, Hardlink, Block] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
