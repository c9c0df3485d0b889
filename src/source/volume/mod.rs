//! The volume source: a directory tree (or a raw block image) read file by
//! file, with its metadata, into the write pipeline.
//!
//! Entries come out in a stable order (names sorted bytewise, depth first),
//! so unchanged trees produce identical manifests. A file whose size, mtime,
//! ctime and inode match the previous backup of the same volume is not read
//! again: its chunk list is taken from that backup. Holes in sparse files are
//! found with SEEK_DATA/SEEK_HOLE and not read at all. Special files (devices,
//! fifos, sockets) are skipped with a warning: they carry no data to restore.

mod escape;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use escape::{escape, unescape};

use crate::error::Result;
use crate::repo::ChunkId;
use crate::repo::chunker::{BLOCK_CHUNK, Chunking, Cutter};
use crate::repo::manifest::{Entry, EntryKind, Problem};
use crate::repo::writer::{Job, Sink};

/// What to back up.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory tree.
    Dir(PathBuf),
    /// A raw block image or device, chunked at fixed offsets.
    Block(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Block(p) => p,
        }
    }
}

/// What the previous backup recorded of a file, to skip it when unchanged.
/// Stored in the catalog (`backup_items.attrs`), which writers can read:
/// they cannot decrypt old manifests, by design.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub extents: Vec<StampExtent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StampExtent {
    pub offset: u64,
    pub length: u64,
    pub chunks: Vec<ChunkId>,
}

/// A chunk reference before the pipeline has named every chunk.
#[derive(Debug, Clone, Copy)]
pub enum Ref {
    Known(ChunkId),
    Tag(u64),
}

/// The tree as read: entries in order, their chunk references per extent,
/// and what went wrong.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// For each entry, per extent `(offset, length, refs)`.
    pub refs: Vec<Vec<(u64, u64, Vec<Ref>)>>,
    /// For each entry, `(ctime_ns, ino)` for the next incremental.
    pub stamps: Vec<(i64, u64)>,
    pub problems: Vec<Problem>,
    pub files_read: u64,
    pub files_unchanged: u64,
    pub bytes_unchanged: u64,
    pub skipped_special: u64,
    /// Escaped paths of files taken unchanged from the previous backup.
    pub unchanged: std::collections::HashSet<String>,
}

/// Data is read in segments of at most this size, each cut into chunks on
/// its own, so that two threads can read one large file. A segment boundary
/// is a forced chunk boundary: at most one extra chunk per 64 MiB.
const SEGMENT: u64 = 64 << 20;
/// Threads reading (and cutting chunks) in parallel: one per two cores. A
/// reader (read, find the cut points, copy out) keeps about two workers
/// (hash, compress, encrypt) busy; on two cores a second reader bought no
/// speed and cost 25 MiB of peak memory (its buffer and chunks in flight).
fn readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Part of a file to read: `length` bytes at `offset` of entry `entry`.
#[derive(Debug, Clone, Copy)]
struct Task {
    entry: usize,
    offset: u64,
    length: u64,
}

