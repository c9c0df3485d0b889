//! Restoring a volume backup into a directory (or a block image to a file).
//!
//! The plan is made from the manifest alone: directories, then every file
//! created at its full size (holes stay holes), then the data written pack by
//! pack (each pack fetched once, verified, its chunks written to every place
//! that uses them, on all cores), then links, then metadata deepest first so
//! that directory times survive the writes into them.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use rustix::fs::{FileType, OFlags};

use super::beneath::{self, Beneath};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::repo::manifest::{Entry, EntryKind, Manifest};
use crate::repo::pack::{IndexNeed, OpenPack};
use crate::source::volume::unescape;

#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    pub backup_id: uuid::Uuid,
    pub target: String,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    pub packs_read: u64,
    /// Metadata that could not be applied (ownership when not root, …).
    pub warnings: Vec<String>,
    /// What `--no-setuid` left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
    /// Entries that were in the target before a `--force` restore and are
    /// not in the backup: left as they were, so the target is not an exact
    /// copy of the backup.
    pub left_in_place: u64,
    /// One of them, to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_in_place_example: Option<String>,
}

/// Where restored data goes.
#[derive(Debug, Clone)]
pub enum Target {
    Dir { path: PathBuf, force: bool },
    Block { path: PathBuf, force: bool },
}

pub(crate) fn rel_path(e: &Entry) -> Result<PathBuf> {
    let bytes = unescape(&e.path).ok_or_else(|| bad_manifest(&e.path))?;
    let p = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad_manifest(&e.path));
    }
    Ok(p)
}

fn bad_manifest(path: &str) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!("the manifest holds an invalid path `{path}`"),
    )
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(e, ErrorKind::Failed, what)
}

/// The file a directory restore leaves in its target until it has
/// finished: files are created at full size before their data is written,
/// so without it a killed restore would look complete.
pub const MARKER: &str = ".drctl-restore-incomplete";

/// Checks the target before anything is written.
pub fn check_target(target: &Target) -> Result<()> {
    match target {
        Target::Dir { path, force } => {
            if !force && let Ok(said) = fs::read_to_string(path.join(MARKER)) {
                return Err(Error::config(format!(
                    "an earlier restore into {} did not finish: {}",
                    path.display(),
                    said.lines().next().unwrap_or("").trim()
                ))
                .with_guidance(
                    "its files may be incomplete; run the restore again with --force to start clean",
                ));
            }
            if let Ok(mut rd) = fs::read_dir(path)
                && rd.next().is_some()
                && !force
            {
                return Err(Error::config(format!("restore target {} is not empty", path.display()))
                    .with_guidance("choose an empty or new directory, or pass --force to restore over its contents"));
            }
            if path.exists() && !path.is_dir() {
                return Err(Error::config(format!(
                    "restore target {} is not a directory",
                    path.display()
                )));
            }
        }
        Target::Block { path, force } => {
            if let Ok(m) = fs::metadata(path)
                && (m.len() > 0 || m.file_type().is_dir())
                && !force
            {
                return Err(
                    Error::config(format!("block target {} exists", path.display()))
                        .with_guidance("pass --force to overwrite it"),
                );
            }
        }
    }
    Ok(())
}

/// Checks that the entries of a directory backup describe a tree: every
/// path once, every entry below a directory entry listed before it, every
/// hard link naming a file. A manifest that does not is refused before
/// anything is written: a path listed twice (a file and then a symlink of
/// the same name) or an entry below a symlink is how a hostile backup would
/// reach outside the target.
pub fn check_tree(manifest: &Manifest) -> Result<()> {
    let mut kinds: HashMap<&str, EntryKind> = HashMap::with_capacity(manifest.entries.len());
    for e in &manifest.entries {
        if !e.path.is_empty() {
            rel_path(e)?;
        }
        let parent = e.path.rsplit_once('/').map_or("", |(p, _)| p);
        if !e.path.is_empty() && !parent.is_empty() && kinds.get(parent) != Some(&EntryKind::Dir) {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "the manifest places `{}` below `{parent}`, which it does not hold as a directory",
                    e.path
                ),
            )
            .with_guidance("do not restore this backup: it was written to reach outside its target"));
        }
        if e.path.is_empty() && e.kind != EntryKind::Dir {
            return Err(bad_manifest(&e.path));
        }
        if e.kind == EntryKind::Hardlink
            && e.target.as_deref().and_then(|t| kinds.get(t)) != Some(&EntryKind::File)
        {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "the manifest links `{}` to something that is not a file before it",
                    e.path
                ),
            ));
        }
        if kinds.insert(&e.path, e.kind).is_some() {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("the manifest lists `{}` twice", e.path),
            )
            .with_guidance(
                "do not restore this backup: it was written to reach outside its target",
            ));
        }
    }
    Ok(())
}

