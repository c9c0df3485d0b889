//! Building and comparing file trees byte for byte and metadata for metadata.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    pub content: Option<[u8; 32]>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For the second and later names of a file: its first name.
    pub link_of: Option<Vec<u8>>,
}

/// Every entry under `root` (root itself as the empty path).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<u8>> = HashMap::new();
    walk(root, Vec::new(), &mut out, &mut inodes);
    out
}

fn walk(
    abs: &Path,
    rel: Vec<u8>,
    out: &mut BTreeMap<Vec<u8>, Node>,
    inodes: &mut HashMap<u64, Vec<u8>>,
) {
    let m = std::fs::symlink_metadata(abs).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        return; // special files are not backed up
    };
    let mut link_of = None;
    if kind == "file" && m.nlink() > 1 {
        match inodes.get(&m.ino()) {
            Some(first) => link_of = Some(first.clone()),
            None => {
                inodes.insert(m.ino(), rel.clone());
            }
        }
    }
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = if kind == "symlink" {
        Vec::new()
    } else {
        xattr::list(abs)
            .unwrap()
            .map(|n| {
                (
                    n.as_bytes().to_vec(),
                    xattr::get(abs, &n).unwrap().unwrap_or_default(),
                )
            })
            .collect()
    };
    xattrs.sort();
    out.insert(
        rel.clone(),
        Node {
            kind,
            mode: if kind == "symlink" {
                0
            } else {
                m.mode() & 0o7777
            },
            uid: m.uid(),
            gid: m.gid(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            size: if kind == "dir" { 0 } else { m.len() },
            content: (kind == "file")
                .then(|| *blake3::hash(&std::fs::read(abs).unwrap()).as_bytes()),
            target: (kind == "symlink").then(|| {
                std::fs::read_link(abs)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }),
            xattrs,
            link_of,
        },
    );
    if kind == "dir" {
        let mut names: Vec<_> = std::fs::read_dir(abs)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(n.as_bytes());
            walk(&abs.join(&n), r, out, inodes);
        }
    }
}

/// Asserts two trees are equal, naming the first difference.
pub fn assert_same(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    for (p, na) in &sa {
        let name = String::from_utf8_lossy(p);
        let nb = sb
            .get(p)
            .unwrap_or_else(|| panic!("{name} missing from the restore"));
        assert_eq!(na, nb, "{name} differs");
    }
    for p in sb.keys() {
        assert!(
            sa.contains_key(p),
            "{} restored but not in the source",
            String::from_utf8_lossy(p)
        );
    }
}

/// Deterministic pseudo-random bytes (incompressible).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn set_mtime(p: &Path, secs: i64, nsec: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nsec);
    let f = std::fs::File::options()
        .write(true)
        .open(p)
        .or_else(|_| std::fs::File::open(p))
        .unwrap();
    f.set_modified(t).unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with every kind of entry and metadata a volume backup must keep.
pub fn build_rich_tree(root: &Path) {
    use std::fs;
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("data/deep/er/still")).unwrap();
    fs::write(root.join("etc/app.conf"), b"key = value\n".repeat(100)).unwrap();
    fs::write(root.join("etc/conf.d/empty"), b"").unwrap();
    fs::write(root.join("data/random.bin"), noise(1, 3 << 20)).unwrap();
    fs::write(root.join("data/zeros.bin"), vec![0u8; 2 << 20]).unwrap();
    // A copy: dedups inside one backup.
    fs::write(root.join("data/random-copy.bin"), noise(1, 3 << 20)).unwrap();
    // Sparse: 64 MiB with two islands of data.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(root.join("data/sparse.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&noise(2, 100_000), 1 << 20).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    }
    // Hard links, symlinks (relative, absolute, dangling).
    fs::hard_link(root.join("etc/app.conf"), root.join("data/app.conf.link")).unwrap();
    std::os::unix::fs::symlink("../etc/app.conf", root.join("data/rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("data/dangling")).unwrap();
    // Long and non-UTF-8 names.
    let long = "l".repeat(255);
    fs::write(root.join("data").join(&long), b"long name").unwrap();
    let latin1 = OsStr::from_bytes(b"caf\xe9 \\ back\\slash");
    fs::write(root.join("data").join(latin1), b"not utf-8").unwrap();
    fs::write(root.join("data/deep/er/still/leaf"), b"leaf").unwrap();
    // Extended attributes.
    xattr::set(root.join("etc/app.conf"), "user.drctl.test", b"hello").unwrap();
    xattr::set(root.join("data"), "user.dir.attr", &[0, 1, 2, 255]).unwrap();
    // A fifo: skipped with a warning.
    let fifo = std::ffi::CString::new(root.join("data/fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(nix_mkfifo(&fifo), 0);
    // Modes, owners and times.
    // Owners first: chown clears the setuid bit.
    if is_root() {
        std::os::unix::fs::chown(root.join("data/random.bin"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("data/rel-link"), Some(4321), Some(8765)).unwrap();
    }
    chmod(&root.join("etc/app.conf"), 0o640);
    chmod(&root.join("data/random.bin"), 0o4755);
    chmod(&root.join("etc/conf.d"), 0o750);
    set_mtime(&root.join("data/zeros.bin"), 1_000_000_000, 123_456_789);
    for d in [
        "data/deep/er/still",
        "data/deep/er",
        "data/deep",
        "data",
        "etc/conf.d",
        "etc",
        "",
    ] {
        set_mtime(&root.join(d), 1_600_000_000, 42);
    }
}

fn nix_mkfifo(p: &std::ffi::CStr) -> i32 {
    // std has no mkfifo; the mkfifo tool does it without unsafe code here.
    let status = std::process::Command::new("mkfifo")
        .arg(OsStr::from_bytes(p.to_bytes()))
        .status()
        .unwrap();
    if status.success() { 0 } else { -1 }
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
