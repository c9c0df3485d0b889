//! What a snapshot says about itself, read as it streams past.
//!
//! etcd sends no revision with a snapshot, and the member's own revision
//! moves on while the snapshot streams, so asking the member before or after
//! gives a revision the snapshot may not have. The snapshot's revision is in
//! the file: the highest key of its bbolt `key` bucket (keys are the main
//! revision, `_`, the sub revision, big endian, and `t` for a deletion),
//! raised to the compaction revision kept in the `meta` bucket. That is what
//! etcd itself computes when it starts on a restored file, so the revision,
//! key count and `HashKV` recorded at it are what a restored member answers.
//!
//! bbolt pages arrive in page-number order, not tree order, and nothing is
//! kept of the stream, so each page is summarised as it passes (a branch: its
//! children; a leaf: its last key and the few entries looked up later) and
//! the tree is walked from the meta page once the stream ends. That costs
//! about 40 bytes per 4 KiB page. A page that spans several (a large value)
//! is assembled first. Freed pages still look like pages; they are summarised
//! too, and never reached from the root.
//!
//! Layout (bbolt 1.3, little endian): every page starts with `id u64, flags
//! u16, count u16, overflow u32`; a meta page then holds `magic, version,
//! page size, flags (u32 each), root bucket (root u64, sequence u64),
//! freelist u64, high-water pgid u64, txid u64, checksum u64` (FNV-1a 64 of
//! the fields before it); branch elements are `pos u32, ksize u32, pgid u64`
//! and leaf elements `flags u32, pos u32, ksize u32, vsize u32`, each `pos`
//! counted from the element itself. A bucket's value is `root u64, sequence
//! u64`, followed by the bucket's own leaf page when `root` is 0 (inline).

use std::collections::HashMap;

const HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const BUCKET_ENTRY: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
/// A page spanning more than this is not assembled (etcd's values are at
/// most a few MiB; a stale header of a freed page may claim anything).
const MAX_PAGE: usize = 64 << 20;
/// At most this much of the stream is held for pages being assembled.
const MAX_PENDING: usize = 256 << 20;
/// Meta-bucket keys looked up.
const WANTED_KEYS: [&[u8]; 2] = [b"finishedCompactRev", b"scheduledCompactRev"];

/// What the snapshot's own data says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    /// The revision a member started on this file has.
    pub revision: i64,
    /// Its compaction revision, when it was ever compacted.
    pub compact_revision: Option<i64>,
    pub page_size: u32,
    /// bbolt's transaction id of the snapshot.
    pub txid: u64,
}

/// A leaf entry kept: key, value, and whether it is a bucket.
type LeafEntry = (Box<[u8]>, Box<[u8]>, bool);

