//! A repository in a local directory.
//!
//! Put-once is made atomic with a temporary file and `link(2)`, which fails
//! when the target exists; a crash leaves at most a stray `.tmp-*` file, never
//! a half-written object under a real key. Objects are made read-only. There
//! is no Object Lock here: use it for tests, demos and air-gapped copies.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{ObjectMeta, PutOptions, Store, sha256};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::new(
                ErrorKind::Failed,
                format!("invalid object key `{key}`"),
            ));
        }
        Ok(self.root.join(key))
    }

    fn io_error(&self, what: String, e: std::io::Error) -> Error {
        Error::io(e, ErrorKind::Unavailable, what)
    }

    fn meta(&self, key: &str, m: &fs::Metadata) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: m.len(),
            version_id: None,
            retain_until: None,
            lock_mode: None,
        }
    }
}

/// Writes `data` to a new file at `path`, around the page cache where the
/// file system allows it (`O_DIRECT`).
///
/// A pack is written once and not read again until a restore or a verify, so
/// copying it into the page cache only evicts pages someone else needs (the
/// application on the volume being backed up, for one). It is also slow on
/// virtual machines, where a first write to a page costs more than the copy:
/// the volume benchmark measured the buffered writes at a third of a full
/// backup's system time (docs/benchmarks.md). `O_DIRECT` wants aligned
/// buffers and lengths, so the data goes through one aligned 1 MiB buffer,
/// the last block padded with zeros and cut off again with `set_len`.
fn write_direct(path: &Path, data: &[u8]) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    const PIECE: usize = 1 << 20;
    let direct = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let mut f = match direct {
        Ok(f) => f,
        // tmpfs and some network file systems have no O_DIRECT.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut f = File::create_new(path)?;
            f.write_all(data)?;
            return Ok(f);
        }
        Err(e) => return Err(e),
    };
    let mut scratch = vec![0u8; PIECE.min(data.len().next_multiple_of(ALIGN)) + ALIGN];
    let off = scratch.as_ptr().align_offset(ALIGN);
    let aligned = &mut scratch[off..];
    for piece in data.chunks(PIECE) {
        let padded = piece.len().next_multiple_of(ALIGN);
        aligned[..piece.len()].copy_from_slice(piece);
        aligned[piece.len()..padded].fill(0);
        f.write_all(&aligned[..padded])?;
    }
    f.set_len(data.len() as u64)?;
    Ok(f)
}

impl Store for LocalStore {
    fn put(&self, key: &str, data: &[u8], opts: &PutOptions) -> Result<ObjectMeta> {
        if sha256(data) != opts.sha256 {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("refusing to store {key}: its bytes do not match their checksum"),
            ));
        }
        let path = self.path(key)?;
        let dir = path.parent().expect("keys have a parent").to_path_buf();
        fs::create_dir_all(&dir)
            .map_err(|e| self.io_error(format!("cannot create directory {}", dir.display()), e))?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let write = || -> std::io::Result<()> {
            let f = write_direct(&tmp, data)?;
            f.set_permissions(fs::Permissions::from_mode(0o444))?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_error(format!("cannot write {}", tmp.display()), e));
        }
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("object {key} exists already; objects are never overwritten"),
                ));
            }
            Err(e) => return Err(self.io_error(format!("cannot store {}", path.display()), e)),
        }
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            version_id: None,
            retain_until: None,
            lock_mode: None,
        })
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        fs::read(&path).map_err(|e| self.io_error(format!("cannot read object {key}"), e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(range.start))?;
            let mut buf = Vec::with_capacity((range.end - range.start) as usize);
            f.take(range.end - range.start).read_to_end(&mut buf)?;
            Ok(buf)
        };
        read().map_err(|e| self.io_error(format!("cannot read object {key}"), e))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(self.meta(key, &m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error(format!("cannot stat object {key}"), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut |key, m| {
            if key.starts_with(prefix) {
                out.push(self.meta(key, m));
            }
        })
        .map_err(|e| self.io_error(format!("cannot list {}", self.root.display()), e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str, _version: Option<&str>) -> Result<()> {
        let path = self.path(key)?;
        fs::remove_file(&path).map_err(|e| self.io_error(format!("cannot delete object {key}"), e))
    }

    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

fn walk(root: &Path, dir: &Path, f: &mut dyn FnMut(&str, &fs::Metadata)) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == root => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(root, &path, f)?;
        } else if let Ok(rel) = path.strip_prefix(root)
            && let Some(key) = rel.to_str()
        {
            f(key, &meta);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(data: &[u8]) -> PutOptions {
        PutOptions {
            sha256: sha256(data),
            retain_until: None,
        }
    }

    #[test]
    fn put_once_get_range_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        s.put("packs/ab/x", b"hello world", &opts(b"hello world"))
            .unwrap();
        let err = s.put("packs/ab/x", b"other", &opts(b"other")).unwrap_err();
        assert!(err.what().contains("never overwritten"), "{err:?}");
        assert_eq!(s.get("packs/ab/x").unwrap(), b"hello world");
        assert_eq!(s.get_range("packs/ab/x", 6..11).unwrap(), b"world");
        assert_eq!(s.list("packs/").unwrap().len(), 1);
        assert_eq!(s.head("packs/ab/x").unwrap().unwrap().size, 11);
        assert!(s.head("packs/ab/y").unwrap().is_none());
        assert_eq!(s.get("nope").unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn objects_of_any_length_are_stored_exactly() {
        // Around the 4 KiB alignment and the 1 MiB pieces of the direct write.
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            (1 << 20) - 1,
            1 << 20,
            (1 << 20) + 1,
            3 << 20,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let key = format!("packs/len-{len}");
            s.put(&key, &data, &opts(&data)).unwrap();
            assert_eq!(s.get(&key).unwrap(), data, "length {len}");
            assert_eq!(s.head(&key).unwrap().unwrap().size, len as u64);
        }
    }

    #[test]
    fn checksum_mismatch_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let err = s.put("k", b"abc", &opts(b"abd")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(s.head("k").unwrap().is_none());
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        assert!(s.get("../etc/passwd").is_err());
        assert!(s.get("/etc/passwd").is_err());
    }
}
