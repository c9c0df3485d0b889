//! Packs: many encrypted chunks in one object, with their own encrypted index.
//!
//! ```text
//! [blob 0][blob 1]…[blob n-1][index (age)][index length: u32 LE]["DRCTLPK1"]
//! blob  = nonce ‖ XChaCha20-Poly1305(data key, flag: u8 (0 raw, 1 zstd) ‖ payload; aad = chunk id) ‖ tag
//! index = age(zstd(JSON {keys: [data key…], chunks: [{id, offset, length, raw_length, key}…]}))
//! ```
//! The object key is the SHA-256 of all of it, so any change to a pack, a
//! replaced pack included, is caught before a byte of it is trusted. Each
//! chunk is then checked against its keyed id after decryption and
//! decompression. Chunks that zstd does not shrink are stored raw.
//! The index makes a pack self-describing: the catalog can be rebuilt from
//! the packs and manifests alone, and it carries the data keys, so one age
//! decryption opens every chunk of the pack.

use serde::{Deserialize, Serialize};

use super::crypto::{ChunkId, DataKey, Identity, Recipients, RepoSecret};
use crate::error::{Error, ErrorKind, Result};
use crate::store::{ObjectMeta, Store, Upload, sha256};

pub(crate) const MAGIC: &[u8; 8] = b"DRCTLPK1";
/// The key number of a blob sealed with the repository's tree key
/// ([`RepoSecret::tree_key`]) rather than one of the index's data keys: a
/// tree object. Its id is a tree id ([`RepoSecret::tree_id`]).
pub const TREE_KEY: u16 = u16::MAX;
const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

/// Where a chunk is inside its pack, and which data key sealed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: ChunkId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    /// Index into [`PackIndex::keys`]: the number of the worker that
    /// sealed the chunk. 16 bits (JSON, so packs written with 8 read the
    /// same): a machine with more than 256 cores must not wrap it around.
    pub key: u16,
}

/// The decrypted index of a pack.
#[derive(Debug, Serialize, Deserialize)]
pub struct PackIndex {
    pub keys: Vec<DataKey>,
    pub chunks: Vec<IndexEntry>,
}

impl PackIndex {
    /// The data key of `entry` (the tree key for a tree object).
    pub fn key(&self, pack: &str, entry: &IndexEntry, secret: &RepoSecret) -> Result<DataKey> {
        if entry.key == TREE_KEY {
            return Ok(secret.tree_key());
        }
        self.keys.get(entry.key as usize).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Integrity,
                format!("pack {pack}: index names a missing key"),
            )
        })
    }
}

/// Compresses (when it helps) and encrypts one chunk into a blob, in `out`.
/// The compressor and `out` are the caller's, reused across chunks: a fresh
/// zstd context per chunk costs more than compressing a small file, and a
/// fresh zeroed buffer per chunk was an eighth of a backup's CPU time.
/// zstd writes straight into the blob, which is then encrypted in place.
pub fn seal_chunk(
    id: &ChunkId,
    data: &[u8],
    zstd: &mut zstd::bulk::Compressor<'_>,
    key: &DataKey,
    mut out: Vec<u8>,
) -> Result<Vec<u8>> {
    DataKey::start_blob(&mut out);
    out.push(FLAG_ZSTD);
    let start = out.len();
    out.reserve(zstd::zstd_safe::compress_bound(data.len()));
    let mut cursor = std::io::Cursor::new(&mut out);
    cursor.set_position(start as u64);
    let compressed = zstd
        .compress_to_buffer(data, &mut cursor)
        // Keep compression only when it saves at least 1/32: below that the
        // decompression cost on restore buys nothing.
        .is_ok_and(|n| out.len() == start + n && n + n / 32 < data.len());
    if !compressed {
        DataKey::start_blob(&mut out);
        out.reserve(1 + data.len() + 16);
        out.push(FLAG_RAW);
        out.extend_from_slice(data);
    }
    key.seal_in_place(id, &mut out)?;
    Ok(out)
}