#[derive(Debug)]
enum Page {
    Branch(Vec<u64>),
    Leaf {
        /// The last key, truncated: only the `key` bucket's (18 bytes at
        /// most) is ever read.
        last_key: Option<Box<[u8]>>,
        /// Bucket entries and the wanted meta keys: (key, value, is bucket).
        entries: Vec<LeafEntry>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size: u32,
    root: u64,
    pgid: u64,
    txid: u64,
}

/// A page spanning several page slots, being assembled.
struct Pending {
    id: u64,
    need: usize,
    data: Vec<u8>,
}

/// Summarises a bbolt file fed to it in pieces of any size.
#[derive(Default)]
pub struct Scanner {
    page_size: usize,
    /// Index of the next page slot.
    slot: u64,
    /// Bytes of the current slot not yet complete.
    partial: Vec<u8>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    pages: HashMap<u64, Page>,
    metas: Vec<Meta>,
    /// Pages dropped for size: named if the walk needs one.
    dropped: Vec<u64>,
    bytes: u64,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the file.
    pub fn feed(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        if self.page_size == 0 {
            // The page size is in the first meta page, at 16 + 8.
            let need = HEADER + 12;
            let take = (need - self.partial.len().min(need)).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < need {
                return;
            }
            let size = u32_at(&self.partial, HEADER + 8) as usize;
            // Not a bbolt file: keep page_size at a value that never parses.
            self.page_size = if size.is_power_of_two() && (512..=(1 << 20)).contains(&size) {
                size
            } else {
                usize::MAX
            };
        }
        if self.page_size == usize::MAX {
            return;
        }
        let ps = self.page_size;
        if !self.partial.is_empty() {
            let take = (ps - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < ps {
                return;
            }
            let slot = std::mem::take(&mut self.partial);
            self.slot_done(&slot);
        }
        while data.len() >= ps {
            let (slot, rest) = data.split_at(ps);
            self.slot_done(slot);
            data = rest;
        }
        self.partial.extend_from_slice(data);
    }

    fn slot_done(&mut self, slot: &[u8]) {
        let index = self.slot;
        self.slot += 1;
        if !self.pending.is_empty() {
            let mut done = Vec::new();
            for (i, p) in self.pending.iter_mut().enumerate() {
                let take = (p.need - p.data.len()).min(slot.len());
                p.data.extend_from_slice(&slot[..take]);
                if p.data.len() == p.need {
                    done.push(i);
                }
            }
            for i in done.into_iter().rev() {
                let p = self.pending.swap_remove(i);
                self.pending_bytes -= p.need;
                if let Some(page) = summarise(&p.data) {
                    self.pages.insert(p.id, page);
                }
            }
        }
        if u64_at(slot, 0) != index {
            // A continuation of a larger page, or never written.
            return;
        }
        let flags = u16_at(slot, 8);
        let overflow = u32_at(slot, 12) as usize;
        if flags & META != 0 {
            if let Some(m) = parse_meta(slot) {
                self.metas.push(m);
            }
            return;
        }
        if flags & (BRANCH | LEAF) == 0 {
            return;
        }
        if overflow == 0 {
            if let Some(page) = summarise(slot) {
                self.pages.insert(index, page);
            }
            return;
        }
        let need = (overflow + 1).saturating_mul(self.page_size);
        if need > MAX_PAGE || self.pending_bytes + need > MAX_PENDING {
            self.dropped.push(index);
            return;
        }
        let mut data = Vec::with_capacity(need);
        data.extend_from_slice(slot);
        self.pending_bytes += need;
        self.pending.push(Pending {
            id: index,
            need,
            data,
        });
    }

    /// Walks the tree once the whole file was fed.
    pub fn finish(self) -> Result<Facts, String> {
        if self.page_size == 0 || self.page_size == usize::MAX {
            return Err("it does not start with a bbolt meta page".into());
        }
        let meta = self
            .metas
            .iter()
            .filter(|m| m.page_size as usize == self.page_size)
            .max_by_key(|m| m.txid)
            .copied()
            .ok_or("neither meta page is valid")?;
        let expected = meta.pgid.saturating_mul(self.page_size as u64);
        if self.bytes != expected {
            return Err(format!(
                "it is {} bytes, and its meta page says {} pages of {} bytes ({expected} bytes)",
                self.bytes, meta.pgid, self.page_size
            ));
        }
        let walk = Walk {
            pages: &self.pages,
            dropped: &self.dropped,
        };
        let root = walk.entries(meta.root)?;
        let bucket = |name: &[u8]| -> Result<Option<Bucket>, String> {
            match root.iter().find(|(k, _, b)| *b && &**k == name) {
                None => Ok(None),
                Some((_, v, _)) => Bucket::parse(v)
                    .map(Some)
                    .ok_or_else(|| format!("bucket {} is malformed", show(name))),
            }
        };
        let last_key = match bucket(b"key")? {
            None => None,
            Some(Bucket::Inline(page)) => match summarise(&page) {
                Some(Page::Leaf { last_key, .. }) => last_key,
                _ => return Err("the inline key bucket is not a leaf".into()),
            },
            Some(Bucket::Root(id)) => walk.last_key(id)?,
        };
        let mut compact = [None, None];
        let meta_entries = match bucket(b"meta")? {
            None => Vec::new(),
            Some(Bucket::Inline(page)) => match summarise(&page) {
                Some(Page::Leaf { entries, .. }) => entries,
                _ => return Err("the inline meta bucket is not a leaf".into()),
            },
            Some(Bucket::Root(id)) => walk.entries(id)?,
        };
        for (k, v, _) in &meta_entries {
            if let Some(i) = WANTED_KEYS.iter().position(|w| **k == **w) {
                compact[i] = Some(
                    revision_of(v)
                        .ok_or_else(|| format!("meta key {} holds no revision", show(k)))?,
                );
            }
        }
        let last = match &last_key {
            Some(k) => Some(
                revision_of(k)
                    .ok_or_else(|| format!("key bucket key {} is no revision", show(k)))?,
            ),
            None => None,
        };
        // As etcd's mvcc restore: the newest key's revision (1 in an empty
        // store), at least the finished compaction; a compaction scheduled
        // but unfinished runs at start and becomes the compaction revision.
        let finished = compact[0];
        let scheduled = compact[1].filter(|s| finished.is_none_or(|f| *s > f));
        let mut revision = last.unwrap_or(1);
        if let Some(f) = finished {
            revision = revision.max(f);
        }
        Ok(Facts {
            revision,
            compact_revision: scheduled.or(finished),
            page_size: self.page_size as u32,
            txid: meta.txid,
        })
    }
}

struct Walk<'a> {
    pages: &'a HashMap<u64, Page>,
    dropped: &'a [u64],
}

impl Walk<'_> {
    fn page(&self, id: u64) -> Result<&Page, String> {
        self.pages.get(&id).ok_or_else(|| {
            if self.dropped.contains(&id) {
                format!("page {id} spans more than {} MiB", MAX_PAGE >> 20)
            } else {
                format!("page {id} is referenced but is not a branch or leaf page")
            }
        })
    }

