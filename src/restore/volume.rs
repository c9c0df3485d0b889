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
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::repo::manifest::{Entry, EntryKind, Manifest};
use crate::repo::pack::OpenPack;
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
}

/// Where restored data goes.
#[derive(Debug, Clone)]
pub enum Target {
    Dir { path: PathBuf, force: bool },
    Block { path: PathBuf, force: bool },
}

fn rel_path(e: &Entry) -> Result<PathBuf> {
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

/// Removes what is at `p` unless it is what `keep` accepts (a symlink never
/// is: lstat does not follow it). Missing is fine.
fn remove_if_not(p: &std::path::Path, keep: impl Fn(&fs::Metadata) -> bool) {
    if let Ok(m) = fs::symlink_metadata(p)
        && !keep(&m)
    {
        let _ = if m.is_dir() {
            fs::remove_dir_all(p)
        } else {
            fs::remove_file(p)
        };
    }
}

/// Checks the target before anything is written.
pub fn check_target(target: &Target) -> Result<()> {
    match target {
        Target::Dir { path, force } => {
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

/// Restores `manifest` to `target`.
pub fn restore(
    repo: &Repository,
    manifest: &Manifest,
    target: &Target,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RestoreSummary> {
    check_target(target)?;
    let identity = repo.identity()?;
    let (root, block) = match target {
        Target::Dir { path, .. } => (path.clone(), false),
        Target::Block { path, .. } => (path.clone(), true),
    };
    if !block {
        fs::create_dir_all(&root).map_err(io(format!(
            "cannot create restore target {}",
            root.display()
        )))?;
        // Probe writability now, not after the first pack is fetched.
        let probe = root.join(format!(".drctl-probe-{}", std::process::id()));
        File::create(&probe).map_err(io(format!(
            "restore target {} is not writable",
            root.display()
        )))?;
        let _ = fs::remove_file(&probe);
    }
    let dest = |e: &Entry| -> Result<PathBuf> {
        if block {
            Ok(root.clone())
        } else {
            Ok(root.join(rel_path(e)?))
        }
    };

    // 1. Directories and files at full size.
    let mut summary = RestoreSummary {
        backup_id: manifest.backup_id,
        target: root.display().to_string(),
        entries: manifest.entries.len() as u64,
        files: 0,
        bytes: 0,
        packs_read: 0,
        warnings: Vec::new(),
    };
    for e in &manifest.entries {
        let p = dest(e)?;
        match e.kind {
            EntryKind::Dir => {
                // Parents come before children, so replacing a symlink here
                // keeps every later path inside the target (with --force,
                // the target may hold links that point out of it).
                if !e.path.is_empty() {
                    remove_if_not(&p, |m| m.is_dir());
                }
                fs::create_dir_all(&p)
                    .map_err(io(format!("cannot create directory {}", p.display())))?;
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
            }
            EntryKind::File | EntryKind::Block => {
                if !block {
                    remove_if_not(&p, |m| m.is_file());
                }
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(!block)
                    .custom_flags(if block { 0 } else { libc::O_NOFOLLOW })
                    .open(&p)
                    .map_err(io(format!("cannot create {}", p.display())))?;
                if !block || f.metadata().map(|m| m.is_file()).unwrap_or(false) {
                    f.set_len(e.size)
                        .map_err(io(format!("cannot size {}", p.display())))?;
                }
                summary.files += 1;
                summary.bytes += e.size;
            }
            _ => {}
        }
    }

    // 2. Data, pack by pack.
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
            restore_pack(repo, identity, manifest, pack, uses, &dest, progress, zstd)?;
            packs_read.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
    )?;
    summary.packs_read = packs_read.into_inner();
    if block {
        return Ok(summary);
    }

    // 3. Links.
    let by_path: HashMap<&str, usize> = manifest
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_str(), i))
        .collect();
    for e in &manifest.entries {
        let p = dest(e)?;
        match e.kind {
            EntryKind::Symlink => {
                let t = e
                    .target
                    .as_deref()
                    .and_then(unescape)
                    .ok_or_else(|| bad_manifest(&e.path))?;
                let _ = fs::remove_file(&p);
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), &p)
                    .map_err(io(format!("cannot create symlink {}", p.display())))?;
            }
            EntryKind::Hardlink => {
                let first = e
                    .target
                    .as_ref()
                    .and_then(|t| by_path.get(t.as_str()))
                    .map(|&i| &manifest.entries[i])
                    .ok_or_else(|| bad_manifest(&e.path))?;
                let _ = fs::remove_file(&p);
                fs::hard_link(dest(first)?, &p)
                    .map_err(io(format!("cannot create hard link {}", p.display())))?;
            }
            _ => {}
        }
    }

    // 4. Metadata, deepest first.
    let root_user = crate::sys::is_root();
    for e in manifest.entries.iter().rev() {
        if e.kind == EntryKind::Hardlink {
            continue;
        }
        let p = dest(e)?;
        for (name, value) in &e.xattrs {
            let (Some(n), Ok(v)) = (unescape(name), hex::decode(value)) else {
                continue;
            };
            if let Err(err) = xattr::set(&p, std::ffi::OsStr::from_bytes(&n), &v) {
                summary
                    .warnings
                    .push(format!("{}: xattr {name}: {err}", e.path));
            }
        }
        if let Err(err) = std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid))
            && root_user
        {
            summary
                .warnings
                .push(format!("{}: owner {}:{}: {err}", e.path, e.uid, e.gid));
        }
        if e.kind != EntryKind::Symlink {
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
                .map_err(io(format!("cannot set the mode of {}", p.display())))?;
        }
        crate::sys::set_mtime_nofollow(&p, e.mtime_ns)
            .map_err(io(format!("cannot set the times of {}", p.display())))?;
    }
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn restore_pack(
    repo: &Repository,
    identity: &crate::repo::Identity,
    manifest: &Manifest,
    pack: &str,
    mut uses: Vec<(u32, usize, u64)>,
    dest: &dyn Fn(&Entry) -> Result<PathBuf>,
    progress: &(dyn Fn(u64) + Sync),
    zstd: &mut zstd::bulk::Decompressor<'static>,
) -> Result<()> {
    let pack = OpenPack::fetch(&*repo.store, pack, identity, repo.max_pack_bytes())?;
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
        let p = dest(e)?;
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .map_err(io(format!("cannot open {}", p.display())))?;
        f.write_all_at(data, at)
            .map_err(io(format!("cannot write {}", p.display())))?;
        progress(data.len() as u64);
    }
    Ok(())
}

/// Where a path of a backup went: used to say what a failure affects.
pub fn display_path(e: &Entry) -> String {
    String::from_utf8_lossy(&unescape(&e.path).unwrap_or_default()).into_owned()
}