/// Decrypts and decompresses a blob, and checks it is the chunk `id`.
fn open_chunk(
    blob: &[u8],
    entry: &IndexEntry,
    key: &DataKey,
    secret: &RepoSecret,
    pack: &str,
    zstd: &mut zstd::bulk::Decompressor<'_>,
) -> Result<Vec<u8>> {
    let plain = key.open(&entry.id, blob).ok_or_else(|| {
        Error::new(
            ErrorKind::Integrity,
            format!(
                "chunk {} in pack {pack} fails authentication",
                entry.id.to_hex()
            ),
        )
    })?;
    finish_chunk(&plain, entry, secret, pack, zstd)
}

/// Decompresses an authenticated blob's plaintext and checks it is the
/// chunk `entry` names.
fn finish_chunk(
    plain: &[u8],
    entry: &IndexEntry,
    secret: &RepoSecret,
    pack: &str,
    zstd: &mut zstd::bulk::Decompressor<'_>,
) -> Result<Vec<u8>> {
    let what = || format!("chunk {} in pack {pack}", entry.id.to_hex());
    let data = match plain.split_first() {
        Some((&FLAG_RAW, rest)) => rest.to_vec(),
        Some((&FLAG_ZSTD, rest)) => {
            let mut out = Vec::with_capacity(entry.raw_length as usize);
            zstd.decompress_to_buffer(rest, &mut out).map_err(|e| {
                Error::new(
                    ErrorKind::Integrity,
                    format!("{} does not decompress", what()),
                )
                .with_source(e)
            })?;
            out
        }
        _ => {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("{} has an unknown encoding", what()),
            ));
        }
    };
    let id = if entry.key == TREE_KEY {
        secret.tree_id(&data)
    } else {
        secret.chunk_id(&data)
    };
    if data.len() != entry.raw_length as usize || id != entry.id {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!("{} does not match its id", what()),
        ));
    }
    Ok(data)
}

/// Opens a tree object's blob read straight from a pack (by a writer,
/// which cannot read pack indexes): checked against its tree id.
pub fn open_tree_blob(
    blob: &[u8],
    id: &ChunkId,
    raw_length: u32,
    secret: &RepoSecret,
    pack: &str,
) -> Result<Vec<u8>> {
    let entry = IndexEntry {
        id: *id,
        offset: 0,
        length: blob.len() as u32,
        raw_length,
        key: TREE_KEY,
    };
    open_chunk(
        blob,
        &entry,
        &secret.tree_key(),
        secret,
        pack,
        &mut decompressor(),
    )
}

/// A zstd decompressor for [`open_chunk`].
pub fn decompressor() -> zstd::bulk::Decompressor<'static> {
    zstd::bulk::Decompressor::new().expect("zstd context")
}

/// Writes blobs into a pack as they come, straight into the store's
/// [`Upload`]: on a store that streams, a pack is never whole in memory.
pub struct PackWriter<'s> {
    upload: Box<dyn Upload + 's>,
    len: usize,
    index: Vec<IndexEntry>,
}

/// A pack with its index written, ready to store.
pub struct SealedPack<'s> {
    upload: Box<dyn Upload + 's>,
    index: Vec<IndexEntry>,
}

/// A pack in the store.
pub struct StoredPack {
    pub key: String,
    pub sha256: [u8; 32],
    pub index: Vec<IndexEntry>,
}

impl<'s> PackWriter<'s> {
    pub fn new(upload: Box<dyn Upload + 's>) -> Self {
        PackWriter {
            upload,
            len: 0,
            index: Vec::new(),
        }
    }

