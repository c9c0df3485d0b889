//! Trees: the listing of a volume backup, one object per directory.
//!
//! ```text
//! tree   = JSON {"nodes": [node…]}   sorted by name, bytewise
//! node   = name, kind, mode, owner, times, size, [target], [xattrs],
//!          [extents: offset, length, chunk ids], [subtree: tree id]
//! object = a blob in a tree pack, sealed with the tree key, id = tree id
//! ```
//! A tree is content-addressed (its id is the keyed hash of its
//! serialisation), so a directory whose entries did not change is the same
//! object in every backup and costs nothing to store again; a backup's
//! manifest names only its *top* tree, which holds one node: the root
//! directory (`.`) or the block image. Because a tree names its
//! subdirectories by id, the top tree's id authenticates the whole listing,
//! as a Merkle tree does: the manifest is sealed, every tree read is checked
//! against its id.
//!
//! Trees are sealed with a key derived from the repository secret, not with
//! a data key sealed to the recipients: an incremental backup reads its
//! parent's trees to skip unchanged files, and writers hold no identity.
//! They live in packs of their own (tree packs), so reading a listing reads
//! few packs, never the data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::crypto::{ChunkId, RepoSecret};
use super::manifest::{ChunkLocation, Entry, EntryKind, Extent};
use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;

/// The name of the top tree's one node for a directory backup.
pub const ROOT_NAME: &str = ".";

/// One entry of a directory: a file, a subdirectory, a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Escaped ([`crate::source::volume::escape`]) name within its directory.
    pub name: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Change time and inode when backed up: what the next incremental
    /// compares besides size and mtime. Not restored.
    pub ctime_ns: i64,
    pub ino: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Symlink target, or the first name (a path from the backup's root) of
    /// a hard-linked file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, String)>,
    /// Data regions of a file; the rest of `size` is holes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extents: Vec<TreeExtent>,
    /// The tree of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<ChunkId>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeExtent {
    pub offset: u64,
    pub length: u64,
    pub chunks: Vec<ChunkId>,
}

