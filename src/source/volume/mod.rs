//! The volume source: a directory tree (or a raw block image) read file by
//! file, with its metadata, into the write pipeline.
//!
//! The walk goes depth first, a directory's entries sorted bytewise, and
//! turns each directory into a tree object ([`crate::repo::tree`]) once its
//! files' chunks are known, so an unchanged directory is the same tree as
//! in the previous backup and costs nothing. The previous backup's trees are
//! read lazily, a directory at a time, as the walk reaches the directory: a
//! file whose size, mtime, ctime and inode match is not read again, its
//! chunk list is taken from there; a file that changed tells the pipeline
//! its old chunks, which are then not stored again.
//!
//! Memory holds the directories on the walk's path and those walked whose
//! files are still being read (a bounded queue of them), never the whole
//! listing. Holes in sparse files are found with SEEK_DATA/SEEK_HOLE and not
//! read at all. Special files (devices, fifos, sockets) are skipped with a
//! warning: they carry no data to restore.

mod escape;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};

pub use escape::{escape, unescape};

use crate::error::Result;
use crate::repo::chunker::{BLOCK_CHUNK, Chunking, Cutter};
use crate::repo::manifest::{EntryKind, Problem};
use crate::repo::tree::{Node, ROOT_NAME, Tree, TreeExtent, TreeReader};
use crate::repo::writer::{Job, Sink};
use crate::repo::{ChunkId, RepoSecret};

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

/// The previous backup of the same volume: its trees, read as needed.
pub struct Parent<'a> {
    pub reader: &'a TreeReader<'a>,
    pub top: ChunkId,
}

/// What a walk found and stored.
#[derive(Debug, Default)]
pub struct Walked {
    /// The top tree: the backup's listing.
    pub top: Option<ChunkId>,
    pub problems: Vec<Problem>,
    pub entries: u64,
    pub directories: u64,
    /// Files (and block images) in the backup, and their size.
    pub files: u64,
    pub bytes: u64,
    pub files_read: u64,
    pub files_unchanged: u64,
    pub bytes_unchanged: u64,
    pub skipped_special: u64,
    /// Trees stored new (directories that changed).
    pub trees_new: u64,
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
/// Entries of walked directories waiting for their files' chunks before the
/// oldest is finished (its tree made) by waiting: what bounds the walk's
/// memory on a tree of millions of files, while the readers stay busy.
const PENDING_ENTRIES: usize = 50_000;
/// ... and directories.
const PENDING_DIRS: usize = 256;

/// Part of a file to read: `length` bytes at `offset`.
#[derive(Debug, Clone, Copy)]
struct Task {
    offset: u64,
    length: u64,
}

type Outcome = std::result::Result<Vec<u64>, String>;

/// What the readers made of each task, until the walk takes it.
#[derive(Default)]
struct Results {
    done: Mutex<HashMap<usize, Outcome>>,
    arrived: Condvar,
    /// Whether the walk waits: readers wake it only then.
    waiting: std::sync::atomic::AtomicBool,
}

impl Results {
    fn put(&self, i: usize, outcome: Outcome) {
        self.done.lock().unwrap().insert(i, outcome);
        if self.waiting.load(std::sync::atomic::Ordering::SeqCst) {
            self.arrived.notify_all();
        }
    }

