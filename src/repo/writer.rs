//! The write pipeline: chunk → id → dedup → zstd → seal → pack (index sealed with age) → store.
//!
//! Stages run on their own threads, joined by bounded channels, so both cores
//! stay busy and memory stays bounded whatever the input size:
//!
//! ```text
//! producer (caller: reads, cuts chunks; builds trees)
//!   ─[1 chunk]→ workers ×N (id, dedup against hints, compress, encrypt)
//!   ─[1 blob]→ packer (dedup against the repository, in batches; writes
//!              blobs into a 16 MiB data pack or tree pack, in the store)
//!   ─[handover]→ uploader (stores the pack, then records it in the catalog)
//! ```
//! At most about 2N + 4 chunks of ≤ 4 MiB are in memory, a batch of blobs
//! awaiting the dedup answer, and two packs (one filling, one being stored)
//! as the store holds them: on a local directory a 1 MiB piece each, as packs
//! are written while they fill; on S3 the whole pack, as its checksum must
//! precede its bytes. The queues hold one item each: with a worker per core,
//! a deeper queue only holds more chunk buffers.
//!
//! Dedup never holds the repository's chunk ids: a worker skips what the
//! caller *hints* is stored (the chunks of the previous version of a changed
//! file), and the packer asks the repository ([`Stored`], the catalog: one
//! query per batch) about the rest, and about the chunks of packs still in
//! flight, which it knows. So memory grows with what changed, not with the
//! repository. A pack's chunks are recorded only after the pack is stored,
//! so the catalog never points at data that is not there: a backup killed
//! midway leaves packs the next one reuses.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};

use super::pack::{PackWriter, SealedPack, StoredPack, TREE_KEY, seal_chunk};
use super::{ChunkId, DataKey, Repository};
use crate::error::{Error, ErrorKind, Result};

/// A chunk to store, tagged by the producer to find its id afterwards.
pub struct Job {
    pub tag: u64,
    pub data: Vec<u8>,
}

/// What travels to the workers: a chunk, or a tree object (id given).
struct Item {
    tag: u64,
    data: Vec<u8>,
    tree: Option<ChunkId>,
}

/// The id of a tagged chunk.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub tag: u64,
    pub id: ChunkId,
    pub raw_length: u32,
}

/// What the repository already stores, asked in batches.
pub trait Stored: Sync {
    /// Of `ids`, those the repository holds and will keep.
    fn stored(&self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>>;
}

/// An empty repository.
pub struct NothingStored;

impl Stored for NothingStored {
    fn stored(&self, _: &[ChunkId]) -> Result<HashSet<ChunkId>> {
        Ok(HashSet::new())
    }
}

/// Counters of one write.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WriteStats {
    pub chunks: u64,
    pub new_chunks: u64,
    pub bytes: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    pub packs: u64,
    /// Tree objects stored (new directories' listings).
    pub trees: u64,
}

impl WriteStats {
    /// Bytes read per new (not yet stored) byte; `None` when nothing was read.
    pub fn dedup_ratio(&self) -> Option<f64> {
        (self.bytes > 0).then(|| self.bytes as f64 / self.new_bytes.max(1) as f64)
    }

    /// New bytes per byte stored (zstd, less the encryption overhead);
    /// `None` when nothing new was stored.
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.stored_bytes > 0).then(|| self.new_bytes as f64 / self.stored_bytes as f64)
    }
}

/// Ids of tagged chunks as the workers find them, until the producer takes
/// them ([`Sink::resolve`]).
#[derive(Default)]
struct Resolved {
    ids: Mutex<HashMap<u64, Written>>,
    found: Condvar,
    /// Producers waiting in `resolve`: workers wake them only then (a
    /// wake-up per chunk was most of a backup of tiny files).
    waiting: std::sync::atomic::AtomicUsize,
}

/// Where the producer sends chunks. Sending fails when the pipeline stopped
/// (an error downstream); the producer should then return.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Vec<Item>>,
    stopped: Arc<AtomicBool>,
    pool: Arc<BufPool>,
    resolved: Arc<Resolved>,
    hints: Arc<Mutex<HashSet<ChunkId>>>,
}