/// Reads `source` into `sink`. `parent` maps escaped paths to their stamps in
/// the previous backup. `progress` is told how many bytes were read.
///
/// The walk (metadata, unchanged files resolved from `parent`, data extents
/// of the rest) runs on the calling thread and hands segments of data to
/// [`readers`] threads as it finds them, so reading starts at once.
pub fn read(
    source: &Source,
    parent: &HashMap<String, Stamp>,
    seed: u64,
    sink: &Sink,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Scan> {
    let chunking = match source {
        Source::Dir(_) => Chunking::Cdc { seed },
        Source::Block(_) => Chunking::Fixed(BLOCK_CHUNK),
    };
    let (queue, tasks_rx) = sync_channel::<(usize, Task, Arc<PathBuf>)>(1024);
    let tasks_rx = Mutex::new(tasks_rx);
    type Outcome = std::result::Result<Vec<Ref>, String>;
    let results: Mutex<HashMap<usize, Outcome>> = Mutex::new(HashMap::new());
    let pipeline_error: Mutex<Option<crate::Error>> = Mutex::new(None);
    let walked = std::thread::scope(|s| {
        for _ in 0..readers() {
            s.spawn(|| {
                let mut open: Option<(usize, File)> = None;
                let mut cutter = Cutter::new(chunking);
                loop {
                    let next = tasks_rx.lock().unwrap().recv();
                    let Ok((i, task, path)) = next else { return };
                    // After a failure, drain the queue so the walker never blocks.
                    if sink.is_stopped() || pipeline_error.lock().unwrap().is_some() {
                        continue;
                    }
                    let result =
                        match read_task(i, &task, &path, &mut open, &mut cutter, sink, progress) {
                            Ok(refs) => Ok(refs),
                            Err(ReadError::Io(e)) => Err(e.to_string()),
                            Err(ReadError::Short) => {
                                Err("changed size while being read".to_string())
                            }
                            Err(ReadError::Pipeline(e)) => {
                                pipeline_error.lock().unwrap().get_or_insert(e);
                                continue;
                            }
                        };
                    results.lock().unwrap().insert(i, result);
                }
            });
        }
        let mut walker = Walker {
            parent,
            sink,
            links: HashMap::new(),
            scan: Scan::default(),
            tasks: Vec::new(),
            queue,
        };
        let walked = walker.walk(source);
        // Dropping the walker closes the queue; the readers then finish.
        let Walker { scan, tasks, .. } = walker;
        walked.map(|()| (scan, tasks))
    });
    if let Some(e) = pipeline_error.into_inner().unwrap() {
        return Err(e);
    }
    let (mut scan, tasks) = walked?;
    let mut results = results.into_inner().unwrap();

    // Assemble extents from their segments; drop files that failed.
    let mut failed: HashMap<usize, String> = HashMap::new();
    let mut by_entry: HashMap<usize, Vec<(u64, u64, Vec<Ref>)>> = HashMap::new();
    for (i, task) in tasks.iter().enumerate() {
        match results.remove(&i) {
            Some(Ok(refs)) => {
                let extents = by_entry.entry(task.entry).or_default();
                match extents.last_mut() {
                    Some(last) if last.0 + last.1 == task.offset => {
                        last.1 += task.length;
                        last.2.extend(refs);
                    }
                    _ => extents.push((task.offset, task.length, refs)),
                }
            }
            Some(Err(e)) => {
                failed.entry(task.entry).or_insert(e);
            }
            None => {
                failed.entry(task.entry).or_insert_with(|| NOT_READ.into());
            }
        }
    }
    for (entry, refs) in by_entry {
        if !failed.contains_key(&entry) {
            scan.refs[entry] = refs;
            scan.files_read += 1;
        }
    }
    if !failed.is_empty() {
        drop_failed(&mut scan, failed);
    }
    Ok(scan)
}

/// Why a file has no data when the pipeline stopped before reading it.
const NOT_READ: &str = "not read";

/// Removes entries whose data could not be read (and the other names of
/// those files), reporting each as a problem.
fn drop_failed(scan: &mut Scan, failed: HashMap<usize, String>) {
    let mut keep = vec![true; scan.entries.len()];
    let mut dropped: Vec<String> = Vec::new();
    let mut failed: Vec<_> = failed.into_iter().collect();
    failed.sort();
    // Files never reached because the pipeline stopped (its error is what
    // the run reports) are one line in the log, not one line each.
    let unreached = failed.iter().filter(|(_, e)| e == NOT_READ).count();
    if unreached > 0 {
        tracing::warn!(
            files = unreached,
            "not read: the backup stopped before reaching them"
        );
    }
    for (entry, error) in failed {
        keep[entry] = false;
        let path = scan.entries[entry].path.clone();
        if error != NOT_READ {
            tracing::warn!(%path, %error, "not backed up");
        }
        scan.problems.push(Problem {
            path: path.clone(),
            error: format!("vanished or unreadable: {error}"),
        });
        dropped.push(path);
    }
    for (i, e) in scan.entries.iter().enumerate() {
        if e.kind == EntryKind::Hardlink && e.target.as_ref().is_some_and(|t| dropped.contains(t)) {
            keep[i] = false;
        }
    }
    let mut k = keep.iter();
    scan.entries.retain(|_| *k.next().unwrap());
    let mut k = keep.iter();
    scan.refs.retain(|_| *k.next().unwrap());
    let mut k = keep.iter();
    scan.stamps.retain(|_| *k.next().unwrap());
}

fn read_task(
    i: usize,
    task: &Task,
    path: &Path,
    open: &mut Option<(usize, File)>,
    cutter: &mut Cutter,
    sink: &Sink,
    progress: &(dyn Fn(u64) + Sync),
) -> std::result::Result<Vec<Ref>, ReadError> {
    if open.as_ref().is_none_or(|(e, _)| *e != task.entry) {
        *open = None;
        *open = Some((task.entry, open_nofollow(path)?));
    }
    let mut f = &open.as_ref().expect("opened above").1;
    f.seek(SeekFrom::Start(task.offset))?;
    let mut refs = Vec::new();
    let mut seq = 0u64;
    let got = cutter.cut(f.take(task.length), |data| {
        let tag = ((i as u64) << 16) | seq;
        seq += 1;
        progress(data.len() as u64);
        refs.push(Ref::Tag(tag));
        let mut buf = sink.buffer();
        buf.extend_from_slice(data);
        sink.send(Job { tag, data: buf })
            .map_err(ReadError::Pipeline)
    })?;
    if got != task.length {
        return Err(ReadError::Short);
    }
    Ok(refs)
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
        .open(path)
        .or_else(|_| {
            // O_NOATIME needs ownership of the file; retry without it.
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        })
}

struct Walker<'a> {
    parent: &'a HashMap<String, Stamp>,
    sink: &'a Sink,
    /// (dev, ino) → escaped path of the first name of a hard-linked file.
    links: HashMap<(u64, u64), String>,
    scan: Scan,
    /// Data to read, in entry order (kept to assemble the extents).
    tasks: Vec<Task>,
    /// Where the readers take tasks from.
    queue: SyncSender<(usize, Task, Arc<PathBuf>)>,
}