impl Node {
    /// Whether the content (data, link target, type) is the same.
    pub fn same_content(&self, other: &Node) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.extents == other.extents
            && self.target == other.target
            && self.subtree == other.subtree
    }

    /// Whether the metadata a restore applies is the same.
    pub fn same_meta(&self, other: &Node) -> bool {
        self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.mtime_ns == other.mtime_ns
            && self.xattrs == other.xattrs
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The canonical serialisation (what the id is of).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trees serialise")
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Tree, String> {
        let tree: Tree = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if tree
            .nodes
            .windows(2)
            .any(|w| w[0].name.as_bytes() >= w[1].name.as_bytes())
        {
            return Err("its entries are not sorted and unique".into());
        }
        if let Some(n) = tree.nodes.iter().find(|n| {
            n.name.is_empty()
                || n.name == ".."
                || (n.name == "." && n.kind != EntryKind::Dir)
                || n.name.contains('/')
                || (n.kind == EntryKind::Dir) != n.subtree.is_some()
        }) {
            return Err(format!("it has an impossible entry {:?}", n.name));
        }
        Ok(tree)
    }

    /// The node named `name`.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// Where objects are stored: chunk and tree locations by id. The catalog
/// answers in one query per batch; without a catalog, the packs' own
/// indexes do. A location is a hint: what is read there is checked against
/// the id.
pub trait Locate: Sync {
    fn locate(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, ChunkLocation>>;
}

/// Reads trees, checked against their ids, keeping the few tree packs it
/// reads in memory (a backup's trees are written together, so a walk reads
/// each of them once).
pub struct TreeReader<'a> {
    store: &'a dyn Store,
    secret: &'a RepoSecret,
    locate: &'a dyn Locate,
    max_pack: u64,
    /// Locations found ahead: a tree's subtrees are located together,
    /// when the whole listing will be read ([`TreeReader::prefetch`]).
    ahead: Mutex<HashMap<ChunkId, ChunkLocation>>,
    prefetch: bool,
    packs: Mutex<Vec<(String, Arc<Vec<u8>>)>>,
}

/// Tree packs kept in memory at once.
const PACKS_KEPT: usize = 4;

impl<'a> TreeReader<'a> {
    pub fn new(
        store: &'a dyn Store,
        secret: &'a RepoSecret,
        locate: &'a dyn Locate,
        max_pack: u64,
    ) -> Self {
        TreeReader {
            store,
            secret,
            locate,
            max_pack,
            ahead: Mutex::new(HashMap::new()),
            prefetch: true,
            packs: Mutex::new(Vec::new()),
        }
    }

    /// Whether to locate a tree's subtrees together when it is read: one
    /// query for a directory's subdirectories instead of one each, when
    /// all of them will be read; not when one path is followed.
    pub fn prefetch(mut self, on: bool) -> Self {
        self.prefetch = on;
        self
    }

    /// The tree `id`, of the directory `path` (for errors: "" is the root).
    pub fn load(&self, id: &ChunkId, path: &str) -> Result<Tree> {
        let what = || {
            if path.is_empty() {
                "the backup's root directory".to_string()
            } else {
                format!("directory {path}")
            }
        };
        let damaged = |why: String| {
            Error::new(
                ErrorKind::Integrity,
                format!("the listing of {} (tree {}) {why}", what(), short(id)),
            )
            .with_guidance(
                "run `drctl verify` for the backups it affects; restore another backup, or \
                 this one with --include for the paths outside it",
            )
        };
        let loc = match self.ahead.lock().unwrap().remove(id) {
            Some(l) => l,
            None => self
                .locate
                .locate(std::slice::from_ref(id))?
                .remove(id)
                .ok_or_else(|| damaged("is not in the repository".into()))?,
        };
        let pack = self.pack(&loc.pack).map_err(|e| {
            let kind = e.kind();
            let read = damaged(format!("cannot be read: {}", e.what()));
            let what = read.what().to_string();
            Error::new(kind, what).with_source(e)
        })?;
        let (start, end) = (
            loc.offset as usize,
            loc.offset as usize + loc.length as usize,
        );
        let blob = pack
            .get(start..end)
            .ok_or_else(|| damaged(format!("lies outside its pack {}", loc.pack)))?;
        let plain = super::pack::open_tree_blob(blob, id, loc.raw_length, self.secret, &loc.pack)
            .map_err(|e| damaged(format!("is damaged: {}", e.what())))?;
        let tree = Tree::decode(&plain).map_err(|e| damaged(format!("is malformed: {e}")))?;
        let subtrees: Vec<ChunkId> = tree.nodes.iter().filter_map(|n| n.subtree).collect();
        if self.prefetch && !subtrees.is_empty() {
            let found = self.locate.locate(&subtrees)?;
            self.ahead.lock().unwrap().extend(found);
        }
        Ok(tree)
    }

    /// A tree pack, whole and checked against its key (the SHA-256 of its
    /// bytes), from memory when read before.
    fn pack(&self, key: &str) -> Result<Arc<Vec<u8>>> {
        if let Some((_, p)) = self.packs.lock().unwrap().iter().find(|(k, _)| k == key) {
            return Ok(p.clone());
        }
        let found = crate::store::read_first_matching(self.store, key, self.max_pack, &|b| {
            super::pack::pack_key(&crate::store::sha256(b)) == key
        })?;
        let Some(found) = found else {
            if crate::store::original(self.store, key)?.is_none() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("tree pack {key} does not exist"),
                )
                .with_guidance("run `drctl verify` to list the backups it affects"));
            }
            return Err(super::pack::mismatch(key));
        };
        if found.others > 0 {
            tracing::warn!(
                pack = %key,
                others = found.others,
                "this tree pack has other versions or delete markers: someone with write access \
                 to the bucket replaced or hid it; reading the original"
            );
        }
        let bytes = Arc::new(found.bytes);
        let mut packs = self.packs.lock().unwrap();
        if packs.len() >= PACKS_KEPT {
            packs.remove(0);
        }
        packs.push((key.to_string(), bytes.clone()));
        Ok(bytes)
    }
}

fn short(id: &ChunkId) -> String {
    id.to_hex()[..12].to_string()
}

/// The path of `name` in directory `dir` ("" is the root).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Which paths a partial restore or listing takes.
pub trait Select {
    /// Whether the entry at `path` is taken (with all beneath it).
    fn takes(&self, path: &str) -> bool;
    /// Whether anything beneath directory `path` may be taken.
    fn may_take_beneath(&self, path: &str) -> bool;
    /// Whether everything is taken (the whole listing is read).
    fn everything(&self) -> bool {
        false
    }
}

/// Everything.
pub struct All;

impl Select for All {
    fn takes(&self, _: &str) -> bool {
        true
    }
    fn may_take_beneath(&self, _: &str) -> bool {
        true
    }
    fn everything(&self) -> bool {
        true
    }
}