/// What a restore may leave out on request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Drop setuid and setgid bits and `security.*` extended attributes
    /// (file capabilities, SELinux labels): a restored tree then grants no
    /// privilege on the machine it lands on.
    pub no_setuid: bool,
}

/// Restores `manifest` to `target`.
pub fn restore(
    repo: &Repository,
    manifest: &Manifest,
    target: &Target,
    options: Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RestoreSummary> {
    check_target(target)?;
    let identity = repo.identity()?;
    let mut summary = RestoreSummary {
        backup_id: manifest.backup_id,
        target: String::new(),
        entries: manifest.entries.len() as u64,
        files: 0,
        bytes: 0,
        packs_read: 0,
        warnings: Vec::new(),
        dropped: Vec::new(),
        left_in_place: 0,
        left_in_place_example: None,
    };
    let root = match target {
        Target::Block { path, .. } => {
            summary.target = path.display().to_string();
            return restore_block(repo, identity, manifest, path, progress, summary);
        }
        Target::Dir { path, .. } => path.clone(),
    };
    summary.target = root.display().to_string();
    check_tree(manifest)?;
    // A forced restore over contents (not over drctl's own interrupted
    // restore, which is cleared) keeps what the backup does not hold.
    let had_contents =
        fs::read_dir(&root).is_ok_and(|mut d| d.next().is_some()) && !root.join(MARKER).exists();
    fs::create_dir_all(&root).map_err(io(format!(
        "cannot create restore target {}",
        root.display()
    )))?;
    // Probe writability now, not after the first pack is fetched. Created
    // exclusively, never through a link planted under its name.
    let probe = root.join(format!(".drctl-probe-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&probe)
        .map_err(io(format!(
            "restore target {} is not writable",
            root.display()
        )))?;
    let _ = fs::remove_file(&probe);
    let beneath = Beneath::open(&root).map_err(io(format!("cannot open {}", root.display())))?;
    let b = &beneath;
    // The marker goes first and is removed last. A forced restore over an
    // interrupted one starts clean: the target is drctl's own.
    let marker = Path::new(MARKER);
    let own_marker = !manifest.entries.iter().any(|e| e.path == MARKER);
    if own_marker {
        if b.kind(marker).ok().flatten().is_some() {
            let names: Vec<_> = fs::read_dir(&root)
                .map_err(io(format!("cannot list {}", root.display())))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .filter(|n| n != MARKER)
                .collect();
            for n in names {
                b.remove(Path::new(&n)).map_err(io(format!(
                    "cannot clear the interrupted restore in {}",
                    root.display()
                )))?;
            }
            b.remove(marker).map_err(io(format!(
                "cannot clear the interrupted restore in {}",
                root.display()
            )))?;
        }
        use std::io::Write;
        let mut f = b
            .open_at(
                marker,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                0o600,
            )
            .map_err(io(format!("cannot mark the restore in {}", root.display())))?;
        writeln!(
            f,
            "restore of backup {} started at {} and has not finished; the files here may be incomplete",
            manifest.backup_id,
            chrono::Utc::now().to_rfc3339()
        )
        .and_then(|()| f.sync_all())
        .map_err(io(format!("cannot mark the restore in {}", root.display())))?;
    }
    let at = |e: &Entry| -> Result<PathBuf> {
        if e.path.is_empty() {
            Ok(PathBuf::new())
        } else {
            rel_path(e)
        }
    };
    let fail = |what: &str, e: &Entry| {
        let what = what.to_string();
        let path = display_path(e);
        move |err: std::io::Error| {
            Error::io(err, ErrorKind::Failed, format!("cannot {what} {path}"))
        }
    };

    // 1. Directories, and files created empty at their full size. Whatever
    // is in the way (with --force) is removed, never followed or reused: a
    // file there may be a hard link to one outside.
    for e in &manifest.entries {
        let p = at(e)?;
        match e.kind {
            EntryKind::Dir if !e.path.is_empty() => {
                if b.kind(&p).map_err(fail("inspect", e))? != Some(FileType::Directory) {
                    b.remove(&p).map_err(fail("replace", e))?;
                }
                b.mkdir(&p).map_err(fail("create directory", e))?;
            }
            EntryKind::File => {
                b.remove(&p).map_err(fail("replace", e))?;
                let f = b
                    .open_at(&p, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)
                    .map_err(fail("create", e))?;
                f.set_len(e.size).map_err(fail("size", e))?;
                summary.files += 1;
                summary.bytes += e.size;
            }
            _ => {}
        }
    }

    // 2. Data, pack by pack.
    let open = |e: &Entry| -> Result<File> {
        b.open_at(&at(e)?, OFlags::WRONLY, 0)
            .map_err(fail("open", e))
    };
    // A small file is written whole by one chunk: its metadata is set
    // right after, on the descriptor that wrote it, rather than by opening
    // it again at the end (for a tree of tiny files, a third of a restore).
    let root_user = crate::sys::is_root();
    let notes = std::sync::Mutex::new(MetaNotes::default());
    let finished: Vec<std::sync::atomic::AtomicBool> = (0..manifest.entries.len())
        .map(|_| std::sync::atomic::AtomicBool::new(false))
        .collect();
    let finish = |ei: usize, f: &File| -> Result<()> {
        let e = &manifest.entries[ei];
        apply_meta(f, e, &options, root_user, &notes)?;
        finished[ei].store(true, Ordering::Relaxed);
        Ok(())
    };
    summary.packs_read = restore_data(repo, identity, manifest, &open, Some(&finish), progress)?;

    // 3. Links.
    let by_path: HashMap<&str, usize> = manifest
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_str(), i))
        .collect();
    for e in &manifest.entries {
        let p = at(e)?;
        match e.kind {
            EntryKind::Symlink => {
                let t = e
                    .target
                    .as_deref()
                    .and_then(unescape)
                    .ok_or_else(|| bad_manifest(&e.path))?;
                b.remove(&p).map_err(fail("replace", e))?;
                b.symlink(std::ffi::OsStr::from_bytes(&t), &p)
                    .map_err(fail("create symlink", e))?;
            }
            EntryKind::Hardlink => {
                let first = e
                    .target
                    .as_ref()
                    .and_then(|t| by_path.get(t.as_str()))
                    .map(|&i| &manifest.entries[i])
                    .ok_or_else(|| bad_manifest(&e.path))?;
                b.remove(&p).map_err(fail("replace", e))?;
                b.hard_link(&at(first)?, &p)
                    .map_err(fail("create hard link", e))?;
            }
            _ => {}
        }
    }

    // 4. Metadata, deepest first, on descriptors: nothing is followed.
    for (i, e) in manifest.entries.iter().enumerate().rev() {
        let p = at(e)?;
        let owner = (e.uid, e.gid);
        let warn = |summary: &mut RestoreSummary, what: String| {
            summary.warnings.push(format!("{}: {what}", e.path))
        };
        match e.kind {
            EntryKind::Hardlink | EntryKind::Block => continue,
            EntryKind::Symlink => {
                // Symlinks carry no mode, and xattrs on them are not
                // restored (Linux allows only trusted.* and security.*).
                if let Err(err) = b.set_link_meta(&p, owner.0, owner.1, e.mtime_ns)
                    && root_user
                {
                    warn(&mut summary, format!("owner or times: {err}"));
                }
                continue;
            }
            _ => {}
        }
        let dir = if e.kind == EntryKind::Dir {
            OFlags::DIRECTORY
        } else {
            OFlags::empty()
        };
        if e.path.is_empty() && own_marker {
            // Last of all, before the target's own times are set.
            b.remove(marker).map_err(fail("finish the restore in", e))?;
        }
        if e.kind == EntryKind::File && finished[i].load(Ordering::Relaxed) {
            // Set as its data was written.
            continue;
        }
        let f = b
            .open_at(&p, OFlags::RDONLY | OFlags::NOFOLLOW | dir, 0)
            .map_err(fail("open", e))?;
        apply_meta(&f, e, &options, root_user, &notes)?;
    }
    if own_marker {
        // A manifest without a root entry: nothing removed it above.
        b.remove(marker).map_err(io(format!(
            "cannot finish the restore in {}",
            root.display()
        )))?;
    }
    let notes = notes.into_inner().unwrap();
    summary.warnings.extend(notes.warnings);
    summary.dropped.extend(notes.dropped);
    summary.dropped.sort();
    if had_contents {
        let (n, example) = not_in_backup(&root, manifest);
        summary.left_in_place = n;
        summary.left_in_place_example = example;
    }
    Ok(summary)
}

/// What setting metadata left to report, from whichever thread set it.
#[derive(Default)]
struct MetaNotes {
    warnings: Vec<String>,
    dropped: Vec<String>,
}

/// Sets the metadata of `e` (a file or directory) on `f`: extended
/// attributes, mode (without setuid and setgid under `--no-setuid`), owner
/// (as root), times.
fn apply_meta(
    f: &File,
    e: &Entry,
    options: &Options,
    root_user: bool,
    notes: &std::sync::Mutex<MetaNotes>,
) -> Result<()> {
    let warn = |what: String| {
        notes
            .lock()
            .unwrap()
            .warnings
            .push(format!("{}: {what}", e.path))
    };
    for (name, value) in &e.xattrs {
        let (Some(n), Ok(v)) = (unescape(name), hex::decode(value)) else {
            continue;
        };
        if options.no_setuid && n.starts_with(b"security.") {
            notes
                .lock()
                .unwrap()
                .dropped
                .push(format!("{}: xattr {name}", e.path));
            continue;
        }
        if let Err(err) = xattr::FileExt::set_xattr(f, std::ffi::OsStr::from_bytes(&n), &v) {
            warn(format!("xattr {name}: {err}"));
        }
    }
    let mut mode = e.mode;
    if options.no_setuid && mode & 0o6000 != 0 {
        notes.lock().unwrap().dropped.push(format!(
            "{}: {} bit",
            e.path,
            match mode & 0o6000 {
                0o4000 => "setuid",
                0o2000 => "setgid",
                _ => "setuid and setgid",
            }
        ));
        mode &= !0o6000;
    }
    match beneath::set_meta(f, mode, Some((e.uid, e.gid)), e.mtime_ns) {
        Ok(()) => Ok(()),
        // Not root: the owner could not be set; mode and times were.
        Err(err) if err.raw_os_error() == Some(libc::EPERM) && !root_user => Ok(()),
        Err(err) if root_user && err.raw_os_error() == Some(libc::EPERM) => {
            warn(format!("owner {}:{}: {err}", e.uid, e.gid));
            Ok(())
        }
        Err(err) => Err(Error::io(
            err,
            ErrorKind::Failed,
            format!("cannot set the metadata of {}", display_path(e)),
        )),
    }
}

/// Entries under `root` the manifest does not list (a directory counted
/// once, not descended), and one of them. Links are not followed.
fn not_in_backup(root: &Path, manifest: &Manifest) -> (u64, Option<String>) {
    let listed: std::collections::HashSet<&str> =
        manifest.entries.iter().map(|e| e.path.as_str()).collect();
    let (mut n, mut example) = (0u64, None);
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let Ok(entries) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = rel.join(entry.file_name());
            let name = crate::source::volume::escape(path.as_os_str().as_bytes());
            if listed.contains(name.as_str()) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(path);
                }
            } else {
                n += 1;
                example.get_or_insert(name);
            }
        }
    }
    (n, example)
}