    /// Every wanted entry under `root`, in key order (small trees only).
    fn entries(&self, root: u64) -> Result<Vec<LeafEntry>, String> {
        let mut out = Vec::new();
        let mut stack = vec![(root, 0u32)];
        while let Some((id, depth)) = stack.pop() {
            if depth > 64 {
                return Err("the tree is deeper than any bbolt tree".into());
            }
            match self.page(id)? {
                Page::Branch(children) => {
                    stack.extend(children.iter().rev().map(|&c| (c, depth + 1)));
                }
                Page::Leaf { entries, .. } => out.extend(entries.iter().cloned()),
            }
        }
        Ok(out)
    }

    /// The last key of the tree under `root`.
    fn last_key(&self, root: u64) -> Result<Option<Box<[u8]>>, String> {
        let mut id = root;
        for _ in 0..64 {
            match self.page(id)? {
                Page::Branch(children) => {
                    id = *children
                        .last()
                        .ok_or(format!("branch page {id} is empty"))?;
                }
                Page::Leaf { last_key, .. } => return Ok(last_key.clone()),
            }
        }
        Err("the tree is deeper than any bbolt tree".into())
    }
}

enum Bucket {
    Root(u64),
    Inline(Vec<u8>),
}

impl Bucket {
    fn parse(v: &[u8]) -> Option<Bucket> {
        if v.len() < 16 {
            return None;
        }
        match u64_at(v, 0) {
            0 => Some(Bucket::Inline(v[16..].to_vec())),
            root => Some(Bucket::Root(root)),
        }
    }
}

/// The main revision of a `key`-bucket key or a revision value.
fn revision_of(k: &[u8]) -> Option<i64> {
    if k.len() < 17 || k[8] != b'_' {
        return None;
    }
    Some(i64::from_be_bytes(k[..8].try_into().ok()?))
}