/// The listing of a backup as the flat list of entries restores and
/// verification work on (parents before children, a directory's entries in
/// name order), for the paths `select` takes and the directories above
/// them, with the chunks they use. Only the trees on the way are read.
pub fn expand(
    reader: &TreeReader<'_>,
    top: &ChunkId,
    select: &dyn Select,
) -> Result<(Vec<Entry>, Vec<ChunkId>)> {
    let top_tree = reader.load(top, "")?;
    let mut out = Expansion::default();
    for node in &top_tree.nodes {
        if node.name == ROOT_NAME {
            out.push(node, String::new());
            out.dir(reader, node, "", select, false)?;
        } else if select.takes(&node.name) {
            out.push(node, node.name.clone());
        }
    }
    let mut entries = out.entries;
    if !select.everything() {
        // A hard link whose first name was not taken has no data to link
        // to: left out, and said so.
        let names: std::collections::HashSet<String> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.path.clone())
            .collect();
        entries.retain(|e| {
            let keep = e.kind != EntryKind::Hardlink
                || e.target.as_ref().is_some_and(|t| names.contains(t));
            if !keep {
                tracing::warn!(
                    path = %e.path,
                    first_name = e.target.as_deref().unwrap_or(""),
                    "hard link left out: its first name is not included; include it too"
                );
            }
            keep
        });
    }
    Ok((entries, out.chunks.order))
}

#[derive(Default)]
struct Expansion {
    entries: Vec<Entry>,
    chunks: ChunkIndex,
}

#[derive(Default)]
struct ChunkIndex {
    order: Vec<ChunkId>,
    index: HashMap<ChunkId, u32>,
}

impl ChunkIndex {
    fn add(&mut self, id: ChunkId) -> u32 {
        let order = &mut self.order;
        *self.index.entry(id).or_insert_with(|| {
            order.push(id);
            (order.len() - 1) as u32
        })
    }
}

impl Expansion {
    fn push(&mut self, n: &Node, path: String) {
        let extents = n
            .extents
            .iter()
            .map(|x| Extent {
                offset: x.offset,
                length: x.length,
                chunks: x.chunks.iter().map(|c| self.chunks.add(*c)).collect(),
            })
            .collect();
        self.entries.push(entry_of(n, path, extents));
    }

    fn dir(
        &mut self,
        reader: &TreeReader<'_>,
        node: &Node,
        path: &str,
        select: &dyn Select,
        taken: bool,
    ) -> Result<()> {
        let Some(sub) = &node.subtree else {
            return Ok(());
        };
        let tree = reader.load(sub, path)?;
        for child in &tree.nodes {
            let p = join(path, &child.name);
            if taken || select.takes(&p) {
                self.push(child, p.clone());
                if child.kind == EntryKind::Dir {
                    self.dir(reader, child, &p, select, true)?;
                }
            } else if child.kind == EntryKind::Dir && select.may_take_beneath(&p) {
                let before = self.entries.len();
                self.push(child, p.clone());
                self.dir(reader, child, &p, select, false)?;
                if self.entries.len() == before + 1 {
                    // Nothing taken beneath: the directory is not either.
                    self.entries.pop();
                }
            }
        }
        Ok(())
    }
}

/// Fills a volume manifest's `entries` and `chunks` from its trees (for the
/// paths `select` takes), so restore and verification work on it as on a
/// manifest of format 1. A manifest without a tree is left as it is.
pub fn fill(
    repo: &super::Repository,
    manifest: &mut super::manifest::Manifest,
    locate: &dyn Locate,
    select: &dyn Select,
) -> Result<()> {
    let Some(top) = manifest.tree else {
        return Ok(());
    };
    let reader = TreeReader::new(&*repo.store, &repo.secret, locate, repo.max_pack_bytes())
        .prefetch(select.everything());
    let (entries, ids) = expand(&reader, &top, select)?;
    let mut found = locate.locate(&ids)?;
    manifest.chunks = ids
        .iter()
        .map(|id| {
            found.remove(id).ok_or_else(|| {
                Error::new(
                    ErrorKind::Integrity,
                    format!(
                        "chunk {} of backup {} is in none of its packs",
                        id.to_hex(),
                        manifest.backup_id
                    ),
                )
                .with_guidance("run `drctl verify` to list the files it affects")
            })
        })
        .collect::<Result<_>>()?;
    manifest.entries = entries;
    Ok(())
}

/// Locations from the packs' own indexes: what a reader without a catalog
/// uses. Reads every pack the backup lists, once, on first use.
pub struct IndexLocate<'a> {
    repo: &'a super::Repository,
    packs: Vec<String>,
    found: std::sync::OnceLock<HashMap<ChunkId, ChunkLocation>>,
}

