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

use super::{Finished, ObjectMeta, PutOptions, Store, Upload};
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

/// A new object being written to a temporary file, around the page cache
/// where the file system allows it (`O_DIRECT`), and linked under its key
/// when finished.
///
/// A pack is written once and not read again until a restore or a verify, so
/// copying it into the page cache only evicts pages someone else needs (the
/// application on the volume being backed up, for one). It is also slow on
/// virtual machines, where a first write to a page costs more than the copy:
/// the volume benchmark measured the buffered writes at a third of a full
/// backup's system time (docs/benchmarks.md). `O_DIRECT` wants aligned
/// buffers and lengths, so the data goes through one aligned 1 MiB piece,
/// the last one padded with zeros and cut off again with `set_len`.
struct LocalUpload<'a> {
    store: &'a LocalStore,
    /// The temporary file; `None` once linked under its key (or removed).
    tmp: Option<PathBuf>,
    file: File,
    direct: bool,
    /// The piece being filled: `buf[off..off + filled]`, `off` aligned.
    buf: Vec<u8>,
    off: usize,
    filled: usize,
    len: u64,
    /// Hashes what is written; `None` when the caller knows the hash.
    sha: Option<sha2::Sha256>,
}

const ALIGN: usize = 4096;
const PIECE: usize = 1 << 20;

impl<'a> LocalUpload<'a> {
    fn start(store: &'a LocalStore, buffer: Vec<u8>, piece: usize, hash: bool) -> Result<Self> {
        use sha2::Digest;
        use std::os::unix::fs::OpenOptionsExt;
        let what = |e| store.io_error(format!("cannot write to {}", store.root.display()), e);
        fs::create_dir_all(&store.root).map_err(what)?;
        let tmp = store
            .root
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let direct = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&tmp);
        let (file, direct) = match direct {
            Ok(f) => (f, true),
            // tmpfs and some network file systems have no O_DIRECT.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (File::create_new(&tmp).map_err(what)?, false)
            }
            Err(e) => return Err(what(e)),
        };
        let mut buf = buffer;
        buf.clear();
        buf.resize(piece + ALIGN, 0);
        let off = buf.as_ptr().align_offset(ALIGN);
        buf.truncate(off + piece);
        Ok(LocalUpload {
            store,
            tmp: Some(tmp),
            file,
            direct,
            buf,
            off,
            filled: 0,
            len: 0,
            sha: hash.then(sha2::Sha256::new),
        })
    }

    fn io(&self, e: std::io::Error) -> Error {
        let tmp = self.tmp.as_deref().unwrap_or(&self.store.root);
        self.store
            .io_error(format!("cannot write {}", tmp.display()), e)
    }

    /// Writes the piece, padded to the alignment when it is the last.
    fn flush(&mut self) -> Result<()> {
        let piece = &mut self.buf[self.off..];
        let n = if self.direct {
            let padded = self.filled.next_multiple_of(ALIGN);
            piece[self.filled..padded].fill(0);
            padded
        } else {
            self.filled
        };
        let written = (&self.file).write_all(&piece[..n]);
        self.filled = 0;
        written.map_err(|e| self.io(e))
    }

    /// Links the written file under `key`, put-once.
    fn commit(mut self, key: &str) -> Result<(ObjectMeta, Vec<u8>)> {
        let path = self.store.path(key)?;
        if self.filled > 0 {
            self.flush()?;
        }
        let sync = || -> std::io::Result<()> {
            self.file.set_len(self.len)?;
            self.file
                .set_permissions(fs::Permissions::from_mode(0o444))?;
            self.file.sync_all()
        };
        sync().map_err(|e| self.io(e))?;
        let dir = path.parent().expect("keys have a parent");
        fs::create_dir_all(dir).map_err(|e| {
            self.store
                .io_error(format!("cannot create directory {}", dir.display()), e)
        })?;
        let tmp = self.tmp.take().expect("not committed yet");
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
            Err(e) => {
                return Err(self
                    .store
                    .io_error(format!("cannot store {}", path.display()), e));
            }
        }
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let meta = ObjectMeta {
            key: key.to_string(),
            size: self.len,
            version_id: None,
            retain_until: None,
            lock_mode: None,
        };
        Ok((meta, std::mem::take(&mut self.buf)))
    }
}

impl Upload for LocalUpload<'_> {
    fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        use sha2::Digest;
        if let Some(sha) = &mut self.sha {
            sha.update(bytes);
        }
        self.len += bytes.len() as u64;
        let piece = self.buf.len() - self.off;
        while !bytes.is_empty() {
            let n = bytes.len().min(piece - self.filled);
            let at = self.off + self.filled;
            self.buf[at..at + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == piece {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn finish(
        mut self: Box<Self>,
        key: &dyn Fn(&[u8; 32]) -> String,
        _retain_until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Finished> {
        use sha2::Digest;
        let sha: [u8; 32] = self
            .sha
            .take()
            .expect("an upload hashes what it writes")
            .finalize()
            .into();
        let (meta, buffer) = self.commit(&key(&sha))?;
        Ok(Finished {
            meta,
            sha256: sha,
            buffer,
        })
    }
}

impl Drop for LocalUpload<'_> {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = fs::remove_file(tmp);
        }
    }
}