fn parse_meta(p: &[u8]) -> Option<Meta> {
    let m = p.get(HEADER..HEADER + 64)?;
    if u32_at(m, 0) != MAGIC || u32_at(m, 4) != 2 {
        return None;
    }
    // FNV-1a 64 over the fields before the checksum.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &m[..56] {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if h != u64_at(m, 56) {
        return None;
    }
    Some(Meta {
        page_size: u32_at(m, 8),
        root: u64_at(m, 16),
        pgid: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

/// The summary of a branch or leaf page (the whole page, overflow included).
fn summarise(p: &[u8]) -> Option<Page> {
    let flags = u16_at(p, 8);
    let count = u16_at(p, 10) as usize;
    let elements = p.get(HEADER..HEADER + count * ELEMENT)?;
    if flags & BRANCH != 0 {
        let children = elements
            .chunks_exact(ELEMENT)
            .map(|e| u64_at(e, 8))
            .collect();
        return Some(Page::Branch(children));
    }
    if flags & LEAF == 0 {
        return None;
    }
    let mut entries = Vec::new();
    let mut last_key = None;
    for (i, e) in elements.chunks_exact(ELEMENT).enumerate() {
        let at = HEADER + i * ELEMENT;
        let (eflags, pos, ksize, vsize) = (
            u32_at(e, 0),
            u32_at(e, 4) as usize,
            u32_at(e, 8) as usize,
            u32_at(e, 12) as usize,
        );
        let k0 = at.checked_add(pos)?;
        let key = p.get(k0..k0.checked_add(ksize)?)?;
        let is_bucket = eflags & BUCKET_ENTRY != 0;
        if is_bucket || WANTED_KEYS.contains(&key) {
            let v0 = k0 + ksize;
            let value = p.get(v0..v0.checked_add(vsize)?)?;
            entries.push((key.into(), value.into(), is_bucket));
        }
        if i + 1 == count {
            last_key = Some(key[..key.len().min(32)].into());
        }
    }
    Some(Page::Leaf { last_key, entries })
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes(s.try_into().unwrap()))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny bbolt file: meta pages 0 and 1, the root bucket's leaf at 2
    /// holding `key` (rooted at 3) and an inline `meta` bucket, and the
    /// `key` bucket's leaf at 3.
    fn tiny(keys: &[[u8; 17]], finished: Option<i64>) -> Vec<u8> {
        let ps = 4096usize;
        let mut file = vec![0u8; ps * 4];
        for (id, txid) in [(0u64, 7u64), (1, 6)] {
            let p = &mut file[id as usize * ps..][..ps];
            p[..8].copy_from_slice(&id.to_le_bytes());
            p[8..10].copy_from_slice(&META.to_le_bytes());
            let m = &mut p[HEADER..HEADER + 64];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&2u32.to_le_bytes());
            m[8..12].copy_from_slice(&(ps as u32).to_le_bytes());
            m[16..24].copy_from_slice(&2u64.to_le_bytes());
            m[40..48].copy_from_slice(&4u64.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for &b in &m[..56] {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            m[56..64].copy_from_slice(&h.to_le_bytes());
        }
        // Inline meta bucket: bucket header, then a leaf page.
        let mut inline = vec![0u8; 16];
        let mut meta_leaf = Vec::new();
        let entries: Vec<(Vec<u8>, Vec<u8>, u32)> = finished
            .map(|f| {
                let mut v = f.to_be_bytes().to_vec();
                v.push(b'_');
                v.extend_from_slice(&0u64.to_be_bytes());
                (b"finishedCompactRev".to_vec(), v, 0)
            })
            .into_iter()
            .collect();
        leaf(&mut meta_leaf, 0, &entries);
        inline.extend_from_slice(&meta_leaf);
        let mut key_bucket = 3u64.to_le_bytes().to_vec();
        key_bucket.extend_from_slice(&0u64.to_le_bytes());
        let mut root = Vec::new();
        leaf(
            &mut root,
            2,
            &[
                (b"key".to_vec(), key_bucket, BUCKET_ENTRY),
                (b"meta".to_vec(), inline, BUCKET_ENTRY),
            ],
        );
        file[2 * ps..][..root.len()].copy_from_slice(&root);
        let mut kv = Vec::new();
        let kv_entries: Vec<_> = keys
            .iter()
            .map(|k| (k.to_vec(), b"v".to_vec(), 0))
            .collect();
        leaf(&mut kv, 3, &kv_entries);
        file[3 * ps..][..kv.len()].copy_from_slice(&kv);
        file
    }

    fn leaf(out: &mut Vec<u8>, id: u64, entries: &[(Vec<u8>, Vec<u8>, u32)]) {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&LEAF.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let data_start = HEADER + entries.len() * ELEMENT;
        let mut data = Vec::new();
        for (i, (k, v, f)) in entries.iter().enumerate() {
            let at = HEADER + i * ELEMENT;
            let pos = data_start + data.len() - at;
            out.extend_from_slice(&f.to_le_bytes());
            out.extend_from_slice(&(pos as u32).to_le_bytes());
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
        out.extend_from_slice(&data);
    }

    fn rev(main: i64, sub: i64) -> [u8; 17] {
        let mut k = [0u8; 17];
        k[..8].copy_from_slice(&main.to_be_bytes());
        k[8] = b'_';
        k[9..].copy_from_slice(&sub.to_be_bytes());
        k
    }

    fn scan(file: &[u8], piece: usize) -> Result<Facts, String> {
        let mut s = Scanner::new();
        for p in file.chunks(piece) {
            s.feed(p);
        }
        s.finish()
    }

    #[test]
    fn the_revision_is_the_newest_key_whatever_the_piece_sizes() {
        let file = tiny(&[rev(2, 0), rev(5, 0), rev(9, 1)], None);
        for piece in [1, 7, 4096, 5000, 1 << 20] {
            let f = scan(&file, piece).unwrap();
            assert_eq!(f.revision, 9, "pieces of {piece}");
            assert_eq!(f.compact_revision, None);
            assert_eq!(f.txid, 7);
        }
    }

    #[test]
    fn a_compaction_past_the_newest_key_sets_the_revision() {
        let f = scan(&tiny(&[rev(3, 0)], Some(12)), 4096).unwrap();
        assert_eq!((f.revision, f.compact_revision), (12, Some(12)));
        let f = scan(&tiny(&[rev(30, 0)], Some(12)), 4096).unwrap();
        assert_eq!((f.revision, f.compact_revision), (30, Some(12)));
    }

    #[test]
    fn an_empty_store_is_at_revision_one() {
        assert_eq!(scan(&tiny(&[], None), 4096).unwrap().revision, 1);
    }

    #[test]
    fn truncated_or_foreign_files_are_refused() {
        let file = tiny(&[rev(2, 0)], None);
        let err = scan(&file[..4096 * 3], 4096).unwrap_err();
        assert!(err.contains("meta page says 4 pages"), "{err}");
        assert!(scan(&[0u8; 100], 10).is_err());
        let mut bad = file.clone();
        bad[16] ^= 1; // the magic of both metas
        bad[4096 + 16] ^= 1;
        assert!(scan(&bad, 4096).is_err());
    }
}