fn entry(path: String, kind: EntryKind, m: &fs::Metadata) -> Entry {
    Entry {
        path,
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        size: 0,
        target: None,
        xattrs: Vec::new(),
        extents: Vec::new(),
        ctime_ns: Some(ctime_ns(m)),
        ino: Some(m.ino()),
    }
}

fn ctime_ns(m: &fs::Metadata) -> i64 {
    m.ctime() * 1_000_000_000 + m.ctime_nsec()
}

fn xattrs(path: &Path) -> Vec<(String, String)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = names
        .filter_map(|n| {
            let v = xattr::get(path, &n).ok()??;
            Some((escape(n.as_bytes()), hex::encode(v)))
        })
        .collect();
    out.sort();
    out
}

impl Walker<'_> {
    fn walk(&mut self, source: &Source) -> Result<()> {
        match source {
            Source::Dir(root) => {
                let meta = fs::symlink_metadata(root).map_err(|e| {
                    crate::Error::new(
                        crate::ErrorKind::NotFound,
                        format!("cannot read the volume directory {}", root.display()),
                    )
                    .with_source(e)
                })?;
                if !meta.is_dir() {
                    return Err(crate::Error::config(format!(
                        "{} is not a directory",
                        root.display()
                    ))
                    .with_guidance("use --block FILE for a block image or device"));
                }
                self.dir(root, Vec::new(), &meta)
            }
            Source::Block(path) => self.block(path),
        }
    }

    fn problem(&mut self, rel: &[u8], err: impl std::fmt::Display) {
        let path = escape(rel);
        tracing::warn!(%path, error = %err, "not backed up");
        self.scan.problems.push(Problem {
            path,
            error: err.to_string(),
        });
    }

    fn push(&mut self, e: Entry, refs: Vec<(u64, u64, Vec<Ref>)>, stamp: (i64, u64)) {
        self.scan.entries.push(e);
        self.scan.refs.push(refs);
        self.scan.stamps.push(stamp);
    }

    fn dir(&mut self, abs: &Path, rel: Vec<u8>, meta: &fs::Metadata) -> Result<()> {
        let mut e = entry(escape(&rel), EntryKind::Dir, meta);
        e.xattrs = xattrs(abs);
        self.push(e, Vec::new(), (ctime_ns(meta), meta.ino()));
        let mut children: Vec<_> = match fs::read_dir(abs) {
            Ok(rd) => rd.filter_map(|r| r.ok()).map(|d| d.file_name()).collect(),
            Err(err) => {
                self.problem(&rel, format!("cannot list directory: {err}"));
                return Ok(());
            }
        };
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in children {
            if self.sink.is_stopped() {
                return Ok(());
            }
            let child_abs = abs.join(&name);
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            let meta = match fs::symlink_metadata(&child_abs) {
                Ok(m) => m,
                Err(err) => {
                    self.problem(&child_rel, format!("vanished or unreadable: {err}"));
                    continue;
                }
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                self.dir(&child_abs, child_rel, &meta)?;
            } else if ft.is_file() {
                self.file(&child_abs, child_rel, &meta)?;
            } else if ft.is_symlink() {
                match fs::read_link(&child_abs) {
                    Ok(target) => {
                        let mut e = entry(escape(&child_rel), EntryKind::Symlink, &meta);
                        e.target = Some(escape(target.as_os_str().as_bytes()));
                        self.push(e, Vec::new(), (ctime_ns(&meta), meta.ino()));
                    }
                    Err(err) => self.problem(&child_rel, format!("cannot read symlink: {err}")),
                }
            } else {
                let what = if ft.is_fifo() {
                    "fifo"
                } else if ft.is_socket() {
                    "socket"
                } else {
                    "device"
                };
                tracing::warn!(path = %escape(&child_rel), kind = what, "special file skipped");
                self.scan.skipped_special += 1;
            }
        }
        Ok(())
    }

    fn file(&mut self, abs: &Path, rel: Vec<u8>, meta: &fs::Metadata) -> Result<()> {
        let path = escape(&rel);
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                let mut e = entry(path, EntryKind::Hardlink, meta);
                e.target = Some(first.clone());
                self.push(e, Vec::new(), (ctime_ns(meta), meta.ino()));
                return Ok(());
            }
            self.links.insert((meta.dev(), meta.ino()), path.clone());
        }
        // Unchanged since the previous backup: reuse its chunks, read nothing.
        if let Some(stamp) = self.parent.get(&path)
            && stamp.size == meta.size()
            && stamp.mtime_ns == meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
            && stamp.ctime_ns == ctime_ns(meta)
            && stamp.ino == meta.ino()
        {
            let mut e = entry(path, EntryKind::File, meta);
            e.size = meta.size();
            e.xattrs = xattrs(abs);
            let refs = stamp
                .extents
                .iter()
                .map(|x| {
                    (
                        x.offset,
                        x.length,
                        x.chunks.iter().map(|c| Ref::Known(*c)).collect(),
                    )
                })
                .collect();
            self.scan.files_unchanged += 1;
            self.scan.unchanged.insert(e.path.clone());
            self.scan.bytes_unchanged += meta.size();
            self.push(e, refs, (ctime_ns(meta), meta.ino()));
            return Ok(());
        }
        let file = match open_nofollow(abs) {
            Ok(f) => f,
            Err(err) => {
                self.problem(&rel, format!("vanished or unreadable: {err}"));
                return Ok(());
            }
        };
        // The metadata of what we opened, not of what was there a moment ago.
        let (meta, extents) = match file
            .metadata()
            .and_then(|m| crate::sys::data_extents(&file, m.size()).map(|x| (m, x)))
        {
            Ok(v) => v,
            Err(err) => {
                self.problem(&rel, err);
                return Ok(());
            }
        };
        let mut e = entry(path, EntryKind::File, &meta);
        e.size = meta.size();
        e.xattrs = xattrs(abs);
        self.push(e, Vec::new(), (ctime_ns(&meta), meta.ino()));
        self.add_tasks(abs, &extents);
        Ok(())
    }

    /// Queues the data of the entry just pushed, in segments.
    fn add_tasks(&mut self, abs: &Path, extents: &[(u64, u64)]) {
        let entry = self.scan.entries.len() - 1;
        if extents.is_empty() {
            return;
        }
        let path = Arc::new(abs.to_path_buf());
        for &(offset, length) in extents {
            let mut at = offset;
            while at < offset + length {
                let n = SEGMENT.min(offset + length - at);
                let task = Task {
                    entry,
                    offset: at,
                    length: n,
                };
                // A closed queue means the readers stopped; the error that
                // stopped them is reported by the pipeline.
                let _ = self.queue.send((self.tasks.len(), task, path.clone()));
                self.tasks.push(task);
                at += n;
            }
        }
    }

    fn block(&mut self, path: &Path) -> Result<()> {
        let mut file = File::open(path).map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::NotFound,
                format!("cannot open block image {}", path.display()),
            )
            .with_source(e)
        })?;
        let meta = file
            .metadata()
            .map_err(|e| crate::Error::new(crate::ErrorKind::Failed, "stat").with_source(e))?;
        // A block device reports size 0; its size is where its end is.
        let size = if meta.file_type().is_block_device() {
            file.seek(SeekFrom::End(0)).unwrap_or(0)
        } else {
            meta.size()
        };
        let name = path
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let extents = if meta.file_type().is_block_device() {
            vec![(0, size)]
        } else {
            crate::sys::data_extents(&file, size).map_err(|e| {
                crate::Error::new(
                    crate::ErrorKind::Failed,
                    format!("cannot read block image {}", path.display()),
                )
                .with_source(e)
            })?
        };
        let mut e = entry(escape(&name), EntryKind::Block, &meta);
        e.size = size;
        self.push(e, Vec::new(), (ctime_ns(&meta), meta.ino()));
        self.add_tasks(path, &extents);
        Ok(())
    }
}

enum ReadError {
    Io(std::io::Error),
    /// The file ended before the extent did: it shrank while being read.
    Short,
    Pipeline(crate::Error),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}