    /// Adds a blob sealed with data key number `key` of the writer.
    pub fn add(&mut self, id: ChunkId, blob: &[u8], raw_length: usize, key: u16) -> Result<()> {
        self.index.push(IndexEntry {
            id,
            offset: self.len as u32,
            length: blob.len() as u32,
            raw_length: raw_length as u32,
            key,
        });
        self.upload.write(blob)?;
        self.len += blob.len();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Writes the index, sealed to the recipients, and the trailer; `keys`
    /// are the writer's data keys, by number.
    pub fn seal(mut self, recipients: &Recipients, keys: &[DataKey]) -> Result<SealedPack<'s>> {
        let index = PackIndex {
            keys: keys.to_vec(),
            chunks: self.index,
        };
        let index_json = serde_json::to_vec(&index).expect("index serialises");
        let sealed =
            recipients.encrypt(&zstd::bulk::compress(&index_json, 3).expect("zstd in memory"));
        self.upload.write(&sealed)?;
        self.upload.write(&(sealed.len() as u32).to_le_bytes())?;
        self.upload.write(MAGIC)?;
        Ok(SealedPack {
            upload: self.upload,
            index: index.chunks,
        })
    }
}

impl SealedPack<'_> {
    /// Stores the pack under the key its SHA-256 gives it; returns the
    /// upload's memory for the next pack.
    pub fn store(
        self,
        retain_until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(StoredPack, ObjectMeta, Vec<u8>)> {
        let done = self.upload.finish(&pack_key, retain_until)?;
        let pack = StoredPack {
            key: done.meta.key.clone(),
            sha256: done.sha256,
            index: self.index,
        };
        Ok((pack, done.meta, done.buffer))
    }
}

/// The object key of a pack with this SHA-256.
pub fn pack_key(sha: &[u8; 32]) -> String {
    let h = hex::encode(sha);
    format!("packs/{}/{h}", &h[..2])
}

/// Checks that `bytes` are the pack stored under `key`.
fn verify_pack(key: &str, bytes: &[u8]) -> Result<()> {
    if pack_key(&sha256(bytes)) != key {
        return Err(mismatch(key));
    }
    Ok(())
}

pub(crate) fn mismatch(key: &str) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!("pack {key} is damaged or replaced: its SHA-256 does not match its key"),
    )
    .with_guidance("run `drctl verify --read-data` to list the backups and files it affects")
}

/// How much of a pack's index its reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexNeed {
    /// Every entry: whole restores, verification, rebuilds.
    All,
    /// Only the data keys: a reader that knows where its few chunks lie
    /// (the manifest says) and opens each with the key that authenticates
    /// it. A pack of tiny files has an index of 240,000 entries; parsing it
    /// to take one chunk was most of a one-file restore.
    Keys,
}

/// The longest prefix of a decompressed index searched for the end of its
/// keys (a pack sealed by 65,535 workers has ~4.6 MB of them).
const KEYS_PREFIX_MAX: usize = 8 << 20;

/// The data keys of an index, from the start of its JSON alone: serde
/// writes `{"keys":[…],"chunks":[…]}` in that order, and a key is hex, so
/// the keys end where `],"chunks":` first appears. `None` when the index
/// does not read that way (then it is parsed whole).
fn keys_only(packed: &[u8]) -> Option<Vec<DataKey>> {
    use std::io::Read;
    const END: &[u8] = b"],\"chunks\":";
    let mut decoder = zstd::stream::read::Decoder::new(packed).ok()?;
    let mut json = Vec::with_capacity(64 << 10);
    let mut buf = vec![0u8; 64 << 10];
    let mut searched: usize = 0;
    loop {
        let n = decoder.read(&mut buf).ok()?;
        if n == 0 || json.len() + n > KEYS_PREFIX_MAX {
            return None;
        }
        json.extend_from_slice(&buf[..n]);
        let from = searched.saturating_sub(END.len());
        if let Some(at) = json[from..].windows(END.len()).position(|w| w == END) {
            let end = from + at + 1; // keep the `]`
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Keys {
                keys: Vec<DataKey>,
            }
            let mut prefix = json[..end].to_vec();
            prefix.push(b'}');
            return serde_json::from_slice::<Keys>(&prefix).ok().map(|k| k.keys);
        }
        searched = json.len();
    }
}