/// Chunk-sized buffers passed around the pipeline and back.
///
/// Chunks and blobs are allocated and freed on different threads, one to
/// 4 MiB each, thousands per backup. Left to the allocator that cost either
/// page faults (every buffer a fresh mmap) or, once glibc raised its mmap
/// threshold, about 40 MiB of peak RSS in per-thread arenas. A handful of
/// buffers in circulation costs neither.
#[derive(Default)]
struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Below this, a chunk's buffer is its own, not the pool's.
const SMALL_BUFFER: usize = 64 << 10;

impl BufPool {
    /// About what is in flight: chunks queued, in the workers, and blobs.
    const KEEP: usize = 8;

    fn take(&self) -> Vec<u8> {
        self.free.lock().unwrap().pop().unwrap_or_default()
    }

    /// A buffer for `len` bytes: a pooled one for a large chunk; for a
    /// small one a buffer of its own size. A pooled buffer (megabytes,
    /// every page touched) holding a 2 KiB chunk or blob while it waits in
    /// a batch is how a backup of mixed large and small files once peaked
    /// at 390 MiB.
    fn take_for(&self, len: usize) -> Vec<u8> {
        if len < SMALL_BUFFER {
            Vec::with_capacity(len + 64)
        } else {
            self.take()
        }
    }

    fn give(&self, mut buf: Vec<u8>) {
        // Small buffers (tiny files) are not worth keeping; big ones are.
        if buf.capacity() < SMALL_BUFFER {
            return;
        }
        buf.clear();
        let mut free = self.free.lock().unwrap();
        if free.len() < Self::KEEP {
            free.push(buf);
        }
    }
}

impl Sink {
    /// An empty buffer for a chunk's data, reused from an earlier chunk.
    pub fn buffer(&self) -> Vec<u8> {
        self.pool.take()
    }

    /// An empty buffer for a chunk of `len` bytes (see `BufPool::take_for`).
    pub fn buffer_for(&self, len: usize) -> Vec<u8> {
        self.pool.take_for(len)
    }

    pub fn send(&self, job: Job) -> Result<()> {
        self.send_item(Item {
            tag: job.tag,
            data: job.data,
            tree: None,
        })
    }

    /// Stores a tree object `data` with tree id `id` (unless stored).
    pub fn send_tree(&self, id: ChunkId, data: Vec<u8>) -> Result<()> {
        self.send_item(Item {
            tag: u64::MAX,
            data,
            tree: Some(id),
        })
    }

    fn send_item(&self, item: Item) -> Result<()> {
        self.send_items(vec![item])
    }

    fn send_items(&self, items: Vec<Item>) -> Result<()> {
        if self.is_stopped() {
            return Err(stopped_error());
        }
        self.tx.send(items).map_err(|_| stopped_error())
    }

    /// A producer thread's own batch of chunks: tiny files make tiny
    /// chunks, and one hand-over between threads per chunk (a wake-up, a
    /// context switch) cost more than the chunk's compression and
    /// encryption. A batch goes when it holds [`BATCH_ITEMS`] chunks or
    /// [`BATCH_ITEM_BYTES`], on [`Batcher::flush`], or when dropped.
    pub fn batcher(&self) -> Batcher<'_> {
        Batcher {
            sink: self,
            items: Vec::new(),
            bytes: 0,
        }
    }

    /// Chunks the repository stores (the previous version of a changed
    /// file): a chunk among them is not compressed or stored again.
    pub fn hint(&self, ids: impl IntoIterator<Item = ChunkId>) {
        self.hints.lock().unwrap().extend(ids);
    }

    /// The id of the chunk sent with `tag`, once a worker has found it
    /// (waiting for it); `None` when the pipeline stopped first. Taken:
    /// a second call for the same tag waits for ever.
    pub fn resolve(&self, tag: u64) -> Option<ChunkId> {
        let mut ids = self.resolved.ids.lock().unwrap();
        loop {
            if let Some(w) = ids.remove(&tag) {
                return Some(w.id);
            }
            if self.is_stopped() {
                return None;
            }
            // Counted under the lock: a worker that inserts after this
            // sees it and wakes us.
            self.resolved.waiting.fetch_add(1, Ordering::SeqCst);
            ids = self
                .resolved
                .found
                .wait_timeout(ids, std::time::Duration::from_millis(100))
                .unwrap()
                .0;
            self.resolved.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// Chunks in a producer's batch before it is handed over.
pub const BATCH_ITEMS: usize = 256;
/// ... or bytes of them.
pub const BATCH_ITEM_BYTES: usize = 1 << 20;

/// See [`Sink::batcher`].
pub struct Batcher<'a> {
    sink: &'a Sink,
    items: Vec<Item>,
    bytes: usize,
}

impl Batcher<'_> {
    pub fn buffer_for(&self, len: usize) -> Vec<u8> {
        self.sink.buffer_for(len)
    }

    pub fn send(&mut self, job: Job) -> Result<()> {
        if self.sink.is_stopped() {
            return Err(stopped_error());
        }
        self.bytes += job.data.len();
        self.items.push(Item {
            tag: job.tag,
            data: job.data,
            tree: None,
        });
        if self.items.len() >= BATCH_ITEMS || self.bytes >= BATCH_ITEM_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands over what the batch holds.
    pub fn flush(&mut self) -> Result<()> {
        self.bytes = 0;
        if self.items.is_empty() {
            return Ok(());
        }
        self.sink.send_items(std::mem::take(&mut self.items))
    }
}

impl Drop for Batcher<'_> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn stopped_error() -> Error {
    Error::new(ErrorKind::Failed, "the write pipeline stopped")
}