impl Store for LocalStore {
    fn put(&self, key: &str, data: &[u8], opts: &PutOptions) -> Result<ObjectMeta> {
        super::check_checksum(key, data, opts)?;
        self.path(key)?;
        let piece = PIECE.min(data.len().next_multiple_of(ALIGN)).max(ALIGN);
        let mut upload = LocalUpload::start(self, Vec::new(), piece, false)?;
        upload.write(data)?;
        Ok(upload.commit(key)?.0)
    }

    fn upload(&self, buffer: Vec<u8>, _size_hint: usize) -> Result<Box<dyn Upload + '_>> {
        Ok(Box::new(LocalUpload::start(self, buffer, PIECE, true)?))
    }

    fn debris(&self) -> Result<Vec<super::Debris>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(self.io_error(format!("cannot list {}", self.root.display()), e));
            }
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if name.starts_with(".tmp-") && meta.is_file() {
                found.push(super::Debris {
                    id: name,
                    size: meta.len(),
                });
            }
        }
        Ok(found)
    }

    fn remove_debris(&self, id: &str) -> Result<()> {
        // Only a temporary file directly under the root, by its own name.
        if !id.starts_with(".tmp-") || id.contains('/') {
            return Err(Error::new(
                ErrorKind::Failed,
                format!("{id:?} is not a temporary file of this store"),
            ));
        }
        match fs::remove_file(self.root.join(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error(format!("cannot remove {id}"), e)),
        }
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

    fn versions(&self, key: &str) -> Result<Vec<super::Version>> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(vec![super::Version {
                meta: self.meta(key, &m),
                delete_marker: false,
                modified: m.modified().ok().map(chrono::DateTime::<chrono::Utc>::from),
            }]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
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
        location(&self.root)
    }
}

/// Where a repository in directory `root` is: `file:///path`.
pub fn location(root: &Path) -> String {
    format!("file://{}", root.display())
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
    use crate::store::sha256;

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
    fn an_upload_streams_and_is_named_by_its_hash_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let data: Vec<u8> = (0..(3 << 20) + 12345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut up = s.upload(Vec::new(), 0).unwrap();
        // Pieces of odd sizes, across the 1 MiB pieces of the direct write.
        for piece in data.chunks(700_001) {
            up.write(piece).unwrap();
        }
        let key = |sha: &[u8; 32]| format!("packs/{}", hex::encode(sha));
        let done = up.finish(&key, None).unwrap();
        assert_eq!(done.sha256, sha256(&data));
        assert_eq!(done.meta.key, key(&sha256(&data)));
        assert_eq!(done.meta.size, data.len() as u64);
        assert_eq!(s.get(&done.meta.key).unwrap(), data);
        // Nothing else is left in the store: no temporary file either.
        assert_eq!(s.list("").unwrap().len(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only packs/");

        // The same bytes again: put-once refuses, the first copy stays.
        let mut again = s.upload(done.buffer, 0).unwrap();
        again.write(&data).unwrap();
        let err = again.finish(&key, None).err().expect("put-once");
        assert!(err.what().contains("never overwritten"), "{err:?}");
        assert_eq!(s.get(&done.meta.key).unwrap(), data);
    }

    #[test]
    fn an_upload_dropped_unfinished_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let mut up = s.upload(Vec::new(), 0).unwrap();
        up.write(&[7u8; 3 << 20]).unwrap();
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the temporary file"
        );
        drop(up);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn temporary_files_are_debris_and_removing_one_spares_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        s.put("packs/ab/x", b"kept", &opts(b"kept")).unwrap();
        // A killed backup's leftover, and one still being written.
        let mut old = s.upload(Vec::new(), 0).unwrap();
        old.write(&[1u8; 5000]).unwrap();
        std::mem::forget(old);
        let stale = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .unwrap()
            .file_name()
            .to_string_lossy()
            .into_owned();
        let mut live = s.upload(Vec::new(), 0).unwrap();
        live.write(&[2u8; 5000]).unwrap();

        let debris = s.debris().unwrap();
        assert_eq!(debris.len(), 2, "{debris:?}");
        s.remove_debris(&stale).unwrap();
        assert!(!dir.path().join(&stale).exists());
        // Nothing but a temporary file can be removed this way.
        assert!(s.remove_debris("packs/ab/x").is_err());
        assert!(s.remove_debris(".tmp-x/../packs/ab/x").is_err());
        // The live upload still finishes, and the object stays.
        let done = live
            .finish(
                &|sha: &[u8; 32]| format!("packs/{}", hex::encode(sha)),
                None,
            )
            .unwrap();
        assert_eq!(s.get(&done.meta.key).unwrap(), vec![2u8; 5000]);
        assert_eq!(s.get("packs/ab/x").unwrap(), b"kept");
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