/// Reads the index of a verified pack.
fn read_index(key: &str, bytes: &[u8], identity: &Identity, need: IndexNeed) -> Result<PackIndex> {
    let bad = |why: &str| Error::new(ErrorKind::Integrity, format!("pack {key}: {why}"));
    if bytes.len() < 12 || &bytes[bytes.len() - 8..] != MAGIC {
        return Err(bad("not a drctl pack (no trailer)"));
    }
    let n = bytes.len();
    let len = u32::from_le_bytes(bytes[n - 12..n - 8].try_into().unwrap()) as usize;
    if len > n - 12 {
        return Err(bad("index length out of range"));
    }
    let sealed = &bytes[n - 12 - len..n - 12];
    let packed = identity.decrypt(&format!("the index of pack {key}"), sealed)?;
    if need == IndexNeed::Keys
        && let Some(keys) = keys_only(&packed)
    {
        return Ok(PackIndex {
            keys,
            chunks: Vec::new(),
        });
    }
    let json =
        zstd::bulk::decompress(&packed, 64 << 20).map_err(|_| bad("index does not decompress"))?;
    let index: PackIndex =
        serde_json::from_slice(&json).map_err(|_| bad("index does not parse"))?;
    let data_end = (n - 12 - len) as u64;
    if index.chunks.iter().any(|e| {
        e.offset as u64 + e.length as u64 > data_end
            || (e.key != TREE_KEY && e.key as usize >= index.keys.len())
    }) {
        return Err(bad("index points outside the pack"));
    }
    Ok(index)
}

/// A pack fetched whole, checked against its key, with its index decrypted:
/// the only way the read side gets at chunks, so none skips a check.
pub struct OpenPack {
    pub key: String,
    /// The version read.
    pub meta: ObjectMeta,
    /// Other versions of the key and delete markers, none of them read.
    pub others: usize,
    bytes: Vec<u8>,
    pub index: PackIndex,
    /// Positions in the index in offset order, for [`OpenPack::chunk_at`];
    /// `None` when the index is in offset order itself.
    by_offset: Option<Vec<u32>>,
    /// Where the blobs end and the index begins.
    data_end: usize,
}

impl OpenPack {
    /// Reads the pack `key` and checks it against its hash: of its
    /// versions, oldest first, the first that hashes to its key, so neither
    /// a version put over it nor a delete marker changes what is read.
    /// Versions larger than `limit` (the most a pack of the repository can
    /// be, [`super::Repository::max_pack_bytes`]) are skipped unread.
    pub fn fetch(store: &dyn Store, key: &str, identity: &Identity, limit: u64) -> Result<Self> {
        Self::fetch_with(store, key, identity, limit, IndexNeed::All)
    }

    /// [`OpenPack::fetch`], reading as much of the index as `need` says.
    /// The index is decrypted and parsed while the pack is hashed, on two
    /// threads; nothing parsed is used unless the hash matches.
    pub fn fetch_with(
        store: &dyn Store,
        key: &str,
        identity: &Identity,
        limit: u64,
        need: IndexNeed,
    ) -> Result<Self> {
        let parsed: std::sync::Mutex<Option<Result<PackIndex>>> = std::sync::Mutex::new(None);
        let found = crate::store::read_first_matching(store, key, limit, &|bytes| {
            let (hashed, index) = std::thread::scope(|s| {
                let hashing = s.spawn(|| verify_pack(key, bytes).is_ok());
                let index = read_index(key, bytes, identity, need);
                (hashing.join().unwrap_or(false), index)
            });
            if hashed {
                *parsed.lock().unwrap() = Some(index);
            }
            hashed
        })?;
        let Some(found) = found else {
            if crate::store::original(store, key)?.is_none() {
                return Err(
                    Error::new(ErrorKind::NotFound, format!("pack {key} does not exist"))
                        .with_guidance(
                            "run `drctl verify` to list the backups and files it affects",
                        ),
                );
            }
            return Err(mismatch(key));
        };
        if found.others > 0 {
            tracing::warn!(
                pack = %key,
                others = found.others,
                "this pack has other versions or delete markers: someone with write access to \
                 the bucket replaced or hid it; reading the original"
            );
        }
        let bytes = found.bytes;
        let index = parsed
            .into_inner()
            .unwrap()
            .expect("set when the hash matched")?;
        let data_end = data_end(&bytes);
        // A pack is written blob after blob, so its index is in offset
        // order and is searched as it is; sorted positions only for an
        // index that is not.
        let by_offset = if index.chunks.is_sorted_by_key(|e| e.offset) {
            None
        } else {
            let mut order: Vec<u32> = (0..index.chunks.len() as u32).collect();
            order.sort_by_key(|&i| index.chunks[i as usize].offset);
            Some(order)
        };
        Ok(OpenPack {
            key: key.to_string(),
            meta: found.meta,
            others: found.others,
            bytes,
            index,
            by_offset,
            data_end,
        })
    }