impl<'a> IndexLocate<'a> {
    pub fn new(repo: &'a super::Repository, packs: Vec<String>) -> Self {
        IndexLocate {
            repo,
            packs,
            found: std::sync::OnceLock::new(),
        }
    }

    fn read_all(&self) -> Result<HashMap<ChunkId, ChunkLocation>> {
        let identity = self.repo.identity()?;
        let all = Mutex::new(HashMap::new());
        crate::parallel::try_for_each(
            self.packs.iter(),
            crate::parallel::threads(),
            || (),
            |_, key| {
                let pack = super::pack::OpenPack::fetch(
                    &*self.repo.store,
                    key,
                    identity,
                    self.repo.max_pack_bytes(),
                )?;
                let mut all = all.lock().unwrap();
                for e in &pack.index.chunks {
                    all.insert(
                        e.id,
                        ChunkLocation {
                            id: e.id,
                            pack: key.clone(),
                            offset: e.offset,
                            length: e.length,
                            raw_length: e.raw_length,
                        },
                    );
                }
                Ok(())
            },
        )?;
        Ok(all.into_inner().unwrap())
    }
}

impl Locate for IndexLocate<'_> {
    fn locate(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, ChunkLocation>> {
        if self.found.get().is_none() {
            let all = self.read_all()?;
            let _ = self.found.set(all);
        }
        let all = self.found.get().expect("set above");
        Ok(ids
            .iter()
            .filter_map(|id| all.get(id).map(|l| (*id, l.clone())))
            .collect())
    }
}

/// Locations from `first` (the catalog), and from `then` (the packs'
/// indexes) for what `first` lacks or cannot answer: a catalog that is
/// behind the bucket, or gone, slows a restore down but does not stop it.
pub struct Fallback<'a> {
    pub first: Option<&'a dyn Locate>,
    pub then: &'a dyn Locate,
}

impl Locate for Fallback<'_> {
    fn locate(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, ChunkLocation>> {
        let mut found = match self.first.map(|f| f.locate(ids)) {
            Some(Ok(found)) => found,
            Some(Err(e)) => {
                tracing::warn!(error = %e.report(), "locations from the catalog failed: reading the packs' indexes");
                HashMap::new()
            }
            None => HashMap::new(),
        };
        if found.len() < ids.len() {
            let rest: Vec<ChunkId> = ids
                .iter()
                .filter(|i| !found.contains_key(i))
                .copied()
                .collect();
            found.extend(self.then.locate(&rest)?);
        }
        Ok(found)
    }
}

/// The flat entry of a node at `path`.
pub fn entry_of(n: &Node, path: String, extents: Vec<Extent>) -> Entry {
    Entry {
        path,
        kind: n.kind,
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        mtime_ns: n.mtime_ns,
        size: n.size,
        target: n.target.clone(),
        xattrs: n.xattrs.clone(),
        extents,
        ctime_ns: Some(n.ctime_ns),
        ino: Some(n.ino),
    }
}

/// What changed at one path between two backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    /// The data, link target or type changed.
    Modified,
    /// Only metadata (mode, owner, times, xattrs) changed.
    Metadata,
}

/// One line of `backup diff`.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub path: String,
    pub change: Change,
    pub kind: EntryKind,
    /// Size in the older and the newer backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_size: Option<u64>,
}

/// The differences from the backup with top tree `a` to the one with `b`,
/// in path order. Directories whose trees are the same object are not
/// read: the cost grows with what changed. An added or removed directory
/// is one line, not one per entry beneath it.
pub fn diff(reader: &TreeReader<'_>, a: &ChunkId, b: &ChunkId) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    if a != b {
        let (ta, tb) = (reader.load(a, "")?, reader.load(b, "")?);
        diff_trees(reader, &ta, &tb, "", true, &mut out)?;
    }
    Ok(out)
}