/// Called with each stored pack, to record it (in the catalog).
pub type OnPack<'a> = dyn Fn(&StoredPack, &crate::store::ObjectMeta) -> Result<()> + Sync + 'a;

/// Runs the pipeline with `produce` feeding it on the calling thread.
/// Returns what `produce` returned, the id of every tagged chunk the
/// producer did not [`Sink::resolve`] itself, and stats.
pub fn write<R: Send>(
    repo: &Repository,
    stored: &dyn Stored,
    zstd_level: i32,
    retain_until: Option<chrono::DateTime<chrono::Utc>>,
    on_pack: &OnPack<'_>,
    produce: impl FnOnce(&Sink) -> Result<R>,
) -> Result<(R, Vec<Written>, WriteStats)> {
    let recipients = repo.recipients()?;
    // A blob names its worker's key in 16 bits, TREE_KEY excepted.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(TREE_KEY as usize);
    let (job_tx, job_rx) = sync_channel::<Vec<Item>>(1);
    let (blob_tx, blob_rx) = sync_channel::<Vec<Blob>>(1);
    // One data key per worker for this run: a blob names its key by number.
    let keys: Vec<DataKey> = (0..workers)
        .map(|_| DataKey::generate())
        .collect::<Result<_>>()?;
    let tree_key = repo.secret.tree_key();
    // A rendezvous: the packer fills the next pack while one is stored, and
    // no third pack waits in between.
    let (pack_tx, pack_rx) = sync_channel::<SealedPack>(0);
    // Stored packs' buffers go back to the packer: on S3, allocating 20 MiB
    // per pack cost page faults, and freed buffers raised glibc's mmap
    // threshold so chunks fragmented the heap (peak RSS +20 MiB).
    let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(2);
    let job_rx = Mutex::new(job_rx);
    let hints = Arc::new(Mutex::new(HashSet::new()));
    // Chunks in packs not yet recorded as stored.
    let in_flight = Mutex::new(HashSet::new());
    let resolved = Arc::new(Resolved::default());
    let stats = Mutex::new(WriteStats::default());
    let stopped = Arc::new(AtomicBool::new(false));
    let pool = Arc::new(BufPool::default());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        stopped.store(true, Ordering::Relaxed);
        resolved.found.notify_all();
        let mut f = failure.lock().unwrap();
        // Keep the first real cause, not the "stopped" its neighbours saw.
        if f.as_ref()
            .is_none_or(|old| old.what() == stopped_error().what())
        {
            *f = Some(e);
        }
    };

    let produced = std::thread::scope(|s| {
        for (worker, key) in keys.iter().enumerate() {
            let blob_tx = blob_tx.clone();
            let (job_rx, hints, in_flight, resolved, stats, fail, stopped, pool, tree_key) = (
                &job_rx, &hints, &in_flight, &resolved, &stats, &fail, &stopped, &pool, &tree_key,
            );
            s.spawn(move || {
                let mut zstd = zstd::bulk::Compressor::new(zstd_level)
                    .map_err(|e| {
                        fail(
                            Error::new(ErrorKind::Config, format!("zstd level {zstd_level}"))
                                .with_source(e),
                        )
                    })
                    .ok();
                loop {
                    let jobs = match job_rx.lock().unwrap().recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    // After a failure anywhere, keep taking jobs (and dropping
                    // them) until the producer stops: it must never block on
                    // a full queue nobody reads.
                    let Some(zstd) = zstd.as_mut().filter(|_| !stopped.load(Ordering::Relaxed))
                    else {
                        continue;
                    };
                    let mut named = Vec::new();
                    let mut blobs = Vec::new();
                    for job in jobs {
                        let len = job.data.len();
                        let id = match job.tree {
                            Some(id) => id,
                            None => {
                                let id = repo.secret.chunk_id(&job.data);
                                named.push(Written {
                                    tag: job.tag,
                                    id,
                                    raw_length: len as u32,
                                });
                                id
                            }
                        };
                        if hints.lock().unwrap().contains(&id)
                            || in_flight.lock().unwrap().contains(&id)
                        {
                            pool.give(job.data);
                            continue;
                        }
                        let (key, number) = match job.tree {
                            Some(_) => (tree_key, TREE_KEY),
                            None => (key, worker as u16),
                        };
                        // zstd's bound and the nonce and tag.
                        let out = pool.take_for(len + len / 128 + 128);
                        match seal_chunk(&id, &job.data, zstd, key, out) {
                            Ok(b) => blobs.push((id, b, len, number)),
                            Err(e) => fail(e),
                        }
                        pool.give(job.data);
                    }
                    if !named.is_empty() {
                        {
                            let mut st = stats.lock().unwrap();
                            st.chunks += named.len() as u64;
                            st.bytes += named.iter().map(|w| w.raw_length as u64).sum::<u64>();
                        }
                        resolved
                            .ids
                            .lock()
                            .unwrap()
                            .extend(named.into_iter().map(|w| (w.tag, w)));
                        if resolved.waiting.load(Ordering::SeqCst) > 0 {
                            resolved.found.notify_all();
                        }
                    }
                    if !blobs.is_empty() && blob_tx.send(blobs).is_err() {
                        fail(stopped_error());
                    }
                }
            });
        }
        drop(blob_tx);

        let (keys, pool_ref, fail_ref, in_flight_ref, stats_ref) =
            (&keys, &pool, &fail, &in_flight, &stats);
        s.spawn(move || {
            let packed = pack_stage(
                repo,
                blob_rx,
                pack_tx,
                spare_rx,
                recipients,
                keys,
                pool_ref,
                stored,
                in_flight_ref,
                stats_ref,
            );
            if let Err(e) = packed {
                fail_ref(e);
            }
        });
        s.spawn(move || {
            if let Err(e) = upload_stage(
                pack_rx,
                spare_tx,
                retain_until,
                on_pack,
                stats_ref,
                in_flight_ref,
            ) {
                fail_ref(e);
            }
        });

        let sink = Sink {
            tx: job_tx,
            stopped: stopped.clone(),
            pool: pool.clone(),
            resolved: resolved.clone(),
            hints: hints.clone(),
        };
        let result = produce(&sink);
        drop(sink);
        result
    });

    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    let produced = produced?;
    let written = std::mem::take(&mut *resolved.ids.lock().unwrap())
        .into_values()
        .collect();
    Ok((produced, written, stats.into_inner().unwrap()))
}