    /// Stored size of the pack.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The plaintext of the chunk `entry` of this pack's index, checked
    /// against its id.
    pub fn chunk(
        &self,
        entry: &IndexEntry,
        secret: &RepoSecret,
        zstd: &mut zstd::bulk::Decompressor<'_>,
    ) -> Result<Vec<u8>> {
        // read_index checked that every entry lies inside the pack.
        let blob = &self.bytes[entry.offset as usize..(entry.offset + entry.length) as usize];
        let key = self.index.key(&self.key, entry, secret)?;
        open_chunk(blob, entry, &key, secret, &self.key, zstd)
    }

    /// The plaintext of the chunk a manifest places at `loc`: the pack's own
    /// index must agree with the manifest on the chunk there (id and
    /// lengths), then the chunk is checked against its id.
    pub fn chunk_at(
        &self,
        loc: &super::manifest::ChunkLocation,
        secret: &RepoSecret,
        zstd: &mut zstd::bulk::Decompressor<'_>,
    ) -> Result<Vec<u8>> {
        if self.index.chunks.is_empty() && !self.index.keys.is_empty() {
            return self.chunk_by_keys(loc, secret, zstd);
        }
        let chunks = &self.index.chunks;
        let found = match &self.by_offset {
            None => chunks.binary_search_by_key(&loc.offset, |e| e.offset).ok(),
            Some(order) => order
                .binary_search_by_key(&loc.offset, |&i| chunks[i as usize].offset)
                .ok()
                .map(|at| order[at] as usize),
        };
        let entry = found
            .map(|i| &chunks[i])
            .filter(|e| e.id == loc.id && e.length == loc.length && e.raw_length == loc.raw_length)
            .ok_or_else(|| self.not_where_the_manifest_says(loc))?;
        self.chunk(entry, secret, zstd)
    }

    fn not_where_the_manifest_says(&self, loc: &super::manifest::ChunkLocation) -> Error {
        Error::new(
            ErrorKind::Integrity,
            format!(
                "pack {} does not hold chunk {} where the manifest says",
                self.key,
                loc.id.to_hex()
            ),
        )
    }

    /// [`OpenPack::chunk_at`] with only the index's keys read: the blob
    /// where the manifest says, opened with the data key it authenticates
    /// under (the chunk id is its associated data), then checked against
    /// its id. What the index would add, that the chunk is at that place,
    /// is what authentication proves.
    fn chunk_by_keys(
        &self,
        loc: &super::manifest::ChunkLocation,
        secret: &RepoSecret,
        zstd: &mut zstd::bulk::Decompressor<'_>,
    ) -> Result<Vec<u8>> {
        let not_there = || self.not_where_the_manifest_says(loc);
        let end = loc.offset as usize + loc.length as usize;
        if end > self.data_end {
            return Err(not_there());
        }
        let blob = &self.bytes[loc.offset as usize..end];
        let (key, plain) = (0..self.index.keys.len())
            .find_map(|k| self.index.keys[k].open(&loc.id, blob).map(|p| (k, p)))
            .ok_or_else(not_there)?;
        let entry = IndexEntry {
            id: loc.id,
            offset: loc.offset,
            length: loc.length,
            raw_length: loc.raw_length,
            key: key as u16,
        };
        finish_chunk(&plain, &entry, secret, &self.key, zstd)
    }
}