fn diff_trees(
    reader: &TreeReader<'_>,
    a: &Tree,
    b: &Tree,
    path: &str,
    top: bool,
    out: &mut Vec<Difference>,
) -> Result<()> {
    let (mut i, mut j) = (0, 0);
    let line = |p: String, change, n: &Node, old: Option<&Node>, new: Option<&Node>| Difference {
        path: p,
        change,
        kind: n.kind,
        old_size: old.map(|n| n.size),
        new_size: new.map(|n| n.size),
    };
    while i < a.nodes.len() || j < b.nodes.len() {
        let order = match (a.nodes.get(i), b.nodes.get(j)) {
            (Some(x), Some(y)) => x.name.as_bytes().cmp(y.name.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        // The top tree's root node is the backup's root: its path is "".
        let name_path = |n: &Node| {
            if top && n.name == ROOT_NAME {
                String::new()
            } else {
                join(path, &n.name)
            }
        };
        match order {
            std::cmp::Ordering::Less => {
                let n = &a.nodes[i];
                out.push(line(name_path(n), Change::Removed, n, Some(n), None));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = &b.nodes[j];
                out.push(line(name_path(n), Change::Added, n, None, Some(n)));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&a.nodes[i], &b.nodes[j]);
                let p = name_path(x);
                if x.kind == EntryKind::Dir && y.kind == EntryKind::Dir {
                    if !x.same_meta(y) && !p.is_empty() {
                        out.push(line(p.clone(), Change::Metadata, y, Some(x), Some(y)));
                    }
                    if x.subtree != y.subtree
                        && let (Some(sa), Some(sb)) = (&x.subtree, &y.subtree)
                    {
                        let (ta, tb) = (reader.load(sa, &p)?, reader.load(sb, &p)?);
                        diff_trees(reader, &ta, &tb, &p, false, out)?;
                    }
                } else if !x.same_content(y) {
                    out.push(line(p, Change::Modified, y, Some(x), Some(y)));
                } else if !x.same_meta(y) {
                    out.push(line(p, Change::Metadata, y, Some(x), Some(y)));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// The entries of directory `path` of a backup (or the one entry at
/// `path` when it is not a directory), with their paths; `recursive` lists
/// everything beneath it too.
pub fn list(
    reader: &TreeReader<'_>,
    top: &ChunkId,
    path: &str,
    recursive: bool,
) -> Result<Vec<(String, Node)>> {
    let top_tree = reader.load(top, "")?;
    let Some(root) = top_tree.nodes.iter().find(|n| n.name == ROOT_NAME) else {
        // A block backup: its one image.
        return Ok(top_tree
            .nodes
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect());
    };
    let mut node = root.clone();
    let mut here = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let Some(sub) = node.subtree else {
            return Err(not_found(path));
        };
        let tree = reader.load(&sub, &here)?;
        node = tree.get(part).cloned().ok_or_else(|| not_found(path))?;
        here = join(&here, part);
    }
    if node.kind != EntryKind::Dir {
        return Ok(vec![(here, node)]);
    }
    let mut out = Vec::new();
    list_dir(reader, &node, &here, recursive, &mut out)?;
    Ok(out)
}

fn list_dir(
    reader: &TreeReader<'_>,
    node: &Node,
    path: &str,
    recursive: bool,
    out: &mut Vec<(String, Node)>,
) -> Result<()> {
    let Some(sub) = &node.subtree else {
        return Ok(());
    };
    let tree = reader.load(sub, path)?;
    for child in tree.nodes {
        let p = join(path, &child.name);
        let descend = recursive && child.kind == EntryKind::Dir;
        out.push((p.clone(), child.clone()));
        if descend {
            list_dir(reader, &child, &p, true, out)?;
        }
    }
    Ok(())
}

fn not_found(path: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("{path} is not in this backup"))
        .with_guidance("list what is there with `drctl backup ls BACKUP [DIR]`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 1,
            size: 0,
            target: None,
            xattrs: Vec::new(),
            extents: Vec::new(),
            subtree: None,
        }
    }

    #[test]
    fn a_tree_out_of_order_or_with_a_slash_in_a_name_is_refused() {
        let good = Tree {
            nodes: vec![node("a"), node("b")],
        };
        assert!(Tree::decode(&good.encode()).is_ok());
        let unsorted = Tree {
            nodes: vec![node("b"), node("a")],
        };
        assert!(Tree::decode(&unsorted.encode()).is_err());
        let twice = Tree {
            nodes: vec![node("a"), node("a")],
        };
        assert!(Tree::decode(&twice.encode()).is_err());
        for bad in ["..", "a/b", ""] {
            let t = Tree {
                nodes: vec![node(bad)],
            };
            assert!(Tree::decode(&t.encode()).is_err(), "{bad:?} accepted");
        }
        let mut dir = node("d");
        dir.kind = EntryKind::Dir;
        assert!(
            Tree::decode(&Tree { nodes: vec![dir] }.encode()).is_err(),
            "a directory without a subtree was accepted"
        );
    }
}