    /// Waits (the lock held) until `ready` says the outcome is there.
    fn wait_for<T>(&self, mut ready: impl FnMut(&mut HashMap<usize, Outcome>) -> Option<T>) -> T {
        use std::sync::atomic::Ordering::SeqCst;
        let mut done = self.done.lock().unwrap();
        loop {
            if let Some(v) = ready(&mut done) {
                return v;
            }
            self.waiting.store(true, SeqCst);
            done = self
                .arrived
                .wait_timeout(done, std::time::Duration::from_millis(100))
                .unwrap()
                .0;
            self.waiting.store(false, SeqCst);
        }
    }
}

/// Files up to this size are read without looking for holes first: for a
/// small file, the open, two seeks and close that looking takes cost more
/// than reading it, and its holes (if any) are restored as zeros.
const SMALL_FILE: u64 = 16 << 10;

/// Reads `source` into `sink`, incremental against `parent`. `refs` is told
/// of every chunk and tree the backup references, a directory at a time
/// (what locates the packs it uses); `progress` of bytes read.
///
/// The walk (metadata, unchanged files resolved from `parent`, data extents
/// of the rest) runs on the calling thread and hands segments of data to
/// [`readers`] threads as it finds them, so reading starts at once.
pub fn read(
    source: &Source,
    parent: Option<Parent<'_>>,
    secret: &RepoSecret,
    sink: &Sink,
    refs: &mut dyn FnMut(Vec<ChunkId>),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Walked> {
    let chunking = match source {
        Source::Dir(_) => Chunking::Cdc {
            seed: secret.chunker_seed(),
        },
        Source::Block(_) => Chunking::Fixed(BLOCK_CHUNK),
    };
    let (queue, tasks_rx) = sync_channel::<(usize, Task, Arc<PathBuf>)>(1024);
    let tasks_rx = Mutex::new(tasks_rx);
    let results = Results::default();
    let pipeline_error: Mutex<Option<crate::Error>> = Mutex::new(None);
    let walked = std::thread::scope(|s| {
        for _ in 0..readers() {
            s.spawn(|| {
                let mut open: Option<(Arc<PathBuf>, File)> = None;
                let mut cutter = Cutter::new(chunking);
                let mut out = sink.batcher();
                loop {
                    // Hand over the batch before waiting for work: the walk
                    // may be waiting for those chunks' ids.
                    let mut next = tasks_rx.lock().unwrap().try_recv();
                    if let Err(std::sync::mpsc::TryRecvError::Empty) = next {
                        if let Err(e) = out.flush() {
                            pipeline_error.lock().unwrap().get_or_insert(e);
                        }
                        next = tasks_rx
                            .lock()
                            .unwrap()
                            .recv()
                            .map_err(|_| std::sync::mpsc::TryRecvError::Disconnected);
                    }
                    let Ok((i, task, path)) = next else { return };
                    // After a failure, drain the queue so the walker never blocks.
                    let result = if sink.is_stopped() || pipeline_error.lock().unwrap().is_some() {
                        Err(NOT_READ.to_string())
                    } else {
                        match read_task(i, &task, &path, &mut open, &mut cutter, &mut out, progress)
                        {
                            Ok(tags) => Ok(tags),
                            Err(ReadError::Io(e)) => Err(e.to_string()),
                            Err(ReadError::Short) => {
                                Err("changed size while being read".to_string())
                            }
                            Err(ReadError::Pipeline(e)) => {
                                pipeline_error.lock().unwrap().get_or_insert(e);
                                Err(NOT_READ.to_string())
                            }
                        }
                    };
                    results.put(i, result);
                }
            });
        }
        let mut walker = Walker {
            parent: parent.as_ref().map(|p| p.reader),
            secret,
            sink,
            results: &results,
            refs,
            links: HashMap::new(),
            link_ok: HashMap::new(),
            walked: Walked::default(),
            next_task: 0,
            queue,
            pending: VecDeque::new(),
            pending_entries: 0,
            next_seq: 0,
            finished: HashMap::new(),
            unreached: 0,
        };
        let walked = walker.walk(source, parent.as_ref().map(|p| p.top));
        // Dropping the walker closes the queue; the readers then finish.
        let unreached = walker.unreached;
        let out = walked.map(|()| std::mem::take(&mut walker.walked));
        drop(walker);
        if unreached > 0 {
            tracing::warn!(
                files = unreached,
                "not read: the backup stopped before reaching them"
            );
        }
        out
    });
    if let Some(e) = pipeline_error.into_inner().unwrap() {
        return Err(e);
    }
    walked
}

/// Why a file has no data when the pipeline stopped before reading it.
const NOT_READ: &str = "not read";

fn read_task(
    i: usize,
    task: &Task,
    path: &Arc<PathBuf>,
    open: &mut Option<(Arc<PathBuf>, File)>,
    cutter: &mut Cutter,
    sink: &mut crate::repo::writer::Batcher<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> std::result::Result<Vec<u64>, ReadError> {
    if open.as_ref().is_none_or(|(p, _)| !Arc::ptr_eq(p, path)) {
        *open = None;
        *open = Some((path.clone(), open_nofollow(path)?));
    }
    let mut f = &open.as_ref().expect("opened above").1;
    f.seek(SeekFrom::Start(task.offset))?;
    let mut refs = Vec::new();
    let mut seq = 0u64;
    let got = cutter.cut(f.take(task.length), |data| {
        let tag = ((i as u64) << 16) | seq;
        seq += 1;
        progress(data.len() as u64);
        refs.push(tag);
        let mut buf = sink.buffer_for(data.len());
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

/// An entry of a walked directory, waiting for what its node needs.
enum Pending {
    Ready(Node),
    /// A file being read: its segments' task numbers, offsets and lengths.
    File {
        node: Node,
        segments: Vec<(usize, u64, u64)>,
        /// The first name of a hard-linked file.
        linked: bool,
    },
    /// A subdirectory, finished under `seq` (before this directory).
    Dir {
        node: Node,
        seq: u64,
    },
    /// Another name of a file: kept only if that file's data was read.
    Link {
        node: Node,
        target_tasks: Vec<usize>,
    },
}

/// A walked directory whose tree is not made yet.
struct PendingDir {
    seq: u64,
    /// Escaped path from the root ("" for the root; None for the top).
    path: Option<String>,
    /// Its tree in the previous backup.
    parent: Option<ChunkId>,
    entries: Vec<Pending>,
}

struct Walker<'a, 'r> {
    parent: Option<&'a TreeReader<'a>>,
    secret: &'a RepoSecret,
    sink: &'a Sink,
    results: &'a Results,
    refs: &'r mut dyn FnMut(Vec<ChunkId>),
    /// (dev, ino) → escaped path and data tasks of the first name of a
    /// hard-linked file.
    links: HashMap<(u64, u64), (String, Vec<usize>)>,
    /// Whether the first name of a hard-linked file was backed up, once
    /// its directory is finished.
    link_ok: HashMap<String, bool>,
    walked: Walked,
    next_task: usize,
    /// Where the readers take tasks from.
    queue: SyncSender<(usize, Task, Arc<PathBuf>)>,
    /// Walked directories in the order they were walked (children first).
    pending: VecDeque<PendingDir>,
    pending_entries: usize,
    next_seq: u64,
    /// Trees made of directories whose parent is not finished yet.
    finished: HashMap<u64, ChunkId>,
    unreached: u64,
}

fn node(name: String, kind: EntryKind, m: &fs::Metadata) -> Node {
    Node {
        name,
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: ctime_ns(m),
        ino: m.ino(),
        size: 0,
        target: None,
        xattrs: Vec::new(),
        extents: Vec::new(),
        subtree: None,
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

impl Walker<'_, '_> {
    fn walk(&mut self, source: &Source, parent_top: Option<ChunkId>) -> Result<()> {
        let parent_top_tree = match (parent_top, self.parent) {
            (Some(top), Some(reader)) => match reader.load(&top, "") {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e.report(), "the previous backup's listing cannot be read: every file is read again");
                    None
                }
            },
            _ => None,
        };
        let top = match source {
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
                let parent_root = parent_top_tree
                    .as_ref()
                    .and_then(|t| t.get(ROOT_NAME))
                    .and_then(|n| n.subtree);
                let mut n = node(ROOT_NAME.into(), EntryKind::Dir, &meta);
                n.xattrs = xattrs(root);
                self.walked.entries += 1;
                self.walked.directories += 1;
                let seq = self.dir(root, Vec::new(), parent_root)?;
                Pending::Dir { node: n, seq }
            }
            Source::Block(path) => self.block(path, parent_top_tree.as_ref())?,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(PendingDir {
            seq,
            path: None,
            parent: parent_top,
            entries: vec![top],
        });
        while !self.pending.is_empty() {
            self.finish_oldest()?;
        }
        self.walked.top = self.finished.remove(&seq);
        if self.sink.is_stopped() {
            return Err(crate::Error::new(
                crate::ErrorKind::Failed,
                "the write pipeline stopped",
            ));
        }
        Ok(())
    }

    fn problem(&mut self, rel: &[u8], err: impl std::fmt::Display) {
        let path = escape(rel);
        tracing::warn!(%path, error = %err, "not backed up");
        self.walked.problems.push(Problem {
            path,
            error: err.to_string(),
        });
    }

    /// Walks directory `abs` (escaped path `rel`), whose tree in the
    /// previous backup is `parent`; returns the number its tree will be
    /// finished under.
    fn dir(&mut self, abs: &Path, rel: Vec<u8>, parent: Option<ChunkId>) -> Result<u64> {
        let rel_escaped = escape(&rel);
        let parent_tree = match (parent, self.parent) {
            (Some(id), Some(reader)) => match reader.load(&id, &rel_escaped) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(path = %rel_escaped, error = %e.report(), "the previous backup's listing of this directory cannot be read: its files are read again");
                    None
                }
            },
            _ => None,
        };
        let mut entries = Vec::new();
        let mut children: Vec<_> = match fs::read_dir(abs) {
            Ok(rd) => rd.filter_map(|r| r.ok()).map(|d| d.file_name()).collect(),
            Err(err) => {
                self.problem(&rel, format!("cannot list directory: {err}"));
                Vec::new()
            }
        };
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in children {
            if self.sink.is_stopped() {
                break;
            }
            let child_abs = abs.join(&name);
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            let escaped_name = escape(name.as_bytes());
            let before = parent_tree.as_ref().and_then(|t| t.get(&escaped_name));
            let meta = match fs::symlink_metadata(&child_abs) {
                Ok(m) => m,
                Err(err) => {
                    self.problem(&child_rel, format!("vanished or unreadable: {err}"));
                    continue;
                }
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                let mut n = node(escaped_name, EntryKind::Dir, &meta);
                n.xattrs = xattrs(&child_abs);
                self.walked.entries += 1;
                self.walked.directories += 1;
                let sub = before
                    .filter(|b| b.kind == EntryKind::Dir)
                    .and_then(|b| b.subtree);
                let seq = self.dir(&child_abs, child_rel, sub)?;
                entries.push(Pending::Dir { node: n, seq });
            } else if ft.is_file() {
                if let Some(p) = self.file(&child_abs, &child_rel, escaped_name, &meta, before) {
                    self.walked.entries += 1;
                    entries.push(p);
                }
            } else if ft.is_symlink() {
                match fs::read_link(&child_abs) {
                    Ok(target) => {
                        let mut n = node(escaped_name, EntryKind::Symlink, &meta);
                        n.target = Some(escape(target.as_os_str().as_bytes()));
                        self.walked.entries += 1;
                        entries.push(Pending::Ready(n));
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
                self.walked.skipped_special += 1;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending_entries += entries.len();
        self.pending.push_back(PendingDir {
            seq,
            path: Some(rel_escaped),
            parent,
            entries,
        });
        while self.pending_entries > PENDING_ENTRIES || self.pending.len() > PENDING_DIRS {
            self.finish_oldest()?;
        }
        Ok(seq)
    }

    /// A regular file: unchanged since `before` (its chunks reused, nothing
    /// read), another name of a file seen, or one to read.
    fn file(
        &mut self,
        abs: &Path,
        rel: &[u8],
        name: String,
        meta: &fs::Metadata,
        before: Option<&Node>,
    ) -> Option<Pending> {
        let path = escape(rel);
        if meta.nlink() > 1
            && let Some((first, tasks)) = self.links.get(&(meta.dev(), meta.ino()))
        {
            let mut n = node(name, EntryKind::Hardlink, meta);
            n.target = Some(first.clone());
            return Some(Pending::Link {
                node: n,
                target_tasks: tasks.clone(),
            });
        }
        let before = before.filter(|b| b.kind == EntryKind::File);
        // Unchanged since the previous backup: reuse its chunks, read nothing.
        if let Some(b) = before
            && b.size == meta.size()
            && b.mtime_ns == meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
            && b.ctime_ns == ctime_ns(meta)
            && b.ino == meta.ino()
        {
            let mut n = node(name, EntryKind::File, meta);
            n.size = meta.size();
            n.xattrs = xattrs(abs);
            n.extents = b.extents.clone();
            self.walked.files += 1;
            self.walked.bytes += n.size;
            self.walked.files_unchanged += 1;
            self.walked.bytes_unchanged += meta.size();
            if meta.nlink() > 1 {
                self.links
                    .insert((meta.dev(), meta.ino()), (path, Vec::new()));
            }
            return Some(Pending::Ready(n));
        }
        let small;
        let (meta, extents) = if meta.size() <= SMALL_FILE {
            // Read whole; the reader opens it without following links and
            // reports a file that shrank meanwhile.
            small = meta.clone();
            let extents = if meta.size() > 0 {
                vec![(0, meta.size())]
            } else {
                Vec::new()
            };
            (&small, extents)
        } else {
            let file = match open_nofollow(abs) {
                Ok(f) => f,
                Err(err) => {
                    self.problem(rel, format!("vanished or unreadable: {err}"));
                    return None;
                }
            };
            // The metadata of what we opened, not of what was there a moment ago.
            match file
                .metadata()
                .and_then(|m| crate::sys::data_extents(&file, m.size()).map(|x| (m, x)))
            {
                Ok((m, x)) => {
                    small = m;
                    (&small, x)
                }
                Err(err) => {
                    self.problem(rel, err);
                    return None;
                }
            }
        };
        // Its previous version's chunks are stored: those that did not
        // change are not stored again.
        if let Some(b) = before {
            self.sink
                .hint(b.extents.iter().flat_map(|x| x.chunks.iter().copied()));
        }
        let mut n = node(name, EntryKind::File, meta);
        n.size = meta.size();
        n.xattrs = xattrs(abs);
        self.walked.files += 1;
        self.walked.bytes += n.size;
        let segments = self.add_tasks(abs, &extents);
        if meta.nlink() > 1 {
            self.links.insert(
                (meta.dev(), meta.ino()),
                (path, segments.iter().map(|s| s.0).collect()),
            );
        }
        Some(Pending::File {
            node: n,
            segments,
            linked: meta.nlink() > 1,
        })
    }

    /// Queues a file's data, in segments; returns them.
    fn add_tasks(&mut self, abs: &Path, extents: &[(u64, u64)]) -> Vec<(usize, u64, u64)> {
        let mut segments = Vec::new();
        if extents.is_empty() {
            return segments;
        }
        let path = Arc::new(abs.to_path_buf());
        for &(offset, length) in extents {
            let mut at = offset;
            while at < offset + length {
                let n = SEGMENT.min(offset + length - at);
                let task = Task {
                    offset: at,
                    length: n,
                };
                let i = self.next_task;
                self.next_task += 1;
                // A closed queue means the readers stopped; the error that
                // stopped them is reported by the pipeline.
                if self.queue.send((i, task, path.clone())).is_err() {
                    self.results.put(i, Err(NOT_READ.into()));
                }
                segments.push((i, at, n));
                at += n;
            }
        }
        segments
    }

    /// Waits for the outcome of task `i` and takes it.
    fn take_result(&self, i: usize) -> Outcome {
        self.results.wait_for(|done| done.remove(&i))
    }

    /// Whether task `i` read its data, waiting for it; the outcome stays.
    fn peek_result(&self, i: usize) -> bool {
        self.results
            .wait_for(|done| done.get(&i).map(|r| r.is_ok()))
    }

    /// Makes the tree of the oldest walked directory, waiting for its
    /// files' data to be read and their chunks named; stores it when it is
    /// not the previous backup's.
    fn finish_oldest(&mut self) -> Result<()> {
        let Some(dir) = self.pending.pop_front() else {
            return Ok(());
        };
        self.pending_entries = self.pending_entries.saturating_sub(dir.entries.len());
        let mut nodes = Vec::with_capacity(dir.entries.len());
        let mut refs = Vec::new();
        let at = |name: &str| match &dir.path {
            Some(p) if !p.is_empty() => format!("{p}/{name}"),
            _ => name.to_string(),
        };
        for pending in dir.entries {
            match pending {
                Pending::Ready(n) => {
                    refs.extend(n.extents.iter().flat_map(|x| x.chunks.iter().copied()));
                    nodes.push(n);
                }
                Pending::Dir { mut node, seq } => {
                    let Some(id) = self.finished.remove(&seq) else {
                        // Its walk stopped (the pipeline failed).
                        continue;
                    };
                    node.subtree = Some(id);
                    nodes.push(node);
                }
                Pending::Link { node, target_tasks } => {
                    let target = node.target.clone().unwrap_or_default();
                    let ok = match self.link_ok.get(&target) {
                        Some(ok) => *ok,
                        None => target_tasks.iter().all(|&i| self.peek_result(i)),
                    };
                    if ok {
                        nodes.push(node);
                    }
                }
                Pending::File {
                    mut node,
                    segments,
                    linked,
                } => {
                    let path = at(&node.name);
                    let mut extents: Vec<TreeExtent> = Vec::new();
                    let mut failed: Option<String> = None;
                    for (i, offset, length) in segments {
                        match self.take_result(i) {
                            Ok(tags) if failed.is_none() => {
                                let mut ids = Vec::with_capacity(tags.len());
                                for t in tags {
                                    match self.sink.resolve(t) {
                                        Some(id) => ids.push(id),
                                        None => {
                                            failed = Some(NOT_READ.into());
                                            break;
                                        }
                                    }
                                }
                                match extents.last_mut() {
                                    Some(last) if last.offset + last.length == offset => {
                                        last.length += length;
                                        last.chunks.extend(ids);
                                    }
                                    _ => extents.push(TreeExtent {
                                        offset,
                                        length,
                                        chunks: ids,
                                    }),
                                }
                            }
                            Ok(tags) => {
                                // Named by the workers all the same: take
                                // them so they do not pile up.
                                for t in tags {
                                    self.sink.resolve(t);
                                }
                            }
                            Err(e) => {
                                failed.get_or_insert(e);
                            }
                        }
                    }
                    if linked {
                        self.link_ok.insert(path.clone(), failed.is_none());
                    }
                    match failed {
                        None => {
                            self.walked.files_read += 1;
                            refs.extend(extents.iter().flat_map(|x| x.chunks.iter().copied()));
                            node.extents = extents;
                            nodes.push(node);
                        }
                        Some(e) => {
                            self.walked.files = self.walked.files.saturating_sub(1);
                            self.walked.bytes = self.walked.bytes.saturating_sub(node.size);
                            if e == NOT_READ {
                                self.unreached += 1;
                            } else {
                                tracing::warn!(%path, error = %e, "not backed up");
                            }
                            self.walked.problems.push(Problem {
                                path,
                                error: format!("vanished or unreadable: {e}"),
                            });
                        }
                    }
                }
            }
        }
        nodes.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let tree = Tree { nodes };
        let bytes = tree.encode();
        let id = self.secret.tree_id(&bytes);
        if dir.parent != Some(id) {
            self.walked.trees_new += 1;
            // A closed pipeline reports its own error.
            let _ = self.sink.send_tree(id, bytes);
        }
        refs.push(id);
        (self.refs)(refs);
        self.finished.insert(dir.seq, id);
        Ok(())
    }

    /// A block image or device: the top tree's one node, read whole.
    fn block(&mut self, path: &Path, parent_top: Option<&Tree>) -> Result<Pending> {
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
        let name = escape(&name);
        if let Some(before) = parent_top.and_then(|t| t.get(&name)) {
            self.sink
                .hint(before.extents.iter().flat_map(|x| x.chunks.iter().copied()));
        }
        let mut n = node(name, EntryKind::Block, &meta);
        n.size = size;
        self.walked.entries += 1;
        self.walked.files += 1;
        self.walked.bytes += size;
        let segments = self.add_tasks(path, &extents);
        Ok(Pending::File {
            node: n,
            segments,
            linked: false,
        })
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
