//! Files beneath a restore target, reached without following links.
//!
//! A backup may come from a compromised cluster, and restore hosts hold the
//! age identity: a manifest must not be able to make a restore write outside
//! its target. Checking paths as text is not enough, because a symlink the
//! restore itself created (or one already in a `--force` target) would be
//! followed by the next path through it. So every path is resolved by the
//! kernel relative to the target's descriptor with `openat2(2)`
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: `..`, absolute paths and links
//! anywhere along the way fail with an error instead of being followed.
//! Links are made and removed with the `*at` calls on the parent's
//! descriptor, which never follow the last component; metadata is set on
//! descriptors (files, directories) or with `AT_SYMLINK_NOFOLLOW` (links).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timestamps, Uid};

/// A restore target, held open.
pub struct Beneath {
    root: OwnedFd,
}

impl Beneath {
    /// Opens the directory `path` (itself reached normally: the operator
    /// named it).
    pub fn open(path: &Path) -> io::Result<Beneath> {
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath { root })
    }

    /// `openat2` of `rel` beneath the target; `rel` empty is the target.
    pub fn open_at(&self, rel: &Path, flags: OFlags, mode: u32) -> io::Result<File> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let fd = rustix::fs::openat2(
            &self.root,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )?;
        Ok(File::from(fd))
    }

    /// The parent directory of `rel` (opened beneath) and its last name.
    fn parent<'a>(&self, rel: &'a Path) -> io::Result<(File, &'a OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = rel.parent().unwrap_or(Path::new(""));
        let fd = self.open_at(dir, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        Ok((fd, name))
    }

    /// What is at `rel`, without following it: `None` when nothing is.
    pub fn kind(&self, rel: &Path) -> io::Result<Option<FileType>> {
        let (dir, name) = self.parent(rel)?;
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes what is at `rel` (a directory with all it holds), never
    /// following a link. Missing is fine.
    pub fn remove(&self, rel: &Path) -> io::Result<()> {
        match self.kind(rel)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                let dir = self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
                let mut names = Vec::new();
                let mut entries = rustix::fs::Dir::read_from(&dir)?;
                while let Some(entry) = entries.read() {
                    let entry = entry?;
                    let name = entry.file_name().to_bytes();
                    if name != b"." && name != b".." {
                        names.push(std::ffi::OsString::from(
                            <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name),
                        ));
                    }
                }
                for n in names {
                    self.remove(&rel.join(n))?;
                }
                let (parent, name) = self.parent(rel)?;
                Ok(rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)?)
            }
            Some(_) => {
                let (parent, name) = self.parent(rel)?;
                Ok(rustix::fs::unlinkat(&parent, name, AtFlags::empty())?)
            }
        }
    }

    /// Makes the directory `rel` (0700 until its metadata is set); one that
    /// exists is fine.
    pub fn mkdir(&self, rel: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
            Err(rustix::io::Errno::EXIST) => Ok(()),
            r => Ok(r?),
        }
    }

    /// Makes the symlink `rel` pointing at `target` (never resolved here).
    pub fn symlink(&self, target: &OsStr, rel: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        Ok(rustix::fs::symlinkat(target, &dir, name)?)
    }

    /// Makes `rel` a hard link to the file `existing` (both beneath).
    pub fn hard_link(&self, existing: &Path, rel: &Path) -> io::Result<()> {
        let (from_dir, from) = self.parent(existing)?;
        let (to_dir, to) = self.parent(rel)?;
        // No AT_SYMLINK_FOLLOW: a link is linked, not followed.
        Ok(rustix::fs::linkat(
            &from_dir,
            from,
            &to_dir,
            to,
            AtFlags::empty(),
        )?)
    }

    /// Owner and times of the symlink `rel` itself.
    pub fn set_link_meta(&self, rel: &Path, uid: u32, gid: u32, mtime_ns: i64) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let chown = rustix::fs::chownat(
            &dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        rustix::fs::utimensat(&dir, name, &times(mtime_ns), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(chown?)
    }
}

/// Sets owner, mode and times on an open file or directory. The mode goes
/// after the owner, whose change clears setuid bits.
pub fn set_meta(f: &File, mode: u32, owner: Option<(u32, u32)>, mtime_ns: i64) -> io::Result<()> {
    let chown = match owner {
        Some((uid, gid)) => {
            rustix::fs::fchown(f, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        }
        None => Ok(()),
    };
    rustix::fs::fchmod(f, Mode::from_raw_mode(mode & 0o7777))?;
    rustix::fs::futimens(f, &times(mtime_ns))?;
    Ok(chown?)
}

fn times(ns: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_resolves_through_a_link_or_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let b = Beneath::open(dir.path()).unwrap();
        b.symlink(outside.path().as_os_str(), Path::new("a"))
            .unwrap();
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        assert!(b.open_at(Path::new("a/x"), create, 0o600).is_err());
        assert!(b.open_at(Path::new("../x"), create, 0o600).is_err());
        assert!(b.open_at(Path::new("a"), OFlags::RDONLY, 0).is_err());
        assert!(b.mkdir(Path::new("a/d")).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        b.remove(Path::new("a")).unwrap();
        assert!(outside.path().exists(), "the link went, not its target");
        b.mkdir(Path::new("a")).unwrap();
        b.open_at(Path::new("a/x"), create, 0o600).unwrap();
        assert!(dir.path().join("a/x").is_file());
    }
}