/// Where the blobs of a verified pack end (its trailer was checked when
/// its index was read).
fn data_end(bytes: &[u8]) -> usize {
    let n = bytes.len();
    let len = u32::from_le_bytes(bytes[n - 12..n - 8].try_into().unwrap()) as usize;
    n - 12 - len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use age::secrecy::ExposeSecret;

    /// A writer with more than 256 workers (one data key each): a chunk
    /// sealed by worker 300 opens with key 300, not with key 300 mod 256.
    #[test]
    fn chunks_of_worker_300_open_with_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let id = age::x25519::Identity::generate();
        let recipients = Recipients::parse(&[id.to_public().to_string()]).unwrap();
        let identity = Identity::from_file(&{
            let p = dir.path().join("identity.txt");
            std::fs::write(&p, id.to_string().expose_secret()).unwrap();
            p
        })
        .unwrap();
        let secret = RepoSecret::generate(uuid::Uuid::nil(), [0; 32]).unwrap();
        let keys: Vec<DataKey> = (0..301).map(|_| DataKey::generate().unwrap()).collect();
        let mut zstd = zstd::bulk::Compressor::new(1).unwrap();
        let mut writer = PackWriter::new(store.upload(Vec::new(), 1 << 20).unwrap());
        let mut chunks = Vec::new();
        for worker in [0u16, 255, 256, 300] {
            let data = format!("sealed by worker {worker}").into_bytes();
            let cid = secret.chunk_id(&data);
            let blob =
                seal_chunk(&cid, &data, &mut zstd, &keys[worker as usize], Vec::new()).unwrap();
            writer.add(cid, &blob, data.len(), worker).unwrap();
            chunks.push(data);
        }
        let (stored, _, _) = writer
            .seal(&recipients, &keys)
            .unwrap()
            .store(None)
            .unwrap();
        let open = OpenPack::fetch(&store, &stored.key, &identity, 1 << 30).unwrap();
        let mut unzstd = decompressor();
        for (entry, data) in open.index.chunks.iter().zip(&chunks) {
            assert_eq!(&open.chunk(entry, &secret, &mut unzstd).unwrap(), data);
        }
        assert_eq!(open.index.chunks[3].key, 300);

        // With the keys alone (a one-file restore): each chunk opens where
        // its location says, with whichever key sealed it, and nowhere else.
        let keys_only =
            OpenPack::fetch_with(&store, &stored.key, &identity, 1 << 30, IndexNeed::Keys).unwrap();
        assert!(keys_only.index.chunks.is_empty());
        assert_eq!(keys_only.index.keys.len(), 301);
        let loc = |e: &IndexEntry| crate::repo::manifest::ChunkLocation {
            id: e.id,
            pack: stored.key.clone(),
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        };
        for (entry, data) in open.index.chunks.iter().zip(&chunks) {
            assert_eq!(
                &keys_only
                    .chunk_at(&loc(entry), &secret, &mut unzstd)
                    .unwrap(),
                data
            );
        }
        let mut elsewhere = loc(&open.index.chunks[1]);
        elsewhere.offset = open.index.chunks[2].offset;
        elsewhere.length = open.index.chunks[2].length;
        let err = keys_only
            .chunk_at(&elsewhere, &secret, &mut unzstd)
            .unwrap_err();
        assert!(err.to_string().contains("does not hold chunk"), "{err}");
        let mut past = loc(&open.index.chunks[3]);
        past.offset += past.length; // into the index
        assert!(keys_only.chunk_at(&past, &secret, &mut unzstd).is_err());
    }
}