/// A block backup into a file or device the operator named.
fn restore_block(
    repo: &Repository,
    identity: &crate::repo::Identity,
    manifest: &Manifest,
    path: &std::path::Path,
    progress: &(dyn Fn(u64) + Sync),
    mut summary: RestoreSummary,
) -> Result<RestoreSummary> {
    for e in &manifest.entries {
        if matches!(e.kind, EntryKind::File | EntryKind::Block) {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io(format!("cannot create {}", path.display())))?;
            if f.metadata().map(|m| m.is_file()).unwrap_or(false) {
                f.set_len(e.size)
                    .map_err(io(format!("cannot size {}", path.display())))?;
            }
            summary.files += 1;
            summary.bytes += e.size;
        }
    }
    let open = |_: &Entry| -> Result<File> {
        OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(format!("cannot open {}", path.display())))
    };
    summary.packs_read = restore_data(repo, identity, manifest, &open, None, progress)?;
    Ok(summary)
}

/// Writes every chunk where the entries want it, pack by pack (each pack
/// fetched once, on all cores); returns how many packs were read.
/// Called with an entry's number and descriptor once its last chunk is
/// written.
type Finish<'a> = dyn Fn(usize, &File) -> Result<()> + Sync + 'a;

/// `finish` is called with a file's descriptor once the last chunk of the
/// file is written to it.
fn restore_data(
    repo: &Repository,
    identity: &crate::repo::Identity,
    manifest: &Manifest,
    open: &(dyn Fn(&Entry) -> Result<File> + Sync),
    finish: Option<&Finish<'_>>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    // Writes left per entry: the last one finishes the file.
    let left: Vec<std::sync::atomic::AtomicU32> = manifest
        .entries
        .iter()
        .map(|e| {
            std::sync::atomic::AtomicU32::new(e.extents.iter().map(|x| x.chunks.len() as u32).sum())
        })
        .collect();
    let mut by_pack: HashMap<&str, Vec<(u32, usize, u64)>> = HashMap::new();
    for (ei, e) in manifest.entries.iter().enumerate() {
        for x in &e.extents {
            let mut at = x.offset;
            for &ci in &x.chunks {
                let loc = manifest
                    .chunks
                    .get(ci as usize)
                    .ok_or_else(|| bad_manifest(&e.path))?;
                by_pack
                    .entry(loc.pack.as_str())
                    .or_default()
                    .push((ci, ei, at));
                at += loc.raw_length as u64;
            }
        }
    }
    let mut packs: Vec<_> = by_pack.into_iter().collect();
    packs.sort_by(|a, b| a.0.cmp(b.0));
    let packs_read = AtomicU64::new(0);
    crate::parallel::try_for_each(
        packs,
        crate::parallel::threads(),
        crate::repo::pack::decompressor,
        |zstd, (pack, uses)| {
            let done = |ei: usize, f: &File| -> Result<()> {
                match finish {
                    Some(finish) if left[ei].fetch_sub(1, Ordering::AcqRel) == 1 => finish(ei, f),
                    _ => Ok(()),
                }
            };
            restore_pack(
                repo, identity, manifest, pack, uses, open, &done, progress, zstd,
            )?;
            packs_read.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
    )?;
    Ok(packs_read.into_inner())
}

/// Up to this many chunks from one pack are opened by key alone
/// ([`IndexNeed::Keys`]): trying each of a pack's few data keys on a blob
/// costs less than parsing an index entry per chunk in the pack.
const FEW_CHUNKS: usize = 64;

#[allow(clippy::too_many_arguments)]
fn restore_pack(
    repo: &Repository,
    identity: &crate::repo::Identity,
    manifest: &Manifest,
    pack: &str,
    mut uses: Vec<(u32, usize, u64)>,
    open: &(dyn Fn(&Entry) -> Result<File> + Sync),
    done: &Finish<'_>,
    progress: &(dyn Fn(u64) + Sync),
    zstd: &mut zstd::bulk::Decompressor<'static>,
) -> Result<()> {
    // A few chunks out of a pack (a file picked with --include) need only
    // the index's keys; the manifest says where they lie.
    let need = if uses.len() <= FEW_CHUNKS {
        IndexNeed::Keys
    } else {
        IndexNeed::All
    };
    let pack = OpenPack::fetch_with(&*repo.store, pack, identity, repo.max_pack_bytes(), need)?;
    // Each chunk is opened once and written to every place that uses it; a
    // file is opened per write, so a pack of many small files holds no more
    // than one descriptor at a time.
    uses.sort_unstable();
    let mut current: Option<(u32, Vec<u8>)> = None;
    for (ci, ei, at) in uses {
        let loc = &manifest.chunks[ci as usize];
        if current.as_ref().is_none_or(|(c, _)| *c != ci) {
            // The manifest and the pack's own index must agree on the chunk.
            current = Some((ci, pack.chunk_at(loc, &repo.secret, zstd)?));
        }
        let data = &current.as_ref().expect("set above").1;
        let e = &manifest.entries[ei];
        let f = open(e)?;
        f.write_all_at(data, at)
            .map_err(io(format!("cannot write {}", display_path(e))))?;
        done(ei, &f)?;
        progress(data.len() as u64);
    }
    Ok(())
}

/// Where a path of a backup went: used to say what a failure affects.
pub fn display_path(e: &Entry) -> String {
    String::from_utf8_lossy(&unescape(&e.path).unwrap_or_default()).into_owned()
}