/// A sealed chunk on its way to a pack: id, blob, raw length, key number.
type Blob = (ChunkId, Vec<u8>, usize, u16);

/// Blobs the packer holds before it asks the repository which it has.
const BATCH: usize = 4096;
/// ... or this many bytes of them.
const BATCH_BYTES: usize = 8 << 20;

/// Fills packs with blobs, writing each blob to the store as it comes, and
/// hands each full pack to the uploader to be stored. Blobs come in
/// batches: of each, those the repository holds, or a pack in flight holds,
/// are dropped.
#[allow(clippy::too_many_arguments)]
fn pack_stage<'s>(
    repo: &'s Repository,
    blobs: Receiver<Vec<Blob>>,
    packs: SyncSender<SealedPack<'s>>,
    spare: Receiver<Vec<u8>>,
    recipients: &super::Recipients,
    keys: &[DataKey],
    pool: &BufPool,
    stored: &dyn Stored,
    in_flight: &Mutex<HashSet<ChunkId>>,
    stats: &Mutex<WriteStats>,
) -> Result<()> {
    let pack_size = repo.config.pack_size;
    // A pack is sealed before a blob would take it past `pack_size` (so
    // packs are at most that, unless one blob alone is larger), plus room
    // for the index, for stores that hold a pack whole.
    let size_hint = pack_size + (1 << 20);
    // Data and trees go to packs of their own: a listing is then read from
    // few packs, never from the data.
    let mut data: Option<PackWriter<'s>> = None;
    let mut trees: Option<PackWriter<'s>> = None;
    let mut batch: Vec<Blob> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut flush = |batch: &mut Vec<Blob>| -> Result<bool> {
        let ask: Vec<ChunkId> = {
            let f = in_flight.lock().unwrap();
            batch
                .iter()
                .map(|b| b.0)
                .filter(|id| !f.contains(id))
                .collect()
        };
        let have = if ask.is_empty() {
            HashSet::new()
        } else {
            stored.stored(&ask)?
        };
        for (id, blob, raw, key) in batch.drain(..) {
            if have.contains(&id) || !in_flight.lock().unwrap().insert(id) {
                pool.give(blob);
                continue;
            }
            {
                let mut st = stats.lock().unwrap();
                if key == TREE_KEY {
                    st.trees += 1;
                } else {
                    st.new_chunks += 1;
                    st.new_bytes += raw as u64;
                }
            }
            let pack = if key == TREE_KEY {
                &mut trees
            } else {
                &mut data
            };
            if let Some(full) = pack.take_if(|p| p.len() + blob.len() > pack_size)
                && packs.send(full.seal(recipients, keys)?).is_err()
            {
                return Ok(false);
            }
            let writer = match pack.as_mut() {
                Some(p) => p,
                // Only now: the send above returns once the uploader has stored
                // the pack before and handed its buffer back.
                None => pack.insert(PackWriter::new(
                    repo.store
                        .upload(spare.try_recv().unwrap_or_default(), size_hint)?,
                )),
            };
            writer.add(id, &blob, raw, key)?;
            pool.give(blob);
        }
        Ok(true)
    };
    for blob in blobs.into_iter().flatten() {
        batch_bytes += blob.1.len();
        batch.push(blob);
        if batch.len() >= BATCH || batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            if !flush(&mut batch)? {
                return Ok(());
            }
        }
    }
    if !flush(&mut batch)? {
        return Ok(());
    }
    for last in [data, trees].into_iter().flatten() {
        if packs.send(last.seal(recipients, keys)?).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn upload_stage(
    packs: Receiver<SealedPack<'_>>,
    spare: SyncSender<Vec<u8>>,
    retain_until: Option<chrono::DateTime<chrono::Utc>>,
    on_pack: &OnPack<'_>,
    stats: &Mutex<WriteStats>,
    in_flight: &Mutex<HashSet<ChunkId>>,
) -> Result<()> {
    for pack in packs {
        let (pack, meta, buffer) = pack.store(retain_until)?;
        on_pack(&pack, &meta)?;
        // Recorded: the repository answers for these chunks from now on.
        let mut f = in_flight.lock().unwrap();
        for e in &pack.index {
            f.remove(&e.id);
        }
        drop(f);
        let mut st = stats.lock().unwrap();
        st.packs += 1;
        st.stored_bytes += meta.size;
        drop(st);
        let _ = spare.try_send(buffer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use crate::store::{ObjectMeta, PutOptions, Store};

    /// A store whose pack writes fail after the first one: a full disk, a
    /// revoked credential.
    struct FailingStore {
        inner: LocalStore,
        puts: std::sync::atomic::AtomicU32,
    }

    impl Store for FailingStore {
        fn put(&self, key: &str, data: &[u8], opts: &PutOptions) -> Result<ObjectMeta> {
            if key.starts_with("packs/") && self.puts.fetch_add(1, Ordering::SeqCst) >= 1 {
                return Err(Error::new(ErrorKind::Unavailable, "disk full"));
            }
            self.inner.put(key, data, opts)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>> {
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, r: std::ops::Range<u64>) -> Result<Vec<u8>> {
            self.inner.get_range(key, r)
        }
        fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
            self.inner.head(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str, version: Option<&str>) -> Result<()> {
            self.inner.delete(key, version)
        }
        fn location(&self) -> String {
            self.inner.location()
        }
    }

    /// A local directory that fills up partway through the second pack it
    /// streams.
    struct FillingStore {
        inner: LocalStore,
        written: std::sync::atomic::AtomicU64,
    }

    struct FillingUpload<'a> {
        inner: Box<dyn crate::store::Upload + 'a>,
        written: &'a std::sync::atomic::AtomicU64,
    }

    impl crate::store::Upload for FillingUpload<'_> {
        fn write(&mut self, bytes: &[u8]) -> Result<()> {
            let before = self.written.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            if before > 24 << 20 {
                return Err(Error::new(ErrorKind::Unavailable, "disk full"));
            }
            self.inner.write(bytes)
        }
        fn finish(
            self: Box<Self>,
            key: &dyn Fn(&[u8; 32]) -> String,
            retain_until: Option<chrono::DateTime<chrono::Utc>>,
        ) -> Result<crate::store::Finished> {
            self.inner.finish(key, retain_until)
        }
    }

    impl Store for FillingStore {
        fn put(&self, key: &str, data: &[u8], opts: &PutOptions) -> Result<ObjectMeta> {
            self.inner.put(key, data, opts)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>> {
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, r: std::ops::Range<u64>) -> Result<Vec<u8>> {
            self.inner.get_range(key, r)
        }
        fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
            self.inner.head(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str, version: Option<&str>) -> Result<()> {
            self.inner.delete(key, version)
        }
        fn location(&self) -> String {
            self.inner.location()
        }
        fn upload(
            &self,
            buffer: Vec<u8>,
            size_hint: usize,
        ) -> Result<Box<dyn crate::store::Upload + '_>> {
            Ok(Box::new(FillingUpload {
                inner: self.inner.upload(buffer, size_hint)?,
                written: &self.written,
            }))
        }
    }

    #[test]
    fn a_full_disk_mid_pack_stops_the_pipeline_and_leaves_no_partial_pack() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FillingStore {
            inner: LocalStore::new(dir.path()),
            written: Default::default(),
        });
        let id = age::x25519::Identity::generate();
        let recipients = crate::repo::Recipients::parse(&[id.to_public().to_string()]).unwrap();
        let repo = Repository::init(store.clone(), recipients).unwrap();
        let stored = Mutex::new(Vec::new());
        let on_pack = |p: &StoredPack, _: &ObjectMeta| {
            stored.lock().unwrap().push(p.key.clone());
            Ok(())
        };
        let result = write(&repo, &NothingStored, 1, None, &on_pack, |sink| {
            for tag in 0..200u64 {
                let data = crate::repo::test_noise(tag + 1, 1 << 20);
                sink.send(Job { tag, data })?;
            }
            Ok(())
        });
        let err = result.expect_err("the second pack cannot be written");
        assert_eq!(err.what(), "disk full");
        // The first pack is stored and whole; the second left nothing, not
        // even its temporary file.
        let stored = stored.into_inner().unwrap();
        assert_eq!(stored.len(), 1, "{stored:?}");
        let packs: Vec<String> = store
            .list("packs/")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(packs, stored);
        let left: Vec<_> = walkdir(dir.path())
            .into_iter()
            .filter(|p| p.contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    fn walkdir(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                out.extend(walkdir(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
        out
    }

    #[test]
    fn a_store_failure_stops_the_pipeline_with_its_cause_and_never_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FailingStore {
            inner: LocalStore::new(dir.path()),
            puts: Default::default(),
        });
        let id = age::x25519::Identity::generate();
        let recipients = crate::repo::Recipients::parse(&[id.to_public().to_string()]).unwrap();
        let repo = Repository::init(store, recipients).unwrap();
        let result = write(&repo, &NothingStored, 1, None, &|_, _| Ok(()), |sink| {
            // 200 distinct 1 MiB chunks: far more than the queues hold.
            for tag in 0..200u64 {
                let data = crate::repo::test_noise(tag + 1, 1 << 20);
                sink.send(Job { tag, data })?;
            }
            Ok(())
        });
        let err = result.expect_err("the second pack cannot be stored");
        assert_eq!(err.what(), "disk full");
    }
}
